"""No loading ↔ zoo import circle: the zoo and the checkpoint layer never import
estimators.loading (also inside functions), and the checkpoint layer imports no zoo."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def test_zoo_does_not_import_loading():
    for f in (ROOT / "estimators" / "zoo").glob("*.py"):
        assert not any(m.startswith("estimators.loading") for m in _imports(f)), f.name


def test_checkpoint_layer_imports_neither_zoo_nor_loading():
    mods = _imports(ROOT / "estimators" / "checkpoint.py")
    assert not any(m.startswith(("estimators.zoo", "estimators.loading")) for m in mods), mods
    assert "estimators.zoo" not in mods


def test_validation_layer_is_pure():
    mods = _imports(ROOT / "estimators" / "validation.py")
    assert not any(m.startswith(("streamlit", "estimators.", "app")) for m in mods), mods
