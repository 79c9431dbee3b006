#!/usr/bin/env bash
# The whole test suite, exactly as `make test` (and so .ci/run) runs it:
#   unit tests, reference-equivalence tests, nbval over every notebook at `ci` scale,
#   the jupytext pairing check and the offline book build — in one pytest run on all cores.
set -uo pipefail
cd "$(dirname "$0")/.."

export MINIPEFT_SCALE="${MINIPEFT_SCALE:-ci}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 MPLBACKEND=Agg PYDEVD_DISABLE_FILE_VALIDATION=1
# pytest-xdist runs one worker per core and each worker (and each notebook kernel) uses one thread,
# so two notebooks never fight over the same core. (Count the cores first: nproc obeys OMP_NUM_THREADS.)
workers="${MINIPEFT_TEST_WORKERS:-$(nproc --all)}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
# Notebooks re-executed by nbval record their results here, not over the committed notebooks/results/.
MINIPEFT_RESULTS_DIR="$(mktemp -d)"
export MINIPEFT_RESULTS_DIR
trap 'rm -rf "$MINIPEFT_RESULTS_DIR"' EXIT

started=$(date +%s)
# Notebooks first: they are the long items, and --dist loadfile keeps each one on one worker and one kernel.
.venv/bin/python -m pytest notebooks tests \
  -n "$workers" --dist loadfile \
  --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
  --durations=15 "$@"
status=$?
echo "test suite wall time: $(( $(date +%s) - started )) s"
# Each chapter re-executed above recorded its own wall time (one thread, beside the other worker): the budget is
# 180 s per chapter on one core.
.venv/bin/python - "$MINIPEFT_RESULTS_DIR" <<'PY'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    record = json.loads(path.read_text())
    over = "  OVER the 180 s budget" if record["wall_time_s"] > 180 else ""
    print(f"chapter time under test: {record['chapter']:<34} {record['wall_time_s']:6.0f} s{over}")
PY
if [ "$status" -eq 5 ]; then
  # pytest's exit code 5 means it collected no test at all: nothing was checked, and that is a failure.
  echo "ERROR: pytest collected no tests (exit code 5) — nothing was checked." >&2
fi
exit "$status"
