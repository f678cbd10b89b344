#!/usr/bin/env bash
# Installs the Debian packages bronze's test suite and benchmarks need (real peers: DHCP, TFTP,
# IPMI, QEMU firmware, PostgreSQL tooling; curl and openssl for the README tour). Idempotent and
# quiet when everything is present.
set -euo pipefail
PKGS=(qemu-system-x86 ipxe ipxe-qemu ovmf dnsmasq tftpd-hpa tftp-hpa ipmitool openipmi
      freeipmi-tools kea-admin busybox isc-dhcp-client docker-compose curl iproute2 procps
      postgresql postgresql-client wrk gcc libc6-dev nginx-light
      grub-common grub2-common grub-pc-bin grub-efi-amd64-bin grub-emu fdisk gdisk e2fsprogs
      dosfstools mtools udev openssl
      debootstrap cpio zstd xz-utils kmod binutils
      libvirt-daemon-system libvirt-clients python3-libvirt qemu-utils python3-venv
      chromium)
# `bronze lab` (docs/lab.md): libvirtd + virtlogd (run by the lab inside its namespace, never as
# host services), virsh, Debian's libvirt bindings for sushy-emulator's libvirt driver (its venv
# is made from /usr/bin/python3 with --system-site-packages), qemu-img for the VM disks.
# chromium: the console's browser tests (Playwright for Python drives /usr/bin/chromium; the
# suite never runs `playwright install`, which would download a browser build of its own).
# The image builder (`bronze images build`): debootstrap, cpio, zstd/xz, kmod (depmod), binutils
# (strip). Debian's kernel and busybox-static go into the image's root, never onto this host
# (busybox-static conflicts with the busybox package above): debootstrap --include and
# apt-get download fetch them into the build cache.
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
# NOTE: dnsmasq, tftpd-hpa and nginx start daemons bound to every address from their postinst scripts.
# A policy-rc.d that answers 101 keeps them stopped; the tests start their own, bound to loopback.
policy=/usr/sbin/policy-rc.d
restore=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null; $SUDO chmod +x "$policy"; restore=1
fi
trap '[ -n "$restore" ] && $SUDO rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
