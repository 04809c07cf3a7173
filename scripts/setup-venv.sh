#!/usr/bin/env bash
# Create or update the repo's virtual environment at .venv with the pinned torch stack.
# Usage: scripts/setup-venv.sh [EXTRAS]   e.g. "train,eval,test"; re-running with nothing changed does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-train,eval}"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "tamer needs Python >= 3.10 (found $("$python" --version 2>&1)); set PYTHON=/path/to/python3.x" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv

stamp=".venv/.tamer-installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16) $extras"
if [ -f "$stamp" ] && grep -qxF "$want" "$stamp"; then
  exit 0
fi
echo "installing tamer[$extras] into .venv (torch $(grep '^torch==' constraints.txt | cut -d= -f3), first time takes a few minutes)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[$extras]"
if [[ ",$extras," == *",test,"* ]]; then
  # The original CompVis code, used only as a test oracle: its pure-PyTorch modules, without its dependencies.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "taming-transformers-rom1504==0.0.6"
fi
echo "$want" >> "$stamp"
