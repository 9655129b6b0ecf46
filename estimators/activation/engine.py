"""The propagation engine: Gaussians along a chain under a covariance-mask argument, cached so
that changing one site's mask recomputes only from that site on.

    prop = Propagator(chain, CovarianceMask.naive())
    res = prop.run()                      # everything, first time
    res = prop.toggle("blocks.0.hook_resid_post", 3, 17)   # only that site's mask and after
    res.sites[name].mean / .cov / .propagated_cov / .repaired;  res.distances[name].kl
    res.surprise (SurpriseBreakdown), res.output, res.cost, res.recomputed

A read-out site's mask changes only that site's own Gaussian (nothing downstream reads it).
`relaxed(gates)` is the same propagation with real-valued masks, uncached and differentiable,
for gradient search.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from estimators.activation.accounting import DataCode, data_bits
from estimators.activation.chain import Chain
from estimators.activation.gaussian import MaskedGaussian, Moments, SiteDistance, \
    ledoit_wolf, mask_covariance, psd_sqrt, site_distance, site_distance_shrunk
from estimators.activation.masks import CovarianceMask, SiteMask
from estimators.activation.sites import Site
from estimators.estimate import Cost
from estimators.progress import report
from estimators.surprise import SurpriseBreakdown, mdl_bits_per_parameter

# Rows (candidates × K samples) per batched pass of `Propagator.surprise_of_site_masks`. On the
# shared 2-core development CPU (one thread, induction at the page's defaults, K = 128,
# benchmarks/bench_greedy_batched.py, README "Benchmarks") a pass of K·ctx = 4,096 token
# positions is compute- and memory-bound: stacking saves only per-candidate bookkeeping, and
# passes of 1,024 rows or more run each row up to 1.4× slower (their activations leave the
# core's cache). Scoring greedy's 44 candidates took 0.21–0.35 CPU s one at a time and
# 0.25–0.31 s batched, depending on the machine's other load: no reliable gain on this CPU.
# 256 rows keeps each pass in cache. On an accelerator one pass of many rows costs about what
# one of K rows costs; 8192 is a guess, not measured here (no GPU was available).
BATCH_ROWS_CPU = 256
BATCH_ROWS_ACCELERATOR = 8192


@dataclass
class SiteEstimate:
    """The estimate at one site: propagated moments, and the Gaussian after the site's mask."""

    site: Site
    moments: Moments  # propagated, before the mask
    masked: MaskedGaussian  # after Σ⊙M and any PSD repair
    mask: torch.Tensor  # bool [d, d]

    @property
    def mean(self) -> torch.Tensor:
        return self.moments.mean

    @property
    def propagated_cov(self) -> torch.Tensor:
        """[d, d] before the mask (formed from the samples on first use)."""
        return self.moments.cov

    @property
    def samples(self) -> torch.Tensor | None:
        """[K, d] the samples of a moment-matched transition (None for closed forms)."""
        return self.moments.samples

    @property
    def cov(self) -> torch.Tensor:
        return self.masked.cov

    @property
    def repaired(self) -> bool:
        return self.masked.repaired

    @property
    def var(self) -> torch.Tensor:
        return torch.diagonal(self.masked.cov)

    def correlation(self) -> torch.Tensor:
        sd = self.var.clamp_min(0).sqrt()
        inv = torch.where(sd > 0, 1 / sd.clamp_min(1e-300), torch.zeros_like(sd))
        return self.cov * inv.unsqueeze(0) * inv.unsqueeze(1)


@dataclass
class PropagationResult:
    sites: dict[str, SiteEstimate]
    distances: dict[str, SiteDistance]
    surprise: SurpriseBreakdown
    output: dict
    cost: Cost
    repaired_sites: list[str]
    recomputed: list[str]  # sites whose Gaussian was recomputed by this call
    seconds: float  # wall time of this call
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready summary (no matrices): the CLI's output."""
        sites = []
        for name, est in self.sites.items():
            d = {"name": name, "kind": est.site.kind, "role": est.site.role, "dim": est.site.dim,
                 "repaired": est.repaired,
                 "tracked_pairs": int((est.mask.sum().item() - est.site.dim) // 2)}
            if est.repaired:
                d["min_eigenvalue_before_repair"] = est.masked.min_eigenvalue
            if name in self.distances:
                d.update(self.distances[name].to_dict())
            sites.append(d)
        return {"sites": sites, "surprise": self.surprise.to_dict(), "output": self.output,
                "cost": {"flops": self.cost.flops, "seconds": self.cost.seconds,
                         "calls": self.cost.calls},
                "repaired_sites": self.repaired_sites, "info": self.info}


class Propagator:
    """Cached propagation of a `Chain` under a `CovarianceMask` (module docstring).

    bits_per_parameter: S(π) price per tracked covariance; default ½·log2 N (N real inputs).
    distances: compute per-site distances in `run()` (they are cached per site too).
    """

    def __init__(self, chain: Chain, mask: CovarianceMask | None = None,
                 bits_per_parameter: float | None = None, data_code: DataCode | None = None,
                 distances: bool = True, distance_method: str = "auto"):
        self.chain = chain
        if distance_method not in ("auto", "ridge", "ledoit-wolf"):
            raise ValueError("distance_method must be auto, ridge or ledoit-wolf")
        self.distance_method = distance_method  # _shrunk_distance
        self.bits_per_parameter = (mdl_bits_per_parameter(chain.n_inputs)
                                   if bits_per_parameter is None else float(bits_per_parameter))
        if self.bits_per_parameter < 0:
            raise ValueError("bits_per_parameter must be ≥ 0")
        self.data_code = data_code or DataCode()
        self.want_distances = distances
        n = len(chain.sites)
        self._mask = CovarianceMask.naive()
        self._site_masks: list[SiteMask] = [SiteMask(chain.layouts[s.name]) for s in chain.sites]
        self._prop: list[Moments | None] = [None] * n
        self._prop[0] = Moments(chain.input_mean, cov=chain.input_cov)
        self._dense: list[torch.Tensor | None] = [None] * n
        self._masked: list[MaskedGaussian | None] = [None] * n
        self._dist: list[SiteDistance | None] = [None] * n
        self._emp_sqrt: list[torch.Tensor | None] = [None] * n
        self._step_flops = [0.0] * len(chain.steps)
        self._step_seconds = [0.0] * len(chain.steps)
        self._step_of_parent = {st.parent: j for j, st in enumerate(chain.steps)}
        self._stale_masks: set[int] = set(range(n))
        self._stale_from: int | None = 0
        self._out_z = None
        self.set_mask(mask or CovarianceMask.naive())

    # ------------------------------------------------------------------------ the argument
    @property
    def mask(self) -> CovarianceMask:
        return self._mask

    def site_mask(self, site: str) -> SiteMask:
        return self._site_masks[self.chain.index[self.chain.site(site).name]]

    def set_mask(self, mask: CovarianceMask) -> None:
        """Switch to `mask`; only sites whose own mask changed (and what follows) go stale."""
        mask.validate(self.chain.layouts)
        for i, s in enumerate(self.chain.sites):
            new = mask.get(s.name, self.chain.layouts[s.name])
            if new.to_dict() != self._site_masks[i].to_dict():
                self._site_masks[i] = new
                self._invalidate(i)
        self._mask = mask

    def set_site_mask(self, site: str, site_mask: SiteMask) -> None:
        self.set_mask(self._mask.with_site(self.chain.site(site).name, site_mask))

    def toggle(self, site: str, i: int, j: int) -> PropagationResult:
        """Flip pair (i, j) of `site`'s mask and re-propagate from that site on."""
        idx = self.chain.index[self.chain.site(site).name]
        d = self.chain.sites[idx].dim
        if not (0 <= i < d and 0 <= j < d):
            raise ValueError(f"entry ({i}, {j}) is outside site {site}'s {d}×{d} covariance")
        on = bool(self.dense_mask(site)[i, j])
        self.set_site_mask(site, self._site_masks[idx].toggled(i, j, on))
        return self.run()

    def dense_mask(self, site: str) -> torch.Tensor:
        i = self.chain.index[self.chain.site(site).name]
        if self._dense[i] is None or i in self._stale_masks:
            self._dense[i] = self._site_masks[i].dense(self._corr_if_needed(i),
                                                       device=self.chain.device)
        return self._dense[i]

    def _corr_if_needed(self, i: int):
        sm = self._site_masks[i]
        if any(r.kind == "topk" for r in sm.rules):
            return self.chain.correlation(self.chain.sites[i].name)
        return None

    def _invalidate(self, i: int) -> None:
        self._stale_masks.add(i)
        j = self._step_of_parent.get(i)
        if j is not None:
            self._stale_from = j if self._stale_from is None else min(self._stale_from, j)

    # ------------------------------------------------------------------------ propagation
    def _remask(self, i: int) -> None:
        s = self.chain.sites[i]
        self._dense[i] = self._site_masks[i].dense(self._corr_if_needed(i),
                                                   device=self.chain.device)
        m = None if self._site_masks[i].is_naive else self._dense[i]
        self._masked[i] = mask_covariance(self._prop[i], m)
        self._dist[i] = None
        self._stale_masks.discard(i)
        del s

    def run(self, *, progress=None) -> PropagationResult:
        """Propagate what is stale. progress: optional `estimators.progress` callback after each
        transition step ("steps", stage "propagation"); what it raises propagates, and the steps
        not yet run stay stale (a later run() redoes them)."""
        t0 = time.perf_counter()
        recomputed: list[str] = []
        with torch.no_grad():
            for i in sorted(self._stale_masks):
                if self._prop[i] is not None and not self._is_pending(i):
                    self._remask(i)
            if self._stale_from is not None:
                for j in range(self._stale_from, len(self.chain.steps)):
                    step = self.chain.steps[j]
                    if step.parent in self._stale_masks or self._masked[step.parent] is None:
                        self._remask(step.parent)
                    ts = time.perf_counter()
                    outs = step.run(self._masked[step.parent])
                    for c, mom in zip(step.children, outs):
                        self._prop[c] = mom
                        self._remask(c)
                        recomputed.append(self.chain.sites[c].name)
                    self._step_flops[j] = step.flops(self._masked[step.parent])
                    self._step_seconds[j] = time.perf_counter() - ts
                    if progress is not None:
                        report(progress, j + 1 - self._stale_from,
                               len(self.chain.steps) - self._stale_from, "steps", "propagation")
                self._stale_from = None
            for i in sorted(self._stale_masks):
                self._remask(i)
        prop_seconds = time.perf_counter() - t0
        return self._result(recomputed, prop_seconds, t0)

    def _is_pending(self, i: int) -> bool:
        """Site i will be recomputed by a stale step anyway."""
        if self._stale_from is None:
            return False
        return any(i in st.children for st in self.chain.steps[self._stale_from:])

    def estimate(self, site: str) -> SiteEstimate:
        i = self.chain.index[self.chain.site(site).name]
        if self._masked[i] is None or i in self._stale_masks or self._stale_from is not None:
            self.run()
        return SiteEstimate(self.chain.sites[i], self._prop[i], self._masked[i], self._dense[i])

    def distance(self, site: str) -> SiteDistance:
        i = self.chain.index[self.chain.site(site).name]
        est = self.estimate(site)
        if self._dist[i] is None:
            name = self.chain.sites[i].name
            emp = self.chain.empirical[name]
            if self._shrunk_distance(emp):
                lw = getattr(self, "_lw", None)
                if lw is None:
                    lw = self._lw = {}
                if i not in lw:  # the real side is fixed: once per site
                    m_lw, c_lw, delta = ledoit_wolf(emp)
                    lw[i] = ((m_lw, c_lw, delta), psd_sqrt(c_lw))
                self._dist[i] = site_distance_shrunk(est.mean, est.cov, emp, *lw[i])
                return self._dist[i]
            mu_e, cov_e = self.chain.empirical_stats(name)
            if self._emp_sqrt[i] is None:
                self._emp_sqrt[i] = psd_sqrt(cov_e.double())
            self._dist[i] = site_distance(est.mean, est.cov, mu_e, cov_e, self._emp_sqrt[i])
        return self._dist[i]

    def _shrunk_distance(self, emp: torch.Tensor) -> bool:
        """Ledoit–Wolf distances (`gaussian.site_distance_shrunk`) for `distance_method`
        "ledoit-wolf", or "auto" when N < d (the ridge would dominate); else the ridge."""
        method = getattr(self, "distance_method", "auto")
        if method == "ledoit-wolf":
            return True
        return method == "auto" and emp.shape[0] < emp.shape[1]

    def empirical(self, site: str) -> torch.Tensor:
        """Real activations [N, d] at a site."""
        return self.chain.empirical[self.chain.site(site).name]

    # ------------------------------------------------------------------------ accounting
    def tracked_pairs(self) -> dict[str, int]:
        out = {}
        for s in self._mask.sites:
            m = self.dense_mask(s)
            out[s] = int((m.sum().item() - m.shape[0]) // 2)
        return out

    def surprise(self) -> SurpriseBreakdown:
        out_name = self.chain.output.site
        return self._breakdown(self._mask, self.tracked_pairs(), self.estimate(out_name).masked)

    def _breakdown(self, mask: CovarianceMask, tracked: dict[str, int],
                   g: MaskedGaussian) -> SurpriseBreakdown:
        """S(π) of `mask` (tracked pairs per site given) and S(Y|π) under the output site's
        masked Gaussian g."""
        per_site = mask.description_bits(self.bits_per_parameter, tracked)
        out_name = self.chain.output.site
        with torch.no_grad():
            dbits = float(data_bits(self.chain.output, g, self.data_code, self._output_z(g)))
        parts = {f"argument:{s}": b for s, b in per_site.items() if b > 0}
        parts[f"data:{out_name}"] = dbits
        notes = (f"S(π): masks.py code, {self.bits_per_parameter:.3g} bits per tracked "
                 f"covariance; S(Y|π): " + (
                     f"model's argmax tokens on N={self.chain.n_inputs} inputs, P(t) by "
                     f"M={self.data_code.mc_samples} fixed-seed samples of softmax(ℓ/"
                     f"{self.data_code.temperature}), floor {self.data_code.floor}"
                     if self.chain.output.kind == "argmax" else
                     f"real values coded jointly, −log2(pdf·ε^d) with ε²/12 added to the "
                     f"variances (rounding), ε={self.chain.output.epsilon:g}, "
                     f"N={self.chain.n_inputs}"))
        return SurpriseBreakdown(sum(per_site.values()), dbits, parts, notes)

    # ------------------------------------------------------------------------ batched scoring
    def default_batch_size(self) -> int:
        """Candidates per batched pass: max(2, BATCH_ROWS / K) for K samples per transition
        (BATCH_ROWS_CPU on a CPU, BATCH_ROWS_ACCELERATOR elsewhere)."""
        rows = BATCH_ROWS_CPU if self.chain.device.type == "cpu" else BATCH_ROWS_ACCELERATOR
        k = int(self.chain.info.get("samples") or 1)
        return max(2, rows // k)

    def surprise_of_site_masks(self, site: str, site_masks: list[SiteMask],
                               batch_size: int | None = None) -> list[SurpriseBreakdown]:
        """S(π) + S(Y|π) of the current argument with `site`'s mask replaced by each of
        `site_masks` (C candidates), without changing the propagator's argument.

        Batched: the candidates share everything upstream of `site` (the cache) and are
        propagated together from `site` on, `batch_size` candidates per pass: at every
        transition their parents' samples are stacked on the sample axis and run through the
        model once (`Step.run_batch`: C·K rows; None: `default_batch_size()`). Each result
        equals what `set_site_mask(site, m)`, `run()`, `surprise()` give one at a time (same
        common random numbers, same real inputs completing the samples;
        tests/verdicts/test_batched_search.py). Raises ValueError for an unknown site, a mask
        of the wrong layout or batch_size < 1."""
        batch_size = self.default_batch_size() if batch_size is None else int(batch_size)
        if batch_size < 1:
            raise ValueError("batch_size must be ≥ 1")
        name = self.chain.site(site).name
        for sm in site_masks:
            if sm.layout != self.chain.layouts[name]:
                raise ValueError(f"a candidate mask for {name} has layout {sm.layout}, the "
                                 f"site's is {self.chain.layouts[name]}")
        self.run()
        out: list[SurpriseBreakdown] = []
        for start in range(0, len(site_masks), batch_size):
            out += self._score_batch(self.chain.index[name], site_masks[start:start + batch_size])
        return out

    def _site_mask_tensor(self, i: int) -> torch.Tensor | None:
        return None if self._site_masks[i].is_naive else self.dense_mask(self.chain.sites[i].name)

    def _score_batch(self, i: int, site_masks: list[SiteMask]) -> list[SurpriseBreakdown]:
        ch = self.chain
        name = ch.sites[i].name
        corr = ch.correlation(name)
        dense = [sm.dense(corr if any(r.kind == "topk" for r in sm.rules) else None,
                          device=ch.device) for sm in site_masks]
        with torch.no_grad():
            masked = [{i: mask_covariance(self._prop[i], None if sm.is_naive else d)}
                      for sm, d in zip(site_masks, dense)]
            j0 = self._step_of_parent.get(i)
            for step in ([] if j0 is None else ch.steps[j0:]):
                parents = [m.get(step.parent, self._masked[step.parent]) for m in masked]
                for m, moments in zip(masked, step.run_batch(parents)):
                    for c, mom in zip(step.children, moments):
                        m[c] = mask_covariance(mom, self._site_mask_tensor(c))
        out_i = ch.index[ch.output.site]
        tracked = self.tracked_pairs()
        out = []
        for sm, d, m in zip(site_masks, dense, masked):
            t = dict(tracked)
            t[name] = int((d.sum().item() - d.shape[0]) // 2)
            out.append(self._breakdown(self._mask.with_site(name, sm), t,
                                       m.get(out_i, self._masked[out_i])))
        return out

    def _output_z(self, g: MaskedGaussian):
        if self.chain.output.kind != "argmax":
            return None
        return self._argmax_z(g)

    def _argmax_z(self, g: MaskedGaussian):
        """The fixed standard-normal draws [M, d] of the argmax probabilities."""
        if self._out_z is None or self._out_z.shape[1] != g.dim:
            gen = torch.Generator(device="cpu").manual_seed(self.data_code.seed)
            self._out_z = torch.randn(self.data_code.mc_samples, g.dim, generator=gen,
                                      dtype=g.mean.dtype).to(g.mean.device)
        return self._out_z

    def _result(self, recomputed, prop_seconds, t0) -> PropagationResult:
        sites = {s.name: self.estimate(s.name) for s in self.chain.sites}
        dists = {s.name: self.distance(s.name) for s in self.chain.sites} \
            if self.want_distances else {}
        surprise = self.surprise()
        out_name = self.chain.output.site
        emp_mean, _ = self.chain.empirical_stats(out_name)
        output = {"site": out_name, "estimate_mean": sites[out_name].mean.tolist(),
                  "empirical_mean": emp_mean.tolist()}
        if sites[out_name].site.kind == "logits":  # shown whatever the data code
            g = sites[out_name].masked
            with torch.no_grad():
                from estimators.activation.accounting import token_probabilities
                p = token_probabilities(g, self.data_code, self._argmax_z(g))
            obs = (self.chain.output.observations if self.chain.output.kind == "argmax"
                   else self.chain.empirical[out_name].argmax(-1))
            counts = torch.bincount(obs, minlength=g.dim).to(p.dtype)
            output["estimate_argmax_probs"] = p.tolist()
            output["empirical_argmax_freq"] = (counts / counts.sum()).tolist()
        repaired = [n for n, e in sites.items() if e.repaired]
        flops = sum(self._step_flops) + sum(float(m.flops) for m in self._masked)
        cost = Cost(calls=sum(1 for st in self.chain.steps if st.sampled),
                    flops=flops, seconds=sum(self._step_seconds))
        info = {"propagation_seconds": prop_seconds, "bits_per_parameter":
                self.bits_per_parameter, "mask_hash": self._mask.hash(),
                "data_code": self.data_code.to_dict(), **self.chain.info}
        return PropagationResult(sites, dists, surprise, output, cost, repaired, recomputed,
                                 time.perf_counter() - t0, info)

    # ------------------------------------------------------------------------ relaxed
    def relaxed(self, gates: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """Differentiable S(Y|π) with real-valued masks: gates[site] is a [d, d] tensor in [0, 1]
        (symmetric; diagonal ignored) replacing that site's mask; other sites keep theirs.
        Uncached; returns (data bits tensor, {site: MaskedGaussian})."""
        ch = self.chain
        masked: dict[int, MaskedGaussian] = {}
        prop: dict[int, Moments] = {0: Moments(ch.input_mean, cov=ch.input_cov)}

        def mk(i):
            name = ch.sites[i].name
            if name in gates:
                m = gates[name]
            else:
                m = None if self._site_masks[i].is_naive else self.dense_mask(name)
            masked[i] = mask_covariance(prop[i], m)

        mk(0)
        for step in ch.steps:
            if step.parent not in masked:
                mk(step.parent)
            outs = step.run(masked[step.parent])
            for c, mc in zip(step.children, outs):
                prop[c] = mc
        out_i = ch.index[ch.output.site]
        mk(out_i)
        g = masked[out_i]
        bits = data_bits(ch.output, g, self.data_code, self._output_z(g))
        return bits, {ch.sites[i].name: v for i, v in masked.items()}
