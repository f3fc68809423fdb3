# SPDX-License-Identifier: Apache-2.0
"""The store and m2mvpn-mgmtd on a real PostgreSQL the test starts itself
(initdb + pg_ctl in a temp folder, as the unprivileged user "nobody"):
the store's Check suite again, then two server instances on one database."""
import glob
import json
import os
import re
import shutil
import socket
import subprocess

import pytest

from mgmt_helpers import TEMPLATE, TEST_STORE, Mgmtd, admin_json, make_config
from test_mgmt_server import cmp_ir, newkey


def pg_bin():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres(workdir):
    bindir = pg_bin()
    if not bindir:
        pytest.skip("PostgreSQL server binaries missing (apt-get install postgresql)")
    if os.geteuid() == 0:
        run_as = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
    else:
        run_as = []
    data = os.path.join(workdir, "pg")
    os.mkdir(data, 0o700)
    if run_as:
        shutil.chown(data, "nobody", "nogroup")
    subprocess.run(run_as + [f"{bindir}/initdb", "-D", data, "-U", "m2m", "-A", "trust", "--no-sync"],
                   check=True, capture_output=True, timeout=120)
    port = free_port()
    opts = f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off"
    subprocess.run(run_as + [f"{bindir}/pg_ctl", "-D", data, "-o", opts, "-l", f"{data}/log", "-w", "-t", "60",
                             "start"], check=True, capture_output=True, timeout=120)
    try:
        yield f"postgresql://m2m@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(run_as + [f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)


def test_store_suite_on_postgres(postgres):
    assert TEST_STORE, "run through meson (M2MVPN_TEST_STORE)"
    r = subprocess.run([TEST_STORE], env=dict(os.environ, M2MVPN_TEST_DATABASE=postgres),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "100%" in r.stdout, r.stdout + r.stderr


def test_two_instances_one_database(pki, postgres):
    d = pki
    # both start at once: the migrations must not race (advisory lock)
    a_cfg = make_config(d, postgres, name="a.json")
    b_cfg = make_config(d, postgres, name="b.json")
    a = b = None
    try:
        a = Mgmtd(d, a_cfg, "a", wait=False)
        b = Mgmtd(d, b_cfg, "b", wait=False)
        a.wait_ready()
        b.wait_ready()
        # both on the same, latest schema (the migrations ran once): 3 = day 0, day N, certificates
        va = re.search(r"store postgresql schema (\d+)", a.text())
        vb = re.search(r"store postgresql schema (\d+)", b.text())
        assert va and vb and va.group(1) == vb.group(1) == "3", a.text() + b.text()
        with open(os.path.join(d, "tpl.json"), "w") as f:
            json.dump(TEMPLATE, f)
        admin_json(d, a, "group", "create", "pg", "--template", os.path.join(d, "tpl.json"))
        tok = admin_json(d, a, "token", "create", "--group", "pg")["tokens"][0]["token"]
        # the token made through A enrols through B
        key = newkey(d, "pg1.key")
        rc, out = cmp_ir(d, b, tok, key, os.path.join(d, "pg1.pem"))
        assert rc != 0
        devs = admin_json(d, a, "device", "list")["devices"]
        assert len(devs) == 1 and devs[0]["state"] == "pending", devs
        assert admin_json(d, b, "device", "approve", devs[0]["id"])["state"] == "approved"
        rc, out = cmp_ir(d, a, tok, key, os.path.join(d, "pg1.pem"))
        assert rc == 0, out
        assert admin_json(d, b, "device", "list")["devices"][0]["state"] == "enrolled"
        # publishing through both bumps one version in SQL
        assert admin_json(d, a, "profile", "publish", "--group", "pg")["version"] == 1
        assert admin_json(d, b, "profile", "publish", "--group", "pg")["version"] == 2
    finally:
        for s in (a, b):
            if s:
                s.stop()


def test_dayn_rollout_across_instances(pki, postgres):
    """Day N on two instances of one database: a poll through one, feedback
    through the other; the rollout state lives in SQL only."""
    from test_dayn import Device, deployment
    d = pki
    a = b = None
    try:
        a = Mgmtd(d, make_config(d, postgres, name="a.json"), "a")
        b = Mgmtd(d, make_config(d, postgres, name="b.json"), "b")
        with open(os.path.join(d, "tpl.json"), "w") as f:
            json.dump(TEMPLATE, f)
        admin_json(d, a, "group", "create", "pg", "--template", os.path.join(d, "tpl.json"))
        toks = admin_json(d, a, "token", "create", "--group", "pg", "--count", "4", "--auto-approve")["tokens"]
        devs = [Device(d, a if i % 2 else b, t["token"], f"pg-{i}") for i, t in enumerate(toks)]
        pub = admin_json(d, a, "profile", "publish", "--group", "pg", "--percent", "50")
        assert pub["first_wave"] == 2
        for x in devs:
            x.srv = b
        first = [x for x in devs if x.open_ids() == [pub["id"]]]
        assert len(first) == 2
        for x in first:
            x.srv = a
            x.feedback(pub["id"], "success")
        for x in devs:
            x.srv = b if x in first else a
        rest = [x for x in devs if x not in first]
        assert all(x.open_ids() == [pub["id"]] for x in rest)
        for x in rest:
            assert x.bundle(pub["id"])["version"] == 1
            x.feedback(pub["id"], "success")
        assert deployment(d, b, pub["id"])["state"] == "done"
        # ids come from one SQL counter: publishing through both never collides
        ids = {admin_json(d, s, "profile", "publish", "--group", "pg")["id"] for s in (a, b, a, b)}
        assert len(ids) == 4
    finally:
        for s in (a, b):
            if s:
                s.stop()
