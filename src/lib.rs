//! sidecar-init: a PID 1 for containers that run several daemons side by side.
//!
//! The pure parts — the daemon table ([`procfile`]), the line splitter
//! ([`lines`]), the output formats ([`format`](mod@format)) and the framing fast path
//! ([`frame`]), the exit-code policy ([`exit`]), the command line
//! ([`config`]) and the supervisor's state machine ([`supervisor`]) — do no
//! I/O and are unit-tested and fuzzed. [`runtime`] is the one event loop
//! that turns their decisions into syscalls, and [`output`] owns stdout.
//! [`probe`] runs socket and file checks on that loop without blocking it.

pub mod check;
pub mod config;
pub mod control;
pub mod exit;
pub mod format;
pub mod frame;
pub mod grammar;
pub mod lines;
pub mod notify;
pub mod output;
pub mod plan;
pub mod probe;
pub mod procfile;
#[doc(hidden)]
pub mod props;
pub mod runtime;
pub mod supervisor;
pub mod users;
