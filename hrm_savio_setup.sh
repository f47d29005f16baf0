#!/usr/bin/env bash
# hrm_savio_setup.sh: the front door. Thin: it builds the environment, then delegates to
# hrm-data / hrm-train / hrm-evaluate / hrm-slurm. Run `./hrm_savio_setup.sh help`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
TORCH_VERSION="${HRM_TORCH_VERSION:-2.13.0}"
CUDA_INDEX="${HRM_TORCH_INDEX:-https://download.pytorch.org/whl/cu126}"
EXPERIMENTS="sudoku_demo sudoku_full maze arc1 arc2"
STEP="start"

say() { printf '\033[1m[hrm]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[hrm] error:\033[0m %s\n' "$*" >&2; exit 1; }
trap 'rc=$?; [ $rc -ne 0 ] && printf "\033[31m[hrm] step \"%s\" failed (exit %s); fix the message above and re-run the same command\033[0m\n" "$STEP" "$rc" >&2' EXIT

usage() {
  cat <<'EOF'
Usage: ./hrm_savio_setup.sh ACTION [EXPERIMENT] [--local] [-- extra overrides]

Actions:
  setup              create or update the Python environment (idempotent)
  both EXPERIMENT    setup, then the whole pipeline: data -> train -> eval -> results
                     (Slurm jobs where sbatch exists, else locally on this machine's CPU/GPU)
  test               setup, start a local Slurm (root, Debian), run the whole test suite
  help               this text

Experiments:
  name          GPUs  data                                   expected runtime
  sudoku_demo   0-1   1000 Sudoku (hub or generated) x 9     ~5 min on a laptop CPU
  sudoku_full   1     Sudoku-Extreme 1k x 1000 aug           ~1-1.5 h on 1 H100/H200
  maze          4     Maze-Hard 30x30, 1000 mazes            ~2 h on 4 GPUs
  arc1          8     ARC-AGI-1 + ConceptARC x 1000 aug      ~24 h on 8 GPUs
  arc2          8     ARC-AGI-2 x 1000 aug                   ~24 h on 8 GPUs

Environment: HRM_VENV (venv path; default .venv here, scratch on Savio), WANDB_API_KEY (never written
to any file by this tool), SAVIO_ACCOUNT, SAVIO_QOS, SAVIO_PARTITION, SAVIO_EMAIL.
EOF
}

on_cluster() { [ -n "${SLURM_CLUSTER_NAME:-}" ] || [ -d /global/scratch ] ; }

venv_path() {
  if [ -n "${HRM_VENV:-}" ]; then echo "$HRM_VENV"
  elif [ -d "/global/scratch/users/${USER:-nobody}" ]; then echo "/global/scratch/users/$USER/hrm-savio/venv"
  else echo "$ROOT/.venv"; fi
}

pick_python() {
  local py
  for py in "${HRM_PYTHON:-}" python3.11 python3.12 python3.13 python3; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$py"; return 0
    fi
  done
  die "no Python >= 3.11 found: on Savio run 'module load python/3.11.6-gcc-11.4.0', elsewhere install python3.11"
}

# The venv is complete only when its marker holds the hash of what was asked for; a venv without it
# (an interrupted setup) is rebuilt, never used half-installed.
setup() {
  STEP="setup"
  local venv py want marker
  venv="$(venv_path)"; py="$(pick_python)"
  want="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')|torch=$TORCH_VERSION|$(cat pyproject.toml | sha256sum | cut -c1-16)"
  marker="$venv/.hrm-setup-complete"
  if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ]; then
    say "environment $venv is up to date ($want); nothing to do"; return 0
  fi
  if [ -x "$venv/bin/python" ]; then
    local have; have="$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo broken)"
    if [ "$have" != "${want%%|*}" ]; then
      die "$venv was made by Python $have but $py is ${want%%|*}: remove it (rm -rf $venv) or set HRM_PYTHON to the Python $have"
    fi
  fi
  if [ -d "$venv" ] && [ ! -f "$marker" ]; then
    say "removing incomplete environment $venv (an earlier setup was interrupted)"; rm -rf "$venv"
  fi
  [ -d "$venv" ] || { say "creating venv $venv with $py"; mkdir -p "$(dirname "$venv")"; "$py" -m venv "$venv"; }
  rm -f "$marker"
  local pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
  if command -v nvidia-smi >/dev/null 2>&1 || on_cluster; then
    say "installing torch $TORCH_VERSION (CUDA 12.6 build)"
    "${pip[@]}" "torch==$TORCH_VERSION" --index-url "$CUDA_INDEX" || die "torch CUDA install failed: check the network from this node (login nodes have it) or set HRM_TORCH_INDEX"
  else
    say "installing torch $TORCH_VERSION (CPU build)"
    "${pip[@]}" "torch==$TORCH_VERSION" || die "torch install failed: check pip's network access or set HRM_TORCH_VERSION"
  fi
  say "installing hrm-savio and its dependencies"
  "${pip[@]}" -e ".[dev]" || die "pip install -e . failed: see the pip error above"
  printf '%s' "$want" > "$marker"
  say "environment ready: $venv"
}

activate() { local venv; venv="$(venv_path)"; export PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv"; }

run_tests() {
  setup; activate
  STEP="test"
  local stop_cluster=""
  if [ "${HRM_TEST_SLURM:-1}" = "1" ] && [ -f tests/cluster/slurm_local_start.sh ]; then
    STEP="start local slurm"
    bash tests/cluster/slurm_local_start.sh || die "the local Slurm cluster did not start (see above); set HRM_TEST_SLURM=0 to run without it"
    stop_cluster=1
    export HRM_TEST_SLURM=1
  else
    export HRM_TEST_SLURM=0
  fi
  STEP="pytest"
  local rc=0
  python -m pytest -q tests "$@" || rc=$?
  if [ -n "$stop_cluster" ]; then bash tests/cluster/slurm_local_stop.sh || true; fi
  return $rc
}

both() {
  local exp="${1:-}"; shift || true
  [ -n "$exp" ] || die "both needs an EXPERIMENT: one of $EXPERIMENTS"
  case " $EXPERIMENTS " in *" $exp "*) ;; *) die "unknown experiment '$exp': choose one of $EXPERIMENTS";; esac
  setup; activate
  STEP="pipeline $exp"
  local mode=slurm
  if ! command -v sbatch >/dev/null 2>&1 || [ "${LOCAL:-0}" = 1 ]; then mode=local; fi
  if [ "$mode" = slurm ]; then
    hrm-slurm submit "+experiment=$exp" "$@"
  else
    say "no Slurm here (or --local): running $exp on this machine"
    hrm-slurm run-local "+experiment=$exp" "$@"
  fi
}

main() {
  local action="${1:-help}"; shift || true
  local args=()
  LOCAL=0
  for a in "$@"; do
    if [ "$a" = "--local" ]; then LOCAL=1; else args+=("$a"); fi
  done
  case "$action" in
    setup) setup ;;
    test) run_tests "${args[@]+"${args[@]}"}" ;;
    both) both "${args[@]+"${args[@]}"}" ;;
    help|-h|--help) usage ;;
    *) usage >&2; die "unknown action '$action': see the list above" ;;
  esac
}

main "$@"
