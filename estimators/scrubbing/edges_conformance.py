"""Conformance check of the edge-patching scrubbing pass ("scrubbing-edges") against the model.

On the scrubbing check's random tokens x (3 sequences of min(n_ctx, 6) tokens, fixed seed) and
a second input x' (x rolled by one sequence, first token shifted), `edges.edge_logits` runs
with `exact=False` — every receiver input is computed as the patched run's residual stream
plus Σ (clean − patched) sender outputs, no shortcut — on

  1. every edge real, with the patched run reading x': its logits must equal `model(x)` (so
     every edge's correction is exercised and must cancel the other input entirely);
  2. every edge real except embed>logits and a{L−1}.0>logits, which read x': compared with the
     same quantity computed by hooks (`estimators.scrubbing.conformance._hooked_reference`: the
     model on x with `blocks.{L−1}.hook_resid_post` shifted by the two senders' differences).

Tolerance `conformance.tolerance_for(dtype, largest |logit|)`, then again on a float64 copy
(models up to `FLOAT64_MAX_PARAMS` parameters) with the float64 tolerance. A model that fails
is refused by `EdgeScrubber` with the one-line reason (config fields that change the forward
pass named as suspects).
"""

from __future__ import annotations

import numpy as np
import torch

from estimators import conformance
from estimators.conformance import EngineUnsupported, EngineVerdict
from estimators.scrubbing.conformance import _hooked_reference, compare_in_dtypes

ENGINE = "scrubbing-edges"


def _compare(model, eg, tokens: torch.Tensor, other: torch.Tensor
             ) -> tuple[float, float, str | None]:
    from estimators.scrubbing.edges import edge_logits

    with torch.no_grad():
        ref_full = model(tokens, return_type="logits")
    real = np.zeros(eg.n_edges, dtype=np.int64)
    two = real.copy()
    logit_sl = eg.dest_slice[eg.dest_index[("logits", None)]]
    srcs = eg.sources[eg.dest_index[("logits", None)]]
    last = eg.graph.index[f"a{eg.n_layers - 1}.0"]
    two[logit_sl.start + int(np.flatnonzero(srcs == 0)[0])] = 1
    two[logit_sl.start + int(np.flatnonzero(srcs == last)[0])] = 1
    logits = edge_logits(model, eg, [real, two], torch.stack([tokens, other]), rest=1,
                         exact=False)
    ref_two = _hooked_reference(model, tokens, other)
    scale = float(max(ref_full.abs().max(), ref_two.abs().max()))
    tol = conformance.tolerance_for(ref_full.dtype, scale)
    err_full = float((logits[0].double() - ref_full.double()).abs().max())
    err_two = float((logits[1].double() - ref_two.double()).abs().max())
    where = None
    if not err_full <= tol:
        where = "every edge real, patched run on another input"
    elif not err_two <= tol:
        where = "embed>logits and the last layer's head 0 > logits resampled, vs hooks"
    return max(err_full, err_two), tol, where


@conformance.register_engine(ENGINE)
def check_scrubbing_edges(model) -> EngineVerdict:
    """Compare the edge-patching pass with the model (see the module docstring)."""
    from estimators.scrubbing.edges import EdgeGraph
    from estimators.scrubbing.paths import PathError

    try:
        eg = EdgeGraph.from_model(model)
    except PathError as e:
        raise EngineUnsupported(str(e)) from e
    return compare_in_dtypes(ENGINE, "edge-patching pass", model, eg, _compare)
