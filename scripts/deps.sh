#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Install the Debian (bookworm) packages the build, the tests and the demo need.
# Only what is missing is installed; needs root (or sudo).
set -euo pipefail
pkgs=(
  build-essential meson ninja-build pkg-config clang g++
  libssl-dev libjson-c-dev libnl-3-dev libnl-route-3-dev libp11-dev libp11-kit-dev libtss2-dev check
  strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins
  libstrongswan-standard-plugins libcharon-extauth-plugins
  softhsm2 swtpm swtpm-tools tpm2-tools tpm2-openssl opensc
  iproute2 nftables iperf3 tcpdump iputils-ping openssl
  python3 python3-pytest
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# charon must not run as a system service: tests start their own instances.
if command -v systemctl >/dev/null && systemctl is-active --quiet strongswan-starter 2>/dev/null; then
  systemctl stop strongswan-starter || true
fi
