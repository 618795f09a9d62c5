//! Signing keys of a cache, as Nix's binary cache keys: ed25519, written `NAME:BASE64` (the
//! secret is the 64 bytes seed ‖ public key, the public key its 32 bytes, as
//! `nix-store --generate-binary-cache-key` writes them). A build that pushes signs each record
//! with its secret key; a build that pulls uses an entry only if it carries a valid signature
//! by one of the public keys the user trusts ([`TrustedKeys`]).
//!
//! What is signed is [`fingerprint`]: one line that names everything that decides what a
//! cache hit puts into an image (see docs/cache.md).

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

use crate::digest::Sha256Digest;
use crate::error::{escape, Error, IoContext, Result};
use crate::store::LayerRecord;

/// The bytes a record's signature covers: the derivation, the layer format (imgbuild's layer
/// format version and the blob's media type), and the blob's digest, diff_id and size.
pub(crate) fn fingerprint(derivation: &Sha256Digest, media_type: &str, layer: &LayerRecord) -> Vec<u8> {
    format!(
        "imgbuild-layer-v1;{derivation};{};{media_type};{};{};{}",
        crate::layer::FORMAT_VERSION,
        layer.digest,
        layer.diff_id,
        layer.size
    )
    .into_bytes()
}

/// A key's name: what a signature says it was made by. Letters, digits and `.-_`, as a host
/// name with a number (`team-cache-1`).
fn check_name(name: &str) -> std::result::Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if name.is_empty() || name.len() > 128 || !name.chars().all(allowed) {
        return Err(format!("a key name is 1 to 128 letters, digits, `.`, `-` or `_`, not `{}`", escape(name)));
    }
    Ok(())
}

/// `NAME:BASE64` split and decoded into `N` bytes.
fn decode<const N: usize>(text: &str, what: &str) -> std::result::Result<(String, [u8; N]), String> {
    let (name, data) = text.trim().split_once(':').ok_or_else(|| format!("{what} is NAME:BASE64"))?;
    check_name(name)?;
    let bytes = STANDARD.decode(data).map_err(|_| format!("{what} `{}`: not base64", escape(name)))?;
    let bytes = <[u8; N]>::try_from(bytes.as_slice())
        .map_err(|_| format!("{what} `{}`: {} bytes, expected {N}", escape(name), bytes.len()))?;
    Ok((name.to_string(), bytes))
}

/// A public key someone trusts: entries it signed are used.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    bytes: [u8; 32],
}

impl std::str::FromStr for PublicKey {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<PublicKey, String> {
        let (name, bytes) = decode::<32>(text, "a public key")?;
        Ok(PublicKey { name, bytes })
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, STANDARD.encode(self.bytes))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A secret key that signs what a build pushes. Never shown: `Debug` names it only.
pub struct SecretKey {
    name: String,
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.name)
    }
}

impl SecretKey {
    /// Reads the secret key file `path`. Errors name the file, never its contents.
    pub fn load(path: &Path) -> Result<SecretKey> {
        let text = std::fs::read_to_string(path).at(path)?;
        let bad = |why: String| Error::Usage(format!("{}: not an imgbuild or Nix secret key: {why}", path.display()));
        let (name, bytes) = decode::<64>(&text, "a secret key").map_err(bad)?;
        let (seed, public) = bytes.split_at(32);
        let pair = Ed25519KeyPair::from_seed_and_public_key(seed, public)
            .map_err(|_| bad("its public half does not match its seed".into()))?;
        Ok(SecretKey { name, pair })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn public(&self) -> PublicKey {
        let bytes = self.pair.public_key().as_ref().try_into().expect("an ed25519 public key is 32 bytes");
        PublicKey { name: self.name.clone(), bytes }
    }

    /// The signature of `message`, as a record carries it: `NAME:BASE64`.
    pub fn sign(&self, message: &[u8]) -> String {
        format!("{}:{}", self.name, STANDARD.encode(self.pair.sign(message).as_ref()))
    }
}

/// Writes a new key pair named `name`: the secret key to `secret` (mode 0600) and the public key
/// to `public`. Neither file may exist (nor be a link): a key is never overwritten.
pub(crate) fn generate(name: &str, secret: &Path, public: &Path) -> Result<PublicKey> {
    check_name(name).map_err(Error::Usage)?;
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| Error::Internal("the system's random source failed".into()))?;
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| Error::Internal("an ed25519 seed".into()))?;
    let key = SecretKey { name: name.to_string(), pair };
    let mut secret_bytes = seed.to_vec();
    secret_bytes.extend_from_slice(key.pair.public_key().as_ref());
    let secret_text = format!("{name}:{}", STANDARD.encode(&secret_bytes));
    write_new(secret, secret_text.as_bytes(), 0o600)?;
    if let Err(e) = write_new(public, format!("{}\n", key.public()).as_bytes(), 0o644) {
        let _ = std::fs::remove_file(secret);
        return Err(e);
    }
    Ok(key.public())
}

/// Creates `path` with `data`: create-new (so never through a link, never over a file) with
/// `mode` from the start, synced.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                Error::Usage(format!("{} exists: a key is never overwritten (choose another path)", path.display()))
            }
            _ => Error::io(path, e),
        })?;
    let written = file.write_all(data).and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// The public keys a build trusts (from the config files and `--cache-trusted-key`).
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys(Vec<PublicKey>);

/// What a signature says about an entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Signed {
    /// A valid signature by this trusted key.
    Trusted(String),
    /// Signed (validly or not) by a key of this name that is not trusted.
    Untrusted(String),
    /// A signature that claims a trusted key's name but does not verify.
    Broken(String),
    Unsigned,
}

impl TrustedKeys {
    pub fn new(keys: Vec<PublicKey>) -> TrustedKeys {
        let mut unique: Vec<PublicKey> = Vec::new();
        for key in keys {
            if !unique.contains(&key) {
                unique.push(key);
            }
        }
        TrustedKeys(unique)
    }

    /// These keys and `key`.
    pub fn with(mut self, key: PublicKey) -> TrustedKeys {
        if !self.0.contains(&key) {
            self.0.push(key);
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `signature` (`NAME:BASE64`, or none) is a trusted key's signature of `message`.
    pub(crate) fn check(&self, message: &[u8], signature: Option<&str>) -> Signed {
        let Some(signature) = signature else { return Signed::Unsigned };
        let Some((name, data)) = signature.split_once(':') else { return Signed::Unsigned };
        // The name comes from the record: one no key can have is not repeated.
        if check_name(name).is_err() {
            return Signed::Untrusted("(not a key name)".into());
        }
        let name = name.to_string();
        let named: Vec<&PublicKey> = self.0.iter().filter(|k| k.name == name).collect();
        if named.is_empty() {
            return Signed::Untrusted(name);
        }
        let Ok(bytes) = STANDARD.decode(data) else { return Signed::Broken(name) };
        let verifies = |k: &&PublicKey| UnparsedPublicKey::new(&ED25519, k.bytes).verify(message, &bytes).is_ok();
        match named.iter().any(verifies) {
            true => Signed::Trusted(name),
            false => Signed::Broken(name),
        }
    }
}

impl Signed {
    /// What entries with such a signature are, as a plural phrase (`entries …`).
    pub(crate) fn entries(&self) -> String {
        match self {
            Signed::Trusted(name) => format!("signed by the trusted key `{name}`"),
            Signed::Untrusted(name) => format!("signed by `{name}`, a key not trusted here"),
            Signed::Broken(name) => format!("whose signature by the key `{name}` does not verify"),
            Signed::Unsigned => "that are unsigned".into(),
        }
    }
}

impl fmt::Display for Signed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signed::Trusted(name) => write!(f, "signed by the trusted key `{name}`"),
            Signed::Untrusted(name) => write!(f, "signed by `{name}`, not trusted here"),
            Signed::Broken(name) => write!(f, "with a signature claiming the key `{name}` that does not verify"),
            Signed::Unsigned => write!(f, "unsigned"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{BlobDigest, DiffId};
    use proptest::prelude::*;

    fn keys(dir: &Path, name: &str) -> (SecretKey, PublicKey) {
        let public = generate(name, &dir.join(format!("{name}.secret")), &dir.join(format!("{name}.public"))).unwrap();
        (SecretKey::load(&dir.join(format!("{name}.secret"))).unwrap(), public)
    }

    fn layer() -> LayerRecord {
        LayerRecord {
            digest: BlobDigest(Sha256Digest::of(b"blob")),
            diff_id: DiffId(Sha256Digest::of(b"tar")),
            size: 9,
        }
    }

    #[test]
    fn a_generated_pair_signs_and_verifies_and_files_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = keys(dir.path(), "team-1");
        assert_eq!(secret.public(), public);
        let text = std::fs::read_to_string(dir.path().join("team-1.public")).unwrap();
        assert_eq!(text.trim().parse::<PublicKey>().unwrap(), public);
        let mode = std::fs::metadata(dir.path().join("team-1.secret")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let message = fingerprint(&Sha256Digest::of(b"d"), crate::compress::MEDIA_TYPE_GZIP, &layer());
        let signature = secret.sign(&message);
        let trusted = TrustedKeys::new(vec![public.clone()]);
        assert_eq!(trusted.check(&message, Some(&signature)), Signed::Trusted("team-1".into()));
        assert_eq!(TrustedKeys::default().check(&message, Some(&signature)), Signed::Untrusted("team-1".into()));
        assert_eq!(trusted.check(&message, None), Signed::Unsigned);
        let odd = format!("{}\u{1b}[2J:{}", "x".repeat(10_000), &signature["team-1:".len()..]);
        assert_eq!(trusted.check(&message, Some(&odd)), Signed::Untrusted("(not a key name)".into()));
        // Another key of the same name does not verify it.
        let other = tempfile::tempdir().unwrap();
        let (_, impostor) = keys(other.path(), "team-1");
        assert_eq!(TrustedKeys::new(vec![impostor]).check(&message, Some(&signature)), Signed::Broken("team-1".into()));
        assert!(!format!("{secret:?}").contains(&STANDARD.encode(&secret.pair.public_key().as_ref()[..4])));
    }

    #[test]
    fn a_key_is_never_written_over_a_file_or_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("bashrc");
        std::fs::write(&target, "kept").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("k.secret")).unwrap();
        let err = generate("k", &dir.path().join("k.secret"), &dir.path().join("k.public")).unwrap_err();
        assert!(err.to_string().contains("never overwritten"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "kept");
        std::fs::remove_file(dir.path().join("k.secret")).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("k.public")).unwrap();
        assert!(generate("k", &dir.path().join("k.secret"), &dir.path().join("k.public")).is_err());
        assert!(!dir.path().join("k.secret").exists(), "no secret left without its public key");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "kept");
    }

    #[test]
    fn bad_names_and_keys_are_refused_and_a_secret_is_never_quoted() {
        for bad in ["", "a:b", "with space", "tab\t", "ü"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for bad in ["nocolon", "k:!!!", "k:AAAA", ":AAAA"] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let secret = format!("k:{}", STANDARD.encode([7u8; 64]));
        std::fs::write(&path, &secret).unwrap();
        let err = SecretKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("does not match") && !err.contains(&secret[2..]), "{err}");
    }

    proptest! {
        #[test]
        fn any_change_to_what_is_signed_breaks_the_signature(
            size in 1u64..u64::MAX, zstd in any::<bool>(), flip in 0usize..200
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (secret, public) = keys(dir.path(), "k");
            let trusted = TrustedKeys::new(vec![public]);
            let media = if zstd { crate::compress::MEDIA_TYPE_ZSTD } else { crate::compress::MEDIA_TYPE_GZIP };
            let layer = LayerRecord { size, ..layer() };
            let message = fingerprint(&Sha256Digest::of(b"d"), media, &layer);
            let signature = secret.sign(&message);
            let mut changed = message.clone();
            let at = flip % changed.len();
            changed[at] ^= 1;
            prop_assert_eq!(trusted.check(&message, Some(&signature)), Signed::Trusted("k".into()));
            prop_assert_eq!(trusted.check(&changed, Some(&signature)), Signed::Broken("k".into()));
        }
    }
}
