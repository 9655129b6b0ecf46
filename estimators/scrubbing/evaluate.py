"""Scoring path partitions: original, scrubbed and all-resampled loss, loss recovered, surprise.

    scrubber = Scrubber(model, ScrubData.from_zoo("induction", n=256, seed=0))
    [result] = scrubber.evaluate([PathPartition.from_json(open("hyp.json").read())])
    result.loss_recovered, result.surprise.total_bits

Definitions (background.md §4), with ℓ(x) the task loss of one example in nats (its scored
positions averaged: next-token loss, or the label's cross-entropy):
  * L_original: mean ℓ of the model on the reference inputs;
  * L_scrubbed: mean ℓ of the treeified model under the partition, scored on the reference's
    targets/labels;
  * L_random:   mean ℓ when every path is resampled, i.e. the model run on the shared random
    input ("rest" stream), scored on the reference's targets/labels;
  * loss recovered = (L_random − L_scrubbed) / (L_random − L_original); it can pass 1 (a
    partition can beat the model) or go below 0, so the losses are always reported too.
  * S(Y | π) = Σ_i (ℓ_scrubbed(x_i) − ℓ_original(x_i)) / ln 2 = N·(L_scrubbed − L_original)/ln 2
    bits: the extra code length of the observed targets when coded with the scrubbed model
    instead of the model itself (it can be negative when the scrubbed model predicts better);
  * S(π) = `PathPartition.description_bits` (see partition.py for the code) at
    `ScrubConfig.bits_per_parameter` bits per parameter (None: ½·log2 N for N reference
    examples, the MDL price), with n = the data's sequence length.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import numpy as np
import torch

from estimators import conformance
from estimators.device import resolve_device
from estimators.progress import report
from estimators.scrubbing.partition import IMPORTANT, REST, PathPartition
from estimators.scrubbing.paths import PathGraph
from estimators.scrubbing.sampling import draw_matched, draw_uniform, feature_values
from estimators.scrubbing.treeify import plan_versions, treeified_logits
from estimators.surprise import LN2, SurpriseBreakdown, mdl_bits_per_parameter
from estimators.zoo.base import ZooBatch, ZooEntry

LossFn = Callable[[torch.Tensor, ZooBatch], torch.Tensor]
_NEXT_TOKEN = ZooEntry()  # its per_position_loss is the masked next-token cross-entropy


def take(batch: ZooBatch, idx) -> ZooBatch:
    """Rows `idx` (a slice or an index tensor) of every field of a batch."""
    pick = (lambda t: None if t is None else t[idx])
    return ZooBatch(pick(batch.tokens), pick(batch.labels), pick(batch.targets),
                    pick(batch.loss_mask))


@dataclass
class ScrubData:
    """Examples plus the task loss that scores them (per example, nats)."""

    batch: ZooBatch
    loss_fn: LossFn
    source: str = ""

    def __len__(self) -> int:
        return len(self.batch)

    @classmethod
    def from_zoo(cls, name_or_entry, n: int, seed: int = 0) -> "ScrubData":
        from estimators import zoo

        entry = zoo.get(name_or_entry) if isinstance(name_or_entry, str) else name_or_entry
        if n < 2:
            raise ValueError("causal scrubbing needs at least 2 examples to resample from")
        return cls(entry.sample(int(n), seed=int(seed)), entry.per_position_loss,
                   f"zoo:{entry.name} n={n} seed={seed}")

    @classmethod
    def from_sequences(cls, sequences, d_vocab: int, n_ctx: int, source: str = "",
                       d_vocab_out: int | None = None) -> "ScrubData":
        """Token-id sequences of one length; loss = next-token loss at every position but the
        last. Ids must lie in 0..d_vocab−1; the next-token targets (every token but the first)
        also in 0..d_vocab_out−1 when the model's output vocabulary is smaller (`d_vocab_out`),
        else ValueError naming the first offending sequence and position."""
        if not isinstance(sequences, list) or len(sequences) < 2 or not all(
                isinstance(s, list) and s and all(isinstance(t, int) and not isinstance(t, bool)
                                                  for t in s) for s in sequences):
            raise ValueError("--data must be a JSON list of at least 2 token-id lists "
                             "(integers)")
        lengths = {len(s) for s in sequences}
        if len(lengths) != 1:
            raise ValueError(f"all sequences must have the same length (got lengths "
                             f"{sorted(lengths)[:5]})")
        length = lengths.pop()
        if length < 2 or length > n_ctx:
            raise ValueError(f"sequences must have 2..{n_ctx} tokens (the model's context), "
                             f"not {length}")
        tokens = torch.tensor(sequences, dtype=torch.long)
        if int(tokens.min()) < 0 or int(tokens.max()) >= d_vocab:
            raise ValueError(f"token ids must lie in 0..{d_vocab - 1}")
        if d_vocab_out is not None and 0 < d_vocab_out < d_vocab:
            bad = (tokens[:, 1:] >= d_vocab_out).nonzero()
            if len(bad):
                i, j = int(bad[0, 0]), int(bad[0, 1]) + 1
                raise ValueError(
                    f"next-token target {int(tokens[i, j])} (sequence {i}, position {j}) is "
                    f"outside the model's output vocabulary 0..{d_vocab_out - 1} (d_vocab_out "
                    f"= {d_vocab_out} < d_vocab = {d_vocab}); {len(bad)} target(s) do not fit")
        targets = torch.cat([tokens[:, 1:], torch.zeros_like(tokens[:, :1])], dim=1)
        mask = torch.ones_like(tokens, dtype=torch.bool)
        mask[:, -1] = False
        return cls(ZooBatch(tokens, None, targets, mask), _NEXT_TOKEN.per_position_loss, source)


@dataclass
class ScrubResult:
    """One partition's scores on one reference set."""

    partition: PathPartition
    loss_original: float
    loss_scrubbed: float
    loss_random: float
    surprise: SurpriseBreakdown
    per_example_original: torch.Tensor
    per_example_scrubbed: torch.Tensor
    per_example_random: torch.Tensor
    diagnostics: dict = field(default_factory=dict)

    @property
    def loss_recovered(self) -> float:
        return loss_recovered(self.loss_original, self.loss_scrubbed, self.loss_random)

    def to_estimate(self):
        """The common result type: value = scrubbed loss, with losses and recovery attached."""
        from estimators.estimate import Cost, Estimate

        d = self.diagnostics
        return Estimate(value=self.loss_scrubbed, cost=Cost(seconds=float(d.get("seconds", 0))),
                        diagnostics={"loss_original": self.loss_original,
                                     "loss_random": self.loss_random,
                                     "loss_recovered": self.loss_recovered, **d},
                        surprise=self.surprise)

    def to_dict(self, per_example: bool = False) -> dict:
        d = {"name": self.partition.name, "partition_hash": self.partition.hash,
             "loss_original": self.loss_original, "loss_scrubbed": self.loss_scrubbed,
             "loss_random": self.loss_random, "loss_recovered": self.loss_recovered,
             "surprise": self.surprise.to_dict(), "diagnostics": self.diagnostics,
             "partition": self.partition.to_dict()}
        if per_example:
            d["per_example"] = {"original": self.per_example_original.tolist(),
                                "scrubbed": self.per_example_scrubbed.tolist(),
                                "random": self.per_example_random.tolist()}
        return d


def stream_key(block_id: int, partition: PathPartition) -> str:
    """The common-random-numbers key of a group's stream ("" for the real input)."""
    if block_id == IMPORTANT:
        return ""
    if block_id == REST:
        return "rest"
    return f"block{block_id}|{partition.blocks[block_id - 1].resample}"


@dataclass
class ScrubConfig:
    """Settings of a Scrubber: the resampling seed, examples and partitions per treeified
    pass, and the device (None: the model's)."""

    seed: int = 0
    batch_size: int = 128
    max_partitions: int = 32
    device: str | None = None
    memory_budget_mib: int = 1024  # the data batch shrinks so one pass stays under this
    bits_per_parameter: float | None = None  # S(π) part 4 price; None: ½·log2 N

    def __post_init__(self):
        for name in ("seed", "batch_size", "max_partitions", "memory_budget_mib"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name} must be an integer, not {v!r}")
        if self.seed < 0:
            raise ValueError("seed must be ≥ 0")
        bpp = self.bits_per_parameter
        if bpp is not None and (isinstance(bpp, bool) or not isinstance(bpp, (int, float))
                                or not 0 <= bpp < float("inf")):
            raise ValueError(f"bits_per_parameter must be a number ≥ 0, not {bpp!r}")
        if self.batch_size < 1 or self.max_partitions < 1 or self.memory_budget_mib < 1:
            raise ValueError("batch_size, max_partitions and memory_budget_mib must be "
                             "positive")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ScrubConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown scrubbing settings {sorted(unknown)}")
        return cls(**d)


class Scrubber:
    """Evaluates batches of partitions of one model on one data pool.

    The pool is both where resampled inputs come from and (by default) the reference set.
    `batch_size` examples and `max_partitions` partitions go through one treeified pass.
    Settings come from `config` (a ScrubConfig), or as keyword arguments.

    Raises PathError for a model without per-head paths (or too many of them) and
    `conformance.EngineUnsupported` (a ValueError, one line) when the treeified pass fails the
    scrubbing conformance check on this model (`estimators.scrubbing.conformance`)."""

    def __init__(self, model, data: ScrubData, config: ScrubConfig | None = None, *,
                 graph: PathGraph | None = None, **settings):
        config = config or ScrubConfig(**{k: (str(v) if k == "device" and v is not None
                                              else v) for k, v in settings.items()})
        self.config = config
        self.model = model
        self.data = data
        self.seed = config.seed
        self.batch_size = config.batch_size
        self.max_partitions = config.max_partitions
        device = config.device
        self.device = resolve_device(device) if device is not None else torch.device(
            str(model.cfg.device))
        self.graph = graph or self._make_graph(model)
        conformance.require(model, self.ENGINE)  # no scrubbing number on a model it fails
        if len(data) < 2:
            raise ValueError("causal scrubbing needs at least 2 examples to resample from")
        if data.batch.tokens.shape[1] > model.cfg.n_ctx:
            raise ValueError(f"sequences of length {data.batch.tokens.shape[1]} exceed the "
                             f"model's context {model.cfg.n_ctx}")
        self._draw_cache: dict[tuple, tuple] = {}
        self._base_cache: dict[int, tuple] = {}
        self._assign_cache: dict[PathPartition, np.ndarray] = {}

    ENGINE = "scrubbing"  # the conformance check this evaluator requires

    @staticmethod
    def _make_graph(model):
        return PathGraph.from_model(model)

    def _assign_uncached(self, partition: PathPartition) -> np.ndarray:
        return partition.assign(self.graph)

    def check(self, partition: PathPartition) -> np.ndarray:
        """The partition's assignment if this engine can evaluate it, else PathError (one
        line). The edge engine adds its grouped-query check."""
        return self.assign(partition)

    def assign(self, partition: PathPartition) -> np.ndarray:
        """The partition's block id per path (cached: a search re-scores the same ones)."""
        hit = self._assign_cache.get(partition)
        if hit is None:
            hit = self._assign_cache[partition] = self._assign_uncached(partition)
            if len(self._assign_cache) > 4096:
                self._assign_cache.pop(next(iter(self._assign_cache)))
        return hit

    # ------------------------------------------------------------------ streams
    def stream_labels(self, partition: PathPartition, assignment: np.ndarray, reference,
                      keys: dict[str, int], draws: dict, diag: dict, fill: int | None = None,
                      skip: tuple[int, ...] = ()) -> np.ndarray:
        """One int label per path (per edge for the edge engine) of `partition`: the index in
        `keys` of the stream feeding it, registering (and drawing, into `draws`) each stream
        seen for the first time; fallbacks are noted in diag["fallbacks"]. Blocks in `skip` keep
        `fill` (their entries are left to the caller's meaning, e.g. "unnamed")."""
        lab = np.empty(len(assignment), dtype=np.int64) if fill is None else \
            np.full(len(assignment), fill, dtype=np.int64)
        for bid in np.unique(assignment):
            if int(bid) in skip:
                continue
            key = stream_key(int(bid), partition)
            if key not in keys:
                keys[key] = len(keys)
                draws[key], fb = self.draw(key, partition, int(bid), reference)
                if fb:
                    diag["fallbacks"][key] = fb
            lab[assignment == bid] = keys[key]
        return lab

    def draw(self, key: str, partition: PathPartition, block_id: int,
             reference: ScrubData) -> tuple[torch.Tensor, int]:
        """Pool indices [n_ref] of one stream, and its count of unmatched fallbacks."""
        cache_key = (key, id(reference))
        hit = self._draw_cache.get(cache_key)
        if hit is not None and hit[0] is reference:  # the object is held, so its id is unique
            return hit[1]
        n_ref, n_pool = len(reference), len(self.data)
        feature = None if block_id == REST else partition.blocks[block_id - 1].feature
        if feature is None:
            out = draw_uniform(n_ref, n_pool, self.seed, key), 0
        else:
            ref_v = feature_values(feature, reference.batch.tokens, reference.batch.labels)
            pool_v = feature_values(feature, self.data.batch.tokens, self.data.batch.labels)
            out = draw_matched(ref_v, pool_v, self.seed, key)
        self._draw_cache[cache_key] = (reference, out)
        return out

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _model_loss(self, tokens: torch.Tensor, ref: ZooBatch, loss_fn: LossFn) -> torch.Tensor:
        logits = self.model(tokens.to(self.device), return_type="logits")
        return loss_fn(logits, ref.to(self.device)).float().cpu()

    def has_baseline(self, reference: ScrubData | None = None) -> bool:
        """Whether `baseline_losses(reference)` costs no forward pass (held by this scrubber or
        in the shared store, which this call then reads)."""
        return self._stored_baseline(reference or self.data) is not None

    def baseline_key(self, reference: ScrubData) -> dict:
        """What the baseline losses depend on, the key of the shared disk store
        (`estimators.activation_cache.cached_tensors`): the model's fingerprint (config,
        weights, code version), the reference examples (tokens, labels, targets, loss mask),
        the pool's tokens (where the all-resampled input is drawn from), the loss, the seed,
        the examples per pass and the device type. Not the engine: both engines' baselines are
        the model's own forward pass on the same batches."""
        import hashlib

        h = hashlib.sha256()
        for t in (reference.batch.tokens, reference.batch.labels, reference.batch.targets,
                  reference.batch.loss_mask, self.data.batch.tokens):
            if t is None:
                h.update(b"none|")
                continue
            t = t.detach().to("cpu").contiguous()
            h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.numpy().tobytes())
        fn = reference.loss_fn
        owner = getattr(fn, "__self__", None)
        code = getattr(getattr(fn, "__func__", fn), "__code__", None)  # the loss's own code
        loss_code = hashlib.sha256(code.co_code if code is not None else b"").hexdigest()[:12]
        return {"model": conformance.model_fingerprint(self.model), "data": h.hexdigest()[:24],
                "loss": f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', fn)}"
                        f"|{type(owner).__name__}:{getattr(owner, 'name', '')}|{loss_code}",
                "source": reference.source, "seed": self.seed, "batch_size": self.batch_size,
                "device": self.device.type}

    def _stored_baseline(self, reference: ScrubData):
        """(original, random) from this scrubber's memory or the shared store, else None."""
        hit = self._base_cache.get(id(reference))
        if hit is not None and hit[0] is reference:
            return hit[1]
        from estimators import activation_cache

        got = activation_cache.lookup_tensors("scrub-baseline", self.baseline_key(reference))
        if got is None:
            return None
        out = got["original"], got["random"]
        self._base_cache[id(reference)] = (reference, out)
        return out

    def _keep_baseline(self, reference: ScrubData, out: tuple) -> None:
        from estimators import activation_cache

        self._base_cache[id(reference)] = (reference, out)
        activation_cache.store_tensors("scrub-baseline", self.baseline_key(reference),
                                       {"original": out[0], "random": out[1]})

    def baseline_losses(self, reference: ScrubData | None = None, *, progress=None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example (original, all-resampled) losses [n_ref] each, in nats, on the reference
        set: from this scrubber, else from the shared store (`baseline_key`: a second session
        or CLI run on the same model, data, seed and N reads them from disk), else computed
        (two forward passes per batch) and stored. `progress` (estimators.progress) is called
        after each batch (examples, stage "baseline"); what it raises propagates and nothing is
        stored."""
        reference = reference or self.data
        hit = self._stored_baseline(reference)
        if hit is not None:
            return hit
        rest, _ = self.draw("rest", PathPartition(), REST, reference)
        orig, rand = [], []
        for a in range(0, len(reference), self.batch_size):
            sl = slice(a, a + self.batch_size)
            ref = take(reference.batch, sl)
            orig.append(self._model_loss(ref.tokens, ref, reference.loss_fn))
            rand.append(self._model_loss(self.data.batch.tokens[rest[sl]], ref,
                                         reference.loss_fn))
            report(progress, min(a + self.batch_size, len(reference)), len(reference),
                   "examples", "baseline")
        out = torch.cat(orig), torch.cat(rand)
        self._keep_baseline(reference, out)
        return out

    @torch.no_grad()
    def scrubbed_losses(self, partitions: list[PathPartition],
                        reference: ScrubData | None = None,
                        should_stop: Callable[[], bool] | None = None, *, progress=None
                        ) -> tuple[torch.Tensor, dict]:
        """Per-example scrubbed losses [n_partitions, n_ref] and diagnostics. `progress` is
        called after each pass with (hypothesis-examples scored, n_partitions·n_ref)."""
        reference = reference or self.data
        assignments = [self.assign(p) for p in partitions]
        out = torch.empty(len(partitions), len(reference))
        diag = {"plan_width": [], "fallbacks": {}}
        for g0 in range(0, len(partitions), self.max_partitions):
            group = list(range(g0, min(g0 + self.max_partitions, len(partitions))))
            keys: dict[str, int] = {"": 0}
            draws = {}
            labels = [self.stream_labels(partitions[i], assignments[i], reference, keys, draws,
                                         diag) for i in group]
            plan = plan_versions(self.graph, labels)
            diag["plan_width"].append(plan.width)
            step = self.examples_per_pass(plan.width)
            diag.setdefault("examples_per_pass", []).append(step)
            for a in range(0, len(reference), step):
                if should_stop is not None and should_stop():
                    raise InterruptedError("stopped")
                sl = slice(a, a + step)
                ref = take(reference.batch, sl)
                streams = [ref.tokens] + [self.data.batch.tokens[draws[k][sl]]
                                          for k in list(keys)[1:]]
                stream_tokens = torch.stack(streams).to(self.device)
                logits = treeified_logits(self.model, self.graph, plan, stream_tokens)
                ref_dev = ref.to(self.device)
                losses = torch.stack([reference.loss_fn(logits[j], ref_dev) for j in
                                      range(len(group))]).float().cpu()
                out[g0:g0 + len(group), sl] = losses
                report(progress, g0 * len(reference) + len(group) * min(a + step, len(reference)),
                       len(partitions) * len(reference), "examples scored", "scrubbing")
        return out, diag

    def examples_per_pass(self, width: int) -> int:
        """Examples per treeified pass: batch_size, fewer when `width` node copies of one
        example (activations of ~8 d_model-wide tensors each, plus the logits) would pass
        the memory budget."""
        cfg = self.model.cfg
        ctx = self.data.batch.tokens.shape[1]
        per_example = (width * 8 * cfg.d_model + self.max_partitions * 2 * cfg.d_vocab_out) \
            * ctx * 4
        fits = (self.config.memory_budget_mib * 2**20) // max(per_example, 1)
        return int(max(1, min(self.batch_size, fits)))

    def evaluate(self, partitions: list[PathPartition], reference: ScrubData | None = None,
                 should_stop: Callable[[], bool] | None = None, *, progress=None
                 ) -> list[ScrubResult]:
        reference = reference or self.data
        t0 = time.perf_counter()
        orig, rand = self.baseline_losses(reference, progress=progress)
        scrubbed, diag = self.scrubbed_losses(partitions, reference, should_stop,
                                              progress=progress)
        seconds = time.perf_counter() - t0
        results = []
        for i, p in enumerate(partitions):
            results.append(self._result(p, orig, scrubbed[i], rand, dict(
                diag, seconds=seconds, n=len(reference), seed=self.seed,
                source=reference.source)))
        return results

    def surprise(self, partition: PathPartition, orig: torch.Tensor,
                 scrubbed: torch.Tensor) -> SurpriseBreakdown:
        bpp = self.config.bits_per_parameter
        bpp = mdl_bits_per_parameter(orig.numel()) if bpp is None else float(bpp)
        parts = {f"argument:{k}": v for k, v in self.description_parts(partition, bpp).items()}
        data_bits = float((scrubbed.double() - orig.double()).sum() / LN2)
        parts["data:excess loss"] = data_bits
        arg = sum(v for k, v in parts.items() if k.startswith("argument:"))
        unit = self.graph.UNIT
        return SurpriseBreakdown(
            argument_bits=float(arg), data_bits=data_bits, parts=parts,
            notes=f"S(π): two-part code over {self.graph.n_units} {unit}s, {bpp:.3g} bits per "
                  f"kept {unit}; S(Y|π) = "
                  f"N·(L_scrubbed − L_original)/ln 2 with N = {orig.numel()} examples")

    def description_parts(self, partition: PathPartition, bpp: float) -> dict[str, float]:
        """S(π)'s terms in bits (`PathPartition.description_parts` over the treeified paths)."""
        return partition.description_parts(self.graph, bpp, self.data.batch.tokens.shape[1])

    def _result(self, p, orig, scrubbed, rand, diag) -> ScrubResult:
        return ScrubResult(p, float(orig.mean()), float(scrubbed.mean()), float(rand.mean()),
                           self.surprise(p, orig, scrubbed), orig, scrubbed, rand, diag)


def loss_recovered(loss_original: float, loss_scrubbed: float, loss_random: float) -> float:
    """(L_random − L_scrubbed) / (L_random − L_original); NaN when the denominator is below
    1e-12; never −0.0 (a scrubbed loss equal to L_random is 0 recovered, also when
    L_random < L_original)."""
    denom = loss_random - loss_original
    return float("nan") if abs(denom) < 1e-12 else (loss_random - loss_scrubbed) / denom + 0.0
