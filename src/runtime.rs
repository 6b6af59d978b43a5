//! The event loop: the only place that blocks, and the edge where the
//! supervisor's decisions become syscalls.
//!
//! One thread, one `mio::Poll` over the children's output pipes
//! (non-blocking), the signal handler's wake-up pipe and stdout's write
//! readiness, with the nearest deadline as the timeout. An idle supervisor sleeps in
//! `epoll_wait` until a signal, a line or a deadline; it never wakes on a
//! period.
//!
//! Every child the supervisor starts — a unit, a check command, the notify
//! command — goes through [`Runtime::spawn_child`], is reaped by
//! [`Runtime::reap`] and has its pipe (if any) read in the same rounds, in
//! the pipe slot [`slot`] gives it.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mio::unix::pipe::{self, Receiver};
use mio::{Events, Interest, Poll, Token};
use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::check::Check;
use crate::control::{self, Response, Server, UnitStatus};
use crate::exit::{self, Ending};
use crate::format::{self, Style};
use crate::frame::{self, Prefix};
use crate::grammar;
use crate::lines::LineSplitter;
use crate::output::{self, Output};
use crate::plan::Unit;
use crate::probe::{Outcome, Prober};
use crate::supervisor::{self, Action, ChildId, Command as Cmd, Purpose, Supervisor, Timing};

/// The signals' wake-up pipe.
const SIGNALS: Token = Token(0);
const STDOUT: Token = Token(1);
/// The sd_notify socket.
const NOTIFY_SOCKET: Token = Token(2);
/// The control socket's listener.
const CONTROL: Token = Token(3);
/// Pipe slot `s` is token `FIRST_PIPE + s`.
const FIRST_PIPE: usize = 4;
/// Control connections' tokens start here (far above any pipe slot).
const CONTROL_CONNS: usize = 1 << 40;
/// Socket checks' tokens start here.
const CHECKS: usize = 1 << 41;

/// The most sd_notify datagrams read in one round of the loop.
const NOTIFY_BATCH: usize = 64;

/// Where the control socket goes when `--control` does not say: the first
/// place it can be created.
pub const DEFAULT_SOCKETS: [&str; 2] = ["/run/sidecar-init.sock", "/tmp/sidecar-init.sock"];

/// Largest single read from a pipe: a full pipe of the largest size
/// `pipe_size` picks.
const READ_SIZE: usize = PIPE_SIZE_MAX;
/// The capacity asked for each daemon pipe (Linux's default is 64 KiB) is
/// at most this: a daemon can write this much before it waits for us, and
/// we move it in one read, so a busy daemon costs fewer context switches
/// and syscalls per byte (512 KiB took 5% less CPU per GB than 256 KiB).
const PIPE_SIZE_MAX: usize = 512 * 1024;
/// The most all daemon pipes together may hold, so that a large table with
/// a stalled stdout does not pin much kernel memory in full pipes (the
/// container's memory is charged for it). Pipe pages are allocated only as
/// data arrives.
const PIPE_BUDGET: usize = 8 * 1024 * 1024;
/// The name on the notify command's output lines.
const NOTIFY_NAME: &str = "notify";
/// How long to keep trying to write the last lines to a stalled stdout.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// Settings the event loop needs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub timing: Timing,
    pub line_max: usize,
    /// The operator's notify command, if any.
    pub notify: Option<Vec<String>>,
    /// Where to create the control socket (the first place that works), or
    /// `None` for none.
    pub control: Option<Vec<PathBuf>>,
    /// How the lines look: plain or JSON, timestamps, colour.
    pub style: Style,
}

/// Signals received and not handled yet, a bit per signal number (bit
/// N-1 for signal N), set by [`on_signal`].
static PENDING: AtomicU64 = AtomicU64::new(0);
/// SIGINTs received and not handled yet, counted: the bits above say a
/// signal came, not how often, and "Ctrl-C twice" must not be lost when
/// both arrive before the loop wakes.
static SIGINTS: AtomicUsize = AtomicUsize::new(0);
/// The write end of the signals' wake-up pipe, for the handler.
static WAKE: AtomicI32 = AtomicI32::new(-1);
/// sidecar-init's pid, for the handler to tell itself from a child
/// between fork and exec (see [`on_signal`]); 0 until the handlers are
/// installed.
static OWN_PID: AtomicI32 = AtomicI32::new(0);
/// sidecar-init's process group (it never changes it), for the same.
static OWN_PGRP: AtomicI32 = AtomicI32::new(0);
/// Handled signals that were ignored when sidecar-init started (bit N-1
/// for signal N): a child gets them ignored again, also in the handler.
static IGNORED: AtomicU64 = AtomicU64::new(0);

/// The handler of every signal sidecar-init handles: notes the signal
/// (and counts a SIGINT) and wakes the loop through a pipe. Only
/// async-signal-safe calls; `errno` is kept.
///
/// A handler of our own rather than signal-hook's registry: that one
/// rebuilds its table for each signal registered (about 30 µs each), and
/// with the 48 signals sidecar-init handles (49 with glibc) start-up took
/// a millisecond more.
///
/// A child spawned by fork (std's path for `--user`, a main program that
/// takes the terminal, an inherited mask or ignored signals) has this
/// handler until its exec. A signal that reaches it there once it has a
/// process group of its own (a ^C just after the terminal became the main
/// program's, a `kill` of its group or pid) is the child's, not ours: the
/// handler gives the signal back the disposition the program would have
/// after exec (the default, or ignored as sidecar-init found it) and
/// raises it again, so that it acts as it would a moment later. Dropped
/// in the child are a signal to sidecar-init's own group, before the
/// child's `setpgid` (sidecar-init got it too, and forwards it), and
/// SIGTSTP: stopped before its exec, the child would hold sidecar-init,
/// which waits in `spawn` for that exec, and so everything else.
/// (posix_spawn resets handlers itself before it unblocks signals.)
extern "C" fn on_signal(sig: libc::c_int) {
    // SAFETY: getpid, getpgrp, signal and raise are async-signal-safe;
    // errno is kept for the code the signal interrupted.
    unsafe {
        let own = OWN_PID.load(Ordering::Relaxed);
        if own != 0 && libc::getpid() != own {
            if sig != libc::SIGTSTP && libc::getpgrp() != OWN_PGRP.load(Ordering::Relaxed) {
                let errno = *libc::__errno_location();
                let ignored = (1..=64).contains(&sig)
                    && IGNORED.load(Ordering::Relaxed) & (1 << (sig - 1)) != 0;
                let action = if ignored {
                    libc::SIG_IGN
                } else {
                    libc::SIG_DFL
                };
                libc::signal(sig, action);
                // Blocked while this handler runs: delivered as it returns.
                libc::raise(sig);
                *libc::__errno_location() = errno;
            }
            return;
        }
    }
    if sig == libc::SIGINT {
        SIGINTS.fetch_add(1, Ordering::Relaxed);
    }
    if (1..=64).contains(&sig) {
        PENDING.fetch_or(1 << (sig - 1), Ordering::Relaxed);
    }
    wake();
}

/// Writes a byte to the wake-up pipe, once there is one. Async-signal-safe;
/// `errno` is kept.
fn wake() {
    let fd = WAKE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: errno is thread-local and restored; write(2) is
        // async-signal-safe; a full pipe (EAGAIN) already wakes the loop.
        unsafe {
            let errno = *libc::__errno_location();
            libc::write(fd, [0u8].as_ptr().cast(), 1);
            *libc::__errno_location() = errno;
        }
    }
}

/// Installs [`on_signal`] for `sig`. Until [`wake_pipe`] gives it a pipe
/// the handler only notes the signal, for the loop's first round.
///
/// # Safety
///
/// Plain libc calls; `on_signal` is async-signal-safe.
unsafe fn install_handler(sig: i32) {
    // SAFETY: a valid handler of the right type; SA_RESTART keeps our
    // syscalls from failing with EINTR more than they already may. It
    // cannot fail for the signals handled (none is KILL or STOP).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(sig, &action, std::ptr::null_mut());
    }
}

/// Makes the pipe [`on_signal`] wakes the loop with and returns its read
/// end (non-blocking, close-on-exec; the write end is non-blocking too, so
/// the handler never waits). Signals noted before it existed (during
/// start-up) leave a byte in it at once, so the first round takes them.
fn wake_pipe() -> io::Result<Receiver> {
    let (tx, rx) = pipe::new()?;
    WAKE.store(OwnedFd::from(tx).into_raw_fd(), Ordering::SeqCst);
    if PENDING.load(Ordering::SeqCst) != 0 {
        wake();
    }
    Ok(rx)
}

/// The signals [`on_signal`] noted since the last call, in signal-number
/// order, and the SIGINTs it counted.
fn take_signals() -> (Vec<i32>, usize) {
    let bits = PENDING.swap(0, Ordering::Relaxed);
    let pending = (0..64)
        .filter(|b| bits & (1 << b) != 0)
        .map(|b| b + 1)
        .collect();
    (pending, SIGINTS.swap(0, Ordering::Relaxed))
}

/// What sidecar-init started with, to hand on to the children unchanged.
#[derive(Clone, Copy)]
pub struct Inherited {
    /// The signal mask it was started with.
    mask: libc::sigset_t,
    /// Whether that mask blocks anything.
    masked: bool,
    /// Whether sidecar-init's own mask is another one: children are then
    /// spawned under the one it was started with.
    differs: bool,
    /// Signals it handles that were ignored when it started: its children
    /// get them ignored again. A bit per signal number.
    ignored: u128,
}

impl std::fmt::Debug for Inherited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inherited")
            .field("masked", &self.masked)
            .field("differs", &self.differs)
            .field("ignored", &format_args!("{:#x}", self.ignored))
            .finish()
    }
}

/// The thread's signal mask, set to another one until dropped.
struct SpawnMask(libc::sigset_t);

impl SpawnMask {
    fn set(mask: &libc::sigset_t) -> SpawnMask {
        // SAFETY: plain libc calls on initialized sigset_t values.
        unsafe {
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_SETMASK, mask, &mut old);
            SpawnMask(old)
        }
    }
}

impl Drop for SpawnMask {
    fn drop(&mut self) {
        // SAFETY: as in `set`. Signals that came meanwhile are delivered
        // now, to handlers that only note them.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut());
        }
    }
}

/// Every signal sidecar-init handles.
fn handled_signals() -> Vec<i32> {
    let mut handled: Vec<i32> = vec![libc::SIGTERM, libc::SIGINT, libc::SIGCHLD];
    handled.extend(supervisor::forwarded_signals());
    handled
}

/// Puts sidecar-init's signals in order, first thing: records the mask and
/// the ignored signals it was started with (for its children), installs
/// [`on_signal`] for every signal it handles (so that one coming during
/// start-up is noted for the loop, not acted on by its default action or,
/// as PID 1, dropped), then unblocks them, whatever mask it inherited, and, when
/// `tty` (a main program will get the terminal), blocks SIGTTOU and
/// SIGTTIN, so that neither its writes to a terminal whose foreground is
/// the main program nor `tcsetpgrp` ever stop it ([`Runtime::spawn`] gives
/// children the mask they started with instead).
pub fn prepare_signals(tty: bool) -> Inherited {
    // SAFETY: plain libc calls on local, initialized sigset_t values.
    unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut mask);
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask);
        let masked = (1..=libc::SIGRTMAX()).any(|sig| libc::sigismember(&mask, sig) == 1);
        let mut ignored = 0u128;
        let mut unblock: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut unblock);
        OWN_PGRP.store(libc::getpgrp(), Ordering::SeqCst);
        OWN_PID.store(libc::getpid(), Ordering::SeqCst);
        for sig in handled_signals() {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_IGN
            {
                ignored |= 1 << sig;
            }
            install_handler(sig);
            libc::sigaddset(&mut unblock, sig);
        }
        // The handler's copy: bit N-1 for signal N (signals up to 64).
        IGNORED.store((ignored >> 1) as u64, Ordering::SeqCst);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &unblock, std::ptr::null_mut());
        if tty {
            let mut stops: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut stops);
            libc::sigaddset(&mut stops, libc::SIGTTOU);
            libc::sigaddset(&mut stops, libc::SIGTTIN);
            libc::pthread_sigmask(libc::SIG_BLOCK, &stops, std::ptr::null_mut());
        }
        let mut own: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut own);
        let differs = (1..=libc::SIGRTMAX())
            .any(|sig| libc::sigismember(&mask, sig) != libc::sigismember(&own, sig));
        Inherited {
            mask,
            masked,
            ignored,
            differs,
        }
    }
}

/// A child's output pipe and the state of its current line.
struct Pipe {
    rx: Receiver,
    splitter: LineSplitter,
    /// The last readiness event has not been followed by `WouldBlock` yet.
    readable: bool,
    /// Bytes still in the pipe that were there when its process was
    /// reaped: owed to the log before its exit line. `Some(0)`: all read,
    /// but not all framed yet (some are in the carry).
    owed: Option<usize>,
    /// A `line:` readiness text looked for in what it writes.
    watch: Option<LineWatch>,
}

/// Looks for a text in a stream, within lines, across reads.
struct LineWatch {
    needle: Vec<u8>,
    /// The end of the current line as far as read (at most the needle's
    /// length minus one bytes): a match may start there.
    tail: Vec<u8>,
}

impl LineWatch {
    fn new(text: &str) -> LineWatch {
        LineWatch {
            needle: text.as_bytes().to_vec(),
            tail: Vec::new(),
        }
    }

    /// Whether the needle shows in a line that `chunk` (the next bytes of
    /// the stream) ends or continues. The needle holds no newline, so a
    /// match never spans two lines.
    fn found(&mut self, chunk: &[u8]) -> bool {
        let n = self.needle.len();
        if n == 0 || memchr::memmem::find(chunk, &self.needle).is_some() {
            return true;
        }
        // A match that starts in the tail and ends in this chunk.
        let head = &chunk[..chunk.len().min(n - 1)];
        let head = match memchr::memchr(b'\n', head) {
            Some(i) => &head[..i],
            None => head,
        };
        if !self.tail.is_empty() {
            let mut joined = self.tail.clone();
            joined.extend_from_slice(head);
            if memchr::memmem::find(&joined, &self.needle).is_some() {
                return true;
            }
        }
        // The new tail: the end of the last line of `tail + chunk`.
        match memchr::memrchr(b'\n', chunk) {
            Some(i) => self.tail = chunk[i + 1..].to_vec(),
            None => self.tail.extend_from_slice(chunk),
        }
        let keep = n - 1;
        if self.tail.len() > keep {
            self.tail.drain(..self.tail.len() - keep);
        }
        false
    }
}

/// `read_buf[start..end]`: bytes from pipe `slot` still to be framed.
#[derive(Clone, Copy, Debug)]
struct Carry {
    slot: usize,
    start: usize,
    end: usize,
}

struct Runtime {
    poll: Poll,
    /// The read end of the signals' wake-up pipe.
    signals: Receiver,
    sup: Supervisor,
    units: Vec<Unit>,
    /// The frame (prefix, suffix, escaping) of each pipe slot's lines.
    prefixes: Vec<Prefix>,
    /// Each slot's name and colour index, for frames rebuilt per read.
    slot_names: Vec<(String, usize)>,
    /// How the lines look.
    style: Style,
    /// Each slot's pipe until it reaches EOF (or is given up).
    pipes: Vec<Option<Pipe>>,
    out: Output,
    /// `READ_SIZE` bytes for reads, then `frame::BLOCK` bytes of slack for
    /// the framing fast path's block copies.
    read_buf: Vec<u8>,
    line_max: usize,
    notify_argv: Option<Vec<String>>,
    /// Bytes read but not yet framed, for lack of room in the output buffer.
    carry: Option<Carry>,
    /// Pipe slots that reported readiness and have not been read to
    /// `WouldBlock` yet, in turn order (see `read_round`).
    ready_slots: std::collections::VecDeque<usize>,
    /// What the children's stdin is when ours is not already /dev/null
    /// (a main program keeps our stdin): /dev/null, or an empty pipe.
    null: Option<OwnedFd>,
    /// Our own stdin was made /dev/null (no main program): children
    /// inherit it, with no work per spawn.
    own_stdin_null: bool,
    inherited: Inherited,
    /// sidecar-init is PID 1 of its namespace.
    pid1: bool,
    /// Socket and file checks in flight.
    prober: Prober,
    /// The sd_notify socket, if some unit's readiness is `notify`, and the
    /// `NOTIFY_SOCKET` value that names it.
    notify_socket: Option<(mio::net::UnixDatagram, String)>,
    /// The control socket, if it could be created.
    control: Option<Server>,
    /// The main program was made the terminal's foreground group.
    gave_terminal: bool,
    /// Check commands' output is logged (at debug level only).
    log_checks: bool,
    /// sidecar-init was given a NOTIFY_SOCKET (by its own supervisor).
    parent_notify_socket: bool,
    /// The last read of the notify socket stopped at its batch: read on.
    notify_more: bool,
}

/// Where a child's stdout and stderr go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Out {
    /// A new pipe, read in the child's slot.
    Pipe,
    /// /dev/null.
    Null,
    /// sidecar-init's own (the main program's).
    Inherit,
}

/// The pipe slot of a child: units first, then their check commands, then
/// the notify command.
fn slot(id: ChildId, units: usize) -> usize {
    match id {
        ChildId::Unit(i) => i,
        ChildId::Check(i) => units + i,
        ChildId::Notify => 2 * units,
    }
}

/// The child a pipe slot belongs to.
fn child(slot: usize, units: usize) -> ChildId {
    if slot < units {
        ChildId::Unit(slot)
    } else if slot < 2 * units {
        ChildId::Check(slot - units)
    } else {
        ChildId::Notify
    }
}

/// Runs the units until every one is gone; returns the exit code.
pub fn run(units: Vec<Unit>, settings: Settings, inherited: Inherited) -> io::Result<i32> {
    // The handlers have noted signals since `prepare_signals`; from now on
    // they wake the loop too, before the first spawn, so no SIGCHLD or
    // SIGTERM can slip between a spawn and the loop.
    let mut signals = wake_pipe()?;
    let pid1 = std::process::id() == 1;
    if !pid1 {
        become_reaper();
    }
    raise_fd_limit(2 * units.len());

    let poll = Poll::new()?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)?;
    // A main program inherits our stdout: its flags are not ours to change.
    let shared = units.iter().any(|u| u.spec.kind == supervisor::Kind::Main);
    let mut out = Output::stdout(output::DEFAULT_CAPACITY, shared);
    out.register(poll.registry(), STDOUT);
    output::set_line_max(settings.line_max);

    let mut timing = settings.timing.clone();
    timing.notify_timeout = settings
        .notify
        .as_ref()
        .map(|_| timing.notify_timeout.unwrap_or_default());
    let sup = Supervisor::new(units.iter().map(|u| u.spec.clone()).collect(), timing);
    let n = units.len();
    let style = settings.style;
    // Slots: units, their checks (same colour), the notify command.
    let mut slot_names: Vec<(String, usize)> = Vec::with_capacity(2 * n + 1);
    slot_names.extend(
        units
            .iter()
            .enumerate()
            .map(|(i, u)| (u.spec.name.clone(), i)),
    );
    slot_names.extend(
        units
            .iter()
            .enumerate()
            .map(|(i, u)| (format!("{} check", u.spec.name), i)),
    );
    slot_names.push((NOTIFY_NAME.to_string(), n));
    let now = std::time::SystemTime::now();
    let prefixes: Vec<Prefix> = slot_names
        .iter()
        .map(|(name, i)| format::daemon_frame(&style, name, *i, now))
        .collect();
    let notify_socket = if units.iter().any(|u| u.ready == Some(Check::Notify)) {
        match open_notify_socket() {
            Ok((mut sock, name)) => {
                poll.registry()
                    .register(&mut sock, NOTIFY_SOCKET, Interest::READABLE)?;
                Some((sock, name))
            }
            Err(e) => {
                log::warn!("cannot create the notify socket: {}", describe(&e));
                None
            }
        }
    } else {
        None
    };
    let control = settings
        .control
        .as_deref()
        .and_then(|paths| open_control(paths, poll.registry()));
    // Daemons read /dev/null. Without a main program (the only child that
    // keeps our stdin) our own stdin becomes it, which every child then
    // inherits for free; else each daemon gets its own copy.
    let mut null = open_null();
    let mut own_stdin_null = false;
    if !units.iter().any(|u| u.spec.kind == supervisor::Kind::Main) {
        if let Some(fd) = null.take() {
            // SAFETY: dup2 onto fd 0, which sanitize_fds made sure is open.
            own_stdin_null = unsafe { libc::dup2(fd.as_raw_fd(), 0) } == 0;
            if !own_stdin_null {
                null = Some(fd);
            }
        }
    }
    let mut rt = Runtime {
        poll,
        signals,
        sup,
        pipes: prefixes.iter().map(|_| None).collect(),
        prefixes,
        slot_names,
        style,
        units,
        out,
        read_buf: vec![0; READ_SIZE + frame::BLOCK],
        line_max: settings.line_max,
        notify_argv: settings.notify,
        carry: None,
        ready_slots: std::collections::VecDeque::new(),
        null,
        own_stdin_null,
        inherited,
        pid1,
        prober: Prober::new(CHECKS),
        notify_socket,
        control,
        gave_terminal: false,
        log_checks: log::max_level() >= log::LevelFilter::Debug,
        parent_notify_socket: std::env::var_os("NOTIFY_SOCKET").is_some(),
        notify_more: false,
    };
    rt.sup.start(Instant::now());
    // Signals that came during start-up (noted since `prepare_signals`)
    // count before the first spawn: a SIGTERM then starts nothing.
    if PENDING.load(Ordering::SeqCst) != 0 {
        rt.drain_signals();
        rt.handle_signals();
    }
    rt.apply();
    rt.run_loop()?;

    let code = rt.sup.exit_code();
    if rt.gave_terminal {
        take_terminal_back();
    }
    // The control socket's file goes with it.
    rt.control = None;
    let last = log::log_enabled!(log::Level::Info).then(|| format!("exit {code}"));
    rt.final_flush(last.as_deref());
    rt.out.restore();
    Ok(code)
}

/// The first control socket that can be created, registered; a warning
/// (one line) when none can.
fn open_control(paths: &[PathBuf], registry: &mio::Registry) -> Option<Server> {
    // A FROM scratch image has no /run: as PID 1, make it (as any init
    // would), so that the default socket and `health` work there too.
    if std::process::id() == 1 && paths.first().is_some_and(|p| p.starts_with("/run")) {
        let _ = std::fs::DirBuilder::new().mode(0o755).create("/run");
    }
    let mut errors = Vec::new();
    for path in paths {
        match Server::bind(path) {
            Ok(mut server) => match server.register(registry, CONTROL, CONTROL_CONNS) {
                Ok(()) => {
                    log::debug!("control socket at {}", path.display());
                    return Some(server);
                }
                Err(e) => errors.push(format!("{}: {}", path.display(), describe(&e))),
            },
            Err(e) => errors.push(e.to_string()),
        }
    }
    log::warn!(
        "no control socket (status, health, stop... will not answer): {}",
        errors.join("; ")
    );
    None
}

/// A datagram socket for sd_notify, in the abstract namespace (no file:
/// it works on a read-only root), with the sender's credentials on every
/// message; and its `NOTIFY_SOCKET` name.
fn open_notify_socket() -> io::Result<(mio::net::UnixDatagram, String)> {
    use std::os::linux::net::SocketAddrExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!("sidecar-init/{}/{nanos:09}/notify", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let sock = std::os::unix::net::UnixDatagram::bind_addr(&addr)?;
    sock.set_nonblocking(true)?;
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::PassCred, &true)
        .map_err(io::Error::from)?;
    Ok((mio::net::UnixDatagram::from_std(sock), format!("@{name}")))
}

impl Runtime {
    fn run_loop(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            if self.sup.awaiting_groups() {
                self.sup.check_groups(group_alive, now);
            }
            // With many units a tick costs: only when it has work to do.
            if self.sup.has_work() || self.sup.next_deadline().is_some_and(|d| now >= d) {
                self.sup.tick(now);
            }
            self.apply();
            if let Some(c) = self.control.as_mut() {
                c.tick(self.poll.registry(), now);
            }
            if self.sup.finished() {
                return Ok(());
            }
            // Lines just logged (a deadline passed, a spawn failed) go out
            // now, not at whatever wakes the loop next. (Not ready: stdout
            // is full, and its readiness event wakes the loop anyway.)
            if self.out.ready() {
                self.out.flush();
            }
            self.sup.output_stall(self.out.stalled_since(), now);
            // Work left over from the last round (a pipe not yet read to
            // WouldBlock, stdout ready for pending bytes, units queued to
            // start) means look for events without sleeping; otherwise
            // sleep until the deadline.
            let timeout = if self.has_work() {
                Some(Duration::ZERO)
            } else {
                let control = self.control.as_ref().and_then(Server::next_deadline);
                self.sup
                    .next_deadline()
                    .into_iter()
                    .chain(control)
                    .chain(self.out.next_retry())
                    .min()
                    .map(|d| d.saturating_duration_since(now))
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io::Error::new(e.kind(), format!("epoll_wait: {e}"))),
            }
            let mut signalled = false;
            let mut notified = false;
            for event in &events {
                match event.token() {
                    SIGNALS => {
                        signalled = true;
                        self.drain_signals();
                    }
                    STDOUT => self.out.set_writable(),
                    NOTIFY_SOCKET => notified = true,
                    CONTROL => self.control_event(CONTROL),
                    Token(t) if t >= CHECKS => self.check_event(t),
                    Token(t) if t >= CONTROL_CONNS => self.control_event(Token(t)),
                    Token(t) => {
                        let slot = t - FIRST_PIPE;
                        if let Some(Some(p)) = self.pipes.get_mut(slot) {
                            if !p.readable {
                                p.readable = true;
                                self.ready_slots.push_back(slot);
                            }
                        }
                    }
                }
            }
            if signalled {
                self.handle_signals();
            }
            if notified || self.notify_more {
                self.read_notifications();
            }
            // While a batch of spawns is still to come, no pipe is read: the
            // start-up goes on at full speed (the loop still runs between
            // batches for signals), and the daemons' first lines come out
            // together once all are up, as from a table started at once.
            if !self.sup.spawning() {
                self.read_round();
            }
            self.out.flush();
            // While the buffer is full and the reader takes nothing, no
            // pipe is read: the supervisor's drain clocks stand still.
            self.sup
                .output_stall(self.out.stalled_since(), Instant::now());
        }
    }

    fn has_work(&self) -> bool {
        if self.sup.has_work() || self.notify_more || (self.out.pending() && self.out.ready()) {
            return true;
        }
        self.out.room() > 0 && (self.carry.is_some() || !self.ready_slots.is_empty())
    }

    /// Performs the supervisor's actions, in order.
    fn apply(&mut self) {
        while let Some(action) = self.sup.next_action() {
            match action {
                Action::Spawn(i) => self.spawn_unit(i),
                Action::RunCheck(i, purpose) => self.run_check(i, purpose),
                Action::CancelCheck(i) => self.prober.cancel(self.poll.registry(), i),
                Action::WatchLine(i, on) => {
                    let text = match (&self.units[i].ready, on) {
                        (Some(Check::Line(text)), true) => Some(text.clone()),
                        _ => None,
                    };
                    if let Some(p) = self.pipes[i].as_mut() {
                        p.watch = text.as_deref().map(LineWatch::new);
                    }
                }
                Action::SpawnNotify(event, dropped) => {
                    let Some(argv) = self.notify_argv.clone() else {
                        continue;
                    };
                    let env: Vec<(String, String)> = event
                        .env(dropped)
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect();
                    log::debug!("notify: {} {}", event.kind, event.daemon);
                    self.spawn_child(ChildId::Notify, &argv, &env, Out::Pipe);
                }
                Action::Signal { pgid, signal } => send(pgid, signal),
                Action::AbandonPipe(id) => {
                    let lost = self.retire_pipe(slot(id, self.units.len()));
                    self.sup.pipe_abandoned(id, lost, Instant::now());
                }
                Action::Sweep(signal) => self.sweep(signal),
                Action::Log(level, msg) => log::log!(level, "{msg}"),
            }
        }
    }

    fn spawn_unit(&mut self, i: usize) {
        let argv = self.units[i].argv.clone();
        let mut env = Vec::new();
        if self.units[i].ready == Some(Check::Notify) {
            if let Some((_, name)) = &self.notify_socket {
                env.push(("NOTIFY_SOCKET".to_string(), name.clone()));
            }
        }
        let out = match self.units[i].spec.kind {
            supervisor::Kind::Main => {
                // It writes to our stdout directly: our lines so far first.
                self.out.absorb_log();
                self.out.flush();
                Out::Inherit
            }
            _ => Out::Pipe,
        };
        self.spawn_child(ChildId::Unit(i), &argv, &env, out);
    }

    /// Runs unit `i`'s check for `purpose`: a command is a child like any
    /// other; a socket or file check goes to the prober.
    fn run_check(&mut self, i: usize, purpose: Purpose) {
        let check = match purpose {
            Purpose::Ready => self.units[i].ready.clone(),
            Purpose::Live => self.units[i].live.clone(),
        };
        let Some(check) = check else { return };
        if let Check::Exec(argv) = &check {
            let out = if self.log_checks {
                Out::Pipe
            } else {
                Out::Null
            };
            self.spawn_child(ChildId::Check(i), argv, &[], out);
            return;
        }
        if let Outcome::Done(verdict) = self.prober.start(self.poll.registry(), i, &check) {
            self.sup.check_done(i, verdict, Instant::now());
        }
    }

    /// An event for a socket check.
    fn check_event(&mut self, token: usize) {
        let Some(i) = self.prober.id_of(Token(token)) else {
            return;
        };
        if let Outcome::Done(verdict) =
            self.prober
                .ready(self.poll.registry(), i, true, true, false)
        {
            self.sup.check_done(i, verdict, Instant::now());
            self.apply();
        }
    }

    /// Reads every pending sd_notify datagram: a `READY=1` counts when its
    /// sender (by the kernel's credentials) is in the process group of a
    /// unit waiting for it; strangers are ignored.
    fn read_notifications(&mut self) {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        let Some((sock, _)) = self.notify_socket.as_ref() else {
            return;
        };
        let fd = sock.as_raw_fd();
        let mut buf = [0u8; 4096];
        // At most a batch per wake-up: a flood of datagrams cannot hold the
        // loop (the rest are read in the next round, see `has_work`).
        self.notify_more = false;
        for _ in 0..NOTIFY_BATCH {
            let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
            let mut iov = [io::IoSliceMut::new(&mut buf)];
            let (len, pid) =
                match recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT) {
                    Ok(msg) => {
                        let pid = msg.cmsgs().ok().and_then(|mut c| {
                            c.find_map(|m| match m {
                                ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid()),
                                _ => None,
                            })
                        });
                        (msg.bytes, pid)
                    }
                    Err(Errno::EINTR) => continue,
                    Err(Errno::EAGAIN) => return,
                    Err(e) => {
                        log::warn!("notify socket: {}", e.desc());
                        return;
                    }
                };
            let ready = buf[..len].split(|&b| b == b'\n').any(|l| l == b"READY=1");
            let Some(pid) = pid.filter(|&p| p > 0) else {
                continue;
            };
            if !ready {
                continue;
            }
            match nix::unistd::getpgid(Some(Pid::from_raw(pid))) {
                Ok(pgid) => match self.sup.notified(pgid.as_raw(), Instant::now()) {
                    Some(name) => log::debug!("READY=1 from {name} (pid {pid})"),
                    None => log::debug!("ignoring READY=1 from pid {pid}: no unit waits for it"),
                },
                Err(_) => {
                    log::debug!("ignoring READY=1 from pid {pid}: gone before it was checked")
                }
            }
            self.apply();
        }
        // The batch is used up: there may be more.
        self.notify_more = true;
    }

    /// An event for the control socket or one of its connections: every
    /// complete request is answered at once.
    fn control_event(&mut self, token: Token) {
        let now = Instant::now();
        let Some(server) = self.control.as_mut() else {
            return;
        };
        let requests = server.handle(self.poll.registry(), token, now);
        for (conn, request) in requests {
            let response = self.answer(&request, now);
            self.apply();
            if let Some(server) = self.control.as_mut() {
                server.reply(self.poll.registry(), conn, &response, now);
            }
        }
    }

    /// The supervisor's answer to a control request.
    fn answer(&mut self, request: &control::Request, now: Instant) -> Response {
        use control::Request as R;
        let done = |r: Result<String, String>| match r {
            Ok(line) => Response::Done(line),
            Err(why) => Response::Error(why),
        };
        match request {
            R::Status => Response::Status(
                self.sup
                    .status(now)
                    .into_iter()
                    .map(|v| UnitStatus {
                        name: v.name,
                        kind: v.kind.as_str().to_string(),
                        state: v.state.as_str().to_string(),
                        pid: v.pid,
                        uptime: v.uptime,
                        restarts: v.restarts,
                        code: v.code,
                        check: v.check,
                        detail: v.detail,
                    })
                    .collect(),
            ),
            R::Health => Response::Health(self.sup.health()),
            R::Stop(n) => done(self.sup.command(&Cmd::Stop(n.clone()), now)),
            R::Start(n) => done(self.sup.command(&Cmd::Start(n.clone()), now)),
            R::Restart(n) => done(self.sup.command(&Cmd::Restart(n.clone()), now)),
            R::Signal(n, sig) => match grammar::parse_signal(sig) {
                Ok(sig) => done(self.sup.command(&Cmd::Signal(n.clone(), sig), now)),
                Err(e) => Response::Error(e),
            },
        }
    }

    /// Starts child `id`: `argv` in its own process group, stdin from
    /// /dev/null (the main program: ours), `env` added, stdout and stderr
    /// as `out` says (a pipe is read in `id`'s slot). Reports to the
    /// supervisor either way.
    fn spawn_child(&mut self, id: ChildId, argv: &[String], env: &[(String, String)], out: Out) {
        let units = self.units.len();
        let now = Instant::now();
        // A unit's check command runs as the unit does: never with more
        // power than the daemon it checks.
        let user = match id {
            ChildId::Unit(i) | ChildId::Check(i) => self.units[i].user,
            ChildId::Notify => None,
        };
        match self.spawn(argv, env, out, user) {
            Ok((pid, rx)) => {
                log::debug!("{} runs as pid {pid}", argv[0]);
                let has_pipe = rx.is_some();
                if let Some(rx) = rx {
                    self.open_pipe(slot(id, units), rx);
                }
                if out == Out::Inherit && self.foreground_child() {
                    // Also here, as shells do: whichever runs first.
                    // SAFETY: plain syscall; SIGTTOU is blocked for us.
                    if unsafe { libc::tcsetpgrp(0, pid) } == 0 {
                        self.gave_terminal = true;
                    }
                }
                self.sup.spawned(id, pid, has_pipe, now);
            }
            Err(e) => {
                let (code, what) = spawn_error(&e);
                let error = format!("{}: {what}", argv[0]);
                self.sup.spawn_failed(id, code, &error, now);
            }
        }
    }

    fn spawn(
        &self,
        argv: &[String],
        env: &[(String, String)],
        out: Out,
        user: Option<crate::users::Ids>,
    ) -> io::Result<(i32, Option<Receiver>)> {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .process_group(0);
        // A NOTIFY_SOCKET of our own parent's is not the children's to use.
        // (Only when there is one: editing the environment makes std copy
        // all of it for every spawn.)
        if self.parent_notify_socket && !env.iter().any(|(k, _)| k == "NOTIFY_SOCKET") {
            cmd.env_remove("NOTIFY_SOCKET");
        }
        if let Some(ids) = user {
            // std also drops the supplementary groups (setgroups(0)).
            cmd.uid(ids.uid).gid(ids.gid);
        }
        // /dev/null for stdin: ours already is one when no main program
        // needs the terminal (see `run`); otherwise one per child.
        if out != Out::Inherit {
            match &self.null {
                Some(null) => cmd.stdin(Stdio::from(null.try_clone()?)),
                None if self.own_stdin_null => &mut cmd,
                None => cmd.stdin(Stdio::null()),
            };
        }
        let rx = match out {
            Out::Pipe => {
                let (tx, rx) = pipe::new()?;
                let size = pipe_size(self.units.len());
                // Best effort: a smaller pipe only costs speed.
                if size > DEFAULT_PIPE_SIZE {
                    let size = i32::try_from(size).unwrap_or(i32::MAX);
                    let _ = nix::fcntl::fcntl(&rx, nix::fcntl::FcntlArg::F_SETPIPE_SZ(size));
                }
                // The child's end must block like any ordinary stdout.
                tx.set_nonblocking(false)?;
                let stdout = OwnedFd::from(tx);
                let stderr = stdout.try_clone()?;
                cmd.stdout(Stdio::from(stdout)).stderr(Stdio::from(stderr));
                Some(rx)
            }
            Out::Null => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
                None
            }
            Out::Inherit => None,
        };
        let foreground = out == Out::Inherit && self.foreground_child();
        self.child_setup(&mut cmd, foreground);
        // Every descriptor of ours is close-on-exec (see `sanitize_fds`), so
        // the child starts with 0, 1 and 2 only. std's posix_spawn gives the
        // child the mask the parent has at that moment, which is ours
        // (SIGTTOU and SIGTTIN blocked): spawn under the inherited one.
        let child = if self.inherited.differs {
            let _mask = SpawnMask::set(&self.inherited.mask);
            cmd.spawn()?
        } else {
            cmd.spawn()?
        };
        // The Child is dropped without waiting: `reap` owns waitpid.
        Ok((child.id() as i32, rx))
    }

    /// Whether the main program should get the terminal: our stdin is one.
    fn foreground_child(&self) -> bool {
        nix::unistd::isatty(std::io::stdin()).unwrap_or(false)
    }

    /// What the child does between fork and exec, when anything: take the
    /// terminal (the main program, as tini does: SIGTTOU blocked around
    /// `tcsetpgrp`), and get the signal mask and ignored signals
    /// sidecar-init was started with (std empties the mask and resets
    /// SIGPIPE). Only when needed: a `pre_exec` closure keeps std from
    /// using posix_spawn, which is cheaper for large tables.
    fn child_setup(&self, cmd: &mut Command, foreground: bool) {
        let inherited = self.inherited;
        if !inherited.masked && inherited.ignored == 0 && !foreground {
            return;
        }
        // SAFETY: the closure only calls async-signal-safe functions
        // (sigprocmask, tcsetpgrp, getpid, signal) and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if foreground {
                    let mut ttou: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut ttou);
                    libc::sigaddset(&mut ttou, libc::SIGTTOU);
                    libc::sigprocmask(libc::SIG_BLOCK, &ttou, std::ptr::null_mut());
                    libc::tcsetpgrp(0, libc::getpid());
                }
                for sig in 1..128 {
                    if inherited.ignored & (1 << sig) != 0 {
                        libc::signal(sig, libc::SIG_IGN);
                    }
                }
                libc::sigprocmask(libc::SIG_SETMASK, &inherited.mask, std::ptr::null_mut());
                Ok(())
            });
        }
    }

    /// Empties the signals' wake-up pipe (edge-triggered), before the
    /// signals it woke us for are taken: one noted after that wakes the
    /// loop again.
    fn drain_signals(&mut self) {
        let mut buf = [0u8; 64];
        while matches!(self.signals.read(&mut buf), Ok(n) if n > 0) {}
    }

    fn handle_signals(&mut self) {
        let (pending, sigints) = take_signals();
        let batch = signal_batch(&pending, sigints);
        // Reap first: a daemon that died before a SIGTERM in the same batch
        // reached us was not stopped by our forwarding it (its code is 143,
        // not 0), and shutdown should not signal it.
        if batch.reap {
            self.reap();
        }
        for sig in batch.signals {
            log::debug!("received {}", exit::signal_name(sig));
            self.sup.signal(sig, Instant::now());
            self.apply();
        }
    }

    /// Reaps every child that has exited — units, checks, the notify
    /// command and adopted orphans alike. Signals coalesce, so one SIGCHLD
    /// may stand for many exits.
    fn reap(&mut self) {
        loop {
            let (pid, ending) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, status)) => (pid, Ending::Exited(status)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Ending::Signaled(sig as i32)),
                Ok(WaitStatus::StillAlive) => {
                    self.sup.children_left(true);
                    break;
                }
                Err(Errno::ECHILD) => {
                    self.sup.children_left(false);
                    break;
                }
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("waitpid: {}", e.desc());
                    break;
                }
            };
            let pid = pid.as_raw();
            let now = Instant::now();
            match self.sup.child_of(pid) {
                Some(id) => {
                    let s = slot(id, self.units.len());
                    let queued = self.pipes[s].as_ref().map_or(0, |p| unread(&p.rx));
                    // Bytes read before the reap but not framed yet (the
                    // carry) are owed as well: a read of a daemon with a
                    // long name can take seconds to frame for a slow reader.
                    let carried = self.carry.is_some_and(|c| c.slot == s);
                    if let Some(p) = self.pipes[s].as_mut() {
                        p.owed = (queued > 0 || carried).then_some(queued);
                    }
                    self.sup.reaped(id, ending, queued == 0 && !carried, now);
                }
                None => log::debug!("reaped pid {pid} (not a daemon){ending}"),
            }
            self.apply();
        }
        if self.sup.awaiting_groups() {
            self.sup.check_groups(group_alive, Instant::now());
            self.apply();
        }
    }

    /// Reads each readable pipe once (bounded work per child per wake-up,
    /// so a chatty daemon cannot starve the others or the signals), while
    /// the output buffer has room.
    fn read_round(&mut self) {
        if let Some(c) = self.carry.take() {
            if !self.pump(c.slot, c.start, c.end) {
                return;
            }
            if self.pipes[c.slot].as_ref().and_then(|p| p.owed) == Some(0) {
                // The last of the owed bytes are framed now.
                self.owed_read(c.slot, 0, 0, true);
            }
        }
        // Each readable pipe once per round, in the order they became
        // readable; one still readable goes to the back. A round cut short
        // by a full buffer leaves the rest in order for the next, so the
        // daemons early in the table cannot starve the later ones.
        for _ in 0..self.ready_slots.len() {
            if self.out.room() == 0 {
                return;
            }
            let Some(i) = self.ready_slots.pop_front() else {
                return;
            };
            let Some(p) = self.pipes[i].as_mut() else {
                continue;
            };
            if !p.readable {
                continue;
            }
            match p.rx.read(&mut self.read_buf[..READ_SIZE]) {
                Ok(0) => self.close_pipe(i),
                Ok(n) => {
                    if self.style.is_timed() {
                        // The time of the read, once per read (not per line).
                        let (name, colour) = &self.slot_names[i];
                        let now = std::time::SystemTime::now();
                        format::update_daemon_frame(
                            &mut self.prefixes[i],
                            &self.style,
                            name,
                            *colour,
                            now,
                        );
                    }
                    let found = p
                        .watch
                        .as_mut()
                        .is_some_and(|w| w.found(&self.read_buf[..n]));
                    let owed = p.owed;
                    // Read until WouldBlock (the events are edge-triggered):
                    // its next turn comes after the others'.
                    self.ready_slots.push_back(i);
                    let framed = self.pump(i, 0, n);
                    if found {
                        // After the line that made it ready is framed.
                        if let Some(p) = self.pipes[i].as_mut() {
                            p.watch = None;
                        }
                        if let ChildId::Unit(u) = child(i, self.units.len()) {
                            self.sup.line_seen(u, Instant::now());
                            self.apply();
                        }
                    }
                    if let Some(owed) = owed {
                        self.owed_read(i, owed, n, framed);
                    }
                    if !framed {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    p.readable = false;
                    if p.owed.is_some() {
                        // Nothing left after all (someone else read it).
                        self.owed_read(i, 0, 0, true);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.ready_slots.push_back(i),
                Err(e) => {
                    log::warn!("read pipe {i}: {}", describe(&e));
                    self.close_pipe(i);
                }
            }
        }
    }

    /// `n` of the `owed` bytes of pipe `slot` were read, and `framed`
    /// says whether all of them are framed (else the rest is the carry).
    /// The owed bytes are done only once framed: until then the pipe is
    /// not read, and a drain clock started at their last read would run
    /// out while a sidecar-init short of CPU is still framing them.
    fn owed_read(&mut self, slot: usize, owed: usize, n: usize, framed: bool) {
        let left = owed.saturating_sub(n);
        let done = left == 0 && framed;
        if let Some(p) = self.pipes[slot].as_mut() {
            p.owed = (!done).then_some(left);
        }
        if done {
            let id = child(slot, self.units.len());
            self.sup.owed_done(id, Instant::now());
            self.apply();
        }
    }

    /// Frames `read_buf[start..end]`, read from pipe `slot`, into the output
    /// buffer until it is full. What does not fit stays in `read_buf` as the
    /// carry, and nothing more is read until it is out. Returns whether
    /// everything fit.
    fn pump(&mut self, slot: usize, start: usize, end: usize) -> bool {
        self.out.absorb_log(); // keep our lines in order with theirs
        let Some(p) = self.pipes[slot].as_mut() else {
            return true;
        };
        let capacity = self.out.capacity();
        let used = frame::frame_chunk(
            &mut p.splitter,
            self.out.buf(),
            &self.prefixes[slot],
            &self.read_buf[start..],
            end - start,
            capacity,
        );
        if start + used == end {
            return true;
        }
        self.carry = Some(Carry {
            slot,
            start: start + used,
            end,
        });
        false
    }

    /// Registers pipe `slot` for reading.
    fn open_pipe(&mut self, slot: usize, mut rx: Receiver) {
        let token = Token(FIRST_PIPE + slot);
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut rx, token, Interest::READABLE)
        {
            // The process runs, but we cannot read it: keep it without output.
            log::error!("epoll_ctl for pipe {slot}: {e}");
        }
        // A restarted child's previous pipe, given up at its drain
        // deadline: its last lines must not run into the new run's.
        self.retire_pipe(slot);
        self.pipes[slot] = Some(Pipe {
            rx,
            splitter: LineSplitter::new(self.line_max),
            readable: false,
            owed: None,
            watch: None,
        });
    }

    /// Pipe `slot` reached EOF (or failed): stop reading it.
    fn close_pipe(&mut self, slot: usize) {
        if self.pipes[slot].is_none() {
            return;
        }
        self.retire_pipe(slot);
        let id = child(slot, self.units.len());
        self.sup.pipe_closed(id, Instant::now());
        self.apply();
    }

    /// Stops reading pipe `slot`, if there is one: frames what was read
    /// from it (within the buffer's limit) and its unterminated last line.
    /// Returns the bytes of its output that are lost: read but not framed
    /// for want of room, and still unread in the pipe.
    fn retire_pipe(&mut self, slot: usize) -> usize {
        let Some(mut p) = self.pipes[slot].take() else {
            return 0;
        };
        let mut lost = unread(&p.rx);
        let _ = self.poll.registry().deregister(&mut p.rx);
        if let Some(c) = self.carry.filter(|c| c.slot == slot) {
            // Given up with bytes still carried (stdout stalled past the
            // drain deadline): what fits under the usual limit goes out, the
            // rest is dropped.
            self.carry = None;
            let limit = self.out.capacity();
            let used = frame::frame_chunk(
                &mut p.splitter,
                self.out.buf(),
                &self.prefixes[slot],
                &self.read_buf[c.start..],
                c.end - c.start,
                limit,
            );
            lost += c.end - c.start - used;
        }
        let (frame, buf) = (&self.prefixes[slot], self.out.buf());
        p.splitter.finish(|line| buf.push_line(frame, line));
        lost
    }

    /// Signals every process left that is ours to reap, and says how many.
    fn sweep(&mut self, signal: i32) {
        let pids = leftover_processes(self.pid1);
        let name = exit::signal_name(signal);
        let count = pids.as_ref().map_or(0, Vec::len);
        match &pids {
            Some(p) if p.is_empty() => {}
            Some(_) if signal == libc::SIGKILL => {
                log::warn!("grace period over; SIGKILL on {count} remaining processes");
            }
            Some(_) => log::info!("sending {name} to {count} remaining processes"),
            None => log::info!("sending {name} to the remaining processes"),
        }
        if self.pid1 {
            // Every process of the namespace but us.
            let _ = kill(Pid::from_raw(-1), Signal::try_from(signal).ok());
            if signal != libc::SIGKILL {
                let _ = kill(Pid::from_raw(-1), Signal::SIGCONT);
            }
        } else {
            for &pid in pids.iter().flatten() {
                let _ = kill(Pid::from_raw(pid), Signal::try_from(signal).ok());
                if signal != libc::SIGKILL {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
                }
            }
        }
        self.reap();
    }

    /// Writes what is left, `last` (the `exit N` line) last, waiting for a
    /// slow reader (or a failed stdout's retries) a bounded time.
    fn final_flush(&mut self, last: Option<&str>) {
        self.out.finish(last);
        let deadline = Instant::now() + FINAL_FLUSH;
        let mut events = Events::with_capacity(16);
        loop {
            self.out.flush();
            let now = Instant::now();
            if !self.out.pending() {
                return;
            }
            if now >= deadline {
                self.out.abandon();
                return;
            }
            if !self.out.ready() {
                let wake = self.out.next_retry().map_or(deadline, |r| r.min(deadline));
                match self
                    .poll
                    .poll(&mut events, Some(wake.saturating_duration_since(now)))
                {
                    Ok(()) => {
                        if events.iter().any(|e| e.token() == STDOUT) {
                            self.out.set_writable();
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.out.abandon();
                        return;
                    }
                }
            }
        }
    }
}

/// What one wake-up of the signal source asks for.
#[derive(Debug, PartialEq, Eq)]
struct SignalBatch {
    /// SIGCHLD came: reap (before anything else).
    reap: bool,
    /// The signals for the supervisor, in order: each pending one once,
    /// then SIGINT as many times as it was delivered.
    signals: Vec<i32>,
}

/// Turns the signals noted as pending (each once, however often it came)
/// and the SIGINTs counted into the work of one wake-up. SIGINT is taken
/// from the count only: a second Ctrl-C delivered before the loop looked
/// must not merge with the first, and a SIGINT whose bit is still set
/// after its count was taken in an earlier wake-up is not counted twice.
fn signal_batch(pending: &[i32], sigints: usize) -> SignalBatch {
    let mut signals: Vec<i32> = pending
        .iter()
        .copied()
        .filter(|&s| s != libc::SIGCHLD && s != libc::SIGINT)
        .collect();
    signals.extend(std::iter::repeat_n(libc::SIGINT, sigints));
    SignalBatch {
        reap: pending.contains(&libc::SIGCHLD),
        signals,
    }
}

/// The exit code and description of a failed spawn: 127 for a command
/// not found, 125 when resources ran out (descriptors, processes, memory:
/// a restart may well succeed), 126 for anything else that keeps it from
/// being executed.
fn spawn_error(e: &io::Error) -> (i32, String) {
    let code = match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR) => exit::NOT_FOUND,
        Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM) => exit::NO_RESOURCES,
        _ if e.kind() == io::ErrorKind::NotFound => exit::NOT_FOUND,
        _ => exit::NOT_EXECUTABLE,
    };
    (code, describe(e))
}

/// Gives the terminal back to sidecar-init's own process group.
fn take_terminal_back() {
    // SAFETY: plain syscalls; SIGTTOU is blocked for us.
    unsafe {
        libc::tcsetpgrp(0, libc::getpgrp());
    }
}

/// The file `argv0` runs, looked up as at spawn time: a path with a `/`
/// as it is, else the first executable match in `path` (`PATH`; the C
/// library's default without it). An error says why it cannot run.
pub fn find_executable(argv0: &str, path: Option<&OsStr>) -> Result<PathBuf, String> {
    let runnable = |p: &Path| -> Result<(), String> {
        let meta =
            std::fs::metadata(p).map_err(|e| format!("{}: {}", p.display(), describe(&e)))?;
        if !meta.is_file() {
            return Err(format!("{}: not a regular file", p.display()));
        }
        nix::unistd::access(p, nix::unistd::AccessFlags::X_OK)
            .map_err(|e| format!("{}: not executable ({})", p.display(), e.desc()))
    };
    if argv0.contains('/') {
        return runnable(Path::new(argv0)).map(|()| PathBuf::from(argv0));
    }
    let dirs = path.map_or_else(
        || std::ffi::OsString::from("/usr/local/bin:/bin:/usr/bin"),
        OsStr::to_os_string,
    );
    let mut first_error = None;
    for dir in std::env::split_paths(&dirs) {
        let candidate = if dir.as_os_str().is_empty() {
            PathBuf::from(argv0)
        } else {
            dir.join(argv0)
        };
        match runnable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(e) if candidate.exists() => {
                first_error.get_or_insert(e);
            }
            Err(_) => {}
        }
    }
    Err(first_error.unwrap_or_else(|| format!("{argv0}: not found in PATH")))
}

/// Bytes waiting in a pipe (FIONREAD).
fn unread(rx: &Receiver) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int.
    let r = unsafe { libc::ioctl(rx.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r == 0 { n.max(0) as usize } else { 0 }
}

/// Whether process group `pgid` still has a member.
fn group_alive(pgid: i32) -> bool {
    !matches!(kill(Pid::from_raw(-pgid), None), Err(Errno::ESRCH))
}

/// The processes left that are ours to reap (not zombies): as PID 1, every
/// process of the namespace but us; else every descendant. `None` when
/// /proc cannot tell.
fn leftover_processes(pid1: bool) -> Option<Vec<i32>> {
    let me = std::process::id() as i32;
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            == Some(false)
    };
    if pid1 {
        let dir = std::fs::read_dir("/proc").ok()?;
        let pids = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&p| p != me && alive(p))
            .collect();
        return Some(pids);
    }
    let mut found = Vec::new();
    let mut todo = vec![me];
    while let Some(pid) = todo.pop() {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        for task in tasks.flatten() {
            let path = task.path().join("children");
            let Ok(text) = std::fs::read_to_string(path) else {
                continue;
            };
            for c in text
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok())
            {
                if !found.contains(&c) {
                    todo.push(c);
                    if alive(c) {
                        found.push(c);
                    }
                }
            }
        }
    }
    Some(found)
}

/// /dev/null for the children's stdin; an empty pipe (EOF at once) where
/// there is no /dev/null.
fn open_null() -> Option<OwnedFd> {
    match std::fs::File::open("/dev/null") {
        Ok(f) => Some(OwnedFd::from(f)),
        Err(_) => {
            let (tx, rx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok()?;
            drop(tx);
            Some(rx)
        }
    }
}

/// Sends `signal` to process group `pgid`. A group that is already gone
/// (ESRCH) is expected; anything else is worth a warning.
fn send(pgid: i32, signal: i32) {
    // SAFETY: kill has no memory effects; real-time signals have no `Signal`.
    let r = unsafe { libc::kill(-pgid, signal) };
    if r != 0 {
        let e = Errno::last();
        if e != Errno::ESRCH {
            log::warn!("kill(-{pgid}, {}): {}", exit::signal_name(signal), e.desc());
        }
    }
}

/// An I/O error as its plain description, without the "(os error N)".
pub fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}

/// Linux's pipe capacity, which needs no `F_SETPIPE_SZ`.
const DEFAULT_PIPE_SIZE: usize = 64 * 1024;

/// The capacity to ask for each of `daemons` pipes: an even share of
/// `PIPE_BUDGET`, between Linux's default and `PIPE_SIZE_MAX`, a power of
/// two (the kernel rounds up to one anyway).
fn pipe_size(daemons: usize) -> usize {
    let share = (PIPE_BUDGET / daemons.max(1)).clamp(DEFAULT_PIPE_SIZE, PIPE_SIZE_MAX);
    1 << share.ilog2()
}

/// When not PID 1, become a child subreaper, so that orphans of the
/// daemons are re-parented to us and reaped, as they would be by PID 1.
fn become_reaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        log::warn!("prctl(PR_SET_CHILD_SUBREAPER): {}", e.desc());
    }
}

/// Makes sure `pipes` children's pipes fit in the descriptor limit, plus
/// a few of our own, raising the soft limit only if needed.
fn raise_fd_limit(pipes: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let needed = pipes as u64 + 64;
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < needed {
            let new = needed.min(hard);
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, new, hard) {
                log::warn!("setrlimit(RLIMIT_NOFILE, {new}): {}", e.desc());
            }
        }
    }
}

/// Puts the descriptors we start with in order. Call first thing, before
/// any descriptor of our own exists.
///
/// - A closed 0, 1 or 2 is opened on /dev/null: otherwise our own pipes
///   could land there and a daemon would write into our epoll or signal
///   descriptor, or we would log into a daemon's pipe.
/// - Every descriptor above 2 that we inherited is marked close-on-exec, so
///   none reaches a daemon (a stray copy of a pipe would also keep it from
///   EOF).
pub fn sanitize_fds() {
    for fd in 0..=2 {
        // SAFETY: F_GETFD only queries the descriptor.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            let flags = if fd == 0 {
                libc::O_RDONLY
            } else {
                libc::O_WRONLY
            };
            // SAFETY: a valid C string; the result is checked below.
            let null = unsafe { libc::open(c"/dev/null".as_ptr(), flags) };
            if null >= 0 && null != fd {
                // SAFETY: moves the new descriptor to the free slot.
                unsafe {
                    libc::dup2(null, fd);
                    libc::close(null);
                }
            }
        }
    }
    cloexec_inherited_fds();
}

fn cloexec_inherited_fds() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return;
    }
    // Kernels before 5.11: walk the open descriptors instead.
    let fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd > 2)
            .collect(),
        Err(_) => (3..1024).collect(),
    };
    for fd in fds {
        // SAFETY: F_SETFD on a possibly closed fd only fails with EBADF.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_share_a_budget_between_the_default_and_the_maximum() {
        assert_eq!(pipe_size(0), PIPE_SIZE_MAX);
        assert_eq!(pipe_size(1), PIPE_SIZE_MAX);
        assert_eq!(pipe_size(16), PIPE_SIZE_MAX);
        assert_eq!(pipe_size(17), 256 * 1024);
        assert_eq!(pipe_size(100), 64 * 1024);
        assert_eq!(pipe_size(1000), DEFAULT_PIPE_SIZE);
        for n in 1..2000 {
            let size = pipe_size(n);
            assert!(size.is_power_of_two(), "{n}: {size}");
            assert!(
                size * n <= PIPE_BUDGET || size == DEFAULT_PIPE_SIZE,
                "{n}: {size}"
            );
            assert!(size <= READ_SIZE, "a full pipe fits one read");
        }
    }

    #[test]
    fn every_counted_sigint_reaches_the_supervisor() {
        use libc::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
        // Two SIGINTs delivered before the loop looked: the pending bit
        // says one, the count says two, and two reach the supervisor (the
        // second kills at once).
        assert_eq!(
            signal_batch(&[SIGINT], 2),
            SignalBatch {
                reap: false,
                signals: vec![SIGINT, SIGINT]
            }
        );
        // The count was taken by the wake-up before: the flag left over
        // is not a SIGINT of its own.
        assert_eq!(signal_batch(&[SIGINT], 0).signals, Vec::<i32>::new());
        // A SIGINT counted before its bit is seen still counts.
        assert_eq!(signal_batch(&[], 1).signals, vec![SIGINT]);
        // SIGCHLD means reap, first; other signals once each, in order,
        // SIGINTs after them.
        let b = signal_batch(&[SIGHUP, SIGCHLD, SIGINT, SIGTERM], 3);
        assert!(b.reap);
        assert_eq!(b.signals, vec![SIGHUP, SIGTERM, SIGINT, SIGINT, SIGINT]);
        assert!(!signal_batch(&[SIGHUP], 0).reap);
    }

    #[test]
    fn slots_and_children_map_both_ways() {
        for id in [
            ChildId::Unit(0),
            ChildId::Unit(2),
            ChildId::Check(0),
            ChildId::Check(2),
            ChildId::Notify,
        ] {
            assert_eq!(child(slot(id, 3), 3), id);
        }
        assert_eq!(slot(ChildId::Notify, 3), 6);
    }
}
