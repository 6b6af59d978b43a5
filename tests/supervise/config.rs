//! Stop signals, users, the selection's names, durations and `--check`
//! (SPEC §11 and issue 15).

use std::process::Command;
use std::time::{Duration, Instant};

use nix::libc::SIGTERM;

use crate::harness::{DEADLINE, Spec, binary, pid_file, skip};

/// A daemon that ignores SIGTERM and stops only on SIGQUIT (as nginx and
/// php-fpm stop gracefully).
const QUITTER: &str = "quitter: sh -c 'trap \"\" TERM; trap \"echo got QUIT; exit 0\" QUIT; echo up; while :; do sleep 1 & wait $!; done'\n";

#[test]
fn a_daemon_that_stops_on_sigquit_stops_within_the_grace_with_its_stop_signal() {
    let mut init = Spec::procfile(QUITTER)
        .args(&["--stop-signal", "quitter=QUIT", "--grace", "30"])
        .start();
    init.wait_for("[quitter] up");
    let sent = Instant::now();
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "waited for the grace"
    );
    init.expect("sidecar-init: shutting down (SIGTERM); forwarding SIGQUIT");
    init.expect("[quitter] got QUIT");
    init.expect_not("SIGKILL");
}

#[test]
fn death_by_its_own_stop_signal_counts_as_a_graceful_stop() {
    // Dies of SIGQUIT's default action at shutdown: 0, not 131.
    let mut init = Spec::procfile("q: sh -c 'echo up; exec sleep 1000'\n")
        .args(&["--stop-signal", "SIGQUIT"])
        .start();
    init.wait_for("[q] up");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
    init.expect("sidecar-init: q exited with code 0 (stopped by SIGQUIT)");
}

#[test]
fn without_its_stop_signal_the_same_daemon_is_killed_at_the_grace() {
    let mut init = Spec::procfile(QUITTER).args(&["--grace", "0.5"]).start();
    init.wait_for("[quitter] up");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 137);
}

#[test]
fn stop_signals_by_number_and_name_and_bad_ones() {
    let (code, out, _) = Spec::procfile("a: true\nb: true\n")
        .args(&["--check", "--stop-signal", "3,b=sighup"])
        .run();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("a: true\n#   daemon; restart never; stop-signal SIGQUIT\n"),
        "{out}"
    );
    assert!(
        out.contains("b: true\n#   daemon; restart never; stop-signal SIGHUP\n"),
        "{out}"
    );
    for (bad, needle) in [
        ("b=KILL", "cannot be a stop signal"),
        ("b=99", "--stop-signal: b=99: "),
        ("nope", "--stop-signal: "),
        ("ghost=TERM", "no daemon named 'ghost'"),
    ] {
        let (code, out, _) = Spec::procfile("a: true\nb: true\n")
            .args(&["--stop-signal", bad])
            .run();
        assert_eq!(code, 2, "{bad}: {out}");
        assert!(out.contains(needle), "{bad}: {needle}: {out}");
    }
}

/// `Uid:`/`Gid:`/`Groups:` of a process, as /proc shows them.
fn ids_of(pid: i32) -> (String, String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    (field("Uid:"), field("Gid:"), field("Groups:"))
}

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn daemons_run_as_the_user_asked_with_no_supplementary_groups() {
    if !root() {
        skip("daemons_run_as_the_user_asked", "needs root");
        return;
    }
    let procfile = "\
numeric: sh -c 'echo $$ > numeric.pid; exec sleep 1000'
named: sh -c 'echo $$ > named.pid; exec sleep 1000'
mine: sh -c 'echo $$ > mine.pid; exec sleep 1000'
";
    let mut init = Spec::procfile(procfile)
        .args(&["--user", "numeric=65534:65533,named=nobody"])
        .start();
    let dir = init.dir.path().to_path_buf();
    // The test dir is the daemons' working directory: they must write in it.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let numeric = pid_file(&dir.join("numeric.pid"));
    let named = pid_file(&dir.join("named.pid"));
    let mine = pid_file(&dir.join("mine.pid"));
    let (uid, gid, groups) = ids_of(numeric);
    assert_eq!(uid, "65534 65534 65534 65534");
    assert_eq!(gid, "65533 65533 65533 65533");
    assert_eq!(groups, "", "supplementary groups dropped");
    let nobody = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .map(|l| l.split(':').nth(2).unwrap().to_string())
        .unwrap();
    assert!(ids_of(named).0.starts_with(&format!("{nobody} ")));
    assert_eq!(ids_of(named).2, "");
    assert!(ids_of(mine).0.starts_with("0 "), "the others stay root");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
}

#[test]
fn another_user_is_refused_when_not_root() {
    if !root() {
        skip(
            "another_user_is_refused_when_not_root",
            "needs root to become another user",
        );
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        skip("another_user_is_refused_when_not_root", "no setpriv");
        return;
    }
    let dir = crate::harness::TempDir::new();
    let procfile = dir.write("Procfile", "a: touch spawned\n");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            binary(),
        ])
        .args([
            "--procfile",
            procfile.to_str().unwrap(),
            "--user",
            "a=0",
            "--control",
            "off",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("--user: a=0: sidecar-init runs as uid 65534, not root"),
        "{text}"
    );
    assert!(!dir.path().join("spawned").exists());
    // Its own uid is no switch: fine.
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            binary(),
        ])
        .args([
            "--procfile",
            procfile.to_str().unwrap(),
            "--user",
            "a=65534",
            "--control",
            "off",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn unknown_users_and_groups_are_configuration_errors() {
    for (user, needle) in [
        ("a=no-such-user", "no user 'no-such-user' in /etc/passwd"),
        (
            "a=0:no-such-group",
            "no group 'no-such-group' in /etc/group",
        ),
        ("a=x:y:z", "--user: a=x:y:z: "),
    ] {
        let (code, out, _) = Spec::procfile("a: true\n").args(&["--user", user]).run();
        assert_eq!(code, 2, "{user}: {out}");
        assert!(out.contains(needle), "{needle}: {out}");
    }
}

#[test]
fn durations_take_compose_forms() {
    // 1m30s of grace, 500ms restart delay, a 1.5s ready timeout: as seen in
    // the log lines that quote them.
    let mut init = Spec::procfile("a: sh -c 'exit 1'\nb: sh -c 'echo up; exec sleep 1000'\n")
        .args(&[
            "--restart",
            "a=on-failure",
            "--restart-delay",
            "500ms",
            "--max-restarts",
            "0",
            "--ready",
            "b=file:never",
            "--ready-timeout",
            "1s500ms",
            "--grace",
            "1m30s",
        ])
        .start();
    init.wait_for("a exited with code 1; giving up after 0 quick restarts in a row");
    init.wait_for("b not ready after 1.5s (file:never: ");
    init.wait_for("b exited with code 124");
    assert_eq!(init.wait_exit(DEADLINE), 124);
    for bad in ["5x", "1d", "-1s", "25h"] {
        let (code, out, _) = Spec::procfile("a: true\n").args(&["--grace", bad]).run();
        assert_eq!(code, 2, "{bad}: {out}");
        assert!(
            out.starts_with(&format!("sidecar-init: error: --grace: '{bad}' ")),
            "{out}"
        );
    }
}

#[test]
fn check_fails_naming_each_command_that_cannot_run() {
    let dir = crate::harness::TempDir::new();
    let noexec = dir.write("noexec", "#!/bin/sh\n");
    let procfile = format!(
        "ok: sh -c true\nmissing: /nonexistent/daemon\nnopath: no-such-command-xyz\nnoexec: {}\n",
        noexec.display()
    );
    let (code, out, init) = Spec::procfile(&procfile).args(&["--check"]).run();
    assert_eq!(code, 2, "{out}");
    assert_eq!(init.lines().len(), 1, "one error line: {out}");
    for needle in [
        "missing: /nonexistent/daemon: No such file or directory",
        "nopath: no-such-command-xyz: not found in PATH",
        "noexec: ",
        "not executable",
    ] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
    assert!(!out.contains("ok:"), "{out}");
}

#[test]
fn without_a_procfile_the_first_line_says_the_built_in_table_runs() {
    let (code, out, init) = Spec {
        procfile: None,
        ..Spec::procfile("")
    }
    .args(&["--grace", "0.1"])
    .run();
    assert_eq!(code, 127, "{out}");
    assert_eq!(
        init.lines()[0],
        "sidecar-init: no Procfile given (--procfile): running the built-in table"
    );
}

#[test]
fn the_selection_has_names_of_its_own_and_says_which_wins() {
    let procfile = "a: echo I am a\nb: echo I am b\nc: echo I am c\n";
    let (code, out, init) = Spec::procfile(procfile)
        .env("SIDECAR_INIT_DAEMONS", "b")
        .env("CLAUDE_BOTTLE_SIDECAR_DAEMONS", "a")
        .run();
    assert_eq!(code, 0, "{out}");
    init.expect("sidecar-init: SIDECAR_INIT_DAEMONS and CLAUDE_BOTTLE_SIDECAR_DAEMONS are both set; SIDECAR_INIT_DAEMONS wins");
    init.expect("[b] I am b");
    init.expect_not("[a] I am a");
    let (code, out, init) = Spec::procfile(procfile)
        .args(&["--daemons", "c, nosuch"])
        .env("SIDECAR_INIT_DAEMONS", "b")
        .run();
    assert_eq!(code, 0, "{out}");
    init.expect("[c] I am c");
    init.expect_not("[b] I am b");
    init.expect("sidecar-init: --daemons names unknown daemons, ignored: nosuch");
}
