//! Real inputs made from this machine's Debian packages, shaped like the upstream artifacts:
//! a small usr-merged root (glibc, dash, coreutils, sed) as an OCI base image, Java 17 from
//! `openjdk-17-jre-headless` as a JDK tarball, and a ZooKeeper distribution from the
//! `zookeeper` package's jars. Nothing is downloaded.

use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::write::GzEncoder;

pub const JAVA_HOME: &str = "/usr/lib/jvm/java-17-openjdk-amd64";
pub const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";

/// What the base root needs: the loader and C/C++ runtimes Java links against, a shell and
/// the few tools the entrypoint uses.
pub const BASE_PACKAGES: &[&str] = &[
    "libc6",
    "libgcc-s1",
    "libstdc++6",
    "zlib1g",
    "dash",
    "coreutils",
    "sed",
    "libacl1",
    "libattr1",
    "libgmp10",
    "libselinux1",
    "libpcre2-8-0",
];

/// `/lib/x` → `usr/lib/x`, as on a usr-merged system.
fn merged(path: &Path) -> PathBuf {
    let rel = path.strip_prefix("/").unwrap();
    let first = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
    if ["bin", "sbin", "lib", "lib64", "lib32", "libx32"].contains(&first.as_str()) {
        Path::new("usr").join(rel)
    } else {
        rel.to_path_buf()
    }
}

/// Copies the installed files of `packages` into `root`, usr-merged.
pub fn debian_root(root: &Path, packages: &[&str]) {
    for dir in ["usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc", "tmp", "var/lib", "proc", "sys", "dev", "run"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    for link in ["bin", "sbin", "lib", "lib64"] {
        symlink(format!("usr/{link}"), root.join(link)).unwrap();
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    for pkg in packages {
        let out = Command::new("dpkg").args(["-L", pkg]).output().unwrap();
        assert!(out.status.success(), "dpkg -L {pkg}: {}", String::from_utf8_lossy(&out.stderr));
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let src = Path::new(line);
            if line == "/."
                || line.starts_with("/usr/share/doc")
                || line.starts_with("/usr/share/man")
                || line.starts_with("/usr/share/locale")
            {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(src) else { continue };
            let dest = root.join(merged(src));
            if meta.is_dir() {
                std::fs::create_dir_all(&dest).unwrap();
            } else if meta.file_type().is_symlink() {
                std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
                if !dest.exists() && std::fs::symlink_metadata(&dest).is_err() {
                    symlink(std::fs::read_link(src).unwrap(), &dest).unwrap();
                }
            } else if meta.is_file() {
                std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
                std::fs::copy(src, &dest).unwrap();
            }
        }
    }
    if std::fs::symlink_metadata(root.join("usr/bin/sh")).is_err() {
        symlink("dash", root.join("usr/bin/sh")).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
}

/// A tar.gz of `dir` under `top/`, symlinks followed (dangling ones left out), sorted.
pub fn tarball_of(dir: &Path, top: &str) -> Vec<u8> {
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    tar.follow_symlinks(true);
    fn walk(tar: &mut tar::Builder<GzEncoder<Vec<u8>>>, dir: &Path, name: &Path) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        tar.append_dir(name, dir).unwrap();
        for path in entries {
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            let child = name.join(path.file_name().unwrap());
            if meta.is_dir() {
                walk(tar, &path, &child);
            } else {
                tar.append_path_with_name(&path, &child).unwrap();
            }
        }
    }
    walk(&mut tar, dir, Path::new(top));
    tar.into_inner().unwrap().finish().unwrap()
}

/// The jars `jar`'s manifest names on its `Class-Path`, recursively.
fn class_path_closure(jar: &Path, seen: &mut Vec<PathBuf>) {
    let jar = std::fs::canonicalize(jar).unwrap_or_else(|_| jar.to_path_buf());
    if seen.contains(&jar) || !jar.is_file() {
        return;
    }
    seen.push(jar.clone());
    let out = Command::new("unzip").arg("-p").arg(&jar).arg("META-INF/MANIFEST.MF").output().unwrap();
    let manifest = String::from_utf8_lossy(&out.stdout).replace("\r\n ", "").replace("\n ", "");
    for line in manifest.lines() {
        if let Some(paths) = line.strip_prefix("Class-Path:") {
            for p in paths.split_whitespace() {
                let p = Path::new(p);
                let p = if p.is_absolute() { p.to_path_buf() } else { jar.parent().unwrap().join(p) };
                class_path_closure(&p, seen);
            }
        }
    }
}

/// `zkServer.sh start-foreground` and `zkServer.sh status`, the latter as ZooKeeper 3.4.10's
/// own: `srvr` sent through Java to `clientPortAddress` (else localhost) and `clientPort` of
/// `conf/zoo.cfg`, printing the `Mode:` line.
const ZK_SERVER: &str = r#"cfg=$ZK_HOME/conf/zoo.cfg
case ${1-} in
start-foreground) exec java -Xmx192m -cp "$ZK_HOME/lib/*" org.apache.zookeeper.server.quorum.QuorumPeerMain "$cfg" ;;
status)
    address=$(sed -n 's/^[[:space:]]*clientPortAddress=//p' "$cfg")
    port=$(sed -n 's/^[[:space:]]*clientPort=//p' "$cfg")
    mode=$(java -Xmx64m -cp "$ZK_HOME/lib/*" org.apache.zookeeper.client.FourLetterWordMain "${address:-localhost}" "$port" srvr 2>/dev/null | sed -n "/Mode/p")
    [ -n "$mode" ] || { echo "Error contacting service. It is probably not running."; exit 1; }
    echo "$mode" ;;
*) echo 'usage: zkServer.sh start-foreground|status' >&2; exit 2 ;;
esac
"#;

/// A ZooKeeper distribution shaped like the upstream tarball (`bin/`, `conf/`, `lib/`), made
/// of Debian's `zookeeper` jars and everything their manifests need.
pub fn zookeeper_dist(work: &Path) -> Vec<u8> {
    let dist = work.join("zookeeper-dist");
    for d in ["bin", "conf", "lib"] {
        std::fs::create_dir_all(dist.join(d)).unwrap();
    }
    let mut jars = Vec::new();
    class_path_closure(Path::new(ZOOKEEPER_JAR), &mut jars);
    // slf4j's simple binding, so ZooKeeper's log reaches the container's output.
    class_path_closure(Path::new("/usr/share/java/slf4j-simple.jar"), &mut jars);
    for jar in &jars {
        std::fs::copy(jar, dist.join("lib").join(jar.file_name().unwrap())).unwrap();
    }
    let scripts = [
        ("zkServer.sh", ZK_SERVER),
        ("zkCli.sh", "exec java -Xmx96m -cp \"$ZK_HOME/lib/*\" org.apache.zookeeper.ZooKeeperMain \"$@\"\n"),
    ];
    for (name, body) in scripts {
        let path = dist.join("bin").join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        write!(f, "#!/bin/sh\n# Made by imgbuild's tests, shaped like ZooKeeper's own script.\nZK_HOME=$(cd \"$(dirname \"$0\")/..\" && pwd)\n{body}").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(dist.join("conf/zoo_sample.cfg"), "tickTime=2000\n").unwrap();
    tarball_of(&dist, "zookeeper-3.8.0")
}

/// Kafka's start script replaced by one that records how it was started, writes
/// `meta.properties` as a broker does on first start, and runs until stopped.
pub fn kafka_standin(work: &Path) -> Vec<u8> {
    let dist = work.join("kafka-dist");
    std::fs::create_dir_all(dist.join("bin")).unwrap();
    std::fs::create_dir_all(dist.join("config")).unwrap();
    let script = r#"#!/bin/sh
# Stand-in for Kafka's start script (no Kafka broker can be installed here).
logs=$(sed -n 's/^log.dirs=//p' "$1")
mkdir -p "$logs"
printf '%s\n' "$@" >"$logs/started-with.args"
env >"$logs/started-with.env"
cp "$1" "$logs/started-with.properties"
id=$(sed -n 's/^broker.id=//p' "$1")
[ -f "$logs/meta.properties" ] || printf 'version=0\nbroker.id=%s\n' "$id" >"$logs/meta.properties"
trap 'echo stopped >"$logs/stopped"; exit 0' TERM INT
while :; do sleep 1 & wait $!; done
"#;
    let path = dist.join("bin/kafka-server-start.sh");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    zookeeper_shell(&dist);
    std::fs::write(dist.join("config/server.properties"), "broker.id=0\n").unwrap();
    tarball_of(&dist, "kafka_2.11-1.0.0")
}

/// Kafka's `bin/zookeeper-shell.sh` in the stand-in distribution `dist`: Kafka's runs ZooKeeper's
/// client (`ZooKeeperMain -server "$@"`) the same way, from the node's ZooKeeper jars.
pub fn zookeeper_shell(dist: &Path) {
    let shell = "#!/bin/sh\nexec java -Xmx64m -cp \"/usr/local/zookeeper/lib/*\" org.apache.zookeeper.ZooKeeperMain -server \"$@\"\n";
    let path = dist.join("bin/zookeeper-shell.sh");
    std::fs::write(&path, shell).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Fails the test unless this machine has what the real-ZooKeeper tests build from.
pub fn require() {
    ["java", "zookeeper", "podman", "runc", "unzip", "dpkg"].iter().for_each(|t| super::harness::require_tool(t));
}
