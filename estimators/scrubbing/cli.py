"""`python -m estimators scrub`: score a path partition (causal scrubbing) from the shell.

    python -m estimators scrub --model induction --partition hyp.json --n 256 --seed 0 --json
    python -m estimators scrub --model induction --reference "all three" --json
    python -m estimators scrub --model ./ckpt --partition hyp.json --data seqs.json --json
    python -m estimators scrub-search --model induction --steps 5 --json

`--data` is a JSON list of token-id lists of one length (loss: next-token loss at every
position but the last); zoo models bring their own data and loss (`ZooEntry.sample/loss`).
`--partition` reads a partition JSON (see partition.py) or an explanation file downloaded
from the app's Causal scrubbing page.
"""

from __future__ import annotations


from estimators.cli import UserError, add_common_json
from estimators.loading import read_json_file


def _load_partition(path: str):
    from estimators.scrubbing.partition import PathPartition

    from estimators.explanation import unwrap

    doc, _ = unwrap(read_json_file(path, "partition"), "scrubbing")  # or a page's file
    return PathPartition.from_dict(doc)


def _load_data(args, loaded):
    from estimators.scrubbing.evaluate import ScrubData

    cfg = loaded.model.cfg
    if args.data:
        seqs = read_json_file(args.data, "data")
        if isinstance(seqs, list) and args.n:
            seqs = seqs[: args.n]
        return ScrubData.from_sequences(seqs, cfg.d_vocab, cfg.n_ctx, f"file:{args.data}")
    if loaded.kind != "zoo":
        raise UserError("this model is not a zoo model: give --data (a JSON list of token-id "
                        "sequences)")
    return ScrubData.from_zoo(loaded.name, n=args.n or 256, seed=args.seed)


def _setup(args):
    import torch

    from estimators.loading import load_model
    from estimators.scrubbing.evaluate import Scrubber

    if args.n is not None and args.n < 2:
        raise UserError("--n must be at least 2")
    torch.set_num_threads(max(1, args.threads))
    loaded = load_model(args.model, args.device)
    from estimators.validation import require_memory, transformer_activation_bytes
    require_memory(transformer_activation_bytes(loaded.model.cfg, args.n or 256, copies=3,
                                                bytes_per_number=4),
                   f"--n {args.n or 256}")  # original, scrubbed and random runs
    data = _load_data(args, loaded)
    scrubber = Scrubber(loaded.model, data, seed=args.seed, batch_size=args.batch_size,
                        device=args.device)
    return loaded, data, scrubber


def run_scrub(args) -> dict:
    from estimators.scrubbing import references

    if bool(args.partition) == bool(args.reference):
        raise UserError("give exactly one of --partition FILE or --reference NAME")
    loaded, data, scrubber = _setup(args)
    if args.partition:
        partition = _load_partition(args.partition)
    else:
        partition = references.get(loaded.name, args.reference).partition
    [res] = scrubber.evaluate([partition])
    out = {"model": loaded.name, "n": len(data), "seed": args.seed,
           "partition_hash": partition.hash, "n_paths": scrubber.graph.n_paths,
           "loss_original": res.loss_original, "loss_scrubbed": res.loss_scrubbed,
           "loss_random": res.loss_random, "loss_recovered": res.loss_recovered,
           "surprise": res.surprise.to_dict(), "seconds": res.diagnostics["seconds"]}
    if args.anomaly:
        from estimators.scrubbing.anomaly import anomaly_demo
        from estimators.scrubbing.evaluate import ScrubData

        if loaded.kind == "zoo" and not args.data:
            normal = ScrubData.from_zoo(loaded.name, n=len(data), seed=args.seed + 1)
        else:
            raise UserError("--anomaly needs a zoo model (fresh normal inputs come from it)")
        demo = anomaly_demo(scrubber, partition, normal, seed=args.seed)
        out["anomaly"] = {"anomaly": demo["anomaly"], "auc_scrubbed": demo["scrubbed"]["auc"],
                          "auc_excess": demo["excess"]["auc"]}
    return out


def run_search(args) -> dict:
    from estimators.scrubbing.search import greedy_search

    loaded, data, scrubber = _setup(args)
    steps = greedy_search(scrubber, unit=args.unit, max_steps=args.steps)
    return {"model": loaded.name, "n": len(data), "seed": args.seed,
            "steps": [s.to_dict() for s in steps]}


def _common(p):
    p.add_argument("--model", required=True, help="zoo name or model folder")
    p.add_argument("--data", help="JSON list of token-id sequences (non-zoo models)")
    p.add_argument("--n", type=int, default=None, help="examples (zoo default 256)")
    p.add_argument("--seed", type=int, default=0, help="data and resampling seed")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    p.add_argument("--batch-size", type=int, default=128, help="examples per pass")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    add_common_json(p)


def register(subparsers) -> None:
    p = subparsers.add_parser("scrub", help="causal scrubbing: score a path partition")
    _common(p)
    p.add_argument("--partition", help="partition JSON file (or an app explanation file)")
    p.add_argument("--reference", help="name of a shipped reference hypothesis")
    p.add_argument("--anomaly", action="store_true",
                   help="also run the anomaly demo (shuffled second halves) and print ROC AUC")
    p.set_defaults(func=run_scrub)
    s = subparsers.add_parser("scrub-search", help="causal scrubbing: greedy partition search")
    _common(s)
    s.add_argument("--steps", type=int, default=5, help="at most this many greedy steps")
    s.add_argument("--unit", default="edge", choices=["edge", "node", "path"])
    s.set_defaults(func=run_search)
