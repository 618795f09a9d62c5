#!/bin/sh
# shellcheck disable=SC2154 # variables named at run time are assigned with eval
# imgbuild-init: the entrypoint of every node image built by imgbuild.
#
# Finds which node of the cluster this is, renders the node's configuration from the
# templates baked into the image, then runs the node's services (or the command given).
# The same layers serve every node: only this script's findings differ, at boot.
#
# Identity, first found of:
#   NODE_ID (or ZOO_MY_ID, KAFKA_BROKER_ID)     environment
#   imgbuild.node=N                             kernel command line
#   imgbuild_node_id: N                         NoCloud meta-data (seed directory or cidata)
#   NAME-N                                      hostname ordinal, when N is a node of the cluster
#   /etc/imgbuild/node-id                       the id baked by `imgbuild node --id N`
# Overrides at boot:
#   PEERS="0=host0,1=host1,..."   the address of every node
#   ADVERTISED_HOST=addr          this node's own address
#   IMGBUILD_VAR_<name>=value     any template variable of the image; the value may use
#                                 {{node_id}} and {{node_host}} (bind_address='{{node_host}}'
#                                 lets several nodes share one network namespace)
#   IMGBUILD_SERVICES="a b"       which services to run, in order (empty: none)
#   IMGBUILD_RENDER_ONLY=1        render the configuration and exit
# Exit codes: 0 services ended cleanly; 64 bad identity or configuration; 65 existing data
# belongs to another node; 70 a service failed (its status is reported).
set -eu

CONF=${IMGBUILD_CONF_DIR:-/etc/imgbuild}
ROOT=${IMGBUILD_ROOT:-}

say() { printf 'imgbuild-init: %s\n' "$*" >&2; }
die() { code=$1; shift; say "error: $*"; exit "$code"; }

[ -r "$CONF/cluster.env" ] || die 64 "$CONF/cluster.env is missing: this image was not built by imgbuild"
# shellcheck disable=SC1091
. "$CONF/cluster.env"

is_number() { case $1 in '' | *[!0-9]*) return 1 ;; *) return 0 ;; esac; }
# (sh has no local variables: helpers use names of their own)
in_cluster() { for _member in $IMGBUILD_NODES; do [ "$_member" = "$1" ] && return 0; done; return 1; }

# --- 1. identity ------------------------------------------------------------
id='' id_source=''
for var in NODE_ID ZOO_MY_ID KAFKA_BROKER_ID; do
    eval "val=\${$var:-}"
    if [ -n "$val" ]; then id=$val id_source="environment variable $var"; break; fi
done
if [ -z "$id" ] && [ -r "$ROOT/proc/cmdline" ]; then
    # shellcheck disable=SC2013 # the command line is words, not lines
    for word in $(cat "$ROOT/proc/cmdline"); do
        case $word in imgbuild.node=*) id=${word#imgbuild.node=} id_source="kernel command line" ;; esac
    done
fi
if [ -z "$id" ]; then
    for seed in ${IMGBUILD_SEED_DIRS:-$ROOT/var/lib/cloud/seed/nocloud $ROOT/var/lib/cloud/seed/nocloud-net $ROOT/run/imgbuild/cidata}; do
        if [ -r "$seed/meta-data" ]; then
            val=$(sed -n 's/^imgbuild_node_id:[[:space:]]*"\{0,1\}\([0-9]*\)"\{0,1\}[[:space:]]*$/\1/p' "$seed/meta-data" | head -n 1)
            if [ -n "$val" ]; then id=$val id_source="NoCloud seed $seed/meta-data"; break; fi
        fi
    done
fi
if [ -z "$id" ]; then
    # shellcheck disable=SC3028 # container runtimes set HOSTNAME; hostname(1) is the fallback
    host=${HOSTNAME:-$(hostname 2>/dev/null || cat "$ROOT/etc/hostname" 2>/dev/null || true)}
    ordinal=${host##*-}
    if [ "$ordinal" != "$host" ] && is_number "$ordinal" && in_cluster "$ordinal"; then
        id=$ordinal id_source="hostname $host"
    fi
fi
if [ -z "$id" ] && [ -r "$CONF/node-id" ]; then
    id=$(cat "$CONF/node-id") id_source="the id baked into the image ($CONF/node-id)"
fi
[ -n "$id" ] || die 64 "no node identity: set NODE_ID, boot with imgbuild.node=N, or build with 'imgbuild node --id N'"
is_number "$id" || die 64 "node id '$id' (from $id_source) is not a number"
id=$((id + 0))
in_cluster "$id" || die 64 "node id $id (from $id_source) is not a node of cluster $IMGBUILD_CLUSTER (nodes: $IMGBUILD_NODES)"
say "node $id of cluster $IMGBUILD_CLUSTER (identity from $id_source)"

# --- 2. peers and addresses -------------------------------------------------
if [ -n "${PEERS:-}" ]; then
    seen=
    for pair in $(printf '%s' "$PEERS" | tr ',' ' '); do
        n=${pair%%=*} h=${pair#*=}
        { [ "$n" != "$pair" ] && is_number "$n" && [ -n "$h" ]; } || die 64 "PEERS entry '$pair' is not ID=HOST"
        in_cluster "$n" || die 64 "PEERS names node $n, which is not in the cluster ($IMGBUILD_NODES)"
        case " $seen " in *" $n "*) die 64 "PEERS names node $n twice" ;; esac
        seen="$seen $n"
        eval "IMGBUILD_HOST_$n=\$h"
    done
fi
if [ -n "${ADVERTISED_HOST:-}" ]; then eval "IMGBUILD_HOST_$id=\$ADVERTISED_HOST"; fi
hosts=
for n in $IMGBUILD_NODES; do
    eval "h=\$IMGBUILD_HOST_$n"
    case " $hosts " in *" $h "*) die 64 "two nodes have the address $h" ;; esac
    hosts="$hosts $h"
done
eval "node_host=\$IMGBUILD_HOST_$id"

# --- 3. render ----------------------------------------------------------------
# lookup NAME [ITEM_ID ITEM_HOST]: the value of a template variable.
lookup() {
    # Names reach eval below: only what imgbuild itself accepts in a definition.
    case $1 in '' | *[!a-z0-9_]*) die 64 "'{{$1}}' is not a template variable name" ;; esac
    if [ "${restricted:-0}" = 1 ]; then
        case $1 in
            node_id | node_host) ;;
            *) die 64 "a variable's value may refer only to {{node_id}} and {{node_host}}, not {{$1}}" ;;
        esac
    fi
    case $1 in
        node_id) printf '%s' "$id" ;;
        node_host) printf '%s' "$node_host" ;;
        id) printf '%s' "$2" ;;
        host) printf '%s' "$3" ;;
        *)
            if eval "[ -n \"\${IMGBUILD_LIST_$1_ITEM+set}\" ]"; then
                render_list "$1"
            elif eval "[ -n \"\${IMGBUILD_VAR_$1+set}\" ]"; then
                # A value may name this node (IMGBUILD_VAR_bind_address='{{node_host}}'),
                # but no other variable, so expansion always ends.
                eval "value=\$IMGBUILD_VAR_$1"
                restricted=1 # this runs in a subshell: the flag ends with it
                render "$value"
            else
                die 64 "template variable '$1' is not defined"
            fi
            ;;
    esac
}

# render TEXT [ITEM_ID ITEM_HOST]: TEXT with every {{name}} replaced.
render() {
    rest=$1 out=
    while :; do
        case $rest in
            *'{{'*'}}'*)
                out=$out${rest%%'{{'*}
                rest=${rest#*'{{'}
                name=${rest%%'}}'*}
                rest=${rest#*'}}'}
                name=$(printf '%s' "$name" | tr -d ' ')
                out=$out$(lookup "$name" "${2:-}" "${3:-}")
                ;;
            *) out=$out$rest; break ;;
        esac
    done
    printf '%s' "$out"
}

# render_list NAME: one item per node, joined.
render_list() {
    eval "item=\$IMGBUILD_LIST_$1_ITEM self_item=\$IMGBUILD_LIST_$1_SELF join=\$IMGBUILD_LIST_$1_JOIN"
    [ "$join" = '\n' ] && join='
'
    first=1
    for n in $IMGBUILD_NODES; do
        eval "h=\$IMGBUILD_HOST_$n"
        t=$item
        [ "$n" = "$id" ] && [ -n "$self_item" ] && t=$self_item
        [ $first = 1 ] || printf '%s' "$join"
        first=0
        (render "$t" "$n" "$h")
    done
}

# Identity files (such as ZooKeeper's myid) are never overwritten with another node's value.
for target in $IMGBUILD_GUARDED; do
    if [ -f "$ROOT$target" ]; then
        want=$(render "$(cat "$CONF/templates$target")")
        have=$(cat "$ROOT$target")
        [ "$want" = "$have" ] || die 65 "$target holds '$have' but this node would write '$want' (identity from $id_source): refusing to take over another node's data"
    fi
done
for check in $IMGBUILD_ID_CHECKS; do
    file=${check%%:*} key=${check#*:}
    if [ -f "$ROOT$file" ]; then
        have=$(sed -n "s/^$key=//p" "$ROOT$file" | head -n 1)
        if [ -n "$have" ] && [ "$have" != "$id" ]; then
            die 65 "$file says $key=$have but this is node $id (identity from $id_source): refusing to take over another node's data"
        fi
    fi
done

for target in $IMGBUILD_TEMPLATES; do
    mkdir -p "$(dirname "$ROOT$target")"
    tmp="$ROOT$target.imgbuild-tmp"
    : >"$tmp"
    while IFS= read -r line || [ -n "$line" ]; do
        rendered=$(render "$line")
        printf '%s\n' "$rendered" >>"$tmp"
    done <"$CONF/templates$target"
    eval "mode=\$IMGBUILD_MODE_$(printf '%s' "$target" | tr -c 'A-Za-z0-9\n' '_')"
    chmod "$mode" "$tmp"
    mv "$tmp" "$ROOT$target"
    say "rendered $target"
done
for d in $IMGBUILD_DATA_DIRS; do mkdir -p "$ROOT$d"; done

if [ "${IMGBUILD_RENDER_ONLY:-0}" = 1 ]; then exit 0; fi
if [ $# -gt 0 ]; then exec "$@"; fi

# --- 4. services --------------------------------------------------------------
services=${IMGBUILD_SERVICES-$IMGBUILD_DEFAULT_SERVICES}
pids=
stop_all() {
    for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
    for p in $pids; do wait "$p" 2>/dev/null || true; done
}
trap 'say "stopping"; stop_all; exit 0' TERM INT
for s in $services; do
    eval "cmd=\${IMGBUILD_SERVICE_$s-}"
    [ -n "$cmd" ] || die 64 "unknown service '$s' (known: $IMGBUILD_DEFAULT_SERVICES)"
    say "starting $s"
    eval "set -- $cmd"
    "$@" &
    pids="$pids $!"
    eval "pid_$s=\$!"
done
[ -n "$pids" ] || { say "no services to run"; exit 0; }
while :; do
    for s in $services; do
        eval "p=\$pid_$s"
        if ! kill -0 "$p" 2>/dev/null; then
            status=0
            wait "$p" || status=$?
            say "service $s exited with status $status; stopping the others"
            stop_all
            [ "$status" = 0 ] && exit 0
            exit 70
        fi
    done
    sleep 1 &
    wait $! || true
done
