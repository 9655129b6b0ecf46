"""Benchmark: greedy search's candidate scoring, batched (many candidate masks per pass) against
one at a time through the cached engine, on `induction` at the Activation page's defaults
(N = 64 real inputs, K = 128 samples, the last 4 positions, residual sites + logits@-1).

Two measurements, each the median of `repeats` runs on one CPU thread (wall seconds, and process
CPU seconds in `cpu_seconds`):
  * scoring: every greedy candidate of the naive argument (the top `candidates` pairs per site
    plus each position block), `Propagator.surprise_of_site_masks` with 1, 2, 4, 8 and 32
    candidates per pass against `set_site_mask` + `run` + `surprise` per candidate; the largest
    relative difference of the totals is reported (the scores must be equal);
  * search: `greedy_search(max_steps=steps)` at its default batch size (`default_batch_size`)
    against batch_size 1 (one at a time through the cached engine; same path).

    /work/venv/bin/python benchmarks/bench_greedy_batched.py [--device cuda] [--candidates 8]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_activation_latency import bench_args, machine_info, write_result  # noqa: E402


def _chain(device: str):
    from estimators import zoo
    from estimators.activation import chain_for_zoo
    from estimators.activation.chain import default_positions
    from estimators.loading import load_model

    lm = load_model("induction", device)
    ctx = int(zoo.get("induction").sample(1, seed=0).tokens.shape[1])
    pos = default_positions(ctx, lm.model.cfg.d_model, 128)
    chain = chain_for_zoo(lm, n_inputs=64, samples=128, seed=0, positions=pos)
    return chain, zoo.get("induction").sample(64, seed=0).tokens


CPU_SECONDS: dict[str, float] = {}


def _time(fn, repeats: int, key: str = "") -> tuple[float, object]:
    """Median wall seconds of `repeats` runs (the median process CPU seconds, less sensitive to
    other load on a shared machine, go to CPU_SECONDS[key])."""
    times, cpu, out = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    CPU_SECONDS[key] = statistics.median(cpu)
    return statistics.median(times), out


def main(device: str = "cpu", candidates: int = 8, steps: int = 3, repeats: int = 7) -> dict:
    torch.set_num_threads(1)
    from estimators.activation import CovarianceMask, Propagator
    from estimators.activation.search import _mask_candidates, greedy_search

    chain, tokens = _chain(device)
    prop = Propagator(chain, distances=False)
    prop.run()
    cands = _mask_candidates(prop, prop.mask, [s.name for s in chain.sites], candidates, True)
    by_site: dict[str, list] = {}
    for s, sm, _ in cands:
        by_site.setdefault(s, []).append(sm)

    def batched(bs):
        return [x.total_bits for s, sms in by_site.items()
                for x in prop.surprise_of_site_masks(s, sms, batch_size=bs)]

    def single():
        p = Propagator(chain, distances=False)
        out = []
        for s, sms in by_site.items():
            for sm in sms:
                p.set_mask(CovarianceMask.naive().with_site(s, sm))
                p.run()
                out.append(p.surprise().total_bits)
        return out

    t_s, tot_s = _time(single, repeats, "scoring_one_at_a_time")
    scoring = {"one_at_a_time": t_s}
    diff = 0.0
    for bs in (1, 2, 4, 8, 32):
        t_b, tot_b = _time(lambda: batched(bs), repeats, f"scoring_batched_{bs}_per_pass")
        scoring[f"batched_{bs}_per_pass"] = t_b
        diff = max([diff] + [abs(a - b) / abs(b) for a, b in zip(tot_b, tot_s)])

    def search(bs):
        return greedy_search(Propagator(chain, distances=False), max_steps=steps,
                             candidates_per_site=candidates, tokens=tokens,
                             n_ctx=int(tokens.shape[1]), batch_size=bs)

    g_b, out_b = _time(lambda: search(None), repeats, "greedy_batched")
    g_s, out_s = _time(lambda: search(1), repeats, "greedy_one_at_a_time")
    same = [p["total_bits"] for p in out_b.path] == [p["total_bits"] for p in out_s.path]
    result = {
        "model": "induction", "n_inputs": 64, "samples": 128, "positions": chain.info["positions"],
        "candidates_per_site": candidates, "n_candidates": len(cands),
        "scoring_seconds": scoring, "default_batch_size": prop.default_batch_size(),
        "scoring_max_relative_difference": diff,
        "greedy_steps": steps,
        "greedy_seconds": {"batched": g_b, "one_at_a_time": g_s, "speedup": g_s / g_b},
        "greedy_same_path": same, "greedy_path_totals": [p["total_bits"] for p in out_b.path],
        "cpu_seconds": dict(CPU_SECONDS), "repeats": repeats, "machine": machine_info(device)}
    return result


if __name__ == "__main__":
    def _extra(ap):
        ap.add_argument("--device", default="cpu")
        ap.add_argument("--candidates", type=int, default=8, help="candidates per site")
        ap.add_argument("--steps", type=int, default=3, help="greedy steps")
        ap.add_argument("--repeats", type=int, default=7, help="timed repeats (median)")

    a = bench_args(__doc__, extra=_extra)
    r = main(a.device, a.candidates, a.steps, a.repeats)
    print({k: v for k, v in r.items() if k != "machine"})
    print(f"wrote {write_result(f'greedy_batched_{a.device.split(chr(58))[0]}', r, a.out)}")
