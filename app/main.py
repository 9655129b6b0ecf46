"""Entry point: `streamlit run app/main.py`.

The entry script lives in app/ (not beside pages/) so Streamlit's legacy page discovery stays
off and a deep link on a fresh server still runs this script first.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import store  # noqa: E402

st.set_page_config(page_title="Heuristic Estimation Workbench", page_icon="📐", layout="wide")

PAGES = [
    # (file in pages/, title, url path)
    ("model.py", "Model & SAE", "model"),
    ("circuits.py", "Arithmetic circuits", "circuits"),
    ("activation.py", "Activation model", "activation-model"),
    ("scrubbing.py", "Causal scrubbing", "causal-scrubbing"),
    ("tail_risk.py", "Tail risk", "tail-risk"),
]

pages = [st.Page(ROOT / "pages" / file, title=title, url_path=url, default=(i == 0))
         for i, (file, title, url) in enumerate(PAGES) if (ROOT / "pages" / file).exists()]
navigation = st.navigation(pages)
st.sidebar.title("Heuristic Estimation Workbench")
store.sidebar()
navigation.run()
