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
import warnings  # noqa: E402

# sae-lens needs transformer-lens < 4, so its deprecation notice is noise for our users.
warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")

from app import store  # noqa: E402
from app.pages_index import PAGES  # noqa: E402

st.set_page_config(page_title="Heuristic Estimation Workbench", page_icon="📐", layout="wide")


pages = [st.Page(ROOT / "pages" / file, title=title, url_path=url, default=(i == 0))
         for i, (file, title, url) in enumerate(PAGES) if (ROOT / "pages" / file).exists()]
navigation = st.navigation(pages)
st.sidebar.title("Heuristic Estimation Workbench")
store.sidebar()
navigation.run()
