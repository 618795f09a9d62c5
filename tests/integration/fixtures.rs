//! Inputs the tests make themselves: tarballs shaped like the real JDK, ZooKeeper and Kafka
//! distributions, and a tiny base image as an OCI layout. Contents are generated from a fixed
//! seed, so every run makes the same bytes.

use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

pub enum Entry {
    Dir(&'static str),
    File(String, Vec<u8>, u32),
    Symlink(String, String),
    Hardlink(String, String),
    /// A raw header name, for entries the tar crate's path checks would refuse to write.
    RawFile(Vec<u8>, Vec<u8>),
    CharDevice(String),
}

/// Pseudo-random bytes (incompressible) from a seed.
pub fn noise(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Compressible text.
pub fn text(word: &str, len: usize) -> Vec<u8> {
    word.bytes().cycle().take(len).collect()
}

/// Appends one entry with the owners, names and times an upstream tarball carries (the layer
/// must drop them).
fn append(builder: &mut tar::Builder<Vec<u8>>, e: &Entry) {
    let mut h = tar::Header::new_gnu();
    h.set_uid(1001);
    h.set_gid(1001);
    h.set_username("builder").unwrap();
    h.set_groupname("staff").unwrap();
    h.set_mtime(1_500_000_000);
    match e {
        Entry::Dir(p) => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o775);
            h.set_size(0);
            builder.append_data(&mut h, p, std::io::empty()).unwrap();
        }
        Entry::File(p, data, mode) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(*mode);
            h.set_size(data.len() as u64);
            builder.append_data(&mut h, p, &data[..]).unwrap();
        }
        Entry::Symlink(p, target) => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            builder.append_link(&mut h, p, target).unwrap();
        }
        Entry::Hardlink(p, target) => {
            h.set_entry_type(tar::EntryType::Link);
            h.set_mode(0o644);
            h.set_size(0);
            builder.append_link(&mut h, p, target).unwrap();
        }
        Entry::RawFile(name, data) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            builder.append(&h, &data[..]).unwrap();
        }
        Entry::CharDevice(p) => {
            h.set_entry_type(tar::EntryType::Char);
            h.set_mode(0o666);
            h.set_size(0);
            builder.append_data(&mut h, p, std::io::empty()).unwrap();
        }
    }
}

/// An uncompressed tar of `entries`, in order.
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        append(&mut builder, e);
    }
    builder.into_inner().unwrap()
}

pub fn tar_gz(entries: &[Entry]) -> Vec<u8> {
    gzip(&tar(entries))
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// `data` compressed as `format` (`gz`, `xz`, `bz2`, `zst`), the last three by their reference
/// tools, as upstreams make them.
pub fn compressed(format: &str, data: &[u8]) -> Vec<u8> {
    let (tool, args): (&str, &[&str]) = match format {
        "gz" => return gzip(data),
        "xz" => ("xz", &["-c", "-T1"]),
        "bz2" => ("bzip2", &["-c"]),
        "zst" => ("zstd", &["-c", "-q"]),
        other => panic!("no compressor for {other}"),
    };
    let mut child = std::process::Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool} (installed by .ci/install): {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{tool} failed");
    out.stdout
}

fn file(p: &str, data: Vec<u8>, mode: u32) -> Entry {
    Entry::File(p.to_string(), data, mode)
}

/// Shaped like `OpenJDK8U-jdk_*_linux_hotspot_8u392b08.tar.gz`: `jdk8u392-b08/` with a JRE,
/// relative symlinks, a hard link, and `src.zip` (which the recipe excludes).
pub fn jdk(arch: &str) -> Vec<u8> {
    let seed = if arch == "amd64" { 1 } else { 2 };
    tar_gz(&[
        Entry::Dir("jdk8u392-b08/"),
        Entry::Dir("jdk8u392-b08/bin/"),
        file("jdk8u392-b08/bin/java", [b"#!/bin/sh\necho java ".to_vec(), arch.as_bytes().to_vec()].concat(), 0o775),
        file("jdk8u392-b08/bin/javac", noise(seed + 10, 40_000), 0o755),
        Entry::Dir("jdk8u392-b08/jre/lib/amd64/server/"),
        file("jdk8u392-b08/jre/lib/amd64/server/libjvm.so", noise(seed, 1_500_000), 0o755),
        file("jdk8u392-b08/jre/lib/amd64/libjsig.so", noise(seed + 20, 3000), 0o755),
        Entry::Symlink("jdk8u392-b08/jre/lib/amd64/server/libjsig.so".into(), "../libjsig.so".into()),
        file("jdk8u392-b08/jre/lib/rt.jar", text("java/lang/Object.class ", 1_200_000), 0o664),
        Entry::Hardlink("jdk8u392-b08/jre/lib/rt-link.jar".into(), "jdk8u392-b08/jre/lib/rt.jar".into()),
        file("jdk8u392-b08/release", b"JAVA_VERSION=\"1.8.0_392\"\n".to_vec(), 0o644),
        file("jdk8u392-b08/src.zip", noise(seed + 30, 50_000), 0o644),
    ])
}

/// Shaped like `zookeeper-3.4.10.tar.gz`.
pub fn zookeeper() -> Vec<u8> {
    tar_gz(&[
        Entry::Dir("zookeeper-3.4.10/"),
        Entry::Dir("zookeeper-3.4.10/bin/"),
        file("zookeeper-3.4.10/bin/zkServer.sh", b"#!/bin/sh\necho zookeeper \"$@\"\n".to_vec(), 0o755),
        file("zookeeper-3.4.10/bin/zkCli.sh", b"#!/bin/sh\necho cli\n".to_vec(), 0o755),
        Entry::Dir("zookeeper-3.4.10/conf/"),
        file("zookeeper-3.4.10/conf/zoo_sample.cfg", b"tickTime=2000\n".to_vec(), 0o644),
        Entry::Dir("zookeeper-3.4.10/lib/"),
        file("zookeeper-3.4.10/lib/slf4j-api-1.6.1.jar", noise(7, 200_000), 0o644),
        file("zookeeper-3.4.10/zookeeper-3.4.10.jar", noise(8, 300_000), 0o644),
        Entry::Dir("zookeeper-3.4.10/docs/"),
        file("zookeeper-3.4.10/docs/index.html", text("<html>docs</html>", 20_000), 0o644),
        Entry::Dir("zookeeper-3.4.10/src/"),
        file("zookeeper-3.4.10/src/Main.java", text("class Main {}", 10_000), 0o644),
    ])
}

/// Shaped like `kafka_2.11-1.0.0.tgz`.
pub fn kafka() -> Vec<u8> {
    tar_gz(&[
        Entry::Dir("kafka_2.11-1.0.0/"),
        Entry::Dir("kafka_2.11-1.0.0/bin/"),
        file("kafka_2.11-1.0.0/bin/kafka-server-start.sh", b"#!/bin/sh\necho kafka \"$@\"\n".to_vec(), 0o755),
        Entry::Dir("kafka_2.11-1.0.0/config/"),
        file("kafka_2.11-1.0.0/config/server.properties", b"broker.id=0\n".to_vec(), 0o644),
        Entry::Dir("kafka_2.11-1.0.0/libs/"),
        file("kafka_2.11-1.0.0/libs/kafka_2.11-1.0.0.jar", noise(9, 900_000), 0o644),
        file("kafka_2.11-1.0.0/libs/scala-library-2.11.11.jar", text("scala.Predef ", 600_000), 0o644),
        Entry::Dir("kafka_2.11-1.0.0/site-docs/"),
        file("kafka_2.11-1.0.0/site-docs/kafka_2.11-1.0.0-site-docs.tgz", noise(10, 10_000), 0o644),
    ])
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn sha512_hex(data: &[u8]) -> String {
    use sha2::Sha512;
    hex::encode(Sha512::digest(data))
}

fn put_blob(dir: &Path, data: &[u8]) -> (String, usize) {
    let hex = sha256_hex(data);
    std::fs::write(dir.join("blobs/sha256").join(&hex), data).unwrap();
    (format!("sha256:{hex}"), data.len())
}

/// A tiny base image (one layer with `/etc/os-release` and a `/bin` directory) as an OCI
/// layout, as `skopeo copy` would write it. Returns the manifest digest per platform.
pub fn base_layout(dir: &Path, platforms: &[&str]) -> Vec<(String, String)> {
    let layers: Vec<(&str, Vec<u8>)> = platforms
        .iter()
        .map(|arch| {
            let mut tar = tar::Builder::new(Vec::new());
            for (path, data) in
                [("etc/os-release", format!("ID=testbase\nARCH={arch}\n")), ("etc/hostname", "base\n".to_string())]
            {
                let mut h = tar::Header::new_ustar();
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                tar.append_data(&mut h, path, data.as_bytes()).unwrap();
            }
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            tar.append_data(&mut h, "bin/", std::io::empty()).unwrap();
            (*arch, tar.into_inner().unwrap())
        })
        .collect();
    write_layout(dir, &layers)
}

/// A tar of the directory `root` as a root-filesystem tarball: entries sorted, symlinks kept
/// as links, then `extra`.
pub fn tar_of_root(root: &Path, extra: &[Entry]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    fn walk(tar: &mut tar::Builder<Vec<u8>>, base: &Path, dir: &Path) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for path in entries {
            let rel = path.strip_prefix(base).unwrap();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            tar.append_path_with_name(&path, rel).unwrap();
            if meta.is_dir() {
                walk(tar, base, &path);
            }
        }
    }
    walk(&mut tar, root, root);
    for e in extra {
        append(&mut tar, e);
    }
    tar.into_inner().unwrap()
}

/// An OCI layout whose one layer is the directory `root` (symlinks kept, entries sorted).
pub fn layout_from_root(dir: &Path, root: &Path) -> String {
    write_layout(dir, &[("amd64", tar_of_root(root, &[]))]).remove(0).1
}

/// An amd64 OCI layout whose image has `layers` (uncompressed tars, lowest first).
pub fn layered_layout(dir: &Path, layers: &[Vec<u8>]) -> String {
    write_layers(dir, &[("amd64", layers)], BASE_ENV).remove(0).1
}

/// The same, with `env` as its configuration's environment.
pub fn layered_layout_with_env(dir: &Path, layers: &[Vec<u8>], env: &[&str]) -> String {
    write_layers(dir, &[("amd64", layers)], env).remove(0).1
}

/// The environment of the test bases.
const BASE_ENV: &[&str] = &["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "BASE=1"];

/// Writes an OCI layout with one single-layer image per (architecture, uncompressed tar).
fn write_layout(dir: &Path, images: &[(&str, Vec<u8>)]) -> Vec<(String, String)> {
    let layered: Vec<(&str, &[Vec<u8>])> = images.iter().map(|(a, l)| (*a, std::slice::from_ref(l))).collect();
    write_layers(dir, &layered, BASE_ENV)
}

/// Writes an OCI layout with one image per (architecture, its layers as uncompressed tars).
fn write_layers(dir: &Path, images: &[(&str, &[Vec<u8>])], env: &[&str]) -> Vec<(String, String)> {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut manifests = Vec::new();
    let mut out = Vec::new();
    for (arch, raws) in images {
        let mut layers = Vec::new();
        for raw in raws.iter() {
            let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(raw).unwrap();
            let (digest, size) = put_blob(dir, &gz.finish().unwrap());
            layers.push(serde_json::json!({ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size }));
        }
        let diff_ids: Vec<String> = raws.iter().map(|raw| format!("sha256:{}", sha256_hex(raw))).collect();
        let history: Vec<_> = raws
            .iter()
            .map(|_| serde_json::json!({ "created": "2026-08-03T00:00:00Z", "created_by": "test base" }))
            .collect();
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": { "Env": env },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": history,
        });
        let (config_digest, config_size) = put_blob(dir, config.to_string().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size },
            "layers": layers,
        });
        let (manifest_digest, manifest_size) = put_blob(dir, manifest.to_string().as_bytes());
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest_size,
            "platform": { "architecture": arch, "os": "linux" },
            "annotations": { "org.opencontainers.image.ref.name": format!("bookworm-{arch}") },
        }));
        out.push((arch.to_string(), manifest_digest));
    }
    let index = serde_json::json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    out
}
