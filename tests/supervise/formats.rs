//! Output formats end to end (SPEC §12): JSON lines, timestamps, colour.

use std::time::{SystemTime, UNIX_EPOCH};

use nix::libc::SIGTERM;

use crate::harness::{DEADLINE, Spec, skip};

/// Prints nasty bytes: quotes, backslashes, control characters, invalid
/// UTF-8, a long line, a last line without a newline.
const NASTY: &str = r#"nasty: sh -c 'printf "plain\n\"quoted\" and \\\\backslash\\\\\ttab\001\037\n"; printf "bad \377\376 utf8 é\n"; head -c 3000 /dev/zero | tr "\0" x; echo; printf "no newline"'"#;

fn json_lines(out: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    out.lines()
        .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(serde_json::Value::Object(m)) => m,
            other => panic!("not a JSON object: {l:?}: {other:?}\n--- all:\n{out}"),
        })
        .collect()
}

fn str_of<'a>(m: &'a serde_json::Map<String, serde_json::Value>, key: &str) -> &'a str {
    m.get(key)
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("no string {key:?} in {m:?}"))
}

/// Seconds since the epoch of an RFC 3339 UTC time with microseconds.
fn epoch_of(time: &str) -> f64 {
    assert_eq!(time.len(), 27, "{time}");
    assert!(time.ends_with('Z') && &time[10..11] == "T", "{time}");
    let n = |a: usize, b: usize| time[a..b].parse::<i64>().unwrap();
    let (y, mo, d) = (n(0, 4), n(5, 7), n(8, 10));
    // Days from the civil date (Howard Hinnant's algorithm, independent of
    // the one under test).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(11, 13) * 3600 + n(14, 16) * 60 + n(17, 19);
    secs as f64 + n(20, 26) as f64 / 1e6
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn json_lines_are_valid_whatever_the_daemons_write() {
    let before = now();
    let (code, out, _) = Spec::procfile(&format!("{NASTY}\n"))
        .args(&["--log-format", "json", "--line-max", "1000"])
        .run();
    let after = now();
    assert_eq!(code, 0, "{out}");
    let lines = json_lines(&out);
    let mut daemon = Vec::new();
    for m in &lines {
        let time = epoch_of(str_of(m, "time"));
        assert!(
            time >= before - 1.0 && time <= after + 1.0,
            "time {time} outside the run"
        );
        match str_of(m, "daemon") {
            "nasty" => {
                assert_eq!(m.len(), 3, "time, daemon, line: {m:?}");
                daemon.push(str_of(m, "line").to_string());
            }
            "sidecar-init" => {
                assert_eq!(m.len(), 4, "time, daemon, level, message: {m:?}");
                assert!(["info", "warn", "error", "debug"].contains(&str_of(m, "level")));
                str_of(m, "message");
            }
            other => panic!("daemon {other:?}"),
        }
    }
    let long = "x".repeat(3000);
    let want = [
        "plain",
        "\"quoted\" and \\backslash\\\ttab\u{1}\u{1f}",
        "bad \u{fffd}\u{fffd} utf8 é",
        &long[..1000],
        &long[1000..2000],
        &long[2000..],
        "no newline",
    ];
    assert_eq!(daemon, want);
    let last = lines.last().unwrap();
    assert_eq!(str_of(last, "message"), "exit 0", "exit N is the last line");
    // Escaped, not raw: no control character on the wire.
    assert!(!out.bytes().any(|b| b < 0x20 && b != b'\n'));
}

#[test]
fn json_keeps_the_order_and_loses_nothing_at_speed() {
    let (code, out, _) = Spec::procfile("a: seq 1 20000\nb: seq 1 20000\n")
        .args(&["--log-format", "json"])
        .run();
    assert_eq!(code, 0);
    let lines = json_lines(&out);
    for name in ["a", "b"] {
        let got: Vec<u32> = lines
            .iter()
            .filter(|m| str_of(m, "daemon") == name)
            .map(|m| str_of(m, "line").parse().unwrap())
            .collect();
        assert!(
            got.iter().copied().eq(1..=20_000),
            "{name}: {} lines",
            got.len()
        );
    }
    // An exit line after each daemon's last line.
    let pos = |pred: &dyn Fn(&serde_json::Map<String, serde_json::Value>) -> bool| {
        lines.iter().position(pred).unwrap()
    };
    let last_a = lines
        .iter()
        .rposition(|m| str_of(m, "daemon") == "a")
        .unwrap();
    let exit_a = pos(&|m| {
        str_of(m, "daemon") == "sidecar-init" && str_of(m, "message").starts_with("a exited")
    });
    assert!(last_a < exit_a);
}

#[test]
fn timestamps_start_every_plain_line_with_the_time_of_the_read() {
    let before = now();
    // One write of two lines (so one read), then another write later.
    let mut init = Spec::procfile(
        "a: sh -c 'printf \"one\\\\ntwo\\\\n\"; sleep 0.3; echo three; exec sleep 1000'\n",
    )
    .args(&["--timestamps"])
    .start();
    init.wait_for("] three");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
    let after = now();
    let mut times = Vec::new();
    for line in init.lines() {
        let (time, rest) = line.split_at(27);
        let t = epoch_of(time);
        assert!(t >= before - 1.0 && t <= after + 1.0, "{line}");
        assert!(
            rest.starts_with(" [a] ") || rest.starts_with(" sidecar-init: "),
            "{line}"
        );
        times.push((t, rest.to_string()));
    }
    let of = |text: &str| times.iter().find(|(_, r)| r == text).unwrap().0;
    // One and two came in one read: the same time. Three came later.
    assert_eq!(of(" [a] one"), of(" [a] two"));
    assert!(of(" [a] three") - of(" [a] two") >= 0.25);
    assert!(
        times.windows(2).all(|w| w[0].0 <= w[1].0),
        "times never go back"
    );
}

#[test]
fn colour_only_when_asked_or_on_a_terminal_and_never_in_json() {
    let procfile = "a: echo hi\nb: echo there\n";
    // A pipe: auto means none.
    let (_, out, _) = Spec::procfile(procfile).run();
    assert!(!out.contains('\x1b'), "{out:?}");
    // Forced on: names coloured by table position, our own lines dim.
    let (_, out, _) = Spec::procfile(procfile).args(&["--color", "always"]).run();
    assert!(out.contains("\x1b[36m[a]\x1b[0m hi"), "{out:?}");
    assert!(out.contains("\x1b[33m[b]\x1b[0m there"), "{out:?}");
    assert!(
        out.contains("\x1b[2msidecar-init: exit 0\x1b[0m"),
        "{out:?}"
    );
    // NO_COLOR does not beat an explicit always, and never wins over all.
    let (_, out, _) = Spec::procfile(procfile)
        .args(&["--color", "always"])
        .env("NO_COLOR", "1")
        .run();
    assert!(out.contains('\x1b'));
    let (_, out, _) = Spec::procfile(procfile)
        .args(&["--color", "always", "--log-format", "json"])
        .run();
    assert!(!out.contains('\x1b') && !out.contains("\\u001b"), "{out:?}");
}

/// Runs sidecar-init on a pseudo-terminal (python3's pty module) and
/// returns what the terminal showed.
fn on_a_pty(dir: &std::path::Path, env: &[(&str, &str)]) -> Option<String> {
    let script = r#"
import os, pty, sys, select
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
out = b""
while True:
    r, _, _ = select.select([fd], [], [], 10)
    if not r:
        break
    try:
        chunk = os.read(fd, 65536)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
os.waitpid(pid, 0)
sys.stdout.buffer.write(out)
"#;
    let procfile = dir.join("Procfile");
    std::fs::write(&procfile, "a: echo hi\n").unwrap();
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c")
        .arg(script)
        .arg(crate::harness::binary())
        .arg("--procfile")
        .arg(&procfile)
        .arg("--control")
        .arg("off")
        .current_dir(dir)
        .env_remove("NO_COLOR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn auto_colour_on_a_terminal_unless_no_color() {
    let dir = crate::harness::TempDir::new();
    let Some(out) = on_a_pty(dir.path(), &[]) else {
        skip("auto_colour_on_a_terminal", "no python3 with pty");
        return;
    };
    assert!(out.contains("\x1b[36m[a]\x1b[0m hi"), "{out:?}");
    let out = on_a_pty(dir.path(), &[("NO_COLOR", "1")]).unwrap();
    assert!(out.contains("[a] hi") && !out.contains('\x1b'), "{out:?}");
    let out = on_a_pty(dir.path(), &[("SIDECAR_INIT_COLOR", "never")]).unwrap();
    assert!(!out.contains('\x1b'), "{out:?}");
}

#[test]
fn bad_format_options_exit_2() {
    for (args, needle) in [
        (&["--log-format", "xml"][..], "not a log format"),
        (&["--color", "blue"][..], "not a colour setting"),
    ] {
        let (code, out, _) = Spec::procfile("a: touch spawned\n").args(args).run();
        assert_eq!(code, 2, "{out}");
        assert!(out.contains(needle), "{out}");
    }
    let (code, out, _) = Spec::procfile("a: touch spawned\n")
        .env("SIDECAR_INIT_TIMESTAMPS", "perhaps")
        .run();
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("SIDECAR_INIT_TIMESTAMPS: 'perhaps' is not true or false"));
}
