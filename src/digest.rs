//! Content hashes that validate when parsed, so an invalid digest cannot exist.
//!
//! Recipes pin inputs by `sha256` or `sha512`, written as hex or as an SRI string
//! (`sha512-<base64>`). OCI blobs are always sha256; a layer's uncompressed `DiffId` and its
//! compressed `BlobDigest` are separate types so the two can never be swapped.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use base64::Engine as _;
use sha2::{Digest as _, Sha256, Sha512};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    pub fn output_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

/// A content hash of known algorithm and correct length.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash {
    algorithm: Algorithm,
    bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashParseError {
    #[error("unknown hash algorithm `{0}` (expected sha256 or sha512)")]
    UnknownAlgorithm(String),
    #[error("{algorithm} hash must be {expected} hex digits, got {found}")]
    WrongLength { algorithm: &'static str, expected: usize, found: usize },
    #[error("{0} hash is not valid hex (only 0-9 and a-f are allowed)")]
    NotHex(&'static str),
    #[error("SRI hash is not valid base64")]
    NotBase64,
    #[error("expected `ALGORITHM:HEX` (for example `sha256:…`)")]
    MissingAlgorithm,
}

impl Hash {
    pub fn from_bytes(algorithm: Algorithm, bytes: Vec<u8>) -> Self {
        assert_eq!(bytes.len(), algorithm.output_len(), "hasher output length");
        Hash { algorithm, bytes }
    }

    /// Parses a hash given as lowercase or uppercase hex, or as SRI (`sha256-<base64>`).
    pub fn parse_hex_or_sri(algorithm: Algorithm, text: &str) -> Result<Self, HashParseError> {
        let sri_prefix = format!("{}-", algorithm.name());
        if let Some(b64) = text.strip_prefix(&sri_prefix) {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| HashParseError::NotBase64)?;
            if bytes.len() != algorithm.output_len() {
                return Err(HashParseError::WrongLength {
                    algorithm: algorithm.name(),
                    expected: algorithm.output_len() * 2,
                    found: bytes.len() * 2,
                });
            }
            return Ok(Hash { algorithm, bytes });
        }
        if text.len() != algorithm.output_len() * 2 {
            return Err(HashParseError::WrongLength {
                algorithm: algorithm.name(),
                expected: algorithm.output_len() * 2,
                found: text.len(),
            });
        }
        let bytes = hex::decode(text).map_err(|_| HashParseError::NotHex(algorithm.name()))?;
        Ok(Hash { algorithm, bytes })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn hex(&self) -> String {
        hex::encode(&self.bytes)
    }

    pub fn sri(&self) -> String {
        format!("{}-{}", self.algorithm.name(), base64::engine::general_purpose::STANDARD.encode(&self.bytes))
    }

    /// The sha256 hash as an OCI digest; `None` for other algorithms.
    pub fn as_sha256(&self) -> Option<Sha256Digest> {
        (self.algorithm == Algorithm::Sha256)
            .then(|| Sha256Digest(self.bytes.clone().try_into().expect("length checked")))
    }
}

impl FromStr for Hash {
    type Err = HashParseError;
    /// `sha256:HEX`, `sha512:HEX` or SRI `sha256-B64`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some((algo, rest)) = s.split_once(':') {
            let algorithm =
                Algorithm::from_name(algo).ok_or_else(|| HashParseError::UnknownAlgorithm(algo.to_string()))?;
            return Hash::parse_hex_or_sri(algorithm, rest);
        }
        if let Some((algo, _)) = s.split_once('-') {
            if let Some(algorithm) = Algorithm::from_name(algo) {
                return Hash::parse_hex_or_sri(algorithm, s);
            }
        }
        Err(HashParseError::MissingAlgorithm)
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A sha256 digest, the only kind OCI blobs use here.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    pub fn of(data: &[u8]) -> Self {
        Sha256Digest(Sha256::digest(data).into())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn to_hash(self) -> Hash {
        Hash::from_bytes(Algorithm::Sha256, self.0.to_vec())
    }

    pub fn to_oci(self) -> oci_spec::image::Digest {
        oci_spec::image::Digest::from_str(&self.to_string()).expect("sha256 digest is valid")
    }

    pub fn from_oci(d: &oci_spec::image::Digest) -> Result<Self, HashParseError> {
        d.to_string().parse()
    }
}

impl FromStr for Sha256Digest {
    type Err = HashParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix("sha256:").ok_or(HashParseError::MissingAlgorithm)?;
        let h = Hash::parse_hex_or_sri(Algorithm::Sha256, rest)?;
        Ok(h.as_sha256().expect("sha256"))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Sha256Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Sha256Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// sha256 of a layer's uncompressed tar (the config's `rootfs.diff_ids`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct DiffId(pub Sha256Digest);

/// sha256 of a blob as stored and sent (compressed for layers).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct BlobDigest(pub Sha256Digest);

impl fmt::Display for DiffId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for BlobDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A running hash of either algorithm.
#[derive(Clone)]
pub(crate) enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub(crate) fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub(crate) fn finish(self) -> Hash {
        match self {
            Hasher::Sha256(h) => Hash::from_bytes(Algorithm::Sha256, h.finalize().to_vec()),
            Hasher::Sha512(h) => Hash::from_bytes(Algorithm::Sha512, h.finalize().to_vec()),
        }
    }
}

/// A writer that hashes and counts every byte it passes on.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), written: 0 }
    }

    pub(crate) fn finish(self) -> (W, Sha256Digest, u64) {
        (self.inner, Sha256Digest(self.hasher.finalize().into()), self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes a whole stream, returning the hash and the byte count.
pub fn hash_reader(algorithm: Algorithm, mut reader: impl Read) -> io::Result<(Hash, u64)> {
    let mut hasher = Hasher::new(algorithm);
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hasher.finish(), total))
}

/// Whether `name` is 64 lowercase hex digits: a sha256 blob's file name.
pub(crate) fn is_sha256_hex(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_sri_parse_to_the_same_hash() {
        let hex = "7f7f5414e044ac11fee2a1e0bc225469f51fb0cdf821e67df762a43098223f27";
        let a = Hash::parse_hex_or_sri(Algorithm::Sha256, hex).unwrap();
        let b = Hash::parse_hex_or_sri(Algorithm::Sha256, &a.sri()).unwrap();
        assert_eq!(a, b);
        assert_eq!(format!("sha256:{hex}").parse::<Hash>().unwrap(), a);
    }

    #[test]
    fn wrong_length_and_bad_hex_are_refused() {
        assert!(matches!(
            Hash::parse_hex_or_sri(Algorithm::Sha512, "abcd"),
            Err(HashParseError::WrongLength { expected: 128, found: 4, .. })
        ));
        let not_hex = "z".repeat(64);
        assert_eq!(Hash::parse_hex_or_sri(Algorithm::Sha256, &not_hex), Err(HashParseError::NotHex("sha256")));
    }
}
