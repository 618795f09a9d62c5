//! What comes after the end of a source's data (issue #11): several members, frames or streams
//! are one file; after the last only zero bytes may follow; anything else is refused, naming
//! the byte where it starts. A tar cut short names the entry or header it ends in. And no
//! layer puts anything at imgbuild's own paths.

use std::io::Write;

use proptest::prelude::*;

use super::*;

/// The formats a source comes in; `Tar` is a plain tar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Gzip,
    Xz,
    Bzip2,
    Zstd,
    Tar,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Gzip => "gzip",
            Format::Xz => "xz",
            Format::Bzip2 => "bzip2",
            Format::Zstd => "zstd",
            Format::Tar => "tar",
        }
    }

    /// One member (stream, frame) holding `data`, as the format's usual writer makes it.
    fn member(self, data: &[u8]) -> Vec<u8> {
        match self {
            Format::Gzip => gzip(data),
            Format::Xz => compress_with("xz", &["-c", "-T1", "-0"], data),
            Format::Bzip2 => {
                let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
                bz.write_all(data).unwrap();
                bz.finish().unwrap()
            }
            Format::Zstd => {
                let mut z = ::zstd::Encoder::new(Vec::new(), 1).unwrap();
                z.include_checksum(true).unwrap();
                z.write_all(data).unwrap();
                z.finish().unwrap()
            }
            Format::Tar => data.to_vec(),
        }
    }
}

/// A zstd skippable frame (magic 0x184D2A5N, little-endian) carrying `data`.
fn skippable(n: u8, data: &[u8]) -> Vec<u8> {
    [&[0x50 | (n & 0xf), 0x2a, 0x4d, 0x18][..], &(data.len() as u32).to_le_bytes(), data].concat()
}

/// Normalizes `data` into a layer; its record.
fn layer_of(data: Vec<u8>) -> Result<LayerRecord> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let u = unpack(0, "app", false);
    normalize_tarball(&store, io::Cursor::new(data), "test", &u, &settings()).map(|(record, _)| record)
}

/// The first offset a message names (`byte N`).
fn first_offset(message: &str) -> Option<u64> {
    let at = message.find("byte ")? + 5;
    message[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// What may follow the last member.
#[derive(Debug, Clone)]
enum Suffix {
    Zeros(usize),
    /// A zstd skippable frame (other formats: nothing).
    Skippable(Vec<u8>),
    /// Bytes whose first is neither zero nor the first byte of any format's magic.
    Garbage(Vec<u8>),
    /// A member of these bytes, cut after this share of its length.
    Truncated(Vec<u8>, prop::sample::Index),
    /// A whole member of these bytes (after the tar's end: not part of the layer).
    Complete(Vec<u8>),
}

fn suffix() -> impl Strategy<Value = Suffix> {
    let bytes = || prop::collection::vec(any::<u8>(), 0..300);
    let lead = any::<u8>().prop_filter("not zero, not a magic's first byte", |b| {
        ![0, 0x1f, 0xfd, 0x28, b'B'].contains(b) && !(0x50..=0x5f).contains(b)
    });
    prop_oneof![
        (1usize..3000).prop_map(Suffix::Zeros),
        bytes().prop_map(Suffix::Skippable),
        (lead, bytes()).prop_map(|(b, rest)| Suffix::Garbage([vec![b], rest].concat())),
        (bytes(), any::<prop::sample::Index>()).prop_map(|(d, i)| Suffix::Truncated(d, i)),
        bytes().prop_map(Suffix::Complete),
    ]
}

/// The suffixes' bytes after `len` bytes of `format`, and the model's verdict: `None` to
/// accept, or the offset a refusal must name. After a member: zero bytes, a skippable frame
/// (zstd) or another member. After zero bytes: only zero bytes, except that xz allows a
/// multiple of four zero bytes before another stream. For a plain tar, whatever follows its
/// end marker is not read.
fn model(format: Format, len: usize, suffixes: &[Suffix]) -> (Vec<u8>, Option<u64>) {
    let mut bytes = Vec::new();
    let mut refused = None;
    let mut zeros: Option<usize> = None;
    for s in suffixes {
        let at = (len + bytes.len()) as u64;
        let piece = match s {
            Suffix::Zeros(n) => vec![0; *n],
            Suffix::Skippable(d) if format == Format::Zstd => skippable(d.len() as u8, d),
            Suffix::Skippable(_) => Vec::new(),
            Suffix::Garbage(g) => g.clone(),
            Suffix::Truncated(d, cut) => {
                // A prefix of one byte to all but one; a one-byte member has none.
                let member = format.member(d);
                match member.len() {
                    0 | 1 => Vec::new(),
                    len => member[..1 + cut.index(len - 1)].to_vec(),
                }
            }
            Suffix::Complete(d) => format.member(d),
        };
        if format != Format::Tar && !piece.is_empty() && refused.is_none() {
            let padding_then_stream = zeros.is_some_and(|z| z % 4 == 0) && format == Format::Xz;
            refused = match s {
                Suffix::Zeros(n) => {
                    zeros = Some(zeros.unwrap_or(0) + n);
                    None
                }
                Suffix::Skippable(_) if zeros.is_none() => None,
                Suffix::Complete(_) if zeros.is_none() || padding_then_stream => {
                    zeros = None;
                    None
                }
                _ => Some(at),
            };
        }
        bytes.extend_from_slice(&piece);
    }
    (bytes, refused)
}

/// A valid tar of small files (with its end marker).
fn small_tar() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..1500), 1..5).prop_map(|files| {
        let entries: Vec<(String, Kind)> =
            files.into_iter().enumerate().map(|(i, d)| (format!("d/f{i}"), Kind::File(d, 0o644))).collect();
        raw_tar(&entries)
    })
}

fn format() -> impl Strategy<Value = Format> {
    prop_oneof![Just(Format::Gzip), Just(Format::Xz), Just(Format::Bzip2), Just(Format::Zstd), Just(Format::Tar)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    /// A tar compressed as one to three members, then suffixes: the normalizer accepts what the
    /// model accepts, with the layer of the plain tar, and refuses the rest naming the format
    /// and the offset the model says, in words (no `Debug` text).
    #[test]
    fn what_follows_the_last_member_is_padding_or_refused(
        tar in small_tar(),
        format in format(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..3),
        suffixes in prop::collection::vec(suffix(), 0..3),
    ) {
        let expected = layer_of(tar.clone()).unwrap().diff_id;
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(tar.len())).chain([0, tar.len()]).collect();
        at.sort();
        at.dedup();
        let compressed: Vec<u8> = if format == Format::Tar {
            tar.clone()
        } else {
            at.windows(2).flat_map(|w| format.member(&tar[w[0]..w[1]])).collect()
        };
        let (tail, verdict) = model(format, compressed.len(), &suffixes);
        let result = layer_of([compressed, tail].concat());
        match (verdict, result) {
            (None, Ok(record)) => prop_assert_eq!(record.diff_id, expected),
            (None, Err(e)) => prop_assert!(false, "refused what the model accepts: {}", e),
            (Some(offset), Ok(_)) => prop_assert!(false, "accepted; the model refuses at byte {}", offset),
            (Some(offset), Err(e)) => {
                let message = e.to_string();
                prop_assert!(matches!(e, Error::BadArchive { .. }), "{}", message);
                prop_assert!(message.starts_with(&format!("test: {} data: ", format.name())), "{}", message);
                prop_assert_eq!(first_offset(&message), Some(offset), "{}", message);
                prop_assert!(!message.contains("Error") && !message.contains('{'), "Debug text: {}", message);
            }
        }
    }

    /// A tar cut anywhere (plain, or whole inside a gzip member): accepted when it ends where
    /// a header would start, else refused naming the entry whose data or the header it ends in.
    #[test]
    fn a_tar_cut_short_names_the_entry_or_header_it_ends_in(
        tar in small_tar(),
        cut in any::<prop::sample::Index>(),
        gzipped in any::<bool>(),
    ) {
        // Where each entry's header and data (with padding) end.
        let mut spans = Vec::new();
        let mut archive = tar::Archive::new(&tar[..]);
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let data = entry.raw_file_position();
            spans.push((name, data, data + entry.size().div_ceil(512) * 512));
        }
        let end = spans.last().unwrap().2 as usize;
        let cut = 1 + cut.index(end - 1); // a file of 0 bytes is another error
        let data = if gzipped { gzip(&tar[..cut]) } else { tar[..cut].to_vec() };
        let result = layer_of(data);
        let cut = cut as u64;
        let inside_data = spans.iter().find(|(_, data, end)| (*data..*end).contains(&cut));
        let header_after = spans.iter().rev().find(|(_, _, end)| *end <= cut);
        let whole = spans.iter().any(|(_, _, end)| *end == cut);
        match (result, inside_data) {
            (Ok(_), _) => prop_assert!(whole, "a tar cut at byte {} was accepted", cut),
            (Err(e), _) if whole => prop_assert!(false, "a tar that ends after a whole entry was refused: {}", e),
            (Err(e), Some((name, _, _))) => {
                let needle = format!("the tar data ends inside entry `{name}` (cut short at byte {cut} of the tar)");
                prop_assert!(e.to_string().contains(&needle), "{} not in: {}", needle, e);
            }
            (Err(e), None) => {
                let needle = match header_after {
                    Some((name, _, _)) => format!("inside a header, the one after entry `{name}`"),
                    None => "inside its first header".to_string(),
                };
                prop_assert!(e.to_string().contains(&needle), "{} not in: {}", needle, e);
            }
        }
    }
}

/// The lead's findings (issue #11), one by one.
#[test]
fn tape_padding_skippable_frames_and_garbage_are_told_apart() {
    let tar = raw_tar(&[file("a"), file("b")]);
    let expected = layer_of(tar.clone()).unwrap().diff_id;
    let gz = gzip(&tar);
    assert_eq!(layer_of([&gz[..], &[0; 1024]].concat()).unwrap().diff_id, expected, "dd padding");
    let err = layer_of([&gz[..], b"GARBAGE"].concat()).unwrap_err().to_string();
    let n = gz.len();
    assert!(err.contains(&format!("gzip data: unknown data at byte {n}, after the last complete member")), "{err}");
    let zst = Format::Zstd.member(&tar);
    let first = [skippable(0, b"metadata"), zst.clone(), skippable(15, b"")].concat();
    assert_eq!(layer_of(first).unwrap().diff_id, expected, "skippable frames anywhere");
    let err = layer_of([&zst[..], b"garbage!"].concat()).unwrap_err().to_string();
    assert!(err.contains(&format!("zstd data: unknown data at byte {}", zst.len())), "{err}");
    // xz's own stream padding between streams: a multiple of four zero bytes.
    let xz = Format::Xz.member(&tar[..512]);
    let rest = Format::Xz.member(&tar[512..]);
    assert_eq!(layer_of([&xz[..], &[0; 8], &rest].concat()).unwrap().diff_id, expected);
    let err = layer_of([&xz[..], &[0; 3], &rest].concat()).unwrap_err().to_string();
    assert!(err.contains(&format!("xz data: unknown data at byte {}", xz.len() + 3)), "{err}");
    assert!(err.contains("not a multiple of 4"), "{err}");
    // A member cut short names where it starts, and where the file ends.
    let cut = [&gz[..], &gz[..gz.len() / 2]].concat();
    let err = layer_of(cut.clone()).unwrap_err().to_string();
    let end = cut.len();
    let needle =
        format!("gzip data: the member that starts at byte {n} is cut short or corrupt: the file ends at byte {end}");
    assert!(err.contains(&needle), "{err}");
}

#[test]
fn a_member_the_file_ends_inside_is_cut_short_and_a_bad_check_corrupt() {
    let tar = raw_tar(&[("big".into(), Kind::File(vec![9; 50_000], 0o644))]);
    for format in [Format::Gzip, Format::Xz, Format::Bzip2, Format::Zstd] {
        let one = format.member(&tar[..2048]);
        let two = format.member(&tar[2048..]);
        let (at, end) = (one.len(), one.len() + two.len() / 2);
        let err = layer_of([&one[..], &two[..two.len() / 2]].concat()).unwrap_err().to_string();
        let needle =
            format!("starts at byte {at} is cut short or corrupt: the file ends at byte {end}, before it does");
        assert!(err.contains(&needle), "{}: {err}", format.name());
    }
    // A wrong CRC-32 at the very end of the file is corrupt data, not a cut.
    let mut gz = gzip(&tar);
    let n = gz.len();
    gz[n - 8] ^= 1;
    let err = layer_of(gz).unwrap_err().to_string();
    assert!(
        err.contains("gzip data: corrupt gzip stream") && err.contains("starts at byte 0, which is corrupt"),
        "{err}"
    );
}

#[test]
fn corrupt_members_are_named_by_where_they_start() {
    let tar = raw_tar(&[("big".into(), Kind::File(vec![7; 100_000], 0o644))]);
    for format in [Format::Gzip, Format::Xz, Format::Bzip2, Format::Zstd] {
        let one = format.member(&tar[..4096]);
        let mut two = format.member(&tar[4096..]);
        let at = two.len() / 2;
        two[at] ^= 0x55;
        let err = layer_of([&one[..], &two].concat()).unwrap_err().to_string();
        let unit = match format {
            Format::Gzip => "member",
            Format::Zstd => "frame",
            _ => "stream",
        };
        // Corrupt data may lead the decoder to the end of the file: then it cannot tell.
        let start =
            format!("{} data: the {unit} that starts at byte {} is cut short or corrupt", format.name(), one.len());
        let needle = format!("(in the {unit} that starts at byte {}, which is corrupt)", one.len());
        assert!((err.contains(&needle) || err.contains(&start)) && !err.contains("Error"), "{}: {err}", format.name());
    }
}

/// Refuses `entries` in a layer at `prefix`, naming `entry` and saying `needle`.
fn refused_own(entries: &[(String, Kind)], prefix: &str, entry: &str, needle: &str) {
    match normalize(raw_tar(entries), &unpack(0, prefix, false)) {
        Err(e @ Error::UnsafeEntry { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&format!("entry `{entry}`")) && text.contains(needle), "{text}");
        }
        other => panic!("{entries:?} at /{prefix}: {:?}", other.map(|_| "accepted")),
    }
}

#[test]
fn no_layer_writes_imgbuilds_own_paths_even_through_a_symlink() {
    let own = "is a path imgbuild writes itself";
    refused_own(&[file("etc/imgbuild/node-id")], "", "etc/imgbuild/node-id", "inside /etc/imgbuild");
    refused_own(
        &[("etc/imgbuild/".into(), Kind::Dir)],
        "",
        "etc/imgbuild/",
        "/etc/imgbuild is a path imgbuild writes itself",
    );
    refused_own(&[link("etc/imgbuild", "/tmp")], "", "etc/imgbuild", own);
    refused_own(&[file("usr/local/bin/imgbuild-init")], "", "usr/local/bin/imgbuild-init", own);
    refused_own(&[link("usr/local/sbin/imgbuild-vm-init", "/bin/sh")], "", "usr/local/sbin/imgbuild-vm-init", own);
    // Another prefix reaches them too.
    refused_own(&[file("imgbuild/cluster.env")], "etc", "imgbuild/cluster.env", "inside /etc/imgbuild");
    // Through a symlink, in either order.
    let through = "through the symlink /etc it is /etc/imgbuild";
    refused_own(&[link("etc", "x"), file("x/imgbuild/node-id")], "", "x/imgbuild", through);
    refused_own(&[file("x/imgbuild/node-id"), link("etc", "x")], "", "x/imgbuild", through);
    refused_own(&[link("etc", "/x"), link("x", "y"), file("y/imgbuild")], "", "y/imgbuild", through);
    let bin = [link("usr/local/bin", "/opt/b"), file("opt/b/imgbuild-init")];
    refused_own(&bin, "", "opt/b/imgbuild-init", "through the symlink /usr/local/bin");
    // Beside them, or leading to them, is fine.
    let fine = [
        file("etc/imgbuild-extra"),
        file("usr/local/bin/other"),
        link("etc/cluster", "/etc/imgbuild/cluster.env"),
        link("srv", "x"),
        file("x/imgbuild/node-id"),
    ];
    check_layer(&normalize(raw_tar(&fine), &unpack(0, "", false)).unwrap(), "", false).unwrap();
}

/// Each member's integrity data is checked, not only the last one's, and the bound on what a
/// source unpacks to holds over all its members together.
#[test]
fn every_members_checks_and_the_unpack_bound_hold_over_all_members() {
    let tar = raw_tar(&[("big".into(), Kind::File(vec![3; 300_000], 0o644))]);
    for format in [Format::Gzip, Format::Xz, Format::Bzip2, Format::Zstd] {
        let mut first = format.member(&tar[..100_000]);
        let last = format.member(&tar[100_000..]);
        assert!(layer_of([&first[..], &last].concat()).is_ok(), "{}", format.name());
        let n = first.len();
        first[n - 2] ^= 0xff; // the check at the end of the first member
        let err = layer_of([&first[..], &last].concat()).unwrap_err().to_string();
        assert!(err.contains(&format!("{} data: ", format.name())) && err.contains("byte 0"), "{err}");
        // Three members of 0.5 MiB each, under a bound of 1 MiB: refused.
        let half = raw_tar(&[("f".into(), Kind::File(vec![0; 1 << 19], 0o644))]);
        assert!(layer_of(format.member(&half)).is_ok(), "one member is within the bound");
        let members: Vec<u8> = (0..3).flat_map(|_| format.member(&half)).collect();
        let err = layer_of(members).unwrap_err().to_string();
        assert!(err.contains("decompression bomb"), "{}: {err}", format.name());
    }
}
