//! What a new user hit on a first hour with the README (review of 2026-11-25), each tested
//! through the binary: output to a reader that went away, paths that do not exist, pins that
//! do not match the file named, hints that name commands that work in the mode given.

use std::process::{Command, Output, Stdio};

use super::fixtures;
use super::harness::{assert_ok, stderr, TestProject};

/// A pipe whose reader is already gone: every write to it fails with `EPIPE`, as when the
/// reader of `imgbuild … | head -1` has read its line and exited.
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Stdio::from(writer)
}

/// Runs `cmd` with stdout to a closed pipe.
fn with_stdout_closed(cmd: &mut Command) -> Output {
    cmd.env("RUST_BACKTRACE", "1").stdout(closed_pipe()).stderr(Stdio::piped()).output().unwrap()
}

/// Ended without a panic, a backtrace or a word about the pipe.
fn ended_quietly(out: &Output, what: &str, code: i32) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{what}: {err}");
    for needle in ["panicked", "stack backtrace", "Broken pipe", "os error 32", "stdout"] {
        assert!(!err.contains(needle), "{what}: `{needle}` in stderr: {err}");
    }
}

#[test]
fn every_command_ends_quietly_when_its_reader_goes_away() {
    let p = TestProject::new();
    p.add_base();
    std::fs::write(p.path("zk.tar.gz"), fixtures::zookeeper()).unwrap();
    let zk = p.path("zk.tar.gz");
    let commands: Vec<Vec<&str>> = vec![
        vec!["check"],
        vec!["--json", "check"],
        vec!["--json", "node", "--id", "1"],
        vec!["node", "--id", "1"],
        vec!["build", "--format", "oci-archive"],
        vec!["recipe", zk.to_str().unwrap()],
        vec!["--json", "recipe", zk.to_str().unwrap()],
        vec!["store", "path"],
        vec!["--json", "store", "verify"],
        vec!["deploy", "compose"],
        vec!["completions", "bash"],
        vec!["man"],
        vec!["--help"],
        vec!["--version"],
    ];
    for args in &commands {
        let out = with_stdout_closed(p.cmd().args(args));
        ended_quietly(&out, &args.join(" "), 0);
    }
    // The work was done before the output: the archive is there, whole.
    assert!(p.root.join("out/zk-kafka.tar").is_file());

    // A failure stays a failure (its code), even when its JSON cannot be printed.
    let out = with_stdout_closed(p.cmd().args(["--json", "node", "--id", "7"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("7") && !stderr(&out).contains("panicked"), "{}", stderr(&out));

    // Nobody reading stderr any more does not stop the work either.
    let out = p.cmd().args(["build", "--out", "out/again"]).stderr(closed_pipe()).output().unwrap();
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("node-2"));
}
