# SPDX-License-Identifier: Apache-2.0
"""Run the interop pytest suite for meson (`meson test --suite interop`).

Exit codes: pytest's own, except 77 (meson's "skipped") when not root, and
1 instead of pytest's 5 when no test was collected: a run that tested
nothing must not look like a pass.
Arguments are handed to pytest (e.g. -k psk).
"""

import os
import signal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv: list[str]) -> int:
    if os.geteuid() != 0:
        print("SKIP: the interop tests need root (network namespaces, strongSwan); "
              "run `meson test --suite interop` as root", file=sys.stderr)
        return 77
    sys.dont_write_bytecode = True
    sys.path.insert(0, HERE)
    import pytest
    import netlab

    # meson's timeout sends SIGTERM: turn it into KeyboardInterrupt so that
    # pytest still runs the fixtures' teardown (charons, namespaces).
    def on_sigterm(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_sigterm)

    args = ["-p", "no:cacheprovider", "-ra", "--rootdir", HERE, *argv]
    if not any(os.path.exists(a) for a in argv):
        args.append(HERE)
    try:
        code = pytest.main(args)
    finally:
        left = netlab.remove_own()
        if left:
            print(f"removed namespaces the run left behind: {left}", file=sys.stderr)
    if code == 5:
        print("FAIL: no interop test was collected", file=sys.stderr)
        return 1
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
