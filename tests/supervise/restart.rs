//! Restart policies, backoff, give-up, and the notify command.

use std::time::{Duration, Instant};

use nix::libc::SIGTERM;

use crate::harness::{DEADLINE, Spec, cpu_and_wakeups};

const STEADY: &str = "steady: sh -c 'echo ready; exec sleep 1000'\n";

#[test]
fn on_failure_restarts_a_failing_daemon_with_backoff() {
    let procfile = format!("flaky: sh -c 'echo run; exit 1'\n{STEADY}");
    let mut init = Spec::procfile(&procfile)
        .args(&["--restart", "flaky=on-failure", "--restart-delay", "0.1"])
        .start();
    init.wait_for("[steady] ready");
    init.wait_for("flaky exited with code 1; restarting in 0.1s (restart 1)");
    init.wait_for("flaky exited with code 1; restarting in 0.2s (restart 2)");
    init.wait_for("flaky exited with code 1; restarting in 0.4s (restart 3)");
    init.expect("sidecar-init: restarting flaky (restart 1)");
    init.expect_not("restarting steady");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 1, "the last run's code");
}

#[test]
fn on_failure_leaves_a_clean_exit_alone() {
    let procfile = format!("once: sh -c 'echo run; exit 0'\n{STEADY}");
    let mut init = Spec::procfile(&procfile)
        .env("SIDECAR_INIT_RESTART", "on-failure")
        .start();
    init.wait_for("sidecar-init: once exited with code 0; leaving surviving daemons running");
    init.wait_for("[steady] ready");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
    assert_eq!(init.output().matches("[once] run").count(), 1);
}

#[test]
fn always_restarts_a_clean_exit() {
    let mut init = Spec::procfile("a: sh -c 'echo run; exit 0'\n")
        .args(&[
            "--restart",
            "always",
            "--restart-delay",
            "0.05",
            "--restart-max-delay",
            "0.1",
        ])
        .start();
    init.wait_until("three runs", DEADLINE, |out| {
        out.matches("[a] run").count() >= 3
    });
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
}

#[test]
fn never_is_the_default() {
    let procfile = format!("a: sh -c 'exit 1'\n{STEADY}");
    let mut init = Spec::procfile(&procfile).start();
    init.wait_for("a exited with code 1; leaving surviving daemons running");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 1);
    init.expect_not("restarting");
}

#[test]
fn max_restarts_gives_up() {
    let (code, out, init) = Spec::procfile("a: sh -c 'echo run; exit 4'\n")
        .args(&[
            "--restart",
            "always",
            "--max-restarts",
            "2",
            "--restart-delay",
            "0.05",
        ])
        .run();
    assert_eq!(code, 4, "{out}");
    assert_eq!(
        out.matches("[a] run").count(),
        3,
        "one run and two restarts: {out}"
    );
    init.expect("sidecar-init: a exited with code 4; giving up after 2 quick restarts in a row");
}

#[test]
fn nothing_restarts_during_shutdown() {
    let mut init = Spec::procfile("a: sh -c 'echo ready; exec sleep 1000'\n")
        .args(&["--restart", "always", "--restart-delay", "0.05"])
        .start();
    init.wait_for("[a] ready");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
    init.expect("sidecar-init: a exited with code 0 (stopped by SIGTERM)");
    init.expect_not("restarting");
}

#[test]
fn a_pending_restart_neither_delays_the_exit_nor_is_killed() {
    let procfile = format!("a: sh -c 'exit 3'\n{STEADY}");
    let mut init = Spec::procfile(&procfile)
        .args(&[
            "--restart",
            "a=on-failure",
            "--restart-delay",
            "30",
            "--grace",
            "20",
        ])
        .start();
    init.wait_for("[steady] ready");
    init.wait_for("a exited with code 3; restarting in 30s (restart 1)");
    let sent = Instant::now();
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 3, "a's last run counts");
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "the pending restart delayed the exit"
    );
    init.expect("sidecar-init: cancelled the pending restart of a");
    init.expect_not("SIGKILL");
}

#[test]
fn unknown_names_in_restart_are_configuration_errors() {
    let (code, out, init) = Spec::procfile("a: touch spawned\n")
        .args(&["--restart", "ghost=always"])
        .run();
    assert_eq!(code, 2);
    assert_eq!(
        out,
        "sidecar-init: error: --restart: no daemon named 'ghost' in the table\n"
    );
    assert!(!init.dir.path().join("spawned").exists());
}

#[test]
fn the_notify_command_gets_each_event_in_its_environment() {
    let procfile = format!("flaky: sh -c 'exit 3'\n{STEADY}");
    let notify = "sh -c 'echo \"$SIDECAR_INIT_EVENT daemon=$SIDECAR_INIT_EVENT_DAEMON code=$SIDECAR_INIT_EVENT_CODE \
                  signal=$SIDECAR_INIT_EVENT_SIGNAL restarts=$SIDECAR_INIT_EVENT_RESTARTS dropped=$SIDECAR_INIT_EVENT_DROPPED\"'";
    let mut init = Spec::procfile(&procfile)
        .args(&[
            "--restart",
            "flaky=on-failure",
            "--max-restarts",
            "1",
            "--restart-delay",
            "0.05",
        ])
        .env("SIDECAR_INIT_NOTIFY", notify)
        .start();
    init.wait_for("[steady] ready");
    init.wait_for("[notify] give-up daemon=flaky code=3 signal= restarts=1 dropped=0");
    init.expect("[notify] exit daemon=flaky code=3 signal= restarts=1 dropped=0");
    init.expect("[notify] restart daemon=flaky code=3 signal= restarts=1 dropped=0");
    init.signal(SIGTERM);
    init.wait_for("[notify] shutdown daemon= code= signal=SIGTERM");
    let code = init.wait_exit(DEADLINE);
    assert_eq!(code, 3);
}

#[test]
fn a_hanging_notify_command_is_killed_and_changes_nothing() {
    let procfile = format!("quick: sh -c 'exit 0'\n{STEADY}");
    let mut init = Spec::procfile(&procfile)
        .args(&[
            "--notify",
            "sh -c 'echo hanging; exec sleep 1000'",
            "--notify-timeout",
            "0.3",
        ])
        .start();
    init.wait_for("[notify] hanging");
    init.wait_for("sidecar-init: notify command still running after 0.3s; killing it");
    init.wait_for("sidecar-init: notify command exited with code 137 (killed by SIGKILL)");
    init.signal(SIGTERM);
    assert_eq!(
        init.wait_exit(DEADLINE),
        0,
        "the notify command's failure is not ours"
    );
}

#[test]
fn a_crash_looping_daemon_costs_nothing_between_restarts() {
    let mut init = Spec::procfile("loop: sh -c 'exit 1'\n")
        .args(&["--restart", "on-failure", "--restart-delay", "4"])
        .start();
    init.wait_for("loop exited with code 1; restarting in 4s (restart 1)");
    let before = cpu_and_wakeups(init.pid);
    std::thread::sleep(Duration::from_millis(1500));
    let after = cpu_and_wakeups(init.pid);
    init.signal(SIGTERM);
    init.wait_exit(DEADLINE);
    // One switch is allowed for entering the sleep after the log line.
    assert!(
        after.1 - before.1 <= 1,
        "woke up while waiting to restart: {before:?} -> {after:?}"
    );
    assert!(
        after.0 - before.0 <= 1,
        "used CPU while waiting to restart: {before:?} -> {after:?}"
    );
}
