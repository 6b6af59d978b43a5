//! The framed-output buffer and the fast path that fills it.
//!
//! Every daemon line leaves as prefix + line + suffix + `\n`: `[name] line`
//! in plain (the suffix is empty), with a time before the name when
//! timestamps are on, or a JSON object (`{"time":...,"line":"` + the line
//! escaped + `"}`), as [`crate::format`] builds the frame. The plain way to
//! build that (the [`LineSplitter`] emitting each line,
//! [`FrameBuf::push_line`] copying prefix, line and suffix) costs two
//! variable-length copies, a UTF-8 check and a closure call per line; on a
//! stream of short lines that per-line work, not the bytes, was most of
//! sidecar-init's CPU time. [`frame_chunk`] takes the common case —
//! complete, valid lines of ordinary length — straight from the read
//! buffer into [`FrameBuf`] with fixed-size block copies that may run up
//! to a block past either end and that look for non-ASCII bytes (and, in
//! JSON, for bytes that need escaping) on the way: only a line that has
//! some gets a closer look (a UTF-8 check; in JSON, an escaping copy in
//! place). Everything else (a line begun in an earlier read, a line too
//! long, invalid UTF-8, the unterminated rest) goes to the splitter, and
//! both paths give the same bytes.
//!
//! Per 100-byte line (instructions, `examples/framebench.rs`): plain
//! about 183, with a timestamp 187, JSON 241, JSON of a line with 16
//! quotes about 1,400.
//!
//! No I/O here: the event loop reads into a buffer, calls [`frame_chunk`]
//! and writes [`FrameBuf::pending`].

use crate::format;
use crate::lines::{self, LineSplitter};

/// The unit of the fast path's copies. A copy rounds its length up to whole
/// blocks, so it may read up to `BLOCK - 1` bytes past a line's end (the
/// caller leaves that much slack after its read buffer) and write as far
/// past the framed line (spare room the next line overwrites).
pub const BLOCK: usize = 32;

/// The longest line (newline excluded) the fast path frames; longer ones
/// take the splitter's path, which also cuts those over the line limit.
pub const FAST_LINE_MAX: usize = 4096;

/// A daemon line's frame: the bytes before each line, and for JSON the
/// bytes after it and the escaping of the line itself. Both kept padded
/// with zeros to whole blocks, so that they are copied as blocks too.
///
/// A frame that holds a time is rebuilt for each read ([`Prefix::rebuild`],
/// or [`format::update_daemon_frame`]); the memory is reused.
#[derive(Debug, Clone)]
pub struct Prefix {
    /// The prefix and then zeros, `len.next_multiple_of(BLOCK)` bytes
    /// (at least one block).
    padded: Vec<u8>,
    len: usize,
    /// JSON frames: the suffix, `\n`, then zeros, whole blocks; empty for
    /// plain frames.
    end_padded: Vec<u8>,
    /// The suffix's length (0 for plain frames).
    suffix_len: usize,
    /// Each line is JSON-escaped (after invalid UTF-8 is replaced) and
    /// followed by the suffix.
    json: bool,
}

impl Prefix {
    /// A plain frame: `text`, then the line with invalid UTF-8 replaced,
    /// then `\n`.
    pub fn new(text: &[u8]) -> Prefix {
        let mut p = Prefix {
            padded: Vec::new(),
            len: 0,
            end_padded: Vec::new(),
            suffix_len: 0,
            json: false,
        };
        p.rebuild(|out| out.extend_from_slice(text));
        p
    }

    /// A JSON frame: `prefix`, then the line with invalid UTF-8 replaced
    /// and escaped as [`format::json_escape`] does, then `suffix` and `\n`.
    pub fn json(prefix: &[u8], suffix: &[u8]) -> Prefix {
        let mut p = Prefix::new(prefix);
        let mut end = suffix.to_vec();
        end.push(b'\n');
        end.resize(end.len().next_multiple_of(BLOCK), 0);
        p.end_padded = end;
        p.suffix_len = suffix.len();
        p.json = true;
        p
    }

    /// Replaces the prefix with what `write` appends to an empty `Vec`,
    /// reusing the memory; the suffix and the escaping stay.
    pub fn rebuild(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        self.padded.clear();
        write(&mut self.padded);
        self.len = self.padded.len();
        self.padded
            .resize(self.len.next_multiple_of(BLOCK).max(BLOCK), 0);
    }

    /// The bytes before each line.
    pub fn as_bytes(&self) -> &[u8] {
        &self.padded[..self.len]
    }

    /// The bytes after each line, before its `\n`.
    pub fn suffix(&self) -> &[u8] {
        &self.end_padded[..self.suffix_len]
    }

    /// Lines are JSON-escaped.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// The most bytes one framed line of at most `max` bytes takes: every
    /// byte replaced by U+FFFD (3 bytes) in plain, escaped as `\u00XX`
    /// (6 bytes) in JSON.
    pub fn framed_max(&self, max: usize) -> usize {
        let grow = if self.json { format::ESCAPE_MAX } else { 3 };
        self.len + grow * max + self.suffix_len + 1
    }
}

/// Framed bytes waiting to be written, `mem[start..end]`.
///
/// Written bytes are dropped from the front by moving `start`, not by
/// moving the rest: the pending bytes are moved to the front only when
/// the tail lacks room, which the spare memory (twice the nominal
/// capacity) makes rare. Memory is touched only as it is used.
///
/// Memory bound: framing stops once `limit` bytes are pending (see
/// [`frame_chunk`]), and one framed line may overshoot that, so at most
/// `limit + Prefix::framed_max(max)` bytes are pending: the prefix, the
/// line of at most `max` bytes grown by its worst expansion (3× for
/// invalid UTF-8 in plain, 6× for control characters as `\u00XX` in
/// JSON), the suffix and the newline. `mem` is `2 * capacity` plus 24 KiB
/// (room for the fast path to escape a line in place); it grows only to
/// hold a line that does not fit there (a JSON line of control characters
/// at a 64 KiB limit takes up to 384 KiB), and shrinks back once
/// everything is written.
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
        let base = 2 * capacity + format::ESCAPE_MAX * FAST_LINE_MAX + 4 * BLOCK;
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
    /// [`lines::push_framed`] appends to a `Vec`. The same as
    /// [`push_line`](Self::push_line) with a plain frame.
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

    /// Appends one line in `frame`: its prefix, `line` with invalid UTF-8
    /// replaced by U+FFFD (as `String::from_utf8_lossy` does) and, in a
    /// JSON frame, escaped (as [`format::json_escape`] does), its suffix
    /// and `\n`. `line` should hold no `\n` (a JSON frame would escape it;
    /// a plain one would give two lines). This is the frame of every line
    /// [`frame_chunk`] gives to the splitter, and of the last unterminated
    /// line at [`LineSplitter::finish`].
    pub fn push_line(&mut self, frame: &Prefix, line: &[u8]) {
        if !frame.json {
            self.push_framed(frame.as_bytes(), line);
            return;
        }
        let (p, s) = (frame.len, frame.suffix_len);
        // Room for the worst case; only what is written is pending.
        let dst = self.tail(p + format::escape_room(line.len()) + s + 1);
        dst[..p].copy_from_slice(frame.as_bytes());
        let n = format::escape_lossy_into(&mut dst[p..], line);
        dst[p + n..p + n + s].copy_from_slice(frame.suffix());
        dst[p + n + s] = b'\n';
        self.end += p + n + s + 1;
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
    ///
    /// For plain frames; [`frame_json_lines`](Self::frame_json_lines) is
    /// its JSON twin. `P`, when not 0, is the prefix's length in blocks,
    /// known at compile time (the usual prefixes get a copy of this
    /// function of their own, with a straight copy of the prefix).
    #[inline(never)]
    fn frame_lines<const P: usize>(
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
            copy_sized_blocks::<P>(dst, pblocks);
            let high = copy_blocks(&mut dst[plen..], from);
            // A byte >= 0x80 in the blocks, maybe past the line: look closer.
            if high && std::str::from_utf8(&src[pos..pos + i]).is_err() {
                break;
            }
            at += plen + n;
            pos += n;
        }
        self.end = at;
        pos
    }

    /// [`frame_lines`](Self::frame_lines) for a JSON frame: the same
    /// contract, each line escaped and followed by the frame's suffix.
    ///
    /// The newline search is fused with the copy: block by block, the line
    /// is copied while its bytes are compared with `\n` and flagged if
    /// [`unusual`] (all vector instructions, one branch per block, on
    /// whether the block holds a newline). Only the flagged bytes before
    /// the newline count. A line without flags is framed as copied; a
    /// flagged one that is valid UTF-8 is escaped into place (if it only
    /// has non-ASCII characters, that copies it again); one that is not
    /// stops the fast path.
    ///
    /// `P` and `S`, when not 0, are the prefix's and the suffix's length in
    /// blocks, known at compile time (the usual frames get a copy of this
    /// function of their own, with straight copies and no size checks).
    #[inline(never)]
    fn frame_json_lines<const P: usize, const S: usize>(
        &mut self,
        src: &[u8],
        end: usize,
        frame: &Prefix,
        max: usize,
        limit: usize,
    ) -> usize {
        let want = limit.saturating_sub(self.len()).min(self.base);
        if want == 0 {
            return 0;
        }
        let max = max.min(FAST_LINE_MAX);
        let (plen, pblocks) = (frame.len, frame.padded.as_slice());
        let (slen, sblocks) = (frame.suffix_len, frame.end_padded.as_slice());
        // A line's room: its blocks (up to one past `max`) or its escaped
        // bytes, then the suffix's blocks.
        let line_room = format::escape_room(max).max(max + BLOCK) + sblocks.len();
        self.tail(want + pblocks.len() + line_room);
        let stop = self.end + want;
        let mut at = self.end;
        let mut pos = 0;
        while at < stop {
            let Some(dst) = self.mem.get_mut(at..at + plen + line_room) else {
                break;
            };
            copy_sized_blocks::<P>(dst, pblocks);
            let out = &mut dst[plen..];
            // The blocks that may hold the newline of a line of at most
            // `max` bytes, as far as `src` goes.
            let blocks = (max / BLOCK + 1).min((src.len() - pos) / BLOCK);
            let window = &src[pos..pos + blocks * BLOCK];
            let mut flags = [0u8; BLOCK];
            let mut newline = None;
            for (k, (from, to)) in window
                .chunks_exact(BLOCK)
                .zip(out.chunks_exact_mut(BLOCK))
                .enumerate()
            {
                let block: &[u8; BLOCK] = from.try_into().expect("a whole block");
                to.copy_from_slice(block);
                if let Some(j) = find_newline_in(block) {
                    // Only the line's bytes count, not the newline or what
                    // follows it.
                    let mask = &MASKS[BLOCK - j..][..BLOCK];
                    for ((f, &b), &m) in flags.iter_mut().zip(block).zip(mask) {
                        *f |= unusual(b) & m;
                    }
                    newline = Some(k * BLOCK + j);
                    break;
                }
                for (f, &b) in flags.iter_mut().zip(block) {
                    *f |= unusual(b);
                }
            }
            // No newline (a line too long, or the unterminated rest), or
            // one past the chunk, in the slack, or too far.
            let Some(i) = newline.filter(|&i| i <= max && pos + i < end) else {
                break;
            };
            let line = &src[pos..pos + i];
            let mut len = i; // of the line as framed
            if any(&flags) {
                // A byte >= 0x80, < 0x20 or `"` or `\`: look closer.
                // (An OR of all the bytes is quicker than `is_ascii`'s
                // early exit on lines this short.)
                let ascii = line.iter().fold(0, |a, &b| a | b) < 0x80;
                if !ascii && std::str::from_utf8(line).is_err() {
                    break;
                }
                len = format::escape_valid_into(out, line);
            }
            copy_sized_blocks::<S>(&mut out[len..], sblocks);
            at += plen + len + slen + 1;
            pos += i + 1;
        }
        self.end = at;
        pos
    }
}

/// Copies the whole blocks of `src` to the start of `dst` (`src.len()` is
/// a multiple of [`BLOCK`]) and returns whether any byte copied is not
/// ASCII (has its high bit set).
///
/// The copies are fixed-size ones the compiler inlines. A plain copy loop
/// would be turned into a call to the C library's memcpy, and musl's, in
/// the static build, has a high fixed cost (it was 15% of the CPU time);
/// the ASCII check that reads each block keeps the loop a loop, and spares
/// a separate pass over the bytes.
#[inline(always)]
fn copy_blocks(dst: &mut [u8], src: &[u8]) -> bool {
    // Byte-wise ORs of whole blocks: vector instructions, like the copies.
    let mut any = [0u8; BLOCK];
    for (d, s) in dst.chunks_exact_mut(BLOCK).zip(src.chunks_exact(BLOCK)) {
        let block: &[u8; BLOCK] = s.try_into().expect("a whole block");
        for (a, b) in any.iter_mut().zip(block) {
            *a |= b;
        }
        d.copy_from_slice(block);
    }
    // Tested as signed bytes: one mask of the sign bits.
    any.iter().any(|&b| (b as i8) < 0)
}

/// [`copy_blocks`] of `N` blocks (straight copies), or of any number when
/// `N` is 0.
#[inline(always)]
fn copy_sized_blocks<const N: usize>(dst: &mut [u8], blocks: &[u8]) {
    if N == 0 {
        copy_blocks(dst, blocks);
    } else {
        dst[..N * BLOCK].copy_from_slice(&blocks[..N * BLOCK]);
    }
}

/// `MASKS[BLOCK - k..][..BLOCK]` keeps the first `k` bytes of a block.
static MASKS: [u8; 2 * BLOCK] = {
    let mut m = [0u8; 2 * BLOCK];
    let mut i = 0;
    while i < BLOCK {
        m[i] = 0xff;
        i += 1;
    }
    m
};

/// 0xff for a byte a JSON line cannot take as it is, or that may start a
/// character that is not valid UTF-8: below 0x20 or from 0x80 (one signed
/// compare), `"` and `\`. 0 for the others.
#[inline(always)]
fn unusual(b: u8) -> u8 {
    0u8.wrapping_sub(u8::from(((b as i8) < 0x20) | (b == b'"') | (b == b'\\')))
}

/// Whether any byte of `flags` is not zero. (An OR of the bytes tested
/// against zero: the compiler makes it a vector OR, compare and mask test.)
#[inline(always)]
fn any(flags: &[u8; BLOCK]) -> bool {
    flags.iter().fold(0, |a, &f| a | f) != 0
}

/// The index of the first `\n` in `block`. Whether there is one is a
/// vector compare and a mask test; only when there is one (once per line),
/// where it is: the classic test for a zero byte in each 64-bit word, whose
/// lowest flag is exact.
#[inline(always)]
fn find_newline_in(block: &[u8; BLOCK]) -> Option<usize> {
    let newline = |b: u8| 0u8.wrapping_sub(u8::from(b == b'\n'));
    if block.iter().fold(0, |a, &b| a | newline(b)) == 0 {
        return None;
    }
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    block.chunks_exact(8).enumerate().find_map(|(w, word)| {
        let x = u64::from_le_bytes(word.try_into().expect("eight bytes")) ^ (ONES * 0x0a);
        let zero = x.wrapping_sub(ONES) & !x & HIGHS;
        (zero != 0).then(|| 8 * w + zero.trailing_zeros() as usize / 8)
    })
}

/// Frames the chunk `src[..end]`, read from the daemon whose line state is
/// `splitter`, in `frame` into `out` while fewer than `limit` bytes are
/// pending there (the last line may overshoot it, by at most
/// `frame.framed_max(splitter.max())` bytes). Returns how many bytes it
/// framed; the caller feeds the rest later, and the lines are then those of
/// one `splitter.feed` of everything, each framed as
/// [`FrameBuf::push_line`] frames it.
///
/// `src` may extend past `end`: with [`BLOCK`] bytes of slack there, the
/// fast path can frame the chunk's last line too. Those bytes never reach
/// the output.
///
/// The frame may change between calls (a new time per read): each line is
/// framed with the frame of the call that completes it.
pub fn frame_chunk(
    splitter: &mut LineSplitter,
    out: &mut FrameBuf,
    frame: &Prefix,
    src: &[u8],
    end: usize,
    limit: usize,
) -> usize {
    let mut pos = 0;
    while pos < end && out.len() < limit {
        if splitter.buffered() == 0 {
            let (rest, len, max) = (&src[pos..], end - pos, splitter.max());
            pos += if frame.json {
                match (frame.padded.len() / BLOCK, frame.end_padded.len() / BLOCK) {
                    (2, 1) => out.frame_json_lines::<2, 1>(rest, len, frame, max, limit),
                    (3, 1) => out.frame_json_lines::<3, 1>(rest, len, frame, max, limit),
                    _ => out.frame_json_lines::<0, 0>(rest, len, frame, max, limit),
                }
            } else {
                match frame.padded.len() / BLOCK {
                    1 => out.frame_lines::<1>(rest, len, frame, max, limit),
                    2 => out.frame_lines::<2>(rest, len, frame, max, limit),
                    _ => out.frame_lines::<0>(rest, len, frame, max, limit),
                }
            };
            if pos == end || out.len() >= limit {
                break;
            }
        }
        // The fast path stopped short of a line it does not take: the
        // splitter takes that one line, then the fast path goes on.
        pos += splitter.feed_until(&src[pos..end], |line| {
            out.push_line(frame, line);
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
        let frame = Prefix::new(format!("[{name}] ").as_bytes());
        crate::props::frame_chunks(&[frame], max, &chunks, 64, slack, 0)
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
        // Prefixes of 1, 2 and 3 blocks.
        for name in [
            "d",
            "a-name-longer-than-one-block-of-32-bytes",
            "a-name-longer-than-two-blocks-of-thirty-two-bytes-each-so-three-blocks",
        ] {
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

    fn json_frame(name: &str) -> Prefix {
        Prefix::json(
            format!(r#"{{"time":"2026-12-01T09:00:00.123456Z","daemon":"{name}","line":""#)
                .as_bytes(),
            b"\"}",
        )
    }

    fn json_reference(frame: &Prefix, max: usize, input: &[u8]) -> Vec<u8> {
        let mut s = LineSplitter::new(max);
        let mut out = FrameBuf::new(1 << 20);
        s.feed(input, |l| out.push_line(frame, l));
        s.finish(|l| out.push_line(frame, l));
        out.pending().to_vec()
    }

    #[test]
    fn json_matches_the_splitter_path_for_any_chunking_and_slack() {
        let mut input = Vec::new();
        for i in 0..300usize {
            input.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, i % 97));
            match i % 11 {
                0 => input.extend_from_slice("é€😀".as_bytes()),
                1 => input.push(b'"'),
                2 => input.extend_from_slice(b"\\\t\x01\x7f"),
                3 => input.push(0xff),
                _ => {}
            }
            input.push(b'\n');
        }
        input.extend_from_slice(b"no newline at the end \"");
        // Prefixes of 2, 3 and 4 blocks.
        for name in [
            "d",
            "web-frontend",
            "a-name-longer-than-one-block-of-32-bytes",
        ] {
            let frame = json_frame(name);
            for max in [4, 50, 96, 4096] {
                let want = json_reference(&frame, max, &input);
                for chunk in [1, 7, 100, 333, 4096, input.len()] {
                    for slack in [0, 5, BLOCK] {
                        let chunks: Vec<&[u8]> = input.chunks(chunk).collect();
                        let got = crate::props::frame_chunks(
                            std::slice::from_ref(&frame),
                            max,
                            &chunks,
                            64,
                            slack,
                            0,
                        );
                        assert!(
                            got == want,
                            "name {name}, max {max}, chunk {chunk}, slack {slack}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn json_lines_are_escaped_and_suffixed() {
        let frame = Prefix::json(b"<", b">");
        let mut b = FrameBuf::new(64);
        let mut s = LineSplitter::new(100);
        let src = b"plain\nq\"uote\n\xff\n\ttab\nend\n";
        let mut padded = src.to_vec();
        padded.resize(src.len() + BLOCK, b'"');
        assert_eq!(
            frame_chunk(&mut s, &mut b, &frame, &padded, src.len(), 1000),
            src.len()
        );
        assert_eq!(
            b.pending(),
            "<plain>\n<q\\\"uote>\n<\u{fffd}>\n<\\ttab>\n<end>\n".as_bytes()
        );
    }

    /// The escape check looks at the line only: its newline, and what
    /// follows in the last block, never send it off the fast path.
    #[test]
    fn the_fast_path_ignores_bytes_past_the_line() {
        let frame = json_frame("d");
        for len in 0..3 * BLOCK {
            // Each line is followed by one the fast path does not take.
            let mut src = Vec::new();
            for _ in 0..4 {
                src.extend(std::iter::repeat_n(b'x', len));
                src.extend_from_slice(b"\n\"\\\x01\xff\n");
            }
            let end = src.len();
            src.resize(end + BLOCK, b'"');
            let mut b = FrameBuf::new(1 << 16);
            let used = b.frame_json_lines::<0, 0>(&src, end, &frame, 4096, 1 << 16);
            assert_eq!(
                used,
                len + 1,
                "len {len}: the fast path took the first line only"
            );
            let mut want = frame.as_bytes().to_vec();
            want.extend(std::iter::repeat_n(b'x', len));
            want.extend_from_slice(b"\"}\n");
            assert_eq!(b.pending(), want, "len {len}");
        }
    }

    #[test]
    fn unusual_bytes_and_newlines_are_found() {
        for b in 0..=255u8 {
            let plain = (0x20..0x80).contains(&b) && b != b'"' && b != b'\\';
            assert_eq!(unusual(b) == 0, plain, "{b:#x}");
        }
        let mut flags = [0u8; BLOCK];
        assert!(!any(&flags));
        for j in 0..BLOCK {
            flags = [0; BLOCK];
            flags[j] = 0xff;
            assert!(any(&flags), "{j}");
            let mut block = [b'a'; BLOCK];
            assert_eq!(find_newline_in(&block), None);
            block[j] = b'\n';
            assert_eq!(find_newline_in(&block), Some(j));
            block[BLOCK - 1] = b'\n';
            assert_eq!(find_newline_in(&block), Some(j));
        }
    }

    #[test]
    fn a_frame_is_rebuilt_in_place() {
        let mut frame = Prefix::json(b"{\"line\":\"", b"\"}");
        let before = frame.padded.as_ptr();
        frame.rebuild(|out| out.extend_from_slice(b"<<"));
        assert_eq!(frame.as_bytes(), b"<<");
        assert_eq!(frame.padded.len(), BLOCK);
        assert_eq!(frame.padded.as_ptr(), before, "no new allocation");
        assert_eq!(frame.suffix(), b"\"}");
        assert!(frame.is_json());
        assert_eq!(frame.framed_max(10), 2 + 60 + 2 + 1);
        assert_eq!(Prefix::new(b"[a] ").framed_max(10), 4 + 30 + 1);
    }

    #[test]
    fn a_json_line_of_control_bytes_grows_sixfold() {
        let frame = Prefix::json(b"<", b">");
        let mut b = FrameBuf::new(8);
        b.push_line(&frame, &[1; 100]);
        assert_eq!(b.len(), frame.framed_max(100));
        assert_eq!(&b.pending()[..7], b"<\\u0001");
    }
}
