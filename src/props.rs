//! Property checks shared by the fuzz targets (`fuzz/`) and the stable
//! corpus replay test (`tests/fuzz_corpus.rs`).
//!
//! Each `check_*` function takes arbitrary bytes, derives everything it needs
//! from them (line limit, chunking, daemon name, a generated table) and
//! panics with a message naming the broken property when one fails. Not part
//! of the public interface.

use crate::frame::{self, FrameBuf, Prefix};
use crate::lines::{self, LineSplitter};
use crate::procfile::{self, DaemonSpec};

/// A cursor that hands out the input's bytes one by one, then zeros.
struct Source<'a> {
    data: &'a [u8],
}

impl<'a> Source<'a> {
    fn new(data: &'a [u8]) -> Self {
        Source { data }
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        self.byte() as usize % n
    }

    /// The next `n` bytes (fewer at the end).
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// The line limit and the chunk sizes a splitter input starts with:
/// one byte for the limit (4..=259), one for how many chunk sizes follow
/// (0..=7; none means "all at once"), then the sizes. A size byte below
/// 0x80 is a size of 0..=127 (0 is an empty `feed`); from 0x80 up it is a
/// multiple of 16 up to 2032.
fn splitter_plan(src: &mut Source<'_>) -> (usize, Vec<usize>) {
    let max = 4 + src.byte() as usize;
    let count = src.below(8);
    let sizes = src
        .take(count)
        .iter()
        .map(|&b| {
            if b < 0x80 {
                b as usize
            } else {
                (b as usize - 0x80) * 16
            }
        })
        .collect();
    (max, sizes)
}

/// Cuts `data` into chunks whose sizes cycle through `sizes`; one chunk
/// when `sizes` is empty or all zero.
fn chunks<'a>(data: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    if sizes.iter().all(|&s| s == 0) {
        return vec![data];
    }
    let mut out = Vec::new();
    let mut rest = data;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (head, tail) = rest.split_at(size.min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out
}

/// Feeds `chunks` to a fresh splitter with limit `max`, checking the memory
/// bound after every call, and returns every line it emits.
fn split_lines(max: usize, chunks: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut s = LineSplitter::new(max);
    assert_eq!(s.max(), max, "a limit of at least 4 is kept as given");
    let mut lines = Vec::new();
    for chunk in chunks {
        s.feed(chunk, |l| lines.push(l.to_vec()));
        assert!(
            s.buffered() <= s.max(),
            "splitter holds {} bytes between calls, more than its limit {}",
            s.buffered(),
            s.max()
        );
    }
    s.finish(|l| lines.push(l.to_vec()));
    assert_eq!(s.buffered(), 0, "finish leaves bytes held");
    lines
}

/// The length of the valid UTF-8 character starting at `at`, if one does.
fn char_len_at(data: &[u8], at: usize) -> Option<usize> {
    let window = &data[at..(at + 4).min(data.len())];
    let first = window.utf8_chunks().next()?;
    first.valid().chars().next().map(char::len_utf8)
}

/// The line splitter's properties, for any bytes.
///
/// Input layout: see `splitter_plan`; the rest of the input is the byte
/// stream. Checks that the lines are the same whatever the chunking (all at
/// once, byte by byte, the planned chunks), that no line is longer than the
/// limit or holds `\n`, that the lines joined with the newlines that ended
/// them are exactly the input, that a line is only cut when it is too long
/// and never inside a valid UTF-8 character, and that the splitter never
/// holds more than its limit between calls.
pub fn check_lines(data: &[u8]) {
    let mut src = Source::new(data);
    let (max, sizes) = splitter_plan(&mut src);
    let input = src.rest();

    assert_eq!(
        lines::find_newline(input),
        input.iter().position(|&b| b == b'\n'),
        "find_newline disagrees with a byte search"
    );

    let whole = split_lines(max, &[input]);
    let planned = split_lines(max, &chunks(input, &sizes));
    assert_eq!(
        planned, whole,
        "max {max}: chunks of sizes {sizes:?} give other lines than one feed"
    );
    let bytewise: Vec<&[u8]> = input.chunks(1).collect();
    let bytewise = split_lines(max, &bytewise);
    assert_eq!(
        bytewise, whole,
        "max {max}: byte-by-byte feeding gives other lines than one feed"
    );

    // Walk the input along the lines: each line is the next bytes of the
    // input, followed by the `\n` that ended it unless it is a piece of a
    // longer line or the unterminated last line.
    let mut pos = 0;
    for (i, line) in whole.iter().enumerate() {
        assert!(
            line.len() <= max,
            "line {i} has {} bytes, more than the limit {max}",
            line.len()
        );
        assert!(!line.contains(&b'\n'), "line {i} contains a newline");
        let end = pos + line.len();
        assert!(
            end <= input.len() && input[pos..end] == line[..],
            "line {i} is not the next {} input bytes at offset {pos}: bytes were invented or lost",
            line.len()
        );
        pos = end;
        if input.get(pos) == Some(&b'\n') {
            pos += 1;
            continue;
        }
        if pos == input.len() {
            assert_eq!(i + 1, whole.len(), "lines emitted after the end of input");
            continue;
        }
        // A piece of a longer line: only when the line did not fit, and at
        // most 3 bytes short of the limit (to keep a character whole).
        let start = pos - line.len();
        let line_end = input[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(input.len(), |n| start + n);
        assert!(
            line_end - start > max,
            "line {i} ({} bytes at offset {start}) was cut although its full length {} fits the limit {max}",
            line.len(),
            line_end - start
        );
        assert!(
            line.len() + 3 >= max && !line.is_empty(),
            "line {i} was cut at {} bytes, more than 3 short of the limit {max}",
            line.len()
        );
        for back in 1..=3.min(line.len()) {
            if let Some(len) = char_len_at(input, pos - back) {
                assert!(
                    len <= back,
                    "line {i} was cut inside a valid {len}-byte UTF-8 character at offset {}",
                    pos - back
                );
            }
        }
    }
    assert_eq!(
        pos,
        input.len(),
        "the lines cover only {pos} of {} input bytes",
        input.len()
    );
}

/// The characters of a daemon name.
const NAME_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-";

fn gen_name(src: &mut Source<'_>, longest: usize) -> String {
    let len = 1 + src.below(longest);
    (0..len)
        .map(|_| NAME_CHARS[src.below(NAME_CHARS.len())] as char)
        .collect()
}

/// The framing properties, for any bytes.
///
/// Input layout: one byte for the name's length and one per name
/// character, then a splitter plan (see `splitter_plan`), two bytes of an
/// output buffer size, one byte for the read buffer's slack, one for how
/// much of the buffer a "write" leaves pending, then the byte stream.
///
/// The chunks are fed with `feed_until`, stopping once the framed output
/// reaches the buffer size, the buffer then "written" and the rest of the
/// chunk fed again. Checks that every such call consumes input or emits a
/// line, that the buffer never exceeds its size by more than one framed
/// line, that the lines are those of a plain `feed` of the whole input,
/// that the framed output is valid UTF-8 and that every output line is
/// `[name] ` followed by one emitted line with invalid UTF-8 replaced as
/// `String::from_utf8_lossy` does.
///
/// Then the same chunks go through `frame::frame_chunk`, as the event loop
/// frames them: each copied into a buffer with slack after it (filled with
/// newlines and high bytes that must never show), the same buffer size,
/// and each "write" taking all but up to half the buffer size (so framing
/// resumes with bytes pending, and the buffer moves them to its front).
/// Checks the same progress and bound, and that the output is byte for
/// byte the one above.
pub fn check_framing(data: &[u8]) {
    let mut src = Source::new(data);
    let name = gen_name(&mut src, 40);
    let prefix = format!("[{name}] ");
    let (max, sizes) = splitter_plan(&mut src);
    let room = (u16::from_le_bytes([src.byte(), src.byte()]) as usize * 4).max(1);
    let slack = src.below(2 * frame::BLOCK);
    let keep = room / 2 * src.byte() as usize / 255;
    let input = src.rest();
    let p = prefix.len();
    // The most one framed line can take: prefix, every byte replaced by
    // U+FFFD (3 bytes), newline.
    let one_line = p + 3 * max + 1;

    let mut s = LineSplitter::new(max);
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut out = Vec::new();
    for chunk in chunks(input, &sizes) {
        let mut rest = chunk;
        loop {
            let mut buf = Vec::new(); // the output buffer, just written out
            let used = s.feed_until(rest, |l| {
                lines.push(l.to_vec());
                lines::push_framed(&mut buf, prefix.as_bytes(), l);
                buf.len() < room
            });
            assert!(
                buf.len() <= room + one_line,
                "max {max}, prefix {p}: the buffer reached {} bytes, more than {room} + one line",
                buf.len()
            );
            // A call may consume nothing when the line it emits was held
            // from earlier calls (a full-length piece), but then the next
            // call consumes: no call may do neither.
            assert!(
                used > 0 || !buf.is_empty() || rest.is_empty(),
                "feed_until neither consumed input nor emitted a line"
            );
            out.extend_from_slice(&buf);
            rest = &rest[used..];
            if rest.is_empty() {
                break;
            }
        }
    }
    s.finish(|l| {
        lines.push(l.to_vec());
        lines::push_framed(&mut out, prefix.as_bytes(), l);
    });
    assert_eq!(
        lines,
        split_lines(max, &[input]),
        "stopping and resuming changed the lines"
    );

    let fast = frame_chunks(&prefix, max, &chunks(input, &sizes), room, slack, keep);
    assert!(
        fast == out,
        "frame_chunk differs from the splitter path (max {max}, prefix {p}, room {room}, slack {slack}):\n{:?}\n{:?}",
        String::from_utf8_lossy(&fast),
        String::from_utf8_lossy(&out)
    );

    let text = match std::str::from_utf8(&out) {
        Ok(t) => t,
        Err(e) => panic!("framed output is not valid UTF-8: {e}"),
    };
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "framed output does not end with a newline"
    );
    let out_lines: Vec<&str> = text.split_terminator('\n').collect();
    assert_eq!(
        out_lines.len(),
        lines.len(),
        "{} lines emitted but {} output lines",
        lines.len(),
        out_lines.len()
    );
    for (i, (got, line)) in out_lines.iter().zip(&lines).enumerate() {
        let Some(body) = got.strip_prefix(&prefix) else {
            panic!("output line {i} {got:?} does not start with {prefix:?}");
        };
        assert_eq!(
            body,
            String::from_utf8_lossy(line),
            "output line {i} is not the emitted line with U+FFFD replacement"
        );
    }
}

/// Frames `chunks` as the event loop does (see `check_framing`), each
/// "write" leaving up to `keep` (< `room`) bytes pending, and returns
/// everything written.
pub(crate) fn frame_chunks(
    prefix: &str,
    max: usize,
    chunks: &[&[u8]],
    room: usize,
    slack: usize,
    keep: usize,
) -> Vec<u8> {
    let one_line = prefix.len() + 3 * max + 1;
    let prefix = Prefix::new(prefix.as_bytes());
    let mut s = LineSplitter::new(max);
    let mut buf = FrameBuf::new(room);
    let mut written = Vec::new();
    for chunk in chunks {
        let mut src = chunk.to_vec();
        src.extend((0..slack).map(|i| if i % 2 == 0 { b'\n' } else { 0xff }));
        let mut pos = 0;
        while pos < chunk.len() {
            let before = buf.len();
            let used = frame::frame_chunk(
                &mut s,
                &mut buf,
                &prefix,
                &src[pos..],
                chunk.len() - pos,
                room,
            );
            assert!(
                buf.len() <= room + one_line,
                "frame_chunk: the buffer reached {} bytes, more than {room} + one line",
                buf.len()
            );
            assert!(
                used > 0 || buf.len() > before,
                "frame_chunk neither consumed input nor framed a line"
            );
            pos += used;
            let n = buf.len() - buf.len().min(keep);
            written.extend_from_slice(&buf.pending()[..n]);
            buf.consume(n);
        }
    }
    s.finish(|l| buf.push_framed(prefix.as_bytes(), l));
    written.extend_from_slice(buf.pending());
    written
}

/// How many lines `text` has: a final `\n` ends the last line, it does not
/// start another.
fn line_count(text: &[u8]) -> usize {
    let newlines = text.iter().filter(|&&b| b == b'\n').count();
    if text.is_empty() || text.ends_with(b"\n") {
        newlines
    } else {
        newlines + 1
    }
}

/// The invariants of a table `parse` accepted.
fn check_table(table: &[DaemonSpec], text: &[u8]) {
    for (i, d) in table.iter().enumerate() {
        assert!(
            procfile::is_valid_name(&d.name),
            "parsed an invalid name {:?} from {text:?}",
            d.name
        );
        assert!(
            table[..i].iter().all(|e| e.name != d.name),
            "parsed duplicate name {:?} from {text:?}",
            d.name
        );
        assert!(!d.argv.is_empty(), "parsed an empty command from {text:?}");
        assert!(
            d.argv.iter().all(|w| !w.contains('\0')),
            "parsed a word with NUL from {text:?}"
        );
    }
}

/// Parses `text`, which must give `table`.
fn check_parses_to(text: &str, table: &[DaemonSpec], how: &str) {
    match procfile::parse(text.as_bytes()) {
        Ok(t) => assert_eq!(t, table, "{how} text {text:?} parses to another table"),
        Err(e) => panic!("{how} text {text:?} of table {table:?} does not parse: {e}"),
    }
}

/// Characters that words are made of: everything the Procfile syntax
/// treats specially, blanks, and some plain ones.
const WORD_CHARS: &[char] = &[
    ' ', '\t', '\r', '\n', '\'', '"', '\\', '#', '$', '`', ':', '=', ';', '|', '&', '*', '?', '~',
    '!', '{', '}', '(', ')', '<', '>', '%', '^', ',', '+', '@', '/', '.', '-', '_', 'a', 'Z', '0',
    '9', 'é', '😀', '\u{fffd}', '\u{7f}', '\u{1}',
];

fn gen_char(src: &mut Source<'_>) -> char {
    let b = src.byte();
    if b < 0xC0 {
        return WORD_CHARS[b as usize % WORD_CHARS.len()];
    }
    let code = u32::from(b & 0x3F) << 16 | u32::from(src.byte()) << 8 | u32::from(src.byte());
    match char::from_u32(code % 0x11_0000) {
        Some('\0') | None => 'é',
        Some(c) => c,
    }
}

/// A table drawn from the input: 0..=5 daemons with unique names, 1..=5
/// words each, words of 0..=11 arbitrary characters (no NUL).
fn gen_table(src: &mut Source<'_>) -> Vec<DaemonSpec> {
    let mut table: Vec<DaemonSpec> = Vec::new();
    for _ in 0..src.below(6) {
        let mut name = gen_name(src, 8);
        while table.iter().any(|d| d.name == name) {
            name.push('_');
        }
        let argv = (0..1 + src.below(5))
            .map(|_| (0..src.below(12)).map(|_| gen_char(src)).collect())
            .collect();
        table.push(DaemonSpec { name, argv });
    }
    table
}

/// Text without a newline, for comments.
fn gen_comment(src: &mut Source<'_>) -> String {
    (0..src.below(8))
        .map(|_| gen_char(src))
        .filter(|&c| c != '\n')
        .collect()
}

fn is_bare(c: char) -> bool {
    !matches!(c, ' ' | '\t' | '\r' | '\n' | '\'' | '"' | '\\' | '#')
}

/// `word` written in one of several equivalent ways, chosen by the input:
/// as `procfile::quote` writes it, or as a mix of bare characters,
/// backslash escapes, single- and double-quoted runs and backslash-newline
/// continuations. A zero byte picks `quote`.
fn encode_word(src: &mut Source<'_>, word: &str) -> String {
    if src.below(4) == 0 {
        return procfile::quote(word);
    }
    if word.is_empty() {
        return if src.below(2) == 0 { "''" } else { "\"\"" }.to_string();
    }
    let mut out = String::new();
    let chars: Vec<char> = word.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let run = 1 + src.below(4);
        let run = &chars[i..(i + run).min(chars.len())];
        i += run.len();
        match src.below(5) {
            // Single quotes hold anything but a single quote.
            0 if !run.contains(&'\'') => {
                out.push('\'');
                out.extend(run);
                out.push('\'');
            }
            // Double quotes: `"`, `\`, `$` and backquote escaped, and a
            // continuation that disappears.
            1 => {
                out.push('"');
                for &c in run {
                    if matches!(c, '"' | '\\' | '$' | '`') {
                        out.push('\\');
                    }
                    out.push(c);
                    if src.below(8) == 0 {
                        out.push_str("\\\n");
                    }
                }
                out.push('"');
            }
            // A continuation between two parts of a word.
            2 if !out.is_empty() => {
                out.push_str("\\\n");
                for &c in run {
                    push_escaped(&mut out, c);
                }
            }
            _ => {
                for &c in run {
                    push_escaped(&mut out, c);
                }
            }
        }
    }
    out
}

/// `c` outside quotes: bare if that is safe, else escaped with a backslash;
/// a newline, which a backslash would turn into a continuation, quoted.
fn push_escaped(out: &mut String, c: char) {
    if c == '\n' {
        out.push_str("'\n'");
    } else if is_bare(c) {
        out.push(c);
    } else {
        out.push('\\');
        out.push(c);
    }
}

/// A blank run of 0..=2 spaces, tabs or carriage returns.
fn blanks(src: &mut Source<'_>, at_least: usize) -> String {
    (0..at_least + src.below(3))
        .map(|_| [' ', '\t', ' ', '\r'][src.below(4)])
        .collect()
}

/// `table` written as a Procfile with blank and comment lines, blanks
/// around names and colons, continuations between words, trailing
/// comments, CRLF line ends and a missing final newline, all chosen by the
/// input.
fn render_noisy(src: &mut Source<'_>, table: &[DaemonSpec]) -> String {
    let mut text = String::new();
    for (k, d) in table.iter().enumerate() {
        for _ in 0..src.below(3) {
            match src.below(3) {
                0 => text.push('\n'),
                1 => {
                    text.push_str(&blanks(src, 0));
                    text.push('#');
                    text.push_str(&gen_comment(src));
                    text.push('\n');
                }
                _ => {
                    text.push_str(&blanks(src, 1));
                    text.push('\n');
                }
            }
        }
        text.push_str(&blanks(src, 0));
        text.push_str(&d.name);
        text.push_str(&blanks(src, 0));
        text.push(':');
        for w in &d.argv {
            match src.below(6) {
                0 => {
                    text.push_str(&blanks(src, 0));
                    text.push_str("\\\n");
                    text.push_str(&blanks(src, 0));
                    text.push(' ');
                }
                _ => text.push_str(&blanks(src, 1)),
            }
            text.push_str(&encode_word(src, w));
        }
        text.push_str(&blanks(src, 0));
        if src.below(4) == 1 {
            text.push_str(" #");
            text.push_str(&gen_comment(src));
        }
        let last = k + 1 == table.len();
        match src.below(4) {
            1 => text.push_str("\r\n"),
            2 if last => {}
            _ => text.push('\n'),
        }
    }
    text
}

/// The Procfile parser's properties, for any bytes.
///
/// The input is used twice. As Procfile text: `parse` must not panic, an
/// error must name a line the text has, and an accepted table must be valid
/// and survive `render` and `parse` again. As a recipe: a table is drawn
/// from it (names from the allowed characters, words of arbitrary
/// characters including quotes, backslashes, `#`, newlines, blanks and
/// empty words), and `render` of it, as well as a noisier but equivalent
/// rendering, must parse back to that table.
pub fn check_procfile(data: &[u8]) {
    match procfile::parse(data) {
        Ok(table) => {
            check_table(&table, data);
            check_parses_to(&procfile::render(&table), &table, "rendered");
        }
        Err(e) => {
            let lines = line_count(data);
            assert!(
                (1..=lines).contains(&e.line),
                "error \"{e}\" names line {} of a text with {lines} lines: {:?}",
                e.line,
                String::from_utf8_lossy(data)
            );
            assert!(!e.problem.is_empty(), "error without a problem");
        }
    }

    let mut src = Source::new(data);
    let table = gen_table(&mut src);
    check_parses_to(&procfile::render(&table), &table, "rendered");
    for w in table.iter().flat_map(|d| &d.argv) {
        let q = procfile::quote(w);
        if !w.is_empty() && q == *w {
            assert!(
                w.chars().all(is_bare),
                "quote leaves {w:?} bare though it has special characters"
            );
        }
    }
    let noisy = render_noisy(&mut src, &table);
    check_parses_to(&noisy, &table, "noisy");
}

// ---- Per-daemon options: grammar, check, users (fuzz target `options`) ----

use std::time::Duration;

use crate::check::Check;
use crate::grammar::{self, Item};
use crate::users;

/// The option grammar's and its values' properties, for any bytes.
///
/// Input layout: up to four parts separated by 0xFF bytes (which UTF-8
/// never holds): option text, `/etc/passwd` text, `/etc/group` text (each
/// read lossily as UTF-8; a missing part is a missing file), then a recipe
/// from which items, durations and signals are generated.
///
/// The option text goes through `grammar::items` and `grammar::names`, and
/// it and every item's value through every value parser: errors are one
/// line; accepted items have valid names, values without NUL and survive
/// `render`; text without quotes or backslashes splits as a plain model
/// says; durations are at most a day and exact; signals are 1 to 64; checks
/// keep their invariants and survive `Display`; users survive `Display`
/// and resolve without panicking, numeric ids as themselves. Generated
/// items survive `render` and a noisy equivalent text (blanks, empty items,
/// mixed quoting, continuations); generated Go-style durations parse to
/// their exact value or fail as more than a day; signal names parse in any
/// case, with or without `SIG`.
pub fn check_options(data: &[u8]) {
    let mut parts = data.splitn(4, |&b| b == 0xFF);
    let text = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let passwd = parts.next().map(String::from_utf8_lossy);
    let group = parts.next().map(String::from_utf8_lossy);
    let recipe = parts.next().unwrap_or_default();

    let mut values = vec![text.to_string()];
    if let Some(list) = check_items_text(&text) {
        values.extend(list.into_iter().map(|item| item.value));
    }
    for value in &values {
        check_value(value, passwd.as_deref(), group.as_deref());
    }

    let mut src = Source::new(recipe);
    let list = gen_items(&mut src);
    check_items_parse_to(&grammar::render(&list), &list, "rendered");
    let noisy = render_items_noisy(&mut src, &list);
    check_items_parse_to(&noisy, &list, "noisy");
    check_gen_duration(&mut src);
    check_gen_signal(&mut src);
}

/// `items` must give `list` for `text`.
fn check_items_parse_to(text: &str, list: &[Item], how: &str) {
    match grammar::items(text) {
        Ok(got) => assert_eq!(got, list, "{how} text {text:?} gives other items"),
        Err(e) => panic!("{how} text {text:?} of {list:?} does not parse: {e}"),
    }
}

/// An error message: not empty, one line, no control character.
fn check_message(e: &str, what: &str, text: &str) {
    assert!(!e.is_empty(), "{what} of {text:?}: an empty error");
    assert!(
        !e.chars().any(char::is_control),
        "{what} of {text:?}: the error {e:?} holds a control character"
    );
}

/// What `items` must give for text without quotes or backslashes:
/// split at commas, trim, skip empty items, a name before the first `=`
/// when it is a valid one; `None` for text the model does not cover.
fn model_items(text: &str) -> Option<Vec<Item>> {
    if text.contains(['\'', '"', '\\', '\0']) {
        return None;
    }
    let trim = |s: &str| s.trim_matches([' ', '\t', '\r', '\n']).to_string();
    let items = text
        .split(',')
        .map(trim)
        .filter(|item| !item.is_empty())
        .map(|item| match item.split_once('=') {
            Some((name, value)) if procfile::is_valid_name(&trim(name)) => Item {
                name: Some(trim(name)),
                value: trim(value),
            },
            _ => Item {
                name: None,
                value: item,
            },
        })
        .collect();
    Some(items)
}

/// `items` and `names` of arbitrary text; returns the items when accepted.
fn check_items_text(text: &str) -> Option<Vec<Item>> {
    let names = grammar::names(text);
    match &names {
        Ok(names) => {
            for (i, n) in names.iter().enumerate() {
                assert!(procfile::is_valid_name(n), "names of {text:?}: {n:?}");
                assert!(!names[..i].contains(n), "names of {text:?}: {n:?} twice");
            }
        }
        Err(e) => check_message(e, "names", text),
    }
    let list = match grammar::items(text) {
        Ok(list) => list,
        Err(e) => {
            check_message(&e, "items", text);
            assert!(
                names.is_err(),
                "names accepts {text:?}, which items rejects"
            );
            if let Some(model) = model_items(text) {
                panic!("items rejects {text:?} ({e}); the model gives {model:?}");
            }
            return None;
        }
    };
    for item in &list {
        if let Some(name) = &item.name {
            assert!(
                procfile::is_valid_name(name),
                "items of {text:?}: name {name:?}"
            );
        }
        assert!(
            !item.value.contains('\0'),
            "items of {text:?}: NUL in {item:?}"
        );
    }
    if let Some(model) = model_items(text) {
        assert_eq!(list, model, "items of plain text {text:?}");
    }
    if let Ok(names) = &names {
        let bare: Vec<&String> = list.iter().map(|i| &i.value).collect();
        assert!(
            names.iter().all(|n| bare.contains(&n)) && bare.iter().all(|v| names.contains(v)),
            "names {names:?} of {text:?} are not its items {list:?}"
        );
    }
    check_items_parse_to(&grammar::render(&list), &list, "rendered");
    Some(list)
}

/// The value parsers on one value.
fn check_value(value: &str, passwd: Option<&str>, group: Option<&str>) {
    match grammar::parse_duration(value) {
        Ok(d) => {
            assert!(d <= Duration::from_secs(86_400), "{value:?} is {d:?}");
            let exact = format!("{}.{:09}", d.as_secs(), d.subsec_nanos());
            assert_eq!(
                grammar::parse_duration(&exact),
                Ok(d),
                "{value:?} as {exact}"
            );
            let ns = format!("{}ns", d.as_nanos());
            assert_eq!(grammar::parse_duration(&ns), Ok(d), "{value:?} as {ns}");
        }
        Err(e) => check_message(&e, "parse_duration", value),
    }
    match grammar::parse_signal(value) {
        Ok(n) => {
            assert!((1..=64).contains(&n), "{value:?} is signal {n}");
            assert_eq!(grammar::parse_signal(&n.to_string()), Ok(n));
        }
        Err(e) => check_message(&e, "parse_signal", value),
    }
    match Check::parse(value) {
        Ok(c) => check_check(&c, value),
        Err(e) => check_message(&e, "Check::parse", value),
    }
    match users::parse_user(value) {
        Ok(spec) => check_user(&spec, value, passwd, group),
        Err(e) => check_message(&e, "parse_user", value),
    }
}

/// The invariants of a check `Check::parse` accepted from `text`.
fn check_check(c: &Check, text: &str) {
    let shown = c.to_string();
    assert_eq!(
        Check::parse(&shown),
        Ok(c.clone()),
        "{text:?} shown as {shown:?}"
    );
    match c {
        Check::Tcp(addr) => assert_ne!(addr.port(), 0, "{text:?}"),
        Check::Http { addr, host, path } => {
            assert_ne!(addr.port(), 0, "{text:?}");
            assert!(!host.is_empty(), "{text:?}");
            assert!(path.starts_with('/'), "{text:?}: path {path:?}");
            assert!(
                !path.chars().any(|c| c.is_whitespace() || c.is_control()),
                "{text:?}: path {path:?}"
            );
        }
        Check::File(path) => {
            assert!(!path.as_os_str().is_empty(), "{text:?}");
        }
        Check::Exec(argv) => {
            assert!(!argv.is_empty(), "{text:?}");
            assert!(argv.iter().all(|w| !w.contains('\0')), "{text:?}");
        }
        Check::Line(line) => assert!(!line.is_empty() && !line.contains('\n'), "{text:?}"),
        Check::Notify => {}
    }
    let polled = !matches!(c, Check::Line(_) | Check::Notify);
    assert_eq!(c.is_polled(), polled, "{text:?}");
}

/// The invariants of a user spec `parse_user` accepted from `text`, and of
/// its resolution.
fn check_user(spec: &users::UserSpec, text: &str, passwd: Option<&str>, group: Option<&str>) {
    let shown = spec.to_string();
    assert_eq!(
        users::parse_user(&shown),
        Ok(spec.clone()),
        "{text:?} shown as {shown:?}"
    );
    let numeric = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse::<u32>())
    };
    for (p, g) in [(passwd, group), (None, None), (passwd, None), (None, group)] {
        match users::resolve(spec, p, g) {
            Ok(ids) => {
                assert_ne!(ids.uid, u32::MAX, "{text:?}");
                assert_ne!(ids.gid, u32::MAX, "{text:?}");
                if let Some(uid) = numeric(&spec.user) {
                    assert_eq!(Ok(ids.uid), uid, "{text:?}");
                } else {
                    let entry = p.unwrap_or_default().lines().any(|l| {
                        let f: Vec<&str> = l.split(':').collect();
                        f.len() >= 4 && f[0] == spec.user && f[2].parse() == Ok(ids.uid)
                    });
                    assert!(entry, "{text:?} resolved to {ids:?} without a passwd line");
                }
                match spec.group.as_deref().map(|g| (g, numeric(g))) {
                    Some((_, Some(gid))) => assert_eq!(Ok(ids.gid), gid, "{text:?}"),
                    Some((name, None)) => {
                        let entry = g.unwrap_or_default().lines().any(|l| {
                            let f: Vec<&str> = l.split(':').collect();
                            f.len() >= 3 && f[0] == name && f[2].parse() == Ok(ids.gid)
                        });
                        assert!(entry, "{text:?} resolved to {ids:?} without a group line");
                    }
                    None => {}
                }
            }
            Err(e) => {
                check_message(&e, "resolve", text);
                let all_numeric = numeric(&spec.user).is_some()
                    && spec.group.as_deref().is_none_or(|g| numeric(g).is_some());
                assert!(
                    !all_numeric,
                    "{text:?} is numeric yet does not resolve: {e}"
                );
            }
        }
    }
}

/// Characters for item values: the option syntax's own (comma, `=`,
/// quotes, backslash, blanks) and some plain ones.
const VALUE_CHARS: &[char] = &[
    ',', '=', '\'', '"', '\\', ' ', '\t', '\r', '\n', '#', '$', '`', ':', '/', 'a', 'Z', '0', '-',
    '_', '.', 'é', '😀', '\u{1}', '\u{7f}', '?',
];

fn gen_value_char(src: &mut Source<'_>) -> char {
    match src.below(3) {
        0 => gen_char(src),
        _ => VALUE_CHARS[src.below(VALUE_CHARS.len())],
    }
}

/// 0..=5 items: a name (valid) or none, and a value of 0..=9 characters
/// (no NUL); now and then a value that reads as `NAME=VALUE` when bare.
fn gen_items(src: &mut Source<'_>) -> Vec<Item> {
    (0..src.below(6))
        .map(|_| {
            let name = (src.below(2) == 0).then(|| gen_name(src, 6));
            let mut value: String = (0..src.below(10)).map(|_| gen_value_char(src)).collect();
            if src.below(6) == 0 {
                value = format!("{}={value}", gen_name(src, 4));
            }
            Item { name, value }
        })
        .collect()
}

/// Whether `c` may stand unquoted in a value of a noisy rendering (for a
/// bare value, `=` is protected too).
fn is_item_bare(c: char, bare: bool) -> bool {
    match c {
        ',' | '\'' | '"' | '\\' | ' ' | '\t' | '\r' | '\n' => false,
        '=' => !bare,
        _ => true,
    }
}

/// `value` written in one of several equivalent ways, chosen by the input:
/// runs of characters bare (where safe) or backslash-escaped, in single or
/// double quotes, with continuations between and inside them.
fn encode_item_value(src: &mut Source<'_>, value: &str, bare: bool) -> String {
    if value.is_empty() {
        return match src.below(3) {
            0 if !bare => String::new(),
            1 => "\"\"".into(),
            _ => "''".into(),
        };
    }
    let escaped = |out: &mut String, c: char| {
        if c == '\n' {
            out.push_str("\"\n\"");
        } else if is_item_bare(c, bare) {
            out.push(c);
        } else {
            out.push('\\');
            out.push(c);
        }
    };
    let chars: Vec<char> = value.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let run = &chars[i..(i + 1 + src.below(4)).min(chars.len())];
        i += run.len();
        match src.below(5) {
            0 if !run.contains(&'\'') => {
                out.push('\'');
                out.extend(run);
                out.push('\'');
            }
            1 => {
                out.push('"');
                for &c in run {
                    if matches!(c, '"' | '\\' | '$' | '`') {
                        out.push('\\');
                    }
                    out.push(c);
                    if src.below(8) == 0 {
                        out.push_str("\\\n");
                    }
                }
                out.push('"');
            }
            2 if !out.is_empty() => {
                out.push_str("\\\n");
                run.iter().for_each(|&c| escaped(&mut out, c));
            }
            _ => run.iter().for_each(|&c| escaped(&mut out, c)),
        }
    }
    out
}

/// A run of 0..=2 unquoted blanks, newlines included.
fn item_blanks(src: &mut Source<'_>) -> String {
    (0..src.below(3))
        .map(|_| [' ', '\t', '\r', '\n'][src.below(4)])
        .collect()
}

/// `list` written with blanks around items, names and values, empty items
/// between them, names now and then in quotes, and values encoded by
/// `encode_item_value`.
fn render_items_noisy(src: &mut Source<'_>, list: &[Item]) -> String {
    let mut out = String::new();
    for item in list {
        for _ in 0..src.below(3) {
            out.push_str(&item_blanks(src));
            out.push(',');
        }
        out.push_str(&item_blanks(src));
        if let Some(name) = &item.name {
            if src.below(4) == 0 {
                out.push_str(&format!("'{name}'"));
            } else {
                out.push_str(name);
            }
            out.push_str(&item_blanks(src));
            out.push('=');
            out.push_str(&item_blanks(src));
        }
        out.push_str(&encode_item_value(src, &item.value, item.name.is_none()));
        out.push_str(&item_blanks(src));
        out.push(',');
    }
    if src.below(2) == 0 {
        out.pop(); // no comma after the last item
    }
    out
}

/// A Go-style duration drawn from the input: 1..=4 components, units from
/// hours to nanoseconds, up to 3 decimals where that stays exact; it must
/// parse to its exact value, or fail as more than a day.
fn check_gen_duration(src: &mut Source<'_>) {
    const UNITS: &[(&str, u128)] = &[
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("µs", 1_000),
        ("μs", 1_000),
        ("ns", 1),
    ];
    let mut text = String::new();
    let mut nanos: u128 = 0;
    for _ in 0..1 + src.below(4) {
        let (unit, scale) = UNITS[src.below(UNITS.len())];
        let whole = u128::from(src.byte()) * u128::from(src.byte() % 4 + 1);
        let decimals = if scale >= 1_000 { src.below(4) } else { 0 };
        let frac = src.below(1000) as u128 % 10u128.pow(decimals as u32);
        text.push_str(&whole.to_string());
        if decimals > 0 {
            text.push_str(&format!(".{frac:0width$}", width = decimals));
        }
        text.push_str(unit);
        nanos += whole * scale + frac * scale / 10u128.pow(decimals as u32);
    }
    match grammar::parse_duration(&text) {
        Ok(d) => assert_eq!(d.as_nanos(), nanos, "{text}"),
        Err(e) => {
            assert!(nanos > 86_400_000_000_000, "{text} ({nanos} ns): {e}");
            assert_eq!(e, format!("'{text}' is more than a day"));
        }
    }
}

/// A signal name, number or real-time form drawn from the input, in any
/// case, with or without `SIG`; it must parse to a number in 1..=64 that
/// its number parses to as well.
fn check_gen_signal(src: &mut Source<'_>) {
    const NAMES: &[&str] = &[
        "HUP", "INT", "QUIT", "TERM", "KILL", "USR1", "USR2", "WINCH", "CHLD", "STKFLT", "PWR",
        "SYS", "IOT", "POLL", "RTMIN", "RTMAX",
    ];
    let mut name = match src.below(4) {
        0 => (1 + src.below(64)).to_string(),
        1 => format!("RTMIN+{}", src.below(30)),
        2 => format!("RTMAX-{}", src.below(30)),
        _ => NAMES[src.below(NAMES.len())].to_string(),
    };
    if src.below(2) == 0 && !name.starts_with(|c: char| c.is_ascii_digit()) {
        name = format!("SIG{name}");
    }
    let name: String = name
        .chars()
        .map(|c| {
            if src.below(2) == 0 {
                c.to_ascii_lowercase()
            } else {
                c
            }
        })
        .collect();
    let n = grammar::parse_signal(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!((1..=64).contains(&n), "{name} is {n}");
    assert_eq!(grammar::parse_signal(&n.to_string()), Ok(n), "{name}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_small_inputs_pass() {
        for data in [
            &b""[..],
            b"\0",
            b"\xff\xff",
            b"a: b\n",
            b"\x04\x02\x01\x02abc\ndef",
        ] {
            check_lines(data);
            check_framing(data);
            check_procfile(data);
        }
    }

    #[test]
    fn chunks_cover_the_input() {
        let data: Vec<u8> = (0..100).collect();
        for sizes in [vec![], vec![0], vec![1], vec![3, 0, 7], vec![200]] {
            let parts = chunks(&data, &sizes);
            assert_eq!(parts.concat(), data, "{sizes:?}");
        }
    }

    #[test]
    fn line_count_counts_lines() {
        assert_eq!(line_count(b""), 0);
        assert_eq!(line_count(b"a"), 1);
        assert_eq!(line_count(b"a\n"), 1);
        assert_eq!(line_count(b"a\nb"), 2);
        assert_eq!(line_count(b"\n\n"), 2);
    }
}
