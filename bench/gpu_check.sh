#!/usr/bin/env bash
# The GPU check in one call (bench/gpu_check.py says what it measures):
#
#   bash bench/gpu_check.sh OUT [--device auto|cpu|cuda] [--size gpu] [--sheets 40] ...
#
# On the H200 machine (python3 with torch, torchvision, numpy, OpenCV; nothing can be
# fetched there) the packages it lacks are installed from the wheels that
# `bash bench/gpu_check.sh --fetch-wheels` put in .gpu-wheels/ here (carry that folder
# along). Here, and in the test suite (`--device cpu --size tiny`), it runs on the
# project's .venv.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
wheels=${GPU_CHECK_WHEELS:-$root/.gpu-wheels}
# what the check imports beyond torch, numpy and OpenCV, pinned as uv.lock pins them
needs=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
       typing-extensions==4.16.0)

if [ "${1:-}" = "--fetch-wheels" ]; then  # here, online: wheels for the H200's Python 3.12
    python3 -m pip download --quiet --only-binary=:all: --no-deps --dest "$wheels" \
        --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 "${needs[@]}"
    ls "$wheels"
    exit 0
fi

python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x "$root/.venv/bin/python" ]; then python=$root/.venv/bin/python; else python=python3; fi
fi
if ! "$python" -c "import pydantic" 2>/dev/null; then
    if [ ! -d "$wheels" ]; then
        echo "gpu_check: $python lacks pydantic and there are no wheels in $wheels:" \
             "run 'bash bench/gpu_check.sh --fetch-wheels' on a machine online, carry .gpu-wheels" >&2
        exit 2
    fi
    site=$(mktemp -d)
    "$python" -m pip install --quiet --no-index --find-links "$wheels" --target "$site" "${needs[@]}"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
# OpenBLAS on one thread unless said otherwise: its idle threads spin (docs/stack.md), and on
# the H200 machine's 16 cores they cost identification's processes 3x (docs/benchmarks.md)
export PYTHONUNBUFFERED=1 ORT_DISABLE_TELEMETRY=1 OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
exec "$python" "$root/bench/gpu_check.py" "$@"
