#!/usr/bin/env bash
# Runs the test suite under the torch versions the real hosts ship, beside CI's torch 2.13 (.ci/run):
#   2.1.2  AUTOMATIC1111 1.10
#   2.3.1  Forge
# For each version: a virtual environment OUTSIDE the repository (default ~/.cache/t-sam-host-torch/<version>;
# TSAM_HOST_TORCH_DIR moves the parent folder) with that torch from PyPI (on Linux x86_64 a CUDA build with its
# nvidia-* wheels, a few GB; it runs on the CPU all the same) and exactly the other packages .ci/run installs: the same
# requirements files, the same --no-deps packages, Forge's transformers in <venv>/transformers-4.46.1. numpy stays at
# requirements-test.txt's 1.26.4, which is also what both hosts pin (torch 2.1/2.3 are built against numpy 1.x).
# Then it runs .ci/run's test command (python tests/run.py: every tier, each in its own pytest process) on this working
# tree, at the lowest CPU priority, one version after the other, and writes <dir>/<version>/pytest.log and
# <dir>/<version>/summary.txt (counts and the failing tests' names).
#
# Idempotent: an environment is reinstalled only when the version, the requirements files or this script changed
# (a stamp file records their hash); TSAM_HOST_TORCH_REINSTALL=1 forces it. Ruff is not run (it does not depend on
# torch). Not part of .ci/run: it downloads several GB and takes ~10-15 min per version on 2 cores.
#
# Usage: bash tools/check_host_torch.sh [--install-only] [VERSION ...] [-- TESTS_RUN_ARGS ...]
#   bash tools/check_host_torch.sh                     # 2.1.2 and 2.3.1, whole suite
#   bash tools/check_host_torch.sh --install-only      # only build the environments (e.g. while a suite runs)
#   bash tools/check_host_torch.sh 2.1.2 -- tests/core/test_core_memory.py   # tests/run.py's arguments (--help)
# Exit status: 0 when every version's suite passed, 1 otherwise.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
ROOT="${TSAM_HOST_TORCH_DIR:-$HOME/.cache/t-sam-host-torch}"
PYTHON="${PYTHON:-python3}"

versions=()
install_only=0
while (($#)) && [[ "$1" != "--" ]]; do
  if [[ "$1" == --install-only ]]; then install_only=1; else versions+=("$1"); fi
  shift
done
(($#)) && shift  # the "--"
run_args=("$@")  # none: every tier, .ci/run's command
((${#versions[@]})) || versions=(2.1.2 2.3.1)

stamp_of() {  # what the environment was built from
  { echo "$1"; "$PYTHON" --version; cat "$REPO/requirements-test.txt" "$REPO/requirements-nodeps.txt";
    sed -n '/^install() {/,/^}/p' "$0"; } | sha256sum | cut -d' ' -f1
}

install() {  # $1 version, $2 venv: the steps of .ci/run with torch==$1
  "$PYTHON" -m venv --clear "$2"
  local py="$2/bin/python"
  "$py" -m pip install -q --upgrade pip
  "$py" -m pip install -q "torch==$1"
  "$py" -m pip install -q -r "$REPO/requirements-test.txt"
  "$py" -m pip install -q --no-deps -r "$REPO/requirements-nodeps.txt"
  "$py" -m pip install -q --no-deps --target "$2/transformers-4.46.1" \
    transformers==4.46.1 tokenizers==0.20.3 huggingface-hub==0.26.2
  # the requirements must not have moved torch (torchsde and others only ask for torch>=1.x)
  "$py" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$1')"
}

status=0
for v in "${versions[@]}"; do
  dir="$ROOT/$v"
  venv="$dir/venv"
  mkdir -p "$dir"
  want="$(stamp_of "$v")"
  if [[ "${TSAM_HOST_TORCH_REINSTALL:-0}" != 1 && -f "$dir/stamp" && "$(cat "$dir/stamp")" == "$want" ]]; then
    echo "== torch $v: environment $venv is up to date"
  else
    echo "== torch $v: installing into $venv (several GB from PyPI)"
    rm -f "$dir/stamp"
    install "$v" "$venv" >"$dir/install.log" 2>&1 || { echo "install failed, see $dir/install.log"; status=1; continue; }
    echo "$want" >"$dir/stamp"
    echo "== torch $v: installed"
  fi
  "$venv/bin/python" -m pip freeze >"$dir/freeze.txt" 2>/dev/null
  ((install_only)) && continue

  echo "== torch $v: python tests/run.py ${run_args[*]} (log: $dir/pytest.log)"
  rc=0
  (cd "$REPO" && nice -n 19 "$venv/bin/python" tests/run.py "${run_args[@]}") >"$dir/pytest.log" 2>&1 || rc=$?
  ((rc == 0)) || status=1

  last="$(grep -E '(passed|failed|error|no tests ran)' "$dir/pytest.log" | tail -n 1 || true)"
  count() { local n; n="$(grep -oE "[0-9]+ $1" <<<"$last" | cut -d' ' -f1 || true)"; echo "${n:-0}"; }
  {
    echo "torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)' 2>&1 | tail -n 1)," \
      "numpy $("$venv/bin/python" -c 'import numpy; print(numpy.__version__)' 2>&1 | tail -n 1)," \
      "tree $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD || echo '+changes')," \
      "$(date -u +%FT%TZ)"
    echo "python tests/run.py ${run_args[*]}: exit $rc$( ((rc > 128)) && echo " (killed by signal $((rc - 128)))")"
    echo "passed $(count passed) failed $(count failed) errors $(count 'errors?') skipped $(count skipped)"
    echo "last line: $last"
    grep -E '^(FAILED|ERROR) ' "$dir/pytest.log" | cut -c1-200 || true
  } >"$dir/summary.txt"
  cat "$dir/summary.txt"
done
exit "$status"
