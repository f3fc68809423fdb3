# SPDX-License-Identifier: Apache-2.0
"""The man pages m2mvpn(1) and m2mvpnd(8): valid roff without a warning,
installed by meson, and in step with the tools' own usage text."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cli_helpers import CLI, DAEMON

# Set by meson for a cross build run under qemu-user: meson installs into a staging tree on the host.
on_host_only = pytest.mark.skipif(bool(os.environ.get("M2MVPN_TEST_EMULATED")),
                                  reason="meson installs into a staging tree on the host (not under qemu-user)")


ROOT = Path(__file__).resolve().parents[2]
PAGES = {"m2mvpn.1": CLI, "m2mvpnd.8": DAEMON}


def _page(name):
    return ROOT / "docs" / "man" / name


@pytest.mark.parametrize("name", sorted(PAGES))
def test_roff_has_no_warnings(name):
    if not shutil.which("groff"):
        pytest.skip("groff is not installed")
    p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(_page(name))],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stderr == "", p.stderr


@pytest.mark.parametrize("name", sorted(PAGES))
def test_man_renders_the_page(name):
    if not shutil.which("man"):
        pytest.skip("man is not installed")
    p = subprocess.run(["man", "-l", str(_page(name))], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, MANPAGER="cat", PAGER="cat", MANWIDTH="80", LC_ALL="C.UTF-8"))
    assert p.returncode == 0, p.stderr
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"):
        assert re.search(r"^%s$" % section, p.stdout, re.M), section
    assert p.stdout.splitlines()[0].startswith(name.split(".")[0].upper() + "(" + name.split(".")[1] + ")")


@pytest.mark.parametrize("name", sorted(PAGES))
def test_page_names_every_option_and_command_of_the_usage(name):
    usage = subprocess.run([PAGES[name], "--help"], capture_output=True, text=True, timeout=10).stdout
    text = _page(name).read_text().replace("\\-", "-")
    options = set(re.findall(r"--[a-z][a-z-]+", usage))
    assert options, usage
    missing = sorted(o for o in options if o not in text)
    assert not missing, "options in --help but not in %s: %s" % (name, missing)
    if name == "m2mvpn.1":
        commands = set(re.findall(r"^  m2mvpn ([a-z]+)", usage, re.M))
        assert len(commands) >= 10, usage
        assert not sorted(c for c in commands if not re.search(r"^\.(BI?|BR) \"?%s\b" % c, text, re.M)), commands


@pytest.mark.parametrize("name", sorted(PAGES))
def test_page_version_is_the_tools_version(name):
    version = subprocess.run([PAGES[name], "--version"], capture_output=True, text=True, timeout=10).stdout.split()[1]
    th = [ln for ln in _page(name).read_text().splitlines() if ln.startswith(".TH ")][0]
    assert '"m2mvpn %s"' % version in th, th


@on_host_only
def test_meson_installs_both_pages():
    build = os.environ.get("M2MVPN_BUILD_ROOT")
    if not build:
        pytest.fail("M2MVPN_BUILD_ROOT is not set: run through `meson test`")
    installed = json.loads((Path(build) / "meson-info" / "intro-installed.json").read_text())
    dests = {Path(src).name: dst for src, dst in installed.items()}
    assert dests.get("m2mvpn.1", "").endswith("/man1/m2mvpn.1"), dests
    assert dests.get("m2mvpnd.8", "").endswith("/man8/m2mvpnd.8"), dests
