//! The one pinned layer compressor: gzip made of independently deflated fixed-size chunks.
//!
//! Why: the bytes of a layer decide its digest, so they must not depend on the CPU, the number
//! of cores or the host's zlib. miniz_oxide is pure Rust (no SIMD-dependent match finding),
//! pinned in `Cargo.lock`; each `CHUNK_SIZE` piece of input is deflated on its own (no shared
//! dictionary) and ends with a sync flush, so chunks can be compressed on any number of
//! threads and joined in order, as pigz does, into one valid gzip member. The gzip header
//! has no file name, no mtime and a fixed OS byte.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use miniz_oxide::deflate::core::{
    compress_to_output, create_comp_flags_from_zip_params, CompressorOxide, TDEFLFlush, TDEFLStatus,
};

/// Input bytes per independently compressed chunk. Part of the output format: changing it
/// changes every layer digest, so it is tied to `layer::FORMAT_VERSION`.
pub const CHUNK_SIZE: usize = 1 << 20;

/// gzip level used for layers unless `--level` says otherwise. Level 1 of this compressor is
/// several times faster than level 6 and about 10% larger on a JDK (figures in BENCHMARKS.md);
/// go-containerregistry and ko make the same choice. Part of every layer's digest.
pub const DEFAULT_LEVEL: u8 = 1;

/// ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=255 (unknown): nothing about the host.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// A final, empty fixed-Huffman block: ends the deflate stream after the last sync flush.
const FINAL_EMPTY_BLOCK: [u8; 2] = [0x03, 0x00];

fn deflate_chunk(level: u8, data: &[u8]) -> Vec<u8> {
    // Negative window bits: raw deflate, no zlib header.
    let flags = create_comp_flags_from_zip_params(i32::from(level), -15, 0);
    let mut compressor = CompressorOxide::new(flags);
    // Room for incompressible input (stored blocks add a few bytes per 64 KiB) without regrowing.
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 64);
    let (status, consumed) = compress_to_output(&mut compressor, data, TDEFLFlush::Sync, |bytes| {
        out.extend_from_slice(bytes);
        true
    });
    // With the whole chunk given and a callback that accepts everything, deflate cannot stop early.
    assert!(
        status == TDEFLStatus::Okay && consumed == data.len(),
        "deflate of an in-memory chunk stopped early: {status:?}"
    );
    out
}

type Job = (u64, Vec<u8>);

struct Pool {
    jobs: Option<Sender<Job>>,
    results: Receiver<Job>,
    workers: Vec<JoinHandle<()>>,
    pending: BTreeMap<u64, Vec<u8>>,
    in_flight: usize,
    max_in_flight: usize,
}

impl Pool {
    fn new(threads: usize, level: u8) -> Self {
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let (res_tx, res_rx) = mpsc::channel::<Job>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let workers = (0..threads)
            .map(|_| {
                let job_rx = Arc::clone(&job_rx);
                let res_tx = res_tx.clone();
                std::thread::spawn(move || loop {
                    let job = job_rx.lock().map(|rx| rx.recv());
                    let Ok(Ok((seq, data))) = job else { return };
                    if res_tx.send((seq, deflate_chunk(level, &data))).is_err() {
                        return;
                    }
                })
            })
            .collect();
        Pool {
            jobs: Some(job_tx),
            results: res_rx,
            workers,
            pending: BTreeMap::new(),
            in_flight: 0,
            max_in_flight: threads * 2,
        }
    }

    fn receive_one(&mut self) -> io::Result<()> {
        let (seq, data) =
            self.results.recv().map_err(|_| io::Error::other("a compression thread stopped unexpectedly"))?;
        self.pending.insert(seq, data);
        self.in_flight -= 1;
        Ok(())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A streaming gzip writer whose output depends only on the input bytes and the level.
pub struct GzipWriter<W: Write> {
    inner: W,
    level: u8,
    buffer: Vec<u8>,
    crc: crc32fast::Hasher,
    total_in: u64,
    next_seq: u64,
    next_to_write: u64,
    pool: Option<Pool>,
}

impl<W: Write> GzipWriter<W> {
    /// `threads` only changes the speed, never the bytes.
    pub fn new(mut inner: W, level: u8, threads: usize) -> io::Result<Self> {
        inner.write_all(&GZIP_HEADER)?;
        let pool = (threads > 1).then(|| Pool::new(threads, level));
        Ok(GzipWriter {
            inner,
            level,
            buffer: Vec::with_capacity(CHUNK_SIZE),
            crc: crc32fast::Hasher::new(),
            total_in: 0,
            next_seq: 0,
            next_to_write: 0,
            pool,
        })
    }

    fn dispatch_chunk(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_SIZE));
        let seq = self.next_seq;
        self.next_seq += 1;
        match self.pool.is_some() {
            false => {
                let out = deflate_chunk(self.level, &chunk);
                self.inner.write_all(&out)?;
                self.next_to_write += 1;
            }
            true => {
                while self.pool.as_ref().is_some_and(|p| p.in_flight >= p.max_in_flight) {
                    self.pool.as_mut().expect("pool").receive_one()?;
                    self.write_ready()?;
                }
                let pool = self.pool.as_mut().expect("pool");
                pool.jobs
                    .as_ref()
                    .expect("jobs open until finish")
                    .send((seq, chunk))
                    .map_err(|_| io::Error::other("compression threads stopped unexpectedly"))?;
                pool.in_flight += 1;
            }
        }
        Ok(())
    }

    fn write_ready(&mut self) -> io::Result<()> {
        if let Some(pool) = self.pool.as_mut() {
            while let Some(data) = pool.pending.remove(&self.next_to_write) {
                self.inner.write_all(&data)?;
                self.next_to_write += 1;
            }
        }
        Ok(())
    }

    /// Writes the rest, the end of the deflate stream and the gzip trailer; returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.dispatch_chunk()?;
        while self.pool.as_ref().is_some_and(|p| p.in_flight > 0) {
            self.pool.as_mut().expect("pool").receive_one()?;
            self.write_ready()?;
        }
        debug_assert_eq!(self.next_to_write, self.next_seq);
        self.pool.take();
        self.inner.write_all(&FINAL_EMPTY_BLOCK)?;
        let crc = std::mem::take(&mut self.crc).finalize();
        self.inner.write_all(&crc.to_le_bytes())?;
        // ISIZE is the input length modulo 2^32, as RFC 1952 says.
        self.inner.write_all(&(self.total_in as u32).to_le_bytes())?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for GzipWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = CHUNK_SIZE - self.buffer.len();
        let n = room.min(buf.len());
        self.buffer.extend_from_slice(&buf[..n]);
        self.crc.update(&buf[..n]);
        self.total_in += n as u64;
        if self.buffer.len() == CHUNK_SIZE {
            self.dispatch_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The number of compression threads to use by default: every core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(len: usize) -> Vec<u8> {
        // Half compressible text, half pseudo-random bytes.
        let mut x: u32 = 0x1234_5678;
        (0..len)
            .map(|i| {
                if (i / 4096) % 2 == 0 {
                    b"zookeeper kafka jdk "[i % 20]
                } else {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                }
            })
            .collect()
    }

    fn gzip(data: &[u8], threads: usize) -> Vec<u8> {
        let mut w = GzipWriter::new(Vec::new(), DEFAULT_LEVEL, threads).unwrap();
        // Odd write sizes: chunking must not depend on how the caller splits writes.
        for piece in data.chunks(77_777) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn output_is_the_same_for_any_thread_count_and_round_trips() {
        let data = sample(3 * CHUNK_SIZE + 12345);
        let one = gzip(&data, 1);
        assert_eq!(one, gzip(&data, 2));
        assert_eq!(one, gzip(&data, 8));
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&one[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        assert!(one.len() < data.len());
    }

    #[test]
    fn empty_input_is_a_valid_gzip() {
        let out = gzip(&[], 1);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&out[..]).read_to_end(&mut back).unwrap();
        assert!(back.is_empty());
        assert_eq!(&out[..10], &GZIP_HEADER);
    }
}
