//! sidecar-init's stdout: one bounded buffer of whole lines, written without
//! ever blocking the event loop, and the logger that feeds it.
//!
//! Daemon lines and sidecar-init's own log lines share the buffer, so they
//! reach the log in the order they were produced. While the buffer is full
//! the event loop stops reading daemon pipes (the daemons feel ordinary pipe
//! backpressure); signals, reaping and deadlines go on. If the reader closes
//! stdout, output is discarded from then on; any other write error (a full
//! disk) is retried every second, lines beyond the buffer being counted and
//! dropped meanwhile. Writes to a pipe end at line boundaries, so that a
//! reader that stops for good is left with whole lines.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use log::{Level, LevelFilter, Log, Metadata, Record};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::libc;

use crate::format::{self, Style};
use crate::frame::FrameBuf;

/// The buffer size past which daemon output is no longer framed: room for
/// a few full reads per wake-up, small enough to stay cheap.
pub const DEFAULT_CAPACITY: usize = 512 * 1024;
/// The capacity asked for a stdout pipe: what we write in one wake-up fits
/// without waiting for the reader.
const STDOUT_PIPE_SIZE: i32 = 1024 * 1024;
/// How often a write that failed (other than for want of a reader) is
/// tried again.
const RETRY: Duration = Duration::from_secs(1);
/// Writes to a pipe of at most this many bytes are atomic: all or nothing.
const PIPE_BUF: usize = libc::PIPE_BUF;
/// Pipe pages the model of [`PipePages`] leaves aside for what it cannot
/// see (a reader emptying the pipe between FIONREAD and a write).
const PAGE_MARGIN: usize = 2;

/// Where the lines go and how.
#[derive(Debug)]
pub struct Output {
    /// The descriptor written to: 1, or a private reopening of the terminal
    /// or pipe it is.
    fd: RawFd,
    /// Stdout is a socket: written with `send(MSG_DONTWAIT)`, which needs
    /// no flag on the description it shares.
    socket: bool,
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
    /// Stdout's pipe, when it is one: writes then end at line boundaries
    /// (see [`Output::next_write`]).
    pipe: Option<PipePages>,
    /// The bytes written so far end inside a line.
    mid_line: bool,
    /// Writing failed with an error that may pass (a full disk): see
    /// [`Failure`].
    failure: Option<Failure>,
    /// While `failure`, the lines framed once `buf` is at capacity: counted
    /// and dropped at every flush. Allocated at the first failure.
    spill: Option<FrameBuf>,
    /// After [`finish`](Output::finish): the length of the final lines
    /// (drop notices, `exit N`) at the end of `buf`.
    tail: Option<usize>,
}

/// A write error other than a vanished reader (ENOSPC, EIO, EDQUOT...):
/// writes are tried again every [`RETRY`]; meanwhile the buffer keeps up
/// to its capacity of lines and the later ones are dropped and counted.
#[derive(Debug)]
struct Failure {
    error: Errno,
    /// When to try again.
    retry_at: Instant,
    /// Lines dropped since the failure began.
    dropped: u64,
}

impl Output {
    /// Sets up fd 1 for non-blocking writes.
    ///
    /// O_NONBLOCK belongs to the open file description, which we share
    /// with whoever else has it: the shell that started us on a terminal,
    /// and the main program (`-- CMD`), which inherits our stdout and must
    /// find it blocking as usual. So a terminal or a pipe is reopened
    /// through /proc for a description of our own, and a socket is written
    /// with `send(MSG_DONTWAIT)`. Only where neither works (no /proc) are
    /// fd 1's own flags changed (and restored at exit), and not at all when
    /// `shared` (a main program): then writes block.
    pub fn stdout(capacity: usize, shared: bool) -> Output {
        let mut out = Output {
            fd: 1,
            socket: false,
            _owned: None,
            restore: None,
            buf: FrameBuf::new(capacity),
            capacity,
            nonblocking: false,
            writable: true,
            pollable: false,
            discard: false,
            last_progress: Instant::now(),
            pipe: None,
            mid_line: false,
            failure: None,
            spill: None,
            tail: None,
        };
        let flags = match fcntl(io::stdout(), FcntlArg::F_GETFL) {
            Ok(bits) => OFlag::from_bits_retain(bits),
            Err(_) => {
                out.discard = true; // fd 1 is closed
                return out;
            }
        };
        let kind = nix::sys::stat::fstat(io::stdout()).map(|st| st.st_mode & libc::S_IFMT);
        let tty = nix::unistd::isatty(io::stdout()).unwrap_or(false);
        let fifo = kind == Ok(libc::S_IFIFO);
        if kind == Ok(libc::S_IFSOCK) {
            out.socket = true;
            out.nonblocking = true;
            out.pollable = true;
        } else if tty || fifo {
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
            } else if fifo
                && !shared
                && !flags.contains(OFlag::O_NONBLOCK)
                && fcntl(io::stdout(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).is_ok()
            {
                out.restore = Some(flags);
                out.nonblocking = true;
                out.pollable = true;
            }
            if fifo {
                // Only up to /proc/sys/fs/pipe-max-size without privilege:
                // best effort.
                let _ = fcntl(io::stdout(), FcntlArg::F_SETPIPE_SZ(STDOUT_PIPE_SIZE));
                out.pipe = fcntl(io::stdout(), FcntlArg::F_GETPIPE_SZ)
                    .ok()
                    .and_then(|n| usize::try_from(n).ok())
                    .and_then(PipePages::new);
            }
        }
        // A regular file (or anything else): plain writes, which do not
        // wait for a reader.
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
    /// While writes fail, lines past the capacity go to the spill, which
    /// every flush empties: daemon pipes are still read, and what does not
    /// fit is dropped (and counted) instead of stalling the daemons.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.target_len())
    }

    /// The size past which daemon output waits (one line may overshoot it).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The buffer, for appending framed lines (see `frame::frame_chunk`):
    /// the spill while writes fail and the buffer is at capacity.
    pub fn buf(&mut self) -> &mut FrameBuf {
        if self.spilling() {
            let capacity = self.capacity;
            return self.spill.get_or_insert_with(|| FrameBuf::new(capacity));
        }
        &mut self.buf
    }

    /// Lines now go to the spill.
    fn spilling(&self) -> bool {
        self.failure.is_some() && self.buf.len() >= self.capacity
    }

    fn target_len(&self) -> usize {
        match (&self.spill, self.spilling()) {
            (Some(spill), true) => spill.len(),
            (None, true) => 0,
            (_, false) => self.buf.len(),
        }
    }

    /// Unwritten bytes are waiting.
    pub fn pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Since when stdout has been stalled: the buffer is full (no pipe is
    /// read) and no write has made progress since then. `None` while
    /// there is room, and while writes fail (pipes are read meanwhile).
    pub fn stalled_since(&self) -> Option<Instant> {
        (self.room() == 0 && !self.discard && self.failure.is_none()).then_some(self.last_progress)
    }

    /// A write may make progress now.
    pub fn ready(&self) -> bool {
        (self.writable || !self.nonblocking)
            && self
                .failure
                .as_ref()
                .is_none_or(|f| Instant::now() >= f.retry_at)
    }

    /// When a failed write is to be tried again: the event loop wakes then.
    pub fn next_retry(&self) -> Option<Instant> {
        self.failure.as_ref().map(|f| f.retry_at)
    }

    /// Moves queued log lines into the buffer, keeping their order relative
    /// to the daemon lines around them. While the buffer is at capacity
    /// (stdout is behind) they stay queued, where their memory is bounded;
    /// while writes fail they follow the daemon lines into the spill.
    pub fn absorb_log(&mut self) {
        if self.tail.is_some() || (self.buf.len() >= self.capacity && !self.spilling()) {
            return;
        }
        if let Ok(mut queue) = LOG_QUEUE.lock() {
            if !queue.is_empty() {
                let target = self.buf();
                queue.drain_into(|bytes| target.extend(bytes));
            }
        }
    }

    /// The run is over: queued log lines go into the buffer whatever its
    /// fill (no daemon line comes any more), then a line for each kind of
    /// line dropped so far, then `last` (the `exit N` line): whatever
    /// happens to the rest, it is the last line (see [`abandon`]).
    ///
    /// [`abandon`]: Output::abandon
    pub fn finish(&mut self, last: Option<&str>) {
        let mut own_dropped = None;
        if let Ok(mut queue) = LOG_QUEUE.lock() {
            let target = if self.spilling() {
                let capacity = self.capacity;
                self.spill.get_or_insert_with(|| FrameBuf::new(capacity))
            } else {
                &mut self.buf
            };
            queue.drain_lines(|bytes| target.extend(bytes));
            own_dropped = queue.take_notice();
        }
        let mut tail = Vec::new();
        let (style, max) = own_style();
        if let Some(note) = self.spill_notice() {
            frame_own(&style, &warning(note), max, &mut tail);
        }
        if let Some(note) = own_dropped {
            frame_own(&style, &note, max, &mut tail);
        }
        if let Some(last) = last {
            let entry = Entry {
                level: Level::Info,
                text: last.to_string(),
                time: SystemTime::now(),
            };
            frame_own(&style, &entry, max, &mut tail);
        }
        self.buf.extend(&tail);
        self.tail = Some(tail.len());
    }

    /// The notice for the lines dropped while writes failed, if any; the
    /// count starts over.
    fn spill_notice(&mut self) -> Option<String> {
        self.count_spill();
        let f = self.failure.as_mut().filter(|f| f.dropped > 0)?;
        let n = std::mem::take(&mut f.dropped);
        Some(format!(
            "{n} lines dropped: stdout failed ({})",
            f.error.desc()
        ))
    }

    /// Counts and drops the lines in the spill.
    fn count_spill(&mut self) {
        if let (Some(spill), Some(f)) = (self.spill.as_mut(), self.failure.as_mut()) {
            f.dropped += memchr::memchr_iter(b'\n', spill.pending()).count() as u64;
            spill.clear();
        }
    }

    /// Gives up on the lines not yet written (stdout stayed stalled past
    /// the last deadline): nothing after this may wait for that reader.
    /// Drops them but the rest of a line already begun, and tries once,
    /// without waiting, to write that rest, a line saying how many were
    /// dropped and the final lines of [`finish`](Output::finish): the log
    /// then ends with whole lines, the last one `exit N`, if the pipe had
    /// room for them.
    pub fn abandon(&mut self) {
        if let Ok(mut queue) = LOG_QUEUE.lock() {
            queue.drain_into(|_| {});
        }
        let tail = self.tail.unwrap_or(0);
        if self.discard || self.buf.is_empty() {
            self.buf.clear();
            return;
        }
        let last = abandoned(self.buf.pending(), tail, self.mid_line);
        self.buf.clear();
        if let Some(last) = last {
            let _ = self.try_write(&last);
        }
    }

    /// Writes as much as stdout takes without blocking.
    pub fn flush(&mut self) {
        self.write_out();
        // The logger learns whether stdout is really stalled: only then
        // may it drop lines.
        let stalled = self.stalled_since();
        if let Ok(mut queue) = LOG_QUEUE.lock() {
            queue.stalled_since = stalled;
        }
    }

    fn write_out(&mut self) {
        loop {
            self.absorb_log();
            if self.discard {
                self.buf.clear();
                self.spill = None;
                return;
            }
            if let Some(f) = &self.failure {
                let due = Instant::now() >= f.retry_at;
                self.count_spill();
                if !due {
                    return;
                }
            }
            if self.buf.is_empty() {
                return;
            }
            let (len, was_empty) = self.next_write();
            match self.write_some(len) {
                Ok(n) if n > 0 => {
                    if let Some(pipe) = self.pipe.as_mut() {
                        pipe.wrote(len, n, was_empty);
                    }
                    self.mid_line = self.buf.pending()[n - 1] != b'\n';
                    self.buf.consume(n);
                    self.last_progress = Instant::now();
                    if self.failure.is_some() {
                        self.recovered();
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    self.writable = false;
                    return;
                }
                Err(
                    Errno::EPIPE
                    | Errno::EBADF
                    | Errno::EINVAL
                    | Errno::ECONNRESET
                    | Errno::ENOTCONN
                    | Errno::ESHUTDOWN,
                )
                | Ok(_) => {
                    // The reader left (EPIPE), the descriptor is not one to
                    // write to, or it takes no bytes and reports no error
                    // (std's `write_all` calls that `WriteZero`): from now
                    // on output goes nowhere; supervision goes on.
                    self.discard = true;
                    self.buf.clear();
                    self.spill = None;
                    return;
                }
                Err(error) => {
                    // It may pass (a full disk gets room): try again later.
                    let retry_at = Instant::now() + RETRY;
                    let dropped = self.failure.as_ref().map_or(0, |f| f.dropped);
                    self.failure = Some(Failure {
                        error,
                        retry_at,
                        dropped,
                    });
                    return;
                }
            }
        }
    }

    /// A write made progress again after a failure: what was dropped
    /// meanwhile is said after the lines kept (the older ones), before any
    /// later line.
    /// (After [`finish`](Output::finish) the notice is among the final
    /// lines already, and nothing was dropped since.)
    fn recovered(&mut self) {
        let note = self.spill_notice();
        self.failure = None;
        self.spill = None;
        if let Some(note) = note.filter(|_| self.tail.is_none()) {
            let mut line = Vec::new();
            let (style, max) = own_style();
            frame_own(&style, &warning(note), max, &mut line);
            self.buf.extend(&line);
        }
    }

    /// How many pending bytes to write now, and whether the pipe was
    /// empty. Anything but a pipe takes all. A pipe gets whole lines only,
    /// so that a reader that stops for good finds no line cut off: as many
    /// as the free pages of the pipe take (see [`PipePages`]), and when
    /// that is less than [`PIPE_BUF`], a write of whole lines of at most
    /// that much, which the kernel takes whole or not at all. Only a line
    /// longer than that, meeting a nearly full pipe, may be cut.
    fn next_write(&mut self) -> (usize, bool) {
        let pending = self.buf.pending();
        let Some(pipe) = self.pipe.as_mut() else {
            return (pending.len(), false);
        };
        let queued = pipe_queued(self.fd);
        let limit = pipe.room(queued).max(PIPE_BUF);
        (whole_lines(pending, limit), queued == 0)
    }

    /// Writes up to `len` pending bytes without blocking (unless writes
    /// block here, see [`Output::stdout`]).
    fn write_some(&self, len: usize) -> nix::Result<usize> {
        self.try_write(&self.buf.pending()[..len])
    }

    /// Writes `bytes` as far as stdout takes them without blocking.
    fn try_write(&self, bytes: &[u8]) -> nix::Result<usize> {
        if self.socket {
            use nix::sys::socket::{MsgFlags, send};
            send(
                self.fd,
                bytes,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            )
        } else {
            nix::unistd::write(self.borrowed(), bytes)
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

/// What sidecar-init's writes have made of the pages of its stdout pipe.
///
/// Linux keeps a pipe's bytes in pages, one slot each, and a pipe is full
/// when every slot is taken, however full the pages are: a write's first
/// `len % page` bytes join the last page if they fit there (and the pipe
/// was not empty), the rest goes to new pages, all full but the last. So
/// the free bytes (capacity minus FIONREAD) may take fewer bytes than they
/// say, and a write that counts on them may be cut anywhere, in the middle
/// of a line. Replaying that rule on our own writes, with FIONREAD telling
/// how much of them the reader has taken, gives the pages still in use,
/// hence the bytes a write can carry whole.
#[derive(Clone, Debug)]
struct PipePages {
    /// The page size, and the pipe's capacity in pages.
    page: usize,
    slots: usize,
    /// Where each page that may still hold unread bytes ends, as an offset
    /// in all the bytes written; the last one is the page being filled.
    ends: VecDeque<u64>,
    /// Bytes in the last page.
    last_fill: usize,
    /// Bytes written in all.
    written: u64,
}

impl PipePages {
    /// The model of an empty pipe of `size` bytes; `None` if the size is
    /// not a whole number of pages.
    fn new(size: usize) -> Option<PipePages> {
        // SAFETY: sysconf has no memory effects.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
        (page > 0 && size >= page && size % page == 0).then(|| PipePages {
            page,
            slots: size / page,
            ends: VecDeque::new(),
            last_fill: 0,
            written: 0,
        })
    }

    /// The most bytes a write can bring into new pages, `queued` bytes
    /// being unread (FIONREAD): the free pages, but for a margin.
    fn room(&mut self, queued: usize) -> usize {
        let consumed = self.written.saturating_sub(queued as u64);
        while self.ends.front().is_some_and(|&end| end <= consumed) {
            self.ends.pop_front();
        }
        if queued == 0 {
            self.ends.clear();
            self.last_fill = 0;
        }
        let used = self.ends.len() + PAGE_MARGIN;
        self.slots.saturating_sub(used) * self.page
    }

    /// A write of `len` bytes took `n` (`was_empty`: the pipe was empty
    /// before it): its pages, as the kernel made them.
    fn wrote(&mut self, len: usize, n: usize, was_empty: bool) {
        let mut rest = n;
        let chars = len % self.page;
        if chars > 0 && !was_empty && !self.ends.is_empty() && self.last_fill + chars <= self.page {
            let merged = chars.min(rest);
            self.last_fill += merged;
            self.written += merged as u64;
            if let Some(end) = self.ends.back_mut() {
                *end = self.written;
            }
            rest -= merged;
        }
        while rest > 0 {
            let k = rest.min(self.page);
            self.written += k as u64;
            self.ends.push_back(self.written);
            self.last_fill = k;
            rest -= k;
        }
    }
}

/// Bytes waiting in the pipe `fd` writes to (FIONREAD works on either end).
fn pipe_queued(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    if r == 0 { n.max(0) as usize } else { 0 }
}

/// The length of the whole lines at the start of `pending` that fit in
/// `limit` bytes: all of it when it fits, else up to the last newline
/// within the limit, else the first line whole (a line longer than the
/// limit).
fn whole_lines(pending: &[u8], limit: usize) -> usize {
    if pending.len() <= limit {
        return pending.len();
    }
    match memchr::memrchr(b'\n', &pending[..limit]) {
        Some(i) => i + 1,
        None => memchr::memchr(b'\n', &pending[limit..]).map_or(pending.len(), |i| limit + i + 1),
    }
}

/// What to write, once, when giving up on `pending` (whose last `tail`
/// bytes are the final lines): the rest of a line begun (`mid_line`),
/// then a line counting the whole lines dropped, then the final lines.
/// `None` when part of the final lines is written already: nothing more
/// can be done.
fn abandoned(pending: &[u8], tail: usize, mid_line: bool) -> Option<Vec<u8>> {
    let body = pending.len().checked_sub(tail)?;
    let begun = if mid_line {
        memchr::memchr(b'\n', &pending[..body]).map_or(body, |i| i + 1)
    } else {
        0
    };
    let dropped = memchr::memchr_iter(b'\n', &pending[begun..body]).count();
    let mut out = pending[..begun].to_vec();
    if dropped > 0 {
        let note = format!("sidecar-init: {dropped} lines dropped: stdout was not being read\n");
        out.extend_from_slice(note.as_bytes());
    }
    out.extend_from_slice(&pending[body..]);
    Some(out)
}

/// The most bytes of log lines kept waiting for a stdout that is stalled;
/// later lines are counted, not kept, until there is room again.
const LOG_QUEUE_MAX: usize = 64 * 1024;
/// How long stdout must have stalled (the buffer full, no write making
/// progress) before the queue's bound applies: a burst of lines while the
/// reader keeps up, or a reader slow but steady, loses none.
const LOG_PATIENCE: Duration = Duration::from_secs(1);

/// Log lines waiting for the [`Output`] (or for [`write_log_now`]).
static LOG_QUEUE: Mutex<LogQueue> = Mutex::new(LogQueue::new(
    LOG_QUEUE_MAX,
    crate::config::DEFAULT_LINE_MAX,
));

/// The line limit for sidecar-init's own lines (`--line-max`): longer ones
/// are split like a daemon's.
pub fn set_line_max(max: usize) {
    if let Ok(mut queue) = LOG_QUEUE.lock() {
        queue.line_max = max.max(crate::lines::MIN_LINE_MAX);
    }
}

/// How sidecar-init's own lines look (`--log-format`, `--timestamps`,
/// `--color`): as [`format::own_line`] writes them.
pub fn set_style(style: Style) {
    if let Ok(mut queue) = LOG_QUEUE.lock() {
        queue.style = style;
    }
}

/// One of sidecar-init's own messages, as logged.
#[derive(Debug)]
struct Entry {
    level: Level,
    text: String,
    /// When it was logged (its timestamp, when lines have one).
    time: SystemTime,
}

/// sidecar-init's own lines on their way out. Memory is bounded while
/// stdout is really stalled; otherwise every line is kept.
#[derive(Debug)]
struct LogQueue {
    /// The messages, in order.
    lines: VecDeque<Entry>,
    /// Their length in all.
    bytes: usize,
    /// The bound on `bytes` once stdout has stalled for [`LOG_PATIENCE`].
    max: usize,
    /// Longer lines are written as several.
    line_max: usize,
    /// How the lines look.
    style: Style,
    /// Since when stdout has been stalled, as the [`Output`] last said.
    stalled_since: Option<Instant>,
    /// Lines dropped since the last notice.
    dropped: u64,
}

impl LogQueue {
    const fn new(max: usize, line_max: usize) -> LogQueue {
        LogQueue {
            lines: VecDeque::new(),
            bytes: 0,
            max,
            line_max,
            style: Style::PLAIN,
            stalled_since: None,
            dropped: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.dropped == 0
    }

    /// Queues a line, or counts it as dropped: only when it would pass the
    /// bound while stdout has been stalled for [`LOG_PATIENCE`] (`now` is
    /// asked only then). A line queued after drops is preceded by the
    /// notice of them, so the notice keeps its place in the log.
    fn push(&mut self, entry: Entry, now: impl FnOnce() -> Instant) {
        if self.bytes + entry.text.len() > self.max
            && self
                .stalled_since
                .is_some_and(|since| now().saturating_duration_since(since) >= LOG_PATIENCE)
        {
            self.dropped += 1;
            return;
        }
        if let Some(note) = self.take_notice() {
            self.enqueue(note);
        }
        self.enqueue(entry);
    }

    fn enqueue(&mut self, entry: Entry) {
        self.bytes += entry.text.len();
        self.lines.push_back(entry);
    }

    /// The notice of the lines dropped since the last one, if any.
    fn take_notice(&mut self) -> Option<Entry> {
        let n = std::mem::take(&mut self.dropped);
        (n > 0).then(|| warning(format!("{n} log lines dropped: stdout was not being read")))
    }

    /// Hands the queued lines to `sink`, framed, and empties the queue.
    fn drain_lines(&mut self, mut sink: impl FnMut(&[u8])) {
        let mut line = Vec::new();
        for entry in self.lines.drain(..) {
            line.clear();
            frame_own(&self.style, &entry, self.line_max, &mut line);
            sink(&line);
        }
        self.bytes = 0;
    }

    /// Hands the queued lines to `sink`, framed, then the notice of the
    /// dropped ones, if any, and empties the queue.
    fn drain_into(&mut self, mut sink: impl FnMut(&[u8])) {
        self.drain_lines(&mut sink);
        if let Some(note) = self.take_notice() {
            let mut line = Vec::new();
            frame_own(&self.style, &note, self.line_max, &mut line);
            sink(&line);
        }
    }
}

/// A warning of ours, logged now.
fn warning(text: String) -> Entry {
    Entry {
        level: Level::Warn,
        text,
        time: SystemTime::now(),
    }
}

/// Appends `entry` to `out` as one or more lines in `style`: plain
/// `sidecar-init: text`, or JSON; several lines of at most `max` bytes of
/// text each when longer, cut at character boundaries, as a daemon's long
/// line is.
fn frame_own(style: &Style, entry: &Entry, max: usize, out: &mut Vec<u8>) {
    format::own_line(style, entry.level, &entry.text, entry.time, max, out);
}

/// The style and line limit the queue frames with, for lines framed
/// outside it.
fn own_style() -> (Style, usize) {
    LOG_QUEUE
        .lock()
        .map(|q| (q.style, q.line_max))
        .unwrap_or((Style::PLAIN, crate::config::DEFAULT_LINE_MAX))
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
        let entry = Entry {
            level: record.level(),
            text: record.args().to_string(),
            time: SystemTime::now(),
        };
        if let Ok(mut queue) = LOG_QUEUE.lock() {
            queue.push(entry, Instant::now);
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

    const SECOND: Duration = Duration::from_secs(1);

    /// An info message.
    fn e(text: impl Into<String>) -> Entry {
        Entry {
            level: Level::Info,
            text: text.into(),
            time: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_burst_is_kept_whole_while_stdout_is_not_stalled() {
        // 5,000 daemons' `starting` lines while the reader keeps up: far
        // past the bound, none dropped.
        let mut q = LogQueue::new(40, 64);
        let t0 = Instant::now();
        for i in 0..10 {
            q.push(e(format!("line {i}")), || t0);
        }
        // Stalled, but not for long yet: still kept.
        q.stalled_since = Some(t0);
        q.push(e("line 10"), || t0 + SECOND / 2);
        let out = drained(&mut q);
        assert_eq!(out.lines().count(), 11, "{out}");
        assert!(!out.contains("dropped"));
    }

    #[test]
    fn lines_are_dropped_only_once_stdout_has_stalled_a_while() {
        let mut q = LogQueue::new(40, 64);
        let t0 = Instant::now();
        q.stalled_since = Some(t0);
        let late = || t0 + 2 * SECOND;
        q.push(e("first, 21 bytes long."), late); // fits the bound
        q.push(e("second, dropped......"), late);
        q.push(e("third, dropped......."), late);
        // The reader is back: the next line comes after the notice, which
        // keeps its place between what came before and after the drops.
        q.stalled_since = None;
        q.push(e("fourth"), late);
        assert_eq!(
            drained(&mut q),
            "sidecar-init: first, 21 bytes long.\n\
             sidecar-init: 2 log lines dropped: stdout was not being read\n\
             sidecar-init: fourth\n"
        );
        // Dropped with no line after: the notice comes at the end.
        q.stalled_since = Some(t0);
        q.push(e("a".repeat(41)), late);
        assert_eq!(
            drained(&mut q),
            "sidecar-init: 1 log lines dropped: stdout was not being read\n"
        );
        assert_eq!(drained(&mut q), "", "emptied, count reset");
        assert!(q.is_empty());
    }

    #[test]
    fn long_own_lines_are_split_like_daemon_lines() {
        // 20,000 unknown names in the selection make one warning far over
        // the line limit: it comes out in pieces, whole, no character torn.
        let text: String = (0..100).map(|i| format!("é{i}, ")).collect();
        let mut q = LogQueue::new(40, 64);
        q.push(e(text.clone()), Instant::now);
        let out = drained(&mut q);
        let pieces: Vec<&str> = out
            .lines()
            .map(|l| l.strip_prefix("sidecar-init: ").unwrap())
            .collect();
        let (last, full) = pieces.split_last().unwrap();
        assert!(!full.is_empty() && last.len() <= 64);
        assert!(
            full.iter().all(|p| p.len() <= 64 && p.len() >= 61),
            "{pieces:?}"
        );
        assert_eq!(pieces.concat(), text);
        // An empty message is one line; a limit under the smallest one
        // (4 bytes: a character of any length) still cuts at characters.
        let mut out = Vec::new();
        frame_own(&Style::PLAIN, &e(""), 64, &mut out);
        frame_own(&Style::PLAIN, &e("ééé"), 1, &mut out);
        assert_eq!(
            out,
            "sidecar-init: \nsidecar-init: éé\nsidecar-init: é\n".as_bytes()
        );
    }

    #[test]
    fn writes_to_a_pipe_end_at_line_boundaries() {
        let pending = b"aaa\nbbbb\ncc\n";
        assert_eq!(whole_lines(pending, 100), pending.len());
        assert_eq!(whole_lines(pending, 9), 9, "aaa, bbbb");
        assert_eq!(whole_lines(pending, 8), 4, "aaa");
        assert_eq!(
            whole_lines(pending, 2),
            4,
            "a first line longer than the limit: whole"
        );
        assert_eq!(whole_lines(b"xxxxxx", 2), 6, "no newline at all");
    }

    /// A pipe with a non-blocking write end.
    fn pipe() -> (OwnedFd, OwnedFd) {
        let (r, w) = nix::unistd::pipe().unwrap();
        let flags = OFlag::from_bits_retain(fcntl(&w, FcntlArg::F_GETFL).unwrap());
        fcntl(&w, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).unwrap();
        fcntl(&r, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).unwrap();
        (r, w)
    }

    #[test]
    fn the_page_model_knows_a_real_pipes_free_pages() {
        // Writes of many sizes, reads of many sizes in between (pages
        // partly read, the pipe emptied now and then). After each round the
        // model's free pages are counted against the kernel's, by filling
        // the pipe with page-sized writes (which never join a page): they
        // must agree exactly. And a write the model says fits is never cut.
        let (r, w) = pipe();
        let size = usize::try_from(fcntl(&w, FcntlArg::F_GETPIPE_SZ).unwrap()).unwrap();
        let mut model = PipePages::new(size).unwrap();
        let page = model.page;
        let data = vec![b'x'; size];
        let mut sink = vec![0u8; size];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let queued = |fd: &OwnedFd| pipe_queued(fd.as_raw_fd());
        let mut cut_checked = 0;
        for _round in 0..200 {
            for _ in 0..next(12) {
                if next(3) == 0 {
                    let n = 1 + next(3 * page);
                    let _ = nix::unistd::read(&r, &mut sink[..n]);
                    continue;
                }
                let q = queued(&w);
                let room = model.room(q) + PAGE_MARGIN * page;
                let most = if next(2) == 0 { 300 } else { 3 * page };
                let len = 1 + next(most);
                match nix::unistd::write(&w, &data[..len]) {
                    Ok(n) => {
                        if len <= room.saturating_sub(page) {
                            assert_eq!(n, len, "a write the model said fits was cut");
                            cut_checked += 1;
                        }
                        model.wrote(len, n, q == 0);
                    }
                    Err(Errno::EAGAIN) => {}
                    Err(e) => panic!("write: {e}"),
                }
            }
            let q = queued(&w);
            let predicted = model.clone().room(q) / page + PAGE_MARGIN;
            let mut free = 0;
            while nix::unistd::write(&w, &data[..page]).is_ok() {
                free += 1;
            }
            assert_eq!(free, predicted, "free pages (pipe {q} bytes)");
            // Empty it: the next round starts afresh, as the model does.
            while nix::unistd::read(&r, &mut sink).is_ok_and(|n| n > 0) {}
            assert_eq!(queued(&w), 0);
            model.room(0);
        }
        assert!(cut_checked > 100, "only {cut_checked} writes checked");
    }

    #[test]
    fn an_abandoned_flush_ends_with_whole_lines_and_the_final_ones() {
        let tail = "sidecar-init: exit 0\n";
        let pending = format!("d 1\n[d] 2\n[d] 3\n{tail}");
        // Half of `[d] 1` was written: its rest first, then the count of
        // the two lines dropped, then `exit 0`.
        let out = abandoned(pending.as_bytes(), tail.len(), true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "d 1\nsidecar-init: 2 lines dropped: stdout was not being read\nsidecar-init: exit 0\n"
        );
        // At a line boundary: every pending line is counted.
        let pending = format!("[d] 1\n[d] 2\n{tail}");
        let out = abandoned(pending.as_bytes(), tail.len(), false).unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .starts_with("sidecar-init: 2 lines dropped")
        );
        // Nothing but the final lines left: tried as they are.
        let out = abandoned(tail.as_bytes(), tail.len(), false).unwrap();
        assert_eq!(out, tail.as_bytes());
        // Part of the final lines written already: nothing more to do.
        assert_eq!(abandoned(b"exit 0\n", tail.len(), true), None);
    }
}
