//! Lifecycle events for the operator's `--notify` command: what an event
//! carries, and the bounded queue that keeps at most one command running.
//! No I/O here; the event loop runs the command.

use std::collections::VecDeque;
use std::fmt;

use crate::exit;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A daemon's run ended (its exit line was logged).
    Exit,
    /// A daemon will be started again after a delay.
    Restart,
    /// A daemon failed too often in a row and will not be restarted.
    GiveUp,
    /// Shutdown began.
    Shutdown,
    /// Daemons were SIGKILLed (grace elapsed, or a second SIGINT).
    Kill,
    /// A daemon became ready (its check passed), or a one-shot finished.
    Ready,
}

impl Kind {
    /// The value of `SIDECAR_INIT_EVENT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Exit => "exit",
            Kind::Restart => "restart",
            Kind::GiveUp => "give-up",
            Kind::Shutdown => "shutdown",
            Kind::Kill => "kill",
            Kind::Ready => "ready",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event, as the notify command sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: Kind,
    /// The daemon's name; for `kill`, the names killed, comma-separated;
    /// empty for `shutdown`.
    pub daemon: String,
    /// The daemon's code (exit, restart, give-up).
    pub code: Option<i32>,
    /// The signal that ended the daemon, or that started the shutdown.
    pub signal: Option<i32>,
    /// How many times the daemon has been restarted (including the one
    /// scheduled, for `restart`).
    pub restarts: u32,
    /// The log line that reported the event.
    pub message: String,
}

impl Event {
    /// The `SIDECAR_INIT_EVENT*` variables for this event, with the number
    /// of events dropped since the last notification.
    pub fn env(&self, dropped: u64) -> Vec<(&'static str, String)> {
        let opt = |v: Option<String>| v.unwrap_or_default();
        vec![
            ("SIDECAR_INIT_EVENT", self.kind.to_string()),
            ("SIDECAR_INIT_EVENT_DAEMON", self.daemon.clone()),
            (
                "SIDECAR_INIT_EVENT_CODE",
                opt(self.code.map(|c| c.to_string())),
            ),
            (
                "SIDECAR_INIT_EVENT_SIGNAL",
                opt(self.signal.map(exit::signal_name)),
            ),
            ("SIDECAR_INIT_EVENT_RESTARTS", self.restarts.to_string()),
            ("SIDECAR_INIT_EVENT_MESSAGE", self.message.clone()),
            ("SIDECAR_INIT_EVENT_DROPPED", dropped.to_string()),
        ]
    }
}

/// Events waiting for the notify command, at most `capacity` of them; the
/// command runs for one event at a time.
#[derive(Debug)]
pub struct Queue {
    pending: VecDeque<Event>,
    capacity: usize,
    /// Events refused since the last notification started.
    dropped: u64,
    /// A notify command is running.
    busy: bool,
}

/// How many events may wait while a notify command runs.
pub const DEFAULT_CAPACITY: usize = 64;

impl Queue {
    pub fn new(capacity: usize) -> Queue {
        Queue {
            pending: VecDeque::new(),
            capacity,
            dropped: 0,
            busy: false,
        }
    }

    /// Queues an event, or counts it as dropped when the queue is full;
    /// the queued event, for the caller to fill in.
    pub fn push(&mut self, event: Event) -> Option<&mut Event> {
        if self.pending.len() < self.capacity {
            self.pending.push_back(event);
            self.pending.back_mut()
        } else {
            self.dropped += 1;
            None
        }
    }

    /// The next event to run the command for, with the count of events
    /// dropped before it, if the command is idle. Marks it busy.
    pub fn start_next(&mut self) -> Option<(Event, u64)> {
        if self.busy {
            return None;
        }
        let event = self.pending.pop_front()?;
        self.busy = true;
        Some((event, std::mem::take(&mut self.dropped)))
    }

    /// The running command finished (or could not start).
    pub fn finished(&mut self) {
        self.busy = false;
    }

    /// Events waiting, and events dropped since the last notification.
    pub fn backlog(&self) -> (usize, u64) {
        (self.pending.len(), self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u32) -> Event {
        Event {
            kind: Kind::Exit,
            daemon: format!("d{n}"),
            code: Some(1),
            signal: None,
            restarts: n,
            message: String::new(),
        }
    }

    #[test]
    fn one_at_a_time_in_order() {
        let mut q = Queue::new(8);
        q.push(event(1));
        q.push(event(2));
        let (e, dropped) = q.start_next().unwrap();
        assert_eq!((e.daemon.as_str(), dropped), ("d1", 0));
        assert!(q.start_next().is_none(), "a second command while one runs");
        q.finished();
        assert_eq!(q.start_next().unwrap().0.daemon, "d2");
        q.finished();
        assert!(q.start_next().is_none());
    }

    #[test]
    fn overflow_is_counted_and_reported_once() {
        let mut q = Queue::new(2);
        for n in 0..5 {
            q.push(event(n));
        }
        assert_eq!(q.backlog(), (2, 3));
        let (_, dropped) = q.start_next().unwrap();
        assert_eq!(dropped, 3);
        q.finished();
        let (_, dropped) = q.start_next().unwrap();
        assert_eq!(dropped, 0);
    }

    #[test]
    fn environment_names_every_field() {
        let e = Event {
            kind: Kind::Restart,
            daemon: "egress".into(),
            code: Some(137),
            signal: Some(9),
            restarts: 3,
            message: "egress exited".into(),
        };
        let env = e.env(2);
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("SIDECAR_INIT_EVENT"), Some("restart"));
        assert_eq!(get("SIDECAR_INIT_EVENT_DAEMON"), Some("egress"));
        assert_eq!(get("SIDECAR_INIT_EVENT_CODE"), Some("137"));
        assert_eq!(get("SIDECAR_INIT_EVENT_SIGNAL"), Some("SIGKILL"));
        assert_eq!(get("SIDECAR_INIT_EVENT_RESTARTS"), Some("3"));
        assert_eq!(get("SIDECAR_INIT_EVENT_MESSAGE"), Some("egress exited"));
        assert_eq!(get("SIDECAR_INIT_EVENT_DROPPED"), Some("2"));
        let shutdown = Event {
            kind: Kind::Shutdown,
            daemon: String::new(),
            code: None,
            ..e
        };
        assert_eq!(
            shutdown.env(0)[2],
            ("SIDECAR_INIT_EVENT_CODE", String::new())
        );
    }
}
