//! Image references: `[HOST[:PORT]/]PATH[:TAG][@sha256:DIGEST]`, as Docker and the OCI
//! distribution spec read them.

use std::fmt;
use std::str::FromStr;

use crate::digest::Sha256Digest;
use crate::error::escape;

const DOCKER_HUB: &str = "docker.io";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `127.0.0.1:5000`, `ghcr.io`, `docker.io`.
    pub registry: String,
    /// The repository: `library/debian`, `team/zk-kafka`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Sha256Digest>,
}

impl Reference {
    /// The host to connect to (Docker Hub's API lives on another name than its references).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    /// Whether the registry is on this machine's loopback, where plain HTTP may be allowed.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.registry)
    }

    /// What a manifest is put under or fetched by: the digest if there is one, else the tag.
    pub fn target(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference { tag: Some(tag.to_string()), digest: None, ..self.clone() }
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

/// Whether `HOST[:PORT]` names this machine's loopback.
pub(crate) fn is_loopback_host(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses text that may carry a user name and password (`USER:PASSWORD@HOST/…`), without
/// repeating any of it: an `@` is only ever the start of a digest, `@sha256:…`, after the path.
pub(crate) fn refuse_userinfo(text: &str) -> Result<(), String> {
    let Some((before, after)) = text.split_once('@') else { return Ok(()) };
    if !before.contains('/') && text.contains('/') || !after.starts_with("sha256:") {
        return Err("`@` in an image reference only starts a digest (`REPO@sha256:…`), and a user name or \
             password (`USER:PASSWORD@HOST/…`) is refused without repeating the reference: give the user with \
             --username and the password on standard input with --password-stdin (or log in with `podman login`)"
            .into());
    }
    Ok(())
}

impl FromStr for Reference {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        refuse_userinfo(s)?;
        let bad = |why: &str| {
            format!(
                "`{}` is not an image reference ({why}); expected [HOST[:PORT]/]PATH[:TAG][@sha256:DIGEST]",
                escape(s)
            )
        };
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.parse::<Sha256Digest>().map_err(|e| bad(&e.to_string()))?)),
            None => (s, None),
        };
        // A tag follows the last `:` after the last `/` (a `:` before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(rest[last_slash + i + 1..].to_string())),
            None => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(bad("invalid tag"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let valid_path = !repository.is_empty()
            && repository.split('/').all(|part| {
                !part.is_empty()
                    && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
                    && part.starts_with(|c: char| c.is_ascii_alphanumeric())
            });
        if !valid_path {
            return Err(bad("repository names use lowercase letters, digits and `._-/`"));
        }
        Ok(Reference { registry, repository, tag, digest })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `--registry-mirror HOST=MIRROR`: images of registry `HOST` are also looked for at `MIRROR`
/// (`host[:port][/path]`), as a `[[registry.mirror]]` of containers' `registries.conf` says:
/// `docker.io=mirror.example:5000/hub` finds `docker.io/library/debian` at
/// `mirror.example:5000/hub/library/debian`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryMirror {
    pub registry: String,
    /// The mirror's registry host and the path its repositories are under (may be empty).
    pub host: String,
    pub prefix: String,
}

impl RegistryMirror {
    /// Where `reference` is on this mirror, if the mirror is for its registry.
    pub fn apply(&self, reference: &Reference) -> Option<Reference> {
        (reference.registry == self.registry).then(|| Reference {
            registry: self.host.clone(),
            repository: match self.prefix.as_str() {
                "" => reference.repository.clone(),
                prefix => format!("{prefix}/{}", reference.repository),
            },
            ..reference.clone()
        })
    }
}

impl FromStr for RegistryMirror {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.contains('@') {
            return Err("a registry mirror cannot hold a user name or password (`HOST=USER:PASSWORD@MIRROR`); it \
                 is not repeated here: mirrors use the credentials found for their host"
                .into());
        }
        let bad = |why: &str| {
            format!(
                "`{}` is not a registry mirror ({why}); expected HOST=MIRROR, e.g. docker.io=mirror.example:5000",
                escape(s)
            )
        };
        let (registry, mirror) = s.split_once('=').ok_or_else(|| bad("no `=`"))?;
        let registry = registry.trim().trim_end_matches('/');
        // Both sides must read as a registry host: the same rules as references.
        let host_of = |text: &str| -> Result<Reference, String> {
            let r: Reference = format!("{text}/x").parse().map_err(|e: String| bad(&e))?;
            if r.tag.is_some() || r.digest.is_some() || !text.starts_with(r.registry.as_str()) {
                return Err(bad("name a host (with its port), as in image references"));
            }
            Ok(r)
        };
        let registry = host_of(registry)?.registry;
        let mirror = host_of(mirror.trim().trim_end_matches('/'))?;
        let prefix = mirror.repository.strip_suffix("x").unwrap_or("").trim_end_matches('/').to_string();
        Ok(RegistryMirror { registry, host: mirror.registry, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_ports_tags_and_digests() {
        let r: Reference = "127.0.0.1:5000/team/zk-kafka:node-1".parse().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/zk-kafka", Some("node-1"))
        );
        assert!(r.is_loopback());
        let r: Reference = "debian".parse().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("docker.io", "library/debian", None)
        );
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let d = "sha256:362e64223cc0da95422b3b13c045186fc0a81250e765d31c025fbddf257f6143";
        let r: Reference = format!("localhost:5000/base@{d}").parse().unwrap();
        assert_eq!(r.target(), d);
        assert!(!"ghcr.io/x/y:tag".parse::<Reference>().unwrap().is_loopback());
        assert!("Upper/case".parse::<Reference>().is_err());
        assert!("host/repo:bad tag".parse::<Reference>().is_err());
    }

    proptest::proptest! {
        /// A reference carrying a user name and password is refused, and the error repeats
        /// none of it (`--json` prints the error too).
        #[test]
        fn userinfo_is_refused_and_never_repeated(
            user in "[a-z]{1,8}",
            password in "[A-Za-z0-9!#%&*+=?~@/:.-]{6,24}",
            host in proptest::prop_oneof![
                proptest::strategy::Just("127.0.0.1:5443".to_string()),
                "[a-z]{1,8}\\.example(:[0-9]{2,5})?",
            ],
            path in "[a-z]{1,6}(/[a-z]{1,6}){0,2}(:[a-z0-9]{1,5})?",
        ) {
            for text in [format!("{user}:{password}@{host}/{path}"), format!("{user}:{password}@{host}")] {
                let err = text.parse::<Reference>().unwrap_err();
                proptest::prop_assert!(!err.contains(&password), "{}", err);
                proptest::prop_assert!(err.contains("--password-stdin"), "{}", err);
                let mirror = format!("docker.io={text}").parse::<RegistryMirror>().unwrap_err();
                proptest::prop_assert!(!mirror.contains(&password), "{}", mirror);
            }
            let digest = format!("{host}/{}@sha256:{}", path.split(':').next().unwrap(), "a".repeat(64));
            proptest::prop_assert!(digest.parse::<Reference>().is_ok(), "{}", digest);
        }
    }

    #[test]
    fn registry_mirrors_move_a_repository_to_another_host_and_prefix() {
        let debian: Reference = "docker.io/library/debian".parse().unwrap();
        let m: RegistryMirror = "docker.io=127.0.0.1:5000/hub".parse().unwrap();
        assert_eq!(m.apply(&debian).unwrap().to_string(), "127.0.0.1:5000/hub/library/debian");
        let m: RegistryMirror = "docker.io=mirror.example".parse().unwrap();
        assert_eq!(m.apply(&debian).unwrap().to_string(), "mirror.example/library/debian");
        let other: Reference = "ghcr.io/a/b".parse().unwrap();
        assert_eq!(m.apply(&other), None);
        for bad in
            ["docker.io", "docker.io=", "=mirror.example", "docker.io=Mirror.example/UP", "docker.io=m.example:t@x"]
        {
            assert!(bad.parse::<RegistryMirror>().is_err(), "{bad}");
        }
    }
}
