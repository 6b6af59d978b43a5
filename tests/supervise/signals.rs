//! Signals, shutdown and the failure policy.

use std::time::{Duration, Instant};

use nix::libc::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH};

use crate::harness::{DEADLINE, Spec, proc_state, wait_gone};

/// A daemon that runs until signalled, printing `ready` first. `sleep & wait`
/// lets the shell run traps at once.
fn idle(name: &str) -> String {
    format!("{name}: sh -c 'echo pid $$; echo ready; while :; do sleep 1 & wait $!; done'\n")
}

#[test]
fn crash_without_shutdown_leaves_survivors_up() {
    let procfile = format!("{}crash: sh -c 'echo crashing; exit 3'\n", idle("survivor"));
    let mut init = Spec::procfile(&procfile).start();
    init.wait_for("[survivor] ready");
    let survivor = init.pid_from("survivor", "pid");
    init.wait_for("sidecar-init: crash exited with code 3; leaving surviving daemons running");
    // Still supervising: the survivor runs and a forwarded signal reaches it.
    assert!(init.running(), "sidecar-init exited after one crash");
    assert!(
        matches!(proc_state(survivor), Some('S' | 'R')),
        "survivor is gone"
    );
    init.expect_not("shutting down");
    init.signal(SIGTERM);
    init.wait_exit(DEADLINE);
}

#[test]
fn crash_then_signal_surfaces_the_crash_code() {
    let procfile = format!("{}crash: sh -c 'exit 3'\n", idle("survivor"));
    let mut init = Spec::procfile(&procfile).start();
    init.wait_for("[survivor] ready");
    init.wait_for("crash exited with code 3");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 3);
    init.expect("sidecar-init: survivor exited with code 0 (stopped by SIGTERM)");
}

#[test]
fn all_daemons_dying_unattended_end_with_the_worst_code() {
    let procfile = "a: sh -c 'exit 1'\nb: sh -c 'sleep 0.2; exit 4'\nc: sh -c 'exit 0'\n";
    let (code, out, init) = Spec::procfile(procfile).run();
    assert_eq!(code, 4, "{out}");
    assert_eq!(
        init.lines().last().map(String::as_str),
        Some("sidecar-init: exit 4")
    );
}

#[test]
fn death_by_signal_is_128_plus_n() {
    let (code, _, init) = Spec::procfile("a: sh -c 'kill -USR2 $$'\n").run();
    assert_eq!(code, 128 + SIGUSR2, "{}", init.output());
    init.expect("a exited with code 140 (killed by SIGUSR2)");
}

#[test]
fn exit_codes_pass_through() {
    for want in [0, 1, 42, 255] {
        let (code, out, _) = Spec::procfile(&format!("a: sh -c 'exit {want}'\n")).run();
        assert_eq!(code, want, "{out}");
    }
}

#[test]
fn graceful_sigterm_exits_zero() {
    // One daemon exits 0 from its trap; the other dies of SIGTERM's default
    // action: both are graceful stops.
    let procfile = format!(
        "{}{}",
        "trapper: sh -c 'trap \"echo bye; exit 0\" TERM; echo ready; while :; do sleep 1 & wait $!; done'\n",
        "plain: sh -c 'echo ready; exec sleep 1000'\n"
    );
    let mut init = Spec::procfile(&procfile).start();
    init.wait_for("[trapper] ready");
    init.wait_for("[plain] ready");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
    init.expect("sidecar-init: shutting down (SIGTERM); forwarding SIGTERM");
    init.expect("[trapper] bye");
    init.expect("sidecar-init: plain exited with code 0 (stopped by SIGTERM)");
    init.expect("sidecar-init: trapper exited with code 0");
    init.expect_not("SIGKILL");
}

#[test]
fn a_daemon_ignoring_sigterm_is_killed_after_the_grace_period() {
    let procfile = "stubborn: sh -c 'trap \"\" TERM; echo ready; while :; do sleep 1; done'\n";
    let mut init = Spec::procfile(procfile).args(&["--grace", "0.5"]).start();
    init.wait_for("[stubborn] ready");
    let sent = Instant::now();
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 137);
    assert!(
        sent.elapsed() >= Duration::from_millis(500),
        "killed before the grace period"
    );
    init.expect("sidecar-init: grace (0.5s) elapsed; SIGKILL on stubborn");
    init.expect("sidecar-init: stubborn exited with code 137 (killed by SIGKILL)");
}

#[test]
fn sigterm_again_is_ignored_and_grace_from_env() {
    let procfile = "stubborn: sh -c 'trap \"\" TERM; echo ready; while :; do sleep 1; done'\n";
    let mut init = Spec::procfile(procfile)
        .env("SIDECAR_INIT_GRACE", "1")
        .start();
    init.wait_for("[stubborn] ready");
    init.signal(SIGTERM);
    init.wait_for("shutting down (SIGTERM)");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 137);
    assert_eq!(init.output().matches("shutting down").count(), 1);
    init.expect("grace (1s) elapsed; SIGKILL on stubborn");
}

#[test]
fn a_second_sigint_kills_at_once() {
    let procfile = "stubborn: sh -c 'trap \"\" TERM INT; echo ready; while :; do sleep 1; done'\n";
    let mut init = Spec::procfile(procfile).args(&["--grace", "60"]).start();
    init.wait_for("[stubborn] ready");
    init.signal(SIGINT);
    init.wait_for("sidecar-init: shutting down (SIGINT); forwarding SIGTERM");
    init.signal(SIGINT);
    assert_eq!(init.wait_exit(DEADLINE), 137);
    init.expect("sidecar-init: second SIGINT; SIGKILL on stubborn");
}

#[test]
fn a_shell_wrappers_children_stop_with_it() {
    // The shell waits on a background sleep; SIGTERM to the process group
    // reaches both, so the stop is prompt and no sleep is left behind.
    let procfile = "wrapper: sh -c 'sleep 1000 & echo sleeper $!; wait'\n";
    let mut init = Spec::procfile(procfile).args(&["--grace", "30"]).start();
    let sleeper = init.pid_from("wrapper", "sleeper");
    let sent = Instant::now();
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "stop waited for the grace period"
    );
    init.expect_not("SIGKILL");
    assert!(
        wait_gone(sleeper, DEADLINE),
        "sleep {sleeper} left behind: {:?}",
        proc_state(sleeper)
    );
}

#[test]
fn other_signals_are_forwarded_without_shutdown() {
    let procfile = "\
a: sh -c 'for s in HUP QUIT USR1 USR2 WINCH; do trap \"echo got $s\" $s; done; echo ready; while :; do sleep 1 & wait $!; done'
b: sh -c 'for s in HUP QUIT USR1 USR2 WINCH; do trap \"echo b got $s\" $s; done; echo ready; while :; do sleep 1 & wait $!; done'
";
    let mut init = Spec::procfile(procfile).start();
    init.wait_for("[a] ready");
    init.wait_for("[b] ready");
    for (sig, name) in [
        (SIGHUP, "HUP"),
        (SIGQUIT, "QUIT"),
        (SIGUSR1, "USR1"),
        (SIGUSR2, "USR2"),
        (SIGWINCH, "WINCH"),
    ] {
        init.signal(sig);
        init.wait_for(&format!("[a] got {name}"));
        init.wait_for(&format!("[b] b got {name}"));
    }
    init.expect("sidecar-init: forwarding SIGHUP to a, b");
    assert!(init.running(), "a forwarded signal stopped sidecar-init");
    init.expect_not("shutting down");
    init.expect_not("exited");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
}

#[test]
fn signals_reach_the_whole_process_group() {
    // The daemon's child traps HUP too: group delivery reaches it.
    let procfile = "a: sh -c 'trap \"echo parent got HUP\" HUP; sh -c \"trap \\\"echo child got HUP\\\" HUP; echo child ready; while :; do sleep 1 & wait \\$!; done\" & wait; wait'\n";
    let mut init = Spec::procfile(procfile).start();
    init.wait_for("[a] child ready");
    init.signal(SIGHUP);
    init.wait_for("[a] child got HUP");
    init.wait_for("[a] parent got HUP");
    init.signal(SIGTERM);
    init.wait_exit(DEADLINE);
}

#[test]
fn a_daemon_killed_from_outside_just_before_our_sigterm_keeps_its_code() {
    // `victim` is killed with SIGTERM by someone else while sidecar-init is
    // stopped, and sidecar-init then gets its own SIGTERM: both signals
    // (SIGCHLD and SIGTERM) wait for it in one batch. The victim died
    // before any shutdown, so its code is 143, not the 0 of a graceful stop.
    let procfile = format!("{}{}", idle("victim"), idle("steady"));
    let mut init = Spec::procfile(&procfile).start();
    init.wait_for("[victim] ready");
    init.wait_for("[steady] ready");
    let victim = init.pid_from("victim", "pid");
    init.signal(nix::libc::SIGSTOP);
    // SAFETY: kill has no memory effects.
    unsafe { nix::libc::kill(victim, SIGTERM) };
    let zombie = Instant::now() + DEADLINE;
    while proc_state(victim) != Some('Z') {
        assert!(Instant::now() < zombie, "the victim did not die");
        std::thread::sleep(Duration::from_millis(5));
    }
    init.signal(SIGTERM);
    init.signal(nix::libc::SIGCONT);
    assert_eq!(init.wait_exit(DEADLINE), 143);
    init.expect("sidecar-init: victim exited with code 143 (killed by SIGTERM)");
    init.expect("sidecar-init: steady exited with code 0 (stopped by SIGTERM)");
}
