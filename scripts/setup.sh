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

python3 -m pip install --quiet --disable-pip-version-check -e ".[dev]"
