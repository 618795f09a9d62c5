//! `cargo bench`: imgbuild against the baseline pipeline, on generated inputs shaped and sized
//! like the real JDK (about 100 MB compressed, 200 MB unpacked, thousands of files), ZooKeeper
//! (about 35 MB) and Kafka (about 50 MB). Prints a Markdown report; BENCHMARKS.md keeps one.
//!
//! Set IMGBUILD_BENCH_QUICK=1 for a smaller run (a quarter of the sizes, no 1 GB input).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use imgbuild::testing::{hash_reader, Algorithm};
use imgbuild::testing::{Codec, Compressor, LayerWriter, Parallelism};

const BIN: &str = env!("CARGO_BIN_EXE_imgbuild");

/// Deterministic pseudo-random bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn noise(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// Text like source, properties and HTML: compresses to roughly a quarter.
    fn text(&mut self, len: usize) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "java",
            "lang",
            "Object",
            "class",
            "public",
            "static",
            "final",
            "void",
            "org",
            "apache",
            "zookeeper",
            "kafka",
            "server",
            "quorum",
            "broker",
            "config",
            "<div>",
            "</div>",
            "return",
            "import",
            "String",
            "new",
            "{",
            "}",
            ";",
        ];
        let mut out = Vec::with_capacity(len + 32);
        while out.len() < len {
            let n = self.next();
            out.extend_from_slice(WORDS[(n % WORDS.len() as u64) as usize].as_bytes());
            out.push(if n.is_multiple_of(7) { b'\n' } else { b' ' });
            if n.is_multiple_of(5) {
                out.extend_from_slice((n % 100_000).to_string().as_bytes());
            }
        }
        out.truncate(len);
        out
    }
}

struct Input {
    name: &'static str,
    recipe: &'static str,
    prefix: &'static str,
    file: String,
    unpacked: u64,
}

/// A tarball under `top/` with `files` files whose sizes and contents the seed decides; about
/// `random_share` of the bytes are incompressible (jars, native code), the rest text.
fn make_tarball(path: &Path, top: &str, total: usize, files: usize, random_share: f64, seed: u64) -> u64 {
    let mut rng = Rng(seed);
    let file = std::fs::File::create(path).unwrap();
    let gz = flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut written = 0u64;
    // One large file (like lib/modules or a fat jar), the rest many small ones.
    let big = total / 3;
    let small_avg = (total - big) / files.max(1);
    for i in 0..=files {
        let len = if i == 0 { big } else { ((rng.next() % (2 * small_avg as u64)) as usize).max(16) };
        let data = if (rng.next() % 1000) as f64 / 1000.0 < random_share { rng.noise(len) } else { rng.text(len) };
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(if i.is_multiple_of(10) { 0o755 } else { 0o644 });
        h.set_mtime(1_500_000_000);
        let dir = format!("d{}/s{}", i % 37, i % 11);
        tar.append_data(&mut h, format!("{top}/{dir}/file{i}.bin"), &data[..]).unwrap();
        written += data.len() as u64;
    }
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
    written
}

/// `dir`, created empty (removing what an earlier step left there).
fn empty_dir(dir: &Path) -> std::path::PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    dir.to_path_buf()
}

fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} >/dev/null"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs a shell command; returns wall time.
fn timed_sh(script: &str) -> Duration {
    let start = Instant::now();
    let status = Command::new("sh").arg("-c").arg(script).stdout(Stdio::null()).status().unwrap();
    assert!(status.success(), "failed: {script}");
    start.elapsed()
}

/// Runs imgbuild under GNU time; returns wall time, peak RSS in KiB and stdout.
fn imgbuild(project: &Path, store: &Path, mirror: &Path, threads: usize, args: &[&str]) -> (Duration, u64, String) {
    imgbuild_run(project, store, mirror, threads, args).parts()
}

/// One run of imgbuild, as GNU time saw it.
struct Run {
    wall: Duration,
    /// User and system CPU time: less sensitive than the wall time to a machine shared with others.
    cpu: Duration,
    rss_kib: u64,
    stdout: String,
}

impl Run {
    /// Wall time, peak RSS in KiB and stdout.
    fn parts(self) -> (Duration, u64, String) {
        (self.wall, self.rss_kib, self.stdout)
    }
}

/// imgbuild `args` offline, but a push: it talks to the registry, which `--offline` refuses.
fn imgbuild_run(project: &Path, store: &Path, mirror: &Path, threads: usize, args: &[&str]) -> Run {
    let global: &[&str] = if args.first() == Some(&"push") { &[] } else { &["--offline"] };
    imgbuild_run_with(project, store, mirror, threads, global, args)
}

/// imgbuild `args` with the global options `global` (not `imgbuild_run`'s choice).
fn imgbuild_run_with(
    project: &Path,
    store: &Path,
    mirror: &Path,
    threads: usize,
    global: &[&str],
    args: &[&str],
) -> Run {
    let time_file = project.join("time.txt");
    let start = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M %U %S", "-o"])
        .arg(&time_file)
        .arg(BIN)
        .args(global)
        .args(["--json", "--project"])
        .arg(project)
        .arg("--store")
        .arg(store)
        .arg("--mirror")
        .arg(mirror)
        .args(args)
        .env("IMGBUILD_THREADS", threads.to_string())
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    let wall = start.elapsed();
    assert!(out.status.success(), "imgbuild {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let measured = std::fs::read_to_string(&time_file).unwrap();
    let fields: Vec<f64> =
        measured.trim().lines().last().unwrap().split_whitespace().map(|f| f.parse().unwrap()).collect();
    let cpu = Duration::from_secs_f64(fields[1] + fields[2]);
    Run { wall, cpu, rss_kib: fields[0] as u64, stdout: String::from_utf8_lossy(&out.stdout).into_owned() }
}

/// User and system CPU time this process has used so far (all its threads).
fn own_cpu() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
    let seconds = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// The sha256 blobs of the store, by name, with their sizes.
fn sha256_blobs(store: &Path) -> BTreeMap<String, u64> {
    let dir = store.join("blobs/sha256");
    std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| Some((e.file_name().to_string_lossy().into_owned(), e.metadata().ok()?.len())))
                .collect()
        })
        .unwrap_or_default()
}

/// Of the blobs in `after` and not in `before`: the bytes of the images (layers, configs,
/// manifests, indexes) and of the documents attached to them (SBOMs, provenance: artifact
/// manifests and what they carry).
fn new_image_and_document_bytes(
    store: &Path,
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> (u64, u64) {
    let new: BTreeMap<&String, &u64> = after.iter().filter(|(name, _)| !before.contains_key(*name)).collect();
    let mut documents = BTreeSet::new();
    for name in new.keys() {
        let Ok(data) = std::fs::read(store.join("blobs/sha256").join(name)) else { continue };
        let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&data) else { continue };
        if doc.get("artifactType").is_some() {
            documents.insert(name.to_string());
            for layer in doc["layers"].as_array().into_iter().flatten() {
                documents.extend(layer["digest"].as_str().and_then(|d| d.strip_prefix("sha256:")).map(String::from));
            }
        }
    }
    let bytes = |is_document: bool| -> u64 {
        new.iter().filter(|(name, _)| documents.contains(name.as_str()) == is_document).map(|(_, size)| **size).sum()
    };
    (bytes(false), bytes(true))
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn rate(bytes: u64, d: Duration) -> String {
    format!("{:.0} MB/s", mb(bytes) / d.as_secs_f64())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The machine's bound for a cold build, in this process and with no other work: inflating
/// every input (each on a thread, with the inflater imgbuild uses) while the pinned compressor
/// compresses the same tar bytes on `threads` threads, all at once over every core.
fn bound(inputs: &[std::path::PathBuf], raw: &Path, compressor: Compressor, threads: usize) -> (Duration, Duration) {
    let (start, cpu) = (Instant::now(), own_cpu());
    std::thread::scope(|scope| {
        scope.spawn(|| compress_alone(raw, compressor, threads));
        for input in inputs {
            scope.spawn(move || inflate_alone(input));
        }
    });
    (start.elapsed(), own_cpu() - cpu)
}

fn inflate_alone(input: &Path) -> u64 {
    let file = std::io::BufReader::with_capacity(256 * 1024, std::fs::File::open(input).unwrap());
    std::io::copy(&mut flate2::bufread::MultiGzDecoder::new(file), &mut std::io::sink()).unwrap()
}

/// The pinned compressor on `raw`; returns the compressed size.
fn compress_alone(raw: &Path, compressor: Compressor, threads: usize) -> u64 {
    let mut out = Counter(0);
    let mut writer = LayerWriter::new(&mut out, compressor, Parallelism::threads(threads)).unwrap();
    std::io::copy(&mut std::fs::File::open(raw).unwrap(), &mut writer).unwrap();
    writer.finish().unwrap();
    out.0
}

/// Whether the CPU has SHA-256 instructions, which `sha2` detects and uses by itself.
fn has_sha_instructions() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("sha");
    #[cfg(target_arch = "aarch64")]
    return std::arch::is_aarch64_feature_detected!("sha2");
    #[allow(unreachable_code)]
    false
}

/// A sink that counts.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The total size of a build's recipe layers, from its `--json` summary.
fn recipe_layer_bytes(json: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let layers = v["nodes"][0]["platforms"][0]["layers"].as_array().unwrap().clone();
    let recipe = layers.iter().filter(|l| l["created_by"].as_str().unwrap_or("").starts_with("imgbuild recipe"));
    recipe.map(|l| l["size"].as_u64().unwrap()).sum()
}

/// The built-in cluster's definition, without the base image (which cannot be fetched here),
/// and recipes with the seed's names pinned to the generated inputs.
fn write_project(project: &Path, inputs: &[Input], mirror: &Path, extra_node: bool) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(project.join("recipes")).unwrap();
    std::fs::create_dir_all(project.join("images/zk-kafka")).unwrap();
    for t in ["zoo.cfg", "myid", "server.properties"] {
        std::fs::copy(repo.join("images/zk-kafka").join(t), project.join("images/zk-kafka").join(t)).unwrap();
    }
    let mut def: String = std::fs::read_to_string(repo.join("images/zk-kafka.toml"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("base = "))
        .collect::<Vec<_>>()
        .join("\n");
    def.push('\n');
    if extra_node {
        def.push_str("\n[[cluster.node]]\nid = 3\nhost = \"127.0.1.4\"\n");
    }
    std::fs::write(project.join("images/zk-kafka.toml"), def).unwrap();
    for i in inputs {
        let hash = sha256_file(&mirror.join(&i.file));
        let platform = if i.recipe == "temurin-jdk8" { "platform = \"linux/amd64\"\n" } else { "" };
        let recipe = format!(
            "name = \"{}\"\nversion = \"bench\"\n\n[[source]]\n{platform}url = \"https://bench.invalid/{}\"\nsha256 = \"{hash}\"\n\n[unpack]\nstrip_components = 1\nprefix = \"{}\"\n",
            i.recipe, i.file, i.prefix
        );
        std::fs::write(project.join("recipes").join(format!("{}.toml", i.recipe)), recipe).unwrap();
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes harness=false benches
    }
    let quick = std::env::var("IMGBUILD_BENCH_QUICK").is_ok_and(|v| v == "1");
    let scale = if quick { 4 } else { 1 };
    for tool in ["/usr/bin/time", "gzip", "pigz", "tar", "sha256sum"] {
        assert!(have(tool), "the benchmark needs {tool} (run .ci/install)");
    }
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench");
    let _ = std::fs::remove_dir_all(&work);
    let mirror = work.join("inputs");
    std::fs::create_dir_all(&mirror).unwrap();
    let mut report = String::new();
    let mut line = |s: String| {
        println!("{s}");
        report.push_str(&s);
        report.push('\n');
    };

    eprintln!("generating inputs…");
    let mut inputs = vec![
        Input {
            name: "JDK",
            recipe: "temurin-jdk8",
            prefix: "/opt/java/openjdk",
            file: "jdk.tar.gz".into(),
            unpacked: 0,
        },
        Input {
            name: "ZooKeeper",
            recipe: "zookeeper",
            prefix: "/usr/local/zookeeper",
            file: "zookeeper.tar.gz".into(),
            unpacked: 0,
        },
        Input { name: "Kafka", recipe: "kafka", prefix: "/usr/local/kafka", file: "kafka.tgz".into(), unpacked: 0 },
    ];
    let shapes = [(200_000_000, 6000, 0.45, 1), (42_000_000, 400, 0.75, 2), (54_000_000, 300, 0.85, 3)];
    for (input, (total, files, random, seed)) in inputs.iter_mut().zip(shapes) {
        input.unpacked = make_tarball(&mirror.join(&input.file), "top-1.0", total / scale, files / scale, random, seed);
    }
    let unpacked: u64 = inputs.iter().map(|i| i.unpacked).sum();
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    line(format!("## imgbuild benchmark ({} cores, {cpu})\n", nproc));
    line("| input | compressed | unpacked |\n|---|---|---|".into());
    for i in &inputs {
        let size = std::fs::metadata(mirror.join(&i.file)).unwrap().len();
        line(format!("| {} | {:.1} MB | {:.1} MB |", i.name, mb(size), mb(i.unpacked)));
    }

    // `IMGBUILD_BENCH_ONLY=cache`: the shared cache's figures alone, on the same inputs.
    if std::env::var("IMGBUILD_BENCH_ONLY").is_ok_and(|v| v == "cache") {
        let project = work.join("project");
        write_project(&project, &inputs, &mirror, false);
        for l in cache_figures(&work, &project, &mirror, nproc) {
            line(l);
        }
        return;
    }

    // `IMGBUILD_BENCH_ONLY=push-load`: only the concurrent pushes (about a minute here).
    if std::env::var("IMGBUILD_BENCH_ONLY").is_ok_and(|v| v == "push-load") {
        assert!(have("docker-registry"), "the push figures need docker-registry (run .ci/install)");
        let project = work.join("project");
        write_project(&project, &inputs, &mirror, false);
        let store = work.join("store-push-load");
        imgbuild(&project, &store, &mirror, nproc, &["build", "--out", work.join("out").to_str().unwrap()]);
        for l in push_load_figures(&work, &project, &store, &mirror) {
            line(l);
        }
        let out = work.join("BENCHMARKS-run.md");
        std::fs::write(&out, &report).unwrap();
        eprintln!("\nreport written to {}", out.display());
        return;
    }

    // The machine's limits on the same data.
    let raw = work.join("all.tar");
    let cat: Vec<String> = inputs.iter().map(|i| format!("gzip -dc {}", mirror.join(&i.file).display())).collect();
    timed_sh(&format!("({}) > {}", cat.join("; "), raw.display()));
    let raw_len = std::fs::metadata(&raw).unwrap().len();
    line(format!("\n### The machine on the same {:.0} MB (uncompressed tar, page cache)\n", mb(raw_len)));
    line("| tool | throughput |\n|---|---|".into());
    let mut limits = vec![
        ("sha256sum", format!("sha256sum {}", raw.display())),
        ("gzip -1 -n", format!("gzip -1 -n -c {} >/dev/null", raw.display())),
        ("gzip -6 -n", format!("gzip -6 -n -c {} >/dev/null", raw.display())),
        ("pigz -1 -n (all cores)", format!("pigz -1 -n -c {} >/dev/null", raw.display())),
        ("pigz -6 -n (all cores)", format!("pigz -6 -n -c {} >/dev/null", raw.display())),
        ("gzip -d", format!("gzip -dc {} >/dev/null", mirror.join("jdk.tar.gz").display())),
    ];
    if have("zstd") {
        limits.push(("zstd -3", format!("zstd -3 -q -c {} >/dev/null", raw.display())));
    }
    let (mut pigz1, mut pigz6) = (Duration::ZERO, Duration::ZERO);
    for (name, script) in &limits {
        let d = timed_sh(script);
        match *name {
            "pigz -1 -n (all cores)" => pigz1 = d,
            "pigz -6 -n (all cores)" => pigz6 = d,
            _ => {}
        }
        let bytes = if *name == "gzip -d" { inputs[0].unpacked } else { raw_len };
        line(format!("| {name} | {} |", rate(bytes, d)));
    }

    // imgbuild's own parts on the same bytes, in this process: hashing, inflating, compressing.
    let start = Instant::now();
    let (_, hashed) = hash_reader(Algorithm::Sha256, std::fs::File::open(&raw).unwrap()).unwrap();
    let sha_ni = if has_sha_instructions() { "the CPU's SHA instructions" } else { "no SHA instructions" };
    line(format!("| imgbuild's sha256 (sha2, {sha_ni}) | {} |", rate(hashed, start.elapsed())));
    let start = Instant::now();
    let inflated = inflate_alone(&mirror.join("jdk.tar.gz"));
    line(format!("| imgbuild's gzip -d (flate2 with zlib-rs, one thread) | {} |", rate(inflated, start.elapsed())));
    for (name, compressor) in [
        ("imgbuild's gzip -1 (miniz_oxide, all cores)", Compressor::gzip(1)),
        ("imgbuild's zstd -3 (libzstd frames, all cores)", Compressor::new(Codec::Zstd, None).unwrap()),
    ] {
        let start = Instant::now();
        compress_alone(&raw, compressor, nproc);
        line(format!("| {name} | {} |", rate(raw_len, start.elapsed())));
    }

    // The baseline pipeline, per input: extract, re-tar normalized, compress, hash.
    line("\n### Cold build of the three-node cluster\n".into());
    line("| pipeline | wall time | vs `gzip -n` baseline |\n|---|---|---|".into());
    let baseline = |compressor: &str| -> Duration {
        let mut total = Duration::ZERO;
        for i in &inputs {
            let x = empty_dir(&work.join("extract"));
            total += timed_sh(&format!(
                "tar -xzf {} -C {x} && tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C {x} -c . | {compressor} | sha256sum",
                mirror.join(&i.file).display(),
                x = x.display()
            ));
        }
        total
    };
    let base_gzip = baseline("gzip -n");
    let rows = [
        ("tar + `gzip -n` + sha256sum (baseline)", base_gzip),
        ("tar + `gzip -1 -n` + sha256sum", baseline("gzip -1 -n")),
        ("tar + `pigz -n` + sha256sum", baseline("pigz -n")),
        ("tar + `pigz -1 -n` + sha256sum", baseline("pigz -1 -n")),
    ];
    for (name, d) in rows {
        line(format!("| {name} | {:.2} s | {:.2} |", d.as_secs_f64(), d.as_secs_f64() / base_gzip.as_secs_f64()));
    }
    if have("umoci") {
        let layout = work.join("umoci-layout");
        let mut total = Duration::ZERO;
        timed_sh(&format!("umoci init --layout {l} && umoci new --image {l}:b", l = layout.display()));
        for i in &inputs {
            let x = empty_dir(&work.join("extract"));
            total += timed_sh(&format!(
                "tar -xzf {} -C {x} && umoci insert --rootless --image {l}:b {x} {p}",
                mirror.join(&i.file).display(),
                x = x.display(),
                l = layout.display(),
                p = i.prefix
            ));
        }
        line(format!(
            "| tar + `umoci insert` | {:.2} s | {:.2} |",
            total.as_secs_f64(),
            total.as_secs_f64() / base_gzip.as_secs_f64()
        ));
    }

    let project = work.join("project");
    write_project(&project, &inputs, &mirror, false);
    let out = |name: &str| work.join(name).to_str().unwrap().to_string();
    let (one_thread, _, _) =
        imgbuild(&project, &work.join("store-cold-1"), &mirror, 1, &["build", "--out", &out("out")]);
    line(format!(
        "| imgbuild, 1 thread | {:.2} s | {:.2} |",
        one_thread.as_secs_f64(),
        one_thread.as_secs_f64() / base_gzip.as_secs_f64()
    ));
    // The default, zstd and the machine's bound, interleaved round by round so that a load
    // from elsewhere weighs on each alike; medians.
    let sources: Vec<_> = inputs.iter().map(|i| mirror.join(&i.file)).collect();
    let zstd = Compressor::new(Codec::Zstd, None).unwrap();
    let gzip = Compressor::new(Codec::Gzip, None).unwrap();
    let store = work.join(format!("store-cold-{nproc}"));
    let zstd_store = work.join("store-zstd");
    let (mut cold_rss, mut zstd_rss, mut gzip_json, mut zstd_json) = (0, 0, String::new(), String::new());
    // Per round: the gzip build, its bound, the zstd build, its bound.
    let (mut wall, mut cpu): ([Vec<Duration>; 4], [Vec<Duration>; 4]) = Default::default();
    let mut record = |i: usize, (w, c): (Duration, Duration)| {
        wall[i].push(w);
        cpu[i].push(c);
    };
    for _ in 0..if quick { 3 } else { 5 } {
        let _ = std::fs::remove_dir_all(&store);
        let run = imgbuild_run(&project, &store, &mirror, nproc, &["build", "--out", &out("out")]);
        (cold_rss, gzip_json) = (cold_rss.max(run.rss_kib), run.stdout);
        record(0, (run.wall, run.cpu));
        record(1, bound(&sources, &raw, gzip, nproc));
        let _ = std::fs::remove_dir_all(&zstd_store);
        let args = ["build", "--compression", "zstd", "--out", &out("out-zstd")];
        let run = imgbuild_run(&project, &zstd_store, &mirror, nproc, &args);
        (zstd_rss, zstd_json) = (zstd_rss.max(run.rss_kib), run.stdout);
        record(2, (run.wall, run.cpu));
        record(3, bound(&sources, &raw, zstd, nproc));
    }
    let rounds = wall[0].len();
    let every =
        |runs: &[Duration]| runs.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect::<Vec<_>>().join(", ");
    let all_rounds = format!(
        "Every round (s): gzip {}; its bound {}; zstd {}; its bound {}.",
        every(&wall[0]),
        every(&wall[1]),
        every(&wall[2]),
        every(&wall[3])
    );
    let [cold_all, gzip_bound, zstd_cold, zstd_bound] = wall.map(median);
    let [gzip_cpu, gzip_bound_cpu, zstd_cpu, zstd_bound_cpu] = cpu.map(median);
    for (name, d) in [("imgbuild", cold_all), ("imgbuild `--compression zstd`", zstd_cold)] {
        line(format!(
            "| {name}, {nproc} threads (median of {rounds}) | {:.2} s | {:.2} |",
            d.as_secs_f64(),
            d.as_secs_f64() / base_gzip.as_secs_f64()
        ));
    }
    // The same at level 6, to compare with gzip and pigz at their default level.
    let (level6, _, level6_json) = imgbuild(
        &project,
        &work.join("store-level6"),
        &mirror,
        nproc,
        &["build", "--level", "6", "--out", &out("out6")],
    );
    line(format!(
        "| imgbuild `--level 6`, {nproc} threads | {:.2} s | {:.2} |",
        level6.as_secs_f64(),
        level6.as_secs_f64() / base_gzip.as_secs_f64()
    ));
    line(format!(
        "\nLayer throughput (unpacked bytes per second, all cores): imgbuild {}; `pigz -1 -n` compressing alone {} ({:.0}%).",
        rate(unpacked, cold_all),
        rate(raw_len, pigz1),
        100.0 * (mb(unpacked) / cold_all.as_secs_f64()) / (mb(raw_len) / pigz1.as_secs_f64())
    ));
    line(format!("Per core (1 thread): {}.", rate(unpacked, one_thread)));
    line(format!(
        "At level 6: imgbuild {}, `pigz -6 -n` compressing alone {}.",
        rate(unpacked, level6),
        rate(raw_len, pigz6)
    ));

    line("\n### At the machine's bound (same rounds, interleaved)\n".into());
    line("| cold build | wall time | its bound | build / bound | goal | CPU time | bound's CPU | CPU ratio |".into());
    line("|---|---|---|---|---|---|---|---|".into());
    for (name, d, b, c, bc) in [
        ("gzip level 1 (default)", cold_all, gzip_bound, gzip_cpu, gzip_bound_cpu),
        ("zstd level 3", zstd_cold, zstd_bound, zstd_cpu, zstd_bound_cpu),
    ] {
        let ratio = d.as_secs_f64() / b.as_secs_f64();
        line(format!(
            "| {name} | {:.2} s | {:.2} s | {ratio:.2} | ≤ 1.20 | {:.2} s | {:.2} s | {:.2} |",
            d.as_secs_f64(),
            b.as_secs_f64(),
            c.as_secs_f64(),
            bc.as_secs_f64(),
            c.as_secs_f64() / bc.as_secs_f64()
        ));
    }
    line(format!("\n{all_rounds}"));
    line(format!(
        "\nThe bound: inflating the three inputs (zlib-rs, one thread each) while the pinned compressor \
         compresses the same {:.0} MB of tar on {nproc} threads, in one process with no other work.",
        mb(raw_len)
    ));
    line(format!(
        "zstd's cold build takes {:.2} of the gzip default's time (goal ≤ 0.60), and {:.2} of its CPU time.",
        zstd_cold.as_secs_f64() / cold_all.as_secs_f64(),
        zstd_cpu.as_secs_f64() / gzip_cpu.as_secs_f64()
    ));
    let sizes = [
        ("gzip level 1 (default)", recipe_layer_bytes(&gzip_json)),
        ("gzip level 6", recipe_layer_bytes(&level6_json)),
        ("zstd level 3", recipe_layer_bytes(&zstd_json)),
    ];
    line("\n| recipe layers | compressed | of gzip level 6 |\n|---|---|---|".into());
    for (name, bytes) in sizes {
        line(format!("| {name} | {:.1} MB | {:.3} |", mb(bytes), bytes as f64 / sizes[1].1 as f64));
    }

    // Warm rebuild and a fourth node, from the store the cold build filled.
    let warm: Vec<Duration> = (0..7)
        .map(|_| imgbuild(&project, &store, &mirror, nproc, &["build", "--out", work.join("out").to_str().unwrap()]).0)
        .collect();
    let (_, _, json) =
        imgbuild(&project, &store, &mirror, nproc, &["build", "--out", work.join("out").to_str().unwrap()]);
    assert!(json.contains("\"layers_built\": 0"), "warm build rebuilt layers");
    let before = sha256_blobs(&store);
    let project4 = work.join("project-4");
    write_project(&project4, &inputs, &mirror, true);
    let (fourth, _, _) =
        imgbuild(&project4, &store, &mirror, nproc, &["build", "--out", work.join("out4").to_str().unwrap()]);
    let (added, documents) = new_image_and_document_bytes(&store, &before, &sha256_blobs(&store));
    line("\n### Rebuilds\n".into());
    line("| case | wall time | new image blobs | goal |\n|---|---|---|---|".into());
    line(format!(
        "| warm rebuild, nothing changed (median of 7) | {:.0} ms | 0 B | < 50 ms |",
        median(warm).as_secs_f64() * 1000.0
    ));
    line(format!(
        "| a fourth node added to the cluster | {:.0} ms | {:.1} KiB | < 100 ms, < 16 KiB |",
        fourth.as_secs_f64() * 1000.0,
        added as f64 / 1024.0
    ));
    line(format!(
        "\nBesides the images, the fourth node's build wrote {:.1} KiB of attached documents: every node's SBOMs and provenance are new, as the provenance carries the definition that changed.",
        documents as f64 / 1024.0
    ));

    // Peak memory, for this input and for one five times larger.
    line("\n### Peak memory (max RSS)\n".into());
    line("| input | peak RSS | goal |\n|---|---|---|".into());
    line(format!("| the cluster, {:.0} MB unpacked | {:.1} MiB | < 64 MiB |", mb(unpacked), cold_rss as f64 / 1024.0));
    line(format!(
        "| the cluster, {:.0} MB unpacked, `--compression zstd` | {:.1} MiB | < 64 MiB |",
        mb(unpacked),
        zstd_rss as f64 / 1024.0
    ));
    if !quick {
        let big = [Input {
            name: "1 GB",
            recipe: "temurin-jdk8",
            prefix: "/opt/big",
            file: "big.tar.gz".into(),
            unpacked: 0,
        }];
        let big_mirror = work.join("big-inputs");
        std::fs::create_dir_all(&big_mirror).unwrap();
        let mut big = big;
        big[0].unpacked = make_tarball(&big_mirror.join("big.tar.gz"), "big-1.0", 1_000_000_000, 20_000, 0.5, 9);
        let mut inputs_big: Vec<Input> = Vec::new();
        for i in &inputs[1..] {
            std::fs::copy(mirror.join(&i.file), big_mirror.join(&i.file)).unwrap();
            inputs_big.push(Input {
                name: i.name,
                recipe: i.recipe,
                prefix: i.prefix,
                file: i.file.clone(),
                unpacked: i.unpacked,
            });
        }
        inputs_big.insert(0, big.into_iter().next().unwrap());
        let project_big = work.join("project-big");
        write_project(&project_big, &inputs_big, &big_mirror, false);
        let (d, rss, _) = imgbuild(
            &project_big,
            &work.join("store-big"),
            &big_mirror,
            nproc,
            &["build", "--out", work.join("out-big").to_str().unwrap()],
        );
        line(format!(
            "| the cluster with a {:.0} MB JDK layer ({:.2} s, {}) | {:.1} MiB | < 64 MiB |",
            mb(inputs_big[0].unpacked),
            d.as_secs_f64(),
            rate(inputs_big.iter().map(|i| i.unpacked).sum(), d),
            rss as f64 / 1024.0
        ));
    }

    // Pushing to a registry on loopback.
    if have("docker-registry") {
        line("\n### Push to a local registry (docker-registry on 127.0.0.1)\n".into());
        line("| push | uploaded | blobs uploaded / skipped | wall time | goal |\n|---|---|---|---|---|".into());
        let registry = LocalRegistry::start(&work.join("registry"));
        let repo = format!("{}/bench/zk-kafka", registry.host);
        for (case, id, goal) in [
            ("first node", "0", ""),
            ("second node", "1", "< 16 KiB"),
            ("second node again, unchanged", "1", "0 blobs"),
        ] {
            // push refuses --offline (`imgbuild_run` leaves it out): the inputs come from --mirror.
            let (d, _, out) = imgbuild(&project, &store, &mirror, nproc, &["push", "--insecure", "--id", id, &repo]);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            let p = &v["pushed"][0];
            line(format!(
                "| {case} | {:.1} KiB | {} / {} | {:.2} s | {goal} |",
                p["bytes_uploaded"].as_u64().unwrap() as f64 / 1024.0,
                p["blobs_uploaded"],
                p["blobs_skipped"],
                d.as_secs_f64()
            ));
        }
        drop(registry);
    }

    if have("docker-registry") {
        for l in push_load_figures(&work, &project, &store, &mirror) {
            line(l);
        }
    }
    for l in download_figures(&work, &inputs, &mirror, nproc) {
        line(l);
    }
    if have("docker-registry") {
        for l in cache_figures(&work, &project, &mirror, nproc) {
            line(l);
        }
    }

    let out = work.join("BENCHMARKS-run.md");
    std::fs::write(&out, &report).unwrap();
    eprintln!("\nreport written to {}", out.display());
}

/// A team's registry under load: `n` pushes of the whole cluster (`push --all`) at once, from
/// one store to one repository of a registry on loopback, into an empty repository (cold) and
/// then again (everything there: warm). Pushes per minute at n = 1, 4, 8, and the bytes each
/// push beyond the first uploads (the pushes of one store take turns per blob: ideally zero).
fn push_load_figures(work: &Path, project: &Path, store: &Path, mirror: &Path) -> Vec<String> {
    let mut lines = vec![
        "\n### Concurrent pushes (`push --all` of the cluster, one store, one repository)\n".to_string(),
        "| pushes at once | pushes/min, empty repository | pushes/min, all there | uploaded in all | \
         uploaded per extra push | manifests retried |\n|---|---|---|---|---|---|"
            .to_string(),
    ];
    let mut alone = 0;
    for n in [1u64, 4, 8] {
        let registry = LocalRegistry::start(&work.join(format!("push-load-{n}")));
        let repo = format!("{}/bench/zk-kafka", registry.host);
        let (cold, bytes, retried) = push_round(project, store, mirror, &repo, n);
        let (warm, warm_bytes, warm_retried) = push_round(project, store, mirror, &repo, n);
        assert_eq!(warm_bytes, 0, "a push of what the repository holds uploads nothing");
        if n == 1 {
            alone = bytes;
        }
        let extra =
            if n > 1 { format!("{:.1} KiB", (bytes - alone) as f64 / (n - 1) as f64 / 1024.0) } else { "-".into() };
        let per_minute = |d: Duration| n as f64 * 60.0 / d.as_secs_f64();
        lines.push(format!(
            "| {n} | {:.1} ({:.2} s) | {:.1} ({:.2} s) | {:.1} MB | {extra} | {} |",
            per_minute(cold),
            cold.as_secs_f64(),
            per_minute(warm),
            warm.as_secs_f64(),
            mb(bytes),
            retried + warm_retried
        ));
    }
    lines
}

/// `n` pushes at once; their wall time, the bytes they uploaded in all, and how many manifests
/// the registry refused for unknown content before taking them.
fn push_round(project: &Path, store: &Path, mirror: &Path, repo: &str, n: u64) -> (Duration, u64, u64) {
    let start = Instant::now();
    let children: Vec<_> = (0..n)
        .map(|_| {
            Command::new(BIN)
                .args(["--json", "--quiet", "--project"])
                .arg(project)
                .arg("--store")
                .arg(store)
                .arg("--mirror")
                .arg(mirror)
                .args(["push", "--insecure", "--all", repo])
                .env_remove("SOURCE_DATE_EPOCH")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let wall = start.elapsed();
    let (mut bytes, mut retried) = (0, 0);
    for out in outputs {
        assert!(out.status.success(), "push: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        bytes += v["bytes_uploaded"].as_u64().unwrap();
        for image in v["pushed"].as_array().unwrap() {
            retried += image["manifests_retried"].as_u64().unwrap();
            retried += image["referrers"]["manifests_retried"].as_u64().unwrap();
        }
    }
    (wall, bytes, retried)
}

/// A docker-registry serving plain HTTP on a free loopback port, killed when dropped.
struct LocalRegistry {
    child: std::process::Child,
    host: String,
}

impl LocalRegistry {
    fn start(dir: &Path) -> LocalRegistry {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let data = empty_dir(dir).join("data");
        let config = format!(
            "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n",
            data.display()
        );
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let registry = LocalRegistry { child, host: format!("127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A team's shared cache (`--cache`) in a docker-registry on loopback: a cold build that fills
/// it (signing each entry), then cold builds (each on an empty store, trusting the key) that
/// take every layer from it, each run next to a cold build without a cache (so both meet the
/// same load on a shared machine).
fn cache_figures(work: &Path, project: &Path, mirror: &Path, threads: usize) -> Vec<String> {
    let registry = LocalRegistry::start(&work.join("cache-registry"));
    let repo = format!("{}/bench/layer-cache", registry.host);
    let out = work.join("out-cache");
    let keys = empty_dir(&work.join("cache-keys"));
    let generated = Command::new(BIN).args(["cache", "key", "generate", "bench", "--dir"]).arg(&keys).output().unwrap();
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    let public = String::from_utf8(generated.stdout).unwrap().trim().to_string();
    let secret = keys.join("bench.secret");
    let build = |store: &str, global: &[&str]| {
        let store = work.join(store);
        let _ = std::fs::remove_dir_all(&store);
        imgbuild_run_with(project, &store, mirror, threads, global, &["build", "--out", out.to_str().unwrap()]).parts()
    };
    let pulling = ["--cache", &repo, "--insecure-registry", &registry.host, "--cache-trusted-key", &public];
    let mut filling = pulling.to_vec();
    filling.extend(["--cache-signing-key", secret.to_str().unwrap()]);
    let (fill, _, json) = build("store-cache-fill", &filling);
    assert!(json.contains("\"pushed\": 3"), "the first build did not fill the cache: {json}");
    let (mut cold, mut from_cache) = (Vec::new(), Vec::new());
    let mut peak = 0;
    for _ in 0..3 {
        cold.push(build("store-cache-none", &["--offline"]).0);
        let (d, rss, json) = build("store-cache-cold", &pulling);
        assert!(json.contains("\"layers_built\": 0") && json.contains("\"pulled\": 3"), "{json}");
        from_cache.push(d);
        peak = peak.max(rss);
    }
    let (cold, warm_cache) = (median(cold).as_secs_f64(), median(from_cache).as_secs_f64());
    let floor = median((0..3).map(|_| check_layers_alone(&work.join("store-cache-cold"))).collect());
    vec![
        "\n### A team's shared cache (`--cache`, signed entries, docker-registry on 127.0.0.1)\n".into(),
        "| cold build (empty store, median of 3) | wall time | vs no cache | goal |\n|---|---|---|---|".into(),
        format!("| no cache | {cold:.2} s | 1.00 | |"),
        format!(
            "| filling the cache (building, signing and pushing every layer; one run) | {:.2} s | {:.2} | |",
            fill.as_secs_f64(),
            fill.as_secs_f64() / cold
        ),
        format!(
            "| from a warm cache (peak RSS {:.1} MiB) | {warm_cache:.2} s | {:.2} | ≤ 0.30 |",
            peak as f64 / 1024.0,
            warm_cache / cold
        ),
        format!(
            "| its floor: hashing the three layers alone, in-process (median of 3) | {:.2} s | {:.2} | |",
            floor.as_secs_f64(),
            floor.as_secs_f64() / cold
        ),
        "\nThe floor is what a signed cache entry must pass before it is used: each recipe layer's blob hashed (its digest; the diff_id is the signed record's), all three layers at once, from the page cache, with no download, store or image work.".into(),
    ]
}

/// The check every layer taken from a cache must pass, alone: the recipe layers of `store`
/// (its blobs over 1 MB) hashed, all at once, as the pulls do it.
fn check_layers_alone(store: &Path) -> Duration {
    let layers: Vec<_> = sha256_blobs(store)
        .into_iter()
        .filter(|(_, size)| *size > 1_000_000)
        .map(|(name, _)| store.join("blobs/sha256").join(name))
        .collect();
    assert_eq!(layers.len(), 3, "three recipe layers in {}", store.display());
    let start = Instant::now();
    std::thread::scope(|scope| {
        for layer in &layers {
            scope.spawn(move || hash_reader(Algorithm::Sha256, std::fs::File::open(layer).unwrap()).unwrap());
        }
    });
    start.elapsed()
}

/// Serves the files of a directory over HTTP/1.1 on loopback, every connection at one fixed
/// rate (as a distant server would), until dropped.
struct ThrottledServer {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ThrottledServer {
    fn start(dir: &Path, bytes_per_second: u64) -> ThrottledServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let dir = dir.to_path_buf();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let (Ok(conn), dir) = (conn, dir.clone()) else { continue };
                std::thread::spawn(move || {
                    let _ = serve_throttled(conn, &dir, bytes_per_second);
                });
            }
        });
        ThrottledServer { addr, stop, thread: Some(thread) }
    }
}

impl Drop for ThrottledServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one GET with the file it names, in 64 KiB pieces paced to `rate` bytes a second.
fn serve_throttled(conn: std::net::TcpStream, dir: &Path, rate: u64) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader};
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let name = request.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
    let mut conn = conn;
    let Ok(data) = std::fs::read(dir.join(&name)) else {
        return write!(conn, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    };
    write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", data.len())?;
    let start = Instant::now();
    let mut sent = 0u64;
    for piece in data.chunks(64 * 1024) {
        conn.write_all(piece)?;
        sent += piece.len() as u64;
        let due = Duration::from_secs_f64(sent as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    conn.flush()
}

/// Downloads throttled to a fixed rate per connection: each input alone (`imgbuild prefetch`),
/// then a cold build that downloads them all, its layers built while they stream in.
fn download_figures(work: &Path, inputs: &[Input], mirror: &Path, threads: usize) -> Vec<String> {
    const RATE: u64 = 10_000_000;
    let server = ThrottledServer::start(mirror, RATE);
    let online = work.join("project-online");
    let _ = std::fs::remove_dir_all(&online);
    write_project(&online, inputs, mirror, false);
    for entry in std::fs::read_dir(online.join("recipes")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("https://bench.invalid/", &format!("http://{}/", server.addr))).unwrap();
    }
    let empty_mirror = empty_dir(&work.join("no-mirror"));
    let mut lines = vec![
        format!("\n### Downloads at {:.0} MB/s per connection (loopback, throttled)\n", RATE as f64 / 1e6),
        "| case | wall time | goal |\n|---|---|---|".into(),
    ];
    let mut slowest = Duration::ZERO;
    for input in inputs {
        let store = empty_dir(&work.join("store-download-alone"));
        let url = format!("http://{}/{}", server.addr, input.file);
        let d = imgbuild_run_with(&online, &store, &empty_mirror, threads, &[], &["prefetch", &url]).wall;
        lines.push(format!(
            "| {} downloaded alone ({:.1} MB) | {:.2} s | |",
            input.name,
            mb(std::fs::metadata(mirror.join(&input.file)).unwrap().len()),
            d.as_secs_f64()
        ));
        slowest = slowest.max(d);
    }
    let store = empty_dir(&work.join("store-download-build"));
    let out = work.join("out-download");
    let (d, _, json) =
        imgbuild_run_with(&online, &store, &empty_mirror, threads, &[], &["build", "--out", out.to_str().unwrap()])
            .parts();
    assert!(json.contains("\"layers_built\": 3"), "{json}");
    lines.push(format!(
        "| cold build, downloading every input | {:.2} s ({:.2} × the slowest download alone) | ≤ 1.15 × |",
        d.as_secs_f64(),
        d.as_secs_f64() / slowest.as_secs_f64()
    ));
    lines
}
