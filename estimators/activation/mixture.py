"""Mixture arguments: a site's distribution is a mixture of Gaussians, one component per value of
a discrete variable the researcher names, propagated component by component.

A single Gaussian over a site cannot represent discrete structure: on `parens` every sample of
a Gaussian residual stream reads as "unbalanced", so no covariance mask lowers S(Y|π) there.
The mixture argument says "the distribution at SITE depends on V":

    p(x_site) = Σ_v w_v · N(μ_v, Σ_v ⊙ M_site),   w_v = P(V = v)

with V one of
    label          the example's task label (zoo data with labels);
    token_at:K     the token at input position K (negative K counts from the end);
    sign:SITE:U    whether unit U (flat index) of site SITE is > 0 on the real input (the sign of
                   a feature, e.g. an SAE latent).

Components (`mixture_components`): the real inputs are grouped by their value of V; component v
has weight w_v = n_v / N, the mean μ_v of the real activations at SITE of its n_v inputs, and
the *pooled within-component covariance* shared by all components (tied covariances, as in
linear discriminant analysis):
    Σ_W = Σ_v Σ_{n: V(x_n)=v} (x_n − μ_v)(x_n − μ_v)ᵀ / (N − C),
masked by the argument's mask at SITE like a single Gaussian's. Pooling is what keeps the code
honest when a value is rare: a component fitted on its own members would have covariance 0 for
a value seen once, and its output would then be coded at the rounding precision, a saving of
about log2(σ/ε) bits per coordinate that no property of the model earned (memorising the data
point). With Σ_W (unbiased, N − C degrees of freedom) a variable unrelated to the output saves
little: about ½·log2(e) bits per component and coordinate (the residuals have N − C degrees of
freedom instead of N), plus a small log-det bias when N − C is small; the mixture states a mean
per component and coordinate at ½·log2 N bits, more than that once N > e. A variable that
predicts the output saves N/2·log2(det Σ / det Σ_W) bits. V must
leave N − C ≥ 1 (ValueError otherwise). The components are then propagated through the chain's
transitions from SITE on, exactly as the single Gaussian is (`propagate_components`: the same
transitions, the same masks downstream, all components stacked in one batched pass per
transition, `Step.run_batch`), to the output site.

Data code, S(Y|π): V is a function of the input, and the receiver of the code has the inputs,
so each observation is coded under its own component:
    S(Y|π) = Σ_n −log2 P_{V(x_n)}(y_n),
P_v the output probability of component v (`accounting.token_probabilities` for argmax outputs,
the Gaussian density quantised at ε for continuous ones). With one component this is the
single-Gaussian code, so the naive argument is the one-component mixture.

Argument code, S(π), by `estimators.surprise.argument_bits` (the code shared by every argument
kind, derivation there), with b = bits_per_parameter:
  * the covariance mask, as for a single Gaussian, except that each component carries its own
    tracked covariances: C·(tracked pairs)·b at the mask's sites from SITE on;
  * naming V: log2(3) bits for its kind, plus `subset_bits(n, 1)` for which of the n candidates
    (1 label; the n_ctx positions; the units of the sites);
  * the numbers the mixture states: C − 1 weights; when SITE is not the chain's input site,
    also each component's mean (d numbers per component) and the d pooled variances, since they
    are fitted from the real activations rather than given by the input distribution (at the
    input site the component moments are the input distribution's own conditional moments,
    free as the naive argument's input moments are).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from estimators.activation.accounting import DataCode, continuous_bits, token_probabilities
from estimators.activation.chain import Chain
from estimators.activation.gaussian import MaskedGaussian, Moments, mask_covariance
from estimators.surprise import SurpriseBreakdown, argument_bits, parameter_bits, subset_bits

VARIABLE_KINDS = ("label", "token_at", "sign")


@dataclass(frozen=True)
class MixtureArgument:
    """Condition the distribution at `site` on the discrete `variable` (module docstring)."""

    site: str
    variable: str

    def to_dict(self) -> dict:
        return {"site": self.site, "variable": self.variable}

    @classmethod
    def from_dict(cls, d) -> "MixtureArgument":
        if not isinstance(d, dict) or set(d) != {"site", "variable"} or not all(
                isinstance(d[k], str) for k in d):
            raise ValueError('a mixture argument is {"site": SITE, "variable": VARIABLE}')
        return cls(d["site"], d["variable"])


def parse_variable(variable: str) -> tuple[str, tuple]:
    """("label", ()) | ("token_at", (K,)) | ("sign", (SITE, U)); ValueError if malformed."""
    if variable == "label":
        return "label", ()
    kind, _, arg = variable.partition(":")
    if kind == "token_at":
        try:
            return kind, (int(arg),)
        except ValueError:
            pass
    if kind == "sign":
        site, _, unit = arg.rpartition(":")
        if site and unit.isdigit():
            return kind, (site, int(unit))
    raise ValueError(f"unknown mixture variable {variable!r}; use 'label', 'token_at:K' or "
                     f"'sign:SITE:UNIT'")


def variable_values(variable: str, chain: Chain, tokens: torch.Tensor | None = None,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
    """V(x_n) for the chain's N real inputs, as [N] int64. `tokens` [N, ctx] / `labels` [N]: the
    chain's real inputs and labels, in the chain's order (needed by token_at / label)."""
    kind, arg = parse_variable(variable)
    N = chain.n_inputs
    if kind == "label":
        if labels is None:
            raise ValueError("mixture variable 'label' needs data with labels")
        out = torch.as_tensor(labels).long()
    elif kind == "token_at":
        if tokens is None:
            raise ValueError("mixture variable 'token_at' needs the real input tokens")
        tokens = torch.as_tensor(tokens)
        k = arg[0]
        if not -tokens.shape[1] <= k < tokens.shape[1]:
            raise ValueError(f"token_at:{k} is outside the context 0..{tokens.shape[1] - 1}")
        out = tokens[:, k].long()
    else:
        site, unit = arg
        emp = chain.empirical[chain.site(site).name]
        if not 0 <= unit < emp.shape[1]:
            raise ValueError(f"sign:{site}:{unit}: the site has units 0..{emp.shape[1] - 1}")
        out = (emp[:, unit] > 0).long()
    if out.shape != (N,):
        raise ValueError(f"the variable has {tuple(out.shape)} values, the chain {N} inputs")
    return out.cpu()


def variable_candidates(variable: str, chain: Chain, n_ctx: int) -> int:
    """How many variables of this kind the researcher could have named (for `subset_bits`)."""
    kind, arg = parse_variable(variable)
    if kind == "label":
        return 1
    if kind == "token_at":
        return max(int(n_ctx), 1)
    return sum(s.dim for s in chain.sites)


@dataclass
class Component:
    value: int
    weight: float
    members: torch.Tensor  # [n_v] input indices
    output: MaskedGaussian


@dataclass
class MixtureResult:
    components: list[Component]
    surprise: SurpriseBreakdown
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"components": [{"value": c.value, "weight": c.weight,
                                "n_inputs": int(c.members.numel())} for c in self.components],
                "surprise": self.surprise.to_dict(), "info": self.info}


def propagate_components(prop, start: int, moments: list[Moments]) -> list[MaskedGaussian]:
    """The masked Gaussians at the chain's output site, one per entry of `moments` (each at site
    index `start`), running the chain's transitions (and `prop`'s masks) from there on, all
    entries stacked in one batched pass per transition (`Step.run_batch`)."""
    ch = prop.chain

    def mask_of(i):
        name = ch.sites[i].name
        return None if prop.site_mask(name).is_naive else prop.dense_mask(name)

    masked = [{start: mask_covariance(mom, mask_of(start))} for mom in moments]
    out_i = ch.index[ch.output.site]
    with torch.no_grad():
        for step in ch.steps:
            if step.parent not in masked[0]:
                continue
            outs = step.run_batch([m[step.parent] for m in masked])
            for m, mcs in zip(masked, outs):
                for c, mc in zip(step.children, mcs):
                    m[c] = mask_covariance(mc, mask_of(c))
    if out_i not in masked[0]:
        raise ValueError(f"the output site {ch.output.site} does not follow site "
                         f"{ch.sites[start].name}; put the mixture on an earlier site")
    return [m[out_i] for m in masked]


def propagate_component(prop, start: int, moments: Moments) -> MaskedGaussian:
    """`propagate_components` of one entry."""
    return propagate_components(prop, start, [moments])[0]


def mixture_components(prop, argument: MixtureArgument, values: torch.Tensor
                       ) -> list[Component]:
    """One propagated component per value of V: its inputs' mean and the pooled
    within-component covariance (module docstring). ValueError when V takes N distinct values
    (no degree of freedom left for Σ_W)."""
    ch = prop.chain
    start = ch.index[ch.site(argument.site).name]
    emp = ch.empirical[ch.sites[start].name]
    values = values.to(emp.device)
    vals = torch.unique(values).tolist()
    if len(vals) >= ch.n_inputs:
        raise ValueError(f"{argument.variable} takes a different value on each of the "
                         f"{ch.n_inputs} inputs: no spread is left to estimate")
    groups = [torch.nonzero(values == v).flatten() for v in vals]
    means = [emp[g].mean(0) for g in groups]
    resid = torch.cat([emp[g] - mu for g, mu in zip(groups, means)])
    pooled = resid.T @ resid / (ch.n_inputs - len(vals))
    pooled = 0.5 * (pooled + pooled.T)
    outs = propagate_components(prop, start, [Moments(mu, cov=pooled) for mu in means])
    return [Component(int(v), g.numel() / ch.n_inputs, g.cpu(), o)
            for v, g, o in zip(vals, groups, outs)]


def _component_bits(prop, comp: Component, code: DataCode) -> float:
    ch = prop.chain
    y = ch.output.observations[comp.members.to(ch.output.observations.device)]
    g = comp.output
    if ch.output.kind == "argmax":
        p = token_probabilities(g, code, prop._output_z(g))
        return float(-(torch.log2(p[y])).sum())
    with torch.no_grad():
        return float(continuous_bits(y, g, ch.output.epsilon, code))


def mixture_surprise(prop, argument: MixtureArgument, values: torch.Tensor,
                     n_ctx: int | None = None) -> MixtureResult:
    """S(π) and S(Y|π) in bits of the mixture argument on top of `prop`'s covariance mask
    (module docstring). `values`: [N] V(x_n) (`variable_values`). Raises ValueError for an
    unknown site or variable, or an output site that does not follow the mixture's site."""
    ch = prop.chain
    start = ch.index[ch.site(argument.site).name]
    comps = mixture_components(prop, argument, values)
    C = len(comps)
    bpp = prop.bits_per_parameter
    data = sum(_component_bits(prop, c, prop.data_code) for c in comps)
    kind, _ = parse_variable(argument.variable)
    n_cand = variable_candidates(argument.variable, ch, n_ctx or ch.sites[0].n_positions)
    parts: dict[str, float] = {}
    # the mask: the single-Gaussian price, plus each extra component's own tracked covariances
    per_site = prop.mask.description_bits(bpp, prop.tracked_pairs())
    tracked = prop.tracked_pairs()
    downstream = {s.name for s in ch.sites[start:]}
    for s, b in per_site.items():
        extra = parameter_bits((C - 1) * tracked.get(s, 0), bpp) if s in downstream else 0.0
        if b + extra > 0:
            parts[f"argument:{s}"] = b + extra
    fitted = 0 if start == 0 else ch.sites[start].dim * (C + 1)
    parts[f"argument:mixture on {argument.variable} at {ch.sites[start].name} ({C} components)"] \
        = math.log2(len(VARIABLE_KINDS)) + argument_bits(n_cand, 1, (C - 1) + fitted, bpp)
    parts[f"data:{ch.output.site} | {argument.variable}"] = data
    arg = sum(v for k, v in parts.items() if k.startswith("argument:"))
    notes = (f"mixture over {C} values of {argument.variable} at {ch.sites[start].name}; "
             f"S(π): shared code (estimators.surprise), {bpp:.3g} bits per parameter, "
             f"{C - 1} weights" + (f" + {fitted} fitted means and pooled variances"
                                   if fitted else "") +
             f"; S(Y|π): each of N={ch.n_inputs} observations coded under its own component")
    return MixtureResult(comps, SurpriseBreakdown(float(arg), float(data), parts, notes),
                         {"n_candidates": n_cand, "kind": kind, "components": C,
                          "subset_bits": subset_bits(n_cand, 1)})
