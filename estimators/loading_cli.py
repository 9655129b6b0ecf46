"""`python -m estimators info --model M [--sae S]`: a model's config, hooks and its SAE's quality."""

from __future__ import annotations

from estimators import conformance, model_info
from estimators.cli import add_common_json, progress_flag, progress_printer
from estimators.loading import load_model, load_sae


def register(sub) -> None:
    p = sub.add_parser("info", help="describe a model (zoo name, folder or hub name) and its SAE")
    p.add_argument("--model", required=True)
    p.add_argument("--sae", default=None, help="'zoo', an SAE folder, or release/sae_id")
    p.add_argument("--data", default=None,
                   help="the model's data for SAE quality: zoo, tokens:FILE.json, text:PATH, "
                        "hf:FOLDER[:COLUMN], options ,n=256,len=L,seed=1 (see estimators.data)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--hooks", action="store_true", help="list every hook point and its shape")
    progress_flag(p)
    add_common_json(p)
    p.set_defaults(func=run_info)


def run_info(args) -> dict:
    lm = load_model(args.model, args.device)
    out = {"model": lm.name, "kind": lm.kind, "config": model_info.config_summary(lm.model)}
    out["conformance"] = conformance.summary(lm.model)  # which engines this model supports
    if lm.card:
        out["card"] = lm.card
    if args.hooks:
        out["hooks"] = model_info.hook_shapes(lm.model)
    if args.sae:
        sae = load_sae(args.sae, lm, args.device)
        if not args.data and lm.zoo_entry is None:
            raise ValueError("SAE quality needs the model's data: give --data (tokens:FILE.json, "
                             "text:PATH or hf:FOLDER)")
        # a zoo model's default: its generator, 256 sequences, seed 1
        from estimators.sae_stats import sae_quality_on_data

        out["data"], out["sae"] = sae_quality_on_data(
            lm, sae, args.data or "zoo",
            progress=progress_printer("SAE quality", getattr(args, "progress", None)))
    elif args.data:  # no SAE: the data is still read and checked against the model
        from estimators.data import load_data

        out["data"] = load_data(args.data, lm, n=256, seed=1).to_dict()
    return out
