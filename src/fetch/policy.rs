//! Which places a fetch may ask when the recipes are not the user's own: `verify` rebuilds
//! from the recipes a provenance document carries, and whoever wrote that document chose their
//! URLs (an internal address, a cloud metadata endpoint). It asks only what the user's project
//! and mirrors name; other places only with `--provenance-urls`, and never on a non-public
//! address (loopback, private ranges, link-local) unless the user names the host
//! (`--allow-host`).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use crate::recipe::{Recipe, RecipeKind};
use crate::reference::Reference;

#[derive(Debug, Default)]
pub struct UrlPolicy {
    /// The URLs the user's project names (its recipes' URLs and mirrors), and its images'
    /// repositories as `docker://REGISTRY/REPO`.
    pub trusted: HashSet<String>,
    /// Registry hosts the user's `--registry-mirror`s name.
    pub trusted_registries: HashSet<String>,
    /// `--provenance-urls`: other places too, on public addresses.
    pub others: bool,
    /// `--allow-host`: hosts (`HOST` or `HOST:PORT`) asked whatever their address.
    pub named_hosts: Vec<String>,
}

impl UrlPolicy {
    /// Trusts every place `recipes` name.
    pub fn trust_recipes<'r>(&mut self, recipes: impl IntoIterator<Item = &'r Recipe>) {
        for recipe in recipes {
            self.trusted.extend(recipe.sources.iter().flat_map(|s| s.urls.iter().cloned()));
            if let RecipeKind::OciImage { reference, mirrors, .. } = &recipe.kind {
                self.trusted.extend(reference.iter().chain(mirrors).map(|r| format!("docker://{}", r.name())));
            }
        }
    }

    /// Why `url` may not be asked, if it may not.
    pub fn refuses_url(&self, url: &str) -> Option<String> {
        if self.trusted.contains(url) {
            return None;
        }
        let Ok(parsed) = reqwest::Url::parse(url) else {
            return Some("not a URL".into());
        };
        let host = parsed.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        let port = parsed.port_or_known_default().unwrap_or(443);
        self.refuses_place(host, port)
    }

    /// Why the repository `place` may not be asked, if it may not.
    pub fn refuses_registry(&self, place: &Reference) -> Option<String> {
        if self.trusted.contains(&format!("docker://{}", place.name()))
            || self.trusted_registries.contains(&place.registry)
        {
            return None;
        }
        let api = place.api_host();
        let (host, port) = match api.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') => (h, p.parse().unwrap_or(443)),
            _ => (api, 443),
        };
        self.refuses_place(host.trim_start_matches('[').trim_end_matches(']'), port)
    }

    /// Why a redirect to `to` may not be followed, if it may not: a place the provenance
    /// named may not send the download to an internal address either. A URL the project
    /// names, a host one of them is on, or a public host (a CDN) is followed.
    pub fn refuses_redirect(&self, to: &reqwest::Url) -> Option<String> {
        let host = to.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        let port = to.port_or_known_default().unwrap_or(443);
        let trusted_host = |url: &String| {
            reqwest::Url::parse(url)
                .is_ok_and(|u| u.host_str() == to.host_str() && u.port_or_known_default() == Some(port))
        };
        let mirror = |r: &String| r.eq_ignore_ascii_case(&format!("{host}:{port}")) || (port == 443 && r == host);
        if self.trusted.contains(to.as_str())
            || self.trusted.iter().any(trusted_host)
            || self.trusted_registries.iter().any(mirror)
        {
            return None;
        }
        let public = UrlPolicy { others: true, named_hosts: self.named_hosts.clone(), ..UrlPolicy::default() };
        public.refuses_place(host, port).map(|why| format!("to {to}: {why}"))
    }

    /// The rule and resolver that carry this policy into an HTTP client: every redirect, token
    /// realm and upload location is judged as a redirect is, and a name resolves only to
    /// addresses it allows (checked once, then connected to: no rebinding between the two).
    pub fn reach(self: &Arc<Self>) -> crate::net::Reach {
        let policy = Arc::clone(self);
        let rule = move |to: &reqwest::Url| policy.refuses_redirect(to).map_or(Ok(()), Err);
        crate::net::Reach { rule: Some(Arc::new(rule)), dns: Some(Arc::new(PolicyDns(Arc::clone(self)))) }
    }

    /// Whether connections to `host` (as the user's project or `--allow-host` names it) may go
    /// to any address it resolves to.
    fn trusts_host(&self, host: &str) -> bool {
        let named = |h: &String| {
            let h = h.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok()).map_or(h.as_str(), |(h, _)| h);
            h.trim_start_matches('[').trim_end_matches(']').eq_ignore_ascii_case(host)
        };
        let in_url = |u: &String| reqwest::Url::parse(u).is_ok_and(|u| u.host_str().is_some_and(|h| h == host));
        self.named_hosts.iter().any(named)
            || self.trusted_registries.iter().any(named)
            || self.trusted.iter().any(in_url)
    }

    /// The addresses `host` resolves to, all of them public unless the host is trusted.
    pub fn admitted(&self, host: &str) -> std::result::Result<Vec<SocketAddr>, String> {
        let found: Vec<SocketAddr> =
            (host, 0).to_socket_addrs().map_err(|e| format!("{host} cannot be resolved ({e})"))?.collect();
        if self.trusts_host(host) {
            return Ok(found);
        }
        match found.iter().find(|a| !is_public(a.ip())) {
            Some(a) => Err(format!(
                "{host} resolved to {}, not a public address (to connect to it, pass --allow-host {host})",
                a.ip()
            )),
            None => Ok(found),
        }
    }

    fn refuses_place(&self, host: &str, port: u16) -> Option<String> {
        let with_port = format!("{host}:{port}");
        if self.named_hosts.iter().any(|h| h.eq_ignore_ascii_case(host) || h.eq_ignore_ascii_case(&with_port)) {
            return None;
        }
        if !self.others {
            return Some(
                "only the provenance names it, not this project's recipes or mirrors (to fetch it, pass \
                 --provenance-urls)"
                    .into(),
            );
        }
        let addresses: Vec<IpAddr> = match (host, port).to_socket_addrs() {
            Ok(found) => found.map(|a| a.ip()).collect(),
            Err(e) => return Some(format!("{host} cannot be resolved ({e})")),
        };
        match addresses.iter().find(|a| !is_public(**a)) {
            Some(a) => Some(format!(
                "only the provenance names it, and {host} is at {a}, not a public address (to fetch from it, pass \
                 --allow-host {host})"
            )),
            None if addresses.is_empty() => Some(format!("{host} resolves to no address")),
            None => None,
        }
    }
}

/// The resolver of a policy's clients: the names it resolves are checked by the addresses the
/// connection then uses. (A blocking lookup, on the blocking client's own runtime thread.)
struct PolicyDns(Arc<UrlPolicy>);

impl reqwest::dns::Resolve for PolicyDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.0);
        Box::pin(async move {
            let found = policy.admitted(name.as_str())?;
            Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether `ip` is a public (globally routed) address: not loopback, private, link-local,
/// shared (CGNAT), unspecified, multicast, broadcast or reserved for documentation.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || first & 0xfe00 == 0xfc00 // unique local
        || first & 0xffc0 == 0xfe80 // link-local
        || first == 0x2001 && ip.segments()[1] == 0xdb8 // documentation
        || (first == 0x64 && ip.segments()[1] == 0xff9b)) // NAT64: an IPv4 address inside
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn internal_addresses_are_not_public() {
        for internal in [
            "127.0.0.1",
            "127.0.1.7",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!is_public(internal.parse().unwrap()), "{internal}");
        }
        for public in ["1.1.1.1", "8.8.8.8", "172.32.0.1", "151.101.1.1", "2606:4700::1111", "::ffff:1.1.1.1"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn only_the_projects_places_are_asked_unless_the_user_says_otherwise() {
        let mut policy = UrlPolicy::default();
        policy.trusted.insert("http://127.0.0.1:8080/dist/zk.tar.gz".into());
        assert_eq!(policy.refuses_url("http://127.0.0.1:8080/dist/zk.tar.gz"), None);
        let why = policy.refuses_url("https://1.1.1.1/zk.tar.gz").unwrap();
        assert!(why.contains("--provenance-urls"), "{why}");
        policy.others = true;
        assert_eq!(policy.refuses_url("https://1.1.1.1/zk.tar.gz"), None);
        let why = policy.refuses_url("http://169.254.169.254/latest/meta-data/").unwrap();
        assert!(why.contains("169.254.169.254, not a public address") && why.contains("--allow-host"), "{why}");
        assert!(policy.refuses_url("http://[::1]:9/x").is_some());
        assert!(policy.refuses_url("http://localhost:9/x").is_some());
        policy.named_hosts.push("169.254.169.254".into());
        assert_eq!(policy.refuses_url("http://169.254.169.254/latest/meta-data/"), None);
        policy.named_hosts = vec!["127.0.0.1:9".into()];
        assert_eq!(policy.refuses_url("http://127.0.0.1:9/x"), None);
        assert!(policy.refuses_url("http://127.0.0.1:10/x").is_some(), "another port");
    }

    #[test]
    fn a_base_images_repository_is_asked_as_a_url_is() {
        let r = |s: &str| s.parse::<Reference>().unwrap();
        let mut policy = UrlPolicy::default();
        policy.trusted.insert("docker://127.0.0.1:5000/team/base".into());
        let pinned = format!("127.0.0.1:5000/team/base@sha256:{}", "a".repeat(64));
        assert_eq!(policy.refuses_registry(&r(&pinned)), None);
        assert!(policy.refuses_registry(&r("127.0.0.1:5000/other/base")).unwrap().contains("--provenance-urls"));
        policy.others = true;
        let why = policy.refuses_registry(&r("10.0.0.5:5000/team/base")).unwrap();
        assert!(why.contains("10.0.0.5, not a public address") && why.contains("--allow-host 10.0.0.5"), "{why}");
        policy.trusted_registries.insert("10.0.0.5:5000".into());
        assert_eq!(policy.refuses_registry(&r("10.0.0.5:5000/team/base")), None, "a --registry-mirror of the user's");
    }

    #[test]
    fn a_redirect_never_leads_to_an_internal_address_unless_named() {
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        let mut policy = UrlPolicy::default();
        policy.trusted.insert("http://127.0.0.1:8/dist/a.tar.gz".into());
        assert_eq!(policy.refuses_redirect(&url("https://1.0.0.1/cdn/zk.tar.gz")), None, "a public host");
        assert_eq!(policy.refuses_redirect(&url("http://127.0.0.1:8/b")), None, "a host the project names");
        let why = policy.refuses_redirect(&url("http://169.254.169.254/latest/meta-data/")).unwrap();
        assert!(why.contains("to http://169.254.169.254/") && why.contains("--allow-host"), "{why}");
        assert!(policy.refuses_redirect(&url("http://127.0.0.1:9/b")).is_some(), "another port");
        policy.named_hosts.push("169.254.169.254".into());
        assert_eq!(policy.refuses_redirect(&url("http://169.254.169.254/x")), None);
    }

    /// A loopback server answering every request with `answer(its own port, path)`, counting
    /// the requests it gets; it stops with the test process (its thread only accepts).
    fn server(
        ip: &str,
        answer: impl Fn(u16, &str) -> String + Send + 'static,
    ) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::clone(&count);
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut line = String::new();
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                let _ = reader.read_line(&mut line);
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let _ = conn.write_all(answer(port, &path).as_bytes());
            }
        });
        (port, count)
    }

    fn internal() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        server("127.0.0.2", |_, _| "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecret".into())
    }

    /// `verify`'s policy trusting only the registry `127.0.0.1:port/team/x`, public places otherwise.
    fn verify_policy(port: u16) -> Arc<UrlPolicy> {
        let mut policy = UrlPolicy { others: true, ..UrlPolicy::default() };
        policy.trusted.insert(format!("docker://127.0.0.1:{port}/team/x"));
        Arc::new(policy)
    }

    fn connect(port: u16, policy: &Arc<UrlPolicy>) -> crate::error::Result<crate::registry::Client> {
        let settings = crate::registry::RegistrySettings {
            credentials: None,
            ca_files: vec![],
            insecure: true,
            timeout: std::time::Duration::from_secs(10),
            chunk_size: u64::MAX,
            attempts: 1,
            access: crate::registry::Access::Pull,
            reach: policy.reach(),
        };
        crate::registry::Client::connect(&format!("127.0.0.1:{port}/team/x:t").parse().unwrap(), &settings)
    }

    #[test]
    fn a_registry_cannot_redirect_verify_to_an_internal_address() {
        let (to, asked) = internal();
        let (port, _) = server("127.0.0.1", move |_, path| match path {
            "/v2/" => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".into(),
            _ => format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.2:{}/latest/meta-data/iam\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n",
                to
            ),
        });
        let client = connect(port, &verify_policy(port)).unwrap();
        let err = client.get_manifest("t").unwrap_err().to_string();
        assert!(err.contains("127.0.0.2, not a public address") && err.contains("--allow-host"), "{err}");
        assert!(!err.contains("sha256:"), "no hash of what was refused: {err}");
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 0, "the internal address was asked");
    }

    #[test]
    fn a_registry_cannot_name_an_internal_token_realm_to_verify() {
        let (to, asked) = internal();
        let (port, _) = server("127.0.0.1", move |_, _| {
            format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.2:{to}/internal/token\",\
                 service=\"s\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        });
        let err = connect(port, &verify_policy(port)).err().expect("connected through an internal realm").to_string();
        assert!(err.contains("token realm") && err.contains("not a public address"), "{err}");
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 0, "the internal realm was asked");
    }

    /// A name is resolved once, by the client's own resolver, and connected to only at an
    /// address the policy allows: no second lookup can rebind it to an internal one.
    #[test]
    fn a_name_resolving_to_an_internal_address_is_never_connected_to() {
        let (port, asked) = server("127.0.0.1", |_, _| "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".into());
        let policy = Arc::new(UrlPolicy { others: true, ..UrlPolicy::default() });
        let why = policy.admitted("localhost").unwrap_err();
        assert!(why.contains("localhost resolved to") && why.contains("--allow-host localhost"), "{why}");
        let reach = policy.reach();
        let client =
            reach.apply(crate::net::client_builder(std::time::Duration::from_secs(5), crate::net::Redirects::None));
        let err = client.build().unwrap().get(format!("http://localhost:{port}/x")).send().unwrap_err();
        assert!(format!("{err:?}").contains("not a public address"), "{err:?}");
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 0, "connected to an internal address");
        let named = UrlPolicy { others: true, named_hosts: vec!["localhost".into()], ..UrlPolicy::default() };
        assert!(!named.admitted("localhost").unwrap().is_empty(), "a host the user names resolves");
    }

    proptest! {
        /// An IPv4 address mapped into IPv6 is judged as the IPv4 address is; every address of
        /// 127/8, 10/8 and 169.254/16 is internal.
        #[test]
        fn mapped_addresses_are_judged_as_their_ipv4(bits in any::<u32>()) {
            let v4 = Ipv4Addr::from(bits);
            prop_assert_eq!(is_public(IpAddr::V6(v4.to_ipv6_mapped())), is_public(IpAddr::V4(v4)));
            let [_, b, c, d] = v4.octets();
            for first in [[127, b, c, d], [10, b, c, d], [169, 254, c, d]] {
                prop_assert!(!is_public(IpAddr::V4(Ipv4Addr::from(first))));
            }
        }
    }
}
