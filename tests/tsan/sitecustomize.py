# SPDX-License-Identifier: Apache-2.0
"""ThreadSanitizer for the Python processes of the binding tests (suite 'tsan').

The interpreter is not built with TSan, so the runtime must be preloaded
before it starts: with $M2MVPN_TSAN_PRELOAD set (the compiler's libtsan.so),
a Python process re-executes itself with LD_PRELOAD set to it. Then
LD_PRELOAD is removed from os.environ, so that the other programs the tests
start (sh, ip, unshare, the ABI probe) run without it: a shell with libtsan
preloaded crashes on its first setjmp(). A Python child gets this file from
PYTHONPATH and preloads again by itself. (On PYTHONPATH this file shadows
Debian's sitecustomize, which only installs the apport hook.)
"""
import os
import sys

_lib = os.environ.get("M2MVPN_TSAN_PRELOAD")
if _lib:
    if os.environ.get("LD_PRELOAD") != _lib:
        os.environ["LD_PRELOAD"] = _lib
        os.execv(sys.executable, [sys.executable] + sys.orig_argv[1:])
    del os.environ["LD_PRELOAD"]
