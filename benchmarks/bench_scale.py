"""Benchmark (issue #11): every page's first result at gpt2-small scale, each row against a
plain forward pass over the same data in the same run, with its own peak memory.

Model: gpt2-small's shape (12 layers, d_model 768, 12 heads, d_mlp 3072, vocabulary 50,257,
n_ctx 1024, LayerNorm, gelu_new; random weights built locally, `gpt2_small_shaped`). SAE: a
24,576-latent SAELens StandardSAE on blocks.6.hook_resid_pre (random weights). Data: --seqs ×
--ctx random token ids written to a JSON file in a temporary folder and read through the data
spec `tokens:FILE,n=SEQS` (estimators.data), as a user's `--data` is.

Rows (each in its own fresh Python process, with its own empty HEW_CACHE_DIR, so every row is
cold: conformance checks, activation cache and fingerprints included; the model is built and
the data loaded before the clock starts; a tiny untimed warm-up call follows the build):

  forward     `model(tokens)` (full logits), no gradient: the reference of the next rows
  info        `sae_quality_on_data` cold (data load, activations to blocks.6 through the
              shared cache, SAE statistics); target ≤ 10× forward. Also recorded, not counted:
              the same call again (memoised) and as from a new process (disk cache)
  activation  the activation model's first view: conformance check, `transformer_chain` (real
              activations through the cache, the last --positions positions, --units residual
              units, the SAE's --sae-units most frequent features, K = --samples) and
              `Propagator.run()` with distances, naive mask; target ≤ 30× forward
  toggle      then, in the same process, --toggles one-entry toggles at
              blocks.{L-2}.hook_resid_post (entries (0,1), (0,2), …; re-propagation from that
              site on, surprise and distances): median; target ≤ 1 s (absolute)
  scrub       one head-level hypothesis through the edge engine: conformance check, the data
              as ScrubData, `EdgeScrubber.evaluate([π])` on a fresh scrubber (π: every edge
              among embed, --heads random heads, all MLPs and the logits important,
              embed>logits a uniform block; bench_scrub_edges.circuit_partition); ≤ 10× forward
  fwd_bwd     the ITGIS reference: --budget/2 sequences drawn from the data's distribution, in
              batches of 64, each a plain forward pass (full logits) and a backward pass of the
              summed last-position target logit to the token embeddings (no parameter
              gradients)
  itgis       `run_estimator("itgis", …, budget=--budget)` (each sample a forward + backward:
              budget/2 sequences) on the input distribution built from the data
              (`from_tokens(…, "empirical")`: per-position frequencies), behaviour argmax =
              token 50256 at the last position; target ≤ 4× fwd_bwd

Reported per row: wall and CPU seconds (the machine is shared: the CPU seconds of the row's
process measure its work; one torch thread by default), the ratio to its reference in both,
the target, whether it is met (on CPU seconds on a CPU device, on wall seconds on an
accelerator), and peak memory: the process's ru_maxrss (high-water mark of resident memory,
model and data included) and its growth over the resident memory after the model was built;
on CUDA also torch's peak allocated device memory.

    .venv/bin/python benchmarks/bench_scale.py [--quick] [--seqs 128 --ctx 64] [--rows ...]
        [--threads 1] [--device cpu] [--out benchmarks/results/scale_cpu.json]

--quick (16 × 16 tokens, K = 16, budget 128) is a smoke run of a few minutes; the full run
(128 × 64, budget 2048) takes ~20 minutes of CPU on one thread, ~¾ of it the two ITGIS rows.
Prints a table; writes JSON only with --out.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from bench_activation_latency import (bench_args, gpt2_small_shaped, machine_info,  # noqa: E402
                                     rss_mib, write_result)  # noqa: E402

ROWS = ("forward", "info", "activation", "toggle", "scrub", "fwd_bwd", "itgis")
RUN_ORDER = ("forward", "info", "scrub", "fwd_bwd", "itgis", "activation")  # table: ROWS
# row → (reference row or None for an absolute target, target ratio or seconds)
TARGETS = {"info": ("forward", 10.0), "activation": ("forward", 30.0), "toggle": (None, 1.0),
           "scrub": ("forward", 10.0), "itgis": ("fwd_bwd", 4.0)}
SAE_HOOK = "blocks.6.hook_resid_pre"
D_SAE = 24576
ITGIS_TARGET_TOKEN = 50256
QUICK = {"seqs": 16, "ctx": 16, "samples": 16, "budget": 128}


def gpt2_small_sae(device: str = "cpu", seed: int = 0):
    """A 24,576-latent SAELens StandardSAE on blocks.6.hook_resid_pre of the gpt2-small-shaped
    model, weights N(0, 0.02²) (seed): the scale benchmarks' SAE (no download)."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=768, d_sae=D_SAE, device=device,
                                        metadata=SAEMetadata(hook_name=SAE_HOOK)))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.02)
    return sae.eval()


# =============================================================================== the child

class _Clock:
    """Named stages of one row: wall and CPU seconds of this process (CUDA synchronised)."""

    def __init__(self, device: str):
        import torch

        self.stages: dict[str, dict] = {}
        self._sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def __call__(self, name: str, fn):
        self._sync()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        self._sync()
        self.stages[name] = {"wall_s": time.perf_counter() - t0,
                             "cpu_s": time.process_time() - c0}
        return out

    def total(self, names) -> dict:
        return {k: sum(self.stages[n][k] for n in names) for k in ("wall_s", "cpu_s")}


def _row_forward(a, lm, data, sae, clock) -> dict:
    import torch

    tokens = data.tokens.to(a.device)
    with torch.no_grad():
        clock("forward", lambda: lm.model(tokens).shape)
    return {"counted": ["forward"]}


def _row_info(a, lm, data, sae, clock) -> dict:
    from estimators import activation_cache as ac
    from estimators import sae_stats

    _, q = clock("info_cold", lambda: sae_stats.sae_quality_on_data(lm, sae, a.spec))
    clock("info_warm", lambda: sae_stats.sae_quality_on_data(lm, sae, a.spec))
    ac.clear_memory()  # as a new process would: activations from disk, statistics recomputed
    sae_stats._QUALITY_MEMO.clear()
    clock("info_from_disk", lambda: sae_stats.sae_quality_on_data(lm, sae, a.spec))
    return {"counted": ["info_cold"], "cache": ac.stats().to_dict(),
            "sae": {k: q[k] for k in ("d_sae", "n_activations", "explained_variance", "l0")}}


def _row_activation(a, lm, data, sae, clock) -> dict:
    from estimators import conformance
    from estimators.activation.chain import transformer_chain
    from estimators.activation.engine import Propagator

    model = lm.model
    positions = list(range(a.ctx - a.positions, a.ctx))
    units = ([] if a.units == "all" else [a.units]) + [f"firing:{a.sae_units}"]
    clock("conformance", lambda: conformance.require(model, "activation"))
    chain = clock("chain_build", lambda: transformer_chain(
        model, data.tokens.to(a.device), positions=positions, sae=sae, samples=a.samples,
        seed=0, units=units))
    prop = Propagator(chain)
    res = clock("propagate", prop.run)
    late = f"blocks.{model.cfg.n_layers - 2}.hook_resid_post"
    toggles = []
    for t in range(a.toggles):  # entries (0,1), (0,2), …: each switches one pair on
        r = clock(f"toggle_{t}", lambda t=t: prop.toggle(late, 0, 1 + t))
        toggles.append({**clock.stages[f"toggle_{t}"], "recomputed": r.recomputed})
    last = {n: {k: (round(v, 4) if isinstance(v, float) else v)
                for k, v in d.to_dict().items()
                if k in ("kl", "kl_marginal", "covariance_method", "dim")}
            for n, d in list(res.distances.items())[-3:]}
    return {"counted": ["conformance", "chain_build", "propagate"],
            "toggle_site": late, "toggles": toggles,
            "site_dims": {s.name: s.dim for s in chain.sites},
            "positions": positions, "units": units, "samples": a.samples,
            "propagation_flops": res.cost.flops, "last_distances": last,
            "surprise_bits": res.surprise.total_bits}


def _row_scrub(a, lm, data, sae, clock) -> dict:
    from bench_scrub_edges import circuit_partition

    from estimators import conformance
    from estimators.scrubbing import ScrubData
    from estimators.scrubbing.edges import EdgeScrubber

    model, cfg = lm.model, lm.model.cfg
    part, heads = circuit_partition(cfg.n_layers, cfg.n_heads, a.heads, seed=0)
    clock("conformance", lambda: conformance.require(model, "scrubbing-edges"))
    sd = clock("scrub_data", lambda: ScrubData.from_sequences(
        data.tokens.tolist(), cfg.d_vocab, cfg.n_ctx, data.source.spec))

    def hypothesis():
        s = EdgeScrubber(model, sd, batch_size=min(len(sd), 64), device=a.device)
        return s, s.evaluate([part])[0]

    scrubber, res = clock("hypothesis", hypothesis)
    return {"counted": ["conformance", "scrub_data", "hypothesis"],
            "circuit_heads": [f"a{l}.{h}" for l, h in heads],
            "edges_named": int((scrubber.assign(part) >= 0).sum()),
            "n_edges": scrubber.graph.n_edges,
            "loss_original": res.loss_original, "loss_scrubbed": res.loss_scrubbed,
            "loss_random": res.loss_random}


def _data_distribution(lm, data):
    from estimators.tailrisk.distributions import from_tokens

    return from_tokens(data.tokens, int(lm.model.cfg.d_vocab), "empirical",
                       name=f"empirical({data.source.spec})")


def _row_fwd_bwd(a, lm, data, sae, clock) -> dict:
    import torch

    model = lm.model
    dist = clock("distribution", lambda: _data_distribution(lm, data))
    n = a.budget // 2
    x = dist.sample(n, torch.Generator().manual_seed(1))

    def passes():
        for s in range(0, n, 64):
            store = {}

            def leaf(act, hook):
                store["e"] = act.detach().requires_grad_(True)
                return store["e"]
            with torch.enable_grad():
                logits = model.run_with_hooks(x[s:s + 64].to(a.device),
                                              fwd_hooks=[("hook_embed", leaf)])
                torch.autograd.grad(logits[:, -1, ITGIS_TARGET_TOKEN].sum(), store["e"])

    clock("passes", passes)  # autograd.grad to the embeddings: no parameter gradients
    return {"counted": ["distribution", "passes"], "sequences": n,
            "tokens": int(x.numel())}


def _row_itgis(a, lm, data, sae, clock) -> dict:
    from estimators.tailrisk.behaviours import Argmax
    from estimators.tailrisk.registry import run_estimator

    dist = clock("distribution", lambda: _data_distribution(lm, data))
    est = clock("itgis", lambda: run_estimator(
        "itgis", lm.model, dist, Argmax(target=ITGIS_TARGET_TOKEN), budget=a.budget, seed=0))
    d = est.diagnostics
    return {"counted": ["distribution", "itgis"], "calls": est.cost.calls,
            "samples": d.get("samples"), "hits": d.get("hits"), "estimate": est.value}


CHILD_ROWS = {"forward": _row_forward, "info": _row_info, "activation": _row_activation,
              "scrub": _row_scrub, "fwd_bwd": _row_fwd_bwd, "itgis": _row_itgis}


def child(a) -> None:
    """Run one row in this (fresh) process; write its JSON to a._result."""
    import torch

    torch.set_num_threads(a.threads)
    from estimators.data import load_data
    from estimators.loading import LoadedModel

    code = _code_version()  # before the row: the code it imported
    t0 = time.perf_counter()
    model = gpt2_small_shaped(a.device)
    sae = gpt2_small_sae(a.device) if a._row in ("info", "activation") else None
    lm = LoadedModel(model, "gpt2-small-shaped", "checkpoint")
    data = load_data(a.spec, lm) if a._row != "info" else None  # info loads its own
    with torch.no_grad():
        model(torch.zeros(1, 4, dtype=torch.long, device=a.device))  # warm-up, untimed
    setup_s = time.perf_counter() - t0
    base = rss_mib()
    if a.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    clock = _Clock(a.device)
    out = CHILD_ROWS[a._row](a, lm, data, sae, clock)
    peak = rss_mib()
    out.update(stages=clock.stages, setup_s=setup_s, base_rss_mib=base, peak_rss_mib=peak,
               **clock.total(out["counted"]))
    if a.device.startswith("cuda"):
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    out["code"] = code
    Path(a._result).write_text(json.dumps(out, allow_nan=False))


def _code_version() -> str:
    """The commit this row's code came from, '+changes' when estimators/ differs from it."""
    root = str(HERE.parent)
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "estimators"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


# ============================================================================== the parent

def _options(ap) -> None:
    import argparse

    ap.add_argument("--seqs", type=int, default=128, help="sequences of data (default 128)")
    ap.add_argument("--ctx", type=int, default=64, help="tokens per sequence (default 64)")
    ap.add_argument("--samples", type=int, default=64,
                    help="activation model: K samples per transition (default 64)")
    ap.add_argument("--positions", type=int, default=4,
                    help="activation model: the last P positions (default 4)")
    ap.add_argument("--units", default="first:64",
                    help="activation model: residual units (default first:64; 'all' = 768)")
    ap.add_argument("--sae-units", type=int, default=64,
                    help="activation model: the SAE's K most frequent features (default 64)")
    ap.add_argument("--toggles", type=int, default=3, help="mask toggles timed (default 3)")
    ap.add_argument("--heads", type=int, default=10,
                    help="scrubbing: heads in the hypothesis' circuit (default 10)")
    ap.add_argument("--budget", type=int, default=2048,
                    help="ITGIS model calls (default 2048 = 2^11; budget/2 sequences)")
    ap.add_argument("--rows", default=",".join(r for r in ROWS if r != "toggle"),
                    help="comma-separated rows to run (toggle comes with activation; forward "
                         "and fwd_bwd are added when a row needs them)")
    ap.add_argument("--no-references", action="store_true",
                    help="run only the rows named in --rows (their ratios come from --combine)")
    ap.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                    help="run nothing: merge the --out files of runs over the same settings "
                         "(e.g. rows run concurrently) into one table (the first file's row "
                         "wins; a row without its reference gets it from another file)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 16 × 16 tokens, K = 16, budget 128 (explicit options win)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per row (default 1)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, mps")
    for hidden in ("--_row", "--_result", "--spec"):
        ap.add_argument(hidden, default=None, help=argparse.SUPPRESS)


def _rows_wanted(text: str, references: bool = True) -> list[str]:
    want = [r.strip() for r in text.split(",") if r.strip()]
    bad = [r for r in want if r not in ROWS]
    if bad:
        raise SystemExit(f"--rows: unknown row {bad[0]!r}; choose from {', '.join(ROWS)}")
    if "activation" in want or "toggle" in want:
        want += ["activation", "toggle"]
    for r in list(want) if references else []:
        ref = TARGETS.get(r, (None,))[0]
        if ref:
            want.append(ref)
    return [r for r in ROWS if r in want]


def _run_child(name: str, argv: list[str], spec: str, tmp: Path) -> dict:
    res = tmp / f"{name}.json"
    env = dict(os.environ, HEW_CACHE_DIR=str(tmp / f"cache-{name}"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--_row", name,
           "--_result", str(res), "--spec", spec]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0 or not res.exists():
        tail = (r.stderr or r.stdout)[-3000:]
        raise SystemExit(f"row {name} failed (exit {r.returncode}):\n{tail}")
    out = json.loads(res.read_text())
    out["process_s"] = time.perf_counter() - t0
    return out


def _verdict(row: dict, ref: dict | None, target: float, on_wall: bool) -> dict:
    v = {"target": target}
    if ref is None:
        v.update(target_kind="seconds", met=(row["wall_s"] if on_wall else row["cpu_s"])
                 <= target, met_wall=row["wall_s"] <= target, met_cpu=row["cpu_s"] <= target)
        return v
    xw, xc = row["wall_s"] / ref["wall_s"], row["cpu_s"] / max(ref["cpu_s"], 1e-9)
    v.update(target_kind="x_reference", x_wall=xw, x_cpu=xc, met=(xw if on_wall else xc)
             <= target, met_wall=xw <= target, met_cpu=xc <= target)
    return v


def _toggle_row(act: dict) -> dict:
    ts = act["toggles"]
    return {"wall_s": statistics.median(t["wall_s"] for t in ts),
            "cpu_s": statistics.median(t["cpu_s"] for t in ts),
            "wall_s_each": [t["wall_s"] for t in ts], "cpu_s_each": [t["cpu_s"] for t in ts],
            "recomputed": ts[0]["recomputed"] if ts else [], "site": act["toggle_site"],
            "peak_rss_mib": act["peak_rss_mib"], "base_rss_mib": act["base_rss_mib"],
            "note": "median of the toggles, in the activation row's process (its peak memory)"}


def _print_table(rows: dict, on_wall: bool) -> None:
    print(f"{'row':11} {'wall s':>8} {'CPU s':>8} {'× ref wall':>10} {'× ref CPU':>9} "
          f"{'target':>9} {'met':>4} {'peak MiB':>9} {'+ over model':>12}")
    for name, r in rows.items():
        v = r.get("verdict") or {}
        tgt = ("" if not v else f"≤ {v['target']:g} s" if v["target_kind"] == "seconds"
               else f"≤ {v['target']:g}× {TARGETS[name][0]}")
        xw = f"{v['x_wall']:.2f}" if "x_wall" in v else ""
        xc = f"{v['x_cpu']:.2f}" if "x_cpu" in v else ""
        met = "" if not v else ("yes" if v["met"] else "NO")
        print(f"{name:11} {r['wall_s']:8.2f} {r['cpu_s']:8.2f} {xw:>10} {xc:>9} {tgt:>9} "
              f"{met:>4} {r['peak_rss_mib']:9.0f} {r['peak_rss_mib'] - r['base_rss_mib']:12.0f}")
    print(f"(met judged on {'wall' if on_wall else 'CPU'} seconds; peak MiB = the row's process "
          f"ru_maxrss, model included; '+ over model' = growth after the model was built)")


def _result(a, rows_wanted: list[str], raw: dict, load0, t_all: float) -> dict:
    """The run's JSON: settings, machine, load, and each finished row with its verdict;
    `complete` is False (and `rows_pending` lists the rest) while rows are still to run."""
    raw = dict(raw)
    if "activation" in raw:
        raw["toggle"] = _toggle_row(raw["activation"])
    on_wall = not a.device.startswith("cpu")
    rows = {}
    for name in rows_wanted:
        if name not in raw:
            continue
        r = dict(raw[name])
        ref, target = TARGETS.get(name, (None, None))
        if target is not None and (ref is None or ref in raw):
            r["verdict"] = _verdict(r, raw[ref] if ref else None, target, on_wall)
        rows[name] = r
    pending = [r for r in rows_wanted if r not in rows]
    return {"benchmark": "bench_scale.py (issue #11)", "complete": not pending,
            "rows_pending": pending, "machine": machine_info(a.device),
            "load_average_before": load0, "load_average_after": os.getloadavg(),
            "total_wall_s": time.perf_counter() - t_all,
            "settings": {k: getattr(a, k) for k in ("seqs", "ctx", "samples", "positions",
                                                     "units", "sae_units", "toggles", "heads",
                                                     "budget", "rows", "threads", "device",
                                                     "quick")},
            "model": "gpt2-small-shaped (12 layers, d_model 768, 12 heads, d_mlp 3072, "
                     "vocabulary 50,257), random weights",
            "sae": f"StandardSAE d_sae {D_SAE} on {SAE_HOOK}, random weights",
            "data": f"{a.seqs} × {a.ctx} random token ids via tokens:FILE",
            "met_judged_on": "wall seconds" if on_wall else "CPU seconds", "rows": rows}


COMBINE_KEYS = ("seqs", "ctx", "samples", "positions", "units", "sae_units", "heads", "budget",
                "threads", "device")


def _combine(a) -> dict:
    """One table from several --out files of the same settings (--combine): each row keeps
    its own verdict (computed against the reference of its own run); a row whose reference ran
    elsewhere (--no-references) is judged against that file's reference row, and says so. The
    source files are kept whole under "sources"."""
    docs = {Path(p).name: json.loads(Path(p).read_text()) for p in a.combine}
    first = next(iter(docs.values()))
    for name, d in docs.items():
        diff = [k for k in COMBINE_KEYS if d["settings"].get(k) != first["settings"].get(k)]
        if diff:
            raise SystemExit(f"--combine: {name} differs in {', '.join(diff)}")
    on_wall = not first["settings"]["device"].startswith("cpu")
    rows: dict[str, dict] = {}
    for src, d in docs.items():
        for name, r in d["rows"].items():
            if name not in rows:
                rows[name] = dict(r, source=src, source_load_average=[
                    d["load_average_before"][0], d["load_average_after"][0]])
    for name, r in rows.items():
        ref, target = TARGETS.get(name, (None, None))
        if target is not None and "verdict" not in r and (ref is None or ref in rows):
            r["verdict"] = _verdict(r, rows[ref] if ref else None, target, on_wall)
            if ref:
                r["verdict"]["reference_source"] = rows[ref]["source"]
        elif "verdict" in r and ref:
            r["verdict"]["reference_source"] = r["source"]
    rows = {n: rows[n] for n in ROWS if n in rows}
    result = {"benchmark": "bench_scale.py (issue #11)", "complete": all(n in rows for n in ROWS),
              "combined_from": list(docs), "machine": first["machine"],
              "settings": first["settings"], "model": first["model"], "sae": first["sae"],
              "data": first["data"], "met_judged_on": first["met_judged_on"], "rows": rows,
              "sources": docs}
    _print_table(rows, on_wall)
    print(f"wrote {write_result('scale_cpu', result, a.out)}")
    return result


def main(argv=None) -> dict | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = bench_args(__doc__, argv, extra=_options)
    if a.quick:
        given = {s.split("=")[0] for s in argv}
        for k, v in QUICK.items():
            if f"--{k}" not in given:
                setattr(a, k, v)
    if a._row:
        child(a)
        return None
    if a.combine:
        return _combine(a)
    for k in ("seqs", "ctx", "samples", "positions", "toggles", "heads", "budget", "threads",
              "sae_units"):
        if getattr(a, k) < 1:
            raise SystemExit(f"--{k.replace('_', '-')} must be at least 1")
    if a.positions > a.ctx or a.seqs < 2 or a.budget < 2:
        raise SystemExit("need --positions ≤ --ctx, --seqs ≥ 2 and --budget ≥ 2")
    rows_wanted = _rows_wanted(a.rows, not a.no_references)
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="hew-bench-scale-"))
    tokens = torch.randint(0, 50257, (a.seqs, a.ctx), generator=torch.Generator().manual_seed(0))
    tok_file = tmp / "tokens.json"
    tok_file.write_text(json.dumps(tokens.tolist()))
    spec = f"tokens:{tok_file},n={a.seqs}"
    child_argv = [s for s in argv if s != "--out" and not s.startswith("--out=")]
    if "--out" in argv:
        i = argv.index("--out")
        child_argv = argv[:i] + argv[i + 2:]
    load0 = os.getloadavg()
    t_all = time.perf_counter()
    raw: dict[str, dict] = {}
    order = [r for r in RUN_ORDER if r in rows_wanted]
    try:
        for name in order:
            print(f"[{time.strftime('%H:%M:%S')}] row {name} …", flush=True)
            raw[name] = _run_child(name, child_argv, spec, tmp)
            if a.out and name != order[-1]:  # a partial file while the run goes on
                write_result("", _result(a, rows_wanted, raw, load0, t_all), a.out)
    finally:  # the data file and the rows' caches (hundreds of MiB of activations)
        shutil.rmtree(tmp, ignore_errors=True)
    result = _result(a, rows_wanted, raw, load0, t_all)
    load1 = result["load_average_after"]
    print(f"machine: {result['machine']['cpu']} · {result['machine']['cores']} cores · "
          f"{a.threads} torch thread(s) · device {a.device} · load "
          f"{load0[0]:.2f} → {load1[0]:.2f}")
    _print_table(result["rows"], not a.device.startswith("cpu"))
    name = f"scale_{a.device.split(':')[0]}"
    print(f"wrote {write_result(name, result, a.out)}")
    return result


if __name__ == "__main__":
    main()
