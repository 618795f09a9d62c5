//! The pinned layer compressors: gzip (the default) or zstd, each made of independently
//! compressed fixed-size chunks.
//!
//! Why: the bytes of a layer decide its digest, so they must not depend on the CPU, the number
//! of cores or the host's libraries. Each `CHUNK_SIZE` piece of input is compressed on its own
//! (no shared dictionary, a fresh compressor), so chunks can be compressed on any number of
//! threads and joined in order: gzip chunks are deflate blocks of one member, as pigz joins
//! them ([`gzip`]); zstd chunks are frames one after another ([`zstd`]). Which compressor and
//! level is part of every layer's derivation ([`Compressor::derivation`]).

mod gzip;
mod zstd;

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Input bytes per independently compressed chunk. Part of the output format: changing it
/// changes every layer digest, so it is tied to `layer::FORMAT_VERSION`.
pub(crate) const CHUNK_SIZE: usize = 1 << 20;

/// gzip level used for layers unless `--level` says otherwise. Level 1 of this compressor is
/// several times faster than level 6 and about 10% larger on a JDK (figures in BENCHMARKS.md);
/// go-containerregistry and ko make the same choice. Part of every layer's digest.
pub(crate) const DEFAULT_LEVEL: u8 = 1;

/// zstd's own default level: faster than gzip level 1 here and smaller than gzip level 6.
pub(crate) const DEFAULT_ZSTD_LEVEL: u8 = 3;

/// A layer's compression format (`--compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// gzip (miniz_oxide): every runtime reads it.
    Gzip,
    /// zstd (libzstd 1.5.7): faster and smaller; see docs/internals.md for which runtimes read it.
    Zstd,
}

/// The pinned compressor of a layer and its level: part of every layer's digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compressor {
    pub codec: Codec,
    pub level: u8,
}

impl Compressor {
    /// `level`, or the codec's default; a level the codec does not have is refused.
    pub fn new(codec: Codec, level: Option<u8>) -> Result<Compressor, String> {
        let (default, levels) = match codec {
            Codec::Gzip => (DEFAULT_LEVEL, 1..=9),
            Codec::Zstd => (DEFAULT_ZSTD_LEVEL, 1..=19),
        };
        let level = level.unwrap_or(default);
        if !levels.contains(&level) {
            return Err(format!(
                "--level {level} is not a {} level (expected {} to {})",
                codec.name(),
                levels.start(),
                levels.end()
            ));
        }
        Ok(Compressor { codec, level })
    }

    pub fn gzip(level: u8) -> Compressor {
        Compressor { codec: Codec::Gzip, level }
    }

    /// The OCI media type of a layer compressed so.
    pub fn media_type(&self) -> &'static str {
        match self.codec {
            Codec::Gzip => MEDIA_TYPE_GZIP,
            Codec::Zstd => MEDIA_TYPE_ZSTD,
        }
    }

    /// What decides the bytes, for a layer's derivation hash: the implementation (its pinned
    /// version), the chunk size and the level.
    pub fn derivation(&self) -> serde_json::Value {
        let name = match self.codec {
            Codec::Gzip => "miniz_oxide-chunked-gzip",
            Codec::Zstd => "libzstd-1.5.7-chunk-frames",
        };
        serde_json::json!({ "name": name, "chunk": CHUNK_SIZE, "level": self.level })
    }

    fn compress_chunk(self, data: &[u8]) -> Vec<u8> {
        match self.codec {
            Codec::Gzip => gzip::deflate_chunk(self.level, data),
            Codec::Zstd => zstd::frame(self.level, data),
        }
    }
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }
}

pub(crate) const MEDIA_TYPE_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(crate) const MEDIA_TYPE_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

type Job = (u64, Vec<u8>);

/// Compression threads and the chunks in flight between them and the writer.
struct Pool {
    jobs: Option<Sender<Job>>,
    results: Receiver<Job>,
    workers: Vec<JoinHandle<()>>,
    pending: BTreeMap<u64, Vec<u8>>,
    in_flight: usize,
    max_in_flight: usize,
}

impl Pool {
    fn new(threads: usize, max_in_flight: usize, compressor: Compressor) -> Self {
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
                    if res_tx.send((seq, compressor.compress_chunk(&data))).is_err() {
                        return;
                    }
                })
            })
            .collect();
        Pool { jobs: Some(job_tx), results: res_rx, workers, pending: BTreeMap::new(), in_flight: 0, max_in_flight }
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

/// How a layer writer may use the machine: `threads` compression threads, and at most
/// `chunks_in_flight` chunks handed to them at once (the writer's memory). Never the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parallelism {
    pub threads: usize,
    pub chunks_in_flight: usize,
}

impl Parallelism {
    /// `threads` threads with two chunks each in flight: one compressed while one waits.
    pub fn threads(threads: usize) -> Parallelism {
        Parallelism { threads, chunks_in_flight: 2 * threads }
    }

    /// The share of each of `writers` layer writers running at once: every one may use every
    /// thread (one finishing early leaves its cores to the others), but the chunks in flight,
    /// and so the memory, are divided between them.
    pub fn shared_by(self, writers: usize) -> Parallelism {
        Parallelism { threads: self.threads, chunks_in_flight: (self.chunks_in_flight / writers.max(1)).max(2) }
    }
}

/// A streaming layer compressor whose output depends only on the input bytes and the compressor.
pub struct LayerWriter<W: Write> {
    inner: W,
    compressor: Compressor,
    buffer: Vec<u8>,
    /// gzip's trailer: the CRC-32 and length of the input.
    crc: crc32fast::Hasher,
    total_in: u64,
    next_seq: u64,
    next_to_write: u64,
    pool: Option<Pool>,
}

impl<W: Write> LayerWriter<W> {
    /// `parallelism` only changes the speed, never the bytes.
    pub fn new(mut inner: W, compressor: Compressor, parallelism: Parallelism) -> io::Result<Self> {
        if compressor.codec == Codec::Gzip {
            inner.write_all(&gzip::HEADER)?;
        }
        let pool = (parallelism.threads > 1)
            .then(|| Pool::new(parallelism.threads, parallelism.chunks_in_flight.max(1), compressor));
        Ok(LayerWriter {
            inner,
            compressor,
            buffer: Vec::with_capacity(CHUNK_SIZE),
            crc: crc32fast::Hasher::new(),
            total_in: 0,
            next_seq: 0,
            next_to_write: 0,
            pool,
        })
    }

    fn dispatch_chunk(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_SIZE));
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.pool.is_none() {
            let out = self.compressor.compress_chunk(&chunk);
            self.inner.write_all(&out)?;
            self.next_to_write += 1;
            return Ok(());
        }
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

    /// Writes the rest and what ends the stream; returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        // A zstd stream needs one frame, even for no input; gzip ends with its own empty block.
        let first_zstd_frame = self.compressor.codec == Codec::Zstd && self.next_seq == 0;
        if !self.buffer.is_empty() || first_zstd_frame {
            self.dispatch_chunk()?;
        }
        while self.pool.as_ref().is_some_and(|p| p.in_flight > 0) {
            self.pool.as_mut().expect("pool").receive_one()?;
            self.write_ready()?;
        }
        debug_assert_eq!(self.next_to_write, self.next_seq);
        self.pool.take();
        if self.compressor.codec == Codec::Gzip {
            let crc = std::mem::take(&mut self.crc).finalize();
            self.inner.write_all(&gzip::trailer(crc, self.total_in))?;
        }
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for LayerWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = CHUNK_SIZE - self.buffer.len();
        let n = room.min(buf.len());
        self.buffer.extend_from_slice(&buf[..n]);
        if self.compressor.codec == Codec::Gzip {
            self.crc.update(&buf[..n]);
        }
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
pub(crate) fn default_threads() -> usize {
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

    fn compress(compressor: Compressor, data: &[u8], threads: usize) -> Vec<u8> {
        compress_with(compressor, data, Parallelism::threads(threads))
    }

    fn compress_with(compressor: Compressor, data: &[u8], parallelism: Parallelism) -> Vec<u8> {
        let mut w = LayerWriter::new(Vec::new(), compressor, parallelism).unwrap();
        // Odd write sizes: chunking must not depend on how the caller splits writes.
        for piece in data.chunks(77_777) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap()
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(data).read_to_end(&mut back).unwrap();
        back
    }

    /// Decoded by ruzstd, an implementation independent of the encoder's library.
    fn unzstd(data: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let mut frame = ruzstd::decoding::StreamingDecoder::new(&mut rest).unwrap();
            frame.read_to_end(&mut back).unwrap();
        }
        back
    }

    const ZSTD: Compressor = Compressor { codec: Codec::Zstd, level: DEFAULT_ZSTD_LEVEL };

    #[test]
    fn output_is_the_same_for_any_thread_count_and_round_trips() {
        let data = sample(3 * CHUNK_SIZE + 12345);
        for compressor in [Compressor::gzip(DEFAULT_LEVEL), ZSTD] {
            let one = compress(compressor, &data, 1);
            assert_eq!(one, compress(compressor, &data, 2), "{compressor:?}");
            assert_eq!(one, compress(compressor, &data, 8), "{compressor:?}");
            // Eight threads sharing the chunks in flight with three other layers.
            assert_eq!(one, compress_with(compressor, &data, Parallelism::threads(8).shared_by(4)));
            let back = if compressor.codec == Codec::Gzip { gunzip(&one) } else { unzstd(&one) };
            assert_eq!(back, data, "{compressor:?}");
            assert!(one.len() < data.len());
        }
    }

    #[test]
    fn zstd_layers_are_one_frame_per_chunk() {
        let data = sample(2 * CHUNK_SIZE + 1);
        let out = compress(ZSTD, &data, 2);
        let frames = out.windows(4).filter(|w| *w == zstd::MAGIC).count();
        // Three frames (the magic may also occur by chance inside compressed data).
        assert!(frames >= 3, "{frames} frames");
        let mut rest = &out[..];
        let mut count = 0;
        while !rest.is_empty() {
            let mut frame = ruzstd::decoding::StreamingDecoder::new(&mut rest).unwrap();
            io::copy(&mut frame, &mut io::sink()).unwrap();
            count += 1;
        }
        assert_eq!(count, 3);
    }

    /// The bytes every machine must give for the same input: a CPU, a CPU feature, a compiler
    /// or a library version that changed them would fail here (CI runs on other machines).
    #[test]
    fn the_bytes_are_pinned() {
        #[cfg(target_arch = "x86_64")]
        if std::env::var_os("IMGBUILD_TEST_BARE_CPU").is_some() {
            let present = [
                ("sse4.1", std::arch::is_x86_feature_detected!("sse4.1")),
                ("avx2", std::arch::is_x86_feature_detected!("avx2")),
                ("bmi2", std::arch::is_x86_feature_detected!("bmi2")),
                ("sha", std::arch::is_x86_feature_detected!("sha")),
            ];
            assert!(present.iter().all(|(_, has)| !has), "the bare CPU has {present:?}");
        }
        let data = sample(CHUNK_SIZE + 4321);
        let digest = |c: Compressor| crate::digest::Sha256Digest::of(&compress(c, &data, 2)).to_string();
        let pinned = [
            (Compressor::gzip(1), "sha256:e8232692de002645a2f390c71cac56bacccd69215c62f59ff339abe3afd1b71f"),
            (Compressor::gzip(6), "sha256:7664b1ac7a2527040866cb546349903da583182191de988e0608e5eae6905faf"),
            (ZSTD, "sha256:df9375d86257c192edce14f9be8e1c97e4aea7a15e05a2c75ba388195269877f"),
            (
                Compressor { codec: Codec::Zstd, level: 19 },
                "sha256:b52f2113af0784cfc85a5feba8a4084c65c8c3dd5007d45a165d9ccb6d5506db",
            ),
        ];
        let found: Vec<String> = pinned.iter().map(|(c, _)| digest(*c)).collect();
        let expected: Vec<&str> = pinned.iter().map(|(_, d)| *d).collect();
        assert_eq!(found, expected, "gzip 1, gzip 6, zstd 3, zstd 19");
    }

    /// The pinned bytes again, in this test binary run by `qemu-x86_64` as a CPU without the
    /// extensions this machine has (no SSE4, AVX2, BMI2 or SHA): libzstd's BMI2 code and any
    /// SIMD path in a dependency would show here.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_bytes_are_the_same_on_a_cpu_without_extensions() {
        if std::env::var_os("IMGBUILD_TEST_BARE_CPU").is_some() {
            return; // this is the run under qemu: the pinned test does the checking there
        }
        // The table `imgbuild doctor tests` prints names it and its package (a unit test cannot
        // run the binary).
        let qemu = crate::host::QEMU_USER;
        let package = crate::host::package_of(qemu);
        assert!(
            crate::host::find_program(qemu).is_some(),
            "{qemu} is not installed (Debian's {package}); run .ci/install"
        );
        let test_binary = std::env::current_exe().unwrap();
        let out = std::process::Command::new(qemu)
            .args(["-cpu", "qemu64"])
            .arg(test_binary)
            .args(["--exact", "compress::tests::the_bytes_are_pinned", "--test-threads", "1"])
            .env("IMGBUILD_TEST_BARE_CPU", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("1 passed"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn empty_input_is_a_valid_stream() {
        let out = compress(Compressor::gzip(DEFAULT_LEVEL), &[], 1);
        assert!(gunzip(&out).is_empty());
        assert_eq!(&out[..10], &gzip::HEADER);
        let out = compress(ZSTD, &[], 1);
        assert!(unzstd(&out).is_empty());
        assert_eq!(&out[..4], &zstd::MAGIC);
    }

    #[test]
    fn levels_are_checked_per_codec() {
        assert_eq!(Compressor::new(Codec::Gzip, None), Ok(Compressor::gzip(DEFAULT_LEVEL)));
        assert_eq!(Compressor::new(Codec::Zstd, Some(19)).map(|c| c.level), Ok(19));
        assert!(Compressor::new(Codec::Gzip, Some(10)).unwrap_err().contains("gzip level (expected 1 to 9)"));
        assert!(Compressor::new(Codec::Zstd, Some(0)).is_err());
        assert!(Compressor::new(Codec::Zstd, Some(20)).is_err());
    }
}
