"""Glue of the Activation model page: settings, the cached chain, the per-session Propagator,
mask edits, URL/file state and argument search with progress and cancellation.

* The chain (sites, transitions, real activations) is built once per (model, SAE, device,
  settings) with `st.cache_resource` and shared by sessions; building it runs the real model,
  so it happens under `store.model_lock()`.
* Each session keeps its own `Propagator` in `st.session_state` (keyed by the chain key), so a
  one-entry toggle re-propagates only from the edited site on (`Propagator.set_site_mask` +
  `run`, which caches the unchanged sites).
* The argument lives in the URL (`mask`, a compact blob; the chain settings in `act`) and in a
  downloadable explanation file of kind "covariance-mask". Malformed input is reported and the
  current argument kept.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import re
import threading
import time
from dataclasses import asdict, dataclass, field, replace

import streamlit as st
import torch

from app import state, store
from estimators import conformance
from estimators.activation import (Chain, CovarianceMask, MaskRule, Propagator, SiteMask,
                                   chain_for_zoo, gradient_search, greedy_search,
                                   transformer_chain)
from estimators.activation.sites import resid_site_name
from estimators.activation.chain import default_positions as chain_positions
from estimators.activation.cli import DEFAULT_MAX_DIM  # the default positions: page = CLI
from estimators.activation.cli import (AUTO_FULL_WIDTH, UNIT_MODES,  # noqa: F401
                                      page_units)  # the unit setting: page = CLI

EXPLANATION_KIND = "covariance-mask"
URL_MASK = "mask"
URL_SETTINGS = "act"
URL_BITS = "act_bpp"

# Sizes that keep the page responsive on a 2-core CPU with the default model.
DEFAULT_N_INPUTS = 64
DEFAULT_SAMPLES = 128
GRID_MAX = 48  # the clickable grid shows at most this many units (a view of larger sites)
HEATMAP_MAX = 256
MAX_N_INPUTS = 8192
MAX_SAMPLES = 8192
MAX_SITE_DIM = 2048  # a covariance of this dimension is ~32 MiB in float64 per matrix
MAX_BYTES = 4 * 2 ** 30  # rough working-memory ceiling for building a chain
MAX_SEED = 2 ** 31 - 1
K_UNIT_MODES = ("first", "top-variance", "firing")  # the unit modes that take a count K

ss = st.session_state


@contextlib.contextmanager
def compute_scope():
    """Hold the model lock and, on a CPU device, run torch single-threaded: on a small, shared
    CPU, small-model propagation measured 10–70× faster with 1 thread than with 2 (README).
    (torch's thread count is process-wide; it is restored afterwards.)"""
    with store.model_lock():
        if store.current_device() != "cpu":
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


# ============================================================================ settings
@dataclass(frozen=True)
class Settings:
    """What the chain depends on (the argument does not): modelled positions, sites (None = the
    library's default chain), real inputs N, samples K per transition, seed, for models
    outside the zoo the input token ids (one sequence per line; empty = uniform random), the
    units modelled (`units`: a mode of UNIT_MODES, `unit_count` its K; `page_units`) and a time
    budget in seconds (None: off; else N and K are chosen by a timed pilot, `budget_chain`)."""

    positions: tuple[int, ...]
    sites: tuple[str, ...] | None = None
    n_inputs: int = DEFAULT_N_INPUTS
    samples: int = DEFAULT_SAMPLES
    seed: int = 0
    tokens: str = ""
    units: str = "auto"
    unit_count: int = 0
    time_budget: float | None = None

    def __post_init__(self):
        if not self.positions:
            raise ValueError("choose at least one position")
        if len(set(self.positions)) != len(self.positions):
            raise ValueError("positions repeat")
        if any((not isinstance(p, int)) or p < 0 for p in self.positions):
            raise ValueError("positions must be non-negative integers")
        if not 2 <= self.n_inputs <= MAX_N_INPUTS:
            raise ValueError(f"real inputs N must be in 2..{MAX_N_INPUTS}")
        if not 2 <= self.samples <= MAX_SAMPLES:
            raise ValueError(f"samples K must be in 2..{MAX_SAMPLES}")
        if self.seed < 0:
            raise ValueError("seed must be ≥ 0")
        if self.sites is not None and not self.sites:
            raise ValueError("choose at least one site")
        self._check_scale()

    def _check_scale(self) -> None:
        """The unit and time-budget fields (model-free checks; `unit_spec` checks K against
        the model)."""
        if self.units not in UNIT_MODES:
            raise ValueError(f"units must be one of {', '.join(UNIT_MODES)}, not "
                             f"{str(self.units)[:40]!r}")
        if self.units in K_UNIT_MODES:
            if self.unit_count < 1:
                raise ValueError(f"units {self.units}: the count K must be at least 1")
        elif self.unit_count != 0:
            object.__setattr__(self, "unit_count", 0)  # all/auto take no count
        if self.time_budget is not None:
            from estimators.validation import PAGE_TIME_BUDGET, number
            object.__setattr__(self, "time_budget", float(number(
                self.time_budget, "time budget (seconds)", *PAGE_TIME_BUDGET)))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["positions"] = list(self.positions)
        d["sites"] = None if self.sites is None else list(self.sites)
        return d

    @classmethod
    def from_dict(cls, d) -> "Settings":
        if not isinstance(d, dict):
            raise ValueError("activation settings must be a JSON object")
        try:
            pos = tuple(_as_int(p, "position") for p in d["positions"])
            sites = d.get("sites")
            sites = None if sites is None else tuple(str(s) for s in sites)
            budget = d.get("time_budget")
            return cls(pos, sites, _as_int(d.get("n_inputs", DEFAULT_N_INPUTS), "n_inputs"),
                       _as_int(d.get("samples", DEFAULT_SAMPLES), "samples"),
                       _as_int(d.get("seed", 0), "seed"), str(d.get("tokens", "")),
                       str(d.get("units", "auto")), _as_int(d.get("unit_count", 0),
                                                            "unit_count"),
                       None if budget is None else budget)
        except (KeyError, TypeError) as e:
            raise ValueError(f"activation settings are incomplete ({e})") from None

    def key(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))


def _as_int(v, what) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
        raise ValueError(f"{what} must be an integer, not {v!r}")
    return int(v)


# ============================================================================ units, budget
def unit_count_range(lm, sae, mode: str) -> tuple[int, int]:
    """The allowed K of a unit mode: 1..d_model (first, top-variance), 1..d_sae (firing; 1..2^20
    with no SAE, which `build_chain` refuses anyway)."""
    if mode == "firing":
        return 1, int(sae.cfg.d_sae) if sae is not None else 2 ** 20
    return 1, int(lm.model.cfg.d_model) if lm is not None else 2 ** 20


def settings_from_untrusted(d, lm=None, sae=None) -> tuple[Settings, list[str]]:
    """Settings from a link or an explanation file: numbers outside the page's ranges (N, K,
    seed, the unit count K — 1..d_model, or 1..d_sae for SAE features — and the time budget)
    are clamped, each with one message (`estimators.validation.clamp_fields`); anything else
    wrong (a word for a number, NaN, an unknown unit mode, repeated positions) raises one-line
    ValueError. Returns (settings, messages)."""
    from estimators.validation import PAGE_TIME_BUDGET, clamp_fields

    if not isinstance(d, dict):
        raise ValueError("activation settings must be a JSON object")
    ranges = {"n_inputs": (2, MAX_N_INPUTS, True), "samples": (2, MAX_SAMPLES, True),
              "seed": (0, MAX_SEED, True), "time_budget": (*PAGE_TIME_BUDGET, False)}
    mode = d.get("units", "auto")
    if mode in K_UNIT_MODES:
        ranges["unit_count"] = (*unit_count_range(lm, sae, mode), True)
    d, notes = clamp_fields(d, ranges)
    return Settings.from_dict(d), notes


def unit_spec(lm, s: Settings) -> str | None:
    """The chain's `units` spec (`scale.parse_units`) for the settings, or None (every unit):
    `estimators.activation.cli.page_units` at this model's width and the modelled positions."""
    return page_units(s.units, s.unit_count, int(lm.model.cfg.d_model), len(s.positions))


def n_available(lm, s: Settings, data_tokens: torch.Tensor | None = None) -> int:
    """How many real inputs a time budget may use: the typed token ids' or the data's
    sequences, else as many as the zoo generator or uniform random inputs allow."""
    from estimators.activation import scale

    if lm.zoo_entry is None and s.tokens.strip():
        return len([line for line in s.tokens.splitlines() if line.strip()])
    if lm.zoo_entry is None and data_tokens is not None:
        return int(data_tokens.shape[0])
    return min(scale.N_BOUNDS[1], MAX_N_INPUTS)


def budget_chain(lm, sae, s: Settings, data_tokens: torch.Tensor | None = None, *,
                 progress=None) -> Chain:
    """The chain with N and K chosen for `s.time_budget` seconds by a timed pilot
    (`estimators.activation.scale.pilot`, the naive argument, as `propagate --time-budget`).
    The plan is in `chain.info["budget"]` (`BudgetPlan.to_dict()`: samples, n_inputs,
    predicted_seconds, pilot_seconds, limited_by, …); its `run_seconds` is the final chain's
    build time (ground truth) only — the page adds the first propagation's seconds. Raises
    ValueError as `build_chain` does. progress: as `build_chain`'s, for the final build only
    (the pilot's small builds report nothing)."""
    from estimators.activation import scale

    base = replace(s, time_budget=None)

    def build(samples, n_inputs, progress=None):
        return build_chain(lm, sae, replace(base, samples=max(2, int(samples)),
                                            n_inputs=max(2, int(n_inputs))), data_tokens,
                           progress=progress)

    plan = scale.pilot(build, lambda ch: CovarianceMask.naive(), n_available(lm, s, data_tokens),
                       float(s.time_budget))
    t0 = time.perf_counter()
    chain = build(plan.samples, plan.n_inputs, progress=progress)
    plan.run_seconds = time.perf_counter() - t0
    chain.info["budget"] = plan.to_dict()
    return chain


def label_position(lm) -> int | None:
    entry = lm.zoo_entry
    return None if entry is None else entry.label_position


def default_positions(lm) -> tuple[int, ...]:
    """The last ⌊128 / d_model⌋ positions (at least 1), always including the position the
    logits site reads (the zoo entry's label position, else the last)."""
    lp = label_position(lm)
    return tuple(chain_positions(_context_length(lm), lm.model.cfg.d_model, DEFAULT_MAX_DIM,
                                 -1 if lp is None else lp))


def _context_length(lm, data=None) -> int:
    """The input length: the zoo generator's, else the sidebar data's (`data`, see
    `page_data`), else min(n_ctx, 16) for uniform random inputs."""
    entry = lm.zoo_entry
    if entry is not None:
        return int(entry.sample(1, seed=0).tokens.shape[1])
    if data is not None:
        return int(data.seq_len)
    return int(min(lm.model.cfg.n_ctx, 16))


def default_settings(lm, data=None) -> Settings:
    lp = label_position(lm)
    return Settings(tuple(chain_positions(_context_length(lm, data), lm.model.cfg.d_model,
                                          DEFAULT_MAX_DIM, -1 if lp is None else lp)))


def page_data(lm):
    """The sidebar's data for a model outside the zoo (its real inputs), else None: a zoo
    model keeps its own generator."""
    if lm.zoo_entry is not None:
        return None
    from app import data_source
    return data_source.current_data(lm)


def candidate_sites(lm, sae) -> list[str]:
    """Sites a user may put in the chain: residual boundaries, MLP hidden layers, the SAE's
    latents, the logits at the read-out position."""
    cfg = lm.model.cfg
    L = cfg.n_layers
    names = [resid_site_name(b, L) for b in range(L + 1)]
    if not cfg.attn_only:
        names += [f"blocks.{l}.mlp.hook_post" for l in range(L)]
    if sae is not None:
        names.append(f"sae:{_sae_hook(sae)}")
    names.append(logits_site(lm))
    return names


def default_sites(lm, sae) -> list[str]:
    return [s for s in candidate_sites(lm, sae) if ".mlp." not in s]


def logits_site(lm) -> str:
    lp = label_position(lm)
    return f"logits@{-1 if lp is None else lp}"


def _sae_hook(sae) -> str:
    from estimators.loading import sae_hook_name
    return sae_hook_name(sae)


# ============================================================================ the chain
def model_key() -> tuple[str, ...]:
    """(model source, SAE source, device) of the sidebar's choice, plus the sidebar's data spec
    for a model outside the zoo (its inputs; a zoo model reads its own generator)."""
    from app import data_source
    from estimators import zoo

    key = (store.current_model_source(), store.current_sae_source(), store.current_device())
    if key[0] in zoo.names():
        return key
    return key + (data_source.current_spec(),)


def parse_tokens(text: str, d_vocab: int) -> torch.Tensor:
    """One sequence of token ids per line, all the same length → [n, ctx]."""
    rows = [line.replace(",", " ").split() for line in text.splitlines() if line.strip()]
    if len(rows) < 2:
        raise ValueError("give at least 2 token sequences (one per line)")
    try:
        ids = [[int(t) for t in r] for r in rows]
    except ValueError as e:
        raise ValueError(f"token ids must be integers ({e})") from None
    if len({len(r) for r in ids}) != 1:
        raise ValueError("every token sequence must have the same length")
    t = torch.tensor(ids, dtype=torch.long)
    if int(t.min()) < 0 or int(t.max()) >= d_vocab:
        raise ValueError(f"token ids must lie in 0..{d_vocab - 1}")
    return t


# Built chains, shared by every session (as st.cache_resource would, but built outside a
# Streamlit cache so the build can draw its progress bar and be cancelled): at most 4.
_CHAINS: "collections.OrderedDict[tuple, Chain]" = collections.OrderedDict()
_CHAINS_GUARD = threading.Lock()
MAX_CHAINS = 4


def _cached_chain(key: tuple, settings_key: str, data_fp: str | None, _lm, _sae,
                  _data_tokens, progress=None) -> Chain:
    ck = (key, settings_key, data_fp)
    with _CHAINS_GUARD:
        hit = _CHAINS.get(ck)
        if hit is not None:
            _CHAINS.move_to_end(ck)
            return hit
    s = Settings.from_dict(json.loads(settings_key))
    if s.time_budget is not None:
        chain = budget_chain(_lm, _sae, s, _data_tokens, progress=progress)
    else:
        chain = build_chain(_lm, _sae, s, _data_tokens, progress=progress)
    with _CHAINS_GUARD:
        _CHAINS[ck] = chain
        while len(_CHAINS) > MAX_CHAINS:
            _CHAINS.popitem(last=False)
    return chain


def build_chain(lm, sae, s: Settings, data_tokens: torch.Tensor | None = None, *,
                progress=None) -> Chain:
    """The chain for these settings (plain function: tests call it to get the page's numbers).
    Sizes that would not fit (a site's covariance, the sampled activations) are refused with a
    ValueError before anything runs; so is a model the activation engine's conformance check
    refuses (one line, `conformance.EngineUnsupported`).

    data_tokens: [n, len] real inputs for a model outside the zoo (the sidebar's data); the
    first N (`s.n_inputs`) rows are used, unless token ids are typed into the settings. Neither:
    N uniform random sequences. progress: `estimators.progress` callback for the real
    activations' batches (it may raise to cancel)."""
    conformance.require(lm.model, "activation")
    cfg = lm.model.cfg
    tokens = None
    if lm.zoo_entry is None and s.tokens.strip():
        tokens = parse_tokens(s.tokens, cfg.d_vocab)
        ctx = int(tokens.shape[1])
        if ctx > cfg.n_ctx:
            raise ValueError(f"token sequences have {ctx} tokens; the model's context is "
                             f"{cfg.n_ctx}")
    elif lm.zoo_entry is None and data_tokens is not None:
        if data_tokens.shape[0] < 2:
            raise ValueError("the data holds fewer than 2 sequences; the activation model needs "
                             "at least 2 real inputs")
        tokens = data_tokens[:s.n_inputs].clone()
        ctx = int(tokens.shape[1])
    else:
        ctx = _context_length(lm)
    bad = [p for p in s.positions if p >= ctx]
    if bad:
        raise ValueError(f"position {bad[0]} is outside the context 0..{ctx - 1}")
    sites = list(s.sites) if s.sites is not None else default_sites(lm, sae)
    if s.units == "firing" and sae is None:
        raise ValueError("units 'SAE features that fire' need an SAE: choose one in the sidebar")
    spec = unit_spec(lm, s)
    resid_width = int(spec.split(":")[1]) if spec and not spec.startswith("firing") \
        else cfg.d_model
    widths = [resid_width] + ([cfg.d_mlp or 0] if any(".mlp." in n for n in sites) else [])
    if s.units == "firing" and any(n.startswith("sae:") for n in sites):
        widths.append(s.unit_count)
    dims = len(s.positions) * max(widths)
    if dims > MAX_SITE_DIM:
        raise ValueError(f"{len(s.positions)} positions × {max(widths)} units = {dims} "
                         f"variables per site; choose fewer positions or units (at most "
                         f"{MAX_SITE_DIM})")
    # Sampled transitions run K inputs through whole blocks (residual, MLP and attention
    # scores); ground truth runs batches of 128 real inputs.
    per_input = 4 * ctx * (6 * cfg.d_model + 2 * (cfg.d_mlp or 0) + cfg.n_heads * ctx)
    need = max(s.samples, 128) * per_input + 8 * s.n_inputs * dims * (len(sites) + 1)
    if need > MAX_BYTES:
        raise ValueError(f"these settings need about {need / 2 ** 30:.1f} GiB (K={s.samples} "
                         f"samples, N={s.n_inputs} inputs, context {ctx}); lower K, N or the "
                         f"positions (limit {MAX_BYTES / 2 ** 30:.0f} GiB)")
    if lm.zoo_entry is not None:
        return chain_for_zoo(lm, sae=sae, n_inputs=s.n_inputs, samples=s.samples, seed=s.seed,
                             sites=sites, positions=list(s.positions), units=spec,
                             progress=progress)
    if tokens is None:
        g = torch.Generator().manual_seed(s.seed)
        tokens = torch.randint(0, cfg.d_vocab, (s.n_inputs, ctx), generator=g)
    return transformer_chain(lm.model, tokens, sites=sites, positions=list(s.positions),
                             sae=sae, samples=s.samples, seed=s.seed, logits_position=-1,
                             units=spec, progress=progress)


def get_chain(lm, sae, s: Settings, progress=None) -> Chain:
    """The chain of these settings, built once per (model, SAE, device, data, settings) and
    shared by the sessions. progress: an `app.progress` callback made with lock_held=True (the
    model lock is released after every batch of real activations)."""
    data = page_data(lm)
    with compute_scope():
        return _cached_chain(model_key(), s.key(), None if data is None else data.fingerprint,
                             lm, sae, None if data is None else data.tokens, progress)


def get_propagator(chain: Chain, chain_key: str) -> tuple[Propagator, str | None]:
    """This session's Propagator for the chain. A new one (other settings, SAE or device)
    carries the previous argument over when it fits the new chain; a different model starts
    from the naive argument (an argument is about one model). Returns a note when the argument
    could not be carried."""
    held = ss.get("act_prop")
    if held is not None and held[0] == chain_key and held[1].chain is chain:
        return held[1], None
    prop = Propagator(chain)
    note = None
    model = model_key()[0]
    if held is not None and held[1].mask.sites and held[2] == model:
        try:
            prop.set_mask(held[1].mask)
        except ValueError as e:
            note = f"The argument does not fit the new settings ({e}); starting from naive."
    ss.act_prop = (chain_key, prop, model)
    return prop, note


def run(prop: Propagator, bits_per_parameter: float | None):
    """Propagate (only what is stale) under the model lock, with the chosen S(π) price; the
    lock is given up for a moment between transition steps, at most every 0.1 s (other
    sessions' clicks on the model wait for one step, not the whole propagation)."""
    from app.progress import lock_yielder
    from estimators.surprise import mdl_bits_per_parameter
    prop.bits_per_parameter = (mdl_bits_per_parameter(prop.chain.n_inputs)
                               if bits_per_parameter is None else float(bits_per_parameter))
    with compute_scope():
        return prop.run(progress=lock_yielder())


# ============================================================================ mask edits
_PAIR = re.compile(r"^\s*\(?\s*(-?\d+)\s*[, ]\s*(-?\d+)\s*\)?\s*$")


def parse_entries(text: str) -> list[tuple[int, int]]:
    """'i,j; k,l' (or one pair per line) → [(i, j), ...]. ValueError on anything else."""
    parts = [p for p in re.split(r"[;\n]", text) if p.strip()]
    out = []
    for p in parts:
        m = _PAIR.match(p)
        if not m:
            raise ValueError(f"{p.strip()!r} is not an entry 'i,j' (two flat indices)")
        out.append((int(m.group(1)), int(m.group(2))))
    return out


def toggle_entries(prop: Propagator, site: str, pairs: list[tuple[int, int]]) -> None:
    """Flip each entry (symmetric) of `site`'s mask; nothing changes if any entry is invalid."""
    d = prop.chain.site(site).dim
    for i, j in pairs:
        if not (0 <= i < d and 0 <= j < d):
            raise ValueError(f"entry ({i}, {j}) is outside site {site}'s {d}×{d} covariance")
        if i == j:
            raise ValueError(f"entry ({i}, {j}) is on the diagonal, which is always tracked")
    sm = prop.site_mask(site)
    dense = prop.dense_mask(site).clone()
    for i, j in pairs:
        sm = sm.toggled(i, j, bool(dense[i, j]))
        dense[i, j] = dense[j, i] = not bool(dense[i, j])
    prop.set_site_mask(site, sm)


PRESETS = ("naive", "full", "top-k", "blocks by position", "blocks by unit group")


def preset_site_mask(layout, preset: str, k: int = 16, group_size: int = 8,
                     feature_groups: bool = False) -> SiteMask:
    """One site's mask for a preset: naive, full, top-k (k pairs by |empirical correlation|),
    blocks by position (all pairs within each position), blocks by unit group (all pairs within
    each group of `group_size` consecutive units, at every position; 'feature_group' on SAE
    sites)."""
    if preset == "naive":
        return SiteMask(layout)
    if preset == "full":
        return SiteMask(layout, (MaskRule("full"),))
    if preset == "top-k":
        return SiteMask(layout, (MaskRule("topk", k=int(k)),))
    if preset == "blocks by position":
        return SiteMask(layout, (MaskRule("blocks", by="position", pairs=tuple(
            (g, g) for g in range(layout.n_positions))),))
    if preset == "blocks by unit group":
        rule = MaskRule("blocks", by="feature_group" if feature_groups else "unit_group",
                        group_size=int(group_size))
        n = layout.n_groups(rule)
        return SiteMask(layout, (MaskRule(rule.kind, by=rule.by, group_size=rule.group_size,
                                          pairs=tuple((g, g) for g in range(n))),))
    raise ValueError(f"unknown preset {preset!r}")


def apply_preset(prop: Propagator, sites: list[str], preset: str, k: int, group_size: int,
                 combine: bool) -> None:
    """Set (or with combine, add to) the mask of each site in `sites`."""
    mask = prop.mask
    for s in sites:
        site = prop.chain.site(s)
        lay = prop.chain.layouts[site.name]
        new = preset_site_mask(lay, preset, k, min(group_size, site.n_units),
                               feature_groups=site.kind == "sae")
        if combine and preset != "naive":
            cur = mask.get(site.name, lay)
            new = SiteMask(lay, cur.rules + new.rules, cur.on, cur.off)
        mask = mask.with_site(site.name, new)
    prop.set_mask(mask)


# ============================================================================ views
def view_indices(site, positions: list[int], units: list[int]) -> list[int]:
    """Flat indices of the chosen (position, unit) pairs of a site (position-major)."""
    pidx = [site.positions.index(p) for p in positions] if site.positions else [0]
    uidx = [site.units.index(u) for u in units]
    return [site.flat_index(p, u) for p in pidx for u in uidx]


def default_view_units(site, limit: int = 32) -> list[int]:
    per_pos = max(1, limit // site.n_positions)
    return list(site.units[:per_pos])


def submatrix(m: torch.Tensor, idx: list[int]) -> torch.Tensor:
    t = torch.as_tensor(idx, device=m.device)
    return m[t][:, t]


# ============================================================================ distances
COVARIANCE_METHOD_LABELS = {"ridge": "ridge (1% of mean variance)",
                            "ledoit-wolf": "Ledoit–Wolf (N < dim)"}


def distance_table(chain: Chain, res, names: list[str]) -> list[dict]:
    """The page's distance table, one row per site, with units in the headers: dimension,
    KL(real‖est) and KL(est‖real) in nats, the per-unit marginal KL (`kl_marginal`, nats per
    unit), W2 (in the site's activation units), mean and variance error (RMS over units,
    relative to the real RMS std / variance, or absolute where the real activations do not
    vary), the covariance method of the real side (ridge or Ledoit–Wolf) and the Ledoit–Wolf
    shrinkage intensity δ (0–1; None at ridge sites), whether PSD repair clipped eigenvalues.
    The numbers are `res.distances[name].to_dict()`'s (the CLI's `sites` entries)."""
    rows = []
    for n in names:
        r = res.distances[n].to_dict()
        rel = r.get("error_kind", "relative") == "relative"
        rows.append({"site": n, "dim (positions × units)": chain.site(n).dim,
                     "KL(real‖est) (nats)": r["kl_emp_est"],
                     "KL(est‖real) (nats)": r["kl_est_emp"],
                     "marginal KL (nats/unit)": r.get("kl_marginal"),
                     "W2 (activation units)": r["w2"],
                     "mean error (RMS, ×real std)": r["mean_error"] if rel else None,
                     "var error (RMS, ×real var)": r["var_error"] if rel else None,
                     "mean / var error (absolute)": None if rel else
                     f"{r['mean_error']:.3g} / {r['var_error']:.3g}",
                     "covariance method": COVARIANCE_METHOD_LABELS.get(
                         r.get("covariance_method", "ridge"), r.get("covariance_method")),
                     "shrinkage δ (0–1)": r.get("shrinkage"),
                     "repaired": res.sites[n].repaired})
    if all(row["mean / var error (absolute)"] is None for row in rows):
        for row in rows:
            del row["mean / var error (absolute)"]
    return rows


# ============================================================================ URL and files
def read_url(lm=None, sae=None, notes: list | None = None
             ) -> tuple[Settings | None, dict | None, float | None, list[str]]:
    """(settings, mask dict, bits per parameter, errors) from the URL; malformed parts are
    reported and left out. Numbers outside the page's ranges are clamped
    (`settings_from_untrusted`, for `lm` and `sae`), with one message each appended to
    `notes`."""
    errors = []
    settings = mask = bpp = None
    try:
        raw = state.get_blob_param(URL_SETTINGS)
        if raw is not None:
            settings, clamped = settings_from_untrusted(raw, lm, sae)
            if notes is not None:
                notes += [f"The link's activation settings: {n}." for n in clamped]
    except ValueError as e:
        errors.append(f"The link's activation settings could not be used: {e}")
    try:
        mask = state.get_blob_param(URL_MASK)
        if mask is not None:
            CovarianceMask.from_dict(mask)
    except ValueError as e:
        mask = None
        errors.append(f"The link's argument (mask) could not be used: {e}. Keeping the "
                      f"current argument.")
    raw_b = state.get_param(URL_BITS)
    if raw_b is not None:
        try:
            bpp = float(raw_b)
            if not math.isfinite(bpp) or bpp < 0:
                raise ValueError
        except ValueError:
            bpp = None
            errors.append(f"The link's bits per parameter {raw_b!r} is not a number ≥ 0.")
    return settings, mask, bpp, errors


def write_url(settings: Settings, default: Settings, mask: CovarianceMask,
              bpp: float | None) -> None:
    state.set_blob_param(URL_SETTINGS, None if settings == default else settings.to_dict())
    state.set_blob_param(URL_MASK, None if not mask.sites else mask.to_dict())
    state.set_param(URL_BITS, None if bpp is None else f"{bpp:g}")


def explanation(prop: Propagator, settings: Settings, bpp: float | None, res) -> bytes:
    mk = model_key()
    context = {"model": mk[0], "sae": mk[1], "data": _data_spec(),
               "settings": settings.to_dict(),
               "bits_per_parameter": bpp, "mask_hash": prop.mask.hash(),
               "surprise": res.surprise.to_dict(), **scale_context(prop.chain)}
    return state.explanation_bytes(EXPLANATION_KIND, prop.mask.to_dict(), context)


def scale_context(chain: Chain) -> dict:
    """What an explanation file records of the chain's scale: `units` (the chain's own record,
    {"resid": spec | None, "sae": spec | None}, read back by the CLI's `file_units`) when a
    subset was modelled, and `budget` (the time-budget plan, with the chosen K and N)."""
    out = {}
    u = chain.info.get("units")
    if u is not None:
        out["units"] = {"resid": u.get("resid"), "sae": u.get("sae")}
    if chain.info.get("budget") is not None:
        out["budget"] = dict(chain.info["budget"])
    return out


def _data_spec() -> str:
    from app import data_source
    return data_source.current_spec()


def read_explanation(data: bytes, lm=None, sae=None, notes: list | None = None
                     ) -> tuple[CovarianceMask, Settings | None, float | None]:
    """Parse an uploaded explanation file (StateError/ValueError on anything malformed). Its
    settings' numbers outside the page's ranges are clamped (`settings_from_untrusted`), one
    message each appended to `notes`; its `units` record is checked by the CLI's reader
    (`file_units`), so a file the page takes is one `propagate --mask FILE` takes."""
    from estimators.activation.cli import file_units

    payload, context = state.parse_explanation(data, EXPLANATION_KIND)
    mask = CovarianceMask.from_dict(payload)
    file_units(context)
    settings = None
    if context.get("settings"):
        settings, clamped = settings_from_untrusted(context["settings"], lm, sae)
        if notes is not None:
            notes += [f"The file's settings: {n}." for n in clamped]
    bpp = context.get("bits_per_parameter")
    if bpp is not None and (isinstance(bpp, bool) or not isinstance(bpp, (int, float))
                            or not math.isfinite(bpp) or bpp < 0):
        raise ValueError("the file's bits_per_parameter must be a number ≥ 0")
    return mask, settings, bpp


# ============================================================================ search
@dataclass
class SearchRecord:
    method: str
    path: list[dict] = field(default_factory=list)
    cancelled: bool = False
    finished: bool = False
    note: str = ""


def run_search(prop: Propagator, method: str, params: dict, progress, record: SearchRecord,
               should_stop=lambda: False):
    """Run greedy or gradient search under the model lock. `progress(frac, text)` is called on
    every evaluation; if the run is interrupted (Stop / navigation raise out of it) the best
    argument found so far is kept (the starting one if nothing better was found) and `record`
    keeps the path so far."""
    from estimators.progress import Eta, Progress, left_text

    best_so_far = [prop.mask]
    eta = Eta()  # time left: the search's average rate per evaluation so far

    def on_step(i, total, info):
        store.yield_model_lock()  # other sessions' edits wait one step, not the whole search
        best_so_far[0] = info.get("best_mask", best_so_far[0])
        info = {k: v for k, v in info.items() if k != "best_mask"}
        if method == "greedy":
            if "candidate" not in info:
                return
            text = (f"step {info['step']}: {info['candidate']} → total "
                    f"{info['total_bits']:,.1f} bits (best {info['best_total_bits']:,.1f})")
        else:
            record.path.append(dict(info))
            text = (f"step {i}/{total}: total {info['total_bits']:,.1f} bits, "
                    f"{info['n_gates_on']} gates on")
        left = eta.update(Progress(i, total, "evaluations"))
        progress(min(1.0, i / max(total, 1)), text + ("" if left is None or i >= total
                                                      else f" · {left_text(left)}"))

    done = False
    try:
        with compute_scope():
            if method == "greedy":
                out = greedy_search(prop, on_step=on_step, should_stop=should_stop, **params)
            else:
                out = gradient_search(prop, on_step=on_step, should_stop=should_stop, **params)
        done = True
        record.path = list(out.path)
        record.cancelled = out.cancelled
        record.finished = True
        record.note = f"Stopped: {out.stop_reason}." if out.stop_reason else ""
        if getattr(out, "mixture", None) is not None:
            record.note += (f" The best argument adds a mixture on {out.mixture.variable} at "
                            f"{out.mixture.site} (total {out.best_total_bits:,.1f} bits); this "
                            f"page holds covariance masks only, so the mask shown is the "
                            f"search's mask without it (`python -m estimators propagate ... "
                            f"--search greedy` reports it).")
        return out
    finally:
        if not done:
            prop.set_mask(best_so_far[0])
            record.cancelled = True
            record.note = "Stopped: the best argument found so far is kept."
