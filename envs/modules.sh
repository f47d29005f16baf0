# shellcheck shell=bash
# The cluster's Lmod modules, read from its profile NAME.yaml (the package's or the user's): the same list
# the job scripts load (slurm/jobs.py), so set-up and jobs cannot drift apart. Read with awk, not Python:
# this runs before the venv exists, and a login node's system Python may be old or lack PyYAML.
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

# load_cluster_modules NAME: `module use` and `module load` what the profile lists; nothing for a profile
# without modules (a laptop, the local test cluster).
load_cluster_modules() {
  local mods=() uses=() inits=() line f
  [ -z "$MODULES_LOADED" ] || return 0
  MODULES_LOADED=1
  while IFS= read -r line; do mods+=("$line"); done < <(cluster_get "$1" modules)
  while IFS= read -r line; do uses+=("$line"); done < <(cluster_get "$1" module_use)
  [ ${#mods[@]} -gt 0 ] || return 0
  set +u  # Lmod's shell code reads unset variables
  if ! type module >/dev/null 2>&1; then  # a non-login shell has no `module` function yet
    while IFS= read -r line; do inits+=("$line"); done < <(cluster_get "$1" lmod_init)
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
    die "module load ${mods[*]} failed; fix: find the right names with 'module avail' and put them in modules: of your profile (~/.config/hrm-savio/clusters/$1.yaml, extends: $1)"
  fi
  set -u
  say "modules loaded: ${mods[*]}"
}
