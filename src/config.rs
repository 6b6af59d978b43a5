//! Command line and environment: what to run and how. No I/O here; the
//! environment is passed in as a lookup function.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use log::LevelFilter;

use crate::procfile;
use crate::supervisor::{Backoff, Policy};

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Request {
    Run(Config),
    /// Parse the configuration, print the selected table, exit.
    Check(Config),
    Help,
    Version,
}

/// Settings for a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The Procfile replacing the built-in table, if any.
    pub procfile: Option<PathBuf>,
    /// SIGTERM to SIGKILL at shutdown.
    pub grace: Duration,
    /// Longest output line before it is split.
    pub line_max: usize,
    pub log_level: LevelFilter,
    /// Restart policies, with the flag or variable they came from.
    pub restart: Option<(String, RestartSpec)>,
    pub backoff: Backoff,
    /// The operator's notify command, split into words.
    pub notify: Option<Vec<String>>,
    /// How long a notify command may run before it is killed.
    pub notify_timeout: Duration,
}

/// `--restart on-failure,egress=always`: a default policy and per-daemon ones.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RestartSpec {
    pub default: Policy,
    /// Per-daemon policies, in the order given (a later one wins).
    pub daemons: Vec<(String, Policy)>,
}

impl RestartSpec {
    /// Parses comma-separated items, each `POLICY` or `NAME=POLICY`.
    pub fn parse(text: &str) -> Result<RestartSpec, String> {
        let mut spec = RestartSpec::default();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, policy) = match item.split_once('=') {
                Some((n, p)) => (Some(n.trim()), p.trim()),
                None => (None, item),
            };
            let policy = Policy::parse(policy).ok_or_else(|| {
                format!("'{policy}' is not a restart policy (never, on-failure, always)")
            })?;
            match name {
                None => spec.default = policy,
                Some(n) if procfile::is_valid_name(n) => spec.daemons.push((n.to_string(), policy)),
                Some(n) => return Err(format!("'{n}' is not a daemon name")),
            }
        }
        Ok(spec)
    }

    /// Each daemon's policy, for a table with these names (in order). A
    /// policy for a name the table lacks is an error.
    pub fn resolve(&self, names: &[&str]) -> Result<Vec<Policy>, String> {
        if let Some((unknown, _)) = self
            .daemons
            .iter()
            .find(|(n, _)| !names.contains(&n.as_str()))
        {
            return Err(format!("no daemon named '{unknown}' in the table"));
        }
        Ok(names
            .iter()
            .map(|name| {
                let own = self.daemons.iter().rev().find(|(n, _)| n == name);
                own.map_or(self.default, |(_, p)| *p)
            })
            .collect())
    }
}

pub const DEFAULT_GRACE: Duration = Duration::from_secs(8);
pub const DEFAULT_LINE_MAX: usize = 64 * 1024;
pub const DEFAULT_NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// The accepted range for `--line-max`.
pub const LINE_MAX_RANGE: (usize, usize) = (64, 16 * 1024 * 1024);
/// The longest accepted grace period: a day.
const MAX_GRACE_SECS: f64 = 86_400.0;

impl Default for Config {
    fn default() -> Self {
        Config {
            procfile: None,
            grace: DEFAULT_GRACE,
            line_max: DEFAULT_LINE_MAX,
            log_level: LevelFilter::Info,
            restart: None,
            backoff: Backoff::default(),
            notify: None,
            notify_timeout: DEFAULT_NOTIFY_TIMEOUT,
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

pub const HELP: &str = "\
sidecar-init: PID 1 for a container that runs several daemons side by side.

Starts the daemons, prefixes every line they write with [name], forwards
signals, reaps every process, stops them in bounded time and exits with the
worst of their codes.

Usage: sidecar-init [OPTIONS]

Options (each also read from the environment variable shown; flags win):
  --procfile PATH    run the daemons of this Procfile instead of the
                     built-in table                     [SIDECAR_INIT_PROCFILE]
  --grace SECONDS    time from SIGTERM to SIGKILL at shutdown; decimals
                     allowed (default 8)                [SIDECAR_INIT_GRACE]
  --line-max BYTES   longer output lines are split (default 65536)
                                                        [SIDECAR_INIT_LINE_MAX]
  --log-level LEVEL  error, warn, info or debug (default info)
                                                        [SIDECAR_INIT_LOG]
  --restart SPEC     restart policy: never (default), on-failure or always,
                     for all daemons and/or per daemon, comma-separated:
                     on-failure,egress=always          [SIDECAR_INIT_RESTART]
  --restart-delay SECONDS
                     first restart delay, doubling each quick restart
                     (default 1)                 [SIDECAR_INIT_RESTART_DELAY]
  --restart-max-delay SECONDS
                     longest restart delay (default 30)
                                             [SIDECAR_INIT_RESTART_MAX_DELAY]
  --restart-reset SECONDS
                     a run this long starts the backoff over (default 10)
                                                 [SIDECAR_INIT_RESTART_RESET]
  --max-restarts N   give a daemon up after N quick restarts in a row
                     (default: never give up)      [SIDECAR_INIT_MAX_RESTARTS]
  --notify COMMAND   run COMMAND on each lifecycle event, with the event in
                     SIDECAR_INIT_EVENT* variables     [SIDECAR_INIT_NOTIFY]
  --notify-timeout SECONDS
                     kill a notify command running longer (default 10)
                                                [SIDECAR_INIT_NOTIFY_TIMEOUT]
  --check            validate the configuration, print the daemons that
                     would run as a Procfile, and exit
  -h, --help         print this help
  -V, --version      print the version

Environment:
  CLAUDE_BOTTLE_SIDECAR_DAEMONS=a,b  run only these daemons of the table

Procfile: one `name: command args...` per line; # comments; words split as
a POSIX shell splits them (quotes, backslashes) but nothing is expanded and
no shell runs: write sh -c '...' where a shell is wanted.

Signals: SIGTERM or SIGINT stops the daemons (SIGTERM, then SIGKILL after
the grace period; a second SIGINT kills at once). SIGHUP, SIGQUIT, SIGUSR1,
SIGUSR2 and SIGWINCH are forwarded. Every signal goes to the daemon's
process group.

Exit code: the worst daemon code; 128+N for death by signal N, 0 for death
by the SIGTERM of a shutdown, 127/126 for a command not found/executable,
2 for bad configuration or usage.
";

/// Parses `args` (without the program name) and the `SIDECAR_INIT_*`
/// environment, read through `env`. Empty variables count as unset.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Request, UsageError> {
    let mut flags: Vec<(Opt, OsString)> = Vec::new();
    let mut check = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy().into_owned();
        match text.as_str() {
            "-h" | "--help" => return Ok(Request::Help),
            "-V" | "--version" => return Ok(Request::Version),
            "--check" => {
                check = true;
                continue;
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
                UsageError(format!("unexpected argument '{text}' (see --help)"))
            });
        };
        let value = if inline {
            let bytes = arg.as_encoded_bytes();
            // SAFETY: split right after an ASCII '=' of the same encoded bytes.
            unsafe { OsString::from_encoded_bytes_unchecked(bytes[flag.len() + 1..].to_vec()) }
        } else {
            args.next()
                .ok_or_else(|| UsageError(format!("option '{flag}' needs a value (see --help)")))?
        };
        flags.push((*opt, value));
    }

    let mut config = Config::default();
    for opt in OPTS {
        let from_flag = flags.iter().rev().find(|(o, _)| o.flag == opt.flag);
        let (source, value) = match from_flag {
            Some((_, v)) => (opt.flag.to_string(), v.clone()),
            None => match env(opt.env).filter(|v| !v.is_empty()) {
                Some(v) => (opt.env.to_string(), v),
                None => continue,
            },
        };
        (opt.apply)(&mut config, value)
            .map_err(|problem| UsageError(format!("{source}: {problem}")))?;
        if let Some((from, _)) = config.restart.as_mut().filter(|(from, _)| from.is_empty()) {
            *from = source;
        }
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

/// An option: its flag, its environment variable and how it sets the config.
#[derive(Clone, Copy)]
struct Opt {
    flag: &'static str,
    env: &'static str,
    apply: fn(&mut Config, OsString) -> Result<(), String>,
}

impl fmt::Debug for Opt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.flag)
    }
}

const OPTS: [Opt; 11] = [
    Opt {
        flag: "--procfile",
        env: "SIDECAR_INIT_PROCFILE",
        apply: |c, v| {
            c.procfile = Some(PathBuf::from(v));
            Ok(())
        },
    },
    Opt {
        flag: "--grace",
        env: "SIDECAR_INIT_GRACE",
        apply: |c, v| {
            c.grace = parse_seconds(&v.to_string_lossy())?;
            Ok(())
        },
    },
    Opt {
        flag: "--line-max",
        env: "SIDECAR_INIT_LINE_MAX",
        apply: |c, v| {
            c.line_max = parse_line_max(&v.to_string_lossy())?;
            Ok(())
        },
    },
    Opt {
        flag: "--log-level",
        env: "SIDECAR_INIT_LOG",
        apply: |c, v| {
            c.log_level = parse_level(&v.to_string_lossy())?;
            Ok(())
        },
    },
    Opt {
        flag: "--restart",
        env: "SIDECAR_INIT_RESTART",
        // The source is filled in by `parse`, which knows it.
        apply: |c, v| {
            c.restart = Some((String::new(), RestartSpec::parse(&v.to_string_lossy())?));
            Ok(())
        },
    },
    Opt {
        flag: "--restart-delay",
        env: "SIDECAR_INIT_RESTART_DELAY",
        apply: |c, v| {
            c.backoff.delay = parse_positive_seconds(&v.to_string_lossy())?;
            Ok(())
        },
    },
    Opt {
        flag: "--restart-max-delay",
        env: "SIDECAR_INIT_RESTART_MAX_DELAY",
        apply: |c, v| {
            c.backoff.max_delay = parse_positive_seconds(&v.to_string_lossy())?;
            Ok(())
        },
    },
    Opt {
        flag: "--restart-reset",
        env: "SIDECAR_INIT_RESTART_RESET",
        apply: |c, v| {
            c.backoff.reset = parse_seconds(&v.to_string_lossy())?;
            Ok(())
        },
    },
    Opt {
        flag: "--max-restarts",
        env: "SIDECAR_INIT_MAX_RESTARTS",
        apply: |c, v| {
            let text = v.to_string_lossy();
            let n = text
                .trim()
                .parse()
                .map_err(|_| format!("'{text}' is not a whole number"))?;
            c.backoff.max_restarts = Some(n);
            Ok(())
        },
    },
    Opt {
        flag: "--notify",
        env: "SIDECAR_INIT_NOTIFY",
        apply: |c, v| {
            c.notify = Some(procfile::split_words(&v.to_string_lossy())?);
            Ok(())
        },
    },
    Opt {
        flag: "--notify-timeout",
        env: "SIDECAR_INIT_NOTIFY_TIMEOUT",
        apply: |c, v| {
            c.notify_timeout = parse_positive_seconds(&v.to_string_lossy())?;
            Ok(())
        },
    },
];

/// Seconds, more than zero.
fn parse_positive_seconds(text: &str) -> Result<Duration, String> {
    match parse_seconds(text)? {
        d if d.is_zero() => Err(format!("'{text}' must be more than 0 seconds")),
        d => Ok(d),
    }
}

/// Seconds as a non-negative decimal (`8`, `0.5`), at most a day.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let well_formed = !t.is_empty()
        && t.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && t.bytes().filter(|&b| b == b'.').count() <= 1
        && t.bytes().any(|b| b.is_ascii_digit());
    let secs: f64 = match t.parse() {
        Ok(s) if well_formed => s,
        _ => {
            return Err(format!(
                "'{text}' is not a number of seconds (e.g. 8 or 0.5)"
            ));
        }
    };
    if secs > MAX_GRACE_SECS {
        return Err(format!("'{text}' seconds is more than a day"));
    }
    Ok(Duration::from_secs_f64(secs))
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
        assert_eq!(
            error(&["stray"], &[]),
            "unexpected argument 'stray' (see --help)"
        );
        assert_eq!(
            error(&["--grace"], &[]),
            "option '--grace' needs a value (see --help)"
        );
        assert!(error(&["--grace", "soon"], &[]).starts_with("--grace: 'soon' is not a number"));
        assert!(error(&[], &[("SIDECAR_INIT_GRACE", "-1")]).starts_with("SIDECAR_INIT_GRACE: "));
        assert!(error(&[], &[("SIDECAR_INIT_LOG", "loud")]).contains("not a log level"));
        assert!(error(&["--line-max", "10"], &[]).contains("from 64 to"));
        assert!(error(&["--grace", "1e9"], &[]).contains("not a number"));
        assert!(error(&["--grace", "100000"], &[]).contains("more than a day"));
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
        let (source, spec) = c.restart.unwrap();
        assert_eq!(source, "--restart");
        assert_eq!(spec.default, Policy::OnFailure);
        assert_eq!(
            spec.resolve(&["egress", "pipelock", "x"]),
            Ok(vec![Policy::Always, Policy::Never, Policy::OnFailure])
        );
        assert_eq!(c.backoff.delay, Duration::from_millis(500));
        assert_eq!(c.backoff.max_delay, Duration::from_secs(4));
        assert_eq!(c.backoff.reset, Duration::from_secs(10));
        assert_eq!(c.backoff.max_restarts, Some(3));
        let (source, _) = config(&[], &[("SIDECAR_INIT_RESTART", "always")])
            .restart
            .unwrap();
        assert_eq!(source, "SIDECAR_INIT_RESTART");
    }

    #[test]
    fn restart_errors() {
        assert!(
            error(&["--restart", "sometimes"], &[]).contains("'sometimes' is not a restart policy")
        );
        assert!(error(&["--restart", "a b=always"], &[]).contains("'a b' is not a daemon name"));
        assert!(error(&["--restart-delay", "0"], &[]).contains("more than 0"));
        assert!(error(&["--max-restarts", "-1"], &[]).contains("not a whole number"));
        assert!(
            error(&["--restart-delay", "5", "--restart-max-delay", "2"], &[])
                .contains("shorter than the first")
        );
        let spec = RestartSpec::parse("ghost=always").unwrap();
        assert_eq!(
            spec.resolve(&["a"]),
            Err("no daemon named 'ghost' in the table".to_string())
        );
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
        for bad in ["", ".", "1.2.3", "-1", "inf", "NaN", "1s", "+1"] {
            assert!(parse_seconds(bad).is_err(), "{bad:?}");
        }
    }
}
