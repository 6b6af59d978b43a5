//! The supervisor's decisions, as a state machine with no I/O.
//!
//! Events come in (a daemon was spawned or could not be, was reaped, its
//! pipe reached EOF, a signal arrived, time passed); actions come out (spawn,
//! signal a process group, log a line, notify the operator). The event loop
//! in [`crate::runtime`] performs the actions and reports back. Time is
//! passed in, never read, so tests drive it with a fake clock.
//!
//! A daemon's run is over — its exit logged, its code recorded — once it has
//! been reaped *and* its output pipe reached EOF, or once a bounded drain
//! period after the reap has passed (a grandchild may hold the pipe open
//! forever). Then its restart policy decides: it is gone, or it starts again
//! after a backoff delay (a deadline like any other), or it is given up.
//! Once shutdown begins nothing is restarted and pending restarts are
//! cancelled.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use log::Level;
use nix::libc::{SIGINT, SIGKILL, SIGTERM, SIGWINCH};

use crate::exit::{self, Ending};
use crate::notify::{Event, Kind};

/// Something the event loop must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start daemon `i` and report with `spawned` or `spawn_failed`.
    Spawn(usize),
    /// Send `signal` to the process group `pgid`.
    Signal { pgid: i32, signal: i32 },
    /// Write one log line.
    Log(Level, String),
    /// Tell the operator's notify command (if any) about an event.
    Notify(Event),
}

/// Signals forwarded to the daemons unchanged, without starting shutdown.
pub const FORWARDED: [i32; 5] = [
    nix::libc::SIGHUP,
    nix::libc::SIGQUIT,
    nix::libc::SIGUSR1,
    nix::libc::SIGUSR2,
    SIGWINCH,
];

/// When a daemon whose run ended outside shutdown is started again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Never (the default): it stays gone.
    #[default]
    Never,
    /// When its code is not 0 (a non-zero exit, death by a signal, or a
    /// command that could not be started).
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
    /// SIGTERM to SIGKILL at shutdown.
    pub grace: Duration,
    /// How long after a reap to wait for its pipe to reach EOF.
    pub drain: Duration,
    /// How much longer that wait may grow while stdout is stalled: the
    /// drain clock stops while sidecar-init cannot read pipes for want of
    /// room (see [`Supervisor::output_stalled`]), up to this much.
    pub drain_stall_max: Duration,
    pub backoff: Backoff,
}

#[derive(Debug)]
struct Daemon {
    name: String,
    policy: Policy,
    /// The leader's pid, which is also its process group id; set once spawned.
    pid: Option<i32>,
    /// When the current run started.
    started_at: Option<Instant>,
    /// How the current run ended; set when reaped or when the spawn failed.
    ending: Option<Ending>,
    /// When `ending` was set.
    ended_at: Option<Instant>,
    /// When its pipe stops being waited for: `drain` after `ended_at`,
    /// pushed back by the time stdout was stalled (up to `drain_stall_max`).
    drain_by: Option<Instant>,
    /// The current run's output pipe has not reached EOF yet.
    pipe_open: bool,
    /// sidecar-init sent SIGTERM to it as part of shutdown, while it ran.
    term_forwarded: bool,
    /// The code of its last finished run: what counts for the exit code.
    code: Option<i32>,
    /// Its last run is over and it will not run again: it is gone.
    gone: bool,
    /// Its last run is over and it starts again at this instant.
    restart_at: Option<Instant>,
    /// Restarts so far, in all.
    restarts: u32,
    /// Restarts in a row whose runs were each shorter than the reset time.
    streak: u32,
}

impl Daemon {
    /// Whether its process group may still have members worth signalling:
    /// the leader runs, or something still holds the pipe the group shares.
    fn may_have_processes(&self) -> bool {
        self.pid.is_some() && (self.ending.is_none() || self.pipe_open)
    }

    /// The current run is over (logged) and has not been replaced yet.
    fn run_over(&self) -> bool {
        self.gone || self.restart_at.is_some()
    }
}

#[derive(Debug)]
struct Shutdown {
    /// When unresponsive daemons are SIGKILLed.
    deadline: Instant,
    /// SIGKILL has been sent (grace elapsed or a second SIGINT).
    killed: bool,
}

/// The supervisor's whole state.
#[derive(Debug)]
pub struct Supervisor {
    daemons: Vec<Daemon>,
    timing: Timing,
    shutdown: Option<Shutdown>,
    actions: VecDeque<Action>,
    /// Since when stdout has been stalled (the output buffer full, so no
    /// pipe is read): drain clocks stand still meanwhile.
    stalled_since: Option<Instant>,
}

impl Supervisor {
    /// A supervisor for these daemons (in start order) and their policies.
    pub fn new<S: Into<String>>(
        daemons: impl IntoIterator<Item = (S, Policy)>,
        timing: Timing,
    ) -> Self {
        let daemons = daemons
            .into_iter()
            .map(|(name, policy)| Daemon {
                name: name.into(),
                policy,
                pid: None,
                started_at: None,
                ending: None,
                ended_at: None,
                drain_by: None,
                pipe_open: false,
                term_forwarded: false,
                code: None,
                gone: false,
                restart_at: None,
                restarts: 0,
                streak: 0,
            })
            .collect();
        Supervisor {
            daemons,
            timing,
            shutdown: None,
            actions: VecDeque::new(),
            stalled_since: None,
        }
    }

    /// The next action to perform, in order.
    pub fn next_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn log(&mut self, level: Level, msg: String) {
        self.actions.push_back(Action::Log(level, msg));
    }

    fn notify(&mut self, kind: Kind, daemon: String, message: &str) -> &mut Event {
        self.actions.push_back(Action::Notify(Event {
            kind,
            daemon,
            code: None,
            signal: None,
            restarts: 0,
            message: message.to_string(),
        }));
        match self.actions.back_mut() {
            Some(Action::Notify(e)) => e,
            _ => unreachable!("just pushed"),
        }
    }

    /// Starts every daemon, in table order.
    pub fn start(&mut self) {
        for i in 0..self.daemons.len() {
            let msg = format!("starting {}", self.daemons[i].name);
            self.log(Level::Info, msg);
            self.actions.push_back(Action::Spawn(i));
        }
    }

    /// Daemon `i` runs as `pid` (its own process group), writing to a pipe.
    pub fn spawned(&mut self, i: usize, pid: i32, now: Instant) {
        let d = &mut self.daemons[i];
        d.pid = Some(pid);
        d.started_at = Some(now);
        d.pipe_open = true;
    }

    /// Daemon `i` could not be started; `code` is 127 or 126.
    pub fn spawn_failed(&mut self, i: usize, code: i32, error: &str, now: Instant) {
        let msg = format!("cannot start {}: {error}", self.daemons[i].name);
        self.log(Level::Error, msg);
        self.daemons[i].started_at = Some(now);
        self.run_ended(i, Ending::NotStarted(code), now);
    }

    /// `pid` was reaped. Returns false when it is none of the daemons (an
    /// adopted orphan, or a grandchild): such a pid changes nothing.
    pub fn reaped(&mut self, pid: i32, ending: Ending, now: Instant) -> bool {
        let Some(i) = self
            .daemons
            .iter()
            .position(|d| d.pid == Some(pid) && d.ending.is_none())
        else {
            return false;
        };
        self.run_ended(i, ending, now);
        true
    }

    /// Daemon `i`'s run ended: its pipe is waited for from now on.
    fn run_ended(&mut self, i: usize, ending: Ending, now: Instant) {
        let d = &mut self.daemons[i];
        d.ending = Some(ending);
        d.ended_at = Some(now);
        d.drain_by = Some(now + self.timing.drain);
        self.settle(i, now);
    }

    /// Daemon `i`'s output pipe reached EOF: every line it wrote is out.
    pub fn pipe_closed(&mut self, i: usize, now: Instant) {
        self.daemons[i].pipe_open = false;
        self.settle(i, now);
    }

    /// Whether stdout is stalled: the output buffer is full and no pipe is
    /// read until the reader catches up. A daemon's last lines may then
    /// still sit in its pipe, so its drain clock stops (up to
    /// `drain_stall_max` in all): a slow log reader must not move a
    /// daemon's exit line ahead of its output.
    pub fn output_stalled(&mut self, stalled: bool, now: Instant) {
        match (stalled, self.stalled_since) {
            (true, None) => self.stalled_since = Some(now),
            (false, Some(since)) => {
                self.stalled_since = None;
                let limit = self.timing.drain + self.timing.drain_stall_max;
                for d in &mut self.daemons {
                    if let (Some(by), Some(ended)) = (d.drain_by, d.ended_at) {
                        // Only the stall after its exit counts, and only if
                        // its wait was not already over when the stall began.
                        if by > since {
                            let paused = now.saturating_duration_since(since.max(ended));
                            d.drain_by = Some((by + paused).min(ended + limit));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// When daemon `d`'s pipe stops being waited for. While stdout is
    /// stalled its clock stands still, so that is no sooner than the limit.
    fn drain_deadline(&self, d: &Daemon) -> Option<Instant> {
        let (by, ended) = (d.drain_by?, d.ended_at?);
        match self.stalled_since {
            Some(since) if by > since => {
                Some(ended + self.timing.drain + self.timing.drain_stall_max)
            }
            _ => Some(by),
        }
    }

    /// A signal arrived (SIGCHLD is the event loop's business, not ours).
    pub fn signal(&mut self, sig: i32, now: Instant) {
        let name = exit::signal_name(sig);
        match (sig, &self.shutdown) {
            (SIGTERM | SIGINT, None) => {
                let msg = format!("shutting down ({name}); forwarding SIGTERM");
                self.log(Level::Info, msg.clone());
                self.notify(Kind::Shutdown, String::new(), &msg).signal = Some(sig);
                for d in &mut self.daemons {
                    if d.may_have_processes() {
                        d.term_forwarded |= d.ending.is_none();
                        let pgid = d.pid.expect("a daemon with processes has a pid");
                        self.actions.push_back(Action::Signal {
                            pgid,
                            signal: SIGTERM,
                        });
                    }
                }
                self.shutdown = Some(Shutdown {
                    deadline: now + self.timing.grace,
                    killed: false,
                });
                self.cancel_restarts();
            }
            (SIGINT, Some(_)) => self.kill_all("second SIGINT"),
            (SIGTERM, Some(_)) => {
                self.log(Level::Debug, "SIGTERM again; already shutting down".into());
            }
            _ if FORWARDED.contains(&sig) => {
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

    /// Shutdown wins: daemons waiting to restart are gone, with the code of
    /// their last run.
    fn cancel_restarts(&mut self) {
        let mut cancelled = Vec::new();
        for d in &mut self.daemons {
            if d.restart_at.take().is_some() {
                d.gone = true;
                cancelled.push(d.name.as_str());
            }
        }
        if !cancelled.is_empty() {
            let msg = format!("cancelled the pending restart of {}", cancelled.join(", "));
            self.log(Level::Info, msg);
        }
    }

    /// Sends `sig` to every group that may have processes; their names.
    fn forward(&mut self, sig: i32) -> String {
        let mut names = Vec::new();
        for d in &self.daemons {
            if d.may_have_processes() {
                let pgid = d.pid.expect("a daemon with processes has a pid");
                self.actions.push_back(Action::Signal { pgid, signal: sig });
                names.push(d.name.as_str());
            }
        }
        names.join(", ")
    }

    /// SIGKILL every group that may have processes, saying why.
    fn kill_all(&mut self, why: &str) {
        if let Some(s) = &mut self.shutdown {
            s.killed = true;
        }
        let names = self.forward(SIGKILL);
        if !names.is_empty() {
            let msg = format!("{why}; SIGKILL on {names}");
            self.log(Level::Warn, msg.clone());
            self.notify(Kind::Kill, names, &msg).signal = Some(SIGKILL);
        }
    }

    /// Time has passed: act on every deadline that is due.
    pub fn tick(&mut self, now: Instant) {
        if let Some(s) = &self.shutdown {
            if !s.killed && now >= s.deadline {
                let why = format!("grace ({}) elapsed", format_secs(self.timing.grace));
                self.kill_all(&why);
            }
        }
        for i in 0..self.daemons.len() {
            self.settle(i, now);
            if self.daemons[i].restart_at.is_some_and(|t| now >= t) {
                self.restart(i);
            }
        }
    }

    /// Starts daemon `i`'s next run.
    fn restart(&mut self, i: usize) {
        let d = &mut self.daemons[i];
        d.restart_at = None;
        d.pid = None;
        d.started_at = None;
        d.ending = None;
        d.ended_at = None;
        d.drain_by = None;
        d.pipe_open = false;
        d.term_forwarded = false;
        let msg = format!("restarting {} (restart {})", d.name, d.restarts);
        self.log(Level::Info, msg);
        self.actions.push_back(Action::Spawn(i));
    }

    /// The earliest instant at which [`tick`](Self::tick) has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let grace = self
            .shutdown
            .as_ref()
            .filter(|s| !s.killed)
            .map(|s| s.deadline);
        let drains = self
            .daemons
            .iter()
            .filter(|d| !d.run_over() && d.pipe_open)
            .filter_map(|d| self.drain_deadline(d));
        let restarts = self.daemons.iter().filter_map(|d| d.restart_at);
        grace.into_iter().chain(drains).chain(restarts).min()
    }

    /// Ends daemon `i`'s run once it has ended and its output is drained
    /// (or the drain period has passed): logs it, records its code and
    /// decides whether it runs again.
    fn settle(&mut self, i: usize, now: Instant) {
        let d = &self.daemons[i];
        let (Some(ending), Some(ended_at)) = (d.ending, d.ended_at) else {
            return;
        };
        let drained = !d.pipe_open;
        let deadline = self.drain_deadline(d);
        let due = deadline.is_some_and(|t| now >= t);
        // Waited the longest a stall may add: the reader, not a process
        // holding the pipe, is why its output is not all out.
        let stalled_out =
            deadline == Some(ended_at + self.timing.drain + self.timing.drain_stall_max);
        if d.run_over() || !(drained || due) {
            return;
        }
        let code = ending.code(d.term_forwarded);
        let detail = match ending {
            Ending::Signaled(SIGTERM) if code == 0 => " (stopped by SIGTERM)".to_string(),
            other => other.to_string(),
        };
        let held = if drained {
            ""
        } else if stalled_out {
            " (not all its output is out: stdout is not being read)"
        } else {
            " (its output pipe is still held open by another process)"
        };
        let ran = ended_at.saturating_duration_since(d.started_at.unwrap_or(ended_at));
        let name = d.name.clone();
        let exited = format!("{name} exited with code {code}{detail}{held}");
        let signal = match ending {
            Ending::Signaled(sig) => Some(sig),
            _ => None,
        };
        let backoff = self.timing.backoff;
        let shutting_down = self.shutdown.is_some();

        let d = &mut self.daemons[i];
        d.code = Some(code);
        if ran >= backoff.reset {
            d.streak = 0;
        }
        let wants_restart = !shutting_down && d.policy.wants_restart(code);
        let give_up = wants_restart && backoff.max_restarts.is_some_and(|max| d.streak >= max);
        let (level, tail, kind) = if wants_restart && !give_up {
            d.streak += 1;
            d.restarts += 1;
            let delay = backoff.delay_for(d.streak);
            d.restart_at = Some(now + delay);
            let tail = format!(
                "; restarting in {} (restart {})",
                format_secs(delay),
                d.restarts
            );
            (Level::Warn, tail, Some(Kind::Restart))
        } else {
            d.gone = true;
            let level = if code == 0 { Level::Info } else { Level::Warn };
            let tail = if give_up {
                format!("; giving up after {} quick restarts in a row", d.streak)
            } else if shutting_down {
                String::new()
            } else if self.daemons.iter().all(|d| d.gone) {
                "; no daemons left".to_string()
            } else {
                "; leaving surviving daemons running".to_string()
            };
            (level, tail, give_up.then_some(Kind::GiveUp))
        };
        let restarts = self.daemons[i].restarts;
        let msg = format!("{exited}{tail}");
        self.log(level, msg.clone());
        for kind in std::iter::once(Kind::Exit).chain(kind) {
            let e = self.notify(kind, name.clone(), &msg);
            e.code = Some(code);
            e.signal = signal;
            e.restarts = restarts;
        }
    }

    /// Every daemon is gone (none will be restarted): sidecar-init may exit.
    pub fn finished(&self) -> bool {
        self.daemons.iter().all(|d| d.gone)
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_some()
    }

    /// The exit code so far: the worst over the daemons of their last
    /// finished run's code.
    pub fn exit_code(&self) -> i32 {
        exit::overall(self.daemons.iter().filter_map(|d| d.code))
    }
}

/// `8s`, `0.5s`, `1.25s`.
pub fn format_secs(d: Duration) -> String {
    let text = format!("{:.3}", d.as_secs_f64());
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}s")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::{Event, Kind};
    use nix::libc::{SIGHUP, SIGKILL, SIGUSR1};

    const GRACE: Duration = Duration::from_secs(8);
    const DRAIN: Duration = Duration::from_secs(1);
    const STALL_MAX: Duration = Duration::from_secs(5);

    /// A supervisor whose daemons `a`, `b`, `c`... have been spawned as
    /// pids 100, 101, 102...
    fn timing() -> Timing {
        Timing {
            grace: GRACE,
            drain: DRAIN,
            drain_stall_max: STALL_MAX,
            backoff: Backoff::default(),
        }
    }

    fn never(names: &[&str]) -> Vec<(String, Policy)> {
        names
            .iter()
            .map(|n| (n.to_string(), Policy::Never))
            .collect()
    }

    fn running(names: &[&str], t0: Instant) -> Supervisor {
        let mut s = Supervisor::new(never(names), timing());
        s.start();
        let mut spawned = 0;
        while let Some(a) = s.next_action() {
            if let Action::Spawn(i) = a {
                s.spawned(i, 100 + i as i32, t0);
                spawned += 1;
            }
        }
        assert_eq!(spawned, names.len());
        s
    }

    fn actions(s: &mut Supervisor) -> Vec<Action> {
        std::iter::from_fn(|| s.next_action()).collect()
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
            .collect()
    }

    #[test]
    fn start_spawns_in_table_order() {
        let mut s = Supervisor::new(never(&["egress", "pipelock"]), timing());
        s.start();
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
        assert!(s.reaped(100, Ending::Exited(3), t0));
        assert!(
            logs(&mut s).is_empty(),
            "pipe still open: output may follow"
        );
        s.pipe_closed(0, t0);
        assert_eq!(
            logs(&mut s),
            ["a exited with code 3; leaving surviving daemons running"]
        );
        assert!(!s.finished());
        // EOF first, then the reap, works too.
        s.pipe_closed(1, t0);
        assert!(logs(&mut s).is_empty());
        assert!(s.reaped(101, Ending::Exited(0), t0));
        assert_eq!(logs(&mut s), ["b exited with code 0; no daemons left"]);
        assert!(s.finished());
        assert_eq!(s.exit_code(), 3);
    }

    #[test]
    fn a_held_pipe_is_waited_for_only_until_the_drain_deadline() {
        let t0 = Instant::now();
        let mut s = running(&["a"], t0);
        s.reaped(100, Ending::Exited(0), t0);
        assert_eq!(s.next_deadline(), Some(t0 + DRAIN));
        s.tick(t0 + DRAIN - Duration::from_millis(1));
        assert!(!s.finished());
        s.tick(t0 + DRAIN);
        assert_eq!(
            logs(&mut s),
            [
                "a exited with code 0 (its output pipe is still held open by another process); no daemons left"
            ]
        );
        assert!(s.finished());
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn a_stalled_stdout_stops_the_drain_clock() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = running(&["a"], t0);
        s.reaped(100, Ending::Exited(0), t0);
        s.output_stalled(true, t0 + ms(400));
        // Stalled: the deadline can come no sooner than the limit.
        assert_eq!(s.next_deadline(), Some(t0 + DRAIN + STALL_MAX));
        s.tick(t0 + ms(3000));
        assert!(!s.finished(), "the drain clock ran while stalled");
        // 2.6 s stalled: the 600 ms left of the drain start over from here.
        s.output_stalled(false, t0 + ms(3000));
        assert_eq!(s.next_deadline(), Some(t0 + ms(3600)));
        s.tick(t0 + ms(3599));
        assert!(!s.finished());
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
        s.reaped(100, Ending::Exited(0), t0);
        s.output_stalled(true, t0);
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
        s.reaped(100, Ending::Exited(0), t0);
        s.output_stalled(true, t0 + ms(200));
        s.output_stalled(false, t0 + ms(700));
        assert_eq!(s.next_deadline(), Some(t0 + ms(1500)));
        s.output_stalled(true, t0 + ms(1000));
        s.output_stalled(false, t0 + ms(1400));
        assert_eq!(s.next_deadline(), Some(t0 + ms(1900)));
        s.tick(t0 + ms(1899));
        assert!(!s.finished());
        s.output_stalled(true, t0 + ms(1500));
        s.output_stalled(false, t0 + ms(9000));
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
        s.output_stalled(true, t0);
        s.reaped(100, Ending::Exited(0), t0 + ms(4900));
        s.output_stalled(false, t0 + ms(5000));
        assert_eq!(s.next_deadline(), Some(t0 + ms(6000)));
    }

    #[test]
    fn a_drain_due_before_the_stall_is_not_extended() {
        let t0 = Instant::now();
        let mut s = running(&["a"], t0);
        s.reaped(100, Ending::Exited(0), t0);
        s.output_stalled(true, t0 + DRAIN + Duration::from_millis(5));
        assert_eq!(s.next_deadline(), Some(t0 + DRAIN));
        s.tick(t0 + DRAIN + Duration::from_millis(5));
        assert!(s.finished());
    }

    #[test]
    fn a_pipe_reaching_eof_ends_the_wait_even_while_stalled() {
        let t0 = Instant::now();
        let mut s = running(&["a"], t0);
        s.output_stalled(true, t0);
        s.reaped(100, Ending::Exited(0), t0);
        s.pipe_closed(0, t0 + Duration::from_millis(10));
        assert_eq!(logs(&mut s), ["a exited with code 0; no daemons left"]);
        assert!(s.finished());
    }

    #[test]
    fn unknown_pids_are_not_daemons() {
        let t0 = Instant::now();
        let mut s = running(&["a"], t0);
        assert!(!s.reaped(4242, Ending::Exited(1), t0));
        assert!(actions(&mut s).is_empty());
        // A daemon's pid reaped twice (pid reuse by an orphan) counts once.
        s.pipe_closed(0, t0);
        assert!(s.reaped(100, Ending::Exited(0), t0));
        assert!(!s.reaped(100, Ending::Exited(9), t0));
        assert_eq!(s.exit_code(), 0);
    }

    #[test]
    fn crash_without_shutdown_leaves_the_others_running() {
        let t0 = Instant::now();
        let mut s = running(&["a", "b"], t0);
        s.pipe_closed(0, t0);
        s.reaped(100, Ending::Exited(1), t0);
        let acts = actions(&mut s);
        assert!(
            signals(&acts).is_empty(),
            "nobody else is signalled: {acts:?}"
        );
        assert!(!s.finished());
        assert!(!s.shutting_down());
    }

    #[test]
    fn crash_then_sigterm_surfaces_the_crash_code() {
        let t0 = Instant::now();
        let mut s = running(&["a", "b"], t0);
        s.pipe_closed(0, t0);
        s.reaped(100, Ending::Exited(1), t0);
        actions(&mut s);
        s.signal(SIGTERM, t0);
        let acts = actions(&mut s);
        assert_eq!(signals(&acts), [(101, SIGTERM)]);
        s.pipe_closed(1, t0);
        s.reaped(101, Ending::Signaled(SIGTERM), t0);
        assert_eq!(logs(&mut s), ["b exited with code 0 (stopped by SIGTERM)"]);
        assert!(s.finished());
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
            s.pipe_closed(i, t0);
            s.reaped(100 + i as i32, ending, t0);
        }
        assert!(s.finished());
        assert_eq!(s.exit_code(), 0);
    }

    #[test]
    fn sigterm_from_elsewhere_is_a_failure() {
        let t0 = Instant::now();
        let mut s = running(&["a", "b"], t0);
        s.pipe_closed(0, t0);
        s.reaped(100, Ending::Signaled(SIGTERM), t0);
        assert_eq!(
            logs(&mut s),
            ["a exited with code 143 (killed by SIGTERM); leaving surviving daemons running"]
        );
        // Shutdown later does not turn that death into a graceful stop.
        s.signal(SIGTERM, t0);
        s.pipe_closed(1, t0);
        s.reaped(101, Ending::Signaled(SIGTERM), t0);
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
        s.pipe_closed(1, t0);
        s.reaped(101, Ending::Exited(0), t0);
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
        assert_eq!(s.next_deadline(), None);
        for i in [0, 2] {
            s.pipe_closed(i, t0 + GRACE);
            s.reaped(100 + i as i32, Ending::Signaled(SIGKILL), t0 + GRACE);
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
        assert_eq!(s.next_deadline(), None, "no grace timer after SIGKILL");
    }

    #[test]
    fn forwarded_signals_do_not_start_shutdown() {
        let t0 = Instant::now();
        let mut s = running(&["a", "b"], t0);
        for sig in FORWARDED {
            s.signal(sig, t0);
            assert_eq!(signals(&actions(&mut s)), [(100, sig), (101, sig)]);
        }
        assert!(!s.shutting_down());
        // A dead daemon whose group is empty is not signalled.
        s.pipe_closed(0, t0);
        s.reaped(100, Ending::Exited(0), t0);
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
        s.reaped(100, Ending::Exited(0), t0); // leader gone, pipe open
        s.signal(SIGUSR1, t0);
        assert_eq!(signals(&actions(&mut s)), [(100, SIGUSR1)]);
    }

    #[test]
    fn spawn_failure_is_one_daemon_failing() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(never(&["a", "b"]), timing());
        s.start();
        actions(&mut s);
        s.spawn_failed(0, exit::NOT_FOUND, "No such file or directory", t0);
        s.spawned(1, 101, t0);
        assert_eq!(
            logs(&mut s),
            [
                "cannot start a: No such file or directory",
                "a exited with code 127 (command not found); leaving surviving daemons running"
            ]
        );
        assert!(!s.finished());
        s.signal(SIGTERM, t0);
        assert_eq!(signals(&actions(&mut s)), [(101, SIGTERM)]);
        s.pipe_closed(1, t0);
        s.reaped(101, Ending::Signaled(SIGTERM), t0);
        assert_eq!(s.exit_code(), 127);
    }

    #[test]
    fn no_daemons_means_finished_with_zero() {
        let s = Supervisor::new(never(&[]), timing());
        assert!(s.finished());
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
        s.start();
        actions(&mut s);
        s.spawned(0, 100, t0);
        s.signal(SIGTERM, t0);
        actions(&mut s);
        assert_eq!(s.next_deadline(), Some(t0));
        s.tick(t0);
        assert_eq!(signals(&actions(&mut s)), [(100, SIGKILL)]);
    }

    // --- restarts ---

    fn with_policy(policy: Policy, backoff: Backoff, t0: Instant) -> Supervisor {
        let mut s = Supervisor::new(
            vec![("a".to_string(), policy), ("b".to_string(), Policy::Never)],
            Timing {
                backoff,
                ..timing()
            },
        );
        s.start();
        while let Some(a) = s.next_action() {
            if let Action::Spawn(i) = a {
                s.spawned(i, 100 + i as i32, t0);
            }
        }
        s
    }

    /// Daemon 0 ends its run (reaped as `pid`, pipe closed) at `t`.
    fn end_run(s: &mut Supervisor, pid: i32, ending: Ending, t: Instant) {
        s.pipe_closed(0, t);
        assert!(s.reaped(pid, ending, t), "pid {pid} is daemon a");
    }

    /// Runs the clock to `t` and returns the pid daemon 0 was respawned as.
    fn respawn(s: &mut Supervisor, t: Instant, pid: i32) -> Vec<String> {
        s.tick(t);
        let acts = actions(s);
        assert!(
            acts.contains(&Action::Spawn(0)),
            "no respawn at {t:?}: {acts:?}"
        );
        s.spawned(0, pid, t);
        acts.into_iter()
            .filter_map(|a| match a {
                Action::Log(_, m) => Some(m),
                _ => None,
            })
            .collect()
    }

    fn events(acts: &[Action]) -> Vec<Event> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Notify(e) => Some(e.clone()),
                _ => None,
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
            // Nothing happens before the deadline: no respawn, no work.
            s.tick(at - Duration::from_millis(1));
            assert!(actions(&mut s).is_empty());
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
        end_run(&mut s, 120, Ending::Exited(1), t0 + Duration::from_secs(5));
        let acts = actions(&mut s);
        assert!(acts.contains(&Action::Log(
            Level::Warn,
            "a exited with code 1; giving up after 2 quick restarts in a row".into()
        )));
        let kinds: Vec<Kind> = events(&acts).iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [Kind::Exit, Kind::GiveUp]);
        assert_eq!(s.next_deadline(), None);
        // Given up means gone: with b gone too, the supervisor is finished.
        s.pipe_closed(1, t0);
        s.reaped(101, Ending::Exited(0), t0);
        assert!(s.finished());
        assert_eq!(s.exit_code(), 1);
    }

    #[test]
    fn a_pending_restart_keeps_the_supervisor_running() {
        let t0 = Instant::now();
        let mut s = with_policy(Policy::Always, Backoff::default(), t0);
        s.pipe_closed(1, t0);
        s.reaped(101, Ending::Exited(0), t0);
        end_run(&mut s, 100, Ending::Exited(0), t0);
        actions(&mut s);
        assert!(!s.finished(), "a will run again");
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
        s.pipe_closed(1, t0);
        s.reaped(101, Ending::Signaled(SIGTERM), t0);
        assert!(s.finished());
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
        s.pipe_closed(1, t0);
        s.reaped(101, Ending::Exited(0), t0);
        assert!(s.finished());
        assert_eq!(s.exit_code(), 0, "the first run's 5 was superseded");
    }

    #[test]
    fn events_carry_what_happened() {
        let t0 = Instant::now();
        let mut s = with_policy(Policy::OnFailure, Backoff::default(), t0);
        end_run(&mut s, 100, Ending::Signaled(nix::libc::SIGKILL), t0);
        let ev = events(&actions(&mut s));
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
        let ev = events(&actions(&mut s));
        assert_eq!(ev.len(), 1);
        assert_eq!(
            (ev[0].kind, ev[0].signal, ev[0].daemon.as_str()),
            (Kind::Shutdown, Some(SIGINT), "")
        );
        s.signal(SIGINT, t0);
        let ev = events(&actions(&mut s));
        assert_eq!((ev[0].kind, ev[0].daemon.as_str()), (Kind::Kill, "b"));
    }

    #[test]
    fn seconds_format_like_the_reference() {
        assert_eq!(format_secs(Duration::from_secs(8)), "8s");
        assert_eq!(format_secs(Duration::from_millis(500)), "0.5s");
        assert_eq!(format_secs(Duration::from_millis(1250)), "1.25s");
    }
}
