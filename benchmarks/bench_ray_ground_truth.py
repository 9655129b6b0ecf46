"""Sampled ground truth on the zoo's character LM: samples per second in this process, and on a
local Ray cluster (127.0.0.1) with 1 and 2 workers; the speed-up; and the figures a plan for
2^32 samples on N GPU workers rests on.

Problem: `charlm`, the full built-in `hex` distribution (8 positions, 16 tokens each: 2^32
inputs), argmax of every target at once (one pass gives the whole [V] histogram). N samples in
shards of --shard-samples (each shard seeded by `distributed.shard_seed`), so every run below
computes the same counts (checked). Ray workers are warmed up first (each loads the model once);
cluster start and warm-up are timed separately. The machine's load average is recorded before
and after: on a shared machine the speed-up measures the cores actually free.

    .venv/bin/python benchmarks/bench_ray_ground_truth.py [--samples 65536] [--out FILE]

JSON only with --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from estimators.distributed import LocalBackend, RayBackend, model_ref  # noqa: E402
from estimators.loading import load_model  # noqa: E402
from estimators.tailrisk import Argmax  # noqa: E402
from estimators.tailrisk.distributed import sharded_ground_truth_vector  # noqa: E402
from estimators.tailrisk.distributions import from_table  # noqa: E402

TARGET_SAMPLES = 2 ** 32


def forward_flops(cfg, length: int) -> float:
    """Matrix-product FLOPs (2·m·n·k each) of one forward pass of one sequence: per layer and
    token QKV 6·d·H·d_h, output 2·H·d_h·d, scores and mixing 4·k·H·d_h (causal: counted in
    full), MLP 4·d·d_mlp; unembedding 2·d·V per token (TransformerLens runs it at every
    position). LayerNorm, softmax and GELU are not counted."""
    d, H, dh, dm, V, L = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab, cfg.n_layers
    per_token = L * (6 * d * H * dh + 2 * H * dh * d + 4 * length * H * dh + 4 * d * dm) \
        + 2 * d * V
    return float(per_token * length)


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    r = fn()
    return time.perf_counter() - t0, r


def sampling_rate(dist, n: int = 2 ** 16) -> float:
    """Input sequences drawn per second on one CPU core (torch.multinomial, the shards' sampler)."""
    g = torch.Generator().manual_seed(0)
    dist.sample(1024, g)
    t, _ = timed(lambda: dist.sample(n, g))
    return n / t


def measure(args) -> dict:
    torch.set_num_threads(1)
    lm = load_model("charlm", "cpu")
    model, entry = lm.model, lm.zoo_entry
    dist = from_table(entry.input_distributions()["hex"], model.cfg.d_vocab, "hex",
                      entry.token_labels())
    kw = dict(force_samples=args.samples, seed=0, shard_samples=args.shard_samples,
              use_cache=False)
    b = Argmax(0)
    rows = {}
    load_before = list(os.getloadavg())
    t, local = timed(lambda: sharded_ground_truth_vector(model, dist, b, LocalBackend(), **kw))
    rows["this process"] = {"workers": 1, "seconds": t, "samples_per_s": args.samples / t}
    t_start, cluster = timed(lambda: RayBackend(workers=2))
    try:
        ref = model_ref("charlm", model)
        warm = dict(kw, force_samples=4 * 2048, shard_samples=2048)
        t_warm, _ = timed(lambda: sharded_ground_truth_vector(model, dist, b, cluster, ref,
                                                              **warm))
        counts = {}
        for w in (1, 2):
            t, r = timed(lambda: sharded_ground_truth_vector(
                model, dist, b, cluster.with_workers(w), ref, **kw))
            rows[f"ray, {w} worker{'s' if w > 1 else ''}"] = {
                "workers": w, "seconds": t, "samples_per_s": args.samples / t}
            counts[w] = r["counts"]
    finally:
        cluster.close()
    same = counts[1] == counts[2] == local["counts"]
    load_after = list(os.getloadavg())
    r1, r2 = rows["ray, 1 worker"], rows["ray, 2 workers"]
    return {"problem": dist.describe(), "samples": args.samples,
            "shard_samples": args.shard_samples, "shards": local["shards"],
            "rows": rows, "speedup_2_over_1": r2["samples_per_s"] / r1["samples_per_s"],
            "identical_counts": same, "ray_start_seconds": t_start,
            "ray_warmup_seconds": t_warm,
            "flops_per_sample": forward_flops(model.cfg, dist.length),
            "cpu_sampling_per_s": sampling_rate(dist),
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                        "torch": torch.__version__, "threads_per_worker": 1,
                        "load_average_before": load_before, "load_average_after": load_after}}


def plan(res: dict, gpu_flops: float, efficiency: float, workers=(1, 8, 64)) -> list[dict]:
    """Estimated hours for 2^32 samples on N GPU workers: per worker the slower of the model
    (flops_per_sample / (gpu_flops·efficiency)) and the CPU sampler feeding it (one core per
    task, the measured rate); plus the measured per-worker start (Ray start + model load)."""
    fps = res["flops_per_sample"]
    model_rate = gpu_flops * efficiency / fps
    rate = min(model_rate, res["cpu_sampling_per_s"])
    cpu_rate = res["rows"]["ray, 1 worker"]["samples_per_s"]
    out = []
    for n in workers:
        out.append({"gpu_workers": n, "per_worker_samples_per_s": rate,
                    "bound": "CPU sampler" if rate < model_rate else "GPU model",
                    "hours": (TARGET_SAMPLES / (n * rate) + res["ray_start_seconds"]
                              + res["ray_warmup_seconds"]) / 3600,
                    "hours_on_cpu_workers_like_this_one": TARGET_SAMPLES / (n * cpu_rate) / 3600})
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=2 ** 16)
    ap.add_argument("--shard-samples", type=int, default=2 ** 13)
    ap.add_argument("--gpu-tflops", type=float, default=67.0,
                    help="assumed GPU peak for the plan, TFLOP/s (H100/H200 FP32: ~67)")
    ap.add_argument("--efficiency", type=float, default=0.1,
                    help="assumed fraction of that peak a tiny model reaches (default 0.1)")
    ap.add_argument("--out", default=None, help="write the results as JSON to this file")
    args = ap.parse_args(argv)
    res = measure(args)
    res["plan"] = plan(res, args.gpu_tflops * 1e12, args.efficiency)
    res["plan_assumptions"] = {"gpu_tflops": args.gpu_tflops, "efficiency": args.efficiency}
    m = res["machine"]
    print(f"{res['problem']}\n{res['samples']:,} samples in {res['shards']} shards of "
          f"{res['shard_samples']:,}; {m['cpu_count']} cores; load average "
          f"{m['load_average_before'][0]:.1f} before, {m['load_average_after'][0]:.1f} after")
    print(f"{'run':18s} {'workers':>7s} {'seconds':>8s} {'samples/s':>10s}")
    for name, r in res["rows"].items():
        print(f"{name:18s} {r['workers']:7d} {r['seconds']:8.1f} {r['samples_per_s']:10,.0f}")
    print(f"speed-up 2 workers / 1 worker: {res['speedup_2_over_1']:.2f}x; identical counts: "
          f"{res['identical_counts']}; Ray start {res['ray_start_seconds']:.1f}s, warm-up "
          f"{res['ray_warmup_seconds']:.1f}s")
    print(f"forward FLOPs per sample {res['flops_per_sample']:.3g}; CPU sampler "
          f"{res['cpu_sampling_per_s']:,.0f} sequences/s per core")
    print(f"plan for 2^32 samples (assumed {args.gpu_tflops:g} TFLOP/s x {args.efficiency:g}):")
    for p in res["plan"]:
        print(f"  {p['gpu_workers']:3d} GPU workers: {p['hours']:.2f} h ({p['bound']}-bound, "
              f"{p['per_worker_samples_per_s']:,.0f} samples/s each); on CPU workers like "
              f"these: {p['hours_on_cpu_workers_like_this_one']:.0f} h")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
