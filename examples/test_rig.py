#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A test-rig script: bring a device's tunnel up, check it carries traffic,
take it down. What a rig author writes with the Python binding:

    python3 examples/test_rig.py atm.json --ping 198.18.0.1

Needs root (the tunnel is a TUN device with routes) and libm2mvpn: installed,
or $M2MVPN_LIB pointing at it; the binding from `pip install bindings/python`
or on PYTHONPATH. Exit status 0 when every step passed, 1 otherwise; the
last line says which step failed and why.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import m2mvpn


def log(level: m2mvpn.LogLevel, subsystem: str, message: str) -> None:
    print(f"  log {level.name.lower()} [{subsystem}] {message}", file=sys.stderr, flush=True)


def ping(address: str, count: int) -> bool:
    """The system's ping through the tunnel (its route sends it there)."""
    p = subprocess.run(["ping", "-n", "-q", "-c", str(count), "-W", "2", address],
                       capture_output=True, text=True)
    return p.returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", help="profile file (docs/profile.md)")
    ap.add_argument("--name", help="profile to use when the file holds several")
    ap.add_argument("--ping", metavar="ADDRESS", help="an address behind the gateway that must answer")
    ap.add_argument("--count", type=int, default=3, help="pings to send (default 3)")
    ap.add_argument("--timeout", type=float, default=20, help="seconds to wait for the tunnel (default 20)")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the library's log lines")
    args = ap.parse_args()

    with m2mvpn.Client(log=log if args.verbose else None, log_level=m2mvpn.LogLevel.DEBUG) as c:
        c.load_profile(args.profile)
        if args.name:
            c.switch_profile(args.name)
        c.connect()
        try:
            st = c.wait_for_state("connected", timeout=args.timeout)
        except m2mvpn.StateTimeout as e:
            print(f"FAIL connect: {e}")
            return 1
        print(f"connected to {st['gateway']} as {st['virtual_ip']} "
              f"(IKE {st['algorithms']['ike']}, ESP {st['algorithms']['esp']})")
        if args.ping:
            if not ping(args.ping, args.count):
                print(f"FAIL ping: {args.ping} did not answer through the tunnel")
                return 1
            counters = c.status()["counters"]
            print(f"ping {args.ping}: answered; tunnel counted {counters['packets_out']} packets out, "
                  f"{counters['packets_in']} in")
        c.disconnect()
        try:
            c.wait_for_state("idle", timeout=10)
        except m2mvpn.StateTimeout as e:
            print(f"FAIL disconnect: {e}")
            return 1
        events = [f"{ev.name}:{ev.state_name}" + (f":{ev.error_name}" if ev.error else "") for ev in c.events()]
        print("events: " + json.dumps(events))
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
