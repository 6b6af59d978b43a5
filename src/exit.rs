//! Exit-code policy, in one place (SPEC §4).

use std::fmt;

/// sidecar-init's own failure: bad configuration or usage.
pub const USAGE: i32 = 2;
/// A daemon whose command was not found.
pub const NOT_FOUND: i32 = 127;
/// A daemon whose command exists but could not be executed.
pub const NOT_EXECUTABLE: i32 = 126;
/// A daemon that could not be started for want of resources (descriptors,
/// processes, memory): a retry may succeed.
pub const NO_RESOURCES: i32 = 125;
/// A daemon stopped because it was not ready in time or failed its
/// liveness check.
pub const CHECK_FAILED: i32 = 124;
/// sidecar-init's own failure while running (its event loop could not be
/// set up or failed).
pub const INTERNAL: i32 = 1;

/// How a daemon's run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// It exited with this status.
    Exited(i32),
    /// It was killed by this signal number.
    Signaled(i32),
    /// Its command could not be started; the code is 127, 126 or 125.
    NotStarted(i32),
}

impl Ending {
    /// The daemon's code: its exit status, 128+N for death by signal N, 127
    /// or 126 when it could not be started, and 0 for death by the SIGTERM
    /// that sidecar-init forwarded during shutdown (`stopped_by_us`): a
    /// graceful stop is a success.
    pub fn code(self, stopped_by_us: bool) -> i32 {
        match self {
            Ending::Exited(status) => status,
            Ending::Signaled(sig) if sig == nix::libc::SIGTERM && stopped_by_us => 0,
            Ending::Signaled(sig) => 128 + sig,
            Ending::NotStarted(code) => code,
        }
    }
}

impl Ending {
    /// How it ended, in words: `exit status 1`, `killed by SIGTERM`.
    pub fn how(self) -> String {
        match self {
            Ending::Exited(status) => format!("exit status {status}"),
            Ending::Signaled(sig) => format!("killed by {}", signal_name(sig)),
            Ending::NotStarted(NOT_FOUND) => "command not found".into(),
            Ending::NotStarted(NO_RESOURCES) => "could not be started".into(),
            Ending::NotStarted(_) => "command not executable".into(),
        }
    }
}

impl fmt::Display for Ending {
    /// The detail that follows the code in an exit line, if any.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Exited(_) => Ok(()),
            Ending::Signaled(sig) => write!(f, " (killed by {})", signal_name(*sig)),
            Ending::NotStarted(NOT_FOUND) => f.write_str(" (command not found)"),
            Ending::NotStarted(NO_RESOURCES) => f.write_str(" (could not be started)"),
            Ending::NotStarted(_) => f.write_str(" (command not executable)"),
        }
    }
}

/// sidecar-init's exit code: the worst (highest) of the daemons' codes, 0
/// when there are none.
pub fn overall(codes: impl IntoIterator<Item = i32>) -> i32 {
    codes.into_iter().max().unwrap_or(0)
}

/// `SIGTERM` for 15; `signal 99` for numbers without a name.
pub fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => s.as_str().to_string(),
        Err(_) => format!("signal {sig}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::libc::{SIGHUP, SIGINT, SIGKILL, SIGSEGV, SIGTERM};

    #[test]
    fn exit_status_is_the_code() {
        for status in 0..=255 {
            assert_eq!(Ending::Exited(status).code(false), status);
            assert_eq!(Ending::Exited(status).code(true), status);
        }
    }

    #[test]
    fn signal_death_is_128_plus_n() {
        for sig in 1..=64 {
            if sig != SIGTERM {
                assert_eq!(Ending::Signaled(sig).code(false), 128 + sig);
                assert_eq!(Ending::Signaled(sig).code(true), 128 + sig);
            }
        }
        assert_eq!(Ending::Signaled(SIGKILL).code(true), 137);
        assert_eq!(Ending::Signaled(SIGINT).code(true), 130);
        assert_eq!(Ending::Signaled(SIGHUP).code(false), 129);
    }

    #[test]
    fn our_sigterm_during_shutdown_is_success() {
        assert_eq!(Ending::Signaled(SIGTERM).code(true), 0);
        // A SIGTERM that did not come from our shutdown is a failure.
        assert_eq!(Ending::Signaled(SIGTERM).code(false), 143);
    }

    #[test]
    fn spawn_failures_keep_their_codes() {
        assert_eq!(Ending::NotStarted(NOT_FOUND).code(false), 127);
        assert_eq!(Ending::NotStarted(NOT_EXECUTABLE).code(true), 126);
    }

    #[test]
    fn overall_is_the_worst_code() {
        assert_eq!(overall([]), 0);
        assert_eq!(overall([0, 0]), 0);
        assert_eq!(overall([0, 1, 137, 2]), 137);
    }

    #[test]
    fn endings_describe_themselves() {
        assert_eq!(Ending::Exited(3).to_string(), "");
        assert_eq!(
            Ending::Signaled(SIGSEGV).to_string(),
            " (killed by SIGSEGV)"
        );
        assert_eq!(Ending::NotStarted(127).to_string(), " (command not found)");
        assert_eq!(
            Ending::NotStarted(126).to_string(),
            " (command not executable)"
        );
        assert_eq!(signal_name(99), "signal 99");
    }
}
