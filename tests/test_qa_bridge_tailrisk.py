"""QA regression: a Hugging Face architecture that TransformerLens cannot convert boots as a
TransformerBridge; when its MLP is gated (Llama-style), the tail-risk check's float64 repeat
used to crash ("double != float") and refuse every tail-risk method, although the bridge's own
logits are read exactly. The bridge is checked in its own dtype; exact ground truth equals the
Hugging Face model's own forward pass."""

from __future__ import annotations

import itertools

import torch

from estimators import conformance
from estimators.loading import _boot_bridge
from estimators.tailrisk.behaviours import Argmax
from estimators.tailrisk.distributions import from_json
from estimators.tailrisk.ground_truth import exact
from tests.test_hf_folders import VOCAB, build_hf_folder


def test_gated_mlp_bridge_passes_the_tailrisk_check_and_ground_truth_is_exact(tmp_path):
    hf = build_hf_folder("llama", tmp_path / "llama")
    bridge = _boot_bridge(tmp_path / "llama", torch.device("cpu"))
    v = conformance.verdict(bridge, "tailrisk")
    assert v.ok, v.line()
    support = [f"id:{i}" for i in range(5)]
    dist = from_json([{"uniform": support}] * 2, VOCAB, 16)
    toks = torch.tensor(list(itertools.product(range(5), repeat=2)))
    with torch.no_grad():
        own = hf(toks).logits[:, -1].double()
    top = own.topk(2, -1)
    t = int(top.indices[0, 0])
    want = ((top.indices[:, 0] == t) & (top.values[:, 0] > top.values[:, 1])).double().mean()
    got = exact(bridge, dist, Argmax(t))  # [V]: every target at once
    assert abs(float(got[t]) - float(want)) < 1e-12
