//! What each feature of imgbuild needs from the host, and whether this host has it: the one
//! table (`NEEDS`) that `imgbuild doctor` prints, that `load` and `deploy compose` check before
//! they start, whose package names the VM boot scripts carry, and that the tests ask (through
//! `imgbuild doctor --json`), so that none of them can disagree about what a feature needs.
//!
//! Every probe is bounded: a program is asked its version (and an engine its `info`) with a
//! timeout, and KVM is probed by creating an empty virtual machine, which boots nothing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::Error;

/// What a user (or the test suite) wants to do on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Feature {
    Build,
    Node,
    Push,
    Pull,
    Verify,
    Load,
    Compose,
    Vm,
    /// The test suite (`cargo test`): the tools the tests check imgbuild's outputs with.
    Tests,
}

impl Feature {
    pub const ALL: [Feature; 9] = [
        Feature::Build,
        Feature::Node,
        Feature::Push,
        Feature::Pull,
        Feature::Verify,
        Feature::Load,
        Feature::Compose,
        Feature::Vm,
        Feature::Tests,
    ];
    /// What `imgbuild doctor` checks when no feature is named: everything but the tests.
    pub fn user() -> Vec<Feature> {
        Feature::ALL.into_iter().filter(|f| *f != Feature::Tests).collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Feature::Build => "build",
            Feature::Node => "node",
            Feature::Push => "push",
            Feature::Pull => "pull",
            Feature::Verify => "verify",
            Feature::Load => "load",
            Feature::Compose => "compose",
            Feature::Vm => "vm",
            Feature::Tests => "tests",
        }
    }

    pub fn names() -> Vec<&'static str> {
        Feature::ALL.iter().map(|f| f.name()).collect()
    }
}

impl std::str::FromStr for Feature {
    type Err = String;

    fn from_str(text: &str) -> Result<Feature, String> {
        Feature::ALL
            .into_iter()
            .find(|f| f.name() == text)
            .ok_or_else(|| format!("no feature `{text}`: one of {}", Feature::names().join(", ")))
    }
}

/// How a need is looked for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Probe {
    /// A program on PATH; `version`: the arguments that make it print its version; `works`: a
    /// command that must succeed for the program to be of use here (an engine's `info`).
    Program { name: &'static str, version: &'static [&'static str], works: Option<&'static [&'static str]> },
    /// A program Podman runs from its helper directories (not PATH), as `podman` finds it.
    Helper { name: &'static str },
    /// A file a package installs at a fixed path (run with `version` when it is a program).
    File { path: &'static str, version: &'static [&'static str] },
    /// A program of the tests' Python venv ([`venv`]); its version is that of the distribution
    /// `dist` installed there (which also shows the distribution is).
    Venv { program: &'static str, dist: &'static str },
    /// The store's file system: writable, with room.
    Store,
    /// The kernel and initrd the VM templates boot: readable.
    Boot,
    /// Whether KVM works here (an advisory need: TCG always works).
    Kvm,
    /// Whether podman runs a container here, with its own settings, else with the ones
    /// docs/running.md gives for hosts that refuse rlimits or cgroups (requires `podman`).
    ContainerRun,
    /// iptables' FORWARD policy, which Docker sets to DROP (an advisory need; requires `iptables`).
    ForwardPolicy,
}

/// Where a need's package comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Source {
    /// A Debian package (`apt-get install`).
    Debian,
    /// A PyPI distribution that `.ci/install` pins into the tests' venv ([`venv`]).
    Venv,
}

/// One line of the table: a thing the host must have, and who needs it.
#[derive(Debug)]
pub(crate) struct Need {
    /// Its name in the table, `doctor --json` and the tests.
    pub id: &'static str,
    pub probe: Probe,
    /// The Debian package that provides it (empty: none does).
    pub package: &'static str,
    pub features: &'static [Feature],
    /// The commands that fail without it.
    pub commands: &'static str,
    /// Needs of one group are alternatives: any one of them found is enough (podman or docker).
    pub one_of: Option<&'static str>,
    /// The need whose program this probe runs (container-run: podman). When that is not found
    /// (or does not work), this one is not tried: [`Status::Untried`], which a feature counts
    /// as unmet, never as advice.
    pub requires: Option<&'static str>,
    /// Advice only (KVM, the FORWARD policy): never makes a feature not ready, whatever it finds.
    pub advisory: bool,
    pub source: Source,
}

// The test suite exercises every feature but Docker's and arm64 VMs: it needs their needs too.
const BUILDING: &[Feature] = {
    use Feature::*;
    &[Build, Node, Push, Pull, Verify, Load, Vm, Tests]
};
const COMPOSE: &[Feature] = &[Feature::Compose, Feature::Tests];
const VM: &[Feature] = &[Feature::Vm, Feature::Tests];
const TESTS: &[Feature] = &[Feature::Tests];
const VERSION: &[&str] = &["--version"];
const DASH_V: &[&str] = &["-V"];

#[cfg(target_arch = "aarch64")]
const KERNEL_PACKAGE: &str = "linux-image-arm64";
#[cfg(not(target_arch = "aarch64"))]
const KERNEL_PACKAGE: &str = "linux-image-amd64";
/// The Java the ZooKeeper and Kafka tests run (Debian's, beside any other on PATH).
#[cfg(target_arch = "aarch64")]
const JAVA_17: &str = "/usr/lib/jvm/java-17-openjdk-arm64/bin/java";
#[cfg(not(target_arch = "aarch64"))]
const JAVA_17: &str = "/usr/lib/jvm/java-17-openjdk-amd64/bin/java";

const fn program(name: &'static str, version: &'static [&'static str]) -> Probe {
    Probe::Program { name, version, works: None }
}

/// A row of the table with the usual fields.
const fn need(
    id: &'static str,
    probe: Probe,
    package: &'static str,
    features: &'static [Feature],
    commands: &'static str,
) -> Need {
    Need {
        id,
        probe,
        package,
        features,
        commands,
        one_of: None,
        requires: None,
        advisory: false,
        source: Source::Debian,
    }
}

/// A row that a tool used only by the test suite makes.
const fn test_tool(id: &'static str, version: &'static [&'static str], package: &'static str) -> Need {
    need(id, program(id, version), package, TESTS, "cargo test")
}

/// A row that a program of the tests' venv makes; `dist` is its PyPI distribution.
const fn venv_tool(id: &'static str, program: &'static str, dist: &'static str) -> Need {
    Need { source: Source::Venv, ..need(id, Probe::Venv { program, dist }, dist, TESTS, "cargo test") }
}

/// The program that runs the compressor tests as a CPU without extensions (src/compress.rs).
pub(crate) const QEMU_USER: &str = "qemu-x86_64";

/// The table. `.ci/install` installs the package of every need the `tests` feature has (so the
/// tests' member of each group of alternatives: podman, qemu-system-x86 on amd64), except those
/// every Debian system has (bash, coreutils, dpkg, util-linux); it leaves out the alternatives no test uses
/// (docker.io, qemu-system-arm). A unit test below holds it to that.
pub(crate) static NEEDS: &[Need] = &[
    need("store", Probe::Store, "", BUILDING, "imgbuild build, node, push, pull, verify, load, vm"),
    Need {
        one_of: Some("container engine"),
        ..need(
            "podman",
            Probe::Program {
                name: "podman",
                version: VERSION,
                works: Some(&["info", "--format", "{{.Host.OCIRuntime.Name}}"]),
            },
            "podman",
            &[Feature::Load, Feature::Compose, Feature::Tests],
            "imgbuild load, podman-compose up",
        )
    },
    Need {
        one_of: Some("container engine"),
        ..need(
            "docker",
            Probe::Program {
                name: "docker",
                version: VERSION,
                works: Some(&["info", "--format", "{{.ServerVersion}}"]),
            },
            "docker.io",
            &[Feature::Load, Feature::Compose],
            "imgbuild load --engine docker",
        )
    },
    Need {
        one_of: Some("compose tool"),
        ..need(
            "podman-compose",
            program("podman-compose", VERSION),
            "podman-compose",
            COMPOSE,
            "podman-compose up (the file of imgbuild deploy compose)",
        )
    },
    Need {
        one_of: Some("compose tool"),
        ..need(
            "docker-compose",
            program("docker-compose", VERSION),
            "docker-compose",
            COMPOSE,
            "docker-compose up (the file of imgbuild deploy compose)",
        )
    },
    Need {
        requires: Some("podman"),
        ..need(
            "container-run",
            Probe::ContainerRun,
            "runc",
            &[Feature::Load, Feature::Compose, Feature::Tests],
            "podman run, podman-compose up (the nodes loaded)",
        )
    },
    need("netavark", Probe::Helper { name: "netavark" }, "netavark", COMPOSE, "podman-compose up: the compose network"),
    need(
        "aardvark-dns",
        Probe::Helper { name: "aardvark-dns" },
        "aardvark-dns",
        COMPOSE,
        "podman-compose up: nodes find each other by name",
    ),
    need(
        "iptables",
        program("iptables", VERSION),
        "iptables",
        COMPOSE,
        "podman-compose up: netavark sets up the network with it",
    ),
    Need {
        requires: Some("iptables"),
        advisory: true,
        ..need(
            "forward-policy",
            Probe::ForwardPolicy,
            "iptables",
            &[Feature::Compose],
            "podman-compose up: nodes reach each other",
        )
    },
    need("qemu-img", program("qemu-img", VERSION), "qemu-utils", VM, "imgbuild vm"),
    need("mke2fs", program("mke2fs", DASH_V), "e2fsprogs", VM, "imgbuild vm"),
    need("debugfs", program("debugfs", DASH_V), "e2fsprogs", VM, "imgbuild vm"),
    need("xorriso", program("xorriso", &["-version"]), "xorriso", VM, "imgbuild vm"),
    Need {
        one_of: Some("qemu-system"),
        ..need(
            "qemu-system-x86_64",
            program("qemu-system-x86_64", VERSION),
            "qemu-system-x86",
            VM,
            "vm/node-N.sh of a linux/amd64 image",
        )
    },
    Need {
        one_of: Some("qemu-system"),
        ..need(
            "qemu-system-aarch64",
            program("qemu-system-aarch64", VERSION),
            "qemu-system-arm",
            &[Feature::Vm],
            "vm/node-N.sh of a linux/arm64 image",
        )
    },
    need("kernel", Probe::Boot, KERNEL_PACKAGE, VM, "vm/node-N.sh, vm/node-N.xml (--kernel, --initrd)"),
    // TCG always works.
    Need { advisory: true, ..need("kvm", Probe::Kvm, "", VM, "vm/node-N.sh (IMGBUILD_ACCEL)") },
    need(
        "java",
        Probe::File { path: JAVA_17, version: &["-version"] },
        "openjdk-17-jre-headless",
        TESTS,
        "cargo test (ZooKeeper and Kafka)",
    ),
    need(
        "zookeeper",
        Probe::File { path: "/usr/share/java/zookeeper.jar", version: &[] },
        "zookeeper",
        TESTS,
        "cargo test (ZooKeeper)",
    ),
    test_tool("skopeo", VERSION, "skopeo"),
    test_tool("umoci", VERSION, "umoci"),
    test_tool("docker-registry", VERSION, "docker-registry"),
    test_tool("openssl", &["version"], "openssl"),
    test_tool("shellcheck", VERSION, "shellcheck"),
    test_tool("dash", &[], "dash"),
    test_tool("busybox", &[], "busybox"),
    test_tool("runc", VERSION, "runc"),
    test_tool("unzip", &["-v"], "unzip"),
    test_tool("dpkg", VERSION, "dpkg"),
    test_tool("e2fsck", DASH_V, "e2fsprogs"),
    test_tool("qemu-io", VERSION, "qemu-utils"),
    test_tool("cloud-init", VERSION, "cloud-init"),
    test_tool("virt-xml-validate", &[], "libvirt-clients"),
    test_tool("xmllint", VERSION, "libxml2-utils"),
    test_tool("depmod", VERSION, "kmod"),
    test_tool("mkfifo", VERSION, "coreutils"),
    test_tool("unshare", VERSION, "util-linux"),
    test_tool("flock", VERSION, "util-linux"),
    test_tool("man", VERSION, "man-db"),
    test_tool("bash", VERSION, "bash"),
    test_tool("zsh", VERSION, "zsh"),
    test_tool("fish", VERSION, "fish"),
    test_tool("xz", VERSION, "xz-utils"),
    test_tool("bzip2", &[], "bzip2"),
    test_tool("zstd", VERSION, "zstd"),
    test_tool(QEMU_USER, VERSION, "qemu-user"),
    need("pigz", program("pigz", VERSION), "pigz", TESTS, "cargo bench (the parallel-gzip baseline)"),
    venv_tool("kubernetes-validate", "kubernetes-validate", "kubernetes-validate"),
    venv_tool("pyspdxtools", "pyspdxtools", "spdx-tools"),
    venv_tool("cyclonedx-validator", "python", "cyclonedx-python-lib"),
    // The seed test's ZooKeeper 3.4.10 and Kafka 1.0.0, from the local Maven repository, and the
    // bound of every tool it runs on the host.
    test_tool("mvn", VERSION, "maven"),
    test_tool("timeout", VERSION, "coreutils"),
    need("time", Probe::File { path: "/usr/bin/time", version: VERSION }, "time", TESTS, "cargo bench (peak memory)"),
];

/// The venv `.ci/install` makes for the tests' Python validators (`IMGBUILD_TEST_VENV` moves it,
/// for the tests and doctor alike).
pub(crate) fn venv() -> PathBuf {
    std::env::var_os("IMGBUILD_TEST_VENV").map_or_else(|| PathBuf::from("/opt/imgbuild-venv"), PathBuf::from)
}

/// The Debian package that provides need `id` (a row of [`NEEDS`]).
pub(crate) fn package_of(id: &str) -> &'static str {
    NEEDS.iter().find(|n| n.id == id).map_or("", |n| n.package)
}

/// Stops a command before any work when the program `id` (a row of [`NEEDS`]) it runs is not on
/// PATH: exit 6 (the host is not ready), naming the program and its package.
pub(crate) fn require_program(id: &str, command: &str) -> Result<PathBuf, Error> {
    let need = NEEDS.iter().find(|n| n.id == id).ok_or_else(|| Error::Internal(format!("no need `{id}`")))?;
    let Probe::Program { name, .. } = need.probe else {
        return Err(Error::Internal(format!("need `{id}` is not a program")));
    };
    find_program(name).ok_or_else(|| {
        let why = format!(
            "not installed (not found on PATH): this host is not ready for `{command}` (`imgbuild doctor` says what else it lacks)"
        );
        Error::tool(name, need.package, why)
    })
}

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// There, and of use.
    Found,
    Missing,
    /// There, but it does not work here (an engine that does not answer, an unreadable file).
    Broken,
    /// Of use, with advice (a container runs only with the README's settings), or advice of an
    /// advisory need (KVM).
    Advice,
    /// Not tried, because the need it requires is not found or does not work (container-run
    /// without podman): unmet, like `Missing`.
    Untried,
}

impl Status {
    /// Whether the need is of use here (advice included).
    pub(crate) fn met(self) -> bool {
        matches!(self, Status::Found | Status::Advice)
    }
}

/// One need, checked.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Checked {
    pub need: &'static str,
    pub status: Status,
    pub version: Option<String>,
    /// Where it was found, or what was looked at.
    pub path: Option<String>,
    /// Why it is missing or broken, or the advice.
    pub detail: Option<String>,
    pub package: &'static str,
    pub commands: &'static str,
    pub features: Vec<&'static str>,
    pub one_of: Option<&'static str>,
    pub requires: Option<&'static str>,
    pub advisory: bool,
    pub source: Source,
    /// Not needed: the alternative of its group that was found (docker unmet, podman found).
    pub instead: Option<&'static str>,
    /// container-run: whether the probe container ran (it wrote a token the probe read back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ran: Option<bool>,
}

impl Checked {
    fn new(need: &'static Need, status: Status) -> Checked {
        Checked {
            need: need.id,
            status,
            version: None,
            path: None,
            detail: None,
            package: need.package,
            commands: need.commands,
            features: need.features.iter().map(|f| f.name()).collect(),
            one_of: need.one_of,
            requires: need.requires,
            advisory: need.advisory,
            source: need.source,
            instead: None,
            ran: None,
        }
    }

    fn with(mut self, path: Option<String>, detail: Option<String>) -> Checked {
        self.path = path;
        self.detail = detail;
        self
    }
}

/// Whether a feature is ready, and what to install if it is not.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct FeatureState {
    pub feature: &'static str,
    pub ready: bool,
    /// Each unmet need (or group of alternatives): `need (package)`, alternatives joined by "or".
    pub missing: Vec<String>,
    /// The packages that would make it ready (the first of each group of alternatives).
    pub packages: Vec<&'static str>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Report {
    pub ready: bool,
    pub features: Vec<FeatureState>,
    pub needs: Vec<Checked>,
}

/// What the probes need to know that only the command line knows.
pub(crate) struct Context {
    /// The store directory (`--store`, `IMGBUILD_STORE` or the default).
    pub store: PathBuf,
    /// The kernel and initrd the VM templates would boot by default.
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Ask each program found its version and whether it works (else: only whether it is there).
    pub probe: bool,
}

/// Below this much free space the store cannot hold a cluster's inputs and layers.
pub(crate) const MIN_FREE: u64 = 1 << 30;
/// The longest a program may take to say its version, or an engine to answer `info`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Checks every need of `features`, all at once (each probe is bounded); a need that requires
/// another is probed after it, and only when that one is of use.
pub(crate) fn check(features: &[Feature], ctx: &Context) -> Report {
    let wanted: Vec<&'static Need> = NEEDS.iter().filter(|n| n.features.iter().any(|f| features.contains(f))).collect();
    let (first, then): (Vec<&'static Need>, Vec<&'static Need>) = wanted.iter().partition(|n| n.requires.is_none());
    let mut needs = probe_all(&first, |need| check_one(need, ctx));
    let found = needs.clone();
    needs.extend(probe_all(&then, |need| match found.iter().find(|c| Some(c.need) == need.requires) {
        Some(required) if required.status.met() => check_one(need, ctx),
        required => untried(need, required.map_or("not checked", |c| status_name(c.status))),
    }));
    // In the table's order again.
    needs.sort_by_key(|c| NEEDS.iter().position(|n| n.id == c.need));
    let tests = features.contains(&Feature::Tests);
    let alternatives: Vec<Option<&'static str>> = needs.iter().map(|c| alternative_found(c, &needs, tests)).collect();
    needs.iter_mut().zip(alternatives).for_each(|(c, instead)| c.instead = instead);
    let states: Vec<FeatureState> = features.iter().map(|f| feature_state(*f, &needs)).collect();
    Report { ready: states.iter().all(|s| s.ready), features: states, needs }
}

/// Runs `probe` on each need at once.
fn probe_all(needs: &[&'static Need], probe: impl Fn(&'static Need) -> Checked + Sync) -> Vec<Checked> {
    std::thread::scope(|s| {
        let probe = &probe;
        let running: Vec<_> = needs.iter().map(|need| s.spawn(move || probe(need))).collect();
        running.into_iter().zip(needs).map(|(p, need)| p.join().unwrap_or_else(|_| internal(need))).collect()
    })
}

fn untried(need: &'static Need, required_status: &str) -> Checked {
    let required = need.requires.unwrap_or("?");
    let why = format!("not tried: it needs {required}, which is {required_status} (see its line)");
    Checked::new(need, Status::Untried).with(None, Some(why))
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Found => "found",
        Status::Missing => "missing",
        Status::Broken => "broken",
        Status::Advice => "of use with advice",
        Status::Untried => "not tried",
    }
}

/// The group of alternatives an unmet need belongs to: its own, or, when it was not tried, that
/// of the need it requires (container-run without podman is met by docker, as podman is).
fn group_of(c: &Checked) -> Option<&'static str> {
    match c.status {
        Status::Untried => c.requires.and_then(|r| NEEDS.iter().find(|n| n.id == r)).and_then(|n| n.one_of),
        _ => c.one_of,
    }
}

/// For an unmet need: the member of its group of alternatives that is of use, if any. The test
/// suite has no alternatives, so none when it was asked about and the need is one of its own.
fn alternative_found(c: &Checked, needs: &[Checked], tests: bool) -> Option<&'static str> {
    if c.status.met() || (tests && c.features.contains(&Feature::Tests.name())) {
        return None;
    }
    let group = group_of(c)?;
    needs.iter().find(|o| o.need != c.need && o.one_of == Some(group) && o.status.met()).map(|o| o.need)
}

fn internal(need: &'static Need) -> Checked {
    Checked::new(need, Status::Broken).with(None, Some("the probe failed (a bug in imgbuild)".into()))
}

/// A feature is ready when each of its needs, or one of each group of alternatives, is of use;
/// advisory needs never count, whatever they found. The test suite has no alternatives: it runs
/// every tool it lists (podman-compose and docker-compose both).
fn feature_state(feature: Feature, needs: &[Checked]) -> FeatureState {
    let mut groups: Vec<(Option<&str>, Vec<&Checked>)> = Vec::new();
    for c in needs.iter().filter(|c| c.features.contains(&feature.name()) && !c.advisory) {
        let group = if feature == Feature::Tests { None } else { group_of(c) };
        match groups.iter_mut().find(|(g, _)| g.is_some() && *g == group) {
            Some((_, members)) => members.push(c),
            None => groups.push((group, vec![c])),
        }
    }
    let unmet: Vec<Vec<&Checked>> = groups
        .into_iter()
        .map(|(_, m)| m)
        .filter(|m| !m.iter().any(|c| c.status.met()))
        // An untried need is said by the alternatives it waits for, when it has any.
        .map(|m| match m.iter().any(|c| c.status != Status::Untried) {
            true => m.into_iter().filter(|c| c.status != Status::Untried).collect(),
            false => m,
        })
        .collect();
    let missing = unmet.iter().map(|m| m.iter().map(|c| named(c)).collect::<Vec<_>>().join(" or ")).collect();
    // Of alternatives, the one for this machine (qemu-system-x86_64 on x86_64), else the first.
    fn preferred<'a>(m: &[&'a Checked]) -> &'a Checked {
        m.iter().find(|c| c.need.ends_with(std::env::consts::ARCH)).unwrap_or(&m[0])
    }
    let mut packages: Vec<&'static str> =
        unmet.iter().map(|m| preferred(m)).filter(|c| c.source == Source::Debian).map(|c| c.package).collect();
    packages.retain(|p| !p.is_empty());
    packages.dedup();
    FeatureState { feature: feature.name(), ready: unmet.is_empty(), missing, packages }
}

/// `need (Debian package package)`, or `need: why` when no package provides it (or it was not
/// tried).
fn named(c: &Checked) -> String {
    match (c.package, &c.detail, c.source) {
        (_, Some(detail), _) if c.status == Status::Untried => format!("{}: {detail}", c.need),
        ("", Some(detail), _) => format!("{}: {detail}", c.need),
        ("", None, _) => c.need.to_string(),
        (package, _, Source::Debian) => format!("{} (Debian package {package})", c.need),
        (package, _, Source::Venv) => {
            format!("{} (PyPI package {package}, in the venv {} that .ci/install makes)", c.need, venv().display())
        }
    }
}

fn check_one(need: &'static Need, ctx: &Context) -> Checked {
    match need.probe {
        Probe::Program { name, version, works } => match find_program(name) {
            Some(path) => run_found(need, &path, version, works, ctx.probe),
            None => Checked::new(need, Status::Missing).with(None, Some(format!("`{name}` is not on PATH"))),
        },
        Probe::Helper { name } => match helper_dirs().iter().map(|d| d.join(name)).find(|p| is_executable(p)) {
            Some(path) => run_found(need, &path, VERSION, None, ctx.probe),
            None => Checked::new(need, Status::Missing)
                .with(None, Some(format!("`{name}` is in none of podman's helper directories"))),
        },
        Probe::File { path, version } if Path::new(path).is_file() => {
            run_found(need, Path::new(path), version, None, ctx.probe)
        }
        Probe::File { path, .. } => {
            Checked::new(need, Status::Missing).with(Some(path.into()), Some("no such file".into()))
        }
        Probe::Venv { program, dist } => check_venv(need, program, dist, ctx.probe),
        Probe::Store => check_store(need, &ctx.store),
        Probe::Boot => check_boot(need, ctx),
        Probe::Kvm => check_kvm(need),
        Probe::ContainerRun if ctx.probe => check_container_run(need),
        Probe::ForwardPolicy if ctx.probe => check_forward_policy(need),
        Probe::ContainerRun | Probe::ForwardPolicy => {
            // A quick look (deploy compose's warning): what it requires was found.
            Checked::new(need, Status::Advice).with(None, Some("not tried here (`imgbuild doctor` tries it)".into()))
        }
    }
}

/// A found program: its version, and whether it works here when that can be asked.
fn run_found(need: &'static Need, path: &Path, version: &[&str], works: Option<&[&str]>, probe: bool) -> Checked {
    let mut checked = Checked::new(need, Status::Found).with(Some(path.display().to_string()), None);
    if !probe {
        return checked;
    }
    if !version.is_empty() {
        checked.version = run_bounded(path, version, PROBE_TIMEOUT).ok().and_then(|out| version_of(need.id, &out));
    }
    if let Some(args) = works {
        match run_bounded(path, args, PROBE_TIMEOUT) {
            Ok(said) => checked.detail = Some(format!("`{} {}` answers: {}", need.id, args[0], first_line(&said))),
            Err(why) => {
                checked.status = Status::Broken;
                checked.detail = Some(format!("`{} {}` failed: {why}", need.id, args[0]));
            }
        }
    }
    checked
}

/// A program of the tests' venv, and the version of its distribution there.
fn check_venv(need: &'static Need, program: &str, dist: &str, probe: bool) -> Checked {
    let path = venv().join("bin").join(program);
    let shown = Some(path.display().to_string());
    if !is_executable(&path) {
        return Checked::new(need, Status::Missing).with(shown, Some("no such program: run .ci/install".into()));
    }
    let mut checked = Checked::new(need, Status::Found).with(shown, None);
    if probe {
        let query = "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))";
        match run_bounded(&venv().join("bin/python"), &["-c", query, dist], PROBE_TIMEOUT) {
            Ok(said) => checked.version = version_in(&said),
            Err(why) => {
                checked.status = Status::Broken;
                checked.detail = Some(format!("{dist} is not installed in the venv: {why}"));
            }
        }
    }
    checked
}

/// `name` as a command finds it: the first executable file of that name in PATH's directories.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where podman looks for netavark and aardvark-dns (containers.conf's default
/// `helper_binaries_dir`).
fn helper_dirs() -> Vec<PathBuf> {
    ["/usr/local/libexec/podman", "/usr/local/lib/podman", "/usr/libexec/podman", "/usr/lib/podman"]
        .iter()
        .map(PathBuf::from)
        .collect()
}

/// Runs `program args` for at most `timeout`; its stdout and stderr when it succeeds, else why
/// not. The child is killed (by its own handle) when it takes too long.
fn run_bounded<A: AsRef<std::ffi::OsStr>>(program: &Path, args: &[A], timeout: Duration) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let readers = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut text);
        }
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut text);
        }
        text
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {} s", timeout.as_secs()));
            }
        }
    };
    let said = readers.join().unwrap_or_default();
    if status.success() {
        Ok(said)
    } else {
        Err(format!("{status}: {}", first_line(&said)))
    }
}

fn first_line(text: &str) -> String {
    crate::error::escape(text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or(""))
}

/// The version in what `name --version` printed: on the first line that names it, else the
/// first anywhere (`podman-compose` prints podman's version before its own).
fn version_of(name: &str, text: &str) -> Option<String> {
    text.lines().filter(|l| l.contains(name)).find_map(version_in).or_else(|| version_in(text))
}

/// The first word of `text` that reads as a version: a digit first, a dot inside
/// (`podman version 4.3.1`, `iptables v1.8.9`, `openjdk version "17.0.9"`).
fn version_in(text: &str) -> Option<String> {
    // Control characters end a word too: Debian's Maven colours its version line (ESC [m).
    text.split(|c: char| c.is_whitespace() || c.is_control() || c == ',' || c == '"' || c == '(' || c == ')')
        .map(|w| w.strip_prefix('v').unwrap_or(w))
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()) && w.contains('.'))
        .map(crate::error::escape)
}

/// The store's directory, or the nearest one above it that exists (where it would be made):
/// writable, with at least [`MIN_FREE`] bytes free.
fn check_store(need: &'static Need, store: &Path) -> Checked {
    let shown = Some(store.display().to_string());
    let Some(dir) = store.ancestors().find(|d| d.is_dir()) else {
        return Checked::new(need, Status::Broken).with(shown, Some("no directory of its path exists".into()));
    };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    if let Err(e) = rustix::fs::access(dir, rustix::fs::Access::WRITE_OK) {
        let why = format!("{} is not writable ({e}): choose another with --store or IMGBUILD_STORE", dir.display());
        return Checked::new(need, Status::Broken).with(shown, Some(why));
    }
    match rustix::fs::statvfs(dir) {
        Ok(fs) => {
            let free = fs.f_bavail.saturating_mul(fs.f_frsize);
            let room = format!("{} free", human(free));
            let status = if free >= MIN_FREE { Status::Found } else { Status::Broken };
            let detail = if status == Status::Found {
                room
            } else {
                format!("{room}: a cluster's inputs and layers need at least {}", human(MIN_FREE))
            };
            Checked::new(need, status).with(shown, Some(detail))
        }
        Err(e) => Checked::new(need, Status::Broken).with(shown, Some(format!("cannot tell its free space: {e}"))),
    }
}

fn human(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// The settings docs/running.md gives for hosts where runc's rlimits or crun's cgroups are refused
/// (containers inside containers): what the tests run podman with.
/// podman's own options, and `run`'s.
const RUN_SETTINGS: (&[&str], &[&str]) = (
    &["--runtime=runc", "--cgroup-manager=cgroupfs"],
    &["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"],
);

/// Runs a container whose root is an empty directory with the host's `/usr` (and `/bin`,
/// `/lib`, … as they are here) mounted read-only: it needs no image and no network. It writes a
/// token (the probe directory's random name) to a mounted directory, which the probe reads back:
/// a container ran (`ran`), not merely a podman that exited 0. A container that runs only with
/// [`RUN_SETTINGS`] is advice (put them in containers.conf).
fn check_container_run(need: &'static Need) -> Checked {
    let Some(podman) = find_program("podman") else {
        return untried(need, "missing");
    };
    let shown = Some(format!("{} run", podman.display()));
    // Random and new (mode 0700): a directory a crashed probe left is never reused.
    let dir = match tempfile::Builder::new().prefix("imgbuild-doctor-").tempdir() {
        Ok(dir) => dir,
        Err(e) => return Checked::new(need, Status::Broken).with(shown, Some(format!("no temporary directory: {e}"))),
    };
    let probe = ContainerProbe::new(dir.path());
    let result = probe.prepare().and_then(|mounts| match probe.run(&podman, &mounts, (&[], &[])) {
        Ok(()) => Ok(None),
        Err(why) => match probe.run(&podman, &mounts, RUN_SETTINGS) {
            Ok(()) => Ok(Some(why)),
            Err(_) => Err(why),
        },
    });
    let mut checked = match result {
        Ok(None) => Checked::new(need, Status::Found).with(shown, Some("a container ran (its token read back)".into())),
        Ok(Some(why)) => Checked::new(need, Status::Advice).with(
            shown,
            Some(format!(
                "a container runs only with runc, cgroupfs and ulimits ({why}): put them in containers.conf \
                 (docs/running.md, In a local engine) before running the nodes"
            )),
        ),
        Err(why) => Checked::new(need, Status::Broken).with(shown, Some(format!("no container runs here: {why}"))),
    };
    checked.ran = Some(checked.status.met());
    checked
}

/// The probe container's root, the directory it writes its token to, and the token.
struct ContainerProbe {
    root: PathBuf,
    out: PathBuf,
    token: String,
}

impl ContainerProbe {
    fn new(dir: &Path) -> ContainerProbe {
        let token = dir.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        ContainerProbe { root: dir.join("root"), out: dir.join("out"), token }
    }

    /// Makes the root and the token's directory: the `-v` arguments the container runs with.
    fn prepare(&self) -> Result<Vec<String>, String> {
        std::fs::create_dir(&self.out).map_err(|e| format!("{}: {e}", self.out.display()))?;
        let mut mounts = host_rootfs(&self.root)?;
        std::fs::create_dir(self.root.join("probe")).map_err(|e| format!("{}: {e}", self.root.display()))?;
        mounts.extend(["-v".to_string(), format!("{}:/probe", self.out.display())]);
        Ok(mounts)
    }

    /// Runs the container; Ok when it exited 0 and its token is there.
    fn run(&self, podman: &Path, mounts: &[String], settings: (&[&str], &[&str])) -> Result<(), String> {
        let token = self.out.join("token");
        let _ = std::fs::remove_file(&token);
        let mut args: Vec<std::ffi::OsString> = settings.0.iter().map(Into::into).collect();
        args.extend(["run", "--rm", "--network=none"].map(Into::into));
        args.extend(settings.1.iter().map(Into::into));
        args.extend(mounts.iter().map(Into::into));
        // `--rootfs DIR` stands where an image would: the last option.
        args.extend(["--rootfs".into(), self.root.clone().into_os_string()]);
        args.extend(["/bin/sh", "-c", "printf %s \"$1\" > /probe/token", "sh", &self.token].map(Into::into));
        run_bounded(podman, &args, PROBE_TIMEOUT)?;
        match std::fs::read_to_string(&token) {
            Ok(read) if read == self.token => Ok(()),
            Ok(read) => Err(format!("the container wrote {:?}, not its token", crate::error::escape(&read))),
            Err(e) => Err(format!("podman exited 0 but the container wrote no token ({e})")),
        }
    }
}

/// An empty root for a container, with the host's system directories as they are here (a link
/// stays a link, a directory is mounted read-only): the `-v` arguments that mount them.
fn host_rootfs(root: &Path) -> Result<Vec<String>, String> {
    std::fs::create_dir(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let mut mounts = Vec::new();
    for dir in ["usr", "bin", "sbin", "lib", "lib64"] {
        let host = Path::new("/").join(dir);
        let made = match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                std::fs::read_link(&host).and_then(|t| std::os::unix::fs::symlink(t, root.join(dir)))
            }
            Ok(m) if m.is_dir() => {
                mounts.extend(["-v".to_string(), format!("{0}:{0}:ro", host.display())]);
                std::fs::create_dir(root.join(dir))
            }
            _ => Ok(()),
        };
        made.map_err(|e| format!("{}: {e}", root.join(dir).display()))?;
    }
    Ok(mounts)
}

/// Where a Docker daemon runs, it sets iptables' FORWARD policy to DROP; netavark adds accept
/// rules for its own networks, but traffic between compose services is worth checking then.
fn check_forward_policy(need: &'static Need) -> Checked {
    let advice =
        |detail: String| Checked::new(need, Status::Advice).with(Some("iptables -S FORWARD".into()), Some(detail));
    let Some(iptables) = find_program("iptables") else {
        return untried(need, "missing");
    };
    match run_bounded(&iptables, &["-S", "FORWARD"], PROBE_TIMEOUT) {
        Err(why) => advice(format!("cannot read the FORWARD policy: {why}")),
        Ok(rules) if forward_dropped(&rules) => advice(
            "the FORWARD policy is DROP (a Docker daemon sets it): netavark accepts its own networks' \
             traffic, but check that compose services reach each other"
                .into(),
        ),
        Ok(_) => Checked::new(need, Status::Found).with(Some("iptables -S FORWARD".into()), Some("ACCEPT".into())),
    }
}

/// Whether `iptables -S FORWARD` says the chain's policy is DROP.
fn forward_dropped(rules: &str) -> bool {
    rules.lines().any(|l| l.split_whitespace().eq(["-P", "FORWARD", "DROP"]))
}

/// The kernel and initrd the templates boot by default: both readable.
fn check_boot(need: &'static Need, ctx: &Context) -> Checked {
    let shown = Some(format!("{}, {}", ctx.kernel.display(), ctx.initrd.display()));
    for file in [&ctx.kernel, &ctx.initrd] {
        if let Err(e) = std::fs::File::open(file) {
            let why = format!("cannot read {} ({e}): install a kernel, or pass --kernel and --initrd", file.display());
            return Checked::new(need, Status::Missing).with(shown, Some(why));
        }
    }
    Checked::new(need, Status::Found).with(shown, None)
}

/// Whether a KVM guest can run here, without booting one: `/dev/kvm` answers its API version
/// and makes an empty virtual machine (two ioctls). Inside a virtual machine (the CPU's
/// `hypervisor` flag) KVM is nested, and a guest can hang early in its boot: the advice is TCG.
fn check_kvm(need: &'static Need) -> Checked {
    let advice = |detail: String| Checked::new(need, Status::Advice).with(Some("/dev/kvm".into()), Some(detail));
    if let Err(why) = kvm_makes_a_vm() {
        return advice(format!("KVM cannot be used ({why}): the boot scripts use TCG (software emulation, slower)"));
    }
    let nested = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"))
    });
    if nested {
        return advice(
            "KVM answers, but this host is itself a virtual machine: a nested KVM guest can hang \
             (after \"Probing EDD\"); use IMGBUILD_ACCEL=tcg"
                .into(),
        );
    }
    Checked::new(need, Status::Found).with(Some("/dev/kvm".into()), Some("KVM makes virtual machines".into()))
}

fn kvm_makes_a_vm() -> Result<(), String> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // <linux/kvm.h>: _IO(KVMIO, 0x00) and _IO(KVMIO, 0x01); the API version has been 12 since 2007.
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").map_err(|e| e.to_string())?;
    // SAFETY: both ioctls take no pointer argument; the descriptor is open for their duration.
    let version = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if version != 12 {
        return Err(format!("KVM API version {version}, not 12"));
    }
    // SAFETY: as above; the descriptor it returns is owned (and closed) below.
    let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM as _, 0) };
    if vm < 0 {
        return Err(format!("cannot make a virtual machine: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `vm` is a new descriptor that nothing else owns.
    drop(unsafe { OwnedFd::from_raw_fd(vm) });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_need_is_named_once_and_every_feature_has_needs() {
        let mut ids: Vec<&str> = NEEDS.iter().map(|n| n.id).collect();
        ids.sort_unstable();
        let count = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), count, "a need is named twice");
        for f in Feature::ALL {
            assert!(NEEDS.iter().any(|n| n.features.contains(&f)), "{f:?} has no needs");
            assert_eq!(f.name().parse::<Feature>().unwrap(), f);
        }
        // Only what no package provides has no package.
        for n in NEEDS.iter().filter(|n| n.package.is_empty()) {
            assert!(matches!(n.probe, Probe::Store | Probe::Kvm), "{} names no package", n.id);
        }
    }

    #[test]
    fn every_tool_imgbuild_runs_is_a_program_of_the_table_with_its_package() {
        let runs =
            crate::output::vm::TOOLS.iter().chain(&["podman", "docker", "qemu-system-x86_64", "qemu-system-aarch64"]);
        for tool in runs {
            let need = NEEDS.iter().find(|n| n.id == *tool).unwrap_or_else(|| panic!("{tool} is not in the table"));
            assert!(matches!(need.probe, Probe::Program { name, .. } if name == *tool), "{tool}");
            assert!(!need.package.is_empty(), "{tool}");
        }
    }

    #[test]
    fn versions_are_read_from_what_tools_print() {
        for (said, version) in [
            ("podman version 4.3.1\n", "4.3.1"),
            ("iptables v1.8.9 (nf_tables)\n", "1.8.9"),
            ("openjdk version \"17.0.9\" 2023-10-17\n", "17.0.9"),
            ("mke2fs 1.47.0 (5-Feb-2023)\n", "1.47.0"),
            ("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u16)", "7.2.19"),
            ("\u{1b}[0mApache Maven 3.8.7\u{1b}[m\n", "3.8.7"),
        ] {
            assert_eq!(version_in(said).as_deref(), Some(version), "{said}");
        }
        assert_eq!(version_in("no version here 12"), None);
        let compose = "['podman', '--version', '']\nusing podman version: 4.3.1\npodman-composer version  1.0.3\n";
        assert_eq!(version_of("podman-compose", compose).as_deref(), Some("1.0.3"));
    }

    /// A group is met by any one member; a feature lists, per unmet group, every alternative.
    #[test]
    fn alternatives_make_one_need_of_a_feature() {
        let of = |id: &str, status: Status| {
            let need = NEEDS.iter().find(|n| n.id == id).unwrap();
            Checked::new(need, status)
        };
        let engines = [of("podman", Status::Missing), of("docker", Status::Found), of("store", Status::Found)];
        assert!(feature_state(Feature::Load, &engines).ready);
        let none = [of("podman", Status::Missing), of("docker", Status::Broken), of("store", Status::Found)];
        let state = feature_state(Feature::Load, &none);
        assert!(!state.ready);
        assert_eq!(state.missing, ["podman (Debian package podman) or docker (Debian package docker.io)"]);
        assert_eq!(state.packages, ["podman"]);
        let kvm = [of("kvm", Status::Missing), of("qemu-img", Status::Found)];
        assert!(feature_state(Feature::Vm, &kvm).ready, "an advisory need never makes a feature not ready");
    }

    fn checked_as(status: impl Fn(&Need) -> Status) -> Vec<Checked> {
        NEEDS.iter().map(|n| Checked::new(n, status(n))).collect()
    }

    /// Whatever else is found, a feature whose need (not advisory) is unmet, with no member of
    /// its group of alternatives met, is not ready: missing, broken or untried alike.
    #[test]
    fn an_unmet_need_is_never_taken_for_advice() {
        for feature in Feature::ALL {
            for need in NEEDS.iter().filter(|n| n.features.contains(&feature) && !n.advisory) {
                for unmet in [Status::Missing, Status::Broken, Status::Untried] {
                    // Untried: what it requires, and that one's alternatives, are not of use.
                    let required = NEEDS.iter().find(|n| unmet == Status::Untried && Some(n.id) == need.requires);
                    let group =
                        |n: &Need, of: &Need| feature != Feature::Tests && n.one_of.is_some() && n.one_of == of.one_of;
                    let needs = checked_as(|n| match (n.id == need.id, required) {
                        (true, _) => unmet,
                        (false, Some(r)) if n.id == r.id || group(n, r) => Status::Missing,
                        (false, _) if group(n, need) => unmet,
                        _ => Status::Found,
                    });
                    let state = feature_state(feature, &needs);
                    assert!(!state.ready, "{feature:?} is ready with {} {unmet:?}", need.id);
                    assert!(!state.missing.is_empty());
                }
            }
            let all = checked_as(|n| if n.advisory { Status::Missing } else { Status::Found });
            assert!(feature_state(feature, &all).ready, "{feature:?}");
        }
    }

    /// container-run without podman is untried: met by docker for load and compose (as podman
    /// is), never for the tests (which run podman); said through the engines' group.
    #[test]
    fn an_untried_need_waits_for_the_alternatives_of_what_it_requires() {
        let with = |docker: Status| {
            let mut needs = checked_as(|n| match n.id {
                "podman" => Status::Missing,
                "container-run" => Status::Untried,
                "docker" => docker,
                _ => Status::Found,
            });
            let instead: Vec<_> = needs.iter().map(|c| alternative_found(c, &needs, false)).collect();
            needs.iter_mut().zip(instead).for_each(|(c, i)| c.instead = i);
            needs
        };
        let needs = with(Status::Found);
        assert!(feature_state(Feature::Compose, &needs).ready);
        assert!(feature_state(Feature::Load, &needs).ready);
        assert!(!feature_state(Feature::Tests, &needs).ready);
        let run = needs.iter().find(|c| c.need == "container-run").unwrap();
        assert_eq!(run.instead, Some("docker"));
        let needs = with(Status::Broken);
        let state = feature_state(Feature::Compose, &needs);
        assert!(!state.ready);
        assert_eq!(state.missing, ["podman (Debian package podman) or docker (Debian package docker.io)"]);
        assert!(needs.iter().all(|c| c.instead.is_none()));
    }

    /// A need probed after another: that one has no requirement of its own and is asked
    /// wherever this one is (else it would always be untried).
    #[test]
    fn a_required_need_is_checked_wherever_its_dependent_is() {
        for need in NEEDS.iter().filter(|n| n.requires.is_some()) {
            let required = NEEDS.iter().find(|n| Some(n.id) == need.requires).expect(need.id);
            assert!(required.requires.is_none(), "{}", need.id);
            assert!(need.features.iter().all(|f| required.features.contains(f)), "{}", need.id);
        }
    }

    /// The comment on [`NEEDS`]: `.ci/install` names the package of every need of the tests
    /// (Debian's, or the venv's distribution), except Debian's essential ones.
    #[test]
    fn ci_install_installs_every_package_the_tests_need() {
        // Essential (priority required): on every Debian system.
        const ESSENTIAL: &[&str] = &["bash", "coreutils", "dpkg", "util-linux"];
        let install = include_str!("../.ci/install");
        let words: Vec<&str> =
            install.split(|c: char| c.is_whitespace() || "\"'=()".contains(c)).filter(|w| !w.is_empty()).collect();
        for need in NEEDS.iter().filter(|n| n.features.contains(&Feature::Tests) && !n.package.is_empty()) {
            if ESSENTIAL.contains(&need.package) {
                continue;
            }
            assert!(words.contains(&need.package), "{}: .ci/install does not install {}", need.id, need.package);
        }
    }

    /// An engine that exits 0 without running the container (here `true` stands for podman)
    /// is not taken for one that ran: the token must be read back.
    #[test]
    fn a_container_ran_only_when_its_token_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let probe = ContainerProbe::new(dir.path());
        let mounts = probe.prepare().unwrap();
        assert!(mounts.iter().any(|m| m.ends_with(":/probe")), "{mounts:?}");
        let err = probe.run(Path::new("/bin/true"), &mounts, (&[], &[])).unwrap_err();
        assert!(err.contains("wrote no token"), "{err}");
    }

    #[test]
    fn a_forward_policy_of_drop_is_seen() {
        assert!(forward_dropped("-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n"));
        assert!(!forward_dropped("-P FORWARD ACCEPT\n-A FORWARD -m comment --comment \"-P FORWARD DROP\" -j X\n"));
    }

    #[test]
    fn a_program_that_outlives_its_bound_is_stopped() {
        let start = Instant::now();
        let err = run_bounded(Path::new("/bin/sh"), &["-c", "sleep 30"], Duration::from_millis(300)).unwrap_err();
        assert!(err.contains("no answer"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(run_bounded(Path::new("/bin/sh"), &["-c", "echo 1.2.3"], PROBE_TIMEOUT).unwrap(), "1.2.3\n");
    }
}
