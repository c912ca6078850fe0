#!/usr/bin/env bash
# Drift check: the test suite against the newest versions setup.py's ranges allow, in a
# throw-away venv (no system site-packages, nothing of this machine's earlier installs) made
# from a copy of this checkout's files, committed or not. constraints.txt is not used; the
# versions it installed are written out in that form, so that when the suite passes they can
# become the new pins:  cp <the printed file> constraints.txt
#
#   bash scripts/check_latest.sh [--keep] [pytest arguments...]
#
# --keep leaves the venv and the copy in the temporary folder (it is removed otherwise; the
# written versions file stays). Exits with the suite's status.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

keep=""
if [ "${1:-}" = "--keep" ]; then keep=1; shift; fi

work="$(mktemp -d -t edgedb-latest.XXXXXX)"
src="$work/src"
venv="$work/venv"
cleanup() {
    if [ -z "$keep" ]; then rm -rf "$src" "$venv"; fi
}
trap cleanup EXIT

echo "check_latest: copying the checkout to $src" >&2
mkdir -p "$src"
# Tracked and untracked files that git does not ignore, as they are on disk now.
git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' path; do [ -e "$path" ] && printf '%s\0' "$path"; done \
    | tar --null -T - -cf - | tar -xf - -C "$src"

echo "check_latest: creating a venv without system site-packages in $venv" >&2
python3 -m venv "$venv"
unset PIP_CONSTRAINT VIRTUAL_ENV CONDA_PREFIX  # the newest, not setup.sh's pins
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)

# The newest CPU build of PyTorch: its CPU index where reachable, else the newest +cpu
# release this package index carries (plain `pip install torch` takes a 5 GB CUDA build).
if ! "${pip[@]}" --timeout 15 --retries 0 --index-url https://download.pytorch.org/whl/cpu torch 2>/dev/null; then
    cpu="$("$venv/bin/python" -m pip index versions torch 2>/dev/null \
        | sed -n 's/^Available versions: //p' | tr ',' '\n' | tr -d ' ' | grep '+cpu$' | head -1 || true)"
    if [ -n "$cpu" ]; then
        "${pip[@]}" "torch==$cpu"
    else
        echo "check_latest: no CPU build of torch found; taking what pip resolves" >&2
    fi
fi

# Keep that build through the eager upgrade below, which would otherwise swap it for the
# newest release of plain PyPI, a CUDA build.
torch_installed="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)"
if [ -n "$torch_installed" ]; then
    echo "torch==$torch_installed" > "$work/keep-torch.txt"
    export PIP_CONSTRAINT="$work/keep-torch.txt"
fi

echo "check_latest: installing edgedb[dev,train,openvino,zoo] with the newest versions its ranges allow" >&2
# The build requirements in the venv itself (no isolated build), so they are listed below too.
build_requires="$("$venv/bin/python" -c 'import re, tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' 2>/dev/null \
    || echo "setuptools>=64 wheel pybind11>=2.12 cmake>=3.18")"
# shellcheck disable=SC2086  # one requirement per word
"${pip[@]}" --upgrade $build_requires
(cd "$src" && "${pip[@]}" --upgrade --upgrade-strategy eager --no-build-isolation -e ".[dev,train,openvino,zoo]")

versions="$work/constraints-latest.txt"
{
    echo "# Written by scripts/check_latest.sh on $(date -u +%Y-%m-%dT%H:%MZ), $(python3 -c 'import platform; print(platform.python_version(), platform.machine())'), torch as its newest CPU build"
    "$venv/bin/python" -m pip freeze --exclude-editable --all | grep -v '^pip=='
} > "$versions"
echo "check_latest: versions installed (against constraints.txt):" >&2
diff <(grep -v '^#' constraints.txt | sed 's/#.*//; /^ *$/d' | tr 'A-Z_' 'a-z-' | sort) \
     <(grep -v '^#' "$versions" | tr 'A-Z_' 'a-z-' | sed 's/+cpu$//' | sort) >&2 || true

echo "check_latest: running the test suite" >&2
status=0
(cd "$src" && "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@") || status=$?
if [ "$status" -eq 0 ]; then
    echo "check_latest: passed with the newest versions; to pin them: cp $versions constraints.txt" >&2
else
    echo "check_latest: the suite FAILED (exit $status) with the newest versions in $versions" >&2
fi
exit "$status"
