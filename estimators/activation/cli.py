"""`python -m estimators propagate`: run the activation model once and print sites, surprise,
output and cost.

    python -m estimators propagate --model induction --mask full --samples 1024 --json
    python -m estimators propagate --model path/to/mlp_folder --input-dist dist.json --mask full

--model: a zoo name, a TransformerLens checkpoint folder (then --tokens is needed), or a plain
MLP folder (config.json {"kind": "mlp", ...} + model.safetensors). --mask: naive, full,
topk:K, position-blocks, or a JSON file written by CovarianceMask.to_dict().
--tokens: a JSON file [[id, ...], ...] of real inputs (transformers; default: the zoo model's
generator). --input-dist: {"mean": [...], "cov": [[...]]} (MLPs; default standard normal).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from estimators.loading import read_json_file


def register(subparsers) -> None:
    from estimators.cli import add_common_json

    p = subparsers.add_parser(
        "propagate", help="activation model: propagate Gaussians under a covariance mask",
        description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="zoo name, checkpoint folder or MLP folder")
    p.add_argument("--sae", default=None, help="SAE: 'zoo', an sae_lens folder, release/id")
    p.add_argument("--sites", nargs="+", default=None, help="site names (default: residual "
                   "stream at every block boundary, the SAE site, logits)")
    p.add_argument("--positions", nargs="+", type=int, default=None,
                   help="positions modelled (default: all when small, else the last few)")
    p.add_argument("--mask", default="naive",
                   help="naive | full | topk:K | position-blocks | FILE.json")
    p.add_argument("--samples", type=int, default=512, help="K samples per sampled transition")
    p.add_argument("--n-inputs", type=int, default=512, help="real inputs for the ground truth")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--input-dist", default=None, help="MLP input distribution JSON")
    p.add_argument("--tokens", default=None, help="JSON [[token ids]] of real inputs")
    p.add_argument("--bits-per-parameter", type=float, default=None,
                   help="S(π) bits per tracked covariance (default ½·log2 N)")
    p.add_argument("--epsilon", type=float, default=1e-2,
                   help="quantisation ε for continuous outputs (MLPs)")
    p.add_argument("--cumulants", type=int, choices=(2, 3, 4), default=None,
                   help="plain MLPs: cumulant order tracked (2 Gaussian closure, default; 3 + "
                   "factored third cumulants; 4 + marginal fourth cumulants)")
    p.add_argument("--hermite-order", type=int, default=None,
                   help="plain MLPs: terms of the Hermite series for covariances (1-12, "
                   "default 4)")
    add_common_json(p)
    p.set_defaults(func=run_cli)


def parse_mask(spec: str, layouts) -> "CovarianceMask":
    from estimators.activation.masks import CovarianceMask

    if spec in ("naive", "full", "position-blocks"):
        return CovarianceMask.preset(spec, layouts)
    if spec.startswith("topk:"):
        try:
            k = int(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"--mask {spec}: k must be an integer (topk:16)") from None
        return CovarianceMask.preset("topk", layouts, k=k)
    if not spec.endswith(".json") and not Path(spec).exists():
        raise ValueError(f"--mask {spec!r}: give naive, full, topk:K, position-blocks or a "
                         f"JSON file")
    mask = CovarianceMask.from_dict(read_json_file(spec, "mask"))
    mask.validate(layouts)
    return mask


def _load_tokens(path: str, model) -> torch.Tensor:
    data = read_json_file(path, "tokens")
    try:
        t = torch.tensor(data, dtype=torch.long)
    except (TypeError, ValueError):
        raise ValueError("tokens file must hold a list of equal-length lists of token ids") \
            from None
    if t.dim() != 2 or t.shape[0] < 2:
        raise ValueError("tokens file must hold at least 2 equal-length lists of token ids")
    if t.shape[1] > model.cfg.n_ctx:
        raise ValueError(f"token lists are longer than the model's context {model.cfg.n_ctx}")
    return t


def build_chain(args):
    from estimators.activation.chain import chain_for_zoo, transformer_chain
    from estimators.activation.mlp import is_mlp_folder, load_input_distribution, load_mlp
    from estimators.device import resolve_device
    from estimators.loading import load_model, load_sae

    device = str(resolve_device(args.device))
    if args.n_inputs < 2:
        raise ValueError("--n-inputs must be at least 2")
    if is_mlp_folder(args.model):
        from estimators.activation.cumulants import cumulant_chain

        if args.sae:
            raise ValueError("--sae applies to transformers, not plain MLPs")
        mlp = load_mlp(args.model, device=device)
        d_in = mlp.widths[0]
        if args.input_dist:
            mean, cov = load_input_distribution(args.input_dist, dim=d_in)
        else:
            mean = torch.zeros(d_in, dtype=torch.float64)
            cov = torch.eye(d_in, dtype=torch.float64)
        if not args.epsilon > 0:
            raise ValueError("--epsilon must be > 0")
        return cumulant_chain(mlp, mean.to(device), cov.to(device),
                              cumulants=args.cumulants or 2,
                              hermite_order=4 if args.hermite_order is None else
                              args.hermite_order, n_empirical=args.n_inputs, seed=args.seed,
                              epsilon=args.epsilon, device=device)
    if args.cumulants is not None or args.hermite_order is not None:
        raise ValueError("--cumulants and --hermite-order are for plain MLP folders")
    if args.input_dist:
        raise ValueError("--input-dist is for plain MLP folders; transformers take --tokens")
    lm = load_model(args.model, device)
    sae = load_sae(args.sae, lm, device) if args.sae else None
    if args.tokens:
        tokens = _load_tokens(args.tokens, lm.model)
        return transformer_chain(lm.model, tokens, sites=args.sites, positions=args.positions,
                                 sae=sae, samples=args.samples, seed=args.seed)
    if lm.kind != "zoo":
        raise ValueError("a non-zoo transformer needs real inputs: pass --tokens FILE")
    return chain_for_zoo(lm, sae=sae, n_inputs=args.n_inputs, samples=args.samples,
                         seed=args.seed, sites=args.sites, positions=args.positions)


def run_cli(args) -> dict:
    from estimators.activation.engine import Propagator

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    t0 = time.perf_counter()
    chain = build_chain(args)
    mask = parse_mask(args.mask, chain.layouts)
    prop = Propagator(chain, mask, bits_per_parameter=args.bits_per_parameter)
    res = prop.run()
    out = res.to_dict()
    out["mask"] = mask.to_dict()
    out["mask_hash"] = mask.hash()
    out["chain"] = chain.to_dict()
    out["cost"]["total_seconds_with_ground_truth"] = time.perf_counter() - t0
    out["layers"] = [{"name": name, "estimate_mean": est.mean.tolist(),
                      "empirical_mean": chain.empirical_stats(name)[0].tolist()}
                     for name, est in res.sites.items()]
    return out
