//! The control socket (SPEC §10): its wire protocol, the server that the
//! supervisor's event loop drives, and the client (`sidecar-init status`,
//! `health`, `stop NAME`, ...).
//!
//! # Protocol
//!
//! One request per connection, as text. The client sends one line of at most
//! [`REQUEST_MAX`] bytes including its newline: `status`, `health`,
//! `stop NAME`, `start NAME`, `restart NAME` or `signal NAME SIG`. The server
//! answers and closes. The answer's first line is `ok` or `error MESSAGE`
//! (`unhealthy` too, for `health`); what follows depends on the request:
//!
//! - `status`: one line per unit, nine tab-separated fields — name, kind,
//!   state, pid, uptime (seconds, `S.NNNNNNNNN`), restarts, code, check,
//!   detail. A missing value is `-`.
//! - `health`: nothing after `ok`; after `unhealthy`, one line per problem.
//! - `stop`, `start`, `restart`, `signal`: after `ok`, the supervisor's
//!   one-line answer, or nothing when it is empty.
//!
//! Every text field and message is escaped so that it stays on one line and
//! in one field: `\` as `\\`, tab as `\t`, newline as `\n`, carriage return
//! as `\r`, and a text that is exactly `-` as `\-` (so that it is not read as
//! a missing value).
//!
//! # Server
//!
//! [`Server`] never blocks: it is driven by the supervisor's `mio::Poll`
//! through [`Server::handle`], [`Server::reply`] and [`Server::tick`], and
//! everything a client can make it hold is bounded: [`MAX_CONNS`]
//! connections, [`REQUEST_MAX`] bytes of request each, an idle timeout
//! ([`IDLE`]) for a request that does not come or a response that is not
//! read, and one warning line per [`LOG_WINDOW`] however many clients
//! misbehave.
//!
//! # Client
//!
//! [`client_main`] is the short-lived client process: it may block, with a
//! timeout ([`CLIENT_TIMEOUT`]) on the whole exchange.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr, sockopt};
use nix::sys::stat::{self, Mode};

use crate::procfile::is_valid_name;

/// The longest request line, newline included.
pub const REQUEST_MAX: usize = 1024;
/// The most connections the server keeps open; at the cap, a new one
/// closes the oldest.
pub const MAX_CONNS: usize = 16;
/// How long a connection may take to send its request, or go without write
/// progress on its response, before it is closed.
pub const IDLE: Duration = Duration::from_secs(5);
/// The server logs at most one warning line per window.
pub const LOG_WINDOW: Duration = Duration::from_secs(10);
/// The client's bound on the whole exchange (connect, write, read).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The client's exit code when no supervisor answers on any candidate path.
pub const NO_SUPERVISOR: i32 = 3;
/// The largest response the client reads; a broken server cannot make it
/// grow without limit.
const RESPONSE_MAX: usize = 16 * 1024 * 1024;
/// The most connections accepted for one listener event. More are left in
/// the backlog and the listener is re-armed, so a flood of connects cannot
/// hold the event loop away from signals, reaping and output.
const ACCEPT_BATCH: usize = 64;
/// The longest signal text a request may carry (`SIGRTMIN+15` is 11).
const SIGNAL_TEXT_MAX: usize = 32;

const EXPECTED: &str =
    "expected status, health, stop NAME, start NAME, restart NAME or signal NAME SIG";
const USAGE: &str = "usage: sidecar-init status [--json] | health | stop NAME | start NAME | restart NAME | signal NAME SIG";
/// What `--help` adds to [`USAGE`]: the exit codes.
const EXIT_CODES: &str = "exit codes: 0 done (or healthy), 1 refused or unhealthy (with the reason), 2 usage, 3 no supervisor answers";

// ---------------------------------------------------------------------------
// Protocol
// ---------------------------------------------------------------------------

/// One unit's row in a `status` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitStatus {
    pub name: String,
    /// `daemon`, `oneshot` or `main`.
    pub kind: String,
    /// waiting, starting, ready, stopping, finished, exited, backoff,
    /// stopped, given-up.
    pub state: String,
    pub pid: Option<i32>,
    /// Of the current run, when running.
    pub uptime: Option<Duration>,
    pub restarts: u32,
    /// The last finished run's code.
    pub code: Option<i32>,
    /// The readiness check as text, e.g. `tcp:127.0.0.1:3128`.
    pub check: Option<String>,
    /// Free text, e.g. `restart in 4s`; may be empty.
    pub detail: String,
}

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Status,
    Health,
    Stop(String),
    Start(String),
    Restart(String),
    /// A daemon's name and the signal as the client wrote it (`HUP`,
    /// `SIGUSR1`, `10`); the supervisor parses the signal.
    Signal(String, String),
}

impl Request {
    /// The request line a client sends, newline included.
    pub fn to_line(&self) -> String {
        match self {
            Request::Status => "status\n".to_string(),
            Request::Health => "health\n".to_string(),
            Request::Stop(name) => format!("stop {name}\n"),
            Request::Start(name) => format!("start {name}\n"),
            Request::Restart(name) => format!("restart {name}\n"),
            Request::Signal(name, sig) => format!("signal {name} {sig}\n"),
        }
    }
}

/// What the supervisor answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The answer to `status`: one row per unit, in table order.
    Status(Vec<UnitStatus>),
    /// The answer to `health`: the problems; empty means healthy.
    Health(Vec<String>),
    /// A command was done; the supervisor's one-line answer, may be empty.
    Done(String),
    /// The request was refused or failed; one line.
    Error(String),
}

/// Parses a request line. The line may end with `\n` or `\r\n` (or with
/// nothing: a client that half-closed after its request); it is at most
/// [`REQUEST_MAX`] bytes with that ending. Words are separated by single
/// spaces. Names must be valid daemon names ([`is_valid_name`]); a signal is
/// 1 to 32 characters of `A-Z a-z 0-9 + -`.
///
/// The error is one line, fit to send back as `error MESSAGE`; it quotes
/// what the client sent only in escaped and shortened form.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > REQUEST_MAX {
        return Err(format!("request longer than {REQUEST_MAX} bytes"));
    }
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.contains(&b'\n') || line.contains(&b'\r') {
        return Err("a request is one line".to_string());
    }
    let text = std::str::from_utf8(line).map_err(|_| "request is not valid UTF-8".to_string())?;
    if text.is_empty() {
        return Err(format!("empty request ({EXPECTED})"));
    }
    let words: Vec<&str> = text.split(' ').collect();
    if words.iter().any(|w| w.is_empty()) {
        return Err("words of a request are separated by single spaces".to_string());
    }
    match words.as_slice() {
        ["status"] => Ok(Request::Status),
        ["health"] => Ok(Request::Health),
        ["stop", name] => Ok(Request::Stop(daemon_name(name)?)),
        ["start", name] => Ok(Request::Start(daemon_name(name)?)),
        ["restart", name] => Ok(Request::Restart(daemon_name(name)?)),
        ["signal", name, sig] => Ok(Request::Signal(daemon_name(name)?, signal_text(sig)?)),
        [verb @ ("status" | "health"), ..] => Err(format!("{verb} takes no arguments")),
        [verb @ ("stop" | "start" | "restart"), ..] => {
            Err(format!("{verb} takes one daemon name: {verb} NAME"))
        }
        ["signal", ..] => {
            Err("signal takes a daemon name and a signal: signal NAME SIG".to_string())
        }
        [verb, ..] => Err(format!("unknown request {} ({EXPECTED})", quoted(verb))),
        [] => Err(format!("empty request ({EXPECTED})")),
    }
}

fn daemon_name(word: &str) -> Result<String, String> {
    if is_valid_name(word) {
        Ok(word.to_string())
    } else {
        Err(format!(
            "invalid daemon name {} (names use only A-Z a-z 0-9 _ . -)",
            quoted(word)
        ))
    }
}

fn signal_text(word: &str) -> Result<String, String> {
    let ok = !word.is_empty()
        && word.len() <= SIGNAL_TEXT_MAX
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-');
    if ok {
        Ok(word.to_string())
    } else {
        Err(format!(
            "invalid signal {} (a name like HUP or SIGUSR1, or a number)",
            quoted(word)
        ))
    }
}

/// `'text'`, shortened to 40 characters and with control characters
/// escaped, for quoting a peer's words in a one-line message.
fn quoted(text: &str) -> String {
    const MAX: usize = 40;
    let mut out = String::from("'");
    for (i, c) in text.chars().enumerate() {
        if i == MAX {
            out.push_str("...");
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('\'');
    out
}

/// The bytes of a response, as the server sends them.
pub fn encode_response(r: &Response) -> Vec<u8> {
    let mut out = String::new();
    match r {
        Response::Status(units) => {
            out.push_str("ok\n");
            for u in units {
                encode_unit(u, &mut out);
            }
        }
        Response::Health(problems) if problems.is_empty() => out.push_str("ok\n"),
        Response::Health(problems) => {
            out.push_str("unhealthy\n");
            for p in problems {
                escape_field(p, &mut out);
                out.push('\n');
            }
        }
        Response::Done(message) => {
            out.push_str("ok\n");
            if !message.is_empty() {
                escape_field(message, &mut out);
                out.push('\n');
            }
        }
        Response::Error(message) => {
            out.push_str("error");
            if !message.is_empty() {
                out.push(' ');
                escape_field(message, &mut out);
            }
            out.push('\n');
        }
    }
    out.into_bytes()
}

fn encode_unit(u: &UnitStatus, out: &mut String) {
    let none = "-";
    escape_field(&u.name, out);
    out.push('\t');
    escape_field(&u.kind, out);
    out.push('\t');
    escape_field(&u.state, out);
    out.push('\t');
    match u.pid {
        Some(pid) => write!(out, "{pid}").unwrap_or(()),
        None => out.push_str(none),
    }
    out.push('\t');
    match u.uptime {
        Some(d) => write!(out, "{}.{:09}", d.as_secs(), d.subsec_nanos()).unwrap_or(()),
        None => out.push_str(none),
    }
    out.push('\t');
    write!(out, "{}", u.restarts).unwrap_or(());
    out.push('\t');
    match u.code {
        Some(code) => write!(out, "{code}").unwrap_or(()),
        None => out.push_str(none),
    }
    out.push('\t');
    match &u.check {
        Some(check) => escape_field(check, out),
        None => out.push_str(none),
    }
    out.push('\t');
    escape_field(&u.detail, out);
    out.push('\n');
}

/// Decodes a complete response (every byte up to the server's close) to the
/// request `kind_of_request`. Strict: the shape must be the one that
/// request's answer has, every line must end with a newline, and every
/// field must decode.
pub fn decode_response(kind_of_request: &Request, bytes: &[u8]) -> Result<Response, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "response is not valid UTF-8".to_string())?;
    if text.is_empty() {
        return Err("empty response".to_string());
    }
    let Some(body) = text.strip_suffix('\n') else {
        return Err("response does not end with a newline (cut short?)".to_string());
    };
    let mut lines = body.split('\n');
    let first = lines.next().unwrap_or("");
    let rest: Vec<&str> = lines.collect();
    if first == "error" || first.starts_with("error ") {
        if !rest.is_empty() {
            return Err("unexpected lines after an error".to_string());
        }
        let message = first.strip_prefix("error ").unwrap_or("");
        return Ok(Response::Error(unescape_field(message)?));
    }
    match kind_of_request {
        Request::Status => {
            expect_ok(first)?;
            let units = rest
                .iter()
                .enumerate()
                .map(|(i, line)| {
                    decode_unit(line).map_err(|e| format!("status line {}: {e}", i + 1))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Response::Status(units))
        }
        Request::Health => match first {
            "ok" if rest.is_empty() => Ok(Response::Health(Vec::new())),
            "ok" => Err("unexpected lines after ok".to_string()),
            "unhealthy" => {
                let mut problems = rest
                    .iter()
                    .map(|p| unescape_field(p))
                    .collect::<Result<Vec<_>, _>>()?;
                if problems.is_empty() {
                    problems.push("unhealthy (no reason given)".to_string());
                }
                Ok(Response::Health(problems))
            }
            other => Err(format!(
                "expected ok, unhealthy or error, got {}",
                quoted(other)
            )),
        },
        Request::Stop(_) | Request::Start(_) | Request::Restart(_) | Request::Signal(..) => {
            expect_ok(first)?;
            match rest.as_slice() {
                [] => Ok(Response::Done(String::new())),
                [message] => Ok(Response::Done(unescape_field(message)?)),
                _ => Err("more than one line after ok".to_string()),
            }
        }
    }
}

fn expect_ok(first: &str) -> Result<(), String> {
    if first == "ok" {
        Ok(())
    } else {
        Err(format!("expected ok or error, got {}", quoted(first)))
    }
}

fn decode_unit(line: &str) -> Result<UnitStatus, String> {
    let fields: Vec<&str> = line.split('\t').collect();
    let [
        name,
        kind,
        state,
        pid,
        uptime,
        restarts,
        code,
        check,
        detail,
    ] = fields.as_slice()
    else {
        return Err(format!("{} fields, expected 9", fields.len()));
    };
    Ok(UnitStatus {
        name: unescape_field(name)?,
        kind: unescape_field(kind)?,
        state: unescape_field(state)?,
        pid: optional(pid, |s| s.parse().ok(), "pid")?,
        uptime: optional(uptime, parse_seconds, "uptime")?,
        restarts: restarts
            .parse()
            .map_err(|_| format!("bad restarts {}", quoted(restarts)))?,
        code: optional(code, |s| s.parse().ok(), "code")?,
        check: if *check == "-" {
            None
        } else {
            Some(unescape_field(check)?)
        },
        detail: unescape_field(detail)?,
    })
}

fn optional<T>(
    field: &str,
    parse: impl Fn(&str) -> Option<T>,
    what: &str,
) -> Result<Option<T>, String> {
    if field == "-" {
        return Ok(None);
    }
    parse(field)
        .map(Some)
        .ok_or_else(|| format!("bad {what} {}", quoted(field)))
}

/// `S.NNNNNNNNN` (nine digits of nanoseconds) as written by
/// [`encode_response`]; fewer fraction digits are accepted too.
fn parse_seconds(text: &str) -> Option<Duration> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    if secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 9
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: u64 = secs.parse().ok()?;
    let mut nanos: u32 = 0;
    for b in frac.bytes().chain(std::iter::repeat(b'0')).take(9) {
        nanos = nanos * 10 + u32::from(b - b'0');
    }
    Some(Duration::new(secs, nanos))
}

/// Appends `text` escaped for one field of one line (see the module doc).
fn escape_field(text: &str, out: &mut String) {
    if text == "-" {
        out.push_str("\\-");
        return;
    }
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// The inverse of [`escape_field`]; an unknown or unfinished escape is an
/// error.
fn unescape_field(field: &str) -> Result<String, String> {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('-') => out.push('-'),
            Some(other) => return Err(format!("unknown escape \\{}", other.escape_debug())),
            None => return Err("a field ends with a lone backslash".to_string()),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// Serialises changes of the process umask around `bind` (the umask is
/// process-wide; sidecar-init has one thread, but its tests have many).
static UMASK_LOCK: Mutex<()> = Mutex::new(());

/// Names one connection for [`Server::reply`]. A connection closed in the
/// meantime is never confused with a later one in the same slot: the id
/// grows with every accepted connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    slot: usize,
    id: u64,
}

/// Totals since [`Server::bind`], for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections served (peer credentials accepted).
    pub accepted: u64,
    /// Connections refused for their peer's uid.
    pub refused: u64,
    /// Requests answered with `error` because they were malformed.
    pub malformed: u64,
    /// Connections closed to make room for a new one at [`MAX_CONNS`].
    pub evicted: u64,
    /// Connections closed after the idle timeout.
    pub timed_out: u64,
}

/// The control socket's server side: a listener and at most [`MAX_CONNS`]
/// connections, all non-blocking, driven by the caller's `mio::Poll`.
///
/// The caller registers it ([`Server::register`]), passes it every event
/// whose token it [owns](Server::owns) ([`Server::handle`]), answers each
/// request that `handle` returns with [`Server::reply`] (at once, or at
/// least before long: a request waiting for its answer has no timeout), and
/// calls [`Server::tick`] when [`Server::next_deadline`] passes.
#[derive(Debug)]
pub struct Server {
    /// Listening, non-blocking, close-on-exec, bound at `path`.
    listener: UnixListener,
    /// Where the socket file is.
    path: PathBuf,
    /// The socket file's `(st_dev, st_ino)` just after bind: `Drop` removes
    /// `path` only while it still names that file.
    file_id: (u64, u64),
    /// The listener's token and the first connection token, once
    /// registered. Slot `i` is token `conn_base + i`.
    tokens: Option<(Token, usize)>,
    /// Exactly [`MAX_CONNS`] slots; `Some` while a connection is open, and
    /// then registered with the token of its slot.
    slots: Vec<Option<Conn>>,
    /// The id of the next accepted connection: ids grow in accept order, so
    /// the smallest open id is the oldest connection.
    next_id: u64,
    /// The idle timeout ([`IDLE`] unless set for a test).
    idle: Duration,
    /// The uid served besides root: our effective uid.
    euid: u32,
    /// What was refused or closed since the last warning line.
    complaints: Complaints,
    stats: Stats,
}

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    /// From [`Server::next_id`]; unique for the server's life.
    id: u64,
    state: ConnState,
    /// When the connection is closed unless it makes progress: while
    /// reading, the accept time plus the idle timeout (a slow trickle does
    /// not extend it); while writing, the last write progress plus the idle
    /// timeout; `None` while the supervisor owes the answer.
    deadline: Option<Instant>,
}

/// What reading a request came to.
enum ReadOutcome {
    /// Nothing more to read now.
    Wait,
    /// The peer left (or failed) before a request: close quietly.
    Close,
    /// A complete line, or why it is malformed.
    Line(Result<Vec<u8>, String>),
}

#[derive(Debug)]
enum ConnState {
    /// The request so far: at most [`REQUEST_MAX`] bytes, no newline yet.
    Reading { buf: Vec<u8> },
    /// A complete request was handed out; [`Server::reply`] comes next.
    Awaiting,
    /// The response, written up to `pos`; closed once `pos == buf.len()`.
    Writing { buf: Vec<u8>, pos: usize },
}

impl Server {
    /// Creates the socket at `path` with mode 0600 from the start (umask
    /// 0177 around bind, restored; then checked with `stat`), listening,
    /// non-blocking, close-on-exec.
    ///
    /// An existing file at `path`: a socket nobody answers on (connection
    /// refused) is stale and replaced; a socket something answers on is an
    /// error ("another sidecar-init is listening on PATH"); anything else
    /// (a regular file, a directory, a symlink) is an error and is left as
    /// it is. Errors name the operation and the path.
    pub fn bind(path: &Path) -> io::Result<Server> {
        let _umask = UMASK_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        Server::bind_umask_locked(path)
    }

    /// [`Server::bind`] for a caller that holds [`UMASK_LOCK`].
    fn bind_umask_locked(path: &Path) -> io::Result<Server> {
        clear_stale(path)?;
        let old = stat::umask(Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        stat::umask(old);
        let listener = bound.map_err(|e| annotate(e, "bind control socket", path))?;
        let st = match stat::stat(path) {
            Ok(st) => st,
            Err(e) => {
                return Err(annotate(e.into(), "stat control socket", path));
            }
        };
        let euid = nix::unistd::geteuid().as_raw();
        let mode = st.st_mode & 0o7777;
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK || mode != 0o600 || st.st_uid != euid {
            let _ = nix::unistd::unlink(path);
            return Err(io::Error::other(format!(
                "control socket {}: after bind it has mode {mode:04o} and owner {} (expected 0600 and {euid}); removed it",
                path.display(),
                st.st_uid
            )));
        }
        Ok(Server {
            listener,
            path: path.to_path_buf(),
            file_id: (st.st_dev, st.st_ino),
            tokens: None,
            slots: (0..MAX_CONNS).map(|_| None).collect(),
            next_id: 0,
            idle: IDLE,
            euid,
            complaints: Complaints::default(),
            stats: Stats::default(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Registers the listener as `listener` and connections as tokens
    /// `conn_base + slot` (`slot < MAX_CONNS`). The listener's token must
    /// lie outside that range.
    pub fn register(
        &mut self,
        registry: &Registry,
        listener: Token,
        conn_base: usize,
    ) -> io::Result<()> {
        let Some(end) = conn_base.checked_add(MAX_CONNS) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "register control socket: connection tokens overflow",
            ));
        };
        if (conn_base..end).contains(&listener.0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "register control socket: the listener token is among the connection tokens",
            ));
        }
        registry
            .register(&mut self.listener, listener, Interest::READABLE)
            .map_err(|e| annotate(e, "register control socket", &self.path))?;
        self.tokens = Some((listener, conn_base));
        Ok(())
    }

    /// Whether `token` is the listener's or one of the connections' (open or
    /// not: a late event for a closed slot is harmless to [`Server::handle`]).
    pub fn owns(&self, token: Token) -> bool {
        match self.tokens {
            Some((listener, base)) => {
                token == listener || (token.0 >= base && token.0 - base < MAX_CONNS)
            }
            None => false,
        }
    }

    /// Sets the idle timeout (tests; the supervisor keeps [`IDLE`]). Applies
    /// to deadlines set from now on.
    pub fn set_idle(&mut self, idle: Duration) {
        self.idle = idle;
    }

    /// Handles a readiness event for one of our tokens and returns the
    /// requests that are now complete, to be answered with
    /// [`Server::reply`].
    ///
    /// On the listener: accepts pending connections until `WouldBlock` (at
    /// most [`ACCEPT_BATCH`] per event; the listener is then re-armed so the
    /// rest come on the next poll). Each connection's peer credentials must
    /// be root's or our effective uid's, else it is closed at once. At
    /// [`MAX_CONNS`] open connections a new one closes the oldest (the
    /// oldest whose request is not waiting for its answer, if any). A new
    /// connection's request is read at once if it is already there.
    ///
    /// On a connection: reads its request (never more than [`REQUEST_MAX`]
    /// bytes), or writes its response. A malformed request — too long,
    /// bytes after the newline, invalid UTF-8, or not in the grammar of
    /// [`parse_request`] — is answered with `error ...` and closed.
    pub fn handle(
        &mut self,
        registry: &Registry,
        token: Token,
        now: Instant,
    ) -> Vec<(ConnId, Request)> {
        let mut requests = Vec::new();
        let Some((listener, base)) = self.tokens else {
            return requests;
        };
        if token == listener {
            self.accept_batch(registry, listener, now, &mut requests);
        } else if let Some(slot) = token.0.checked_sub(base).filter(|s| *s < MAX_CONNS) {
            self.progress(registry, slot, now, &mut requests);
        }
        self.flush_complaints(now);
        requests
    }

    /// Queues `response` for `conn`, which sent a request that
    /// [`Server::handle`] returned; writes what the socket takes now and
    /// the rest on later events; closes after the last byte, on any write
    /// error (a client that left is logged at debug level only), or when no
    /// byte can be written for the idle timeout. A `conn` already closed
    /// (timed out, evicted) is ignored.
    pub fn reply(&mut self, registry: &Registry, conn: ConnId, response: &Response, now: Instant) {
        let awaiting = match self.conn(conn) {
            Some(c) => matches!(c.state, ConnState::Awaiting),
            None => {
                debug!("control socket: no connection left to answer ({conn:?})");
                return;
            }
        };
        if !awaiting {
            debug!("control socket: connection {conn:?} has no request to answer");
            return;
        }
        self.queue_response(registry, conn.slot, encode_response(response), now);
        self.flush_complaints(now);
    }

    /// The nearest deadline: a connection's idle timeout, or the end of the
    /// current log window when a warning is pending. `None` when idle.
    pub fn next_deadline(&self) -> Option<Instant> {
        let conns = self.slots.iter().flatten().filter_map(|c| c.deadline);
        conns.chain(self.complaints.deadline(LOG_WINDOW)).min()
    }

    /// Closes the connections whose deadline has passed and writes a pending
    /// warning whose window has ended.
    pub fn tick(&mut self, registry: &Registry, now: Instant) {
        for slot in 0..MAX_CONNS {
            let expired = self.slots[slot]
                .as_ref()
                .and_then(|c| c.deadline)
                .is_some_and(|d| d <= now);
            if expired {
                self.close(registry, slot);
                self.stats.timed_out += 1;
                self.complaints.timed_out += 1;
            }
        }
        self.flush_complaints(now);
    }

    /// How many connections are open (at most [`MAX_CONNS`]).
    pub fn open_connections(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// Totals since bind.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    fn conn(&self, conn: ConnId) -> Option<&Conn> {
        self.slots
            .get(conn.slot)
            .and_then(Option::as_ref)
            .filter(|c| c.id == conn.id)
    }

    fn accept_batch(
        &mut self,
        registry: &Registry,
        listener: Token,
        now: Instant,
        requests: &mut Vec<(ConnId, Request)>,
    ) {
        let mut accepted = 0;
        while accepted < ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    accepted += 1;
                    self.admit(registry, stream, now, requests);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
                Err(e) => {
                    // EMFILE and the like: what is pending stays in the
                    // backlog until the next connection's event.
                    self.complaints.accept_failed += 1;
                    self.complaints.last_accept_error = e.to_string();
                    return;
                }
            }
        }
        // More may be pending: re-arming an edge-triggered registration
        // reports the listener again if it is still readable.
        if let Err(e) = registry.reregister(&mut self.listener, listener, Interest::READABLE) {
            self.complaints.accept_failed += 1;
            self.complaints.last_accept_error = format!("re-arm the listener: {e}");
        }
    }

    fn admit(
        &mut self,
        registry: &Registry,
        mut stream: UnixStream,
        now: Instant,
        requests: &mut Vec<(ConnId, Request)>,
    ) {
        let Some((_, base)) = self.tokens else {
            return;
        };
        let uid = socket::getsockopt(&stream, sockopt::PeerCredentials).map(|c| c.uid());
        let allowed = matches!(uid, Ok(u) if trusted_uid(u, self.euid));
        if !allowed {
            // Best effort, so the client can say why; a few bytes always
            // fit in a new socket's buffer.
            let _ = (&stream).write(b"error permission denied: only root and the supervisor's uid may use the control socket\n");
            self.stats.refused += 1;
            self.complaints.refuse(uid.ok());
            return;
        }
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(slot) => slot,
            None => {
                let Some(victim) = self.victim() else {
                    return;
                };
                if let Some(c) = &self.slots[victim] {
                    let gone = ConnId {
                        slot: victim,
                        id: c.id,
                    };
                    requests.retain(|(conn, _)| *conn != gone);
                }
                self.close(registry, victim);
                self.stats.evicted += 1;
                self.complaints.evicted += 1;
                victim
            }
        };
        if let Err(e) = registry.register(
            &mut stream,
            Token(base + slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.complaints.accept_failed += 1;
            self.complaints.last_accept_error = format!("register a connection: {e}");
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.stats.accepted += 1;
        self.slots[slot] = Some(Conn {
            stream,
            id,
            state: ConnState::Reading {
                buf: Vec::with_capacity(64),
            },
            deadline: Some(now + self.idle),
        });
        // The request is often there already.
        self.progress(registry, slot, now, requests);
    }

    /// The connection to close for a new one: the oldest whose request is
    /// not waiting for the supervisor's answer, else the oldest.
    fn victim(&self) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| {
                let c = c.as_ref()?;
                Some((matches!(c.state, ConnState::Awaiting), c.id, slot))
            })
            .min()
            .map(|(_, _, slot)| slot)
    }

    fn progress(
        &mut self,
        registry: &Registry,
        slot: usize,
        now: Instant,
        requests: &mut Vec<(ConnId, Request)>,
    ) {
        match self.slots[slot].as_ref().map(|c| &c.state) {
            Some(ConnState::Reading { .. }) => self.read_request(registry, slot, now, requests),
            Some(ConnState::Writing { .. }) => self.write_response(registry, slot, now),
            Some(ConnState::Awaiting) | None => {}
        }
    }

    fn read_request(
        &mut self,
        registry: &Registry,
        slot: usize,
        now: Instant,
        requests: &mut Vec<(ConnId, Request)>,
    ) {
        let Some(conn) = self.slots[slot].as_mut() else {
            return;
        };
        let ConnState::Reading { buf } = &mut conn.state else {
            return;
        };
        let mut chunk = [0u8; REQUEST_MAX];
        let outcome = loop {
            let room = REQUEST_MAX - buf.len();
            if room == 0 {
                break ReadOutcome::Line(Err(format!("request longer than {REQUEST_MAX} bytes")));
            }
            match (&conn.stream).read(&mut chunk[..room]) {
                // Connected and left without a word (e.g. another
                // sidecar-init checking whether this socket is alive).
                Ok(0) if buf.is_empty() => break ReadOutcome::Close,
                // The client half-closed after its request: take it as the
                // line.
                Ok(0) => break ReadOutcome::Line(Ok(std::mem::take(buf))),
                Ok(n) => {
                    let start = buf.len();
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = memchr::memchr(b'\n', &buf[start..]) {
                        if start + i + 1 < buf.len() {
                            break ReadOutcome::Line(Err(
                                "bytes after the request line (one request per connection)"
                                    .to_string(),
                            ));
                        }
                        break ReadOutcome::Line(Ok(std::mem::take(buf)));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break ReadOutcome::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("control socket: read a request: {e}");
                    break ReadOutcome::Close;
                }
            }
        };
        let line = match outcome {
            ReadOutcome::Wait => return,
            ReadOutcome::Close => {
                self.close(registry, slot);
                return;
            }
            ReadOutcome::Line(line) => line,
        };
        match line.and_then(|line| parse_request(&line)) {
            Ok(request) => {
                conn.state = ConnState::Awaiting;
                conn.deadline = None;
                requests.push((ConnId { slot, id: conn.id }, request));
            }
            Err(message) => {
                self.stats.malformed += 1;
                self.complaints.malformed += 1;
                self.complaints.last_malformed.clone_from(&message);
                let bytes = encode_response(&Response::Error(message));
                self.queue_response(registry, slot, bytes, now);
            }
        }
    }

    fn queue_response(&mut self, registry: &Registry, slot: usize, bytes: Vec<u8>, now: Instant) {
        let Some(conn) = self.slots[slot].as_mut() else {
            return;
        };
        conn.state = ConnState::Writing { buf: bytes, pos: 0 };
        conn.deadline = Some(now + self.idle);
        self.write_response(registry, slot, now);
    }

    /// Writes what the socket takes; closes when all is written or on an
    /// error.
    fn write_response(&mut self, registry: &Registry, slot: usize, now: Instant) {
        let idle = self.idle;
        let Some(conn) = self.slots[slot].as_mut() else {
            return;
        };
        let ConnState::Writing { buf, pos } = &mut conn.state else {
            return;
        };
        let done = loop {
            if *pos == buf.len() {
                break true;
            }
            match (&conn.stream).write(&buf[*pos..]) {
                Ok(0) => {
                    debug!("control socket: the client takes no more bytes; closing");
                    break true;
                }
                Ok(n) => {
                    *pos += n;
                    conn.deadline = Some(now + idle);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("control socket: the client left before its answer was written: {e}");
                    break true;
                }
            }
        };
        if done {
            self.close(registry, slot);
        }
    }

    fn close(&mut self, registry: &Registry, slot: usize) {
        if let Some(mut conn) = self.slots[slot].take() {
            if let Err(e) = registry.deregister(&mut conn.stream) {
                debug!("control socket: deregister a connection: {e}");
            }
        }
    }

    fn flush_complaints(&mut self, now: Instant) {
        if let Some(line) = self.complaints.flush(now, LOG_WINDOW, self.idle) {
            warn!("{line}");
        }
    }
}

impl Drop for Server {
    /// Removes the socket file, if `path` still names the file bound (a
    /// newer sidecar-init may have replaced it).
    fn drop(&mut self) {
        match stat::lstat(&self.path) {
            Ok(st) if (st.st_dev, st.st_ino) == self.file_id => {
                if let Err(e) = nix::unistd::unlink(&self.path) {
                    debug!("control socket {}: remove: {e}", self.path.display());
                }
            }
            Ok(_) => debug!(
                "control socket {}: replaced by another file; leaving it",
                self.path.display()
            ),
            Err(e) => debug!("control socket {}: stat: {e}", self.path.display()),
        }
    }
}

/// Makes room for binding at `path`: nothing there, or a stale socket
/// (removed); anything else is an error.
fn clear_stale(path: &Path) -> io::Result<()> {
    let st = match stat::lstat(path) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(annotate(e.into(), "stat control socket", path)),
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "control socket {}: the path exists and is not a socket; leaving it alone",
                path.display()
            ),
        ));
    }
    let probe = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| annotate(e.into(), "create a socket to probe", path))?;
    let addr = UnixAddr::new(path).map_err(|e| annotate(e.into(), "control socket", path))?;
    match socket::connect(probe.as_raw_fd(), &addr) {
        // EAGAIN: the backlog is full, so something is listening.
        Ok(()) | Err(Errno::EAGAIN) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another sidecar-init is listening on {}", path.display()),
        )),
        Err(Errno::ECONNREFUSED) => match nix::unistd::unlink(path) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(annotate(e.into(), "remove stale control socket", path)),
        },
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(annotate(
            e.into(),
            "connect to existing control socket",
            path,
        )),
    }
}

/// `op path: error`, keeping the error's kind.
fn annotate(e: io::Error, op: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
}

/// What was refused or closed since the last warning line, and when that
/// line was: the rate limit of the server's warnings.
#[derive(Debug, Default)]
struct Complaints {
    /// When the last warning line was written; none is written before this
    /// plus the window.
    last_line: Option<Instant>,
    refused: u64,
    /// The first few distinct uids refused (at most [`Complaints::UIDS`]);
    /// `None` for a peer whose credentials could not be read.
    refused_uids: Vec<Option<u32>>,
    malformed: u64,
    /// The last malformed request's error message (one line).
    last_malformed: String,
    evicted: u64,
    timed_out: u64,
    accept_failed: u64,
    last_accept_error: String,
}

impl Complaints {
    const UIDS: usize = 4;

    fn refuse(&mut self, uid: Option<u32>) {
        self.refused += 1;
        if self.refused_uids.len() < Self::UIDS && !self.refused_uids.contains(&uid) {
            self.refused_uids.push(uid);
        }
    }

    fn pending(&self) -> bool {
        self.refused + self.malformed + self.evicted + self.timed_out + self.accept_failed > 0
    }

    /// When the pending line may be written, if one is pending.
    fn deadline(&self, window: Duration) -> Option<Instant> {
        if self.pending() {
            self.last_line.map(|t| t + window)
        } else {
            None
        }
    }

    /// The warning line, if something is pending and the window since the
    /// last line is over; the counts start again from zero.
    fn flush(&mut self, now: Instant, window: Duration, idle: Duration) -> Option<String> {
        if !self.pending() || self.last_line.is_some_and(|t| now < t + window) {
            return None;
        }
        let mut parts = Vec::new();
        if self.refused > 0 {
            let uids: Vec<String> = self
                .refused_uids
                .iter()
                .map(|u| match u {
                    Some(u) => u.to_string(),
                    None => "unknown".to_string(),
                })
                .collect();
            let label = if uids.len() == 1 { "uid" } else { "uids" };
            let more = if self.refused_uids.len() == Self::UIDS {
                ", ..."
            } else {
                ""
            };
            parts.push(format!(
                "refused {} ({label} {}{more}: not root or ours)",
                count(self.refused, "connection"),
                uids.join(", ")
            ));
        }
        if self.malformed > 0 {
            parts.push(format!(
                "answered {} with an error (last: {})",
                count(self.malformed, "malformed request"),
                self.last_malformed
            ));
        }
        if self.evicted > 0 {
            parts.push(format!(
                "closed {} to make room (at most {MAX_CONNS} open)",
                count(self.evicted, "connection")
            ));
        }
        if self.timed_out > 0 {
            parts.push(format!(
                "closed {} idle for {}",
                count(self.timed_out, "connection"),
                seconds(idle)
            ));
        }
        if self.accept_failed > 0 {
            parts.push(format!(
                "accept failed {} (last: {})",
                count(self.accept_failed, "time"),
                self.last_accept_error
            ));
        }
        *self = Complaints {
            last_line: Some(now),
            ..Complaints::default()
        };
        Some(format!("control socket: {}", parts.join("; ")))
    }
}

/// `1 connection`, `12 connections`.
fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `5s`, `0.25s`.
fn seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// The client: `sidecar-init status [--json] | health | stop NAME |
/// start NAME | restart NAME | signal NAME SIG`.
///
/// `args` are the words after the binary name, starting with the verb;
/// `sockets` the candidate socket paths in order (the caller resolves
/// `--control`, `SIDECAR_INIT_CONTROL` and the defaults). The first
/// candidate that accepts the connection is used. Results go to stdout,
/// errors to stderr. The whole exchange is bounded by [`CLIENT_TIMEOUT`].
///
/// Returns the exit code: 0 done or healthy; 1 refused, an error from the
/// supervisor, or unhealthy (with the reason); 2 usage error (a malformed
/// request, or a signal this machine does not have); and
/// [`NO_SUPERVISOR`] (3) when no supervisor answers on any candidate (no
/// such socket, connection refused, timeout), naming the paths tried.
pub fn client_main(args: &[String], sockets: &[PathBuf]) -> i32 {
    let stdout = io::stdout();
    let stderr = io::stderr();
    client_run(
        args,
        sockets,
        CLIENT_TIMEOUT,
        &mut stdout.lock(),
        &mut stderr.lock(),
    )
}

/// [`client_main`] with its outputs and timeout as parameters. Write errors
/// on `out` and `err` are ignored (a closed stdout must not change the exit
/// code).
fn client_run(
    args: &[String],
    sockets: &[PathBuf],
    timeout: Duration,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let (request, json) = match parse_client_args(args) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => {
            let _ = writeln!(out, "{USAGE}\n{EXIT_CODES}");
            return 0;
        }
        Err(message) => {
            let _ = writeln!(err, "sidecar-init: {message}\n{USAGE}");
            return 2;
        }
    };
    let (path, bytes) = match exchange(&request, sockets, timeout) {
        Ok(answer) => answer,
        Err(Failure::NoSupervisor(tried)) => {
            let _ = writeln!(
                err,
                "sidecar-init: no supervisor answers on {}",
                if tried.is_empty() {
                    "any control socket (no path given)".to_string()
                } else {
                    tried.join(", ")
                }
            );
            return NO_SUPERVISOR;
        }
        Err(Failure::Refused(message)) => {
            let _ = writeln!(err, "sidecar-init: {message}");
            return 1;
        }
    };
    if bytes.is_empty() {
        let _ = writeln!(
            err,
            "sidecar-init: the supervisor on {} closed the connection without an answer (too many clients at once?)",
            path.display()
        );
        return 1;
    }
    let response = match decode_response(&request, &bytes) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(
                err,
                "sidecar-init: unreadable answer from {}: {e}",
                path.display()
            );
            return 1;
        }
    };
    match response {
        Response::Error(message) => {
            let _ = writeln!(err, "sidecar-init: {}", display_text(&message));
            1
        }
        Response::Status(units) => {
            let text = if json {
                status_json(&units)
            } else {
                status_table(&units)
            };
            let _ = out.write_all(text.as_bytes());
            0
        }
        Response::Health(problems) if problems.is_empty() => {
            let _ = writeln!(out, "healthy");
            0
        }
        Response::Health(problems) => {
            for p in &problems {
                let _ = writeln!(out, "{}", display_text(p));
            }
            1
        }
        Response::Done(message) => {
            if !message.is_empty() {
                let _ = writeln!(out, "{}", display_text(&message));
            }
            0
        }
    }
}

/// The request and `--json`, `None` for `--help`, or a usage error.
fn parse_client_args(args: &[String]) -> Result<Option<(Request, bool)>, String> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(None);
    }
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let name = |verb: &str, name: &str| -> Result<String, String> {
        if is_valid_name(name) {
            Ok(name.to_string())
        } else {
            Err(format!(
                "{verb}: invalid daemon name {} (names use only A-Z a-z 0-9 _ . -)",
                quoted(name)
            ))
        }
    };
    let request = match words.as_slice() {
        ["status"] => return Ok(Some((Request::Status, false))),
        ["status", "--json"] => return Ok(Some((Request::Status, true))),
        ["status", ..] => return Err("status takes only --json".to_string()),
        ["health"] => Request::Health,
        ["health", ..] => return Err("health takes no arguments".to_string()),
        ["stop", n] => Request::Stop(name("stop", n)?),
        ["start", n] => Request::Start(name("start", n)?),
        ["restart", n] => Request::Restart(name("restart", n)?),
        [verb @ ("stop" | "start" | "restart"), ..] => {
            return Err(format!("{verb} takes one daemon name: {verb} NAME"));
        }
        ["signal", n, sig] => {
            // Not a signal on this machine is a usage error, found without
            // asking the supervisor; the supervisor still parses the text.
            let text = signal_text(sig)?;
            crate::grammar::parse_signal(&text).map_err(|e| format!("signal: {e}"))?;
            Request::Signal(name("signal", n)?, text)
        }
        ["signal", ..] => {
            return Err("signal takes a daemon name and a signal: signal NAME SIG".to_string());
        }
        [verb, ..] => return Err(format!("unknown command {}", quoted(verb))),
        [] => return Err("a command is needed".to_string()),
    };
    Ok(Some((request, false)))
}

enum Failure {
    /// Every candidate, with why it did not answer.
    NoSupervisor(Vec<String>),
    /// A one-line reason; exit code 1.
    Refused(String),
}

/// Whether a process of `uid` may serve or use the control socket of a
/// process whose effective uid is `euid`: root, or the same uid.
fn trusted_uid(uid: u32, euid: u32) -> bool {
    uid == 0 || uid == euid
}

/// Connects to the first candidate that accepts, sends the request and
/// reads the whole answer; the socket used and the bytes.
///
/// A candidate served by a process that is neither root nor our uid (a
/// socket squatted in `/tmp` by another user, say) is skipped like a
/// missing one: its answers would not be the supervisor's.
fn exchange(
    request: &Request,
    sockets: &[PathBuf],
    timeout: Duration,
) -> Result<(PathBuf, Vec<u8>), Failure> {
    let deadline = Instant::now() + timeout;
    let euid = nix::unistd::geteuid().as_raw();
    let mut tried = Vec::new();
    let mut denied = None;
    for path in sockets {
        match connect_until(path, deadline) {
            Ok(stream) => {
                match socket::getsockopt(&stream, sockopt::PeerCredentials) {
                    Ok(peer) if trusted_uid(peer.uid(), euid) => {}
                    Ok(peer) => {
                        tried.push(format!(
                            "{} (served by uid {}, neither root nor ours: not trusted)",
                            path.display(),
                            peer.uid()
                        ));
                        continue;
                    }
                    Err(e) => {
                        tried.push(format!(
                            "{} (peer credentials: {})",
                            path.display(),
                            e.desc()
                        ));
                        continue;
                    }
                }
                return match talk(stream, request, deadline) {
                    Ok(bytes) => Ok((path.clone(), bytes)),
                    Err(Talk::Timeout) => {
                        tried.push(format!(
                            "{} (connected, but no answer within {})",
                            path.display(),
                            seconds(timeout)
                        ));
                        Err(Failure::NoSupervisor(tried))
                    }
                    Err(Talk::TooLarge) => Err(Failure::Refused(format!(
                        "the answer from {} is larger than {} MiB; giving up",
                        path.display(),
                        RESPONSE_MAX >> 20
                    ))),
                    Err(Talk::Io(op, e)) => {
                        Err(Failure::Refused(format!("{op} {}: {e}", path.display())))
                    }
                };
            }
            Err(Errno::EACCES | Errno::EPERM) => {
                denied.get_or_insert_with(|| {
                    format!(
                        "connect to {}: permission denied (only root and the supervisor's uid may use it)",
                        path.display()
                    )
                });
                tried.push(format!("{} (permission denied)", path.display()));
            }
            Err(Errno::ETIMEDOUT) => {
                tried.push(format!(
                    "{} (no connection within {})",
                    path.display(),
                    seconds(timeout)
                ));
                break;
            }
            Err(Errno::ENOENT) => tried.push(format!("{} (no such file)", path.display())),
            Err(Errno::ECONNREFUSED) => {
                tried.push(format!("{} (connection refused)", path.display()));
            }
            Err(e) => tried.push(format!("{} ({})", path.display(), e.desc())),
        }
    }
    match denied {
        Some(message) => Err(Failure::Refused(message)),
        None => Err(Failure::NoSupervisor(tried)),
    }
}

/// A blocking stream connected to `path`, or the error; `ETIMEDOUT` when
/// the listener's backlog stayed full until `deadline`. A Unix socket's
/// non-blocking connect fails with `EAGAIN` on a full backlog instead of
/// waiting, so it is retried at short intervals.
fn connect_until(path: &Path, deadline: Instant) -> Result<std::os::unix::net::UnixStream, Errno> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    loop {
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => break,
            Err(Errno::EAGAIN | Errno::EINTR) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Errno::ETIMEDOUT);
                }
                std::thread::sleep(left.min(Duration::from_millis(20)));
            }
            Err(e) => return Err(e),
        }
    }
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream
        .set_nonblocking(false)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    Ok(stream)
}

enum Talk {
    Timeout,
    TooLarge,
    Io(&'static str, io::Error),
}

/// Sends the request and reads until the server closes, within `deadline`
/// and [`RESPONSE_MAX`] bytes.
fn talk(
    mut stream: std::os::unix::net::UnixStream,
    request: &Request,
    deadline: Instant,
) -> Result<Vec<u8>, Talk> {
    let left = || {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() { None } else { Some(left) }
    };
    let timed_out = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        )
    };
    let Some(t) = left() else {
        return Err(Talk::Timeout);
    };
    stream
        .set_write_timeout(Some(t))
        .map_err(|e| Talk::Io("set a timeout on", e))?;
    match stream.write_all(request.to_line().as_bytes()) {
        Ok(()) => {}
        Err(e) if timed_out(&e) => return Err(Talk::Timeout),
        // The server may have answered and closed already (a refusal):
        // read what it said.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => {}
        Err(e) => return Err(Talk::Io("send the request to", e)),
    }
    let mut answer = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let Some(t) = left() else {
            return Err(Talk::Timeout);
        };
        stream
            .set_read_timeout(Some(t))
            .map_err(|e| Talk::Io("set a timeout on", e))?;
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(answer),
            Ok(n) => {
                if answer.len() + n > RESPONSE_MAX {
                    return Err(Talk::TooLarge);
                }
                answer.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if timed_out(&e) => return Err(Talk::Timeout),
            // A server that closes with our request unread resets the
            // connection after what it wrote.
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => return Ok(answer),
            Err(e) => return Err(Talk::Io("read the answer from", e)),
        }
    }
}

/// `text` with control characters shown as escapes, for a terminal.
fn display_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A duration at a glance: `3s`, `4m12s`, `2h03m`, `3d04h`.
fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// The `status` table: a header and one row per unit, columns aligned,
/// `-` for a missing value; DETAIL only when some unit has one.
fn status_table(units: &[UnitStatus]) -> String {
    let dash = || "-".to_string();
    let with_detail = units.iter().any(|u| !u.detail.is_empty());
    let mut rows: Vec<Vec<String>> = vec![
        [
            "NAME", "STATE", "PID", "UPTIME", "RESTARTS", "CODE", "CHECK", "DETAIL",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    ];
    for u in units {
        rows.push(vec![
            display_text(&u.name),
            display_text(&u.state),
            u.pid.map_or_else(dash, |p| p.to_string()),
            u.uptime.map_or_else(dash, human_duration),
            u.restarts.to_string(),
            u.code.map_or_else(dash, |c| c.to_string()),
            u.check.as_deref().map_or_else(dash, display_text),
            display_text(&u.detail),
        ]);
    }
    let columns = if with_detail { 8 } else { 7 };
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().take(columns).enumerate() {
            line.push_str(cell);
            if i + 1 < columns {
                let pad = widths[i] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `status --json`: an array with one object per unit.
fn status_json(units: &[UnitStatus]) -> String {
    if units.is_empty() {
        return "[]\n".to_string();
    }
    let mut out = String::from("[\n");
    for (i, u) in units.iter().enumerate() {
        out.push_str("  {\"name\":");
        json_string(&u.name, &mut out);
        out.push_str(",\"kind\":");
        json_string(&u.kind, &mut out);
        out.push_str(",\"state\":");
        json_string(&u.state, &mut out);
        out.push_str(",\"pid\":");
        json_option(u.pid, &mut out);
        out.push_str(",\"uptime_seconds\":");
        match u.uptime {
            Some(d) => {
                let _ = write!(out, "{}.{:03}", d.as_secs(), d.subsec_millis());
            }
            None => out.push_str("null"),
        }
        let _ = write!(out, ",\"restarts\":{}", u.restarts);
        out.push_str(",\"code\":");
        json_option(u.code, &mut out);
        out.push_str(",\"check\":");
        match &u.check {
            Some(check) => json_string(check, &mut out),
            None => out.push_str("null"),
        }
        out.push_str(",\"detail\":");
        json_string(&u.detail, &mut out);
        out.push('}');
        if i + 1 < units.len() {
            out.push(',');
        }
        out.push('\n');
    }
    out.push_str("]\n");
    out
}

fn json_option(value: Option<i32>, out: &mut String) {
    match value {
        Some(v) => {
            let _ = write!(out, "{v}");
        }
        None => out.push_str("null"),
    }
}

/// Appends `text` as a JSON string: quoted, escaped as the JSON log lines
/// are ([`crate::format::json_escape`]).
fn json_string(text: &str, out: &mut String) {
    let mut escaped = Vec::with_capacity(text.len());
    crate::format::json_escape(&mut escaped, text.as_bytes());
    out.push('"');
    // Escaped valid UTF-8 is valid UTF-8: borrowed, not copied.
    out.push_str(&String::from_utf8_lossy(&escaped));
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::{UnixListener as StdListener, UnixStream as StdStream};
    use std::process::Command;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::thread::{self, JoinHandle};

    use mio::{Events, Poll};

    // -- helpers ------------------------------------------------------------

    /// A fresh directory under /tmp, removed on drop (paths stay short:
    /// a socket path has at most 107 bytes).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("si-ctl-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create a temp dir");
            TempDir(dir)
        }

        fn sock(&self) -> PathBuf {
            self.0.join("control.sock")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Log lines written on the current thread (the server runs in the test
    /// thread, so each test sees its own).
    struct Capture;

    static CAPTURE: Capture = Capture;
    static CAPTURING: AtomicBool = AtomicBool::new(false);

    thread_local! {
        static LINES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            let line = format!("{} {}", record.level(), record.args());
            LINES.with(|l| l.borrow_mut().push(line));
        }
        fn flush(&self) {}
    }

    /// Starts capturing; false when another logger was installed first (the
    /// caller then skips its log assertions, loudly).
    fn capture_logs() -> bool {
        if log::set_logger(&CAPTURE).is_ok() {
            CAPTURING.store(true, Ordering::SeqCst);
        }
        log::set_max_level(log::LevelFilter::Debug);
        LINES.with(|l| l.borrow_mut().clear());
        let ok = CAPTURING.load(Ordering::SeqCst);
        if !ok {
            eprintln!("SKIPPED log assertions: another logger is installed");
        }
        ok
    }

    fn warnings() -> Vec<String> {
        LINES.with(|l| {
            l.borrow()
                .iter()
                .filter(|line| line.starts_with("WARN"))
                .cloned()
                .collect()
        })
    }

    const LISTENER: Token = Token(1);
    const CONN_BASE: usize = 100;

    type Answer = Box<dyn FnMut(&Request) -> Response + Send>;

    /// A real mio loop around a server, answering each request at once.
    struct Loop {
        poll: Poll,
        events: Events,
        server: Server,
        answer: Answer,
        /// The most connections open after any server call.
        max_open: usize,
        /// The requests handed out, in order.
        seen: Vec<Request>,
        /// The longest any single server call took.
        slowest: Duration,
    }

    impl Loop {
        fn new(mut server: Server, answer: Answer) -> Loop {
            let poll = Poll::new().expect("create a poll");
            server
                .register(poll.registry(), LISTENER, CONN_BASE)
                .expect("register");
            Loop {
                poll,
                events: Events::with_capacity(256),
                server,
                answer,
                max_open: 0,
                seen: Vec::new(),
                slowest: Duration::ZERO,
            }
        }

        fn note(&mut self, started: Instant) {
            self.slowest = self.slowest.max(started.elapsed());
            self.max_open = self.max_open.max(self.server.open_connections());
        }

        /// One poll (at most 20 ms, so that conditions on other threads are
        /// checked often), its events, then the server's tick.
        fn turn(&mut self) {
            let now = Instant::now();
            let mut timeout = Duration::from_millis(20);
            if let Some(deadline) = self.server.next_deadline() {
                timeout = timeout.min(deadline.saturating_duration_since(now));
            }
            match self.poll.poll(&mut self.events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("poll: {e}"),
            }
            let tokens: Vec<Token> = self.events.iter().map(|e| e.token()).collect();
            for token in tokens {
                assert!(self.server.owns(token), "a foreign token {token:?}");
                let t0 = Instant::now();
                let requests = self.server.handle(self.poll.registry(), token, t0);
                self.note(t0);
                for (conn, request) in requests {
                    let response = (self.answer)(&request);
                    self.seen.push(request);
                    let t0 = Instant::now();
                    self.server.reply(self.poll.registry(), conn, &response, t0);
                    self.note(t0);
                }
            }
            let t0 = Instant::now();
            self.server.tick(self.poll.registry(), t0);
            self.note(t0);
        }

        /// Turns until `done`, failing after `limit`.
        fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Loop) -> bool) {
            let end = Instant::now() + limit;
            while !done(self) {
                assert!(Instant::now() < end, "condition not met within {limit:?}");
                self.turn();
            }
        }
    }

    /// A server loop on its own thread until the flag is set (for the
    /// client's end-to-end test).
    fn serve_in_thread(server: Server, answer: Answer) -> (Arc<AtomicBool>, JoinHandle<()>) {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let mut lp = Loop::new(server, answer);
            let end = Instant::now() + Duration::from_secs(20);
            while !flag.load(Ordering::SeqCst) && Instant::now() < end {
                lp.turn();
            }
        });
        (stop, handle)
    }

    fn connect(path: &Path) -> StdStream {
        let s = StdStream::connect(path).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    /// Reads until EOF; a reset after data (the server closed with bytes
    /// of ours unread) ends the answer too.
    fn read_all(s: &mut StdStream) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match s.read(&mut chunk) {
                Ok(0) => return Ok(out),
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => return Ok(out),
                Err(e) => return Err(e),
            }
        }
    }

    /// A client thread: connects, sends `bytes`, reads the answer.
    fn ask(path: &Path, bytes: &[u8]) -> JoinHandle<io::Result<Vec<u8>>> {
        let path = path.to_path_buf();
        let bytes = bytes.to_vec();
        thread::spawn(move || {
            let mut s = connect(&path);
            s.write_all(&bytes)?;
            read_all(&mut s)
        })
    }

    fn join<T>(h: JoinHandle<T>) -> T {
        h.join().expect("client thread panicked")
    }

    fn units() -> Vec<UnitStatus> {
        vec![
            UnitStatus {
                name: "egress".into(),
                kind: "daemon".into(),
                state: "ready".into(),
                pid: Some(12),
                uptime: Some(Duration::from_millis(252_125)),
                restarts: 0,
                code: None,
                check: Some("tcp:127.0.0.1:3128".into()),
                detail: String::new(),
            },
            UnitStatus {
                name: "web".into(),
                kind: "daemon".into(),
                state: "backoff".into(),
                pid: None,
                uptime: None,
                restarts: 3,
                code: Some(1),
                check: None,
                detail: "restart in 4s".into(),
            },
        ]
    }

    fn answer_status() -> Answer {
        Box::new(|r: &Request| match r {
            Request::Status => Response::Status(units()),
            Request::Health => Response::Health(Vec::new()),
            other => Response::Done(format!("did {other:?}")),
        })
    }

    // -- protocol -----------------------------------------------------------

    #[test]
    fn parse_request_accepts_the_grammar() {
        let ok = |line: &[u8]| parse_request(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert_eq!(ok(b"status\n"), Request::Status);
        assert_eq!(ok(b"status\r\n"), Request::Status);
        assert_eq!(
            ok(b"status"),
            Request::Status,
            "a half-closed client's line"
        );
        assert_eq!(ok(b"health\n"), Request::Health);
        assert_eq!(ok(b"stop web\n"), Request::Stop("web".into()));
        assert_eq!(ok(b"start a.b-c_9\n"), Request::Start("a.b-c_9".into()));
        assert_eq!(ok(b"restart web\r\n"), Request::Restart("web".into()));
        assert_eq!(
            ok(b"signal web HUP\n"),
            Request::Signal("web".into(), "HUP".into())
        );
        assert_eq!(
            ok(b"signal web SIGRTMIN+3\n"),
            Request::Signal("web".into(), "SIGRTMIN+3".into())
        );
        assert_eq!(
            ok(b"signal web 10\n"),
            Request::Signal("web".into(), "10".into())
        );
        // Exactly REQUEST_MAX bytes, newline included.
        let name = "n".repeat(REQUEST_MAX - "stop \n".len());
        let line = format!("stop {name}\n");
        assert_eq!(line.len(), REQUEST_MAX);
        assert_eq!(ok(line.as_bytes()), Request::Stop(name));
        // Every request's own line parses back to it.
        for r in [
            Request::Status,
            Request::Health,
            Request::Stop("a".into()),
            Request::Start("b".into()),
            Request::Restart("c".into()),
            Request::Signal("d".into(), "USR1".into()),
        ] {
            assert_eq!(ok(r.to_line().as_bytes()), r);
        }
    }

    #[test]
    fn parse_request_rejects_everything_else_with_a_one_line_reason() {
        let too_long = format!("stop {}\n", "n".repeat(REQUEST_MAX));
        let cases: Vec<(&[u8], &str)> = vec![
            (b"", "empty request"),
            (b"\n", "empty request"),
            (b"\r\n", "empty request"),
            (too_long.as_bytes(), "longer than 1024"),
            (b"status now\n", "status takes no arguments"),
            (b"health x\n", "health takes no arguments"),
            (b"stop\n", "stop takes one daemon name"),
            (b"stop a b\n", "stop takes one daemon name"),
            (b"restart\n", "restart takes one daemon name"),
            (b"stop  web\n", "single spaces"),
            (b" status\n", "single spaces"),
            (b"status \n", "single spaces"),
            (b"stop bad/name\n", "invalid daemon name 'bad/name'"),
            (b"stop w\xc3\xa9b\n", "invalid daemon name"),
            (b"signal web\n", "signal takes a daemon name and a signal"),
            (b"signal web HUP now\n", "signal takes"),
            (b"signal web H;UP\n", "invalid signal 'H;UP'"),
            (b"signal web \n", "single spaces"),
            (b"STATUS\n", "unknown request 'STATUS'"),
            (b"status\tx\n", "unknown request 'status\\tx'"),
            (b"\xff\xfe\n", "not valid UTF-8"),
            (b"status\nstatus\n", "one line"),
            (b"sta\rtus\n", "one line"),
            (b"\x1b[31mevil\n", "unknown request '\\u{1b}[31mevil'"),
        ];
        for (line, want) in cases {
            let err = parse_request(line).expect_err(&format!("{line:?} must be rejected"));
            assert!(err.contains(want), "{line:?}: {err:?} lacks {want:?}");
            assert!(!err.contains('\n') && !err.contains('\r'), "{err:?}");
        }
        // A long unknown verb is quoted shortened.
        let err = parse_request("x".repeat(500).as_bytes()).unwrap_err();
        assert!(err.len() < 200, "{err}");
    }

    fn round_trip(request: &Request, response: Response) {
        let bytes = encode_response(&response);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.ends_with('\n'), "{text:?}");
        assert_eq!(
            decode_response(request, &bytes),
            Ok(response.clone()),
            "{text:?}"
        );
    }

    #[test]
    fn every_response_survives_encode_and_decode() {
        let nasty = "tab\there\nnewline \\back\\slash\\ \r cr \\t not-a-tab -";
        let mut list = units();
        list.push(UnitStatus {
            name: "x".into(),
            kind: "main".into(),
            state: "given-up".into(),
            pid: Some(-1),
            uptime: Some(Duration::new(90061, 123_456_789)),
            restarts: u32::MAX,
            code: Some(-15),
            check: Some(nasty.into()),
            detail: nasty.into(),
        });
        list.push(UnitStatus {
            name: "-".into(),
            kind: String::new(),
            state: "\\".into(),
            pid: None,
            uptime: Some(Duration::ZERO),
            restarts: 0,
            code: None,
            check: Some("-".into()),
            detail: "-".into(),
        });
        list.push(UnitStatus {
            check: Some(String::new()),
            ..list[1].clone()
        });
        round_trip(&Request::Status, Response::Status(list));
        round_trip(&Request::Status, Response::Status(Vec::new()));
        round_trip(&Request::Health, Response::Health(Vec::new()));
        round_trip(
            &Request::Health,
            Response::Health(vec!["web is not ready".into(), nasty.into(), "-".into()]),
        );
        for r in [
            Request::Stop("a".into()),
            Request::Start("a".into()),
            Request::Restart("a".into()),
            Request::Signal("a".into(), "HUP".into()),
        ] {
            round_trip(&r, Response::Done(String::new()));
            round_trip(&r, Response::Done("stopping a".into()));
            round_trip(&r, Response::Done(nasty.into()));
            round_trip(&r, Response::Error("no daemon named a".into()));
        }
        for r in [Request::Status, Request::Health] {
            round_trip(&r, Response::Error(nasty.into()));
            round_trip(&r, Response::Error(String::new()));
        }
    }

    #[test]
    fn the_wire_format_is_what_the_module_doc_says() {
        assert_eq!(
            encode_response(&Response::Status(units())),
            b"ok\n\
              egress\tdaemon\tready\t12\t252.125000000\t0\t-\ttcp:127.0.0.1:3128\t\n\
              web\tdaemon\tbackoff\t-\t-\t3\t1\t-\trestart in 4s\n"
        );
        assert_eq!(encode_response(&Response::Health(vec![])), b"ok\n");
        assert_eq!(
            encode_response(&Response::Health(vec!["a\nb".into(), "c".into()])),
            b"unhealthy\na\\nb\nc\n"
        );
        assert_eq!(encode_response(&Response::Done(String::new())), b"ok\n");
        assert_eq!(
            encode_response(&Response::Done("done".into())),
            b"ok\ndone\n"
        );
        assert_eq!(
            encode_response(&Response::Error("no".into())),
            b"error no\n"
        );
    }

    #[test]
    fn decode_response_is_strict() {
        let bad: Vec<(Request, &[u8], &str)> = vec![
            (Request::Status, b"", "empty"),
            (Request::Status, b"ok", "newline"),
            (Request::Status, b"ok\na\tb\n", "2 fields"),
            (
                Request::Status,
                b"ok\na\tb\tc\tx\t-\t0\t-\t-\t\n",
                "bad pid",
            ),
            (
                Request::Status,
                b"ok\na\tb\tc\t-\t1.2.3\t0\t-\t-\t\n",
                "bad uptime",
            ),
            (
                Request::Status,
                b"ok\na\tb\tc\t-\t-\t-1\t-\t-\t\n",
                "bad restarts",
            ),
            (
                Request::Status,
                b"ok\na\\q\tb\tc\t-\t-\t0\t-\t-\t\n",
                "unknown escape",
            ),
            (
                Request::Status,
                b"ok\na\tb\tc\t-\t-\t0\t-\t-\tend\\\n",
                "lone backslash",
            ),
            (Request::Status, b"unhealthy\n", "expected ok or error"),
            (Request::Health, b"ok\nstray\n", "unexpected lines"),
            (
                Request::Health,
                b"maybe\n",
                "expected ok, unhealthy or error",
            ),
            (
                Request::Stop("a".into()),
                b"ok\none\ntwo\n",
                "more than one line",
            ),
            (
                Request::Stop("a".into()),
                b"error x\nmore\n",
                "after an error",
            ),
            (Request::Stop("a".into()), b"ok\n\xff\n", "UTF-8"),
        ];
        for (request, bytes, want) in bad {
            let err = decode_response(&request, bytes).expect_err(&format!("{bytes:?}"));
            assert!(err.contains(want), "{bytes:?}: {err:?} lacks {want:?}");
        }
        assert_eq!(
            decode_response(&Request::Health, b"unhealthy\n"),
            Ok(Response::Health(vec!["unhealthy (no reason given)".into()])),
            "unhealthy is never read as healthy"
        );
        assert_eq!(
            decode_response(&Request::Status, b"error\n"),
            Ok(Response::Error(String::new()))
        );
    }

    // -- server -------------------------------------------------------------

    #[test]
    fn a_status_request_is_answered_and_the_connection_closed() {
        let dir = TempDir::new();
        let server = Server::bind(&dir.sock()).expect("bind");
        assert_eq!(server.path(), dir.sock());
        let mut lp = Loop::new(server, answer_status());
        assert!(lp.server.owns(LISTENER));
        assert!(lp.server.owns(Token(CONN_BASE)));
        assert!(lp.server.owns(Token(CONN_BASE + MAX_CONNS - 1)));
        assert!(!lp.server.owns(Token(CONN_BASE + MAX_CONNS)));
        assert!(!lp.server.owns(Token(0)));
        let client = ask(&dir.sock(), b"status\n");
        lp.run_until(Duration::from_secs(5), |_| client.is_finished());
        let answer = join(client).expect("the answer");
        assert_eq!(answer, encode_response(&Response::Status(units())));
        assert_eq!(lp.seen, [Request::Status]);
        assert_eq!(lp.server.open_connections(), 0);
        assert_eq!(lp.server.next_deadline(), None, "idle: no wake-up");
        // A half-closed client's request without a newline is served too.
        let path = dir.sock();
        let client = thread::spawn(move || {
            let mut s = connect(&path);
            s.write_all(b"stop web")?;
            s.shutdown(std::net::Shutdown::Write)?;
            read_all(&mut s)
        });
        lp.run_until(Duration::from_secs(5), |_| client.is_finished());
        assert_eq!(join(client).unwrap(), b"ok\ndid Stop(\"web\")\n");
        let stats = lp.server.stats();
        assert_eq!((stats.accepted, stats.malformed, stats.refused), (2, 0, 0));
    }

    #[test]
    fn the_socket_is_0600_nonblocking_and_cloexec_even_with_a_permissive_umask() {
        let dir = TempDir::new();
        let server = {
            let _umask = UMASK_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
            let old = stat::umask(Mode::empty());
            let bound = Server::bind_umask_locked(&dir.sock());
            let during = stat::umask(old);
            assert_eq!(during.bits(), 0, "bind restored the umask it found");
            bound.expect("bind")
        };
        let meta = std::fs::symlink_metadata(dir.sock()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!(meta.permissions().mode() & libc::S_IFMT, libc::S_IFSOCK);
        let fd = server.listener.as_raw_fd();
        let fd_flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        let fl_flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        assert!(fd_flags & libc::FD_CLOEXEC != 0, "close-on-exec");
        assert!(fl_flags & libc::O_NONBLOCK != 0, "non-blocking");
        drop(server);
        assert!(!dir.sock().exists(), "drop removes the socket file");
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let dir = TempDir::new();
        drop(StdListener::bind(dir.sock()).unwrap()); // leaves the file behind
        assert!(dir.sock().exists());
        let server = Server::bind(&dir.sock()).expect("a stale socket is replaced");
        let mut lp = Loop::new(server, answer_status());
        let client = ask(&dir.sock(), b"health\n");
        lp.run_until(Duration::from_secs(5), |_| client.is_finished());
        assert_eq!(join(client).unwrap(), b"ok\n");

        // Now a second server on the same path meets a live one.
        let err = Server::bind(&dir.sock()).expect_err("a live socket");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(
            err.to_string(),
            format!(
                "another sidecar-init is listening on {}",
                dir.sock().display()
            )
        );
        // The probe was a connection that said nothing: closed quietly.
        lp.run_until(Duration::from_secs(5), |lp| {
            lp.server.stats().accepted == 2 && lp.server.open_connections() == 0
        });
        assert_eq!(lp.server.stats().malformed, 0);
        // The first one still serves.
        let client = ask(&dir.sock(), b"health\n");
        lp.run_until(Duration::from_secs(5), |_| client.is_finished());
        assert_eq!(join(client).unwrap(), b"ok\n");
    }

    #[test]
    fn a_path_that_is_not_a_socket_is_left_alone() {
        let dir = TempDir::new();
        std::fs::write(dir.sock(), b"keep me").unwrap();
        let err = Server::bind(&dir.sock()).expect_err("a regular file");
        assert!(
            err.to_string()
                .contains("is not a socket; leaving it alone")
                && err.to_string().contains(&*dir.sock().to_string_lossy()),
            "{err}"
        );
        assert_eq!(std::fs::read(dir.sock()).unwrap(), b"keep me");

        let link = dir.0.join("link.sock");
        std::os::unix::fs::symlink(dir.sock(), &link).unwrap();
        assert!(Server::bind(&link).is_err(), "a symlink is not followed");
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );

        let missing = dir.0.join("no/such/dir/control.sock");
        let err = Server::bind(&missing).expect_err("no directory");
        assert!(err.to_string().starts_with("bind control socket "), "{err}");
    }

    #[test]
    fn drop_leaves_a_file_that_replaced_ours() {
        let dir = TempDir::new();
        let server = Server::bind(&dir.sock()).unwrap();
        std::fs::remove_file(dir.sock()).unwrap();
        std::fs::write(dir.sock(), b"someone else's").unwrap();
        drop(server);
        assert_eq!(std::fs::read(dir.sock()).unwrap(), b"someone else's");
    }

    #[test]
    fn a_silent_client_is_closed_after_the_idle_time() {
        let dir = TempDir::new();
        let mut server = Server::bind(&dir.sock()).unwrap();
        server.set_idle(Duration::from_millis(200));
        let mut lp = Loop::new(server, answer_status());
        let logging = capture_logs();
        let started = Instant::now();
        let silent = ask(&dir.sock(), b"");
        // A trickle does not extend the deadline.
        let path = dir.sock();
        let trickle = thread::spawn(move || {
            let mut s = connect(&path);
            for b in b"stat" {
                if s.write_all(&[*b]).is_err() {
                    break; // closed at the deadline: EPIPE
                }
                thread::sleep(Duration::from_millis(80));
            }
            read_all(&mut s)
        });
        lp.run_until(Duration::from_secs(5), |_| {
            silent.is_finished() && trickle.is_finished()
        });
        let elapsed = started.elapsed();
        assert_eq!(join(silent).unwrap(), b"", "closed without an answer");
        assert_eq!(join(trickle).unwrap(), b"");
        assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        assert_eq!(lp.server.stats().timed_out, 2);
        assert_eq!(lp.server.open_connections(), 0);
        if logging {
            let w = warnings();
            assert_eq!(w.len(), 1, "{w:?}");
            assert!(w[0].contains("idle for 0.2s"), "{w:?}");
        }
    }

    #[test]
    fn garbage_gets_an_error_and_a_close() {
        let dir = TempDir::new();
        let mut lp = Loop::new(Server::bind(&dir.sock()).unwrap(), answer_status());
        let logging = capture_logs();
        let cases: [(&[u8], &[u8]); 4] = [
            (b"hello\n", b"error unknown request 'hello'"),
            (b"\xff\xfe\n", b"error request is not valid UTF-8\n"),
            (
                b"status\nstatus\n",
                b"error bytes after the request line (one request per connection)\n",
            ),
            (b"stop ../etc\n", b"error invalid daemon name '../etc'"),
        ];
        for (i, (request, want)) in cases.iter().enumerate() {
            let client = ask(&dir.sock(), request);
            lp.run_until(Duration::from_secs(5), |_| client.is_finished());
            let answer = join(client).unwrap();
            assert!(
                answer.starts_with(want),
                "{:?}",
                String::from_utf8_lossy(&answer)
            );
            assert!(answer.ends_with(b"\n"));
            assert_eq!(lp.server.stats().malformed, i as u64 + 1);
        }
        assert!(lp.seen.is_empty(), "nothing reached the supervisor");
        assert_eq!(lp.server.open_connections(), 0);
        if logging {
            let w = warnings();
            assert_eq!(w.len(), 1, "one line per window: {w:?}");
            assert!(
                w[0].contains(
                    "answered 1 malformed request with an error (last: unknown request 'hello'"
                ),
                "{w:?}"
            );
            // The rest is counted for the end of the window.
            assert!(lp.server.next_deadline().is_some());
        }
    }

    #[test]
    fn a_megabyte_gets_an_error_without_being_buffered() {
        let dir = TempDir::new();
        let mut lp = Loop::new(Server::bind(&dir.sock()).unwrap(), answer_status());
        let path = dir.sock();
        let client = thread::spawn(move || {
            let mut s = connect(&path);
            let block = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < 1024 * 1024 {
                match s.write(&block) {
                    Ok(n) => sent += n,
                    Err(_) => break, // EPIPE once the server has closed
                }
            }
            (sent, read_all(&mut s))
        });
        lp.run_until(Duration::from_secs(5), |_| client.is_finished());
        let (sent, answer) = join(client);
        let answer = answer.unwrap();
        assert_eq!(answer, b"error request longer than 1024 bytes\n");
        assert!(sent < 1024 * 1024, "the server did not read it all: {sent}");
        assert_eq!(lp.server.open_connections(), 0);
        assert_eq!(lp.server.stats().malformed, 1);
    }

    #[test]
    fn two_hundred_connections_at_once_never_exceed_the_cap() {
        let dir = TempDir::new();
        let mut lp = Loop::new(Server::bind(&dir.sock()).unwrap(), answer_status());
        let path = dir.sock();
        let clients = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            (0..200)
                .map(|_| {
                    let mut s = connect_until(&path, deadline).expect("connect");
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    s.write_all(b"status\n").expect("send");
                    s
                })
                .collect::<Vec<_>>()
        });
        lp.run_until(Duration::from_secs(10), |lp| {
            clients.is_finished()
                && lp.server.stats().accepted == 200
                && lp.server.open_connections() == 0
        });
        let streams = join(clients);
        let full = encode_response(&Response::Status(units()));
        let mut served = 0;
        let mut closed = 0;
        for (i, mut s) in streams.into_iter().enumerate() {
            let answer = read_all(&mut s).unwrap();
            if answer == full {
                served += 1;
            } else {
                assert_eq!(answer, b"", "client {i}: all or nothing");
                closed += 1;
            }
            if i == 199 {
                assert_eq!(answer, full, "the newest is served");
            }
        }
        assert!(lp.max_open <= MAX_CONNS, "{} open", lp.max_open);
        assert_eq!(served + closed, 200);
        assert_eq!(lp.server.stats().evicted, closed);
        assert_eq!(lp.seen.len() as u64, served);
    }

    #[test]
    fn a_flood_of_idle_clients_does_not_lock_out_a_health_check() {
        let dir = TempDir::new();
        let mut lp = Loop::new(Server::bind(&dir.sock()).unwrap(), answer_status());
        let logging = capture_logs();
        let path = dir.sock();
        let release = Arc::new(AtomicBool::new(false));
        let hold = Arc::clone(&release);
        let clients = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            let idle: Vec<_> = (0..200)
                .map(|_| connect_until(&path, deadline).expect("connect"))
                .collect();
            let mut s = connect(&path);
            s.write_all(b"health\n").expect("send");
            let answer = read_all(&mut s);
            while !hold.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(5));
            }
            drop(idle);
            answer
        });
        lp.run_until(Duration::from_secs(10), |lp| lp.seen.len() == 1);
        lp.run_until(Duration::from_secs(5), |lp| {
            lp.server.open_connections() < MAX_CONNS
        });
        release.store(true, Ordering::SeqCst);
        lp.run_until(Duration::from_secs(5), |lp| {
            clients.is_finished() && lp.server.open_connections() == 0
        });
        assert_eq!(join(clients).unwrap(), b"ok\n");
        assert_eq!(lp.seen, [Request::Health]);
        assert!(lp.max_open <= MAX_CONNS, "{} open", lp.max_open);
        assert_eq!(lp.server.stats().evicted, 201 - MAX_CONNS as u64);
        assert_eq!(lp.server.stats().timed_out, 0);
        if logging {
            let w = warnings();
            assert_eq!(w.len(), 1, "not a line per connection: {w:?}");
            assert!(w[0].contains("to make room (at most 16 open)"), "{w:?}");
        }
    }

    #[test]
    fn a_client_that_never_reads_a_large_answer_is_closed_without_blocking() {
        let dir = TempDir::new();
        let mut server = Server::bind(&dir.sock()).unwrap();
        server.set_idle(Duration::from_millis(300));
        let big: Vec<UnitStatus> = (0..20_000)
            .map(|i| UnitStatus {
                name: format!("d{i}"),
                detail: "x".repeat(200),
                ..units()[0].clone()
            })
            .collect();
        let big = Response::Status(big);
        let full_len = encode_response(&big).len();
        assert!(full_len > 4 * 1024 * 1024);
        let mut lp = Loop::new(server, Box::new(move |_: &Request| big.clone()));
        let path = dir.sock();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let client = thread::spawn(move || {
            let mut s = connect(&path);
            s.write_all(b"status\n")?;
            let _ = rx.recv_timeout(Duration::from_secs(10)); // not reading meanwhile
            read_all(&mut s)
        });
        let started = Instant::now();
        lp.run_until(Duration::from_secs(5), |lp| {
            lp.server.stats().timed_out == 1
        });
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
        assert_eq!(lp.server.open_connections(), 0);
        // A blocking write would hang until the client reads (10 s); the
        // slowest call is building and encoding the 4 MiB answer, which a
        // debug build on a busy machine may take a second or more to do.
        assert!(
            lp.slowest < Duration::from_secs(4),
            "a call blocked: {:?}",
            lp.slowest
        );
        tx.send(()).unwrap();
        let got = join(client).unwrap();
        assert!(
            got.len() < full_len,
            "cut short: {} of {full_len}",
            got.len()
        );
        assert!(got.starts_with(b"ok\n"));
    }

    #[test]
    fn a_connect_flood_is_accepted_in_batches_and_the_listener_re_armed() {
        let dir = TempDir::new();
        let mut server = Server::bind(&dir.sock()).unwrap();
        let mut poll = Poll::new().unwrap();
        let mut events = Events::with_capacity(4);
        server
            .register(poll.registry(), LISTENER, CONN_BASE)
            .unwrap();
        let n = ACCEPT_BATCH + 10;
        let clients: Vec<StdStream> = (0..n).map(|_| connect(&dir.sock())).collect();
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        assert!(events.iter().any(|e| e.token() == LISTENER));
        let requests = server.handle(poll.registry(), LISTENER, Instant::now());
        assert!(requests.is_empty(), "nobody has said anything yet");
        assert_eq!(server.stats().accepted, ACCEPT_BATCH as u64, "one batch");
        assert_eq!(server.open_connections(), MAX_CONNS);
        // The rest are reported again without a new connection (among
        // the new connections' own events).
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            assert!(Instant::now() < end, "the listener was not re-armed");
            events.clear();
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            if events.iter().any(|e| e.token() == LISTENER) {
                break;
            }
        }
        server.handle(poll.registry(), LISTENER, Instant::now());
        assert_eq!(server.stats().accepted, n as u64);
        assert_eq!(server.stats().evicted, (n - MAX_CONNS) as u64);
        drop(clients);
    }

    #[test]
    fn only_root_and_our_uid_are_trusted() {
        assert!(trusted_uid(0, 1000));
        assert!(trusted_uid(1000, 1000));
        assert!(!trusted_uid(1001, 1000));
        assert!(trusted_uid(0, 0));
        assert!(!trusted_uid(65534, 0));
    }

    #[test]
    fn a_reply_to_a_connection_that_is_gone_is_ignored() {
        let dir = TempDir::new();
        let mut server = Server::bind(&dir.sock()).unwrap();
        let poll = Poll::new().unwrap();
        server
            .register(poll.registry(), LISTENER, CONN_BASE)
            .unwrap();
        let mut s = connect(&dir.sock());
        s.write_all(b"status\n").unwrap();
        let requests = server.handle(poll.registry(), LISTENER, Instant::now());
        assert_eq!(requests.len(), 1, "the request was read at accept");
        let (conn, request) = requests[0].clone();
        assert_eq!(request, Request::Status);
        assert_eq!(
            server.next_deadline(),
            None,
            "no timeout while the supervisor owes the answer"
        );
        drop(s);
        server.reply(
            poll.registry(),
            conn,
            &Response::Status(units()),
            Instant::now(),
        );
        assert_eq!(server.open_connections(), 0, "EPIPE closes it");
        // The same slot is taken by a later connection: the old id is stale.
        let mut s2 = connect(&dir.sock());
        s2.write_all(b"health\n").unwrap();
        let requests = server.handle(poll.registry(), LISTENER, Instant::now());
        let (conn2, _) = requests[0].clone();
        assert_ne!(conn, conn2);
        server.reply(
            poll.registry(),
            conn,
            &Response::Error("stale".into()),
            Instant::now(),
        );
        assert_eq!(server.open_connections(), 1, "a stale id touches nothing");
        server.reply(
            poll.registry(),
            conn2,
            &Response::Health(vec![]),
            Instant::now(),
        );
        assert_eq!(read_all(&mut s2).unwrap(), b"ok\n");
        // Tokens: a bad layout is refused.
        let mut other = Server::bind(&dir.0.join("b.sock")).unwrap();
        assert!(other.register(poll.registry(), Token(5), 0).is_err());
        assert!(
            other
                .register(poll.registry(), Token(0), usize::MAX - 3)
                .is_err()
        );
    }

    /// Not a test on its own: the peer-credential test runs the test binary
    /// again as another uid with this test selected, to connect from there.
    #[test]
    fn peer_helper_connects_when_asked() {
        let Ok(path) = std::env::var("SIDECAR_INIT_CONTROL_TEST_PEER") else {
            return;
        };
        let mut s = connect(Path::new(&path));
        let _ = s.write_all(b"status\n");
        let answer = read_all(&mut s).unwrap_or_default();
        println!("ANSWER:{}", String::from_utf8_lossy(&answer).escape_debug());
    }

    #[test]
    fn a_peer_that_is_not_root_or_us_is_refused_and_logged_once() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!(
                "SKIPPED a_peer_that_is_not_root_or_us_is_refused: needs root to run a peer as uid 65534"
            );
            return;
        }
        if Command::new("setpriv").arg("--version").output().is_err() {
            eprintln!("SKIPPED a_peer_that_is_not_root_or_us_is_refused: no setpriv");
            return;
        }
        let dir = TempDir::new();
        let mut lp = Loop::new(Server::bind(&dir.sock()).unwrap(), answer_status());
        let logging = capture_logs();
        // Let uid 65534 reach the socket, so that only SO_PEERCRED stands
        // in its way.
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.sock(), std::fs::Permissions::from_mode(0o666)).unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(&exe)
            .args([
                "--exact",
                "control::tests::peer_helper_connects_when_asked",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SIDECAR_INIT_CONTROL_TEST_PEER", dir.sock())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn setpriv");
        let mut status = None;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            lp.run_until(Duration::from_secs(10), |_| {
                status = child.try_wait().expect("wait");
                status.is_some()
            });
        }));
        if result.is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the peer did not finish");
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("ANSWER:error permission denied"),
            "stdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(status.unwrap().success(), "{stdout}");
        let stats = lp.server.stats();
        assert_eq!((stats.refused, stats.accepted), (1, 0));
        assert!(lp.seen.is_empty());
        if logging {
            assert_eq!(
                warnings(),
                ["WARN control socket: refused 1 connection (uid 65534: not root or ours)"]
            );
        }
    }

    #[test]
    fn warnings_are_one_line_per_window_with_the_counts() {
        let t0 = Instant::now();
        let w = LOG_WINDOW;
        let idle = IDLE;
        let mut c = Complaints::default();
        assert_eq!(c.flush(t0, w, idle), None);
        assert_eq!(c.deadline(w), None);
        c.refuse(Some(1000));
        assert_eq!(
            c.flush(t0, w, idle).as_deref(),
            Some("control socket: refused 1 connection (uid 1000: not root or ours)")
        );
        for i in 0..12 {
            c.refuse(Some(1000 + i % 6));
            assert_eq!(c.flush(t0 + Duration::from_secs(1), w, idle), None);
        }
        c.malformed += 3;
        c.last_malformed = "empty request".into();
        c.evicted += 5;
        c.timed_out += 1;
        c.accept_failed += 2;
        c.last_accept_error = "Too many open files".into();
        assert_eq!(c.deadline(w), Some(t0 + w));
        assert_eq!(c.flush(t0 + w - Duration::from_millis(1), w, idle), None);
        assert_eq!(
            c.flush(t0 + w, w, idle).as_deref(),
            Some(
                "control socket: refused 12 connections (uids 1000, 1001, 1002, 1003, ...: not root or ours); \
                 answered 3 malformed requests with an error (last: empty request); \
                 closed 5 connections to make room (at most 16 open); \
                 closed 1 connection idle for 5s; \
                 accept failed 2 times (last: Too many open files)"
            )
        );
        assert_eq!(c.deadline(w), None, "counts start again");
        c.refuse(None);
        assert_eq!(c.deadline(w), Some(t0 + 2 * w));
        assert_eq!(
            c.flush(t0 + 3 * w, w, idle).as_deref(),
            Some("control socket: refused 1 connection (uid unknown: not root or ours)")
        );
    }

    // -- client -------------------------------------------------------------

    /// A one-connection server speaking the protocol from a script: accepts
    /// one client, reads its line, writes `answer` and closes; returns the
    /// line. Every wait is bounded.
    fn fake_server(path: &Path, answer: &[u8]) -> JoinHandle<String> {
        let listener = StdListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let answer = answer.to_vec();
        thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(5);
            let mut s = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < end => {
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("fake server: accept: {e}"),
                }
            };
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut line = Vec::new();
            let mut byte = [0u8];
            while !line.ends_with(b"\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                line.push(byte[0]);
            }
            let _ = s.write_all(&answer);
            String::from_utf8(line).unwrap()
        })
    }

    struct Ran {
        code: i32,
        out: String,
        err: String,
    }

    fn run_client(args: &[&str], sockets: &[PathBuf], timeout: Duration) -> Ran {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = client_run(&args, sockets, timeout, &mut out, &mut err);
        Ran {
            code,
            out: String::from_utf8(out).unwrap(),
            err: String::from_utf8(err).unwrap(),
        }
    }

    /// Runs the client against a fake server giving `answer`; the result and
    /// the request line the server got.
    fn against(args: &[&str], answer: &[u8]) -> (Ran, String) {
        let dir = TempDir::new();
        let server = fake_server(&dir.sock(), answer);
        let ran = run_client(args, &[dir.sock()], Duration::from_secs(5));
        (ran, join(server))
    }

    #[test]
    fn status_prints_an_aligned_table() {
        let (ran, line) = against(&["status"], &encode_response(&Response::Status(units())));
        assert_eq!(line, "status\n");
        assert_eq!((ran.code, ran.err.as_str()), (0, ""));
        assert_eq!(
            ran.out,
            "NAME    STATE    PID  UPTIME  RESTARTS  CODE  CHECK               DETAIL\n\
             egress  ready    12   4m12s   0         -     tcp:127.0.0.1:3128\n\
             web     backoff  -    -       3         1     -                   restart in 4s\n"
        );
        // Without any detail, no DETAIL column; control characters shown
        // escaped.
        let mut list = units();
        list[1].detail.clear();
        list[1].name = "we\tb".into();
        let (ran, _) = against(&["status"], &encode_response(&Response::Status(list)));
        assert_eq!(
            ran.out,
            "NAME    STATE    PID  UPTIME  RESTARTS  CODE  CHECK\n\
             egress  ready    12   4m12s   0         -     tcp:127.0.0.1:3128\n\
             we\\tb   backoff  -    -       3         1     -\n"
        );
        let (ran, _) = against(&["status"], b"ok\n");
        assert_eq!(ran.out, "NAME  STATE  PID  UPTIME  RESTARTS  CODE  CHECK\n");
    }

    #[test]
    fn uptimes_read_at_a_glance() {
        let h = |s: u64| human_duration(Duration::from_secs(s));
        assert_eq!(h(0), "0s");
        assert_eq!(h(3), "3s");
        assert_eq!(h(59), "59s");
        assert_eq!(h(60), "1m00s");
        assert_eq!(h(252), "4m12s");
        assert_eq!(h(3599), "59m59s");
        assert_eq!(h(3600), "1h00m");
        assert_eq!(h(2 * 3600 + 3 * 60 + 59), "2h03m");
        assert_eq!(h(86399), "23h59m");
        assert_eq!(h(3 * 86400 + 4 * 3600 + 1), "3d04h");
        assert_eq!(h(400 * 86400), "400d00h");
    }

    /// A strict JSON parser (RFC 8259) for checking the client's output.
    #[derive(Debug, PartialEq)]
    enum Json {
        Null,
        Bool(bool),
        Num(String),
        Str(String),
        Arr(Vec<Json>),
        Obj(Vec<(String, Json)>),
    }

    impl Json {
        fn get(&self, key: &str) -> &Json {
            match self {
                Json::Obj(fields) => fields
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v)
                    .unwrap_or_else(|| panic!("no {key}")),
                other => panic!("not an object: {other:?}"),
            }
        }
    }

    fn parse_json(text: &str) -> Result<Json, String> {
        struct P<'a> {
            s: &'a [u8],
            i: usize,
        }
        impl P<'_> {
            fn ws(&mut self) {
                while matches!(self.s.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                    self.i += 1;
                }
            }
            fn eat(&mut self, lit: &str) -> bool {
                if self.s[self.i..].starts_with(lit.as_bytes()) {
                    self.i += lit.len();
                    true
                } else {
                    false
                }
            }
            fn err<T>(&self, what: &str) -> Result<T, String> {
                Err(format!("{what} at byte {}", self.i))
            }
            fn value(&mut self) -> Result<Json, String> {
                self.ws();
                let v = match self.s.get(self.i) {
                    Some(b'{') => {
                        self.i += 1;
                        let mut fields = Vec::new();
                        self.ws();
                        if !self.eat("}") {
                            loop {
                                self.ws();
                                let Json::Str(k) = self.string()? else {
                                    unreachable!()
                                };
                                self.ws();
                                if !self.eat(":") {
                                    return self.err("expected :");
                                }
                                fields.push((k, self.value()?));
                                self.ws();
                                if self.eat("}") {
                                    break;
                                }
                                if !self.eat(",") {
                                    return self.err("expected , or }");
                                }
                            }
                        }
                        Json::Obj(fields)
                    }
                    Some(b'[') => {
                        self.i += 1;
                        let mut items = Vec::new();
                        self.ws();
                        if !self.eat("]") {
                            loop {
                                items.push(self.value()?);
                                self.ws();
                                if self.eat("]") {
                                    break;
                                }
                                if !self.eat(",") {
                                    return self.err("expected , or ]");
                                }
                            }
                        }
                        Json::Arr(items)
                    }
                    Some(b'"') => self.string()?,
                    Some(b't') if self.eat("true") => Json::Bool(true),
                    Some(b'f') if self.eat("false") => Json::Bool(false),
                    Some(b'n') if self.eat("null") => Json::Null,
                    Some(b'-' | b'0'..=b'9') => self.number()?,
                    _ => return self.err("expected a value"),
                };
                self.ws();
                Ok(v)
            }
            fn number(&mut self) -> Result<Json, String> {
                let start = self.i;
                self.eat("-");
                let digits = |p: &mut Self| {
                    let from = p.i;
                    while matches!(p.s.get(p.i), Some(b'0'..=b'9')) {
                        p.i += 1;
                    }
                    p.i - from
                };
                if self.eat("0") {
                    if matches!(self.s.get(self.i), Some(b'0'..=b'9')) {
                        return self.err("leading zero");
                    }
                } else if digits(self) == 0 {
                    return self.err("expected digits");
                }
                if self.eat(".") && digits(self) == 0 {
                    return self.err("expected fraction digits");
                }
                if self.eat("e") || self.eat("E") {
                    let _ = self.eat("+") || self.eat("-");
                    if digits(self) == 0 {
                        return self.err("expected exponent digits");
                    }
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).unwrap();
                Ok(Json::Num(text.to_string()))
            }
            fn hex4(&mut self) -> Result<u32, String> {
                let Some(h) = self.s.get(self.i..self.i + 4) else {
                    return self.err("short \\u");
                };
                let h = std::str::from_utf8(h).map_err(|e| e.to_string())?;
                let v = u32::from_str_radix(h, 16).map_err(|e| format!("\\u{h}: {e}"))?;
                self.i += 4;
                Ok(v)
            }
            fn string(&mut self) -> Result<Json, String> {
                if !self.eat("\"") {
                    return self.err("expected a string");
                }
                let mut out = String::new();
                loop {
                    let Some(&b) = self.s.get(self.i) else {
                        return self.err("unterminated string");
                    };
                    match b {
                        b'"' => {
                            self.i += 1;
                            return Ok(Json::Str(out));
                        }
                        0..0x20 => return self.err("raw control character in a string"),
                        b'\\' => {
                            self.i += 1;
                            let Some(&e) = self.s.get(self.i) else {
                                return self.err("lone backslash");
                            };
                            self.i += 1;
                            match e {
                                b'"' => out.push('"'),
                                b'\\' => out.push('\\'),
                                b'/' => out.push('/'),
                                b'b' => out.push('\u{8}'),
                                b'f' => out.push('\u{c}'),
                                b'n' => out.push('\n'),
                                b'r' => out.push('\r'),
                                b't' => out.push('\t'),
                                b'u' => {
                                    let mut v = self.hex4()?;
                                    if (0xD800..0xDC00).contains(&v) {
                                        if !self.eat("\\u") {
                                            return self.err("lone high surrogate");
                                        }
                                        let low = self.hex4()?;
                                        if !(0xDC00..0xE000).contains(&low) {
                                            return self.err("bad low surrogate");
                                        }
                                        v = 0x10000 + ((v - 0xD800) << 10) + (low - 0xDC00);
                                    }
                                    match char::from_u32(v) {
                                        Some(c) => out.push(c),
                                        None => return self.err("bad \\u escape"),
                                    }
                                }
                                _ => return self.err("unknown escape"),
                            }
                        }
                        _ => {
                            // Copy one UTF-8 character.
                            let rest = std::str::from_utf8(&self.s[self.i..])
                                .map_err(|e| e.to_string())?;
                            let c = rest.chars().next().unwrap();
                            out.push(c);
                            self.i += c.len_utf8();
                        }
                    }
                }
            }
        }
        let mut p = P {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        if p.i != p.s.len() {
            return p.err("trailing bytes");
        }
        Ok(v)
    }

    #[test]
    fn the_json_checker_is_strict() {
        for bad in [
            "",
            "[",
            "[1,]",
            "{\"a\":1,}",
            "\"a\nb\"",
            "\"\\x\"",
            "01",
            "1.",
            "[] []",
            "{a:1}",
            "\"\\ud800\"",
            "nul",
        ] {
            assert!(parse_json(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            parse_json(" [ {\"a\" : [null, true, -1.5e3, \"\\u00e9\\ud83d\\ude00\"]} ] ").unwrap(),
            Json::Arr(vec![Json::Obj(vec![(
                "a".into(),
                Json::Arr(vec![
                    Json::Null,
                    Json::Bool(true),
                    Json::Num("-1.5e3".into()),
                    Json::Str("é😀".into())
                ])
            )])])
        );
    }

    #[test]
    fn status_json_is_valid_json_whatever_the_strings_hold() {
        let nasty: String = (0u8..0x20)
            .map(char::from)
            .chain("\"\\/\u{7f}é😀\u{2028}-".chars())
            .collect();
        let mut list = units();
        list.push(UnitStatus {
            name: nasty.clone(),
            kind: "oneshot".into(),
            state: "finished".into(),
            pid: None,
            uptime: Some(Duration::new(3, 214_999_999)),
            restarts: 7,
            code: Some(0),
            check: Some(nasty.clone()),
            detail: nasty.clone(),
        });
        let (ran, _) = against(
            &["status", "--json"],
            &encode_response(&Response::Status(list)),
        );
        assert_eq!((ran.code, ran.err.as_str()), (0, ""));
        assert!(
            ran.out.starts_with(
                "[\n  {\"name\":\"egress\",\"kind\":\"daemon\",\"state\":\"ready\",\"pid\":12,\
             \"uptime_seconds\":252.125,\"restarts\":0,\"code\":null,\
             \"check\":\"tcp:127.0.0.1:3128\",\"detail\":\"\"},\n"
            ),
            "{}",
            ran.out
        );
        let parsed = parse_json(&ran.out).unwrap_or_else(|e| panic!("{e}: {}", ran.out));
        let Json::Arr(items) = &parsed else {
            panic!("not an array")
        };
        assert_eq!(items.len(), 3);
        assert_eq!(items[1].get("pid"), &Json::Null);
        assert_eq!(items[1].get("uptime_seconds"), &Json::Null);
        assert_eq!(items[1].get("code"), &Json::Num("1".into()));
        assert_eq!(items[1].get("check"), &Json::Null);
        assert_eq!(items[2].get("name"), &Json::Str(nasty.clone()));
        assert_eq!(items[2].get("check"), &Json::Str(nasty.clone()));
        assert_eq!(items[2].get("detail"), &Json::Str(nasty));
        assert_eq!(items[2].get("uptime_seconds"), &Json::Num("3.214".into()));
        assert_eq!(items[2].get("restarts"), &Json::Num("7".into()));

        // A second opinion, where python3 is at hand.
        if let Ok(mut py) = Command::new("python3")
            .args(["-c", "import json,sys; d=json.load(sys.stdin); print(len(d), d[2]['name'] == ''.join(map(chr, range(32))) + '\"\\\\/\\x7f\\u00e9\\U0001F600\\u2028-')"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        {
            py.stdin.take().unwrap().write_all(ran.out.as_bytes()).unwrap();
            let out = py.wait_with_output().unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), "3 True\n");
        } else {
            eprintln!("SKIPPED the python3 check of status --json: no python3");
        }

        let (ran, _) = against(&["status", "--json"], b"ok\n");
        assert_eq!(ran.out, "[]\n");
        assert_eq!(parse_json(&ran.out).unwrap(), Json::Arr(vec![]));
    }

    #[test]
    fn health_exits_0_when_healthy_and_1_with_each_problem() {
        let (ran, line) = against(&["health"], b"ok\n");
        assert_eq!(line, "health\n");
        assert_eq!(
            (ran.code, ran.out.as_str(), ran.err.as_str()),
            (0, "healthy\n", "")
        );
        let (ran, _) = against(
            &["health"],
            b"unhealthy\nweb is not ready (starting)\nshutting down\n",
        );
        assert_eq!(
            (ran.code, ran.out.as_str()),
            (1, "web is not ready (starting)\nshutting down\n")
        );
    }

    #[test]
    fn commands_print_the_answer_or_the_error() {
        let (ran, line) = against(&["stop", "web"], b"ok\nstopping web (SIGTERM)\n");
        assert_eq!(line, "stop web\n");
        assert_eq!(
            (ran.code, ran.out.as_str()),
            (0, "stopping web (SIGTERM)\n")
        );
        let (ran, line) = against(&["restart", "web"], b"ok\n");
        assert_eq!(line, "restart web\n");
        assert_eq!((ran.code, ran.out.as_str(), ran.err.as_str()), (0, "", ""));
        let (ran, line) = against(&["start", "db"], b"error no daemon named db\n");
        assert_eq!(line, "start db\n");
        assert_eq!(
            (ran.code, ran.out.as_str(), ran.err.as_str()),
            (1, "", "sidecar-init: no daemon named db\n")
        );
        let (ran, line) = against(&["signal", "web", "USR1"], b"ok\nsent SIGUSR1 to web\n");
        assert_eq!(line, "signal web USR1\n");
        assert_eq!(ran.code, 0);
        let (ran, _) = against(&["status"], b"ok\nnot\ta\tstatus\n");
        assert_eq!(ran.code, 1);
        assert!(ran.err.contains("unreadable answer from"), "{}", ran.err);
        let (ran, _) = against(&["status"], b"");
        assert_eq!(ran.code, 1);
        assert!(
            ran.err
                .contains("closed the connection without an answer (too many clients"),
            "{}",
            ran.err
        );
    }

    #[test]
    fn usage_errors_exit_2_and_say_what_is_expected() {
        let nowhere = [PathBuf::from("/nonexistent/sidecar-init.sock")];
        for (args, want) in [
            (&[][..], "a command is needed"),
            (&["stat"][..], "unknown command 'stat'"),
            (&["status", "--yaml"][..], "status takes only --json"),
            (&["health", "now"][..], "health takes no arguments"),
            (&["stop"][..], "stop takes one daemon name: stop NAME"),
            (&["start", "a", "b"][..], "start takes one daemon name"),
            (
                &["restart", "bad/name"][..],
                "restart: invalid daemon name 'bad/name'",
            ),
            (
                &["signal", "web"][..],
                "signal takes a daemon name and a signal",
            ),
            (
                &["signal", "web", "KILL ME"][..],
                "invalid signal 'KILL ME'",
            ),
        ] {
            let ran = run_client(args, &nowhere, Duration::from_secs(1));
            assert_eq!(ran.code, 2, "{args:?}: {}", ran.err);
            assert!(ran.err.contains(want), "{args:?}: {}", ran.err);
            assert!(ran.err.contains(USAGE), "{args:?}: {}", ran.err);
        }
        let ran = run_client(
            &["signal", "web", "BOGUS"],
            &nowhere,
            Duration::from_secs(1),
        );
        assert_eq!(ran.code, 2, "{}", ran.err);
        assert!(
            ran.err.contains("signal: 'BOGUS' is not a signal"),
            "{}",
            ran.err
        );
        let ran = run_client(&["--help"], &nowhere, Duration::from_secs(1));
        assert_eq!(
            (ran.code, ran.out.as_str()),
            (0, format!("{USAGE}\n{EXIT_CODES}\n").as_str())
        );
    }

    #[test]
    fn no_supervisor_exits_3_and_names_the_paths_tried() {
        let dir = TempDir::new();
        let stale = dir.0.join("stale.sock");
        drop(StdListener::bind(&stale).unwrap());
        let missing = dir.0.join("missing.sock");
        let ran = run_client(
            &["status"],
            &[missing.clone(), stale.clone()],
            Duration::from_secs(5),
        );
        assert_eq!(ran.code, NO_SUPERVISOR, "{}", ran.err);
        assert_eq!(
            ran.err,
            format!(
                "sidecar-init: no supervisor answers on {} (no such file), {} (connection refused)\n",
                missing.display(),
                stale.display()
            )
        );
        let ran = run_client(&["health"], &[], Duration::from_secs(5));
        assert_eq!(ran.code, NO_SUPERVISOR);

        // A server that accepts and never answers: a timeout.
        let hung = dir.0.join("hung.sock");
        let listener = StdListener::bind(&hung).unwrap();
        let started = Instant::now();
        let ran = run_client(
            &["health"],
            std::slice::from_ref(&hung),
            Duration::from_millis(300),
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(ran.code, NO_SUPERVISOR, "{}", ran.err);
        assert!(
            ran.err.contains(&format!(
                "{} (connected, but no answer within 0.3s)",
                hung.display()
            )),
            "{}",
            ran.err
        );
        drop(listener);
    }

    #[test]
    fn the_first_candidate_that_answers_is_used() {
        let dir = TempDir::new();
        let server = fake_server(&dir.sock(), b"ok\n");
        let ran = run_client(
            &["health"],
            &[dir.0.join("missing.sock"), dir.sock()],
            Duration::from_secs(5),
        );
        assert_eq!((ran.code, ran.out.as_str()), (0, "healthy\n"));
        join(server);
    }

    #[test]
    fn the_client_does_not_trust_a_socket_served_by_another_uid() {
        let python = Path::new("/usr/bin/python3");
        if !nix::unistd::geteuid().is_root() || !python.exists() {
            eprintln!(
                "SKIPPED the_client_does_not_trust_a_socket_served_by_another_uid: needs root and /usr/bin/python3"
            );
            return;
        }
        let dir = TempDir::new();
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
        let script = "import socket,sys\n\
                      s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(); s.settimeout(5)\n\
                      print('ready', flush=True)\n\
                      c,_=s.accept(); c.settimeout(5)\n\
                      try: c.sendall(b'ok\\n')\n\
                      except OSError: pass\n";
        let mut squatter = match Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(python)
            .args(["-c", script])
            .arg(dir.sock())
            .stdout(std::process::Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                eprintln!("SKIPPED the_client_does_not_trust...: setpriv: {e}");
                return;
            }
        };
        let mut ready = [0u8; 6];
        let got = squatter.stdout.as_mut().unwrap().read_exact(&mut ready);
        let ran = got.map(|()| run_client(&["health"], &[dir.sock()], Duration::from_secs(5)));
        let _ = squatter.kill();
        let _ = squatter.wait();
        let ran = ran.expect("the squatter did not start");
        assert_eq!(ran.code, NO_SUPERVISOR, "{}", ran.err);
        assert_eq!(ran.out, "", "its answer is not printed");
        assert!(
            ran.err
                .contains("(served by uid 65534, neither root nor ours: not trusted)"),
            "{}",
            ran.err
        );
    }

    #[test]
    fn the_client_reads_at_most_16_mib() {
        let dir = TempDir::new();
        let mut huge = b"ok\n".to_vec();
        huge.resize(RESPONSE_MAX + 2, b'x');
        let server = fake_server(&dir.sock(), &huge);
        let ran = run_client(&["status"], &[dir.sock()], Duration::from_secs(5));
        assert_eq!(ran.code, 1);
        assert!(ran.err.contains("larger than 16 MiB"), "{}", ran.err);
        join(server);
    }

    #[test]
    fn client_and_server_end_to_end() {
        let dir = TempDir::new();
        let (stop, handle) = serve_in_thread(Server::bind(&dir.sock()).unwrap(), answer_status());
        let sockets = [dir.sock()];
        let ran = run_client(&["status"], &sockets, Duration::from_secs(5));
        assert_eq!(ran.code, 0, "{}", ran.err);
        assert!(ran.out.starts_with("NAME    STATE"), "{}", ran.out);
        let ran = run_client(&["health"], &sockets, Duration::from_secs(5));
        assert_eq!((ran.code, ran.out.as_str()), (0, "healthy\n"));
        let ran = run_client(&["signal", "web", "HUP"], &sockets, Duration::from_secs(5));
        assert_eq!(
            (ran.code, ran.out.as_str()),
            (0, "did Signal(\"web\", \"HUP\")\n")
        );
        stop.store(true, Ordering::SeqCst);
        join(handle);
        assert!(!dir.sock().exists(), "the server removed its socket");
        let ran = run_client(&["health"], &sockets, Duration::from_secs(5));
        assert_eq!(ran.code, NO_SUPERVISOR);
    }
}
