#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# target-python.sh EXE_WRAPPER PYTHON ARG...
# Cross builds: run ARG... with the target's Python (PYTHON, the wrapper that
# scripts/deps-cross.sh installs; it runs the interpreter under qemu-user), so
# that ctypes has the target's sizes and loads the target's library. Without
# binfmt_misc an emulated process cannot start a target program itself: each
# M2MVPN_* variable naming one (the ABI probe, the CLI, the daemon) is
# replaced by a script that runs it under EXE_WRAPPER.
set -eu
wrapper=$1 python=$2
shift 2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for var in M2MVPN_ABI_PROBE M2MVPN_CLI M2MVPN_DAEMON; do
    eval "prog=\${$var:-}"
    [ -n "$prog" ] || continue
    printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$wrapper" "$prog" >"$dir/$var"
    chmod +x "$dir/$var"
    export "$var=$dir/$var"
done
"$python" "$@"
