"""Tables for the Model & SAE page (cached; the numbers come from estimators.model_info)."""

from __future__ import annotations

import pandas as pd
import torch
import streamlit as st

from app import store
from estimators import model_info
from estimators.loading import LoadedModel

SAE_EVAL_SEQUENCES = 256
SAE_EVAL_SEED = 1


def card_headline(card: dict) -> list[tuple[str, str]]:
    """The card's held-out numbers, as (label, value) pairs for st.metric."""
    ev, sae = card.get("eval", {}), card.get("sae", {})
    out = []
    if "loss_nats_per_char" in ev:
        out.append(("Held-out loss (nats/char)", f"{ev['loss_nats_per_char']:.3f}"))
    elif "accuracy" in ev:
        n = ev.get('n_predictions', ev.get('n_examples', 0))
        # short label: a metric column cuts long ones ("Held-out accuracy (168,112 …")
        out.append((f"Held-out accuracy (n={n / 1000:,.0f}k)" if n >= 10_000 else
                    f"Held-out accuracy (n={n:,})", f"{ev['accuracy']:.4%}"))
    if "explained_variance" in sae:
        out.append(("SAE explained variance (card)", f"{sae['explained_variance']:.3f}"))
    if "l0" in sae:
        out.append(("SAE L0 (card)", f"{sae['l0']:.1f}"))
    return out


def config_frame(model) -> pd.DataFrame:
    summary = model_info.config_summary(model)
    return pd.DataFrame({"field": list(summary), "value": [str(v) for v in summary.values()]})


def hooks_frame(model) -> pd.DataFrame:
    rows = model_info.hook_shapes(model)
    return pd.DataFrame({"hook": [r["hook"] for r in rows],
                         "shape": [" × ".join(map(str, r["shape"])) for r in rows]})


def prediction_frame(lm: LoadedModel, seed: int) -> tuple[pd.DataFrame, float | None]:
    """One sample from the model's data with top-3 predictions per position. For classifiers
    (a label per sequence) the label is scored at the position the model reads it from."""
    entry = lm.zoo_entry
    batch = entry.sample(1, seed=seed)
    labels = entry.token_labels()
    targets = batch.targets[0] if batch.targets is not None else None
    mask = batch.loss_mask[0] if batch.loss_mask is not None else None
    if targets is None and batch.labels is not None and entry.label_position is not None:
        n_pos = batch.tokens.shape[1]
        targets = torch.zeros(n_pos, dtype=torch.long)
        mask = torch.zeros(n_pos, dtype=torch.bool)
        pos = entry.label_position % n_pos
        targets[pos], mask[pos] = batch.labels[0], True
    rows = model_info.token_predictions(lm.model, batch.tokens[0], labels, targets, mask)
    frame = pd.DataFrame({
        "pos": [r.position for r in rows],
        "token": [r.token for r in rows],
        "top-1": [r.top[0][0] for r in rows],
        "p(top-1)": [round(r.top[0][1], 4) for r in rows],
        "top-3": [", ".join(f"{t} ({p:.2f})" for t, p in r.top) for r in rows],
        "target": [r.target if r.target is not None else "" for r in rows],
        "p(target)": [round(r.target_prob, 4) if r.target_prob is not None else None
                      for r in rows],
    })
    scored = [r for r in rows if r.target is not None]
    accuracy = (sum(r.top[0][0] == r.target for r in scored) / len(scored)) if scored else None
    return frame, accuracy


@st.cache_data(show_spinner="Measuring the SAE…", max_entries=8)
def _sae_report(model_name: str, sae_key: str, device: str, _lm: LoadedModel, _sae):
    tokens = _lm.zoo_entry.sample(SAE_EVAL_SEQUENCES, seed=SAE_EVAL_SEED).tokens
    quality = model_info.sae_quality(_lm.model, _sae, tokens)
    features = model_info.top_features(_lm.model, _sae, tokens, _lm.zoo_entry.token_labels())
    for f in features:
        f["top_tokens"] = ", ".join(f["top_tokens"])
    return quality, features


def sae_report(lm: LoadedModel, sae) -> tuple[dict, list[dict]]:
    return _sae_report(lm.name, store.current_sae_source(), str(lm.model.cfg.device), lm, sae)


# ------------------------------------------------------------------- any model with data
def token_label(lm: LoadedModel, i: int) -> str:
    """Token id `i` as text through the model's tokenizer (repr, so spaces show), else the id."""
    from estimators.data import decode

    text = decode(lm, [int(i)])
    if text and "\ufffd" in text:  # one byte of a multi-byte character (byte-level BPE):
        text = _token_piece(lm, int(i)) or text  # the tokenizer's own spelling, e.g. 'âĢ'
    return repr(text) if text else str(int(i))


def _token_piece(lm: LoadedModel, i: int) -> str | None:
    """Token `i` as the tokenizer spells it in its vocabulary (GPT-2: 'Ġthe', 'âĢ'), or None."""
    from estimators.data import DataError, model_tokenizer

    try:
        tok = model_tokenizer(lm.model, lm)
    except DataError:
        return None
    for method in ("convert_ids_to_tokens", "id_to_token"):
        if hasattr(tok, method):
            piece = getattr(tok, method)(i)
            return piece if isinstance(piece, str) else None
    return None


def _sig3(p: float) -> float:
    return float(f"{p:.3g}")


def data_prediction_frame(lm: LoadedModel, tokens: torch.Tensor) -> pd.DataFrame:
    """One data sequence `tokens` [len] with the model's top-3 next-token predictions per
    position and the probability of the token that really comes next (none at the last)."""
    V_out = int(getattr(lm.model.cfg, "d_vocab_out", 0) or lm.model.cfg.d_vocab)
    n = int(tokens.shape[0])
    targets = torch.cat([tokens[1:], tokens[:1]]).clamp(max=V_out - 1)
    mask = torch.ones(n, dtype=torch.bool)
    mask[-1] = False
    mask[:-1] &= tokens[1:] < V_out  # a next token the output vocabulary lacks: not scored
    ids = [str(i) for i in range(max(V_out, int(lm.model.cfg.d_vocab)))]
    rows = model_info.token_predictions(lm.model, tokens, ids, targets, mask)
    lab = {}

    def name(s: str | None) -> str:
        if s is None:
            return ""
        if s not in lab:
            lab[s] = token_label(lm, int(s))
        return lab[s]

    return pd.DataFrame({
        "pos": [r.position for r in rows],
        "token": [name(r.token) for r in rows],
        "top-1": [name(r.top[0][0]) for r in rows],  # 3 significant digits: on a 50k
        "p(top-1)": [_sig3(r.top[0][1]) for r in rows],  # vocabulary most are < 0.005
        "top-3": [", ".join(f"{name(t)} ({p:.3g})" for t, p in r.top) for r in rows],
        "next": [name(r.target) for r in rows],
        "p(next)": [_sig3(r.target_prob) if r.target_prob is not None else None
                    for r in rows],
    })


def sae_step_key(model_source: str, sae_source: str, data_fingerprint: str) -> str:
    """The `app.progress` key of the SAE measurement: a new model, SAE or data is a new step."""
    return f"sae-quality|{model_source}|{sae_source}|{data_fingerprint}"


def sae_quality_with_progress(lm: LoadedModel, sae, spec: str) -> tuple[dict, dict | None]:
    """`estimators.sae_stats.sae_quality_on_data(lm, sae, spec)` (its defaults n=256, seed=1
    where the spec leaves them unset) with a progress bar, time left and Cancel
    (`app.progress.run_step`): the activations at the SAE's hook (shared activation cache) then
    the statistics, the model lock released after every batch. Cancelled: (data description,
    None), with one "cancelled" line and a "Run again" button."""
    from app.progress import CANCELLED, run_step
    from estimators.data import load_data
    from estimators.sae_stats import sae_quality_on_data

    data = load_data(spec, lm, n=SAE_EVAL_SEQUENCES, seed=SAE_EVAL_SEED)
    key = sae_step_key(store.current_model_source(), store.current_sae_source(),
                       data.fingerprint)

    def step(progress):
        with store.model_lock():
            return sae_quality_on_data(lm, sae, spec, n=SAE_EVAL_SEQUENCES, seed=SAE_EVAL_SEED,
                                       progress=progress)

    out = run_step(f"Measuring the SAE on {data.describe()}", key, step, lock_held=True)
    return (data.to_dict(), None) if out is CANCELLED else out
