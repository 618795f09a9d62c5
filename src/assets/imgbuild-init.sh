#!/bin/sh
# imgbuild-init: the entrypoint of every node image built by imgbuild.
#
# Finds which node of the cluster this is, renders the node's configuration from the
# templates baked into the image, then runs the node's services (or the command given).
# The same layers serve every node: only this script's findings differ, at boot.
#
# Identity, first found of (a value found that is not a node id is an error, never skipped):
#   NODE_ID (or ZOO_MY_ID, KAFKA_BROKER_ID)     environment
#   imgbuild.node=N                             kernel command line (the last one before a
#                                               `--`, after which words are init's)
#   imgbuild_node_id: N                         NoCloud meta-data (seed directory or cidata;
#                                               the last one counts, as YAML readers take it)
#   NAME-N                                      hostname ordinal: with IMGBUILD_HOSTNAME_ORDINAL
#                                               unset or 'id', N is the node id when it is a
#                                               node of the cluster (else the next source);
#                                               with 'index', N is a 0-based index into the
#                                               cluster's nodes in definition order (a
#                                               Kubernetes StatefulSet's pod NAME-0 is the
#                                               first node whatever its id), and an index
#                                               outside the cluster is an error
#   /etc/imgbuild/node-id                       the id baked by `imgbuild node --id N`
# Ids are decimal: leading zeros are ignored (010 is node 10, never 8).
# Overrides at boot:
#   PEERS="0=host0,1=host1,..."   the address of every node named (no spaces, no empty entry)
#   ADVERTISED_HOST=addr          this node's own address
#                                 (addresses: IPv4, IPv6, or RFC 1123 host names)
#   IMGBUILD_VAR_<name>=value     any template variable of the image; the value may use
#                                 {{node_id}} and {{node_host}} (bind_address='{{node_host}}'
#                                 lets several nodes share one network namespace); a name
#                                 that is not a variable of the image is refused
#   IMGBUILD_SERVICES="a b"       which services to run, in order (empty: none)
#   IMGBUILD_RENDER_ONLY=1        render the configuration and exit
# Every value read is refused when it holds a control character (a line break could add a
# line to a configuration file), and a variable's value when it ends with a backslash (Java's
# properties reader would join the next line to it). No value from outside reaches `eval`:
# only variable names checked by get/put/is_set do.
# Every path it writes (template targets, data directories) is checked before anything is
# written: no existing component under the root may be a symlink, every parent that exists is
# a directory, a target is a regular file or absent. Files are written to a new temporary file
# beside the target (mktemp: never an existing one) and renamed over it.
# Exit codes: 0 services ended cleanly; 64 bad identity or configuration; 65 existing data
# belongs to another node; 70 a service failed (its status is reported).
set -euf
# An empty or unset PATH would find no command at all.
PATH=${PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}
export PATH

CONF=${IMGBUILD_CONF_DIR:-/etc/imgbuild}
ROOT=${IMGBUILD_ROOT:-}
NL='
'
# The shell's own field separators, restored after each split on another character.
WORDS=" 	$NL"
IFS=$WORDS

say() { printf 'imgbuild-init: %s\n' "$*" >&2; }
die() { code=$1; shift; say "error: $*"; exit "$code"; }

# Character classes spelled out, so that no locale changes what they match.
LOWER=abcdefghijklmnopqrstuvwxyz
UPPER=ABCDEFGHIJKLMNOPQRSTUVWXYZ
DIGITS=0123456789
HEX=0123456789abcdefABCDEF
CONTROL=$(printf '\001\002\003\004\005\006\007\010\011\012\013\014\015\016\017\020\021\022\023\024\025\026\027\030\031\032\033\034\035\036\037\177.')
CONTROL=${CONTROL%.}
C1_LEAD=$(printf '\302')
CR=$(printf '\r')
# The white space of a properties file (space, tab, form feed).
PROPERTY_SPACE=$(printf ' \t\f')
C1_TAIL=$(printf '\200\201\202\203\204\205\206\207\210\211\212\213\214\215\216\217\220\221\222\223\224\225\226\227\230\231\232\233\234\235\236\237')

# has_control TEXT: TEXT holds a control character (C0, DEL, or C1 in UTF-8).
has_control() { case $1 in *["$CONTROL"]* | *"$C1_LEAD"["$C1_TAIL"]*) return 0 ;; esac; return 1; }
is_name() { case $1 in '' | [!"$LOWER$UPPER"_]* | *[!"$LOWER$UPPER$DIGITS"_]*) return 1 ;; esac; }

# get NAME: REPLY is the value of the shell variable NAME ('' when unset); put NAME VALUE;
# is_set NAME. The only uses of eval, each on a name checked first.
get() { is_name "$1" || die 70 "internal: not a variable name"; eval "REPLY=\${$1-}"; }
put() { is_name "$1" || die 70 "internal: not a variable name"; eval "$1=\$2"; }
is_set() { is_name "$1" || die 70 "internal: not a variable name"; eval "[ -n \"\${$1+set}\" ]"; }

# decimal TEXT: REPLY is TEXT as a decimal number without leading zeros; false if TEXT is not one.
decimal() {
    case $1 in '' | *[!"$DIGITS"]*) return 1 ;; esac
    REPLY=$1
    while :; do case $REPLY in 0?*) REPLY=${REPLY#0} ;; *) return 0 ;; esac; done
}

# is_ipv4 TEXT: four decimal numbers 0-255, without leading zeros.
is_ipv4() {
    _v4_rest=$1. _v4_count=0
    while [ -n "$_v4_rest" ]; do
        _v4_part=${_v4_rest%%.*} _v4_rest=${_v4_rest#*.}
        case $_v4_part in '' | *[!"$DIGITS"]* | 0?* | ????*) return 1 ;; esac
        [ "$_v4_part" -le 255 ] || return 1
        _v4_count=$((_v4_count + 1))
    done
    [ "$_v4_count" = 4 ]
}

# v6_groups TEXT LAST: adds the number of 16-bit groups of TEXT (colon-separated, 1 to 4 hex
# digits; an IPv4 address counts two, only last, and only if LAST is 1) to _v6_count.
v6_groups() {
    [ -n "$1" ] || return 0
    _v6_rest=$1:
    while [ -n "$_v6_rest" ]; do
        _v6_group=${_v6_rest%%:*} _v6_rest=${_v6_rest#*:}
        case $_v6_group in
            *.*) { [ "$2" = 1 ] && [ -z "$_v6_rest" ] && is_ipv4 "$_v6_group"; } || return 1
                _v6_count=$((_v6_count + 2)) ;;
            '' | ?????* | *[!"$HEX"]*) return 1 ;;
            *) _v6_count=$((_v6_count + 1)) ;;
        esac
    done
}

# is_ipv6 TEXT: eight groups, or fewer with one `::` standing for at least one (no zone, no brackets).
is_ipv6() {
    case $1 in *:*) ;; *) return 1 ;; esac
    case $1 in *[!"$HEX":.]* | *::*::* | *:::*) return 1 ;; esac
    _v6_count=0
    case $1 in
        *::*)
            v6_groups "${1%%::*}" 0 && v6_groups "${1#*::}" 1 && [ "$_v6_count" -le 7 ] ;;
        *) v6_groups "$1" 1 && [ "$_v6_count" = 8 ] ;;
    esac
}

# is_host_name TEXT: RFC 1123 labels of letters, digits and `-` (1 to 63, no `-` at either
# end), at most 253 in all, no final dot, and a last label that is not all digits.
is_host_name() {
    case $1 in '' | *[!"$LOWER$UPPER$DIGITS".-]*) return 1 ;; esac
    [ ${#1} -le 253 ] || return 1
    _hn_rest=$1. _hn_label=
    while [ -n "$_hn_rest" ]; do
        _hn_label=${_hn_rest%%.*} _hn_rest=${_hn_rest#*.}
        case $_hn_label in '' | -* | *-) return 1 ;; esac
        [ ${#_hn_label} -le 63 ] || return 1
    done
    case $_hn_label in *[!"$DIGITS"]*) return 0 ;; esac
    return 1
}

# is_host TEXT: what a node's address may be (the rule imgbuild checks definitions with). No
# address is longer than a host name: the length goes first, so no check below is slow.
is_host() { [ ${#1} -le 253 ] && { is_ipv4 "$1" || is_ipv6 "$1" || is_host_name "$1"; }; }

# in_list WORD LIST: WORD is one of the space-separated LIST.
in_list() { case " $2 " in *" $1 "*) return 0 ;; esac; return 1; }

[ -r "$CONF/cluster.env" ] || die 64 "$CONF/cluster.env is missing: this image was not built by imgbuild"
# shellcheck disable=SC1091
. "$CONF/cluster.env"
for n in $IMGBUILD_NODES; do
    { decimal "$n" && [ "$REPLY" = "$n" ]; } || die 64 "$CONF/cluster.env: node id '$n' is not a decimal number"
done
[ -n "$IMGBUILD_NODES" ] || die 64 "$CONF/cluster.env names no nodes"
for name in $IMGBUILD_VARS $IMGBUILD_LISTS $IMGBUILD_DEFAULT_SERVICES; do
    is_name "$name" || die 64 "$CONF/cluster.env: '$name' is not a name"
done

# --- 0. every value from outside, checked before any is used -----------------
for var in NODE_ID ZOO_MY_ID KAFKA_BROKER_ID PEERS ADVERTISED_HOST IMGBUILD_SERVICES \
    IMGBUILD_HOSTNAME_ORDINAL IMGBUILD_RENDER_ONLY HOSTNAME; do
    get "$var"
    ! has_control "$REPLY" || die 64 "$var holds a control character (such as a line break): refused"
done
for name in $IMGBUILD_VARS; do
    get "IMGBUILD_VAR_$name"
    ! has_control "$REPLY" || die 64 "IMGBUILD_VAR_$name holds a control character (such as a line break): refused"
done
# An override of a variable the image does not have would change nothing, silently (a typo,
# or a definition without it): refused. The names come from the environment this script was
# started with, NUL-separated, so a line break inside a value cannot pass for a variable;
# without /proc, from the shell's exported variables (names a shell can hold).
if [ -r "/proc/$$/environ" ]; then
    given=$(tr '\n\000' '\001\n' <"/proc/$$/environ" | sed -n 's/^IMGBUILD_VAR_\([^=]*\)=.*/=\1/p')
else
    given=$(export -p | sed -n 's/^export IMGBUILD_VAR_\([A-Za-z0-9_]*\)=.*/=\1/p')
fi
IFS=$NL
for name in $given; do
    name=${name#=} # `=` keeps an empty name a word
    ! has_control "$name" || die 64 "an environment variable IMGBUILD_VAR_... has a control character in its name: refused"
    if ! is_name "$name" || ! in_list "$name" "$IMGBUILD_VARS"; then
        die 64 "IMGBUILD_VAR_$name: cluster $IMGBUILD_CLUSTER has no variable '$name' (its variables: ${IMGBUILD_VARS:-none})"
    fi
done
IFS=" 	$NL"
case ${IMGBUILD_RENDER_ONLY:-0} in 0 | 1) ;; *) die 64 "IMGBUILD_RENDER_ONLY is '$IMGBUILD_RENDER_ONLY'; it is 1 or 0" ;; esac
ordinal_mode=${IMGBUILD_HOSTNAME_ORDINAL:-id}
case $ordinal_mode in
    id | index) ;;
    *) die 64 "IMGBUILD_HOSTNAME_ORDINAL is '$ordinal_mode'; it is 'id' (the default: NAME-N is node N) or 'index' (NAME-N is the cluster's node at index N, from 0)" ;;
esac
services=${IMGBUILD_SERVICES-$IMGBUILD_DEFAULT_SERVICES}
seen=
for s in $services; do
    in_list "$s" "$IMGBUILD_DEFAULT_SERVICES" || die 64 "IMGBUILD_SERVICES names '$s', which is not a service of this image (its services: $IMGBUILD_DEFAULT_SERVICES)"
    ! in_list "$s" "$seen" || die 64 "IMGBUILD_SERVICES names '$s' twice"
    seen="$seen $s"
done

# --- 1. identity ------------------------------------------------------------
id='' id_source=''
# found VALUE SOURCE: the node's id is VALUE, which must be a decimal number.
found() {
    ! has_control "$1" || die 64 "the node id from $2 holds a control character: refused"
    decimal "$1" || die 64 "node id '$1' (from $2) is not a decimal number"
    id=$REPLY id_source=$2
}
for var in NODE_ID ZOO_MY_ID KAFKA_BROKER_ID; do
    get "$var"
    if [ -n "$REPLY" ]; then found "$REPLY" "environment variable $var"; break; fi
done
if [ -z "$id" ] && [ -r "$ROOT/proc/cmdline" ]; then
    arg='' arg_seen=''
    # shellcheck disable=SC2013 # the command line is words, not lines
    for word in $(cat "$ROOT/proc/cmdline"); do
        case $word in
            --) break ;; # the rest is for init, not the kernel
            imgbuild.node=*) arg=${word#imgbuild.node=} arg_seen=1 ;;
        esac
    done
    if [ -n "$arg_seen" ]; then found "$arg" "kernel command line"; fi
fi
if [ -z "$id" ]; then
    for seed in ${IMGBUILD_SEED_DIRS:-$ROOT/var/lib/cloud/seed/nocloud $ROOT/var/lib/cloud/seed/nocloud-net $ROOT/run/imgbuild/cidata}; do
        if [ -r "$seed/meta-data" ]; then
            # The last `imgbuild_node_id:` line, without a trailing comment; `=` marks that the
            # key is there, even with an empty value.
            # shellcheck disable=SC2016 # `$` is sed's last line
            val=$(sed -n '/^imgbuild_node_id[[:space:]]*:/h;${x;/./{s/^imgbuild_node_id[[:space:]]*:[[:space:]]*/=/;s/[[:space:]][[:space:]]*#.*$//;s/[[:space:]]*$//;p;};}' "$seed/meta-data")
            if [ -n "$val" ]; then
                val=${val#=}
                case $val in \"*\" | \'*\') val=${val#?} val=${val%?} ;; esac
                found "$val" "NoCloud seed $seed/meta-data"
                break
            fi
        fi
    done
fi
if [ -z "$id" ]; then
    # shellcheck disable=SC3028 # container runtimes set HOSTNAME; hostname(1) is the fallback
    host=${HOSTNAME:-$(hostname 2>/dev/null || cat "$ROOT/etc/hostname" 2>/dev/null || true)}
    ! has_control "$host" || die 64 "the hostname holds a control character: refused"
    ordinal=${host##*-}
    # Only a host name (RFC 1123, as imgbuild checks hosts) can be a node's: any other text,
    # invisible characters included, names no node and is never printed.
    if is_host "$host" && [ "$ordinal" != "$host" ] && decimal "$ordinal"; then
        if [ "$ordinal_mode" = index ]; then
            index=$REPLY i=0 at=
            for n in $IMGBUILD_NODES; do
                if [ "$i" = "$index" ]; then at=$n; break; fi
                i=$((i + 1))
            done
            [ -n "$at" ] || die 64 "hostname $host: index $index is not a node of cluster $IMGBUILD_CLUSTER (IMGBUILD_HOSTNAME_ORDINAL=index; its $i nodes are indexes 0 to $((i - 1)))"
            id=$at id_source="hostname $host (index $index of the cluster's nodes)"
        elif in_list "$REPLY" "$IMGBUILD_NODES"; then
            id=$REPLY id_source="hostname $host"
        fi
    fi
fi
if [ -z "$id" ] && [ -r "$CONF/node-id" ]; then
    found "$(cat "$CONF/node-id")" "the id baked into the image ($CONF/node-id)"
fi
[ -n "$id" ] || die 64 "no node identity: set NODE_ID, boot with imgbuild.node=N, or build with 'imgbuild node --id N'"
in_list "$id" "$IMGBUILD_NODES" || die 64 "node id $id (from $id_source) is not a node of cluster $IMGBUILD_CLUSTER (nodes: $IMGBUILD_NODES)"
say "node $id of cluster $IMGBUILD_CLUSTER (identity from $id_source)"

# --- 2. peers and addresses -------------------------------------------------
if [ -n "${PEERS:-}" ]; then
    case $PEERS in ,* | *, | *,,*) die 64 "PEERS '$PEERS' has an empty entry (it is ID=HOST,ID=HOST,...)" ;; esac
    seen=
    IFS=,
    for pair in $PEERS; do
        n=${pair%%=*} h=${pair#*=}
        { [ "$n" != "$pair" ] && decimal "$n"; } || die 64 "PEERS entry '$pair' is not ID=HOST"
        n=$REPLY
        in_list "$n" "$IMGBUILD_NODES" || die 64 "PEERS names node $n, which is not in the cluster ($IMGBUILD_NODES)"
        ! in_list "$n" "$seen" || die 64 "PEERS names node $n twice"
        is_host "$h" || die 64 "PEERS: '$h' (node $n) is not an IP address or a host name"
        seen="$seen $n"
        put "IMGBUILD_HOST_$n" "$h"
    done
    IFS=$WORDS
fi
if [ -n "${ADVERTISED_HOST:-}" ]; then
    is_host "$ADVERTISED_HOST" || die 64 "ADVERTISED_HOST '$ADVERTISED_HOST' is not an IP address or a host name"
    put "IMGBUILD_HOST_$id" "$ADVERTISED_HOST"
fi
hosts=
for n in $IMGBUILD_NODES; do
    get "IMGBUILD_HOST_$n"
    is_host "$REPLY" || die 64 "node $n's address '$REPLY' ($CONF/cluster.env) is not an IP address or a host name"
    # Names compare without case, as DNS compares them (imgbuild's `host_key` does the same;
    # IPv6 addresses compare as written here).
    key=$(printf '%s\n' "$REPLY" | tr ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz)
    ! in_list "$key" "$hosts" || die 64 "two nodes have the address $REPLY"
    hosts="$hosts $key"
done
get "IMGBUILD_HOST_$id"
node_host=$REPLY

# --- 3. render ----------------------------------------------------------------
# The language is the one imgbuild checks templates with: every `{{` opens a reference
# `{{name}}` (spaces around the name allowed) that ends at the first `}}`.

# value_of NAME SCOPE: REPLY is NAME's value; false when NAME is not in SCOPE: `value` (a
# var's value: node_id, node_host), `item` (a list's item: id, host, every var) or
# `template` (node_id, node_host, every var and list).
value_of() {
    case $1 in '' | [!"$LOWER"_]* | *[!"$LOWER$DIGITS"_]*) return 1 ;; esac
    case $2:$1 in
        value:node_id | template:node_id) REPLY=$id ;;
        value:node_host | template:node_host) REPLY=$node_host ;;
        item:id) REPLY=$item_id ;;
        item:host) REPLY=$item_host ;;
        value:*) return 1 ;;
        *)
            in_list "$1" "$IMGBUILD_VARS" || { [ "$2" = template ] && in_list "$1" "$IMGBUILD_LISTS"; } || return 1
            get "IMGBUILD_VALUE_$1"
            ;;
    esac
}

# References are found by one sed pass that writes each `{{ name }}` as SOH name STX (bytes
# no checked text holds); the shell then splits the text at those bytes only. Every step is
# linear in the text and in what it prints: nothing rescans or copies the rest of the text
# (as `${text#*'{{'}` would, once per reference).
SOH=$(printf '\001') STX=$(printf '\002')
# `{{{` never opens a reference (its name would start with `{`): a space keeps it unmarked.
MARK="s/{{{/{{ {/g;s/{{ *\\([${LOWER}_][${LOWER}${DIGITS}_]*\\) *}}/$SOH\\1$STX/g"

# marked TEXT WHERE: REPLY is TEXT (one line, no line break) with its references marked.
marked() {
    REPLY=$(printf '%s\n' "$1" | LC_ALL=C sed "$MARK")
    check_marked "$REPLY" "$2"
}

# check_marked TEXT WHERE: a `{{` left unmarked is one that opens no valid reference.
check_marked() {
    case $1 in
        *'{{'*'}}'*) die 64 "$2: a '{{' that does not open a reference '{{name}}'" ;;
        *'{{'*) die 64 "$2: '{{' without a closing '}}'" ;;
    esac
}

# render MARKED SCOPE WHERE: prints MARKED with every reference replaced (see value_of);
# WHERE names the text in errors.
render() {
    _r_scope=$2 _r_where=$3
    IFS=$SOH
    # shellcheck disable=SC2086 # split on purpose (no globbing: set -f)
    set -- $1
    IFS=$WORDS
    [ $# = 0 ] && return 0
    printf '%s' "$1"
    shift
    for _r_field; do
        IFS=$STX
        # shellcheck disable=SC2086 # NAME STX TEXT
        set -- $_r_field
        IFS=$WORDS
        value_of "$1" "$_r_scope" || die 64 "$_r_where: '{{$1}}' is not a variable it may use"
        printf '%s%s' "$REPLY" "${2-}"
    done
}

# render_list: prints the list $name (its item and self_item marked), one item per node
# joined by $join.
render_list() {
    _rl_first=1
    for item_id in $IMGBUILD_NODES; do
        get "IMGBUILD_HOST_$item_id" && item_host=$REPLY
        if [ "$item_id" = "$id" ] && [ "$has_self" = 1 ]; then text=$self_item; else text=$item; fi
        [ "$_rl_first" = 1 ] || printf '%s' "$join"
        _rl_first=0
        render "$text" item "the list $name"
    done
}

# Every var's value, then every list, once: templates then take them as they are. A `.` after
# each command substitution keeps what it prints whole (it would drop final line breaks).
for name in $IMGBUILD_VARS; do
    if is_set "IMGBUILD_VAR_$name"; then
        get "IMGBUILD_VAR_$name"
        where="IMGBUILD_VAR_$name"
    else
        get "IMGBUILD_DEFAULT_VAR_$name"
        where="the variable $name of $CONF/cluster.env"
    fi
    case $REPLY in *\\) die 64 "$where ends with a backslash, which would join the next line of a properties file to it: refused" ;; esac
    case $REPLY in
        *'{{'*)
            where="$where (a value may use only {{node_id}} and {{node_host}})"
            marked "$REPLY" "$where"
            REPLY=$(render "$REPLY" value "$where" && printf .)
            REPLY=${REPLY%.}
            ;;
    esac
    put "IMGBUILD_VALUE_$name" "$REPLY"
done
for name in $IMGBUILD_LISTS; do
    get "IMGBUILD_LIST_${name}_ITEM" && marked "$REPLY" "the list $name" && item=$REPLY
    get "IMGBUILD_LIST_${name}_SELF" && marked "$REPLY" "the list $name" && self_item=$REPLY
    get "IMGBUILD_LIST_${name}_HAS_SELF" && has_self=$REPLY
    get "IMGBUILD_LIST_${name}_JOIN" && join=$REPLY
    joined=$(render_list && printf .)
    put "IMGBUILD_VALUE_$name" "${joined%.}"
done

# check_path PATH KIND WHAT: nothing is in the way of writing $ROOT$PATH: no existing component
# under the root is a symlink (nothing is written through a link), every parent that exists
# is a directory, and PATH itself is absent or a KIND (`file`: a regular file, `dir`: a
# directory). WHAT names PATH in errors.
check_path() {
    _cp_path=$1 _cp_kind=$2 _cp_what=$3 _cp_at=$ROOT _cp_shown=
    IFS=/
    # shellcheck disable=SC2086 # split on purpose (image paths: checked when imgbuild built the image)
    set -- $1
    IFS=$WORDS
    _cp_n=$# _cp_i=0
    for _cp_part; do
        _cp_i=$((_cp_i + 1))
        [ -n "$_cp_part" ] || continue
        _cp_at=$_cp_at/$_cp_part _cp_shown=$_cp_shown/$_cp_part
        [ ! -L "$_cp_at" ] || die 64 "$_cp_what $_cp_path: $_cp_shown is a symbolic link (imgbuild-init never writes through one)"
        [ -e "$_cp_at" ] || return 0
        if [ "$_cp_i" != "$_cp_n" ]; then
            [ -d "$_cp_at" ] || die 64 "$_cp_what $_cp_path: $_cp_shown is not a directory"
        elif [ "$_cp_kind" = file ]; then
            [ ! -d "$_cp_at" ] || die 64 "$_cp_what $_cp_path is a directory, not a file"
            [ -f "$_cp_at" ] || die 64 "$_cp_what $_cp_path is not a regular file"
        else
            [ -d "$_cp_at" ] || die 64 "$_cp_what $_cp_path is not a directory"
        fi
    done
}

for target in $IMGBUILD_TEMPLATES; do check_path "$target" file "the template target"; done
for d in $IMGBUILD_DATA_DIRS; do check_path "$d" dir "the data directory"; done
for check in $IMGBUILD_ID_CHECKS; do check_path "${check%%:*}" file "the identity check file"; done

# Every template rendered (kept in memory) before anything is written. Identity files (such
# as ZooKeeper's myid) are never overwritten with another node's value.
n=0
for entry in $IMGBUILD_TEMPLATE_MODES; do
    target=${entry%:*} mode=${entry##*:} n=$((n + 1))
    case $mode in [0-7][0-7][0-7] | [0-7][0-7][0-7][0-7]) ;; *) die 64 "$CONF/cluster.env: '$mode' is not the mode of $target" ;; esac
    where="the template for $target ($CONF/templates$target)"
    rendered=$(LC_ALL=C sed "$MARK" "$CONF/templates$target" && printf .)
    check_marked "$rendered" "$where"
    rendered=$(render "${rendered%.}" template "$where" && printf .)
    rendered=${rendered%.}
    put "rendered_$n" "$rendered"
    if in_list "$target" "$IMGBUILD_GUARDED" && [ -f "$ROOT$target" ]; then
        want=$(printf '%s' "$rendered")
        have=$(cat "$ROOT$target")
        [ "$want" = "$have" ] || die 65 "$target holds '$have' but this node would write '$want' (identity from $id_source): refusing to take over another node's data"
    fi
done

# property FILE KEY: REPLY is the last value of KEY in FILE, read as Java reads properties
# (java.util.Properties.load); false when KEY is not there.
property() {
    _pr_found=1 _pr_more=0 _pr_logical=
    while IFS= read -r _pr_line || [ -n "$_pr_line" ]; do
        _pr_line=${_pr_line%"$CR"}
        _pr_line=${_pr_line#"${_pr_line%%[!"$PROPERTY_SPACE"]*}"}
        if [ "$_pr_more" = 1 ]; then
            _pr_logical=$_pr_logical$_pr_line
        else
            case $_pr_line in '' | '#'* | '!'*) continue ;; esac
            _pr_logical=$_pr_line
        fi
        # A line ending in an odd number of backslashes goes on on the next line.
        _pr_tail=${_pr_logical##*[!\\]}
        if [ $((${#_pr_tail} % 2)) = 1 ]; then
            _pr_logical=${_pr_logical%?} _pr_more=1
            continue
        fi
        _pr_more=0
        property_line "$_pr_logical" "$2" && _pr_found=0 _pr_value=$REPLY
    done <"$1"
    # A continued line the file ends in is a line too.
    if [ "$_pr_more" = 1 ] && property_line "$_pr_logical" "$2"; then _pr_found=0 _pr_value=$REPLY; fi
    [ "$_pr_found" = 0 ] && REPLY=$_pr_value
}

# property_line LINE KEY: REPLY is LINE's value when LINE's key is KEY: the key ends at the first
# `=`, `:` or white space that no backslash escapes; then white space, at most one `=` or `:`,
# and white space again come before the value.
property_line() {
    _pl_key=${1%%[=:"$PROPERTY_SPACE"]*}
    _pl_rest=${1#"$_pl_key"}
    _pl_tail=${_pl_key##*[!\\]}
    # An escaped separator belongs to the key: no such key is a key imgbuild checks.
    [ $((${#_pl_tail} % 2)) = 0 ] || return 1
    case $_pl_key in *\\*) unescape "$_pl_key" && _pl_key=$REPLY ;; esac
    [ "$_pl_key" = "$2" ] || return 1
    _pl_rest=${_pl_rest#"${_pl_rest%%[!"$PROPERTY_SPACE"]*}"}
    case $_pl_rest in [=:]*) _pl_rest=${_pl_rest#?} ;; esac
    REPLY=${_pl_rest#"${_pl_rest%%[!"$PROPERTY_SPACE"]*}"}
    case $REPLY in *\\*) unescape "$REPLY" ;; esac
    return 0
}

# unescape TEXT: REPLY is TEXT with the escapes of a properties file read (`\X` is X, `\uXXXX`
# an ASCII character); only short texts are read (an id and a key are short), others stay.
unescape() {
    REPLY=$1
    [ ${#1} -le 256 ] || return 0
    _ue_rest=$1 REPLY=
    while [ -n "$_ue_rest" ]; do
        _ue_char=${_ue_rest%"${_ue_rest#?}"} _ue_rest=${_ue_rest#?}
        if [ "$_ue_char" = \\ ] && [ -n "$_ue_rest" ]; then
            _ue_char=${_ue_rest%"${_ue_rest#?}"} _ue_rest=${_ue_rest#?}
            case $_ue_char$_ue_rest in
                u00[0-7][0-9a-fA-F]*)
                    _ue_hex=${_ue_rest%"${_ue_rest#????}"} _ue_rest=${_ue_rest#????}
                    # shellcheck disable=SC2059 # the format is the character's octal escape
                    _ue_char=$(printf "\\$(printf %o "$((0x$_ue_hex))")")
                    ;;
                [tnrfu]*) _ue_char='?' ;; # a character no key or id holds
            esac
        fi
        REPLY=$REPLY$_ue_char
    done
}

for check in $IMGBUILD_ID_CHECKS; do
    file=${check%%:*} key=${check#*:}
    if [ -f "$ROOT$file" ] && property "$ROOT$file" "$key" && [ -n "$REPLY" ]; then
        have=$REPLY
        if ! { decimal "$have" && [ "$REPLY" = "$id" ]; }; then
            has_control "$have" && have='(a value holding control characters)'
            die 65 "$file says $key=$have but this is node $id (identity from $id_source): refusing to take over another node's data"
        fi
    fi
done

# Then written: each into a new temporary file beside its target, renamed over it.
n=0
for entry in $IMGBUILD_TEMPLATE_MODES; do
    target=${entry%:*} mode=${entry##*:} n=$((n + 1))
    dir=${ROOT}${target%/*}
    mkdir -p "${dir:-/}"
    tmp=$(mktemp "${dir:-}/.imgbuild-XXXXXX")
    get "rendered_$n"
    printf '%s' "$REPLY" >"$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$ROOT$target"
    say "rendered $target"
done
for d in $IMGBUILD_DATA_DIRS; do mkdir -p "$ROOT$d"; done

if [ "${IMGBUILD_RENDER_ONLY:-0}" = 1 ]; then exit 0; fi
if [ $# -gt 0 ]; then exec "$@"; fi

# --- 4. services --------------------------------------------------------------
pids=
stop_all() {
    for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
    for p in $pids; do wait "$p" 2>/dev/null || true; done
}
trap 'say "stopping"; stop_all; exit 0' TERM INT
for s in $services; do
    get "IMGBUILD_SERVICE_${s}_ARGC"
    { decimal "$REPLY" && [ "$REPLY" != 0 ]; } || die 64 "$CONF/cluster.env: service $s has no command"
    argc=$REPLY i=1
    set --
    while [ "$i" -le "$argc" ]; do
        get "IMGBUILD_SERVICE_${s}_ARG$i"
        set -- "$@" "$REPLY"
        i=$((i + 1))
    done
    say "starting $s"
    "$@" &
    pids="$pids $!"
    put "pid_$s" "$!"
done
[ -n "$pids" ] || { say "no services to run"; exit 0; }
while :; do
    for s in $services; do
        get "pid_$s"
        if ! kill -0 "$REPLY" 2>/dev/null; then
            status=0
            wait "$REPLY" || status=$?
            say "service $s exited with status $status; stopping the others"
            stop_all
            [ "$status" = 0 ] && exit 0
            exit 70
        fi
    done
    sleep 1 &
    wait $! || true
done
