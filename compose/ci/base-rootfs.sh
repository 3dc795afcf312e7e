#!/usr/bin/env bash
# Build (once) a Debian bookworm root filesystem with Python 3.11 as a tarball, for `docker import`.
# No registry is reachable on CI machines, so this is the local stand-in for python:3.11-slim and the
# upstream bases (vLLM, PyTorch, OpenVINO images). The tarball is cached: reruns take no time.
#   compose/ci/base-rootfs.sh OUT.tar
set -euo pipefail
out=$1
# python3-venv for the service venvs, python3-pip so `python3 -m pip config list` works as in
# python:3.11-slim (services/setup-env.sh asks pip for its find-links folder), libnuma1 for vLLM's CPU
# build, procps so `ps` works in a shell.
pkgs=python3,python3-venv,python3-pip,ca-certificates,libnuma1,procps
[ -s "$out" ] && [ "$(cat "$out.pkgs" 2>/dev/null)" = "$pkgs" ] && { echo "[base] cached: $out"; exit 0; }
command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
work=$(mktemp -d /tmp/modelplat-rootfs.XXXXXX)
trap 'umount -R "$work/root/proc" 2>/dev/null || true; rm -rf "$work"' EXIT
t0=$SECONDS
echo "[base] debootstrap bookworm ($pkgs) from $mirror ..."
debootstrap --variant=minbase --include="$pkgs" bookworm "$work/root" "$mirror" > "$work/log" 2>&1 \
  || { tail -20 "$work/log" >&2; exit 1; }
rm -rf "$work/root/var/lib/apt/lists/"* "$work/root/var/cache/apt/archives/"*.deb
# The classic builder runs RUN steps with /bin/sh; the rootfs must resolve hosts when built with --network host.
: > "$work/root/etc/resolv.conf"
mkdir -p "$(dirname "$out")"
tar -C "$work/root" -cf "$out.tmp" . && mv "$out.tmp" "$out" && echo "$pkgs" > "$out.pkgs"
echo "[base] rootfs ready in $((SECONDS - t0)) s: $out ($(du -h "$out" | cut -f1))"
