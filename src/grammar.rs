//! The per-daemon option grammar (SPEC §7) and the plain values options
//! carry: durations and signals. No I/O here.
//!
//! An option's text is a list of items separated by commas, each
//! `NAME=VALUE` or a bare `VALUE`:
//!
//! ```
//! use sidecar_init::grammar::{items, Item};
//!
//! let list = items("on-failure, egress=always").unwrap();
//! assert_eq!(list[0], Item { name: None, value: "on-failure".into() });
//! assert_eq!(list[1], Item { name: Some("egress".into()), value: "always".into() });
//!
//! // Quotes work as in the Procfile, so a value may hold a comma or a space.
//! let list = items(r#"web=exec:"wget -qO- localhost""#).unwrap();
//! assert_eq!(list[0].value, "exec:wget -qO- localhost");
//! ```

use std::time::Duration;

use nix::libc;

use crate::procfile::{self, Lexer, QuoteError};

/// One item of a per-daemon option list: `NAME=VALUE`, or a bare `VALUE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// A valid daemon name ([`procfile::is_valid_name`]) when the item is
    /// `NAME=VALUE`; `None` for a bare value.
    pub name: Option<String>,
    /// The value with quotes and backslashes removed and outer unquoted
    /// blanks trimmed; never holds a NUL byte. May be empty (`web=`, `''`).
    pub value: String,
}

/// `text` with its control characters escaped as Rust escapes them (`\n`,
/// `\t`, `\0`, `\u{1b}`), so that a message quoting what a user wrote is
/// one line and shows what was there. Every error of this module, of
/// [`crate::check`] and of [`crate::users`] goes through it.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// Blanks that are trimmed around items, names and values when unquoted.
fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// One byte of an item after quote removal, and whether quotes or a
/// backslash protected it.
type Piece = (u8, bool);

/// `pieces` without unquoted blanks at either end.
fn trim(pieces: &[Piece]) -> &[Piece] {
    let unquoted_blank = |&(b, quoted): &Piece| !quoted && is_blank(b);
    let start = pieces
        .iter()
        .position(|p| !unquoted_blank(p))
        .unwrap_or(pieces.len());
    let end = pieces
        .iter()
        .rposition(|p| !unquoted_blank(p))
        .map_or(start, |i| i + 1);
    &pieces[start..end]
}

/// The text of `pieces`. They come from valid UTF-8 with only ASCII bytes
/// removed and are cut only at ASCII bytes, so this does not fail; it
/// reports rather than panics if it ever did.
fn text_of(pieces: &[Piece]) -> Result<String, String> {
    String::from_utf8(pieces.iter().map(|&(b, _)| b).collect())
        .map_err(|_| "an item is not valid UTF-8".to_string())
}

/// Splits an option's text into items (SPEC §7): items are separated by
/// unquoted commas; quotes and backslashes work as in the Procfile and are
/// removed (so a value may hold a comma, a space or an '='); unquoted blanks
/// around an item, around its name and around its value are trimmed; empty
/// items are skipped. An item whose text before the first UNQUOTED '=' is a
/// valid daemon name (procfile::is_valid_name, after trimming) is
/// NAME=VALUE; any other item is a bare VALUE (so `http://h:1/x?a=b` is a
/// bare value). Errors (unterminated quote, trailing backslash, NUL byte)
/// are one clear message without the flag name (the caller adds it).
///
/// An item that is only quotes (`''`) is a bare empty value, not an empty
/// item. Blanks inside a value are kept as written (`exec:wget -q x`).
pub fn items(text: &str) -> Result<Vec<Item>, String> {
    split_items(text).map_err(|e| printable(&e))
}

fn split_items(text: &str) -> Result<Vec<Item>, String> {
    let mut lexer = Lexer::new(text);
    let mut items = Vec::new();
    loop {
        let start = text.len() - lexer.remaining();
        let mut pieces: Vec<Piece> = Vec::new();
        let quoted = lexer
            .scan(|b| b == b',', |b, q| pieces.push((b, q)))
            .map_err(|e| {
                // Quotes run to the end of the text; show the item from its start.
                let item = text[start..].trim();
                match e {
                    QuoteError::SingleQuote { .. } => {
                        format!("unterminated single quote in {item}")
                    }
                    QuoteError::DoubleQuote { .. } => {
                        format!("unterminated double quote in {item}")
                    }
                    QuoteError::TrailingBackslash => {
                        format!("backslash at the end of {item} with nothing to escape")
                    }
                }
            })?;
        if let Some(item) = item_of(&pieces, quoted)? {
            items.push(item);
        }
        if lexer.remaining() == 0 {
            return Ok(items);
        }
        lexer.skip_byte(); // the comma
    }
}

/// The item that `pieces` make, `None` for an empty one.
fn item_of(pieces: &[Piece], quoted: bool) -> Result<Option<Item>, String> {
    let body = trim(pieces);
    if body.is_empty() && !quoted {
        return Ok(None);
    }
    if body.iter().any(|&(b, _)| b == 0) {
        return Err("an item contains a NUL byte".into());
    }
    if let Some(eq) = body.iter().position(|&(b, q)| b == b'=' && !q) {
        let name = text_of(trim(&body[..eq]))?;
        if procfile::is_valid_name(&name) {
            return Ok(Some(Item {
                name: Some(name),
                value: text_of(trim(&body[eq + 1..]))?,
            }));
        }
    }
    Ok(Some(Item {
        name: None,
        value: text_of(body)?,
    }))
}

/// Renders items so that `items(&render(x)) == Ok(x)` for every `x` that
/// `items` can produce (quote values with procfile::quote where needed;
/// a bare value that would read back as NAME=VALUE must be quoted so it
/// does not).
///
/// Items are joined with `,`; plain values stay bare
/// (`on-failure,egress=always`).
pub fn render(items: &[Item]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match &item.name {
            Some(name) => {
                out.push_str(name);
                out.push('=');
                out.push_str(&quote_value(&item.value, false));
            }
            None => out.push_str(&quote_value(&item.value, true)),
        }
    }
    out
}

/// `value` quoted for an item: as `procfile::quote` does, and also when a
/// comma would end the item or, for a bare value, when the text before an
/// `=` would read back as a name.
fn quote_value(value: &str, bare: bool) -> String {
    let quoted = procfile::quote(value);
    if quoted != value {
        return quoted; // quoted: no unquoted comma or '=' left
    }
    let reads_as_named = || {
        value
            .split_once('=')
            .is_some_and(|(name, _)| procfile::is_valid_name(name))
    };
    if value.contains(',') || (bare && reads_as_named()) {
        procfile::single_quote(value)
    } else {
        quoted
    }
}

/// For list options (--oneshot, --essential): every item must be a bare,
/// valid daemon name; returns them in order (duplicates kept once).
pub fn names(text: &str) -> Result<Vec<String>, String> {
    list_names(text).map_err(|e| printable(&e))
}

fn list_names(text: &str) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = Vec::new();
    for item in items(text)? {
        if item.name.is_some() {
            return Err(format!(
                "'{}' is not a daemon name (this option is a list of names, e.g. web,db)",
                render(std::slice::from_ref(&item))
            ));
        }
        if !procfile::is_valid_name(&item.value) {
            return Err(format!(
                "'{}' is not a daemon name (names use only A-Z a-z 0-9 _ . -)",
                item.value
            ));
        }
        if !names.contains(&item.value) {
            names.push(item.value);
        }
    }
    Ok(names)
}

/// The longest duration an option takes.
const DAY_NANOS: u128 = 86_400 * 1_000_000_000;

/// What `parse_duration` expects, for its errors.
const DURATION_FORMS: &str = "e.g. 8, 0.5, 500ms, 1m30s";

/// A duration: plain seconds as a non-negative decimal (`8`, `0.5`, `.5`),
/// or compose's/Go's form: one or more number+unit components, units `h`,
/// `m`, `s`, `ms`, `us`/`µs`, `ns`, decimals allowed per component
/// (`500ms`, `15s`, `1m30s`, `1.5h`, `2h45m`). No sign, no exponent, no
/// `inf`/`NaN`, no blanks inside (outer blanks trimmed). At most one day,
/// else an error saying so. Errors say what is expected, e.g.
/// "'abc' is not a duration (e.g. 8, 0.5, 500ms, 1m30s)".
///
/// Exact to the nanosecond (further digits are dropped, not rounded); the
/// day is checked after that, so `86400.0000000001` is one day. The Greek
/// `μs` (U+03BC) is accepted as well as the micro sign `µs` (U+00B5), as in
/// Go.
///
/// ```
/// use std::time::Duration;
/// use sidecar_init::grammar::parse_duration;
///
/// assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
/// assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
/// assert_eq!(parse_duration("25h").unwrap_err(), "'25h' is more than a day");
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    duration(text).map_err(|e| printable(&e))
}

fn duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let nanos = duration_nanos(t).map_err(|unit| match unit {
        Some(unit) => format!(
            "'{text}' is not a duration: '{unit}' is not a unit (h, m, s, ms, us, ns; {DURATION_FORMS})"
        ),
        None => format!("'{text}' is not a duration ({DURATION_FORMS})"),
    })?;
    if nanos > DAY_NANOS {
        return Err(format!("'{text}' is more than a day"));
    }
    // At most a day's nanoseconds, which fits a u64.
    Ok(Duration::from_nanos(nanos as u64))
}

/// The nanoseconds `t` stands for, saturating far above a day; an error is
/// the unknown unit, or `None` for any other malformation.
fn duration_nanos(t: &str) -> Result<u128, Option<String>> {
    if t.is_empty() {
        return Err(None);
    }
    let mut rest = t;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (int, frac, after) = split_number(rest).ok_or(None)?;
        let unit_len = after
            .find(|c: char| !(c.is_ascii_alphabetic() || c == 'µ' || c == 'μ'))
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            // A lone number is plain seconds.
            "" if rest.len() == t.len() && after.is_empty() => 1_000_000_000,
            "" => return Err(None),
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "µs" | "μs" => 1_000,
            "ns" => 1,
            other => return Err(Some(other.to_string())),
        };
        total = total.saturating_add(scaled(int, frac, scale));
        rest = after;
    }
    Ok(total)
}

/// `digits[.digits]` at the start of `text` (at least one digit in all):
/// the integer digits, the fraction digits and the rest.
fn split_number(text: &str) -> Option<(&str, &str, &str)> {
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    let int_len = digits(text);
    let (int, rest) = text.split_at(int_len);
    let (frac, rest) = match rest.strip_prefix('.') {
        Some(after_dot) => after_dot.split_at(digits(after_dot)),
        None => ("", rest),
    };
    (!int.is_empty() || !frac.is_empty()).then_some((int, frac, rest))
}

/// `int.frac` units of `scale` nanoseconds, truncated to whole
/// nanoseconds; saturates (far above a day) instead of overflowing.
fn scaled(int: &str, frac: &str, scale: u128) -> u128 {
    let whole = int.bytes().fold(0u128, |n, d| {
        n.saturating_mul(10).saturating_add(u128::from(d - b'0'))
    });
    // 18 digits resolve a nanosecond of an hour (3.6e12 ns) with room to
    // spare, and 10^18 * 3.6e12 fits a u128.
    let frac = &frac[..frac.len().min(18)];
    let (num, den) = frac.bytes().fold((0u128, 1u128), |(n, d), c| {
        (n * 10 + u128::from(c - b'0'), d * 10)
    });
    whole
        .saturating_mul(scale)
        .saturating_add(num * scale / den)
}

/// The Linux signal names `parse_signal` knows, without `SIG`.
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("IOT", libc::SIGIOT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("POLL", libc::SIGPOLL),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// The highest signal number `parse_signal` accepts.
const MAX_SIGNAL: i32 = 64;

/// A signal: a name with or without `SIG`, case-insensitive (`TERM`,
/// `sigquit`, `SIGUSR1`), `RTMIN`, `RTMIN+N`, `RTMAX-N` (Linux numbering
/// via libc::SIGRTMIN()/SIGRTMAX() is fine), or a number 1..=64 (0 is not a
/// signal). Linux names: HUP INT QUIT ILL TRAP ABRT IOT BUS FPE KILL USR1
/// SEGV USR2 PIPE ALRM TERM STKFLT CHLD CONT STOP TSTP TTIN TTOU URG XCPU
/// XFSZ VTALRM PROF WINCH IO POLL PWR SYS. Returns the number.
///
/// `RTMIN` is the C library's (`SIGRTMIN()`: 34 with glibc, 35 with musl,
/// which keep the first ones for themselves), and `RTMAX` is 64; outer
/// blanks are trimmed.
pub fn parse_signal(text: &str) -> Result<i32, String> {
    signal(text).map_err(|e| printable(&e))
}

fn signal(text: &str) -> Result<i32, String> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return match t.parse::<i32>() {
            Ok(n) if (1..=MAX_SIGNAL).contains(&n) => Ok(n),
            _ => Err(format!(
                "'{text}' is not a signal number (1 to {MAX_SIGNAL})"
            )),
        };
    }
    let upper = t.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(&(_, n)) = SIGNALS.iter().find(|(s, _)| *s == name) {
        return Ok(n);
    }
    if let Some(realtime) = parse_realtime(name) {
        return realtime.map_err(|why| format!("'{text}' is not a signal: {why}"));
    }
    Err(format!(
        "'{text}' is not a signal (a name such as TERM, SIGQUIT or USR1, RTMIN+N, RTMAX-N, or a number 1 to {MAX_SIGNAL})"
    ))
}

/// `RTMIN`, `RTMIN+N`, `RTMAX` or `RTMAX-N` (upper case, no `SIG`); `None`
/// when `name` is none of these forms.
fn parse_realtime(name: &str) -> Option<Result<i32, String>> {
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX().min(MAX_SIGNAL));
    let offset = |n: &str| -> Option<i32> {
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Saturates: an offset past the range is out of range either way.
        Some(n.parse::<i32>().unwrap_or(i32::MAX))
    };
    let n = if name == "RTMIN" {
        min
    } else if name == "RTMAX" {
        max
    } else if let Some(n) = name.strip_prefix("RTMIN+") {
        min.saturating_add(offset(n)?)
    } else if let Some(n) = name.strip_prefix("RTMAX-") {
        max.saturating_sub(offset(n)?)
    } else {
        return None;
    };
    Some(if (min..=max).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "real-time signals are RTMIN ({min}) to RTMAX ({max})"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: Option<&str>, value: &str) -> Item {
        Item {
            name: name.map(str::to_string),
            value: value.to_string(),
        }
    }

    fn bare(value: &str) -> Item {
        item(None, value)
    }

    fn named(name: &str, value: &str) -> Item {
        item(Some(name), value)
    }

    fn ok(text: &str) -> Vec<Item> {
        let list = items(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let again = render(&list);
        assert_eq!(
            items(&again),
            Ok(list.clone()),
            "render of {text:?}: {again:?}"
        );
        list
    }

    #[test]
    fn spec_examples() {
        assert_eq!(
            ok("on-failure,egress=always"),
            [bare("on-failure"), named("egress", "always")]
        );
        // `--ready 'web=exec:"wget -qO- localhost"'` after the shell.
        assert_eq!(
            ok(r#"web=exec:"wget -qO- localhost""#),
            [named("web", "exec:wget -qO- localhost")]
        );
        assert_eq!(
            ok("web=db,web=cache"),
            [named("web", "db"), named("web", "cache")]
        );
    }

    #[test]
    fn blanks_are_trimmed_around_items_names_and_values() {
        assert_eq!(
            ok("  on-failure ,\t egress =  always\n, web= x y "),
            [
                bare("on-failure"),
                named("egress", "always"),
                named("web", "x y")
            ]
        );
        assert_eq!(ok(" ' a ' "), [bare(" a ")]);
        assert_eq!(ok(r"web=\ x\ "), [named("web", " x ")]);
    }

    #[test]
    fn empty_items_are_skipped() {
        assert_eq!(ok(""), []);
        assert_eq!(ok(" , ,,\t"), []);
        assert_eq!(ok(",a,,b,"), [bare("a"), bare("b")]);
        assert_eq!(ok("a,\\\n,b"), [bare("a"), bare("b")]); // a continuation is nothing
        // Quotes make an empty value, not an empty item.
        assert_eq!(ok("'',\"\""), [bare(""), bare("")]);
        assert_eq!(ok("web=,db=''"), [named("web", ""), named("db", "")]);
    }

    #[test]
    fn quoted_commas_equals_and_blanks_are_data() {
        assert_eq!(ok(r"web='a,b',c"), [named("web", "a,b"), bare("c")]);
        assert_eq!(ok(r"web=a\,b"), [named("web", "a,b")]);
        assert_eq!(ok(r#"web="a, b""#), [named("web", "a, b")]);
        assert_eq!(ok("'web=x'"), [bare("web=x")]);
        assert_eq!(ok(r"web\=x"), [bare("web=x")]);
        assert_eq!(ok("web=a=b"), [named("web", "a=b")]);
        assert_eq!(ok("'we'b=x"), [named("web", "x")]); // the '=' is unquoted
        assert_eq!(ok("' web'=x"), [bare(" web=x")]); // a quoted blank is part of the name
    }

    #[test]
    fn only_a_valid_name_before_the_equals_makes_a_name() {
        assert_eq!(ok("http://h:1/x?a=b"), [bare("http://h:1/x?a=b")]);
        assert_eq!(ok("=x"), [bare("=x")]);
        assert_eq!(ok("a b=x"), [bare("a b=x")]);
        assert_eq!(ok("é=x"), [bare("é=x")]);
        assert_eq!(ok("web=http://h/?a=b"), [named("web", "http://h/?a=b")]);
    }

    #[test]
    fn double_quotes_and_backslashes_follow_the_procfile() {
        assert_eq!(ok(r#"web="x\"y\$z\q\\""#), [named("web", r#"x"y$z\q\"#)]);
        assert_eq!(ok("web='it'\\''s'"), [named("web", "it's")]);
        assert_eq!(ok("web='a\nb'"), [named("web", "a\nb")]);
        assert_eq!(ok("web=\"a\\\nb\""), [named("web", "ab")]);
        assert_eq!(ok("web=a\\\nb"), [named("web", "ab")]);
        assert_eq!(ok("x=ünï,😀"), [named("x", "ünï"), bare("😀")]);
        assert_eq!(ok("web=#x"), [named("web", "#x")]); // no comments here
    }

    #[test]
    fn errors_name_the_problem() {
        let cases = [
            (
                "web='oops,db=x",
                "unterminated single quote in web='oops,db=x",
            ),
            ("a, web=\"oops", "unterminated double quote in web=\"oops"),
            (
                "web=x\\",
                "backslash at the end of web=x\\ with nothing to escape",
            ),
            ("web=a\0b", "an item contains a NUL byte"),
            ("'\0'", "an item contains a NUL byte"),
        ];
        for (text, want) in cases {
            assert_eq!(items(text), Err(want.to_string()), "{text:?}");
        }
    }

    #[test]
    fn render_quotes_only_what_needs_it() {
        assert_eq!(
            render(&[bare("on-failure"), named("egress", "always")]),
            "on-failure,egress=always"
        );
        assert_eq!(
            render(&[named("web", "exec:wget -qO- localhost")]),
            "web='exec:wget -qO- localhost'"
        );
        assert_eq!(render(&[named("web", "a,b")]), "web='a,b'");
        assert_eq!(render(&[bare("web=x")]), "'web=x'");
        assert_eq!(render(&[bare("http://h:1/a=b")]), "http://h:1/a=b");
        assert_eq!(render(&[bare("http://h/?a=b")]), "'http://h/?a=b'"); // '?' is a shell glob
        assert_eq!(render(&[named("web", "a=b")]), "web=a=b");
        assert_eq!(render(&[bare(""), named("web", "")]), "'',web=''");
        assert_eq!(render(&[]), "");
    }

    #[test]
    fn render_round_trips_awkward_values() {
        let awkward = [
            "", " ", ",", "=", "a=b", "web=", " web=x", "'", "\"", "\\", "\n", "\\\n", "a,b=c",
            "#", "it's", "$x `y`", "ü", "\t=\t",
        ];
        for v in awkward {
            for list in [vec![bare(v)], vec![named("web", v)], vec![bare(v), bare(v)]] {
                let text = render(&list);
                assert_eq!(items(&text), Ok(list), "{text:?}");
            }
        }
    }

    #[test]
    fn errors_are_one_line() {
        assert_eq!(
            items("web='a\nb"),
            Err("unterminated single quote in web='a\\nb".into())
        );
        assert_eq!(
            names("'a\tb'"),
            Err("'a\\tb' is not a daemon name (names use only A-Z a-z 0-9 _ . -)".into())
        );
        assert_eq!(
            parse_duration("1\u{1b}"),
            Err("'1\\u{1b}' is not a duration (e.g. 8, 0.5, 500ms, 1m30s)".into())
        );
        assert!(!parse_signal("\r").unwrap_err().contains('\r'));
        assert_eq!(printable("a\0b\u{85}é"), "a\\0b\\u{85}é");
    }

    #[test]
    fn names_lists() {
        assert_eq!(
            names(" migrate, render-config ,migrate"),
            Ok(vec!["migrate".to_string(), "render-config".into()])
        );
        assert_eq!(names(""), Ok(vec![]));
        assert_eq!(names("'db'"), Ok(vec!["db".to_string()]));
        assert_eq!(
            names("db,web=x"),
            Err(
                "'web=x' is not a daemon name (this option is a list of names, e.g. web,db)".into()
            )
        );
        assert_eq!(
            names("b@d"),
            Err("'b@d' is not a daemon name (names use only A-Z a-z 0-9 _ . -)".into())
        );
        assert_eq!(
            names("''"),
            Err("'' is not a daemon name (names use only A-Z a-z 0-9 _ . -)".into())
        );
        assert!(
            names("a'")
                .unwrap_err()
                .contains("unterminated single quote")
        );
    }

    fn secs(s: f64) -> Result<Duration, String> {
        Ok(Duration::from_secs_f64(s))
    }

    #[test]
    fn durations_in_seconds() {
        // Everything config::parse_seconds took.
        assert_eq!(parse_duration("8"), secs(8.0));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0.5"), secs(0.5));
        assert_eq!(parse_duration(".5"), secs(0.5));
        assert_eq!(parse_duration("5."), secs(5.0));
        assert_eq!(parse_duration(" 2.25 "), secs(2.25));
        assert_eq!(parse_duration("007"), secs(7.0));
        assert_eq!(parse_duration("0.1"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("86400"), secs(86400.0));
        assert_eq!(
            parse_duration("0.000000001999"),
            Ok(Duration::from_nanos(1))
        );
        assert_eq!(parse_duration("86400.0000000009"), secs(86400.0));
    }

    #[test]
    fn durations_with_units() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("15s"), Ok(ms(15_000)));
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("30s1m"), Ok(ms(90_000))); // as in Go
        assert_eq!(parse_duration("0s"), Ok(ms(0)));
        assert_eq!(parse_duration("1.5h"), Ok(ms(5_400_000)));
        assert_eq!(parse_duration("2h45m"), Ok(ms(9_900_000)));
        assert_eq!(parse_duration(".5m"), Ok(ms(30_000)));
        assert_eq!(parse_duration("1.s"), Ok(ms(1_000)));
        assert_eq!(parse_duration("24h"), Ok(ms(86_400_000)));
        assert_eq!(parse_duration("23h59m60s"), Ok(ms(86_400_000)));
        assert_eq!(
            parse_duration("1h0.5ms"),
            Ok(ms(3_600_000) + Duration::from_micros(500))
        );
        let ns = Duration::from_nanos;
        assert_eq!(parse_duration("7us"), Ok(ns(7_000)));
        assert_eq!(parse_duration("7µs"), Ok(ns(7_000)));
        assert_eq!(parse_duration("7μs"), Ok(ns(7_000)));
        assert_eq!(parse_duration("7ns"), Ok(ns(7)));
        assert_eq!(parse_duration("1.9ns"), Ok(ns(1)));
        assert_eq!(
            parse_duration("1.000000000000000000001h"),
            Ok(ms(3_600_000))
        );
    }

    #[test]
    fn duration_errors_say_what_is_expected() {
        let not = |t: &str| format!("'{t}' is not a duration (e.g. 8, 0.5, 500ms, 1m30s)");
        let unit = |t: &str, u: &str| {
            format!(
                "'{t}' is not a duration: '{u}' is not a unit (h, m, s, ms, us, ns; e.g. 8, 0.5, 500ms, 1m30s)"
            )
        };
        for t in [
            "", " ", "abc", "-1", "+1", "inf", "NaN", "1 m", "1m 30s", "1m30", ".", "..5", "1..5",
            "1.2.3", "s", "m5", "5s ms", "1_000",
        ] {
            assert_eq!(parse_duration(t), Err(not(t)), "{t:?}");
        }
        for (t, u) in [
            ("1d", "d"),
            ("1e3", "e"),
            ("10S", "S"),
            ("5sec", "sec"),
            ("2mss", "mss"),
            ("0x10", "x"),
        ] {
            assert_eq!(parse_duration(t), Err(unit(t, u)), "{t:?}");
        }
        for t in [
            "25h",
            "86400.000000001",
            "86401",
            "24h1ns",
            "1441m",
            "99999999999999999999999999999999999999999999h",
            "1e400h",
        ] {
            let e = parse_duration(t).unwrap_err();
            if t == "1e400h" {
                assert_eq!(e, unit(t, "e"));
            } else {
                assert_eq!(e, format!("'{t}' is more than a day"));
            }
        }
    }

    #[test]
    fn signals_by_name() {
        assert_eq!(parse_signal("TERM"), Ok(15));
        assert_eq!(parse_signal("sigquit"), Ok(3));
        assert_eq!(parse_signal("SIGUSR1"), Ok(10));
        assert_eq!(parse_signal(" SigHup "), Ok(1));
        assert_eq!(parse_signal("KILL"), Ok(9));
        assert_eq!(parse_signal("winch"), Ok(28));
        assert_eq!(parse_signal("IOT"), parse_signal("ABRT"));
        assert_eq!(parse_signal("POLL"), parse_signal("IO"));
        assert_eq!(parse_signal("STKFLT"), Ok(16));
        assert_eq!(parse_signal("PWR"), Ok(30));
        assert_eq!(parse_signal("SYS"), Ok(31));
        for (name, n) in SIGNALS {
            assert_eq!(parse_signal(name), Ok(*n));
            assert_eq!(parse_signal(&format!("SIG{name}")), Ok(*n));
            assert_eq!(parse_signal(&name.to_lowercase()), Ok(*n));
            assert!((1..=31).contains(n), "{name}");
        }
    }

    #[test]
    fn signals_by_number_and_realtime() {
        assert_eq!(parse_signal("1"), Ok(1));
        assert_eq!(parse_signal("64"), Ok(64));
        assert_eq!(parse_signal("015"), Ok(15));
        let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
        assert!((32..=35).contains(&min) && max == 64, "{min} {max}");
        assert_eq!(parse_signal("RTMIN"), Ok(min));
        assert_eq!(parse_signal("SIGRTMIN+2"), Ok(min + 2));
        assert_eq!(parse_signal("rtmax-1"), Ok(63));
        assert_eq!(parse_signal("RTMAX"), Ok(64));
        assert_eq!(parse_signal("RTMIN+0"), Ok(min));
        assert_eq!(parse_signal(&format!("RTMIN+{}", max - min)), Ok(max));
        assert_eq!(parse_signal(&format!("RTMAX-{}", max - min)), Ok(min));
    }

    #[test]
    fn signal_errors() {
        let generic = |t: &str| {
            format!(
                "'{t}' is not a signal (a name such as TERM, SIGQUIT or USR1, RTMIN+N, RTMAX-N, or a number 1 to 64)"
            )
        };
        for t in [
            "",
            "FOO",
            "SIG",
            "SIGSIGTERM",
            "-9",
            "+9",
            "TERM9",
            "RTMIN-1",
            "RTMIN+",
            "RTMAX+1",
            "RTMIN+x",
            "9 9",
            "USR3",
        ] {
            assert_eq!(parse_signal(t), Err(generic(t)), "{t:?}");
        }
        for t in ["0", "65", "99999999999999999999"] {
            assert_eq!(
                parse_signal(t),
                Err(format!("'{t}' is not a signal number (1 to 64)"))
            );
        }
        let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
        let range = format!("real-time signals are RTMIN ({min}) to RTMAX ({max})");
        for t in [
            format!("RTMIN+{}", max - min + 1),
            format!("RTMAX-{}", max - min + 1),
            "RTMIN+99999999999999999999".to_string(),
        ] {
            assert_eq!(
                parse_signal(&t),
                Err(format!("'{t}' is not a signal: {range}"))
            );
        }
    }
}
