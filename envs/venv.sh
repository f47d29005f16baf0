# shellcheck shell=bash
# The Python environment: a venv with torch (the CPU build, or the CUDA 12.6 build on a GPU cluster),
# hrm-savio itself (editable, with the dev extras), flash-attn where it installs, and on a cluster the
# Jupyter kernel that Open OnDemand lists. Sourced by hrm_savio_setup.sh (ROOT, START_DIR, CLUSTER,
# KERNEL, STEP, say, die); envs/modules.sh must be sourced first.
# shellcheck disable=SC2034  # STEP and NEW_VENV are read by hrm_savio_setup.sh's exit trap

CPU_TORCH_INDEX=https://download.pytorch.org/whl/cpu
MARKER=.hrm-setup-complete  # in the venv; written last, so a venv without it is never used half-installed
NEW_VENV=""                 # a venv this run created: the exit trap removes it if set-up fails
FLASH_TRIED=""              # try_flash_attn already ran in this set-up

# profile_scratch: the profile's scratch directory, $USER filled in; nothing for a profile without one
profile_scratch() {
  local scratch
  scratch="$(cluster_get "$CLUSTER" scratch 2>/dev/null || true)"
  echo "${scratch//\$USER/${USER:-$(id -un)}}"
}

venv_path() {
  local v="${HRM_VENV:-}"
  if [ -z "$v" ]; then
    # on a cluster the venv goes to home (Savio: 30 GB, backed up, never purged; a torch venv is 5-7 GB), where
    # no scratch purge can take half of it; datasets and runs stay on scratch (the profile's data_dir, runs_dir)
    if [ "$CLUSTER" != local ]; then v="$HOME/.venvs/hrm-savio"; else v="$ROOT/.venv"; fi
  fi
  case "$v" in /*) echo "$v" ;; *) echo "$START_DIR/$v" ;; esac
}

# old_venv: a complete venv at $scratch/hrm-savio/venv, the default before the venv moved to home, when
# HRM_VENV is unset; nothing otherwise. Set-up never removes it: the user keeps it (HRM_VENV) or deletes it.
old_venv() {
  local scratch
  if [ -n "${HRM_VENV:-}" ] || [ "$CLUSTER" = local ]; then return 0; fi
  scratch="$(profile_scratch)"
  if [ -n "$scratch" ] && [ -f "$scratch/hrm-savio/venv/$MARKER" ]; then echo "$scratch/hrm-savio/venv"; fi
}

# scratch_pip_cache: on a cluster pip's wheel cache (torch and the CUDA wheels, ~5 GB) goes to scratch instead
# of filling the home quota; a PIP_CACHE_DIR of the user's own is kept, and on a laptop pip's default stays.
scratch_pip_cache() {
  local scratch
  if [ "$CLUSTER" = local ] || [ -n "${PIP_CACHE_DIR:-}" ]; then return 0; fi
  scratch="$(profile_scratch)"
  if [ -n "$scratch" ] && [ -d "$scratch" ]; then
    export PIP_CACHE_DIR="$scratch/.cache/pip"
    say "pip's cache: $PIP_CACHE_DIR (scratch, not the home quota)"
  fi
}

# venv_problem VENV: why the venv cannot be used as it is, nothing when it can: its Python must run and import
# hrm and slurm. -I keeps the current directory (the checkout) off sys.path, so the venv's install is tested.
venv_problem() {
  local out
  if [ ! -x "$1/bin/python" ]; then echo "its bin/python is missing, or the Python it points to is gone"; return 0; fi
  if ! out="$("$1/bin/python" -I -c 'import hrm, slurm' 2>&1)"; then
    out="${out##*$'\n'}"
    echo "its Python cannot import hrm and slurm (${out:-no message})"
  fi
}

py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }

pick_python() {
  local py
  for py in "${HRM_PYTHON:-}" python3.11 python3.12 python3.13 python3; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$py"; return 0
    fi
  done
  die "no Python >= 3.11 found; fix: on Savio 'module load python/3.11.6-gcc-11.4.0', elsewhere install python3.11 (or set HRM_PYTHON)"
}

# cpu or cu126 (the envs/torch-*.txt file to install): the CUDA build where jobs will have GPUs.
torch_flavor() {
  if [ -n "${HRM_TORCH:-}" ]; then echo "$HRM_TORCH"
  elif [ "$CLUSTER" != local ] || command -v nvidia-smi >/dev/null 2>&1; then echo cu126
  else echo cpu; fi
}

# setup_env: make the venv complete, or say that it already is. Never downloads when nothing changed.
setup_env() {
  STEP="setup"
  local venv py pyver flavor reqs want have problem old changed=0
  case "${HRM_FLASH:-}" in
    "" | 0 | 1) ;;
    *) die "HRM_FLASH=$HRM_FLASH is not 0 or 1; fix: HRM_FLASH=1 (build flash-attn) or HRM_FLASH=0 (skip it)" ;;
  esac
  load_cluster_modules "$CLUSTER"  # on Savio the venv is made from the module's Python
  venv="$(venv_path)"; py="$(pick_python)"; pyver="$(py_version "$py")"
  flavor="$(torch_flavor)"; reqs="$ROOT/envs/torch-$flavor.txt"
  [ -f "$reqs" ] || die "HRM_TORCH=$flavor has no envs/torch-$flavor.txt; fix: HRM_TORCH=cpu or HRM_TORCH=cu126"
  # the marker alone is not trusted: a venv that set-up completed must still run and import hrm and slurm
  # (a scratch purge deletes some of its files, not all); one that does not is made again from nothing
  if [ -f "$venv/$MARKER" ] && [ -f "$venv/pyvenv.cfg" ]; then
    problem="$(venv_problem "$venv")"
    if [ -n "$problem" ]; then
      say "rebuilding $venv: set-up had completed it, but now $problem"
      rm -rf "$venv"
    fi
  fi
  if [ -x "$venv/bin/python" ]; then
    have="$(py_version "$venv/bin/python" 2>/dev/null)" \
      || die "$venv/bin/python does not run (its Python was moved or removed); fix: rm -rf $venv and re-run"
    [ "$have" = "$pyver" ] \
      || die "$venv was made by Python $have, but set-up uses Python $pyver ($py); fix: rm -rf $venv and re-run, or HRM_PYTHON=python$have"
  elif [ -n "$(ls -A "$venv" 2>/dev/null)" ]; then
    die "$venv exists but holds no venv; fix: remove it, or set HRM_VENV to another directory"
  else
    old="$(old_venv)"
    [ -z "$old" ] || say "the venv's default is now $venv (home: backed up, never purged), so set-up makes it there; to keep $old instead: export HRM_VENV=$old (else rm -rf $old)"
  fi
  want="python=$pyver torch=$flavor files=$(cat "$ROOT/pyproject.toml" "$reqs" | cksum | cut -d' ' -f1)"
  if [ "$(cat "$venv/$MARKER" 2>/dev/null || true)" != "$want" ]; then
    changed=1
    if [ ! -x "$venv/bin/python" ]; then
      install_env "$venv" "$py" "$reqs" "$flavor"
    elif problem="$("$venv/bin/python" "$ROOT/envs/check_env.py" "$ROOT" "$reqs" 2>&1)"; then
      say "environment $venv already has everything it needs (checked offline); recording that"
    else
      say "updating $venv (${problem##*$'\n'})"
      install_env "$venv" "$py" "$reqs" "$flavor"
    fi
    problem="$(venv_problem "$venv")"
    [ -z "$problem" ] || die "$venv is not usable after the install: $problem; fix: rm -rf $venv and re-run"
    printf '%s\n' "$want" > "$venv/$MARKER.tmp" && mv "$venv/$MARKER.tmp" "$venv/$MARKER"
    NEW_VENV=""
  fi
  # HRM_FLASH=1 on a complete venv without flash-attn: build it now (a GPU job after a login-node set-up)
  if [ "$flavor" != cpu ] && [ "${HRM_FLASH:-}" = 1 ] && [ -z "$FLASH_TRIED" ] \
     && ! "$venv/bin/python" -c 'import flash_attn' >/dev/null 2>&1; then
    try_flash_attn "$venv"; changed=1
  fi
  if [ "$KERNEL" = 1 ] || [ "$CLUSTER" != local ]; then register_kernel "$venv" && changed=1; fi
  if [ "$changed" = 0 ]; then say "environment $venv is up to date ($want); nothing to do"
  else say "environment ready: $venv"; fi
}

install_env() {
  local venv="$1" py="$2" reqs="$3" flavor="$4"
  if [ ! -x "$venv/bin/python" ]; then
    say "creating venv $venv with $py"
    mkdir -p "$(dirname "$venv")"
    NEW_VENV="$venv"
    "$py" -m venv "$venv"
  fi
  scratch_pip_cache
  local pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
  say "installing torch, $flavor build ($(basename "$reqs"))"
  if [ "$flavor" = cpu ] && "${pip[@]}" -r "$reqs" >/dev/null 2>&1; then
    :  # pip's configured sources had the CPU build (a mirror or a local wheel directory)
  elif [ "$flavor" = cpu ]; then
    "${pip[@]}" -r "$reqs" --index-url "$CPU_TORCH_INDEX" --extra-index-url https://pypi.org/simple \
      || die "torch install failed; fix: check that this machine reaches download.pytorch.org and pypi.org, then re-run"
  else
    "${pip[@]}" -r "$reqs" || die "torch install failed; fix: check that this node reaches download.pytorch.org and pypi.org (Savio login nodes do), then re-run"
  fi
  # GPU clusters also get JupyterLab, which the Open OnDemand app in guides/ondemand starts from this venv
  local extras=dev,lm
  if [ "$flavor" != cpu ]; then extras=dev,lm,ondemand; fi
  say "installing hrm-savio and its dependencies ($extras)"
  "${pip[@]}" -e "${ROOT}[$extras]" || die "pip install -e . failed; fix the cause pip names above and re-run"
  if [ "$flavor" != cpu ]; then try_flash_attn "$venv"; fi
}

# flash_job_recipe: the one command that builds flash-attn in a GPU job instead of on a login node
flash_job_recipe() {
  if [ "$CLUSTER" = savio ]; then
    echo "HRM_FLASH=1 srun -A ${SAVIO_ACCOUNT:-\$SAVIO_ACCOUNT} -p savio4_gpu --gres=gpu:A5000:1 -c 4 -q a5k_gpu4_normal -t 1:00:00 $ROOT/hrm_savio_setup.sh setup"
  else
    echo "HRM_FLASH=1 srun <the options of a 1-GPU job on $CLUSTER> -t 1:00:00 $ROOT/hrm_savio_setup.sh setup"
  fi
}

# flash-attn compiles against CUDA (nvcc from the profile's build_modules, loaded for this step only) and often
# cannot (no nvcc, no wheel for this torch): a failure here is not an error, the model then uses PyTorch's SDPA
# attention. On a cluster's login node it is not built unless HRM_FLASH=1 says so: the build takes up to 30 min
# and several GB of memory, and login nodes are for light work.
try_flash_attn() {
  local venv="$1" rc=0
  FLASH_TRIED=1
  if [ -z "${HRM_FLASH:-}" ] && [ "$CLUSTER" != local ] && [ -z "${SLURM_JOB_ID:-}" ]; then
    say "flash-attn not built on this login node (up to 30 min of compiling; attention uses PyTorch SDPA); to build it in a GPU job: $(flash_job_recipe)"
    return 0
  fi
  [ "${HRM_FLASH:-1}" = 1 ] || return 0
  scratch_pip_cache
  # a subshell: the build modules (gcc, cuda) stay out of the rest of set-up, as they stay out of the jobs
  ( load_build_modules "$CLUSTER" || exit 97
    say "trying flash-attn (optional; HRM_FLASH=0 skips it)"
    MAX_JOBS="${MAX_JOBS:-4}" timeout "${HRM_FLASH_TIMEOUT:-1800}" "$venv/bin/python" -m pip install -q \
      --disable-pip-version-check --no-build-isolation flash-attn >/dev/null 2>&1 ) || rc=$?
  [ "$rc" != 97 ] || return 0  # the build modules did not load: load_build_modules has said so, pip never ran
  # imported without the build modules, as a job will
  if [ "$rc" = 0 ] && "$venv/bin/python" -c 'import flash_attn' >/dev/null 2>&1; then
    say "flash-attn installed"
    return 0
  fi
  "$venv/bin/python" -m pip uninstall -y -q flash-attn >/dev/null 2>&1 || true
  say "flash-attn did not install here; attention will use PyTorch SDPA (arch.attn_backend=auto picks it)"
}

# register_kernel VENV: the Jupyter kernel "HRM (hrm-savio)" for this venv. Succeeds only when it changed
# something, so that a second set-up can say it had nothing to do.
register_kernel() {
  local py="$1/bin/python" spec
  spec="$("$py" -c 'from jupyter_core.paths import jupyter_data_dir; print(jupyter_data_dir())')/kernels/hrm/kernel.json"
  if [ -f "$spec" ] && grep -qF "\"$py\"" "$spec"; then return 1; fi
  # PYTHONPATH cleared: BRC's Jupyter app loads the anaconda3 module, whose site-packages must not leak in
  "$py" -m ipykernel install --user --name hrm --display-name "HRM (hrm-savio)" --env PYTHONPATH "" >/dev/null \
    || die "Jupyter kernel registration failed; fix: $py -m pip install ipykernel, then re-run setup"
  say "Jupyter kernel 'HRM (hrm-savio)' registered ($spec): Open OnDemand's Jupyter lists it"
}

# activate_env: put the complete venv first on PATH (after the cluster's modules: its Python needs them).
activate_env() {
  local venv old problem; venv="$(venv_path)"
  load_cluster_modules "$CLUSTER"
  if [ ! -f "$venv/$MARKER" ]; then
    old="$(old_venv)"
    [ -z "$old" ] || die "no complete environment at $venv, the venv's default now (home, never purged); fix: ./hrm_savio_setup.sh setup, or export HRM_VENV=$old to keep the one on scratch"
    die "no complete environment at $venv; fix: ./hrm_savio_setup.sh setup"
  fi
  problem="$(venv_problem "$venv")"
  [ -z "$problem" ] || die "the environment $venv is broken: $problem; fix: ./hrm_savio_setup.sh setup (it makes it again)"
  export VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH"
}
