//! Socket and file checks (`tcp:`, `http:`, `file:`; SPEC §8 and §10) that
//! never block the event loop.
//!
//! A [`Prober`] keeps at most one check in flight per id (a daemon's index).
//! Its sockets are non-blocking, close-on-exec (mio opens them with
//! `SOCK_NONBLOCK | SOCK_CLOEXEC`, so no child ever inherits one) and
//! registered on the caller's own mio `Poll` under `Token(token_base + id)`;
//! the caller routes their events back with [`Prober::ready`] and owns the
//! timeouts: a check that takes too long is abandoned with
//! [`Prober::cancel`]. No call here waits for the network.
//!
//! - `tcp`: a non-blocking `connect`; connected is success, and the
//!   connection is closed at once without sending anything.
//! - `http`: the same connect, then a one-shot HTTP/1.0 `GET` written here,
//!   then reading until the status line is complete: 200-399 is success.
//!   At most [`RESPONSE_MAX`] bytes are ever read, so a hostile server
//!   cannot grow memory; headers and body are not waited for.
//! - `file`: the path exists (following symlinks), decided at once.
//!
//! The status-line parser ([`parse_status_line`]) is pure and treats
//! "incomplete" as a normal state, the way httparse does.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use nix::errno::Errno;

use crate::check::Check;

/// A check's result: `Ok`, or why it failed, in a few words
/// ("Connection refused", "HTTP 503 Service Unavailable", "No such file or
/// directory"). "timed out" is the caller's to decide.
pub type Verdict = Result<(), String>;

/// Where a check stands after a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still in flight: its socket is registered and an event for its token
    /// will move it on.
    Pending,
    /// Finished. Nothing of it is left registered or open.
    Done(Verdict),
}

/// The most bytes of an HTTP response that are read: the status line must
/// end within them. Also the size of each HTTP check's buffer.
pub const RESPONSE_MAX: usize = 1024;

/// The longest reason phrase quoted in a failure, in characters (before
/// "..."), so that "HTTP 503 <reason>" stays within about 60 characters.
const REASON_MAX: usize = 48;

/// In-flight socket checks, at most one per id (a daemon's index).
pub struct Prober {
    /// The token of id 0; id `i` uses `Token(token_base + i)`. Every token
    /// at or above it is this prober's; the caller's are below it.
    token_base: usize,
    /// The checks in flight, in no order, with their ids: at most one per
    /// id, each with its socket registered under that id's token. A list,
    /// not a table indexed by id: it holds a few entries (one per daemon
    /// being checked), and an id of any size costs nothing.
    probes: Vec<(usize, Probe)>,
}

/// One socket check in flight.
struct Probe {
    /// The connecting or connected socket, registered under the id's token
    /// with WRITABLE (tcp) or READABLE | WRITABLE (http) interest, for the
    /// probe's whole life, so that it never needs re-registering.
    stream: TcpStream,
    /// What the next event should move on.
    phase: Phase,
    /// Empty for a tcp check. For an http check: the request while
    /// connecting and sending, then the response so far (exactly
    /// [`RESPONSE_MAX`] bytes long, of which `Receiving::filled` are data).
    /// Allocated once at start with room for both, so that no event
    /// allocates.
    buf: Vec<u8>,
}

/// The steps of a socket check, in order; tcp checks only connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// `connect` is under way. `then_send`: an http check, which goes on to
    /// `Sending`; otherwise connected means success.
    Connecting { then_send: bool },
    /// Writing the request in `buf`; `sent < buf.len()` bytes are written.
    Sending { sent: usize },
    /// Reading the status line into `buf`; `filled < RESPONSE_MAX` bytes
    /// are in, and they are an incomplete (not a wrong) status line.
    Receiving { filled: usize },
}

impl Prober {
    /// A prober with nothing in flight. Tokens `token_base + id` are this
    /// prober's; `token_base` is large (the caller's other tokens are below
    /// it).
    pub fn new(token_base: usize) -> Prober {
        Prober {
            token_base,
            probes: Vec::new(),
        }
    }

    /// Starts a check of a Tcp, Http or File check for `id`. A check
    /// already running for `id` is cancelled first.
    ///
    /// A File check completes at once: the path exists, following
    /// symlinks. Exec, Line and Notify checks are not the prober's:
    /// `Done(Err)` naming the kind. A socket check returns `Pending` with
    /// its socket registered under `Token(token_base + id)`, or `Done(Err)`
    /// when it fails at once (no socket, EADDRNOTAVAIL, ENETUNREACH, a
    /// refusal the kernel reports during `connect`). An http check's path
    /// is sent as it is, with a `/` put in front when it lacks one; a host
    /// or path that would break the request (whitespace or control
    /// characters) is `Done(Err)`.
    pub fn start(&mut self, registry: &Registry, id: usize, check: &Check) -> Outcome {
        self.cancel(registry, id);
        let (addr, request) = match check {
            Check::Tcp(addr) => (*addr, None),
            Check::Http { addr, host, path } => match http_request(host, path) {
                Ok(request) => (*addr, Some(request)),
                Err(why) => return Outcome::Done(Err(why)),
            },
            Check::File(path) => {
                // `metadata` follows symlinks: a dangling one does not exist.
                return Outcome::Done(std::fs::metadata(path).map(drop).map_err(|e| describe(&e)));
            }
            Check::Exec(_) => return not_ours("exec"),
            Check::Line(_) => return not_ours("line"),
            Check::Notify => return not_ours("notify"),
        };
        let Some(token) = self.token_base.checked_add(id).map(Token) else {
            return Outcome::Done(Err(format!("probe id {id} is out of range")));
        };
        let mut stream = match connect(addr) {
            Ok(stream) => stream,
            Err(e) => return Outcome::Done(Err(describe(&e))),
        };
        let interest = match request {
            None => Interest::WRITABLE,
            Some(_) => Interest::READABLE | Interest::WRITABLE,
        };
        if let Err(e) = registry.register(&mut stream, token, interest) {
            return Outcome::Done(Err(describe(&e)));
        }
        let phase = Phase::Connecting {
            then_send: request.is_some(),
        };
        let buf = request.unwrap_or_default();
        self.probes.push((id, Probe { stream, phase, buf }));
        // Nothing to try yet: the kernel reports the connection's outcome
        // through an event (registering reports a state that is already
        // there, so none is missed).
        Outcome::Pending
    }

    /// The id a token belongs to, if it is one of ours (at or above
    /// `token_base`), whether or not a check is in flight for it: an event
    /// can come for a check that has just finished or been cancelled, and
    /// [`ready`](Prober::ready) takes it as spurious.
    pub fn id_of(&self, token: Token) -> Option<usize> {
        token.0.checked_sub(self.token_base)
    }

    /// A readiness event for `id`'s socket: advances the check as far as it
    /// goes without blocking. Spurious and stale events are fine: `Pending`
    /// (or, with no check for `id`, `Pending` and nothing done).
    ///
    /// The flags are not trusted to say what can be done: each call tries
    /// the check's next step and lets `WouldBlock` say "not yet". That
    /// costs one syscall on a spurious event, and no flag combination
    /// (epoll reports errors and hang-ups together with either direction)
    /// can stall a check.
    pub fn ready(
        &mut self,
        registry: &Registry,
        id: usize,
        readable: bool,
        writable: bool,
        error: bool,
    ) -> Outcome {
        let _ = (readable, writable, error);
        let Some((_, probe)) = self.probes.iter_mut().find(|(i, _)| *i == id) else {
            return Outcome::Pending;
        };
        match probe.advance() {
            None => Outcome::Pending,
            Some(verdict) => {
                self.cancel(registry, id);
                Outcome::Done(verdict)
            }
        }
    }

    /// Abandons `id`'s check (the caller's timeout passed): deregisters and
    /// closes its socket. No-op if none.
    pub fn cancel(&mut self, registry: &Registry, id: usize) {
        let Some(at) = self.probes.iter().position(|(i, _)| *i == id) else {
            return;
        };
        let (_, mut probe) = self.probes.swap_remove(at);
        // Closing the socket would remove it from the epoll set anyway (it
        // is never duplicated); deregistering first is mio's contract, and
        // a failure has no consequence worth more than a debug line.
        if let Err(e) = registry.deregister(&mut probe.stream) {
            log::debug!("deregister probe {id}: {}", describe(&e));
        }
        drop(probe);
    }

    /// How many checks are in flight.
    pub fn in_flight(&self) -> usize {
        self.probes.len()
    }

    /// The raw fd of `id`'s socket, for tests of its flags.
    #[cfg(test)]
    fn raw_fd(&self, id: usize) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        let (_, probe) = self.probes.iter().find(|(i, _)| *i == id)?;
        Some(probe.stream.as_raw_fd())
    }
}

impl Probe {
    /// Moves the check on as far as it goes without blocking: `None` while
    /// it waits for an event, else its verdict (the caller then closes it).
    fn advance(&mut self) -> Option<Verdict> {
        loop {
            match self.phase {
                Phase::Connecting { then_send } => match connected(&self.stream) {
                    Ok(false) => return None,
                    Ok(true) if then_send => self.phase = Phase::Sending { sent: 0 },
                    Ok(true) => return Some(Ok(())),
                    Err(e) => return Some(Err(describe(&e))),
                },
                Phase::Sending { mut sent } => {
                    while sent < self.buf.len() {
                        match (&self.stream).write(&self.buf[sent..]) {
                            Ok(0) => {
                                return Some(Err("connection closed during the request".into()));
                            }
                            Ok(n) => sent += n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                self.phase = Phase::Sending { sent };
                                return None;
                            }
                            Err(e) => return Some(Err(describe(&e))),
                        }
                    }
                    // Reuse the request's allocation (capacity >= RESPONSE_MAX).
                    self.buf.clear();
                    self.buf.resize(RESPONSE_MAX, 0);
                    self.phase = Phase::Receiving { filled: 0 };
                }
                Phase::Receiving { mut filled } => loop {
                    match (&self.stream).read(&mut self.buf[filled..]) {
                        Ok(0) => return Some(Err("no HTTP response".into())),
                        Ok(n) => {
                            filled += n;
                            match parse_status(&self.buf[..filled]) {
                                Some(Ok((code, reason))) => {
                                    return Some(status_verdict(code, reason));
                                }
                                Some(Err(())) => return Some(Err("not an HTTP response".into())),
                                None if filled == RESPONSE_MAX => {
                                    return Some(Err(format!(
                                        "HTTP status line longer than {RESPONSE_MAX} bytes"
                                    )));
                                }
                                None => {}
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            self.phase = Phase::Receiving { filled };
                            return None;
                        }
                        Err(e) => return Some(Err(describe(&e))),
                    }
                },
            }
        }
    }
}

/// `Done(Err)` for a check kind that the caller runs itself.
fn not_ours(kind: &str) -> Outcome {
    Outcome::Done(Err(format!("a {kind} check is not a socket or file check")))
}

/// A non-blocking, close-on-exec TCP socket connecting to `addr`; an error
/// the kernel reports at once is returned. `EINTR` is retried with a new
/// socket (mio closes the first).
fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    loop {
        match TcpStream::connect(addr) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            result => return result,
        }
    }
}

/// Whether a non-blocking connect has finished: `Ok(true)` connected,
/// `Ok(false)` still under way, `Err` failed (mio's recipe: the pending
/// socket error first, then whether there is a peer).
fn connected(stream: &TcpStream) -> io::Result<bool> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) if e.raw_os_error() == Some(Errno::EINPROGRESS as i32) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The HTTP/1.0 request of an http check, or why `host` or `path` cannot
/// be sent. Its capacity is at least [`RESPONSE_MAX`], so that the same
/// buffer later holds the response.
fn http_request(host: &str, path: &str) -> Result<Vec<u8>, String> {
    // A space would end the request target; CR or LF would start a header.
    if let Some(c) = path.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("HTTP path {path:?} contains {c:?}"));
    }
    if let Some(c) = host.chars().find(|c| c.is_control()) {
        return Err(format!("HTTP host {host:?} contains {c:?}"));
    }
    let slash = if path.starts_with('/') { "" } else { "/" };
    let head = format!(
        "GET {slash}{path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: sidecar-init/{}\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    let mut buf = Vec::with_capacity(head.len().max(RESPONSE_MAX));
    buf.extend_from_slice(head.as_bytes());
    Ok(buf)
}

/// An error's description without the "(os error N)" that `io::Error`'s
/// `Display` adds: "Connection refused". The same as `runtime::describe`,
/// kept here so that this module does not depend on the runtime.
fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}

/// The verdict of a complete status line: 200-399 is `Ok`, anything else
/// `Err("HTTP <code> <reason>")`.
fn status_verdict(code: u16, reason: &[u8]) -> Verdict {
    if (200..400).contains(&code) {
        return Ok(());
    }
    let reason = printable(reason, REASON_MAX);
    if reason.is_empty() {
        Err(format!("HTTP {code}"))
    } else {
        Err(format!("HTTP {code} {reason}"))
    }
}

/// A server's bytes made safe to log: printable ASCII, each run of blanks
/// as one space between words (none at either end), any other byte as
/// `?`; at most `max` characters, then "..." when some were left out.
fn printable(bytes: &[u8], max: usize) -> String {
    let mut out = String::new();
    let mut space = false;
    for &b in bytes {
        let c = match b {
            b' ' | b'\t' => {
                space = !out.is_empty();
                continue;
            }
            b'!'..=b'~' => b as char,
            _ => '?',
        };
        if out.len() + usize::from(space) + 1 > max {
            out.push_str("...");
            return out;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.push(c);
    }
    out
}

/// Parses the status line at the start of an HTTP response:
/// `None` while `bytes` could still become one (incomplete is a normal
/// state), `Some(Ok(code))` once it is complete, `Some(Err(()))` as soon as
/// it cannot be one.
///
/// Accepted: `HTTP/<digit>.<digit> <3 digits>`, then a space and a reason
/// phrase (tab, space, visible ASCII or bytes >= 0x80), or no reason at
/// all, ending in CRLF or a bare LF. The verdict never changes as more
/// bytes follow. Public for fuzzing; the prober is its only user.
pub fn parse_status_line(bytes: &[u8]) -> Option<Result<u16, ()>> {
    parse_status(bytes).map(|r| r.map(|(code, _)| code))
}

/// [`parse_status_line`], also giving the reason phrase (without the line
/// end; possibly empty).
fn parse_status(bytes: &[u8]) -> Option<Result<(u16, &[u8]), ()>> {
    // The fixed-width start; `#` is any ASCII digit.
    const HEAD: &[u8] = b"HTTP/#.# ###";
    for (&b, &want) in bytes.iter().zip(HEAD) {
        let fits = if want == b'#' {
            b.is_ascii_digit()
        } else {
            b == want
        };
        if !fits {
            return Some(Err(()));
        }
    }
    let (head, rest) = bytes.split_at_checked(HEAD.len())?;
    let code = head[9..]
        .iter()
        .fold(0u16, |code, &d| code * 10 + u16::from(d - b'0'));
    let reason = match rest.first()? {
        b' ' => &rest[1..],
        b'\r' | b'\n' => rest,
        _ => return Some(Err(())),
    };
    for (i, &b) in reason.iter().enumerate() {
        match b {
            b'\n' => return Some(Ok((code, &reason[..i]))),
            b'\r' => {
                return match reason.get(i + 1)? {
                    b'\n' => Some(Ok((code, &reason[..i]))),
                    _ => Some(Err(())),
                };
            }
            b'\t' | b' '..=b'~' | 0x80..=0xff => {}
            _ => return Some(Err(())),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};
    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread::{self, JoinHandle};
    use std::time::{Duration, Instant};

    /// The prober's token base in these tests.
    const BASE: usize = 1 << 20;
    /// The longest any test waits for something that should happen.
    const LONG: Duration = Duration::from_secs(5);
    /// How long a test watches for something that should not happen.
    const SHORT: Duration = Duration::from_millis(300);

    // ---- the status-line parser ---------------------------------------

    #[test]
    fn status_lines_that_complete() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(Ok(200)));
        assert_eq!(parse_status_line(b"HTTP/1.0 204\r\n"), Some(Ok(204)));
        assert_eq!(parse_status_line(b"HTTP/1.0 204 \r\n"), Some(Ok(204)));
        assert_eq!(parse_status_line(b"HTTP/1.1 302 Found\n"), Some(Ok(302)));
        assert_eq!(parse_status_line(b"HTTP/1.0 503\n"), Some(Ok(503)));
        assert_eq!(
            parse_status_line(b"HTTP/2.0 999 \xe9t\xe9\tx\r\n"),
            Some(Ok(999))
        );
        // What follows the line does not matter.
        assert_eq!(
            parse_status_line(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n<garbage \x00"),
            Some(Ok(404))
        );
        assert_eq!(
            parse_status(b"HTTP/1.1 503 Service Unavailable\r\nX: y"),
            Some(Ok((503, &b"Service Unavailable"[..])))
        );
        assert_eq!(parse_status(b"HTTP/1.0 204\r\n"), Some(Ok((204, &b""[..]))));
    }

    #[test]
    fn every_prefix_of_a_status_line_is_incomplete() {
        for line in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"HTTP/1.0 204\r\n",
            b"HTTP/1.0 503 Service Unavailable\n",
        ] {
            for n in 0..line.len() {
                assert_eq!(
                    parse_status_line(&line[..n]),
                    None,
                    "{:?}",
                    String::from_utf8_lossy(&line[..n])
                );
            }
        }
    }

    #[test]
    fn what_cannot_become_a_status_line_fails_early() {
        for bad in [
            &b"<"[..],
            b"<html>",
            b"http/1.1 200 OK\r\n",
            b"HTTP/1.1 2x",
            b"HTTP/11 200",
            b"HTTP/1.1  200 OK",
            b"HTTP/1.1 2000 OK",
            b"HTTP/1.1 200OK",
            b"HTTP/1.1 200 OK\rX",
            b"HTTP/1.1 200 \x00",
            b"HTTP/1.1 200 O\x1bK\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
        ] {
            assert_eq!(
                parse_status_line(bad),
                Some(Err(())),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// The verdict never changes once given, however the bytes go on, and
    /// the parser never panics: pseudo-random inputs biased towards
    /// near-valid status lines.
    #[test]
    fn a_verdict_is_final() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"HTTP/1.0 2345\r\n\tOK\x00\x7f\xff";
        for _ in 0..20_000 {
            let mut bytes = b"HTTP/1.1 200 OK\r\n".to_vec();
            let keep = (next() % 18) as usize;
            bytes.truncate(keep);
            for _ in 0..next() % 12 {
                bytes.push(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            let mut first = None;
            for n in 0..=bytes.len() {
                let now = parse_status_line(&bytes[..n]);
                match first {
                    None => first = now,
                    Some(v) => {
                        assert_eq!(now, Some(v), "{:?} then {:?}", &bytes[..n - 1], &bytes[..n])
                    }
                }
            }
        }
    }

    #[test]
    fn failure_messages_are_short_and_printable() {
        assert_eq!(status_verdict(200, b"OK"), Ok(()));
        assert_eq!(status_verdict(399, b""), Ok(()));
        assert_eq!(status_verdict(199, b"x"), Err("HTTP 199 x".into()));
        assert_eq!(status_verdict(400, b""), Err("HTTP 400".into()));
        assert_eq!(
            status_verdict(503, b"Service Unavailable"),
            Err("HTTP 503 Service Unavailable".into())
        );
        assert_eq!(
            status_verdict(500, b"  Bad\x1b[31m \t \xe9t\xe9  "),
            Err("HTTP 500 Bad?[31m ?t?".into())
        );
        let long = status_verdict(500, &[b'x'; 5000]).unwrap_err();
        assert!(long.len() <= 60, "{long}");
        assert!(long.ends_with("..."), "{long}");
        assert_eq!(printable(&[b'a'; REASON_MAX], REASON_MAX).len(), REASON_MAX);
        assert_eq!(printable(b"a   ", 1), "a");
        assert_eq!(printable(b"ab c", 2), "ab...");
    }

    #[test]
    fn the_request() {
        let request = http_request("localhost:8080", "/health?x=1").unwrap();
        let want = format!(
            "GET /health?x=1 HTTP/1.0\r\nHost: localhost:8080\r\nUser-Agent: sidecar-init/{}\r\nConnection: close\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(String::from_utf8(request.clone()).unwrap(), want);
        assert!(request.capacity() >= RESPONSE_MAX);
        assert!(
            http_request("h", "")
                .unwrap()
                .starts_with(b"GET / HTTP/1.0\r\n")
        );
        assert!(
            http_request("h", "x")
                .unwrap()
                .starts_with(b"GET /x HTTP/1.0\r\n")
        );
        assert!(http_request("h", "/a b").is_err());
        assert!(http_request("h", "/a\r\nX-Evil: 1").is_err());
        assert!(http_request("h\r\nX-Evil: 1", "/").is_err());
    }

    // ---- a real event loop ----------------------------------------------

    /// A mio loop with a prober on it, as the runtime would drive one.
    struct Harness {
        poll: Poll,
        events: Events,
        prober: Prober,
    }

    impl Harness {
        fn new() -> Harness {
            Harness {
                poll: Poll::new().expect("Poll::new"),
                events: Events::with_capacity(64),
                prober: Prober::new(BASE),
            }
        }

        fn start(&mut self, id: usize, check: &Check) -> Outcome {
            self.prober.start(self.poll.registry(), id, check)
        }

        fn cancel(&mut self, id: usize) {
            self.prober.cancel(self.poll.registry(), id);
        }

        /// Runs the loop until `stop(results)` or `within` has passed,
        /// adding every completion to `results`. Every wait is bounded.
        fn pump(
            &mut self,
            within: Duration,
            results: &mut HashMap<usize, Verdict>,
            stop: impl Fn(&HashMap<usize, Verdict>) -> bool,
        ) {
            let deadline = Instant::now() + within;
            while !stop(results) {
                let now = Instant::now();
                if now >= deadline {
                    return;
                }
                match self.poll.poll(&mut self.events, Some(deadline - now)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => panic!("poll: {e}"),
                }
                for event in &self.events {
                    let id = self
                        .prober
                        .id_of(event.token())
                        .expect("only prober tokens");
                    let outcome = self.prober.ready(
                        self.poll.registry(),
                        id,
                        event.is_readable(),
                        event.is_writable(),
                        event.is_error(),
                    );
                    if let Outcome::Done(verdict) = outcome {
                        assert!(
                            results.insert(id, verdict).is_none(),
                            "id {id} finished twice"
                        );
                    }
                }
            }
        }

        /// `id`'s verdict, within `within`; `None` if still pending then.
        fn wait(&mut self, id: usize, within: Duration) -> Option<Verdict> {
            let mut results = HashMap::new();
            self.pump(within, &mut results, |r| r.contains_key(&id));
            results.remove(&id)
        }

        /// Starts `check` as id 7 and waits for its verdict.
        fn run(&mut self, check: &Check) -> Verdict {
            match self.start(7, check) {
                Outcome::Done(verdict) => verdict,
                Outcome::Pending => {
                    let verdict = self
                        .wait(7, LONG)
                        .unwrap_or_else(|| panic!("{check:?} still pending after {LONG:?}"));
                    assert_eq!(self.prober.in_flight(), 0);
                    verdict
                }
            }
        }

        /// How many events for `id`'s token come within `within`.
        fn events_for(&mut self, id: usize, within: Duration) -> usize {
            let deadline = Instant::now() + within;
            let mut seen = 0;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    return seen;
                }
                match self.poll.poll(&mut self.events, Some(deadline - now)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => panic!("poll: {e}"),
                }
                seen += self
                    .events
                    .iter()
                    .filter(|e| e.token() == Token(BASE + id))
                    .count();
            }
        }
    }

    /// A listener on loopback, IPv4 or IPv6; `None` (said loudly) when
    /// `[::1]` cannot be bound here.
    fn listen(v6: bool) -> Option<TcpListener> {
        let addr = if v6 { "[::1]:0" } else { "127.0.0.1:0" };
        match TcpListener::bind(addr) {
            Ok(listener) => Some(listener),
            Err(e) if v6 => {
                eprintln!("SKIPPED the IPv6 half of this test: cannot bind [::1]: {e}");
                None
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }

    /// A loopback address nothing listens on (bound, then closed).
    fn closed_port(v6: bool) -> Option<SocketAddr> {
        Some(listen(v6)?.local_addr().unwrap())
    }

    /// Serves one connection on `listener` with `serve` on a thread.
    fn serve_one<T: Send + 'static>(
        listener: TcpListener,
        serve: impl FnOnce(std::net::TcpStream) -> T + Send + 'static,
    ) -> JoinHandle<T> {
        thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            stream.set_read_timeout(Some(LONG)).unwrap();
            stream.set_write_timeout(Some(LONG)).unwrap();
            serve(stream)
        })
    }

    /// Reads an HTTP request's head (to its blank line) from `stream`.
    fn read_request(stream: &mut std::net::TcpStream) -> Vec<u8> {
        let mut request = Vec::new();
        let mut byte = [0u8];
        while !request.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => request.push(byte[0]),
                other => panic!("reading the request: {other:?} after {request:?}"),
            }
        }
        request
    }

    /// An http check of a one-connection server that answers `response`,
    /// and what the server was sent.
    fn http_check(listener: TcpListener, response: &'static [u8]) -> (Verdict, Vec<u8>) {
        let addr = listener.local_addr().unwrap();
        let server = serve_one(listener, move |mut stream| {
            let request = read_request(&mut stream);
            stream.write_all(response).unwrap();
            request
        });
        let check = Check::Http {
            addr,
            host: format!("localhost:{}", addr.port()),
            path: "/health".into(),
        };
        let verdict = Harness::new().run(&check);
        (verdict, server.join().unwrap())
    }

    fn http(addr: SocketAddr) -> Check {
        Check::Http {
            addr,
            host: "localhost".into(),
            path: "/".into(),
        }
    }

    #[test]
    fn tcp_to_an_open_port_succeeds() {
        for v6 in [false, true] {
            let Some(listener) = listen(v6) else { continue };
            let addr = listener.local_addr().unwrap();
            let mut h = Harness::new();
            assert_eq!(h.run(&Check::Tcp(addr)), Ok(()), "{addr}");
            // It connected, then closed without a byte.
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(LONG)).unwrap();
            assert_eq!(conn.read(&mut [0u8; 16]).unwrap(), 0, "{addr}");
        }
    }

    #[test]
    fn tcp_to_a_closed_port_is_refused() {
        for v6 in [false, true] {
            let Some(addr) = closed_port(v6) else {
                continue;
            };
            let mut h = Harness::new();
            let outcome = h.start(1, &Check::Tcp(addr));
            eprintln!("tcp connect to closed {addr}: start gave {outcome:?}");
            let verdict = match outcome {
                Outcome::Done(verdict) => verdict,
                Outcome::Pending => h.wait(1, LONG).expect("a verdict"),
            };
            assert_eq!(verdict, Err("Connection refused".to_string()), "{addr}");
            assert_eq!(h.prober.in_flight(), 0);
        }
    }

    #[test]
    fn http_2xx_and_3xx_succeed() {
        for v6 in [false, true] {
            for response in [
                &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..],
                b"HTTP/1.0 204\r\n\r\n",
                b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\n\r\n",
            ] {
                let Some(listener) = listen(v6) else { continue };
                let port = listener.local_addr().unwrap().port();
                let (verdict, request) = http_check(listener, response);
                assert_eq!(verdict, Ok(()), "{}", String::from_utf8_lossy(response));
                let want = format!(
                    "GET /health HTTP/1.0\r\nHost: localhost:{port}\r\nUser-Agent: sidecar-init/{}\r\nConnection: close\r\n\r\n",
                    env!("CARGO_PKG_VERSION")
                );
                assert_eq!(String::from_utf8(request).unwrap(), want);
            }
        }
    }

    #[test]
    fn http_4xx_and_5xx_fail_with_the_status() {
        for v6 in [false, true] {
            for (response, want) in [
                (&b"HTTP/1.1 404 Not Found\r\n\r\n"[..], "HTTP 404 Not Found"),
                (
                    b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\n\r\n",
                    "HTTP 503 Service Unavailable",
                ),
                (b"HTTP/1.1 500\r\n\r\n", "HTTP 500"),
            ] {
                let Some(listener) = listen(v6) else { continue };
                let (verdict, _) = http_check(listener, response);
                assert_eq!(verdict, Err(want.to_string()));
            }
        }
    }

    #[test]
    fn http_without_a_status_line_fails() {
        for (response, want) in [
            (&b""[..], "no HTTP response"),
            (b"HTTP/1.1 20", "no HTTP response"),
            (b"SSH-2.0-OpenSSH_9.6\r\n", "not an HTTP response"),
            (b"<html>hello</html>", "not an HTTP response"),
        ] {
            let listener = listen(false).unwrap();
            let (verdict, _) = http_check(listener, response);
            assert_eq!(
                verdict,
                Err(want.to_string()),
                "{}",
                String::from_utf8_lossy(response)
            );
        }
    }

    #[test]
    fn http_to_a_closed_port_is_refused() {
        let addr = closed_port(false).unwrap();
        assert_eq!(
            Harness::new().run(&http(addr)),
            Err("Connection refused".into())
        );
    }

    #[test]
    fn a_status_line_one_byte_at_a_time_succeeds() {
        let listener = listen(false).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = serve_one(listener, |mut stream| {
            stream.set_nodelay(true).unwrap();
            read_request(&mut stream);
            for &b in b"HTTP/1.1 200 OK\r\n" {
                stream.write_all(&[b]).unwrap();
                thread::sleep(Duration::from_millis(5));
            }
        });
        assert_eq!(Harness::new().run(&http(addr)), Ok(()));
        server.join().unwrap();
    }

    /// A server that never stops sending one endless status line: the
    /// check fails once RESPONSE_MAX bytes are in, and stops reading
    /// there (the server cannot write all it wants).
    #[test]
    fn an_endless_status_line_fails_and_memory_stays_bounded() {
        const FLOOD: usize = 64 << 20;
        let listener = listen(false).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = serve_one(listener, |mut stream| {
            read_request(&mut stream);
            let mut sent = 0;
            let chunk = [b'x'; 64 << 10];
            let _ = stream.write_all(b"HTTP/1.1 200 ");
            while sent < FLOOD {
                match stream.write(&chunk) {
                    Ok(n) => sent += n,
                    Err(_) => break,
                }
            }
            sent
        });
        let verdict = Harness::new().run(&http(addr));
        assert_eq!(
            verdict,
            Err(format!("HTTP status line longer than {RESPONSE_MAX} bytes"))
        );
        let sent = server.join().unwrap();
        assert!(
            sent < FLOOD,
            "the server wrote all {sent} bytes: the prober kept reading"
        );
    }

    /// A server that accepts and never answers keeps the check pending
    /// until it is cancelled; cancelling closes the socket and nothing of
    /// it is left on the poll.
    #[test]
    fn a_silent_server_stays_pending_until_cancelled() {
        let listener = listen(false).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = serve_one(listener, |mut stream| {
            read_request(&mut stream);
            // Wait for the prober to hang up; then read gives EOF.
            let eof = stream.read(&mut [0u8; 16]);
            let _ = stream.shutdown(Shutdown::Both);
            eof.map_err(|e| e.kind())
        });
        let mut h = Harness::new();
        assert_eq!(h.start(2, &http(addr)), Outcome::Pending);
        assert_eq!(h.wait(2, SHORT), None);
        assert_eq!(h.prober.in_flight(), 1);
        // A spurious event, and one for an id with no check, change nothing.
        assert_eq!(
            h.prober.ready(h.poll.registry(), 2, true, true, false),
            Outcome::Pending
        );
        assert_eq!(
            h.prober.ready(h.poll.registry(), 3, true, true, true),
            Outcome::Pending
        );
        assert_eq!(h.prober.in_flight(), 1);
        h.cancel(2);
        assert_eq!(h.prober.in_flight(), 0);
        h.cancel(2);
        assert_eq!(
            server.join().unwrap(),
            Ok(0),
            "the server should see the prober hang up"
        );
        assert_eq!(
            h.events_for(2, SHORT),
            0,
            "an event came for a cancelled check"
        );
    }

    #[test]
    fn starting_again_cancels_the_check_in_flight() {
        let silent = listen(false).unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let server = serve_one(silent, |mut stream| {
            read_request(&mut stream);
            stream.read(&mut [0u8; 16]).map_err(|e| e.kind())
        });
        let open = listen(false).unwrap();
        let mut h = Harness::new();
        assert_eq!(h.start(4, &http(silent_addr)), Outcome::Pending);
        assert_eq!(h.wait(4, SHORT), None);
        assert_eq!(
            h.start(4, &Check::Tcp(open.local_addr().unwrap())),
            Outcome::Pending
        );
        assert_eq!(h.prober.in_flight(), 1);
        assert_eq!(
            server.join().unwrap(),
            Ok(0),
            "the first check's socket should be closed"
        );
        assert_eq!(h.wait(4, LONG), Some(Ok(())));
        assert_eq!(h.prober.in_flight(), 0);
    }

    #[test]
    fn in_flight_counts_checks() {
        let silent = listen(false).unwrap();
        let addr = silent.local_addr().unwrap();
        let mut h = Harness::new();
        assert_eq!(h.prober.in_flight(), 0);
        for id in [0, 5, 2] {
            assert_eq!(h.start(id, &http(addr)), Outcome::Pending);
        }
        assert_eq!(h.prober.in_flight(), 3);
        assert!(matches!(h.start(9, &Check::Notify), Outcome::Done(Err(_))));
        assert_eq!(h.prober.in_flight(), 3);
        h.cancel(5);
        h.cancel(6);
        assert_eq!(h.prober.in_flight(), 2);
        // A file check for an id in flight replaces it and finishes at once.
        assert!(matches!(
            h.start(0, &Check::File("/".into())),
            Outcome::Done(Ok(()))
        ));
        assert_eq!(h.prober.in_flight(), 1);
        h.cancel(2);
        assert_eq!(h.prober.in_flight(), 0);
    }

    #[test]
    fn tokens() {
        let h = Harness::new();
        assert_eq!(h.prober.id_of(Token(0)), None);
        assert_eq!(h.prober.id_of(Token(BASE - 1)), None);
        assert_eq!(h.prober.id_of(Token(BASE)), Some(0));
        assert_eq!(h.prober.id_of(Token(BASE + 5)), Some(5));
        let mut p = Prober::new(usize::MAX);
        let poll = Poll::new().unwrap();
        let addr = closed_port(false).unwrap();
        assert_eq!(
            p.start(poll.registry(), 1, &Check::Tcp(addr)),
            Outcome::Done(Err("probe id 1 is out of range".into()))
        );
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn sockets_are_close_on_exec() {
        use nix::fcntl::{FcntlArg, FdFlag, fcntl};
        let silent = listen(false).unwrap();
        let mut h = Harness::new();
        assert_eq!(
            h.start(1, &http(silent.local_addr().unwrap())),
            Outcome::Pending
        );
        let fd = h.prober.raw_fd(1).unwrap();
        // SAFETY: the fd is the prober's open socket for the whole call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let flags = FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD).unwrap());
        assert!(flags.contains(FdFlag::FD_CLOEXEC));
        h.cancel(1);
    }

    /// A unique path under the temporary directory.
    fn temp_path(what: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!("sidecar-probe-{}-{n}-{what}", std::process::id()))
    }

    #[test]
    fn file_checks() {
        let mut h = Harness::new();
        let file = temp_path("file");
        std::fs::write(&file, b"").unwrap();
        let missing = temp_path("missing");
        let dangling = temp_path("dangling");
        std::os::unix::fs::symlink(&missing, &dangling).unwrap();
        let good_link = temp_path("link");
        std::os::unix::fs::symlink(&file, &good_link).unwrap();

        assert_eq!(
            h.start(0, &Check::File(file.clone())),
            Outcome::Done(Ok(()))
        );
        assert_eq!(
            h.start(0, &Check::File(std::env::temp_dir())),
            Outcome::Done(Ok(()))
        );
        assert_eq!(
            h.start(0, &Check::File(good_link.clone())),
            Outcome::Done(Ok(()))
        );
        let gone = Outcome::Done(Err("No such file or directory".into()));
        assert_eq!(h.start(0, &Check::File(missing)), gone);
        assert_eq!(h.start(0, &Check::File(dangling.clone())), gone);
        assert_eq!(h.prober.in_flight(), 0);
        for path in [file, dangling, good_link] {
            std::fs::remove_file(path).unwrap();
        }
    }

    #[test]
    fn other_checks_are_not_ours() {
        let mut h = Harness::new();
        for check in [
            Check::Exec(vec!["true".into()]),
            Check::Line("ready".into()),
            Check::Notify,
        ] {
            match h.start(0, &check) {
                Outcome::Done(Err(why)) => {
                    assert!(why.contains("not a socket or file check"), "{why}")
                }
                other => panic!("{check:?}: {other:?}"),
            }
        }
        assert_eq!(h.prober.in_flight(), 0);
    }

    /// Errors the kernel reports inside `connect` (a TCP connect to a
    /// multicast or broadcast address is ENETUNREACH whatever the routes)
    /// finish the check at once, with nothing left open.
    #[test]
    fn an_error_at_connect_is_done_at_once() {
        let mut h = Harness::new();
        for addr in ["224.0.0.1:80", "255.255.255.255:80", "[ff02::1]:80"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let unreachable = Outcome::Done(Err("Network is unreachable".into()));
            assert_eq!(h.start(1, &Check::Tcp(addr)), unreachable, "{addr}");
            assert_eq!(h.start(1, &http(addr)), unreachable, "{addr}");
            assert_eq!(h.prober.in_flight(), 0);
        }
    }

    /// A request too big for the socket's buffers, to a server that
    /// starts reading late: the prober writes what fits, waits for
    /// WRITABLE, and goes on where it stopped.
    #[test]
    fn a_request_written_in_parts() {
        let listener = listen(false).unwrap();
        let addr = listener.local_addr().unwrap();
        let path = format!("/{}", "a".repeat(4 << 20));
        let want = http_request("localhost", &path).unwrap();
        let want_len = want.len();
        let server = serve_one(listener, move |mut stream| {
            thread::sleep(Duration::from_millis(200));
            let mut request = Vec::new();
            let mut chunk = vec![0u8; 64 << 10];
            while !request.ends_with(b"\r\n\r\n") {
                match stream.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => request.extend_from_slice(&chunk[..n]),
                    Err(e) => panic!("reading the request: {e}"),
                }
            }
            stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
            request
        });
        let check = Check::Http {
            addr,
            host: "localhost".into(),
            path,
        };
        let mut h = Harness::new();
        assert_eq!(h.start(3, &check), Outcome::Pending);
        // Connected and blocked partway through the request.
        assert_eq!(h.wait(3, Duration::from_millis(100)), None);
        assert_eq!(h.wait(3, LONG), Some(Ok(())));
        let request = server.join().unwrap();
        assert_eq!(request.len(), want_len);
        assert!(request == want, "the request arrived changed");
    }

    /// Set in the child process of `many_refused_checks_leak_no_fd`.
    const FD_CHILD: &str = "SIDECAR_PROBE_FD_CHILD";

    /// 500 tcp checks of a closed port at once: all finish refused, and
    /// every socket is closed after. Open fds are counted in a process of
    /// its own (this test binary, run again for this one test), since the
    /// other tests open fds on threads of this one.
    #[test]
    fn many_refused_checks_leak_no_fd() {
        const CHECKS: usize = 500;
        if std::env::var_os(FD_CHILD).is_none() {
            let exe = std::env::current_exe().unwrap();
            let out = std::process::Command::new(&exe)
                .args(["--exact", "probe::tests::many_refused_checks_leak_no_fd"])
                .args(["--test-threads=1", "--nocapture"])
                .env(FD_CHILD, "1")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "{exe:?}: {}\n{stdout}\n{stderr}",
                out.status
            );
            assert!(
                stdout.contains("1 passed"),
                "the child ran no test:\n{stdout}\n{stderr}"
            );
            eprint!("{stderr}");
            return;
        }
        let open_fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
        let addr = closed_port(false).unwrap();
        let mut h = Harness::new();
        let before = open_fds();
        let mut results = HashMap::new();
        for id in 0..CHECKS {
            if let Outcome::Done(verdict) = h.start(id, &Check::Tcp(addr)) {
                results.insert(id, verdict);
            }
        }
        let at_once = results.len();
        let peak = open_fds();
        h.pump(Duration::from_secs(10), &mut results, |r| r.len() == CHECKS);
        assert_eq!(
            results.len(),
            CHECKS,
            "{} of {CHECKS} finished",
            results.len()
        );
        assert!(
            results
                .values()
                .all(|v| v == &Err("Connection refused".to_string()))
        );
        assert_eq!(h.prober.in_flight(), 0);
        let after = open_fds();
        eprintln!(
            "{CHECKS} refused checks: {at_once} refused at start; fds {before} before, {peak} at peak, {after} after"
        );
        assert_eq!(after, before);
    }
}
