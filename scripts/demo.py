#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""The demo: our client against a real strongSwan gateway, in two network
namespaces made for the occasion (198.51.100.0/24 underlay, 198.18.0.0/24
behind the gateway). Shows the profile, connects with the m2mvpn CLI, prints
the status, pings through the tunnel, disconnects and cleans up. Needs root.

    sudo bash scripts/demo.sh            (builds first)
"""

import json
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "interop"))
import charon as charonmod  # noqa: E402
import m2mvpn_client  # noqa: E402
import netlab  # noqa: E402
import pki as pkimod  # noqa: E402


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> int:
    cli = ROOT / sys.argv[1] if len(sys.argv) > 1 else ROOT / "build" / "tools" / "m2mvpn"
    netlab.require_root()
    work = pathlib.Path(tempfile.mkdtemp(prefix="m2mvpn-demo-"))
    step("making a test PKI and two namespaces (client, gateway)")
    pki = pkimod.generate(work / "pki")
    with netlab.direct() as topo:
        gw = charonmod.Charon(topo.gateway, work / "gw", charonmod.gateway_config(pki, conns=["ecdsa"]),
                              name="gw")
        gw.start()
        engine = None
        try:
            prof = m2mvpn_client.make_profile(pki, "ecdsa", netlab.GW_ADDR, name="demo-atm")
            pf = work / "demo-atm.json"
            pf.write_text(json.dumps(prof, indent=2))
            step(f"the profile ({pf.name}): ECDSA certificate, gateway {netlab.GW_ADDR}")
            print(pf.read_text())
            sock = work / "control.sock"
            step("m2mvpn run --profile demo-atm.json   (the service, in the client namespace)")
            engine = topo.client.popen([str(cli), "run", "--profile", str(pf), "--control", str(sock)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

            def ctl(*args: str) -> subprocess.CompletedProcess:
                return topo.client.run(str(cli), *args, "--control", str(sock), check=False)

            for _ in range(50):
                if sock.exists():
                    break
                time.sleep(0.1)
            step("m2mvpn connect")
            r = ctl("connect")
            print(r.stdout + r.stderr, end="")
            status = {}
            for _ in range(100):
                status = json.loads(ctl("status", "--json").stdout or "{}")
                if status.get("state") in ("connected", "idle") and status.get("state") != "connecting":
                    if status["state"] == "connected" or status["last_error"]["code"]:
                        break
                time.sleep(0.1)
            step("m2mvpn status")
            print(ctl("status").stdout, end="")
            if status.get("state") != "connected":
                print("demo: the tunnel did not come up:", status.get("last_error"), file=sys.stderr)
                return 1
            step(f"ping {netlab.PROTECTED_ADDRS[0]} (behind the gateway) through the tunnel")
            got = netlab.ping(topo.client, netlab.PROTECTED_ADDRS[0], count=3, size=100)
            print(f"{got} of 3 answered")
            step("the gateway's view (swanctl --list-sas)")
            print(gw.swanctl("--list-sas").stdout)
            step("m2mvpn disconnect")
            print(ctl("disconnect").stderr, end="")
            time.sleep(0.5)
            print(ctl("status").stdout, end="")
            return 0 if got == 3 else 1
        finally:
            if engine:
                engine.terminate()
                engine.wait(timeout=10)
            gw.stop()


if __name__ == "__main__":
    sys.exit(main())
