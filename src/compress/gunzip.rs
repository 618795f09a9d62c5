//! Inflating a gzip layer as [`super::gzip`] writes it, on several threads, with exactly the
//! bytes a sequential gzip reader gets from it.
//!
//! Such a layer is one member whose deflate stream is made of chunks, each ended by a sync
//! flush: an empty stored block, `00 00 FF FF` on a byte boundary. The stream is cut after each
//! of those four bytes and the pieces (segments) are inflated side by side, each by a fresh
//! decoder. Whoever made the blob (a shared cache is written by others) the result is taken only
//! if it is provably what one decoder reading the whole stream would produce:
//!
//! - the first segment starts right after a 10-byte header without optional fields;
//! - every segment but the last is read to its very last bit and ends on a block boundary, with
//!   no bits left over and no final block: the next one then starts where a sequential decoder
//!   would read a block header, at bit 0 of its first byte;
//! - no segment refers back before its own first byte (the decoder's output buffer starts
//!   empty and does not wrap: such a distance is an error), so the history a sequential decoder
//!   would have never changes what a segment inflates to;
//! - the last segment ends with the final block, followed by exactly the 8-byte trailer, whose
//!   CRC-32 and length match what was inflated.
//!
//! By induction over the segments, the concatenated output is then the sequential decoder's.
//! Anything else (another gzip writer's layer, a marker that was only data, several members,
//! damage) is answered `None`, and the caller reads the blob with a sequential decoder, which
//! decides. Memory is bounded: a segment longer than `MAX_SEGMENT_IN` without a marker, or one
//! that inflates to more than a chunk, ends the attempt.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use miniz_oxide::inflate::core::inflate_flags::{
    TINFL_FLAG_HAS_MORE_INPUT, TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY, TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
};
use miniz_oxide::inflate::core::{decompress, DecompressorOxide};
use miniz_oxide::inflate::TINFLStatus;

use super::{gzip, CHUNK_SIZE};

/// The end of a sync flush: an empty stored block's LEN and NLEN.
const SYNC_MARKER: [u8; 4] = [0, 0, 0xff, 0xff];
/// Compressed bytes a segment may reach without a marker: a chunk of incompressible data is
/// stored, a little over `CHUNK_SIZE`.
const MAX_SEGMENT_IN: usize = 2 * CHUNK_SIZE;
/// The fewest compressed bytes a segment is cut at (but the last): a marker closer to the last
/// cut is read through. Each segment costs a decoder, a buffer and two hand-offs; this keeps
/// that cost to a small share of the bytes, however many markers a blob holds (a cache's writer
/// could make them five bytes apart).
const MIN_SEGMENT_IN: usize = 16 << 10;
/// What one segment may inflate to: a few chunks (a run of highly compressible chunks is read
/// as one segment). More, and the attempt ends: the sequential reader decides.
const MAX_SEGMENT_OUT: usize = 4 * CHUNK_SIZE;

/// A segment to inflate: its place in the stream, its bytes, and whether it is the last.
type Job = (u64, Vec<u8>, bool);
/// What a segment inflated to and, for the last, the trailer that follows it.
type Segment = (Vec<u8>, Option<[u8; 8]>);
/// A segment's place and what it inflated to; `None`: not of the shape.
type Inflated = (u64, Option<Segment>);

/// Inflates the gzip stream that `pieces` make, in order, on `threads` threads, giving the
/// output to `out` in order. Returns the output's length, or `None` when the stream is not a
/// layer as imgbuild writes it, or would inflate past `limit` bytes (a sequential reader must
/// then decide). Always reads `pieces` to their end.
pub fn inflate_layer(
    pieces: impl Iterator<Item = Vec<u8>>,
    threads: usize,
    limit: u64,
    out: &mut dyn FnMut(&[u8]),
) -> Option<u64> {
    inflate_in_segments(pieces, threads, limit, out).0
}

/// `inflate_layer`, and how many segments the stream was cut into.
fn inflate_in_segments(
    pieces: impl Iterator<Item = Vec<u8>>,
    threads: usize,
    limit: u64,
    out: &mut dyn FnMut(&[u8]),
) -> (Option<u64>, u64) {
    let threads = threads.max(1);
    let (jobs, queue) = mpsc::sync_channel::<Job>(threads);
    let queue = Arc::new(Mutex::new(queue));
    let (done, results) = mpsc::channel::<Inflated>();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (queue, done) = (Arc::clone(&queue), done.clone());
            scope.spawn(move || work(&queue, &done));
        }
        drop(done);
        let mut splitter = Splitter {
            jobs: Some(jobs),
            results,
            pending: BTreeMap::new(),
            next: 0,
            sent: 0,
            max_in_flight: threads as u64 + 1,
        };
        let mut ordered = Ordered { out, crc: crc32fast::Hasher::new(), total: 0, limit, trailer: None };
        let found = splitter.run(pieces, &mut ordered);
        splitter.jobs.take(); // the workers end
        (found, splitter.sent)
    })
}

fn work(queue: &Mutex<Receiver<Job>>, done: &mpsc::Sender<Inflated>) {
    loop {
        let job = queue.lock().map(|q| q.recv());
        let Ok(Ok((seq, data, last))) = job else { return };
        // A panic in the decoder declines (the sequential reader decides) rather than leaving
        // the splitter waiting for this segment forever.
        let inflated = std::panic::catch_unwind(|| inflate_segment(&data, last)).unwrap_or(None);
        if done.send((seq, inflated)).is_err() {
            return;
        }
    }
}

/// Inflates one segment with a fresh decoder; `None` unless it has the shape the module
/// comment sets out.
fn inflate_segment(data: &[u8], last: bool) -> Option<Segment> {
    let mut decoder = DecompressorOxide::new();
    // Grown as the output needs (the decoder goes on where it stopped), up to MAX_SEGMENT_OUT.
    let mut output = vec![0u8; (4 * data.len()).clamp(64 << 10, CHUNK_SIZE)];
    let mut flags = TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF | TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY;
    if !last {
        flags |= TINFL_FLAG_HAS_MORE_INPUT;
    }
    let (mut read, mut written) = (0, 0);
    loop {
        let (status, used, made) = decompress(&mut decoder, &data[read..], &mut output, written, flags);
        (read, written) = (read + used, written + made);
        match status {
            TINFLStatus::BlockBoundary if read < data.len() => {}
            // Read to its last byte, between two blocks, with no bit of that byte left over.
            TINFLStatus::BlockBoundary if !last => {
                decoder.block_boundary_state().filter(|state| state.num_bits == 0)?;
                output.truncate(written);
                return Some((output, None));
            }
            TINFLStatus::Done if last => {
                let trailer: [u8; 8] = data[read..].try_into().ok()?;
                output.truncate(written);
                return Some((output, Some(trailer)));
            }
            TINFLStatus::HasMoreOutput if output.len() < MAX_SEGMENT_OUT => {
                output.resize((2 * output.len()).min(MAX_SEGMENT_OUT), 0);
            }
            _ => return None,
        }
    }
}

/// Cuts the stream into segments and hands them out, a bounded number at a time.
struct Splitter {
    jobs: Option<SyncSender<Job>>,
    results: Receiver<Inflated>,
    pending: BTreeMap<u64, Option<Segment>>,
    /// The next segment to give to `Ordered`.
    next: u64,
    /// Segments sent so far.
    sent: u64,
    /// Segments sent and not yet given on: each holds up to a chunk in memory.
    max_in_flight: u64,
}

impl Splitter {
    fn run(&mut self, pieces: impl Iterator<Item = Vec<u8>>, ordered: &mut Ordered<'_>) -> Option<u64> {
        let mut pieces = pieces.fuse();
        let found = self.split(&mut pieces, ordered);
        pieces.for_each(drop); // the sender may not be left waiting
        found
    }

    fn split(&mut self, pieces: &mut impl Iterator<Item = Vec<u8>>, ordered: &mut Ordered<'_>) -> Option<u64> {
        let mut segment: Vec<u8> = Vec::new();
        let mut header_seen = false;
        // Where to look for the next marker (the bytes before were searched).
        let mut searched = 0;
        for piece in pieces.by_ref() {
            segment.extend_from_slice(&piece);
            if !header_seen {
                if segment.len() < gzip::HEADER.len() {
                    continue;
                }
                // ID1 ID2, deflate, no flags (so no optional fields), as imgbuild writes it;
                // MTIME, XFL and OS are read past by every reader.
                if segment[..4] != gzip::HEADER[..4] {
                    return None;
                }
                segment.drain(..gzip::HEADER.len());
                header_seen = true;
            }
            while let Some(at) = memchr::memmem::find(&segment[searched..], &SYNC_MARKER) {
                let end = searched + at + SYNC_MARKER.len();
                if end < MIN_SEGMENT_IN {
                    searched = end; // read through, as one decoder would
                    continue;
                }
                let rest = segment.split_off(end);
                self.send(std::mem::replace(&mut segment, rest), false, ordered)?;
                searched = 0;
            }
            if segment.len() > MAX_SEGMENT_IN {
                return None;
            }
            // A marker may begin in the last bytes and end in the next piece.
            searched = searched.max(segment.len().saturating_sub(SYNC_MARKER.len() - 1));
        }
        if !header_seen {
            return None;
        }
        self.send(segment, true, ordered)?;
        while self.next < self.sent {
            self.receive_one(ordered)?;
        }
        ordered.finish()
    }

    fn send(&mut self, segment: Vec<u8>, last: bool, ordered: &mut Ordered<'_>) -> Option<()> {
        while self.sent - self.next >= self.max_in_flight {
            self.receive_one(ordered)?;
        }
        self.jobs.as_ref()?.send((self.sent, segment, last)).ok()?;
        self.sent += 1;
        Some(())
    }

    /// Waits for one result, then gives every result now in order to `ordered`.
    fn receive_one(&mut self, ordered: &mut Ordered<'_>) -> Option<()> {
        let (seq, result) = self.results.recv().ok()?;
        self.pending.insert(seq, result);
        while let Some(result) = self.pending.remove(&self.next) {
            let (output, trailer) = result?;
            ordered.take(&output, trailer)?;
            self.next += 1;
        }
        Some(())
    }
}

/// The output in order: counted against the limit, CRC-32 computed, given on.
struct Ordered<'o> {
    out: &'o mut dyn FnMut(&[u8]),
    crc: crc32fast::Hasher,
    total: u64,
    limit: u64,
    trailer: Option<[u8; 8]>,
}

impl Ordered<'_> {
    fn take(&mut self, output: &[u8], trailer: Option<[u8; 8]>) -> Option<()> {
        self.total += output.len() as u64;
        if self.total > self.limit {
            return None;
        }
        self.crc.update(output);
        (self.out)(output);
        self.trailer = trailer;
        Some(())
    }

    /// The length, if the trailer has the CRC-32 and length (modulo 2^32) of the output.
    fn finish(&mut self) -> Option<u64> {
        let trailer = self.trailer?;
        let crc = std::mem::take(&mut self.crc).finalize();
        let matches = trailer[..4] == crc.to_le_bytes() && trailer[4..] == (self.total as u32).to_le_bytes();
        matches.then_some(self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::{Compressor, LayerWriter, Parallelism};
    use proptest::prelude::*;
    use std::io::Write;

    fn layer(data: &[u8]) -> Vec<u8> {
        let mut w = LayerWriter::new(Vec::new(), Compressor::gzip(1), Parallelism::threads(1)).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    /// `blob` inflated in parallel, handed in pieces of `piece` bytes.
    fn parallel(blob: &[u8], piece: usize, threads: usize, limit: u64) -> Option<Vec<u8>> {
        let mut output = Vec::new();
        let pieces = blob.chunks(piece.max(1)).map(<[u8]>::to_vec).collect::<Vec<_>>();
        let n = inflate_layer(pieces.into_iter(), threads, limit, &mut |b| output.extend_from_slice(b))?;
        assert_eq!(n, output.len() as u64);
        Some(output)
    }

    /// What a sequential reader (every member, as runtimes read layers) makes of `blob`.
    fn sequential(blob: &[u8]) -> Option<Vec<u8>> {
        let mut output = Vec::new();
        let mut gunzip = flate2::write::MultiGzDecoder::new(&mut output);
        gunzip.write_all(blob).ok()?;
        gunzip.finish().ok()?;
        (!blob.is_empty()).then_some(output)
    }

    /// Text and pseudo-random runs, so both Huffman and stored blocks occur.
    fn sample(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if (i / 5000) % 2 == 0 {
                    b"zookeeper kafka\n"[i % 16]
                } else {
                    x as u8
                }
            })
            .collect()
    }

    #[test]
    fn a_layer_imgbuild_wrote_inflates_in_parallel_to_its_tar() {
        for len in [0, 1, 1000, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 12_345] {
            let data = sample(len, 7);
            let blob = layer(&data);
            for (piece, threads) in [(256 * 1024, 2), (1, 1), (4093, 3)] {
                if piece == 1 && len > CHUNK_SIZE {
                    continue; // byte by byte is slow; the small sizes cover it
                }
                assert_eq!(parallel(&blob, piece, threads, u64::MAX).as_deref(), Some(&data[..]), "{len} {piece}");
            }
        }
    }

    #[test]
    fn the_limit_ends_the_attempt() {
        let blob = layer(&sample(3 * CHUNK_SIZE, 3));
        assert!(parallel(&blob, 65_536, 2, 2 * CHUNK_SIZE as u64).is_none());
        assert!(parallel(&blob, 65_536, 2, 3 * CHUNK_SIZE as u64).is_some());
    }

    /// A stream whose second chunk refers back into the first: valid gzip, one member, whose
    /// segments cannot be inflated apart.
    fn chunks_sharing_history(first: &[u8], second: &[u8]) -> Vec<u8> {
        let mut deflate = flate2::Compress::new(flate2::Compression::fast(), false);
        let mut stream = Vec::with_capacity(2 * (first.len() + second.len()) + 1024);
        for (data, flush) in [(first, flate2::FlushCompress::Sync), (second, flate2::FlushCompress::Finish)] {
            deflate.compress_vec(data, &mut stream, flush).unwrap();
        }
        let mut blob = gzip::HEADER.to_vec();
        blob.extend(stream);
        blob.extend(trailer(&[first, second].concat()));
        blob
    }

    /// The CRC-32 and length of `data`, as a gzip member ends.
    fn trailer(data: &[u8]) -> Vec<u8> {
        let mut end = crc32fast::hash(data).to_le_bytes().to_vec();
        end.extend((data.len() as u32).to_le_bytes());
        end
    }

    #[test]
    fn segments_that_refer_back_across_a_cut_are_not_taken() {
        let first = sample(100_000, 5);
        let blob = chunks_sharing_history(&first, &first);
        assert_eq!(sequential(&blob).map(|o| o.len()), Some(200_000), "a valid stream");
        assert!(parallel(&blob, 65_536, 2, u64::MAX).is_none());
    }

    /// Raw deflate of each of `parts`, each ended by a sync flush, sharing one history.
    fn sync_flushed(parts: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut deflate = flate2::Compress::new(flate2::Compression::fast(), false);
        parts
            .iter()
            .map(|part| {
                let mut out = Vec::with_capacity(2 * part.len() + 64);
                deflate.compress_vec(part, &mut out, flate2::FlushCompress::Sync).unwrap();
                out
            })
            .collect()
    }

    #[test]
    fn a_segment_may_not_refer_back_before_its_first_byte() {
        let text = sample(4000, 1)[..4000].to_vec();
        let segments = sync_flushed(&[&text, &text]);
        assert_eq!(inflate_segment(&segments[0], false).map(|(o, _)| o), Some(text.clone()));
        assert!(segments[1].len() < text.len() / 4, "the second refers back to the first");
        assert_eq!(inflate_segment(&segments[1], false), None);
    }

    #[test]
    fn a_segment_must_end_between_blocks_on_a_whole_byte() {
        // A fixed-Huffman block of one literal ends 18 bits in: six bits of its third byte are left.
        let mut deflate = flate2::Compress::new(flate2::Compression::fast(), false);
        let mut block = Vec::with_capacity(64);
        deflate.compress_vec(b"a", &mut block, flate2::FlushCompress::Finish).unwrap();
        assert_eq!(block.len(), 3);
        block[0] &= !1; // not the final block
        assert_eq!(inflate_segment(&block, false), None);
        // Ended by a sync flush, the same block is a segment.
        let whole = sync_flushed(&[b"a"]).remove(0);
        assert_eq!(inflate_segment(&whole, false).map(|(o, _)| o), Some(b"a".to_vec()));
    }

    #[test]
    fn markers_close_together_are_read_through_not_cut() {
        // A cache's writer can end a segment every five bytes (an empty stored block); each cut
        // costs a decoder and two hand-offs, so cuts come at least MIN_SEGMENT_IN apart.
        let data = sample(300_000, 9);
        let mut blob = gzip::HEADER.to_vec();
        let mut stream = sync_flushed(&[&data]).remove(0);
        for _ in 0..200_000 {
            stream.extend([0, 0, 0, 0xff, 0xff]);
        }
        stream.extend([0x03, 0x00]);
        blob.extend(stream);
        blob.extend(trailer(&data));
        let (found, segments) = inflate_in_segments(
            blob.chunks(65_536).map(<[u8]>::to_vec).collect::<Vec<_>>().into_iter(),
            2,
            u64::MAX,
            &mut |_| {},
        );
        assert_eq!(found, Some(data.len() as u64));
        assert!(segments <= (blob.len() / MIN_SEGMENT_IN) as u64 + 1, "{segments} segments");
        assert_eq!(sequential(&blob), Some(data));
    }

    /// Ways to change a blob: each keeps some valid structure a careless parallel reader might
    /// take at its word.
    #[derive(Debug, Clone)]
    enum Change {
        None,
        Flip(usize, u8),
        Cut(usize),
        InsertMarker(usize),
        Append(Vec<u8>),
        ReplaceWithSharedHistory,
        AnotherMember,
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            Just(Change::None),
            (any::<usize>(), 1u8..).prop_map(|(i, x)| Change::Flip(i, x)),
            any::<usize>().prop_map(Change::Cut),
            any::<usize>().prop_map(Change::InsertMarker),
            proptest::collection::vec(any::<u8>(), 1..12).prop_map(Change::Append),
            Just(Change::ReplaceWithSharedHistory),
            Just(Change::AnotherMember),
        ]
    }

    fn changed(data: &[u8], change: &Change) -> Vec<u8> {
        let mut blob = layer(data);
        let at = |i: usize, len: usize| i % len.max(1);
        match change {
            Change::None => {}
            Change::Flip(i, x) => {
                let i = at(*i, blob.len());
                blob[i] ^= x;
            }
            Change::Cut(i) => blob.truncate(at(*i, blob.len())),
            Change::InsertMarker(i) => {
                let i = at(*i, blob.len());
                blob.splice(i..i, SYNC_MARKER);
            }
            Change::Append(junk) => blob.extend(junk),
            Change::ReplaceWithSharedHistory => {
                let half = data.len() / 2;
                blob = chunks_sharing_history(&data[..half], &data[half..]);
            }
            Change::AnotherMember => blob.extend(layer(&data[..data.len() / 3])),
        }
        blob
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        /// Whatever the blob, the parallel reader either declines or gives exactly what a
        /// sequential reader gives; an unchanged layer it always reads.
        #[test]
        fn parallel_output_is_the_sequential_readers_or_nothing(
            len in 0usize..(2 * CHUNK_SIZE + 5000),
            seed in any::<u32>(),
            change in change(),
            piece in 1usize..300_000,
        ) {
            let data = sample(len, seed);
            let blob = changed(&data, &change);
            let found = parallel(&blob, piece.max(512), 2, u64::MAX);
            if let Some(output) = &found {
                prop_assert_eq!(Some(output.clone()), sequential(&blob));
            }
            if matches!(change, Change::None) {
                prop_assert_eq!(found.as_deref(), Some(&data[..]));
            }
        }
    }
}
