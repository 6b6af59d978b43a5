//! The supervisor's decisions, as a state machine with no I/O.
//!
//! Events come in (a daemon was spawned or could not be, was reaped, its
//! pipe reached EOF, a signal arrived, time passed); actions come out (spawn,
//! signal a process group, log a line). The event loop in [`crate::runtime`]
//! performs the actions and reports back. Time is passed in, never read, so
//! tests drive it with a fake clock.
//!
//! A daemon is gone — its exit logged, its code counted — once it has been
//! reaped *and* its output pipe reached EOF, or once a bounded drain period
//! after the reap has passed (a grandchild may hold the pipe open forever).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use log::Level;
use nix::libc::{SIGINT, SIGKILL, SIGTERM, SIGWINCH};

use crate::exit::{self, Ending};

/// Something the event loop must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start daemon `i` and report with `spawned` or `spawn_failed`.
    Spawn(usize),
    /// Send `signal` to the process group `pgid`.
    Signal { pgid: i32, signal: i32 },
    /// Write one log line.
    Log(Level, String),
}

/// Signals forwarded to the daemons unchanged, without starting shutdown.
pub const FORWARDED: [i32; 5] = [
    nix::libc::SIGHUP,
    nix::libc::SIGQUIT,
    nix::libc::SIGUSR1,
    nix::libc::SIGUSR2,
    SIGWINCH,
];

#[derive(Debug)]
struct Daemon {
    name: String,
    /// The leader's pid, which is also its process group id; set once spawned.
    pid: Option<i32>,
    /// How the run ended; set when reaped or when the spawn failed.
    ending: Option<Ending>,
    /// When `ending` was set: the drain deadline counts from here.
    ended_at: Option<Instant>,
    /// Its output pipe has not reached EOF yet.
    pipe_open: bool,
    /// sidecar-init sent SIGTERM to it as part of shutdown, while it ran.
    term_forwarded: bool,
    /// Its exit has been logged and its code counts: it is gone.
    gone: bool,
}

impl Daemon {
    /// Whether its process group may still have members worth signalling:
    /// the leader runs, or something still holds the pipe the group shares.
    fn may_have_processes(&self) -> bool {
        self.pid.is_some() && (self.ending.is_none() || self.pipe_open)
    }

    fn code(&self) -> Option<i32> {
        self.ending.map(|e| e.code(self.term_forwarded))
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
    /// SIGTERM to SIGKILL at shutdown.
    grace: Duration,
    /// How long after a reap to wait for its pipe to reach EOF.
    drain: Duration,
    shutdown: Option<Shutdown>,
    actions: VecDeque<Action>,
}

impl Supervisor {
    /// A supervisor for daemons with these names (in start order).
    pub fn new<S: Into<String>>(
        names: impl IntoIterator<Item = S>,
        grace: Duration,
        drain: Duration,
    ) -> Self {
        let daemons = names
            .into_iter()
            .map(|name| Daemon {
                name: name.into(),
                pid: None,
                ending: None,
                ended_at: None,
                pipe_open: false,
                term_forwarded: false,
                gone: false,
            })
            .collect();
        Supervisor {
            daemons,
            grace,
            drain,
            shutdown: None,
            actions: VecDeque::new(),
        }
    }

    /// The next action to perform, in order.
    pub fn next_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn log(&mut self, level: Level, msg: String) {
        self.actions.push_back(Action::Log(level, msg));
    }

    /// Daemon `i`'s name.
    pub fn name(&self, i: usize) -> &str {
        &self.daemons[i].name
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
    pub fn spawned(&mut self, i: usize, pid: i32) {
        let d = &mut self.daemons[i];
        d.pid = Some(pid);
        d.pipe_open = true;
    }

    /// Daemon `i` could not be started; `code` is 127 or 126.
    pub fn spawn_failed(&mut self, i: usize, code: i32, error: &str, now: Instant) {
        let msg = format!("cannot start {}: {error}", self.daemons[i].name);
        self.log(Level::Error, msg);
        let d = &mut self.daemons[i];
        d.ending = Some(Ending::NotStarted(code));
        d.ended_at = Some(now);
        self.settle(i, now);
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
        let d = &mut self.daemons[i];
        d.ending = Some(ending);
        d.ended_at = Some(now);
        self.settle(i, now);
        true
    }

    /// Daemon `i`'s output pipe reached EOF: every line it wrote is out.
    pub fn pipe_closed(&mut self, i: usize, now: Instant) {
        self.daemons[i].pipe_open = false;
        self.settle(i, now);
    }

    /// A signal arrived (SIGCHLD is the event loop's business, not ours).
    pub fn signal(&mut self, sig: i32, now: Instant) {
        let name = exit::signal_name(sig);
        match (sig, &self.shutdown) {
            (SIGTERM | SIGINT, None) => {
                self.log(
                    Level::Info,
                    format!("shutting down ({name}); forwarding SIGTERM"),
                );
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
                    deadline: now + self.grace,
                    killed: false,
                });
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
            self.log(Level::Warn, format!("{why}; SIGKILL on {names}"));
        }
    }

    /// Time has passed: act on every deadline that is due.
    pub fn tick(&mut self, now: Instant) {
        if let Some(s) = &self.shutdown {
            if !s.killed && now >= s.deadline {
                let why = format!("grace ({}) elapsed", format_secs(self.grace));
                self.kill_all(&why);
            }
        }
        for i in 0..self.daemons.len() {
            self.settle(i, now);
        }
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
            .filter(|d| !d.gone && d.pipe_open)
            .filter_map(|d| d.ended_at)
            .map(|t| t + self.drain);
        grace.into_iter().chain(drains).min()
    }

    /// Logs daemon `i`'s exit once it has ended and its output is drained
    /// (or the drain period has passed).
    fn settle(&mut self, i: usize, now: Instant) {
        let d = &self.daemons[i];
        let (Some(ending), Some(ended_at)) = (d.ending, d.ended_at) else {
            return;
        };
        let drained = !d.pipe_open;
        if d.gone || !(drained || now >= ended_at + self.drain) {
            return;
        }
        let code = d.code().expect("an ended daemon has a code");
        let detail = match ending {
            Ending::Signaled(SIGTERM) if code == 0 => " (stopped by SIGTERM)".to_string(),
            other => other.to_string(),
        };
        let held = if drained {
            ""
        } else {
            " (its output pipe is still held open by another process)"
        };
        let name = d.name.clone();
        self.daemons[i].gone = true;
        let msg = if self.shutdown.is_some() {
            format!("{name} exited with code {code}{detail}{held}")
        } else if self.daemons.iter().all(|d| d.gone) {
            format!("{name} exited with code {code}{detail}{held}; no daemons left")
        } else {
            format!(
                "{name} exited with code {code}{detail}{held}; leaving surviving daemons running"
            )
        };
        let level = if code == 0 { Level::Info } else { Level::Warn };
        self.log(level, msg);
    }

    /// Every daemon is gone: sidecar-init may exit.
    pub fn finished(&self) -> bool {
        self.daemons.iter().all(|d| d.gone)
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_some()
    }

    /// The exit code so far: the worst code of the daemons that are gone.
    pub fn exit_code(&self) -> i32 {
        exit::overall(
            self.daemons
                .iter()
                .filter(|d| d.gone)
                .filter_map(Daemon::code),
        )
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
    use nix::libc::{SIGHUP, SIGKILL, SIGUSR1};

    const GRACE: Duration = Duration::from_secs(8);
    const DRAIN: Duration = Duration::from_secs(1);

    /// A supervisor whose daemons `a`, `b`, `c`... have been spawned as
    /// pids 100, 101, 102...
    fn running(names: &[&str], t0: Instant) -> Supervisor {
        let mut s = Supervisor::new(names.iter().copied(), GRACE, DRAIN);
        s.start();
        let mut spawned = 0;
        while let Some(a) = s.next_action() {
            if let Action::Spawn(i) = a {
                s.spawned(i, 100 + i as i32);
                spawned += 1;
            }
        }
        assert_eq!(spawned, names.len());
        let _ = t0;
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
        let mut s = Supervisor::new(["egress", "pipelock"], GRACE, DRAIN);
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
        let mut s = Supervisor::new(["a", "b"], GRACE, DRAIN);
        s.start();
        actions(&mut s);
        s.spawn_failed(0, exit::NOT_FOUND, "No such file or directory", t0);
        s.spawned(1, 101);
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
        let s = Supervisor::new(Vec::<String>::new(), GRACE, DRAIN);
        assert!(s.finished());
        assert_eq!(s.exit_code(), 0);
    }

    #[test]
    fn zero_grace_kills_on_the_next_tick() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(["a"], Duration::ZERO, DRAIN);
        s.start();
        actions(&mut s);
        s.spawned(0, 100);
        s.signal(SIGTERM, t0);
        actions(&mut s);
        assert_eq!(s.next_deadline(), Some(t0));
        s.tick(t0);
        assert_eq!(signals(&actions(&mut s)), [(100, SIGKILL)]);
    }

    #[test]
    fn seconds_format_like_the_reference() {
        assert_eq!(format_secs(Duration::from_secs(8)), "8s");
        assert_eq!(format_secs(Duration::from_millis(500)), "0.5s");
        assert_eq!(format_secs(Duration::from_millis(1250)), "1.25s");
    }
}
