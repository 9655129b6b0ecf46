"""Finding previous-token and induction heads from a trained model's attention patterns.

On a batch of sequences, for every head:
  * previous-token score: mean attention from position q to q − 1 (q ≥ 1);
  * induction score: mean attention mass from q onto the positions k whose *previous* token
    equals the current token (tokens[k−1] = tokens[q], 1 ≤ k ≤ q), averaged over the query
    positions that have such a k (where an earlier occurrence exists).
Both are 0..1; the reference hypotheses take the top-scoring heads, so they name the heads the
trained model actually uses.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def head_scores(model, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"previous_token": [n_layers, n_heads], "induction": [n_layers, n_heads]}."""
    cfg = model.cfg
    tokens = tokens.to(cfg.device)
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    n, ctx = tokens.shape
    # match[n, q, k]: the token before k equals the token at q, with 1 ≤ k ≤ q
    prev_tok = torch.cat([torch.full_like(tokens[:, :1], -1), tokens[:, :-1]], dim=1)
    match = (prev_tok[:, None, :] == tokens[:, :, None])
    causal = torch.ones(ctx, ctx, dtype=torch.bool, device=tokens.device).tril()
    match = match & causal
    has = match.any(-1)  # [n, q]
    prev, ind = [], []
    for name in names:
        pat = cache[name].float()  # [n, head, q, k]
        prev.append(pat.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, 2)))
        mass = (pat * match[:, None].float()).sum(-1)  # [n, head, q]
        w = has[:, None].float()
        ind.append((mass * w).sum(dim=(0, 2)) / w.sum(dim=(0, 2)).clamp_min(1.0))
    return {"previous_token": torch.stack(prev).cpu(), "induction": torch.stack(ind).cpu()}


def find_heads(model, tokens: torch.Tensor, threshold: float = 0.3) -> dict:
    """Previous-token heads (layer < last) and induction heads (layer > 0) scoring above
    `threshold`, best first; the single best of each kind if none passes."""
    scores = head_scores(model, tokens)
    out = {}
    for kind, allowed in (("previous_token", lambda l: l < model.cfg.n_layers - 1),
                          ("induction", lambda l: l > 0)):
        s = scores[kind]
        cands = sorted(((float(s[l, h]), l, h) for l in range(s.shape[0]) if allowed(l)
                        for h in range(s.shape[1])), reverse=True)
        chosen = [(l, h) for v, l, h in cands if v >= threshold] or [cands[0][1:]]
        out[kind] = [f"a{l}.{h}" for l, h in chosen]
    out["scores"] = {k: v.tolist() for k, v in scores.items()}
    return out
