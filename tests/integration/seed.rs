//! The seed's whole procedure, for real: ZooKeeper 3.4.10 and Kafka 1.0.0 from the jars Maven
//! Central publishes (resolved by `.ci/install` from the pinned poms under `tests/seed/`), laid
//! out as the upstream tarballs, pinned by hash in recipes made from `recipes/` as a user pins
//! the upstream files, built by the built-in definition into three node images on Java 17, and
//! run as three containers: a quorum, three brokers, a topic replicated three ways, a broker
//! lost and back, and data that stays with its node.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::debian::JAVA_HOME;
use super::ensemble::{self, logs, node_run, podman, start_node, wait_for_quorum};
use super::fixtures::{self, Entry};
use super::harness::*;
use super::http::Fault;

const HOSTS: [&str; 3] = ["127.0.1.1", "127.0.1.2", "127.0.1.3"];
const ZOOKEEPER: &str = "zookeeper-3.4.10";
const KAFKA: &str = "kafka_2.11-1.0.0";
const ZK_CONNECT: &str = "127.0.1.1:2181,127.0.1.2:2181,127.0.1.3:2181";
const BROKERS: &str = "127.0.1.1:9092,127.0.1.2:9092,127.0.1.3:9092";
const TOPIC: &str = "seed";

/// JVM settings the test gives every node as a user would (through the variables the start
/// scripts read): small heaps and one cheap collector, for six JVMs on two cores.
const NODE_JVM_ENV: [&str; 6] = [
    "-e",
    "JVMFLAGS=-Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1",
    "-e",
    "KAFKA_HEAP_OPTS=-Xmx256m -Xms256m",
    "-e",
    "KAFKA_JVM_PERFORMANCE_OPTS=-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true",
];

/// Logs to the console, as the upstream `conf/log4j.properties` does by default; the jars
/// carry none.
const LOG4J: &str = "log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
";

/// Starts ZooKeeper in the foreground as 3.4.10's `bin/zkServer.sh start-foreground` does,
/// reading the same variables (`JAVA_HOME`, `JVMFLAGS`, `ZOOCFG`, `ZOO_LOG_DIR`).
const ZK_SERVER: &str = r#"#!/bin/sh
# Written by imgbuild's tests: the Maven jar carries no scripts. Starts ZooKeeper as 3.4.10's
# bin/zkServer.sh start-foreground does, with the variables it reads.
ZOOKEEPER_PREFIX=$(cd "$(dirname "$0")/.." && pwd)
ZOOCFG=${ZOOCFG:-$ZOOKEEPER_PREFIX/conf/zoo.cfg}
case ${1-} in
start-foreground) ;;
*) echo "Usage: $0 start-foreground" >&2; exit 1 ;;
esac
# shellcheck disable=SC2086 # JVMFLAGS is a list of options
exec "${JAVA_HOME:+$JAVA_HOME/bin/}java" "-Dzookeeper.log.dir=${ZOO_LOG_DIR:-.}" \
    "-Dlog4j.configuration=file:$ZOOKEEPER_PREFIX/conf/log4j.properties" \
    -cp "$ZOOKEEPER_PREFIX/zookeeper-3.4.10.jar:$ZOOKEEPER_PREFIX/lib/*:$ZOOKEEPER_PREFIX/conf" \
    $JVMFLAGS org.apache.zookeeper.server.quorum.QuorumPeerMain "$ZOOCFG"
"#;

/// Starts a broker as Kafka 1.0.0's `bin/kafka-server-start.sh` does through
/// `kafka-run-class.sh`, reading the same variables, without its GC log (`-loggc`).
const KAFKA_SERVER_START: &str = r#"#!/bin/sh
# Written by imgbuild's tests: the Maven jars carry no scripts. Starts a broker as Kafka
# 1.0.0's bin/kafka-server-start.sh does, with the variables its kafka-run-class.sh reads.
base_dir=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] || { echo "USAGE: $0 server.properties [--override property=value]*" >&2; exit 1; }
# shellcheck disable=SC2086 # each *_OPTS is a list of options
exec "${JAVA_HOME:+$JAVA_HOME/bin/}java" ${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G} \
    ${KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+DisableExplicitGC -Djava.awt.headless=true} \
    "-Dkafka.logs.dir=${LOG_DIR:-$base_dir/logs}" "-Dlog4j.configuration=file:$base_dir/config/log4j.properties" \
    -cp "$base_dir/libs/*" $KAFKA_OPTS kafka.Kafka "$@"
"#;

/// Copies the runtime closure of `tests/seed/NAME/pom.xml` from the local Maven repository
/// into `dir`, offline (`.ci/install` resolved it); the jars, sorted.
fn maven_jars(name: &str, dir: &Path) -> Vec<PathBuf> {
    let pom = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/seed").join(name).join("pom.xml");
    let out = Command::new("mvn")
        .args(["-o", "-q", "-B", "-f"])
        .arg(&pom)
        .args(["dependency:copy-dependencies", "-DincludeScope=runtime"])
        .arg(format!("-DoutputDirectory={}", dir.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mvn -o copy-dependencies of {} (run .ci/install, which resolves it once): {}{}",
        pom.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut jars: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    jars.sort();
    jars
}

/// A tarball laid out as an upstream one: every file under `top/`, each directory before what
/// it holds, in name order, with fixed owners, times and modes (the same bytes every run).
fn dist_tarball(top: &str, files: &[(String, Vec<u8>, u32)]) -> Vec<u8> {
    let mut files: Vec<&(String, Vec<u8>, u32)> = files.iter().collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    // `Entry::Dir` holds a `&'static str`: a few short names, leaked for the test's life.
    let mut entries = vec![Entry::Dir(Box::leak(format!("{top}/").into_boxed_str()))];
    let mut dirs: Vec<String> = Vec::new();
    for (path, data, mode) in files {
        if let Some((dir, _)) = path.rsplit_once('/') {
            if !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_string());
                entries.push(Entry::Dir(Box::leak(format!("{top}/{dir}/").into_boxed_str())));
            }
        }
        entries.push(Entry::File(format!("{top}/{path}"), data.clone(), *mode));
    }
    fixtures::tar_gz(&entries)
}

fn jar_file(dir: &str, jar: &Path) -> (String, Vec<u8>, u32) {
    let name = jar.file_name().unwrap().to_string_lossy();
    (format!("{dir}{name}"), std::fs::read(jar).unwrap(), 0o644)
}

/// `zookeeper-3.4.10/`: the jar at the top, its dependencies in `lib/`, `bin/zkServer.sh`,
/// `conf/log4j.properties`, as in the upstream tarball.
fn zookeeper_dist(jars: &[PathBuf]) -> Vec<u8> {
    let own = format!("{ZOOKEEPER}.jar");
    let mut files: Vec<_> = jars.iter().map(|j| jar_file(if j.ends_with(&own) { "" } else { "lib/" }, j)).collect();
    assert!(files.iter().any(|(p, _, _)| *p == own), "Maven gave no {own}: {jars:?}");
    files.push(("bin/zkServer.sh".into(), ZK_SERVER.into(), 0o755));
    files.push(("conf/log4j.properties".into(), LOG4J.into(), 0o644));
    dist_tarball(ZOOKEEPER, &files)
}

/// `kafka_2.11-1.0.0/`: every jar in `libs/`, `bin/kafka-server-start.sh`,
/// `config/log4j.properties`, as in the upstream tarball.
fn kafka_dist(jars: &[PathBuf]) -> Vec<u8> {
    let mut files: Vec<_> = jars.iter().map(|j| jar_file("libs/", j)).collect();
    assert!(files.iter().any(|(p, _, _)| p == "libs/kafka_2.11-1.0.0.jar"), "Maven gave no Kafka jar: {jars:?}");
    files.push(("bin/kafka-server-start.sh".into(), KAFKA_SERVER_START.into(), 0o755));
    files.push(("config/log4j.properties".into(), LOG4J.into(), 0o644));
    dist_tarball(KAFKA, &files)
}

/// The project's own recipe `recipes/NAME.toml` with its source pinned to `data` served at
/// `url` (its hash in the recipe's own algorithm) and no mirrors: a user's pin of a new file.
/// Also the pin as images label their inputs (`ALGORITHM:HEX`).
fn pin_like_upstream(name: &str, url: &str, data: &[u8]) -> (String, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes").join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut pinned = String::new();
    let (mut urls, mut pins) = (0, Vec::new());
    for line in text.lines() {
        let line = if line.starts_with("url = ") {
            urls += 1;
            format!("url = \"{url}\"")
        } else if line.starts_with("sha256 = ") {
            pins.push(format!("sha256:{}", fixtures::sha256_hex(data)));
            format!("sha256 = \"{}\"", fixtures::sha256_hex(data))
        } else if line.starts_with("sha512 = ") {
            pins.push(format!("sha512:{}", fixtures::sha512_hex(data)));
            format!("sha512 = \"{}\"", fixtures::sha512_hex(data))
        } else if line.starts_with("mirrors = ") {
            continue;
        } else {
            line.to_string()
        };
        pinned.push_str(&line);
        pinned.push('\n');
    }
    assert_eq!((urls, pins.len()), (1, 1), "{}: one source with one hash expected", path.display());
    (pinned, pins.remove(0))
}

/// What the test assembled and pinned: the jars' directories (the tools' classpaths on the
/// host) and each recipe's pin, by recipe name.
struct Pinned {
    kafka_jars: PathBuf,
    zookeeper_jars: PathBuf,
    pins: Vec<(&'static str, String)>,
}

/// Assembles both distributions (twice: the same bytes), serves them and pins them in the
/// project's `zookeeper` and `kafka` recipes.
fn pin_seed_inputs(p: &TestProject, work: &Path) -> Pinned {
    let (zk_jars, kafka_jars) = (work.join("maven/zookeeper"), work.join("maven/kafka"));
    let zk = maven_jars("zookeeper", &zk_jars);
    let kafka = maven_jars("kafka", &kafka_jars);
    let mut pins = Vec::new();
    for (name, file, data, again) in [
        ("zookeeper", format!("{ZOOKEEPER}.tar.gz"), zookeeper_dist(&zk), zookeeper_dist(&zk)),
        ("kafka", format!("{KAFKA}.tgz"), kafka_dist(&kafka), kafka_dist(&kafka)),
    ] {
        assert!(data == again, "{file} is not the same bytes twice");
        println!("{file}: {} bytes, sha256 {}", data.len(), fixtures::sha256_hex(&data));
        let url = p.server.url(&format!("maven/{file}"));
        let (recipe, pin) = pin_like_upstream(name, &url, &data);
        p.write_recipe(&format!("{name}.toml"), &recipe);
        p.server.serve(&format!("maven/{file}"), data, Fault::None);
        pins.push((name, pin));
    }
    Pinned { kafka_jars, zookeeper_jars: zk_jars, pins }
}

/// Every node image says it was built from the very files the test assembled.
fn check_inputs(layout: &Path, pinned: &Pinned) {
    for n in 0..3 {
        let config =
            tool(Command::new("skopeo").args(["inspect", "--config", &format!("oci:{}:node-{n}", layout.display())]));
        let config: serde_json::Value = serde_json::from_str(&config).unwrap();
        for (name, pin) in &pinned.pins {
            assert_eq!(config["config"]["Labels"][format!("org.imgbuild.input.{name}")], pin.as_str(), "node {n}");
        }
    }
}

/// A Java tool run on the host (by Debian's Java 17) from `classpath` (a directory of jars),
/// bounded by `timeout`, logging warnings only.
fn java_tool(classpath: &Path, log4j: &Path, args: &[&str], stdin: Stdio) -> Output {
    Command::new("timeout")
        .args(["--kill-after=5", "120", &format!("{JAVA_HOME}/bin/java")])
        .args(["-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
        .arg(format!("-Dlog4j.configuration=file:{}", log4j.display()))
        .arg("-cp")
        .arg(format!("{}/*", classpath.display()))
        .args(args)
        .stdin(stdin)
        .output()
        .unwrap()
}

/// The host's view of the cluster, through Kafka's and ZooKeeper's own tools.
struct Tools {
    kafka: PathBuf,
    zookeeper: PathBuf,
    log4j: PathBuf,
    /// Where the messages to produce are written, for the producer's standard input.
    work: PathBuf,
}

impl Tools {
    fn run(&self, classpath: &Path, args: &[&str], stdin: Stdio) -> String {
        let out = java_tool(classpath, &self.log4j, args, stdin);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{args:?}: {text}{}", String::from_utf8_lossy(&out.stderr));
        text
    }

    /// The children of a znode, as `zkCli.sh ls` prints them (`[0, 1, 2]`).
    fn zk_ls(&self, path: &str) -> String {
        let out = self.run(
            &self.zookeeper,
            &["org.apache.zookeeper.ZooKeeperMain", "-server", ZK_CONNECT, "ls", path],
            Stdio::null(),
        );
        out.lines().rfind(|l| l.starts_with('[')).unwrap_or_default().to_string()
    }

    fn zk_get(&self, path: &str) -> String {
        self.run(
            &self.zookeeper,
            &["org.apache.zookeeper.ZooKeeperMain", "-server", ZK_CONNECT, "get", path],
            Stdio::null(),
        )
    }

    fn topics(&self, args: &[&str]) -> String {
        let mut all = vec!["kafka.admin.TopicCommand", "--zookeeper", ZK_CONNECT];
        all.extend_from_slice(args);
        self.run(&self.kafka, &all, Stdio::null())
    }

    /// Sends each message with `acks=all` (so `min.insync.replicas` of the seed's settings holds).
    fn produce(&self, messages: &[String]) {
        let input = self.work.join("messages.txt");
        std::fs::write(&input, messages.join("\n") + "\n").unwrap();
        let args = ["kafka.tools.ConsoleProducer", "--broker-list", BROKERS, "--topic", TOPIC];
        let mut all = args.to_vec();
        all.extend_from_slice(&["--request-required-acks", "all", "--message-send-max-retries", "10"]);
        self.run(&self.kafka, &all, std::fs::File::open(&input).unwrap().into());
    }

    /// Every message of the topic, read from the beginning by a new consumer group.
    fn consume(&self, count: usize, group: &str) -> Vec<String> {
        let count = count.to_string();
        let group = format!("group.id={group}");
        let args = ["kafka.tools.ConsoleConsumer", "--bootstrap-server", BROKERS, "--topic", TOPIC, "--from-beginning"];
        let mut all = args.to_vec();
        all.extend_from_slice(&["--max-messages", &count, "--timeout-ms", "60000", "--consumer-property", &group]);
        let mut got: Vec<String> = self.run(&self.kafka, &all, Stdio::null()).lines().map(str::to_string).collect();
        got.sort();
        got
    }

    /// The topic's description, once every partition has `isr` in-sync replicas (bounded).
    fn wait_for_isr(&self, isr: usize, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let described = self.topics(&["--describe", "--topic", TOPIC]);
            let counts: Vec<usize> = described
                .lines()
                .filter_map(|l| l.split("Isr: ").nth(1))
                .map(|ids| ids.trim().split(',').count())
                .collect();
            if counts.len() == 3 && counts.iter().all(|c| *c == isr) {
                return described;
            }
            assert!(Instant::now() < deadline, "no Isr of {isr} on every partition after {limit:?}:\n{described}");
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

/// Messages `seed-FROM` .. `seed-TO` (exclusive), as produced: in sorted order, as `consume`
/// returns what it read.
fn messages(from: usize, to: usize) -> Vec<String> {
    (from..to).map(|i| format!("{TOPIC}-{i:03}")).collect()
}

fn start(layout: &Path, n: usize, name: &str, data: &Path) {
    start_node(layout, &format!("node-{n}"), name, data, &NODE_JVM_ENV);
}

/// Each node's ZooKeeper is 3.4.10, one leads and two follow, each `myid` its own.
fn check_quorum(names: &[String], data: &[PathBuf]) {
    let leader = wait_for_quorum(&HOSTS, Duration::from_secs(180), names);
    for (n, host) in HOSTS.iter().enumerate() {
        let answer = ensemble::four_letters(host, "srvr").unwrap_or_default();
        println!("--- srvr {host}\n{answer}");
        assert!(answer.starts_with("Zookeeper version: 3.4.10-"), "{host}: {answer}");
        // 3.4.10 reads the template's list of four-letter words too.
        let conf = ensemble::four_letters(host, "conf").unwrap_or_default();
        assert_eq!(conf, "conf is not executed because it is not in the whitelist.\n", "{host}");
        assert_eq!(std::fs::read_to_string(data[n].join("zookeeper/myid")).unwrap(), format!("{n}\n"));
    }
    println!("ZooKeeper leader: {leader}");
}

/// Brokers 0, 1, 2 registered in ZooKeeper, each at its node's address, each Kafka 1.0.0 on
/// Java 17.
fn check_brokers(tools: &Tools, names: &[String], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let ids = tools.zk_ls("/brokers/ids");
        println!("/brokers/ids: {ids}");
        if ids == "[0, 1, 2]" {
            break;
        }
        let all: Vec<String> = names.iter().map(|n| format!("--- {n}\n{}", logs(n))).collect();
        assert!(Instant::now() < deadline, "brokers registered: {ids}\n{}", all.join("\n"));
        std::thread::sleep(Duration::from_secs(3));
    }
    for (n, host) in HOSTS.iter().enumerate() {
        let broker = tools.zk_get(&format!("/brokers/ids/{n}"));
        assert!(broker.contains(&format!("PLAINTEXT://{host}:9092")), "broker {n}: {broker}");
        let log = logs(&names[n]);
        assert!(log.contains("Kafka version : 1.0.0"), "node {n}: {log}");
        assert!(log.contains("java.version=17"), "node {n} runs on another Java: {log}");
        assert!(log.contains(&format!("[KafkaServer id={n}] started")), "{log}");
    }
}

/// The meta.properties Kafka wrote for node `n`'s broker.
fn meta_properties(data: &Path) -> String {
    std::fs::read_to_string(data.join("kafka/logs/meta.properties")).unwrap()
}

/// A node run with `volume` (a copy of another node's data) as its own: refused, exit 65.
fn refused(layout: &Path, n: usize, volume: &Path, says: &str) {
    let out = node_run(volume, &["--rm"])
        .args(["-e", &format!("NODE_ID={n}"), "-e", "IMGBUILD_VAR_bind_address={{node_host}}"])
        .arg(format!("oci:{}:node-{n}", layout.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(err.contains(says), "{err}");
    println!("refused (exit 65): {}", err.lines().last().unwrap_or_default());
}

#[test]
fn the_seed_zookeeper_3_4_10_and_kafka_1_0_0_from_maven_central_replicate_a_topic_three_ways() {
    super::debian::require();
    ["mvn", "timeout", "skopeo"].iter().for_each(|t| require_tool(t));
    let started = Instant::now();
    let p = TestProject::new();
    let work = p.path("work");
    ensemble::pin_base_and_jre(&p, &work);
    let pinned = pin_seed_inputs(&p, &work);
    let log4j = work.join("tools-log4j.properties");
    let warnings = LOG4J.replace("INFO, stdout", "WARN, stderr").replace("stdout", "stderr");
    std::fs::write(&log4j, warnings + "log4j.appender.stderr.Target=System.err\n").unwrap();
    let tools =
        Tools { kafka: pinned.kafka_jars.clone(), zookeeper: pinned.zookeeper_jars.clone(), log4j, work: work.clone() };

    let (guard, layout, data) = ensemble::build_for_podman(&p, "imgbuild-seed");
    let names = &guard.names;
    check_inputs(&layout, &pinned);
    for n in 0..3 {
        start(&layout, n, &names[n], &data[n]);
    }
    check_quorum(names, &data);
    check_brokers(&tools, names, Duration::from_secs(180));
    for (n, d) in data.iter().enumerate() {
        assert!(meta_properties(d).contains(&format!("broker.id={n}\n")), "{}", meta_properties(d));
    }
    println!("cluster up after {:?}", started.elapsed());

    replicate_lose_and_recover(&tools, &layout, names, &data);

    // Another node's data, Kafka's or ZooKeeper's, is refused.
    let kafka_only = p.path("data/kafka-of-1");
    std::fs::create_dir_all(kafka_only.join("kafka/logs")).unwrap();
    std::fs::write(kafka_only.join("kafka/logs/meta.properties"), meta_properties(&data[1])).unwrap();
    refused(&layout, 0, &kafka_only, "meta.properties says broker.id=1 but this is node 0");
    let zk_only = p.path("data/zookeeper-of-1");
    std::fs::create_dir_all(zk_only.join("zookeeper")).unwrap();
    std::fs::copy(data[1].join("zookeeper/myid"), zk_only.join("zookeeper/myid")).unwrap();
    refused(&layout, 0, &zk_only, "holds '1' but this node would write '0'");
    println!("the seed's procedure took {:?}", started.elapsed());
}

/// A topic replicated three ways; one node stopped (the ISR shrinks, messages still go both
/// ways), then run again on its own data (it keeps its identity, the ISR is three again).
fn replicate_lose_and_recover(tools: &Tools, layout: &Path, names: &[String], data: &[PathBuf]) {
    let created = tools.topics(&["--create", "--topic", TOPIC, "--partitions", "3", "--replication-factor", "3"]);
    assert!(created.contains(&format!("Created topic \"{TOPIC}\"")), "{created}");
    let described = tools.wait_for_isr(3, Duration::from_secs(60));
    println!("--- created\n{described}");
    assert!(described.contains("ReplicationFactor:3"), "{described}");
    tools.produce(&messages(0, 30));
    assert_eq!(tools.consume(30, "seed-a"), messages(0, 30));

    let stop = podman().args(["stop", "--time", "60", &names[2]]).output().unwrap();
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    let code = podman().args(["inspect", "--format", "{{.State.ExitCode}}", &names[2]]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&code.stdout).trim(), "0", "node 2 after SIGTERM: {}", logs(&names[2]));
    let shrunk = tools.wait_for_isr(2, Duration::from_secs(90));
    println!("--- node 2 stopped\n{shrunk}");
    assert!(shrunk.lines().filter_map(|l| l.split("Isr: ").nth(1)).all(|isr| !isr.contains('2')), "{shrunk}");
    tools.produce(&messages(30, 60));
    assert_eq!(tools.consume(60, "seed-b"), messages(0, 60));

    // A new container on node 2's data, told nothing but the id baked into its image.
    assert_ok(&podman().args(["rm", &names[2]]).output().unwrap());
    start(layout, 2, &names[2], &data[2]);
    let back = tools.wait_for_isr(3, Duration::from_secs(180));
    println!("--- node 2 restarted on its data\n{back}");
    let log = logs(&names[2]);
    assert!(log.contains("node 2 of cluster zk-kafka"), "{log}");
    assert!(log.contains("[KafkaServer id=2] started"), "{log}");
    assert_eq!(std::fs::read_to_string(data[2].join("zookeeper/myid")).unwrap(), "2\n");
    assert!(meta_properties(&data[2]).contains("broker.id=2\n"));
    let ids = tools.zk_ls("/brokers/ids");
    println!("/brokers/ids: {ids}");
    assert_eq!(ids, "[0, 1, 2]");
    tools.produce(&messages(60, 90));
    assert_eq!(tools.consume(90, "seed-c"), messages(0, 90));
}
