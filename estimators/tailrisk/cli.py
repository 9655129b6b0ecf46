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

from estimators.cli import UserError, add_common_json

BEHAVIOUR_KINDS = ("argmax", "sampled", "logit", "sae", "direction")


def _add_problem_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="zoo name, checkpoint folder or HF folder")
    p.add_argument("--distribution", required=True,
                   help="built-in distribution of the zoo model, or a JSON file")
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
                    "with a Wilson interval; cached under $HEW_CACHE_DIR or "
                    "~/.cache/heuristic-workbench/.")
    _add_problem_args(g)
    g.add_argument("--max-exact", type=int, default=2 ** 24)
    g.add_argument("--samples", type=int, default=2 ** 22)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-cache", action="store_true")
    add_common_json(g)
    g.set_defaults(func=run_ground_truth)


def _problem(args):
    from estimators.loading import load_model
    from estimators.tailrisk.behaviours import (Argmax, LogitThreshold, SampledProbability,
                                                parse_target)
    from estimators.tailrisk.distributions import resolve_distribution

    lm = load_model(args.model, args.device)
    entry = lm.zoo_entry
    vocab = entry.token_labels() if entry is not None else None
    dist = resolve_distribution(args.distribution, lm.model, entry, vocab)
    if args.behaviour in ("sae", "direction"):
        b = _feature_behaviour(args, lm)
        return lm, dist, b, b.name
    if args.target is None:
        raise UserError(f"--behaviour {args.behaviour} needs --target")
    target = parse_target(args.target, lm.model, vocab)
    if args.behaviour == "argmax":
        b = Argmax(target)
    elif args.behaviour == "sampled":
        b = SampledProbability(target, args.sampling_temperature)
    else:
        b = LogitThreshold(target, args.threshold)
    b.validate(lm.model)
    label = vocab[target] if vocab is not None and target < len(vocab) else str(target)
    return lm, dist, b, label


def _feature_behaviour(args, lm):
    """SAE latent or probe direction (DirectionThreshold) from the arguments."""
    from pathlib import Path

    from estimators.loading import load_sae
    from estimators.tailrisk.behaviours import parse_direction, probe_direction, sae_feature

    if args.behaviour == "sae":
        if args.feature is None:
            raise UserError("--behaviour sae needs --feature J")
        sae = load_sae(args.sae, lm, args.device)
        return sae_feature(sae, args.feature, args.threshold)
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


def run_tail_risk(args) -> dict:
    from estimators.tailrisk.ground_truth import ground_truth
    from estimators.tailrisk.registry import ESTIMATORS, run_estimator

    lm, dist, b, label = _problem(args)
    extra = {}
    if args.temperature is not None:
        if not ESTIMATORS[args.method].has_temperature:
            raise UserError(f"--temperature applies to itgis and mhis, not {args.method}")
        extra["temperature"] = args.temperature
    if args.mask is not None:
        if args.method != "activation":
            raise UserError(f"--mask applies to the activation method, not {args.method}")
        extra["mask"] = args.mask
    est = run_estimator(args.method, lm.model, dist, b, args.budget, args.seed, **extra)
    out = {"estimate": est.value,
           "interval": list(est.interval) if est.interval is not None else None,
           "calls": est.cost.calls, "seconds": est.cost.seconds, "method": args.method,
           "budget": args.budget, "seed": args.seed, "behaviour": b.label(),
           **_target_fields(b, label), "distribution": dist.name,
           "n_inputs": dist.n_inputs(), "diagnostics": est.diagnostics}
    if args.with_truth:
        out["truth"] = ground_truth(lm.model, dist, b,
                                    progress=stderr_progress("ground truth")).to_dict()
    return out


def stderr_progress(what: str, every_s: float = 2.0):
    """A progress callback (fraction in [0, 1]) that prints `what: 37% (12 s)` on stderr at most
    every `every_s` seconds, only when stderr is a terminal (stdout stays clean for --json)."""
    import sys
    import time

    if not sys.stderr.isatty():
        return None
    t0, last = time.perf_counter(), [0.0]

    def report(frac: float) -> None:
        now = time.perf_counter()
        if now - last[0] >= every_s or frac >= 1.0:
            last[0] = now
            end = "\n" if frac >= 1.0 else ""
            print(f"\r{what}: {100 * frac:.0f}% ({now - t0:.0f} s)", end=end, file=sys.stderr,
                  flush=True)
    return report


def run_ground_truth(args) -> dict:
    from estimators.tailrisk.ground_truth import ground_truth

    lm, dist, b, label = _problem(args)
    if args.max_exact < 1 or args.samples < 1:
        raise UserError("--max-exact and --samples must be positive")
    g = ground_truth(lm.model, dist, b, max_exact=args.max_exact, n_samples=args.samples,
                     seed=args.seed, use_cache=not args.no_cache,
                     progress=stderr_progress("ground truth"))
    return {"probability": g.probability, "method": g.method,
            "interval": list(g.interval) if g.interval is not None else None,
            "n_inputs": g.n_inputs, "seconds": g.seconds, "cached": g.cached,
            "behaviour": b.label(), **_target_fields(b, label), "distribution": dist.name}
