//! The framed-output buffer and the fast path that fills it.
//!
//! Every daemon line leaves as `[name] line\n`. The plain way to build that
//! (the [`LineSplitter`] emitting each line, [`lines::push_framed`] copying
//! prefix and line) costs two variable-length copies, a UTF-8 check and a
//! closure call per line; on a stream of short lines that per-line work,
//! not the bytes, was most of sidecar-init's CPU time. [`frame_chunk`]
//! takes the common case — complete, valid lines of ordinary length —
//! straight from the read buffer into [`FrameBuf`] with fixed-size block
//! copies that may run up to a block past either end and that look for
//! non-ASCII bytes on the way (only a line that has some gets a UTF-8
//! check). Everything else (a line begun in an earlier read, a line too
//! long, invalid UTF-8, the unterminated rest) goes to the splitter, and
//! both paths give the same bytes.
//!
//! No I/O here: the event loop reads into a buffer, calls [`frame_chunk`]
//! and writes [`FrameBuf::pending`].

use crate::lines::{self, LineSplitter};

/// The unit of the fast path's copies. A copy rounds its length up to whole
/// blocks, so it may read up to `BLOCK - 1` bytes past a line's end (the
/// caller leaves that much slack after its read buffer) and write as far
/// past the framed line (spare room the next line overwrites).
pub const BLOCK: usize = 32;

/// The longest line (newline excluded) the fast path frames; longer ones
/// take the splitter's path, which also cuts those over the line limit.
pub const FAST_LINE_MAX: usize = 4096;

/// A daemon's `[name] ` prefix, kept padded with zeros to whole blocks so
/// that it is copied as blocks too.
#[derive(Debug, Clone)]
pub struct Prefix {
    /// The prefix and then zeros, `len.next_multiple_of(BLOCK)` bytes
    /// (at least one block).
    padded: Vec<u8>,
    len: usize,
}

impl Prefix {
    pub fn new(text: &[u8]) -> Prefix {
        let mut padded = text.to_vec();
        padded.resize(text.len().next_multiple_of(BLOCK).max(BLOCK), 0);
        Prefix {
            padded,
            len: text.len(),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.padded[..self.len]
    }
}

/// Framed bytes waiting to be written, `mem[start..end]`.
///
/// Written bytes are dropped from the front by moving `start`, not by
/// moving the rest: the pending bytes are moved to the front only when
/// the tail lacks room, which the spare memory (twice the nominal
/// capacity) makes rare. Memory is touched only as it is used.
#[derive(Debug)]
pub struct FrameBuf {
    /// Invariant: `start <= end <= mem.len()`. Bytes past `end` are
    /// scratch (the fast path's block copies overrun into them).
    mem: Vec<u8>,
    start: usize,
    end: usize,
    /// `mem`'s usual length; a longer line may grow it, and it shrinks back
    /// once everything is written.
    base: usize,
}

impl FrameBuf {
    /// A buffer for about `capacity` pending bytes.
    pub fn new(capacity: usize) -> FrameBuf {
        // Zeroed memory comes straight from the kernel: untouched pages
        // cost no RSS.
        let base = 2 * capacity + FAST_LINE_MAX + 4 * BLOCK;
        FrameBuf {
            mem: vec![0; base],
            start: 0,
            end: 0,
            base,
        }
    }

    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The bytes waiting to be written, oldest first.
    pub fn pending(&self) -> &[u8] {
        &self.mem[self.start..self.end]
    }

    /// Drops the first `n` pending bytes (they were written).
    pub fn consume(&mut self, n: usize) {
        self.start += n.min(self.len());
        if self.start == self.end {
            self.clear();
        }
    }

    /// Drops every pending byte, and memory a long line made it take.
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        if self.mem.len() > self.base {
            self.mem.truncate(self.base);
            self.mem.shrink_to_fit();
        }
    }

    /// Appends `bytes` unchanged.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.tail(bytes.len())[..bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Appends `prefix`, `line` with invalid UTF-8 replaced by U+FFFD (as
    /// `String::from_utf8_lossy` does) and `\n`: what
    /// [`lines::push_framed`] appends to a `Vec`.
    pub fn push_framed(&mut self, prefix: &[u8], line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.as_bytes();
        let (p, n) = (prefix.len(), text.len());
        let dst = self.tail(p + n + 1);
        dst[..p].copy_from_slice(prefix);
        dst[p..p + n].copy_from_slice(text);
        dst[p + n] = b'\n';
        self.end += p + n + 1;
    }

    /// At least `n` bytes of room after `end`, moving the pending bytes to
    /// the front, or growing, if the tail is shorter.
    fn tail(&mut self, n: usize) -> &mut [u8] {
        if self.mem.len() - self.end < n {
            if self.start > 0 {
                self.mem.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.mem.len() - self.end < n {
                self.mem.resize(self.end + n, 0);
            }
        }
        &mut self.mem[self.end..]
    }

    /// The fast path: frames the complete lines at the start of `src[..end]`
    /// while fewer than `limit` bytes are pending. Stops before a line
    /// longer than `max` or [`FAST_LINE_MAX`], before the unterminated
    /// rest, and where a block copy would read past `src`. Returns how many
    /// bytes of `src` it framed.
    ///
    /// Also stops before a line that is not valid UTF-8 (it needs
    /// replacement characters). The bytes of `src` past `end` only ever land
    /// in scratch memory.
    fn frame_lines(
        &mut self,
        src: &[u8],
        end: usize,
        prefix: &Prefix,
        max: usize,
        limit: usize,
    ) -> usize {
        // At most the usual buffer size per call, whatever `limit` is: the
        // room asked for below stays small.
        let want = limit.saturating_sub(self.len()).min(self.base);
        if want == 0 {
            return 0;
        }
        let max = max.min(FAST_LINE_MAX);
        let (plen, pblocks) = (prefix.len, prefix.padded.as_slice());
        // Room for `want` bytes and the one line that may overshoot them,
        // every copy rounded up to whole blocks.
        self.tail(want + pblocks.len() + max + 1 + BLOCK);
        let stop = self.end + want;
        let mut at = self.end;
        let mut pos = 0;
        while at < stop {
            let rest = &src[pos..end];
            let window = &rest[..rest.len().min(max + 1)];
            let Some(i) = lines::find_newline(window) else {
                break;
            };
            let n = i + 1; // the line and its newline
            let span = n.next_multiple_of(BLOCK);
            // `span >= BLOCK` and `plen + BLOCK >= pblocks.len()`, so the
            // prefix's blocks fit in `dst` too.
            let (Some(from), Some(dst)) = (
                src.get(pos..pos + span),
                self.mem.get_mut(at..at + plen + span),
            ) else {
                break;
            };
            copy_blocks(dst, pblocks);
            let high = copy_blocks(&mut dst[plen..], from);
            // A byte >= 0x80 in the blocks, maybe past the line: look closer.
            if high != 0 && std::str::from_utf8(&src[pos..pos + i]).is_err() {
                break;
            }
            at += plen + n;
            pos += n;
        }
        self.end = at;
        pos
    }
}

/// Copies the whole blocks of `src` to the start of `dst` (`src.len()` is
/// a multiple of [`BLOCK`]) and returns the OR of their bytes' high bits:
/// zero if every byte copied is ASCII.
///
/// The copies are fixed-size ones the compiler inlines. A plain copy loop
/// would be turned into a call to the C library's memcpy, and musl's, in
/// the static build, has a high fixed cost (it was 15% of the CPU time);
/// the ASCII check that reads each block keeps the loop a loop, and spares
/// a separate pass over the bytes.
#[inline(always)]
fn copy_blocks(dst: &mut [u8], src: &[u8]) -> u8 {
    // Byte-wise ORs of whole blocks: vector instructions, like the copies.
    let mut any = [0u8; BLOCK];
    for (d, s) in dst.chunks_exact_mut(BLOCK).zip(src.chunks_exact(BLOCK)) {
        let block: &[u8; BLOCK] = s.try_into().expect("a whole block");
        for (a, b) in any.iter_mut().zip(block) {
            *a |= b;
        }
        d.copy_from_slice(block);
    }
    any.iter().fold(0, |a, b| a | b) & 0x80
}

/// Frames the chunk `src[..end]`, read from the daemon whose line state is
/// `splitter`, into `out` while fewer than `limit` bytes are pending there
/// (the last line may overshoot it). Returns how many bytes it framed; the
/// caller feeds the rest later, and the lines are then those of one
/// `splitter.feed` of everything.
///
/// `src` may extend past `end`: with [`BLOCK`] bytes of slack there, the
/// fast path can frame the chunk's last line too. Those bytes never reach
/// the output.
pub fn frame_chunk(
    splitter: &mut LineSplitter,
    out: &mut FrameBuf,
    prefix: &Prefix,
    src: &[u8],
    end: usize,
    limit: usize,
) -> usize {
    let mut pos = 0;
    while pos < end && out.len() < limit {
        if splitter.buffered() == 0 {
            pos += out.frame_lines(&src[pos..], end - pos, prefix, splitter.max(), limit);
            if pos == end || out.len() >= limit {
                break;
            }
        }
        // The fast path stopped short of a line it does not take: the
        // splitter takes that one line, then the fast path goes on.
        pos += splitter.feed_until(&src[pos..end], |line| {
            out.push_framed(prefix.as_bytes(), line);
            false
        });
    }
    pos
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames `input` in chunks of `chunk` bytes as the event loop does
    /// (`props::frame_chunks`: `slack` bytes that must never show after
    /// each chunk, everything written whenever 64 bytes are pending).
    fn frame(name: &str, max: usize, input: &[u8], chunk: usize, slack: usize) -> Vec<u8> {
        let chunks: Vec<&[u8]> = input.chunks(chunk.max(1)).collect();
        crate::props::frame_chunks(&format!("[{name}] "), max, &chunks, 64, slack, 0)
    }

    fn reference(name: &str, max: usize, input: &[u8]) -> Vec<u8> {
        let prefix = format!("[{name}] ");
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        s.feed(input, |l| {
            lines::push_framed(&mut out, prefix.as_bytes(), l)
        });
        s.finish(|l| lines::push_framed(&mut out, prefix.as_bytes(), l));
        out
    }

    #[test]
    fn matches_the_splitter_path_for_any_chunking_and_slack() {
        let mut input = Vec::new();
        for i in 0..300usize {
            input.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, i % 97));
            if i % 7 == 0 {
                input.extend_from_slice("é€😀".as_bytes());
            }
            if i % 31 == 0 {
                input.push(0xff); // invalid UTF-8 in some chunks
            }
            input.push(b'\n');
        }
        input.extend_from_slice(b"no newline at the end");
        for name in ["d", "a-name-longer-than-one-block-of-32-bytes"] {
            for max in [4, 50, 96, 4096] {
                let want = reference(name, max, &input);
                for chunk in [1, 7, 100, 333, 4096, input.len()] {
                    for slack in [0, 5, BLOCK] {
                        assert_eq!(
                            frame(name, max, &input, chunk, slack),
                            want,
                            "name {name}, max {max}, chunk {chunk}, slack {slack}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn stops_near_the_limit_and_resumes() {
        let prefix = Prefix::new(b"[x] ");
        let mut s = LineSplitter::new(1024);
        let mut out = FrameBuf::new(1024);
        let mut src = b"0123456789\n".repeat(100);
        let end = src.len();
        src.resize(end + BLOCK, 0);
        let used = frame_chunk(&mut s, &mut out, &prefix, &src, end, 50);
        // Four 15-byte framed lines: the fourth starts below 50, overshoots.
        assert_eq!((used, out.len()), (44, 60));
        assert_eq!(&out.pending()[..15], b"[x] 0123456789\n");
        out.consume(60);
        assert!(out.is_empty());
        let used2 = frame_chunk(&mut s, &mut out, &prefix, &src[used..], end - used, 10_000);
        assert_eq!(used + used2, end);
        assert_eq!(out.len(), 100 * 15 - 60);
    }

    #[test]
    fn consume_moves_start_and_room_is_made_by_moving_the_rest() {
        let mut b = FrameBuf::new(8);
        let base = b.mem.len();
        b.extend(&vec![b'x'; base - 4]);
        b.consume(base - 10);
        assert_eq!(b.pending(), b"xxxxxx");
        b.extend(b"0123456789");
        assert_eq!(b.pending(), b"xxxxxx0123456789");
        assert_eq!(b.mem.len(), base, "made room by moving, not growing");
        b.consume(usize::MAX);
        assert!(b.is_empty());
    }

    #[test]
    fn a_long_line_grows_the_buffer_until_it_is_written() {
        let mut b = FrameBuf::new(8);
        let base = b.mem.len();
        b.push_framed(b"[a] ", &vec![b'y'; 3 * base]);
        assert_eq!(b.len(), 3 * base + 5);
        b.consume(10);
        assert!(b.mem.len() > base);
        b.consume(b.len());
        assert_eq!(b.mem.len(), base);
        assert_eq!(b.mem.capacity(), base);
    }

    #[test]
    fn invalid_utf8_is_replaced_as_the_splitter_path_does() {
        let mut b = FrameBuf::new(8);
        b.push_framed(b"[a] ", b"ok \xff\xfe end");
        assert_eq!(b.pending(), "[a] ok \u{fffd}\u{fffd} end\n".as_bytes());
    }
}
