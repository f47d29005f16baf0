# shellcheck shell=bash
# The cluster's Lmod modules, read from its profile NAME.yaml (the package's or the user's): `modules`, the
# same list the job scripts load (slurm/jobs.py), so set-up and jobs cannot drift apart, and `build_modules`,
# loaded only while flash-attn compiles. Read with awk, not Python: this runs before the venv exists, and a
# login node's system Python may be old or lack PyYAML.
# Sourced by hrm_savio_setup.sh (ROOT, say, die).

# profile_get FILE KEY: a top-level key's value, one item a line: a flow list [a, b], a block list (- a),
# or a scalar. Comments, quotes and null are dropped. tests/test_setup_script.py checks it against PyYAML.
profile_get() {
  awk -v key="$2" '
    function emit(s) {
      gsub(/^[ \t]+|[ \t]+$/, "", s); gsub(/^["\047]|["\047]$/, "", s)
      if (s != "" && s != "null" && s != "~") print s
    }
    block && /^[ \t]+-/ { v = $0; sub(/^[ \t]+-[ \t]*/, "", v); sub(/[ \t]+#.*$/, "", v); emit(v); next }
    block && !/^[ \t]*(#.*)?$/ { block = 0 }
    index($0, key ":") == 1 {
      v = substr($0, length(key) + 2); sub(/[ \t]+#.*$/, "", v); gsub(/^[ \t]+|[ \t]+$/, "", v)
      if (v == "") { block = 1; next }
      if (v ~ /^\[.*\]$/) { v = substr(v, 2, length(v) - 2); n = split(v, items, ","); for (i = 1; i <= n; i++) emit(items[i]) }
      else emit(v)
    }' "$1"
}

# cluster_get NAME KEY: the key from the highest-priority profile file NAME.yaml that sets it, searched as
# slurm/profiles.py does (HRM_CLUSTERS_DIR, then ~/.config/hrm-savio/clusters, then the package), so a
# user's savio.yaml that overrides `modules:` is what set-up loads too. Top-level keys replace, as there.
cluster_get() {
  local dirs=() d i
  IFS=: read -r -a dirs <<< "${HRM_CLUSTERS_DIR:-}"
  local config_home="${XDG_CONFIG_HOME:-$HOME/.config}"
  dirs=("$ROOT/slurm/clusters" "$config_home/hrm-savio/clusters" "${dirs[@]+"${dirs[@]}"}")
  for ((i = ${#dirs[@]} - 1; i >= 0; i--)); do
    d="${dirs[$i]}"
    if [ -n "$d" ] && [ -f "$d/$1.yaml" ] && grep -q "^$2:" "$d/$1.yaml"; then
      profile_get "$d/$1.yaml" "$2"
      return 0
    fi
  done
}

MODULES_LOADED=""  # once per run: set-up and activation both ask
MODULE_NAMES=""    # what module_load_key last loaded (a variable, not output: `module` must run in this shell)

# module_load_key NAME KEY: `module use` the profile's module_use, then `module load` its KEY list: `modules`
# (what jobs load) or `build_modules` (only for compiling flash-attn). Nothing for a profile without that key.
# Status 0 when loaded or nothing to load, 1 when the load fails, 2 when there is no `module` command.
module_load_key() {
  local mods=() uses=() inits=() line f rc=0 had_u=""
  MODULE_NAMES=""
  while IFS= read -r line; do mods+=("$line"); done < <(cluster_get "$1" "$2")
  [ ${#mods[@]} -gt 0 ] || return 0
  while IFS= read -r line; do uses+=("$line"); done < <(cluster_get "$1" module_use)
  case "$-" in *u*) had_u=1 ;; esac
  set +u  # Lmod's shell code reads unset variables
  if ! type module >/dev/null 2>&1; then  # a non-login shell has no `module` function yet
    while IFS= read -r line; do inits+=("$line"); done < <(cluster_get "$1" lmod_init)
    for f in "${inits[@]}"; do
      # shellcheck disable=SC1090
      if [ -f "$f" ]; then source "$f"; break; fi
    done
  fi
  if ! type module >/dev/null 2>&1; then
    rc=2
  else
    for f in "${uses[@]}"; do module use "$f"; done
    module load "${mods[@]}" || rc=1
  fi
  [ -z "$had_u" ] || set -u
  MODULE_NAMES="${mods[*]}"
  return "$rc"
}

# load_cluster_modules NAME: the profile's `modules`, the ones the job scripts load too; nothing for a profile
# without modules (a laptop, the local test cluster).
load_cluster_modules() {
  local rc=0
  [ -z "$MODULES_LOADED" ] || return 0
  MODULES_LOADED=1
  module_load_key "$1" modules || rc=$?
  case "$rc" in
    0) [ -z "$MODULE_NAMES" ] || say "modules loaded: $MODULE_NAMES" ;;
    2) die "no 'module' command (Lmod) on this machine; fix: run this on a $1 node, or HRM_CLUSTER=local for a laptop" ;;
    *) die "module load $MODULE_NAMES failed; fix: find the right names with 'module avail' and put them in modules: of your profile (~/.config/hrm-savio/clusters/$1.yaml, extends: $1)" ;;
  esac
}

# load_build_modules NAME: the profile's `build_modules` (on Savio gcc/11.4.0 cuda/12.6.0: nvcc for flash-attn).
# Call it in a subshell around the build only: jobs never load them, and the venv must work without them.
# A failure is one line, not an error (flash-attn is optional); status 1 then.
load_build_modules() {
  local rc=0
  module_load_key "$1" build_modules || rc=$?
  case "$rc" in
    0) [ -z "$MODULE_NAMES" ] || say "build modules loaded for this step only: $MODULE_NAMES" ;;
    2) say "flash-attn not tried (attention uses PyTorch SDPA): no 'module' command (Lmod) to load $MODULE_NAMES; fix: run set-up on a $1 node"; return 1 ;;
    *) say "flash-attn not tried (attention uses PyTorch SDPA): module load $MODULE_NAMES failed; fix: put the right names (module spider cuda) in build_modules: of ~/.config/hrm-savio/clusters/$1.yaml (extends: $1)"; return 1 ;;
  esac
}
