//! Tar headers read as hostile input, before the `tar` crate interprets them.
//!
//! The `tar` crate reads a GNU long name (`L`, `K`) or a pax header (`x`) wholly into memory
//! whatever its size, reads pax records its own way (split on newlines, malformed ones skipped)
//! and takes pax sparse files as plain files. [`TarGuard`] sits between the decompressed stream
//! and `tar::Archive`: it parses every 512-byte header itself, bounds extension data before
//! anyone buffers it, parses pax records as POSIX says, and refuses what the normalizer would
//! read otherwise than GNU tar. Whatever it accepts passes through byte for byte, streaming:
//! at most one member's extension headers (a few KiB, at most ~1 MiB) are held at a time.

use std::fmt;
use std::io::{self, Read};

use crate::error::{escape, Error};

const BLOCK: usize = 512;

/// A GNU long name or link names one path: Linux opens none longer (PATH_MAX, with its NUL).
const MAX_LONG_NAME: u64 = 4096;

/// A pax header holds a path, a link target, times and extended attributes: real ones are a
/// few KiB (Linux caps one xattr value at 64 KiB). 1 MiB leaves room for several large xattrs
/// and bounds what one header can make anyone buffer.
const MAX_PAX: u64 = 1 << 20;

/// Most bytes of a name shown in a message.
const SHOWN_NAME: usize = 64;

/// A tar stream refused by the guard: the member (a short prefix of its name) when there is
/// one, and why (its input text already escaped).
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    entry: Option<String>,
    reason: String,
}

impl Refusal {
    /// The error for `archive`: an unsafe entry when a member is named, else a bad archive.
    pub(crate) fn to_error(&self, archive: &str) -> Error {
        let (archive, reason) = (archive.to_string(), self.reason.clone());
        match &self.entry {
            Some(entry) => Error::UnsafeEntry { archive, entry: entry.clone(), reason },
            None => Error::BadArchive { archive, message: reason },
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.entry {
            Some(entry) => write!(f, "entry `{}`: {}", escape(entry), self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for Refusal {}

fn refuse(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Refusal { entry: None, reason: reason.into() })
}

/// Refuses the member named `name` (only a short prefix of it is kept).
fn refuse_entry(name: &[u8], reason: impl Into<String>) -> io::Error {
    let entry = Some(short(name));
    io::Error::new(io::ErrorKind::InvalidData, Refusal { entry, reason: reason.into() })
}

/// The guard's refusal inside an I/O error from the tar reader, if it is one.
pub(crate) fn refusal(e: &io::Error) -> Option<&Refusal> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<Refusal>())
}

/// What a tar stream's header block says the guard must do next.
pub(crate) struct TarGuard<R> {
    inner: R,
    /// Checked bytes not yet read: one member's extension headers, their data and its header.
    ready: Vec<u8>,
    offset: usize,
    /// The current member's data and padding, passed through as it comes.
    data_left: u64,
    /// Past the end-of-archive block, or a block cut short: the rest passes unchanged (the tar
    /// reader stops there, or reports the truncation itself).
    passthrough: bool,
    /// A refusal is final: every later read repeats it.
    refused: Option<Refusal>,
    /// Old-GNU sparse members (`S`) pass: the tar reader expands them as GNU tar does (image
    /// layers made elsewhere may hold them; a recipe's source may not).
    gnu_sparse: bool,
}

/// The extension headers read so far for the next member.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && self.pax.is_none()
    }

    fn pax_value(&self, key: &[u8]) -> Option<&[u8]> {
        let records = self.pax.as_deref()?;
        records.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_slice())
    }
}

impl<R: Read> TarGuard<R> {
    pub(crate) fn new(inner: R) -> Self {
        TarGuard {
            inner,
            ready: Vec::new(),
            offset: 0,
            data_left: 0,
            passthrough: false,
            refused: None,
            gnu_sparse: false,
        }
    }

    /// The same guard for layers of images made elsewhere: old-GNU sparse members pass.
    pub(crate) fn for_image_layer(inner: R) -> Self {
        TarGuard { gnu_sparse: true, ..TarGuard::new(inner) }
    }

    /// The stream under the guard, for what follows the tar (bytes the guard read ahead are
    /// not in it).
    pub(crate) fn into_inner(self) -> R {
        self.inner
    }

    /// Reads the next member's headers (and extension data) into `ready`, checked.
    fn next_member(&mut self) -> io::Result<()> {
        self.ready.clear();
        self.offset = 0;
        let mut pending = Pending::default();
        loop {
            let start = self.ready.len();
            let got = self.fill(BLOCK)?;
            if got < BLOCK || self.ready[start..].iter().all(|b| *b == 0) {
                if !pending.is_empty() && (got == 0 || got == BLOCK) {
                    return Err(refuse("extension headers (long name or pax) with no member after them"));
                }
                self.passthrough = true; // the end, or a cut block the tar reader reports
                return Ok(());
            }
            let header: [u8; BLOCK] = self.ready[start..].try_into().expect("one block");
            let size = checked_header(&header)?;
            let magic = is_ustar_or_gnu(&header);
            match header[156] {
                kind @ (b'L' | b'K') if magic => {
                    let name = self.extension_data(kind, size, MAX_LONG_NAME)?;
                    long_name(kind, name, &mut pending)?;
                }
                b'x' if magic => {
                    let data = self.extension_data(b'x', size, MAX_PAX)?;
                    if pending.pax.is_some() {
                        return Err(refuse("two pax headers (`x`) for one member"));
                    }
                    pending.pax = Some(pax_records(&data)?);
                }
                kind @ (b'L' | b'K' | b'x') => {
                    return Err(refuse(format!(
                        "an extension header (`{}`) without the ustar magic, which GNU tar applies and imgbuild's tar reader would not",
                        kind as char
                    )))
                }
                b'g' => {
                    if !pending.is_empty() {
                        return Err(refuse("a global pax header (`g`) between a member's extension headers and the member"));
                    }
                    let data = self.extension_data(b'g', size, MAX_PAX)?;
                    return global_records(&pax_records(&data)?);
                }
                b'S' if !self.gnu_sparse => {
                    return Err(refuse_entry(&member_name(&header, &pending), "sparse files are not supported"))
                }
                _ => {
                    member_agrees(&header, size, &pending)?;
                    self.data_left = padded(size)?;
                    return Ok(());
                }
            }
        }
    }

    /// Reads an extension header's data (with its padding) into `ready`, refusing it unread
    /// when it is longer than `max`; the data without padding.
    fn extension_data(&mut self, kind: u8, size: u64, max: u64) -> io::Result<Vec<u8>> {
        if size > max {
            return Err(refuse(format!(
                "{} header of {size} bytes, more than the {max} imgbuild reads",
                describe_extension(kind)
            )));
        }
        let start = self.ready.len();
        let want = padded(size)? as usize;
        if self.fill(want)? < want {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the archive ends inside an extension header"));
        }
        Ok(self.ready[start..start + size as usize].to_vec())
    }

    /// Appends up to `n` bytes of the input to `ready`; how many came (fewer only at its end).
    fn fill(&mut self, n: usize) -> io::Result<usize> {
        let start = self.ready.len();
        self.ready.resize(start + n, 0);
        let mut got = 0;
        while got < n {
            match self.inner.read(&mut self.ready[start + got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.ready.truncate(start + got);
                    return Err(e);
                }
            }
        }
        self.ready.truncate(start + got);
        Ok(got)
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(refusal) = &self.refused {
            return Err(io::Error::new(io::ErrorKind::InvalidData, refusal.clone()));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.offset < self.ready.len() {
                let n = buf.len().min(self.ready.len() - self.offset);
                buf[..n].copy_from_slice(&self.ready[self.offset..self.offset + n]);
                self.offset += n;
                return Ok(n);
            }
            if self.passthrough {
                return self.inner.read(buf);
            }
            if self.data_left > 0 {
                let n = buf.len().min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
                let got = self.inner.read(&mut buf[..n])?;
                self.data_left -= got as u64;
                return Ok(got); // 0: cut short, which the tar reader reports
            }
            if let Err(e) = self.next_member() {
                if let Some(r) = refusal(&e) {
                    self.refused = Some(r.clone());
                }
                return Err(e);
            }
        }
    }
}

/// A header's size, once its checksum and size field are checked.
fn checked_header(header: &[u8; BLOCK]) -> io::Result<u64> {
    let sum: u64 = header.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { *b as u64 }).sum();
    if octal(&header[148..156]) != Some(sum) {
        let name = shown(&header_name(header));
        return Err(refuse(format!("corrupt tar stream: the header of entry `{name}` does not match its checksum")));
    }
    size_field(&header[124..136]).ok_or_else(|| {
        refuse_entry(&header_name(header), "a size field that is neither octal nor a 64-bit base-256 size")
    })
}

/// An octal field as the tar reader reads it, strictly: digits between spaces, up to a NUL.
fn octal(field: &[u8]) -> Option<u64> {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    let text = std::str::from_utf8(&field[..end]).ok()?.trim_matches(|c: char| c.is_ascii_whitespace());
    if text.is_empty() || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u64::from_str_radix(text, 8).ok()
}

/// The size field: octal, or GNU base-256 (high bit set) when it fits in 64 bits and is not
/// negative, the only values the tar reader and GNU tar read alike.
fn size_field(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 == 0 {
        return octal(field);
    }
    let (high, low) = field.split_at(field.len() - 8);
    if high[0] & 0x7f != 0 || high[1..].iter().any(|b| *b != 0) {
        return None;
    }
    Some(low.iter().fold(0u64, |n, b| n << 8 | *b as u64))
}

/// The member's data with its padding to whole blocks.
fn padded(size: u64) -> io::Result<u64> {
    size.checked_add(BLOCK as u64 - 1)
        .map(|s| s & !(BLOCK as u64 - 1))
        .ok_or_else(|| refuse(format!("a size of {size} bytes, out of range")))
}

fn is_ustar_or_gnu(header: &[u8; BLOCK]) -> bool {
    let (magic, version) = (&header[257..263], &header[263..265]);
    (magic == b"ustar\0" && version == b"00") || (magic == b"ustar " && version == b" \0")
}

fn describe_extension(kind: u8) -> &'static str {
    match kind {
        b'L' => "a GNU long name (`L`)",
        b'K' => "a GNU long link name (`K`)",
        b'x' => "a pax (`x`)",
        _ => "a global pax (`g`)",
    }
}

/// Takes a GNU long name or link: once per member, NUL only as its last byte (GNU tar ends the
/// name at the first NUL, the tar reader only drops the last).
fn long_name(kind: u8, mut name: Vec<u8>, pending: &mut Pending) -> io::Result<()> {
    if name.last() == Some(&0) {
        name.pop();
    }
    if name.contains(&0) {
        return Err(refuse(format!("{} header holding a NUL byte (`{}`)", describe_extension(kind), shown(&name))));
    }
    let slot = if kind == b'L' { &mut pending.long_name } else { &mut pending.long_link };
    if slot.is_some() {
        return Err(refuse(format!("two {} headers for one member", describe_extension(kind))));
    }
    *slot = Some(name);
    Ok(())
}

/// A pax header's records, parsed as POSIX says: `LEN KEY=VALUE\n`, LEN counting the whole
/// record, the records filling the data exactly. Refuses a record that does not parse, a value
/// holding a newline (the tar reader splits records on newlines, so a value could carry a
/// record of its own) and a key given twice (GNU tar takes the last, the tar reader the first).
fn pax_records(data: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    // Keys seen so far: a set, so that a header of many records is read in n log n.
    let mut seen: std::collections::BTreeSet<&[u8]> = std::collections::BTreeSet::new();
    let mut rest = data;
    while !rest.is_empty() {
        let at = data.len() - rest.len();
        let bad = |why: &str| refuse(format!("a pax header whose record at byte {at} {why}"));
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let len: usize = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| bad("does not start with its length"))?;
        if rest.get(digits) != Some(&b' ') {
            return Err(bad("has no space after its length"));
        }
        if len < digits + 2 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad("has a length that does not end it at a newline"));
        }
        let body = &rest[digits + 1..len - 1];
        let eq = body.iter().position(|b| *b == b'=').filter(|i| *i > 0).ok_or_else(|| bad("has no `KEY=`"))?;
        let (key, value) = (&body[..eq], &body[eq + 1..]);
        if value.contains(&b'\n') {
            return Err(bad(&format!("`{}` has a value holding a newline", shown(key))));
        }
        // GNU sparse 0.0 repeats its offset and size keys: refused below as a sparse file.
        if !is_sparse_key(key) && !seen.insert(key) {
            return Err(bad(&format!("gives `{}` a second time", shown(key))));
        }
        records.push((key.to_vec(), value.to_vec()));
        rest = &rest[len..];
    }
    Ok(records)
}

/// A global header may not set what each member has for itself: the tar reader ignores it,
/// GNU tar applies it to every member after it.
fn global_records(records: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
    for (key, _) in records {
        if is_sparse_key(key) {
            return Err(refuse("a global pax header (`g`) with `GNU.sparse` keys: sparse files are not supported"));
        }
        if [&b"path"[..], b"linkpath", b"size"].contains(&key.as_slice()) {
            return Err(refuse(format!(
                "a global pax header (`g`) that sets `{}` for every member, which imgbuild's tar reader would ignore",
                shown(key)
            )));
        }
    }
    Ok(())
}

fn is_sparse_key(key: &[u8]) -> bool {
    key.starts_with(b"GNU.sparse.")
}

/// Checks a member against its extension headers: both readers must see the same name, link
/// and size, and the member must not be a pax sparse file.
fn member_agrees(header: &[u8; BLOCK], size: u64, pending: &Pending) -> io::Result<()> {
    let name = member_name(header, pending);
    // GNU tar, Go's and Python's readers give these types no data whatever their size field
    // says; the tar crate skips that many bytes: with a size, the two would read different
    // members from here on.
    if size > 0 && HEADER_ONLY.contains(&header[156]) {
        let kind = header[156] as char;
        return Err(refuse_entry(
            &name,
            format!(
                "a `{kind}` entry (no data) whose header gives it {size} bytes, which tar readers read differently"
            ),
        ));
    }
    let records = pending.pax.as_deref().unwrap_or_default();
    for (key, value) in records {
        if let Some(why) = numeric_problem(key, value) {
            return Err(refuse_entry(&name, format!("pax `{}={}`: {why}", shown(key), shown(value))));
        }
    }
    if records.iter().any(|(k, _)| is_sparse_key(k)) {
        return Err(refuse_entry(&name, "sparse files are not supported (pax `GNU.sparse` keys)"));
    }
    if let Some(value) = pending.pax_value(b"size") {
        let pax_size = std::str::from_utf8(value).ok().filter(|v| v.bytes().all(|b| b.is_ascii_digit()));
        let Some(pax_size) = pax_size.and_then(|v| v.parse::<u64>().ok()) else {
            return Err(refuse_entry(&name, format!("pax `size={}` is out of range", shown(value))));
        };
        if pax_size != size {
            return Err(refuse_entry(&name, format!("pax `size={pax_size}` where its header says {size} bytes")));
        }
    }
    for (key, long, what) in [(&b"path"[..], &pending.long_name, "name"), (b"linkpath", &pending.long_link, "link")] {
        let Some(value) = pending.pax_value(key) else { continue };
        let key = shown(key);
        if value.len() as u64 >= MAX_LONG_NAME {
            let reason = format!("pax `{key}` of {} bytes, more than a path may have ({MAX_LONG_NAME})", value.len());
            return Err(refuse_entry(&name, reason));
        }
        if value.contains(&0) {
            return Err(refuse_entry(&name, format!("pax `{key}` holding a NUL byte")));
        }
        if long.is_some() {
            let reason =
                format!("both a GNU long {what} and a pax `{key}`, which tar readers choose between differently");
            return Err(refuse_entry(&name, reason));
        }
    }
    Ok(())
}

/// Entry types that carry no data: hard link, symlink, character and block device, directory,
/// FIFO.
const HEADER_ONLY: [u8; 6] = [b'1', b'2', b'3', b'4', b'5', b'6'];

/// Why a pax record with a numeric meaning does not hold a number GNU tar accepts: ids are
/// decimal integers, times decimal seconds with an optional fraction (`-` allowed before a
/// time, as before 1970).
fn numeric_problem(key: &[u8], value: &[u8]) -> Option<&'static str> {
    let digits = |v: &[u8]| !v.is_empty() && v.iter().all(u8::is_ascii_digit);
    match key {
        b"uid" | b"gid" if !digits(value) || std::str::from_utf8(value).ok()?.parse::<u64>().is_err() => {
            Some("not a decimal id")
        }
        b"mtime" | b"atime" | b"ctime" => {
            let unsigned = value.strip_prefix(b"-").unwrap_or(value);
            let mut parts = unsigned.splitn(2, |b| *b == b'.');
            let whole = parts.next().unwrap_or_default();
            let ok = digits(whole) && whole.len() <= 20 && parts.next().is_none_or(digits);
            (!ok).then_some("not a time in decimal seconds")
        }
        _ => None,
    }
}

/// The member's name as the tar reader reads it: the long name, the pax path or the header's.
fn member_name(header: &[u8; BLOCK], pending: &Pending) -> Vec<u8> {
    match (&pending.long_name, pending.pax_value(b"path")) {
        (Some(name), _) => name.clone(),
        (None, Some(path)) => path.to_vec(),
        (None, None) => header_name(header),
    }
}

/// The header's own name: the ustar prefix (when there is one) and name fields.
fn header_name(header: &[u8; BLOCK]) -> Vec<u8> {
    let field = |f: &[u8]| f[..f.iter().position(|b| *b == 0).unwrap_or(f.len())].to_vec();
    let name = field(&header[..100]);
    match header[257..263] == *b"ustar\0" {
        true if header[345] != 0 => [field(&header[345..500]), b"/".to_vec(), name].concat(),
        _ => name,
    }
}

/// A short prefix of input bytes, as text.
fn short(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(SHOWN_NAME)];
    let more = if cut.len() < bytes.len() { "…" } else { "" };
    format!("{}{more}", String::from_utf8_lossy(cut))
}

/// A short prefix of input bytes, escaped for a message.
fn shown(bytes: &[u8]) -> String {
    escape(&short(bytes))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ustar header block of `kind` for `name`, saying `size` bytes of data follow.
    pub(crate) fn header(name: &str, kind: u8, size: u64) -> Vec<u8> {
        let mut h = crate::layer::fixed_header(tar::Header::new_ustar(), tar::EntryType::new(kind), 0o644, 0, size);
        h.set_path(name).unwrap();
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn padded(mut data: Vec<u8>) -> Vec<u8> {
        data.resize(data.len().div_ceil(BLOCK) * BLOCK, 0);
        data
    }

    /// What the guard says of `archive` (a tar with its end blocks added): `Ok` when it passes
    /// every byte through unchanged, else the refusal's text.
    fn verdict(archive: Vec<u8>) -> Result<(), String> {
        let tar = [archive, vec![0; 2 * BLOCK]].concat();
        let mut out = Vec::new();
        TarGuard::new(&tar[..]).read_to_end(&mut out).map_err(|e| e.to_string())?;
        assert_eq!(out, tar, "passed through unchanged");
        Ok(())
    }

    /// An entry type that carries no data, given a size: GNU tar reads no data for it, the
    /// tar crate skips that many bytes, so the two would list other members after it.
    #[test]
    fn a_header_only_entry_with_a_size_is_refused_whatever_its_type() {
        let hidden = padded([header("evil", b'0', 2), b"#!".to_vec()].concat());
        for kind in HEADER_ONLY {
            let archive = [header("d/", kind, hidden.len() as u64), hidden.clone()].concat();
            let e = verdict(archive).unwrap_err();
            assert!(e.contains(&format!("a `{}` entry (no data) whose header gives it", kind as char)), "{e}");
            assert!(verdict(header("d/", kind, 0)).is_ok(), "{}", kind as char);
        }
    }

    /// `KEY=VALUE` as a pax record, with its length.
    fn record(kv: &str) -> String {
        let len = (1..).map(|digits| digits + 2 + kv.len()).find(|len| len.to_string().len() + 2 + kv.len() == *len);
        format!("{} {kv}\n", len.unwrap())
    }

    #[test]
    fn numeric_pax_records_must_be_numbers_gnu_tar_reads() {
        let pax = |kv: &str| {
            let record = record(kv);
            let file = padded(header("f", b'0', 0));
            padded([header("pax", b'x', record.len() as u64), record.as_bytes().to_vec()].concat())
                .into_iter()
                .chain(file)
                .collect::<Vec<u8>>()
        };
        for good in ["mtime=1.5", "mtime=-3", "uid=0", "gid=4294967"] {
            assert!(verdict(pax(good)).is_ok(), "{good:?}");
        }
        for bad in ["mtime=nan", "uid=-1", "atime=1.", "gid=0x1", "ctime=1e9"] {
            assert!(verdict(pax(bad)).is_err(), "{bad:?}");
        }
    }

    /// A pax header of many records is read in n log n (a duplicate is still found).
    #[test]
    fn many_pax_records_are_read_once_each() {
        let records: String = (0..60_000).map(|i| record(&format!("k{i:05}=v"))).collect();
        assert_eq!(pax_records(records.as_bytes()).unwrap().len(), 60_000);
        let twice = format!("{records}{}", record("k00007=v"));
        assert!(pax_records(twice.as_bytes()).unwrap_err().to_string().contains("a second time"));
    }
}
