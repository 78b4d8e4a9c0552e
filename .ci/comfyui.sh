#!/usr/bin/env bash
# The ComfyUI tests: a virtual env that sees this Python's packages (CPU torch, diffusers, transformers, pytest,
# playwright) plus ComfyUI's own requirements, then the tests in tests/comfyui.
# ComfyUI and AnimateDiff-Evolved are not installable from the registries; their sources are found through
# IVMIXED_COMFYUI_SOURCES, by default <repo>/../shared/comfyui. The env is <repo>/.venv-comfyui (IVMIXED_COMFYUI_VENV);
# arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
export PIP_DISABLE_PIP_VERSION_CHECK=1
SOURCES="${IVMIXED_COMFYUI_SOURCES:-$ROOT/../shared/comfyui}"
REQUIREMENTS="$SOURCES/ComfyUI/requirements.txt"
if [ ! -f "$REQUIREMENTS" ]; then
  echo "ComfyUI sources not found at $SOURCES: set IVMIXED_COMFYUI_SOURCES" >&2
  exit 1
fi
VENV="${IVMIXED_COMFYUI_VENV:-$ROOT/.venv-comfyui}"
if [ ! -x "$VENV/bin/python" ]; then
  python -m venv --system-site-packages "$VENV"
fi
PY="$VENV/bin/python"
TORCH="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || echo 2.13.0)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# torch stays the one already installed (its CPU build); torchvision and torchaudio are left out: the registry's
# builds are CUDA ones that fail to load next to CPU torch, and the tests stand in for torchvision instead.
# spandrel (upscale models, unused here) requires torchvision, so it is installed without its dependencies.
grep -viE '^\s*(torch|torchvision|torchaudio|spandrel)\s*([<>=!~;#].*)?$' "$REQUIREMENTS" > "$WORK/requirements.txt"
echo "torch==$TORCH" > "$WORK/constraints.txt"
"$PY" -m pip install -q -c "$WORK/constraints.txt" -r "$WORK/requirements.txt" requests
"$PY" -m pip install -q --no-deps spandrel
if "$PY" -m pip show -q torchvision >/dev/null 2>&1; then  # left by an earlier install: it cannot load here
  "$PY" -m pip uninstall -q -y torchvision
fi
"$PY" -m pip install -q --no-deps --no-build-isolation -e "$ROOT"
"$PY" -m pytest -q tests/comfyui "$@"
