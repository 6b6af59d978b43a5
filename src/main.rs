//! The `sidecar-init` binary: parse, run, map the result to an exit code.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sidecar_init::config::{self, Color, Config, Control, Request};
use sidecar_init::format::{LogFormat, Style};
use sidecar_init::plan::{self, Inputs, Plan};
use sidecar_init::procfile;
use sidecar_init::runtime::{self, Inherited, Settings};
use sidecar_init::supervisor::Timing;
use sidecar_init::{control, exit, output};

/// The variable that narrows the daemon table, as the bundle names it;
/// `--daemons` / `SIDECAR_INIT_DAEMONS` win over it.
const SELECTION_VAR: &str = "CLAUDE_BOTTLE_SIDECAR_DAEMONS";

/// The largest /etc/passwd or /etc/group read.
const ID_FILE_MAX: u64 = 4 * 1024 * 1024;

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
        Ok(Request::Client { args, control }) => {
            return ExitCode::from(client(&args, control) as u8);
        }
        Ok(Request::Check(config)) => check(&config),
        Ok(Request::Run(config)) => {
            // A main program on a terminal becomes its foreground: only
            // then may our writes to it or tcsetpgrp raise SIGTTOU.
            let tty =
                config.main.is_some() && nix::unistd::isatty(std::io::stdin()).unwrap_or(false);
            let inherited = runtime::prepare_signals(tty);
            run(&config, inherited)
        }
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

/// The control socket's candidate paths, in order.
fn sockets(control: Option<PathBuf>) -> Vec<PathBuf> {
    match control {
        Some(path) => vec![path],
        None => runtime::DEFAULT_SOCKETS.iter().map(PathBuf::from).collect(),
    }
}

fn client(args: &[String], control: Option<PathBuf>) -> i32 {
    control::client_main(args, &sockets(control))
}

fn run(config: &Config, inherited: Inherited) -> i32 {
    output::init_logger(config.log_level);
    output::set_style(style(config));
    output::set_line_max(config.line_max);
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
    timing.notify_timeout = config.notify.as_ref().map(|_| config.notify_timeout);
    timing.ready_timeout = config.ready_timeout;
    timing.ready_interval = config.ready_interval;
    timing.check_timeout = config.check_timeout;
    timing.live_interval = config.live_interval;
    timing.live_failures = config.live_failures;
    let settings = Settings {
        timing,
        line_max: config.line_max,
        notify: config.notify.clone(),
        style: style(config),
        control: match &config.control {
            Control::Off => None,
            Control::Default => Some(sockets(None)),
            Control::At(path) => Some(vec![path.clone()]),
        },
    };
    match runtime::run(plan.units, settings, inherited) {
        Ok(code) => code,
        Err(e) => {
            log::error!("{e}");
            log::info!("exit {}", exit::INTERNAL);
            exit::INTERNAL
        }
    }
}

/// How the lines look: the format, timestamps, and colour where asked for
/// (`auto`: on a terminal, unless `NO_COLOR` is set; never in JSON).
fn style(config: &Config) -> Style {
    let format = match config.log_format {
        config::LogFormat::Plain => LogFormat::Plain,
        config::LogFormat::Json => LogFormat::Json,
    };
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let color = format == LogFormat::Plain
        && match config.color {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => !no_color && nix::unistd::isatty(std::io::stdout()).unwrap_or(false),
        };
    Style {
        format,
        timestamps: config.timestamps,
        color,
    }
}

/// Prints the units that would run, with their settings, after checking
/// that every command exists and is executable.
fn check(config: &Config) -> i32 {
    output::init_logger(config.log_level);
    let plan = match plan(config) {
        Ok(p) => p,
        Err(msg) => return fail(&msg),
    };
    let path = std::env::var_os("PATH");
    let mut bad = Vec::new();
    for u in &plan.units {
        if let Err(why) = runtime::find_executable(&u.argv[0], path.as_deref()) {
            bad.push(format!("{}: {why}", u.spec.name));
        }
    }
    if !bad.is_empty() {
        return fail(&format!("commands that cannot run: {}", bad.join("; ")));
    }
    output::write_log_now();
    print!("{}", plan::render(&plan));
    0
}

/// The table (built-in, from the Procfile, or none beside a main program),
/// resolved with the per-daemon options, the selection and the main
/// program; its warnings logged.
fn plan(config: &Config) -> Result<Plan, String> {
    let table = match (&config.procfile, &config.main) {
        (Some(path), _) => load(path)?,
        (None, Some(_)) => Vec::new(),
        (None, None) => {
            log::info!("no Procfile given (--procfile): running the built-in table");
            procfile::default_table()
        }
    };
    let bundle = std::env::var(SELECTION_VAR).ok().filter(|v| !v.is_empty());
    let selection = match (&config.daemons, bundle) {
        (Some((source, text)), Some(_)) => {
            log::warn!("{source} and {SELECTION_VAR} are both set; {source} wins");
            Some((source.clone(), text.clone()))
        }
        (Some(own), None) => Some(own.clone()),
        (None, Some(text)) => Some((SELECTION_VAR.to_string(), text)),
        (None, None) => None,
    };
    let wants_users = config.options.user.is_some();
    let read_ids = |path: &str| {
        wants_users
            .then(|| read_bounded(Path::new(path), ID_FILE_MAX).ok())
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let plan = plan::resolve(Inputs {
        table,
        options: config.options.clone(),
        selection,
        main: config.main.clone(),
        euid: nix::unistd::geteuid().as_raw(),
        egid: nix::unistd::getegid().as_raw(),
        passwd: read_ids("/etc/passwd"),
        group: read_ids("/etc/group"),
    })?;
    for w in &plan.warnings {
        log::warn!("{w}");
    }
    Ok(plan)
}

/// Reads at most `max` bytes of `path`; more is an error.
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| runtime::describe(&e))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| runtime::describe(&e))?;
    if bytes.len() as u64 > max {
        return Err(format!("larger than {} KiB", max / 1024));
    }
    Ok(bytes)
}

/// Reads and parses the Procfile at `path`, at most
/// [`procfile::MAX_SIZE`] bytes of it: a larger (or endless) file is an
/// error, not memory grown without bound.
fn load(path: &Path) -> Result<Vec<procfile::DaemonSpec>, String> {
    let shown = path.display();
    let text = match read_bounded(path, procfile::MAX_SIZE as u64) {
        Ok(text) => text,
        Err(e) if e.starts_with("larger than") => {
            return Err(format!(
                "{shown}: larger than {} MiB (the Procfile size limit)",
                procfile::MAX_SIZE >> 20
            ));
        }
        Err(e) => return Err(format!("cannot read procfile {shown}: {e}")),
    };
    let table = procfile::parse(&text).map_err(|e| format!("{shown}:{}: {}", e.line, e.problem))?;
    if table.is_empty() {
        return Err(format!("{shown}: no daemons defined"));
    }
    Ok(table)
}
