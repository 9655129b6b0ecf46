"""Print the conformance grid's result table (config option × dtype × engine) as Markdown.

    .venv/bin/python scripts/conformance_table.py > table.md

The grid is tests/conformance_grid.py (the models the conformance tests run over); every
registered engine's verdict is computed on every (option, dtype)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from estimators import conformance  # noqa: E402
from tests.conformance_grid import DTYPES, OPTIONS, grid_model, tl_runs  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    engines = conformance.engines()
    print("| config option | " + " | ".join(f"{e} ({d})" for e in engines for d in DTYPES) + " |")
    print("|---|" + "---|" * (len(engines) * len(DTYPES)))
    notes = {}
    for option in OPTIONS:
        cells = []
        for e in engines:
            for d in DTYPES:
                model = grid_model(option, d)
                v = conformance.verdict(model, e)
                if not tl_runs(model):
                    cells.append("— (TL cannot run it)")
                elif v.ok:
                    cells.append("✓")
                else:
                    key = len(notes) + 1
                    notes[key] = f"{e}, {option}, {d}: {v.reason}"
                    cells.append(f"refused [{key}]")
        print(f"| {option} | " + " | ".join(cells) + " |")
    for k, text in notes.items():
        print(f"\n[{k}] {text}")


if __name__ == "__main__":
    main()
