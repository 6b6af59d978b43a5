//! Command line and environment: what to run and how. No I/O here; the
//! environment is passed in as a lookup function.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use log::LevelFilter;

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
}

pub const DEFAULT_GRACE: Duration = Duration::from_secs(8);
pub const DEFAULT_LINE_MAX: usize = 64 * 1024;
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

const OPTS: [Opt; 4] = [
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
];

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
    fn seconds() {
        assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
        assert_eq!(parse_seconds(" 2.25 "), Ok(Duration::from_millis(2250)));
        assert_eq!(parse_seconds(".5"), Ok(Duration::from_millis(500)));
        for bad in ["", ".", "1.2.3", "-1", "inf", "NaN", "1s", "+1"] {
            assert!(parse_seconds(bad).is_err(), "{bad:?}");
        }
    }
}
