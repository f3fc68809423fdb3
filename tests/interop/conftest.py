# SPDX-License-Identifier: Apache-2.0
"""pytest fixtures for the interop tests (they need root: network namespaces).

Fixtures:
  pki            the test PKI, generated once per session (pki.Pki)
  topology       factory: topology("direct" | "routed" | "nat" | "fragdrop" | "multihomed"
                 | "direct6" (IPv6-only underlay) | "dual" (dual-stack, routed))
  charons        factory: charons(ns, config, name=..., options=...) -> started Charon
  workdir        a fresh folder for one test (pytest's tmp_path)
Every namespace and charon a test makes is removed at teardown, also when the
test fails; a failing test gets the charon log tails in its report, and a
teardown that finds leftovers (namespace, charon process) is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import charon as charonmod
import netlab
import pki as pkimod
import sanitizer


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_m2mvpn: needs the tools/m2mvpn binary")


def pytest_sessionstart(session):
    """With sanitized binaries (M2MVPN_SANITIZER_LOGS): a fresh, empty report
    folder, and ASAN_OPTIONS/UBSAN_OPTIONS of every process we start point
    into it (sanitizer.py)."""
    logs = sanitizer.logs_dir()
    if logs is not None:
        sanitizer.prepare(logs)


def pytest_sessionfinish(session, exitstatus):
    """With sanitized binaries (M2MVPN_SANITIZER_LOGS): any report fails the run."""
    logs = sanitizer.logs_dir()
    if logs is None:
        return
    reports = sanitizer.collect(logs)
    for name, text in reports:
        print(f"\n==== sanitizer report {name}\n{text[-6000:]}")
    if reports:
        print(f"FAIL: {len(reports)} sanitizer report(s) from our binaries in {logs}")
        session.exitstatus = 1


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture(scope="session", autouse=True)
def _root_and_sweep():
    if os.geteuid() != 0:
        pytest.exit("the interop tests need root (network namespaces); "
                    "run them as root", returncode=77)
    why = charonmod.os_check()
    if why:
        pytest.exit(f"strongSwan cannot run here: {why}", returncode=1)
    netlab.sweep_stale()
    yield
    # Nothing of this run may survive it.
    mine = [n for n in netlab.list_namespaces() if n.startswith(f"{netlab.PREFIX}{os.getpid()}-")]
    assert not mine, f"namespaces left behind: {mine}"


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> pkimod.Pki:
    return pkimod.generate(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def workdir(tmp_path) -> Path:
    return tmp_path


@pytest.fixture
def topology(request):
    made: list[netlab.Topology] = []
    builders = {"direct": netlab.direct, "nat": netlab.nat, "multihomed": netlab.multihomed,
                "fragdrop": netlab.fragment_dropping, "routed": netlab.routed,
                "direct6": netlab.direct6, "dual": netlab.dual_stack}

    def make(kind: str) -> netlab.Topology:
        topo = builders[kind]()
        made.append(topo)
        return topo

    yield make
    names = [ns.name for t in made for ns in t.namespaces]
    for topo in reversed(made):
        topo.close()
    left = [n for n in netlab.list_namespaces() if n in names]
    assert not left, f"namespaces not removed: {left}"


@pytest.fixture
def charons(request, workdir):
    started: list[charonmod.Charon] = []

    def start(ns: netlab.Namespace, config: charonmod.SwanctlConfig, *,
              name: str, options: dict | None = None) -> charonmod.Charon:
        ch = charonmod.Charon(ns, workdir / name, config, name=name, options=options)
        started.append(ch)
        return ch.start()

    yield start
    failed = any(getattr(request.node, f"rep_{w}", None) is not None
                 and getattr(request.node, f"rep_{w}").failed for w in ("setup", "call"))
    for ch in started:
        if failed:
            print(ch.log_tail(80))
        ch.stop()
    alive = [ch.name for ch in started if ch.proc is not None and ch.proc.poll() is None]
    assert not alive, f"charon still running after stop: {alive}"
