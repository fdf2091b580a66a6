#!/usr/bin/env bash
# The layer rule of docs/architecture.md: a source file includes only its own folder, the folders
# below it, and the public headers (shiftadd/*). Prints every include that points up or
# sideways and fails if there is one.
#
#   runtime   convert (above runtime)
#   models
#   engine    loaders   (siblings: neither includes the other)
#   kernels
#   core
set -euo pipefail
root=${1:-$(dirname "$0")/..}
cd "$root"

allowed() {  # the folders a file in folder $1 may include
  case $1 in
    core) echo "core" ;;
    kernels) echo "core kernels" ;;
    engine) echo "core kernels engine" ;;
    loaders) echo "core loaders" ;;
    models) echo "core kernels engine loaders models" ;;
    runtime) echo "core kernels engine loaders models runtime" ;;
    convert) echo "core kernels engine loaders models runtime convert" ;;
  esac
}

bad=0
for layer in core kernels engine loaders models runtime convert; do
  ok=" $(allowed $layer) "
  while IFS=: read -r file line text; do
    target=$(sed -E 's/^[[:space:]]*#[[:space:]]*include[[:space:]]+"([^"]+)".*/\1/' <<<"$text")
    top=${target%%/*}
    [ "$top" = "$target" ] && continue                      # same-folder include ("common.cuh")
    case $top in shiftadd) continue ;; esac                 # the public API
    if [[ "$ok" != *" $top "* ]]; then
      echo "$file:$line: $layer/ includes $target ($top/ is not below $layer/)"
      bad=1
    fi
  done < <(grep -rnE '^[[:space:]]*#[[:space:]]*include[[:space:]]+"' "$layer" \
             --include='*.h' --include='*.cpp' --include='*.cu' --include='*.cuh' || true)
done
exit $bad
