"""Heuristic Estimation Workbench: the science, as a plain torch library.

This package never imports streamlit (a test enforces it); it is usable from a notebook and
from the CLI (`python -m estimators`).
"""

__version__ = "0.1.0"
