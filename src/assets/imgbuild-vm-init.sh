#!/bin/sh
# imgbuild-vm-init: PID 1 of a node booted as a VM from imgbuild's disk (init=/usr/local/sbin/imgbuild-vm-init).
#
# The initramfs has mounted the root file system and moved /proc, /sys, /dev and /run into it.
# This mounts the NoCloud seed if there is one, hands over to the same entrypoint containers
# run (which reads imgbuild.node=N from the kernel command line or the seed's meta-data), shows
# what it rendered on the console, and powers the VM off when the services end.
# Kernel command line: imgbuild.node=N, imgbuild.render_only=1 (render, show, power off).
set -u

say() { printf 'imgbuild-vm: %s\n' "$*" >/dev/console 2>/dev/null || printf 'imgbuild-vm: %s\n' "$*"; }

[ -r /proc/cmdline ] || mount -t proc proc /proc 2>/dev/null
# shellcheck disable=SC2013 # the command line is words, not lines
for word in $(cat /proc/cmdline); do
    case $word in imgbuild.render_only=1) IMGBUILD_RENDER_ONLY=1 && export IMGBUILD_RENDER_ONLY ;; esac
done

seed=/run/imgbuild/cidata
mkdir -p "$seed"
# The seed is an ISO 9660 volume; its driver is a module on most distribution kernels.
if command -v modprobe >/dev/null 2>&1; then modprobe -q isofs 2>/dev/null || true; fi
for dev in /dev/disk/by-label/cidata /dev/disk/by-label/CIDATA /dev/sr0 /dev/vdb; do
    if [ -b "$dev" ] && mount -o ro "$dev" "$seed" 2>/dev/null; then
        say "NoCloud seed from $dev"
        break
    fi
done

/usr/local/bin/imgbuild-init
status=$?
# shellcheck disable=SC1091 # written by imgbuild into the cluster layer
. /etc/imgbuild/cluster.env
for target in $IMGBUILD_TEMPLATES; do
    say "rendered $target:"
    sed 's/^/imgbuild-vm:   /' "$target" >/dev/console 2>/dev/null || sed 's/^/imgbuild-vm:   /' "$target"
done
say "entrypoint exited with status $status; powering off"
sync
echo o >/proc/sysrq-trigger
sleep 10
