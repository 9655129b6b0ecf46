"""Edge-patching causal scrubbing at gpt2-small scale: one head-level hypothesis vs one plain
forward pass over the same data, in the same process.

Model: GPT-2 small's shapes (12 layers, d_model 768, 12 heads of 64, d_mlp 3072, vocabulary
50,257, n_ctx 1024, LayerNorm, gelu_new), random weights built locally. Data: N random sequences
of T tokens (default 32 × 32). The hypothesis is a circuit of K random heads plus every MLP: every
edge among {embed, the circuit's heads, the MLPs, the logits} is important, the direct path
embed>logits is one uniformly resampled block, every other edge reads the shared random input
(what ACDC / AutoCircuit edge masks express). Timed (median of --reps):

  * forward: `model(tokens)` on the N × T tokens;
  * hypothesis: `EdgeScrubber.evaluate([π])` on a fresh scrubber (original, all-resampled and
    scrubbed losses: 2 baseline passes + 1 clean pass per stream + 1 patched pass);
  * scrubbed pass only: `scrubbed_losses([π])` (baselines excluded);
also the one-off costs (the conformance check, reading the partition into edge labels) and the
peak resident memory of the process (ru_maxrss). The treeified engine's refusal is recorded.

    python benchmarks/bench_scrub_edges.py [--n 32] [--len 32] [--heads 10] [--threads 1]
                                           [--reps 2] [--out results/scrub_edges_cpu.json]

Prints a table; writes JSON only with --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_activation_latency import gpt2_small_shaped, rss_mib  # noqa: E402


def circuit_partition(n_layers: int, n_heads: int, k: int, seed: int):
    """Every edge among embed, k random heads, every MLP and the logits important; the
    direct path a uniform block."""
    import random

    from estimators.scrubbing import Block, PathPartition

    rng = random.Random(seed)
    heads = sorted(rng.sample([(l, h) for l in range(n_layers) for h in range(n_heads)], k))
    nodes = sorted([(l, 0, f"a{l}.{h}") for l, h in heads] +
                   [(l, 1, f"m{l}") for l in range(n_layers)])
    pats = []
    for i, (ld, kd, d) in enumerate(nodes):
        dhops = [f"{d}:{c}" for c in "qkv"] if kd == 0 else [d]
        senders = ["embed"] + [f"*>{s}" + (":*" if ks == 0 else "")
                               for ls, ks, s in nodes[:i] if ls < ld or (ks == 0 and kd == 1)]
        pats += [f"{s}>{h}>*" for s in senders for h in dhops]
        pats.append(f"*>{d}" + (":*" if kd == 0 else "") + ">logits")
    return PathPartition(tuple(pats), (Block(("embed>logits",)),),
                         name=f"circuit of {k} heads + all MLPs"), heads


def _median_time(fn, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32, help="sequences")
    ap.add_argument("--len", type=int, default=32, help="tokens per sequence")
    ap.add_argument("--heads", type=int, default=10, help="heads in the circuit")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--reps", type=int, default=2, help="timed repetitions (median)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)

    import torch

    from estimators import conformance
    from estimators.scrubbing import ScrubData
    from estimators.scrubbing.edges import EdgeScrubber
    from estimators.scrubbing.paths import PathError, PathGraph

    torch.set_num_threads(max(1, args.threads))
    t = time.perf_counter()
    model = gpt2_small_shaped().to(args.device)
    build_s = time.perf_counter() - t
    try:
        PathGraph.from_model(model)
        treeified = "accepted"
    except PathError as e:
        treeified = str(e)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50257, (args.n, args.len), generator=g)
    data = ScrubData.from_sequences(tokens.tolist(), 50257, 1024, "random tokens")
    dev_tokens = tokens.to(args.device)

    t = time.perf_counter()
    verdict = conformance.verdict(model, "scrubbing-edges")
    check_s = time.perf_counter() - t
    part, heads = circuit_partition(12, 12, args.heads, seed=0)

    with torch.no_grad():
        model(dev_tokens[:2])  # warm-up
        fwd = _median_time(lambda: model(dev_tokens), args.reps)

    def hypothesis():
        s = EdgeScrubber(model, data, batch_size=args.n, device=args.device)
        return s.evaluate([part])[0]

    t = time.perf_counter()
    scrubber = EdgeScrubber(model, data, batch_size=args.n, device=args.device)
    a = scrubber.assign(part)
    assign_s = time.perf_counter() - t
    hyp = _median_time(hypothesis, args.reps)
    res = hypothesis()
    scrub_only = _median_time(lambda: scrubber.scrubbed_losses([part]), args.reps)
    peak_mib = rss_mib()

    out = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), "
                   f"device {args.device}",
        "model": "gpt2-small-shaped (12 layers, d_model 768, 12 heads, vocab 50257), random",
        "data": f"{args.n} x {args.len} random tokens",
        "treeified_engine": treeified,
        "n_edges": scrubber.graph.n_edges, "edges_named": int((a >= 0).sum()),
        "patterns": len(part.important) + sum(len(b.paths) for b in part.blocks),
        "circuit_heads": [f"a{l}.{h}" for l, h in heads],
        "conformance": verdict.line(), "conformance_seconds": check_s,
        "model_build_seconds": build_s, "assign_seconds": assign_s,
        "forward_seconds": fwd, "hypothesis_seconds": hyp,
        "hypothesis_over_forward": hyp / fwd,
        "scrubbed_pass_seconds": scrub_only, "scrubbed_pass_over_forward": scrub_only / fwd,
        "loss_original": res.loss_original, "loss_scrubbed": res.loss_scrubbed,
        "loss_random": res.loss_random, "argument_bits": res.surprise.argument_bits,
        "peak_rss_mib": peak_mib,
    }
    for k in ("forward_seconds", "hypothesis_seconds", "hypothesis_over_forward",
              "scrubbed_pass_seconds", "scrubbed_pass_over_forward", "assign_seconds",
              "conformance_seconds", "edges_named", "n_edges", "peak_rss_mib"):
        v = out[k]
        print(f"{k:28s} {v:.3g}" if isinstance(v, float) else f"{k:28s} {v}")
    print(f"{'treeified_engine':28s} {treeified}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
