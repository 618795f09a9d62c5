//! Registry credentials and the authentication challenge (Basic, or Bearer tokens from the
//! realm the registry names). Secrets live in `Secret`, which never prints its value.

use std::fmt;
use std::path::PathBuf;

use base64::Engine as _;

use crate::error::{Error, Result};

/// A password or token: shown as `***` by `Debug` and `Display`, so it cannot reach a log or an error.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Clone, Debug)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

impl Credentials {
    pub fn basic_header(&self) -> Secret {
        let raw = format!("{}:{}", self.username, self.password.expose());
        Secret(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw)))
    }
}

/// Credentials for `registry` from the user's Docker config (`auths.<host>.auth`), if any.
pub fn from_docker_config(registry: &str) -> Result<Option<Credentials>> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
    let Some(path) = dir.map(|d| d.join("config.json")) else { return Ok(None) };
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
    let bad = |message: &str| Error::Definition { file: path.clone(), message: message.into() };
    let config: serde_json::Value = serde_json::from_str(&text).map_err(|_| bad("not valid JSON"))?;
    let auths = config.get("auths").and_then(|a| a.as_object());
    let candidates = [registry.to_string(), format!("https://{registry}"), format!("http://{registry}")];
    let hub = ["https://index.docker.io/v1/".to_string()];
    let entry = auths.and_then(|a| {
        candidates
            .iter()
            .chain(if registry == "docker.io" { hub.iter() } else { [].iter() })
            .find_map(|k| a.get(k.as_str()))
    });
    let Some(auth) = entry.and_then(|e| e.get("auth")).and_then(|a| a.as_str()) else { return Ok(None) };
    let decoded =
        base64::engine::general_purpose::STANDARD.decode(auth).map_err(|_| bad("an `auth` entry is not base64"))?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad("an `auth` entry is not UTF-8"))?;
    let (username, password) = decoded.split_once(':').ok_or_else(|| bad("an `auth` entry is not USER:PASSWORD"))?;
    Ok(Some(Credentials { username: username.to_string(), password: Secret(password.to_string()) }))
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String> },
}

pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => {
            let mut realm = None;
            let mut service = None;
            for (k, v) in parse_params(params) {
                match k.as_str() {
                    "realm" => realm = Some(v),
                    "service" => service = Some(v),
                    _ => {}
                }
            }
            Some(Challenge::Bearer { realm: realm?, service })
        }
        _ => None,
    }
}

/// `key="value", key2=value2` (values may hold commas inside quotes).
fn parse_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.push((key, value.to_string()));
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example.org/token",service="registry.example.org",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example.org/token".into(),
                service: Some("registry.example.org".into())
            })
        );
        assert_eq!(parse_challenge(r#"Basic realm="basic-realm""#), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn secrets_never_print() {
        let c = Credentials { username: "u".into(), password: Secret::new("hunter2".into()) };
        assert!(!format!("{c:?} {}", c.password).contains("hunter2"));
        assert!(!format!("{:?}", c.basic_header()).contains("aHVudGVyMg"));
    }
}
