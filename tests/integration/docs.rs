//! The documentation a user reads: the README stays short, every page under docs/ is reachable
//! from it, every relative link (file and `#anchor`) resolves, and every `imgbuild` command in
//! a `sh` block is one the CLI accepts. (The README's walkthrough runs whole in `first_hour`.)

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The Markdown pages of the project: the README, docs/ and the format references.
fn pages() -> Vec<PathBuf> {
    let root = Path::new(ROOT);
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    let others = ["README.md", "recipes/README.md", "images/README.md", "BENCHMARKS.md"];
    pages.extend(others.iter().map(|p| root.join(p)));
    pages
}

/// A page's lines outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            lines.push(line);
        }
    }
    lines
}

/// The `imgbuild …` commands of a page's `sh` blocks: lines joined at a trailing `\`, each
/// command cut at a comment or the shell operator after it.
fn commands(text: &str) -> Vec<String> {
    let (mut in_sh, mut joined, mut found) = (false, String::new(), Vec::new());
    for line in text.lines() {
        if let Some(fence) = line.trim_start().strip_prefix("```") {
            in_sh = !in_sh && fence == "sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            joined.push_str(head);
            continue;
        }
        let line = std::mem::take(&mut joined) + line;
        for part in line.split(['|', ';', '&', '(', ')']).map(|p| p.trim_start().trim_start_matches("do ")) {
            if part.starts_with("imgbuild ") {
                found.push(part.split(" #").next().unwrap().trim().to_string());
            }
        }
    }
    found
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    let kept = heading.chars().filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'));
    kept.map(|c| if c == ' ' { '-' } else { c }).collect::<String>().to_lowercase()
}

fn anchors(text: &str) -> Vec<String> {
    let headings = prose(text).into_iter().filter_map(|l| l.strip_prefix('#')).map(|l| l.trim_start_matches('#'));
    headings.map(|h| slug(h.trim())).collect()
}

/// The targets of `[text](target)` links in a page's prose, skipping absolute URLs.
fn relative_links(text: &str) -> Vec<String> {
    let mut links = Vec::new();
    for line in prose(text) {
        for part in line.split("](").skip(1) {
            let target = part.split(')').next().unwrap();
            if !target.contains("://") && !target.starts_with("mailto:") {
                links.push(target.to_string());
            }
        }
    }
    links
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for link in relative_links(&text) {
            checked += 1;
            let (file, anchor) = link.split_once('#').map_or((link.as_str(), None), |(f, a)| (f, Some(a)));
            let target = if file.is_empty() { page.clone() } else { page.parent().unwrap().join(file) };
            let ok = match (target.exists(), anchor) {
                (false, _) => false,
                (true, None) => true,
                (true, Some(a)) => anchors(&std::fs::read_to_string(&target).unwrap()).iter().any(|s| s == a),
            };
            if !ok {
                broken.push(format!("{}: {link}", page.strip_prefix(ROOT).unwrap().display()));
            }
        }
    }
    assert!(checked > 40, "only {checked} links found: is the parser still reading the pages?");
    assert!(broken.is_empty(), "links that do not resolve:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_is_short_and_leads_to_every_page_of_docs() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(lines <= 300, "README.md has {lines} lines; move details under docs/");
    let links = relative_links(&readme);
    let docs = Path::new(ROOT).join("docs");
    for page in pages().iter().filter(|p| p.parent() == Some(docs.as_path())) {
        let name = format!("docs/{}", page.file_name().unwrap().to_str().unwrap());
        assert!(links.iter().any(|l| l.split('#').next() == Some(name.as_str())), "README.md links no {name}");
    }
}

#[test]
fn every_imgbuild_command_in_the_docs_parses() {
    use clap::Parser;
    let mut refused = Vec::new();
    let mut checked = 0;
    for page in pages() {
        for command in commands(&std::fs::read_to_string(&page).unwrap()) {
            checked += 1;
            if let Err(e) = imgbuild::cli::Cli::try_parse_from(command.split_whitespace()) {
                refused.push(format!("{}: `{command}`: {e}", page.strip_prefix(ROOT).unwrap().display()));
            }
        }
    }
    assert!(checked > 40, "only {checked} commands found: is the parser still reading the blocks?");
    assert!(refused.is_empty(), "commands the CLI refuses:\n{}", refused.join("\n"));
}

#[test]
fn slugs_are_githubs() {
    assert_eq!(slug("Where this departs from `DESIGN.md`"), "where-this-departs-from-designmd");
    assert_eq!(slug("A node's exit code"), "a-nodes-exit-code");
    assert_eq!(slug("In a local engine"), "in-a-local-engine");
}
