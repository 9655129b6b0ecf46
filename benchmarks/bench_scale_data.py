"""Benchmark (issue #11, items 1–2): `info`'s SAE quality on a researcher's data at
gpt2-small scale, against a plain forward pass over the same data in the same run.

Model: gpt2-small's shape (12 layers, d_model 768, 12 heads, d_mlp 3072, vocabulary 50,257,
n_ctx 1024; random weights, HookedTransformerConfig built directly). SAE: a 24,576-latent
StandardSAE on blocks.6.hook_resid_pre (random weights). Data: 128 × 64 random token ids read
through the data spec `tokens:FILE`. Measured: the forward pass `model(tokens)` (full logits),
`info`'s path cold (data load + activation cache miss + SAE statistics), warm (the same
process again: memoised statistics, only fingerprints recomputed) and from disk (as a new
process: activations read from the disk cache, statistics recomputed), and peak RSS after each
stage. Wall seconds depend on what else the machine runs; the CPU seconds of this process (one
torch thread) measure the work, and the ratios to the forward pass are given for both.

    .venv/bin/python benchmarks/bench_scale_data.py [--n 128 --len 64 --threads 1 --device cpu]
"""

from __future__ import annotations

import json
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


def build(device: str):
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    model = gpt2_small_shaped(device)
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=768, d_sae=24576, device=device,
                                        metadata=SAEMetadata(hook_name="blocks.6.hook_resid_pre")))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.02)
    return model, sae.eval()


def main() -> dict:
    def extra(ap):
        ap.add_argument("--n", type=int, default=128, help="sequences of data")
        ap.add_argument("--len", type=int, default=64, help="tokens per sequence")
        ap.add_argument("--threads", type=int, default=1, help="torch threads")
        ap.add_argument("--device", default="cpu")

    args = bench_args(__doc__, extra=extra)
    torch.set_num_threads(args.threads)
    os.environ["HEW_CACHE_DIR"] = tempfile.mkdtemp(prefix="hew-bench-")
    from estimators import activation_cache as ac
    from estimators import sae_stats
    from estimators.loading import LoadedModel
    from estimators.sae_stats import sae_quality_on_data

    model, sae = build(args.device)
    lm = LoadedModel(model, "gpt2-small-shaped", "checkpoint")
    tokens = torch.randint(0, 50257, (args.n, args.len), generator=torch.Generator().manual_seed(0))
    path = Path(os.environ["HEW_CACHE_DIR"]) / "tokens.json"
    path.write_text(json.dumps(tokens.tolist()))
    spec = f"tokens:{path}"
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    rows = {}

    def stage(name, fn):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        sync()
        rows[name] = {"seconds": round(time.perf_counter() - t0, 3),
                      "cpu_seconds": round(time.process_time() - c0, 3),
                      "peak_rss_mib": round(rss_mib())}
        return out

    from estimators.conformance import model_fingerprint
    stage("model_fingerprint", lambda: model_fingerprint(model))
    _, q = stage("info_cold", lambda: sae_quality_on_data(lm, sae, spec))
    stage("info_warm", lambda: sae_quality_on_data(lm, sae, spec))
    ac.clear_memory()  # a new process: activations from disk, statistics recomputed
    sae_stats._QUALITY_MEMO.clear()
    stage("info_from_disk", lambda: sae_quality_on_data(lm, sae, spec))
    with torch.no_grad():
        stage("forward_pass", lambda: model(tokens.to(args.device)).shape)
    fwd = rows["forward_pass"]
    for k in ("info_cold", "info_warm", "info_from_disk"):
        rows[k]["x_forward"] = round(rows[k]["seconds"] / fwd["seconds"], 3)
        rows[k]["x_forward_cpu"] = round(rows[k]["cpu_seconds"] / fwd["cpu_seconds"], 3)
    result = {"machine": machine_info(args.device), "n": args.n, "len": args.len,
              "sae": {k: q[k] for k in ("d_sae", "n_activations", "explained_variance", "l0")},
              "cache": ac.stats().to_dict(), "stages": rows}
    print(json.dumps(result, indent=2))
    print(f"wrote {write_result(f'scale_data_{args.device.split(chr(58))[0]}', result, args.out)}")
    return result


if __name__ == "__main__":
    main()
