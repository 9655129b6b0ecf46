"""Joint cumulants of x = φ(z) on two or three units by a complete diagram sum (K = 4).

Used by `cumulants.py` at K = 4 for every slice of x's cumulants that links two or three
distinct units (κ₂_ab, κ₃_aab, κ₃_abc, κ₄_aaab, κ₄_aabb, κ₄_aabc), so that each slice keeps the
same term set instead of a per-slice hand-picked one.

Method (the multivariate Edgeworth expansion around independent Gaussians with each unit's own
mean and variance, background.md §2; the power counting is ARC's, "Estimating the expected
output of wide random MLPs more efficiently than sampling", 2026; our own implementation):

* the joint cumulant of powers ("power cumulant") κ(φ(z_u)^{p_u} : u ∈ units) is the sum over
  connected diagrams: multisets of joint-cumulant blocks of z (a block v ∈ ℕ^d is the cumulant
  with unit u repeated v_u times; single-unit blocks of order ≤ 2 are in the Gaussian base
  and excluded) covering every unit, each weighted Π_v κ_v / v! / (multiplicity!) times
  Π_u E_G[∂^{k_u} φ^{p_u}(z_u)], k_u the diagram's degree at u (`vertex_table`);
* a block v costs |v| − 1, less one if every entry is even; diagrams of total cost ≤ `budget`
  are kept (3 at K = 4); blocks of order ≤ 4 (the cumulants carried);
* moments E[Π x_u^{r_u}] are sums over set partitions of the units of products of power
  cumulants, and the joint cumulant of the legs is the Möbius sum over set partitions of the
  legs, Σ_π (−1)^{|π|−1}(|π|−1)! Π_B E[Π_{legs ∈ B} x] (exact identities).

FLOPs: one per entry per elementwise multiplication or addition (reported as elementwise).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from functools import lru_cache

import torch


def block_cost(v: tuple[int, ...]) -> int:
    """Power-counting cost of a joint-cumulant block (ARC's rule; module docstring)."""
    return sum(v) - 1 - int(all(x % 2 == 0 for x in v))


def _connected(blocks, d: int) -> bool:
    seen, frontier = {0}, [0]
    while frontier:
        u = frontier.pop()
        for v in blocks:
            if v[u]:
                for w in range(d):
                    if v[w] and w not in seen:
                        seen.add(w)
                        frontier.append(w)
    return len(seen) == d and all(any(v[u] for v in blocks) for u in range(d))


@lru_cache(maxsize=None)
def diagrams(d: int, budget: int, max_order: int = 4) -> tuple:
    """Connected diagrams on d units with total cost ≤ budget: tuples (blocks, weight, degrees)
    with weight = 1/(Π_v Π_u v_u! · Π multiplicity!) and degrees[u] = Σ_v v_u."""
    blocks = []
    for v in itertools.product(range(max_order + 1), repeat=d):
        support = sum(1 for x in v if x)
        if sum(v) < 2 or sum(v) > max_order or (support == 1 and sum(v) <= 2):
            continue
        if block_cost(v) <= budget:
            blocks.append(v)
    out = []

    def rec(start, chosen, cost):
        if chosen and _connected(chosen, d):
            weight = 1.0
            for v in chosen:
                for x in v:
                    weight /= math.factorial(x)
            for m in Counter(chosen).values():
                weight /= math.factorial(m)
            deg = tuple(sum(v[u] for v in chosen) for u in range(d))
            out.append((tuple(chosen), weight, deg))
        for i in range(start, len(blocks)):
            c = cost + block_cost(blocks[i])
            if c <= budget:
                rec(i, chosen + [blocks[i]], c)

    rec(0, [], 0)
    return tuple(out)


def _place(t: torch.Tensor, axes: tuple[int, ...], d: int) -> torch.Tensor:
    """t (one dimension per entry of `axes`, ascending) as a d-axis broadcastable tensor."""
    shape = [1] * d
    for ax, size in zip(axes, t.shape):
        shape[ax] = size
    return t.reshape(shape)


class SliceContext:
    """z's cumulant slices (off-diagonal covariance, κ₃_iij, κ₃_ijk, κ₄_iiii…) and the Gaussian
    vertex table V[p][k] of the units; computes x's joint cumulants on 2 or 3 units.
    Missing slices (None) drop the diagrams that need them."""

    def __init__(self, V, off, s=None, q=None, K3=None, Q=None, T31=None, T3=None, z211=None,
                 budget: int = 3):
        self.V, self.budget = V, budget
        self.mats = {(1, 1): off}
        if K3 is not None:
            self.mats[(2, 1)], self.mats[(1, 2)] = K3, K3.T
        if Q is not None:
            self.mats[(2, 2)] = Q
        if T31 is not None:
            self.mats[(3, 1)], self.mats[(1, 3)] = T31, T31.T
        self.single = {}
        if s is not None:
            self.single[3] = s
        if q is not None:
            self.single[4] = q
        self.cubes = {}
        if T3 is not None:
            self.cubes[(1, 1, 1)] = T3
        if z211 is not None:
            self.cubes[(2, 1, 1)] = z211
            self.cubes[(1, 2, 1)] = z211.permute(1, 0, 2)
            self.cubes[(1, 1, 2)] = z211.permute(1, 2, 0)
        self.n = off.shape[0]
        self.flops = 0.0
        self._pk = {}

    def _block(self, v, axes, d):
        supp = [i for i, x in enumerate(v) if x]
        key = tuple(v[i] for i in supp)
        gax = tuple(axes[i] for i in supp)
        if len(supp) == 1:
            t = self.single.get(key[0])
        elif len(supp) == 2:
            t = self.mats.get(key)
        else:
            t = self.cubes.get(key)
        return None if t is None else _place(t, gax, d)

    def power_cumulant(self, axes: tuple[int, ...], powers: tuple[int, ...], d: int):
        """κ(φ(z_u)^{p_u} : u ∈ axes) (distinct units on the given axes of a d-axis tensor)."""
        key = (axes, powers, d)
        if key not in self._pk:
            self._pk[key] = self._power_cumulant(axes, powers, d)
        return self._pk[key]

    def _power_cumulant(self, axes, powers, d):
        # one unit: the mean E[φ^p], the Gaussian value plus the marginal Edgeworth diagrams
        total = _place(self.V[powers[0]][0], axes, d) if len(axes) == 1 else 0.0
        size = self.n ** len(axes)
        for blocks, weight, deg in diagrams(len(axes), self.budget):
            term = weight
            for v in blocks:
                b = self._block(v, axes, d)
                if b is None:
                    term = None
                    break
                term = term * b
            if term is None:
                continue
            for u, ax in enumerate(axes):
                term = term * _place(self.V[powers[u]][deg[u]], (ax,), d)
            total = total + term
            self.flops += size * (len(blocks) + len(axes) + 1)
        return total

    def cumulant(self, legs: tuple[int, ...], d: int) -> torch.Tensor:
        """Joint cumulant of x on the given legs (axis of each leg; e.g. (0, 0, 1, 2) is
        κ(x_a, x_a, x_b, x_c)) as a d-axis tensor, valid where the units are distinct."""
        moments = {}

        def moment(r):
            if r not in moments:
                units = [u for u in range(d) if r[u]]
                total = 0.0
                for part in _set_partitions(units):
                    term = 1.0
                    for blk in part:
                        term = term * self.power_cumulant(tuple(blk), tuple(r[u] for u in blk), d)
                    total = total + term
                    self.flops += float(self.n ** len(units)) * len(part)
                moments[r] = total
            return moments[r]

        total = 0.0
        for part in _set_partitions(list(range(len(legs)))):
            k = len(part)
            term = (-1) ** (k - 1) * math.factorial(k - 1)
            for blk in part:
                r = [0] * d
                for leg in blk:
                    r[legs[leg]] += 1
                term = term * moment(tuple(r))
            total = total + term
            self.flops += float(self.n ** d) * (k + 1)
        return total


def _set_partitions(items: list):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _set_partitions(rest):
        for i in range(len(part)):
            yield part[:i] + [[first] + part[i]] + part[i + 1:]
        yield [[first]] + part
