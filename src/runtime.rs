//! The event loop: the only place that blocks, and the edge where the
//! supervisor's decisions become syscalls.
//!
//! One thread, one `mio::Poll` over the daemons' output pipes (non-blocking),
//! a signal-hook self-pipe and stdout's write readiness, with the nearest
//! deadline as the timeout. An idle supervisor sleeps in `epoll_wait` until a
//! signal, a line or a deadline; it never wakes on a period.

use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mio::unix::pipe::{self, Receiver};
use mio::{Events, Interest, Poll, Token};
use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use signal_hook_mio::v1_0::Signals;

use crate::exit::{self, Ending};
use crate::lines::{self, LineSplitter};
use crate::output::{self, Output};
use crate::procfile::DaemonSpec;
use crate::supervisor::{self, Action, Supervisor};

const SIGNALS: Token = Token(0);
const STDOUT: Token = Token(1);
/// Daemon `i`'s pipe is token `FIRST_PIPE + i`.
const FIRST_PIPE: usize = 2;

/// Largest single read from a daemon pipe.
const READ_SIZE: usize = 64 * 1024;
/// Smallest read worth a syscall: below this much room, wait for stdout.
const MIN_READ: usize = 4 * 1024;
/// How long to wait for a reaped daemon's pipe to reach EOF. A grandchild
/// holding the pipe open must not hold the exit line (or our exit) forever.
const DRAIN: Duration = Duration::from_secs(1);
/// How long to keep trying to write the last lines to a stalled stdout.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// Settings the event loop needs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub grace: Duration,
    pub line_max: usize,
}

/// A daemon's output pipe and the state of its current line.
struct Pipe {
    rx: Receiver,
    splitter: LineSplitter,
    /// The last readiness event has not been followed by `WouldBlock` yet.
    readable: bool,
}

struct Runtime {
    poll: Poll,
    signals: Signals,
    sup: Supervisor,
    specs: Vec<DaemonSpec>,
    /// `[name] ` for each daemon.
    prefixes: Vec<Vec<u8>>,
    /// Each daemon's pipe until it reaches EOF.
    pipes: Vec<Option<Pipe>>,
    out: Output,
    read_buf: Vec<u8>,
    settings: Settings,
}

/// Runs the daemons until every one is gone; returns the exit code.
pub fn run(specs: Vec<DaemonSpec>, settings: Settings) -> io::Result<i32> {
    // Signals are registered before the first spawn, so no SIGCHLD or
    // SIGTERM can slip between a spawn and the loop.
    let mut signals = Signals::new(
        [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD]
            .into_iter()
            .chain(supervisor::FORWARDED),
    )?;
    become_reaper();
    raise_fd_limit(specs.len());

    let poll = Poll::new()?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)?;
    let longest_prefix = specs.iter().map(|s| s.name.len() + 3).max().unwrap_or(0);
    let mut out = Output::stdout(output_capacity(settings.line_max, longest_prefix));
    out.register(poll.registry(), STDOUT);

    let sup = Supervisor::new(specs.iter().map(|s| s.name.clone()), settings.grace, DRAIN);
    let mut rt = Runtime {
        poll,
        signals,
        sup,
        prefixes: specs
            .iter()
            .map(|s| format!("[{}] ", s.name).into_bytes())
            .collect(),
        pipes: specs.iter().map(|_| None).collect(),
        specs,
        out,
        read_buf: vec![0; READ_SIZE],
        settings,
    };
    rt.sup.start();
    rt.apply();
    rt.run_loop()?;

    let code = rt.sup.exit_code();
    log::info!("exit {code}");
    rt.final_flush();
    rt.out.restore();
    Ok(code)
}

/// Room for the longest line three times over (invalid bytes become three
/// bytes each) plus a worthwhile read of the worst kind, whatever the limit.
fn output_capacity(line_max: usize, longest_prefix: usize) -> usize {
    let needed = lines::framed_bound(line_max, MIN_READ, longest_prefix);
    output::DEFAULT_CAPACITY.max(needed)
}

impl Runtime {
    fn run_loop(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            self.sup.tick(now);
            self.apply();
            if self.sup.finished() {
                return Ok(());
            }
            // Work left over from the last round (a pipe not yet read to
            // WouldBlock, or stdout ready for pending bytes) means look for
            // events without sleeping; otherwise sleep until the deadline.
            let timeout = if self.has_work() {
                Some(Duration::ZERO)
            } else {
                self.sup
                    .next_deadline()
                    .map(|d| d.saturating_duration_since(now))
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io::Error::new(e.kind(), format!("epoll_wait: {e}"))),
            }
            let mut signalled = false;
            for event in &events {
                match event.token() {
                    SIGNALS => signalled = true,
                    STDOUT => self.out.set_writable(),
                    Token(t) => {
                        if let Some(Some(p)) = self.pipes.get_mut(t - FIRST_PIPE) {
                            p.readable = true;
                        }
                    }
                }
            }
            if signalled {
                self.handle_signals();
            }
            self.read_round();
            self.out.flush();
        }
    }

    fn has_work(&self) -> bool {
        let writable = self.out.pending() && self.out.ready();
        writable || (0..self.pipes.len()).any(|i| self.read_allowance(i) > 0)
    }

    /// How many bytes daemon `i`'s pipe may be read for now: 0 unless it is
    /// readable and stdout's buffer has room for the worst case.
    fn read_allowance(&self, i: usize) -> usize {
        let Some(p) = &self.pipes[i] else { return 0 };
        if !p.readable {
            return 0;
        }
        let n = lines::input_allowance(
            self.out.room(),
            p.splitter.buffered(),
            self.prefixes[i].len(),
        );
        if n < MIN_READ { 0 } else { n.min(READ_SIZE) }
    }

    /// Performs the supervisor's actions, in order.
    fn apply(&mut self) {
        while let Some(action) = self.sup.next_action() {
            match action {
                Action::Spawn(i) => self.spawn(i),
                Action::Signal { pgid, signal } => send(pgid, signal),
                Action::Log(level, msg) => log::log!(level, "{msg}"),
            }
        }
    }

    fn spawn(&mut self, i: usize) {
        let spec = &self.specs[i];
        match spawn(spec) {
            Ok((pid, mut rx)) => {
                let token = Token(FIRST_PIPE + i);
                if let Err(e) = self
                    .poll
                    .registry()
                    .register(&mut rx, token, Interest::READABLE)
                {
                    // The daemon runs, but we cannot read it: keep it without output.
                    log::error!("epoll_ctl for {}'s output: {e}", spec.name);
                }
                log::debug!(
                    "{} runs as pid {pid}: {}",
                    spec.name,
                    crate::procfile::render(std::slice::from_ref(spec)).trim_end()
                );
                self.pipes[i] = Some(Pipe {
                    rx,
                    splitter: LineSplitter::new(self.settings.line_max),
                    readable: false,
                });
                self.sup.spawned(i, pid);
            }
            Err(e) => {
                let code = match e.kind() {
                    io::ErrorKind::NotFound => exit::NOT_FOUND,
                    _ => exit::NOT_EXECUTABLE,
                };
                let error = format!("{}: {}", spec.argv[0], describe(&e));
                self.sup.spawn_failed(i, code, &error, Instant::now());
            }
        }
    }

    fn handle_signals(&mut self) {
        let mut child = false;
        let received: Vec<i32> = self.signals.pending().collect();
        for sig in received {
            if sig == libc::SIGCHLD {
                child = true;
            } else {
                log::debug!("received {}", exit::signal_name(sig));
                self.sup.signal(sig, Instant::now());
                self.apply();
            }
        }
        if child {
            self.reap();
        }
    }

    /// Reaps every child that has exited — daemons and adopted orphans
    /// alike. Signals coalesce, so one SIGCHLD may stand for many exits.
    fn reap(&mut self) {
        loop {
            let (pid, ending) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, status)) => (pid, Ending::Exited(status)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Ending::Signaled(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("waitpid: {}", e.desc());
                    return;
                }
            };
            if !self.sup.reaped(pid.as_raw(), ending, Instant::now()) {
                log::debug!("reaped pid {pid} (not a daemon){ending}");
            }
            self.apply();
        }
    }

    /// Reads each readable pipe once (bounded work per daemon per wake-up,
    /// so a chatty daemon cannot starve the others or the signals).
    fn read_round(&mut self) {
        for i in 0..self.pipes.len() {
            let allowance = self.read_allowance(i);
            if allowance == 0 {
                continue;
            }
            self.out.absorb_log(); // keep our lines in order with theirs
            let p = self.pipes[i].as_mut().expect("a readable pipe exists");
            let prefix = &self.prefixes[i];
            let buf = self.out.buf();
            match p.rx.read(&mut self.read_buf[..allowance]) {
                Ok(0) => {
                    p.splitter
                        .finish(|line| lines::push_framed(buf, prefix, line));
                    self.close_pipe(i);
                }
                Ok(n) => p.splitter.feed(&self.read_buf[..n], |line| {
                    lines::push_framed(buf, prefix, line)
                }),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => p.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("read {}'s output: {}", self.specs[i].name, describe(&e));
                    p.splitter
                        .finish(|line| lines::push_framed(buf, prefix, line));
                    self.close_pipe(i);
                }
            }
        }
    }

    fn close_pipe(&mut self, i: usize) {
        if let Some(mut p) = self.pipes[i].take() {
            let _ = self.poll.registry().deregister(&mut p.rx);
        }
        self.sup.pipe_closed(i, Instant::now());
        self.apply();
    }

    /// Writes what is left, waiting for a slow reader a bounded time.
    fn final_flush(&mut self) {
        let deadline = Instant::now() + FINAL_FLUSH;
        let mut events = Events::with_capacity(16);
        loop {
            self.out.flush();
            let now = Instant::now();
            if !self.out.pending() || now >= deadline {
                return;
            }
            if !self.out.ready() {
                match self.poll.poll(&mut events, Some(deadline - now)) {
                    Ok(()) => {
                        if events.iter().any(|e| e.token() == STDOUT) {
                            self.out.set_writable();
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        }
    }
}

/// Starts one daemon in its own process group, stdout and stderr into one
/// pipe whose read end is returned (non-blocking, close-on-exec).
fn spawn(spec: &DaemonSpec) -> io::Result<(i32, Receiver)> {
    let (tx, rx) = pipe::new()?;
    // The daemon's end must block like any ordinary stdout.
    tx.set_nonblocking(false)?;
    let stdout = OwnedFd::from(tx);
    let stderr = stdout.try_clone()?;
    // No pre_exec closure, so std can use posix_spawn. Every descriptor of
    // ours is close-on-exec (see `cloexec_inherited_fds`), so the daemon
    // starts with 0, 1 and 2 only.
    let child = Command::new(&spec.argv[0])
        .args(&spec.argv[1..])
        .process_group(0)
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .spawn()?;
    // The Child is dropped without waiting: `reap` owns waitpid.
    Ok((child.id() as i32, rx))
}

/// Sends `signal` to process group `pgid`. A group that is already gone
/// (ESRCH) is expected; anything else is worth a warning.
fn send(pgid: i32, signal: i32) {
    let Ok(sig) = Signal::try_from(signal) else {
        return;
    };
    match kill(Pid::from_raw(-pgid), sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => log::warn!("kill(-{pgid}, {sig}): {}", e.desc()),
    }
}

/// An I/O error as its plain description, without the "(os error N)".
pub fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}

/// When not PID 1, become a child subreaper, so that orphans of the
/// daemons are re-parented to us and reaped, as they would be by PID 1.
fn become_reaper() {
    if std::process::id() != 1 {
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            log::warn!("prctl(PR_SET_CHILD_SUBREAPER): {}", e.desc());
        }
    }
}

/// Makes sure a table of `daemons` fits in the descriptor limit (one pipe
/// each, plus a few of our own), raising the soft limit only if needed.
fn raise_fd_limit(daemons: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let needed = daemons as u64 + 64;
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < needed {
            let new = needed.min(hard);
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, new, hard) {
                log::warn!("setrlimit(RLIMIT_NOFILE, {new}): {}", e.desc());
            }
        }
    }
}

/// Marks every descriptor above 2 that we inherited close-on-exec, so none
/// reaches a daemon (a stray copy of a pipe would also keep it from EOF).
/// Call first thing, before any descriptor of our own exists.
pub fn cloexec_inherited_fds() {
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
