//! The `sidecar-init` binary: parse, run, map the result to an exit code.

use std::path::Path;
use std::process::ExitCode;

use sidecar_init::config::{self, Config, Request};
use sidecar_init::plan::{self, Plan};
use sidecar_init::procfile::{self, DaemonSpec};
use sidecar_init::runtime::{self, Inherited, Settings};
use sidecar_init::supervisor::Timing;
use sidecar_init::{exit, output};

/// The variable that narrows the daemon table.
const SELECTION_VAR: &str = "CLAUDE_BOTTLE_SIDECAR_DAEMONS";

fn main() -> ExitCode {
    // Before any descriptor of ours exists: nothing inherited may leak into
    // the daemons, and a closed stdout must not be taken by one of ours.
    runtime::sanitize_fds();
    let inherited = runtime::prepare_signals();
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
        Ok(Request::Run(config)) => run(&config, inherited),
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

fn run(config: &Config, inherited: Inherited) -> i32 {
    output::init_logger(config.log_level);
    let plan = match plan(config) {
        Ok(p) => p,
        Err(msg) => return fail(&msg),
    };
    if plan.units.is_empty() {
        log::info!("no daemons selected; nothing to do");
        log::info!("exit 0");
        return 0;
    }
    let mut timing = Timing::new(config.grace);
    timing.backoff = config.backoff;
    timing.notify_timeout = Some(config.notify_timeout);
    let settings = Settings {
        timing,
        line_max: config.line_max,
        notify: config.notify.clone(),
    };
    match runtime::run(plan.units, settings, inherited) {
        Ok(code) => code,
        Err(e) => {
            log::error!("{e}");
            exit::INTERNAL
        }
    }
}

/// Prints the daemons that would run, as a Procfile.
fn check(config: &Config) -> i32 {
    output::init_logger(config.log_level);
    match plan(config) {
        Ok(plan) => {
            output::write_log_now();
            let table: Vec<DaemonSpec> = plan
                .units
                .iter()
                .map(|u| DaemonSpec {
                    name: u.spec.name.clone(),
                    argv: u.argv.clone(),
                })
                .collect();
            print!("{}", procfile::render(&table));
            0
        }
        Err(msg) => fail(&msg),
    }
}

/// The table (built-in or from the Procfile), resolved with the per-daemon
/// options and narrowed by the selection; its warnings logged.
fn plan(config: &Config) -> Result<Plan, String> {
    let table = match &config.procfile {
        Some(path) => load(path)?,
        None => procfile::default_table(),
    };
    let wanted = std::env::var_os(SELECTION_VAR).map(|v| v.to_string_lossy().into_owned());
    let options = plan::Options {
        restart: config.restart.clone(),
    };
    let plan = plan::resolve(table, &options, wanted.as_deref(), SELECTION_VAR)?;
    for w in &plan.warnings {
        log::warn!("{w}");
    }
    Ok(plan)
}

/// Reads and parses the Procfile at `path`, at most
/// [`procfile::MAX_SIZE`] bytes of it: a larger (or endless) file is an
/// error, not memory grown without bound.
fn load(path: &Path) -> Result<Vec<DaemonSpec>, String> {
    use std::io::Read;
    let shown = path.display();
    let cannot =
        |e: std::io::Error| format!("cannot read procfile {shown}: {}", runtime::describe(&e));
    let mut text = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(procfile::MAX_SIZE as u64 + 1).read_to_end(&mut text))
        .map_err(cannot)?;
    if text.len() > procfile::MAX_SIZE {
        return Err(format!(
            "{shown}: larger than {} MiB (the Procfile size limit)",
            procfile::MAX_SIZE >> 20
        ));
    }
    let table = procfile::parse(&text).map_err(|e| format!("{shown}:{}: {}", e.line, e.problem))?;
    if table.is_empty() {
        return Err(format!("{shown}: no daemons defined"));
    }
    Ok(table)
}
