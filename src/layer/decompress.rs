//! A source's compression, found by its first bytes (never by its name), and the stream that
//! undoes it on its own thread, so decompressing overlaps with hashing and compressing.
//!
//! A compressed source is members (gzip), streams (xz, bzip2) or frames (zstd) one after
//! another, as pigz, pixz and pzstd write them, each decoded by its own decoder, which checks
//! its integrity data (gzip's CRC-32 and length, xz's block checks, bzip2's block and stream
//! CRCs, zstd's content checksum) at its end; the caller reads the stream to its end so that
//! every one is checked. After the last one only zero bytes may follow: tape and `dd` pad files
//! with them, and they carry no data. Anything else is refused, naming the byte where it starts:
//! data no decoder reads would be data one tool unpacks and another does not.
//!
//! What a hostile file can make decoding cost is bounded: its output by the unpack limit, xz's
//! dictionary and zstd's window by [`DECODER_MEMORY_LIMIT`], and the decoders' setup (bzip2 allocates its 3.6 MB
//! block table for every stream, even an empty one) by [`MemberBudget`]: members beyond the
//! first few must each bring output to pay for their decoder, so time stays linear in the
//! bytes decoded.

mod source;
mod zstd;

use std::io::{self, BufRead, Read};

use source::Source;

/// How a source is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    Gzip,
    Xz,
    Bzip2,
    Zstd,
    /// A plain tar.
    None,
}

/// The most bytes [`Compression::starts`] looks at.
const MAGIC_MAX: usize = 10;

/// The most memory one member's decoder may need: an xz block's dictionary and buffers (`xz -9`
/// needs 65 MiB), a zstd frame's window (`zstd --ultra -22`: 128 MiB). The decoders check a
/// header against it before allocating anything.
pub(crate) const DECODER_MEMORY_LIMIT: u64 = 128 << 20;

/// Members (streams, frames) a source may hold whatever they decode to.
pub(crate) const FREE_MEMBERS: u64 = 1024;
/// Beyond [`FREE_MEMBERS`], one more member per this many bytes decoded. Writers' members are
/// larger: bgzip's hold up to 64 KiB, pbzip2's 100-900 kB, pzstd's and pixz's MiBs.
pub(crate) const BYTES_PER_MEMBER: u64 = 32 << 10;

/// How many members a source has started, against what it has decoded: every member costs a
/// decoder's setup, so many tiny ones would cost far more than their bytes.
#[derive(Debug, Default)]
pub(crate) struct MemberBudget {
    started: u64,
}

impl MemberBudget {
    /// Counts one more member, after `decoded` bytes of output; an error names the limit.
    pub(crate) fn start(&mut self, decoded: u64) -> Result<(), String> {
        let allowed = FREE_MEMBERS.saturating_add(decoded / BYTES_PER_MEMBER);
        if self.started >= allowed {
            return Err(format!(
                "more than {allowed} members after {decoded} bytes decoded: beyond the first {FREE_MEMBERS}, \
                 imgbuild allows one member per {} KiB decoded (each costs a decoder's setup)",
                BYTES_PER_MEMBER >> 10
            ));
        }
        self.started += 1;
        Ok(())
    }
}

/// What the bytes at a member boundary are.
#[derive(Debug, PartialEq, Eq)]
enum Start {
    Member,
    /// A zstd skippable frame: metadata that carries nothing of the file.
    Skippable,
    Other,
}

impl Compression {
    /// Recognizes a format by its magic bytes (a zstd file may begin with a skippable frame).
    pub(crate) fn detect(head: &[u8]) -> Compression {
        [Compression::Gzip, Compression::Xz, Compression::Zstd, Compression::Bzip2]
            .into_iter()
            .find(|c| c.starts(head) != Start::Other)
            .unwrap_or(Compression::None)
    }

    /// Whether `head` (up to [`MAGIC_MAX`] bytes) begins one of this format's members. bzip2's
    /// `BZh` could begin a tar member's name, so it counts only with a valid block size and the
    /// block (or end-of-stream) magic after it.
    fn starts(self, head: &[u8]) -> Start {
        const BZIP2_BLOCK: [u8; 6] = [0x31, 0x41, 0x59, 0x26, 0x53, 0x59];
        const BZIP2_END: [u8; 6] = [0x17, 0x72, 0x45, 0x38, 0x50, 0x90];
        let member = match self {
            Compression::Gzip => head.starts_with(&[0x1f, 0x8b]),
            Compression::Xz => head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]),
            Compression::Zstd if zstd::is_skippable(head) => return Start::Skippable,
            Compression::Zstd => head.starts_with(&zstd::FRAME_MAGIC),
            Compression::Bzip2 => {
                head.len() >= 10
                    && head.starts_with(b"BZh")
                    && (b'1'..=b'9').contains(&head[3])
                    && (head[4..10] == BZIP2_BLOCK || head[4..10] == BZIP2_END)
            }
            Compression::None => false,
        };
        if member {
            Start::Member
        } else {
            Start::Other
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Bzip2 => "bzip2",
            Compression::Zstd => "zstd",
            Compression::None => "tar",
        }
    }

    /// What the format calls the parts a file may hold several of.
    fn unit(self) -> &'static str {
        match self {
            Compression::Gzip => "member",
            Compression::Zstd => "frame",
            _ => "stream",
        }
    }

    /// The decompressed stream, decoded on a background thread and bounded to `limit` bytes;
    /// a plain tar is read as it is (its size is its file's).
    pub(crate) fn reader(self, input: impl BufRead + Send + 'static, limit: u64) -> Box<dyn Read> {
        if self == Compression::None {
            return Box::new(input);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
        std::thread::spawn(move || {
            let mut out = Output { tx, total: 0, limit, spare: Vec::new() };
            if let Err(Stop::Fail(e)) = decode_all(self, &mut Source::new(input), &mut out) {
                let _ = out.tx.send(Err(e));
            }
        });
        Box::new(ChannelReader::new(rx))
    }
}

/// A failure of the compressed file itself, not of the tar inside it: its message says what
/// and where, in words meant for the user.
#[derive(Debug)]
pub(crate) struct SourceFailure(String);

impl std::fmt::Display for SourceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SourceFailure {}

impl SourceFailure {
    /// Whether `e` is one: then its text is the whole explanation.
    pub(crate) fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<SourceFailure>())
    }
}

fn failure(kind: io::ErrorKind, message: String) -> Stop {
    Stop::Fail(io::Error::new(kind, SourceFailure(message)))
}

/// Why decoding stopped early.
enum Stop {
    /// The reader is gone (the layer failed for another reason): stop quietly.
    Hangup,
    /// Passed on to the reader.
    Fail(io::Error),
}

/// Where the decoded bytes go: a few 256 KiB buffers in flight at most; past `limit` bytes in
/// all, a failure (a decompression bomb).
struct Output {
    tx: std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>,
    total: u64,
    limit: u64,
    /// A buffer not sent yet, kept for the next read (an empty member sends nothing).
    spare: Vec<u8>,
}

impl Output {
    /// Sends everything `decoder` gives; its own error is returned to be explained.
    fn pump(&mut self, mut decoder: impl Read) -> Result<Result<(), io::Error>, Stop> {
        loop {
            let mut buf = std::mem::take(&mut self.spare);
            buf.resize(256 * 1024, 0);
            let n = match decoder.read(&mut buf) {
                Ok(0) => {
                    self.spare = buf;
                    return Ok(Ok(()));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.spare = buf;
                    continue;
                }
                Err(e) => return Ok(Err(e)),
            };
            if self.total + n as u64 > self.limit {
                return Err(failure(io::ErrorKind::FileTooLarge, past_unpack_limit(self.limit)));
            }
            self.total += n as u64;
            buf.truncate(n);
            self.tx.send(Ok(buf)).map_err(|_| Stop::Hangup)?;
        }
    }
}

/// What a stream that unpacks past `limit` bytes is told.
pub(crate) fn past_unpack_limit(limit: u64) -> String {
    format!("unpacks to more than {limit} bytes (IMGBUILD_MAX_UNPACKED): a decompression bomb, or set it higher")
}

/// Decodes every member of `source`, then checks that only zero bytes follow the last.
fn decode_all<R: Read>(format: Compression, source: &mut Source<R>, out: &mut Output) -> Result<(), Stop> {
    let (name, unit) = (format.name(), format.unit());
    // Where the zero bytes after the last member start, and how many there are.
    let mut padding: Option<(u64, u64)> = None;
    let mut budget = MemberBudget::default();
    loop {
        let at = source.offset();
        let start = match source.peek(MAGIC_MAX) {
            Ok([]) => return Ok(()),
            Ok([0, ..]) => {
                // All of them: what follows is not a zero byte.
                padding = Some((at, source.skip_zeros().map_err(|e| unreadable(format, e))?));
                continue;
            }
            Ok(head) => format.starts(head),
            Err(e) => return Err(unreadable(format, e)),
        };
        if let Some((from, zeros)) = padding {
            // xz alone defines padding between streams: a multiple of four zero bytes.
            let xz_padding = format == Compression::Xz && start == Start::Member;
            if !xz_padding || zeros % 4 != 0 {
                let what = if xz_padding { "stream padding that is not a multiple of 4 bytes" } else { "zero bytes" };
                return Err(failure(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{name} data: unknown data at byte {at}, after {zeros} {what} from byte {from}: \
                         after the last complete {unit}, only zero bytes (padding) may follow"
                    ),
                ));
            }
            padding = None;
        }
        if start != Start::Other {
            budget
                .start(out.total)
                .map_err(|why| failure(io::ErrorKind::InvalidData, format!("{name} data: at byte {at}: {why}")))?;
        }
        match start {
            Start::Member => decode_member(format, source, out, at)?,
            Start::Skippable => match zstd::skip_skippable(source) {
                Ok(true) => {}
                Ok(false) => return Err(cut_short(format, "skippable frame", at, source)),
                Err(e) => return Err(unreadable(format, e)),
            },
            Start::Other => {
                return Err(failure(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{name} data: unknown data at byte {at}, after the last complete {unit}: \
                         only zero bytes (padding) may follow it"
                    ),
                ))
            }
        }
    }
}

/// Decodes the member at byte `at`, which its own decoder reads to its last byte and no further.
fn decode_member<R: Read>(format: Compression, source: &mut Source<R>, out: &mut Output, at: u64) -> Result<(), Stop> {
    let decoded = match format {
        Compression::Gzip => out.pump(flate2::bufread::GzDecoder::new(&mut *source)),
        Compression::Xz => out.pump(lzma_rust2::XzReader::new_mem_limit(&mut *source, false, xz_limit_kib())),
        Compression::Bzip2 => out.pump(bzip2::bufread::BzDecoder::new(&mut *source)),
        Compression::Zstd => out.pump(zstd::ZstdFrame::new(&mut *source)),
        Compression::None => unreachable!("a plain tar has no members"),
    }?;
    let Err(e) = decoded else { return Ok(()) };
    if source.failed {
        return Err(unreadable(format, e));
    }
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return Err(cut_short(format, format.unit(), at, source));
    }
    if format == Compression::Xz && e.kind() == io::ErrorKind::OutOfMemory {
        return Err(failure(
            e.kind(),
            format!(
                "xz data: a block of the stream that starts at byte {at} declares a dictionary that needs more \
                 than imgbuild's decoder memory limit of {} MiB to decode (xz -9 needs 65 MiB)",
                DECODER_MEMORY_LIMIT >> 20
            ),
        ));
    }
    let (name, unit) = (format.name(), format.unit());
    let reason = crate::error::escape(&e.to_string());
    Err(failure(e.kind(), format!("{name} data: {reason} (in the {unit} that starts at byte {at}, which is corrupt)")))
}

fn xz_limit_kib() -> u32 {
    u32::try_from(DECODER_MEMORY_LIMIT >> 10).expect("a limit in KiB that fits")
}

/// The decoder met the end of the file inside the member: it was cut short, or corrupt data
/// led the decoder past the member's real end.
fn cut_short<R: Read>(format: Compression, what: &str, at: u64, source: &mut Source<R>) -> Stop {
    // Past what is left, so that the offset is the file's size.
    let _ = io::copy(source, &mut io::sink());
    let end = source.offset();
    failure(
        io::ErrorKind::UnexpectedEof,
        format!(
            "{} data: the {what} that starts at byte {at} is cut short or corrupt: the file ends at byte {end}, before it does",
            format.name()
        ),
    )
}

/// The file could not be read (not: its bytes are wrong): its own error, named.
fn unreadable(format: Compression, e: io::Error) -> Stop {
    failure(e.kind(), format!("{} data: {}", format.name(), crate::error::escape(&e.to_string())))
}

/// The pieces a channel brings, read as one stream (an error piece is the stream's error).
pub(crate) struct ChannelReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
}

impl ChannelReader {
    pub(crate) fn new(rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>) -> ChannelReader {
        ChannelReader { rx, current: Vec::new(), pos: 0 }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.recv() {
                Ok(Ok(next)) => {
                    self.current = next;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0), // the source ended
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_apart_by_content() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(Compression::detect(b"\xfd7zXZ\0\0\x04"), Compression::Xz);
        assert_eq!(Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0x24]), Compression::Zstd);
        assert_eq!(Compression::detect(b"BZh91AY&SY\0\0"), Compression::Bzip2);
        // A tar whose first member is named `BZh…` is still a tar.
        assert_eq!(Compression::detect(b"BZh9-notes.txt\0\0\0\0"), Compression::None);
        assert_eq!(Compression::detect(b""), Compression::None);
    }

    fn decode(format: Compression, data: Vec<u8>) -> io::Result<u64> {
        io::copy(&mut format.reader(io::Cursor::new(data), 1 << 40), &mut io::sink())
    }

    fn member(format: Compression, data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        match format {
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Bzip2 => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => ::zstd::encode_all(data, 1).unwrap(),
            Compression::Xz => {
                // lzma-rust2's encoder is not built in; xz is a test tool of the project.
                let mut xz = std::process::Command::new("xz")
                    .args(["-c", "-0"])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .expect("xz");
                xz.stdin.take().unwrap().write_all(data).unwrap();
                let out = xz.wait_with_output().unwrap();
                assert!(out.status.success());
                out.stdout
            }
            Compression::None => data.to_vec(),
        }
    }

    /// Issue 25: 200k empty bzip2 streams (2.8 MB) took 11 s, each paying a decoder's setup.
    /// In every format, many members that decode to nothing are refused at the limit, by count.
    #[test]
    fn members_that_bring_no_output_are_refused_at_the_member_limit() {
        for format in [Compression::Bzip2, Compression::Gzip, Compression::Xz, Compression::Zstd] {
            let one = member(format, b"");
            let count = if format == Compression::Bzip2 { 200_000 } else { 5_000 };
            let err = decode(format, one.repeat(count)).unwrap_err().to_string();
            let at = one.len() as u64 * FREE_MEMBERS;
            assert!(
                err.contains(&format!("at byte {at}: more than {FREE_MEMBERS} members after 0 bytes decoded"))
                    && err.contains("one member per 32 KiB decoded"),
                "{format:?}: {err}"
            );
            // Up to the limit, they are a valid (empty) file.
            assert_eq!(decode(format, one.repeat(FREE_MEMBERS as usize)).unwrap(), 0, "{format:?}");
        }
    }

    #[test]
    fn members_of_32_kib_each_are_never_too_many() {
        let data = vec![7u8; BYTES_PER_MEMBER as usize];
        for format in [Compression::Bzip2, Compression::Gzip, Compression::Zstd] {
            let n = FREE_MEMBERS as usize + 200;
            let total = decode(format, member(format, &data).repeat(n)).unwrap();
            assert_eq!(total, (n * data.len()) as u64, "{format:?}");
        }
    }

    /// An xz stream header, then a block header with one LZMA2 filter whose dictionary
    /// property is `dict` (40: 4 GiB), then `rest`.
    fn xz_declaring(dict: u8, rest: &[u8]) -> Vec<u8> {
        let flags = [0u8, 1]; // CRC32 checks
        let mut out = [&[0xfd, b'7', b'z', b'X', b'Z', 0][..], &flags].concat();
        out.extend(crc32fast::hash(&flags).to_le_bytes());
        let header = [2u8, 0, 0x21, 1, dict, 0, 0, 0];
        out.extend(header);
        out.extend(crc32fast::hash(&header).to_le_bytes());
        out.extend(rest);
        out
    }

    /// Issue 25: a `.tar.xz` declaring a 4 GiB dictionary took 2.1 GB of memory. The decoder
    /// refuses its block header before allocating, and says which limit.
    #[test]
    fn an_xz_dictionary_past_the_memory_limit_is_refused_before_allocating() {
        for dict in [40u8, 30] {
            // 4 GiB, 128 MiB: with the decoder's buffers, past the limit.
            let err = decode(Compression::Xz, xz_declaring(dict, &[0; 64])).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::OutOfMemory, "{err}");
            let err = err.to_string();
            assert!(
                err.contains("stream that starts at byte 0") && err.contains("decoder memory limit of 128 MiB"),
                "{err}"
            );
        }
        // 64 MiB (`xz -9`): within the limit, so what is refused is the data, not the dictionary.
        let err = decode(Compression::Xz, xz_declaring(28, &[0; 64])).unwrap_err();
        assert_ne!(err.kind(), io::ErrorKind::OutOfMemory, "{err}");
    }

    /// A zstd frame whose header declares a 2 GiB window is refused before its buffer is
    /// allocated, naming the limit; one of 128 MiB is within it.
    #[test]
    fn a_zstd_window_past_the_memory_limit_is_refused_before_allocating() {
        // Magic, a descriptor with no content size or checksum, then the window: 1 << (10 + exponent).
        let frame = |exponent: u8| [&zstd::FRAME_MAGIC[..], &[0, exponent << 3], &[0; 64]].concat();
        let err = decode(Compression::Zstd, frame(21)).unwrap_err().to_string();
        assert!(
            err.contains("it needs a window of 2147483648 bytes, more than imgbuild's decoder memory limit of 128 MiB"),
            "{err}"
        );
        let err = decode(Compression::Zstd, frame(17)).unwrap_err().to_string();
        assert!(!err.contains("memory limit"), "{err}");
    }

    proptest::proptest! {
        /// Whatever the members decode to, the decoders set up never exceed the first
        /// FREE_MEMBERS plus one per BYTES_PER_MEMBER decoded; and members that each bring
        /// BYTES_PER_MEMBER are never refused.
        #[test]
        fn decoder_setups_stay_linear_in_the_output(sizes in proptest::collection::vec(0u64..200_000, 0..3000)) {
            let mut budget = MemberBudget::default();
            let (mut decoded, mut started) = (0u64, 0u64);
            for size in &sizes {
                if budget.start(decoded).is_err() {
                    break;
                }
                started += 1;
                decoded += size;
            }
            proptest::prop_assert!(started <= FREE_MEMBERS + decoded / BYTES_PER_MEMBER + 1);
            let mut fair = MemberBudget::default();
            for n in 0..sizes.len() as u64 {
                proptest::prop_assert!(fair.start(n * BYTES_PER_MEMBER).is_ok());
            }
        }
    }
}
