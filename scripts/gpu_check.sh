#!/usr/bin/env bash
# One run on a machine with an NVIDIA GPU (desktop or Jetson): installs the tensorrt extra,
# runs the GPU tests, builds engines and benchmarks them against ONNX Runtime FP32, and
# writes everything to a Markdown report to send back. See --help.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/gpu_check.sh [--no-install] [--calib DIR] [--input-size HxW] [--report FILE]
       scripts/gpu_check.sh --cuda-tier [--report FILE]

Checks edgedb on this machine's NVIDIA GPU and writes a Markdown report (System, Tests,
Build, Bench):
  1. the system: GPU, driver, CUDA; on a Jetson the L4T/JetPack release and power mode;
  2. installs edgedb with its TensorRT extra: python3 -m pip install -e ".[tensorrt]";
  3. python3 -m pytest -q -m gpu tests/test_gpu.py;
  4. python3 -m edgedb build: an FP16 engine (and INT8 with --calib) into engines/;
  5. python3 -m edgedb bench: ONNX Runtime FP32 on the CPU against the engine(s).

With --cuda-tier (a GPU with pycuda but no TensorRT): only the system and the CUDA tier,
python3 -m pytest -m cuda tests/test_cuda_tier.py: edgedb's TensorRT backend on real
device memory with a stand-in engine; installs nothing, fails if the tier was skipped.

Options:
  --cuda-tier       run the CUDA tier only (needs pycuda and a GPU, not TensorRT)
  --no-install      do not pip install; use the Python environment as it is
  --calib DIR       calibration images (a folder or a list file): also build and bench INT8 and best
  --input-size HxW  static engine input, frames letterboxed into it (default 736x736)
  --report FILE     the report (default gpu-report.md)
  -h, --help        this help

Python is python3 on PATH (an active venv's); set PYTHON to use another interpreter.
On a Jetson, TensorRT comes with JetPack, so a venv must be made with
--system-site-packages to see it. Building edgedb's C++ core needs
sudo apt-get install libpolyclipping-dev g++ (scripts/setup.sh does it too).
EOF
}

die() { echo "gpu_check: $*" >&2; exit 1; }
absolute() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

install=1
cuda_tier=0
calib=""
input_size="736x736"
report="gpu-report.md"
while (($#)); do
    case $1 in
        --no-install) install=0 ;;
        --cuda-tier) cuda_tier=1; install=0 ;;
        --calib) (($# >= 2)) || die "--calib needs a folder"; calib=$(absolute "$2"); shift ;;
        --input-size) (($# >= 2)) || die "--input-size needs HxW"; input_size=$2; shift ;;
        --report) (($# >= 2)) || die "--report needs a file name"; report=$2; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done
report=$(absolute "$report")
[[ $input_size =~ ^[0-9]+x[0-9]+$ ]] || die "--input-size must be HxW, e.g. 736x736, not $input_size"
[[ -z $calib || -e $calib ]] || die "no calibration images at $calib"
[[ -d $(dirname "$report") ]] || die "the folder of the report $report does not exist"

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || die "$PY not found"
failures=()

# -- report helpers ------------------------------------------------------------------------
md() { printf '%s\n' "$@" >>"$report"; }
md_block() { { printf '```text\n'; cat; printf '```\n\n'; } >>"$report"; }
fail() { md "" "**Stopped:** $*"; die "$* (report: $report)"; }

# run_logged [--tail N] LABEL CMD...: runs CMD, shows its output, and puts the command, its
# output (the last N lines with --tail) and exit status in the report. Returns CMD's status;
# a failure is also listed at the end of the report.
run_logged() {
    local lines=0 label log status=0
    if [[ $1 == --tail ]]; then lines=$2; shift 2; fi
    label=$1
    shift
    log=$(mktemp)
    echo "+ $*"
    "$@" 2>&1 | tee "$log" || status=$?
    md "\`$*\` → exit status $status" ""
    # Progress bars rewrite their line with \r: the report keeps what each line ended as.
    sed 's/.*\r//' "$log" | if ((lines)); then tail -n "$lines"; else cat; fi | md_block
    rm -f "$log"
    ((status == 0)) || failures+=("$label (exit status $status)")
    return "$status"
}

py_value() { "$PY" -c "$1" 2>/dev/null || echo "not available"; }

is_jetson() {
    [[ -f /etc/nv_tegra_release ]] && return 0
    local model=""
    [[ -r /proc/device-tree/model ]] && model=$(tr -d '\0' </proc/device-tree/model)
    [[ $model == *"NVIDIA Jetson"* ]]
}

# -- System --------------------------------------------------------------------------------
jetson=0
is_jetson && jetson=1
commit=$(git rev-parse --short HEAD 2>/dev/null || echo "unknown")
[[ -z $(git status --porcelain 2>/dev/null) ]] || commit="$commit (with local changes)"
printf '# edgedb GPU check\n\n%s, edgedb commit %s\n\n## System\n\n' "$(date '+%Y-%m-%d %H:%M %z')" "$commit" >"$report"
system=$({
    echo "OS: $(sed -n 's/^PRETTY_NAME=//p' /etc/os-release 2>/dev/null | tr -d '"') ($(uname -srm))"
    echo "Python: $("$PY" --version 2>&1) at $(command -v "$PY")"
    if ((jetson)); then
        [[ -r /proc/device-tree/model ]] && echo "Device: $(tr -d '\0' </proc/device-tree/model)"
        [[ -f /etc/nv_tegra_release ]] && echo "L4T: $(head -n 1 /etc/nv_tegra_release)"
        echo "JetPack: $(dpkg-query -W -f='${Version}' nvidia-jetpack 2>/dev/null || echo "nvidia-jetpack not installed")"
        if command -v nvpmodel >/dev/null; then
            echo "nvpmodel -q:"
            nvpmodel -q 2>&1 || echo "(nvpmodel -q failed; sudo nvpmodel -q shows it)"
        fi
    fi
    if command -v nvidia-smi >/dev/null; then
        echo "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true)"
    fi
    if command -v nvcc >/dev/null; then
        echo "CUDA: $(nvcc --version | tail -n 1)"
    elif [[ -x /usr/local/cuda/bin/nvcc ]]; then
        echo "CUDA: $(/usr/local/cuda/bin/nvcc --version | tail -n 1) (not on PATH)"
    else
        echo "CUDA: no nvcc found"
    fi
} 2>&1)
printf '%s\n' "$system"
printf '%s\n' "$system" | md_block
((jetson)) && echo "Jetson: for steady benchmark numbers, sudo jetson_clocks first (the report records the power mode)."

if ((cuda_tier)); then
    md "## CUDA tier" ""
    "$PY" -c "import pycuda.driver as d; d.init(); assert d.Device.count() > 0" 2>/dev/null ||
        fail "the CUDA tier needs pycuda and a CUDA device: pip install pycuda (nvcc on PATH)"
    status=0
    run_logged "CUDA tier" "$PY" -m pytest -q -rs -m cuda tests/test_cuda_tier.py || status=$?
    ((status == 0)) || die "the CUDA tier failed (report: $report)"
    grep -q "passed" "$report" || die "the CUDA tier was skipped (report: $report)"
    echo "gpu_check: CUDA tier passed; report: $report"
    exit 0
fi

in_venv=$(py_value 'import sys; print(sys.prefix != sys.base_prefix)')
system_site=$(py_value 'import os, sys; cfg = os.path.join(sys.prefix, "pyvenv.cfg"); print(os.path.isfile(cfg) and "include-system-site-packages = true" in open(cfg).read().lower())')

if ! "$PY" -c "import tensorrt" 2>/dev/null; then
    if ((jetson)); then
        advice="TensorRT's Python bindings come with JetPack (edgedb needs TensorRT 10: JetPack 6 or newer).
Install them with: sudo apt install nvidia-tensorrt   (or only the bindings: sudo apt install python3-libnvinfer)"
        if [[ $in_venv == True && $system_site != True ]]; then
            advice+="
This venv does not see the system's packages. Make one that does, with the system python3:
  python3 -m venv --system-site-packages .venv && . .venv/bin/activate"
        fi
        fail "import tensorrt fails. $advice"
    elif ((!install)); then
        fail "import tensorrt fails. Install it with the tensorrt extra: run this script without --no-install, or python3 -m pip install -e \".[tensorrt]\""
    fi
    echo "tensorrt is not installed: the tensorrt extra installs it from PyPI"
fi

# -- Install -------------------------------------------------------------------------------
if ((install)); then
    if command -v dpkg >/dev/null && { ! dpkg -s libpolyclipping-dev >/dev/null 2>&1 || ! command -v g++ >/dev/null; }; then
        fail "edgedb's C++ core needs libpolyclipping-dev and g++: sudo apt-get install libpolyclipping-dev g++, then run this again"
    fi
    if ! "$PY" -c "import pycuda" 2>/dev/null && ! command -v nvcc >/dev/null; then
        # pycuda builds from source and finds CUDA through nvcc on PATH.
        if [[ -x /usr/local/cuda/bin/nvcc ]]; then
            echo "nvcc is not on PATH: using /usr/local/cuda/bin for this run. Add to your shell's profile:"
            echo "  export PATH=/usr/local/cuda/bin:\$PATH"
            export PATH=/usr/local/cuda/bin:$PATH
        else
            echo "warning: no nvcc: building pycuda will likely fail. Install the CUDA toolkit" \
                "(on a Jetson: sudo apt install nvidia-jetpack) and export PATH=/usr/local/cuda/bin:\$PATH" >&2
        fi
    fi
    extras="tensorrt"
    "$PY" -c "import pytest, hypothesis" 2>/dev/null || extras+=",dev" # the tests need pytest and hypothesis
    md "### Install" ""
    pip_advice="pip install failed (output above). pycuda builds from source: it needs nvcc on PATH and the
Python headers (sudo apt install python3-dev). Outside a venv pip may refuse an externally managed Python:
make one (on a Jetson with --system-site-packages)."
    if ((jetson)) && "$PY" -c "import tensorrt" 2>/dev/null && ! "$PY" -m pip show tensorrt >/dev/null 2>&1; then
        # JetPack's tensorrt imports but pip may not know it as a distribution: the extra
        # would then fetch tensorrt from PyPI. Install pycuda as the extra names it instead.
        extras=${extras/tensorrt/}
        extras=${extras#,}
        pycuda_requirement=$(sed -n 's/.*"\(pycuda[^"]*\)".*/\1/p' setup.py | head -n 1)
        run_logged --tail 15 "pip install" "$PY" -m pip install -e ".${extras:+[$extras]}" \
            "${pycuda_requirement:-pycuda}" || fail "$pip_advice"
    else
        run_logged --tail 15 "pip install" "$PY" -m pip install -e ".[$extras]" || fail "$pip_advice"
    fi
fi

versions=$("$PY" - <<'EOF'
from importlib import metadata

for name in ("dbnet-edge", "tensorrt", "pycuda", "onnxruntime", "numpy"):  # dbnet-edge: edgedb's distribution
    try:
        print(f"{name}: {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"{name}: no distribution", end="")
        try:
            print(f" (module {__import__(name).__version__})")
        except Exception:
            print()
from edgedb.backends.tensorrt import import_tensorrt, tensorrt_available
from edgedb.engine.compat import check_supported

try:
    check_supported(import_tensorrt())
    print("TensorRT version: supported")
except Exception as error:
    print(f"TensorRT version: {error}")
print(f"tensorrt_available(): {tensorrt_available()}")
EOF
) || versions="edgedb does not import: $versions"
md "### Python packages" "" "venv: $in_venv, system site-packages: $system_site" ""
printf '%s\n' "$versions"
printf '%s\n' "$versions" | md_block
if [[ $versions != *"TensorRT version: supported"* ]]; then
    fail "edgedb needs TensorRT 10 or 11 (on a Jetson: JetPack 6 or newer); the versions above say what this is"
elif [[ $versions != *"tensorrt_available(): True"* ]]; then
    fail "TensorRT is not usable here (it needs tensorrt, pycuda and a CUDA device; the versions above say which is missing)"
fi

# -- Tests ---------------------------------------------------------------------------------
md "## Tests" ""
run_logged "tests" "$PY" -m pytest -q -rs -m "gpu or cuda" tests/test_gpu.py tests/test_cuda_tier.py || true

# -- Build ---------------------------------------------------------------------------------
md "## Build" ""
mkdir -p engines
engines=()
precisions=(fp16)
[[ -n $calib ]] && precisions+=(int8 best)
for precision in "${precisions[@]}"; do
    engine="engines/ppocrv4-det-$precision-$input_size.engine"
    options=(--precision "$precision" --input-size "$input_size")
    [[ $precision != fp16 ]] && options+=(--calib "$calib")
    if run_logged "build $precision" "$PY" -m edgedb build ppocrv4-det -o "$engine" "${options[@]}"; then
        engines+=("$engine")
    fi
done

# -- Bench ---------------------------------------------------------------------------------
md "## Bench" ""
if ((${#engines[@]})); then
    md "ONNX Runtime FP32 on the CPU (the first) against the engine(s), frames letterboxed into $input_size."
    md ""
    run_logged "bench" "$PY" -m edgedb bench ppocrv4-det@cpu "${engines[@]}" --input-size "$input_size" \
        --json "${report%.md}-bench.json" || true
else
    md "No engine was built: nothing to benchmark." ""
fi

# -- Summary -------------------------------------------------------------------------------
if ((${#failures[@]})); then
    md "## Failures" ""
    printf -- '- %s\n' "${failures[@]}" >>"$report"
    echo "gpu_check: ${#failures[@]} step(s) failed: ${failures[*]}" >&2
fi
echo "report: $report"
((${#failures[@]} == 0))
