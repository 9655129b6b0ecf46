"""The one result type every estimator returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from estimators.surprise import SurpriseBreakdown


@dataclass
class Cost:
    """What an estimate cost: model calls (a backward pass counted as stated by the estimator),
    FLOPs where counted, and wall-clock seconds."""

    calls: int = 0
    flops: float = 0.0
    seconds: float = 0.0


@dataclass
class Estimate:
    value: Any
    interval: tuple[float, float] | None = None
    cost: Cost = field(default_factory=Cost)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    surprise: SurpriseBreakdown | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.surprise is not None:
            d["surprise"] = self.surprise.to_dict()
        return d
