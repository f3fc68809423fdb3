#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Install what the ARM cross builds need on a Debian (bookworm) x86-64
# machine: the cross toolchains, the library's -dev packages for arm64 and
# armhf (multiarch: dpkg --add-architecture), and qemu-user to run the unit
# suites. Then check that each cross compiler links against every library and
# that qemu runs the result, and the target's Python for the binding tests
# (see install_python). A missing piece ends the script with one line
# naming it. Only what is missing is installed; needs root (or sudo).
#   scripts/deps-cross.sh [TARGET...]          install, then check
#   scripts/deps-cross.sh --check [TARGET...]  check only
# TARGET: aarch64 and/or armhf (default: both).
set -euo pipefail
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo

check_only=no
if [ "${1:-}" = --check ]; then check_only=yes; shift; fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64 armhf)

fail() {
  echo "deps-cross.sh: $*" >&2
  exit 1
}

# Per target: Debian architecture, GNU triplet, qemu-user program.
declare -A arch=([aarch64]=arm64 [armhf]=armhf)
declare -A triplet=([aarch64]=aarch64-linux-gnu [armhf]=arm-linux-gnueabihf)
declare -A qemu=([aarch64]=qemu-aarch64-static [armhf]=qemu-arm-static)

# The libraries the library, the tools and the unit suites link (see
# meson.build). The optional features are left out of the cross builds:
# libp11-dev is not multiarch (its arm64 package would replace the amd64 one)
# and libtss2-dev:arm64/armhf pulls a libcurl that does not co-install.
# libcurl4-openssl-dev: device-side management (lib/mgmt) compiles against
# the target's curl headers and its tests load the target's libcurl.so.4.
dev_pkgs=(libssl-dev libjson-c-dev libnl-3-dev libnl-route-3-dev check libcurl4-openssl-dev)

pkgs=(meson ninja-build pkg-config qemu-user-static)
for t in "${targets[@]}"; do
  [ -n "${arch[$t]:-}" ] || fail "unknown target '$t' (known: aarch64 armhf)"
  pkgs+=("crossbuild-essential-${arch[$t]}")
  for p in "${dev_pkgs[@]}"; do pkgs+=("$p:${arch[$t]}"); done
done

install_missing() {
  local missing=() p a added=no
  for t in "${targets[@]}"; do
    a=${arch[$t]}
    if ! dpkg --print-foreign-architectures | grep -qx "$a"; then
      $SUDO dpkg --add-architecture "$a"
      added=yes
    fi
  done
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || [ $added = yes ] || return 0
  echo "installing: ${missing[*]:-(architectures only)}"
  # An index that fails to download (a mirror in sync) is reported by apt
  # and left out; what is then missing shows in the install below.
  $SUDO apt-get update -qq || echo "deps-cross.sh: apt-get update reported errors; going on with the indexes it has"
  [ ${#missing[@]} -gt 0 ] || return 0
  # A Multi-Arch: same library (libssl3, ...) must have one version on every
  # architecture. When the installed amd64 one is not the version the foreign
  # architectures have (a security update not yet in every index), apt
  # cannot choose: pin the package that depends and the one it depends on to
  # the foreign version, for amd64 (if installed) and every target.
  local pins=() out deps nv q v a
  for _ in 1 2 3 4 5 6; do
    # --no-remove: a foreign -dev package must never replace a native one.
    out=$(apt-get install -s --no-remove "${missing[@]}" "${pins[@]}" 2>&1) && break
    deps=$(sed -n 's/^ *\([^ :]*\):[a-z0-9]* : Depends: \([^ :]*\):[a-z0-9]* (= \([^)]*\)) but .*/\1 \2 \3/p' <<<"$out" | sort -u)
    [ -n "$deps" ] || { echo "$out" | tail -n 8 >&2; fail "apt-get cannot install: ${missing[*]}"; }
    while read -r nv q v; do
      for p in "$nv" "$q"; do
        dpkg-query -W -f='${Status}' "$p:amd64" 2>/dev/null | grep -q 'install ok installed' && pins+=("$p:amd64=$v")
        for a in "${targets[@]}"; do pins+=("$p:${arch[$a]}=$v"); done
      done
    done <<<"$deps"
    mapfile -t pins < <(printf '%s\n' "${pins[@]}" | sort -u)
  done
  local down=()
  if [ ${#pins[@]} -gt 0 ]; then
    # When a foreign index lags behind (a mirror in sync), this may take the
    # x86-64 package back to the version the other architectures have.
    echo "versions aligned across architectures: ${pins[*]}"
    down=(--allow-downgrades)
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-remove "${down[@]}" "${missing[@]}" "${pins[@]}" >/dev/null ||
    fail "apt-get install failed: ${missing[*]}"
}

# Each target: the compiler and pkg-config (through the cross file's
# pkg_config_libdir) find every library, a program linked against them runs
# under qemu-user, and it is of the target's architecture.
check_target() {
  local t=$1 tr=${triplet[$1]} tmp lib
  command -v "$tr-gcc" >/dev/null || fail "missing $tr-gcc (package crossbuild-essential-${arch[$t]})"
  command -v "${qemu[$t]}" >/dev/null || fail "missing ${qemu[$t]} (package qemu-user-static)"
  tmp=$(mktemp -d)
  export PKG_CONFIG_LIBDIR=/usr/lib/$tr/pkgconfig:/usr/share/pkgconfig
  for lib in 'openssl >= 3.0' json-c libnl-3.0 libnl-route-3.0 check libcurl; do
    pkg-config --exists "$lib" || { rm -rf "$tmp"; fail "$t: missing library '$lib' (its -dev package :${arch[$t]})"; }
  done
  cat >"$tmp/x.c" <<'C'
#include <openssl/evp.h>
#include <json-c/json.h>
#include <netlink/netlink.h>
#include <check.h>
#include <curl/curl.h>
#include <stdio.h>
int main(void)
{
    json_object *o = json_object_new_int(1);
    struct nl_sock *s = nl_socket_alloc();
    curl_version_info_data *c = curl_version_info(CURLVERSION_NOW);
    int ok = o && s && c && c->ssl_version && EVP_get_cipherbyname("aes-128-gcm") &&
             EVP_get_cipherbyname("chacha20-poly1305");
    printf("%s %d\n", ok ? "ok" : "bad", (int)sizeof(void *) * 8);
    return !ok;
}
C
  # shellcheck disable=SC2046
  "$tr-gcc" -o "$tmp/x" "$tmp/x.c" $(pkg-config --cflags --libs 'openssl >= 3.0' json-c libnl-3.0 check libcurl) 2>"$tmp/log" ||
    { cat "$tmp/log" >&2; rm -rf "$tmp"; fail "$t: $tr-gcc cannot link against the -dev packages"; }
  out=$("${qemu[$t]}" "$tmp/x" 2>&1) || { rm -rf "$tmp"; fail "$t: the cross-built program does not run under ${qemu[$t]}: $out"; }
  rm -rf "$tmp"
  unset PKG_CONFIG_LIBDIR
  echo "deps-cross.sh: $t: $tr-gcc links OpenSSL, json-c, libnl, check, libcurl; runs under ${qemu[$t]} ($out-bit)"
}

# The target's Python, for the binding tests of a cross build (meson test
# python-bindings runs them with ctypes of the target, under qemu-user):
# python3:armhf cannot be installed beside the build machine's python3, so
# the interpreter and its standard library are unpacked into
# PYROOT/TRIPLET/root, with PYROOT/TRIPLET/bin/python3 running it under
# qemu-user (named in the cross file). pytest is the build machine's
# python3-pytest (pure Python, the same 3.11).
pyroot=/opt/m2mvpn-cross
install_python() {
  local t=$1 tr=${triplet[$1]} a=${arch[$1]} dir=$pyroot/${triplet[$1]} tmp d
  [ -x "$dir/bin/python3" ] && return 0
  echo "unpacking Python 3.11 for $t into $dir"
  tmp=$(mktemp -d)
  chmod 755 "$tmp"  # apt-get download works as user _apt
  (cd "$tmp" && apt-get download -qq python3.11-minimal:"$a" libpython3.11-minimal:"$a" \
      libpython3.11-stdlib:"$a" libffi8:"$a" zlib1g:"$a" libexpat1:"$a" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  $SUDO rm -rf "$dir.new"
  $SUDO mkdir -p "$dir.new/bin" "$dir.new/root"
  for d in "$tmp"/*.deb; do $SUDO dpkg-deb -x "$d" "$dir.new/root"; done
  rm -rf "$tmp"
  [ -x "$dir.new/root/usr/bin/python3.11" ] || fail "$t: could not unpack python3.11-minimal:$a"
  # -0: the interpreter sees this script as its argv[0], so sys.executable
  # runs under qemu-user too.
  $SUDO tee "$dir.new/bin/python3" >/dev/null <<SH
#!/bin/sh
# Python 3.11 for $tr under qemu-user (made by scripts/deps-cross.sh).
root=$dir/root
export PYTHONHOME=\$root/usr
export PYTHONPATH=\${PYTHONPATH:+\$PYTHONPATH:}/usr/lib/python3/dist-packages
export LD_LIBRARY_PATH=\$root/usr/lib/$tr:\$root/lib/$tr\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
exec ${qemu[$t]} -0 "\$0" "\$root/usr/bin/python3.11" "\$@"
SH
  $SUDO chmod 755 "$dir.new/bin/python3"
  $SUDO mv "$dir.new" "$dir"
}

check_python() {
  local t=$1 py=$pyroot/${triplet[$1]}/bin/python3 out
  out=$("$py" -c 'import ctypes, platform, pytest; print(platform.machine(), 8 * ctypes.sizeof(ctypes.c_void_p))' 2>&1) ||
    fail "$t: the target's Python ($py) does not run or lacks ctypes/pytest: $out"
  echo "deps-cross.sh: $t: Python 3.11 of the target runs under ${qemu[$t]} ($out)"
}

if [ $check_only = no ]; then
  install_missing
  for t in "${targets[@]}"; do install_python "$t"; done
fi
for t in "${targets[@]}"; do check_target "$t"; check_python "$t"; done
