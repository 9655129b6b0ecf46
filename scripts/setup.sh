#!/usr/bin/env bash
# Set up everything the workbench needs on a fresh machine, idempotently:
#   bash scripts/setup.sh          the app's dependencies in .venv
#   bash scripts/setup.sh --test   also the test dependencies and Debian's chromium (browser test)
# torch is pinned in requirements.txt so pip takes the CPU wheel, never a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
req=requirements.txt
[ $want_test = 1 ] && req=requirements-test.txt
stamp=".venv/.installed-$(sha1sum requirements.txt requirements-test.txt requirements-ray.txt | sha1sum | cut -c1-12)-$want_test"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req"
  touch "$stamp"
fi

if [ $want_test = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  # The end-to-end test drives Debian's chromium with Playwright (no browser download).
  SUDO=""
  [ "$(id -u)" != 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
echo "setup done: $(.venv/bin/python -c 'from importlib.metadata import version; print(" | ".join(f"{p} {version(p)}" for p in ("torch", "streamlit", "transformer_lens", "sae_lens")))')"
