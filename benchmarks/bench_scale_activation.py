"""Benchmark (issue #11, item 3): the activation model at gpt2-small scale with a unit subset,
`propagate --mask naive --units first:64`, against a plain forward pass over the same data in
the same run.

Model: gpt2-small's shape (12 layers, d_model 768, 12 heads, d_mlp 3072, vocabulary 50,257;
random weights, HookedTransformerConfig built directly, as bench_scale_data.py). Data: N random
sequences of LEN tokens (default 64 × 32). Chain: the residual stream at every block boundary
and the logits at the last position (1,024 logit units), positions the last 4, residual units
`--units` (default first:64, so 256 dimensions per residual site), K = `--samples` samples per
transition, naive mask. Measured: the plain forward pass `model(tokens)` (full logits), the
chain's construction (real activations through the shared activation cache, cold: a fresh
cache directory), the propagation with distances (Ledoit–Wolf when N < dim, stated), one
mask-entry toggle at the second-to-last residual site (re-propagation from there), and the
whole; peak RSS after each stage (the process's high-water mark, so it includes the model).
Wall seconds depend on the machine's other load; CPU seconds of this process (one torch
thread by default) measure the work. Ratios to the forward pass are given for both.

    .venv/bin/python benchmarks/bench_scale_activation.py [--n 64 --len 32 --samples 64
        --units first:64 --threads 1 --device cpu --out FILE]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_activation_latency import (bench_args, gpt2_small_shaped, machine_info,  # noqa: E402
                                     rss_mib, write_result)  # noqa: E402


def main() -> dict:
    import json

    def extra(ap):
        ap.add_argument("--n", type=int, default=64, help="sequences of data (N)")
        ap.add_argument("--len", type=int, default=32, help="tokens per sequence")
        ap.add_argument("--samples", type=int, default=64, help="K samples per transition")
        ap.add_argument("--units", default="first:64",
                        help="residual unit spec; 'all' models every unit (for comparison)")
        ap.add_argument("--positions", type=int, default=4, help="the last P positions")
        ap.add_argument("--threads", type=int, default=1, help="torch threads")
        ap.add_argument("--device", default="cpu")

    args = bench_args(__doc__, extra=extra)
    torch.set_num_threads(args.threads)
    os.environ["HEW_CACHE_DIR"] = tempfile.mkdtemp(prefix="hew-bench-")
    from estimators.activation.chain import transformer_chain
    from estimators.activation.engine import Propagator
    from estimators.conformance import model_fingerprint

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    rows: dict[str, dict] = {}

    def stage(name, fn):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        sync()
        rows[name] = {"seconds": round(time.perf_counter() - t0, 3),
                      "cpu_seconds": round(time.process_time() - c0, 3),
                      "peak_rss_mib": round(rss_mib())}
        return out

    model = stage("build_model", lambda: gpt2_small_shaped(args.device))
    tokens = torch.randint(0, 50257, (args.n, args.len),
                           generator=torch.Generator().manual_seed(0)).to(args.device)
    with torch.no_grad():
        stage("forward_pass", lambda: model(tokens).shape)
    stage("model_fingerprint", lambda: model_fingerprint(model))
    positions = list(range(args.len - args.positions, args.len))
    chain = stage("chain_build", lambda: transformer_chain(
        model, tokens, positions=positions, samples=args.samples, seed=0,
        units=None if args.units == "all" else args.units))
    prop = Propagator(chain)
    res = stage("propagate_naive", prop.run)
    late = f"blocks.{model.cfg.n_layers - 2}.hook_resid_post"
    stage("toggle_one_entry", lambda: prop.toggle(late, 0, 1))  # re-propagates from `late`
    fwd = rows["forward_pass"]
    total = {k: rows["chain_build"][k] + rows["propagate_naive"][k]
             for k in ("seconds", "cpu_seconds")}
    total["x_forward"] = round(total["seconds"] / fwd["seconds"], 2)
    total["x_forward_cpu"] = round(total["cpu_seconds"] / fwd["cpu_seconds"], 2)
    total["peak_rss_mib"] = rows["propagate_naive"]["peak_rss_mib"]
    for k in ("chain_build", "propagate_naive", "toggle_one_entry"):
        rows[k]["x_forward_cpu"] = round(rows[k]["cpu_seconds"] / fwd["cpu_seconds"], 2)
    dists = {n: {k: (round(v, 4) if isinstance(v, float) else v)
                 for k, v in d.to_dict().items()
                 if k in ("kl", "kl_marginal", "w2", "covariance_method", "shrinkage", "dim")}
             for n, d in res.distances.items()}
    result = {"machine": machine_info(args.device), "n": args.n, "len": args.len,
              "samples": args.samples, "units": args.units, "positions": positions,
              "site_dims": {s.name: s.dim for s in chain.sites},
              "propagation_flops": res.cost.flops, "stages": rows,
              "chain_build_plus_propagate": total, "distances": dists}
    print(json.dumps(result, indent=2))
    name = f"scale_activation_{args.device.split(':')[0]}"
    print(f"wrote {write_result(name, result, args.out)}")
    return result


if __name__ == "__main__":
    main()
