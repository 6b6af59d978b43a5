//! The output formats of SPEC §12: plain lines, optionally timestamped and
//! coloured, or one JSON object per line.
//!
//! Pure code, no I/O and no clock: the caller passes the time. A daemon
//! line is framed as [`line_prefix`] + content + [`line_suffix`] + `\n`
//! (the event loop does that with [`frame::frame_chunk`] and a
//! [`Prefix`] from [`daemon_frame`], rebuilt per read by
//! [`update_daemon_frame`] when the frame holds a time);
//! sidecar-init's own lines come whole from [`own_line`].
//!
//! ```
//! use std::time::{Duration, UNIX_EPOCH};
//! use sidecar_init::format::{LogFormat, Style, line_prefix, line_suffix};
//!
//! let time = UNIX_EPOCH + Duration::from_micros(1_796_115_600_123_456);
//! let json = Style { format: LogFormat::Json, timestamps: false, color: false };
//! let mut line = Vec::new();
//! line_prefix(&json, "web", 0, time, &mut line);
//! line.extend_from_slice(b"hello");
//! line.extend_from_slice(line_suffix(&json));
//! assert_eq!(
//!     line,
//!     br#"{"time":"2026-12-01T09:00:00.123456Z","daemon":"web","line":"hello"}"#
//! );
//! ```
//!
//! [`frame::frame_chunk`]: crate::frame::frame_chunk

use std::time::{SystemTime, UNIX_EPOCH};

use log::Level;

use crate::frame::Prefix;
use crate::lines::LineSplitter;

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `[name] line`, as since the beginning.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

/// Everything that decides how a line looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Style {
    pub format: LogFormat,
    /// Plain lines start with an RFC 3339 UTC time (JSON always has one).
    pub timestamps: bool,
    /// Plain lines colour the daemon's `[name]` and dim sidecar-init's own
    /// lines (never in JSON).
    pub color: bool,
}

impl Style {
    /// Plain, untimed, uncoloured: what sidecar-init wrote before §12.
    pub const PLAIN: Style = Style {
        format: LogFormat::Plain,
        timestamps: false,
        color: false,
    };

    /// A daemon line's frame holds the time, so it must be rebuilt (with
    /// [`update_daemon_frame`]) for each read; otherwise one frame per
    /// daemon serves for good.
    pub fn is_timed(&self) -> bool {
        self.format == LogFormat::Json || self.timestamps
    }
}

/// The SGR colours of daemon names, by table position (modulo its length):
/// cyan, yellow, green, magenta, blue, bright red. Six that stay apart on
/// dark and light terminals, as foreman and docker compose pick them.
pub const PALETTE: [&str; 6] = ["36", "33", "32", "35", "34", "91"];

/// How sidecar-init's own lines are dimmed in colour mode.
const DIM: &[u8] = b"\x1b[2m";
const RESET: &[u8] = b"\x1b[0m";

/// The name on sidecar-init's own lines, and their `daemon` in JSON.
pub const OWN_NAME: &str = "sidecar-init";

/// `t` in RFC 3339 UTC with microseconds: `2026-12-01T09:00:00.123456Z`.
///
/// The fraction is truncated, not rounded (the time never runs ahead).
/// Times outside years 0000..=9999 are clamped to the first or last
/// microsecond of that range, so the result always has this shape.
pub fn rfc3339(t: SystemTime) -> [u8; 27] {
    let micros: i128 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i128,
        // Before 1970: round towards the past, as after it.
        Err(e) => -(e.duration().as_nanos().div_ceil(1000) as i128),
    };
    // 0000-01-01T00:00:00Z and 10000-01-01T00:00:00Z, in seconds.
    const FIRST: i128 = -62_167_219_200;
    const END: i128 = 253_402_300_800;
    let micros = micros.clamp(FIRST * 1_000_000, END * 1_000_000 - 1);
    let secs = micros.div_euclid(1_000_000) as i64;
    let frac = micros.rem_euclid(1_000_000) as u32;
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400) as u32);
    let (year, month, day) = civil_from_days(days);

    let mut out = *b"0000-00-00T00:00:00.000000Z";
    put_digits(&mut out[0..4], year as u32);
    put_digits(&mut out[5..7], month);
    put_digits(&mut out[8..10], day);
    put_digits(&mut out[11..13], sod / 3600);
    put_digits(&mut out[14..16], sod / 60 % 60);
    put_digits(&mut out[17..19], sod % 60);
    put_digits(&mut out[20..26], frac);
    out
}

/// Writes the low `dst.len()` decimal digits of `n` into `dst`.
fn put_digits(dst: &mut [u8], mut n: u32) {
    for d in dst.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// The proleptic Gregorian date (year, month 1..=12, day 1..=31) of the
/// day `days` after 1970-01-01.
///
/// The calendar repeats every 400 years (146,097 days). Counted from a
/// March 1st, a year's leap day is its last day, so within one such era
/// the year, and then the day of that March-based year, come from plain
/// divisions; months from March on have a regular 153-days-per-5-months
/// pattern (31 30 31 30 31), which gives month and day.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Days since 0000-03-01, the start of an era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146_096
    // Year of era, 0..=399: remove the leap days before `doe` (one every
    // 4 years, none every 100, one again every 400; the era's last day is
    // the 400-year leap day) and divide by 365.
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st, 0..=365
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Appends the bytes that go before a line of daemon `name` (at position
/// `index` in the table) read at `time`:
///
/// - plain: `[name] `, after `2026-12-01T09:00:00.123456Z ` with
///   timestamps, and with colour `\x1b[<colour>m[name]\x1b[0m ` (the
///   colour is `PALETTE[index % 6]`);
/// - JSON: `{"time":"2026-12-01T09:00:00.123456Z","daemon":"name","line":"`,
///   the name escaped (names are `[A-Za-z0-9_.-]`, but whatever it holds
///   the object stays valid).
pub fn line_prefix(style: &Style, name: &str, index: usize, time: SystemTime, out: &mut Vec<u8>) {
    match style.format {
        LogFormat::Json => {
            json_head(out, time, name.as_bytes());
            out.extend_from_slice(br#","line":""#);
        }
        LogFormat::Plain => {
            if style.timestamps {
                out.extend_from_slice(&rfc3339(time));
                out.push(b' ');
            }
            if style.color {
                out.extend_from_slice(b"\x1b[");
                out.extend_from_slice(PALETTE[index % PALETTE.len()].as_bytes());
                out.push(b'm');
            }
            out.push(b'[');
            out.extend_from_slice(name.as_bytes());
            out.push(b']');
            if style.color {
                out.extend_from_slice(RESET);
            }
            out.push(b' ');
        }
    }
}

/// The bytes that go after a daemon line's content, before its `\n`:
/// `"}` in JSON, nothing in plain.
pub fn line_suffix(style: &Style) -> &'static [u8] {
    match style.format {
        LogFormat::Json => b"\"}",
        LogFormat::Plain => b"",
    }
}

/// `{"time":"<time>","daemon":"<name>"` (escaped).
fn json_head(out: &mut Vec<u8>, time: SystemTime, name: &[u8]) {
    out.extend_from_slice(br#"{"time":""#);
    out.extend_from_slice(&rfc3339(time));
    out.extend_from_slice(br#"","daemon":""#);
    json_escape(out, name);
    out.push(b'"');
}

/// The frame of daemon `name`'s lines (see [`line_prefix`]): what
/// [`frame::frame_chunk`](crate::frame::frame_chunk) takes. A JSON frame
/// escapes each line.
pub fn daemon_frame(style: &Style, name: &str, index: usize, time: SystemTime) -> Prefix {
    let mut prefix = Vec::new();
    line_prefix(style, name, index, time, &mut prefix);
    match style.format {
        LogFormat::Json => Prefix::json(&prefix, line_suffix(style)),
        LogFormat::Plain => Prefix::new(&prefix),
    }
}

/// Makes `frame` the [`daemon_frame`] of a read at `time`, in place: no
/// allocation once the frame has held a prefix this long. For a style that
/// [`is_timed`](Style::is_timed), call it before framing each read.
pub fn update_daemon_frame(
    frame: &mut Prefix,
    style: &Style,
    name: &str,
    index: usize,
    time: SystemTime,
) {
    if frame.is_json() != (style.format == LogFormat::Json) {
        *frame = daemon_frame(style, name, index, time);
        return;
    }
    frame.rebuild(|out| line_prefix(style, name, index, time, out));
}

/// Appends sidecar-init's own message `msg` at `level`, logged at `time`,
/// as one or more complete lines (each ending in `\n`).
///
/// - plain: `sidecar-init: msg`, with `error: ` before an error's message
///   and `debug: ` before a debug or trace one (warnings and information
///   have no tag); after the time and a space with timestamps; the whole
///   `sidecar-init: ...` dimmed (`\x1b[2m...\x1b[0m`) with colour;
/// - JSON: `{"time":"...","daemon":"sidecar-init","level":"info","message":"..."}`
///   (levels `error`, `warn`, `info`, `debug`, `trace`).
///
/// A message with newlines, or longer than `max` bytes (at least
/// [`lines::MIN_LINE_MAX`](crate::lines::MIN_LINE_MAX)), becomes several
/// lines, split as [`LineSplitter`] splits daemon output: at the newlines,
/// which are dropped (a final one ends the last line and does not start
/// another), and into pieces of at most `max` bytes never cut inside a
/// character. No other byte is lost. An empty message is one line.
pub fn own_line(
    style: &Style,
    level: Level,
    msg: &str,
    time: SystemTime,
    max: usize,
    out: &mut Vec<u8>,
) {
    let mut one = |piece: &[u8]| own_one(style, level, piece, time, out);
    if msg.is_empty() {
        one(b"");
        return;
    }
    let mut splitter = LineSplitter::new(max);
    splitter.feed(msg.as_bytes(), &mut one);
    splitter.finish(&mut one);
}

/// One line of [`own_line`]; `piece` holds no `\n`.
fn own_one(style: &Style, level: Level, piece: &[u8], time: SystemTime, out: &mut Vec<u8>) {
    match style.format {
        LogFormat::Json => {
            json_head(out, time, OWN_NAME.as_bytes());
            out.extend_from_slice(br#","level":""#);
            out.extend_from_slice(level_name(level).as_bytes());
            out.extend_from_slice(br#"","message":""#);
            json_escape(out, piece);
            out.extend_from_slice(b"\"}\n");
        }
        LogFormat::Plain => {
            if style.timestamps {
                out.extend_from_slice(&rfc3339(time));
                out.push(b' ');
            }
            if style.color {
                out.extend_from_slice(DIM);
            }
            out.extend_from_slice(OWN_NAME.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(level_tag(level).as_bytes());
            // A `&str`'s pieces: valid UTF-8 already.
            out.extend_from_slice(piece);
            if style.color {
                out.extend_from_slice(RESET);
            }
            out.push(b'\n');
        }
    }
}

/// The tag before a plain own line's message (as the logger always wrote).
fn level_tag(level: Level) -> &'static str {
    match level {
        Level::Error => "error: ",
        Level::Debug | Level::Trace => "debug: ",
        Level::Warn | Level::Info => "",
    }
}

/// A level as JSON's `level` value.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// For each byte: 0 if it stands for itself inside a JSON string, else the
/// letter after the backslash of its escape (`u` for `\u00XX`).
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = b'u';
        b += 1;
    }
    t[0x08] = b'b';
    t[0x0c] = b'f';
    t[b'\n' as usize] = b'n';
    t[b'\r' as usize] = b'r';
    t[b'\t' as usize] = b't';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// The longest escape of one byte: `\u001f`.
pub const ESCAPE_MAX: usize = 6;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The room escaping `len` bytes may take, with the 16 bytes of scratch the
/// escaping's fixed-size copies may write past what it writes (see
/// [`escape_valid_into`]).
pub(crate) const fn escape_room(len: usize) -> usize {
    ESCAPE_MAX * len + RUN
}

/// Appends `bytes` as the inside of a JSON string: invalid UTF-8 replaced
/// by U+FFFD exactly as `String::from_utf8_lossy` does, then `"` and `\`
/// escaped with a backslash, `\n` `\r` `\t` backspace and form feed as
/// `\n` `\r` `\t` `\b` `\f`, every other byte below 0x20 as `\u00XX`
/// (lowercase hex); DEL and non-ASCII characters pass through as UTF-8.
///
/// ```
/// let mut out = Vec::new();
/// sidecar_init::format::json_escape(&mut out, b"a\"b\\c\n\x01\x7f\xffz");
/// assert_eq!(out, "a\\\"b\\\\c\\n\\u0001\x7f\u{fffd}z".as_bytes());
/// ```
pub fn json_escape(out: &mut Vec<u8>, bytes: &[u8]) {
    let old = out.len();
    out.resize(old + escape_room(bytes.len()), 0);
    let n = escape_lossy_into(&mut out[old..], bytes);
    out.truncate(old + n);
}

/// Writes what [`json_escape`] appends to the start of `dst`, which has
/// [`escape_room`] for `bytes` (an invalid byte takes at most 3, the
/// U+FFFD that replaces it); returns how many bytes it wrote. Bytes of
/// `dst` past those may be overwritten.
pub(crate) fn escape_lossy_into(dst: &mut [u8], bytes: &[u8]) -> usize {
    if std::str::from_utf8(bytes).is_ok() {
        return escape_valid_into(dst, bytes);
    }
    let mut at = 0;
    // `from_utf8_lossy` is built on `utf8_chunks`: one U+FFFD per invalid
    // sequence, the same here.
    for chunk in bytes.utf8_chunks() {
        at += escape_valid_into(&mut dst[at..], chunk.valid().as_bytes());
        if !chunk.invalid().is_empty() {
            dst[at..at + 3].copy_from_slice("\u{fffd}".as_bytes());
            at += 3;
        }
    }
    at
}

/// The width of the runs [`escape_valid_into`] checks and copies whole.
const RUN: usize = 16;

/// 0xff for a byte that needs escaping (below 0x20, `"`, `\`), else 0:
/// compares the compiler turns into vector instructions over a run.
#[inline(always)]
fn escape_flag(b: u8) -> u8 {
    0u8.wrapping_sub(u8::from((b < 0x20) | (b == b'"') | (b == b'\\')))
}

/// Writes `text` (valid UTF-8) escaped to the start of `dst`, which has
/// [`escape_room`] for it; returns how many bytes it wrote (bytes past
/// those may be overwritten).
///
/// Works in runs of 16 bytes: one vector test per run, and a run without
/// a byte to escape is one fixed-size copy. In a run with some, the bytes
/// between two escapes go out as one fixed-size copy too (of 16 bytes,
/// the next copy or escape overwriting what is past them), so the cost is
/// per escape, not per byte.
pub(crate) fn escape_valid_into(dst: &mut [u8], text: &[u8]) -> usize {
    let mut at = 0;
    let mut runs = text.chunks_exact(RUN);
    for run in &mut runs {
        let run: &[u8; RUN] = run.try_into().expect("a whole run");
        let mut flags = [0u8; RUN];
        for (f, &b) in flags.iter_mut().zip(run) {
            *f = escape_flag(b);
        }
        if flags.iter().fold(0, |a, &f| a | f) == 0 {
            dst[at..at + RUN].copy_from_slice(run);
            at += RUN;
        } else {
            at += escape_run(&mut dst[at..], run, 0, RUN);
        }
    }
    let rest = runs.remainder();
    if let Some(last) = text.len().checked_sub(RUN).filter(|_| !rest.is_empty()) {
        // The last run, overlapping the one before: only its new bytes.
        let run: &[u8; RUN] = text[last..].try_into().expect("a whole run");
        at += escape_run(&mut dst[at..], run, RUN - rest.len(), RUN);
    } else if !rest.is_empty() {
        // Shorter than a run: padded with bytes that need no escaping.
        let mut run = [b' '; RUN];
        run[..rest.len()].copy_from_slice(rest);
        at += escape_run(&mut dst[at..], &run, 0, rest.len());
    }
    at
}

/// Writes bytes `skip..len` of `run` escaped to the start of `dst` (room
/// for `escape_room(RUN)`); returns how many bytes it wrote.
#[inline(always)]
fn escape_run(dst: &mut [u8], run: &[u8; RUN], skip: usize, len: usize) -> usize {
    // The run and zeros, so that any tail of it is a fixed-size copy.
    let mut ext = [0u8; 2 * RUN];
    ext[..RUN].copy_from_slice(run);
    let (mut at, mut start) = (0, skip);
    for (half, word) in run.chunks_exact(8).enumerate() {
        let mut bits = escape_bits(u64::from_le_bytes(word.try_into().expect("eight bytes")));
        // Not the skipped bytes.
        let skipped = skip.saturating_sub(8 * half).min(8) as u32;
        bits &= u64::MAX.checked_shl(8 * skipped).unwrap_or(0);
        while bits != 0 {
            let j = 8 * half + bits.trailing_zeros() as usize / 8;
            bits &= bits - 1;
            // The bytes before this escape, and scratch after them.
            dst[at..at + RUN].copy_from_slice(&ext[start..start + RUN]);
            at += j - start;
            start = j + 1;
            let b = run[j];
            match ESCAPE[b as usize] {
                b'u' => {
                    dst[at..at + ESCAPE_MAX].copy_from_slice(&[
                        b'\\',
                        b'u',
                        b'0',
                        b'0',
                        HEX[usize::from(b >> 4)],
                        HEX[usize::from(b & 15)],
                    ]);
                    at += ESCAPE_MAX;
                }
                letter => {
                    dst[at..at + 2].copy_from_slice(&[b'\\', letter]);
                    at += 2;
                }
            }
        }
    }
    dst[at..at + RUN].copy_from_slice(&ext[start..start + RUN]);
    at + len.saturating_sub(start)
}

/// The high bit of each byte of a word.
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
const LOW7S: u64 = u64::from_ne_bytes([0x7f; 8]);

/// Bit 8k + 7 set for each byte k of `word` (little-endian) that needs
/// escaping, exactly: the sums below never carry from one byte into the
/// next, unlike the usual subtraction test for a zero byte, whose flags
/// above the lowest may be false.
#[inline(always)]
fn escape_bits(word: u64) -> u64 {
    // High bit clear exactly when the byte is zero: (y & 0x7f) + 0x7f
    // reaches 0x80 for any other low part, y itself for a high one.
    let zero = |y: u64| !(((y & LOW7S) + LOW7S) | y) & HIGHS;
    let ones = |b: u8| u64::from_ne_bytes([b; 8]);
    // Below 0x20: (b & 0x7f) + 0x60 stays below 0x80, and b has no high bit.
    let below_space = !(((word & LOW7S) + ones(0x60)) | word) & HIGHS;
    below_space | zero(word ^ ones(b'"')) | zero(word ^ ones(b'\\'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(micros: i64) -> SystemTime {
        if micros >= 0 {
            UNIX_EPOCH + Duration::from_micros(micros as u64)
        } else {
            UNIX_EPOCH - Duration::from_micros(micros.unsigned_abs())
        }
    }

    fn stamp(micros: i64) -> String {
        String::from_utf8(rfc3339(at(micros)).to_vec()).unwrap()
    }

    #[test]
    fn rfc3339_of_known_instants() {
        // Seconds from `date -u -d ... +%s`.
        let cases: &[(i64, &str)] = &[
            (0, "1970-01-01T00:00:00.000000Z"),
            (1, "1970-01-01T00:00:00.000001Z"),
            (86_399_999_999, "1970-01-01T23:59:59.999999Z"),
            (31_535_999_999_999, "1970-12-31T23:59:59.999999Z"),
            (31_536_000_000_000, "1971-01-01T00:00:00.000000Z"),
            (68_169_600_000_000, "1972-02-29T00:00:00.000000Z"),
            (946_684_799_999_999, "1999-12-31T23:59:59.999999Z"),
            (951_782_400_000_000, "2000-02-29T00:00:00.000000Z"),
            (951_868_800_000_000, "2000-03-01T00:00:00.000000Z"),
            (978_307_199_000_000, "2000-12-31T23:59:59.000000Z"),
            (1_709_164_800_500_000, "2024-02-29T00:00:00.500000Z"),
            (1_796_115_600_123_456, "2026-12-01T09:00:00.123456Z"),
            (1_798_761_599_999_999, "2026-12-31T23:59:59.999999Z"),
            (1_798_761_600_000_000, "2027-01-01T00:00:00.000000Z"),
            (4_107_456_000_000_000, "2100-02-28T00:00:00.000000Z"),
            (4_107_542_400_000_000, "2100-03-01T00:00:00.000000Z"),
            (253_402_300_799_999_999, "9999-12-31T23:59:59.999999Z"),
            (-1, "1969-12-31T23:59:59.999999Z"),
            (-2_208_988_800_000_000, "1900-01-01T00:00:00.000000Z"),
            (-2_203_977_600_000_000, "1900-02-28T00:00:00.000000Z"),
            (-2_203_891_200_000_000, "1900-03-01T00:00:00.000000Z"),
            (-62_167_219_200_000_000, "0000-01-01T00:00:00.000000Z"),
        ];
        for &(micros, want) in cases {
            assert_eq!(stamp(micros), want, "{micros} µs");
        }
    }

    #[test]
    fn rfc3339_truncates_nanoseconds_towards_the_past() {
        let t = UNIX_EPOCH + Duration::from_nanos(1_999);
        assert_eq!(&rfc3339(t), b"1970-01-01T00:00:00.000001Z");
        let t = UNIX_EPOCH - Duration::from_nanos(1_001);
        assert_eq!(&rfc3339(t), b"1969-12-31T23:59:59.999998Z");
    }

    #[test]
    fn rfc3339_clamps_to_four_digit_years() {
        let far = UNIX_EPOCH + Duration::from_secs(400 * 366 * 86_400 * 100);
        assert_eq!(&rfc3339(far), b"9999-12-31T23:59:59.999999Z");
        let before = UNIX_EPOCH - Duration::from_secs(3 * 62_167_219_200);
        assert_eq!(&rfc3339(before), b"0000-01-01T00:00:00.000000Z");
    }

    /// Day by day from 1600 to 2500, the dates follow the calendar rules.
    #[test]
    fn civil_from_days_walks_the_calendar() {
        fn leap(y: i64) -> bool {
            y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
        }
        fn month_len(y: i64, m: u32) -> u32 {
            match m {
                2 if leap(y) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            }
        }
        let start = -135_140; // 1600-01-01
        assert_eq!(civil_from_days(start), (1600, 1, 1));
        let mut want = (1600, 1, 1);
        for days in start..=194_800 {
            assert_eq!(civil_from_days(days), want, "day {days}");
            let (y, m, d) = want;
            want = if d < month_len(y, m) {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    fn t0() -> SystemTime {
        at(1_796_115_600_123_456)
    }

    fn prefix(style: Style, name: &str, index: usize) -> String {
        let mut out = Vec::new();
        line_prefix(&style, name, index, t0(), &mut out);
        String::from_utf8(out).unwrap()
    }

    const TS: Style = Style {
        format: LogFormat::Plain,
        timestamps: true,
        color: false,
    };
    const COLOR: Style = Style {
        format: LogFormat::Plain,
        timestamps: false,
        color: true,
    };
    const JSON: Style = Style {
        format: LogFormat::Json,
        timestamps: false,
        color: false,
    };

    #[test]
    fn daemon_line_prefixes() {
        assert_eq!(prefix(Style::PLAIN, "web", 0), "[web] ");
        assert_eq!(prefix(TS, "web", 0), "2026-12-01T09:00:00.123456Z [web] ");
        assert_eq!(prefix(COLOR, "web", 0), "\x1b[36m[web]\x1b[0m ");
        assert_eq!(prefix(COLOR, "db", 1), "\x1b[33m[db]\x1b[0m ");
        assert_eq!(prefix(COLOR, "x", 6), "\x1b[36m[x]\x1b[0m ");
        let both = Style {
            timestamps: true,
            ..COLOR
        };
        assert_eq!(
            prefix(both, "web", 5),
            "2026-12-01T09:00:00.123456Z \x1b[91m[web]\x1b[0m "
        );
        let expected = r#"{"time":"2026-12-01T09:00:00.123456Z","daemon":"web","line":""#;
        assert_eq!(prefix(JSON, "web", 0), expected);
        // JSON ignores timestamps and colour.
        let all = Style {
            timestamps: true,
            color: true,
            ..JSON
        };
        assert_eq!(prefix(all, "web", 3), expected);
        assert_eq!(
            prefix(JSON, "a\"b\\c\n", 0),
            r#"{"time":"2026-12-01T09:00:00.123456Z","daemon":"a\"b\\c\n","line":""#
        );
        assert_eq!(line_suffix(&JSON), b"\"}");
        assert_eq!(line_suffix(&TS), b"");
    }

    #[test]
    fn the_palette_colours_neighbours_differently() {
        let colours: Vec<String> = (0..PALETTE.len()).map(|i| prefix(COLOR, "d", i)).collect();
        for (i, c) in colours.iter().enumerate() {
            assert!(colours[..i].iter().all(|o| o != c), "{c:?} twice");
        }
    }

    #[test]
    fn daemon_frames_rebuild_in_place() {
        let mut frame = daemon_frame(&JSON, "web", 0, t0());
        assert!(frame.is_json());
        assert_eq!(frame.as_bytes(), prefix(JSON, "web", 0).as_bytes());
        assert_eq!(frame.suffix(), b"\"}");
        let later = t0() + Duration::from_secs(3600);
        update_daemon_frame(&mut frame, &JSON, "web", 0, later);
        assert_eq!(
            frame.as_bytes(),
            br#"{"time":"2026-12-01T10:00:00.123456Z","daemon":"web","line":""#
        );
        update_daemon_frame(&mut frame, &TS, "web", 0, later);
        assert!(!frame.is_json());
        assert_eq!(frame.as_bytes(), b"2026-12-01T10:00:00.123456Z [web] ");
        assert_eq!(frame.suffix(), b"");
    }

    fn own(style: Style, level: Level, msg: &str, max: usize) -> String {
        let mut out = Vec::new();
        own_line(&style, level, msg, t0(), max, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn own_lines_in_plain() {
        let p = Style::PLAIN;
        assert_eq!(
            own(p, Level::Info, "starting web", 100),
            "sidecar-init: starting web\n"
        );
        assert_eq!(own(p, Level::Warn, "w", 100), "sidecar-init: w\n");
        assert_eq!(
            own(p, Level::Error, "spawn x: gone", 100),
            "sidecar-init: error: spawn x: gone\n"
        );
        assert_eq!(own(p, Level::Debug, "d", 100), "sidecar-init: debug: d\n");
        assert_eq!(own(p, Level::Trace, "t", 100), "sidecar-init: debug: t\n");
        assert_eq!(
            own(TS, Level::Info, "hi", 100),
            "2026-12-01T09:00:00.123456Z sidecar-init: hi\n"
        );
        assert_eq!(
            own(COLOR, Level::Error, "hi", 100),
            "\x1b[2msidecar-init: error: hi\x1b[0m\n"
        );
        let both = Style {
            timestamps: true,
            ..COLOR
        };
        assert_eq!(
            own(both, Level::Info, "hi", 100),
            "2026-12-01T09:00:00.123456Z \x1b[2msidecar-init: hi\x1b[0m\n"
        );
        assert_eq!(own(p, Level::Info, "", 100), "sidecar-init: \n");
    }

    #[test]
    fn own_lines_in_json() {
        assert_eq!(
            own(JSON, Level::Info, "starting \"web\"", 100),
            r#"{"time":"2026-12-01T09:00:00.123456Z","daemon":"sidecar-init","level":"info","message":"starting \"web\""}"#
                .to_string()
                + "\n"
        );
        for (level, name) in [
            (Level::Error, "error"),
            (Level::Warn, "warn"),
            (Level::Debug, "debug"),
            (Level::Trace, "trace"),
        ] {
            assert!(
                own(JSON, level, "m", 100)
                    .contains(&format!(r#""level":"{name}","message":"m"}}"#)),
                "{level}"
            );
        }
    }

    #[test]
    fn own_lines_split_at_newlines_and_the_limit() {
        assert_eq!(
            own(Style::PLAIN, Level::Error, "one\ntwo\n\nthree\n", 100),
            "sidecar-init: error: one\nsidecar-init: error: two\n\
             sidecar-init: error: \nsidecar-init: error: three\n"
        );
        // "é" is two bytes: a cut after 5 bytes would fall inside it.
        assert_eq!(
            own(Style::PLAIN, Level::Info, "abcdéfghij", 5),
            "sidecar-init: abcd\nsidecar-init: éfgh\nsidecar-init: ij\n"
        );
        let json = own(JSON, Level::Info, "ab\ncd", 100);
        assert_eq!(json.lines().count(), 2);
        assert!(json.lines().next().unwrap().ends_with(r#""message":"ab"}"#));
        assert!(json.lines().nth(1).unwrap().ends_with(r#""message":"cd"}"#));
    }

    fn escaped(bytes: &[u8]) -> String {
        let mut out = b"<".to_vec();
        json_escape(&mut out, bytes);
        assert_eq!(&out[..1], b"<");
        String::from_utf8(out[1..].to_vec()).unwrap()
    }

    #[test]
    fn json_escape_escapes_what_json_requires() {
        assert_eq!(escaped(b""), "");
        assert_eq!(escaped(b"plain text"), "plain text");
        assert_eq!(escaped(b"\"q\" \\ /"), r#"\"q\" \\ /"#);
        assert_eq!(escaped(b"\n\r\t\x08\x0c"), r#"\n\r\t\b\f"#);
        assert_eq!(escaped(b"\x00\x01\x1b\x1f"), r#"\u0000\u0001\u001b\u001f"#);
        assert_eq!(escaped(b"\x7f \x20"), "\x7f  ");
        assert_eq!(escaped("é€😀".as_bytes()), "é€😀");
    }

    #[test]
    fn long_runs_escape_wherever_the_special_byte_is() {
        for len in [15, 16, 17, 31, 32, 33, 47, 100] {
            for at in 0..len {
                for special in [b'"', b'\\', b'\n', 0x01, 0x1f, 0xff] {
                    let mut bytes = vec![b'x'; len];
                    bytes[at] = special;
                    let want = String::from_utf8_lossy(&bytes)
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n")
                        .replace('\u{1}', "\\u0001")
                        .replace('\u{1f}', "\\u001f");
                    assert_eq!(escaped(&bytes), want, "{special:#x} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn json_escape_replaces_invalid_utf8_as_from_utf8_lossy() {
        for bytes in [
            &b"\xff"[..],
            b"ok \xff\xfe end",
            b"\xe2\x82",
            b"\xe2\x82x",
            b"\xf0\x9f\x98",
            b"\xed\xa0\x80",
            b"\xc0\x80",
            b"a\xf4\x90\x80\x80b",
            b"\x80\x80\"",
        ] {
            let lossy = String::from_utf8_lossy(bytes).replace('"', "\\\"");
            assert_eq!(escaped(bytes), lossy, "{bytes:?}");
        }
    }

    #[test]
    fn every_byte_escapes_as_json_wants() {
        for b in 0..=0x7fu8 {
            let got = escaped(&[b]);
            let want = match b {
                b'"' => "\\\"".to_string(),
                b'\\' => "\\\\".to_string(),
                b'\n' => "\\n".to_string(),
                b'\r' => "\\r".to_string(),
                b'\t' => "\\t".to_string(),
                0x08 => "\\b".to_string(),
                0x0c => "\\f".to_string(),
                0..0x20 => format!("\\u{b:04x}"),
                _ => (b as char).to_string(),
            };
            assert_eq!(got, want, "byte {b:#x}");
            assert_eq!(ESCAPE[b as usize] != 0, got.len() > 1, "byte {b:#x}");
            assert_eq!(escape_flag(b) != 0, got.len() > 1, "byte {b:#x}");
            let bits = escape_bits(u64::from_le_bytes([b'a', b, b'a', b, b, 0x7f, 0xff, b]));
            let want = if got.len() > 1 {
                0x8000_0080_8000_8000
            } else {
                0
            };
            assert_eq!(bits, want, "byte {b:#x} in a word");
        }
        assert!(ESCAPE[0x80..].iter().all(|&e| e == 0));
        assert!((0x80..=0xff).all(|b| escape_flag(b) == 0));
        for b in 0x80..=0xffu8 {
            assert_eq!(escape_bits(u64::from_ne_bytes([b; 8])), 0, "{b:#x}");
        }
    }
}
