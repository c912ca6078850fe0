#!/usr/bin/env bash
# All set-up on a fresh machine (Debian/Ubuntu, x86-64 or aarch64): the system library
# the C++ core links, then edgedb itself with its test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! dpkg -s libpolyclipping-dev >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    # Clipper 6.4.2 (the library pyclipper wraps) and a C++17 compiler.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libpolyclipping-dev g++ >/dev/null
fi

# PyTorch for fine-tuning (the train extra), as a CPU build: plain `pip install torch` takes
# a CUDA build with about 5 GB of NVIDIA libraries. PyTorch's CPU index first; where it is
# out of reach, the CPU build this package index carries. With a GPU, install a CUDA build
# of torch yourself before running this (it is kept).
if ! python3 -c "import torch" >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check --timeout 15 --retries 0 \
        --index-url https://download.pytorch.org/whl/cpu torch 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check "torch==2.13.0+cpu" 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi

python3 -m pip install --quiet --disable-pip-version-check -e ".[dev,train]"
