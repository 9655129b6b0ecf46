"""`python -m estimators circuit`: estimate every node of an arithmetic circuit, with the exact
truth and the surprise accounting.

    python -m estimators circuit --circuit square --track all --json
    python -m estimators circuit --circuit my.json --track pairs.json --samples 2000 --json
    python -m estimators circuit --circuit power_chain --order 8 --json      # Wick order 8

--track FILE holds {"pairs": [["x", "y"], ...]}. --method defaults to `wick` when --order is
given, else `sparse` (whose empty argument, --track none, is the independence estimate).
"""

from __future__ import annotations

from pathlib import Path

from estimators.circuits.analysis import METHODS, CircuitConfig, analyse, parse_track_file
from estimators.circuits.model import CircuitError, list_presets, load_circuit
from estimators.circuits.propagate import candidate_pairs
from estimators.cli import UserError, add_common_json


def _run(args) -> dict:
    circuit = load_circuit(args.circuit)
    if args.track == "none":
        tracked = []
    elif args.track == "all":
        tracked = candidate_pairs(circuit)
    else:
        path = Path(args.track)
        if not path.is_file():
            raise UserError(f"--track must be none, all, or a JSON file; {args.track!r} is none "
                            f"of these")
        from estimators.validation import read_json_path
        doc = read_json_path(path, "track")  # size, depth, syntax: one InputError line
        tracked = parse_track_file(doc)
    method = args.method or ("wick" if args.order is not None else "sparse")
    if args.order is not None and method != "wick":
        raise UserError("--order applies to --method wick only")
    if tracked and method != "sparse":
        raise UserError(f"--track applies to --method sparse only (got --method {method})")
    config = CircuitConfig(method=method, tracked=tuple(tracked),
                           order=args.order if args.order is not None else 2,
                           mc_samples=args.mc_samples, samples=args.samples, seed=args.seed,
                           epsilon=args.epsilon, bits_per_parameter=args.bits_per_parameter,
                           device=args.device or "cpu")
    result = analyse(circuit, config).to_dict()
    return result if args.json else _text(result)


def _text(r: dict) -> str:
    head = f"{'id':<12}{'kind':<7}{'mean_est':>12}{'mean_true':>12}{'var_est':>12}{'var_true':>12}"
    lines = [f"circuit {r['circuit']} (output {r['output']}): {r['estimator']}; truth: "
             f"{r['truth']}",
             "tracked: " + (", ".join(f"{u}×{v}" for u, v in r["tracked"]) or "none")
             + f" (of {len(r['candidates'])} candidate pairs)", "", head]
    for n in r["nodes"]:
        lines.append(f"{n['id']:<12}{n['kind']:<7}{n['mean_est']:>12.6g}{n['mean_true']:>12.6g}"
                     f"{n['var_est']:>12.6g}{n['var_true']:>12.6g}"
                     + ("  ! see notes" if n.get("warning") else ""))
    s = r["surprise"]
    lines += ["", f"S(π) = {s['argument_bits']:.2f} bits, S(Y|π) = {s['data_bits']:.2f} bits, "
                  f"total = {s['total_bits']:.2f} bits", s["notes"]] + r["notes"]
    return "\n".join(lines)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "circuit", help="arithmetic-circuit playground: propagate means/variances, compare with "
                        "the exact truth, surprise accounting",
        description=__doc__.split("\n\n")[0])
    p.add_argument("--circuit", required=True,
                   help=f"a circuit JSON file or a preset: {', '.join(list_presets())}")
    p.add_argument("--track", default="none",
                   help='none | all | FILE with {"pairs": [["x", "y"], ...]} (sparse method)')
    p.add_argument("--method", choices=list(METHODS), default=None,
                   help="estimator (default: wick if --order is given, else sparse)")
    p.add_argument("--order", type=int, default=None, help="Wick expansion order K (>= 1)")
    p.add_argument("--samples", type=int, default=1000,
                   help="draws of the real output scored for S(Y|π) (default 1000)")
    p.add_argument("--mc-samples", type=int, default=10_000,
                   help="samples of the Monte Carlo estimator (default 10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epsilon", type=float, default=None,
                   help="quantisation ε for S(Y|π) (default: the gap between output values for "
                        "finite inputs, else 0.01)")
    p.add_argument("--bits-per-parameter", type=float, default=None,
                   help="bits per fitted number (Monte Carlo; default ½·log2 N)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | mps | auto")
    add_common_json(p)
    p.set_defaults(func=_run)


__all__ = ["register", "CircuitError"]
