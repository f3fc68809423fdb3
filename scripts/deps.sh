#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Install the Debian (bookworm) packages the build, the tests, the demo and the
# benchmarks need, then check that what they rely on works: the tools are
# there and every strongSwan plugin the tests load does load in a throwaway
# charon. A missing piece ends the script with one line naming it.
# Only what is missing is installed; needs root (or sudo).
#   scripts/deps.sh            install, then check
#   scripts/deps.sh --check    check only
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo

# Named one by one: --no-install-recommends leaves out what is only
# recommended (the openssl, gcm and eap-mschapv2 plugins once were).
pkgs=(
  build-essential meson ninja-build pkg-config clang g++
  libssl-dev libjson-c-dev libnl-3-dev libnl-route-3-dev libp11-dev libp11-kit-dev libtss2-dev check
  libnftables-dev
  libevent-dev libsqlite3-dev libpq-dev libcurl4-openssl-dev postgresql
  chromium
  strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins
  libstrongswan-standard-plugins libcharon-extauth-plugins
  softhsm2 opensc swtpm swtpm-tools tpm2-tools tpm2-openssl
  iproute2 nftables iperf3 tcpdump iputils-ping openssl util-linux
  python3 python3-pytest python3-venv python3-pip python3-setuptools
  groff-base man-db passwd
)

fail() {
  echo "deps.sh: $*" >&2
  exit 1
}

install_missing() {
  local missing=() p
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# Commands the tests, the demo and the benchmarks run (and the package that has them).
check_tools() {
  local entry tool pkg
  for entry in meson:meson ninja:ninja-build pkg-config:pkg-config cc:build-essential clang:clang \
      openssl:openssl ip:iproute2 nft:nftables tcpdump:tcpdump iperf3:iperf3 ping:iputils-ping \
      unshare:util-linux nsenter:util-linux swanctl:strongswan-swanctl \
      softhsm2-util:softhsm2 pkcs11-tool:opensc swtpm:swtpm swtpm_setup:swtpm-tools \
      tpm2_startup:tpm2-tools tpm2_createprimary:tpm2-tools /usr/bin/python3:python3 \
      groff:groff-base man:man-db groupadd:passwd setpriv:util-linux strip:binutils chromium:chromium; do
    tool=${entry%%:*} pkg=${entry#*:}
    command -v "$tool" >/dev/null || fail "missing command '$tool' (package $pkg)"
  done
  [ -x /usr/lib/ipsec/charon ] || fail "missing /usr/lib/ipsec/charon (package strongswan-charon)"
  # the fleet page test renders it in headless Chromium (DOM dump and screenshot)
  local prof rendered
  prof=$(mktemp -d)
  rendered=$(timeout 60 chromium --headless --no-sandbox --disable-gpu --user-data-dir="$prof" \
      --dump-dom 'data:text/html,<p id=ok>ok</p>' 2>/dev/null || true)
  rm -rf "$prof"
  grep -q 'id="ok"' <<<"$rendered" || fail "headless chromium cannot render a page (package chromium)"
  # the management server's tests start their own PostgreSQL (initdb, pg_ctl)
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || fail "missing PostgreSQL's initdb (package postgresql)"
  /usr/bin/python3 -c 'import pytest' 2>/dev/null || fail "/usr/bin/python3 cannot import pytest (package python3-pytest)"
  /usr/bin/python3 -c 'import venv, ensurepip, setuptools' 2>/dev/null ||
    fail "/usr/bin/python3 cannot make a venv with pip and setuptools (packages python3-venv python3-pip python3-setuptools)"
  for entry in 'openssl >= 3.0':libssl-dev json-c:libjson-c-dev libnl-3.0:libnl-3-dev \
      libnl-route-3.0:libnl-route-3-dev check:check libp11:libp11-dev tss2-esys:libtss2-dev \
      libnftables:libnftables-dev libevent:libevent-dev libevent_openssl:libevent-dev sqlite3:libsqlite3-dev \
      libpq:libpq-dev libcurl:libcurl4-openssl-dev; do
    pkg-config --exists "${entry%%:*}" || fail "missing library '${entry%%:*}' for pkg-config (package ${entry#*:})"
  done
}

# Every plugin the interop tests load (tests/interop/charon.py PLUGINS), plus
# eap-md5 for the EAP-MD5 tests, must load in a charon started the way the
# tests start it: own network and mount namespace, private /run, only these
# plugins. Bounded: charon gets 10 s to list what it loaded.
check_plugins() {
  local want tmp pid loaded missing=() p why
  want=$(/usr/bin/python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import charon; print(charon.PLUGINS)' \
           "$here/tests/interop") || fail "cannot read the plugin list from tests/interop/charon.py"
  want="$want eap-md5"
  tmp=$(mktemp -d)
  cat >"$tmp/strongswan.conf" <<EOF
charon {
  load = $want
  filelog {
    check {
      path = $tmp/charon.log
      default = 1
      flush_line = yes
    }
  }
  plugins {
    kernel-libipsec {
      load = yes
    }
  }
}
EOF
  $SUDO unshare -n -m --propagation private sh -c \
    'mount -t tmpfs none /run && exec env STRONGSWAN_CONF="$1" /usr/lib/ipsec/charon' sh "$tmp/strongswan.conf" \
    >"$tmp/charon.out" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    grep -q 'loaded plugins:' "$tmp/charon.log" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  loaded=$(sed -n 's/.*loaded plugins: //p' "$tmp/charon.log" 2>/dev/null | head -n 1)
  $SUDO kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if [ -z "$loaded" ]; then
    why=$(tail -n 1 "$tmp/charon.log" "$tmp/charon.out" 2>/dev/null | grep -v '^==>' | grep . | tail -n 1 || true)
    rm -rf "$tmp"
    fail "a throwaway charon did not start within 10 s: ${why:-no output}"
  fi
  for p in $want; do
    [[ " $loaded " == *" $p "* ]] || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    why=$(grep -F "plugin '${missing[0]}'" "$tmp/charon.log" | head -n 1 | sed 's/^.*\] //' || true)
    rm -rf "$tmp"
    fail "strongSwan plugin(s) the tests use do not load: ${missing[*]}${why:+ (charon: $why)}"
  fi
  rm -rf "$tmp"
}

[ "${1:-}" = --check ] || install_missing
# charon must not run as a system service: tests start their own instances.
if command -v systemctl >/dev/null && systemctl is-active --quiet strongswan-starter 2>/dev/null; then
  systemctl stop strongswan-starter || true
fi
check_tools
check_plugins
echo "deps.sh: all packages, tools and strongSwan plugins the tests use are there"
