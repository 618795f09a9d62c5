//! The VM templates: a libvirt domain and a qemu launch script per node, and the cluster's
//! libvirt network, for the machine the image's platform needs.
//!
//! Paths come from the command line (`--kernel`, `--initrd`, `--libvirt-dir`) and may hold any
//! character: every value is shell-quoted in the script ([`sh_quote`]) and escaped in the XML
//! ([`xml_escape`]); one with a control character, which a line-based file cannot carry, is
//! refused before any work ([`check_values`]).

use std::net::Ipv4Addr;

use super::network::{forward_mac, mac, network_problem, FORWARD_ADDRESS};
use crate::digest::Sha256Digest;
use crate::entrypoint::VM_INIT;
use crate::error::{escape, is_unsafe_char, Error, Result};
use crate::image_def::ImageDef;
use crate::platform::Platform;

/// The virtual machine a platform's image boots in. Every architecture imgbuild can build an
/// image for either has one here or is refused: a VM never silently gets another machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Machine {
    /// `qemu-system-NAME`, and libvirt's `<type arch=…>`.
    pub arch: &'static str,
    /// qemu's and libvirt's machine type.
    pub machine: &'static str,
    /// The serial console the kernel writes to.
    pub console: &'static str,
    /// Whether the machine has a SATA/IDE bus for the seed as a CD-ROM (else a read-only virtio disk).
    pub cdrom: bool,
    /// qemu's `-cpu` under KVM and under TCG, when the machine's default CPU will not do.
    pub cpu: Option<(&'static str, &'static str)>,
}

const AMD64: Machine = Machine { arch: "x86_64", machine: "q35", console: "ttyS0", cdrom: true, cpu: None };
/// `virt`'s default CPU is a 32-bit Cortex-A15: a 64-bit kernel needs `host` or `max`.
const ARM64: Machine =
    Machine { arch: "aarch64", machine: "virt", console: "ttyAMA0", cdrom: false, cpu: Some(("host", "max")) };

impl Machine {
    /// The Debian package of `qemu-system-ARCH` (from the host's table, as `imgbuild doctor` says).
    pub(crate) fn qemu_package(&self) -> &'static str {
        crate::host::package_of(&format!("qemu-system-{}", self.arch))
    }

    pub(crate) fn for_platform(platform: &Platform) -> Result<Machine> {
        match (platform.architecture.as_str(), platform.variant.as_deref()) {
            ("amd64", None) => Ok(AMD64),
            ("arm64", None) => Ok(ARM64),
            _ => Err(Error::Usage(format!(
                "VM disks are made for linux/amd64 and linux/arm64; {platform} has no VM template yet \
                 (its images build as usual with `imgbuild build --platform {platform}`)"
            ))),
        }
    }
}

/// Refuses a path no template can carry: one with a control character (a line break would end
/// the script's line, and neither libvirt nor a terminal shows one for what it is).
pub(crate) fn check_values(boot: &Boot, libvirt_dir: Option<&str>) -> Result<()> {
    let values = [
        ("--kernel", Some(boot.kernel.as_str())),
        ("--initrd", Some(boot.initrd.as_str())),
        ("--libvirt-dir", libvirt_dir),
    ];
    for (option, value) in values {
        if let Some(value) = value.filter(|v| v.chars().any(is_unsafe_char) || v.is_empty()) {
            return Err(Error::Usage(format!(
                "{option} `{}`: the VM templates cannot hold an empty path or one with a control character",
                escape(value)
            )));
        }
    }
    Ok(())
}

/// `value` as one POSIX shell word that expands to exactly itself.
pub(crate) fn sh_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// `value` as XML character data or an attribute value (in either quotes).
pub(crate) fn xml_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// The kernel and initrd the templates boot (direct kernel boot: the disk has no boot loader).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Boot {
    pub kernel: String,
    pub initrd: String,
}

/// What one node's templates need.
pub(crate) struct NodeTemplate<'a> {
    pub def: &'a ImageDef,
    pub id: u32,
    pub mac: &'a str,
    pub machine: Machine,
    pub boot: &'a Boot,
    pub memory_mib: u32,
    /// Where the libvirt templates expect the disks (libvirt wants absolute paths).
    pub libvirt_dir: Option<&'a str>,
    /// The node's ports forwarded to the host's loopback: (protocol, host port, guest port).
    pub forwards: &'a [(String, u16, u16)],
}

/// The multicast group and port (on the host's loopback) a cluster's qemu VMs share as their
/// network, derived from the cluster's name so that two clusters do not meet by default.
pub(crate) fn cluster_mcast(cluster: &str) -> String {
    let h = Sha256Digest::of(format!("imgbuild-mcast/{cluster}").as_bytes()).hex();
    let byte = |i: usize| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).expect("hex");
    let port = 20000 + u16::from_be_bytes([byte(2), byte(3)]) % 20000;
    format!("239.255.{}.{}:{port}", byte(0), byte(1))
}

impl NodeTemplate<'_> {
    /// The kernel command line, without the node's identity (`imgbuild.node=N`). `panic=-1`
    /// reboots at once on a kernel panic (a disk the initramfs cannot switch to, say), which
    /// `-no-reboot` turns into qemu exiting: a failed boot ends instead of hanging.
    fn cmdline(&self) -> String {
        format!("root=/dev/vda rw console={} panic=-1 init={VM_INIT}", self.machine.console)
    }

    /// libvirt's second interface: passt, forwarding the node's ports from the host's loopback.
    fn forward_interface(&self) -> String {
        let mut ranges = String::new();
        for (proto, host, guest) in self.forwards {
            ranges.push_str(&format!(
                "      <portForward proto='{proto}' address='127.0.0.1'>\n        <range start='{host}' to='{guest}'/>\n      </portForward>\n"
            ));
        }
        let (address, prefix) = FORWARD_ADDRESS.split_once('/').expect("ADDRESS/PREFIX");
        format!(
            "    <interface type='user'>\n      <mac address='{mac}'/>\n      <backend type='passt'/>\n      <ip family='ipv4' address='{address}' prefix='{prefix}'/>\n{ranges}      <model type='virtio'/>\n    </interface>\n",
            mac = forward_mac(&self.def.name, self.id),
        )
    }

    pub(crate) fn domain_xml(&self) -> String {
        let (name, id, m) = (xml_escape(&self.def.name), self.id, self.machine);
        let dir = self.libvirt_dir.map_or_else(|| format!("/var/lib/libvirt/images/{name}"), xml_escape);
        let seed = if m.cdrom {
            format!("    <disk type='file' device='cdrom'>\n      <driver name='qemu' type='raw'/>\n      <source file='{dir}/seed-node-{id}.iso'/>\n      <target dev='sda' bus='sata'/>\n      <readonly/>\n    </disk>\n")
        } else {
            format!("    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n      <source file='{dir}/seed-node-{id}.iso'/>\n      <target dev='vdb' bus='virtio'/>\n      <readonly/>\n    </disk>\n")
        };
        let cpu = if m.cpu.is_some() { "  <cpu mode='host-passthrough'/>\n" } else { "" };
        format!(
            "<!-- Node {id} of the cluster named below, written by imgbuild: copy this directory's files where\n     the disks' source files say, then `virsh define node-{id}.xml`. A clean stop (the services\n     stopped, the disk synced and read-only, then power off): `virsh send-key {name}-node-{id}\n     KEY_LEFTCTRL KEY_LEFTALT KEY_DELETE`, which the VM init receives as SIGINT. -->\n<domain type='kvm'>\n  <name>{name}-node-{id}</name>\n  <memory unit='MiB'>{mem}</memory>\n  <vcpu>2</vcpu>\n{cpu}  <os>\n    <type arch='{arch}' machine='{machine}'>hvm</type>\n    <kernel>{kernel}</kernel>\n    <initrd>{initrd}</initrd>\n    <cmdline>{cmdline} imgbuild.node={id}</cmdline>\n  </os>\n  <on_reboot>destroy</on_reboot>\n  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='{dir}/node-{id}.qcow2'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n{seed}    <interface type='network'>\n      <mac address='{mac}'/>\n      <source network='imgbuild-{name}'/>\n      <model type='virtio'/>\n    </interface>\n{forward}    <serial type='pty'/>\n    <console type='pty'/>\n  </devices>\n</domain>\n",
            mem = self.memory_mib,
            arch = m.arch,
            machine = m.machine,
            kernel = xml_escape(&self.boot.kernel),
            initrd = xml_escape(&self.boot.initrd),
            cmdline = self.cmdline(),
            mac = self.mac,
            forward = self.forward_interface(),
        )
    }

    /// qemu's user network: nothing reaches out (`restrict=on`), the node's ports come in from
    /// the host's loopback, each moved by `$offset`.
    fn user_netdev(&self) -> String {
        let forwards: String = self
            .forwards
            .iter()
            .map(|(proto, host, guest)| format!(",hostfwd={proto}:127.0.0.1:$(({host} + offset))-:{guest}"))
            .collect();
        format!("user,id=forward,restrict=on{forwards}")
    }

    pub(crate) fn qemu_script(&self) -> String {
        let (id, m) = (self.id, self.machine);
        let seed = if m.cdrom { "media=cdrom" } else { "if=virtio" };
        let cpu = match m.cpu {
            Some((kvm, tcg)) => format!("cpu={tcg}\nif [ \"$accel\" = kvm ]; then cpu={kvm}; fi\n"),
            None => String::new(),
        };
        let cpu_arg = if m.cpu.is_some() { " -cpu \"$cpu\"" } else { "" };
        let ports: Vec<String> = self.forwards.iter().map(|(p, h, g)| format!("{g}/{p} on {h}")).collect();
        format!(
            r#"#!/bin/sh
# Boots node {id} of cluster {name} with qemu, from this directory's disks (written by imgbuild).
# Network: every node of the cluster on one private network, a multicast group on the host's
#   loopback (IMGBUILD_CLUSTER_NET=GROUP:PORT, default {mcast}: the same for all the
#   cluster's nodes), and the node's ports forwarded from 127.0.0.1 ({ports};
#   IMGBUILD_PORT_OFFSET=N adds N to each host port).
# Stopping: SIGTERM or SIGINT to this script presses Ctrl-Alt-Del in the guest, whose init stops
#   the services with the image's stop signal, syncs, makes the disk read-only and powers off;
#   after IMGBUILD_STOP_TIMEOUT seconds (default 60) qemu is ended.
# IMGBUILD_ACCEL: kvm or tcg (default: kvm when /dev/kvm is writable). Under nested
#   virtualization a KVM guest can hang right after "Probing EDD": IMGBUILD_ACCEL=tcg then.
# IMGBUILD_KERNEL, IMGBUILD_INITRD: the kernel and initrd to boot (default: the ones below).
# IMGBUILD_APPEND: more kernel arguments (imgbuild.render_only=1 renders the configuration,
#   shows it and powers off). IMGBUILD_IDENTITY='': boot without imgbuild.node={id}, so the
#   node finds its id in its NoCloud seed. Extra arguments go to qemu.
# Exits 6 when qemu-system-{arch} is not installed (the host is not ready), 66 when the kernel or
#   initrd cannot be read; otherwise with qemu's code.
set -eu
if ! command -v qemu-system-{arch} >/dev/null 2>&1; then
    echo "node-{id}.sh: qemu-system-{arch} is not installed: this host cannot boot the node (Debian and Ubuntu: apt-get install {qemu_package}; \`imgbuild doctor vm\` says what else it lacks)" >&2
    exit 6
fi
dir=$(cd "$(dirname "$0")" && pwd)
default_kernel={kernel}
default_initrd={initrd}
kernel=${{IMGBUILD_KERNEL:-$default_kernel}}
initrd=${{IMGBUILD_INITRD:-$default_initrd}}
net=${{IMGBUILD_CLUSTER_NET:-{mcast}}}
offset=${{IMGBUILD_PORT_OFFSET:-0}}
timeout=${{IMGBUILD_STOP_TIMEOUT:-60}}
# The group goes into a qemu option: digits, dots and one colon only.
case $net in
    [0-9]*[0-9]:[0-9]*) case $net in *[!0-9.:]* | *:*:*) net= ;; esac ;;
    *) net= ;;
esac
[ -n "$net" ] || {{ echo "node-{id}.sh: IMGBUILD_CLUSTER_NET is not GROUP:PORT (such as {mcast})" >&2; exit 64; }}
for number in "$offset" "$timeout"; do
    case $number in '' | *[!0-9]*) echo "node-{id}.sh: IMGBUILD_PORT_OFFSET and IMGBUILD_STOP_TIMEOUT are numbers" >&2; exit 64 ;; esac
done
if [ -n "${{IMGBUILD_ACCEL:-}}" ]; then
    accel=$IMGBUILD_ACCEL why="from IMGBUILD_ACCEL"
elif [ -w /dev/kvm ]; then
    accel=kvm why="/dev/kvm is writable; if the guest hangs, IMGBUILD_ACCEL=tcg"
else
    accel=tcg why="no writable /dev/kvm: software emulation; IMGBUILD_ACCEL=kvm to insist"
fi
{cpu}for file in "$kernel" "$initrd"; do
    if [ ! -r "$file" ]; then
        echo "node-{id}.sh: cannot read $file: choose a kernel and initrd with IMGBUILD_KERNEL and IMGBUILD_INITRD" >&2
        exit 66
    fi
done
echo "node-{id}.sh: accelerator $accel ($why)" >&2
echo "node-{id}.sh: kernel $kernel, initrd $initrd (IMGBUILD_KERNEL, IMGBUILD_INITRD to choose others)" >&2
echo "node-{id}.sh: cluster network $net on 127.0.0.1" >&2
# qemu's monitor on two FIFOs, through which a stop presses Ctrl-Alt-Del.
control=$(mktemp -d "${{TMPDIR:-/tmp}}/imgbuild-node-{id}.XXXXXX")
trap 'rm -rf "$control"' EXIT
mkfifo "$control/monitor.in" "$control/monitor.out"
exec 3<&0
qemu-system-{arch} -machine {machine},accel="$accel"{cpu_arg} -m {mem} -smp 2 -nographic -no-reboot \
    -kernel "$kernel" -initrd "$initrd" \
    -append "{cmdline} ${{IMGBUILD_IDENTITY-imgbuild.node={id}}} ${{IMGBUILD_APPEND:-}}" \
    -drive file="$dir/node-{id}.qcow2",if=virtio,format=qcow2 \
    -drive file="$dir/seed-node-{id}.iso",{seed},format=raw,readonly=on \
    -netdev socket,id=cluster,mcast="$net",localaddr=127.0.0.1 -device virtio-net-pci,netdev=cluster,mac={mac} \
    -netdev "{user}" -device virtio-net-pci,netdev=forward,mac={forward_mac} \
    -chardev pipe,id=control,path="$control/monitor" -mon chardev=control,mode=readline "$@" <&3 3<&- &
qemu=$!
stopped=0
# Run by the trap below (shellcheck cannot see that).
# shellcheck disable=SC2317
stop() {{
    trap '' TERM INT
    stopped=1
    echo "node-{id}.sh: stopping node {id} (Ctrl-Alt-Del; up to $timeout s)" >&2
    echo "sendkey ctrl-alt-delete" >"$control/monitor.in"
    waited=0
    while kill -0 "$qemu" 2>/dev/null && [ "$waited" -lt "$timeout" ]; do
        sleep 1
        waited=$((waited + 1))
    done
    if kill -0 "$qemu" 2>/dev/null; then
        echo "node-{id}.sh: node {id} did not power off in $timeout s; ending qemu" >&2
        echo quit >"$control/monitor.in"
    fi
}}
trap stop TERM INT
status=0
wait "$qemu" || status=$?
if [ "$stopped" = 1 ]; then
    status=0
    wait "$qemu" || status=$?
fi
exit "$status"
"#,
            name = self.def.name,
            arch = m.arch,
            qemu_package = m.qemu_package(),
            machine = m.machine,
            mem = self.memory_mib,
            kernel = sh_quote(&self.boot.kernel),
            initrd = sh_quote(&self.boot.initrd),
            cmdline = self.cmdline(),
            mac = self.mac,
            forward_mac = forward_mac(&self.def.name, self.id),
            mcast = cluster_mcast(&self.def.name),
            ports = if ports.is_empty() { "none".to_string() } else { ports.join(", ") },
            user = self.user_netdev(),
        )
    }
}

/// libvirt's network for the cluster: each node's MAC gets the address the cluster names. The
/// second value says why the cluster's hosts cannot be handed out that way, if they cannot.
pub(crate) fn network_xml(def: &ImageDef) -> (String, Option<String>) {
    let ips: Vec<Option<Ipv4Addr>> = def.nodes.iter().map(|n| n.host.parse().ok()).collect();
    let first = ips.first().copied().flatten();
    let problem = network_problem(def);
    let gateway = match (problem, first) {
        (None, Some(ip)) => {
            let o = ip.octets();
            format!("{}.{}.{}.1", o[0], o[1], o[2])
        }
        _ => "192.168.150.1".to_string(),
    };
    let mut hosts = String::new();
    for (n, ip) in def.nodes.iter().zip(&ips) {
        let (mac, name) = (mac(&def.name, n.id), xml_escape(&format!("{}-{}", def.name, n.id)));
        match (problem, ip) {
            (None, _) => hosts.push_str(&format!("      <host mac='{mac}' name='{name}' ip='{}'/>\n", n.host)),
            // A comment cannot hold `--` (a name may): it is only a template for the user.
            _ => {
                let mut shown = name.clone();
                while shown.contains("--") {
                    shown = shown.replace("--", "- -");
                }
                hosts.push_str(&format!("      <!-- <host mac='{mac}' name='{shown}' ip='ADDRESS'/> -->\n"));
            }
        }
    }
    let note = problem.map_or_else(String::new, |p| {
        format!("\n     {p}: set them in the image definition to addresses of this network (192.168.150.0/24).")
    });
    let xml = format!(
        "<!-- The cluster's network, written by imgbuild: `virsh net-define network.xml`.{note} -->\n<network>\n  <name>imgbuild-{name}</name>\n  <forward mode='nat'/>\n  <ip address='{gateway}' netmask='255.255.255.0'>\n    <dhcp>\n{hosts}    </dhcp>\n  </ip>\n</network>\n",
        name = xml_escape(&def.name)
    );
    (xml, problem.map(str::to_string))
}

#[cfg(test)]
pub(super) mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Text with what shells and XML treat specially, and any other character but NUL.
    pub(in crate::output::vm) fn hostile() -> impl Strategy<Value = String> {
        let pieces = prop_oneof![
            Just("$(touch PWN)".to_string()),
            Just("`touch PWN`".to_string()),
            Just("'".to_string()),
            Just("\"".to_string()),
            Just("\\".to_string()),
            Just("${IFS}".to_string()),
            Just("&amp;<>]]>--".to_string()),
            Just(";|&*?[ ]~#!".to_string()),
            "[^\\x00]{0,4}",
        ];
        proptest::collection::vec(pieces, 0..6).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// A quoted word is read by sh as exactly the value, and nothing in it runs.
        #[test]
        fn a_shell_quoted_value_is_that_value_to_sh(value in hostile()) {
            let script = format!("x={}\nprintf %s \"$x\"", sh_quote(&value));
            let dir = tempfile::tempdir().unwrap();
            let out = std::process::Command::new("sh").arg("-c").arg(&script).current_dir(dir.path()).output().unwrap();
            prop_assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            prop_assert_eq!(String::from_utf8_lossy(&out.stdout), value);
            prop_assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "something ran");
        }

        /// An escaped value holds no markup, and reads back as itself.
        #[test]
        fn an_xml_escaped_value_has_no_markup_and_reads_back(value in hostile()) {
            let escaped = xml_escape(&value);
            prop_assert!(!escaped.contains(['<', '>', '\'', '"']), "{}", escaped);
            let unescaped = escaped
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&apos;", "'")
                .replace("&quot;", "\"")
                .replace("&amp;", "&");
            prop_assert_eq!(unescaped, value);
        }
    }

    #[test]
    fn a_path_no_template_can_carry_is_refused() {
        let boot = |k: &str| Boot { kernel: k.into(), initrd: "/boot/initrd.img".into() };
        assert!(check_values(&boot("/boot/vmlinuz$(touch PWN) 'x'"), Some("/srv/R&D'/x")).is_ok());
        for (kernel, dir) in [("/boot/vm\nlinuz", None), ("/boot/vmlinuz", Some("/srv/\u{1b}[2Jx")), ("", None)] {
            let err = check_values(&boot(kernel), dir).unwrap_err();
            assert_eq!(err.exit_code() as i32, 2);
            assert!(!err.to_string().contains(['\n', '\u{1b}']), "{err}");
        }
    }

    #[test]
    fn every_buildable_architecture_gets_its_own_machine_or_a_refusal() {
        let machine = |p: &str| Machine::for_platform(&p.parse().unwrap()).map(|m| m.arch);
        assert_eq!(machine("linux/amd64").unwrap(), "x86_64");
        assert_eq!(machine("linux/arm64").unwrap(), "aarch64");
        assert_eq!(machine("linux/arm64/v8").unwrap(), "aarch64");
        assert_eq!(AMD64.qemu_package(), "qemu-system-x86");
        assert_eq!(ARM64.qemu_package(), "qemu-system-arm");
        for other in ["linux/arm/v7", "linux/arm", "linux/386", "linux/ppc64le", "linux/s390x", "linux/riscv64"] {
            let err = machine(other).unwrap_err();
            assert_eq!(err.exit_code() as i32, 2, "{other}");
            assert!(err.to_string().contains(other), "{err}");
        }
    }
}
