//! The control socket and its client (SPEC §10): every verb against a
//! running supervisor, the socket's security, hostile clients while daemons
//! write flat out, and liveness checks.
//!
//! The client is the binary itself, run as `sidecar-init VERB ...
//! --control PATH` with each test's own socket (see `Init::control_socket`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::libc::SIGTERM;
use serde_json::Value;

use crate::harness::{
    DEADLINE, Init, Spec, TempDir, binary, cpu_and_wakeups, free_port, pid_file, proc_state, skip,
    wait_file, wait_gone,
};

/// A daemon that writes its pid to `NAME.pid`, says `up` and idles until
/// signalled.
fn idle(name: &str) -> String {
    format!("{name}: sh -c 'echo $$ > {name}.pid; echo up; while :; do sleep 1 & wait $!; done'\n")
}

/// What one run of the client did.
#[derive(Debug)]
struct Ran {
    code: i32,
    out: String,
    err: String,
}

/// Runs `cmd` to completion within the deadline (killed and failed after
/// it); its output is small, so it is read once the command is done.
fn run(mut cmd: Command) -> Ran {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the client") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    Ran {
        code: status.code().unwrap_or(-1),
        out,
        err,
    }
}

/// `sidecar-init ARGS... --control SOCKET`.
fn client_at(socket: &Path, args: &[&str]) -> Ran {
    let mut cmd = Command::new(binary());
    cmd.args(args).arg("--control").arg(socket);
    run(cmd)
}

/// The client against `init`'s socket.
fn ctl(init: &Init, args: &[&str]) -> Ran {
    client_at(&init.control_socket(), args)
}

/// The client, which must exit with `code`.
fn ctl_ok(init: &Init, args: &[&str], code: i32) -> Ran {
    let ran = ctl(init, args);
    if ran.code != code {
        init.fail(&format!(
            "sidecar-init {args:?}: exit {} (expected {code})\nstdout: {}\nstderr: {}",
            ran.code, ran.out, ran.err
        ));
    }
    ran
}

/// `status --json`, parsed.
fn status_json(init: &Init) -> Vec<Value> {
    let ran = ctl_ok(init, &["status", "--json"], 0);
    match serde_json::from_str::<Value>(&ran.out) {
        Ok(Value::Array(units)) => units,
        Ok(other) => init.fail(&format!("status --json is not an array: {other}")),
        Err(e) => init.fail(&format!("status --json is not JSON ({e}): {}", ran.out)),
    }
}

/// The unit named `name` in a `status --json` answer.
fn unit<'a>(units: &'a [Value], name: &str) -> &'a Value {
    units
        .iter()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("no unit {name} in {units:?}"))
}

/// Polls `status --json` until `pred` holds for unit `name`; returns it.
fn wait_unit(init: &Init, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let units = status_json(init);
        let u = unit(&units, name);
        if pred(u) {
            return u.clone();
        }
        if Instant::now() > deadline {
            init.fail(&format!("{name} never {what}: last status {u}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `health` until it exits with `code`; returns that run.
fn wait_health(init: &Init, code: i32) -> Ran {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let ran = ctl(init, &["health"]);
        if ran.code == code {
            return ran;
        }
        if Instant::now() > deadline {
            init.fail(&format!("health never exited {code}: last {ran:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn count(init: &Init, needle: &str) -> usize {
    init.output().matches(needle).count()
}

// ---------------------------------------------------------------------------
// The verbs
// ---------------------------------------------------------------------------

#[test]
fn status_shows_every_unit_as_a_table_and_as_json() {
    let procfile = format!(
        "{}migrate: true\nflaky: sh -c 'exit 3'\n{}",
        idle("db"),
        idle("web")
    );
    let started = Instant::now();
    let mut init = Spec::procfile(&procfile)
        .args(&[
            "--ready",
            "db=file:db.pid",
            "--oneshot",
            "migrate",
            "--after",
            "web=db",
            "--restart",
            "flaky=always",
            "--restart-delay",
            "20s",
        ])
        .start();
    init.wait_for("[web] up");
    init.wait_for("flaky exited with code 3; restarting in 20s (restart 1)");
    init.wait_for("migrate finished");
    let db_pid = pid_file(&init.dir.path().join("db.pid"));
    let web_pid = pid_file(&init.dir.path().join("web.pid"));

    let units = status_json(&init);
    let names: Vec<&str> = units.iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["db", "migrate", "flaky", "web"], "table order");
    for u in &units {
        let mut got: Vec<&str> = u.as_object().unwrap().keys().map(String::as_str).collect();
        got.sort();
        let mut want = [
            "name",
            "kind",
            "state",
            "pid",
            "uptime_seconds",
            "restarts",
            "code",
            "check",
            "detail",
        ];
        want.sort();
        assert_eq!(got, want, "{u}");
    }
    let db = unit(&units, "db");
    assert_eq!(db["kind"], "daemon");
    assert_eq!(db["state"], "ready");
    assert_eq!(db["pid"], db_pid, "the daemon's real pid");
    let up = db["uptime_seconds"].as_f64().expect("uptime is a number");
    assert!(
        up >= 0.0 && up <= started.elapsed().as_secs_f64(),
        "uptime {up} is not within this test's {:?}",
        started.elapsed()
    );
    assert_eq!(db["restarts"], 0);
    assert_eq!(db["code"], Value::Null);
    assert_eq!(db["check"], "file:db.pid");
    assert_eq!(db["detail"], "");

    let migrate = unit(&units, "migrate");
    assert_eq!(migrate["kind"], "oneshot");
    assert_eq!(migrate["state"], "finished");
    assert_eq!(migrate["pid"], Value::Null);
    assert_eq!(migrate["uptime_seconds"], Value::Null);
    assert_eq!(migrate["code"], 0);
    assert_eq!(migrate["check"], Value::Null);

    let flaky = unit(&units, "flaky");
    assert_eq!(flaky["state"], "backoff");
    assert_eq!(
        (&flaky["pid"], &flaky["uptime_seconds"]),
        (&Value::Null, &Value::Null)
    );
    assert_eq!(flaky["restarts"], 1);
    assert_eq!(flaky["code"], 3);
    let detail = flaky["detail"].as_str().unwrap();
    assert!(detail.starts_with("restart in "), "{detail}");

    let web = unit(&units, "web");
    assert_eq!(
        (&web["state"], &web["pid"]),
        (&"ready".into(), &web_pid.into())
    );

    // Uptime grows with the clock.
    std::thread::sleep(Duration::from_millis(1000));
    let later = unit(&status_json(&init), "db")["uptime_seconds"]
        .as_f64()
        .unwrap();
    let grew = later - up;
    assert!((0.9..2.5).contains(&grew), "uptime grew by {grew}s in 1s");

    // The table: a header, one aligned row per unit, DETAIL since one has it.
    let ran = ctl_ok(&init, &["status"], 0);
    let lines: Vec<&str> = ran.out.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "STATE", "PID", "UPTIME", "RESTARTS", "CODE", "CHECK", "DETAIL"
        ],
        "{}",
        ran.out
    );
    assert_eq!(lines.len(), 5, "{}", ran.out);
    let row = |name: &str| -> Vec<&str> {
        lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}: {}", ran.out))
            .split_whitespace()
            .collect()
    };
    let db_pid = db_pid.to_string();
    assert_eq!(
        row("db"),
        [
            "db",
            "ready",
            db_pid.as_str(),
            row("db")[3],
            "0",
            "-",
            "file:db.pid"
        ]
    );
    assert!(row("db")[3].ends_with('s'), "uptime {:?}", row("db"));
    assert_eq!(
        &row("migrate")[..6],
        ["migrate", "finished", "-", "-", "0", "0"]
    );
    assert_eq!(
        &row("flaky")[..8],
        ["flaky", "backoff", "-", "-", "1", "3", "-", "restart"]
    );
    // Columns line up: every row's STATE starts where the header's does.
    let at = lines[0].find("STATE").unwrap();
    for l in &lines[1..] {
        assert_eq!(l.as_bytes()[at - 1], b' ', "{}", ran.out);
        assert_ne!(l.as_bytes()[at], b' ', "{}", ran.out);
    }

    // The socket can also come from the environment.
    let ran = run({
        let mut cmd = Command::new(binary());
        cmd.arg("status")
            .env("SIDECAR_INIT_CONTROL", init.control_socket());
        cmd
    });
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.out.contains("migrate"), "{ran:?}");

    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 3, "flaky's last code");
}

#[test]
fn health_says_which_daemon_died_and_is_back_to_0_after_start() {
    let procfile = format!(
        "{}mortal: sh -c 'echo $$ > mortal.pid; echo up; while [ ! -e die ]; do sleep 0.05; done; exit 3'\n",
        idle("steady")
    );
    let mut init = Spec::procfile(&procfile)
        .args(&["--ready", "steady=file:steady.pid"])
        .start();
    init.wait_for("[mortal] up");
    let ran = wait_health(&init, 0);
    assert_eq!(ran.out, "healthy\n");

    std::fs::write(init.dir.path().join("die"), "").unwrap();
    init.wait_for("mortal exited with code 3; leaving surviving daemons running");
    let ran = ctl_ok(&init, &["health"], 1);
    assert_eq!(ran.out, "mortal: exited with code 3\n", "{ran:?}");

    std::fs::remove_file(init.dir.path().join("die")).unwrap();
    let old = pid_file(&init.dir.path().join("mortal.pid"));
    std::fs::remove_file(init.dir.path().join("mortal.pid")).unwrap();
    let ran = ctl_ok(&init, &["start", "mortal"], 0);
    assert_eq!(ran.out, "starting mortal\n");
    let ran = wait_health(&init, 0);
    assert_eq!(ran.out, "healthy\n");
    let new = pid_file(&init.dir.path().join("mortal.pid"));
    assert_ne!(old, new, "a new process");
    init.expect("sidecar-init: starting mortal (requested)");

    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0, "the last run counts");
}

#[test]
fn stop_kills_a_term_ignoring_daemon_after_the_grace_and_it_stays_down() {
    // other takes a while to stop, so that a `stop` can come during its
    // `restart`.
    let procfile = "\
stubborn: sh -c 'trap \"\" TERM; echo $$ > stubborn.pid; echo up; while :; do sleep 1; done'
other: sh -c 'trap \"sleep 0.5; exit 0\" TERM; echo up; while :; do sleep 1 & wait $!; done'
";
    let mut init = Spec::procfile(procfile)
        .args(&[
            "--grace",
            "1",
            "--restart",
            "always",
            "--restart-delay",
            "0.1",
        ])
        .start();
    init.wait_for("[stubborn] up");
    init.wait_for("[other] up");
    let pid = pid_file(&init.dir.path().join("stubborn.pid"));
    let asked = Instant::now();
    let ran = ctl_ok(&init, &["stop", "stubborn"], 0);
    assert_eq!(ran.out, "stopping stubborn\n");
    init.wait_for(
        "sidecar-init: stubborn exited with code 137 (killed by SIGKILL); stopped on request",
    );
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(6),
        "SIGKILL after the 1s grace, not {took:?}"
    );
    init.expect("sidecar-init: stopping stubborn (requested)");
    init.expect("sidecar-init: stubborn still running 1s after its stop signal; SIGKILL");
    assert!(wait_gone(pid, DEADLINE), "the daemon is gone");

    // Down for good: not restarted by `always`, sidecar-init goes on.
    std::thread::sleep(Duration::from_millis(600));
    assert!(init.running(), "sidecar-init exited");
    init.expect_not("restarting stubborn");
    assert_eq!(count(&init, "[stubborn] up"), 1);
    let s = unit(&status_json(&init), "stubborn").clone();
    assert_eq!(s["state"], "stopped", "{s}");
    assert_eq!((&s["pid"], &s["code"]), (&Value::Null, &137.into()), "{s}");
    let ran = ctl_ok(&init, &["health"], 1);
    assert_eq!(ran.out, "stubborn: stopped\n");
    let ran = ctl_ok(&init, &["stop", "stubborn"], 1);
    assert_eq!(ran.err, "sidecar-init: stubborn is not running (stopped)\n");

    // A stop while a restart is under way wins: it stays down.
    let ran = ctl_ok(&init, &["restart", "other"], 0);
    assert_eq!(ran.out, "restarting other\n");
    let ran = ctl_ok(&init, &["stop", "other"], 0);
    assert_eq!(ran.out, "stopping other\n");
    init.wait_for("sidecar-init: stopping other (requested; no longer restarting it)");
    init.wait_for("other exited with code 0; stopped on request");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(&init, "[other] up"), 1, "other came back");
    assert!(
        init.running(),
        "every daemon stopped: sidecar-init still runs"
    );

    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 137, "stubborn's last code counts");
}

#[test]
fn start_starts_a_daemon_in_backoff_at_once_and_resets_its_backoff() {
    let procfile = format!("flaky: sh -c 'echo run; exit 1'\n{}", idle("steady"));
    let mut init = Spec::procfile(&procfile)
        .args(&[
            "--restart",
            "flaky=always",
            "--restart-delay",
            "0.1",
            "--restart-max-delay",
            "30s",
        ])
        .start();
    init.wait_for("flaky exited with code 1; restarting in 0.8s (restart 4)");
    init.wait_for("flaky exited with code 1; restarting in 1.6s (restart 5)");
    // Now in a 1.6s backoff: `start` runs it at once.
    let asked = Instant::now();
    let ran = ctl_ok(&init, &["start", "flaky"], 0);
    assert_eq!(ran.out, "starting flaky\n");
    init.wait_for("sidecar-init: starting flaky now (requested; backoff reset)");
    init.wait_for("flaky exited with code 1; restarting in 0.1s (restart 6)");
    assert!(
        asked.elapsed() < Duration::from_millis(1500),
        "not started at once: {:?}",
        asked.elapsed()
    );
    // Stopped during a backoff, and started again: from the first delay.
    init.wait_for("flaky exited with code 1; restarting in 0.4s (restart 8)");
    let ran = ctl_ok(&init, &["stop", "flaky"], 0);
    // (Or, on a slow machine, it had already started again.)
    assert!(
        ran.out == "flaky will not start\n" || ran.out == "stopping flaky\n",
        "{ran:?}"
    );
    wait_unit(&init, "flaky", "stopped", |u| u["state"] == "stopped");
    let runs = count(&init, "[flaky] run");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(count(&init, "[flaky] run"), runs, "ran while stopped");
    ctl_ok(&init, &["start", "flaky"], 0);
    init.wait_for("flaky exited with code 1; restarting in 0.1s (restart 9)");
    let u = unit(&status_json(&init), "flaky").clone();
    assert!(u["restarts"].as_u64().unwrap() >= 9, "{u}");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 1);
}

#[test]
fn restart_replaces_the_process() {
    let procfile = format!(
        "svc: sh -c 'trap \"echo got TERM; exit 0\" TERM; echo $$ > svc.pid; echo up; while :; do sleep 1 & wait $!; done'\n{}",
        idle("other")
    );
    let mut init = Spec::procfile(&procfile).start();
    init.wait_for("[svc] up");
    init.wait_for("[other] up");
    let pid = pid_file(&init.dir.path().join("svc.pid"));
    let other = pid_file(&init.dir.path().join("other.pid"));
    std::fs::remove_file(init.dir.path().join("svc.pid")).unwrap();
    let ran = ctl_ok(&init, &["restart", "svc"], 0);
    assert_eq!(ran.out, "restarting svc\n");
    init.wait_for("sidecar-init: svc exited with code 0; restarting it (restart 1)");
    let new = pid_file(&init.dir.path().join("svc.pid"));
    assert_ne!(pid, new);
    assert!(wait_gone(pid, DEADLINE));
    let u = wait_unit(&init, "svc", "ready again", |u| u["state"] == "ready");
    assert_eq!(
        (&u["pid"], &u["restarts"], &u["code"]),
        (&new.into(), &1.into(), &0.into())
    );
    init.expect("[svc] got TERM");
    assert_eq!(
        count(&init, "[other] up"),
        1,
        "the other daemon was left alone"
    );
    assert!(
        proc_state(other).is_some(),
        "the other daemon is still there"
    );
    // A daemon that is over comes back with restart too.
    ctl_ok(&init, &["stop", "other"], 0);
    wait_unit(&init, "other", "stopped", |u| u["state"] == "stopped");
    ctl_ok(&init, &["restart", "other"], 0);
    init.wait_until("other up twice", DEADLINE, |out| {
        out.matches("[other] up").count() == 2
    });
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
}

/// `a.sh`: traps USR1 and starts a child (in its process group) that traps
/// it too.
const TRAPPER: &str = r#"
trap 'echo a got USR1' USR1
sh -c 'trap "echo a-child got USR1" USR1; echo child up; while :; do sleep 0.1; done' &
echo $$ > a.pid
echo up
while :; do sleep 1 & wait $!; done
"#;

#[test]
fn signal_reaches_one_daemons_group_and_no_other() {
    let procfile = "a: sh a.sh\nb: sh -c 'trap \"echo b got USR1\" USR1; echo up; while :; do sleep 1 & wait $!; done'\n";
    let mut init = Spec::procfile(procfile).file("a.sh", TRAPPER).start();
    init.wait_for("[a] up");
    init.wait_for("[a] child up");
    init.wait_for("[b] up");
    let ran = ctl_ok(&init, &["signal", "a", "USR1"], 0);
    assert_eq!(ran.out, "sent SIGUSR1 to a\n");
    init.wait_for("[a] a got USR1");
    init.wait_for("[a] a-child got USR1");
    init.expect("sidecar-init: sending SIGUSR1 to a (requested)");
    // Numbers and SIG names work too.
    ctl_ok(&init, &["signal", "b", "SIGUSR1"], 0);
    init.wait_for("[b] b got USR1");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        count(&init, "got USR1"),
        3,
        "each signal reached one daemon"
    );
    let usr1 = nix::libc::SIGUSR1.to_string();
    ctl_ok(&init, &["signal", "a", &usr1], 0);
    init.wait_until("a second USR1", DEADLINE, |out| {
        out.matches("[a] a got USR1").count() == 2
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(&init, "[b] b got USR1"), 1, "b got a's signal");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
}

#[test]
fn client_errors_have_their_exit_codes() {
    let mut init = Spec::procfile(&idle("a")).start();
    init.wait_for("[a] up");
    // 1: refused by the supervisor, with the reason.
    for (args, why) in [
        (&["stop", "ghost"][..], "no daemon named 'ghost'"),
        (&["signal", "ghost", "HUP"][..], "no daemon named 'ghost'"),
        (&["start", "a"][..], "a is ready"),
    ] {
        let ran = ctl_ok(&init, args, 1);
        assert_eq!(ran.err, format!("sidecar-init: {why}\n"), "{args:?}");
        assert_eq!(ran.out, "");
    }
    // 2: usage, found by the client (nothing is sent).
    for (args, why) in [
        (
            &["signal", "a", "BOGUS"][..],
            "signal: 'BOGUS' is not a signal",
        ),
        (
            &["signal", "a", "0"][..],
            "signal: '0' is not a signal number",
        ),
        (
            &["signal", "a", "99"][..],
            "signal: '99' is not a signal number",
        ),
        (
            &["signal", "a"][..],
            "signal takes a daemon name and a signal",
        ),
        (&["stop"][..], "stop takes one daemon name"),
        (&["stop", "a", "b"][..], "stop takes one daemon name"),
        (&["restart", "no/such"][..], "invalid daemon name"),
        (&["status", "--yaml"][..], "status takes only --json"),
        (&["health", "now"][..], "health takes no arguments"),
    ] {
        let ran = ctl_ok(&init, args, 2);
        assert!(ran.err.contains(why), "{args:?}: {}", ran.err);
        assert!(
            ran.err.contains("usage: sidecar-init status"),
            "{args:?}: {}",
            ran.err
        );
    }
    init.expect_not("sending");
    // 3: no supervisor answers.
    let nowhere = init.dir.path().join("nowhere.sock");
    let ran = client_at(&nowhere, &["status"]);
    assert_eq!(ran.code, 3, "{ran:?}");
    assert_eq!(
        ran.err,
        format!(
            "sidecar-init: no supervisor answers on {} (no such file)\n",
            nowhere.display()
        )
    );
    // --help names the exit codes.
    let ran = ctl_ok(&init, &["status", "--help"], 0);
    for code in [
        "0 done",
        "1 refused or unhealthy",
        "2 usage",
        "3 no supervisor",
    ] {
        assert!(ran.out.contains(code), "{code}: {}", ran.out);
    }
    // While shutting down, commands are refused and health says so.
    let sleeper =
        "a: sh -c 'trap \"sleep 2; exit 0\" TERM; echo up; while :; do sleep 1 & wait $!; done'\n";
    let mut slow = Spec::procfile(sleeper).start();
    slow.wait_for("[a] up");
    slow.signal(SIGTERM);
    slow.wait_for("shutting down (SIGTERM)");
    let ran = ctl_ok(&slow, &["restart", "a"], 1);
    assert_eq!(ran.err, "sidecar-init: shutting down\n");
    let ran = ctl_ok(&slow, &["health"], 1);
    assert_eq!(ran.out, "shutting down\na: stopping\n");
    assert_eq!(slow.wait_exit(DEADLINE), 0);
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
    // The socket file goes with the supervisor.
    assert!(!init.control_socket().exists());
    let ran = ctl(&init, &["status"]);
    assert_eq!(ran.code, 3, "{ran:?}");
}

// ---------------------------------------------------------------------------
// Security and where the socket is
// ---------------------------------------------------------------------------

/// A copy of the binary that any uid can run (the build directory may not
/// be reachable by another user).
fn public_binary(dir: &Path) -> PathBuf {
    let copy = dir.join("sidecar-init-client");
    std::fs::copy(binary(), &copy).expect("copy the binary");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

#[test]
fn the_socket_is_0600_and_other_uids_are_refused() {
    let mut init = Spec::procfile(&idle("a")).start();
    init.wait_for("[a] up");
    let socket = init.control_socket();
    assert!(wait_file(&socket, DEADLINE));
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o7777, 0o600, "mode {:o}", meta.mode());
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());

    if !nix::unistd::geteuid().is_root() {
        skip(
            "the_socket_is_0600_and_other_uids_are_refused (another uid)",
            "not root: cannot run a client as another user",
        );
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        skip(
            "the_socket_is_0600_and_other_uids_are_refused (another uid)",
            "no setpriv",
        );
        return;
    }
    // The directory is reachable by anyone; the socket itself is not.
    let dir = init.dir.path().to_path_buf();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let bin = public_binary(&dir);
    let nobody = |caps: bool| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"]);
        if caps {
            // Past the file's mode (as root's DAC override would be), so
            // that what refuses is the supervisor's SO_PEERCRED check.
            cmd.args([
                "--inh-caps",
                "+dac_override",
                "--ambient-caps",
                "+dac_override",
            ]);
        }
        cmd.arg(&bin).arg("status").arg("--control").arg(&socket);
        run(cmd)
    };
    // The file's mode keeps another uid out.
    let ran = nobody(false);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.err.contains("permission denied"), "{ran:?}");
    assert!(ran.out.is_empty(), "{ran:?}");
    // Past the mode, the peer's credentials: refused, and logged once
    // however many try.
    for _ in 0..5 {
        let ran = nobody(true);
        assert_eq!(ran.code, 1, "{ran:?}");
        assert_eq!(
            ran.err,
            "sidecar-init: permission denied: only root and the supervisor's uid may use the control socket\n",
            "{ran:?}"
        );
        assert!(ran.out.is_empty(), "{ran:?}");
    }
    init.wait_for(
        "sidecar-init: control socket: refused 1 connection (uid 65534: not root or ours)",
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(&init, "refused"), 1, "one line per window");
    // Root still gets its answers.
    ctl_ok(&init, &["status"], 0);
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
}

#[test]
fn control_off_and_an_uncreatable_socket() {
    // off: no socket, no warning; the client finds no supervisor.
    let mut init = Spec::procfile(&idle("a"))
        .args(&["--control", "off"])
        .start();
    init.wait_for("[a] up");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!init.control_socket().exists());
    let ran = ctl(&init, &["status"]);
    assert_eq!(ran.code, 3, "{ran:?}");
    init.expect_not("control socket");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);

    // A path that cannot be created: one warning, supervision goes on.
    let mut init = Spec::procfile(&idle("a"))
        .args(&["--control", "/nonexistent/dir/x.sock"])
        .start();
    init.wait_for("[a] up");
    init.expect(
        "sidecar-init: no control socket (status, health, stop... will not answer): bind control socket /nonexistent/dir/x.sock: ",
    );
    let lines = |init: &Init| {
        let lines = init.lines();
        lines
            .iter()
            .filter(|l| l.contains("control socket"))
            .count()
    };
    assert_eq!(lines(&init), 1, "one line");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
    assert_eq!(lines(&init), 1, "one line");
}

#[test]
fn the_default_socket_falls_back_to_tmp_when_run_is_read_only() {
    const NAME: &str = "the_default_socket_falls_back_to_tmp_when_run_is_read_only";
    if !nix::unistd::geteuid().is_root() {
        skip(NAME, "not root: cannot make a mount namespace");
        return;
    }
    let probe = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        skip(NAME, "unshare --mount does not work here");
        return;
    }
    // In a mount namespace of its own: /run read-only, /tmp empty. The
    // binary and the Procfile are reached through the working directory,
    // which the mount over /tmp does not take away. A daemon asks the
    // client (default paths, no SIDECAR_INIT_CONTROL) and stops it all.
    let dir = TempDir::new();
    public_binary(dir.path());
    dir.write(
        "Procfile",
        "probe: sh -c 'sleep 0.3; ls -l /tmp/sidecar-init.sock; ./sidecar-init-client status; ./sidecar-init-client health; echo health=$?'\n\
         idle: sh -c 'echo up; exec sleep 1000'\n",
    );
    let script = "mount -t tmpfs -o ro tmpfs /run && mount -t tmpfs tmpfs /tmp && \
                  exec ./sidecar-init-client --procfile Procfile --essential probe --grace 2";
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", script])
        .current_dir(dir.path())
        .env_remove("SIDECAR_INIT_CONTROL")
        .process_group(0);
    let started = Instant::now();
    let ran = run(cmd);
    let out = &ran.out;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(started.elapsed() < DEADLINE);
    assert!(out.contains("[probe] srw------- "), "{out}");
    assert!(out.contains("[probe] NAME   STATE"), "{out}");
    assert!(
        out.contains("[probe] probe  starting") || out.contains("[probe] probe  ready"),
        "{out}"
    );
    assert!(out.contains("[probe] idle   ready"), "{out}");
    assert!(out.contains("[probe] health=0"), "{out}");
    assert!(!out.contains("no control socket"), "{out}");
}

// ---------------------------------------------------------------------------
// Hostile clients
// ---------------------------------------------------------------------------

/// Reads sidecar-init's stdout as it comes and checks every daemon line
/// on the fly, in constant memory: daemon `wN` runs `seq 1 inf`, so its
/// lines must be `[wN] 1`, `[wN] 2`, ... with nothing missing, repeated or
/// garbled; only its very last line may be cut short (the daemon was
/// killed mid-write), and it is then a prefix of the expected one.
struct SeqChecker {
    /// Per daemon: the next number expected, and whether its last line
    /// came cut short (nothing may follow it).
    next: Vec<(u64, bool)>,
    /// Daemon lines checked, all daemons together (shared with the test).
    lines: Arc<AtomicU64>,
    /// sidecar-init's own lines, with when they arrived.
    own: Arc<Mutex<Vec<(Instant, String)>>>,
    /// The first few problems.
    errors: Vec<String>,
}

impl SeqChecker {
    fn line(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        if let Some(own) = text.strip_prefix("sidecar-init: ") {
            self.own
                .lock()
                .unwrap()
                .push((Instant::now(), own.to_string()));
            return;
        }
        let parsed = text
            .strip_prefix("[w")
            .and_then(|r| r.split_once("] "))
            .and_then(|(d, n)| Some((d.parse::<usize>().ok()?, n)));
        let Some((d, number)) = parsed.filter(|(d, _)| (1..=self.next.len()).contains(d)) else {
            self.error(format!("a line from nobody: {text:?}"));
            return;
        };
        let (next, cut) = &mut self.next[d - 1];
        let want = next.to_string();
        if *cut {
            self.error(format!(
                "w{d}: a line after its cut-short last line: {text:?}"
            ));
        } else if number == want {
            *next += 1;
            self.lines.fetch_add(1, Ordering::Relaxed);
        } else if want.starts_with(number) {
            *cut = true;
        } else {
            self.error(format!("w{d}: expected {want}, got {number:?}"));
        }
    }

    fn error(&mut self, e: String) {
        if self.errors.len() < 10 {
            self.errors.push(e);
        }
    }
}

/// A thread of hostile clients until `stop`: each round connects, sends
/// garbage or a megabyte, or connects and leaves without a word.
fn flood(socket: PathBuf, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut rounds = 0u64;
        while !stop.load(Ordering::Relaxed) {
            rounds += 1;
            let Ok(mut s) = UnixStream::connect(&socket) else {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            };
            let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            match rounds % 3 {
                0 => {
                    let _ = s.write_all(b"\xff\xfe\x00garbage\tstatus\r\n");
                }
                1 => {
                    let _ = s.write_all(b"status please\n");
                }
                _ => {}
            }
            drop(s);
            // Hundreds of connections a second, not a busy loop: the
            // machine is shared with the other tests.
            std::thread::sleep(Duration::from_micros(200));
        }
        rounds
    })
}

/// The pids of `pid`'s children.
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// `status` against a supervisor besieged by other clients: tried again
/// while it is closed to make room or times out in the crowd, within the
/// deadline.
fn status_despite_the_crowd(socket: &Path) -> Ran {
    let deadline = Instant::now() + 2 * DEADLINE;
    loop {
        let ran = client_at(socket, &["status"]);
        let crowded = (ran.code == 1 && ran.err.contains("without an answer"))
            || (ran.code == 3 && ran.err.contains("no answer within"));
        if !crowded || Instant::now() > deadline {
            assert_eq!(ran.code, 0, "{ran:?}");
            return ran;
        }
        eprintln!("status in the crowd, again: {}", ran.err.trim_end());
    }
}

#[test]
fn hostile_clients_change_nothing_for_the_daemons_the_output_or_the_signals() {
    let dir = TempDir::new();
    let procfile = dir.write(
        "Procfile",
        "w1: seq 1 inf\nw2: seq 1 inf\nw3: seq 1 inf\nw4: seq 1 inf\n",
    );
    let socket = dir.path().join("control.sock");
    let mut cmd = Command::new(binary());
    cmd.arg("--procfile")
        .arg(&procfile)
        .args(["--grace", "10"])
        .env("SIDECAR_INIT_CONTROL", &socket)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    let mut child = cmd.spawn().expect("spawn sidecar-init");
    let lines = Arc::new(AtomicU64::new(0));
    let own = Arc::new(Mutex::new(Vec::new()));
    let mut checker = SeqChecker {
        next: vec![(1, false); 4],
        lines: Arc::clone(&lines),
        own: Arc::clone(&own),
        errors: Vec::new(),
    };
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::with_capacity(1 << 20, stdout);
        let mut line = Vec::with_capacity(256);
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = line.strip_suffix(b"\n").unwrap_or(&line);
                    checker.line(text);
                }
            }
        }
        checker
    });
    // Killed on any failure below (until it has been waited for), so
    // nothing is left behind.
    struct Guard(Option<i32>);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(pid) = self.0 {
                // SAFETY: kill has no memory effects.
                unsafe { nix::libc::kill(pid, nix::libc::SIGKILL) };
            }
        }
    }
    let mut guard = Guard(Some(child.id() as i32));
    let own_lines =
        || -> Vec<String> { own.lock().unwrap().iter().map(|(_, l)| l.clone()).collect() };
    let wait_lines = |n: u64, what: &str| {
        let deadline = Instant::now() + DEADLINE;
        while lines.load(Ordering::Relaxed) < n {
            assert!(
                Instant::now() < deadline,
                "{what}: only {} lines; sidecar-init said {:?}",
                lines.load(Ordering::Relaxed),
                own_lines()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_lines(5_000, "before the clients");
    assert!(wait_file(&socket, DEADLINE));

    // Silent clients, held open.
    let silent: Vec<UnixStream> = (0..8)
        .map(|_| UnixStream::connect(&socket).expect("connect"))
        .collect();
    // Garbage: answered with an error line.
    for garbage in [
        &b"\x00\x01\xff\xfe\n"[..],
        b"stop\n",
        b"signal a KILL ME\n",
        b"status\nstatus\n",
    ] {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(garbage).unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("error "), "{garbage:?}: {answer:?}");
    }
    // A megabyte without a newline: cut off after the limit.
    let megabytes: Vec<JoinHandle<(std::io::Result<()>, Duration)>> = (0..3)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                let mut s = UnixStream::connect(&socket).unwrap();
                s.set_write_timeout(Some(DEADLINE)).unwrap();
                let r = s.write_all(&vec![b'x'; 1 << 20]);
                (r, t.elapsed())
            })
        })
        .collect();
    // Hundreds of connections at once.
    let many: Vec<UnixStream> = (0..300)
        .filter_map(|_| UnixStream::connect(&socket).ok())
        .collect();
    assert!(many.len() >= 250, "only {} connections", many.len());
    // Meanwhile the supervisor answers its real clients. (One may be
    // closed to make room, or time out behind hundreds of connections
    // accepted a batch per round of the event loop: it tries again.)
    for _ in 0..3 {
        let ran = status_despite_the_crowd(&socket);
        assert_eq!(ran.out.matches(" ready ").count(), 4, "{ran:?}");
    }
    for h in megabytes {
        let (r, took) = h.join().unwrap();
        // Cut off by the server (not by our own write timeout): the
        // connection is closed after at most 1 KiB of it, and within the
        // idle timeout at the latest. (The socket buffers hold far less
        // than a megabyte, so the write cannot complete unread.)
        let kind = r.as_ref().err().map(std::io::Error::kind);
        assert!(
            matches!(
                kind,
                Some(std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset)
            ),
            "a megabyte: {r:?} after {took:?}"
        );
        assert!(took < Duration::from_secs(8), "a megabyte took {took:?}");
    }
    drop(many);
    let during = lines.load(Ordering::Relaxed);

    // A flood goes on while SIGTERM comes: it is handled at once.
    let stop = Arc::new(AtomicBool::new(false));
    let flooders: Vec<_> = (0..2)
        .map(|_| flood(socket.clone(), Arc::clone(&stop)))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    wait_lines(during + 5_000, "output stalled under the flood");
    let seqs = children(child.id() as i32);
    assert_eq!(seqs.len(), 4, "the daemons: {seqs:?}");
    let sent = Instant::now();
    // SAFETY: kill has no memory effects.
    unsafe { nix::libc::kill(child.id() as i32, SIGTERM) };
    let deadline = sent + DEADLINE;
    let mut forwarded = None;
    let status = loop {
        let gone = |&p: &i32| proc_state(p).is_none_or(|s| s == 'Z');
        if forwarded.is_none() && seqs.iter().all(gone) {
            forwarded = Some(sent.elapsed());
        }
        if let Some(s) = child.try_wait().unwrap() {
            guard.0 = None;
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no exit after SIGTERM: {:?}",
            own_lines()
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let took = sent.elapsed();
    let forwarded = forwarded.unwrap_or(took);
    stop.store(true, Ordering::Relaxed);
    let rounds: u64 = flooders.into_iter().map(|h| h.join().unwrap()).sum();
    drop(silent);
    let checker = reader.join().unwrap();
    let own = own_lines();
    assert_eq!(status.code(), Some(0), "{own:?}");
    // The daemons had it at the next turn of the loop; the exit waits
    // only for their last output to be written (a debug build on a busy
    // machine frames slowly), well before the 10s grace.
    assert!(
        forwarded < Duration::from_secs(3),
        "SIGTERM reached the daemons {forwarded:?} after it came, under the flood: {own:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "SIGTERM to exit took {took:?} under the flood: {own:?}"
    );
    assert!(checker.errors.is_empty(), "{:?}", checker.errors);
    for (d, (next, _)) in checker.next.iter().enumerate() {
        assert!(*next > 1_000, "w{} wrote only {} lines", d + 1, next - 1);
    }
    assert!(rounds > 100, "the flood made only {rounds} connections");
    // The misbehaviour is logged, but rate-limited: a line or two, not one
    // per connection.
    let complaints: Vec<&String> = own
        .iter()
        .filter(|l| l.contains("control socket"))
        .collect();
    assert!(
        (1..=3).contains(&complaints.len()),
        "{} lines about the control socket: {complaints:?}",
        complaints.len()
    );
    // (Requests that come while one batch of connections is accepted are
    // counted in one line.)
    assert!(
        complaints[0].starts_with("control socket: answered ")
            && complaints[0].contains(" malformed request"),
        "{complaints:?}"
    );
    assert!(
        own.iter()
            .any(|l| l == "shutting down (SIGTERM); forwarding SIGTERM"),
        "{own:?}"
    );
    assert_eq!(own.last().map(String::as_str), Some("exit 0"), "{own:?}");
}

// ---------------------------------------------------------------------------
// Liveness
// ---------------------------------------------------------------------------

#[test]
fn a_daemon_failing_its_liveness_check_is_stopped_as_failed_and_restarted() {
    let procfile = format!(
        "web: sh -c 'touch alive; echo $$ > web.pid; echo up; while :; do sleep 1 & wait $!; done'\n\
         lazy: sh -c 'touch lazy-alive; echo up; while :; do sleep 1 & wait $!; done'\n{}",
        idle("other")
    );
    let mut init = Spec::procfile(&procfile)
        .args(&[
            "--live",
            "web=file:alive,lazy=file:lazy-alive",
            "--live-interval",
            "200ms",
            "--live-failures",
            "3",
            "--restart",
            "web=on-failure",
            "--restart-delay",
            "100ms",
        ])
        .start();
    init.wait_for("[web] up");
    init.wait_for("[lazy] up");
    // Passing checks say nothing.
    std::thread::sleep(Duration::from_millis(500));
    init.expect_not("liveness");
    let pid = pid_file(&init.dir.path().join("web.pid"));
    std::fs::remove_file(init.dir.path().join("web.pid")).unwrap();
    std::fs::remove_file(init.dir.path().join("alive")).unwrap();
    init.wait_for("sidecar-init: stopping web: not live");
    init.wait_for(
        "sidecar-init: web exited with code 124 (failed its liveness check; killed by SIGTERM); restarting in 0.1s (restart 1)",
    );
    init.expect("web failed its liveness check (file:alive: ");
    init.expect(", 1 of 3 in a row");
    init.expect(", 3 of 3 in a row");
    assert!(wait_gone(pid, DEADLINE));
    // Restarted, it makes its file again: live again, and stays up.
    let u = wait_unit(&init, "web", "came back", |u| {
        u["state"] == "ready" && u["restarts"] == 1
    });
    assert_eq!(u["code"], 124, "{u}");
    assert_eq!(u["pid"], pid_file(&init.dir.path().join("web.pid")));
    let failures = count(&init, "web failed its liveness check");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(count(&init, "web failed its liveness check"), failures);
    // A one-off failure does not stop it: only failures in a row do.
    std::fs::remove_file(init.dir.path().join("lazy-alive")).unwrap();
    init.wait_for("lazy failed its liveness check (file:lazy-alive: ");
    std::fs::write(init.dir.path().join("lazy-alive"), "").unwrap();
    std::thread::sleep(Duration::from_millis(400));
    init.expect_not("stopping lazy");
    // With policy never, it stays exited with 124: the exit code.
    std::fs::remove_file(init.dir.path().join("lazy-alive")).unwrap();
    init.wait_for("sidecar-init: lazy exited with code 124 (failed its liveness check; killed by SIGTERM); leaving surviving daemons running");
    let ran = ctl_ok(&init, &["health"], 1);
    assert_eq!(ran.out, "lazy: exited with code 124\n");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 124);
}

/// `srv.py PORT MODE`: listens on 127.0.0.1:PORT (answering `GET` with 200
/// in http mode) until the file `mute` exists, then closes its listener.
const SERVER: &str = r#"import os, signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
port, mode = int(sys.argv[1]), sys.argv[2]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(16)
s.settimeout(0.05)
print("listening", flush=True)
while True:
    if s is not None and os.path.exists("mute"):
        s.close()
        s = None
        print("muted", flush=True)
    if s is None:
        time.sleep(0.05)
        continue
    try:
        c, _ = s.accept()
    except socket.timeout:
        continue
    if mode == "http":
        c.settimeout(1)
        try:
            c.recv(4096)
            c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            pass
    c.close()
"#;

#[test]
fn liveness_checks_of_every_kind() {
    let (tcp, http) = (free_port(), free_port());
    let procfile = format!(
        "t: python3 srv.py {tcp} tcp\nh: python3 srv.py {http} http\n\
         f: sh -c 'touch f-alive; echo listening; exec sleep 1000'\n\
         e: sh -c 'touch e-alive; echo listening; exec sleep 1000'\n"
    );
    let mut init = Spec::procfile(&procfile)
        .file("srv.py", SERVER)
        .args(&[
            "--ready",
            &format!("t=tcp:{tcp},h=tcp:{http},f=file:f-alive,e=file:e-alive"),
            "--live",
            &format!("t=tcp:{tcp},h=http:{http}/healthz,f=file:f-alive,e=exec:test -e e-alive"),
            "--live-interval",
            "150ms",
            "--live-failures",
            "2",
        ])
        .start();
    for d in ["t", "h", "f", "e"] {
        init.wait_for(&format!("[{d}] listening"));
    }
    wait_health(&init, 0);
    // A few rounds of passing checks.
    std::thread::sleep(Duration::from_millis(600));
    init.expect_not("liveness");
    std::fs::write(init.dir.path().join("mute"), "").unwrap();
    std::fs::remove_file(init.dir.path().join("f-alive")).unwrap();
    std::fs::remove_file(init.dir.path().join("e-alive")).unwrap();
    // Each one fails twice and is stopped; with nothing left, the run ends.
    assert_eq!(init.wait_exit(DEADLINE), 124);
    for (d, check) in [
        ("t", format!("tcp:127.0.0.1:{tcp}")),
        ("h", format!("http://127.0.0.1:{http}/healthz")),
        ("f", "file:f-alive".to_string()),
        ("e", "exec:test -e e-alive".to_string()),
    ] {
        init.expect(&format!(
            "sidecar-init: {d} failed its liveness check ({check}: "
        ));
        init.expect(&format!("sidecar-init: stopping {d}: not live"));
        init.expect(&format!(
            "sidecar-init: {d} exited with code 124 (failed its liveness check; "
        ));
    }
}

#[test]
fn liveness_is_the_only_periodic_wake_up() {
    let daemons = format!("{}{}", idle("a"), idle("b"));
    let port = free_port();
    // A file check, a tcp check (on a server that is one of the daemons),
    // and no check at all, side by side.
    let mut file = Spec::procfile(&daemons)
        .args(&["--live", "a=file:a.pid", "--live-interval", "1s"])
        .start();
    let mut tcp = Spec::procfile(&format!("srv: python3 srv.py {port} tcp\n{daemons}"))
        .file("srv.py", SERVER)
        .args(&[
            "--ready",
            &format!("srv=tcp:{port}"),
            "--live",
            &format!("srv=tcp:{port}"),
            "--live-interval",
            "1s",
        ])
        .start();
    let mut quiet = Spec::procfile(&daemons).start();
    for init in [&file, &tcp, &quiet] {
        init.wait_for("[a] up");
        init.wait_for("[b] up");
        // The control socket costs nothing once its client is gone.
        wait_health(init, 0);
        ctl_ok(init, &["status"], 0);
    }
    std::thread::sleep(Duration::from_millis(300));
    let pids = [file.pid, tcp.pid, quiet.pid];
    let before = pids.map(cpu_and_wakeups);
    std::thread::sleep(Duration::from_secs(4));
    let after = pids.map(cpu_and_wakeups);
    let woke: Vec<u64> = (0..3).map(|i| after[i].1 - before[i].1).collect();
    for init in [&mut file, &mut tcp, &mut quiet] {
        init.expect_not("liveness");
        init.signal(SIGTERM);
        assert_eq!(init.wait_exit(DEADLINE), 0);
    }
    for (kind, n) in [("file", woke[0]), ("tcp", woke[1])] {
        assert!(
            (3..=6).contains(&n),
            "one {kind} check every 1s for 4s: {n} wake-ups ({before:?} -> {after:?})"
        );
    }
    assert!(
        woke[2] <= 1,
        "woke up without --live: {} ({before:?} -> {after:?})",
        woke[2]
    );
}

#[test]
fn the_readme_names_the_client_exit_codes() {
    let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
    for row in [
        "| 0 | done; for `health`: healthy |",
        "| 1 | refused",
        "| 2 | usage",
        "| 3 | no supervisor answers",
    ] {
        assert!(readme.contains(row), "README.md lacks {row:?}");
    }
    assert!(readme.contains(r#"CMD ["/sidecar-init", "health"]"#));
}
