//! Which certificates a registry connection trusts, as the containers tools and Docker decide:
//! the system's roots, `--ca-file`, and the first of `~/.config/containers/certs.d/HOST[:PORT]`,
//! `/etc/containers/certs.d/HOST[:PORT]` and `/etc/docker/certs.d/HOST[:PORT]` that exists
//! (its `*.crt` files).
//!
//! A certificate the user trusts is also accepted as the server's own certificate when it is
//! byte for byte what the server presents: that is the self-signed `CA:TRUE` certificate
//! Docker's registry documentation has users make, which a chain check refuses
//! (`CaUsedAsEndEntity`). The handshake signature is still verified with its key, the name must
//! still match and the certificate must be within its validity period; only the chain is
//! replaced by equality with a certificate the user chose to trust.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::date::rfc3339;
use crate::error::{escape, Error, IoContext, Result};
use crate::reference::Reference;

/// The per-host certificate directories, in the order the containers tools look (the first
/// that exists for the host is used).
pub(crate) fn cert_dirs(registry: &str) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        roots.push(PathBuf::from(home).join(".config/containers/certs.d"));
    }
    roots.push(PathBuf::from("/etc/containers/certs.d"));
    roots.push(PathBuf::from("/etc/docker/certs.d"));
    roots.into_iter().map(|r| r.join(registry)).collect()
}

/// The certificate files the user trusts for `registry`: `ca_files`, then the `*.crt` files of
/// its certs.d directory (sorted, so the order never depends on the file system).
pub(crate) fn trusted_files(registry: &str, ca_files: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = ca_files.to_vec();
    if let Some(dir) = cert_dirs(registry).into_iter().find(|d| d.is_dir()) {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir).at(&dir)? {
            let path = entry.at(&dir)?.path();
            if path.extension().is_some_and(|e| e == "crt") {
                found.push(path);
            }
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).at(path)?;
    let bad = |message: String| Error::Definition { file: path.to_path_buf(), message };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)".into()));
    }
    Ok(certs)
}

/// The system's roots (read once per process) and Mozilla's, built in.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS configuration for connections to `registry`.
pub(crate) fn client_config(registry: &str, ca_files: &[PathBuf]) -> Result<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // A system certificate rustls cannot use is skipped, as reqwest does.
    roots.add_parsable_certificates(system_roots().iter().cloned());
    let mut pinned = Vec::new();
    for file in trusted_files(registry, ca_files)? {
        for cert in read_certificates(&file)? {
            roots.add(cert.clone()).map_err(|e| Error::Definition {
                file: file.clone(),
                message: format!("a certificate cannot be used as a trust anchor: {e}"),
            })?;
            pinned.push(cert);
        }
    }
    let provider = provider();
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .build()
        .map_err(|e| Error::Internal(format!("TLS verifier: {e}")))?;
    let verifier = Arc::new(TrustedVerifier { webpki, pinned });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(config)
}

/// The chain check, or equality with a certificate the user trusts (see the module comment).
#[derive(Debug)]
struct TrustedVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for TrustedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let chained = self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        if chained.is_ok() || !self.pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) {
            return chained;
        }
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, server_name)?;
        within_validity(end_entity.as_ref(), now.as_secs())?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Where a TLS error hides in reqwest's chain of causes. An `io::Error` shows the error it
/// wraps (often another `io::Error`) only through `get_ref`, so those are followed too.
pub(crate) fn tls_cause<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        current = match err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// What went wrong in a TLS handshake, for people: a sentence about the server, never rustls'
/// names for it.
pub(crate) fn sentence(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(why) => certificate_sentence(why),
        rustls::Error::InvalidMessage(_) => {
            "it did not answer the TLS handshake with TLS: it may serve plain HTTP".into()
        }
        rustls::Error::NoCertificatesPresented => "it presented no TLS certificate".into(),
        rustls::Error::AlertReceived(alert) => format!("it ended the TLS handshake (alert: {alert:?})"),
        rustls::Error::PeerIncompatible(why) => format!("it speaks no TLS version or cipher imgbuild does ({why:?})"),
        other => format!("the TLS handshake failed: {other}"),
    }
}

/// What is wrong with the certificate a server presented.
fn certificate_sentence(e: &CertificateError) -> String {
    let untrusted = "its TLS certificate is not trusted:";
    match e {
        CertificateError::UnknownIssuer => {
            format!("{untrusted} it is signed by a certificate authority this machine does not trust")
        }
        CertificateError::Other(other) if is_self_signed_ca(other) => format!(
            "{untrusted} the server presents a self-signed CA certificate (as `openssl req -x509` makes) as its \
             own, and that certificate is not one this machine trusts"
        ),
        CertificateError::Expired => format!("{untrusted} it has expired"),
        CertificateError::ExpiredContext { time, not_after } => {
            format!(
                "{untrusted} it expired on {} (it is now {})",
                rfc3339(not_after.as_secs()),
                rfc3339(time.as_secs())
            )
        }
        CertificateError::NotValidYet => format!("{untrusted} it is not valid yet"),
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "{untrusted} it is valid only from {} (it is now {}: is this machine's clock right?)",
            rfc3339(not_before.as_secs()),
            rfc3339(time.as_secs())
        ),
        CertificateError::NotValidForName => format!("{untrusted} it is for another name than the registry's"),
        CertificateError::NotValidForNameContext { expected, presented } => {
            let names: Vec<&str> = presented.iter().map(|p| presented_name(p)).collect();
            format!(
                "{untrusted} it is for {}, not for {}",
                if names.is_empty() { "no name at all".to_string() } else { escape(&names.join(", ")) },
                escape(&expected.to_str())
            )
        }
        CertificateError::Revoked => format!("{untrusted} its issuer has revoked it"),
        CertificateError::BadEncoding => format!("{untrusted} it cannot be read (not a valid X.509 certificate)"),
        CertificateError::BadSignature => {
            format!("{untrusted} its signature does not match its issuer's key")
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            format!("{untrusted} it is not meant for a TLS server (its extended key usage says otherwise)")
        }
        CertificateError::UnhandledCriticalExtension => {
            format!("{untrusted} it has a critical extension imgbuild does not know")
        }
        CertificateError::UnknownRevocationStatus
        | CertificateError::ExpiredRevocationList
        | CertificateError::ExpiredRevocationListContext { .. } => {
            format!("{untrusted} whether it was revoked cannot be told")
        }
        CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            format!("{untrusted} it is signed with an algorithm imgbuild does not accept")
        }
        CertificateError::Other(other) => {
            format!("{untrusted} its chain is not valid ({})", escape(&other.to_string()))
        }
        _ => format!("{untrusted} it was refused"),
    }
}

/// webpki's `CaUsedAsEndEntity`, which rustls passes on only as text: the server presented a
/// CA certificate (`CA:TRUE`) as its own, as a self-signed `openssl req -x509` one is.
fn is_self_signed_ca(other: &rustls::OtherError) -> bool {
    other.to_string() == "CaUsedAsEndEntity"
}

/// A name a certificate presents, as webpki writes it (`DnsName("localhost")`,
/// `IpAddress(127.0.0.1)`), without the wrapping.
fn presented_name(text: &str) -> &str {
    let inner = ["DnsName(", "IpAddress(", "UniformResourceIdentifier("]
        .iter()
        .find_map(|kind| text.strip_prefix(kind)?.strip_suffix(')'));
    inner.map_or(text, |name| name.trim_matches('"'))
}

/// The next step after a TLS failure talking to `reference`'s registry.
pub(crate) fn hint(e: &rustls::Error, reference: &Reference) -> String {
    let registry = &reference.registry;
    match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => trust_hint(registry),
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) if is_self_signed_ca(other) => {
            trust_hint(registry)
        }
        rustls::Error::InvalidCertificate(_) => "the registry's certificate must be renewed or made again (for the \
             name you use, in its subjectAltName), or this machine's clock set right"
            .to_string(),
        rustls::Error::InvalidMessage(_) if reference.is_loopback() => {
            "for a registry on this machine that serves plain HTTP, pass --insecure-registry \
             HOST[:PORT] (any command; push, pull, sbom and verify also take --insecure)"
                .to_string()
        }
        rustls::Error::InvalidMessage(_) => {
            "imgbuild speaks plain HTTP only to registries on loopback; use the registry's HTTPS address".to_string()
        }
        _ => "check that the address is the registry's HTTPS address".to_string(),
    }
}

fn trust_hint(registry: &str) -> String {
    format!(
        "if you trust it, give its CA certificate (or, for a self-signed registry, the certificate itself) \
         with --ca-file FILE, or put it in /etc/containers/certs.d/{registry}/ca.crt"
    )
}

fn within_validity(der: &[u8], now: u64) -> std::result::Result<(), rustls::Error> {
    let (not_before, not_after) = validity(der).ok_or(CertificateError::BadEncoding)?;
    if (now as i64) < not_before {
        return Err(CertificateError::NotValidYet.into());
    }
    if (now as i64) > not_after {
        return Err(CertificateError::Expired.into());
    }
    Ok(())
}

/// A certificate's `notBefore` and `notAfter`, in seconds since the epoch (RFC 5280 4.1.2.5).
fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let validity = certificate.validity();
    Some((validity.not_before.timestamp(), validity.not_after.timestamp()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A real self-signed certificate valid from `not_before` to `not_after` (seconds).
    fn certificate(not_before: i64, not_after: i64) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["registry.test".to_string()]).unwrap();
        let at = |secs| rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(secs as u64);
        (params.not_before, params.not_after) = (at(not_before), at(not_after));
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_validity_of_a_certificate_is_read_and_checked() {
        let der = certificate(1_704_067_200, 1_704_153_600);
        assert_eq!(validity(&der), Some((1_704_067_200, 1_704_153_600)));
        assert!(within_validity(&der, 1_704_100_000).is_ok());
        assert_eq!(within_validity(&der, 1_704_000_000), Err(CertificateError::NotValidYet.into()));
        assert_eq!(within_validity(&der, 1_704_200_000), Err(CertificateError::Expired.into()));
        assert_eq!(within_validity(&der[..der.len() - 3], 0), Err(CertificateError::BadEncoding.into()));
        // After 2049 a certificate writes GeneralizedTime instead of UTCTime.
        assert_eq!(validity(&certificate(0, 2_600_000_000)), Some((0, 2_600_000_000)));
    }

    /// rustls' names for what went wrong, which a sentence must not show.
    const INTERNALS: [&str; 6] = ["Other(", "OtherError", "Context", "UnknownIssuer", "CaUsedAsEndEntity", "Invalid"];

    #[test]
    fn every_certificate_failure_is_a_sentence_without_rustls_names() {
        use rustls::pki_types::UnixTime;
        use std::time::Duration;
        let at = |s: u64| UnixTime::since_unix_epoch(Duration::from_secs(s));
        #[derive(Debug)]
        struct Webpki(&'static str);
        impl std::fmt::Display for Webpki {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0) // as webpki's errors display: their variant's name
            }
        }
        impl std::error::Error for Webpki {}
        let other = |name| CertificateError::Other(rustls::OtherError(Arc::new(Webpki(name))));
        let cases: Vec<(CertificateError, &str)> = vec![
            (CertificateError::UnknownIssuer, "signed by a certificate authority this machine does not trust"),
            (other("CaUsedAsEndEntity"), "self-signed CA certificate"),
            (
                CertificateError::ExpiredContext { time: at(1_704_153_600), not_after: at(1_704_067_200) },
                "expired on 2024-01-01T00:00:00Z (it is now 2024-01-02T00:00:00Z)",
            ),
            (
                CertificateError::NotValidYetContext { time: at(0), not_before: at(951_825_600) },
                "valid only from 2000-02-29T12:00:00Z",
            ),
            (
                CertificateError::NotValidForNameContext {
                    expected: ServerName::try_from("registry.example.org").unwrap(),
                    presented: vec!["DnsName(\"localhost\")".into(), "IpAddress(127.0.0.1)".into()],
                },
                "it is for localhost, 127.0.0.1, not for registry.example.org",
            ),
            (CertificateError::Revoked, "revoked"),
            (CertificateError::BadEncoding, "not a valid X.509 certificate"),
            (CertificateError::BadSignature, "signature does not match"),
            (CertificateError::InvalidPurpose, "not meant for a TLS server"),
            (other("PathLenConstraintViolated"), "its chain is not valid"),
        ];
        for (error, says) in cases {
            let text = sentence(&rustls::Error::InvalidCertificate(error));
            assert!(text.starts_with("its TLS certificate is not trusted: ") && text.contains(says), "{text}");
            for internal in INTERNALS {
                assert!(!text.contains(internal), "`{internal}` in: {text}");
            }
        }
        let plain = sentence(&rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType));
        assert!(plain.contains("plain HTTP") && !INTERNALS.iter().any(|i| plain.contains(i)), "{plain}");
    }

    #[test]
    fn the_hint_is_to_trust_only_where_trusting_helps() {
        let reference: Reference = "127.0.0.1:5000/x/y".parse().unwrap();
        let hint = |e: CertificateError| hint(&rustls::Error::InvalidCertificate(e), &reference);
        assert!(hint(CertificateError::UnknownIssuer).contains("--ca-file"));
        assert!(
            hint(CertificateError::Expired).contains("renewed")
                && !hint(CertificateError::Expired).contains("--ca-file")
        );
        assert!(hint(CertificateError::NotValidForName).contains("subjectAltName"));
    }

    #[test]
    fn certs_d_follows_the_containers_order() {
        let dirs = cert_dirs("127.0.0.1:5000");
        let n = dirs.len();
        assert_eq!(dirs[n - 2], Path::new("/etc/containers/certs.d/127.0.0.1:5000"));
        assert_eq!(dirs[n - 1], Path::new("/etc/docker/certs.d/127.0.0.1:5000"));
    }

    proptest! {
        /// Any bytes: a validity or nothing, never a panic.
        #[test]
        fn arbitrary_der_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = validity(&bytes);
        }

        #[test]
        fn truncated_certificates_never_panic(cut in 0usize..400) {
            static DER: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| certificate(1_704_067_200, 2_019_600_000));
            let _ = validity(&DER[..cut.min(DER.len())]);
        }
    }
}
