//! Finding a registry's credentials where users keep them, in the order podman and skopeo
//! look (the command line's `--username`, which wins, is handled by the CLI):
//!
//! 1. the containers auth file: `REGISTRY_AUTH_FILE`, else `$XDG_RUNTIME_DIR/containers/auth.json`;
//! 2. `$XDG_CONFIG_HOME/containers/auth.json` (default `~/.config/containers/auth.json`);
//! 3. Docker's `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`).
//!
//! In each file, as Docker reads it: a `credHelpers` entry for the registry, then `credsStore`,
//! then `auths` (the most specific key first: `host/ns/repo`, `host/ns`, `host`). A helper is
//! `docker-credential-NAME get`: the server on stdin, `{"Username", "Secret"}` on stdout; the
//! user name `<token>` means the secret is an identity token. The first file that gives
//! credentials wins.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;

use super::auth::{Credentials, Secret};
use crate::error::{escape, Error, Result};

/// The Debian package of the usual credential helpers, for the hint when one is missing.
const HELPERS_PACKAGE: &str = "golang-docker-credential-helpers";

/// Docker Hub's key in Docker's files.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// The credential files, in the order they are read.
pub(crate) fn auth_files() -> Vec<PathBuf> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let home = env("HOME");
    let mut files = Vec::new();
    match env("REGISTRY_AUTH_FILE") {
        Some(file) => files.push(file),
        None => files.extend(env("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json"))),
    }
    files.extend(
        env("XDG_CONFIG_HOME")
            .or_else(|| home.as_ref().map(|h| h.join(".config")))
            .map(|d| d.join("containers/auth.json")),
    );
    files.extend(
        env("DOCKER_CONFIG").or_else(|| home.as_ref().map(|h| h.join(".docker"))).map(|d| d.join("config.json")),
    );
    files
}

/// Credentials for `registry` (and `repository` in it), from the first file that has some.
pub(crate) fn lookup(registry: &str, repository: &str) -> Result<Option<Credentials>> {
    for file in auth_files() {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&file, e)),
        };
        if let Some(found) = from_file(&file, &text, registry, repository, &run_helper)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

#[derive(serde::Deserialize, Default)]
struct AuthFile {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: std::collections::BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// Runs a helper: (helper name, server) → credentials, or `None` when it has none.
type Helper<'a> = &'a dyn Fn(&str, &str, &Path) -> Result<Option<Credentials>>;

fn from_file(file: &Path, text: &str, registry: &str, repository: &str, helper: Helper) -> Result<Option<Credentials>> {
    let bad = |message: String| Error::Definition { file: file.to_path_buf(), message };
    // serde's message can quote a value of the file (a password): say only where it failed.
    let parsed: AuthFile = serde_json::from_str(text).map_err(|e| {
        bad(format!("not a credentials file (unexpected JSON at line {}, column {})", e.line(), e.column()))
    })?;
    let server = if registry == "docker.io" { DOCKER_HUB_KEY } else { registry };
    let helper_for = parsed.cred_helpers.get(registry).or_else(|| parsed.cred_helpers.get(server));
    for name in helper_for.into_iter().chain(&parsed.creds_store) {
        if let Some(found) = helper(name, server, file)? {
            return Ok(Some(found));
        }
    }
    for key in keys(registry, repository) {
        let entry = parsed.auths.iter().find(|(k, _)| normalize_key(k) == key).map(|(_, e)| e);
        if let Some(found) = entry.map(|e| from_entry(e, file, &key)).transpose()?.flatten() {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The `auths` keys that can hold credentials for a repository, the most specific first.
fn keys(registry: &str, repository: &str) -> Vec<String> {
    let registry = normalize_registry(registry);
    let mut keys = Vec::new();
    let mut path = repository;
    loop {
        keys.push(format!("{registry}/{path}"));
        match path.rsplit_once('/') {
            Some((parent, _)) => path = parent,
            None => break,
        }
    }
    keys.push(registry.to_string());
    keys
}

/// A key as containers compares them: a key with a scheme names a host only.
fn normalize_key(key: &str) -> String {
    let stripped = key.trim_start_matches("http://").trim_start_matches("https://");
    let stripped = if stripped.len() != key.len() { stripped.split('/').next().unwrap_or("") } else { stripped };
    normalize_registry(stripped.trim_end_matches('/')).to_string()
}

fn normalize_registry(registry: &str) -> &str {
    match registry {
        "registry-1.docker.io" | "docker.io" | "index.docker.io" => "docker.io",
        other => other,
    }
}

fn from_entry(entry: &AuthEntry, file: &Path, key: &str) -> Result<Option<Credentials>> {
    let bad = |what: &str| Error::Definition {
        file: file.to_path_buf(),
        message: format!("the `auth` of `{}` is not {what}", escape(key)),
    };
    let origin = file.display().to_string();
    if let Some(token) = entry.identitytoken.as_ref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::identity_token(Secret::new(token.clone()), origin)));
    }
    let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) else { return Ok(None) };
    let decoded = base64::engine::general_purpose::STANDARD.decode(auth).map_err(|_| bad("base64"))?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad("UTF-8"))?;
    let (username, password) = decoded.split_once(':').ok_or_else(|| bad("USER:PASSWORD"))?;
    Ok(Some(Credentials::new(username, Secret::new(password.to_string()), origin)))
}

/// `docker-credential-NAME get`, with the server on stdin.
fn run_helper(name: &str, server: &str, file: &Path) -> Result<Option<Credentials>> {
    let program = format!("docker-credential-{name}");
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(Error::Definition {
            file: file.to_path_buf(),
            message: format!("`{}` is not a credential helper name", escape(name)),
        });
    }
    let named_by = format!("named by {}", file.display());
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::tool(&program, HELPERS_PACKAGE, format!("cannot run it ({named_by}): {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading is judged by its answer below.
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| Error::tool(&program, HELPERS_PACKAGE, e.to_string()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        // Nothing a helper prints is repeated: its output may hold the very secret it guards.
        let status = out.status.code().map_or_else(|| "was killed by a signal".into(), |c| format!("exited with {c}"));
        return Err(Error::tool(
            &program,
            HELPERS_PACKAGE,
            format!("`get` failed ({named_by}): it {status} (its output is not shown: it may hold secrets)"),
        ));
    }
    parse_helper_answer(&stdout, &program)
}

fn parse_helper_answer(stdout: &str, program: &str) -> Result<Option<Credentials>> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "Username", default)]
        username: String,
        #[serde(rename = "Secret", default)]
        secret: String,
    }
    // The answer holds the secret: the parse error must not quote it.
    let answer: Answer = serde_json::from_str(stdout).map_err(|_| {
        Error::tool(program, HELPERS_PACKAGE, "`get` did not answer with {\"Username\", \"Secret\"} JSON")
    })?;
    if answer.secret.is_empty() {
        return Ok(None);
    }
    let origin = format!("credential helper {program}");
    let secret = Secret::new(answer.secret);
    Ok(Some(if answer.username == "<token>" {
        Credentials::identity_token(secret, origin)
    } else {
        Credentials::new(&answer.username, secret, origin)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_helper(_: &str, _: &str, _: &Path) -> Result<Option<Credentials>> {
        panic!("no helper should run")
    }

    fn basic(user: &str, password: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    }

    #[test]
    fn the_most_specific_auths_key_wins_and_schemes_name_hosts() {
        let text = format!(
            r#"{{"auths": {{"https://reg.example:5000/v2/": {{"auth": "{}"}}, "reg.example:5000/team": {{"auth": "{}"}}}}}}"#,
            basic("host", "a"),
            basic("team", "b")
        );
        let f = Path::new("auth.json");
        let found = from_file(f, &text, "reg.example:5000", "team/app", &no_helper).unwrap().unwrap();
        assert_eq!((found.username.as_str(), found.password.expose()), ("team", "b"));
        let found = from_file(f, &text, "reg.example:5000", "other/app", &no_helper).unwrap().unwrap();
        assert_eq!(found.username, "host");
        assert!(from_file(f, &text, "elsewhere.example", "team/app", &no_helper).unwrap().is_none());
    }

    #[test]
    fn docker_hub_is_found_under_its_legacy_key() {
        let text = format!(r#"{{"auths": {{"{DOCKER_HUB_KEY}": {{"auth": "{}"}}}}}}"#, basic("me", "pw"));
        let found = from_file(Path::new("c.json"), &text, "docker.io", "library/debian", &no_helper).unwrap();
        assert_eq!(found.unwrap().username, "me");
    }

    #[test]
    fn helpers_come_before_auths_and_an_identity_token_is_kept_as_one() {
        let text = format!(
            r#"{{"credHelpers": {{"reg.example": "one"}}, "credsStore": "store", "auths": {{"reg.example": {{"auth": "{}"}}}}}}"#,
            basic("file", "pw")
        );
        let asked = std::cell::RefCell::new(Vec::new());
        let helper = |name: &str, server: &str, _: &Path| -> Result<Option<Credentials>> {
            asked.borrow_mut().push(format!("{name} {server}"));
            match name {
                "one" => Ok(None),
                _ => parse_helper_answer(r#"{"ServerURL":"reg.example","Username":"<token>","Secret":"tok"}"#, "h"),
            }
        };
        let found = from_file(Path::new("c.json"), &text, "reg.example", "a/b", &helper).unwrap().unwrap();
        assert_eq!(*asked.borrow(), ["one reg.example", "store reg.example"]);
        assert_eq!(found.as_identity_token().map(Secret::expose), Some("tok"));
    }

    #[test]
    fn bad_files_name_the_file_and_never_the_secret() {
        let f = Path::new("/x/auth.json");
        let e = from_file(f, "{not json", "r", "a", &no_helper).unwrap_err().to_string();
        assert!(e.starts_with("/x/auth.json: "), "{e}");
        // A value of the wrong type is not quoted back (serde would).
        let e = from_file(f, r#"{"auths": {"r": "hunter2"}}"#, "r", "a", &no_helper).unwrap_err().to_string();
        assert!(!e.contains("hunter2") && e.contains("line 1"), "{e}");
        let e = from_file(f, r#"{"credsStore": ["hunter2"]}"#, "r", "a", &no_helper).unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        let text = r#"{"auths": {"r": {"auth": "bm8tY29sb24taGVyZQ=="}}}"#;
        let e = from_file(f, text, "r", "a", &no_helper).unwrap_err().to_string();
        assert!(e.contains("USER:PASSWORD") && !e.contains("no-colon-here"), "{e}");
        let e = parse_helper_answer(r#"{"Username": "u", "Secret": "hunter2""#, "h").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
