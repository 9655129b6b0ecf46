"""Reproducible training of a zoo model and its SAE (CPU, one thread, fixed seeds).

Why this shape: the shipped weights must be re-creatable bit for bit by anyone with the repo,
so everything that draws randomness (initialisation, data, SAE initialisation) is seeded here,
torch runs single-threaded with deterministic algorithms, and the data comes from the entry's
deterministic generator (one seed per step). The result is written in the exact formats the
rest of the workbench loads: `estimators.loading.save_checkpoint` for the model and sae_lens'
`save_model` for the SAE, plus a `card.json` with the measured numbers.
"""

from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from estimators.zoo.base import CARD_FILE, SAE_DIR, ZooEntry, write_json


def _set_deterministic(seed: int) -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)


def _lr_at(step: int, steps: int, warmup: int, lr: float) -> float:
    """Linear warm-up then cosine decay to 10% of `lr`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train_model(entry: ZooEntry, quick: bool = False, log_every: int = 500):
    """Train the entry's model from its seed; returns (model, log dict)."""
    from transformer_lens import HookedTransformer

    spec = entry.train_spec
    _set_deterministic(spec.seed)
    cfg = entry.model_config()
    cfg.device = "cpu"
    torch.manual_seed(spec.seed)
    model = HookedTransformer(cfg, move_to_device=False)
    model.train()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and not name.startswith(("embed", "pos_embed")) else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=spec.lr, betas=(0.9, 0.98))
    steps = spec.quick_steps if quick else spec.steps
    warmup = min(spec.warmup_steps, max(1, steps // 10))
    t0 = time.perf_counter()
    running = None
    history: list[dict[str, float]] = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, warmup, spec.lr)
        batch = entry.train_batch(spec.batch_size, step)
        loss = entry.loss(model, batch).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        value = float(loss.detach())
        running = value if running is None else 0.98 * running + 0.02 * value
        if log_every and (step + 1) % log_every == 0:
            history.append({"step": step + 1, "train_loss": round(running, 5),
                            "seconds": round(time.perf_counter() - t0, 1)})
            if not quick:
                print(f"[{entry.name}] step {step + 1}/{steps} loss {running:.4f} "
                      f"({time.perf_counter() - t0:.0f}s)", flush=True)
    model.eval()
    return model, {"steps": steps, "seconds": round(time.perf_counter() - t0, 1),
                   "final_train_loss": running, "history": history}


@torch.no_grad()
def hook_activations(entry: ZooEntry, model, batch) -> torch.Tensor:
    """[m, d] activations at the entry's SAE hook, at the positions the SAE models."""
    _, cache = model.run_with_cache(batch.tokens, names_filter=[entry.sae_hook])
    acts = cache[entry.sae_hook]
    keep = entry.sae_positions(batch)
    return acts[keep].detach().float()


def _activation_stream(entry: ZooEntry, model, rows: int) -> Iterator[torch.Tensor]:
    """Endless generator of [rows, d] activation batches from fresh task inputs (in memory)."""
    buffer: list[torch.Tensor] = []
    have = 0
    step = 0
    n_inputs = max(8, rows // max(1, entry.model_config().n_ctx) * 2)
    while True:
        while have < rows:
            acts = hook_activations(entry, model, entry.sae_batch(n_inputs, step))
            step += 1
            buffer.append(acts)
            have += acts.shape[0]
        flat = torch.cat(buffer)
        yield flat[:rows]
        buffer = [flat[rows:]]
        have = buffer[0].shape[0]


@torch.no_grad()
def sae_metrics(entry: ZooEntry, model, sae, n: int = 512, seed: int = 777) -> dict[str, Any]:
    """Explained variance, L0 and dead features of `sae` on held-out activations.

    Explained variance = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over all modelled
    positions of `n` fresh inputs (drawn with evaluation seeds, never seen in SAE training).
    """
    acts = hook_activations(entry, model, entry.sample(n, seed=seed))
    feats = sae.encode(acts)
    recon = sae.decode(feats)
    resid = ((acts - recon) ** 2).sum()
    total = ((acts - acts.mean(0)) ** 2).sum()
    l0 = (feats > 0).float().sum(-1).mean()
    alive = (feats > 0).any(0)
    return {"explained_variance": float(1 - resid / total), "l0": float(l0),
            "dead_features": int((~alive).sum()), "n_activation_rows": int(acts.shape[0]),
            "eval_inputs": n, "eval_seed": seed}


def train_sae(entry: ZooEntry, model, quick: bool = False):
    """Train a StandardTrainingSAE on the entry's hook with sae_lens' SAETrainer, offline."""
    os.environ.setdefault("WANDB_MODE", "disabled")
    from sae_lens import LoggingConfig, SAETrainer, StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    spec = entry.train_spec
    _set_deterministic(spec.seed + 1)
    d_in = model.cfg.d_model
    steps = spec.sae_quick_steps if quick else spec.sae_steps
    sae_cfg = StandardTrainingSAEConfig(
        d_in=d_in, d_sae=spec.sae_expansion * d_in, l1_coefficient=spec.sae_l1,
        l1_warm_up_steps=steps // 10, apply_b_dec_to_input=True, device="cpu",
        # Scale inputs to norm sqrt(d_in) while training, so one L1 coefficient means the same
        # thing on every model; sae_lens folds the factor back into the weights at the end.
        normalize_activations="expected_average_only_in",
    )
    sae_cfg.metadata.hook_name = entry.sae_hook
    sae_cfg.metadata.model_name = f"zoo:{entry.name}"
    sae_cfg.metadata.context_size = model.cfg.n_ctx
    sae_cfg.metadata.prepend_bos = False
    torch.manual_seed(spec.seed + 1)
    sae = StandardTrainingSAE(sae_cfg)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * spec.sae_batch_size,
        train_batch_size_samples=spec.sae_batch_size,
        lr=spec.sae_lr, lr_end=spec.sae_lr / 10, lr_scheduler_name="cosineannealing",
        lr_warm_up_steps=max(1, steps // 20), device="cpu",
        dead_feature_window=max(1, steps // 4), feature_sampling_window=max(1, steps // 2),
        n_checkpoints=0, logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=2 if quick else 20,
    )
    t0 = time.perf_counter()
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae,
                         data_provider=_activation_stream(entry, model, spec.sae_batch_size),
                         evaluator=None)
    trained = trainer.fit()
    trained.eval()
    return trained, {"steps": steps, "seconds": round(time.perf_counter() - t0, 1),
                     "batch_size": spec.sae_batch_size}


def _file_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def train(entry: ZooEntry, out_dir: str | Path | None = None, quick: bool = False) -> dict[str, Any]:
    """Train model + SAE, write them with a card to `out_dir` (default: the shipped folder)."""
    from estimators.checkpoint import save_checkpoint

    out = Path(out_dir) if out_dir is not None else entry.weights_dir
    out.mkdir(parents=True, exist_ok=True)
    threads_before = torch.get_num_threads()
    det_before = torch.are_deterministic_algorithms_enabled()
    try:
        model, log = train_model(entry, quick=quick)
        spec = entry.train_spec
        eval_n = 256 if quick else spec.eval_n
        metrics = entry.evaluate(model, n=eval_n, seed=spec.eval_seed)
        save_checkpoint(model, out)
        sae, sae_log = train_sae(entry, model, quick=quick)
        sae_dir = out / SAE_DIR
        sae.save_model(sae_dir)
        from sae_lens import SAE

        reloaded = SAE.load_from_disk(str(sae_dir), device="cpu")
        sae_eval = sae_metrics(entry, model, reloaded, n=64 if quick else 512)
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(det_before)
    card = build_card(entry, model, metrics, log, sae_eval, sae_log, quick=quick)
    card["files"] = {
        "model.safetensors": _file_sha256(out / "model.safetensors"),
        "sae/sae_weights.safetensors": _file_sha256(sae_dir / "sae_weights.safetensors"),
    }
    write_json(out / CARD_FILE, card)
    return {"name": entry.name, "out_dir": str(out), "quick": quick, **{
        k: metrics[k] for k in metrics if k not in ("seed",)},
        "train_seconds": log["seconds"], "sae_explained_variance": sae_eval["explained_variance"],
        "sae_l0": sae_eval["l0"], "sae_seconds": sae_log["seconds"]}


def sae_card(entry: ZooEntry, model, sae_eval: dict, sae_log: dict) -> dict[str, Any]:
    spec = entry.train_spec
    return {
        "hook": entry.sae_hook, "architecture": "standard (ReLU, L1)",
        "d_in": model.cfg.d_model, "d_sae": spec.sae_expansion * model.cfg.d_model,
        "l1_coefficient": spec.sae_l1, "lr": spec.sae_lr, "steps": sae_log["steps"],
        "batch_size": sae_log["batch_size"], "seconds": sae_log["seconds"],
        "normalization": "expected_average_only_in while training, folded into the weights",
        "positions": entry.sae_positions_description(), **sae_eval,
    }


def build_card(entry: ZooEntry, model, metrics: dict, log: dict, sae_eval: dict, sae_log: dict,
               quick: bool) -> dict[str, Any]:
    spec = entry.train_spec
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "name": entry.name,
        "title": entry.title,
        "description": entry.description,
        "task": entry.task_summary(),
        "quick": quick,
        "architecture": {
            "n_layers": model.cfg.n_layers, "d_model": model.cfg.d_model,
            "n_heads": model.cfg.n_heads, "d_head": model.cfg.d_head,
            "d_mlp": None if model.cfg.attn_only else model.cfg.d_mlp,
            "attn_only": model.cfg.attn_only, "normalization_type": model.cfg.normalization_type,
            "attention_dir": model.cfg.attention_dir, "n_ctx": model.cfg.n_ctx,
            "d_vocab": model.cfg.d_vocab, "d_vocab_out": model.cfg.d_vocab_out,
            "n_params": n_params,
        },
        "metric": entry.metric,
        "eval": {**metrics, "held_out": "fresh samples from evaluation seeds, disjoint from the "
                 "training and SAE seeds" if entry.name != "charlm" else
                 "windows of held-out stdlib files never used in training"},
        "data": entry.data_description,
        "training": {
            "seed": spec.seed, "steps": log["steps"], "batch_size": spec.batch_size,
            "lr": spec.lr, "weight_decay": spec.weight_decay, "optimizer": "AdamW(0.9, 0.98), "
            "warm-up + cosine to 10%, grad clip 1.0", "seconds": log["seconds"],
            "final_train_loss": log["final_train_loss"], "history": log["history"],
            "torch": torch.__version__, "python": platform.python_version(),
            "threads": 1, "command": f"python -m estimators zoo train {entry.name}",
            **entry.extra_training_info(),
        },
        "sae": sae_card(entry, model, sae_eval, sae_log),
        "input_distributions": sorted(entry.input_distributions()),
        "reference_hypotheses": entry.reference_hypotheses(),
    }


def retrain_sae(entry: ZooEntry, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Retrain only the SAE on the model already in `out_dir` (default: the shipped folder)
    and update its card. Gives the same SAE as a full `train` run, since SAE training depends
    only on the model's weights and fixed seeds; used to tune SAEs without retraining models."""
    from sae_lens import SAE

    from estimators.checkpoint import load_checkpoint, read_json

    out = Path(out_dir) if out_dir is not None else entry.weights_dir
    model = load_checkpoint(out, "cpu")
    card = read_json(out / CARD_FILE)
    threads_before = torch.get_num_threads()
    det_before = torch.are_deterministic_algorithms_enabled()
    try:
        sae, sae_log = train_sae(entry, model, quick=bool(card.get("quick")))
        sae_dir = out / SAE_DIR
        sae.save_model(sae_dir)
        reloaded = SAE.load_from_disk(str(sae_dir), device="cpu")
        sae_eval = sae_metrics(entry, model, reloaded, n=64 if card.get("quick") else 512)
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(det_before)
    card["sae"] = sae_card(entry, model, sae_eval, sae_log)
    card.setdefault("files", {})["sae/sae_weights.safetensors"] = _file_sha256(
        sae_dir / "sae_weights.safetensors")
    write_json(out / CARD_FILE, card)
    return {"name": entry.name, "out_dir": str(out), "sae_explained_variance":
            sae_eval["explained_variance"], "sae_l0": sae_eval["l0"],
            "sae_seconds": sae_log["seconds"]}
