//! sidecar-init's stdout: one bounded buffer of whole lines, written without
//! ever blocking the event loop, and the logger that feeds it.
//!
//! Daemon lines and sidecar-init's own log lines share the buffer, so they
//! reach the log in the order they were produced. While the buffer is full
//! the event loop stops reading daemon pipes (the daemons feel ordinary pipe
//! backpressure); signals, reaping and deadlines go on. If the reader closes
//! stdout, output is discarded from then on.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;
use std::time::Instant;

use log::{Level, LevelFilter, Log, Metadata, Record};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::fcntl::{FcntlArg, OFlag, fcntl};

use crate::frame::FrameBuf;

/// The buffer size past which daemon output is no longer framed: room for
/// a few full reads per wake-up, small enough to stay cheap.
pub const DEFAULT_CAPACITY: usize = 512 * 1024;
/// The capacity asked for a stdout pipe: what we write in one wake-up fits
/// without waiting for the reader.
const STDOUT_PIPE_SIZE: i32 = 1024 * 1024;

/// Where the lines go and how.
#[derive(Debug)]
pub struct Output {
    /// The descriptor written to: 1, or a private reopening of the terminal.
    fd: RawFd,
    /// Keeps a private reopening open.
    _owned: Option<OwnedFd>,
    /// Flags of fd 1 to put back at exit, when we changed them.
    restore: Option<OFlag>,
    /// Whole framed lines not yet written. The event loop stops framing
    /// daemon output once it reaches `capacity`, so it exceeds that by at
    /// most one framed line plus sidecar-init's own (few, short) lines.
    buf: FrameBuf,
    capacity: usize,
    /// Writes never block; `writable` tracks readiness.
    nonblocking: bool,
    /// The last write did not hit `WouldBlock` (or the fd cannot be polled).
    writable: bool,
    /// The descriptor can be registered with epoll (regular files cannot).
    pollable: bool,
    /// Stdout is gone (EPIPE or closed): drop everything.
    discard: bool,
    /// When a write last made progress (or the output began).
    last_progress: Instant,
}

impl Output {
    /// Sets up fd 1 for non-blocking writes.
    ///
    /// O_NONBLOCK belongs to the open file description, which a terminal
    /// shares with the shell that started us: there we reopen the terminal
    /// through /proc to get a description of our own, and fall back to
    /// blocking writes if that fails. A pipe or socket from the container
    /// engine is ours alone; its flags are restored at exit all the same.
    pub fn stdout(capacity: usize) -> Output {
        let mut out = Output {
            fd: 1,
            _owned: None,
            restore: None,
            buf: FrameBuf::new(capacity),
            capacity,
            nonblocking: false,
            writable: true,
            pollable: false,
            discard: false,
            last_progress: Instant::now(),
        };
        let flags = match fcntl(io::stdout(), FcntlArg::F_GETFL) {
            Ok(bits) => OFlag::from_bits_retain(bits),
            Err(_) => {
                out.discard = true; // fd 1 is closed
                return out;
            }
        };
        if nix::unistd::isatty(io::stdout()).unwrap_or(false) {
            let reopened = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
                .open("/proc/self/fd/1");
            if let Ok(file) = reopened {
                let fd = OwnedFd::from(file);
                out.fd = fd.as_raw_fd();
                out._owned = Some(fd);
                out.nonblocking = true;
                out.pollable = true;
            }
        } else if flags.contains(OFlag::O_NONBLOCK)
            || fcntl(io::stdout(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).is_ok()
        {
            if !flags.contains(OFlag::O_NONBLOCK) {
                out.restore = Some(flags);
            }
            // Only works on a pipe, and only up to /proc/sys/fs/pipe-max-size
            // without privilege: best effort.
            let _ = fcntl(io::stdout(), FcntlArg::F_SETPIPE_SZ(STDOUT_PIPE_SIZE));
            out.nonblocking = true;
            out.pollable = true;
        }
        out
    }

    /// Registers for write readiness. A descriptor epoll refuses (a regular
    /// file) is always writable.
    pub fn register(&mut self, registry: &Registry, token: Token) {
        if self.pollable
            && registry
                .register(&mut SourceFd(&self.fd), token, Interest::WRITABLE)
                .is_err()
        {
            self.pollable = false;
        }
        if !self.pollable {
            self.writable = true;
        }
    }

    /// The descriptor reported write readiness.
    pub fn set_writable(&mut self) {
        self.writable = true;
    }

    /// Bytes that may still be appended before daemon output must wait.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.buf.len())
    }

    /// The size past which daemon output waits (one line may overshoot it).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The buffer, for appending framed lines (see `frame::frame_chunk`).
    pub fn buf(&mut self) -> &mut FrameBuf {
        &mut self.buf
    }

    /// Unwritten bytes are waiting.
    pub fn pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Since when stdout has been stalled: the buffer is full (no pipe is
    /// read) and no write has made progress since then. `None` while
    /// there is room.
    pub fn stalled_since(&self) -> Option<Instant> {
        (self.room() == 0 && !self.discard).then_some(self.last_progress)
    }

    /// A write may make progress now.
    pub fn ready(&self) -> bool {
        self.writable || !self.nonblocking
    }

    /// Moves queued log lines into the buffer, keeping their order relative
    /// to the daemon lines around them. While the buffer is at capacity
    /// (stdout is behind) they stay queued, where their memory is bounded.
    pub fn absorb_log(&mut self) {
        if self.buf.len() >= self.capacity {
            return;
        }
        if let Ok(mut queue) = LOG_QUEUE.lock() {
            queue.drain_into(|bytes| self.buf.extend(bytes));
        }
    }

    /// Gives up on everything not yet written, queued log lines included
    /// (stdout stayed stalled past the last deadline): nothing written
    /// after this may wait for that reader.
    pub fn abandon(&mut self) {
        self.buf.clear();
        if let Ok(mut queue) = LOG_QUEUE.lock() {
            queue.drain_into(|_| {});
        }
    }

    /// Writes as much as stdout takes without blocking.
    pub fn flush(&mut self) {
        loop {
            self.absorb_log();
            if self.discard {
                self.buf.clear();
                return;
            }
            if self.buf.is_empty() {
                return;
            }
            match nix::unistd::write(self.borrowed(), self.buf.pending()) {
                Ok(n) if n > 0 => {
                    self.buf.consume(n);
                    self.last_progress = Instant::now();
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => {
                    self.writable = false;
                    return;
                }
                Ok(_) | Err(_) => {
                    // EPIPE (the reader left), another fatal error, or a
                    // descriptor that takes no bytes and reports no error
                    // (std's `write_all` calls that `WriteZero`): from now
                    // on output goes nowhere; supervision goes on.
                    self.discard = true;
                    self.buf.clear();
                    return;
                }
            }
        }
    }

    fn borrowed(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: `fd` is 1 or owned by `_owned`; both outlive `self`.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) }
    }

    /// Puts fd 1's flags back as we found them.
    pub fn restore(&mut self) {
        if let Some(flags) = self.restore.take() {
            let _ = fcntl(io::stdout(), FcntlArg::F_SETFL(flags));
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.restore();
    }
}

/// The most bytes of log lines kept waiting for a stdout that is behind;
/// later lines are counted, not kept, until there is room again.
const LOG_QUEUE_MAX: usize = 64 * 1024;

/// Log lines waiting for the [`Output`] (or for [`write_log_now`]).
static LOG_QUEUE: Mutex<LogQueue> = Mutex::new(LogQueue::new(LOG_QUEUE_MAX));

/// sidecar-init's own lines on their way out, in bounded memory.
#[derive(Debug)]
struct LogQueue {
    bytes: Vec<u8>,
    max: usize,
    /// Lines dropped for want of room since the queue was last emptied.
    dropped: u64,
}

impl LogQueue {
    const fn new(max: usize) -> LogQueue {
        LogQueue {
            bytes: Vec::new(),
            max,
            dropped: 0,
        }
    }

    fn push(&mut self, line: &str) {
        if self.bytes.len() + line.len() > self.max {
            self.dropped += 1;
        } else {
            self.bytes.extend_from_slice(line.as_bytes());
        }
    }

    /// Hands the queued bytes to `sink`, then a line counting the dropped
    /// ones, if any, and empties the queue.
    fn drain_into(&mut self, mut sink: impl FnMut(&[u8])) {
        if !self.bytes.is_empty() {
            sink(&self.bytes);
            self.bytes.clear();
        }
        if self.dropped > 0 {
            let note = format!(
                "sidecar-init: {} log lines dropped: stdout was not being read\n",
                self.dropped
            );
            sink(note.as_bytes());
            self.dropped = 0;
        }
    }
}

/// Formats `sidecar-init: message` lines into the queue.
struct Logger;

static LOGGER: Logger = Logger;

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let tag = match record.level() {
            Level::Error => "error: ",
            Level::Debug | Level::Trace => "debug: ",
            Level::Warn | Level::Info => "",
        };
        let line = format!("sidecar-init: {tag}{}\n", record.args());
        if let Ok(mut queue) = LOG_QUEUE.lock() {
            queue.push(&line);
        }
    }

    fn flush(&self) {}
}

/// Installs the logger with the given level.
pub fn init_logger(level: LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Writes the queued log lines to stdout with ordinary blocking writes:
/// for the moments before and after the event loop.
pub fn write_log_now() {
    use std::io::Write;
    let mut bytes = Vec::new();
    match LOG_QUEUE.lock() {
        Ok(mut queue) => queue.drain_into(|b| bytes.extend_from_slice(b)),
        Err(_) => return,
    }
    let mut stdout = io::stdout().lock();
    let _ = stdout.write_all(&bytes);
    let _ = stdout.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drained(q: &mut LogQueue) -> String {
        let mut out = Vec::new();
        q.drain_into(|b| out.extend_from_slice(b));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_log_queue_keeps_lines_up_to_its_bound_and_counts_the_rest() {
        let mut q = LogQueue::new(40);
        for i in 0..10 {
            q.push(&format!("sidecar-init: line {i}\n")); // 21 bytes each
        }
        assert_eq!(q.bytes.len(), 21, "one line fits in 40 bytes, two do not");
        assert_eq!(
            drained(&mut q),
            "sidecar-init: line 0\n\
             sidecar-init: 9 log lines dropped: stdout was not being read\n"
        );
        assert_eq!(drained(&mut q), "", "emptied, count reset");
        q.push("sidecar-init: again\n");
        assert_eq!(drained(&mut q), "sidecar-init: again\n");
    }
}
