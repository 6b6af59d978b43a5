//! The daemon table: the built-in default, the Procfile format that replaces
//! it, and the `CLAUDE_BOTTLE_SIDECAR_DAEMONS` selection. No I/O here.
//!
//! Procfile grammar: one `name: command args...` entry per line; blank lines
//! and lines whose first non-blank character is `#` are ignored. The command
//! is split into words as a POSIX shell splits them — single quotes, double
//! quotes, backslash escapes, `#` starting a comment at the start of a word,
//! backslash-newline joining lines — but nothing is expanded and no shell
//! runs. A newline inside quotes is part of the word.

use std::collections::HashSet;
use std::fmt;

/// The largest Procfile read, in bytes: far beyond any real table, small
/// enough that an endless file (`/dev/zero`, a device, a runaway
/// generator) is an error at once rather than memory grown without bound.
pub const MAX_SIZE: usize = 1024 * 1024;

/// One daemon: its unique name and the argv it is started with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonSpec {
    /// Matches `[A-Za-z0-9_.-]+`; unique within a table.
    pub name: String,
    /// At least one word; `argv[0]` without `/` is looked up in `PATH`.
    pub argv: Vec<String>,
}

impl DaemonSpec {
    /// A spec from a name and string-like words.
    pub fn new(name: &str, argv: &[&str]) -> Self {
        DaemonSpec {
            name: name.to_string(),
            argv: argv.iter().map(|w| w.to_string()).collect(),
        }
    }
}

/// The compiled-in table, in start order: `egress` first so that `pipelock`
/// can reach its upstream while it starts.
pub fn default_table() -> Vec<DaemonSpec> {
    vec![
        DaemonSpec::new("egress", &["/bin/sh", "/app/egress-entrypoint.sh"]),
        DaemonSpec::new(
            "pipelock",
            &[
                "/usr/local/bin/pipelock",
                "run",
                "--config",
                "/etc/pipelock.yaml",
            ],
        ),
        DaemonSpec::new("git-gate", &["/bin/sh", "/git-gate-entrypoint.sh"]),
        DaemonSpec::new("supervise", &["python3", "/app/supervise_server.py"]),
    ]
}

/// Why a Procfile was rejected, and on which line (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub problem: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.problem)
    }
}

impl std::error::Error for ParseError {}

/// Whether `name` is a valid daemon name.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(is_name_byte)
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// Parses Procfile text into a table, in time linear in its length.
///
/// ```
/// use sidecar_init::procfile::{parse, DaemonSpec};
///
/// let table = parse(b"# comment\nweb: nginx -g 'daemon off;'\nlog: sh -c \"tail -F $LOG\"\n").unwrap();
/// assert_eq!(table[0], DaemonSpec::new("web", &["nginx", "-g", "daemon off;"]));
/// assert_eq!(table[1].argv, ["sh", "-c", "tail -F $LOG"]); // nothing is expanded
///
/// let err = parse(b"web: nginx\nweb: other\n").unwrap_err();
/// assert_eq!(err.to_string(), "line 2: duplicate daemon name 'web'");
/// ```
pub fn parse(text: &[u8]) -> Result<Vec<DaemonSpec>, ParseError> {
    let text = match std::str::from_utf8(text) {
        Ok(t) => t,
        Err(e) => {
            let line = 1 + text[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            return Err(ParseError {
                line,
                problem: "not valid UTF-8".into(),
            });
        }
    };
    let mut lexer = Lexer::new(text);
    let mut table: Vec<DaemonSpec> = Vec::new();
    let mut names: HashSet<String> = HashSet::new();
    while let Some(entry_line) = lexer.next_entry() {
        let name = lexer.name()?;
        if !names.insert(name.clone()) {
            return Err(lexer.error_at(entry_line, format!("duplicate daemon name '{name}'")));
        }
        let argv = lexer.words()?;
        if argv.is_empty() {
            return Err(lexer.error_at(entry_line, format!("empty command for '{name}'")));
        }
        table.push(DaemonSpec { name, argv });
    }
    Ok(table)
}

/// Splits one command line (as given to `--notify`) into words by the
/// Procfile's rules: quotes and backslashes, no expansion, no shell.
pub fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut lexer = Lexer::new(text);
    let words = lexer.words().map_err(|e| e.problem)?;
    if lexer.next_entry().is_some() {
        return Err("a command must be a single line".into());
    }
    if words.is_empty() {
        return Err("empty command".into());
    }
    Ok(words)
}

/// A cursor over the Procfile's bytes (valid UTF-8; all syntax is ASCII, so
/// byte-wise scanning never splits a character that ends up in a word).
/// [`crate::grammar`] reads option items with its [`scan`](Lexer::scan).
pub(crate) struct Lexer<'a> {
    rest: &'a [u8],
    /// The line `rest` starts on.
    line: usize,
}

impl Lexer<'_> {
    fn error_at(&self, line: usize, problem: String) -> ParseError {
        ParseError { line, problem }
    }

    fn error(&self, problem: impl Into<String>) -> ParseError {
        self.error_at(self.line, problem.into())
    }

    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        self.rest = rest;
        if b == b'\n' {
            self.line += 1;
        }
        Some(b)
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r')) {
            self.bump();
        }
    }

    fn skip_comment(&mut self) {
        while !matches!(self.peek(), None | Some(b'\n')) {
            self.bump();
        }
    }

    /// Skips blank and comment lines; returns the line an entry starts on.
    fn next_entry(&mut self) -> Option<usize> {
        loop {
            self.skip_blanks();
            match self.peek()? {
                b'\n' => {
                    self.bump();
                }
                b'#' => self.skip_comment(),
                _ => return Some(self.line),
            }
        }
    }

    /// `name:` at the start of an entry (blanks allowed around the name).
    fn name(&mut self) -> Result<String, ParseError> {
        let line_end = self
            .rest
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(self.rest.len());
        let Some(colon) = self.rest[..line_end].iter().position(|&b| b == b':') else {
            return Err(self.error("expected 'name: command' (no ':' on this line)"));
        };
        // Everything before the colon is on this line, so `line` stays put.
        let raw = String::from_utf8_lossy(&self.rest[..colon]).into_owned();
        self.rest = &self.rest[colon + 1..];
        let name = raw.trim_matches([' ', '\t', '\r']);
        if name.is_empty() {
            return Err(self.error("missing daemon name before ':'"));
        }
        if !is_valid_name(name) {
            return Err(self.error(format!(
                "invalid daemon name '{name}' (names use only A-Z a-z 0-9 _ . -)"
            )));
        }
        Ok(name.to_string())
    }

    /// The words of a command, up to an unquoted newline or the end.
    fn words(&mut self) -> Result<Vec<String>, ParseError> {
        let mut words = Vec::new();
        loop {
            self.skip_blanks();
            match self.peek() {
                None => return Ok(words),
                Some(b'\n') => {
                    self.bump();
                    return Ok(words);
                }
                Some(b'#') => self.skip_comment(),
                Some(_) => {
                    if let Some(word) = self.word()? {
                        words.push(word);
                    }
                }
            }
        }
    }

    /// One word; `None` when it was only a backslash-newline continuation.
    fn word(&mut self) -> Result<Option<String>, ParseError> {
        // A word may end lines later (quoted newlines, continuations), even
        // past the text's last line: a NUL is reported on the line it starts on.
        let start = self.line;
        let mut word = Vec::new();
        let quoted = self
            .scan(
                |b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'),
                |b, _| word.push(b),
            )
            .map_err(|e| {
                let problem = match e {
                    QuoteError::SingleQuote { .. } => "unterminated single quote",
                    QuoteError::DoubleQuote { .. } => "unterminated double quote",
                    QuoteError::TrailingBackslash => "backslash at end of file",
                };
                let line = match e {
                    QuoteError::SingleQuote { line } | QuoteError::DoubleQuote { line } => line,
                    QuoteError::TrailingBackslash => self.line,
                };
                self.error_at(line, problem.into())
            })?;
        if word.contains(&0) {
            return Err(self.error_at(start, "a word contains a NUL byte".into()));
        }
        if word.is_empty() && !quoted {
            return Ok(None);
        }
        // The input is valid UTF-8 and only ASCII bytes were removed.
        Ok(Some(
            String::from_utf8(word).expect("words of UTF-8 text are UTF-8"),
        ))
    }
}

/// Why quoted text could not be read (see [`Lexer::scan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QuoteError {
    /// A `'` without its closing `'`; `line` is where it opened.
    SingleQuote { line: usize },
    /// A `"` without its closing `"`; `line` is where it opened.
    DoubleQuote { line: usize },
    /// A `\` outside quotes as the text's last byte: nothing to escape.
    TrailingBackslash,
}

impl<'a> Lexer<'a> {
    /// A lexer at the start of `text`, on line 1.
    pub(crate) fn new(text: &'a str) -> Self {
        Lexer {
            rest: text.as_bytes(),
            line: 1,
        }
    }

    /// How many bytes are left to read.
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Reads past one byte (a separator `scan` stopped at).
    pub(crate) fn skip_byte(&mut self) {
        self.bump();
    }

    /// The quoting rules, shared by Procfile words and option items: reads
    /// up to the first byte outside quotes for which `stop` is true (left
    /// unread) or to the end, and hands each byte of the text with quotes,
    /// backslash escapes and continuations removed to `push`, with whether
    /// quotes or a backslash protected it. Returns whether a quote was seen
    /// (so `''` is an empty word, not no word).
    ///
    /// Outside quotes a backslash escapes the next byte and a
    /// backslash-newline disappears. Inside single quotes every byte is
    /// literal. Inside double quotes a backslash escapes only `"`, `\`, `$`,
    /// `` ` `` and a newline (a continuation); before anything else it is
    /// literal. Only ASCII bytes are ever removed, so the bytes pushed from
    /// valid UTF-8 are valid UTF-8.
    pub(crate) fn scan(
        &mut self,
        stop: impl Fn(u8) -> bool,
        mut push: impl FnMut(u8, bool),
    ) -> Result<bool, QuoteError> {
        let mut quoted = false;
        while let Some(b) = self.peek() {
            match b {
                _ if stop(b) => break,
                b'\\' => {
                    self.bump();
                    match self.bump() {
                        Some(b'\n') => {} // line continuation
                        Some(c) => push(c, true),
                        None => return Err(QuoteError::TrailingBackslash),
                    }
                }
                b'\'' => {
                    let line = self.line;
                    quoted = true;
                    self.bump();
                    loop {
                        match self.bump() {
                            Some(b'\'') => break,
                            Some(c) => push(c, true),
                            None => return Err(QuoteError::SingleQuote { line }),
                        }
                    }
                }
                b'"' => {
                    let line = self.line;
                    quoted = true;
                    self.bump();
                    loop {
                        match self.bump() {
                            Some(b'"') => break,
                            Some(b'\\') => match self.peek() {
                                Some(b'\n') => {
                                    self.bump();
                                }
                                Some(c @ (b'"' | b'\\' | b'$' | b'`')) => {
                                    self.bump();
                                    push(c, true);
                                }
                                _ => push(b'\\', true),
                            },
                            Some(c) => push(c, true),
                            None => return Err(QuoteError::DoubleQuote { line }),
                        }
                    }
                }
                _ => {
                    self.bump();
                    push(b, false);
                }
            }
        }
        Ok(quoted)
    }
}

/// Renders a table as Procfile text that [`parse`] reads back unchanged.
pub fn render(table: &[DaemonSpec]) -> String {
    let mut text = String::new();
    for d in table {
        text.push_str(&d.name);
        text.push(':');
        for w in &d.argv {
            text.push(' ');
            text.push_str(&quote(w));
        }
        text.push('\n');
    }
    text
}

/// Quotes `word` for a Procfile (and for a POSIX shell): bare when every
/// character is plainly safe, otherwise in single quotes, with `'` written
/// as `'\''`.
pub fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./=:,+@%^".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        return word.to_string();
    }
    single_quote(word)
}

/// `word` in single quotes, with `'` written as `'\''`: read back as
/// `word` whatever it holds.
pub(crate) fn single_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The daemons `CLAUDE_BOTTLE_SIDECAR_DAEMONS` selects from `table`, in table
/// order, and the listed names the table does not have.
///
/// Names are trimmed and empty items skipped; an unset, empty or all-blank
/// value selects every daemon. Linear in the table and the list.
pub fn select(table: Vec<DaemonSpec>, wanted: Option<&str>) -> (Vec<DaemonSpec>, Vec<String>) {
    let wanted: Vec<&str> = wanted
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    if wanted.is_empty() {
        return (table, Vec::new());
    }
    let known: HashSet<&str> = table.iter().map(|d| d.name.as_str()).collect();
    let mut seen: HashSet<&str> = HashSet::new();
    let unknown: Vec<String> = wanted
        .iter()
        .filter(|&&name| !known.contains(name) && seen.insert(name))
        .map(|name| name.to_string())
        .collect();
    let wanted: HashSet<&str> = wanted.into_iter().collect();
    let selected = table
        .into_iter()
        .filter(|d| wanted.contains(d.name.as_str()))
        .collect();
    (selected, unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Vec<DaemonSpec> {
        parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn err(text: &[u8]) -> ParseError {
        parse(text).expect_err(&String::from_utf8_lossy(text))
    }

    #[test]
    fn default_table_order_and_commands() {
        let t = default_table();
        let names: Vec<&str> = t.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["egress", "pipelock", "git-gate", "supervise"]);
        assert_eq!(
            t[1].argv,
            [
                "/usr/local/bin/pipelock",
                "run",
                "--config",
                "/etc/pipelock.yaml"
            ]
        );
        assert_eq!(t[3].argv, ["python3", "/app/supervise_server.py"]);
    }

    #[test]
    fn parses_entries_comments_and_blank_lines() {
        let t = ok("# a comment\n\n  web: nginx -g 'daemon off;'\n\tjob.1 : sleep 10 # why\n");
        assert_eq!(
            t,
            vec![
                DaemonSpec::new("web", &["nginx", "-g", "daemon off;"]),
                DaemonSpec::new("job.1", &["sleep", "10"]),
            ]
        );
    }

    #[test]
    fn last_line_needs_no_newline() {
        assert_eq!(ok("a: b"), vec![DaemonSpec::new("a", &["b"])]);
    }

    #[test]
    fn quotes_and_escapes_follow_posix() {
        let t = ok(r#"a: sh -c 'echo "$HOME"' "x\"y\$z\q" a\ b '' "" it\'s"#);
        assert_eq!(
            t[0].argv,
            [
                "sh",
                "-c",
                r#"echo "$HOME""#,
                r#"x"y$z\q"#,
                "a b",
                "",
                "",
                "it's"
            ]
        );
    }

    #[test]
    fn nothing_is_expanded() {
        assert_eq!(
            ok("a: echo $HOME ~ * `x`")[0].argv,
            ["echo", "$HOME", "~", "*", "`x`"]
        );
    }

    #[test]
    fn hash_inside_a_word_is_data() {
        assert_eq!(ok("a: echo a#b '#c' #d")[0].argv, ["echo", "a#b", "#c"]);
    }

    #[test]
    fn backslash_newline_continues_the_entry() {
        let t = ok("a: echo one \\\n  two\nb: true\n");
        assert_eq!(t[0].argv, ["echo", "one", "two"]);
        assert_eq!(t[1].name, "b");
    }

    #[test]
    fn a_quoted_newline_is_part_of_the_word() {
        assert_eq!(ok("a: printf 'x\ny'\n")[0].argv, ["printf", "x\ny"]);
    }

    #[test]
    fn errors_name_the_line_and_problem() {
        let cases: &[(&[u8], usize, &str)] = &[
            (b"a: x\nnocolon here\n", 2, "no ':' on this line"),
            (b"\n\nweb server: x\n", 3, "invalid daemon name"),
            (b"ok: x\nb@d: x\n", 2, "invalid daemon name 'b@d'"),
            (b": x\n", 1, "missing daemon name"),
            (b"a: x\na: y\n", 2, "duplicate daemon name 'a'"),
            (b"a:\n", 1, "empty command for 'a'"),
            (b"a: # only a comment\n", 1, "empty command"),
            (b"a: echo 'oops\n\n", 1, "unterminated single quote"),
            (b"\na: echo \"oops\n", 2, "unterminated double quote"),
            (b"a: echo \\", 1, "backslash at end of file"),
            (b"a: x\n\xff: y\n", 2, "not valid UTF-8"),
            (b"a:\0\\\n", 1, "NUL byte"), // found by fuzzing: was line 2
        ];
        for (text, line, needle) in cases {
            let e = err(text);
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.problem.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn render_round_trips_awkward_words() {
        let t = vec![
            DaemonSpec::new("a-1", &["sh", "-c", "echo 'hi' \"there\" $x \\ # y"]),
            DaemonSpec::new("b.2", &["", " ", "\n", "it's", "#", "a=b"]),
            DaemonSpec::new("c_3", &["ünïcode", "tab\there"]),
        ];
        let text = render(&t);
        assert_eq!(ok(&text), t, "{text}");
    }

    #[test]
    fn quote_leaves_plain_words_bare() {
        assert_eq!(quote("/usr/bin/x"), "/usr/bin/x");
        assert_eq!(quote("--config=/etc/a.yaml"), "--config=/etc/a.yaml");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    fn names(t: &[DaemonSpec]) -> Vec<&str> {
        t.iter().map(|d| d.name.as_str()).collect()
    }

    #[test]
    fn selection_semantics() {
        let all = default_table;
        assert_eq!(names(&select(all(), None).0).len(), 4);
        assert_eq!(names(&select(all(), Some("")).0).len(), 4);
        assert_eq!(names(&select(all(), Some(" , ,")).0).len(), 4);
        let (s, unknown) = select(all(), Some(" supervise ,egress,,"));
        assert_eq!(names(&s), ["egress", "supervise"]); // table order
        assert!(unknown.is_empty());
        let (s, unknown) = select(all(), Some("nope,egress,nope,other"));
        assert_eq!(names(&s), ["egress"]);
        assert_eq!(unknown, ["nope", "other"]);
        let (s, unknown) = select(all(), Some("nope"));
        assert!(s.is_empty());
        assert_eq!(unknown, ["nope"]);
    }

    #[test]
    fn a_large_table_keeps_every_rule() {
        // 40,000 entries (quadratic name checks took seconds here): every
        // one is kept, in order, and a duplicate of the first is found on
        // the last line.
        let mut text: String = (0..40_000).map(|i| format!("d{i}: sleep {i}\n")).collect();
        let table = ok(&text);
        assert_eq!(table.len(), 40_000);
        assert_eq!(
            table[39_999],
            DaemonSpec::new("d39999", &["sleep", "39999"])
        );
        text.push_str("d0: again\n");
        let e = err(text.as_bytes());
        assert_eq!(
            (e.line, e.problem.as_str()),
            (40_001, "duplicate daemon name 'd0'")
        );
        // Selecting half of them and naming unknown ones, some twice.
        let wanted: Vec<String> = (0..40_000)
            .rev()
            .step_by(2)
            .map(|i| format!("d{}", i - 1))
            .chain(["x1", "x2", "x1"].map(String::from))
            .collect();
        let (selected, unknown) = select(table, Some(&wanted.join(",")));
        assert_eq!(selected.len(), 20_000);
        assert_eq!(selected[0].name, "d0", "table order");
        assert_eq!(selected[1].name, "d2");
        assert_eq!(unknown, ["x1", "x2"]);
    }

    #[test]
    fn split_words_is_one_command() {
        assert_eq!(
            split_words("curl -s 'http://x/a b'"),
            Ok(vec!["curl".to_string(), "-s".into(), "http://x/a b".into()])
        );
        assert_eq!(split_words("  "), Err("empty command".to_string()));
        assert!(split_words("a 'b").unwrap_err().contains("unterminated"));
        assert_eq!(split_words("a\\\nb"), Ok(vec!["ab".to_string()]));
        assert_eq!(
            split_words("a\nb"),
            Err("a command must be a single line".to_string())
        );
    }

    #[test]
    fn names_are_validated() {
        assert!(is_valid_name("a-b_c.9"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name("é"));
    }
}
