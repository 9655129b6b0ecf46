"""`python -m estimators tail-risk ...` and `python -m estimators ground-truth ...`.

    python -m estimators tail-risk --model charlm --distribution hex --target q \
        --method itgis --budget 2048 --seed 0 --json
    python -m estimators ground-truth --model charlm --distribution my_dist.json --target q --json

--distribution is a built-in name of a zoo model or a JSON file (format: the README, or
`estimators.tailrisk.distributions`). --target is a token string or an id ("id:12" or "12" when
"12" is not itself a token).
"""

from __future__ import annotations

import argparse
import math

from estimators.cli import UserError, add_common_json, progress_printer
from estimators.distributed import add_backend_args
from estimators.tailrisk.common import CALLS_CONVENTION

BEHAVIOUR_KINDS = ("argmax", "sampled", "logit", "sae", "direction")


def _add_problem_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="zoo name, checkpoint folder or HF folder")
    p.add_argument("--distribution", required=True,
                   help="built-in distribution of the zoo model, a JSON file, or with --data: "
                        "empirical (per-position frequencies) or data-tokens (uniform over the "
                        "data's tokens)")
    p.add_argument("--data", default=None,
                   help="data spec for --distribution empirical/data-tokens: tokens:FILE.json, "
                        "text:PATH, hf:FOLDER[:COLUMN] or zoo, options ,n=4096,len=L,seed=0")
    p.add_argument("--target", default=None,
                   help="target token (string, or id as id:N); argmax, sampled and logit")
    p.add_argument("--behaviour", choices=BEHAVIOUR_KINDS, default="argmax",
                   help="argmax: t is the argmax (default); sampled: probability of sampling t "
                        "at --sampling-temperature; logit: logit_t > --threshold; sae: SAE "
                        "latent --feature of --sae > --threshold; direction: a probe "
                        "(--direction FILE or --unit U) at residual --hook > --threshold")
    p.add_argument("--sampling-temperature", type=float, default=1.0)
    p.add_argument("--threshold", type=float, default=0.0)
    p.add_argument("--sae", default="zoo",
                   help="SAE for --behaviour sae: 'zoo' (the zoo model's own) or a folder")
    p.add_argument("--feature", type=int, default=None, help="SAE latent index (sae)")
    p.add_argument("--hook", default=None,
                   help="residual hook of the probe (direction), e.g. blocks.0.hook_resid_post")
    p.add_argument("--direction", default=None,
                   help="probe direction file: JSON list / {\"direction\": [...]} / CSV")
    p.add_argument("--unit", type=int, default=None,
                   help="probe = one unit of the residual stream at --hook")
    p.add_argument("--bias", type=float, default=0.0, help="probe bias: w·a + bias > threshold")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show progress and time left on stderr (default: when a terminal)")


def register(subparsers) -> None:
    from estimators.tailrisk.registry import ESTIMATORS

    p = subparsers.add_parser(
        "tail-risk", help="estimate the probability of a rare output",
        description="Estimate P_{x~D}[behaviour] with one estimator at a budget of model calls "
                    "(1 call = one input through one forward pass; forward+backward = 2).")
    _add_problem_args(p)
    p.add_argument("--method", required=True, choices=list(ESTIMATORS))
    p.add_argument("--budget", type=int, default=2048, help="model calls (default 2048)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=None,
                   help="ITGIS/MHIS proposal temperature (default: the method's default)")
    p.add_argument("--fallback", action=argparse.BooleanOptionalAction, default=None,
                   help="ITGIS/MHIS: when no sample hits, report QLD/GLD's extrapolation from "
                        "the run's own reference draws, clipped to the zero-hit bound (biased; "
                        "default on); --no-fallback reports 0")
    p.add_argument("--refine-fraction", type=float, default=None, metavar="F",
                   help="ITGIS/MHIS: share of the budget (model calls) spent last on the "
                        "refinement (a greedy coordinate search, then population Monte Carlo "
                        "around every hit found), in [0, 1); 0 = the sampler alone (default: "
                        "the method's default, 0.9)")
    p.add_argument("--mask", default=None,
                   choices=("naive", "position-blocks", "topk", "full"),
                   help="activation: the covariance-mask argument (default naive)")
    p.add_argument("--with-truth", action="store_true",
                   help="also compute the ground truth (exact when small; cached)")
    add_common_json(p)
    p.set_defaults(func=run_tail_risk)

    g = subparsers.add_parser(
        "ground-truth", help="true probability of a rare output (exact or sampled)",
        description="Exact enumeration when D has at most --max-exact inputs, else sampling "
                    "with a Wilson (or Clopper-Pearson) interval; cached under $HEW_CACHE_DIR "
                    "or ~/.cache/heuristic-workbench/. Runs here or on a Ray cluster "
                    "(--backend ray): exact enumeration in contiguous index ranges, sampling "
                    "in seeded shards of --shard-samples, so the answer does not depend on "
                    "the number of workers.")
    _add_problem_args(g)
    g.add_argument("--max-exact", type=int, default=2 ** 24)
    g.add_argument("--samples", type=int, default=2 ** 22,
                   help="samples when D's support exceeds --max-exact (default 2^22)")
    g.add_argument("--sampled", type=int, default=None, metavar="N",
                   help="sample N inputs even when D is small enough to enumerate")
    g.add_argument("--shard-samples", type=int, default=2 ** 20,
                   help="samples per task (fixed, so results do not depend on --workers)")
    g.add_argument("--chunk", type=int, default=8192,
                   help="inputs per forward pass (default 8192; larger suits a GPU)")
    g.add_argument("--interval", choices=("wilson", "clopper-pearson"), default="wilson",
                   help="95%% interval of a sampled indicator (default wilson)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-cache", action="store_true")
    add_backend_args(g)
    add_common_json(g)
    g.set_defaults(func=run_ground_truth)


def _problem(args):
    from estimators.loading import load_model
    from estimators.tailrisk.behaviours import (Argmax, LogitThreshold, SampledProbability,
                                                parse_target)
    lm = load_model(args.model, args.device)
    entry = lm.zoo_entry
    vocab = entry.token_labels() if entry is not None else None
    dist = _distribution(args, lm, vocab)
    if args.behaviour in ("sae", "direction"):
        b = _feature_behaviour(args, lm)
        return lm, dist, b, b.name
    if args.target is None:
        raise UserError(f"--behaviour {args.behaviour} needs --target")
    target = parse_target(args.target, lm.model, vocab, loaded=lm)
    if args.behaviour == "argmax":
        b = Argmax(target)
    elif args.behaviour == "sampled":
        b = SampledProbability(target, args.sampling_temperature)
    else:
        b = LogitThreshold(target, args.threshold)
    b.validate(lm.model)
    if vocab is not None:
        label = vocab[target] if target < len(vocab) else str(target)
    else:  # the tokenizer's text of the token (GPT-2: ' the'), else its id
        from estimators.data import decode
        label = decode(lm, [target]) or str(target)
    return lm, dist, b, label


def _distribution(args, lm, vocab):
    """--distribution, built from --data for empirical / data-tokens."""
    from estimators.tailrisk.distributions import (DATA_DISTRIBUTIONS, from_tokens,
                                                   resolve_distribution)

    data_spec = getattr(args, "data", None)
    if args.distribution in DATA_DISTRIBUTIONS:
        if not data_spec:
            raise UserError(f"--distribution {args.distribution} is built from data: give "
                            f"--data (tokens:FILE.json, text:PATH, hf:FOLDER or zoo)")
        from estimators.data import load_data

        data = load_data(data_spec, lm, n=4096, seed=0)
        return from_tokens(data.tokens, int(lm.model.cfg.d_vocab), args.distribution,
                           name=f"{args.distribution}({data.source.spec})", vocab=vocab)
    if data_spec:
        raise UserError(f"--data builds --distribution empirical or data-tokens, not "
                        f"{args.distribution!r}")
    if vocab is None:  # a distribution file may name tokens by their text (GPT-2: " the")
        from estimators.data import token_texts
        vocab = token_texts(lm)
    return resolve_distribution(args.distribution, lm.model, lm.zoo_entry, vocab)


def _feature_behaviour(args, lm):
    """SAE latent or probe direction (DirectionThreshold) from the arguments."""
    from pathlib import Path

    from estimators.loading import load_sae
    from estimators.tailrisk.behaviours import parse_direction, probe_direction, sae_feature

    if args.behaviour == "sae":
        if args.feature is None:
            raise UserError("--behaviour sae needs --feature J")
        sae = load_sae(args.sae, lm, args.device)
        return sae_feature(sae, args.feature, args.threshold, model=lm.model)
    if args.hook is None:
        raise UserError("--behaviour direction needs --hook (a residual-stream hook)")
    if (args.direction is None) == (args.unit is None):
        raise UserError("--behaviour direction needs exactly one of --direction FILE, --unit U")
    direction = None
    if args.direction is not None:
        path = Path(args.direction).expanduser()
        if not path.is_file():
            raise UserError(f"direction file {args.direction} does not exist")
        direction = parse_direction(path.read_bytes())
    return probe_direction(lm.model, args.hook, direction, args.unit, args.threshold, args.bias)


def _target_fields(b, label) -> dict:
    t = getattr(b, "target", None)
    return {"target": t, "target_token": label if t is not None else None}


SAMPLER_FLAGS = {"fallback": "--fallback/--no-fallback", "refine_fraction": "--refine-fraction"}


def _sampler_options(args) -> dict:
    """The ITGIS/MHIS-only flags that were given ({config field: value}), checked before the
    model loads: with another method, or --refine-fraction outside [0, 1) (pmc.py), one line
    (UserError, exit 2)."""
    out = {k: getattr(args, k) for k in SAMPLER_FLAGS if getattr(args, k) is not None}
    for k in out:
        if args.method not in ("itgis", "mhis"):
            raise UserError(f"{SAMPLER_FLAGS[k]} applies to itgis and mhis, not {args.method}")
    f = out.get("refine_fraction", 0.0)
    if not math.isfinite(f) or not 0 <= f < 1:
        raise UserError(f"--refine-fraction must be a number in [0, 1) (the share of the "
                        f"budget spent on the refinement; 0 turns it off), got {f:g}")
    return out


def run_tail_risk(args) -> dict:
    from estimators.tailrisk.ground_truth import ground_truth
    from estimators.tailrisk.registry import ESTIMATORS, run_estimator

    extra = {}  # method options are checked before the model loads
    if args.temperature is not None:
        if not ESTIMATORS[args.method].has_temperature:
            raise UserError(f"--temperature applies to itgis and mhis, not {args.method}")
        extra["temperature"] = args.temperature
    extra.update(_sampler_options(args))
    if args.mask is not None:
        if args.method != "activation":
            raise UserError(f"--mask applies to the activation method, not {args.method}")
        extra["mask"] = args.mask
    lm, dist, b, label = _problem(args)
    est = run_estimator(args.method, lm.model, dist, b, args.budget, args.seed,
                        progress=progress_printer(args.method, args.progress), **extra)
    cal = {k: est.diagnostics.get(k) for k in ("calibrated_estimate", "calibrated_interval")
           } if args.method == "activation" else {}  # raw = "estimate"; see calibration.py
    out = {"estimate": est.value,
           "interval": list(est.interval) if est.interval is not None else None, **cal,
           "calls": est.cost.calls,
           "samples": int(est.diagnostics.get("samples", est.cost.calls)),
           "calls_convention": CALLS_CONVENTION,
           "seconds": est.cost.seconds, "method": args.method,
           "budget": args.budget, "seed": args.seed, "behaviour": b.label(),
           **_target_fields(b, label), "distribution": dist.name,
           "n_inputs": dist.n_inputs(), "diagnostics": est.diagnostics}
    if args.method in ("itgis", "mhis"):  # which zero-hit fallback made the estimate, if any
        out["fallback"] = est.diagnostics.get("fallback")
        # None: no refinement ran; "estimate": its hits made the estimate; else why not (pmc.py)
        out["refine"] = est.diagnostics.get("refine")
        if est.diagnostics.get("fallback_note"):
            out["note"] = est.diagnostics["fallback_note"]
    if args.with_truth:
        out["truth"] = ground_truth(lm.model, dist, b, progress=progress_printer(
            "ground truth", args.progress)).to_dict()
    return out


def run_ground_truth(args) -> dict:
    from estimators.distributed import backend_from_args, model_ref
    from estimators.tailrisk.distributed import sharded_ground_truth_vector, target_truth

    if min(args.max_exact, args.samples, args.shard_samples, args.chunk) < 1 or \
            (args.sampled is not None and args.sampled < 1):
        raise UserError("--max-exact, --samples, --sampled, --shard-samples and --chunk must "
                        "be positive")
    lm, dist, b, label = _problem(args)
    with backend_from_args(args) as backend:
        ref = model_ref(args.model, lm.model, args.device) if backend.name == "ray" else None
        vec = sharded_ground_truth_vector(
            lm.model, dist, b, backend, ref, max_exact=args.max_exact, n_samples=args.samples,
            seed=args.seed, force_samples=args.sampled, shard_samples=args.shard_samples,
            chunk=args.chunk, use_cache=not args.no_cache,
            progress=progress_printer("ground truth", args.progress))
        where = backend.describe()
    g = target_truth(vec, b, args.interval)
    return {**{k: g[k] for k in ("probability", "method", "interval", "interval_method",
                                 "n_inputs", "hits", "shards", "shard_samples", "seconds",
                                 "cached")},
            "seed": args.seed if g["method"] == "sampled" else None, **where,
            "behaviour": b.label(), **_target_fields(b, label), "distribution": dist.name}
