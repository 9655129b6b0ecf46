"""Causal scrubbing throughput: hypotheses per second on the induction model.

Compares, on the same 32 partitions and the same data:
  * streams, batched: all partitions in one treeified pass per data batch (the library);
  * streams, one at a time: the same code called once per partition;
  * hooks, one at a time: the recursive reference kept in the tests
    (tests/scrubbing/scrub_reference.py), each node copy run through the model's own
    TransformerLens modules with a hook reading hook_z; distinct copies memoised, so it is the
    best one-partition-at-a-time evaluation with hooks, not a strawman.
Each method runs in its own subprocess so its peak memory (VmHWM − RSS before the run; on CUDA
max_memory_allocated) is its own. Two workloads of 32 partitions: "search" (one greedy-search
step: a hypothesis plus each candidate edge; the partitions share most node copies) and
"random" (each edge's paths at random to important / a uniform block / a matched block / the
rest; little sharing: the worst case for batching).

    python benchmarks/bench_scrubbing.py [--model induction] [--n 64] [--partitions 32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "scrubbing.json"
METHODS = ("streams-batched", "streams-one-at-a-time", "hooks-one-at-a-time")
WORKLOADS = ("search", "random")


def _mem_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def make_partitions(graph, k: int, seed: int, workload: str = "random"):
    import numpy as np

    from estimators.scrubbing import Block, PathPartition

    rng = np.random.default_rng(seed)
    edges = graph.edge_patterns()
    if workload == "search":
        # One greedy-search step: a current hypothesis plus each candidate edge in turn.
        base = ("embed>a1.*:q>logits", "embed>a1.*:v>logits")
        cands = [e for e in edges if not graph.match(e).size == 0]
        cands = [cands[i] for i in rng.permutation(len(cands))]
        return [PathPartition(base + (cands[i % len(cands)],), name=f"s{i}") for i in range(k)]
    out = []
    for i in range(k):
        # Disjoint groups of whole paths (edge patterns overlap, so pick by path then write
        # the chosen paths' edges back as literal paths).
        groups = rng.choice(4, size=len(edges), p=[0.3, 0.15, 0.15, 0.4])
        owner = np.full(graph.n_paths, -1)
        for e, gid in zip(edges, groups):
            if gid < 3:
                idx = graph.match(e)
                free = idx[owner[idx] == -1]
                owner[free] = gid
        paths = [[graph.paths[j] for j in np.flatnonzero(owner == gid)] for gid in range(3)]
        blocks = tuple(Block(tuple(p), rs) for p, rs in
                       ((paths[1], "uniform"), (paths[2], "match:token_at:-1")) if p)
        out.append(PathPartition(tuple(paths[0]), blocks, name=f"p{i}"))
    return out


def worker(args) -> dict:
    import torch

    torch.set_num_threads(1)
    from estimators.loading import load_model
    from estimators.scrubbing import ScrubData, Scrubber
    from estimators.scrubbing.evaluate import stream_key

    loaded = load_model(args.model, args.device)
    model = loaded.model
    data = ScrubData.from_zoo("induction", n=args.n, seed=0)
    scrubber = Scrubber(model, data, batch_size=args.n, max_partitions=args.partitions)
    parts = make_partitions(scrubber.graph, args.partitions, seed=1, workload=args.workload)
    scrubber.baseline_losses()  # shared by all methods; not part of the timing
    for p in parts:  # draws are cached per key: do them up front for every method alike
        for bid in set(p.assign(scrubber.graph).tolist()):
            key = stream_key(bid, p)
            if key:
                scrubber.draw(key, p, bid, data)
    dev = scrubber.device
    if args.method == "hooks-one-at-a-time":
        sys.path.insert(0, str(ROOT))
        from tests.scrubbing.scrub_reference import reference_logits

        prepared = []
        for p in parts:
            a = p.assign(scrubber.graph)
            keys, streams, ps = {"": 0}, [data.batch.tokens], {}
            for j, path in enumerate(scrubber.graph.paths):
                key = stream_key(int(a[j]), p)
                if key not in keys:
                    keys[key] = len(streams)
                    streams.append(data.batch.tokens[scrubber.draw(key, p, int(a[j]), data)[0]])
                ps[path] = keys[key]
            prepared.append((ps, torch.stack(streams).to(dev)))

        def run():
            with torch.no_grad():
                return [data.loss_fn(reference_logits(model, ps, st, memo=True),
                                     data.batch.to(dev)) for ps, st in prepared]
    elif args.method == "streams-one-at-a-time":
        def run():
            return [scrubber.scrubbed_losses([p])[0] for p in parts]
    else:
        def run():
            return scrubber.scrubbed_losses(parts)[0]

    run()  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = _mem_kib("VmRSS")
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    out = {"method": args.method, "seconds": sec, "hypotheses_per_second": len(parts) / sec,
           "peak_extra_mib": max(0, _mem_kib("VmHWM") - rss_before) / 1024,
           "peak_rss_mib": _mem_kib("VmHWM") / 1024, "times": times}
    if dev.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if args.method == "streams-batched":
        _, diag = scrubber.scrubbed_losses(parts)
        out["plan_width"] = diag["plan_width"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="induction")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=64, help="examples per partition")
    ap.add_argument("--partitions", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--workload", choices=WORKLOADS, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, metavar="FILE",
                    help=f"write the results as JSON to FILE (default: print only; the "
                         f"tracked file is {RESULTS.relative_to(ROOT)})")
    args = ap.parse_args()
    if args.method:
        print(json.dumps(worker(args)))
        return
    rows = []
    for w in WORKLOADS:
        for m in METHODS:
            cmd = [sys.executable, __file__, "--method", m, "--workload", w, "--model",
                   args.model, "--device", args.device, "--n", str(args.n), "--partitions",
                   str(args.partitions), "--repeats", str(args.repeats)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
            if proc.returncode != 0:
                raise SystemExit(f"{w}/{m} failed:\n{proc.stderr[-3000:]}")
            rows.append({"workload": w, **json.loads(proc.stdout.strip().splitlines()[-1])})
    machine = {"platform": platform.platform(), "processor": platform.processor() or
               platform.machine(), "cpu_count": os.cpu_count(), "torch_threads": 1,
               "device": args.device, "python": platform.python_version()}
    print(f"machine: {machine}")
    print(f"model {args.model}, {args.partitions} partitions, {args.n} examples each\n")
    print(f"{'workload':9s} {'method':24s} {'seconds':>9s} {'hyp/s':>9s} {'vs hooks':>9s} "
          f"{'peak extra MiB':>15s}")
    speedups = {}
    for w in WORKLOADS:
        by = {r["method"]: r for r in rows if r["workload"] == w}
        hooks = by["hooks-one-at-a-time"]["hypotheses_per_second"]
        for m in METHODS:
            r = by[m]
            r["speedup_vs_hooks"] = r["hypotheses_per_second"] / hooks
            print(f"{w:9s} {m:24s} {r['seconds']:9.3f} {r['hypotheses_per_second']:9.2f} "
                  f"{r['speedup_vs_hooks']:8.1f}x {r['peak_extra_mib']:15.1f}")
        speedups[w] = by["streams-batched"]["speedup_vs_hooks"]
    print("\nbatched streams vs hooks one at a time: " +
          ", ".join(f"{w} {v:.1f}x" for w, v in speedups.items()) + " (target >= 5x)")
    doc = {"benchmark": "scrubbing", "model": args.model, "n_examples": args.n,
           "n_partitions": args.partitions, "machine": machine, "rows": rows,
           "speedup_batched_vs_hooks": speedups,
           "workloads": {"search": "one greedy step: a 2-edge hypothesis plus each of 32 "
                                   "candidate edges (partitions share most node copies)",
                         "random": "each edge's paths at random to important / a uniform "
                                   "block / a matched block / the rest (little sharing)"},
           "target": ">= 5x at 32 partitions", "date": time.strftime("%Y-%m-%d %H:%M")}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.out}")
    else:
        print("wrote nothing (pass --out FILE to save the JSON)")


if __name__ == "__main__":
    main()
