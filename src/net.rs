//! The one redirect policy of every HTTP client imgbuild builds (downloads, `recipe`,
//! `prefetch`, registries, caches): what a redirect may change, and what it may not.
//!
//! - No redirect leaves HTTPS for anything else (`https` → `http` would hand the rest of the
//!   exchange to whoever sits on the path, while the recipe still says `https`).
//! - Only `http` and `https` are followed, at most [`MAX_REDIRECTS`] times.
//! - A caller may refuse more (a registry's `Transport`).
//!
//! Credentials are the callers' part: reqwest drops `Authorization` when a redirect changes
//! host or port, a registry client treats a 401 from anywhere but its own origin as an error
//! ([`same_origin`]), and a token request follows no redirect at all ([`Redirects::None`]).

use std::io::Read;
use std::time::{Duration, Instant};

use reqwest::Url;

use crate::error::escape;

/// Redirects followed per request, as reqwest's default.
pub(crate) const MAX_REDIRECTS: usize = 10;

/// Whether two URLs are the same origin: scheme, host and port.
pub(crate) fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

/// `scheme://host:port` of `url`, as an error names it (escaped).
pub(crate) fn origin(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port_or_known_default() {
        Some(port) => escape(&format!("{}://{host}:{port}", url.scheme())),
        None => escape(&format!("{}://{host}", url.scheme())),
    }
}

/// Whether a redirect from `from` to `to` may be followed; the refusal names both (escaped).
pub(crate) fn check_redirect(from: &Url, to: &Url) -> std::result::Result<(), String> {
    let said = || format!("from {} to {}", escape(from.as_str()), escape(to.as_str()));
    match (from.scheme(), to.scheme()) {
        ("https", "https") | ("http", "http" | "https") => Ok(()),
        ("https", _) => Err(format!("refusing a redirect {}: it leaves HTTPS", said())),
        (_, other) => Err(format!("refusing a redirect {}: `{}` is not HTTP", said(), escape(other))),
    }
}

/// A caller's own rule for where a redirect may go: the refusal says why.
pub(crate) type Rule = Box<dyn Fn(&Url) -> std::result::Result<(), String> + Send + Sync>;

/// A [`Rule`] shared between clients.
pub(crate) type SharedRule = std::sync::Arc<dyn Fn(&Url) -> std::result::Result<(), String> + Send + Sync>;

/// What a command's policy (`verify`'s) adds to every place a client reaches: a rule for each
/// URL it did not choose itself (a redirect's target, a token realm, an upload location), and
/// the DNS resolver its connections use, so the address checked is the address connected to.
#[derive(Clone, Default)]
pub struct Reach {
    pub rule: Option<SharedRule>,
    pub dns: Option<std::sync::Arc<dyn reqwest::dns::Resolve>>,
}

impl Reach {
    /// Whether `url` may be reached; the refusal says why.
    pub(crate) fn check(&self, url: &Url) -> std::result::Result<(), String> {
        self.rule.as_ref().map_or(Ok(()), |rule| rule(url))
    }

    /// `builder` resolving names with this reach's resolver, if it has one.
    pub(crate) fn apply(&self, builder: reqwest::blocking::ClientBuilder) -> reqwest::blocking::ClientBuilder {
        match &self.dns {
            Some(dns) => builder.dns_resolver(std::sync::Arc::new(Dns(std::sync::Arc::clone(dns)))),
            None => builder,
        }
    }
}

/// A shared resolver as reqwest takes one (a sized type).
struct Dns(std::sync::Arc<dyn reqwest::dns::Resolve>);

impl reqwest::dns::Resolve for Dns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        self.0.resolve(name)
    }
}

/// Which redirects a client follows.
pub(crate) enum Redirects {
    /// Those [`check_redirect`] and the rule allow.
    Follow(Rule),
    /// None: a 3xx answer is returned as it is (for requests that carry a secret in their body).
    None,
}

impl Redirects {
    fn policy(self) -> reqwest::redirect::Policy {
        let also = match self {
            Redirects::None => return reqwest::redirect::Policy::none(),
            Redirects::Follow(also) => also,
        };
        reqwest::redirect::Policy::custom(move |attempt| {
            let previous = attempt.previous();
            if previous.len() > MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            // The caller's own rule first: its refusal is the more specific one.
            let checked = also(attempt.url()).and_then(|()| match previous.last() {
                Some(from) => check_redirect(from, attempt.url()),
                None => Ok(()),
            });
            match checked {
                Ok(()) => attempt.follow(),
                Err(why) => attempt.error(format!("redirected: {why}")),
            }
        })
    }
}

/// A client builder with imgbuild's user agent, `timeout` for connecting and for each read,
/// and `redirects`: the start of every HTTP client imgbuild makes.
pub(crate) fn client_builder(timeout: Duration, redirects: Redirects) -> reqwest::blocking::ClientBuilder {
    reqwest::blocking::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(redirects.policy())
        .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
}

/// Bytes of an error body read for its explanation: a registry's JSON errors are a few hundred.
pub(crate) const MAX_ERROR_BODY: u64 = 64 * 1024;
/// Bytes of a token server's answer: a token is a few kilobytes.
pub(crate) const MAX_TOKEN_ANSWER: u64 = 1024 * 1024;
/// How long an error body is read for: it only explains a failure already known.
pub(crate) const ERROR_BODY_DEADLINE: Duration = Duration::from_secs(10);

/// Why a small document could not be read whole.
#[derive(Debug)]
pub(crate) enum SmallRead {
    /// It is longer than `limit` bytes.
    TooLarge {
        limit: u64,
    },
    /// It did not end within the whole-request deadline.
    Late {
        deadline: Duration,
    },
    Io(std::io::Error),
}

impl std::fmt::Display for SmallRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SmallRead::TooLarge { limit } => write!(f, "the answer is larger than {limit} bytes (the limit for it)"),
            SmallRead::Late { deadline } => write!(
                f,
                "the answer did not arrive whole within {} s (the whole-request deadline, --timeout)",
                deadline.as_secs_f64()
            ),
            SmallRead::Io(e) => write!(f, "{e}"),
        }
    }
}

/// The slowest a download (a blob, a source tarball) may go on average: 16 KiB/s.
pub(crate) const MIN_RATE: u64 = 16 * 1024;

/// A download's body that ends with an error once it falls behind [`MIN_RATE`] after a grace
/// of one `--timeout`: a stream dripping just fast enough to beat reqwest's per-read timeout
/// would otherwise never end. A body of N bytes so has at most `timeout + N / MIN_RATE`.
pub(crate) struct MinRate<R> {
    inner: R,
    started: Instant,
    read: u64,
    grace: Duration,
}

impl<R> MinRate<R> {
    pub(crate) fn new(inner: R, grace: Duration) -> MinRate<R> {
        MinRate { inner, started: Instant::now(), read: 0, grace }
    }

    pub(crate) fn get_ref(&self) -> &R {
        &self.inner
    }
}

impl<R: Read> Read for MinRate<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        let allowed = self.grace + Duration::from_secs_f64(self.read as f64 / MIN_RATE as f64);
        if self.started.elapsed() > allowed {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the download fell below {} KiB/s after {} s (the minimum rate after one --timeout)",
                    MIN_RATE / 1024,
                    self.grace.as_secs_f64()
                ),
            ));
        }
        Ok(n)
    }
}

/// Reads a small document (manifest, index, token answer, error body) whole: at most `limit`
/// bytes, all within `deadline` of the first read. reqwest's timeout bounds each read only, so
/// a server sending a byte a second would otherwise hold a command for as long as it likes;
/// each read still ends within that per-read timeout, which bounds the overshoot.
pub(crate) fn read_small(mut body: impl Read, limit: u64, deadline: Duration) -> Result<Vec<u8>, SmallRead> {
    let started = Instant::now();
    let mut data = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match body.read(&mut chunk) {
            Ok(0) => return Ok(data),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(SmallRead::Io(e)),
        };
        if data.len() as u64 + n as u64 > limit {
            return Err(SmallRead::TooLarge { limit });
        }
        data.extend_from_slice(&chunk[..n]);
        if started.elapsed() > deadline {
            return Err(SmallRead::Late { deadline });
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn url() -> impl Strategy<Value = Url> {
        let scheme = prop_oneof![Just("https"), Just("http"), Just("ftp"), Just("file")];
        let host = prop_oneof![Just("127.0.0.1"), Just("localhost"), Just("cdn.example"), Just("[::1]")];
        let port = proptest::option::of(prop_oneof![Just(80u16), Just(443), Just(5000), 1u16..65535]);
        (scheme, host, port, "(/[a-z0-9]{0,4}){0,2}").prop_filter_map("a URL", |(s, h, p, path)| {
            let port = p.map_or_else(String::new, |p| format!(":{p}"));
            Url::parse(&format!("{s}://{h}{port}{path}")).ok()
        })
    }

    /// Every HTTP client imgbuild builds starts at [`client_builder`], so none escapes the
    /// redirect policy.
    #[test]
    fn every_http_client_is_built_here() {
        let builders = ["Client::builder(", "ClientBuilder::new(", "Client::new("];
        let found: Vec<String> = crate::atomic_file::tests::sources_without_tests()
            .into_iter()
            .filter(|(rel, _)| rel != "net.rs")
            .flat_map(|(rel, code)| {
                builders.iter().filter(|b| code.contains(**b)).map(move |b| format!("{rel}: {b}")).collect::<Vec<_>>()
            })
            .collect();
        assert!(found.is_empty(), "HTTP clients built around crate::net: {found:?}");
    }

    /// A reader that hands out one byte per read, waiting `pause` before each.
    struct Drip {
        left: usize,
        pause: Duration,
    }

    impl Read for Drip {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.left == 0 || buf.is_empty() {
                return Ok(0);
            }
            std::thread::sleep(self.pause);
            self.left -= 1;
            buf[0] = b'x';
            Ok(1)
        }
    }

    #[test]
    fn a_small_read_ends_at_its_limit_and_its_deadline() {
        let whole = read_small(&b"abc"[..], 3, Duration::from_secs(60)).unwrap();
        assert_eq!(whole, b"abc");
        let big = read_small(std::io::repeat(0), MAX_ERROR_BODY, Duration::from_secs(60)).unwrap_err();
        assert!(matches!(big, SmallRead::TooLarge { limit: MAX_ERROR_BODY }), "{big}");
        assert!(big.to_string().contains("65536 bytes"), "{big}");
        // A drip that would take 1000 reads stops at the deadline, counted in reads made.
        let mut drip = Drip { left: 1000, pause: Duration::from_millis(5) };
        let late = read_small(&mut drip, 1 << 20, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(late, SmallRead::Late { .. }), "{late}");
        assert!(drip.left > 900, "read {} bytes past a 50 ms deadline", 1000 - drip.left);
    }

    #[test]
    fn a_download_ends_when_it_falls_below_the_minimum_rate() {
        let mut fast = MinRate::new(&[7u8; 100_000][..], Duration::from_secs(60));
        assert_eq!(std::io::copy(&mut fast, &mut std::io::sink()).unwrap(), 100_000);
        // 1000 bytes a byte at a time, 5 ms apart, is far below 16 KiB/s: it ends at the grace.
        let mut drip = Drip { left: 1000, pause: Duration::from_millis(5) };
        let mut slow = MinRate::new(&mut drip, Duration::from_millis(50));
        let err = std::io::copy(&mut slow, &mut std::io::sink()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("16 KiB/s"), "{err}");
        assert!(drip.left > 900, "read {} bytes past the grace", 1000 - drip.left);
    }

    proptest! {
        /// A redirect is followed only between HTTP(S) URLs and never out of HTTPS.
        #[test]
        fn no_redirect_leaves_https_or_http(from in url(), to in url()) {
            let allowed = check_redirect(&from, &to);
            let expected = matches!((from.scheme(), to.scheme()), ("https", "https") | ("http", "http" | "https"));
            prop_assert_eq!(allowed.is_ok(), expected, "{} -> {}: {:?}", from, to, allowed);
            if let Err(why) = allowed {
                prop_assert!(why.contains(&escape(to.as_str())), "{}", why);
            }
        }

        /// Same origin is the same scheme, host and port (a default port written or not).
        #[test]
        fn same_origin_is_scheme_host_and_port(a in url(), b in url()) {
            let expected = a.scheme() == b.scheme()
                && a.host_str() == b.host_str()
                && a.port_or_known_default() == b.port_or_known_default();
            prop_assert_eq!(same_origin(&a, &b), expected);
            prop_assert!(same_origin(&a, &a));
            prop_assert_eq!(origin(&a) == origin(&b), expected);
        }
    }
}
