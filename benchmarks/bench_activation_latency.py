"""Benchmark 1: latency of re-propagating after a one-entry mask change (activation model).

Default zoo model (`induction`; a random model of the same config if its weights are not
shipped), the library's default settings (512 real inputs, K = 512 samples, all positions).
For each chain site, toggle one off-diagonal entry (a different one each time, alternating on
and off) and time `Propagator.toggle` (re-propagation from that site on, plus the surprise);
distance refresh (KL, W2 at every changed site) is timed separately. Target: < 150 ms.

    /work/venv/bin/python benchmarks/bench_activation_latency.py
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def machine_info(device: str = "cpu") -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "device": device,
            "python": platform.python_version()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_result(name: str, payload: dict, out: str | None = None) -> str:
    """Write `payload` as JSON to `out` only (never by default: the tracked results under
    benchmarks/results/ are updated deliberately, `--out benchmarks/results/NAME.json`).
    Returns what was done, for the last printed line."""
    if not out:
        return f"nothing (pass --out FILE to save the JSON, e.g. {RESULTS.name}/{name}.json)"
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return str(path)


def rss_mib() -> float:
    """Peak resident memory of this process so far (ru_maxrss), MiB (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gpt2_small_shaped(device: str = "cpu", seed: int = 0):
    """A HookedTransformer with gpt2-small's shape (12 layers, d_model 768, 12 heads, d_mlp
    3072, vocabulary 50,257, context 1024, LayerNorm, gelu_new) and random weights: the scale
    benchmarks' model (no download)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_ctx=1024, d_head=64, n_heads=12,
                                  d_mlp=3072, d_vocab=50257, act_fn="gelu_new",
                                  normalization_type="LN", device=device, seed=seed)
    return HookedTransformer(cfg).eval()


def bench_args(doc: str, argv=None, extra=None):
    """The benchmarks' argument parser: `--help` prints `doc` and exits; `--out FILE` is the
    only way to write JSON. `extra(parser)` adds a benchmark's own options."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=None, metavar="FILE",
                    help="write the results as JSON to FILE (default: print only)")
    if extra is not None:
        extra(ap)
    return ap.parse_args(argv)


def main(repeats: int = 9, out_path: str | None = None) -> dict:
    torch.set_num_threads(1)
    from estimators import zoo
    from estimators.activation import Propagator, chain_for_zoo, transformer_chain

    entry = zoo.get(zoo.DEFAULT_MODEL)
    shipped = (entry.weights_dir / "model.safetensors").exists()
    t0 = time.perf_counter()
    if shipped:
        chain = chain_for_zoo(zoo.DEFAULT_MODEL)
    else:
        from transformer_lens import HookedTransformer
        cfg = entry.model_config()
        cfg.seed = 0
        model = HookedTransformer(cfg)
        model.eval()
        chain = transformer_chain(model, entry.sample(512, 0).tokens)
    t_chain = time.perf_counter() - t0
    prop = Propagator(chain, distances=False)
    t0 = time.perf_counter()
    prop.run()
    t_first = time.perf_counter() - t0
    rows = []
    g = torch.Generator().manual_seed(0)
    for site in chain.sites:
        if site.dim < 2:
            continue
        times, dist_times, recomputed = [], [], None
        for r in range(repeats):
            i, j = sorted(torch.randperm(site.dim, generator=g)[:2].tolist())
            t0 = time.perf_counter()
            res = prop.toggle(site.name, i, j)
            times.append(time.perf_counter() - t0)
            recomputed = res.recomputed
            t0 = time.perf_counter()
            for s in [site.name] + res.recomputed:
                prop.distance(s)
            dist_times.append(time.perf_counter() - t0)
            prop.toggle(site.name, i, j)  # back to naive, so every toggle starts the same
        rows.append({"site": site.name, "dim": site.dim, "recomputed": recomputed,
                     "toggle_ms_median": 1000 * statistics.median(times),
                     "toggle_ms_max": 1000 * max(times),
                     "distances_ms_median": 1000 * statistics.median(dist_times)})
    out = {"benchmark": "activation re-propagation latency after a one-entry toggle",
           "model": zoo.DEFAULT_MODEL if shipped else f"{zoo.DEFAULT_MODEL} config, random "
           f"weights (zoo weights not shipped at run time)",
           "settings": {"n_inputs": chain.n_inputs, "samples": chain.info.get("samples"),
                        "positions": chain.info.get("positions"), "repeats": repeats,
                        "sites": [s.name for s in chain.sites]},
           "target_ms": 150, "chain_build_s": t_chain, "first_propagation_s": t_first,
           "rows": rows, "machine": machine_info("cpu")}
    print(f"machine: {out['machine']['cpu']} · {out['machine']['cores']} cores · torch "
          f"{out['machine']['torch']} · 1 thread")
    print(f"model: {out['model']}; chain build {t_chain:.2f} s, first propagation "
          f"{t_first:.2f} s")
    print(f"{'toggled site':32} {'dim':>5} {'toggle ms (median/max)':>24} "
          f"{'distances ms':>13}  recomputed")
    for r in rows:
        print(f"{r['site']:32} {r['dim']:5d} {r['toggle_ms_median']:12.1f} / "
              f"{r['toggle_ms_max']:8.1f}  {r['distances_ms_median']:13.1f}  "
              f"{', '.join(r['recomputed'])}")
    print(f"wrote {write_result('activation_latency', out, out_path)}")
    return out


if __name__ == "__main__":
    _a = bench_args(__doc__, extra=lambda ap: ap.add_argument("--repeats", type=int, default=9))
    main(_a.repeats, _a.out)
