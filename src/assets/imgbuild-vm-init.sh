#!/bin/sh
# imgbuild-vm-init: PID 1 of a node booted as a VM from imgbuild's disk (init=/usr/local/sbin/imgbuild-vm-init).
#
# The initramfs has mounted the root file system and moved /proc, /sys, /dev and /run into it.
# This mounts the NoCloud seed if there is one (saying why not, when it cannot), hands over to
# the same entrypoint containers run (which reads imgbuild.node=N from the kernel command line
# or the seed's meta-data), shows what it rendered on the console, and powers the VM off when
# the services end.
# Kernel command line: imgbuild.node=N, imgbuild.render_only=1 (render, show, power off).
set -u

say() { printf 'imgbuild-vm: %s\n' "$*" >/dev/console 2>/dev/null || printf 'imgbuild-vm: %s\n' "$*"; }

[ -r /proc/cmdline ] || mount -t proc proc /proc 2>/dev/null
# shellcheck disable=SC2013 # the command line is words, not lines
for word in $(cat /proc/cmdline); do
    case $word in
        --) break ;; # the rest is for init, not the kernel
        imgbuild.render_only=1) IMGBUILD_RENDER_ONLY=1 && export IMGBUILD_RENDER_ONLY ;;
    esac
done

# Mounts the seed on $1, or says why it cannot be read.
mount_seed() {
    if ! command -v mount >/dev/null 2>&1; then
        say "cannot read the NoCloud seed: this disk has no mount command (the base image needs util-linux's mount)"
        return 1
    fi
    # The seed is an ISO 9660 volume; its driver is a module on most distribution kernels.
    if command -v modprobe >/dev/null 2>&1; then modprobe -q isofs 2>/dev/null || true; fi
    found=
    for dev in /dev/disk/by-label/cidata /dev/disk/by-label/CIDATA /dev/sr0 /dev/vdb; do
        [ -b "$dev" ] || continue
        found=$dev
        if error=$(mount -o ro "$dev" "$1" 2>&1); then
            say "NoCloud seed from $dev"
            return 0
        fi
    done
    if [ -z "$found" ]; then
        say "no NoCloud seed: no device /dev/sr0, /dev/vdb or labelled cidata"
    elif ! grep -qw iso9660 /proc/filesystems 2>/dev/null; then
        say "cannot read the NoCloud seed on $found: the kernel has no iso9660 driver (the base image needs this kernel's isofs module, lib/modules/$(uname -r)/kernel/fs/isofs, or a kernel with it built in)"
    else
        say "cannot mount the NoCloud seed on $found: $error"
    fi
    return 1
}

seed=/run/imgbuild/cidata
mkdir -p "$seed"
mount_seed "$seed"

/usr/local/bin/imgbuild-init
status=$?
if [ "$status" -eq 0 ]; then
    # shellcheck disable=SC1091 # written by imgbuild into the cluster layer
    . /etc/imgbuild/cluster.env
    for target in $IMGBUILD_TEMPLATES; do
        say "rendered $target:"
        sed 's/^/imgbuild-vm:   /' "$target" >/dev/console 2>/dev/null || sed 's/^/imgbuild-vm:   /' "$target"
    done
else
    # What is on the disk is an earlier boot's, if anything: never show it as this boot's.
    say "not showing the configuration: the entrypoint failed, and what the disk holds may be an earlier boot's"
fi
say "entrypoint exited with status $status; powering off"
sync
echo o >/proc/sysrq-trigger
sleep 10
