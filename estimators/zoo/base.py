"""What every zoo model shares: the batch type, the entry interface, loss and evaluation.

A zoo entry is a small object that knows its task (a deterministic data generator), its
architecture (a `HookedTransformerConfig`), where its shipped weights live, and how to score a
model on the task. Training lives in `estimators.zoo.training`; this module stays light so the
app can list the zoo without importing transformer_lens until a model is actually loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover
    from sae_lens import SAE
    from transformer_lens import HookedTransformer, HookedTransformerConfig

WEIGHTS_ROOT = Path(__file__).resolve().parent / "weights"
CARD_FILE = "card.json"
SAE_DIR = "sae"

# Seeds: evaluation samples use small seeds (0, 1, ...); training batches use seeds from this
# offset upwards (one per step), so "fresh held-out samples" never share a seed with training.
TRAIN_SEED_OFFSET = 1_000_000_000
SAE_SEED_OFFSET = 2_000_000_000


@dataclass
class ZooBatch:
    """A batch of task examples.

    tokens:    [n, ctx] input token ids.
    labels:    [n] class label / answer token per example (classification-like tasks), else None.
    targets:   [n, ctx] the token that follows each position (next-token tasks), else None.
    loss_mask: [n, ctx] True where a position's prediction counts toward the task loss.
    """

    tokens: torch.Tensor
    labels: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    loss_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def to(self, device: str | torch.device) -> "ZooBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return ZooBatch(move(self.tokens), move(self.labels), move(self.targets),
                        move(self.loss_mask))


@dataclass(frozen=True)
class TrainSpec:
    """Hyper-parameters of the reproducible training run (full and `quick`)."""

    seed: int
    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    warmup_steps: int = 100
    quick_steps: int = 5
    # SAE
    sae_expansion: int = 4
    sae_steps: int = 3000
    sae_batch_size: int = 1024
    sae_lr: float = 3e-3
    sae_l1: float = 1.0
    sae_quick_steps: int = 5
    # evaluation recorded on the card
    eval_n: int = 10_000
    eval_seed: int = 12_345


def uniform(ids: list[int]) -> dict[int, float]:
    """A uniform categorical distribution over `ids`."""
    p = 1.0 / len(ids)
    return {int(i): p for i in ids}


def point(token: int) -> dict[int, float]:
    return {int(token): 1.0}


class ZooEntry:
    """One built-in model. Subclasses set the class attributes and implement the task."""

    name: str = ""
    title: str = ""
    description: str = ""
    sae_hook: str = ""
    # Where classification-like tasks read their answer ("-1": last position, "0": BOS/CLS).
    label_position: int | None = None
    metric: str = "accuracy"  # the headline held-out metric on the card
    train_spec: TrainSpec
    data_description: str = ""

    # ------------------------------------------------------------------ files
    @property
    def weights_dir(self) -> Path:
        return WEIGHTS_ROOT / self.name

    @property
    def sae_dir(self) -> Path:
        return self.weights_dir / SAE_DIR

    # ------------------------------------------------------------------ task (subclasses)
    def model_config(self) -> "HookedTransformerConfig":
        raise NotImplementedError

    def sample(self, n: int, seed: int = 0) -> ZooBatch:
        """n held-out examples, deterministic given `seed` (CPU tensors)."""
        raise NotImplementedError

    def train_batch(self, n: int, step: int) -> ZooBatch:
        """The training batch of `step`: by default fresh synthetic samples with a seed disjoint
        from the evaluation seeds. Text models override it to read the training split."""
        return self.sample(n, seed=TRAIN_SEED_OFFSET + self.train_spec.seed * 1_000_000 + step)

    def sae_batch(self, n: int, step: int) -> ZooBatch:
        """Inputs whose activations train the SAE (disjoint seeds from model training)."""
        return self.sample(n, seed=SAE_SEED_OFFSET + self.train_spec.seed * 1_000_000 + step)

    def sae_positions(self, batch: ZooBatch) -> torch.Tensor:
        """[n, ctx] bool: positions whose activations the SAE trains and is scored on."""
        return torch.ones(batch.tokens.shape, dtype=torch.bool)

    def token_labels(self) -> list[str]:
        raise NotImplementedError

    def input_distributions(self) -> dict[str, list[dict[int, float]]]:
        raise NotImplementedError

    def reference_hypotheses(self) -> list[dict[str, Any]]:
        """Stated mechanisms that come with the model (plain data; may be empty)."""
        return []

    def task_summary(self) -> str:
        """One line: what the input is and what is predicted where."""
        return self.data_description

    def sae_positions_description(self) -> str:
        return "all positions"

    def extra_training_info(self) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------------ text <-> ids
    def encode(self, text: str) -> torch.Tensor:
        """Space-separated token labels or ids -> ids (e.g. "BOS 3 17 3" or "( ( ) )")."""
        labels = self.token_labels()
        index = {lab: i for i, lab in enumerate(labels)}
        ids = []
        for part in text.split():
            if part in index:
                ids.append(index[part])
            elif part.lstrip("-").isdigit() and 0 <= int(part) < len(labels):
                ids.append(int(part))
            else:
                raise ValueError(f"{part!r} is not a token of {self.name} "
                                 f"(tokens: {' '.join(labels[:16])}{' ...' if len(labels) > 16 else ''})")
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids) -> str:
        labels = self.token_labels()
        return " ".join(labels[int(i)] for i in _as_list(ids))

    # ------------------------------------------------------------------ loading
    def load_model(self, device: str | torch.device = "cpu") -> "HookedTransformer":
        from estimators.checkpoint import LoadError, load_checkpoint

        if not (self.weights_dir / "model.safetensors").exists():
            raise LoadError(f"zoo model {self.name!r} has no weights in {self.weights_dir}; "
                            f"train them with `python -m estimators zoo train {self.name}`")
        return load_checkpoint(self.weights_dir, device)

    def load_sae(self, device: str | torch.device = "cpu") -> "SAE":
        from sae_lens import SAE

        from estimators.checkpoint import LoadError

        if not (self.sae_dir / "sae_weights.safetensors").exists():
            raise LoadError(f"zoo model {self.name!r} has no SAE in {self.sae_dir}; "
                            f"train it with `python -m estimators zoo train {self.name}`")
        sae = SAE.load_from_disk(str(self.sae_dir), device=str(device))
        sae.eval()
        return sae

    def card(self) -> dict[str, Any]:
        from estimators.checkpoint import read_json

        return read_json(self.weights_dir / CARD_FILE)

    def summary(self) -> dict[str, Any]:
        """Name, title and headline numbers, from the card when the weights are present."""
        out: dict[str, Any] = {"name": self.name, "title": self.title}
        try:
            card = self.card()
        except ValueError:
            card = {}
        ev = card.get("eval", {})
        out["metric"] = self.metric
        out["value"] = ev.get(self.metric)
        out["eval_examples"] = ev.get("n_examples")
        sae = card.get("sae", {})
        out["sae_hook"] = self.sae_hook
        out["sae_width"] = sae.get("d_sae")
        out["sae_explained_variance"] = sae.get("explained_variance")
        out["sae_l0"] = sae.get("l0")
        return out

    # ------------------------------------------------------------------ scoring
    def per_position_loss(self, logits: torch.Tensor, batch: ZooBatch) -> torch.Tensor:
        """[n] task loss in nats from logits [n, ctx, vocab_out]."""
        if batch.targets is not None:
            assert batch.loss_mask is not None
            lp = torch.log_softmax(logits.float(), dim=-1)
            nll = -lp.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
            mask = batch.loss_mask.to(nll.dtype)
            return (nll * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
        assert batch.labels is not None and self.label_position is not None
        answer = logits[:, self.label_position, :].float()
        return torch.nn.functional.cross_entropy(answer, batch.labels, reduction="none")

    def loss(self, model: "HookedTransformer", batch: ZooBatch) -> torch.Tensor:
        """Per-example task loss (nats): cross-entropy at the task positions, averaged."""
        batch = batch.to(model.cfg.device)
        logits = model(batch.tokens, return_type="logits")
        return self.per_position_loss(logits, batch)

    @torch.no_grad()
    def evaluate(self, model: "HookedTransformer", n: int = 4096, seed: int = 12_345,
                 batch_size: int = 1024) -> dict[str, Any]:
        """Held-out metrics on `n` fresh samples drawn with `seed`."""
        total_loss = 0.0
        correct = 0
        counted = 0
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            batch = self.sample(m, seed=seed * 1000 + start // batch_size).to(model.cfg.device)
            logits = model(batch.tokens, return_type="logits")
            if batch.targets is not None:
                lp = torch.log_softmax(logits.float(), dim=-1)
                nll = -lp.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
                mask = batch.loss_mask
                total_loss += float(nll[mask].sum())
                correct += int((logits.argmax(-1) == batch.targets)[mask].sum())
                counted += int(mask.sum())
            else:
                answer = logits[:, self.label_position, :].float()
                total_loss += float(torch.nn.functional.cross_entropy(
                    answer, batch.labels, reduction="sum"))
                correct += int((answer.argmax(-1) == batch.labels).sum())
                counted += m
        out = {"n_examples": n, "seed": seed, "n_predictions": counted,
               "loss_nats": total_loss / counted, "accuracy": correct / counted}
        return out


def _as_list(ids) -> list[int]:
    if isinstance(ids, torch.Tensor):
        return [int(i) for i in ids.flatten().tolist()]
    return [int(i) for i in ids]


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
