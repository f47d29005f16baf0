# shellcheck shell=bash
# The Python environment: a venv with torch (the CPU build, or the CUDA 12.6 build on a GPU cluster),
# hrm-savio itself (editable, with the dev extras), flash-attn where it installs, and on a cluster the
# Jupyter kernel that Open OnDemand lists. Sourced by hrm_savio_setup.sh (ROOT, START_DIR, CLUSTER,
# KERNEL, STEP, say, die); envs/modules.sh must be sourced first.
# shellcheck disable=SC2034  # STEP and NEW_VENV are read by hrm_savio_setup.sh's exit trap

CPU_TORCH_INDEX=https://download.pytorch.org/whl/cpu
MARKER=.hrm-setup-complete  # in the venv; written last, so a venv without it is never used half-installed
NEW_VENV=""                 # a venv this run created: the exit trap removes it if set-up fails

venv_path() {
  local v="${HRM_VENV:-}" scratch
  if [ -z "$v" ]; then
    scratch="$(cluster_get "$CLUSTER" scratch 2>/dev/null || true)"
    scratch="${scratch//\$USER/${USER:-$(id -un)}}"
    # on a cluster the venv goes to scratch: home quotas are small and a venv with torch is ~5 GB
    if [ "$CLUSTER" != local ] && [ -n "$scratch" ] && [ -d "$scratch" ]; then v="$scratch/hrm-savio/venv"
    else v="$ROOT/.venv"; fi
  fi
  case "$v" in /*) echo "$v" ;; *) echo "$START_DIR/$v" ;; esac
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
  local venv py pyver flavor reqs want have problem changed=0
  load_cluster_modules "$CLUSTER"  # on Savio the venv is made from the module's Python
  venv="$(venv_path)"; py="$(pick_python)"; pyver="$(py_version "$py")"
  flavor="$(torch_flavor)"; reqs="$ROOT/envs/torch-$flavor.txt"
  [ -f "$reqs" ] || die "HRM_TORCH=$flavor has no envs/torch-$flavor.txt; fix: HRM_TORCH=cpu or HRM_TORCH=cu126"
  if [ -x "$venv/bin/python" ]; then
    have="$(py_version "$venv/bin/python" 2>/dev/null)" \
      || die "$venv/bin/python does not run (its Python was moved or removed); fix: rm -rf $venv and re-run"
    [ "$have" = "$pyver" ] \
      || die "$venv was made by Python $have, but set-up uses Python $pyver ($py); fix: rm -rf $venv and re-run, or HRM_PYTHON=python$have"
  elif [ -n "$(ls -A "$venv" 2>/dev/null)" ]; then
    die "$venv exists but holds no venv; fix: remove it, or set HRM_VENV to another directory"
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
    printf '%s\n' "$want" > "$venv/$MARKER.tmp" && mv "$venv/$MARKER.tmp" "$venv/$MARKER"
    NEW_VENV=""
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
  local extras=dev
  if [ "$flavor" != cpu ]; then extras=dev,ondemand; fi
  say "installing hrm-savio and its dependencies ($extras)"
  "${pip[@]}" -e "${ROOT}[$extras]" || die "pip install -e . failed; fix the cause pip names above and re-run"
  if [ "$flavor" != cpu ]; then try_flash_attn "$venv"; fi
}

# flash-attn compiles against the local CUDA and often cannot (no nvcc, no wheel for this torch): a failure
# here is not an error, the model then uses PyTorch's SDPA attention.
try_flash_attn() {
  [ "${HRM_FLASH:-1}" = 1 ] || return 0
  say "trying flash-attn (optional; HRM_FLASH=0 skips it)"
  if MAX_JOBS="${MAX_JOBS:-4}" timeout "${HRM_FLASH_TIMEOUT:-1800}" "$1/bin/python" -m pip install -q \
       --disable-pip-version-check --no-build-isolation flash-attn >/dev/null 2>&1 \
     && "$1/bin/python" -c 'import flash_attn' >/dev/null 2>&1; then
    say "flash-attn installed"
  else
    "$1/bin/python" -m pip uninstall -y -q flash-attn >/dev/null 2>&1 || true
    say "flash-attn did not install here; attention will use PyTorch SDPA (arch.attn_backend=auto picks it)"
  fi
}

# register_kernel VENV: the Jupyter kernel "HRM (hrm-savio)" for this venv. Succeeds only when it changed
# something, so that a second set-up can say it had nothing to do.
register_kernel() {
  local py="$1/bin/python" spec
  spec="$("$py" -c 'from jupyter_core.paths import jupyter_data_dir; print(jupyter_data_dir())')/kernels/hrm/kernel.json"
  if [ -f "$spec" ] && grep -qF "\"$py\"" "$spec"; then return 1; fi
  "$py" -m ipykernel install --user --name hrm --display-name "HRM (hrm-savio)" >/dev/null \
    || die "Jupyter kernel registration failed; fix: $py -m pip install ipykernel, then re-run setup"
  say "Jupyter kernel 'HRM (hrm-savio)' registered ($spec): Open OnDemand's Jupyter lists it"
}

# activate_env: put the complete venv first on PATH (after the cluster's modules: its Python needs them).
activate_env() {
  local venv; venv="$(venv_path)"
  load_cluster_modules "$CLUSTER"
  [ -f "$venv/$MARKER" ] || die "no complete environment at $venv; fix: ./hrm_savio_setup.sh setup"
  export VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH"
}
