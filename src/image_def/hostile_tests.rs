//! Hostile values of each class a definition holds (issue #11, second round), generated: image
//! paths, environment names, strings of every field, values a properties file reads, what a
//! boot renders, and a template source swapped while it is read.

use proptest::prelude::*;

use super::tests::{demo, edited, refused_at, Project, DEF, ZOO_CFG};
use super::*;
use crate::error::ExitCode;

/// How a path is put into each field of `DEF` that names one, and the line it is then on.
fn with_path(field: usize, path: &str) -> (String, usize) {
    let quoted = crate::toml_file::quoted(path);
    match field {
        0 => (edited("target = \"/etc/zk/zoo.cfg\"", &format!("target = {quoted}")), 17),
        1 => (edited("volumes = [\"/var/lib/zk\"]", &format!("volumes = [{quoted}]")), 5),
        2 => (edited("data_dirs = [\"/var/lib/zk\"]", &format!("data_dirs = [{quoted}]")), 22),
        3 => (edited("[config]\n", &format!("[config]\nworkdir = {quoted}\n")), 5),
        _ => (format!("{DEF}\n[[identity_check]]\nfile = {quoted}\nkey = \"broker.id\"\n"), 29),
    }
}
const PATH_FIELDS: usize = 5;

/// Path components: ordinary, whiteout names, dots, control characters, around 255 bytes.
fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z0-9][a-z0-9._-]{0,10}",
        2 => prop::sample::select(vec![".wh.etc", ".wh..wh..opq", ".wh.passwd", ".wh.", "a.wh.b", "wh.x"]).prop_map(String::from),
        1 => prop::sample::select(vec![".", "..", "a\u{1b}b", "x\u{85}", "t\tt"]).prop_map(String::from),
        2 => (250usize..=260).prop_map(|n| "c".repeat(n)),
    ]
}

/// Absolute paths from those components, some of them thousands of bytes long.
fn hostile_path() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(component(), 1..5).prop_map(|p| format!("/srv/{}", p.join("/"))),
        1 => (14usize..18, component()).prop_map(|(n, last)| format!("/srv/{}/{last}", vec!["d".repeat(254); n].join("/"))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every field that names a path in the image follows the one rule of `crate::image_path`
    /// (and, where the entrypoint lists the path in the shell, portable characters only): a
    /// path it refuses is refused in each field, at that field's line.
    #[test]
    fn every_image_path_of_a_definition_follows_one_rule(path in hostile_path()) {
        let p = demo();
        let rule = crate::image_path::parse(&path);
        let portable = path.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+@".contains(c));
        let kept_copy_fits = format!("/etc/imgbuild/templates{path}").len() < crate::image_path::PATH_MAX;
        for field in 0..PATH_FIELDS {
            let (def, line) = with_path(field, &path);
            let want = rule.is_ok() && (field == 3 || portable) && (field != 0 || kept_copy_fits);
            match p.parse(&def) {
                Ok(_) => prop_assert!(want, "field {} accepted {:?}", field, path),
                Err(e) => {
                    prop_assert!(!want, "field {} refused {:?}: {}", field, path, e);
                    prop_assert_eq!(e.exit_code(), ExitCode::Input);
                    prop_assert!(e.to_string().contains(&format!("demo.toml:{line}:")), "{}", e);
                }
            }
        }
    }

    /// The image's environment never sets what the entrypoint reads at boot.
    #[test]
    fn the_image_environment_never_sets_what_a_boot_reads(
        name in prop_oneof![
            "[A-Z][A-Z0-9_]{0,10}",
            prop::sample::select(vec!["NODE_ID", "ZOO_MY_ID", "KAFKA_BROKER_ID", "PEERS", "ADVERTISED_HOST", "HOSTNAME", "IMGBUILD_VAR_q1", "IMGBUILD_", "IMGBUILD_SERVICES", "IMGBUILD_ROOT"]).prop_map(String::from),
        ],
    ) {
        let p = demo();
        let read_at_boot = ["NODE_ID", "ZOO_MY_ID", "KAFKA_BROKER_ID", "PEERS", "ADVERTISED_HOST", "HOSTNAME"]
            .contains(&name.as_str()) || name.starts_with("IMGBUILD_");
        let def = edited("[config]\n", &format!("[config]\nenv = {{ {name} = \"1\" }}\n"));
        match p.parse(&def) {
            Ok(_) => prop_assert!(!read_at_boot, "{}", name),
            Err(e) => {
                prop_assert!(read_at_boot, "{}: {}", name, e);
                prop_assert!(e.to_string().contains("demo.toml:5:") && e.to_string().contains("read by the entrypoint at boot"), "{}", e);
            }
        }
    }

    /// A character that could drive a terminal or reorder text, in any string of any field
    /// (or a key), is refused at that field's line, naming the field; a line break only where
    /// the format needs one.
    #[test]
    fn no_string_of_any_field_holds_a_control_or_reordering_character(
        field in 0usize..FIELDS.len(),
        c in prop_oneof![
            (0u32..0x20).prop_map(|c| char::from_u32(c).unwrap()),
            (0x7fu32..0xa0).prop_map(|c| char::from_u32(c).unwrap()),
            prop::sample::select(vec!['\u{200b}', '\u{200f}', '\u{202a}', '\u{202e}', '\u{2066}', '\u{2069}', '\u{feff}']),
        ],
        raw in any::<bool>(),
    ) {
        let (from, shape, line, name) = FIELDS[field];
        // Written raw where TOML allows it (not a control character), else as an escape.
        let written = if raw && !c.is_control() { c.to_string() } else { format!("\\u{:04X}", c as u32) };
        let def = edited(from, &shape.replace('@', &written));
        let p = demo();
        match p.parse(&def) {
            Ok(_) => prop_assert!(c == '\n' && name == "lists.servers.join", "{} accepted U+{:04X}", name, c as u32),
            Err(e) => {
                let text = e.to_string();
                prop_assert_eq!(e.exit_code(), ExitCode::Input);
                prop_assert!(text.contains(&format!("demo.toml:{line}:")), "{}", text);
                prop_assert!(text.contains(&format!("`{name}")), "{}", text);
                prop_assert!(!text.chars().any(|ch| crate::error::is_unsafe_char(ch) && ch != '\n'), "{:?}", text);
            }
        }
    }
}

/// Each string field of `DEF`: what it is, its text with `@` where a character goes, its line
/// and the field as messages name it.
const FIELDS: [(&str, &str, usize, &str); 10] = [
    ("name = \"demo\"", "description = \"a@b\"\nname = \"demo\"", 1, "description"),
    ("port = \"2181\"", "port = \"21@81\"", 8, "vars.port"),
    ("item = \"server.", "item = \"@server.", 12, "lists.servers.item"),
    ("join = \"\\n\"", "join = \"@\"", 13, "lists.servers.join"),
    ("\"/etc/zk/zoo.cfg\"", "\"/etc/zk/z@oo.cfg\"", 17, "template[0].target"),
    ("\"/bin/zk\", \"start\"", "\"/bin/zk\", \"st@art\"", 21, "service[0].command[1]"),
    ("host = \"zk-1\"", "host = \"zk@-1\"", 26, "cluster.node[0].host"),
    ("volumes = [\"/var/lib/zk\"]", "volumes = [\"/var/lib/zk\"]\nlabels = { \"a@\" = \"b\" }", 6, "config.labels.a"),
    ("volumes = [\"/var/lib/zk\"]", "volumes = [\"/var/lib/zk\"]\nlabels = { a = \"b@\" }", 6, "config.labels.a"),
    ("volumes = [\"/var/lib/zk\"]", "volumes = [\"/var/lib/zk\"]\nuser = \"0@:0\"", 6, "config.user"),
];

#[test]
fn a_version_that_drives_the_terminal_is_refused_at_its_line_and_column() {
    let p = demo();
    let def = edited("port = \"2181\"", "port = \"1\\u001b]0;PWNED\\u0007\\u001b[31mRED\\nfake line\"");
    let e = p.parse(&def).unwrap_err().to_string();
    assert!(e.contains("demo.toml:8:8: field `vars.port`: `1\\u{1b}]0;PWNED"), "{e}");
    // Written raw, the character itself is pointed at.
    let e = p.parse(&edited("port = \"2181\"", "port = \"21\u{202e}81\"")).unwrap_err().to_string();
    assert!(e.contains("demo.toml:8:11: field `vars.port`: `21\\u{202e}81` holds an invisible character"), "{e}");
}

#[test]
fn values_a_properties_file_would_continue_are_refused() {
    let p = demo();
    refused_at(&p, &edited("port = \"2181\"", "port = \"2181\\\\\""), 8, "var `port`: ends with a backslash");
    refused_at(&p, &edited(":{{port}}\"", ":{{port}}\\\\\""), 11, "list `servers`: ends with a backslash");
    let with_self = edited("join = \"\\n\"", "join = \"\\n\"\nself_item = \"x\\\\\"");
    refused_at(&p, &with_self, 11, "ends with a backslash");
    assert!(p.parse(&edited("port = \"2181\"", "port = \"a\\\\b\"")).is_ok(), "inside a value it is text");
}

#[test]
fn what_a_boot_renders_is_bounded() {
    let p = demo();
    // DEF renders 4 references besides the template's own (bind's 1, the list's 3 for its one node).
    let refs = |n: usize| Project::new(&[("demo/zoo.cfg", "{{port}}".repeat(n).as_bytes())]);
    assert!(refs(9_996).parse(DEF).is_ok());
    let e = refs(9_997).parse(DEF).unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::Input);
    assert!(e.to_string().contains("a boot would render 10001 references"), "{e}");

    // 1,000 nodes, and a list of them (each counted 253 bytes long) used 70 times: too much text.
    let nodes: String = (2..=1000).map(|i| format!("\n[[cluster.node]]\nid = {i}\nhost = \"zk-{i}\"\n")).collect();
    let many = format!("{DEF}{nodes}");
    assert!(demo().parse(&many).is_ok());
    let big = Project::new(&[("demo/zoo.cfg", "{{servers}}\n".repeat(70).as_bytes())]);
    assert!(big.parse(&many).unwrap_err().to_string().contains("a boot could render"), "16 MiB");
    refused_at(&p, &format!("{many}\n[[cluster.node]]\nid = 1001\nhost = \"zk-1001\"\n"), 4024, "more than 1000 nodes");

    let templates: String =
        (0..101).map(|i| format!("\n[[template]]\nsource = \"demo/zoo.cfg\"\ntarget = \"/t/{i}\"\n")).collect();
    refused_at(&p, &format!("{DEF}{templates}"), 424, "more than 100 templates");

    let var = edited("port = \"2181\"", &format!("port = \"{}\"", "9".repeat(MAX_TEMPLATE_BYTES as usize)));
    let e = p.parse(&var).unwrap_err().to_string();
    assert!(e.contains("the vars and lists hold 1048621 bytes of text; at most 1048576"), "{e}");

    let half = "x".repeat((MAX_TEMPLATE_BYTES / 2) as usize + 1);
    let two =
        Project::new(&[("demo/zoo.cfg", ZOO_CFG.as_bytes()), ("demo/a", half.as_bytes()), ("demo/b", half.as_bytes())]);
    let def = format!("{DEF}\n[[template]]\nsource = \"demo/a\"\ntarget = \"/t/a\"\n\n[[template]]\nsource = \"demo/b\"\ntarget = \"/t/b\"\n");
    refused_at(&two, &def, 33, "at most 1048576 in all");
}

#[test]
fn the_cluster_layer_keeps_templates_at_paths_linux_can_hold() {
    let p = demo();
    let long = format!("/srv/{}/{}", vec!["d".repeat(200); 20].join("/"), "e".repeat(50));
    assert!(crate::image_path::parse(&long).is_ok() && long.len() > 4096 - 24);
    refused_at(&p, &with_path(0, &long).0, 17, "imgbuild keeps the template at a path as long as it");
}

/// A template's source swapped between a file inside the definition's directory and a link
/// to a file outside it, while the definition is parsed again and again: no parse ever reads
/// the outside file.
#[test]
fn a_template_source_swapped_while_it_is_read_never_leaks_the_outside_file() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    let p = Project::new(&[("demo/zoo.cfg", ZOO_CFG.as_bytes()), ("../hostsecret", b"host secret\n")]);
    let dir = p.images().join("demo");
    let secret = p.dir.path().join("hostsecret");
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let swapper = {
        let (dir, stop, swaps) = (dir.clone(), stop.clone(), swaps.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = std::fs::remove_file(dir.join("link.tmp"));
                std::os::unix::fs::symlink(&secret, dir.join("link.tmp")).unwrap();
                std::fs::rename(dir.join("link.tmp"), dir.join("a.cfg")).unwrap();
                std::fs::write(dir.join("file.tmp"), ZOO_CFG).unwrap();
                std::fs::rename(dir.join("file.tmp"), dir.join("a.cfg")).unwrap();
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let def = edited("\"demo/zoo.cfg\"", "\"demo/a.cfg\"");
    let mut outcomes = [0usize; 2];
    for _ in 0..400 {
        match p.parse(&def) {
            Ok(image) => {
                assert_eq!(image.templates[0].text, ZOO_CFG, "read something else than the file inside");
                outcomes[0] += 1;
            }
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains("outside") || text.contains("No such file"), "{text}");
                outcomes[1] += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(swaps.load(Ordering::Relaxed) > 0, "the source was never swapped: {outcomes:?}");
}

#[test]
fn a_fifo_as_template_source_is_refused_without_blocking() {
    let p = demo();
    let fifo = p.images().join("demo/fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    refused_at(&p, &edited("\"demo/zoo.cfg\"", "\"demo/fifo\""), 16, "is not a file");
}
