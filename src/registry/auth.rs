//! Registry credentials and the authentication challenge (Basic, or Bearer tokens from the
//! realm the registry names). Secrets live in `Secret`, which never prints its value.

use std::fmt;

use base64::Engine as _;

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

/// What answers a registry's challenge: a user name and password, or (user name `<token>`, as
/// Docker's credential helpers say it) an identity token to exchange for access tokens.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
    /// Where they came from (a file, a helper, the command line), for messages.
    pub origin: String,
}

/// The user name that marks an identity token.
const IDENTITY_TOKEN_USER: &str = "<token>";

impl Credentials {
    pub fn new(username: &str, password: Secret, origin: impl Into<String>) -> Self {
        Credentials { username: username.to_string(), password, origin: origin.into() }
    }

    pub fn identity_token(token: Secret, origin: impl Into<String>) -> Self {
        Credentials::new(IDENTITY_TOKEN_USER, token, origin)
    }

    /// The identity token, when these credentials are one.
    pub fn as_identity_token(&self) -> Option<&Secret> {
        (self.username == IDENTITY_TOKEN_USER).then_some(&self.password)
    }

    pub fn basic_header(&self) -> Secret {
        let raw = format!("{}:{}", self.username, self.password.expose());
        Secret(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw)))
    }

    /// Who is authenticating, for messages: never the secret.
    pub fn describe(&self) -> String {
        match self.as_identity_token() {
            Some(_) => format!("an identity token from {}", self.origin),
            None => format!("user `{}` from {}", crate::error::escape(&self.username), self.origin),
        }
    }
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String> },
}

pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
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
        let c = Credentials::new("u", Secret::new("hunter2".into()), "test");
        assert!(!format!("{c:?} {} {}", c.password, c.describe()).contains("hunter2"));
        assert!(!format!("{:?}", c.basic_header()).contains("aHVudGVyMg"));
    }
}
