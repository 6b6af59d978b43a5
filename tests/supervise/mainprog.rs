//! The main program (`-- CMD`) and essential daemons (SPEC §9): what tini
//! and dumb-init promise for their one child (statuses passed through,
//! signals forwarded to its group, zombies reaped, the terminal), and what
//! daemons around it add (readiness first, stop order, essential deaths).
//!
//! Python scripts stand in where `sh` cannot: dying of a signal it sends
//! itself (a shell catches or ignores some), trapping SIGINT in a child
//! (a shell's background jobs ignore it for good), reading `siginfo`,
//! driving a pseudo-terminal. Without python3 those tests skip loudly
//! (`SIDECAR_INIT_TEST_REQUIRE=python3` makes that a failure).

use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::libc::{
    SIGALRM, SIGHUP, SIGINT, SIGKILL, SIGPIPE, SIGQUIT, SIGSTOP, SIGTERM, SIGTSTP, SIGTTIN,
    SIGUSR1, SIGUSR2, SIGWINCH,
};

use crate::harness::{
    DEADLINE, Init, Spec, TempDir, binary, can_unshare, proc_state, skip, wait_gone,
};

/// sidecar-init with a main program and no Procfile (tini's use), and no
/// control socket.
fn main_only(cmd: &[&str]) -> Spec {
    Spec {
        procfile: None,
        ..Spec::procfile("")
    }
    .args(&["--control", "off", "--"])
    .args(cmd)
}

/// The value, or a loud skip; a failure when SIDECAR_INIT_TEST_REQUIRE
/// lists `what`.
fn need<T>(test: &str, what: &str, got: Result<T, String>) -> Option<T> {
    match got {
        Ok(v) => Some(v),
        Err(why) => {
            let required = std::env::var("SIDECAR_INIT_TEST_REQUIRE").unwrap_or_default();
            if required.split(',').any(|r| r.trim() == what) {
                panic!("{test}: SIDECAR_INIT_TEST_REQUIRE has {what}, but {why}");
            }
            skip(
                test,
                &format!("{why} (SIDECAR_INIT_TEST_REQUIRE={what} makes this a failure)"),
            );
            None
        }
    }
}

/// The python3 interpreter itself (not a pyenv shim: each start of one
/// costs a few hundred milliseconds), run with `-I -S` (stdlib only, no
/// site: fast), or a loud skip.
fn python(test: &str) -> Option<String> {
    static PYTHON: OnceLock<Result<String, String>> = OnceLock::new();
    let got = PYTHON.get_or_init(|| {
        match Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
        {
            Ok(o) if o.status.success() => {
                let path = String::from_utf8_lossy(&o.stdout).trim().to_string();
                if path.is_empty() || path.contains(['\'', ' ']) {
                    Err(format!("python3 gives an unusable sys.executable {path:?}"))
                } else {
                    Ok(path)
                }
            }
            Ok(o) => Err(format!(
                "python3 failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Err(format!("python3 not runnable: {e}")),
        }
    });
    need(test, "python3", got.clone()).map(|p| format!("{p} -I -S"))
}

/// A command line for `argv`: python's words, then the rest.
fn py_argv<'a>(py: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    py.split(' ').chain(rest.iter().copied()).collect()
}

/// Index of the first line containing `needle`; fails if none does.
fn index(init: &Init, needle: &str) -> usize {
    match init.lines().iter().position(|l| l.contains(needle)) {
        Some(i) => i,
        None => init.fail(&format!("no line containing {needle:?}")),
    }
}

/// The number right after `prefix` on the first line starting with it
/// (waits for the line).
fn number_after(init: &Init, prefix: &str) -> i32 {
    init.wait_until(&format!("a line starting {prefix:?}"), DEADLINE, |out| {
        out.lines().any(|l| l.starts_with(prefix))
    });
    let lines = init.lines();
    let line = lines.iter().find(|l| l.starts_with(prefix)).unwrap();
    match line[prefix.len()..].split(' ').next().unwrap_or("").parse() {
        Ok(n) => n,
        Err(_) => init.fail(&format!("no number in {line:?}")),
    }
}

/// A daemon that says `up` and runs until SIGTERM, saying so.
fn idle(name: &str) -> String {
    format!(
        "{name}: sh -c 'trap \"echo {name} got TERM; exit 0\" TERM; echo up; \
         while :; do sleep 1 & wait $!; done'\n"
    )
}

/// What to SIGKILL (`kill` targets: a pid, or a negative process group)
/// if the test fails. Declared after its `Init`, it is dropped first: a
/// main program outliving a failed test would keep sidecar-init's stdout
/// open, and the harness waits for its end. Nothing is killed when the
/// test passes: by then the pids may belong to others.
struct Leftovers(Vec<i32>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for &target in &self.0 {
                // SAFETY: kill has no memory effects.
                unsafe { nix::libc::kill(target, SIGKILL) };
            }
        }
    }
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill has no memory effects.
    let r = unsafe { nix::libc::kill(pid, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig})");
}

/// Waits until `pid` is in state `state` (`T`: stopped).
fn wait_state(init: &Init, pid: i32, state: char) {
    let deadline = Instant::now() + DEADLINE;
    while proc_state(pid) != Some(state) {
        if Instant::now() > deadline {
            init.fail(&format!(
                "pid {pid} is {:?}, not {state:?}",
                proc_state(pid)
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// --- statuses --------------------------------------------------------------

#[test]
fn every_exit_status_passes_through() {
    // One loop over all 256 statuses, in parallel batches.
    const BATCHES: usize = 8;
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for batch in 0..BATCHES {
            let failures = &failures;
            s.spawn(move || {
                for n in (batch..256).step_by(BATCHES) {
                    let (code, out, _) = main_only(&["sh", "-c", &format!("exit {n}")]).run();
                    let exited =
                        format!("sidecar-init: the main program (main) exited with code {n}\n");
                    let last = format!("sidecar-init: exit {n}\n");
                    if code != n as i32 || !out.contains(&exited) || !out.ends_with(&last) {
                        let mut f = failures.lock().unwrap();
                        f.push(format!("exit {n} gave {code}; the log:\n{out}"));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of 256 statuses not passed through:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `die.py SIG`: restores the default action of SIG (python ignores
/// SIGPIPE and handles SIGINT itself) and sends it to itself.
const DIE: &str = r#"import os, signal, sys
sig = int(sys.argv[1])
if sig != signal.SIGKILL:
    signal.signal(sig, signal.SIG_DFL)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
os.kill(os.getpid(), sig)
signal.pause()
sys.exit(99)
"#;

#[test]
fn a_death_by_signal_n_is_128_plus_n() {
    let Some(py) = python("a_death_by_signal_n_is_128_plus_n") else {
        return;
    };
    // Signals that dump no core (a core pattern may pipe to a slow helper).
    let signals = [
        (SIGHUP, "SIGHUP"),
        (SIGINT, "SIGINT"),
        (SIGKILL, "SIGKILL"),
        (SIGUSR1, "SIGUSR1"),
        (SIGUSR2, "SIGUSR2"),
        (SIGPIPE, "SIGPIPE"),
        (SIGALRM, "SIGALRM"),
        (SIGTERM, "SIGTERM"),
    ];
    std::thread::scope(|s| {
        for (sig, name) in signals {
            let py = &py;
            s.spawn(move || {
                let arg = sig.to_string();
                let mut spec = main_only(&py_argv(py, &["die.py", &arg]));
                spec = spec.file("die.py", DIE);
                let (code, out, init) = spec.run();
                assert_eq!(code, 128 + sig, "{name}: {out}");
                init.expect(&format!(
                    "the main program (main) exited with code {} (killed by {name})",
                    128 + sig
                ));
                // sidecar-init itself got no signal: it did not shut down
                // for one, the main program's end did.
                init.expect(&format!(
                    "shutting down (the main program exited with code {})",
                    128 + sig
                ));
            });
        }
    });
}

#[test]
fn signal_deaths_from_outside_count_too_sigterm_included() {
    // SIGKILL straight to the main program: 137.
    let mut init = main_only(&["sh", "-c", "echo main pid $$; exec sleep 1000"]).start();
    let pid = number_after(&init, "main pid ");
    let _left = Leftovers(vec![pid]);
    kill(pid, SIGKILL);
    assert_eq!(init.wait_exit(DEADLINE), 137);
    init.expect("the main program (main) exited with code 137 (killed by SIGKILL)");

    // `docker stop`: SIGTERM to sidecar-init reaches the main program,
    // which dies of it: 143, as with tini (not 0 as for a daemon).
    let mut init = main_only(&["sh", "-c", "echo main pid $$; exec sleep 1000"]).start();
    let _left = Leftovers(vec![number_after(&init, "main pid ")]);
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 143);
    init.expect("shutting down (SIGTERM)");
    init.expect("the main program (main) exited with code 143 (killed by SIGTERM)");
}

// --- signals -----------------------------------------------------------------

/// `group.py`: the main program forks a child (same process group); both
/// say which signals reach them. On SIGTERM or SIGINT the child exits 0 and
/// the main program exits 3 once the child is gone.
const GROUP: &str = r#"import os, signal, sys
role = "main"
child = 0
def say(text):
    # Not print: a handler interrupting another's print would find the
    # buffer busy.
    os.write(1, (text + "\n").encode())
def handler(sig, frame):
    say("%s got %s" % (role, signal.Signals(sig).name))
    if sig in (signal.SIGTERM, signal.SIGINT):
        if role == "main":
            os.waitpid(child, 0)
            say("main exits 3")
            os._exit(3)
        os._exit(0)
for s in (signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
          signal.SIGWINCH, signal.SIGALRM, signal.SIGTERM, signal.SIGINT):
    signal.signal(s, handler)
child = os.fork()
if child == 0:
    role = "child"
say("%s ready pid %d pgid %d" % (role, os.getpid(), os.getpgrp()))
while True:
    signal.pause()
"#;

/// Starts group.py as the main program; waits until both are ready and
/// checks they share the main program's own process group; returns that.
fn start_group(py: &str) -> (Init, i32) {
    let init = main_only(&py_argv(py, &["group.py"]))
        .file("group.py", GROUP)
        .start();
    let mut left = Leftovers(vec![-number_after(&init, "main ready pid ")]);
    init.wait_for("child ready");
    let out = init.output();
    let ids = |role: &str| -> (i32, i32) {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{role} ready")))
            .unwrap();
        let w: Vec<&str> = line.split(' ').collect();
        (w[3].parse().unwrap(), w[5].parse().unwrap())
    };
    let (main_pid, main_pgid) = ids("main");
    let (child_pid, child_pgid) = ids("child");
    assert_eq!(main_pgid, main_pid, "the main program leads its own group");
    assert_eq!(child_pgid, main_pid, "its child is in that group");
    assert_ne!(child_pid, main_pid);
    assert_ne!(main_pgid, init.pid, "not sidecar-init's group");
    left.0.clear();
    (init, main_pgid)
}

#[test]
fn signals_reach_the_main_programs_whole_group_as_they_are() {
    let Some(py) = python("signals_reach_the_main_programs_whole_group_as_they_are") else {
        return;
    };
    let (mut init, group) = start_group(&py);
    let _left = Leftovers(vec![-group]);
    for (sig, name) in [
        (SIGHUP, "SIGHUP"),
        (SIGQUIT, "SIGQUIT"),
        (SIGUSR1, "SIGUSR1"),
        (SIGUSR2, "SIGUSR2"),
        (SIGWINCH, "SIGWINCH"),
        (SIGALRM, "SIGALRM"),
    ] {
        init.signal(sig);
        init.wait_for(&format!("main got {name}"));
        init.wait_for(&format!("child got {name}"));
        if sig != SIGWINCH {
            init.wait_for(&format!("sidecar-init: forwarding {name} to main"));
        }
    }
    init.expect_not("shutting down");
    assert!(init.running(), "a forwarded signal ended the run");

    // SIGTERM: forwarded as SIGTERM, and the shutdown starts; the exit code
    // is the main program's status.
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 3);
    init.expect("sidecar-init: shutting down (SIGTERM); forwarding SIGTERM");
    init.expect("main got SIGTERM");
    init.expect("child got SIGTERM");
    init.expect("the main program (main) exited with code 3");
    assert!(index(&init, "child got SIGTERM") < index(&init, "main exits 3"));

    // SIGINT reaches them as SIGINT (tini's rule), not as SIGTERM.
    let (mut init, group) = start_group(&py);
    let _left = Leftovers(vec![-group]);
    init.signal(SIGINT);
    assert_eq!(init.wait_exit(DEADLINE), 3);
    init.expect("sidecar-init: shutting down (SIGINT); forwarding SIGINT");
    init.expect("main got SIGINT");
    init.expect("child got SIGINT");
    init.expect_not("got SIGTERM");
}

// --- daemons around the main program ---------------------------------------------

/// `server.py PORT DELAY`: listens on 127.0.0.1:PORT after DELAY seconds.
const SERVER: &str = r#"import signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
time.sleep(float(sys.argv[2]))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
print("listening", flush=True)
while True:
    s.accept()[0].close()
"#;

/// `check.py PORT`: the main program, checking what its daemons provide.
const CHECK: &str = r#"import os, socket, sys
print("main starts", flush=True)
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()
    print("main reached db", flush=True)
except OSError as e:
    print("main could not reach db: %s" % e, flush=True)
    sys.exit(1)
print("made " + ("exists" if os.path.exists("made") else "is MISSING"), flush=True)
"#;

#[test]
fn the_main_program_starts_once_its_daemons_are_ready() {
    let Some(py) = python("the_main_program_starts_once_its_daemons_are_ready") else {
        return;
    };
    let port = crate::harness::free_port();
    let procfile = format!(
        "db: {py} server.py {port} 0.3\n\
         log: sh -c 'sleep 0.2; echo log is listening; exec sleep 1000'\n\
         maker: sh -c 'sleep 0.4; touch made; exec sleep 1000'\n"
    );
    let port_arg = port.to_string();
    // One --ready with every check (a repeated flag replaces the list).
    let ready = format!("log=line:listening,maker=file:made,db=tcp:{port}");
    let mut args = vec![
        "--control",
        "off",
        "--ready",
        &ready,
        "--ready-interval",
        "50ms",
        "--",
    ];
    args.extend(py_argv(&py, &["check.py", &port_arg]));
    let (code, out, init) = Spec::procfile(&procfile)
        .file("server.py", SERVER)
        .file("check.py", CHECK)
        .args(&args)
        .run();
    assert_eq!(code, 0, "{out}");
    init.expect("main reached db");
    init.expect("made exists");
    let start = index(&init, "sidecar-init: starting the main program (main)");
    for ready in [
        format!("sidecar-init: db is ready (tcp:127.0.0.1:{port}) after "),
        "sidecar-init: log is ready (line:listening) after ".to_string(),
        "sidecar-init: maker is ready (file:made) after ".to_string(),
    ] {
        assert!(index(&init, &ready) < start, "{ready:?} after the start");
    }
    // The daemon's own line came before the main program's first output,
    // which has no prefix: it is the main program's own stdout.
    assert!(index(&init, "[log] log is listening") < index(&init, "main starts"));
    assert_eq!(init.line_index("main starts"), start + 1);
    // Its exit stopped them; their stop is a success.
    init.expect("shutting down (the main program exited with code 0)");
    init.expect("db exited with code 0");
    init.expect("log exited with code 0 (stopped by SIGTERM)");
}

#[test]
fn a_daemon_that_cannot_become_ready_keeps_the_main_program_from_starting() {
    // A failed one-shot, a command not found, a daemon not ready in time:
    // the main program never starts, everything stops, and the exit code
    // is that failure's. web comes second: the command not found fails
    // while web's spawn, in the same batch, is still to come, and web
    // never starts (it once ran unaccounted for, and the run never ended).
    let cases: [(&str, &[&str], i32, &str, bool); 3] = [
        (
            "migrate: sh -c 'echo migrating; exit 3'\n",
            &["--oneshot", "migrate"],
            3,
            "migrate failed with code 3",
            true,
        ),
        (
            "ghost: /nonexistent/ghost\n",
            &[],
            127,
            "ghost failed with code 127",
            false,
        ),
        (
            "slow: sh -c 'exec sleep 1000'\n",
            &["--ready", "slow=file:never", "--ready-timeout", "0.3"],
            124,
            "slow failed with code 124",
            true,
        ),
    ];
    std::thread::scope(|s| {
        for (first, opts, want, why, web_runs) in cases {
            s.spawn(move || {
                let procfile = format!("{first}{}", idle("web"));
                let mut args = vec!["--control", "off"];
                args.extend(opts);
                args.extend(["--", "touch", "main-ran"]);
                let mut init = Spec::procfile(&procfile).args(&args).start();
                let code = init.wait_exit(DEADLINE);
                assert_eq!(code, want, "{}", init.output());
                init.expect(&format!("sidecar-init: main not started: {why}"));
                init.expect(&format!(
                    "shutting down (the main program cannot start: {why})"
                ));
                if web_runs {
                    // Stopped (before its trap was set, it died of the
                    // SIGTERM: 0 too).
                    init.expect("sidecar-init: web exited with code 0");
                } else {
                    init.expect_not("web");
                }
                init.expect_not("starting the main program");
                init.expect_not("SIGKILL");
                assert!(!init.dir.path().join("main-ran").exists());
            });
        }
    });
}

#[test]
fn the_main_programs_exit_stops_the_daemons_in_order_and_its_status_is_the_code() {
    // web depends on db; stubborn ignores SIGTERM; flaky dies early with 7;
    // db exits 9 when stopped. The main program's 5 is the exit code all
    // the same.
    let procfile = "\
db: sh -c 'trap \"echo db got TERM; exit 9\" TERM; echo up; while :; do sleep 1 & wait $!; done'
web: sh -c 'trap \"echo web stopping; sleep 0.2; echo web done; exit 0\" TERM; echo up; while :; do sleep 1 & wait $!; done'
stubborn: sh -c 'trap \"\" TERM; echo up; while :; do sleep 1; done'
flaky: sh -c 'sleep 0.2; exit 7'
";
    let mut init = Spec::procfile(procfile)
        .args(&[
            "--control",
            "off",
            "--after",
            "web=db",
            "--grace",
            "1",
            "--",
            "sh",
            "-c",
            "echo main pid $$; while [ ! -e go ]; do sleep 0.02; done; echo main exits 5; exit 5",
        ])
        .start();
    let _left = Leftovers(vec![-number_after(&init, "main pid ")]);
    init.wait_for("sidecar-init: flaky exited with code 7; leaving surviving daemons running");
    let go = Instant::now();
    std::fs::write(init.dir.path().join("go"), "").unwrap();
    assert_eq!(init.wait_exit(DEADLINE), 5, "the main program's status");
    let took = go.elapsed();
    init.expect("sidecar-init: the main program (main) exited with code 5");
    init.expect(
        "sidecar-init: shutting down (the main program exited with code 5); \
         forwarding SIGTERM, dependents first",
    );
    // Dependents first: db's SIGTERM came once web was gone.
    assert!(
        index(&init, "sidecar-init: web exited with code 0") < index(&init, "[db] db got TERM")
    );
    init.expect("[web] web done");
    init.expect("sidecar-init: db exited with code 9");
    // All within the one grace period: stubborn is SIGKILLed at its end.
    init.expect("grace (1s) elapsed; SIGKILL on stubborn");
    init.expect("stubborn exited with code 137 (killed by SIGKILL)");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "took {took:?} for a grace of 1s"
    );
    assert_eq!(
        init.lines().last().map(String::as_str),
        Some("sidecar-init: exit 5")
    );
}

#[test]
fn stop_main_through_the_control_socket_ends_the_run_with_its_status() {
    let mut init = Spec::procfile(&idle("web"))
        .args(&["--", "sh", "-c", "echo main pid $$; exec sleep 1000"])
        .start();
    let _left = Leftovers(vec![number_after(&init, "main pid ")]);
    init.wait_for("[web] up");
    let socket = init.control_socket();
    let out = Command::new(binary())
        .args(["stop", "main", "--control"])
        .arg(&socket)
        .output()
        .expect("run the client");
    assert!(out.status.success(), "stop main: {out:?}");
    assert_eq!(init.wait_exit(DEADLINE), 143);
    init.expect("the main program (main) exited with code 143 (killed by SIGTERM)");
    init.expect("[web] web got TERM");
    init.expect("web exited with code 0");
}

#[test]
fn an_essential_daemons_end_stops_everything_and_a_non_essential_ones_does_not() {
    let procfile = format!(
        "flaky: sh -c 'exit 1'\n\
         vital: sh -c 'echo up; while [ ! -e go ]; do sleep 0.02; done; exit 4'\n{}",
        idle("other")
    );
    let mut init = Spec::procfile(&procfile)
        .args(&["--control", "off", "--essential", "vital"])
        .start();
    init.wait_for("[other] up");
    init.wait_for("sidecar-init: flaky exited with code 1; leaving surviving daemons running");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        init.running(),
        "a non-essential daemon's death ended the run"
    );
    init.expect_not("shutting down");
    std::fs::write(init.dir.path().join("go"), "").unwrap();
    assert_eq!(init.wait_exit(DEADLINE), 4, "the worst code: vital's");
    init.expect("sidecar-init: vital exited with code 4; it is essential");
    init.expect(
        "sidecar-init: shutting down (vital is essential and failed with code 4); forwarding SIGTERM",
    );
    init.expect("[other] other got TERM");
    init.expect("sidecar-init: other exited with code 0");

    // Beside a main program: it is stopped too, and its status is the code
    // (143: it died of the SIGTERM).
    let mut init =
        Spec::procfile("vital: sh -c 'while [ ! -e go ]; do sleep 0.02; done; exit 4'\n")
            .args(&[
                "--control",
                "off",
                "--essential",
                "vital",
                "--",
                "sh",
                "-c",
                "echo main pid $$; exec sleep 1000",
            ])
            .start();
    let _left = Leftovers(vec![number_after(&init, "main pid ")]);
    std::fs::write(init.dir.path().join("go"), "").unwrap();
    assert_eq!(init.wait_exit(DEADLINE), 143);
    init.expect("shutting down (vital is essential and failed with code 4)");
    init.expect("the main program (main) exited with code 143 (killed by SIGTERM)");
}

// --- reaping -------------------------------------------------------------------

/// A main program that makes an orphan (a `sleep` whose parent shell exits
/// at once), reports the orphan's parent and waits until it is gone: it
/// stays a zombie forever unless its new parent reaps it. Exits 7.
const ORPHANS: &str = "\
pid=$(sh -c 'sleep 0.2 >/dev/null 2>&1 & echo $!'); \
echo orphan $pid; \
echo parent $(grep PPid /proc/$pid/status | cut -f2); \
i=0; while [ -e /proc/$pid ] && [ $i -lt 200 ]; do sleep 0.02; i=$((i+1)); done; \
if [ -e /proc/$pid ]; then echo \"orphan NOT reaped: $(grep State /proc/$pid/status)\"; else echo orphan reaped; fi; \
echo zombies $(grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l); \
exit 7";

#[test]
fn the_main_programs_orphans_are_reaped() {
    let (code, out, init) = main_only(&["sh", "-c", ORPHANS]).run();
    assert_eq!(code, 7, "{out}");
    init.expect(&format!("parent {}", init.pid));
    init.expect("orphan reaped");
}

#[test]
fn an_orphan_left_running_does_not_hold_the_exit() {
    // The orphan keeps sidecar-init's stdout open; the sweep after the
    // main program ends it.
    let started = Instant::now();
    let mut init = main_only(&["sh", "-c", "sh -c 'sleep 1000 & echo orphan $!'; exit 6"])
        .args(&["--grace", "5"])
        .start();
    let orphan = number_after(&init, "orphan ");
    let _left = Leftovers(vec![orphan]);
    assert_eq!(init.wait_exit(DEADLINE), 6);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the orphan held the exit"
    );
    init.expect("sending SIGTERM to 1 remaining processes");
    assert!(wait_gone(orphan, DEADLINE), "the orphan survived");
}

#[test]
fn a_main_program_that_exits_at_once_or_cannot_start() {
    let procfile = format!("{}{}", idle("a"), idle("b"));
    for _ in 0..3 {
        let started = Instant::now();
        let (code, out, init) = Spec::procfile(&procfile)
            .args(&["--control", "off", "--", "true"])
            .run();
        assert_eq!(code, 0, "{out}");
        init.expect("the main program (main) exited with code 0");
        init.expect("a exited with code 0");
        init.expect("b exited with code 0");
        assert!(started.elapsed() < Duration::from_secs(4), "{out}");
    }
    let (code, out, init) = Spec::procfile(&procfile)
        .args(&["--control", "off", "--", "/nonexistent/app"])
        .run();
    assert_eq!(code, 127, "{out}");
    init.expect("cannot start main: /nonexistent/app: No such file or directory");
    init.expect("the main program (main) exited with code 127 (command not found)");
    init.expect("a exited with code 0");
}

// --- stopped processes -------------------------------------------------------

#[test]
fn stopped_processes_act_on_the_stop_signal_within_the_grace() {
    // Daemons stopped by SIGSTOP, SIGTSTP and SIGTTIN (a read of the
    // terminal from the background), the main program by SIGTSTP (Ctrl-Z
    // without a shell to resume it): each traps TERM and exits 0 at once,
    // because SIGCONT follows the stop signal.
    let procfile = "\
paused: sh -c 'trap \"echo paused got TERM; exit 0\" TERM; echo pid $$; while :; do sleep 1 & wait $!; done'
tstp: sh -c 'trap \"echo tstp got TERM; exit 0\" TERM; echo pid $$; while :; do sleep 1 & wait $!; done'
ttin: sh -c 'trap \"echo ttin got TERM; exit 0\" TERM; echo pid $$; while :; do sleep 1 & wait $!; done'
";
    let mut init = Spec::procfile(procfile)
        .args(&[
            "--control",
            "off",
            "--grace",
            "10",
            "--",
            "sh",
            "-c",
            "trap 'echo main got TERM; exit 0' TERM; echo main pid $$; while :; do sleep 1 & wait $!; done",
        ])
        .start();
    let paused = init.pid_from("paused", "pid");
    let tstp = init.pid_from("tstp", "pid");
    let ttin = init.pid_from("ttin", "pid");
    let main = number_after(&init, "main pid ");
    let _left = Leftovers(vec![-main]);
    kill(-paused, SIGSTOP);
    kill(-tstp, SIGTSTP);
    kill(-ttin, SIGTTIN);
    kill(-main, SIGTSTP);
    for pid in [paused, tstp, ttin, main] {
        wait_state(&init, pid, 'T');
    }
    let sent = Instant::now();
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?} (grace 10s)");
    init.expect("main got TERM");
    init.expect("[paused] paused got TERM");
    init.expect("[tstp] tstp got TERM");
    init.expect("sidecar-init: paused exited with code 0");
    init.expect("sidecar-init: tstp exited with code 0");
    init.expect("[ttin] ttin got TERM");
    init.expect("sidecar-init: ttin exited with code 0");
    init.expect_not("SIGKILL");
}

// --- PID 1 ---------------------------------------------------------------------

#[test]
fn as_pid_1_the_status_passes_through_and_orphans_are_reaped() {
    let Some(()) = need(
        "as_pid_1_the_status_passes_through_and_orphans_are_reaped",
        "unshare",
        can_unshare(),
    ) else {
        return;
    };
    let (code, out, init) = main_only(&["sh", "-c", ORPHANS]).pid1().run();
    assert_eq!(code, 7, "{out}");
    init.expect("parent 1");
    init.expect("orphan reaped");
    // The namespace's own /proc holds only our processes.
    init.expect("zombies 0");

    let mut init = main_only(&["sh", "-c", "echo main pid $$; exec sleep 1000"])
        .pid1()
        .start();
    assert_eq!(
        number_after(&init, "main pid "),
        2,
        "the first child of PID 1"
    );
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 143);
}

// --- the terminal ------------------------------------------------------------

/// `pty.py TIMEOUT [WANT HEX]... -- ARGV...`: runs ARGV as the session
/// leader of a new pseudo-terminal (as `docker run -it` does), and, step
/// by step, once the output holds WANT, types the bytes HEX (maybe none). Then reads to the end and prints the transcript and
/// `--- pty: timed_out=... steps_left=N status=CODE`.
const PTY: &str = r#"import os, pty, select, signal, sys, time
timeout = float(sys.argv[1])
sep = sys.argv.index("--")
pairs = sys.argv[2:sep]
steps = [(pairs[i].encode(), bytes.fromhex(pairs[i + 1])) for i in range(0, len(pairs), 2)]
argv = sys.argv[sep + 1:]
pid, fd = pty.fork()
if pid == 0:
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(126)
out, timed_out = b"", False
deadline = time.monotonic() + timeout
while True:
    left = deadline - time.monotonic()
    if left <= 0:
        timed_out = True
        for d in filter(str.isdigit, os.listdir("/proc")):
            try:
                if int(open("/proc/%s/stat" % d).read().rsplit(") ", 1)[1].split()[3]) == pid:
                    os.kill(int(d), signal.SIGKILL)
            except (OSError, IndexError, ValueError):
                pass
        break
    if not select.select([fd], [], [], left)[0]:
        continue
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
    while steps and steps[0][0] in out:
        os.write(fd, steps.pop(0)[1])
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode("utf-8", "replace").replace("\r\n", "\n"))
print("\n--- pty: timed_out=%s steps_left=%d status=%d"
      % (timed_out, len(steps), os.waitstatus_to_exitcode(status)))
"#;

/// `fg.py`: the main program on the terminal. Says which process group
/// has the terminal, then waits for SIGINT and SIGTSTP with sigwaitinfo,
/// saying who sent each (si_code 128, SI_KERNEL: the terminal; 0,
/// SI_USER: a kill). After SIGINT it dies of it.
const FG: &str = r#"import os, signal
f = open("/proc/self/stat").read().rsplit(") ", 1)[1].split()
print("main pid=%d pgid=%s sid=%s tpgid=%s" % (os.getpid(), f[2], f[3], f[5]), flush=True)
print("main stdin " + os.readlink("/proc/self/fd/0"), flush=True)
wanted = {signal.SIGINT, signal.SIGTSTP}
signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
print("main ready", flush=True)
while True:
    info = signal.sigwaitinfo(wanted)
    print("main got %s code=%d pid=%d" % (signal.Signals(info.si_signo).name, info.si_code, info.si_pid), flush=True)
    if info.si_signo == signal.SIGINT:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        os.kill(os.getpid(), signal.SIGINT)
"#;

/// Runs sidecar-init with `args` on a pseudo-terminal in `dir`, typing
/// `steps` (text awaited, bytes typed); returns the transcript and the
/// exit status, failing on a timeout or steps never reached.
fn on_pty(py: &str, dir: &TempDir, args: &[&str], steps: &[(&str, &[u8])]) -> (String, i32) {
    let script = dir.write("pty.py", PTY);
    let mut cmd = Command::new(py.split(' ').next().unwrap());
    cmd.args(py.split(' ').skip(1))
        .arg(&script)
        .arg(DEADLINE.as_secs().to_string());
    for (want, bytes) in steps {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        cmd.arg(want).arg(hex);
    }
    cmd.arg("--").arg(binary()).args(args);
    cmd.current_dir(dir.path())
        .env_remove("SIDECAR_INIT_CONTROL")
        .env("NO_COLOR", "1");
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let out = cmd.output().expect("run pty.py");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let tail = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("--- pty: "))
        .unwrap_or_else(|| {
            panic!(
                "pty.py failed: {}\n{text}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_string();
    assert!(
        tail.starts_with("timed_out=False steps_left=0 "),
        "on the terminal: {tail}\n--- transcript:\n{text}--- end"
    );
    let status = tail.rsplit_once("status=").unwrap().1.parse().unwrap();
    (text, status)
}

fn field(line: &str, key: &str) -> i32 {
    line.split(' ')
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[test]
fn on_a_terminal_the_main_program_is_the_foreground_and_gets_ctrl_c_and_ctrl_z() {
    let test = "on_a_terminal_the_main_program_is_the_foreground_and_gets_ctrl_c_and_ctrl_z";
    let Some(py) = python(test) else { return };
    let dir = TempDir::new();
    dir.write("fg.py", FG);
    let mut args = vec!["--control", "off", "--color", "never", "--"];
    args.extend(py_argv(&py, &["fg.py"]));
    // ^Z, then ^C once ^Z has arrived.
    let (out, status) = on_pty(
        &py,
        &dir,
        &args,
        &[("main ready", b"\x1a"), ("main got SIGTSTP", b"\x03")],
    );
    let check = |ok: bool, what: &str| assert!(ok, "{what}\n--- transcript:\n{out}--- end");
    check(status == 130, "exit code not 130");
    let line = out.lines().find(|l| l.starts_with("main pid=")).unwrap();
    let (pid, pgid, sid, tpgid) = (
        field(line, "pid"),
        field(line, "pgid"),
        field(line, "sid"),
        field(line, "tpgid"),
    );
    check(pgid == pid, "the main program does not lead its own group");
    check(
        tpgid == pgid,
        "the main program is not the terminal's foreground",
    );
    check(sid != pgid, "the main program is the session leader");
    check(
        out.contains("main stdin /dev/pts/"),
        "stdin is not the terminal",
    );
    // Typed at the terminal: sent by the kernel (si_code SI_KERNEL, no
    // pid), not forwarded by sidecar-init (SI_USER, its pid).
    check(
        out.contains("main got SIGTSTP code=128 pid=0"),
        "^Z did not come from the terminal",
    );
    check(
        out.contains("main got SIGINT code=128 pid=0"),
        "^C did not come from the terminal",
    );
    check(
        out.contains(
            "sidecar-init: the main program (main) exited with code 130 (killed by SIGINT)",
        ),
        "no exit line",
    );
    // sidecar-init, in the background, never got the SIGINT itself.
    check(
        out.contains("sidecar-init: shutting down (the main program exited with code 130)"),
        "no shutdown for the main program's end",
    );
    check(
        !out.contains("shutting down (SIGINT)"),
        "sidecar-init got ^C",
    );
    check(out.contains("sidecar-init: exit 130"), "no exit line");
}

/// A daemon that would read the terminal, and one that says which
/// signals reach it. Each is ready once it has said so (`--ready` below):
/// the main program starts after both.
const INTERACTIVE: &str = "\
asker: sh -c 'echo stdin is $(readlink /proc/self/fd/0); if read x; then echo read $x; else echo stdin at EOF; fi; exec sleep 1000'
svc: sh -c 'trap \"echo svc got INT\" INT; trap \"echo svc got TERM; exit 0\" TERM; echo up; while :; do sleep 1 & wait $!; done'
";

#[test]
fn on_a_terminal_daemons_read_dev_null_and_never_stop() {
    let Some(py) = python("on_a_terminal_daemons_read_dev_null_and_never_stop") else {
        return;
    };
    let dir = TempDir::new();
    dir.write("fg.py", FG);
    let procfile = dir.write("Procfile", INTERACTIVE);
    let procfile = procfile.to_str().unwrap();
    let base = [
        "--control",
        "off",
        "--color",
        "never",
        "--procfile",
        procfile,
        "--ready",
        "asker=line:stdin at EOF,svc=line:up",
    ];
    // Beside a main program that has the terminal: the daemon reads EOF
    // from /dev/null at once instead of stopping on SIGTTIN; ^C reaches
    // only the main program, and the daemons get their SIGTERM after it.
    let mut args = base.to_vec();
    args.push("--");
    args.extend(py_argv(&py, &["fg.py"]));
    let (out, status) = on_pty(&py, &dir, &args, &[("main ready", b"\x03")]);
    let check =
        |out: &str, ok: bool, what: &str| assert!(ok, "{what}\n--- transcript:\n{out}--- end");
    check(&out, status == 130, "exit code not 130");
    check(
        &out,
        out.contains("[asker] stdin is /dev/null"),
        "daemon stdin",
    );
    check(&out, out.contains("[asker] stdin at EOF"), "no EOF");
    check(
        &out,
        out.contains("sidecar-init: asker exited with code 0 (stopped by SIGTERM)"),
        "asker",
    );
    check(&out, out.contains("main stdin /dev/pts/"), "main stdin");
    check(&out, out.contains("[svc] svc got TERM"), "svc not stopped");
    check(&out, !out.contains("svc got INT"), "^C reached a daemon");
    check(&out, out.contains("svc exited with code 0"), "svc");

    // Without a main program, sidecar-init keeps the terminal (^C is its
    // shutdown); the daemons read /dev/null all the same.
    let (out, status) = on_pty(
        &py,
        &dir,
        &base,
        &[("[asker] stdin at EOF", b""), ("[svc] up", b"\x03")],
    );
    check(&out, status == 0, "exit code not 0");
    check(
        &out,
        out.contains("[asker] stdin is /dev/null"),
        "daemon stdin",
    );
    check(
        &out,
        out.contains("sidecar-init: shutting down (SIGINT)"),
        "^C",
    );
    check(&out, out.contains("[svc] svc got TERM"), "svc not stopped");
    check(&out, !out.contains("svc got INT"), "^C reached a daemon");
}

#[test]
fn the_main_programs_stdout_stays_blocking_and_loses_nothing_to_a_slow_reader() {
    // The main program writes straight into sidecar-init's stdout. Had
    // sidecar-init made that description non-blocking for itself, a reader
    // that comes late would make the program's writes fail (EAGAIN): seq
    // gives up with a write error and most lines are lost.
    let mut init = main_only(&[
        "sh",
        "-c",
        "python3 -c 'import fcntl, os; print(\"nonblocking\", bool(fcntl.fcntl(1, fcntl.F_GETFL) & os.O_NONBLOCK))'; seq 1 300000; echo status $?",
    ])
    .stdout(crate::harness::Reader::StallUntil("read-now".into()))
    .start();
    std::thread::sleep(Duration::from_millis(700));
    std::fs::write(init.dir.path().join("read-now"), "").unwrap();
    assert_eq!(init.wait_exit(DEADLINE), 0);
    let out = init.output();
    let numbers = out
        .lines()
        .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
        .count();
    assert_eq!(numbers, 300_000, "lines lost");
    init.expect("status 0");
    init.expect("nonblocking False");
}
