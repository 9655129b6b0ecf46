"""`python -m estimators scrub`: score a path partition (causal scrubbing) from the shell.

    python -m estimators scrub --model induction --partition hyp.json --n 256 --seed 0 --json
    python -m estimators scrub --model induction --reference "all three" --json
    python -m estimators scrub --model ./ckpt --partition hyp.json --data seqs.json --json
    python -m estimators scrub-search --model induction --steps 5 --json
    python -m estimators scrub-search --model ./ckpt --data seqs.json --engine edges --unit node

`--data` is a data spec of `estimators.data` (a JSON list of token-id lists of one length, or
tokens:/text:/hf: with ,n=,len=,seed=; loss: next-token loss at every position but the last);
zoo models bring their own data and loss (`ZooEntry.sample/loss`).
`--partition` reads a partition JSON (see partition.py) or an explanation file downloaded
from the app's Causal scrubbing page. `--engine auto|treeified|edges` (both commands; see
engines.py): auto treeifies when the model has at most 200,000 paths, else patches edges;
the JSON says which ran and why (`engine`, `engine_reason`). `scrub-search` also prints
`stop_reason` and `verified_total_bits` (search.py).
"""

from __future__ import annotations


from estimators.cli import UserError, add_common_json, progress_flag, progress_printer
from estimators.loading import read_json_file
from estimators.progress import Progress


def _load_partition(path: str):
    from estimators.scrubbing.partition import PathPartition

    from estimators.explanation import unwrap

    doc, _ = unwrap(read_json_file(path, "partition"), "scrubbing")  # or a page's file
    return PathPartition.from_dict(doc)


def _load_data(args, loaded):
    from estimators.scrubbing.evaluate import ScrubData

    cfg = loaded.model.cfg
    if args.data:  # a data spec (estimators.data); a bare FILE.json is tokens:FILE.json
        from estimators.data import parse_spec

        src = parse_spec(args.data, n=args.n, seed=args.seed)
        if src.kind == "zoo":
            if src.path is None and loaded.kind != "zoo":
                raise UserError("--data zoo needs a zoo model (or zoo:NAME)")
            return ScrubData.from_zoo(src.path or loaded.name, n=src.n or 256, seed=src.seed)
        data = src.with_defaults(n=2 ** 62).load(loaded)  # no n: every sequence
        return ScrubData.from_sequences(data.tokens.tolist(), cfg.d_vocab, cfg.n_ctx,
                                        data.source.spec,
                                        d_vocab_out=getattr(cfg, "d_vocab_out", None))
    if loaded.kind != "zoo":
        raise UserError("this model is not a zoo model: give --data (tokens:FILE.json, "
                        "text:PATH or hf:FOLDER; see estimators.data)")
    return ScrubData.from_zoo(loaded.name, n=args.n or 256, seed=args.seed)


def _setup(args):
    import torch

    from estimators.loading import load_model

    if args.n is not None and args.n < 2:
        raise UserError("--n must be at least 2")
    torch.set_num_threads(max(1, args.threads))
    loaded = load_model(args.model, args.device)
    from estimators.validation import require_memory, transformer_activation_bytes
    require_memory(transformer_activation_bytes(loaded.model.cfg, args.n or 256, copies=3,
                                                bytes_per_number=4),
                   f"--n {args.n or 256}")  # original, scrubbed and random runs
    data = _load_data(args, loaded)
    bpp = args.bits_per_parameter
    if bpp is not None and not (bpp >= 0 and bpp != float("inf")):
        raise UserError("--bits-per-parameter must be a number ≥ 0")
    from estimators.scrubbing.engines import make_scrubber

    scrubber, choice = make_scrubber(loaded.model, data, getattr(args, "engine", "auto"),
                                     seed=args.seed, batch_size=args.batch_size,
                                     device=args.device, bits_per_parameter=bpp)
    scrubber.engine_choice = choice
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
    [res] = scrubber.evaluate([partition], progress=progress_printer(
        "scrub", getattr(args, "progress", None)))
    out = {"model": loaded.name, "n": len(data), "seed": args.seed,
           "partition_hash": partition.hash, "engine": scrubber.ENGINE,
           "engine_reason": scrubber.engine_choice.reason,
           **({"n_edges": scrubber.graph.n_edges} if hasattr(scrubber.graph, "n_edges")
              else {"n_paths": scrubber.graph.n_paths}),
           "loss_original": res.loss_original, "loss_scrubbed": res.loss_scrubbed,
           "loss_random": res.loss_random, "loss_recovered": res.loss_recovered,
           "surprise": res.surprise.to_dict(), "seconds": res.diagnostics["seconds"]}
    if args.anomaly:
        from estimators.scrubbing.anomaly import anomaly_demo
        from estimators.scrubbing.evaluate import ScrubData

        if loaded.kind == "zoo" and not args.data:
            normal = ScrubData.from_zoo(loaded.name, n=len(data), seed=args.seed + 1)
        else:
            normal = _fresh_normal(args, loaded, data)
        demo = anomaly_demo(scrubber, partition, normal, seed=args.seed)
        out["anomaly"] = {"anomaly": demo["anomaly"], "auc_scrubbed": demo["scrubbed"]["auc"],
                          "auc_excess": demo["excess"]["auc"]}
    return out


def _fresh_normal(args, loaded, data):
    """Normal inputs for --anomaly from --data: as many sequences as scrubbing uses, drawn by
    seed + 1 from the data's windows that scrubbing does not already resample from."""
    from estimators.data import parse_spec
    from estimators.scrubbing.evaluate import ScrubData

    src = parse_spec(args.data, n=args.n, seed=args.seed)
    if src.kind == "zoo":
        return ScrubData.from_zoo(src.path or loaded.name, n=len(data), seed=(src.seed or 0) + 1)
    import dataclasses

    import torch

    pool = dataclasses.replace(src, n=2 ** 62).load(loaded).tokens.tolist()  # every window
    seen = {tuple(r) for r in data.batch.tokens.tolist()}
    fresh = [r for r in pool if tuple(r) not in seen]
    order = torch.randperm(len(fresh), generator=torch.Generator().manual_seed(
        (src.seed or 0) + 1))
    fresh = [fresh[i] for i in sorted(order[: len(data)].tolist())]
    if len(fresh) < 2:
        raise UserError("--anomaly needs fresh normal inputs: the data holds no sequences "
                        "beyond those scrubbing uses (ask for fewer with n=)")
    cfg = loaded.model.cfg
    return ScrubData.from_sequences(fresh, cfg.d_vocab, cfg.n_ctx, f"{src.spec} (fresh)")


def run_search(args) -> dict:
    from estimators.scrubbing.search import greedy_search

    loaded, data, scrubber = _setup(args)
    show = progress_printer("scrub-search", getattr(args, "progress", None))
    steps = greedy_search(scrubber, unit=args.unit, max_steps=args.steps,
                          progress=None if show is None else
                          lambda i, k, _step: show(Progress(i, k, "steps", "greedy search")))
    return {"model": loaded.name, "n": len(data), "seed": args.seed,
            "engine": scrubber.ENGINE, "engine_reason": scrubber.engine_choice.reason,
            "unit": args.unit, "steps": [s.to_dict() for s in steps],
            "stop_reason": steps.stop_reason, "verified_total_bits": steps.verified_total_bits}


def _common(p):
    p.add_argument("--model", required=True, help="zoo name or model folder")
    p.add_argument("--data", help="data spec: a JSON file of token-id lists, tokens:FILE, "
                   "text:PATH, hf:FOLDER[:COLUMN] or zoo, options ,n=,len=,seed= (non-zoo "
                   "models need it)")
    p.add_argument("--n", type=int, default=None, help="examples (zoo default 256)")
    p.add_argument("--seed", type=int, default=0, help="data and resampling seed")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    p.add_argument("--batch-size", type=int, default=128, help="examples per pass")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--bits-per-parameter", type=float, default=None,
                   help="S(π) bits per kept path (per kept edge with the edge engine; "
                        "default ½·log2 N for N examples)")
    p.add_argument("--engine", default="auto", choices=["auto", "treeified", "edges"],
                   help="treeified paths, patched edges (any model size; single-edge and "
                        "whole-node patterns), or auto: treeified when the model's paths can "
                        "be enumerated (at most 200,000), else edges")
    progress_flag(p)
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
