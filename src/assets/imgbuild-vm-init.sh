#!/bin/sh
# imgbuild-vm-init: PID 1 of a node booted as a VM from imgbuild's disk (init=/usr/local/sbin/imgbuild-vm-init).
#
# The initramfs has mounted the root file system and moved /proc, /sys, /dev and /run into it.
# This reads the NoCloud seed from its raw device (no mount, no ISO 9660 driver: the seed's
# system area holds meta-data and network-config as text), gives the node its host name and
# its addresses from network-config (with `ip`, iproute2's or busybox's), and runs the node's
# process as a container engine runs the image: the Env, WorkingDir, User, Entrypoint and Cmd
# of the image config, which imgbuild wrote to /etc/imgbuild/vm-process (read line by line;
# nothing in it is run as shell). Ctrl-Alt-Del (SIGINT) or SIGTERM stops the process with the
# config's stop signal; when it ends, the disk is synced and made read-only, and the VM powers off.
# Kernel command line: imgbuild.node=N (read by the entrypoint), imgbuild.render_only=1
# (render, show, power off).
set -u
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

say() { printf 'imgbuild-vm: %s\n' "$*" >/dev/console 2>/dev/null || printf 'imgbuild-vm: %s\n' "$*"; }

SEED=/run/imgbuild/cidata
PROCESS=/etc/imgbuild/vm-process
NET=/sys/class/net
GRACE=30

read_cmdline() {
    [ -r /proc/cmdline ] || mount -t proc proc /proc 2>/dev/null
    IFS= read -r cmdline </proc/cmdline || true
    set -f
    # shellcheck disable=SC2086 # the command line is words
    set -- $cmdline
    set +f
    for word in "$@"; do
        case $word in
            --) break ;; # the rest is for init, not the kernel
            imgbuild.render_only=1) IMGBUILD_RENDER_ONLY=1 && export IMGBUILD_RENDER_ONLY ;;
        esac
    done
}

# Copies the files framed in a seed's system area (standard input, read from the raw device)
# into $SEED; fails if the device holds no imgbuild seed.
read_seed_from() {
    IFS= read -r magic || return 1
    [ "$magic" = "imgbuild-seed 1" ] || return 1
    file=
    while IFS= read -r line; do
        if [ -n "$file" ]; then
            case $line in
                "imgbuild-seed eof") file= ;;
                *) printf '%s\n' "$line" >>"$file" ;;
            esac
            continue
        fi
        case $line in
            "file meta-data" | "file network-config") file=$SEED/${line#file } && : >"$file" ;;
            *) break ;; # "imgbuild-seed end"
        esac
    done
}

read_seed() {
    mkdir -p "$SEED" 2>/dev/null
    for dev in /dev/sr0 /dev/sr1 /dev/vdb /dev/vdc; do
        [ -b "$dev" ] || continue
        # shellcheck disable=SC2094 # the device is read only; the function writes under $SEED
        if read_seed_from "$dev" <"$dev" 2>/dev/null; then
            say "NoCloud seed from $dev"
            return 0
        fi
    done
    say "no NoCloud seed: no device /dev/sr0, /dev/vdb with imgbuild's seed"
    return 1
}

unquote() {
    REPLY=${1#\"}
    REPLY=${REPLY%\"}
}

ip_tool() {
    if command -v ip >/dev/null 2>&1; then
        ip "$@"
    elif command -v busybox >/dev/null 2>&1; then
        busybox ip "$@"
    else
        say "cannot configure the network: the base image has no ip command (package iproute2, or busybox)"
        return 127
    fi
}

# Gives the interface with MAC $1 the addresses $2 (words).
configure_interface() {
    [ -n "$1" ] || return 0
    case $1 in *[!0-9a-f:]*) say "network-config: '$1' is not a MAC address" && return 1 ;; esac
    iface=
    for dir in "$NET"/*; do
        IFS= read -r address <"$dir/address" 2>/dev/null || continue
        [ "$address" = "$1" ] && iface=${dir##*/}
    done
    if [ -z "$iface" ]; then
        say "network-config: no interface has the MAC address $1"
        return 1
    fi
    ip_tool link set dev "$iface" up || return 1
    for address in $2; do
        case $address in *[!0-9./]*) say "network-config: '$address' is not an IPv4 address/prefix" && return 1 ;; esac
        ip_tool addr add "$address" dev "$iface" || return 1
    done
    say "network: $iface ($1) $2"
}

# Applies $SEED/network-config as imgbuild writes it (version 2: per interface, a match on
# macaddress and a list of static addresses).
configure_network() {
    ip_tool link set dev lo up || return 1
    if [ ! -r "$SEED/network-config" ]; then
        say "no network-config in the seed: no addresses configured"
        return 1
    fi
    mac='' addresses=''
    while IFS= read -r line; do
        case $line in
            "  "[!\ ]*:)
                configure_interface "$mac" "$addresses"
                mac='' addresses=''
                ;;
            *"macaddress: "*) unquote "${line#*macaddress: }" && mac=$REPLY ;;
            "      - "*) unquote "${line#*- }" && addresses="$addresses $REPLY" ;;
        esac
    done <"$SEED/network-config"
    configure_interface "$mac" "$addresses"
}

set_hostname() {
    [ -r "$SEED/meta-data" ] || return 0
    while IFS= read -r line; do
        case $line in "local-hostname: "*) unquote "${line#local-hostname: }" && name=$REPLY ;; esac
    done <"$SEED/meta-data"
    case ${name:-} in '' | *[!A-Za-z0-9.-]*) return 0 ;; esac
    printf '%s\n' "$name" >/proc/sys/kernel/hostname 2>/dev/null
}

# The node's process, from $PROCESS: exports its environment, sets user, workdir and stop.
read_process() {
    user='' workdir=/ stop=TERM
    while IFS= read -r line; do
        case $line in
            "user "*) user=${line#user } ;;
            "workdir "*) workdir=${line#workdir } ;;
            "stop "*) stop=${line#stop } ;;
            "env "*)
                kv=${line#env }
                case ${kv%%=*} in
                    '' | [!A-Za-z_]* | *[!A-Za-z0-9_]*) say "not a variable name: ${kv%%=*}" ;;
                    *)
                        # shellcheck disable=SC2163 # NAME=VALUE as one word: assigned, never evaluated
                        export "$kv"
                        ;;
                esac
                ;;
        esac
    done <"$PROCESS"
}

# The group of user $1 (a name or uid) from /etc/passwd, else 0, in REPLY.
primary_group() {
    REPLY=0
    [ -r /etc/passwd ] || return 0
    while IFS=: read -r pname _ puid pgid _; do
        if [ "$pname" = "$1" ] || [ "$puid" = "$1" ]; then
            REPLY=$pgid
            return 0
        fi
    done </etc/passwd
}

# Starts the node's process (the arg lines of $PROCESS) as $user in $workdir, in the
# background; its process id in child.
start_process() {
    set --
    while IFS= read -r line; do
        case $line in "arg "*) set -- "$@" "${line#arg }" ;; esac
    done <"$PROCESS"
    # A shell starts a background process with SIGINT and SIGQUIT ignored, which no trap can
    # undo: where the stop signal is one of them, coreutils' env gives it back its default.
    case $stop in
        INT | QUIT | 2 | 3)
            if env --default-signal=INT true 2>/dev/null; then
                set -- env --default-signal=INT,QUIT -- "$@"
            else
                say "the stop signal SIG$stop will not reach the node: this base's env has no --default-signal (coreutils 8.31 or later)"
            fi
            ;;
    esac
    case $user in
        '' | root | 0 | 0:0 | root:root) ;;
        *)
            uid=${user%%:*} gid=''
            case $user in *:*) gid=${user#*:} ;; esac
            [ -n "$gid" ] || { primary_group "$uid" && gid=$REPLY; }
            set -- setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"
            ;;
    esac
    mkdir -p "$workdir" 2>/dev/null
    cd "$workdir" || say "cannot enter the working directory $workdir"
    "$@" &
    child=$!
}

# Sends the stop signal to the node's process, and SIGKILL after $GRACE seconds (as a container
# engine does after its grace period): a process that ignores it cannot keep the disk unsynced.
stop_node() {
    [ -z "$stopping" ] || return 0
    stopping=1
    say "stopping the node: SIG$stop to its process (SIGKILL after $GRACE s)"
    kill -s "$stop" "$child" 2>/dev/null
    (
        sleep "$GRACE"
        kill -0 "$child" 2>/dev/null && say "the node did not stop in $GRACE s: SIGKILL" && kill -KILL "$child"
    ) &
}

# Waits for the node's process to end, stopping it on SIGINT or SIGTERM; its exit status in status.
wait_process() {
    stopping=''
    trap stop_node INT TERM
    while :; do
        wait "$child"
        status=$?
        # A trapped signal interrupts wait (a status above 128) while the process still runs.
        kill -0 "$child" 2>/dev/null || break
    done
}

# Syncs, makes every file system read-only and powers off; never returns.
power_off() {
    sync 2>/dev/null || echo s >/proc/sysrq-trigger
    if ! mount -o remount,ro / 2>/dev/null; then
        echo u >/proc/sysrq-trigger # emergency remount: every file system read-only
    fi
    tries=0
    while [ "$tries" -lt 20 ]; do
        ro=
        while read -r _ point _ options _; do
            [ "$point" = / ] && case ,$options, in *,ro,*) ro=1 ;; esac
        done </proc/mounts
        [ -n "$ro" ] && break
        sleep 0.5 2>/dev/null || sleep 1
        tries=$((tries + 1))
    done
    state="still writable"
    [ -z "$ro" ] || state=read-only
    say "root file system $state; powering off"
    echo o >/proc/sysrq-trigger
    sleep 10
}

# Tests source this file with IMGBUILD_VM_INIT_FUNCTIONS=1 to run the functions alone.
if [ "${IMGBUILD_VM_INIT_FUNCTIONS:-0}" = 1 ]; then return 0; fi

read_cmdline
# Ctrl-Alt-Del (qemu's sendkey, libvirt's send-key) reaches this init as SIGINT instead of a reboot.
echo 0 >/proc/sys/kernel/ctrl-alt-del 2>/dev/null
read_seed && set_hostname
configure_network
if [ ! -r "$PROCESS" ]; then
    say "no $PROCESS: this disk was not written by imgbuild vm; powering off"
    power_off
fi
read_process
start_process
wait_process

if [ "$status" -eq 0 ] && [ "${IMGBUILD_RENDER_ONLY:-0}" = 1 ]; then
    # shellcheck disable=SC1091 # written by imgbuild into the cluster layer
    . /etc/imgbuild/cluster.env
    for target in $IMGBUILD_TEMPLATES; do
        say "rendered $target:"
        sed 's/^/imgbuild-vm:   /' "$target" >/dev/console 2>/dev/null || sed 's/^/imgbuild-vm:   /' "$target"
    done
elif [ "$status" -ne 0 ] && [ "${IMGBUILD_RENDER_ONLY:-0}" = 1 ]; then
    # What is on the disk is an earlier boot's, if anything: never show it as this boot's.
    say "not showing the configuration: the entrypoint failed, and what the disk holds may be an earlier boot's"
fi
say "entrypoint exited with status $status${stopping:+ (stopped)}; syncing and powering off"
power_off
