//! A layout made here, then one of its files replaced by what an attacker would put there:
//! every variant is refused or read to exactly its descriptor's size, never blocks, and never
//! reads a host file.

use std::io::{Read, Write};
use std::os::unix::fs::symlink;
use std::path::Path;

use proptest::prelude::*;

use super::*;

/// A layout directory (or its archive) holding `blob`, and the descriptor that names it.
struct Layout {
    dir: tempfile::TempDir,
    desc: Descriptor,
}

fn descriptor(data: &[u8]) -> Descriptor {
    serde_json::from_value(serde_json::json!({
        "mediaType": "application/octet-stream",
        "digest": Sha256Digest::of(data).to_string(),
        "size": data.len(),
    }))
    .unwrap()
}

impl Layout {
    fn new(blob: &[u8]) -> Layout {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("layout");
        std::fs::create_dir_all(root.join("blobs/sha256")).unwrap();
        std::fs::write(root.join("index.json"), br#"{"schemaVersion":2,"manifests":[]}"#).unwrap();
        let desc = descriptor(blob);
        std::fs::write(root.join("blobs/sha256").join(desc.digest.hex()), blob).unwrap();
        Layout { dir, desc }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("layout")
    }

    fn blob_path(&self) -> PathBuf {
        self.root().join("blobs/sha256").join(self.desc.digest.hex())
    }

    /// A host file the layout must never be able to read.
    fn secret(&self) -> PathBuf {
        let path = self.dir.path().join("host-secret");
        std::fs::write(&path, "root:the host's secret\n").unwrap();
        path
    }

    /// Reads the blob through `OciSource`, as import does: its bytes, or the refusal.
    fn read(&self, path: &Path) -> Result<Vec<u8>, String> {
        let source = OciSource::open(path).map_err(|e| e.to_string())?;
        let mut reader = source.blob(&self.desc).map_err(|e| e.to_string())?;
        let mut data = Vec::new();
        reader.read_to_end(&mut data).map_err(|e| e.to_string())?;
        Ok(data)
    }
}

/// What an attacker can put in place of a blob in a layout directory.
#[derive(Debug, Clone)]
enum Swap {
    LinkToHostFile,
    LinkToDevZero,
    Fifo,
    Directory,
    /// The right bytes, then more.
    Longer(usize),
    /// The first bytes only.
    Shorter(usize),
    /// `blobs/sha256` itself a link to a directory holding the right blob.
    LinkedParent,
}

fn swap() -> impl Strategy<Value = Swap> {
    prop_oneof![
        Just(Swap::LinkToHostFile),
        Just(Swap::LinkToDevZero),
        Just(Swap::Fifo),
        Just(Swap::Directory),
        (1usize..5000).prop_map(Swap::Longer),
        (1usize..5000).prop_map(Swap::Shorter),
        Just(Swap::LinkedParent),
    ]
}

fn apply(layout: &Layout, swap: &Swap, blob: &[u8]) {
    let path = layout.blob_path();
    std::fs::remove_file(&path).unwrap();
    match swap {
        Swap::LinkToHostFile => symlink(layout.secret(), &path).unwrap(),
        Swap::LinkToDevZero => symlink("/dev/zero", &path).unwrap(),
        Swap::Fifo => rustix::fs::mknodat(CWD, &path, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap(),
        Swap::Directory => std::fs::create_dir(&path).unwrap(),
        Swap::Longer(n) => std::fs::write(&path, [blob, &vec![0u8; *n]].concat()).unwrap(),
        Swap::Shorter(n) => std::fs::write(&path, &blob[..blob.len().saturating_sub(*n)]).unwrap(),
        Swap::LinkedParent => {
            let elsewhere = layout.dir.path().join("elsewhere");
            std::fs::create_dir(&elsewhere).unwrap();
            std::fs::write(elsewhere.join(layout.desc.digest.hex()), blob).unwrap();
            std::fs::remove_dir(path.parent().unwrap()).unwrap();
            symlink(&elsewhere, path.parent().unwrap()).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_blob_in_a_layout_directory_is_its_regular_file_and_its_descriptors_size(
        blob in proptest::collection::vec(any::<u8>(), 1..3000),
        swap in swap(),
    ) {
        let layout = Layout::new(&blob);
        prop_assert_eq!(layout.read(&layout.root()).unwrap(), blob.clone(), "an intact blob reads whole");
        apply(&layout, &swap, &blob);
        let refused = layout.read(&layout.root()).unwrap_err();
        prop_assert!(!refused.contains("the host's secret"), "{}", refused);
        let expected = match swap {
            Swap::LinkToHostFile | Swap::LinkToDevZero => "is a symbolic link",
            Swap::Fifo => "is a FIFO",
            Swap::Directory => "is a directory",
            Swap::Longer(_) | Swap::Shorter(_) => "but its descriptor says",
            Swap::LinkedParent => "under a symbolic link",
        };
        prop_assert!(refused.contains(expected), "{:?}: {}", swap, refused);
    }
}

/// An archive entry as an attacker may write it: a name, an entry type, the size its header
/// says, and the bytes that follow.
type RawEntry<'a> = (&'a str, tar::EntryType, u64, &'a [u8]);

fn archive(entries: &[RawEntry]) -> Vec<u8> {
    let block = |(name, kind, size, data): &RawEntry| {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_entry_type(*kind);
        h.set_size(*size);
        h.set_mode(0o644);
        if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
            h.set_link_name("/etc/passwd").unwrap();
        }
        h.set_cksum();
        let padding = data.len().div_ceil(512) * 512 - data.len();
        [h.as_bytes(), *data, &vec![0u8; padding]].concat()
    };
    let end = [0u8; 1024];
    entries.iter().map(block).chain([end.to_vec()]).collect::<Vec<_>>().concat()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn an_archive_entry_is_a_regular_file_of_its_descriptors_size(
        blob in proptest::collection::vec(any::<u8>(), 1..3000),
        variant in 0usize..6,
        extra in 1u64..4000,
    ) {
        let desc = descriptor(&blob);
        let name = format!("blobs/sha256/{}", desc.digest.hex());
        let size = blob.len() as u64;
        let index: &[u8] = br#"{"schemaVersion":2,"manifests":[]}"#;
        let regular = tar::EntryType::Regular;
        let longer = [blob.as_slice(), &vec![7u8; extra as usize]].concat();
        let (entries, expected): (Vec<RawEntry>, &str) = match variant {
            0 => (vec![(&name, regular, size, &blob)], ""),
            1 => (vec![(&name, tar::EntryType::Symlink, 0, &[])], "is not a regular file"),
            2 => (vec![(&name, tar::EntryType::Link, 0, &[])], "is not a regular file"),
            3 => (vec![(&name, regular, size, &blob), (&name, regular, size, &blob)], "listed twice"),
            // A header that claims more than the archive holds.
            4 => (vec![(&name, regular, size + extra * 1_000_000, &blob)], "past the end of the archive"),
            _ => (vec![(&name, regular, size + extra, &longer)], "but its descriptor says"),
        };
        let mut all = vec![("index.json", regular, index.len() as u64, index)];
        all.extend(entries.iter().map(|(n, k, s, d)| (*n, *k, *s, *d)));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.tar");
        let mut bytes = archive(&all);
        if variant == 4 {
            bytes.truncate(bytes.len() - 1024); // no end-of-archive blocks after a lying entry
        }
        std::fs::write(&path, bytes).unwrap();
        let read = OciSource::open(&path).and_then(|s| {
            let mut data = Vec::new();
            s.blob(&desc)?.read_to_end(&mut data).map_err(|e| Error::Internal(e.to_string()))?;
            Ok(data)
        });
        match (variant, read) {
            (0, Ok(data)) => prop_assert_eq!(data, blob),
            (_, Err(e)) => prop_assert!(e.to_string().contains(expected), "variant {}: {}", variant, e),
            (v, Ok(_)) => prop_assert!(false, "variant {} was read", v),
        }
    }
}

#[test]
fn a_blob_that_grows_while_read_stops_one_byte_past_its_size() {
    let blob = vec![1u8; 100];
    let layout = Layout::new(&blob);
    let source = OciSource::open(&layout.root()).unwrap();
    let mut reader = source.blob(&layout.desc).unwrap();
    // Appended after the size was checked: the reader still stops.
    std::fs::OpenOptions::new().append(true).open(layout.blob_path()).unwrap().write_all(&[2u8; 1 << 20]).unwrap();
    let mut data = Vec::new();
    let err = reader.read_to_end(&mut data).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("longer than the 100 bytes"), "{err}");
    assert!(data.len() <= 101, "read {} bytes", data.len());
}

#[test]
fn index_json_and_the_layout_path_are_read_as_regular_files_only() {
    let layout = Layout::new(b"x");
    let index = layout.root().join("index.json");
    std::fs::remove_file(&index).unwrap();
    symlink("/dev/zero", &index).unwrap();
    let err = OciSource::open(&layout.root()).unwrap().index().unwrap_err().to_string();
    assert!(err.contains("index.json is a symbolic link"), "{err}");
    std::fs::remove_file(&index).unwrap();
    std::fs::write(&index, vec![b' '; (MAX_DOCUMENT + 1) as usize]).unwrap();
    let err = OciSource::open(&layout.root()).unwrap().index().unwrap_err().to_string();
    assert!(err.contains("more than an index is"), "{err}");
    // An archive named by the user may be a link, but to a regular file: never a FIFO or device.
    let fifo = layout.dir.path().join("fifo.tar");
    rustix::fs::mknodat(CWD, &fifo, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
    assert!(OciSource::open(&fifo).err().unwrap().to_string().contains("is a FIFO"));
    assert!(!is_oci_archive(&fifo), "and telling what it is does not block either");
    let link = layout.dir.path().join("zero.tar");
    symlink("/dev/zero", &link).unwrap();
    assert!(OciSource::open(&link).err().unwrap().to_string().contains("is a device"));
}
