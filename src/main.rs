//! The `sidecar-init` binary: parse, run, map the result to an exit code.

use std::path::Path;
use std::process::ExitCode;

use sidecar_init::config::{self, Config, Request};
use sidecar_init::procfile::{self, DaemonSpec};
use sidecar_init::runtime::{self, Settings};
use sidecar_init::supervisor::Policy;
use sidecar_init::{exit, output};

/// The variable that narrows the daemon table.
const SELECTION_VAR: &str = "CLAUDE_BOTTLE_SIDECAR_DAEMONS";

fn main() -> ExitCode {
    // Before any descriptor of ours exists: nothing inherited may leak into
    // the daemons, and a closed stdout must not be taken by one of ours.
    runtime::sanitize_fds();
    let code = match config::parse(std::env::args_os().skip(1), |k| std::env::var_os(k)) {
        Ok(Request::Help) => {
            print!("{}", config::HELP);
            0
        }
        Ok(Request::Version) => {
            println!("sidecar-init {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Ok(Request::Check(config)) => check(&config),
        Ok(Request::Run(config)) => run(&config),
        Err(e) => fail(&e.to_string()),
    };
    output::write_log_now();
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// Logs one error line; the exit code for bad configuration or usage.
fn fail(msg: &str) -> i32 {
    output::init_logger(log::LevelFilter::Info);
    log::error!("{msg}");
    exit::USAGE
}

fn run(config: &Config) -> i32 {
    output::init_logger(config.log_level);
    let (daemons, policies) = match daemons(config) {
        Ok(d) => d,
        Err(msg) => return fail(&msg),
    };
    if daemons.is_empty() {
        log::info!("no daemons selected; nothing to do");
        log::info!("exit 0");
        return 0;
    }
    let settings = Settings {
        grace: config.grace,
        line_max: config.line_max,
        policies,
        backoff: config.backoff,
        notify: config.notify.clone(),
        notify_timeout: config.notify_timeout,
    };
    match runtime::run(daemons, settings) {
        Ok(code) => code,
        Err(e) => {
            log::error!("{e}");
            1
        }
    }
}

/// Prints the daemons that would run, as a Procfile.
fn check(config: &Config) -> i32 {
    output::init_logger(config.log_level);
    match daemons(config) {
        Ok((d, _)) => {
            output::write_log_now();
            print!("{}", procfile::render(&d));
            0
        }
        Err(msg) => fail(&msg),
    }
}

/// The table (built-in or from the Procfile), narrowed by the selection,
/// with each daemon's restart policy.
fn daemons(config: &Config) -> Result<(Vec<DaemonSpec>, Vec<Policy>), String> {
    let table = match &config.procfile {
        Some(path) => load(path)?,
        None => procfile::default_table(),
    };
    let names: Vec<&str> = table.iter().map(|d| d.name.as_str()).collect();
    let policies = match &config.restart {
        Some((source, spec)) => spec.resolve(&names).map_err(|e| format!("{source}: {e}"))?,
        None => vec![Policy::Never; names.len()],
    };
    let policy_of: Vec<(String, Policy)> =
        table.iter().map(|d| d.name.clone()).zip(policies).collect();
    let wanted = std::env::var_os(SELECTION_VAR).map(|v| v.to_string_lossy().into_owned());
    let (selected, unknown) = procfile::select(table, wanted.as_deref());
    if !unknown.is_empty() {
        log::warn!(
            "{SELECTION_VAR} names unknown daemons, ignored: {}",
            unknown.join(", ")
        );
    }
    let policies = selected
        .iter()
        .map(|d| {
            policy_of
                .iter()
                .find(|(n, _)| *n == d.name)
                .map_or(Policy::Never, |(_, p)| *p)
        })
        .collect();
    Ok((selected, policies))
}

fn load(path: &Path) -> Result<Vec<DaemonSpec>, String> {
    let shown = path.display();
    let text = std::fs::read(path)
        .map_err(|e| format!("cannot read procfile {shown}: {}", runtime::describe(&e)))?;
    let table = procfile::parse(&text).map_err(|e| format!("{shown}:{}: {}", e.line, e.problem))?;
    if table.is_empty() {
        return Err(format!("{shown}: no daemons defined"));
    }
    Ok(table)
}
