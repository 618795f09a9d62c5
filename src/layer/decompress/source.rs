//! The compressed bytes of a source as its decoders read them: a buffered reader that counts
//! what it hands out (so a message can say at which byte of the file something starts) and can
//! look a few bytes ahead (the magic of what follows a member) without consuming them.

use std::io::{self, BufRead, Read};

const CAPACITY: usize = 256 * 1024;

pub(super) struct Source<R> {
    inner: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Bytes of the file before `buf[start]`.
    offset: u64,
    /// Reading the file itself failed (not its contents): that error is passed on as it is.
    pub(super) failed: bool,
}

impl<R: Read> Source<R> {
    pub(super) fn new(inner: R) -> Self {
        Source { inner, buf: vec![0; CAPACITY].into_boxed_slice(), start: 0, end: 0, offset: 0, failed: false }
    }

    /// Where the next byte is in the file.
    pub(super) fn offset(&self) -> u64 {
        self.offset
    }

    /// The next `n` bytes (fewer only at the end of the file), not consumed.
    pub(super) fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        debug_assert!(n <= CAPACITY);
        if self.end - self.start < n {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            while self.end < n {
                match self.read_inner(self.end) {
                    Ok(0) => break,
                    Ok(read) => self.end += read,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(&self.buf[self.start..self.end.min(self.start + n)])
    }

    /// Consumes zero bytes up to the next other byte or the end of the file; how many.
    pub(super) fn skip_zeros(&mut self) -> io::Result<u64> {
        let mut skipped = 0;
        loop {
            let buf = self.fill_buf()?;
            let zeros = buf.iter().take_while(|b| **b == 0).count();
            let more = !buf.is_empty() && zeros == buf.len();
            self.consume(zeros);
            skipped += zeros as u64;
            if !more {
                return Ok(skipped);
            }
        }
    }

    fn read_inner(&mut self, at: usize) -> io::Result<usize> {
        loop {
            match self.inner.read(&mut self.buf[at..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
                Ok(n) => return Ok(n),
            }
        }
    }
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = {
            let buf = self.fill_buf()?;
            let n = buf.len().min(out.len());
            out[..n].copy_from_slice(&buf[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for Source<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.start == self.end {
            self.start = 0;
            self.end = self.read_inner(0)?;
        }
        Ok(&self.buf[self.start..self.end])
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(self.end - self.start);
        self.start += n;
        self.offset += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out one byte per read, so that every lookahead crosses a read.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(out.len()).min(1);
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn peeking_consumes_nothing_and_offsets_count_what_was_consumed() {
        let mut s = Source::new(Trickle(b"ab\0\0\0cdef"));
        assert_eq!(s.peek(4).unwrap(), b"ab\0\0");
        let mut two = [0u8; 2];
        s.read_exact(&mut two).unwrap();
        assert_eq!((&two, s.offset()), (b"ab", 2));
        assert_eq!(s.skip_zeros().unwrap(), 3);
        assert_eq!((s.offset(), s.peek(10).unwrap()), (5, &b"cdef"[..]));
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert_eq!((rest.as_slice(), s.offset(), s.fill_buf().unwrap()), (&b"cdef"[..], 9, &b""[..]));
    }
}
