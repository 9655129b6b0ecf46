"""Benchmark 3: a gpt2-small-shaped random model (12 layers, d_model 768, 12 heads, d_mlp 3072,
LayerNorm, GELU; random weights, HookedTransformerConfig built directly; vocabulary cut to
1024 to keep the embedding small, which does not touch the blocks). Propagation of the
last-position residual stream (768 dims per site, 13 sites blocks.0.hook_resid_pre …
blocks.11.hook_resid_post) through all layers, naive and full masks: time and peak memory on
CPU, and on a GPU when one is present. Unmodelled positions hold real activations of random
token inputs (ctx 16).

    /work/venv/bin/python benchmarks/bench_activation_gpt2.py [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_activation_latency import machine_info, rss_mib, write_result  # noqa: E402


def run(device: str, samples: int, n_inputs: int, ctx: int) -> list[dict]:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from estimators.activation import CovarianceMask, Propagator, transformer_chain

    cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_ctx=ctx, d_head=64, n_heads=12,
                                  d_mlp=3072, d_vocab=1024, act_fn="gelu_new",
                                  normalization_type="LN", device=device, seed=0)
    model = HookedTransformer(cfg)
    model.eval()
    tokens = torch.randint(0, 1024, (n_inputs, ctx), generator=torch.Generator().manual_seed(0))
    sites = [f"blocks.{l}.hook_resid_post" for l in range(12)]
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = rss_mib()
    t0 = time.perf_counter()
    chain = transformer_chain(model, tokens, sites=sites, positions=[ctx - 1], samples=samples)
    t_chain = time.perf_counter() - t0
    rows = []
    for name in ("naive", "full"):
        prop = Propagator(chain, CovarianceMask.preset(name, chain.layouts), distances=False)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = prop.run()
        if cuda:
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        t0 = time.perf_counter()
        w2 = [prop.distance(s.name).w2 for s in chain.sites]
        t_dist = time.perf_counter() - t0
        row = {"device": device, "mask": name, "samples": samples, "ctx": ctx,
               "n_inputs": n_inputs, "sites": len(chain.sites), "site_dim": 768,
               "chain_build_s": t_chain, "propagation_s": secs, "distances_s": t_dist,
               "flops": res.cost.flops, "w2_last": w2[-1],
               "peak_rss_mib": rss_mib(), "rss_before_mib": rss0}
        if cuda:
            row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
        rows.append(row)
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=None, metavar="FILE",
                    help="write the results as JSON to FILE (default: print only)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--n-inputs", type=int, default=256)
    ap.add_argument("--ctx", type=int, default=16)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    devices = [args.device] if args.device else (["cpu"] + (["cuda"] if torch.cuda.is_available()
                                                            else []))
    rows = []
    for dev in devices:
        rows += run(dev, args.samples, args.n_inputs, args.ctx)
    out = {"benchmark": "gpt2-small-shaped random model: last-position residual propagation",
           "rows": rows, "machine": machine_info(",".join(devices))}
    m = out["machine"]
    print(f"machine: {m['cpu']} · {m['cores']} cores · torch {m['torch']} · "
          f"{m['torch_threads']} threads · {m.get('gpu', 'no GPU')}")
    print(f"{'device':>6} {'mask':>6} {'K':>5} {'propagate s':>12} {'distances s':>12} "
          f"{'GFLOPs':>8} {'peak RSS MiB':>13} {'peak GPU MiB':>13}")
    for r in rows:
        print(f"{r['device']:>6} {r['mask']:>6} {r['samples']:5d} {r['propagation_s']:12.2f} "
              f"{r['distances_s']:12.2f} {r['flops'] / 1e9:8.1f} {r['peak_rss_mib']:13.0f} "
              f"{r.get('peak_gpu_mib', float('nan')):13.0f}")
    suffix = "" if not args.device or args.device == "cpu" else f"_{args.device.split(':')[0]}"
    print(f"wrote {write_result('activation_gpt2' + suffix, out, args.out)}")
    return out


if __name__ == "__main__":
    main()
