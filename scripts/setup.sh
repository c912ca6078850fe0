#!/usr/bin/env bash
# All set-up on a fresh machine (Debian/Ubuntu, x86-64 or aarch64): the system packages the
# C++ core and the project venv need, then edgedb with its test tools, at the versions pinned
# in constraints.txt (what CI was green with; scripts/check_latest.sh tries the newest the
# ranges of setup.py allow). Safe to run again: it moves what differs to the pins.
#
# Where edgedb goes: into the active venv or conda env (VIRTUAL_ENV / CONDA_PREFIX set), else
# into this checkout's .venv, made with --system-site-packages so that what the system Python
# already has is reused (a stock Debian 12 / Ubuntu 24.04 Python refuses pip installs
# outside a venv: PEP 668). scripts/python runs the interpreter chosen here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

in_env=""
if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then in_env=1; fi

# Clipper 6.4.2 (the library pyclipper wraps), a C++17 compiler, the Python headers the
# extension compiles against and, for the project venv, the venv module (Debian ships it apart).
packages=()
dpkg -s libpolyclipping-dev >/dev/null 2>&1 || packages+=(libpolyclipping-dev)
command -v g++ >/dev/null 2>&1 || packages+=(g++)
python3 -c "import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
    || packages+=(python3-dev)
if [ -z "$in_env" ] && [ ! -x .venv/bin/python ] && ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
    packages+=(python3-venv)
fi
if [ ${#packages[@]} -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    echo "setup: apt-get install ${packages[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
fi

if [ -z "$in_env" ] && [ ! -x .venv/bin/python ]; then
    echo "setup: creating the project venv .venv (python3 -m venv --system-site-packages)" >&2
    python3 -m venv --system-site-packages .venv
fi
python=(scripts/python)
# PIP_CONSTRAINT rather than -c: it reaches pip's isolated build environment too, so the
# build requirements (setuptools, pybind11, cmake) are pinned as well. It stands in for a
# constraint set in a pip configuration file.
export PIP_CONSTRAINT="$PWD/constraints.txt"
pip=("${python[@]}" -m pip install --quiet --disable-pip-version-check)

# PyTorch for fine-tuning (the train extra), as a CPU build: plain `pip install torch` takes
# a CUDA build with about 5 GB of NVIDIA libraries. PyTorch's CPU index first; where it is
# out of reach, the CPU build this package index carries. A torch of the pinned version is
# kept, so with a GPU install that version's CUDA build yourself before running this.
torch_pin="$(sed -n 's/^torch==\([^ #]*\).*/\1/p' constraints.txt)"
if ! "${python[@]}" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$torch_pin')" >/dev/null 2>&1; then
    "${pip[@]}" --timeout 15 --retries 0 --index-url https://download.pytorch.org/whl/cpu "torch==$torch_pin" 2>/dev/null \
    || "${pip[@]}" "torch==$torch_pin+cpu" 2>/dev/null \
    || "${pip[@]}" "torch==$torch_pin"
fi

# openvino: the OpenVINO backend's tests run; zoo: the newer zoo models (PP-OCRv5/v6 det).
"${pip[@]}" -e ".[dev,train,openvino,zoo,serve]"

# A real Triton server for edgedb serve and its tests: the tritonserver binary (Python
# backend only) inside the nvidia-pytriton wheel, unpacked beside the env, not installed
# into it (PyTriton pins numpy<2). NVIDIA's containers and JetPack have their own on PATH.
triton_pin="$(sed -n 's/^nvidia-pytriton==\([^ #]*\).*/\1/p' constraints.txt)"
triton_home="$("${python[@]}" -c 'import sys; print(sys.prefix)')/opt/nvidia-pytriton"
if [ "$(uname -m)" = "x86_64" ] || [ "$(uname -m)" = "aarch64" ]; then
    if [ ! -f "$triton_home/nvidia_pytriton-$triton_pin.dist-info/RECORD" ]; then
        rm -rf "$triton_home"
        PIP_CONSTRAINT="" "${python[@]}" -m pip install --quiet --disable-pip-version-check --no-deps \
            --target "$triton_home" "nvidia-pytriton==$triton_pin" \
            || echo "setup: no tritonserver for this platform (nvidia-pytriton); the serving tests will skip" >&2
    fi
fi
echo "setup: edgedb is installed for $("${python[@]}" -c 'import sys; print(sys.executable)'), at the versions of constraints.txt; run it as scripts/python -m edgedb" >&2
