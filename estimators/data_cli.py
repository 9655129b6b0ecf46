"""`python -m estimators data --model M --data SPEC`: check a data spec before a long run, see
what it reads, the model's next-token loss on it, and fill the activation cache.

    python -m estimators data --model ./my-gpt2 --data text:corpus/,n=128,len=64 --json
    python -m estimators data --model ./my-gpt2 --data hf:./ds --hooks blocks.6.hook_resid_pre

Prints the data (spec, n, seq_len, seed, n_available, fingerprint), the first --show sequences
(ids, and text where the model has a tokenizer), the mean next-token loss in nats over every
position but the last (one forward pass, batched), and with --hooks the activations' shapes
after computing them into the shared activation cache (reused by every later run).
"""

from __future__ import annotations

import math

import torch

from estimators.cli import add_common_json, progress_flag, progress_printer


def register(sub) -> None:
    p = sub.add_parser("data", help="read a data spec for a model: what it holds, the model's "
                                    "loss on it, and fill the activation cache")
    p.add_argument("--model", required=True, help="zoo name, checkpoint folder or HF folder")
    p.add_argument("--data", required=True,
                   help="zoo, tokens:FILE.json, text:PATH, hf:FOLDER[:COLUMN], options "
                        ",n=256,len=L,seed=0,bos=1,split=S,column=C,tokenizer=DIR")
    p.add_argument("--show", type=int, default=3, help="sequences to print (default 3)")
    p.add_argument("--no-loss", action="store_true", help="skip the forward pass")
    p.add_argument("--hooks", nargs="+", default=None,
                   help="hooks whose activations are computed into the activation cache")
    p.add_argument("--device", default="cpu")
    progress_flag(p)
    add_common_json(p)
    p.set_defaults(func=run_data)


def next_token_loss(model, tokens: torch.Tensor, batch_size: int | None = None) -> float:
    """Mean next-token cross-entropy (nats) of `model` on `tokens` [n, len] over positions
    0..len−2, in batches sized by the activation cache's memory estimate (full logits)."""
    from estimators.activation_cache import _model_device, batch_size_for

    if tokens.shape[1] < 2:
        raise ValueError("the next-token loss needs sequences of at least 2 tokens")
    bs = batch_size or batch_size_for(model, int(tokens.shape[1]), 0, None)
    dev = _model_device(model)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, tokens.shape[0], bs):
            t = tokens[start:start + bs].to(dev)
            logp = model(t).double().log_softmax(-1)[:, :-1]
            total -= float(logp.gather(-1, t[:, 1:, None]).sum())
            count += int(t[:, 1:].numel())
    return total / count


def run_data(args) -> dict:
    from estimators import activation_cache
    from estimators.data import decode, load_data
    from estimators.loading import load_model

    if args.show < 0:
        raise ValueError("--show must be ≥ 0")
    lm = load_model(args.model, args.device)
    data = load_data(args.data, lm)
    out: dict = {"model": lm.name, "data": data.to_dict()}
    out["examples"] = [{"ids": row, "text": decode(lm, row)}
                       for row in data.tokens[: args.show].tolist()]
    if not args.no_loss and data.seq_len >= 2:
        loss = next_token_loss(lm.model, data.tokens)
        out["loss_nats"] = loss if math.isfinite(loss) else None
    if args.hooks:
        acts = activation_cache.activations(lm.model, data, args.hooks, progress=progress_printer(
            "data", getattr(args, "progress", None)))
        out["activations"] = {h: list(a.shape) for h, a in acts.items()}
        out["cache"] = {"dir": str(activation_cache.cache_dir()),
                        **activation_cache.stats().to_dict()}
    return out
