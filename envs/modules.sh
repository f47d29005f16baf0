# shellcheck shell=bash
# The cluster's Lmod modules, read from its profile slurm/clusters/NAME.yaml: the same list the job scripts
# load (slurm/jobs.py), so set-up and jobs cannot drift apart. Read with awk, not Python: this runs before
# the venv exists, and a login node's system Python may be old or lack PyYAML.
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

MODULES_LOADED=""  # once per run: set-up and activation both ask

# load_cluster_modules NAME: `module use` and `module load` what the profile lists; nothing for a profile
# without modules (a laptop, the local test cluster).
load_cluster_modules() {
  local yaml="$ROOT/slurm/clusters/$1.yaml" mods=() uses=() inits=() line f
  [ -z "$MODULES_LOADED" ] && [ -f "$yaml" ] || return 0
  MODULES_LOADED=1
  while IFS= read -r line; do mods+=("$line"); done < <(profile_get "$yaml" modules)
  while IFS= read -r line; do uses+=("$line"); done < <(profile_get "$yaml" module_use)
  [ ${#mods[@]} -gt 0 ] || return 0
  set +u  # Lmod's shell code reads unset variables
  if ! type module >/dev/null 2>&1; then  # a non-login shell has no `module` function yet
    while IFS= read -r line; do inits+=("$line"); done < <(profile_get "$yaml" lmod_init)
    for f in "${inits[@]}"; do
      # shellcheck disable=SC1090
      if [ -f "$f" ]; then source "$f"; break; fi
    done
  fi
  if ! type module >/dev/null 2>&1; then
    set -u
    die "no 'module' command (Lmod) on this machine; fix: run this on a $1 node, or HRM_CLUSTER=local for a laptop"
  fi
  for f in "${uses[@]+"${uses[@]}"}"; do module use "$f"; done
  if ! module load "${mods[@]}"; then
    set -u
    die "module load ${mods[*]} failed; fix: find the right names with 'module avail' and put them in $yaml (modules:)"
  fi
  set -u
  say "modules loaded: ${mods[*]}"
}
