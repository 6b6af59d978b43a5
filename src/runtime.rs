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
use crate::frame::{self, Prefix};
use crate::lines::LineSplitter;
use crate::notify;
use crate::output::{self, Output};
use crate::procfile::DaemonSpec;
use crate::supervisor::{self, Action, Backoff, Policy, Supervisor, Timing};

const SIGNALS: Token = Token(0);
const STDOUT: Token = Token(1);
/// Daemon `i`'s pipe is token `FIRST_PIPE + i`.
const FIRST_PIPE: usize = 2;

/// Largest single read from a daemon pipe: a full pipe of the largest size
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
/// How long to wait for a reaped daemon's pipe to reach EOF. A grandchild
/// holding the pipe open must not hold the exit line (or our exit) forever.
const DRAIN: Duration = Duration::from_secs(1);
/// How much longer than `DRAIN` a stalled stdout may make that wait: time
/// spent unable to read a daemon's pipe (the output buffer full) does not
/// count, up to this much, so a slow log reader gets its last lines before
/// its exit line. Bounded, so a reader that never comes back cannot hold a
/// restart or our exit for long.
const DRAIN_STALL_MAX: Duration = Duration::from_secs(5);
/// How long notifications still queued or running when every daemon is gone
/// may delay the exit.
const NOTIFY_EXIT_WAIT: Duration = Duration::from_secs(2);
/// The prefix of the notify command's output lines.
const NOTIFY_PREFIX: &[u8] = b"[notify] ";
/// How long to keep trying to write the last lines to a stalled stdout.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// Settings the event loop needs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub grace: Duration,
    pub line_max: usize,
    /// Each daemon's restart policy, in table order.
    pub policies: Vec<Policy>,
    pub backoff: Backoff,
    /// The operator's notify command, if any.
    pub notify: Option<Vec<String>>,
    /// How long a notify command may run before it is killed.
    pub notify_timeout: Duration,
}

/// The operator's notify command: one run at a time, events queued.
struct Notifier {
    argv: Vec<String>,
    timeout: Duration,
    queue: notify::Queue,
    /// The current run, until it is reaped and its output drained.
    run: Option<NotifyRun>,
}

/// One run of the notify command.
struct NotifyRun {
    /// Its pid, which is also its process group.
    pid: i32,
    /// When it is killed if still running.
    kill_at: Instant,
    killed: bool,
    /// When it was reaped; its output may still be draining.
    reaped_at: Option<Instant>,
}

impl Notifier {
    /// When `notifier_tick` has work to do for the current run.
    fn deadline(&self) -> Option<Instant> {
        let run = self.run.as_ref()?;
        match run.reaped_at {
            Some(t) => Some(t + DRAIN),
            None if !run.killed => Some(run.kill_at),
            None => None,
        }
    }
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
    prefixes: Vec<Prefix>,
    /// Each daemon's pipe until it reaches EOF.
    pipes: Vec<Option<Pipe>>,
    out: Output,
    /// `READ_SIZE` bytes for reads, then `frame::BLOCK` bytes of slack for
    /// the framing fast path's block copies.
    read_buf: Vec<u8>,
    settings: Settings,
    /// Its output pipe is the last slot of `pipes`, after the daemons'.
    notifier: Option<Notifier>,
    /// Once every daemon is gone: how long queued notifications may still run.
    exit_wait: Option<Instant>,
    /// Bytes read but not yet framed, for lack of room in the output buffer.
    carry: Option<Carry>,
    /// The pipe slot the next read round starts at.
    next_pipe: usize,
}

/// `read_buf[start..end]`: bytes from pipe `slot` still to be framed.
#[derive(Clone, Copy, Debug)]
struct Carry {
    slot: usize,
    start: usize,
    end: usize,
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
    let mut out = Output::stdout(output::DEFAULT_CAPACITY);
    out.register(poll.registry(), STDOUT);

    let timing = Timing {
        grace: settings.grace,
        drain: DRAIN,
        drain_stall_max: DRAIN_STALL_MAX,
        backoff: settings.backoff,
    };
    let names = specs.iter().map(|s| s.name.clone());
    let policies = settings
        .policies
        .iter()
        .copied()
        .chain(std::iter::repeat(Policy::Never));
    let sup = Supervisor::new(names.zip(policies), timing);
    let notifier = settings.notify.clone().map(|argv| Notifier {
        argv,
        timeout: settings.notify_timeout,
        queue: notify::Queue::new(notify::DEFAULT_CAPACITY),
        run: None,
    });
    let mut prefixes: Vec<Prefix> = specs
        .iter()
        .map(|s| Prefix::new(format!("[{}] ", s.name).as_bytes()))
        .collect();
    prefixes.push(Prefix::new(NOTIFY_PREFIX));
    let mut rt = Runtime {
        poll,
        signals,
        sup,
        pipes: prefixes.iter().map(|_| None).collect(),
        prefixes,
        specs,
        out,
        read_buf: vec![0; READ_SIZE + frame::BLOCK],
        settings,
        notifier,
        exit_wait: None,
        carry: None,
        next_pipe: 0,
    };
    rt.sup.start();
    rt.apply();
    rt.run_loop()?;

    let code = rt.sup.exit_code();
    if let Some(n) = &rt.notifier {
        let (waiting, dropped) = n.queue.backlog();
        if waiting > 0 || dropped > 0 {
            log::debug!("exiting with {waiting} notifications not sent ({dropped} dropped)");
        }
    }
    log::info!("exit {code}");
    rt.final_flush();
    rt.out.restore();
    Ok(code)
}

impl Runtime {
    fn run_loop(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            self.sup.tick(now);
            self.apply();
            self.notifier_tick(now);
            if self.sup.finished() && self.notifications_done(now) {
                return Ok(());
            }
            // Lines just logged (a deadline passed, a spawn failed) go out
            // now, not at whatever wakes the loop next. (Not ready: stdout
            // is full, and its readiness event wakes the loop anyway.)
            if self.out.ready() {
                self.out.flush();
            }
            // Work left over from the last round (a pipe not yet read to
            // WouldBlock, or stdout ready for pending bytes) means look for
            // events without sleeping; otherwise sleep until the deadline.
            let timeout = if self.has_work() {
                Some(Duration::ZERO)
            } else {
                let notify_deadline = self.notifier.as_ref().and_then(Notifier::deadline);
                let deadline = (self.sup.next_deadline().into_iter())
                    .chain(notify_deadline)
                    .chain(self.exit_wait)
                    .min();
                deadline.map(|d| d.saturating_duration_since(now))
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
            // While the buffer is full no pipe is read: daemons' drain
            // clocks stand still.
            self.sup
                .output_stalled(self.out.room() == 0, Instant::now());
        }
    }

    fn has_work(&self) -> bool {
        if self.out.pending() && self.out.ready() {
            return true;
        }
        let readable = || self.pipes.iter().flatten().any(|p| p.readable);
        self.out.room() > 0 && (self.carry.is_some() || readable())
    }

    /// Performs the supervisor's actions, in order.
    fn apply(&mut self) {
        while let Some(action) = self.sup.next_action() {
            match action {
                Action::Spawn(i) => self.spawn(i),
                Action::Signal { pgid, signal } => send(pgid, signal),
                Action::Log(level, msg) => log::log!(level, "{msg}"),
                Action::Notify(event) => {
                    if let Some(n) = &mut self.notifier {
                        n.queue.push(event);
                        self.start_notifier();
                    }
                }
            }
        }
    }

    /// Runs the notify command for the next queued event, if none runs.
    fn start_notifier(&mut self) {
        let slot = self.specs.len();
        loop {
            let Some(n) = &mut self.notifier else { return };
            let Some((event, dropped)) = n.queue.start_next() else {
                return;
            };
            let env = event.env(dropped);
            match spawn(&n.argv, &env, pipe_size(self.specs.len())) {
                Ok((pid, rx)) => {
                    n.run = Some(NotifyRun {
                        pid,
                        kill_at: Instant::now() + n.timeout,
                        killed: false,
                        reaped_at: None,
                    });
                    log::debug!("notify: {} {} (pid {pid})", event.kind, event.daemon);
                    self.open_pipe(slot, rx);
                    return;
                }
                Err(e) => {
                    log::warn!(
                        "cannot run the notify command {}: {}",
                        n.argv[0],
                        describe(&e)
                    );
                    n.queue.finished();
                }
            }
        }
    }

    /// Whether sidecar-init, its daemons gone, may exit as far as the
    /// notify command is concerned: nothing is running or queued, or the
    /// bounded wait for that has passed (then a running command is killed).
    fn notifications_done(&mut self, now: Instant) -> bool {
        let Some(n) = &mut self.notifier else {
            return true;
        };
        if n.run.is_none() && n.queue.backlog().0 == 0 {
            return true;
        }
        let deadline = *self.exit_wait.get_or_insert(now + NOTIFY_EXIT_WAIT);
        if now < deadline {
            return false;
        }
        if let Some(run) = n.run.as_ref().filter(|r| r.reaped_at.is_none()) {
            log::warn!("notify command still running at exit; killing it");
            send(run.pid, libc::SIGKILL);
        }
        true
    }

    /// Kills a notify command that has run too long; once a run is reaped
    /// and its output drained (or the drain period is over), starts the next.
    fn notifier_tick(&mut self, now: Instant) {
        let slot = self.specs.len();
        let Some(n) = &mut self.notifier else { return };
        let Some(run) = &mut n.run else { return };
        match run.reaped_at {
            None => {
                if !run.killed && now >= run.kill_at {
                    run.killed = true;
                    log::warn!(
                        "notify command still running after {}; killing it",
                        supervisor::format_secs(n.timeout)
                    );
                    send(run.pid, libc::SIGKILL);
                }
            }
            Some(reaped_at) => {
                if self.pipes[slot].is_none() || now >= reaped_at + DRAIN {
                    n.run = None;
                    n.queue.finished();
                    self.close_pipe(slot);
                    self.start_notifier();
                }
            }
        }
    }

    /// `pid` was the notify command; false if it was not.
    fn notifier_reaped(&mut self, pid: i32, ending: Ending, now: Instant) -> bool {
        let Some(n) = &mut self.notifier else {
            return false;
        };
        let Some(run) = n
            .run
            .as_mut()
            .filter(|r| r.pid == pid && r.reaped_at.is_none())
        else {
            return false;
        };
        run.reaped_at = Some(now);
        let code = ending.code(false);
        if code == 0 {
            log::debug!("notify command exited with code 0");
        } else {
            log::warn!("notify command exited with code {code}{ending}");
        }
        self.notifier_tick(now);
        true
    }

    /// Registers pipe `slot` (a daemon's, or the notifier's) for reading.
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
        // A restarted daemon's previous pipe, given up at its drain
        // deadline: its last lines must not run into the new run's.
        self.retire_pipe(slot);
        self.pipes[slot] = Some(Pipe {
            rx,
            splitter: LineSplitter::new(self.settings.line_max),
            readable: false,
        });
    }

    fn spawn(&mut self, i: usize) {
        let spec = &self.specs[i];
        match spawn(&spec.argv, &[], pipe_size(self.specs.len())) {
            Ok((pid, rx)) => {
                log::debug!("{} runs as pid {pid}", spec.name);
                self.open_pipe(i, rx);
                self.sup.spawned(i, pid, Instant::now());
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
        let received: Vec<i32> = self.signals.pending().collect();
        // Reap first: a daemon that died before a SIGTERM in the same batch
        // reached us was not stopped by our forwarding it (its code is 143,
        // not 0), and shutdown should not signal it.
        if received.contains(&libc::SIGCHLD) {
            self.reap();
        }
        for sig in received.into_iter().filter(|&s| s != libc::SIGCHLD) {
            log::debug!("received {}", exit::signal_name(sig));
            self.sup.signal(sig, Instant::now());
            self.apply();
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
            let pid = pid.as_raw();
            let now = Instant::now();
            if !self.notifier_reaped(pid, ending, now) && !self.sup.reaped(pid, ending, now) {
                log::debug!("reaped pid {pid} (not a daemon){ending}");
            }
            self.apply();
        }
    }

    /// Reads each readable pipe once (bounded work per daemon per wake-up,
    /// so a chatty daemon cannot starve the others or the signals), while
    /// the output buffer has room.
    fn read_round(&mut self) {
        if let Some(c) = self.carry.take() {
            if !self.pump(c.slot, c.start, c.end) {
                return;
            }
        }
        // A round cut short by a full buffer resumes where it stopped, so
        // the daemons early in the table cannot starve the later ones.
        let count = self.pipes.len();
        let first = self.next_pipe;
        for i in (first..count).chain(0..first) {
            if self.out.room() == 0 {
                self.next_pipe = i;
                return;
            }
            let Some(p) = self.pipes[i].as_mut() else {
                continue;
            };
            if !p.readable {
                continue;
            }
            match p.rx.read(&mut self.read_buf[..READ_SIZE]) {
                Ok(0) => self.close_pipe(i),
                Ok(n) => {
                    if !self.pump(i, 0, n) {
                        self.next_pipe = (i + 1) % count;
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => p.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("read pipe {i}: {}", describe(&e));
                    self.close_pipe(i);
                }
            }
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

    /// Pipe `slot` reached EOF (or is abandoned): stop reading it.
    fn close_pipe(&mut self, slot: usize) {
        if !self.retire_pipe(slot) {
            return;
        }
        if slot < self.specs.len() {
            self.sup.pipe_closed(slot, Instant::now());
            self.apply();
        } else {
            self.notifier_tick(Instant::now());
        }
    }

    /// Stops reading pipe `slot`, if there is one: frames what was read
    /// from it (within the buffer's limit) and its unterminated last line.
    /// Returns whether there was a pipe.
    fn retire_pipe(&mut self, slot: usize) -> bool {
        let Some(mut p) = self.pipes[slot].take() else {
            return false;
        };
        let _ = self.poll.registry().deregister(&mut p.rx);
        if let Some(c) = self.carry.filter(|c| c.slot == slot) {
            // Given up with bytes still carried (stdout stalled past the
            // drain deadline): what fits under the usual limit goes out, the
            // rest is dropped, as is whatever was still unread in the pipe.
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
            let dropped = c.end - c.start - used;
            if dropped > 0 {
                let whose = match self.specs.get(slot) {
                    Some(spec) => format!("{}'s", spec.name),
                    None => "the notify command's".to_string(),
                };
                log::warn!("{dropped} bytes of {whose} output dropped: stdout is not being read");
            }
        }
        let (prefix, buf) = (self.prefixes[slot].as_bytes(), self.out.buf());
        p.splitter.finish(|line| buf.push_framed(prefix, line));
        true
    }

    /// Writes what is left, waiting for a slow reader a bounded time.
    fn final_flush(&mut self) {
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
                match self.poll.poll(&mut events, Some(deadline - now)) {
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

/// Starts `argv` in its own process group with `env` added, stdout and
/// stderr into one pipe whose read end is returned (non-blocking,
/// close-on-exec).
fn spawn(argv: &[String], env: &[(&str, String)], pipe_size: usize) -> io::Result<(i32, Receiver)> {
    let (tx, rx) = pipe::new()?;
    // Best effort: a smaller pipe only costs speed.
    if pipe_size > DEFAULT_PIPE_SIZE {
        let size = i32::try_from(pipe_size).unwrap_or(i32::MAX);
        let _ = nix::fcntl::fcntl(&rx, nix::fcntl::FcntlArg::F_SETPIPE_SZ(size));
    }
    // The daemon's end must block like any ordinary stdout.
    tx.set_nonblocking(false)?;
    let stdout = OwnedFd::from(tx);
    let stderr = stdout.try_clone()?;
    // No pre_exec closure, so std can use posix_spawn. Every descriptor of
    // ours is close-on-exec (see `sanitize_fds`), so the daemon
    // starts with 0, 1 and 2 only.
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
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
}
