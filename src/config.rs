//! Command line and environment: what to run and how. No I/O here; the
//! environment is passed in as a lookup function.
//!
//! Every option is one entry of [`OPTS`]: a flag, the `SIDECAR_INIT_*`
//! variable that sets it too (flags win; an empty variable counts as
//! unset), and how its value is parsed. Per-daemon options share one
//! grammar (SPEC §7, [`crate::grammar`]): here they are checked for syntax
//! and parsed value by value; naming daemons the table lacks, the
//! selection and contradictions are [`crate::plan`]'s business.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use log::LevelFilter;

use crate::check::Check;
use crate::grammar;
use crate::procfile;
use crate::supervisor::{Backoff, Policy};
use crate::users::{self, UserSpec};

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Request {
    Run(Config),
    /// Parse the configuration, print the resolved units, exit.
    Check(Config),
    /// A control client verb (`status`, `health`, `stop`...), with its
    /// arguments and the control socket setting.
    Client {
        args: Vec<String>,
        control: Option<PathBuf>,
    },
    Help,
    Version,
}

/// A per-daemon option: an optional default and `NAME=VALUE` items, in the
/// order given (for most options a later item for a name wins; `--after`
/// keeps them all), with the flag or variable they came from.
#[derive(Clone, Debug, PartialEq)]
pub struct PerDaemon<T> {
    pub source: String,
    pub default: Option<T>,
    pub items: Vec<(String, T)>,
}

impl<T> PerDaemon<T> {
    /// Parses `text` by the grammar: bare values only if `default` allows
    /// them, each value through `parse`.
    fn parse(
        source: &str,
        text: &str,
        bare: Bare,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<PerDaemon<T>, String> {
        let mut out = PerDaemon {
            source: source.to_string(),
            default: None,
            items: Vec::new(),
        };
        for item in grammar::items(text)? {
            let value = parse(&item.value).map_err(|e| match &item.name {
                Some(n) => format!("{n}={}: {e}", grammar::printable(&item.value)),
                None => e,
            })?;
            match (item.name, bare) {
                (Some(name), _) => out.items.push((name, value)),
                (None, Bare::Default) => out.default = Some(value),
                (None, Bare::No(form)) => {
                    return Err(format!(
                        "'{}' is not NAME={form} (e.g. web={form})",
                        grammar::printable(&item.value)
                    ));
                }
            }
        }
        Ok(out)
    }

    /// The value for daemon `name`: its last item, else the default.
    pub fn get(&self, name: &str) -> Option<&T> {
        self.items
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .or(self.default.as_ref())
    }
}

/// Whether a per-daemon option takes a bare value as the default for all.
#[derive(Clone, Copy)]
enum Bare {
    Default,
    /// No: every item names its daemon; the value's form, for the error.
    No(&'static str),
}

/// A list of daemon names (`--oneshot a,b`), with its source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub source: String,
    pub names: Vec<String>,
}

/// How sidecar-init's own output looks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

/// When daemon names are coloured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Color {
    /// Only on a terminal, and not with `NO_COLOR`.
    #[default]
    Auto,
    Always,
    Never,
}

/// Where the control socket is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Control {
    /// The default places: /run/sidecar-init.sock, else /tmp/sidecar-init.sock.
    #[default]
    Default,
    At(PathBuf),
    Off,
}

/// The per-daemon options, parsed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DaemonOptions {
    pub restart: Option<PerDaemon<Policy>>,
    pub ready: Option<PerDaemon<Check>>,
    pub live: Option<PerDaemon<Check>>,
    pub after: Option<PerDaemon<String>>,
    pub stop_signal: Option<PerDaemon<i32>>,
    pub user: Option<PerDaemon<UserSpec>>,
    pub oneshot: Option<Names>,
    pub essential: Option<Names>,
}

/// Settings for a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The Procfile replacing the built-in table, if any.
    pub procfile: Option<PathBuf>,
    /// The main program (`-- CMD ARGS`), if any.
    pub main: Option<Vec<String>>,
    /// The selection (`--daemons`), with its source; `None` leaves it to
    /// the `CLAUDE_BOTTLE_SIDECAR_DAEMONS` variable.
    pub daemons: Option<(String, String)>,
    /// Stop signal to SIGKILL.
    pub grace: Duration,
    /// Longest output line before it is split.
    pub line_max: usize,
    pub log_level: LevelFilter,
    pub log_format: LogFormat,
    pub timestamps: bool,
    pub color: Color,
    pub options: DaemonOptions,
    pub backoff: Backoff,
    pub ready_timeout: Duration,
    pub ready_interval: Duration,
    pub check_timeout: Duration,
    pub live_interval: Duration,
    pub live_failures: u32,
    /// The operator's notify command, split into words.
    pub notify: Option<Vec<String>>,
    /// How long a notify command may run before it is killed.
    pub notify_timeout: Duration,
    pub control: Control,
}

pub const DEFAULT_GRACE: Duration = Duration::from_secs(8);
pub const DEFAULT_LINE_MAX: usize = 64 * 1024;
pub const DEFAULT_NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// The accepted range for `--line-max`.
pub const LINE_MAX_RANGE: (usize, usize) = (64, 16 * 1024 * 1024);

impl Default for Config {
    fn default() -> Self {
        Config {
            procfile: None,
            main: None,
            daemons: None,
            grace: DEFAULT_GRACE,
            line_max: DEFAULT_LINE_MAX,
            log_level: LevelFilter::Info,
            log_format: LogFormat::Plain,
            timestamps: false,
            color: Color::Auto,
            options: DaemonOptions::default(),
            backoff: Backoff::default(),
            ready_timeout: Duration::from_secs(60),
            ready_interval: Duration::from_millis(200),
            check_timeout: Duration::from_secs(5),
            live_interval: Duration::from_secs(10),
            live_failures: 3,
            notify: None,
            notify_timeout: DEFAULT_NOTIFY_TIMEOUT,
            control: Control::Default,
        }
    }
}

/// A usage error: the message to print before exiting with code 2.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The control client's verbs: `sidecar-init status` and so on.
pub const CLIENT_VERBS: [&str; 6] = ["status", "health", "stop", "start", "restart", "signal"];

pub const HELP: &str = "\
sidecar-init: PID 1 for a container that runs several daemons side by side.

Starts the daemons (in dependency order, once what they need is ready),
prefixes every line they write with [name], forwards signals, reaps every
process, stops them in bounded time and exits with the worst of their
codes, or runs a main program the way tini does.

Usage: sidecar-init [OPTIONS] [-- CMD [ARGS...]]
       sidecar-init status [--json] | health | stop NAME | start NAME
                    | restart NAME | signal NAME SIG        (the client)

With -- CMD, CMD is the main program: it starts once every daemon is ready,
keeps the terminal, and its exit ends the run with its status. Without a
Procfile, only CMD runs.

Options (each also read from the environment variable shown; flags win):
  --procfile PATH      run the daemons of this Procfile instead of the
                       built-in table                  [SIDECAR_INIT_PROCFILE]
  --daemons A,B        run only these daemons of the table
                       [SIDECAR_INIT_DAEMONS, or CLAUDE_BOTTLE_SIDECAR_DAEMONS]
  --grace DURATION     stop signal to SIGKILL (default 8s) [SIDECAR_INIT_GRACE]
  --line-max BYTES     longer output lines are split (default 65536)
                                                        [SIDECAR_INIT_LINE_MAX]
  --log-level LEVEL    error, warn, info or debug (default info)
                                                        [SIDECAR_INIT_LOG]
  --log-format FORMAT  plain or json (default plain)  [SIDECAR_INIT_LOG_FORMAT]
  --timestamps         start plain lines with an RFC 3339 UTC time
                                                      [SIDECAR_INIT_TIMESTAMPS]
  --color WHEN         auto, always or never (default auto: on a terminal,
                       unless NO_COLOR is set)            [SIDECAR_INIT_COLOR]

Per-daemon options: comma-separated items, each NAME=VALUE, or a bare VALUE
for every daemon where the option has a default; quotes and backslashes as
in a Procfile (--ready 'web=exec:\"wget -qO- localhost\"').
  --restart [POLICY,]NAME=POLICY   never (default), on-failure or always
                                                     [SIDECAR_INIT_RESTART]
  --ready NAME=CHECK   when NAME counts as ready: tcp:PORT, tcp:HOST:PORT,
                       http:PORT/PATH, http://HOST:PORT/PATH, file:PATH,
                       exec:COMMAND, line:TEXT, notify (sd_notify READY=1)
                                                       [SIDECAR_INIT_READY]
  --after NAME=DEP     start NAME once DEP is ready (repeat for several)
                                                       [SIDECAR_INIT_AFTER]
  --oneshot A,B        tasks that run to completion; ready once they exit 0
                                                     [SIDECAR_INIT_ONESHOT]
  --essential A,B      the end of one of these stops everything
                                                   [SIDECAR_INIT_ESSENTIAL]
  --live NAME=CHECK    liveness check (the checks above but line and
                       notify); failing it stops the daemon  [SIDECAR_INIT_LIVE]
  --stop-signal [SIG,]NAME=SIG     what a stop sends (default TERM)
                                                 [SIDECAR_INIT_STOP_SIGNAL]
  --user [USER,]NAME=USER          run as UID[:GID] or a name (root only)
                                                        [SIDECAR_INIT_USER]

Timing (DURATION: seconds, or 500ms, 15s, 1m30s):
  --ready-timeout D    a daemon not ready by then is stopped (default 60s)
                                               [SIDECAR_INIT_READY_TIMEOUT]
  --ready-interval D   how often a readiness check runs (default 0.2s)
                                              [SIDECAR_INIT_READY_INTERVAL]
  --check-timeout D    how long one check may take (default 5s)
                                               [SIDECAR_INIT_CHECK_TIMEOUT]
  --live-interval D    how often a liveness check runs (default 10s)
                                               [SIDECAR_INIT_LIVE_INTERVAL]
  --live-failures N    failures in a row that stop a daemon (default 3)
                                               [SIDECAR_INIT_LIVE_FAILURES]
  --restart-delay D    first restart delay, doubling each quick restart
                       (default 1s)                [SIDECAR_INIT_RESTART_DELAY]
  --restart-max-delay D   longest restart delay (default 30s)
                                             [SIDECAR_INIT_RESTART_MAX_DELAY]
  --restart-reset D    a run this long starts the backoff over (default 10s)
                                                 [SIDECAR_INIT_RESTART_RESET]
  --max-restarts N     give a daemon up after N quick restarts in a row
                       (default: never give up)    [SIDECAR_INIT_MAX_RESTARTS]

Operations:
  --notify COMMAND     run COMMAND on each lifecycle event, with the event in
                       SIDECAR_INIT_EVENT* variables     [SIDECAR_INIT_NOTIFY]
  --notify-timeout D   kill a notify command running longer (default 10s)
                                                [SIDECAR_INIT_NOTIFY_TIMEOUT]
  --control PATH|off   the control socket (default /run/sidecar-init.sock,
                       else /tmp/sidecar-init.sock)     [SIDECAR_INIT_CONTROL]
  --check              validate the configuration, print the resolved units
                       (a Procfile with their settings), and exit
  -h, --help           print this help
  -V, --version        print the version

Procfile: one `name: command args...` per line; # comments; words split as
a POSIX shell splits them (quotes, backslashes) but nothing is expanded and
no shell runs: write sh -c '...' where a shell is wanted.

Signals: SIGTERM or SIGINT stops the daemons (each its stop signal,
dependents first, then SIGKILL after the grace period; a second SIGINT
kills at once). SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH and every other
signal that would end sidecar-init are forwarded. Every signal goes to the
daemon's process group.

Exit code: the main program's status if there is one; else the worst daemon
code: 128+N for death by signal N, 0 for death by its stop signal at
shutdown, 127/126 for a command not found/executable, 125 when it could
not be started for want of resources, 124 when not ready in time or not
live, 2 for bad configuration or usage, 1 for sidecar-init's own failure.
";

/// Parses `args` (without the program name) and the `SIDECAR_INIT_*`
/// environment, read through `env`. Empty variables count as unset.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Request, UsageError> {
    let mut flags: Vec<(Opt, OsString)> = Vec::new();
    let mut check = false;
    let mut main = None;
    let mut args = args.into_iter().peekable();
    // The client: a verb first.
    if let Some(first) = args.peek().map(|a| a.to_string_lossy().into_owned()) {
        if CLIENT_VERBS.contains(&first.as_str()) {
            let words: Vec<String> = args.map(|a| a.to_string_lossy().into_owned()).collect();
            let (control, rest) = client_control(words)?;
            let control = match control {
                Some(c) => Some(c),
                None => env("SIDECAR_INIT_CONTROL")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from),
            };
            return Ok(Request::Client {
                args: rest,
                control,
            });
        }
    }
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy().into_owned();
        match text.as_str() {
            "-h" | "--help" => return Ok(Request::Help),
            "-V" | "--version" => return Ok(Request::Version),
            "--check" => {
                check = true;
                continue;
            }
            "--" => {
                let argv: Vec<String> = args
                    .by_ref()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                if argv.is_empty() || argv[0].is_empty() {
                    return Err(UsageError(
                        "'--' needs a command after it (see --help)".into(),
                    ));
                }
                main = Some(argv);
                break;
            }
            _ => {}
        }
        let (flag, inline) = match text.split_once('=') {
            Some((f, _)) if f.starts_with("--") => (f.to_string(), true),
            _ => (text.clone(), false),
        };
        let Some(opt) = OPTS.iter().find(|o| o.flag == flag) else {
            return Err(if text.starts_with('-') {
                UsageError(format!("unknown option '{flag}' (see --help)"))
            } else {
                UsageError(format!(
                    "unexpected argument '{text}' (a main program goes after '--'; see --help)"
                ))
            });
        };
        let value = if inline {
            let bytes = arg.as_encoded_bytes();
            // SAFETY: split right after an ASCII '=' of the same encoded bytes.
            unsafe { OsString::from_encoded_bytes_unchecked(bytes[flag.len() + 1..].to_vec()) }
        } else if opt.takes_value {
            args.next()
                .ok_or_else(|| UsageError(format!("option '{flag}' needs a value (see --help)")))?
        } else {
            OsString::from("1")
        };
        flags.push((*opt, value));
    }

    let mut config = Config {
        main,
        ..Config::default()
    };
    for opt in OPTS {
        let from_flag = flags.iter().rev().find(|(o, _)| o.flag == opt.flag);
        let (source, value) = match from_flag {
            Some((_, v)) => (opt.flag, v.clone()),
            None => match env(opt.env).filter(|v| !v.is_empty()) {
                Some(v) => (opt.env, v),
                None => continue,
            },
        };
        let text = value.to_string_lossy();
        (opt.apply)(&mut config, source, &text)
            .map_err(|problem| UsageError(format!("{source}: {problem}")))?;
    }
    if config.backoff.max_delay < config.backoff.delay {
        return Err(UsageError(format!(
            "the longest restart delay ({}) is shorter than the first ({})",
            crate::supervisor::format_secs(config.backoff.max_delay),
            crate::supervisor::format_secs(config.backoff.delay)
        )));
    }
    Ok(if check {
        Request::Check(config)
    } else {
        Request::Run(config)
    })
}

/// Takes `--control PATH` (anywhere after the verb) out of a client's words.
fn client_control(words: Vec<String>) -> Result<(Option<PathBuf>, Vec<String>), UsageError> {
    let mut control = None;
    let mut rest = Vec::new();
    let mut words = words.into_iter();
    while let Some(w) = words.next() {
        if w == "--control" {
            let v = words
                .next()
                .ok_or_else(|| UsageError("option '--control' needs a value".into()))?;
            control = Some(PathBuf::from(v));
        } else if let Some(v) = w.strip_prefix("--control=") {
            control = Some(PathBuf::from(v));
        } else {
            rest.push(w);
        }
    }
    Ok((control, rest))
}

/// An option: its flag, its environment variable and how it sets the config.
#[derive(Clone, Copy)]
struct Opt {
    flag: &'static str,
    env: &'static str,
    /// It takes a value (`--grace 8`); otherwise it is a switch
    /// (`--timestamps`) whose variable takes true/false.
    takes_value: bool,
    apply: fn(&mut Config, &str, &str) -> Result<(), String>,
}

impl fmt::Debug for Opt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.flag)
    }
}

const fn opt(
    flag: &'static str,
    env: &'static str,
    apply: fn(&mut Config, &str, &str) -> Result<(), String>,
) -> Opt {
    Opt {
        flag,
        env,
        takes_value: true,
        apply,
    }
}

const OPTS: [Opt; 28] = [
    opt("--procfile", "SIDECAR_INIT_PROCFILE", |c, _, v| {
        c.procfile = Some(PathBuf::from(v));
        Ok(())
    }),
    opt("--daemons", "SIDECAR_INIT_DAEMONS", |c, s, v| {
        c.daemons = Some((s.to_string(), v.to_string()));
        Ok(())
    }),
    opt("--grace", "SIDECAR_INIT_GRACE", |c, _, v| {
        c.grace = grammar::parse_duration(v)?;
        Ok(())
    }),
    opt("--line-max", "SIDECAR_INIT_LINE_MAX", |c, _, v| {
        c.line_max = parse_line_max(v)?;
        Ok(())
    }),
    opt("--log-level", "SIDECAR_INIT_LOG", |c, _, v| {
        c.log_level = parse_level(v)?;
        Ok(())
    }),
    opt("--log-format", "SIDECAR_INIT_LOG_FORMAT", |c, _, v| {
        c.log_format = match v.trim() {
            "plain" => LogFormat::Plain,
            "json" => LogFormat::Json,
            _ => return Err(format!("'{v}' is not a log format (plain, json)")),
        };
        Ok(())
    }),
    Opt {
        flag: "--timestamps",
        env: "SIDECAR_INIT_TIMESTAMPS",
        takes_value: false,
        apply: |c, _, v| {
            c.timestamps = parse_bool(v)?;
            Ok(())
        },
    },
    opt("--color", "SIDECAR_INIT_COLOR", |c, _, v| {
        c.color = match v.trim() {
            "auto" => Color::Auto,
            "always" => Color::Always,
            "never" => Color::Never,
            _ => {
                return Err(format!(
                    "'{v}' is not a colour setting (auto, always, never)"
                ));
            }
        };
        Ok(())
    }),
    opt("--restart", "SIDECAR_INIT_RESTART", |c, s, v| {
        c.options.restart = Some(PerDaemon::parse(s, v, Bare::Default, parse_policy)?);
        Ok(())
    }),
    opt("--ready", "SIDECAR_INIT_READY", |c, s, v| {
        c.options.ready = Some(PerDaemon::parse(s, v, Bare::No("CHECK"), Check::parse)?);
        Ok(())
    }),
    opt("--live", "SIDECAR_INIT_LIVE", |c, s, v| {
        let live = PerDaemon::parse(s, v, Bare::No("CHECK"), |v| {
            let check = Check::parse(v)?;
            if !check.is_polled() {
                return Err(format!(
                    "'{v}' cannot be a liveness check (tcp, http, file or exec)"
                ));
            }
            Ok(check)
        })?;
        c.options.live = Some(live);
        Ok(())
    }),
    opt("--after", "SIDECAR_INIT_AFTER", |c, s, v| {
        let after = PerDaemon::parse(s, v, Bare::No("DEP"), |v| {
            if procfile::is_valid_name(v) {
                Ok(v.to_string())
            } else {
                Err(format!("'{}' is not a daemon name", grammar::printable(v)))
            }
        })?;
        c.options.after = Some(after);
        Ok(())
    }),
    opt("--oneshot", "SIDECAR_INIT_ONESHOT", |c, s, v| {
        c.options.oneshot = Some(Names {
            source: s.to_string(),
            names: grammar::names(v)?,
        });
        Ok(())
    }),
    opt("--essential", "SIDECAR_INIT_ESSENTIAL", |c, s, v| {
        c.options.essential = Some(Names {
            source: s.to_string(),
            names: grammar::names(v)?,
        });
        Ok(())
    }),
    opt("--stop-signal", "SIDECAR_INIT_STOP_SIGNAL", |c, s, v| {
        let stop = PerDaemon::parse(s, v, Bare::Default, |v| {
            let sig = grammar::parse_signal(v)?;
            if sig == nix::libc::SIGKILL || sig == nix::libc::SIGSTOP {
                return Err(format!(
                    "'{v}' cannot be a stop signal: it cannot be handled"
                ));
            }
            Ok(sig)
        })?;
        c.options.stop_signal = Some(stop);
        Ok(())
    }),
    opt("--user", "SIDECAR_INIT_USER", |c, s, v| {
        c.options.user = Some(PerDaemon::parse(s, v, Bare::Default, users::parse_user)?);
        Ok(())
    }),
    opt(
        "--ready-timeout",
        "SIDECAR_INIT_READY_TIMEOUT",
        |c, _, v| {
            c.ready_timeout = positive_duration(v)?;
            Ok(())
        },
    ),
    opt(
        "--ready-interval",
        "SIDECAR_INIT_READY_INTERVAL",
        |c, _, v| {
            c.ready_interval = positive_duration(v)?;
            Ok(())
        },
    ),
    opt(
        "--check-timeout",
        "SIDECAR_INIT_CHECK_TIMEOUT",
        |c, _, v| {
            c.check_timeout = positive_duration(v)?;
            Ok(())
        },
    ),
    opt(
        "--live-interval",
        "SIDECAR_INIT_LIVE_INTERVAL",
        |c, _, v| {
            c.live_interval = positive_duration(v)?;
            Ok(())
        },
    ),
    opt(
        "--live-failures",
        "SIDECAR_INIT_LIVE_FAILURES",
        |c, _, v| {
            c.live_failures = match v.trim().parse() {
                Ok(n) if n > 0 => n,
                _ => return Err(format!("'{v}' is not a whole number above 0")),
            };
            Ok(())
        },
    ),
    opt(
        "--restart-delay",
        "SIDECAR_INIT_RESTART_DELAY",
        |c, _, v| {
            c.backoff.delay = positive_duration(v)?;
            Ok(())
        },
    ),
    opt(
        "--restart-max-delay",
        "SIDECAR_INIT_RESTART_MAX_DELAY",
        |c, _, v| {
            c.backoff.max_delay = positive_duration(v)?;
            Ok(())
        },
    ),
    opt(
        "--restart-reset",
        "SIDECAR_INIT_RESTART_RESET",
        |c, _, v| {
            c.backoff.reset = grammar::parse_duration(v)?;
            Ok(())
        },
    ),
    opt("--max-restarts", "SIDECAR_INIT_MAX_RESTARTS", |c, _, v| {
        let n = v
            .trim()
            .parse()
            .map_err(|_| format!("'{v}' is not a whole number"))?;
        c.backoff.max_restarts = Some(n);
        Ok(())
    }),
    opt("--notify", "SIDECAR_INIT_NOTIFY", |c, _, v| {
        c.notify = Some(procfile::split_words(v)?);
        Ok(())
    }),
    opt(
        "--notify-timeout",
        "SIDECAR_INIT_NOTIFY_TIMEOUT",
        |c, _, v| {
            c.notify_timeout = positive_duration(v)?;
            Ok(())
        },
    ),
    opt("--control", "SIDECAR_INIT_CONTROL", |c, _, v| {
        c.control = match v {
            "off" => Control::Off,
            "" => return Err("an empty path".into()),
            path => Control::At(PathBuf::from(path)),
        };
        Ok(())
    }),
];

fn parse_policy(text: &str) -> Result<Policy, String> {
    Policy::parse(text.trim()).ok_or_else(|| {
        format!(
            "'{}' is not a restart policy (never, on-failure, always)",
            grammar::printable(text)
        )
    })
}

/// A duration above zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match grammar::parse_duration(text)? {
        d if d.is_zero() => Err(format!("'{text}' must be more than 0 seconds")),
        d => Ok(d),
    }
}

/// Seconds as a non-negative decimal (`8`, `0.5`) or a duration (`500ms`),
/// at most a day.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    grammar::parse_duration(text)
}

/// A switch's variable: `1`, `true`, `yes`, `on` or their opposites.
fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "'{text}' is not true or false (1, 0, true, false, yes, no)"
        )),
    }
}

fn parse_line_max(text: &str) -> Result<usize, String> {
    let (lo, hi) = LINE_MAX_RANGE;
    match text.trim().parse::<usize>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(format!("'{text}' is not a byte count from {lo} to {hi}")),
    }
}

fn parse_level(text: &str) -> Result<LevelFilter, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "error" => Ok(LevelFilter::Error),
        "warn" | "warning" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        _ => Err(format!(
            "'{text}' is not a log level (error, warn, info, debug)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Request, UsageError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(args.iter().map(OsString::from), |k| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| OsString::from(v))
        })
    }

    fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
        match run(args, env) {
            Ok(Request::Run(c)) => c,
            other => panic!("{args:?} {env:?}: {other:?}"),
        }
    }

    fn error(args: &[&str], env: &[(&str, &str)]) -> String {
        match run(args, env) {
            Err(UsageError(m)) => m,
            other => panic!("{args:?} {env:?} should fail: {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        assert_eq!(config(&[], &[]), Config::default());
        assert_eq!(Config::default().grace, Duration::from_secs(8));
        assert_eq!(Config::default().line_max, 65536);
    }

    #[test]
    fn flags_in_both_forms() {
        let c = config(
            &[
                "--procfile",
                "/p",
                "--grace=0.5",
                "--line-max",
                "1024",
                "--log-level=debug",
            ],
            &[],
        );
        assert_eq!(c.procfile, Some(PathBuf::from("/p")));
        assert_eq!(c.grace, Duration::from_millis(500));
        assert_eq!(c.line_max, 1024);
        assert_eq!(c.log_level, LevelFilter::Debug);
    }

    #[test]
    fn environment_sets_and_flags_win() {
        let env = [
            ("SIDECAR_INIT_PROCFILE", "/env"),
            ("SIDECAR_INIT_GRACE", "3"),
            ("SIDECAR_INIT_LOG", "warn"),
            ("SIDECAR_INIT_LINE_MAX", "100"),
        ];
        let c = config(&[], &env);
        assert_eq!(c.procfile, Some(PathBuf::from("/env")));
        assert_eq!(c.grace, Duration::from_secs(3));
        assert_eq!(c.log_level, LevelFilter::Warn);
        assert_eq!(c.line_max, 100);
        let c = config(&["--grace", "1", "--procfile=/flag"], &env);
        assert_eq!(c.grace, Duration::from_secs(1));
        assert_eq!(c.procfile, Some(PathBuf::from("/flag")));
    }

    #[test]
    fn empty_environment_values_are_unset() {
        assert_eq!(
            config(
                &[],
                &[("SIDECAR_INIT_GRACE", ""), ("SIDECAR_INIT_PROCFILE", "")]
            ),
            Config::default()
        );
    }

    #[test]
    fn help_version_check() {
        assert_eq!(run(&["--help"], &[]), Ok(Request::Help));
        assert_eq!(run(&["-h", "--bogus"], &[]), Ok(Request::Help));
        assert_eq!(run(&["-V"], &[]), Ok(Request::Version));
        assert!(matches!(run(&["--check"], &[]), Ok(Request::Check(_))));
    }

    #[test]
    fn usage_errors_name_the_source() {
        assert_eq!(
            error(&["--bogus"], &[]),
            "unknown option '--bogus' (see --help)"
        );
        assert!(error(&["stray"], &[]).starts_with("unexpected argument 'stray'"));
        assert_eq!(
            error(&["--grace"], &[]),
            "option '--grace' needs a value (see --help)"
        );
        assert!(error(&["--grace", "soon"], &[]).starts_with("--grace: 'soon' is not a duration"));
        assert!(error(&[], &[("SIDECAR_INIT_GRACE", "-1")]).starts_with("SIDECAR_INIT_GRACE: "));
        assert!(error(&[], &[("SIDECAR_INIT_LOG", "loud")]).contains("not a log level"));
        assert!(error(&["--line-max", "10"], &[]).contains("from 64 to"));
        assert!(error(&["--grace", "1e9"], &[]).contains("--grace: '1e9'"));
        assert!(error(&["--grace", "100000"], &[]).contains("more than a day"));
    }

    #[test]
    fn durations_take_compose_forms() {
        let c = config(
            &[
                "--grace",
                "1m30s",
                "--ready-timeout=500ms",
                "--ready-interval",
                "0.05",
            ],
            &[("SIDECAR_INIT_LIVE_INTERVAL", "2m")],
        );
        assert_eq!(c.grace, Duration::from_secs(90));
        assert_eq!(c.ready_timeout, Duration::from_millis(500));
        assert_eq!(c.ready_interval, Duration::from_millis(50));
        assert_eq!(c.live_interval, Duration::from_secs(120));
        assert!(error(&["--ready-interval", "0"], &[]).contains("more than 0"));
    }

    #[test]
    fn restart_options() {
        let c = config(
            &[
                "--restart",
                "on-failure, egress=always ,pipelock=never",
                "--max-restarts=3",
            ],
            &[
                ("SIDECAR_INIT_RESTART_DELAY", "0.5"),
                ("SIDECAR_INIT_RESTART_MAX_DELAY", "4"),
            ],
        );
        let spec = c.options.restart.unwrap();
        assert_eq!(spec.source, "--restart");
        assert_eq!(spec.default, Some(Policy::OnFailure));
        assert_eq!(spec.get("egress"), Some(&Policy::Always));
        assert_eq!(spec.get("pipelock"), Some(&Policy::Never));
        assert_eq!(spec.get("x"), Some(&Policy::OnFailure));
        assert_eq!(c.backoff.delay, Duration::from_millis(500));
        assert_eq!(c.backoff.max_delay, Duration::from_secs(4));
        assert_eq!(c.backoff.reset, Duration::from_secs(10));
        assert_eq!(c.backoff.max_restarts, Some(3));
        let spec = config(&[], &[("SIDECAR_INIT_RESTART", "always")])
            .options
            .restart
            .unwrap();
        assert_eq!(spec.source, "SIDECAR_INIT_RESTART");
    }

    #[test]
    fn restart_errors() {
        assert!(
            error(&["--restart", "sometimes"], &[]).contains("'sometimes' is not a restart policy")
        );
        assert!(
            error(&["--restart", "a=sometimes"], &[])
                .starts_with("--restart: a=sometimes: 'sometimes' is not a restart policy")
        );
        assert!(error(&["--restart-delay", "0"], &[]).contains("more than 0"));
        assert!(error(&["--max-restarts", "-1"], &[]).contains("not a whole number"));
        assert!(
            error(&["--restart-delay", "5", "--restart-max-delay", "2"], &[])
                .contains("shorter than the first")
        );
        assert!(error(&["--restart", "'on-failure"], &[]).contains("unterminated"));
    }

    #[test]
    fn per_daemon_options_share_the_grammar() {
        let c = config(
            &[
                "--ready",
                "web=exec:\"wget -qO- localhost\",db=tcp:5432",
                "--after",
                "web=db,web=cache",
                "--oneshot",
                "migrate",
                "--essential=web,db",
                "--stop-signal",
                "QUIT,db=SIGINT",
                "--live",
                "web=http:8080/healthz",
            ],
            &[("SIDECAR_INIT_USER", "65534,web=www:www")],
        );
        let o = &c.options;
        let ready = o.ready.as_ref().unwrap();
        assert_eq!(
            ready.get("web"),
            Some(&Check::Exec(vec![
                "wget".into(),
                "-qO-".into(),
                "localhost".into()
            ]))
        );
        assert_eq!(ready.get("nginx"), None, "no default readiness");
        let after = o.after.as_ref().unwrap();
        assert_eq!(
            after.items,
            [
                ("web".to_string(), "db".to_string()),
                ("web".into(), "cache".into())
            ]
        );
        assert_eq!(o.oneshot.as_ref().unwrap().names, ["migrate"]);
        assert_eq!(o.essential.as_ref().unwrap().source, "--essential");
        let stop = o.stop_signal.as_ref().unwrap();
        assert_eq!(stop.get("x"), Some(&nix::libc::SIGQUIT));
        assert_eq!(stop.get("db"), Some(&nix::libc::SIGINT));
        let user = o.user.as_ref().unwrap();
        assert_eq!(user.source, "SIDECAR_INIT_USER");
        assert_eq!(user.get("web").unwrap().user, "www");
        assert_eq!(user.get("db").unwrap().user, "65534");
    }

    #[test]
    fn per_daemon_option_errors_name_the_flag_and_the_item() {
        assert!(
            error(&["--ready", "tcp:80"], &[]).starts_with("--ready: 'tcp:80' is not NAME=CHECK")
        );
        assert!(error(&["--ready", "web=tcp:x"], &[]).starts_with("--ready: web=tcp:x: "));
        assert!(error(&["--live", "web=line:up"], &[]).contains("cannot be a liveness check"));
        assert!(error(&["--after", "db"], &[]).contains("is not NAME=DEP"));
        assert!(error(&["--oneshot", "a=b"], &[]).starts_with("--oneshot: "));
        assert!(error(&["--stop-signal", "web=KILL"], &[]).contains("cannot be a stop signal"));
        assert!(
            error(&["--stop-signal", "web=NOPE"], &[]).starts_with("--stop-signal: web=NOPE: ")
        );
        assert!(
            error(&[], &[("SIDECAR_INIT_ESSENTIAL", "a b")])
                .starts_with("SIDECAR_INIT_ESSENTIAL: ")
        );
    }

    #[test]
    fn the_main_program_comes_after_a_double_dash() {
        let c = config(
            &[
                "--grace",
                "1",
                "--",
                "nginx",
                "-g",
                "daemon off;",
                "--grace",
            ],
            &[],
        );
        assert_eq!(
            c.main,
            Some(vec![
                "nginx".into(),
                "-g".into(),
                "daemon off;".into(),
                "--grace".into()
            ])
        );
        assert_eq!(c.grace, Duration::from_secs(1));
        assert!(error(&["--"], &[]).contains("needs a command"));
    }

    #[test]
    fn client_verbs_and_their_socket() {
        assert_eq!(
            run(&["status", "--json"], &[("SIDECAR_INIT_CONTROL", "/s")]),
            Ok(Request::Client {
                args: vec!["status".into(), "--json".into()],
                control: Some(PathBuf::from("/s")),
            })
        );
        assert_eq!(
            run(
                &["stop", "--control", "/x", "web"],
                &[("SIDECAR_INIT_CONTROL", "/s")]
            ),
            Ok(Request::Client {
                args: vec!["stop".into(), "web".into()],
                control: Some(PathBuf::from("/x")),
            })
        );
        assert_eq!(config(&["--control", "off"], &[]).control, Control::Off);
    }

    #[test]
    fn output_options() {
        let c = config(
            &["--log-format", "json", "--timestamps", "--color=never"],
            &[],
        );
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(c.timestamps);
        assert_eq!(c.color, Color::Never);
        assert!(config(&[], &[("SIDECAR_INIT_TIMESTAMPS", "true")]).timestamps);
        assert!(!config(&[], &[("SIDECAR_INIT_TIMESTAMPS", "0")]).timestamps);
        assert!(error(&[], &[("SIDECAR_INIT_TIMESTAMPS", "maybe")]).contains("true or false"));
        assert!(error(&["--log-format", "xml"], &[]).contains("not a log format"));
        assert!(error(&["--color", "blue"], &[]).contains("not a colour setting"));
    }

    #[test]
    fn notify_options() {
        let c = config(
            &[
                "--notify",
                "sh -c 'echo $SIDECAR_INIT_EVENT'",
                "--notify-timeout",
                "2",
            ],
            &[],
        );
        assert_eq!(
            c.notify,
            Some(vec![
                "sh".into(),
                "-c".into(),
                "echo $SIDECAR_INIT_EVENT".into()
            ])
        );
        assert_eq!(c.notify_timeout, Duration::from_secs(2));
        assert!(error(&["--notify", "'oops"], &[]).starts_with("--notify: unterminated"));
        assert_eq!(config(&[], &[("SIDECAR_INIT_NOTIFY", "")]).notify, None);
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
        assert_eq!(parse_seconds(" 2.25 "), Ok(Duration::from_millis(2250)));
        assert_eq!(parse_seconds(".5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_seconds("1s"), Ok(Duration::from_secs(1)));
        for bad in ["", ".", "1.2.3", "-1", "inf", "NaN", "+1", "1d"] {
            assert!(parse_seconds(bad).is_err(), "{bad:?}");
        }
    }
}
