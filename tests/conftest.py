"""Shared test set-up: the repo root on sys.path, one torch thread (much faster for tiny models
on a 2-core machine), and transformer_lens/sae_lens imported once up front (≈10 s) so the first
AppTest run does not spend its timeout importing them."""

import atexit
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# one private disk cache for the whole run (activations, baselines, ground truths): the suite
# never reads a stale entry from an earlier run nor writes to the user's ~/.cache
os.environ["HEW_CACHE_DIR"] = tempfile.mkdtemp(prefix="hew-test-cache-")
atexit.register(shutil.rmtree, os.environ["HEW_CACHE_DIR"], True)

import torch  # noqa: E402

torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=DeprecationWarning, module="transformer_lens")
warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")

import sae_lens  # noqa: E402,F401
import transformer_lens  # noqa: E402,F401
