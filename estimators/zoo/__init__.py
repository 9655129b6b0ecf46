"""The model zoo: small transformers (and their SAEs) shipped with the workbench.

Nothing may be downloaded at run time, and the app must be useful the moment it starts, so the
project ships models it trained itself (safetensors + config JSON, a few hundred KB each) and
the code that re-creates them bit for bit: `python -m estimators zoo train NAME`.

    from estimators import zoo
    entry = zoo.get("induction")
    model = entry.load_model("cpu")
    batch = entry.sample(64, seed=0)
    entry.loss(model, batch)            # [64] nats
"""

from __future__ import annotations

from typing import Any

from estimators.zoo.base import ZooBatch, ZooEntry
from estimators.zoo.charlm import CharLM
from estimators.zoo.induction import Induction
from estimators.zoo.maxk import MaxK
from estimators.zoo.parens import Parens

DEFAULT_MODEL = "induction"

_ENTRIES: dict[str, ZooEntry] = {e.name: e for e in (Induction(), MaxK(), Parens(), CharLM())}

__all__ = ["DEFAULT_MODEL", "ZooBatch", "ZooEntry", "get", "names", "train"]


def names() -> list[str]:
    """Zoo model names, default first: induction, maxk, parens, charlm."""
    return list(_ENTRIES)


def get(name: str) -> ZooEntry:
    """The zoo entry called `name`; ValueError naming the choices otherwise."""
    try:
        return _ENTRIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown zoo model {name!r}; choose one of: {', '.join(names())}") \
            from None


def train(name: str, out_dir: str | None = None, quick: bool = False) -> dict[str, Any]:
    """Train model + SAE for `name` from its fixed seed and write weights and card.

    `out_dir=None` overwrites the shipped weights in `estimators/zoo/weights/<name>/`.
    `quick=True` runs a few steps only (to test reproducibility), never use it for shipping.
    """
    from estimators.zoo.training import train as _train

    return _train(get(name), out_dir=out_dir, quick=quick)
