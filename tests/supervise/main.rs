//! Integration tests: the real sidecar-init binary against real daemons
//! (small `sh` scripts that print `ready` once their traps are set).

mod harness;

mod backpressure;
mod cli;
mod config;
mod control;
mod formats;
mod hostile;
mod mainprog;
mod output;
mod readiness;
mod reaping;
mod restart;
mod signals;
