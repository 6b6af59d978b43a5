//! The supervisor's decisions, as a state machine with no I/O.
//!
//! Events come in (a child was spawned or could not be, was reaped, its pipe
//! reached EOF, a check passed, a signal arrived, time passed); actions come
//! out (spawn, signal a process group, run a check, log a line). The event
//! loop in [`crate::runtime`] performs the actions and reports back. Time is
//! passed in, never read, so tests drive it with a fake clock.
//!
//! Every unit (a daemon, a one-shot task or the main program) is in one
//! [`State`]; [`Supervisor::transition`] is the one place where a unit's
//! state changes, so every transition can be read in one match, the way
//! s6-supervise writes its `actions[state][event]` table.
//!
//! Every process the supervisor starts — units, check commands, the notify
//! command — is a [`Proc`] and ends the same way: it is over once it has
//! been reaped *and* its output pipe reached EOF (or was given up: bytes
//! queued in the pipe at the reap are always waited for while stdout makes
//! progress, bytes a leftover process writes later only for a bounded
//! time), and, for a unit being stopped, once its whole process group is
//! gone or was SIGKILLed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use log::Level;
use nix::libc::{SIGCONT, SIGINT, SIGKILL, SIGTERM, SIGWINCH};

use crate::exit::{self, Ending};
use crate::notify::{self, Event, Kind as EventKind};

/// Something the event loop must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start unit `i` and report with `spawned` or `spawn_failed`.
    Spawn(usize),
    /// Run unit `i`'s check for `purpose`. An `exec` check is a child
    /// ([`ChildId::Check`]: report `spawned`/`spawn_failed`, then it is
    /// reaped like any child); any other check reports `check_done`.
    RunCheck(usize, Purpose),
    /// Abandon unit `i`'s socket check (its timeout passed).
    CancelCheck(usize),
    /// Start (true) or stop (false) looking for unit `i`'s `line:` text in
    /// its output; report `line_seen`.
    WatchLine(usize, bool),
    /// Run the notify command for this event, with the number of events
    /// dropped before it; report `spawned(ChildId::Notify, ..)`.
    SpawnNotify(Event, u64),
    /// Send `signal` to the process group `pgid`.
    Signal { pgid: i32, signal: i32 },
    /// Stop reading this child's pipe; report `pipe_abandoned` with the
    /// bytes that were never written out.
    AbandonPipe(ChildId),
    /// Send `signal` to every process left (ours to reap: as PID 1, every
    /// process of the namespace; as a subreaper, every descendant), and
    /// log how many; report `children_left`.
    Sweep(i32),
    /// Write one log line.
    Log(Level, String),
}

/// A process the supervisor started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChildId {
    /// Unit `i` (a daemon, a one-shot or the main program).
    Unit(usize),
    /// Unit `i`'s `exec` check command.
    Check(usize),
    /// The operator's notify command.
    Notify,
}

/// What a check is run for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Until the unit is ready (`--ready`).
    Ready,
    /// While it is ready (`--live`).
    Live,
}

/// What a unit is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A long-running daemon.
    Daemon,
    /// A task that runs to completion; ready once it exits 0.
    Oneshot,
    /// The main program (`-- CMD`): starts after every other unit is
    /// ready, its exit ends the run, and its status is the exit code.
    Main,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Daemon => "daemon",
            Kind::Oneshot => "oneshot",
            Kind::Main => "main",
        }
    }
}

/// How a unit's readiness is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Ready once spawned (no check).
    Spawned,
    /// A check run every `ready_interval` until it passes; `exec` checks
    /// are commands (children), the others the event loop's sockets.
    Poll { exec: bool },
    /// A line of its output contains this text.
    Line(String),
    /// It sends `READY=1` on the notify socket.
    Notify,
}

/// A liveness check: polled every `live_interval` while the unit is ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Liveness {
    pub exec: bool,
    /// The check as text, for the log.
    pub text: String,
}

/// One unit as the supervisor needs it (the resolved plan, see
/// [`crate::plan`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitSpec {
    pub name: String,
    pub kind: Kind,
    pub policy: Policy,
    pub ready: Readiness,
    /// The readiness check as text, for the log and `status`.
    pub ready_text: Option<String>,
    pub live: Option<Liveness>,
    /// Units that must be ready before this one starts (indices).
    pub after: Vec<usize>,
    /// Its end (for good) shuts everything down.
    pub essential: bool,
    /// The signal a stop sends.
    pub stop_signal: i32,
}

impl UnitSpec {
    /// A daemon with no options: what the table alone gives.
    pub fn daemon(name: &str) -> UnitSpec {
        UnitSpec {
            name: name.to_string(),
            kind: Kind::Daemon,
            policy: Policy::Never,
            ready: Readiness::Spawned,
            ready_text: None,
            live: None,
            after: Vec::new(),
            essential: false,
            stop_signal: SIGTERM,
        }
    }
}

/// Signals forwarded to the units unchanged, without starting shutdown:
/// the usual control signals, SIGTSTP and SIGCONT (as tini does: a
/// `docker kill -s TSTP` pauses the units, not sidecar-init, and CONT
/// resumes them), and every other signal whose default action would end
/// sidecar-init, except those only a fault of its own raises (SEGV, BUS,
/// ILL, FPE, ABRT, TRAP, SYS) and SIGPIPE (ignored: its own writes to a
/// closed stdout raise it). Real-time signals are added by
/// [`forwarded_signals`].
pub const FORWARDED: [i32; 15] = [
    nix::libc::SIGTSTP,
    SIGCONT,
    nix::libc::SIGHUP,
    nix::libc::SIGQUIT,
    nix::libc::SIGUSR1,
    nix::libc::SIGUSR2,
    SIGWINCH,
    nix::libc::SIGALRM,
    nix::libc::SIGIO,
    nix::libc::SIGPWR,
    nix::libc::SIGXCPU,
    nix::libc::SIGXFSZ,
    nix::libc::SIGVTALRM,
    nix::libc::SIGPROF,
    nix::libc::SIGSTKFLT,
];

/// Every forwarded signal: [`FORWARDED`] and the real-time signals the C
/// library leaves to programs (`SIGRTMIN..=SIGRTMAX`).
pub fn forwarded_signals() -> Vec<i32> {
    let rt = nix::libc::SIGRTMIN()..=nix::libc::SIGRTMAX();
    FORWARDED.iter().copied().chain(rt).collect()
}

/// When a unit whose run ended outside shutdown is started again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Never (the default): it stays gone.
    #[default]
    Never,
    /// When its code is not 0 (a non-zero exit, death by a signal, a
    /// failed check, or a command that could not be started).
    OnFailure,
    /// Whatever its code.
    Always,
}

impl Policy {
    /// `never`, `on-failure` or `always`.
    pub fn parse(text: &str) -> Option<Policy> {
        match text {
            "never" | "no" => Some(Policy::Never),
            "on-failure" => Some(Policy::OnFailure),
            "always" => Some(Policy::Always),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Never => "never",
            Policy::OnFailure => "on-failure",
            Policy::Always => "always",
        }
    }

    fn wants_restart(self, code: i32) -> bool {
        match self {
            Policy::Never => false,
            Policy::OnFailure => code != 0,
            Policy::Always => true,
        }
    }
}

/// The restart backoff: exponential from `delay`, doubling up to `max_delay`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first restart of a streak.
    pub delay: Duration,
    /// The ceiling.
    pub max_delay: Duration,
    /// A run at least this long starts the backoff (and the streak) over.
    pub reset: Duration,
    /// Give up after this many restarts in a row whose runs were each
    /// shorter than `reset`; `None` never gives up.
    pub max_restarts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            reset: Duration::from_secs(10),
            max_restarts: None,
        }
    }
}

impl Backoff {
    /// The delay before restart number `streak` (1-based) of a streak of
    /// short runs: `delay * 2^(streak-1)`, at most `max_delay`.
    pub fn delay_for(&self, streak: u32) -> Duration {
        let factor = 1u32
            .checked_shl(streak.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// The supervisor's fixed settings.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Stop signal to SIGKILL.
    pub grace: Duration,
    /// How long bytes written to a pipe after its process's reap (by a
    /// process still holding it) are waited for.
    pub drain: Duration,
    /// How long a stalled stdout may hold a drain: bytes queued at the reap
    /// are given up only after stdout made no progress this long, and the
    /// `drain` clock stands still during stalls, up to this much more.
    pub drain_stall_max: Duration,
    pub backoff: Backoff,
    /// A daemon not ready this long after its spawn is stopped.
    pub ready_timeout: Duration,
    /// How often a polled readiness check runs.
    pub ready_interval: Duration,
    /// How long one check may take.
    pub check_timeout: Duration,
    /// How often a liveness check runs.
    pub live_interval: Duration,
    /// Failures in a row that make a daemon fail its liveness check.
    pub live_failures: u32,
    /// The notify command's timeout, if there is a notify command.
    pub notify_timeout: Option<Duration>,
    /// How long notifications still queued at the end may delay the exit.
    pub notify_exit_wait: Duration,
    /// The most units spawned in one round of the event loop.
    pub spawn_batch: usize,
}

impl Timing {
    /// The defaults, with this grace period.
    pub fn new(grace: Duration) -> Timing {
        Timing {
            grace,
            drain: Duration::from_secs(1),
            drain_stall_max: Duration::from_secs(5),
            backoff: Backoff::default(),
            ready_timeout: Duration::from_secs(60),
            ready_interval: Duration::from_millis(200),
            check_timeout: Duration::from_secs(5),
            live_interval: Duration::from_secs(10),
            live_failures: 3,
            notify_timeout: None,
            notify_exit_wait: Duration::from_secs(2),
            spawn_batch: 64,
        }
    }
}

/// A unit's place in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not started: waiting for its dependencies to be ready.
    Waiting,
    /// Its dependencies are ready; queued to be spawned.
    Queued,
    /// Running, not ready yet (a one-shot until it finishes).
    Starting,
    /// Running and ready.
    Ready,
    /// Its stop signal was sent; waiting for its run to end.
    Stopping(Why),
    /// Its run ended; it starts again at this instant.
    Backoff(Instant),
    /// A one-shot that exited 0: it never runs again.
    Finished,
    /// Its run ended and it will not run again.
    Exited,
    /// Stopped on request (`stop`) or at shutdown before it ran: stays
    /// down until `start` or `restart`.
    Stopped,
    /// Given up: restarted too often, or never started because a
    /// dependency failed for good.
    GivenUp,
}

/// Why a unit is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    Shutdown,
    /// `stop`: stays down afterwards.
    Stop,
    /// `restart`: starts again as soon as it is down.
    Restart,
    /// Not ready within `ready_timeout`: counts as failed.
    NotReady,
    /// Failed its liveness check: counts as failed.
    NotLive,
}

impl State {
    /// The state as `status` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Waiting | State::Queued => "waiting",
            State::Starting => "starting",
            State::Ready => "ready",
            State::Stopping(_) => "stopping",
            State::Backoff(_) => "backoff",
            State::Finished => "finished",
            State::Exited => "exited",
            State::Stopped => "stopped",
            State::GivenUp => "given-up",
        }
    }

    /// It will not run again without a `start`.
    fn is_over(self) -> bool {
        matches!(
            self,
            State::Finished | State::Exited | State::Stopped | State::GivenUp
        )
    }

    /// It satisfies its dependents: ready, or a finished one-shot.
    fn satisfies(self) -> bool {
        matches!(self, State::Ready | State::Finished)
    }

    /// It failed for good: its dependents can never start.
    fn failed_for_good(self) -> bool {
        matches!(self, State::Exited | State::GivenUp)
    }
}

/// What happens to a unit; see [`Supervisor::transition`].
#[derive(Clone, Debug)]
enum Input {
    /// Its dependencies are all ready (or it has none).
    DepsReady,
    /// A dependency failed for good: it can never start.
    DepFailed(String),
    /// Its turn in the spawn queue came.
    Spawn,
    Spawned,
    /// Its command could not be started (its run is recorded as ended).
    SpawnFailed,
    /// Its readiness was established, and how.
    BecameReady,
    /// Its run is over (reaped, drained, group gone when stopping).
    RunOver,
    /// A stop for this reason (shutdown, `stop`, a failed check...).
    Stop(Why),
    /// `start`.
    Start,
    /// Its backoff delay passed.
    BackoffDue,
}

/// The output pipe of a child.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pipe {
    /// Being read.
    Open,
    /// EOF was read (or there never was a pipe).
    Closed,
    /// Given up; waiting for the event loop to report what was lost.
    Abandoning,
    /// Given up: why, for the exit line.
    Abandoned(String),
}

/// One process the supervisor started.
#[derive(Clone, Debug)]
struct Proc {
    /// Its pid, which is also its process group id.
    pid: i32,
    started: Instant,
    /// How it ended and when it was reaped.
    ended: Option<(Ending, Instant)>,
    pipe: Pipe,
    /// When the bytes that were in its pipe at the reap had all been read.
    owed_done: Option<Instant>,
    /// When its whole process group was found gone, or was SIGKILLed.
    group_done: Option<Instant>,
    /// When the wait for bytes written to its pipe after the reap started,
    /// and when it ends (pushed back by stdout stalls, up to a limit).
    late: Option<(Instant, Instant)>,
    /// SIGKILL its group at this instant (a stop's grace, a timeout).
    kill_at: Option<Instant>,
    /// SIGKILL was sent.
    killed: bool,
    /// Its stop signal was sent while it ran: a death by that signal is
    /// the graceful end of a stop, not a failure.
    stopped_running: bool,
}

impl Proc {
    fn new(pid: i32, has_pipe: bool, now: Instant) -> Proc {
        Proc {
            pid,
            started: now,
            ended: None,
            pipe: if has_pipe { Pipe::Open } else { Pipe::Closed },
            owed_done: None,
            group_done: None,
            late: None,
            kill_at: None,
            killed: false,
            stopped_running: false,
        }
    }

    fn drained(&self) -> bool {
        matches!(self.pipe, Pipe::Closed | Pipe::Abandoned(_))
    }

    /// Its leader is gone and its output is all out (or given up).
    fn over(&self, need_group: bool) -> bool {
        self.ended.is_some() && self.drained() && (!need_group || self.group_done.is_some())
    }

    /// Whether its process group may still have members worth signalling.
    fn may_have_processes(&self) -> bool {
        self.ended.is_none() || (self.group_done.is_none() && !self.killed)
    }
}

/// A check in flight.
#[derive(Clone, Debug)]
struct CheckRun {
    purpose: Purpose,
    /// Given up (and counted as failed) at this instant.
    deadline: Instant,
    /// The command, for an `exec` check, once spawned.
    proc: Option<Proc>,
    /// The timeout passed: the result is a failure whatever comes.
    timed_out: bool,
}

#[derive(Debug)]
struct Unit {
    spec: UnitSpec,
    state: State,
    /// The current run's process; kept until the run is over.
    run: Option<Proc>,
    /// When the current run became ready.
    ready_at: Option<Instant>,
    /// The code of its last finished run: what counts for the exit code.
    code: Option<i32>,
    /// Restarts so far, in all.
    restarts: u32,
    /// Restarts in a row whose runs were each shorter than the reset time.
    streak: u32,
    /// A word for `status` on why it is in its state (`not started: ...`).
    detail: String,
    /// The check in flight, if any.
    check: Option<CheckRun>,
    /// When the next check runs.
    check_due: Option<Instant>,
    /// The last check failure, for the log.
    check_error: Option<String>,
    /// Liveness failures in a row.
    live_failures: u32,
    /// A `stop` came while it was being stopped for another reason (a
    /// failed check): it stays down once its run is over.
    stay_down: bool,
    /// Why it was not started, when a dependency failed (the root cause,
    /// however long the chain: `db failed with code 1`), and that code.
    cause: Option<(String, Option<i32>)>,
    /// Units that list this one in `after` (the main program among them).
    dependents: Vec<usize>,
}

#[derive(Debug)]
struct Shutdown {
    /// When whatever is left is SIGKILLed.
    deadline: Instant,
    /// SIGKILL has been sent (grace elapsed or a second SIGINT).
    killed: bool,
    /// The signal that started it, if one did: the main program gets it.
    signal: Option<i32>,
}

/// The end of a run, after every unit is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Units are still running.
    Running,
    /// Waiting (bounded) for queued notifications.
    Notifications(Instant),
    /// Every other process gets SIGTERM, then SIGKILL at `kill_at`, and is
    /// waited for until `give_up` (after the SIGKILL).
    Sweep {
        kill_at: Instant,
        killed: bool,
        give_up: Option<Instant>,
    },
    Done,
}

/// How long after the sweep's SIGKILL the last processes are waited for.
const SWEEP_SETTLE: Duration = Duration::from_secs(1);
/// How long a unit's leader is waited for after SIGKILL: one that does not
/// die (stuck in the kernel, e.g. on a hung mount) is gone on without.
const KILL_SETTLE: Duration = Duration::from_secs(2);

/// The operator's notify command: one run at a time, events queued.
#[derive(Debug)]
struct Notifier {
    queue: notify::Queue,
    timeout: Duration,
    run: Option<Proc>,
}

/// A request from the control socket that changes a unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Stop(String),
    Start(String),
    Restart(String),
    Signal(String, i32),
}

/// One unit as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitView {
    pub name: String,
    pub kind: Kind,
    pub state: State,
    pub pid: Option<i32>,
    /// Of the current run, when running.
    pub uptime: Option<Duration>,
    pub restarts: u32,
    pub code: Option<i32>,
    pub check: Option<String>,
    pub detail: String,
}

/// The supervisor's whole state.
#[derive(Debug)]
pub struct Supervisor {
    units: Vec<Unit>,
    timing: Timing,
    shutdown: Option<Shutdown>,
    actions: VecDeque<Action>,
    /// Units waiting for their turn to be spawned, in order.
    spawn_queue: VecDeque<usize>,
    /// Since when stdout has been stalled (the output buffer full and no
    /// write making progress): pipes are not read meanwhile.
    stalled_since: Option<Instant>,
    notifier: Option<Notifier>,
    end: End,
    /// Some process that is ours to reap may still exist.
    children_left: bool,
    /// The main program's index, if there is one.
    main: Option<usize>,
    /// The code to exit with when the main program never started.
    abort_code: Option<i32>,
    /// Some unit's process group is still to be found gone.
    groups_pending: bool,
    /// The shutdown may be able to stop more units (see `advance_shutdown`).
    advance: bool,
    /// What `next_deadline` and `units_done` last found, until the next
    /// event or tick (see `touch`): the event loop asks for them every
    /// round, and with many units they are worth not recomputing.
    memo: std::cell::Cell<Option<Memo>>,
    /// The live processes (not yet reaped) of ours, by pid.
    pids: std::collections::HashMap<i32, ChildId>,
}

/// See `Supervisor::memo`.
#[derive(Clone, Copy, Debug)]
struct Memo {
    deadline: Option<Instant>,
    units_done: bool,
}

impl Supervisor {
    /// A supervisor for these units (in start order).
    pub fn new(specs: Vec<UnitSpec>, timing: Timing) -> Self {
        let mut dependents = vec![Vec::new(); specs.len()];
        for (i, s) in specs.iter().enumerate() {
            for &d in &s.after {
                dependents[d].push(i);
            }
        }
        let main = specs.iter().position(|s| s.kind == Kind::Main);
        let units = specs
            .into_iter()
            .zip(dependents)
            .map(|(spec, dependents)| Unit {
                spec,
                state: State::Waiting,
                run: None,
                ready_at: None,
                code: None,
                restarts: 0,
                streak: 0,
                detail: String::new(),
                check: None,
                check_due: None,
                check_error: None,
                live_failures: 0,
                stay_down: false,
                cause: None,
                dependents,
            })
            .collect();
        let notifier = timing.notify_timeout.map(|timeout| Notifier {
            queue: notify::Queue::new(notify::DEFAULT_CAPACITY),
            timeout,
            run: None,
        });
        Supervisor {
            units,
            timing,
            shutdown: None,
            actions: VecDeque::new(),
            spawn_queue: VecDeque::new(),
            stalled_since: None,
            notifier,
            end: End::Running,
            children_left: true,
            main,
            abort_code: None,
            groups_pending: false,
            advance: false,
            memo: std::cell::Cell::new(None),
            pids: std::collections::HashMap::new(),
        }
    }

    /// Something happened: what `memo` holds may have changed.
    fn touch(&self) {
        self.memo.set(None);
    }

    fn memo(&self) -> Memo {
        if let Some(m) = self.memo.get() {
            return m;
        }
        let m = Memo {
            deadline: self.compute_next_deadline(),
            units_done: self.compute_units_done(),
        };
        self.memo.set(Some(m));
        m
    }

    /// The next action to perform, in order.
    pub fn next_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn log(&mut self, level: Level, msg: String) {
        self.actions.push_back(Action::Log(level, msg));
    }

    fn signal_group(&mut self, pgid: i32, signal: i32) {
        self.actions.push_back(Action::Signal { pgid, signal });
    }

    /// Queues an event for the notify command, if there is one.
    fn event(&mut self, kind: EventKind, daemon: String, message: &str) -> Option<&mut Event> {
        let n = self.notifier.as_mut()?;
        n.queue.push(Event {
            kind,
            daemon,
            code: None,
            signal: None,
            restarts: 0,
            message: message.to_string(),
        })
    }

    fn name(&self, i: usize) -> &str {
        &self.units[i].spec.name
    }

    /// Starts every unit whose dependencies allow it, in table order.
    pub fn start(&mut self, now: Instant) {
        self.touch();
        for i in 0..self.units.len() {
            self.evaluate_deps(i, now);
        }
    }

    // --- the transition table ---------------------------------------

    /// Moves unit `i` by `input`: the one place where a unit's state
    /// changes. Inputs a state does not take are ignored.
    fn transition(&mut self, i: usize, input: Input, now: Instant) {
        let state = self.units[i].state;
        match (state, input) {
            (State::Waiting, Input::DepsReady) => {
                self.units[i].state = State::Queued;
                self.units[i].detail.clear();
                self.spawn_queue.push_back(i);
            }
            (State::Waiting, Input::DepFailed(why)) => {
                let msg = format!("{} not started: {why}", self.name(i));
                self.log(Level::Warn, msg);
                self.units[i].detail = format!("not started: {why}");
                self.enter_over(i, State::GivenUp, now);
            }
            (State::Queued, Input::Spawn) => {
                let d = &self.units[i];
                let msg = if d.restarts > 0 {
                    format!("restarting {} (restart {})", d.spec.name, d.restarts)
                } else if d.spec.kind == Kind::Main {
                    format!("starting the main program ({})", d.spec.name)
                } else {
                    format!("starting {}", d.spec.name)
                };
                self.log(Level::Info, msg);
                self.actions.push_back(Action::Spawn(i));
            }
            (State::Queued, Input::Spawned) => {
                self.units[i].state = State::Starting;
                self.units[i].check_error = None;
                match self.units[i].spec.ready.clone() {
                    Readiness::Spawned if self.units[i].spec.kind != Kind::Oneshot => {
                        self.transition(i, Input::BecameReady, now);
                    }
                    Readiness::Spawned | Readiness::Notify => {}
                    Readiness::Poll { .. } => self.units[i].check_due = Some(now),
                    Readiness::Line(_) => self.actions.push_back(Action::WatchLine(i, true)),
                }
            }
            (State::Starting, Input::BecameReady) => {
                self.units[i].state = State::Ready;
                self.units[i].ready_at = Some(now);
                self.end_check(i);
                if let Readiness::Line(_) = self.units[i].spec.ready {
                    self.actions.push_back(Action::WatchLine(i, false));
                }
                let u = &self.units[i];
                if let Some(text) = &u.spec.ready_text {
                    let started = u.run.as_ref().map_or(now, |r| r.started);
                    let took = format_secs_precise(now.saturating_duration_since(started));
                    let msg = format!("{} is ready ({text}) after {took}", u.spec.name);
                    self.log(Level::Info, msg.clone());
                    let name = self.units[i].spec.name.clone();
                    self.event(EventKind::Ready, name, &msg);
                }
                if self.units[i].spec.live.is_some() {
                    self.units[i].live_failures = 0;
                    self.units[i].check_due = Some(now + self.timing.live_interval);
                }
                self.dependency_changed(i, now);
            }
            (State::Starting | State::Ready, Input::Stop(why)) => {
                self.send_stop(i, why, now);
            }
            (State::Stopping(old), Input::Stop(why)) => {
                // A shutdown overtakes a stop on request; a failed check's
                // stop keeps its reason (its code is the failure's).
                if why == Why::Shutdown && matches!(old, Why::Stop | Why::Restart) {
                    self.units[i].state = State::Stopping(Why::Shutdown);
                }
                if let (Some(s), Some(run)) = (&self.shutdown, self.units[i].run.as_mut()) {
                    run.kill_at = Some(run.kill_at.map_or(s.deadline, |k| k.min(s.deadline)));
                }
            }
            (State::Waiting | State::Queued | State::Backoff(_), Input::Stop(why)) => {
                self.spawn_queue.retain(|&q| q != i);
                if state == State::Queued {
                    self.take_back_spawn(i);
                }
                match why {
                    Why::Restart => {
                        self.units[i].state = State::Waiting;
                        self.units[i].streak = 0;
                        self.evaluate_deps(i, now);
                    }
                    Why::Shutdown if matches!(state, State::Backoff(_)) => {
                        self.units[i].detail.clear();
                        self.enter_over(i, State::Exited, now);
                    }
                    _ => {
                        self.units[i].detail = "not started".into();
                        self.enter_over(i, State::Stopped, now);
                    }
                }
            }
            (State::Queued, Input::SpawnFailed) => self.run_over(i, now),
            (State::Starting | State::Ready | State::Stopping(_), Input::RunOver) => {
                self.run_over(i, now);
            }
            (State::Backoff(_), Input::BackoffDue) => {
                self.units[i].state = State::Waiting;
                self.evaluate_deps(i, now);
            }
            (s, Input::Start) if s.is_over() => {
                let u = &mut self.units[i];
                u.streak = 0;
                u.cause = None;
                u.detail.clear();
                u.state = State::Waiting;
                self.evaluate_deps(i, now);
            }
            _ => {}
        }
    }

    /// Withdraws unit `i`'s spawn if it was asked for but not performed
    /// yet, with the `starting` line logged just before it: a unit spawned
    /// earlier in the same batch failed and started the shutdown (an
    /// essential one, or the main program's dependency). Spawned anyway,
    /// it would run in a state that takes no `Spawned` and no `RunOver`,
    /// and the run would never end.
    fn take_back_spawn(&mut self, i: usize) {
        let pending = self
            .actions
            .iter()
            .position(|a| matches!(a, Action::Spawn(j) if *j == i));
        let Some(k) = pending else { return };
        self.actions.remove(k);
        // `(Queued, Spawn)` pushes the line and the spawn together, and the
        // event loop performs actions in order with no report between
        // those two: the line is still queued right before the spawn.
        if k > 0 && matches!(self.actions[k - 1], Action::Log(..)) {
            self.actions.remove(k - 1);
        }
    }

    /// Unit `i` enters a state it stays in (finished, exited, stopped,
    /// given up): its dependents learn of it, and an essential unit's
    /// end (outside shutdown, not on request) shuts everything down.
    fn enter_over(&mut self, i: usize, state: State, now: Instant) {
        self.units[i].state = state;
        self.end_check(i);
        let u = &self.units[i];
        if u.spec.essential && state.failed_for_good() && self.shutdown.is_none() {
            let why = format!("{} is essential and {}", u.spec.name, self.failure(i));
            self.begin_shutdown(&why, None, now);
        }
        self.dependency_changed(i, now);
    }

    /// What unit `i` did, for a dependent's log line: `failed with code 1`.
    fn failure(&self, i: usize) -> String {
        let u = &self.units[i];
        match (u.state, u.code) {
            (State::GivenUp, None) => format!("was not started ({})", u.detail),
            (State::GivenUp, Some(c)) => format!("was given up (code {c})"),
            (_, Some(0)) => "exited with code 0".to_string(),
            (_, Some(c)) => format!("failed with code {c}"),
            (_, None) => "was not started".to_string(),
        }
    }

    /// Unit `i`'s state changed in a way its dependents may care about.
    fn dependency_changed(&mut self, i: usize, now: Instant) {
        if self.shutdown.is_some() {
            // Done from `tick`: a run ending may end others in turn, and
            // a loop keeps that from nesting.
            self.advance = true;
            return;
        }
        for k in 0..self.units[i].dependents.len() {
            let d = self.units[i].dependents[k];
            self.evaluate_deps(d, now);
        }
    }

    /// A waiting unit starts once every dependency is ready, and is given
    /// up once one has failed for good.
    fn evaluate_deps(&mut self, i: usize, now: Instant) {
        if self.units[i].state != State::Waiting || self.shutdown.is_some() {
            return;
        }
        let mut failed = None;
        let mut all_ready = true;
        for &d in &self.units[i].spec.after {
            let s = self.units[d].state;
            if s.failed_for_good() {
                failed = Some(d);
                break;
            }
            all_ready &= s.satisfies();
        }
        if let Some(d) = failed {
            // The root cause, however long the chain of dependencies.
            let (why, code) = match &self.units[d].cause {
                Some(cause) => cause.clone(),
                None => (
                    format!("{} {}", self.name(d), self.failure(d)),
                    self.units[d].code,
                ),
            };
            if self.units[i].spec.kind == Kind::Main && self.abort_code.is_none() {
                self.abort_code = Some(code.unwrap_or(1).max(1));
            }
            self.units[i].cause = Some((why.clone(), code));
            self.transition(i, Input::DepFailed(why.clone()), now);
            if self.units[i].spec.kind == Kind::Main {
                self.begin_shutdown(&format!("the main program cannot start: {why}"), None, now);
            }
        } else if all_ready {
            self.transition(i, Input::DepsReady, now);
        }
    }

    // --- reports from the event loop ------------------------------------

    /// Which child `pid` is, if it is one of ours (not an adopted orphan).
    pub fn child_of(&self, pid: i32) -> Option<ChildId> {
        self.pids.get(&pid).copied()
    }

    fn proc_mut(&mut self, id: ChildId) -> Option<&mut Proc> {
        match id {
            ChildId::Unit(i) => self.units.get_mut(i)?.run.as_mut(),
            ChildId::Check(i) => self.units.get_mut(i)?.check.as_mut()?.proc.as_mut(),
            ChildId::Notify => self.notifier.as_mut()?.run.as_mut(),
        }
    }

    /// `id` runs as `pid` (its own process group), writing to a pipe if
    /// `has_pipe`.
    pub fn spawned(&mut self, id: ChildId, pid: i32, has_pipe: bool, now: Instant) {
        self.touch();
        self.pids.insert(pid, id);
        let mut proc = Proc::new(pid, has_pipe, now);
        match id {
            ChildId::Unit(i) => {
                self.units[i].run = Some(proc);
                self.transition(i, Input::Spawned, now);
            }
            ChildId::Check(i) => match self.units[i].check.as_mut() {
                Some(c) => c.proc = Some(proc),
                // Cancelled between its RunCheck and its spawn (a shutdown
                // in the same tick): nobody waits for it.
                None => self.signal_group(pid, SIGKILL),
            },
            ChildId::Notify => {
                if let Some(n) = self.notifier.as_mut() {
                    proc.kill_at = Some(now + n.timeout);
                    n.run = Some(proc);
                }
            }
        }
    }

    /// `id` could not be started: `code` is 127 (not found), 126 (not
    /// executable) or 125 (no resources: descriptors, processes, memory).
    pub fn spawn_failed(&mut self, id: ChildId, code: i32, error: &str, now: Instant) {
        self.touch();
        match id {
            ChildId::Unit(i) => {
                let msg = format!("cannot start {}: {error}", self.name(i));
                self.log(Level::Error, msg);
                let mut run = Proc::new(0, false, now);
                run.ended = Some((Ending::NotStarted(code), now));
                run.group_done = Some(now);
                self.units[i].run = Some(run);
                self.transition(i, Input::SpawnFailed, now);
            }
            ChildId::Check(i) => {
                let verdict = Err(format!("cannot run it: {error}"));
                if let Some(c) = self.units[i].check.as_mut() {
                    c.proc = None;
                }
                self.check_finished(i, verdict, now);
            }
            ChildId::Notify => {
                self.log(
                    Level::Warn,
                    format!("cannot run the notify command {error}"),
                );
                if let Some(n) = self.notifier.as_mut() {
                    n.queue.finished();
                }
                self.start_notifier();
            }
        }
    }

    /// `id` was reaped. `pipe_empty`: nothing was left in its pipe (or it
    /// has none), so nothing is owed to the log.
    pub fn reaped(&mut self, id: ChildId, ending: Ending, pipe_empty: bool, now: Instant) {
        self.touch();
        match self.proc_mut(id).map(|p| p.pid) {
            Some(pid) => {
                self.pids.remove(&pid);
            }
            // A check command cancelled before it was tracked.
            None => self.pids.retain(|_, c| *c != id),
        }
        let Some(p) = self.proc_mut(id) else { return };
        p.ended = Some((ending, now));
        if pipe_empty || p.pipe != Pipe::Open {
            p.owed_done = Some(now);
        }
        if let ChildId::Unit(_) = id {
            // Whether the rest of its group is gone matters if it is (or
            // comes to be) stopped: find out.
            self.groups_pending = true;
        }
        self.settle(id, now);
    }

    /// The bytes that were in `id`'s pipe when it was reaped have all been
    /// read: what comes later is waited for a bounded time only.
    pub fn owed_done(&mut self, id: ChildId, now: Instant) {
        self.touch();
        if let Some(p) = self.proc_mut(id) {
            p.owed_done.get_or_insert(now);
        }
        self.settle(id, now);
    }

    /// `id`'s output pipe reached EOF: every line it wrote is out.
    pub fn pipe_closed(&mut self, id: ChildId, now: Instant) {
        self.touch();
        if let Some(p) = self.proc_mut(id) {
            p.pipe = Pipe::Closed;
            p.owed_done.get_or_insert(now);
        }
        self.settle(id, now);
    }

    /// `id`'s pipe was given up (see [`Action::AbandonPipe`]); `lost`
    /// bytes of its output were never written out.
    pub fn pipe_abandoned(&mut self, id: ChildId, lost: usize, now: Instant) {
        self.touch();
        let stalled = self.stalled_since.is_some();
        let longest = self.timing.drain + self.timing.drain_stall_max;
        let Some(p) = self.proc_mut(id) else { return };
        if p.pipe != Pipe::Abandoning {
            return;
        }
        // The reader is to blame when stdout is stalled now, when bytes
        // owed at the reap are still unread, or when stalls stretched the
        // wait to its longest.
        let stretched = p.late.is_some_and(|(from, by)| by >= from + longest);
        let why = if stalled || stretched || p.owed_done.is_none() {
            "not all its output is out: stdout is not being read"
        } else {
            "its output pipe is still held open by another process"
        };
        p.pipe = Pipe::Abandoned(if lost > 0 {
            format!("{why}; {lost} bytes of output dropped")
        } else {
            why.to_string()
        });
        self.settle(id, now);
    }

    /// Whether stdout is stalled, and since when: the output buffer is full
    /// and no write made progress since `since`, so no pipe is read. A
    /// unit's last lines may then still sit in its pipe: bytes owed at its
    /// reap are waited for until a stall lasts `drain_stall_max`, and the
    /// `drain` clock for later bytes stops meanwhile (up to
    /// `drain_stall_max` in all). Called after every write attempt.
    pub fn output_stall(&mut self, since: Option<Instant>, now: Instant) {
        if since != self.stalled_since {
            self.touch();
        }
        match (since, self.stalled_since) {
            (Some(s), None) => self.stalled_since = Some(s),
            // Progress was made in between: that stall ended, another began.
            (Some(s), Some(old)) if s > old => {
                self.end_stall(old, s);
                self.stalled_since = Some(s);
            }
            (None, Some(old)) => {
                self.end_stall(old, now);
                self.stalled_since = None;
            }
            _ => {}
        }
    }

    /// A stall from `since` to `until` is over: the `drain` clocks it
    /// paused move on by its length (the part after each clock started,
    /// up to the limit).
    fn end_stall(&mut self, since: Instant, until: Instant) {
        let limit = self.timing.drain + self.timing.drain_stall_max;
        let bump = |p: &mut Proc| {
            if let Some((from, by)) = p.late {
                // Only the stall after its clock started counts, and only
                // if its wait was not over when the stall began.
                if by > since {
                    let paused = until.saturating_duration_since(since.max(from));
                    p.late = Some((from, (by + paused).min(from + limit)));
                }
            }
        };
        for u in &mut self.units {
            u.run.as_mut().map(bump);
            if let Some(p) = u.check.as_mut().and_then(|c| c.proc.as_mut()) {
                bump(p);
            }
        }
        if let Some(p) = self.notifier.as_mut().and_then(|n| n.run.as_mut()) {
            bump(p);
        }
    }

    /// Whether some stopping unit's process group is still to be found
    /// gone: the event loop should call [`check_groups`](Self::check_groups).
    pub fn awaiting_groups(&self) -> bool {
        self.groups_pending
    }

    /// Asks `alive(pgid)` about every stopping unit whose leader is gone
    /// but whose group was not found gone yet.
    pub fn check_groups(&mut self, mut alive: impl FnMut(i32) -> bool, now: Instant) {
        self.touch();
        self.groups_pending = false;
        let mut done = Vec::new();
        for (i, u) in self.units.iter_mut().enumerate() {
            let Some(p) = u.run.as_mut() else { continue };
            if p.ended.is_none() || p.group_done.is_some() || p.pid <= 0 {
                continue;
            }
            if alive(p.pid) {
                self.groups_pending = true;
            } else {
                p.group_done = Some(now);
                done.push(i);
            }
        }
        for i in done {
            self.settle(ChildId::Unit(i), now);
        }
    }

    /// Whether any process that is ours to reap is left (the event loop's
    /// `waitpid` says so after every reaping round).
    pub fn children_left(&mut self, left: bool) {
        self.touch();
        self.children_left = left;
    }

    /// Unit `i`'s check finished with `verdict` (socket and file checks).
    pub fn check_done(&mut self, i: usize, verdict: Result<(), String>, now: Instant) {
        self.touch();
        if self.units[i]
            .check
            .as_ref()
            .is_some_and(|c| c.proc.is_none())
        {
            self.check_finished(i, verdict, now);
        }
    }

    /// Unit `i` wrote a line containing its `line:` text.
    pub fn line_seen(&mut self, i: usize, now: Instant) {
        self.touch();
        if self.units[i].state == State::Starting {
            self.transition(i, Input::BecameReady, now);
        }
    }

    /// A `READY=1` came from a process in group `pgid`: the unit whose
    /// current run leads that group is ready, if it waits for that.
    /// Returns the unit's name when the message counted.
    pub fn notified(&mut self, pgid: i32, now: Instant) -> Option<String> {
        self.touch();
        let i = self.units.iter().position(|u| {
            u.spec.ready == Readiness::Notify
                && u.state == State::Starting
                && u.run
                    .as_ref()
                    .is_some_and(|r| r.pid == pgid && r.ended.is_none())
        })?;
        self.transition(i, Input::BecameReady, now);
        Some(self.units[i].spec.name.clone())
    }

    /// A signal arrived (SIGCHLD is the event loop's business, not ours).
    pub fn signal(&mut self, sig: i32, now: Instant) {
        self.touch();
        let name = exit::signal_name(sig);
        match (sig, &self.shutdown) {
            (SIGTERM | SIGINT, None) => self.begin_shutdown(&name, Some(sig), now),
            (SIGINT, Some(_)) => self.kill_all("second SIGINT", now),
            (SIGTERM, Some(_)) => {
                self.log(Level::Debug, "SIGTERM again; already shutting down".into());
            }
            _ if sig == SIGWINCH || FORWARDED.contains(&sig) || is_realtime(sig) => {
                let names = self.forward(sig);
                let level = if sig == SIGWINCH {
                    Level::Debug
                } else {
                    Level::Info
                };
                if !names.is_empty() {
                    self.log(level, format!("forwarding {name} to {names}"));
                }
            }
            _ => self.log(Level::Debug, format!("ignoring {name}")),
        }
    }

    /// Sends `sig` to every unit's group that may have processes; their
    /// names.
    fn forward(&mut self, sig: i32) -> String {
        let mut names = Vec::new();
        for i in 0..self.units.len() {
            let Some(p) = self.units[i].run.as_ref() else {
                continue;
            };
            if p.pid > 0 && p.may_have_processes() {
                let pgid = p.pid;
                self.signal_group(pgid, sig);
                names.push(self.units[i].spec.name.clone());
            }
        }
        names.join(", ")
    }

    // --- shutdown ---------------------------------------------------------

    /// Begins the shutdown: nothing starts or restarts any more, and every
    /// unit gets its stop signal once the units that depend on it are down.
    fn begin_shutdown(&mut self, why: &str, signal: Option<i32>, now: Instant) {
        if self.shutdown.is_some() {
            return;
        }
        // Say how the units still running are stopped, if any are: each
        // gets its stop signal, and the main program the signal that
        // started the shutdown (SIGINT as SIGINT; see `send_stop`).
        let sent = |u: &Unit| match (u.spec.kind, signal) {
            (Kind::Main, Some(sig)) => sig,
            _ => u.spec.stop_signal,
        };
        let running: Vec<&Unit> = self.units.iter().filter(|u| u.run.is_some()).collect();
        let first = running.first().map_or(SIGTERM, |u| sent(u));
        let uniform = running.iter().all(|u| sent(u) == first);
        let ordered = running.iter().any(|u| !u.spec.after.is_empty());
        let name = exit::signal_name(first);
        let how = match (running.is_empty(), uniform, ordered) {
            (true, _, _) => String::new(),
            (false, true, false) => format!("; forwarding {name}"),
            (false, true, true) => format!("; forwarding {name}, dependents first"),
            (false, false, false) => "; sending each its stop signal".to_string(),
            (false, false, true) => "; sending each its stop signal, dependents first".to_string(),
        };
        let msg = format!("shutting down ({why}){how}");
        self.log(Level::Info, msg.clone());
        if let Some(e) = self.event(EventKind::Shutdown, String::new(), &msg) {
            e.signal = signal;
        }
        self.shutdown = Some(Shutdown {
            deadline: now + self.timing.grace,
            killed: false,
            signal,
        });
        self.spawn_queue.clear();
        let mut cancelled = Vec::new();
        for i in 0..self.units.len() {
            let s = self.units[i].state;
            if matches!(s, State::Backoff(_)) {
                cancelled.push(self.units[i].spec.name.clone());
            }
            if matches!(s, State::Waiting | State::Queued | State::Backoff(_)) {
                self.transition(i, Input::Stop(Why::Shutdown), now);
            }
            self.cancel_check(i);
        }
        if !cancelled.is_empty() {
            let msg = format!("cancelled the pending restart of {}", cancelled.join(", "));
            self.log(Level::Info, msg);
        }
        self.advance_shutdown(now);
    }

    /// Sends the stop signal to every running unit whose dependents are all
    /// down (or already stopping, for stops not in order).
    fn advance_shutdown(&mut self, now: Instant) {
        if self.shutdown.is_none() {
            return;
        }
        for i in 0..self.units.len() {
            if !matches!(self.units[i].state, State::Starting | State::Ready) {
                continue;
            }
            if self.units[i].run.as_ref().is_some_and(|p| p.over(false)) {
                continue;
            }
            let dependents_down = self.units[i]
                .dependents
                .iter()
                .all(|&d| self.units[d].run.is_none());
            if dependents_down {
                self.transition(i, Input::Stop(Why::Shutdown), now);
            }
        }
    }

    /// Sends unit `i` its stop signal (and SIGCONT, so a stopped process
    /// can act on it), with SIGKILL due at the end of the grace period.
    fn send_stop(&mut self, i: usize, why: Why, now: Instant) {
        let shutdown = self.shutdown.as_ref().map(|s| (s.deadline, s.signal));
        let u = &mut self.units[i];
        let was_starting = u.state == State::Starting;
        u.state = State::Stopping(why);
        let Some(p) = u.run.as_mut() else { return };
        p.kill_at = Some(match shutdown {
            Some((deadline, _)) => deadline,
            None => now + self.timing.grace,
        });
        let signal = match (u.spec.kind, shutdown) {
            (Kind::Main, Some((_, Some(sig)))) => sig,
            _ => u.spec.stop_signal,
        };
        let (pgid, alive) = (p.pid, p.may_have_processes());
        p.stopped_running = p.ended.is_none();
        if p.ended.is_some() {
            self.groups_pending = true;
        }
        if let Readiness::Line(_) = u.spec.ready {
            if was_starting {
                self.actions.push_back(Action::WatchLine(i, false));
            }
        }
        self.end_check(i);
        if pgid > 0 && alive {
            self.signal_group(pgid, signal);
            self.signal_group(pgid, SIGCONT);
        }
        self.settle(ChildId::Unit(i), now);
    }

    /// SIGKILL every unit whose group may still have processes, saying why.
    fn kill_all(&mut self, why: &str, now: Instant) {
        if let Some(s) = &mut self.shutdown {
            s.killed = true;
        }
        let mut names = Vec::new();
        for i in 0..self.units.len() {
            let Some(p) = self.units[i].run.as_mut() else {
                continue;
            };
            if p.pid <= 0 || !p.may_have_processes() {
                continue;
            }
            p.killed = true;
            p.kill_at = Some(now);
            p.group_done.get_or_insert(now);
            let pgid = p.pid;
            names.push(self.units[i].spec.name.clone());
            self.signal_group(pgid, SIGKILL);
        }
        if !names.is_empty() {
            let names = names.join(", ");
            let msg = format!("{why}; SIGKILL on {names}");
            self.log(Level::Warn, msg.clone());
            if let Some(e) = self.event(EventKind::Kill, names, &msg) {
                e.signal = Some(SIGKILL);
            }
        }
        for i in 0..self.units.len() {
            self.settle(ChildId::Unit(i), now);
        }
    }

    // --- checks ---------------------------------------------------------

    /// Starts unit `i`'s due check.
    fn run_check(&mut self, i: usize, purpose: Purpose, now: Instant) {
        let u = &mut self.units[i];
        u.check_due = None;
        u.check = Some(CheckRun {
            purpose,
            deadline: now + self.timing.check_timeout,
            proc: None,
            timed_out: false,
        });
        self.actions.push_back(Action::RunCheck(i, purpose));
    }

    /// A check finished (or timed out): ready, a liveness verdict, or the
    /// next try.
    fn check_finished(&mut self, i: usize, verdict: Result<(), String>, now: Instant) {
        let Some(run) = self.units[i].check.take() else {
            return;
        };
        let state = self.units[i].state;
        match (run.purpose, verdict) {
            (Purpose::Ready, Ok(())) if state == State::Starting => {
                self.transition(i, Input::BecameReady, now);
            }
            (Purpose::Ready, Err(e)) if state == State::Starting => {
                let text = self.units[i].spec.ready_text.clone().unwrap_or_default();
                let msg = format!("{} not ready yet ({text}: {e})", self.name(i));
                self.log(Level::Debug, msg);
                self.units[i].check_error = Some(e);
                self.units[i].check_due = Some(now + self.timing.ready_interval);
            }
            (Purpose::Live, verdict) if state == State::Ready => {
                self.units[i].check_due = Some(now + self.timing.live_interval);
                let u = &mut self.units[i];
                match verdict {
                    Ok(()) => u.live_failures = 0,
                    Err(e) => {
                        u.live_failures += 1;
                        let text = u.spec.live.as_ref().map_or("", |l| l.text.as_str());
                        let (n, max) = (u.live_failures, self.timing.live_failures);
                        let msg = format!(
                            "{} failed its liveness check ({text}: {e}), {n} of {max} in a row",
                            u.spec.name
                        );
                        self.log(Level::Warn, msg);
                        if n >= max {
                            let msg = format!("stopping {}: not live", self.name(i));
                            self.log(Level::Warn, msg);
                            self.units[i].detail = "failed its liveness check".into();
                            self.transition(i, Input::Stop(Why::NotLive), now);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Cancels unit `i`'s check in flight and no further one is scheduled.
    fn end_check(&mut self, i: usize) {
        self.units[i].check_due = None;
        self.cancel_check(i);
    }

    /// Abandons unit `i`'s check in flight, if any.
    fn cancel_check(&mut self, i: usize) {
        let Some(run) = self.units[i].check.as_mut() else {
            return;
        };
        match run.proc.as_mut() {
            Some(p) => {
                // A command: killed, and forgotten once reaped.
                run.timed_out = true;
                if !p.killed && p.ended.is_none() {
                    p.killed = true;
                    let pgid = p.pid;
                    self.signal_group(pgid, SIGKILL);
                }
            }
            None => {
                self.units[i].check = None;
                self.actions.push_back(Action::CancelCheck(i));
            }
        }
    }

    // --- time -----------------------------------------------------------

    /// Units are queued to be spawned (a start-up batch is under way).
    pub fn spawning(&self) -> bool {
        !self.spawn_queue.is_empty()
    }

    /// Work that does not wait for time: units queued to be spawned.
    pub fn has_work(&self) -> bool {
        !self.spawn_queue.is_empty()
            || self.advance
            || (matches!(self.end, End::Sweep { .. }) && !self.children_left)
            || (self.end == End::Running && self.units_done())
            || self
                .notifier
                .as_ref()
                .is_some_and(|n| n.run.is_none() && n.queue.backlog().0 > 0)
    }

    /// Time has passed: act on every deadline that is due, and spawn the
    /// next batch of queued units.
    pub fn tick(&mut self, now: Instant) {
        self.touch();
        if let Some(s) = &self.shutdown {
            if !s.killed && now >= s.deadline {
                let why = format!("grace ({}) elapsed", format_secs(self.timing.grace));
                self.kill_all(&why, now);
            }
        }
        for i in 0..self.units.len() {
            self.tick_unit(i, now);
        }
        while std::mem::take(&mut self.advance) {
            self.advance_shutdown(now);
        }
        self.tick_notifier(now);
        for _ in 0..self.timing.spawn_batch {
            let Some(i) = self.spawn_queue.pop_front() else {
                break;
            };
            self.transition(i, Input::Spawn, now);
        }
        self.tick_end(now);
    }

    fn tick_unit(&mut self, i: usize, now: Instant) {
        // A stop's grace period.
        if let Some(p) = self.units[i].run.as_mut() {
            if !p.killed && p.kill_at.is_some_and(|t| now >= t) && p.may_have_processes() {
                p.killed = true;
                p.group_done.get_or_insert(now);
                let pgid = p.pid;
                if pgid > 0 {
                    let why = format!(
                        "{} still running {} after its stop signal; SIGKILL",
                        self.name(i),
                        format_secs(self.timing.grace)
                    );
                    self.log(Level::Warn, why);
                    self.signal_group(pgid, SIGKILL);
                }
            }
        }
        // A SIGKILLed leader that is not reaped after a while: go on
        // without it (it is reaped as an orphan whenever it dies).
        if let Some(p) = self.units[i].run.as_mut() {
            let stuck = p.killed
                && p.ended.is_none()
                && p.pid > 0
                && p.kill_at.is_some_and(|t| now >= t + KILL_SETTLE);
            if stuck {
                // Whenever it dies it is an orphan, not this unit's run.
                self.pids.remove(&p.pid);
                p.ended = Some((Ending::Signaled(SIGKILL), now));
                p.owed_done.get_or_insert(now);
                p.group_done.get_or_insert(now);
                let msg = format!(
                    "{} did not die {} after SIGKILL (stuck in the kernel?); going on without it",
                    self.name(i),
                    format_secs(KILL_SETTLE)
                );
                self.log(Level::Warn, msg);
            }
        }
        self.settle(ChildId::Unit(i), now);
        match self.units[i].state {
            State::Backoff(at) if now >= at => self.transition(i, Input::BackoffDue, now),
            State::Starting => {
                let u = &self.units[i];
                let started = u.run.as_ref().map(|r| r.started);
                let timed_out = u.spec.kind != Kind::Oneshot
                    && u.spec.ready != Readiness::Spawned
                    && started.is_some_and(|t| now >= t + self.timing.ready_timeout);
                if timed_out {
                    let text = u.spec.ready_text.clone().unwrap_or_default();
                    let last = u
                        .check_error
                        .as_ref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default();
                    let msg = format!(
                        "{} not ready after {} ({text}{last}); stopping it",
                        u.spec.name,
                        format_secs(self.timing.ready_timeout)
                    );
                    self.log(Level::Warn, msg);
                    self.units[i].detail = "not ready in time".into();
                    self.transition(i, Input::Stop(Why::NotReady), now);
                }
            }
            _ => {}
        }
        // Checks: one that timed out fails (a command is killed first and
        // fails once reaped); a due one runs.
        if let Some(c) = self.units[i].check.as_ref() {
            if !c.timed_out && now >= c.deadline {
                let msg = format!("timed out after {}", format_secs(self.timing.check_timeout));
                if c.proc.is_some() {
                    self.units[i].check_error = Some(msg);
                    self.cancel_check(i);
                } else {
                    self.actions.push_back(Action::CancelCheck(i));
                    self.check_finished(i, Err(msg), now);
                }
            }
        }
        self.settle(ChildId::Check(i), now);
        let due = self.units[i].check_due.is_some_and(|t| now >= t);
        if due && self.units[i].check.is_none() && self.shutdown.is_none() {
            match self.units[i].state {
                State::Starting => self.run_check(i, Purpose::Ready, now),
                State::Ready => self.run_check(i, Purpose::Live, now),
                _ => self.units[i].check_due = None,
            }
        }
    }

    /// The earliest instant at which [`tick`](Self::tick) has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.memo().deadline
    }

    fn compute_next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if let Some(s) = self.shutdown.as_ref().filter(|s| !s.killed) {
            at(Some(s.deadline));
        }
        for u in &self.units {
            if let Some(p) = &u.run {
                at(drain_deadline(
                    p,
                    self.stalled_since,
                    self.timing.drain_limits(),
                ));
                if !p.killed && p.may_have_processes() {
                    at(p.kill_at);
                }
                if p.killed && p.ended.is_none() && p.pid > 0 {
                    at(p.kill_at.map(|t| t + KILL_SETTLE));
                }
            }
            if let State::Backoff(t) = u.state {
                at(Some(t));
            }
            if u.state == State::Starting
                && u.spec.kind != Kind::Oneshot
                && u.spec.ready != Readiness::Spawned
            {
                at(u.run
                    .as_ref()
                    .map(|r| r.started + self.timing.ready_timeout));
            }
            at(u.check_due);
            if let Some(c) = &u.check {
                if !c.timed_out {
                    at(Some(c.deadline));
                }
                if let Some(p) = &c.proc {
                    at(drain_deadline(
                        p,
                        self.stalled_since,
                        self.timing.drain_limits(),
                    ));
                }
            }
        }
        if let Some(p) = self.notifier.as_ref().and_then(|n| n.run.as_ref()) {
            at(drain_deadline(
                p,
                self.stalled_since,
                self.timing.drain_limits(),
            ));
            if !p.killed && p.ended.is_none() {
                at(p.kill_at);
            }
        }
        match self.end {
            End::Notifications(t) => at(Some(t)),
            End::Sweep {
                kill_at,
                killed,
                give_up,
            } => at(if killed { give_up } else { Some(kill_at) }),
            End::Running | End::Done => {}
        }
        next
    }

    /// Moves `id`'s drain along, and ends its run once it is over.
    fn settle(&mut self, id: ChildId, now: Instant) {
        let drain = self.timing.drain;
        let limits = self.timing.drain_limits();
        let stalled_since = self.stalled_since;
        let deadline = {
            let stopping =
                matches!(id, ChildId::Unit(i) if matches!(self.units[i].state, State::Stopping(_)));
            let Some(p) = self.proc_mut(id) else { return };
            if p.ended.is_some() && p.pipe == Pipe::Open && p.late.is_none() {
                // The clock for late bytes starts once the owed bytes are
                // read and, for a stopping unit, its group is down.
                let group_down = !stopping || p.group_done.is_some();
                if let (Some(owed), true) = (p.owed_done, group_down) {
                    let from = owed.max(p.group_done.unwrap_or(owed));
                    p.late = Some((from, from + drain));
                }
            }
            drain_deadline(p, stalled_since, limits)
        };
        if deadline.is_some_and(|t| now >= t) {
            if let Some(p) = self.proc_mut(id) {
                p.pipe = Pipe::Abandoning;
            }
            self.actions.push_back(Action::AbandonPipe(id));
            return;
        }
        match id {
            ChildId::Unit(i) => {
                let stopping = matches!(self.units[i].state, State::Stopping(_));
                if self.units[i].run.as_ref().is_some_and(|p| p.over(stopping)) {
                    self.transition(i, Input::RunOver, now);
                }
            }
            ChildId::Check(i) => {
                let Some(c) = self.units[i].check.as_ref() else {
                    return;
                };
                let Some(p) = c.proc.as_ref().filter(|p| p.over(false)) else {
                    return;
                };
                let verdict = match (c.timed_out, p.ended) {
                    (true, _) => Err(format!(
                        "timed out after {}",
                        format_secs(self.timing.check_timeout)
                    )),
                    (false, Some((Ending::Exited(0), _))) => Ok(()),
                    (false, Some((e, _))) => Err(format!("exited with code {}{e}", e.code(false))),
                    (false, None) => return,
                };
                if let Some(c) = self.units[i].check.as_mut() {
                    c.proc = None;
                }
                self.check_finished(i, verdict, now);
                // A cancelled command is forgotten once reaped.
                if self.units[i]
                    .check
                    .as_ref()
                    .is_some_and(|c| c.timed_out && c.proc.is_none())
                {
                    self.units[i].check = None;
                }
            }
            ChildId::Notify => {
                let Some(n) = self.notifier.as_mut() else {
                    return;
                };
                let Some(p) = n.run.as_ref().filter(|p| p.over(false)) else {
                    return;
                };
                let (ending, _) = p.ended.expect("over means reaped");
                let detail = match &p.pipe {
                    Pipe::Abandoned(why) => format!(" ({why})"),
                    _ => String::new(),
                };
                n.run = None;
                n.queue.finished();
                let code = ending.code(false);
                if code == 0 {
                    self.log(
                        Level::Debug,
                        format!("notify command exited with code 0{detail}"),
                    );
                } else {
                    let msg = format!("notify command exited with code {code}{ending}{detail}");
                    self.log(Level::Warn, msg);
                }
                self.start_notifier();
            }
        }
    }

    /// Unit `i`'s run is over: log it, record its code, decide what next.
    fn run_over(&mut self, i: usize, now: Instant) {
        let why = match self.units[i].state {
            State::Stopping(w) => Some(w),
            _ => None,
        };
        let u = &mut self.units[i];
        let run = u.run.take().expect("a run is over only if there is one");
        let (ending, ended_at) = run.ended.expect("over means reaped");
        let was_ready = u.ready_at.take().is_some();
        u.check_due = None;
        if !was_ready && matches!(u.spec.ready, Readiness::Line(_)) {
            self.actions.push_back(Action::WatchLine(i, false));
        }
        let u = &mut self.units[i];
        let stopped_by_us =
            run.stopped_running && matches!(why, Some(Why::Shutdown | Why::Stop | Why::Restart));
        let code = match (u.spec.kind, why) {
            (Kind::Main, _) => ending.code(false),
            (_, Some(Why::NotReady | Why::NotLive)) => exit::CHECK_FAILED,
            (_, _) if stopped_by_us && ending == Ending::Signaled(u.spec.stop_signal) => 0,
            (_, _) => ending.code(false),
        };
        let detail = match (ending, why) {
            (Ending::Signaled(sig), _) if code == 0 => {
                format!(" (stopped by {})", exit::signal_name(sig))
            }
            (_, Some(Why::NotReady)) => format!(" (not ready in time; {})", ending.how()),
            (_, Some(Why::NotLive)) => format!(" (failed its liveness check; {})", ending.how()),
            (other, _) => other.to_string(),
        };
        let held = match &run.pipe {
            Pipe::Abandoned(why) => format!(" ({why})"),
            _ => String::new(),
        };
        let ran = ended_at.saturating_duration_since(run.started);
        let name = u.spec.name.clone();
        let kind = u.spec.kind;
        u.code = Some(code);
        if ran >= self.timing.backoff.reset {
            u.streak = 0;
        }
        let signal = match ending {
            Ending::Signaled(sig) => Some(sig),
            _ => None,
        };
        let shutting_down = self.shutdown.is_some();

        // What next, by kind, reason and policy.
        let u = &mut self.units[i];
        let backoff = self.timing.backoff;
        let mut restart_in = None;
        let mut give_up = false;
        let stay_down = std::mem::take(&mut u.stay_down);
        let next = if kind == Kind::Main {
            State::Exited
        } else if why == Some(Why::Stop) || (stay_down && !shutting_down) {
            State::Stopped
        } else if why == Some(Why::Restart) && !shutting_down {
            u.restarts += 1;
            u.streak = 0;
            State::Waiting
        } else if shutting_down || why == Some(Why::Shutdown) {
            State::Exited
        } else if kind == Kind::Oneshot && code == 0 {
            State::Finished
        } else if u.spec.policy.wants_restart(code) {
            if backoff.max_restarts.is_some_and(|max| u.streak >= max) {
                give_up = true;
                State::GivenUp
            } else {
                u.streak += 1;
                u.restarts += 1;
                let delay = backoff.delay_for(u.streak);
                restart_in = Some(delay);
                State::Backoff(now + delay)
            }
        } else {
            State::Exited
        };
        let exited = if next == State::Finished {
            let took = format_secs_precise(ran);
            format!("{name} finished (in {took})")
        } else if kind == Kind::Main {
            format!("the main program ({name}) exited with code {code}{detail}{held}")
        } else {
            format!("{name} exited with code {code}{detail}{held}")
        };
        let essential = u.spec.essential && next.failed_for_good() && !shutting_down;
        let tail = match next {
            State::Backoff(_) => format!(
                "; restarting in {} (restart {})",
                format_secs(restart_in.unwrap_or_default()),
                u.restarts
            ),
            State::GivenUp => format!("; giving up after {} quick restarts in a row", u.streak),
            State::Waiting => format!("; restarting it (restart {})", u.restarts),
            State::Stopped => "; stopped on request".to_string(),
            _ if shutting_down || kind == Kind::Main => String::new(),
            _ if essential => "; it is essential".to_string(),
            State::Finished => String::new(),
            _ if self.units.iter().enumerate().all(|(k, u)| {
                k == i || matches!(u.state, State::Finished | State::Exited | State::GivenUp)
            }) =>
            {
                "; no daemons left".to_string()
            }
            _ => "; leaving surviving daemons running".to_string(),
        };
        let restarts = self.units[i].restarts;
        let msg = format!("{exited}{tail}");
        let level = if code == 0 || next == State::Stopped {
            Level::Info
        } else {
            Level::Warn
        };
        self.log(level, msg.clone());
        let kinds: &[EventKind] = match (next, give_up) {
            (State::Finished, _) => &[EventKind::Exit, EventKind::Ready],
            (State::Backoff(_), _) => &[EventKind::Exit, EventKind::Restart],
            (_, true) => &[EventKind::Exit, EventKind::GiveUp],
            _ => &[EventKind::Exit],
        };
        for &kind in kinds {
            if let Some(e) = self.event(kind, name.clone(), &msg) {
                e.code = Some(code);
                e.signal = signal;
                e.restarts = restarts;
            }
        }
        match next {
            State::Waiting => {
                self.units[i].state = State::Waiting;
                self.evaluate_deps(i, now);
            }
            State::Backoff(_) => {
                self.units[i].state = next;
                self.dependency_changed(i, now);
            }
            _ => {
                self.enter_over(i, next, now);
            }
        }
        if kind == Kind::Main {
            self.begin_shutdown(
                &format!("the main program exited with code {code}"),
                None,
                now,
            );
        }
    }

    // --- the notify command ---------------------------------------------

    /// Runs the notify command for the next queued event, if none runs.
    fn start_notifier(&mut self) {
        let Some(n) = self.notifier.as_mut() else {
            return;
        };
        if let Some((event, dropped)) = n.queue.start_next() {
            self.actions.push_back(Action::SpawnNotify(event, dropped));
        }
    }

    fn tick_notifier(&mut self, now: Instant) {
        let timeout = self.notifier.as_ref().map(|n| n.timeout);
        let Some(p) = self.notifier.as_mut().and_then(|n| n.run.as_mut()) else {
            self.start_notifier();
            return;
        };
        if !p.killed && p.ended.is_none() && p.kill_at.is_some_and(|t| now >= t) {
            p.killed = true;
            let pgid = p.pid;
            let took = format_secs(timeout.unwrap_or_default());
            self.log(
                Level::Warn,
                format!("notify command still running after {took}; killing it"),
            );
            self.signal_group(pgid, SIGKILL);
        }
        self.settle(ChildId::Notify, now);
    }

    // --- the end --------------------------------------------------------

    /// Every unit is over (or down, in a shutdown).
    fn units_done(&self) -> bool {
        self.memo().units_done
    }

    fn compute_units_done(&self) -> bool {
        if self.shutdown.is_some() {
            self.units.iter().all(|u| u.run.is_none()) && self.spawn_queue.is_empty()
        } else {
            self.units
                .iter()
                .all(|u| matches!(u.state, State::Finished | State::Exited | State::GivenUp))
        }
    }

    /// After the units: the notify command's last events (bounded), then
    /// the sweep of whatever processes are left.
    fn tick_end(&mut self, now: Instant) {
        loop {
            match self.end {
                End::Running => {
                    if !self.units_done() {
                        return;
                    }
                    for i in 0..self.units.len() {
                        self.cancel_check(i);
                    }
                    self.end = End::Notifications(now + self.timing.notify_exit_wait);
                }
                End::Notifications(until) => {
                    let busy = self
                        .notifier
                        .as_ref()
                        .is_some_and(|n| n.run.is_some() || n.queue.backlog().0 > 0);
                    if busy && now < until {
                        return;
                    }
                    if let Some(n) = self.notifier.as_mut() {
                        let (waiting, dropped) = n.queue.backlog();
                        if let Some(p) = n.run.as_mut().filter(|p| p.ended.is_none()) {
                            if !p.killed {
                                p.killed = true;
                                let pgid = p.pid;
                                self.log(
                                    Level::Warn,
                                    "notify command still running at exit; killing it".into(),
                                );
                                self.signal_group(pgid, SIGKILL);
                            }
                        }
                        if waiting > 0 || dropped > 0 {
                            let msg = format!(
                                "exiting with {waiting} notifications not sent ({dropped} dropped)"
                            );
                            self.log(Level::Debug, msg);
                        }
                    }
                    let kill_at = match &self.shutdown {
                        Some(s) => s.deadline.max(now),
                        None => now + self.timing.grace,
                    };
                    self.end = End::Sweep {
                        kill_at,
                        killed: false,
                        give_up: None,
                    };
                    if self.children_left {
                        self.actions.push_back(Action::Sweep(SIGTERM));
                    }
                }
                End::Sweep {
                    kill_at,
                    killed,
                    give_up,
                } => {
                    if !self.children_left {
                        self.end = End::Done;
                        return;
                    }
                    if !killed && now >= kill_at {
                        self.actions.push_back(Action::Sweep(SIGKILL));
                        self.end = End::Sweep {
                            kill_at,
                            killed: true,
                            give_up: Some(now + SWEEP_SETTLE),
                        };
                    } else if give_up.is_some_and(|t| now >= t) {
                        self.log(
                            Level::Warn,
                            "processes left after SIGKILL; exiting without them".into(),
                        );
                        self.end = End::Done;
                    }
                    return;
                }
                End::Done => return,
            }
        }
    }

    /// Everything is over: sidecar-init may exit.
    pub fn finished(&self) -> bool {
        self.end == End::Done
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_some()
    }

    /// The exit code: the main program's status when there is one (or, if
    /// it never started, the failure that kept it from starting); else the
    /// worst over the units of their last finished run's code.
    pub fn exit_code(&self) -> i32 {
        match self.main {
            Some(m) => match self.units[m].code {
                Some(c) => c,
                None => self
                    .abort_code
                    .unwrap_or_else(|| exit::overall(self.units.iter().filter_map(|u| u.code))),
            },
            None => exit::overall(self.units.iter().filter_map(|u| u.code)),
        }
    }

    // --- control ----------------------------------------------------------

    /// Every unit as `status` shows it.
    pub fn status(&self, now: Instant) -> Vec<UnitView> {
        self.units
            .iter()
            .map(|u| {
                let running = u.run.as_ref().filter(|p| p.ended.is_none());
                let detail = match u.state {
                    State::Backoff(at) => format!(
                        "restart in {}",
                        format_secs(at.saturating_duration_since(now))
                    ),
                    State::Starting => u.check_error.clone().unwrap_or_default(),
                    _ => u.detail.clone(),
                };
                UnitView {
                    name: u.spec.name.clone(),
                    kind: u.spec.kind,
                    state: u.state,
                    pid: running.map(|p| p.pid),
                    uptime: running.map(|p| now.saturating_duration_since(p.started)),
                    restarts: u.restarts,
                    code: u.code,
                    check: u.spec.ready_text.clone(),
                    detail,
                }
            })
            .collect()
    }

    /// What keeps the supervisor from being healthy: every unit running
    /// and ready (one-shots finished with 0) and no shutdown.
    pub fn health(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.shutdown.is_some() {
            problems.push("shutting down".to_string());
        } else if self.end != End::Running {
            problems.push("exiting: every daemon is over".to_string());
        }
        for u in &self.units {
            let name = &u.spec.name;
            let problem = match u.state {
                State::Ready | State::Finished => continue,
                State::Waiting | State::Queued => format!("{name}: waiting to start"),
                State::Starting => format!("{name}: started, not ready"),
                State::Stopping(_) => format!("{name}: stopping"),
                State::Backoff(_) => format!(
                    "{name}: exited with code {}, waiting to restart",
                    u.code.unwrap_or_default()
                ),
                State::Exited => format!("{name}: exited with code {}", u.code.unwrap_or_default()),
                State::Stopped => format!("{name}: stopped"),
                State::GivenUp => format!("{name}: given up ({})", u.detail),
            };
            problems.push(problem);
        }
        problems
    }

    /// A control request: `Ok` with a line to answer, or why it is refused.
    pub fn command(&mut self, cmd: &Command, now: Instant) -> Result<String, String> {
        self.touch();
        if self.shutdown.is_some() {
            return Err("shutting down".into());
        }
        if self.end != End::Running {
            // Every unit is over: sidecar-init is on its way out.
            return Err("exiting: every daemon is over".into());
        }
        let name = match cmd {
            Command::Stop(n) | Command::Start(n) | Command::Restart(n) | Command::Signal(n, _) => n,
        };
        let i = self
            .units
            .iter()
            .position(|u| &u.spec.name == name)
            .ok_or_else(|| format!("no daemon named '{name}'"))?;
        let state = self.units[i].state;
        let is_main = self.units[i].spec.kind == Kind::Main;
        match cmd {
            Command::Stop(_) => match state {
                State::Starting | State::Ready => {
                    let msg = format!("stopping {name} (requested)");
                    self.log(Level::Info, msg);
                    self.transition(i, Input::Stop(Why::Stop), now);
                    Ok(format!("stopping {name}"))
                }
                State::Waiting | State::Queued | State::Backoff(_) => {
                    self.transition(i, Input::Stop(Why::Stop), now);
                    self.units[i].detail = "stopped on request".into();
                    Ok(format!("{name} will not start"))
                }
                State::Stopping(Why::Restart) => {
                    // A `restart` under way: it stays down afterwards.
                    let msg = format!("stopping {name} (requested; no longer restarting it)");
                    self.log(Level::Info, msg);
                    self.units[i].state = State::Stopping(Why::Stop);
                    Ok(format!("stopping {name}"))
                }
                State::Stopping(_) => {
                    // Stopped for a failed check: its policy would start it
                    // again; on request it stays down.
                    self.units[i].stay_down = true;
                    Ok(format!("{name} is already stopping; it stays down"))
                }
                _ => Err(format!("{name} is not running ({})", state.as_str())),
            },
            Command::Start(_) if is_main => Err("the main program is never restarted".into()),
            Command::Start(_) if matches!(state, State::Backoff(_)) => {
                // Waiting out a restart delay: start it now, and its
                // backoff starts over (a restart of a unit that is not
                // running does just that).
                let msg = format!("starting {name} now (requested; backoff reset)");
                self.log(Level::Info, msg);
                self.transition(i, Input::Stop(Why::Restart), now);
                Ok(format!("starting {name}"))
            }
            Command::Start(_) => {
                if !state.is_over() {
                    return Err(format!("{name} is {}", state.as_str()));
                }
                self.log(Level::Info, format!("starting {name} (requested)"));
                self.transition(i, Input::Start, now);
                Ok(format!("starting {name}"))
            }
            Command::Restart(_) if is_main => Err("the main program is never restarted".into()),
            Command::Restart(_) => {
                self.log(Level::Info, format!("restarting {name} (requested)"));
                match state {
                    State::Starting | State::Ready => {
                        self.transition(i, Input::Stop(Why::Restart), now)
                    }
                    State::Stopping(_) => self.units[i].state = State::Stopping(Why::Restart),
                    s if s.is_over() => self.transition(i, Input::Start, now),
                    _ => self.transition(i, Input::Stop(Why::Restart), now),
                }
                Ok(format!("restarting {name}"))
            }
            Command::Signal(_, sig) => {
                let Some(p) = self.units[i]
                    .run
                    .as_ref()
                    .filter(|p| p.pid > 0 && p.may_have_processes())
                else {
                    return Err(format!("{name} is not running ({})", state.as_str()));
                };
                let pgid = p.pid;
                let sig_name = exit::signal_name(*sig);
                self.log(
                    Level::Info,
                    format!("sending {sig_name} to {name} (requested)"),
                );
                self.signal_group(pgid, *sig);
                Ok(format!("sent {sig_name} to {name}"))
            }
        }
    }
}

/// When `p`'s pipe is given up, if the wait for it has a deadline now:
/// bytes owed at the reap (or written by its group while it is being
/// stopped) are given up only once stdout has stalled `drain_stall_max`;
/// later bytes get `drain`, a clock that stalls stop, up to that much more.
fn drain_deadline(p: &Proc, stalled_since: Option<Instant>, limits: Drain) -> Option<Instant> {
    if p.ended.is_none() || p.pipe != Pipe::Open {
        return None;
    }
    let (_, ended) = p.ended?;
    match p.late {
        // Only the stall since its reap counts.
        None => stalled_since.map(|s| s.max(ended) + limits.stall_max),
        Some((from, by)) => match stalled_since {
            Some(since) if by > since => Some(from + limits.drain + limits.stall_max),
            _ => Some(by),
        },
    }
}

/// `Timing::drain` and `Timing::drain_stall_max`.
#[derive(Clone, Copy)]
struct Drain {
    drain: Duration,
    stall_max: Duration,
}

impl Timing {
    fn drain_limits(&self) -> Drain {
        Drain {
            drain: self.drain,
            stall_max: self.drain_stall_max,
        }
    }
}

fn is_realtime(sig: i32) -> bool {
    (nix::libc::SIGRTMIN()..=nix::libc::SIGRTMAX()).contains(&sig)
}

/// `8s`, `0.5s`, `1.25s`.
pub fn format_secs(d: Duration) -> String {
    let text = format!("{:.3}", d.as_secs_f64());
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}s")
}

/// `0.31s`, `12.5s`: two decimals below ten seconds, one above.
pub fn format_secs_precise(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.2}s")
    } else {
        format!("{s:.1}s")
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::{Event, Kind};
    use nix::libc::SIGCONT;
    use nix::libc::{SIGHUP, SIGKILL, SIGUSR1};

    const GRACE: Duration = Duration::from_secs(8);
    const DRAIN: Duration = Duration::from_secs(1);
    const STALL_MAX: Duration = Duration::from_secs(5);

    fn timing() -> Timing {
        let mut t = Timing::new(GRACE);
        t.drain = DRAIN;
        t.drain_stall_max = STALL_MAX;
        t
    }

    fn never(names: &[&str]) -> Vec<UnitSpec> {
        names.iter().map(|n| UnitSpec::daemon(n)).collect()
    }

    /// Starts `specs` and spawns every unit that starts at once as pid
    /// 100 + its index.
    fn started(specs: Vec<UnitSpec>, timing: Timing, t0: Instant) -> Supervisor {
        let mut s = Supervisor::new(specs, timing);
        s.start(t0);
        spawn_due(&mut s, t0);
        s
    }

    /// Ticks at `t` and spawns every unit whose spawn is asked for, as pid
    /// 100 + its index (+ 10 per restart); returns the other actions.
    fn spawn_due(s: &mut Supervisor, t: Instant) -> Vec<Action> {
        s.tick(t);
        let mut rest = Vec::new();
        while let Some(a) = s.next_action() {
            match a {
                Action::Spawn(i) => {
                    let pid = 100 + i as i32 + 10 * s.units[i].restarts as i32;
                    let piped = s.units[i].spec.kind != super::Kind::Main;
                    s.spawned(ChildId::Unit(i), pid, piped, t);
                }
                other => rest.push(other),
            }
        }
        rest
    }

    /// A supervisor whose daemons `a`, `b`, `c`... have been spawned as
    /// pids 100, 101, 102...
    fn running(names: &[&str], t0: Instant) -> Supervisor {
        let mut s = started(never(names), timing(), t0);
        for i in 0..names.len() {
            assert_eq!(s.units[i].run.as_ref().map(|r| r.pid), Some(100 + i as i32));
        }
        actions(&mut s);
        s
    }

    /// `pid` was reaped with nothing left in its pipe, the last of its
    /// process group; whether it was ours.
    fn reap(s: &mut Supervisor, pid: i32, ending: Ending, t: Instant) -> bool {
        match s.child_of(pid) {
            Some(id) => {
                s.reaped(id, ending, true, t);
                if s.awaiting_groups() {
                    s.check_groups(|_| false, t);
                }
                true
            }
            None => false,
        }
    }

    fn close(s: &mut Supervisor, i: usize, t: Instant) {
        s.pipe_closed(ChildId::Unit(i), t);
    }

    /// Whether the run is over once nothing else is left to reap (and
    /// the notify command, never run here, has nothing queued).
    fn over(s: &mut Supervisor, t: Instant) -> bool {
        actions(s);
        if s.notifier.is_some() {
            events(s);
        }
        s.children_left(false);
        s.tick(t);
        actions(s);
        s.tick(t);
        s.finished()
    }

    /// The actions, answering every pipe given up as having lost nothing.
    fn actions(s: &mut Supervisor) -> Vec<Action> {
        let mut all = Vec::new();
        while let Some(a) = s.next_action() {
            if let Action::AbandonPipe(id) = a {
                s.pipe_abandoned(id, 0, Instant::now());
            }
            all.push(a);
        }
        all
    }

    fn logs(s: &mut Supervisor) -> Vec<String> {
        actions(s)
            .into_iter()
            .filter_map(|a| match a {
                Action::Log(_, m) => Some(m),
                _ => None,
            })
            .collect()
    }

    fn signals(actions: &[Action]) -> Vec<(i32, i32)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Signal { pgid, signal } => Some((*pgid, *signal)),
                _ => None,
            })
            .filter(|&(_, sig)| sig != SIGCONT)
            .collect()
    }

    #[test]
    fn start_spawns_in_table_order() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(never(&["egress", "pipelock"]), timing());
        s.start(t0);
        assert!(actions(&mut s).is_empty(), "spawns come with the next tick");
        assert!(s.has_work());
        s.tick(t0);
        assert_eq!(
            actions(&mut s),
            vec![
                Action::Log(Level::Info, "starting egress".into()),
                Action::Spawn(0),
                Action::Log(Level::Info, "starting pipelock".into()),
                Action::Spawn(1),
            ]
        );
    }

    #[test]
    fn exit_is_logged_only_after_reap_and_eof() {
        let t0 = Instant::now();
        let mut s = running(&["a", "b"], t0);
        assert!(reap(&mut s, 100, Ending::Exited(3), t0));
        assert!(
            logs(&mut s).is_empty(),
            "pipe still open: output may follow"
        );
        close(&mut s, 0, t0);
        assert_eq!(
            logs(&mut s),
            ["a exited with code 3; leaving surviving daemons running"]
        );
        assert!(!over(&mut s, t0));
        // EOF first, then the reap, works too.
        close(&mut s, 1, t0);
        assert!(logs(&mut s).is_empty());
        assert!(reap(&mut s, 101, Ending::Exited(0), t0));
        assert_eq!(logs(&mut s), ["b exited with code 0; no daemons left"]);
        assert!(over(&mut s, t0));
        assert_eq!(s.exit_code(), 3);
    }

    #[test]
    fn a_held_pipe_is_waited_for_only_until_the_drain_deadline() {
        let t0 = Instant::now();
        let mut s = running(&["a"], t0);
        reap(&mut s, 100, Ending::Exited(0), t0);
        assert_eq!(s.next_deadline(), Some(t0 + DRAIN));
        s.tick(t0 + DRAIN - Duration::from_millis(1));
        assert!(!over(&mut s, t0));
        s.tick(t0 + DRAIN);
        assert_eq!(
            logs(&mut s),
            [
                "a exited with code 0 (its output pipe is still held open by another process); no daemons left"
            ]
        );
        assert!(over(&mut s, t0));
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn a_stalled_stdout_stops_the_drain_clock() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = running(&["a"], t0);
        reap(&mut s, 100, Ending::Exited(0), t0);
        s.output_stall(Some(t0 + ms(400)), t0 + ms(400));
        // Stalled: the deadline can come no sooner than the limit.
        assert_eq!(s.next_deadline(), Some(t0 + DRAIN + STALL_MAX));
        s.tick(t0 + ms(3000));
        assert!(!over(&mut s, t0), "the drain clock ran while stalled");
        // 2.6 s stalled: the 600 ms left of the drain start over from here.
        s.output_stall(None, t0 + ms(3000));
        assert_eq!(s.next_deadline(), Some(t0 + ms(3600)));
        s.tick(t0 + ms(3599));
        assert!(!over(&mut s, t0));
        s.tick(t0 + ms(3600));
        assert_eq!(
            logs(&mut s),
            [
                "a exited with code 0 (its output pipe is still held open by another process); no daemons left"
            ]
        );
    }

    #[test]
    fn a_stall_extends_a_drain_only_up_to_the_limit() {
        let t0 = Instant::now();
        let mut s = running(&["a", "b"], t0);
        reap(&mut s, 100, Ending::Exited(0), t0);
        s.output_stall(Some(t0), t0);
        s.tick(t0 + DRAIN + STALL_MAX - Duration::from_millis(1));
        assert!(logs(&mut s).is_empty());
        s.tick(t0 + DRAIN + STALL_MAX);
        assert_eq!(
            logs(&mut s),
            [
                "a exited with code 0 (not all its output is out: stdout is not being read); leaving surviving daemons running"
            ]
        );
    }

    #[test]
    fn stalls_that_come_and_go_add_up_to_the_limit() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = running(&["a"], t0);
        reap(&mut s, 100, Ending::Exited(0), t0);
        s.output_stall(Some(t0 + ms(200)), t0 + ms(200));
        s.output_stall(None, t0 + ms(700));
        assert_eq!(s.next_deadline(), Some(t0 + ms(1500)));
        s.output_stall(Some(t0 + ms(1000)), t0 + ms(1000));
        s.output_stall(None, t0 + ms(1400));
        assert_eq!(s.next_deadline(), Some(t0 + ms(1900)));
        s.tick(t0 + ms(1899));
        assert!(!over(&mut s, t0));
        s.output_stall(Some(t0 + ms(1500)), t0 + ms(1500));
        s.output_stall(None, t0 + ms(9000));
        assert_eq!(s.next_deadline(), Some(t0 + DRAIN + STALL_MAX));
        s.tick(t0 + DRAIN + STALL_MAX);
        assert_eq!(
            logs(&mut s),
            [
                "a exited with code 0 (not all its output is out: stdout is not being read); no daemons left"
            ]
        );
    }

    #[test]
    fn only_the_stall_after_an_exit_counts_for_it() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = running(&["a"], t0);
        s.output_stall(Some(t0), t0);
        reap(&mut s, 100, Ending::Exited(0), t0 + ms(4900));
        s.output_stall(None, t0 + ms(5000));
        assert_eq!(s.next_deadline(), Some(t0 + ms(6000)));
    }

    #[test]
    fn a_drain_due_before_the_stall_is_not_extended() {
        let t0 = Instant::now();
        let mut s = running(&["a"], t0);
        reap(&mut s, 100, Ending::Exited(0), t0);
        s.output_stall(
            Some(t0 + DRAIN + Duration::from_millis(5)),
            t0 + DRAIN + Duration::from_millis(5),
        );
        assert_eq!(s.next_deadline(), Some(t0 + DRAIN));
        s.tick(t0 + DRAIN + Duration::from_millis(5));
        assert!(over(&mut s, t0));
    }

    #[test]
    fn a_pipe_reaching_eof_ends_the_wait_even_while_stalled() {
        let t0 = Instant::now();
        let mut s = running(&["a"], t0);
        s.output_stall(Some(t0), t0);
        reap(&mut s, 100, Ending::Exited(0), t0);
        close(&mut s, 0, t0 + Duration::from_millis(10));
        assert_eq!(logs(&mut s), ["a exited with code 0; no daemons left"]);
        assert!(over(&mut s, t0));
    }

    #[test]
    fn unknown_pids_are_not_daemons() {
        let t0 = Instant::now();
        let mut s = running(&["a"], t0);
        assert!(!reap(&mut s, 4242, Ending::Exited(1), t0));
        assert!(actions(&mut s).is_empty());
        // A daemon's pid reaped twice (pid reuse by an orphan) counts once.
        close(&mut s, 0, t0);
        assert!(reap(&mut s, 100, Ending::Exited(0), t0));
        assert!(!reap(&mut s, 100, Ending::Exited(9), t0));
        assert_eq!(s.exit_code(), 0);
    }

    #[test]
    fn crash_without_shutdown_leaves_the_others_running() {
        let t0 = Instant::now();
        let mut s = running(&["a", "b"], t0);
        close(&mut s, 0, t0);
        reap(&mut s, 100, Ending::Exited(1), t0);
        let acts = actions(&mut s);
        assert!(
            signals(&acts).is_empty(),
            "nobody else is signalled: {acts:?}"
        );
        assert!(!over(&mut s, t0));
        assert!(!s.shutting_down());
    }

    #[test]
    fn crash_then_sigterm_surfaces_the_crash_code() {
        let t0 = Instant::now();
        let mut s = running(&["a", "b"], t0);
        close(&mut s, 0, t0);
        reap(&mut s, 100, Ending::Exited(1), t0);
        actions(&mut s);
        s.signal(SIGTERM, t0);
        let acts = actions(&mut s);
        assert_eq!(signals(&acts), [(101, SIGTERM)]);
        close(&mut s, 1, t0);
        reap(&mut s, 101, Ending::Signaled(SIGTERM), t0);
        assert_eq!(logs(&mut s), ["b exited with code 0 (stopped by SIGTERM)"]);
        assert!(over(&mut s, t0));
        assert_eq!(s.exit_code(), 1);
    }

    #[test]
    fn graceful_shutdown_is_zero() {
        let t0 = Instant::now();
        let mut s = running(&["a", "b"], t0);
        s.signal(SIGTERM, t0);
        let acts = actions(&mut s);
        assert_eq!(
            acts[0],
            Action::Log(
                Level::Info,
                "shutting down (SIGTERM); forwarding SIGTERM".into()
            )
        );
        assert_eq!(signals(&acts), [(100, SIGTERM), (101, SIGTERM)]);
        assert_eq!(s.next_deadline(), Some(t0 + GRACE));
        for (i, ending) in [(0, Ending::Signaled(SIGTERM)), (1, Ending::Exited(0))] {
            close(&mut s, i, t0);
            reap(&mut s, 100 + i as i32, ending, t0);
        }
        assert!(over(&mut s, t0));
        assert_eq!(s.exit_code(), 0);
    }

    #[test]
    fn sigterm_from_elsewhere_is_a_failure() {
        let t0 = Instant::now();
        let mut s = running(&["a", "b"], t0);
        close(&mut s, 0, t0);
        reap(&mut s, 100, Ending::Signaled(SIGTERM), t0);
        assert_eq!(
            logs(&mut s),
            ["a exited with code 143 (killed by SIGTERM); leaving surviving daemons running"]
        );
        // Shutdown later does not turn that death into a graceful stop.
        s.signal(SIGTERM, t0);
        close(&mut s, 1, t0);
        reap(&mut s, 101, Ending::Signaled(SIGTERM), t0);
        assert_eq!(s.exit_code(), 143);
    }

    #[test]
    fn repeated_sigterm_is_ignored() {
        let t0 = Instant::now();
        let mut s = running(&["a"], t0);
        s.signal(SIGTERM, t0);
        actions(&mut s);
        s.signal(SIGTERM, t0 + Duration::from_secs(1));
        assert!(signals(&actions(&mut s)).is_empty());
        assert_eq!(
            s.next_deadline(),
            Some(t0 + GRACE),
            "the grace timer is not restarted"
        );
    }

    #[test]
    fn grace_elapsed_kills_whoever_is_left() {
        let t0 = Instant::now();
        let mut s = running(&["a", "b", "c"], t0);
        s.signal(SIGINT, t0);
        assert_eq!(
            logs(&mut s)[0],
            "shutting down (SIGINT); forwarding SIGTERM"
        );
        close(&mut s, 1, t0);
        reap(&mut s, 101, Ending::Exited(0), t0);
        actions(&mut s);
        s.tick(t0 + GRACE - Duration::from_millis(1));
        assert!(actions(&mut s).is_empty());
        s.tick(t0 + GRACE);
        let acts = actions(&mut s);
        assert_eq!(signals(&acts), [(100, SIGKILL), (102, SIGKILL)]);
        assert!(acts.contains(&Action::Log(
            Level::Warn,
            "grace (8s) elapsed; SIGKILL on a, c".into()
        )));
        // No grace timer any more; only the bound on the wait for the
        // SIGKILLed leaders to be reaped.
        assert_eq!(s.next_deadline(), Some(t0 + GRACE + KILL_SETTLE));
        for i in [0, 2] {
            close(&mut s, i, t0 + GRACE);
            reap(
                &mut s,
                100 + i as i32,
                Ending::Signaled(SIGKILL),
                t0 + GRACE,
            );
        }
        assert_eq!(s.exit_code(), 137);
    }

    #[test]
    fn second_sigint_kills_at_once() {
        let t0 = Instant::now();
        let mut s = running(&["a", "b"], t0);
        s.signal(SIGINT, t0);
        actions(&mut s);
        s.signal(SIGINT, t0 + Duration::from_millis(10));
        let acts = actions(&mut s);
        assert_eq!(signals(&acts), [(100, SIGKILL), (101, SIGKILL)]);
        assert!(acts.contains(&Action::Log(
            Level::Warn,
            "second SIGINT; SIGKILL on a, b".into()
        )));
        assert_eq!(
            s.next_deadline(),
            Some(t0 + Duration::from_millis(10) + KILL_SETTLE),
            "no grace timer after SIGKILL, only the bound on the wait for the reap"
        );
    }

    #[test]
    fn a_sigkilled_leader_that_never_dies_is_gone_on_without() {
        let t0 = Instant::now();
        let mut s = running(&["stuck", "b"], t0);
        s.signal(SIGINT, t0);
        s.signal(SIGINT, t0);
        actions(&mut s);
        reap(&mut s, 101, Ending::Signaled(SIGKILL), t0);
        close(&mut s, 1, t0);
        close(&mut s, 0, t0);
        s.tick(t0 + KILL_SETTLE - Duration::from_millis(1));
        assert!(!over(&mut s, t0 + KILL_SETTLE - Duration::from_millis(1)));
        s.tick(t0 + KILL_SETTLE);
        let logs = logs(&mut s);
        assert!(
            logs.contains(
                &"stuck did not die 2s after SIGKILL (stuck in the kernel?); going on without it"
                    .to_string()
            ),
            "{logs:?}"
        );
        assert!(over(&mut s, t0 + KILL_SETTLE));
        assert_eq!(s.exit_code(), 137);
        assert_eq!(s.child_of(100), None, "when it dies, it is an orphan");
    }

    #[test]
    fn a_stop_during_a_failed_checks_stop_keeps_it_down() {
        let t0 = Instant::now();
        let mut web = UnitSpec::daemon("web");
        web.ready = Readiness::Notify;
        web.ready_text = Some("notify".into());
        web.policy = Policy::OnFailure;
        let mut s = started(vec![web, UnitSpec::daemon("b")], timing(), t0);
        let t = t0 + s.timing.ready_timeout;
        s.tick(t);
        actions(&mut s);
        assert_eq!(
            s.command(&Command::Stop("web".into()), t),
            Ok("web is already stopping; it stays down".into())
        );
        reap(&mut s, 100, Ending::Signaled(SIGTERM), t);
        close(&mut s, 0, t);
        assert_eq!(
            s.units[0].state,
            State::Stopped,
            "not restarted by its policy"
        );
        assert_eq!(s.units[0].code, Some(exit::CHECK_FAILED));
    }

    #[test]
    fn commands_are_refused_once_every_unit_is_over() {
        let t0 = Instant::now();
        let mut s = running(&["a"], t0);
        reap(&mut s, 100, Ending::Exited(0), t0);
        close(&mut s, 0, t0);
        s.children_left(true);
        s.tick(t0);
        actions(&mut s);
        assert!(s.command(&Command::Start("a".into()), t0).is_err());
        assert_eq!(
            s.health(),
            ["exiting: every daemon is over", "a: exited with code 0"]
        );
    }

    #[test]
    fn a_dependency_chain_names_the_root_cause() {
        let t0 = Instant::now();
        let specs = vec![
            UnitSpec::daemon("d0"),
            UnitSpec {
                after: vec![0],
                ..UnitSpec::daemon("d1")
            },
            UnitSpec {
                after: vec![1],
                ..UnitSpec::daemon("d2")
            },
            UnitSpec {
                after: vec![2],
                ..UnitSpec::daemon("d3")
            },
        ];
        let mut specs = specs;
        specs[0].ready = Readiness::Notify;
        specs[0].ready_text = Some("notify".into());
        let mut s = started(specs, timing(), t0);
        reap(&mut s, 100, Ending::Exited(1), t0);
        close(&mut s, 0, t0);
        let logs = logs(&mut s);
        for d in ["d1", "d2", "d3"] {
            assert!(
                logs.contains(&format!("{d} not started: d0 failed with code 1")),
                "{logs:?}"
            );
        }
    }

    #[test]
    fn forwarded_signals_do_not_start_shutdown() {
        let t0 = Instant::now();
        let mut s = running(&["a", "b"], t0);
        for sig in forwarded_signals() {
            s.signal(sig, t0);
            let sent: Vec<Action> = actions(&mut s)
                .into_iter()
                .filter(|a| matches!(a, Action::Signal { .. }))
                .collect();
            assert_eq!(
                sent,
                [
                    Action::Signal {
                        pgid: 100,
                        signal: sig
                    },
                    Action::Signal {
                        pgid: 101,
                        signal: sig
                    }
                ],
                "{}",
                exit::signal_name(sig)
            );
        }
        assert!(!s.shutting_down());
        // A dead daemon whose group is empty is not signalled.
        close(&mut s, 0, t0);
        reap(&mut s, 100, Ending::Exited(0), t0);
        actions(&mut s);
        s.signal(SIGHUP, t0);
        let acts = actions(&mut s);
        assert_eq!(signals(&acts), [(101, SIGHUP)]);
        assert!(acts.contains(&Action::Log(Level::Info, "forwarding SIGHUP to b".into())));
    }

    #[test]
    fn a_group_holding_the_pipe_is_still_signalled() {
        let t0 = Instant::now();
        let mut s = running(&["a"], t0);
        // Leader gone, pipe open, its group not found gone.
        s.reaped(ChildId::Unit(0), Ending::Exited(0), true, t0);
        s.signal(SIGUSR1, t0);
        assert_eq!(signals(&actions(&mut s)), [(100, SIGUSR1)]);
    }

    #[test]
    fn spawn_failure_is_one_daemon_failing() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(never(&["a", "b"]), timing());
        s.start(t0);
        s.tick(t0);
        actions(&mut s);
        s.spawn_failed(
            ChildId::Unit(0),
            exit::NOT_FOUND,
            "No such file or directory",
            t0,
        );
        s.spawned(ChildId::Unit(1), 101, true, t0);
        assert_eq!(
            logs(&mut s),
            [
                "cannot start a: No such file or directory",
                "a exited with code 127 (command not found); leaving surviving daemons running"
            ]
        );
        assert!(!over(&mut s, t0));
        s.signal(SIGTERM, t0);
        assert_eq!(signals(&actions(&mut s)), [(101, SIGTERM)]);
        close(&mut s, 1, t0);
        reap(&mut s, 101, Ending::Signaled(SIGTERM), t0);
        assert_eq!(s.exit_code(), 127);
    }

    #[test]
    fn no_daemons_means_finished_with_zero() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(never(&[]), timing());
        s.start(t0);
        assert!(over(&mut s, t0));
        assert_eq!(s.exit_code(), 0);
    }

    #[test]
    fn zero_grace_kills_on_the_next_tick() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(
            never(&["a"]),
            Timing {
                grace: Duration::ZERO,
                ..timing()
            },
        );
        s.start(t0);
        spawn_due(&mut s, t0);
        s.signal(SIGTERM, t0);
        actions(&mut s);
        assert_eq!(s.next_deadline(), Some(t0));
        s.tick(t0);
        assert_eq!(signals(&actions(&mut s)), [(100, SIGKILL)]);
    }

    // --- restarts ---

    fn with_policy(policy: Policy, backoff: Backoff, t0: Instant) -> Supervisor {
        let mut specs = never(&["a", "b"]);
        specs[0].policy = policy;
        let mut s = started(
            specs,
            Timing {
                backoff,
                notify_timeout: Some(Duration::from_secs(10)),
                ..timing()
            },
            t0,
        );
        actions(&mut s);
        s
    }

    /// Daemon 0 ends its run (reaped as `pid`, pipe closed) at `t`.
    fn end_run(s: &mut Supervisor, pid: i32, ending: Ending, t: Instant) {
        close(s, 0, t);
        assert!(reap(s, pid, ending, t), "pid {pid} is daemon a");
    }

    /// Runs the clock to `t` and returns the pid daemon 0 was respawned as.
    fn respawn(s: &mut Supervisor, t: Instant, pid: i32) -> Vec<String> {
        s.tick(t);
        let acts = actions(s);
        assert!(
            acts.contains(&Action::Spawn(0)),
            "no respawn at {t:?}: {acts:?}"
        );
        s.spawned(ChildId::Unit(0), pid, true, t);
        acts.into_iter()
            .filter_map(|a| match a {
                Action::Log(_, m) => Some(m),
                _ => None,
            })
            .collect()
    }

    /// The events queued for the notify command since the last call (the
    /// command is never run here: the queue keeps them in order).
    fn events(s: &mut Supervisor) -> Vec<Event> {
        let n = s.notifier.as_mut().expect("notify is on in these tests");
        std::iter::from_fn(|| {
            n.queue.finished();
            n.queue.start_next().map(|(e, _)| e)
        })
        .collect()
    }

    #[test]
    fn backoff_doubles_up_to_the_ceiling() {
        let b = Backoff::default();
        let delays: Vec<u64> = (1..=8).map(|n| b.delay_for(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(b.delay_for(1000), Duration::from_secs(30), "no overflow");
        let half = Backoff {
            delay: Duration::from_millis(500),
            ..b
        };
        assert_eq!(half.delay_for(3), Duration::from_secs(2));
    }

    #[test]
    fn never_does_not_restart() {
        let t0 = Instant::now();
        let mut s = with_policy(Policy::Never, Backoff::default(), t0);
        end_run(&mut s, 100, Ending::Exited(1), t0);
        assert_eq!(
            logs(&mut s),
            ["a exited with code 1; leaving surviving daemons running"]
        );
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn on_failure_restarts_failures_only() {
        let t0 = Instant::now();
        let mut s = with_policy(Policy::OnFailure, Backoff::default(), t0);
        end_run(&mut s, 100, Ending::Exited(0), t0);
        assert_eq!(
            logs(&mut s),
            ["a exited with code 0; leaving surviving daemons running"]
        );

        let mut s = with_policy(Policy::OnFailure, Backoff::default(), t0);
        end_run(&mut s, 100, Ending::Signaled(nix::libc::SIGSEGV), t0);
        assert_eq!(
            logs(&mut s),
            ["a exited with code 139 (killed by SIGSEGV); restarting in 1s (restart 1)"]
        );
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn always_restarts_a_clean_exit_too() {
        let t0 = Instant::now();
        let mut s = with_policy(Policy::Always, Backoff::default(), t0);
        end_run(&mut s, 100, Ending::Exited(0), t0);
        assert_eq!(
            logs(&mut s),
            ["a exited with code 0; restarting in 1s (restart 1)"]
        );
    }

    #[test]
    fn the_backoff_schedule_follows_quick_failures_and_resets_after_a_long_run() {
        let t0 = Instant::now();
        let mut s = with_policy(Policy::OnFailure, Backoff::default(), t0);
        let mut t = t0;
        let mut pid = 100;
        let mut delays = Vec::new();
        for _ in 0..7 {
            end_run(&mut s, pid, Ending::Exited(1), t);
            actions(&mut s);
            let at = s.next_deadline().expect("a restart is scheduled");
            delays.push((at - t).as_secs());
            // Nothing happens before the deadline: no respawn, no work
            // (but the notify command's, for the events so far).
            s.tick(at - Duration::from_millis(1));
            let acts = actions(&mut s);
            assert!(
                acts.iter().all(|a| matches!(a, Action::SpawnNotify(..))),
                "{acts:?}"
            );
            pid += 10;
            respawn(&mut s, at, pid);
            t = at + Duration::from_secs(1); // each run lasts 1 s: quick
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        // A run of at least the reset time starts the backoff over.
        let long = t + Duration::from_secs(10);
        end_run(&mut s, pid, Ending::Exited(1), long);
        assert_eq!(
            logs(&mut s),
            ["a exited with code 1; restarting in 1s (restart 8)"]
        );
    }

    #[test]
    fn max_restarts_gives_up_after_that_many_quick_restarts() {
        let t0 = Instant::now();
        let backoff = Backoff {
            max_restarts: Some(2),
            ..Backoff::default()
        };
        let mut s = with_policy(Policy::Always, backoff, t0);
        end_run(&mut s, 100, Ending::Exited(1), t0);
        let logs1 = logs(&mut s);
        let l = respawn(&mut s, t0 + Duration::from_secs(1), 110);
        assert_eq!(l, ["restarting a (restart 1)"], "{logs1:?}");
        end_run(&mut s, 110, Ending::Exited(1), t0 + Duration::from_secs(2));
        actions(&mut s);
        respawn(&mut s, t0 + Duration::from_secs(4), 120);
        events(&mut s);
        end_run(&mut s, 120, Ending::Exited(1), t0 + Duration::from_secs(5));
        let acts = actions(&mut s);
        assert!(acts.contains(&Action::Log(
            Level::Warn,
            "a exited with code 1; giving up after 2 quick restarts in a row".into()
        )));
        let kinds: Vec<Kind> = events(&mut s).iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [Kind::Exit, Kind::GiveUp]);
        assert_eq!(s.next_deadline(), None);
        // Given up means gone: with b gone too, the supervisor is finished.
        close(&mut s, 1, t0);
        reap(&mut s, 101, Ending::Exited(0), t0);
        assert!(over(&mut s, t0));
        assert_eq!(s.exit_code(), 1);
    }

    #[test]
    fn a_pending_restart_keeps_the_supervisor_running() {
        let t0 = Instant::now();
        let mut s = with_policy(Policy::Always, Backoff::default(), t0);
        close(&mut s, 1, t0);
        reap(&mut s, 101, Ending::Exited(0), t0);
        end_run(&mut s, 100, Ending::Exited(0), t0);
        actions(&mut s);
        assert!(!over(&mut s, t0), "a will run again");
    }

    #[test]
    fn shutdown_cancels_pending_restarts() {
        let t0 = Instant::now();
        let mut s = with_policy(Policy::Always, Backoff::default(), t0);
        end_run(&mut s, 100, Ending::Exited(3), t0);
        actions(&mut s);
        s.signal(SIGTERM, t0 + Duration::from_millis(10));
        let acts = actions(&mut s);
        assert_eq!(
            signals(&acts),
            [(101, SIGTERM)],
            "a is not running: nothing to signal"
        );
        assert!(acts.contains(&Action::Log(
            Level::Info,
            "cancelled the pending restart of a".into()
        )));
        // The old restart time passes: nothing is restarted.
        s.tick(t0 + Duration::from_secs(5));
        assert!(!actions(&mut s).contains(&Action::Spawn(0)));
        close(&mut s, 1, t0);
        reap(&mut s, 101, Ending::Signaled(SIGTERM), t0);
        assert!(over(&mut s, t0));
        assert_eq!(s.exit_code(), 3, "a's last run counts");
    }

    #[test]
    fn a_cancelled_restart_is_not_killed_at_the_grace_deadline() {
        let t0 = Instant::now();
        let mut s = with_policy(Policy::Always, Backoff::default(), t0);
        end_run(&mut s, 100, Ending::Exited(0), t0);
        s.signal(SIGTERM, t0);
        actions(&mut s);
        s.tick(t0 + GRACE);
        let acts = actions(&mut s);
        assert_eq!(signals(&acts), [(101, SIGKILL)]);
        assert!(acts.contains(&Action::Log(
            Level::Warn,
            "grace (8s) elapsed; SIGKILL on b".into()
        )));
    }

    #[test]
    fn nothing_restarts_once_shutdown_has_begun() {
        let t0 = Instant::now();
        let mut s = with_policy(Policy::Always, Backoff::default(), t0);
        s.signal(SIGTERM, t0);
        actions(&mut s);
        end_run(&mut s, 100, Ending::Signaled(SIGTERM), t0);
        assert_eq!(logs(&mut s), ["a exited with code 0 (stopped by SIGTERM)"]);
        assert_eq!(s.next_deadline(), Some(t0 + GRACE), "only the grace timer");
    }

    #[test]
    fn the_last_run_sets_the_code() {
        let t0 = Instant::now();
        let mut s = with_policy(Policy::OnFailure, Backoff::default(), t0);
        end_run(&mut s, 100, Ending::Exited(5), t0);
        actions(&mut s);
        respawn(&mut s, t0 + Duration::from_secs(1), 110);
        s.signal(SIGTERM, t0 + Duration::from_secs(2));
        actions(&mut s);
        end_run(
            &mut s,
            110,
            Ending::Signaled(SIGTERM),
            t0 + Duration::from_secs(2),
        );
        close(&mut s, 1, t0);
        reap(&mut s, 101, Ending::Exited(0), t0);
        assert!(over(&mut s, t0));
        assert_eq!(s.exit_code(), 0, "the first run's 5 was superseded");
    }

    #[test]
    fn events_carry_what_happened() {
        let t0 = Instant::now();
        let mut s = with_policy(Policy::OnFailure, Backoff::default(), t0);
        end_run(&mut s, 100, Ending::Signaled(nix::libc::SIGKILL), t0);
        actions(&mut s);
        let ev = events(&mut s);
        assert_eq!(ev.len(), 2);
        assert_eq!((ev[0].kind, ev[1].kind), (Kind::Exit, Kind::Restart));
        for e in &ev {
            assert_eq!(e.daemon, "a");
            assert_eq!(e.code, Some(137));
            assert_eq!(e.signal, Some(SIGKILL));
            assert_eq!(e.restarts, 1);
            assert_eq!(
                e.message,
                "a exited with code 137 (killed by SIGKILL); restarting in 1s (restart 1)"
            );
        }
        s.signal(SIGINT, t0);
        actions(&mut s);
        let ev = events(&mut s);
        assert_eq!(ev.len(), 1);
        assert_eq!(
            (ev[0].kind, ev[0].signal, ev[0].daemon.as_str()),
            (Kind::Shutdown, Some(SIGINT), "")
        );
        s.signal(SIGINT, t0);
        actions(&mut s);
        let ev = events(&mut s);
        assert_eq!((ev[0].kind, ev[0].daemon.as_str()), (Kind::Kill, "b"));
    }

    // --- readiness, order, one-shots, the main program ---

    fn spec(name: &str, after: &[usize]) -> UnitSpec {
        UnitSpec {
            after: after.to_vec(),
            ..UnitSpec::daemon(name)
        }
    }

    fn spawns(acts: &[Action]) -> Vec<usize> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Spawn(i) => Some(*i),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_dependent_starts_once_its_dependency_is_ready() {
        let t0 = Instant::now();
        let mut db = spec("db", &[]);
        db.ready = Readiness::Poll { exec: false };
        db.ready_text = Some("tcp:127.0.0.1:5432".into());
        let mut s = Supervisor::new(vec![db, spec("web", &[0]), spec("other", &[])], timing());
        s.start(t0);
        s.tick(t0);
        assert_eq!(spawns(&actions(&mut s)), [0, 2], "independent ones at once");
        s.spawned(ChildId::Unit(0), 100, true, t0);
        s.spawned(ChildId::Unit(2), 102, true, t0);
        s.tick(t0);
        assert_eq!(actions(&mut s), [Action::RunCheck(0, Purpose::Ready)]);
        s.check_done(0, Err("Connection refused".into()), t0);
        assert_eq!(
            logs(&mut s),
            ["db not ready yet (tcp:127.0.0.1:5432: Connection refused)"]
        );
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_millis(200)));
        let t1 = t0 + Duration::from_millis(200);
        s.tick(t1);
        assert_eq!(actions(&mut s), [Action::RunCheck(0, Purpose::Ready)]);
        s.check_done(0, Ok(()), t1 + Duration::from_millis(110));
        assert_eq!(
            logs(&mut s),
            ["db is ready (tcp:127.0.0.1:5432) after 0.31s"]
        );
        s.tick(t1);
        let acts = actions(&mut s);
        assert_eq!(spawns(&acts), [1]);
        // Every unit ready: no deadline at all (no polling).
        s.spawned(ChildId::Unit(1), 101, true, t1);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn a_check_that_times_out_fails_and_is_cancelled() {
        let t0 = Instant::now();
        let mut db = spec("db", &[]);
        db.ready = Readiness::Poll { exec: false };
        db.ready_text = Some("tcp:127.0.0.1:1".into());
        let mut s = started(vec![db], timing(), t0);
        s.tick(t0);
        actions(&mut s);
        let timeout = s.timing.check_timeout;
        assert_eq!(s.next_deadline(), Some(t0 + timeout));
        s.tick(t0 + timeout);
        let acts = actions(&mut s);
        assert!(acts.contains(&Action::CancelCheck(0)), "{acts:?}");
        assert_eq!(
            s.units[0].check_error.as_deref(),
            Some("timed out after 5s")
        );
    }

    #[test]
    fn not_ready_in_time_stops_it_as_failed_and_fails_its_dependents() {
        let t0 = Instant::now();
        let mut slow = spec("slow", &[]);
        slow.ready = Readiness::Notify;
        slow.ready_text = Some("notify".into());
        let mut s = started(vec![slow, spec("web", &[0])], timing(), t0);
        let timeout = s.timing.ready_timeout;
        assert_eq!(s.next_deadline(), Some(t0 + timeout));
        s.tick(t0 + timeout);
        let acts = actions(&mut s);
        assert_eq!(signals(&acts), [(100, SIGTERM)]);
        assert!(acts.contains(&Action::Log(
            Level::Warn,
            "slow not ready after 60s (notify); stopping it".into()
        )));
        reap(&mut s, 100, Ending::Signaled(SIGTERM), t0 + timeout);
        close(&mut s, 0, t0 + timeout);
        assert_eq!(
            logs(&mut s),
            [
                "slow exited with code 124 (not ready in time; killed by SIGTERM); leaving surviving daemons running",
                "web not started: slow failed with code 124"
            ]
        );
        assert!(over(&mut s, t0 + timeout));
        assert_eq!(s.exit_code(), 124);
    }

    #[test]
    fn notify_readiness_needs_the_units_own_group() {
        let t0 = Instant::now();
        let mut svc = spec("svc", &[]);
        svc.ready = Readiness::Notify;
        svc.ready_text = Some("notify".into());
        let mut s = started(vec![svc, spec("web", &[0])], timing(), t0);
        assert_eq!(s.notified(4242, t0), None, "a stranger's group");
        assert_eq!(s.notified(100, t0), Some("svc".into()));
        s.tick(t0);
        assert_eq!(spawns(&actions(&mut s)), [1]);
        assert_eq!(s.notified(100, t0), None, "already ready");
    }

    #[test]
    fn a_one_shot_is_ready_when_it_finishes_and_never_runs_again() {
        let t0 = Instant::now();
        let mut migrate = spec("migrate", &[]);
        migrate.kind = super::Kind::Oneshot;
        migrate.policy = Policy::OnFailure;
        let mut s = started(vec![migrate, spec("web", &[0])], timing(), t0);
        assert_eq!(s.units[1].state, State::Waiting);
        reap(
            &mut s,
            100,
            Ending::Exited(0),
            t0 + Duration::from_millis(250),
        );
        close(&mut s, 0, t0);
        assert_eq!(logs(&mut s), ["migrate finished (in 0.25s)"]);
        assert_eq!(s.units[0].state, State::Finished);
        s.tick(t0);
        assert_eq!(spawns(&actions(&mut s)), [1]);
    }

    #[test]
    fn the_main_program_waits_for_everyone_and_its_status_is_the_code() {
        let t0 = Instant::now();
        let mut main = spec("main", &[0, 1]);
        main.kind = super::Kind::Main;
        let mut migrate = spec("migrate", &[]);
        migrate.kind = super::Kind::Oneshot;
        let mut s = started(vec![spec("db", &[]), migrate, main], timing(), t0);
        assert_eq!(s.units[2].state, State::Waiting, "migrate has not finished");
        reap(&mut s, 101, Ending::Exited(0), t0);
        close(&mut s, 1, t0);
        spawn_due(&mut s, t0);
        assert_eq!(s.units[2].state, State::Ready);
        // Its end stops everything; it is killed by our SIGTERM: 143.
        reap(&mut s, 102, Ending::Signaled(SIGTERM), t0);
        let acts = actions(&mut s);
        assert!(acts.contains(&Action::Log(
            Level::Warn,
            "the main program (main) exited with code 143 (killed by SIGTERM)".into()
        )));
        assert_eq!(signals(&acts), [(100, SIGTERM)]);
        reap(&mut s, 100, Ending::Signaled(SIGTERM), t0);
        close(&mut s, 0, t0);
        assert!(over(&mut s, t0));
        assert_eq!(s.exit_code(), 143);
    }

    #[test]
    fn a_failed_dependency_keeps_the_main_program_from_starting() {
        let t0 = Instant::now();
        let mut main = spec("main", &[0, 1]);
        main.kind = super::Kind::Main;
        let mut migrate = spec("migrate", &[]);
        migrate.kind = super::Kind::Oneshot;
        let mut s = started(vec![spec("db", &[]), migrate, main], timing(), t0);
        reap(&mut s, 101, Ending::Exited(3), t0);
        close(&mut s, 1, t0);
        let acts = actions(&mut s);
        assert!(acts.contains(&Action::Log(
            Level::Warn,
            "main not started: migrate failed with code 3".into()
        )));
        assert_eq!(signals(&acts), [(100, SIGTERM)], "everything stops");
        reap(&mut s, 100, Ending::Signaled(SIGTERM), t0);
        close(&mut s, 0, t0);
        assert!(over(&mut s, t0));
        assert_eq!(s.exit_code(), 3, "the failure's code");
    }

    #[test]
    fn an_essential_units_end_stops_everything_and_others_do_not() {
        let t0 = Instant::now();
        let mut vital = spec("vital", &[]);
        vital.essential = true;
        let mut s = started(vec![vital, spec("a", &[]), spec("b", &[])], timing(), t0);
        reap(&mut s, 101, Ending::Exited(1), t0);
        close(&mut s, 1, t0);
        assert!(!s.shutting_down(), "a is not essential");
        reap(&mut s, 100, Ending::Exited(2), t0);
        close(&mut s, 0, t0);
        let acts = actions(&mut s);
        assert!(acts.contains(&Action::Log(
            Level::Warn,
            "vital exited with code 2; it is essential".into()
        )));
        assert!(acts.contains(&Action::Log(
            Level::Info,
            "shutting down (vital is essential and failed with code 2); forwarding SIGTERM".into()
        )));
        assert_eq!(signals(&acts), [(102, SIGTERM)]);
        reap(&mut s, 102, Ending::Signaled(SIGTERM), t0);
        close(&mut s, 2, t0);
        assert!(over(&mut s, t0));
        assert_eq!(s.exit_code(), 2);
    }

    #[test]
    fn the_stop_order_follows_the_dependencies_backwards() {
        let t0 = Instant::now();
        let mut s = started(
            vec![spec("db", &[]), spec("cache", &[]), spec("web", &[0, 1])],
            timing(),
            t0,
        );
        s.tick(t0);
        spawn_due(&mut s, t0);
        s.signal(SIGTERM, t0);
        assert_eq!(signals(&actions(&mut s)), [(102, SIGTERM)], "web first");
        reap(&mut s, 102, Ending::Signaled(SIGTERM), t0);
        close(&mut s, 2, t0);
        s.tick(t0);
        assert_eq!(signals(&actions(&mut s)), [(100, SIGTERM), (101, SIGTERM)]);
    }

    #[test]
    fn a_stop_waits_for_the_whole_group() {
        let t0 = Instant::now();
        let mut s = running(&["a"], t0);
        s.signal(SIGTERM, t0);
        actions(&mut s);
        s.reaped(ChildId::Unit(0), Ending::Signaled(SIGTERM), true, t0);
        close(&mut s, 0, t0);
        assert!(s.awaiting_groups());
        s.check_groups(|pgid| pgid == 100, t0);
        assert!(logs(&mut s).is_empty(), "a group member still runs");
        s.check_groups(|_| false, t0 + Duration::from_secs(2));
        assert_eq!(logs(&mut s), ["a exited with code 0 (stopped by SIGTERM)"]);
    }

    #[test]
    fn the_grace_names_only_groups_that_may_have_processes() {
        let t0 = Instant::now();
        let mut s = running(&["chatty", "stubborn"], t0);
        // chatty exited on its own, its pipe still draining (stdout stalled).
        s.reaped(ChildId::Unit(0), Ending::Exited(0), false, t0);
        s.check_groups(|_| false, t0);
        s.output_stall(Some(t0), t0);
        s.signal(SIGTERM, t0);
        actions(&mut s);
        s.tick(t0 + GRACE);
        let acts = actions(&mut s);
        assert_eq!(signals(&acts), [(101, SIGKILL)]);
        assert!(acts.contains(&Action::Log(
            Level::Warn,
            "grace (8s) elapsed; SIGKILL on stubborn".into()
        )));
    }

    #[test]
    fn liveness_failures_in_a_row_stop_the_daemon_as_failed() {
        let t0 = Instant::now();
        let mut web = spec("web", &[]);
        web.live = Some(Liveness {
            exec: false,
            text: "tcp:127.0.0.1:80".into(),
        });
        web.policy = Policy::OnFailure;
        let mut s = started(vec![web], timing(), t0);
        let every = s.timing.live_interval;
        let mut t = t0;
        for n in 1..=3 {
            t += every;
            assert_eq!(s.next_deadline(), Some(t));
            s.tick(t);
            let acts = actions(&mut s);
            assert!(
                acts.ends_with(&[Action::RunCheck(0, Purpose::Live)]),
                "{acts:?}"
            );
            let verdict = if n == 1 {
                Ok(())
            } else {
                Err("refused".into())
            };
            s.check_done(0, verdict, t);
        }
        t += every;
        s.tick(t);
        actions(&mut s);
        s.check_done(0, Err("refused".into()), t);
        let acts = actions(&mut s);
        assert_eq!(
            signals(&acts),
            [(100, SIGTERM)],
            "3 failures in a row: {acts:?}"
        );
        reap(&mut s, 100, Ending::Signaled(SIGTERM), t);
        close(&mut s, 0, t);
        assert_eq!(
            logs(&mut s),
            [
                "web exited with code 124 (failed its liveness check; killed by SIGTERM); restarting in 1s (restart 1)"
            ]
        );
    }

    #[test]
    fn control_stop_keeps_a_daemon_down_and_start_brings_it_back() {
        let t0 = Instant::now();
        let mut s = running(&["a", "b"], t0);
        s.units[0].spec.policy = Policy::Always;
        assert_eq!(
            s.command(&Command::Stop("a".into()), t0),
            Ok("stopping a".into())
        );
        assert_eq!(signals(&actions(&mut s)), [(100, SIGTERM)]);
        reap(&mut s, 100, Ending::Signaled(SIGTERM), t0);
        close(&mut s, 0, t0);
        assert_eq!(
            logs(&mut s),
            ["a exited with code 0 (stopped by SIGTERM); stopped on request"]
        );
        assert_eq!(
            s.units[0].state,
            State::Stopped,
            "no restart despite always"
        );
        assert!(!over(&mut s, t0), "a stopped daemon does not end the run");
        assert_eq!(s.health(), ["a: stopped"]);
        assert!(s.command(&Command::Stop("a".into()), t0).is_err());
        assert_eq!(
            s.command(&Command::Start("a".into()), t0),
            Ok("starting a".into())
        );
        s.tick(t0);
        let acts = actions(&mut s);
        assert_eq!(spawns(&acts), [0]);
        assert!(
            s.command(&Command::Start("b".into()), t0).is_err(),
            "b runs"
        );
        assert!(s.command(&Command::Stop("ghost".into()), t0).is_err());
    }

    #[test]
    fn control_restart_and_signal() {
        let t0 = Instant::now();
        let mut s = running(&["a", "b"], t0);
        assert!(s.command(&Command::Restart("a".into()), t0).is_ok());
        assert_eq!(signals(&actions(&mut s)), [(100, SIGTERM)]);
        reap(&mut s, 100, Ending::Signaled(SIGTERM), t0);
        close(&mut s, 0, t0);
        s.tick(t0);
        let acts = actions(&mut s);
        assert_eq!(spawns(&acts), [0], "{acts:?}");
        assert_eq!(
            s.command(&Command::Signal("b".into(), SIGHUP), t0),
            Ok("sent SIGHUP to b".into())
        );
        assert_eq!(signals(&actions(&mut s)), [(101, SIGHUP)]);
        s.signal(SIGTERM, t0);
        assert!(
            s.command(&Command::Stop("b".into()), t0).is_err(),
            "shutting down"
        );
    }

    #[test]
    fn control_start_during_a_backoff_starts_now_and_resets_it() {
        let t0 = Instant::now();
        let mut s = running(&["a"], t0);
        s.units[0].spec.policy = Policy::Always;
        // Three quick failures: the next delay is 4s.
        let mut pid = 100;
        let mut t = t0;
        for _ in 0..3 {
            reap(&mut s, pid, Ending::Exited(1), t);
            close(&mut s, 0, t);
            let State::Backoff(at) = s.units[0].state else {
                panic!("not in backoff: {:?}", s.units[0].state);
            };
            t = at;
            s.tick(t);
            pid += 1;
            s.spawned(ChildId::Unit(0), pid, true, t);
            actions(&mut s);
        }
        reap(&mut s, pid, Ending::Exited(1), t);
        close(&mut s, 0, t);
        assert_eq!(s.units[0].state, State::Backoff(t + Duration::from_secs(8)));
        actions(&mut s);
        assert_eq!(
            s.command(&Command::Start("a".into()), t),
            Ok("starting a".into())
        );
        s.tick(t);
        assert_eq!(spawns(&actions(&mut s)), [0], "started at once");
        s.spawned(ChildId::Unit(0), pid + 1, true, t);
        reap(&mut s, pid + 1, Ending::Exited(1), t);
        close(&mut s, 0, t);
        assert_eq!(
            s.units[0].state,
            State::Backoff(t + Duration::from_secs(1)),
            "the backoff starts over"
        );
    }

    #[test]
    fn control_stop_during_a_restart_keeps_the_daemon_down() {
        let t0 = Instant::now();
        let mut s = running(&["a"], t0);
        assert!(s.command(&Command::Restart("a".into()), t0).is_ok());
        assert_eq!(signals(&actions(&mut s)), [(100, SIGTERM)]);
        assert_eq!(
            s.command(&Command::Stop("a".into()), t0),
            Ok("stopping a".into())
        );
        reap(&mut s, 100, Ending::Signaled(SIGTERM), t0);
        close(&mut s, 0, t0);
        s.tick(t0);
        assert_eq!(spawns(&actions(&mut s)), Vec::<usize>::new());
        assert_eq!(s.units[0].state, State::Stopped);
    }

    #[test]
    fn status_shows_every_unit() {
        let t0 = Instant::now();
        let mut s = running(&["a"], t0);
        let v = s.status(t0 + Duration::from_secs(3));
        assert_eq!(v[0].state, State::Ready);
        assert_eq!(v[0].pid, Some(100));
        assert_eq!(v[0].uptime, Some(Duration::from_secs(3)));
        assert!(s.health().is_empty());
        reap(&mut s, 100, Ending::Exited(4), t0);
        close(&mut s, 0, t0);
        let v = s.status(t0);
        assert_eq!(
            (v[0].state, v[0].pid, v[0].code),
            (State::Exited, None, Some(4))
        );
        assert_eq!(s.health(), ["a: exited with code 4"]);
    }

    #[test]
    fn the_shutdown_line_says_what_the_main_program_gets() {
        let t0 = Instant::now();
        let mut main = spec("main", &[]);
        main.kind = super::Kind::Main;
        let mut s = started(vec![main.clone()], timing(), t0);
        actions(&mut s);
        s.signal(SIGINT, t0);
        let acts = actions(&mut s);
        let line = "shutting down (SIGINT); forwarding SIGINT";
        assert!(
            acts.contains(&Action::Log(Level::Info, line.into())),
            "{acts:?}"
        );
        assert_eq!(signals(&acts), [(100, SIGINT)]);
        // Beside a daemon, which gets its SIGTERM once the main program is
        // gone.
        main.after = vec![0];
        let mut s = started(vec![spec("db", &[]), main], timing(), t0);
        spawn_due(&mut s, t0);
        actions(&mut s);
        s.signal(SIGINT, t0);
        let acts = actions(&mut s);
        let line = "shutting down (SIGINT); sending each its stop signal, dependents first";
        assert!(
            acts.contains(&Action::Log(Level::Info, line.into())),
            "{acts:?}"
        );
        assert_eq!(signals(&acts), [(101, SIGINT)]);
    }

    #[test]
    fn a_spawn_failure_that_shuts_down_takes_back_the_rest_of_its_batch() {
        // ghost is not found; web's spawn, asked for in the same batch, is
        // still queued when the shutdown comes: the main program's
        // dependency failed, or ghost is essential. web never starts (a
        // process spawned then would run outside any state and the run
        // would never end).
        let t0 = Instant::now();
        let mut main = spec("main", &[0, 1]);
        main.kind = super::Kind::Main;
        let mut ghost = spec("ghost", &[]);
        ghost.essential = true;
        for specs in [
            vec![spec("ghost", &[]), spec("web", &[]), main],
            vec![ghost, spec("web", &[])],
        ] {
            let mut s = Supervisor::new(specs, timing());
            s.start(t0);
            s.tick(t0);
            let (mut spawned, mut logs) = (Vec::new(), Vec::new());
            // As the event loop does: each action in turn, reporting a
            // spawn before the next.
            while let Some(a) = s.next_action() {
                match a {
                    Action::Spawn(0) => s.spawn_failed(
                        ChildId::Unit(0),
                        exit::NOT_FOUND,
                        "No such file or directory",
                        t0,
                    ),
                    Action::Spawn(i) => spawned.push(i),
                    Action::Log(_, m) => logs.push(m),
                    _ => {}
                }
            }
            assert!(spawned.is_empty(), "{spawned:?} {logs:?}");
            assert!(
                logs.iter().any(|l| l.starts_with("shutting down (")),
                "{logs:?}"
            );
            assert!(!logs.iter().any(|l| l == "starting web"), "{logs:?}");
            assert!(over(&mut s, t0), "the run never ends");
            assert_eq!(s.exit_code(), 127);
        }
    }

    #[test]
    fn spawns_come_in_batches() {
        let t0 = Instant::now();
        let names: Vec<String> = (0..150).map(|i| format!("d{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut s = Supervisor::new(never(&refs), timing());
        s.start(t0);
        s.tick(t0);
        assert_eq!(spawns(&actions(&mut s)).len(), 64);
        assert!(s.has_work());
        // A shutdown between batches: the rest never start.
        s.signal(SIGTERM, t0);
        s.tick(t0);
        assert!(spawns(&actions(&mut s)).is_empty());
    }

    #[test]
    fn seconds_format_like_the_reference() {
        assert_eq!(format_secs(Duration::from_secs(8)), "8s");
        assert_eq!(format_secs(Duration::from_millis(500)), "0.5s");
        assert_eq!(format_secs(Duration::from_millis(1250)), "1.25s");
    }
}
