//! What a node's address may be: an IPv4 or IPv6 address, or a host name (RFC 1123). The
//! entrypoint applies the same rule (`is_host` in `src/assets/imgbuild-init.sh`) to the
//! addresses it is given at boot; a property test holds the two to the same answers.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The longest host name DNS can carry (RFC 1035 §2.3.4, without the final dot).
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

/// An IPv4 address (four decimal numbers 0-255, no leading zeros), an IPv6 address (no zone,
/// no brackets), or a host name.
pub fn is_host(text: &str) -> bool {
    text.parse::<Ipv4Addr>().is_ok() || text.parse::<Ipv6Addr>().is_ok() || is_host_name(text)
}

/// What makes two spellings of a host one host: a name in lower case (DNS ignores case), an
/// address as parsed (`::1` is `0::1`; an IPv4-mapped IPv6 address is its IPv4 address).
pub(crate) fn host_key(host: &str) -> String {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_canonical().to_string(),
        Err(_) => host.to_ascii_lowercase(),
    }
}

/// RFC 1123: dot-separated labels of ASCII letters, digits and `-`, each 1 to 63 long and
/// neither starting nor ending with `-`, at most 253 in all, with no final dot. The last label
/// is not all digits, so that no name can be mistaken for a malformed IPv4 address (RFC 3696 §2).
fn is_host_name(text: &str) -> bool {
    let label_ok = |l: &str| {
        (1..=MAX_LABEL).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    text.len() <= MAX_NAME
        && text.split('.').all(label_ok)
        && text.rsplit('.').next().is_some_and(|last| !last.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names_are_hosts() {
        for ok in ["127.0.1.1", "0.0.0.0", "::1", "fd00::1:2", "::ffff:1.2.3.4", "zk-0", "zk-0.zk.ns.svc", "a", "x1"] {
            assert!(is_host(ok), "{ok}");
        }
        let long_label = "a".repeat(64);
        let long_name = ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(62)].join(".");
        assert_eq!(long_name.len(), 254);
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "a.",
            ".a",
            "a_b",
            "a b",
            "a,b",
            "a/b",
            "1.2.3",
            "999.1.1.1",
            "01.2.3.4",
            "1.2.3.4.5",
            "fe80::1%eth0",
            "[::1]",
            "zk-ü",
            &long_label,
            &long_name,
        ] {
            assert!(!is_host(bad), "{bad:?}");
        }
        assert!(is_host(&long_name[1..]), "253 characters are allowed");
    }

    #[test]
    fn one_host_spelled_two_ways_has_one_key() {
        for (a, b) in [
            ("node-a", "NODE-A"),
            ("::1", "0::1"),
            ("::1", "0:0:0:0:0:0:0:1"),
            ("::ffff:1.2.3.4", "1.2.3.4"),
            ("fd00::A", "fd00::a"),
        ] {
            assert_eq!(host_key(a), host_key(b), "{a} {b}");
        }
        for (a, b) in [("node-a", "node-b"), ("::1", "::2"), ("1.2.3.4", "1.2.3.5")] {
            assert_ne!(host_key(a), host_key(b), "{a} {b}");
        }
    }
}
