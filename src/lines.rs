//! Splitting a daemon's byte stream into bounded lines, and framing them.
//!
//! This module does no I/O: bytes go in, lines come out. It is the part of
//! sidecar-init that sees arbitrary bytes from programs we do not control, so
//! it is small, allocation-bounded and fuzzed (`fuzz/`).

/// The smallest line limit [`LineSplitter`] accepts: room for one UTF-8
/// character of the longest kind, so a split always makes progress.
pub const MIN_LINE_MAX: usize = 4;

/// Splits a byte stream into lines of at most `max` bytes.
///
/// Contract:
/// - A line ends at `\n`; the terminator is not part of the emitted line.
///   `\r` is ordinary data. An empty line (`\n\n`) is emitted as empty.
/// - A line longer than `max` bytes is emitted as several pieces of at most
///   `max` bytes each. A cut never falls inside an incomplete UTF-8 sequence
///   when moving it back (by at most 3 bytes) avoids that, so a valid
///   multi-byte character is never torn in two.
/// - The same bytes give the same lines however they are chunked into
///   [`feed`](Self::feed) calls.
/// - No byte is dropped or invented: the emitted lines, each followed by
///   `\n` except pieces of a split line and a final unterminated line, are
///   exactly the input.
/// - A last line without a terminator is held until [`finish`](Self::finish).
/// - Memory held between calls is at most `max` bytes.
///
/// ```
/// use sidecar_init::lines::{LineSplitter, push_framed};
///
/// let mut splitter = LineSplitter::new(8);
/// let mut out = Vec::new();
/// let mut frame = |line: &[u8]| push_framed(&mut out, b"[web] ", line);
/// splitter.feed(b"hello\nwor", &mut frame);
/// splitter.feed(b"ld, a long line\nbad \xff\nno newline", &mut frame);
/// splitter.finish(&mut frame);
/// assert_eq!(
///     String::from_utf8(out).unwrap(),
///     "[web] hello\n[web] world, a\n[web]  long li\n[web] ne\n[web] bad \u{fffd}\n[web] no newli\n[web] ne\n"
/// );
/// ```
#[derive(Debug)]
pub struct LineSplitter {
    /// Bytes of the current line that arrived in earlier `feed` calls.
    /// Invariant: holds no `\n` and at most `max` bytes.
    partial: Vec<u8>,
    /// The line limit; at least [`MIN_LINE_MAX`].
    max: usize,
}

impl LineSplitter {
    /// A splitter with line limit `max` (raised to [`MIN_LINE_MAX`] if lower).
    pub fn new(max: usize) -> Self {
        LineSplitter {
            partial: Vec::new(),
            max: max.max(MIN_LINE_MAX),
        }
    }

    /// The line limit in bytes.
    pub fn max(&self) -> usize {
        self.max
    }

    /// How many bytes of an unfinished line are held.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Consumes `data`, calling `emit` with every line it completes.
    pub fn feed(&mut self, data: &[u8], mut emit: impl FnMut(&[u8])) {
        self.feed_until(data, |line| {
            emit(line);
            true
        });
    }

    /// Like [`feed`](Self::feed), but stops right after a line for which
    /// `emit` returns false, and returns how many bytes of `data` it
    /// consumed. The caller feeds the rest later, in order; the lines are
    /// then the same as from one `feed`. Every call consumes input or emits
    /// a line (it consumes nothing when the line it stops after was held
    /// from earlier calls: a full-length piece). This lets the caller bound its
    /// output buffer whatever the expansion of the input (a stream of empty
    /// lines grows by the prefix length per byte).
    pub fn feed_until(&mut self, data: &[u8], mut emit: impl FnMut(&[u8]) -> bool) -> usize {
        let total = data.len();
        let mut data = data;
        while !data.is_empty() {
            // The current line may take `room` more bytes before it is too long;
            // a newline right after them still ends a line of exactly `max`.
            let room = self.max - self.partial.len();
            let window = &data[..data.len().min(room + 1)];
            let more = if let Some(i) = find_newline(window) {
                let more = if self.partial.is_empty() {
                    emit(&data[..i])
                } else {
                    self.partial.extend_from_slice(&data[..i]);
                    let more = emit(&self.partial);
                    self.partial.clear();
                    more
                };
                data = &data[i + 1..];
                more
            } else if data.len() > room {
                // More than `max` bytes without a newline: emit a piece.
                if self.partial.is_empty() {
                    let cut = utf8_safe_cut(&data[..self.max]);
                    let more = emit(&data[..cut]);
                    data = &data[cut..];
                    more
                } else {
                    self.partial.extend_from_slice(&data[..room]);
                    data = &data[room..];
                    let cut = utf8_safe_cut(&self.partial);
                    let more = emit(&self.partial[..cut]);
                    self.partial.drain(..cut);
                    more
                }
            } else {
                self.partial.extend_from_slice(data);
                data = &[];
                true
            };
            if !more {
                break;
            }
        }
        total - data.len()
    }

    /// Ends the stream: emits the unterminated last line, if any, and
    /// releases the memory held for it.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            emit(&self.partial);
        }
        self.partial = Vec::new();
    }
}

/// Where to cut a too-long line whose first `max` bytes are `head`: at
/// `head.len()`, or up to 3 bytes earlier so that a UTF-8 sequence that
/// `head` starts but does not finish moves whole to the next piece.
fn utf8_safe_cut(head: &[u8]) -> usize {
    let len = head.len();
    // Look back over at most 3 bytes for the lead byte of the last sequence.
    for back in 1..=3.min(len - 1) {
        let b = head[len - back];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: keep looking for its lead
        }
        let needed = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return len, // ASCII or an invalid byte: nothing to keep whole
        };
        return if needed > back { len - back } else { len };
    }
    len
}

/// The index of the first `\n` in `haystack`.
#[inline]
pub fn find_newline(haystack: &[u8]) -> Option<usize> {
    // SIMD search, whatever the C library: musl's memchr (the static
    // build's) scans a word at a time, several times slower on long lines.
    memchr::memchr(b'\n', haystack)
}

/// Appends `prefix`, `line` with invalid UTF-8 replaced by U+FFFD (as
/// `String::from_utf8_lossy` does), and `\n` to `out`: the framing of one
/// line, in its plainest form (the event loop frames with
/// [`frame::frame_chunk`](crate::frame::frame_chunk), which must give the
/// same bytes).
pub fn push_framed(out: &mut Vec<u8>, prefix: &[u8], line: &[u8]) {
    out.extend_from_slice(prefix);
    out.extend_from_slice(String::from_utf8_lossy(line).as_bytes());
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, usize) {
        let mut s = LineSplitter::new(max);
        let mut lines = Vec::new();
        for c in chunks {
            s.feed(c, |l| lines.push(l.to_vec()));
        }
        let held = s.buffered();
        s.finish(|l| lines.push(l.to_vec()));
        (lines, held)
    }

    fn lines(max: usize, chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        split(max, chunks).0
    }

    #[test]
    fn splits_on_newline_and_keeps_empty_lines() {
        assert_eq!(
            lines(64, &[b"a\n\nbc\n"]),
            vec![b"a".to_vec(), vec![], b"bc".to_vec()]
        );
    }

    #[test]
    fn carriage_return_is_data() {
        assert_eq!(lines(64, &[b"a\r\n"]), vec![b"a\r".to_vec()]);
    }

    #[test]
    fn last_line_without_newline_waits_for_finish() {
        let mut s = LineSplitter::new(64);
        let mut got = Vec::new();
        s.feed(b"one\ntwo", |l| got.push(l.to_vec()));
        assert_eq!(got, vec![b"one".to_vec()]);
        assert_eq!(s.buffered(), 3);
        s.finish(|l| got.push(l.to_vec()));
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn a_line_across_chunks_is_joined() {
        assert_eq!(
            lines(64, &[b"he", b"ll", b"o\nx"]),
            vec![b"hello".to_vec(), b"x".to_vec()]
        );
    }

    #[test]
    fn a_line_of_exactly_max_is_one_line() {
        assert_eq!(lines(4, &[b"abcd\n"]), vec![b"abcd".to_vec()]);
        assert_eq!(lines(4, &[b"ab", b"cd", b"\n"]), vec![b"abcd".to_vec()]);
    }

    #[test]
    fn a_long_line_is_split_without_losing_bytes() {
        assert_eq!(
            lines(4, &[b"abcdefghij\n"]),
            vec![b"abcd".to_vec(), b"efgh".to_vec(), b"ij".to_vec()]
        );
        assert_eq!(
            lines(4, &[b"abc", b"defg", b"hij\n"]),
            vec![b"abcd".to_vec(), b"efgh".to_vec(), b"ij".to_vec()]
        );
    }

    #[test]
    fn held_bytes_never_exceed_max() {
        let (_, held) = split(8, &[b"abcdefgh"]);
        assert_eq!(held, 8);
        let (_, held) = split(8, &[b"abcdefg", b"hijklmnopq"]);
        assert!(held <= 8);
    }

    #[test]
    fn a_split_does_not_tear_a_utf8_character() {
        // "é" is two bytes; a cut after 5 bytes would fall inside it.
        let text = "abcdé!\n".as_bytes();
        assert_eq!(
            lines(5, &[text]),
            vec![b"abcd".to_vec(), "é!".as_bytes().to_vec()]
        );
        // A four-byte character straddling the cut.
        let text = "ab😀cd\n".as_bytes();
        assert_eq!(
            lines(4, &[text]),
            vec![b"ab".to_vec(), "😀".as_bytes().to_vec(), b"cd".to_vec()]
        );
    }

    #[test]
    fn invalid_bytes_are_cut_at_the_limit() {
        assert_eq!(
            lines(4, &[b"\xff\xff\xff\xff\xff\n"]),
            vec![b"\xff\xff\xff\xff".to_vec(), b"\xff".to_vec()]
        );
    }

    #[test]
    fn chunking_does_not_change_lines() {
        let input: Vec<u8> = "x\nhello wörld, a rather long line 😀😀😀\n\n\u{fffd}tail"
            .bytes()
            .chain([0xff, 0xc3, b'\n', 0xe2, 0x82])
            .collect();
        for max in [4, 5, 7, 16, 1000] {
            let whole = lines(max, &[&input]);
            for size in 1..input.len() {
                let chunks: Vec<&[u8]> = input.chunks(size).collect();
                assert_eq!(lines(max, &chunks), whole, "max {max} chunk size {size}");
            }
        }
    }

    #[test]
    fn framing_replaces_invalid_utf8() {
        let mut out = Vec::new();
        push_framed(&mut out, b"[a] ", b"ok \xff\xfe end");
        assert_eq!(out, "[a] ok \u{fffd}\u{fffd} end\n".as_bytes());
        out.clear();
        push_framed(&mut out, b"[a] ", b"");
        assert_eq!(out, b"[a] \n");
    }

    #[test]
    fn feed_until_stops_after_a_line_and_resumes_exactly() {
        let input: &[u8] = b"one\ntwo\nthree four five six\n\n\nlast";
        for max in [4, 7, 64] {
            let want = lines(max, &[input]);
            for budget in 1..6 {
                let mut s = LineSplitter::new(max);
                let mut got = Vec::new();
                let mut rest = input;
                while !rest.is_empty() {
                    let mut n = 0;
                    let used = s.feed_until(rest, |l| {
                        got.push(l.to_vec());
                        n += 1;
                        n < budget
                    });
                    assert!(used > 0, "no progress");
                    rest = &rest[used..];
                }
                s.finish(|l| got.push(l.to_vec()));
                assert_eq!(got, want, "max {max} budget {budget}");
            }
        }
    }

    #[test]
    fn find_newline_matches_a_byte_search() {
        for s in [&b""[..], b"\n", b"abc", b"abc\ndef\n", &[b'x'; 100]] {
            assert_eq!(find_newline(s), s.iter().position(|&b| b == b'\n'));
        }
    }
}
