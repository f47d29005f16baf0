#!/usr/bin/env bash
# hrm_savio_setup.sh: the front door. Thin: it checks the request, makes the environment (envs/), then
# hands over to hrm-slurm (which runs hrm-data / hrm-train / hrm-evaluate). Run `./hrm_savio_setup.sh help`.
set -euo pipefail

START_DIR="$PWD"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
ACTIONS="setup data train eval both status logs collect test help"
STEP=""     # named in the error line when a step fails
DIED=""     # die() has already said what went wrong and how to fix it
KERNEL=0

if [ -t 1 ]; then BOLD=$'\033[1m' RED=$'\033[31m' PLAIN=$'\033[0m'; else BOLD="" RED="" PLAIN=""; fi
say() { printf '%s[hrm]%s %s\n' "$BOLD" "$PLAIN" "$*"; }
die() {
  printf '%s[hrm] error%s:%s %s\n' "$RED" "${STEP:+ in step \"$STEP\"}" "$PLAIN" "$*" >&2
  DIED=1; exit 1
}
on_exit() {
  local rc=$?
  [ "$rc" -ne 0 ] || return 0
  if [ -n "${NEW_VENV:-}" ]; then rm -rf "$NEW_VENV"; say "removed the half-made environment $NEW_VENV"; fi
  [ -n "$DIED" ] || printf '%s[hrm] step "%s" failed (exit %s); fix the error above and re-run the same command%s\n' \
    "$RED" "${STEP:-start}" "$rc" "$PLAIN" >&2
}
trap on_exit EXIT

# shellcheck source=envs/modules.sh
source "$ROOT/envs/modules.sh"
# shellcheck source=envs/venv.sh
source "$ROOT/envs/venv.sh"

usage() {
  cat <<'EOF'
Usage: ./hrm_savio_setup.sh ACTION [EXPERIMENT] [--local] [--kernel] [KEY=VALUE ...]

Actions:
  setup               create or update the Python environment; a second run changes nothing
  data EXPERIMENT     build the experiment's dataset
  train EXPERIMENT    train on it (the dataset must exist)
  eval EXPERIMENT     evaluate the experiment's latest checkpoint
  both EXPERIMENT     setup, then the whole pipeline: data -> train -> eval -> results
  status              the state of the submitted pipelines' jobs
  logs [STAGE] [-f]   a stage's log (data, train, eval, collect; default train), -f to follow
  collect [RUN ...]   gather metrics and evaluations into ./results (table, CSV, plots)
  test                setup, start a local Slurm (root, Debian), run the whole test suite
  help                this text

data, train, eval and both run setup first (a no-op when done), then submit Slurm jobs where `sbatch`
exists, else (or with --local) run on this machine. KEY=VALUE goes to hrm-slurm: Slurm keys (gpus=4
time=12:00:00 qos=savio_lowprio ...) or training overrides (lr=7e-5 epochs=100 ...). --kernel: also
register the Jupyter kernel "HRM (hrm-savio)" (always done on a cluster, for Open OnDemand).

Experiments:
  name            GPUs  data                                expected runtime
  sudoku_demo     0     generated Sudoku, 6 blanks, 1k x 9  ~3 min on 2 CPU cores
  logistics_demo  0     1000 10x10 cities x 4 vehicles x 8  ~3 min on 2 CPU cores
  sudoku_full     1     Sudoku-Extreme 1k x 1000 aug        ~1-1.5 h on 1 H100/H200
  maze            4     Maze-Hard 30x30, 1000 mazes         ~2 h on 4 GPUs
  logistics       4     1000 30x30 cities x 4 vehicles x 8  ~2 h on 4 GPUs
  arc1            8     ARC-AGI-1 + ConceptARC x 1000 aug   ~24 h on 8 GPUs
  arc2            8     ARC-AGI-2 x 1000 aug                ~24 h on 8 GPUs

HRM-Text language models (configs/lm/experiment; guides/HRM_TEXT.md):
  hrmtext_demo  0     a small local text, a tiny model       a few minutes on 2 CPU cores
  hrmtext_L     8     token shards of your corpus (0.6B)     ~50 h on 8 H100; ~470 h on 8 A5000 (savio4_gpu)
  hrmtext_XL    16    2 nodes x 8 GPUs (1B)                  ~46 h on 16 H100; ~430 h on 16 A5000

Environment:
  SAVIO_ACCOUNT    the Slurm account jobs are charged to, e.g. fc_myproject (required on Savio)
  SAVIO_QOS        QoS of the train and eval stages (default: chosen per stage from the account and GPU
                   type, e.g. a5k_gpu4_normal for an FCA on savio4_gpu, savio_lowprio for a condo);
                   per stage: qos.data= qos.train= qos.eval= qos.collect=
  SAVIO_PARTITION  the training partition (default: the first with enough GPUs per node)
  SAVIO_EMAIL      mail when a job fails and when the last one ends
  HRM_VENV         the venv (default .venv here; $HOME/.venvs/hrm-savio on Savio: home is backed up and
                   never purged; datasets and runs stay on scratch)
  HRM_FLASH        0: skip flash-attn; 1: build it (the default, except on a cluster's login node, where
                   setup prints the srun line that builds it in a GPU job)
  HRM_CLUSTER      the cluster profile in slurm/clusters/ (default savio on Savio, else local)
  HRM_TORCH        cpu or cu126 (default cu126 on a cluster or with nvidia-smi, else cpu)
  WANDB_API_KEY    log to W&B online; never printed nor written to a file by this tool
EOF
}

experiments() {
  local f names=""
  for f in "$ROOT"/configs/experiment/*.yaml "$ROOT"/configs/lm/experiment/*.yaml; do
    [ -f "$f" ] && names+="${names:+ }$(basename "$f" .yaml)"
  done
  echo "$names"
}

# the cluster profile: HRM_CLUSTER, else savio where Savio's scratch exists (as hrm-slurm decides), else local
detect_cluster() {
  if [ -n "${HRM_CLUSTER:-}" ]; then echo "$HRM_CLUSTER"
  elif [ -d /global/scratch/users ]; then echo savio
  else echo local; fi
}

# install_test_tools: what the test suite needs that pip cannot install (Debian, as root; only when missing)
install_test_tools() {
  local missing=() tool
  for tool in shellcheck ruby chromium; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  [ ${#missing[@]} -gt 0 ] || return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing ${missing[*]} (apt-get)"
    { DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"; } >/dev/null \
      || die "apt-get install ${missing[*]} failed; fix: check the network and apt sources, then re-run"
  else
    say "note: ${missing[*]} missing and not installable here (needs root and apt-get): the tests that use them skip"
  fi
}

run_tests() {
  setup_env; activate_env
  STEP="install test tools"
  install_test_tools
  local stop_cluster=""
  if [ "${HRM_TEST_SLURM:-1}" = "1" ] && [ -f tests/cluster/slurm_local_start.sh ]; then
    STEP="start local slurm"
    bash tests/cluster/slurm_local_start.sh || die "the local Slurm cluster did not start (see above); fix it, or HRM_TEST_SLURM=0 to test without it"
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

# Slurm is "here" when sbatch exists and the controller answers: a machine with slurm-wlm installed but not
# running (a laptop, a CI box after its tests) runs locally instead of submitting into nothing.
slurm_here() {
  command -v sbatch >/dev/null 2>&1 || return 1
  if ! timeout 20 sinfo -h -o %a >/dev/null 2>&1; then
    say "sbatch is installed but the Slurm controller does not answer (sinfo failed); running on this machine"
    return 1
  fi
}

# pipeline ACTION EXPERIMENT LOCAL ARGS...: data, train, eval or both, as Slurm jobs or on this machine.
pipeline() {
  local action="$1" exp="$2" local_run="$3"; shift 3
  local mode=slurm stages=() savio=()
  if [ "$local_run" = 1 ] || ! slurm_here; then mode=local; fi
  [ "$action" = both ] || stages=("stages=$action")
  # everything that can be refused is refused here, before anything is installed or submitted
  if [ "$mode" = slurm ]; then
    if [ "$CLUSTER" = savio ] && [ -z "${SAVIO_ACCOUNT:-}" ] && [[ " $* " != *" account="* ]]; then
      die "SAVIO_ACCOUNT is not set; fix: export SAVIO_ACCOUNT=fc_yourproject (yours: sacctmgr -p show associations user=\$USER)"
    fi
    # explicit KEY=VALUE arguments come later and win
    [ -z "${SAVIO_ACCOUNT:-}" ] || savio+=("account=$SAVIO_ACCOUNT")
    [ -z "${SAVIO_QOS:-}" ] || savio+=("qos=$SAVIO_QOS")
    [ -z "${SAVIO_PARTITION:-}" ] || savio+=("partition=$SAVIO_PARTITION")
    [ -z "${SAVIO_EMAIL:-}" ] || savio+=("mail=$SAVIO_EMAIL")
  elif [ "$CLUSTER" != local ] && [ -z "${SLURM_JOB_ID:-}" ] && [ "$action" != data ]; then
    die "$action $exp would run on this login node; fix: let Slurm run it (./hrm_savio_setup.sh $action $exp, without --local), or get a compute node first (srun -A \$SAVIO_ACCOUNT -p savio4_gpu --gres=gpu:A5000:1 -c 4 -q a5k_gpu4_normal -t 2:00:00 --pty bash)"
  fi
  setup_env; activate_env
  if [ "$mode" = slurm ]; then
    STEP="submit $action $exp"
    hrm-slurm submit "+experiment=$exp" "${stages[@]+"${stages[@]}"}" "${savio[@]+"${savio[@]}"}" "$@"
    say "submitted; follow it with ./hrm_savio_setup.sh status and ./hrm_savio_setup.sh logs -f"
  else
    STEP="$action $exp (on this machine)"
    say "no Slurm here (or --local): running $action $exp on this machine"
    hrm-slurm run-local "+experiment=$exp" "${stages[@]+"${stages[@]}"}" "$@"
  fi
}

main() {
  local action="${1:-help}"; [ $# -eq 0 ] || shift
  case "$action" in
    help|-h|--help) usage; return 0 ;;
    setup|data|train|eval|both|status|logs|collect|test) ;;
    *) die "unknown action '$action'; fix: one of: $ACTIONS (./hrm_savio_setup.sh help)" ;;
  esac
  CLUSTER="$(detect_cluster)"
  export HRM_CLUSTER="$CLUSTER"  # hrm-slurm then picks the same profile
  case "$action" in
    test) run_tests "$@"; return ;;
    status) activate_env; STEP="status"; hrm-slurm status "$@"; return ;;
    logs)
      activate_env; STEP="logs"
      local a stage_given=""
      for a in "$@"; do case "$a" in -*) ;; *) stage_given=1 ;; esac; done
      if [ -n "$stage_given" ]; then hrm-slurm logs "$@"; else hrm-slurm logs train "$@"; fi
      return ;;
    collect)
      activate_env; STEP="collect"
      local only_local=0 rest=() runs_dir
      for a in "$@"; do if [ "$a" = --local ]; then only_local=1; else rest+=("$a"); fi; done
      if [ ${#rest[@]} -eq 0 ] && { [ "$only_local" = 1 ] || ! slurm_here; }; then
        # without Slurm nothing is recorded: gather the runs that run-local made
        runs_dir="$(cluster_get local runs_dir)"
        rest=("$runs_dir"/*/)
        [ -d "${rest[0]}" ] || die "no runs in $runs_dir/ to collect yet; fix: ./hrm_savio_setup.sh both EXPERIMENT --local"
      fi
      hrm-slurm collect "${rest[@]+"${rest[@]}"}"; return ;;
  esac
  # setup, data, train, eval, both: [EXPERIMENT] [--local] [--kernel] [KEY=VALUE ...]
  local exp="" local_run=0 args=() a
  for a in "$@"; do
    case "$a" in
      --local) local_run=1 ;;
      --kernel) KERNEL=1 ;;
      --) ;;
      -h|--help) usage; return 0 ;;
      -*) die "unknown option '$a'; fix: --local, --kernel, or KEY=VALUE arguments" ;;
      *=*) args+=("$a") ;;
      *) [ -z "$exp" ] || die "unexpected argument '$a'; fix: one EXPERIMENT, then KEY=VALUE arguments"; exp="$a" ;;
    esac
  done
  if [ "$action" = setup ]; then
    if [ -n "$exp" ] || [ ${#args[@]} -gt 0 ]; then
      die "setup takes no experiment or KEY=VALUE; fix: ./hrm_savio_setup.sh setup [--kernel]"
    fi
    setup_env; return
  fi
  [ -n "$exp" ] || die "$action needs an EXPERIMENT; fix: one of: $(experiments)"
  [ -f "$ROOT/configs/experiment/$exp.yaml" ] || [ -f "$ROOT/configs/lm/experiment/$exp.yaml" ] || die "unknown experiment '$exp'; fix: one of: $(experiments)"
  pipeline "$action" "$exp" "$local_run" "${args[@]+"${args[@]}"}"
}

main "$@"
