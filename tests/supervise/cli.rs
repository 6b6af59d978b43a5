//! Command line, configuration errors, selection and spawn failures.

use std::os::unix::fs::PermissionsExt;

use nix::libc::SIGTERM;

use crate::harness::{DEADLINE, Spec, TempDir, binary};

#[test]
fn help_and_version() {
    let out = std::process::Command::new(binary())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--procfile",
        "SIDECAR_INIT_GRACE",
        "CLAUDE_BOTTLE_SIDECAR_DAEMONS",
        "Exit code",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}: {text}");
    }
    let out = std::process::Command::new(binary())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("sidecar-init {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_prints_the_selected_table() {
    let (code, out, _) = Spec::procfile("a: echo 'x y'\nb: true\nc: false\n")
        .args(&["--check"])
        .env("CLAUDE_BOTTLE_SIDECAR_DAEMONS", "c,a")
        .run();
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        "a: echo 'x y'\n#   daemon; restart never; stop-signal SIGTERM\n\
         c: false\n#   daemon; restart never; stop-signal SIGTERM\n"
    );
}

/// Runs a Procfile whose first entry would create `marker`; checks exit 2,
/// a single error line holding `needle`, and that nothing was spawned.
fn rejected(procfile_tail: &str, needle: &str) {
    let dir = TempDir::new();
    let marker = dir.path().join("spawned");
    let procfile = format!("first: touch {}\n{procfile_tail}", marker.display());
    let (code, out, init) = Spec::procfile(&procfile).run();
    assert_eq!(code, 2, "{procfile:?}: {out}");
    let lines = init.lines();
    assert_eq!(lines.len(), 1, "one error line expected: {out}");
    assert!(lines[0].starts_with("sidecar-init: error: "), "{out}");
    assert!(lines[0].contains("Procfile:"), "the file is named: {out}");
    assert!(lines[0].contains(needle), "{needle:?} expected: {out}");
    assert!(
        !marker.exists(),
        "a daemon was spawned despite the bad Procfile"
    );
}

#[test]
fn bad_procfiles_exit_2_and_spawn_nothing() {
    rejected("oops no colon\n", "Procfile:2: expected 'name: command'");
    rejected(
        "\n\nbad name: x\n",
        "Procfile:4: invalid daemon name 'bad name'",
    );
    rejected(
        "first: echo again\n",
        "Procfile:2: duplicate daemon name 'first'",
    );
    rejected("empty:\n", "Procfile:2: empty command for 'empty'");
    rejected(
        "q: echo 'unterminated\n",
        "Procfile:2: unterminated single quote",
    );
    rejected(
        "q: echo \"unterminated\n",
        "Procfile:2: unterminated double quote",
    );
    rejected(": x\n", "Procfile:2: missing daemon name");
    rejected("q: echo \\", "Procfile:2: backslash at end of file");
}

#[test]
fn unreadable_and_empty_procfiles_exit_2() {
    let (code, out, _) = Spec::procfile("")
        .args(&["--procfile", "/nonexistent/Procfile"])
        .run();
    assert_eq!(code, 2, "{out}");
    assert_eq!(
        out,
        "sidecar-init: error: cannot read procfile /nonexistent/Procfile: No such file or directory\n"
    );
    let (code, out, _) = Spec::procfile("# nothing here\n\n").run();
    assert_eq!(code, 2, "{out}");
    assert!(out.ends_with("Procfile: no daemons defined\n"), "{out}");
}

#[test]
fn bad_options_exit_2_with_one_line() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            &["--grace", "soon"],
            &[],
            "--grace: 'soon' is not a duration",
        ),
        (
            &[],
            &[("SIDECAR_INIT_GRACE", "-1")],
            "SIDECAR_INIT_GRACE: '-1' is not a duration",
        ),
        (&["--bogus"], &[], "unknown option '--bogus'"),
        (&["--log-level", "loud"], &[], "not a log level"),
        (
            &["--line-max", "1"],
            &[],
            "--line-max: '1' is not a byte count",
        ),
        // Every option of readiness, one-shots, control, stop signals,
        // users and output formats: a bad value as a flag and in its
        // variable.
        (
            &["--after", "a=a"],
            &[],
            "--after: a dependency cycle: a → a",
        ),
        (
            &[],
            &[("SIDECAR_INIT_AFTER", "a=zz")],
            "SIDECAR_INIT_AFTER: a=zz: no daemon named 'zz'",
        ),
        (&["--ready", "a=tcp:nope"], &[], "--ready: a=tcp:nope: "),
        (
            &[],
            &[("SIDECAR_INIT_READY", "a=file:")],
            "SIDECAR_INIT_READY: a=file:: ",
        ),
        (
            &["--ready-timeout", "-3"],
            &[],
            "--ready-timeout: '-3' is not a duration",
        ),
        (
            &[],
            &[("SIDECAR_INIT_READY_TIMEOUT", "x")],
            "SIDECAR_INIT_READY_TIMEOUT: 'x'",
        ),
        (&["--ready-interval", "0"], &[], "--ready-interval: '0'"),
        (
            &[],
            &[("SIDECAR_INIT_READY_INTERVAL", "soon")],
            "SIDECAR_INIT_READY_INTERVAL: 'soon'",
        ),
        (&["--check-timeout", "0"], &[], "--check-timeout: '0'"),
        (
            &[],
            &[("SIDECAR_INIT_CHECK_TIMEOUT", "x")],
            "SIDECAR_INIT_CHECK_TIMEOUT: 'x'",
        ),
        (&["--oneshot", "zz"], &[], "--oneshot: no daemon named 'zz'"),
        (
            &[],
            &[("SIDECAR_INIT_ONESHOT", "zz")],
            "SIDECAR_INIT_ONESHOT: no daemon named 'zz'",
        ),
        (
            &["--essential", "zz"],
            &[],
            "--essential: no daemon named 'zz'",
        ),
        (
            &[],
            &[("SIDECAR_INIT_ESSENTIAL", "zz")],
            "SIDECAR_INIT_ESSENTIAL: no daemon named 'zz'",
        ),
        (&["--live", "a=bogus:1"], &[], "--live: a=bogus:1: "),
        (
            &[],
            &[("SIDECAR_INIT_LIVE", "a=line:x")],
            "cannot be a liveness check",
        ),
        (
            &["--live-interval", "never"],
            &[],
            "--live-interval: 'never'",
        ),
        (
            &[],
            &[("SIDECAR_INIT_LIVE_INTERVAL", "x")],
            "SIDECAR_INIT_LIVE_INTERVAL: 'x'",
        ),
        (&["--live-failures", "0"], &[], "--live-failures: '0'"),
        (
            &[],
            &[("SIDECAR_INIT_LIVE_FAILURES", "-1")],
            "SIDECAR_INIT_LIVE_FAILURES: '-1'",
        ),
        (
            &["--stop-signal", "a=SIGFOO"],
            &[],
            "'SIGFOO' is not a signal",
        ),
        (
            &[],
            &[("SIDECAR_INIT_STOP_SIGNAL", "99")],
            "SIDECAR_INIT_STOP_SIGNAL: ",
        ),
        (&["--user", "a=nosuchuser"], &[], "--user: "),
        (
            &[],
            &[("SIDECAR_INIT_USER", "a=nosuchuser")],
            "SIDECAR_INIT_USER: ",
        ),
        (&["--restart", "a=sometimes"], &[], "not a restart policy"),
        (
            &[],
            &[("SIDECAR_INIT_MAX_RESTARTS", "-1")],
            "SIDECAR_INIT_MAX_RESTARTS: '-1'",
        ),
        (&["--notify-timeout", "x"], &[], "--notify-timeout: 'x'"),
        (&["--log-format", "xml"], &[], "--log-format: 'xml'"),
        (
            &[],
            &[("SIDECAR_INIT_LOG_FORMAT", "yaml")],
            "SIDECAR_INIT_LOG_FORMAT: 'yaml'",
        ),
        (
            &[],
            &[("SIDECAR_INIT_TIMESTAMPS", "maybe")],
            "SIDECAR_INIT_TIMESTAMPS: 'maybe' is not true or false",
        ),
        (&["--color", "sometimes"], &[], "--color: 'sometimes'"),
        (
            &[],
            &[("SIDECAR_INIT_COLOR", "x")],
            "SIDECAR_INIT_COLOR: 'x'",
        ),
    ];
    for &(args, env, needle) in cases {
        let mut spec = Spec::procfile("a: touch spawned\n").args(args);
        for (k, v) in env {
            spec = spec.env(k, v);
        }
        let (code, out, init) = spec.run();
        assert_eq!(code, 2, "{args:?} {env:?}: {out}");
        assert_eq!(init.lines().len(), 1, "{out}");
        assert!(
            out.starts_with("sidecar-init: error: ") && out.contains(needle),
            "{needle}: {out}"
        );
        assert!(
            !init.dir.path().join("spawned").exists(),
            "spawned despite a usage error"
        );
    }
}

#[test]
fn flags_win_over_the_environment() {
    let dir = TempDir::new();
    let good = dir.write("Good", "a: echo from the flag file\n");
    let (code, out, _) = Spec::procfile("a: echo from the env file\n")
        .args(&["--procfile", &good.display().to_string()])
        .run();
    // The harness passes its own --procfile first; the last flag wins.
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("[a] from the flag file"), "{out}");
    let (code, out, _) = Spec {
        procfile: None,
        ..Spec::procfile("")
    }
    .env("SIDECAR_INIT_PROCFILE", &good.display().to_string())
    .run();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("[a] from the flag file"), "{out}");
}

const ABC: &str = "a: echo I am a\nb: echo I am b\nc: echo I am c\n";

#[test]
fn selection_keeps_table_order_and_warns_about_unknown_names() {
    let (code, out, init) = Spec::procfile(ABC)
        .env("CLAUDE_BOTTLE_SIDECAR_DAEMONS", " c , a,,nope, nope ,other")
        .run();
    assert_eq!(code, 0, "{out}");
    assert!(
        init.line_index("sidecar-init: starting a") < init.line_index("sidecar-init: starting c")
    );
    init.expect_not("starting b");
    init.expect("[a] I am a");
    init.expect("[c] I am c");
    let warnings: Vec<String> = init
        .lines()
        .into_iter()
        .filter(|l| l.contains("unknown"))
        .collect();
    assert_eq!(
        warnings,
        ["sidecar-init: CLAUDE_BOTTLE_SIDECAR_DAEMONS names unknown daemons, ignored: nope, other"]
    );
}

#[test]
fn blank_selection_means_all() {
    for value in ["", " ", " , ,"] {
        let (code, out, init) = Spec::procfile(ABC)
            .env("CLAUDE_BOTTLE_SIDECAR_DAEMONS", value)
            .run();
        assert_eq!(code, 0, "{out}");
        for d in ["a", "b", "c"] {
            init.expect(&format!("[{d}] I am {d}"));
        }
    }
}

#[test]
fn selecting_nothing_exits_zero() {
    let (code, out, _) = Spec::procfile(ABC)
        .env("CLAUDE_BOTTLE_SIDECAR_DAEMONS", "nope")
        .run();
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "sidecar-init: CLAUDE_BOTTLE_SIDECAR_DAEMONS names unknown daemons, ignored: nope\n\
         sidecar-init: no daemons selected; nothing to do\n\
         sidecar-init: exit 0\n"
    );
}

#[test]
fn the_default_table_runs_when_no_procfile_is_given() {
    // The built-in commands do not exist on a test machine: each fails to
    // start (127) and the run ends with that code, in table order.
    let (code, out, init) = Spec {
        procfile: None,
        ..Spec::procfile("")
    }
    .run();
    assert_eq!(code, 127, "{out}");
    let order: Vec<usize> = ["egress", "pipelock", "git-gate", "supervise"]
        .iter()
        .map(|d| init.line_index(&format!("sidecar-init: starting {d}")))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{out}");
}

#[test]
fn spawn_failures_are_127_and_126_and_the_rest_run() {
    let dir = TempDir::new();
    let script = dir.write("not-executable", "#!/bin/sh\necho hi\n");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let procfile = format!(
        "missing: /nonexistent/daemon\nnopath: no-such-command-anywhere\nnoexec: {}\nok: sh -c 'echo ready; exec sleep 1000'\n",
        script.display()
    );
    let mut init = Spec::procfile(&procfile).start();
    init.wait_for("[ok] ready");
    init.wait_for("noexec exited with code 126");
    init.expect(
        "sidecar-init: error: cannot start missing: /nonexistent/daemon: No such file or directory",
    );
    init.expect(
        "missing exited with code 127 (command not found); leaving surviving daemons running",
    );
    init.expect("nopath exited with code 127 (command not found)");
    init.expect("noexec exited with code 126 (command not executable)");
    assert!(init.running());
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 127);
}

#[test]
fn log_level_warn_hides_info_lines() {
    let (code, out, _) = Spec::procfile("a: sh -c 'echo hello; exit 1'\n")
        .env("SIDECAR_INIT_LOG", "warn")
        .run();
    assert_eq!(code, 1);
    assert_eq!(
        out,
        "[a] hello\nsidecar-init: a exited with code 1; no daemons left\n"
    );
}

#[test]
fn a_closed_stdout_at_start_is_survived() {
    // sidecar-init starts with fd 1 closed: its own descriptors must not land
    // there, and the daemon still gets a pipe of its own as stdout.
    let dir = TempDir::new();
    let procfile = dir.write(
        "Procfile",
        "a: sh -c 'x=$(readlink /proc/$$/fd/1); echo $x > where; exit 7'\n",
    );
    let status = std::process::Command::new("sh")
        .args(["-c", "exec >&-; exec \"$0\" --procfile \"$1\"", binary()])
        .arg(&procfile)
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(7));
    let wh = std::fs::read_to_string(dir.path().join("where")).unwrap();
    assert!(wh.starts_with("pipe:"), "the daemon's stdout is {wh:?}");
}

#[test]
fn the_same_binary_is_the_client() {
    let mut init = Spec::procfile("a: sh -c 'echo up; exec sleep 1000'\n").start();
    init.wait_for("[a] up");
    let out = std::process::Command::new(binary())
        .args(["status", "--control"])
        .arg(init.control_socket())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.starts_with("NAME"), "{text}");
    assert!(text.contains("\na "), "{text}");
    init.signal(nix::libc::SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
    let out = std::process::Command::new(binary())
        .args(["health", "--control"])
        .arg(init.control_socket())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "no supervisor answers any more");
}
