//! sidecar-init where it lives: PID 1 of a container.
//!
//! Every scenario runs on two backends, with the static release binary (from
//! scripts/build-static) and a static busybox as the daemons' toolbox:
//!
//! - **unshare + chroot**: `unshare --pid --fork --mount-proc` makes
//!   sidecar-init PID 1 of a new PID namespace, chrooted into a directory
//!   holding only `/sidecar-init`, busybox and the scenario's files (plus
//!   the /proc and /dev/null any engine provides, and an empty /run): proof
//!   that nothing else is needed. Needs no container engine; runs as root,
//!   or as a user where user namespaces are allowed
//!   (`unshare --map-root-user`).
//! - **Docker**: a `FROM scratch` image built with docker/prebuilt.Dockerfile
//!   around the same binary, with busybox and the scenario's files added on
//!   top, checked through the engine's own commands (`logs`, `stop`,
//!   `kill -s`, `wait`, `inspect`, `top`, `exec`, and the engine's
//!   `HEALTHCHECK`).
//!
//! and each in two ways (SPEC §11: everything works unprivileged):
//!
//! - **as root**, the engine's defaults;
//! - **unprivileged**: uid and gid 65534, no capability, no_new_privs, a root
//!   filesystem it cannot write. Docker runs the image with
//!   `--user 65534:65534 --read-only --cap-drop ALL --security-opt
//!   no-new-privileges`; the chroot backend runs `setpriv --no-new-privs
//!   unshare ... chroot --userspec=65534:65534` (needs root: uid 65534 has no
//!   mapping in a user namespace).
//!
//! The tests are named `MODE::SCENARIO`, with the modes `unshare_chroot`,
//! `unshare_chroot_unprivileged`, `docker` and `docker_unprivileged`; the
//! scenario functions are written once, for every backend and mode.
//! `docker_compose_service_healthy` runs a two-service docker-compose
//! project.
//!
//! A backend that cannot run here (no static binary, no static busybox, no
//! usable unshare, no engine answering, no docker-compose) is skipped with a
//! `SKIPPED: reason` line written straight to stderr (not captured by the
//! test harness). `SIDECAR_INIT_TEST_REQUIRE=static,busybox,unshare,docker,
//! compose` (any subset) turns those skips into failures.
//! `SIDECAR_INIT_TEST_BINARY` names a static binary to use instead of
//! running scripts/build-static, and `SIDECAR_INIT_TEST_BUSYBOX` a busybox
//! other than /bin/busybox.
//!
//! Every wait has a deadline, and every failure message carries what PID 1
//! wrote. Containers, images, compose projects and directories are unique
//! per test and removed by drop guards, failures included (leftovers from a
//! killed run carry the label `sidecar-init-test`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};
use std::{fs, thread};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Daemons reaching `ready`, a line appearing, a signal being handled, the
/// engine's health status changing.
const WAIT: Duration = Duration::from_secs(20);
/// Reaping orphans, zombies disappearing.
const SETTLE: Duration = Duration::from_secs(10);
/// From SIGTERM (or start, for a run to completion) to exit.
const EXIT: Duration = Duration::from_secs(30);
/// Building the static binary from scratch on a busy machine.
const BUILD: Duration = Duration::from_secs(600);
/// A docker command other than a build or a wait.
const DOCKER_CMD: Duration = Duration::from_secs(60);
/// `docker-compose up` and `down` (a Python program, slow to start).
const COMPOSE_CMD: Duration = Duration::from_secs(120);
/// sidecar-init's grace period in these tests (`--grace`).
const GRACE_SECS: u64 = 1;
/// The engine's own timeout for `docker stop`: well above the grace period,
/// so a SIGKILL at the grace deadline is sidecar-init's, not the engine's.
const ENGINE_STOP_SECS: u64 = 30;
/// Label on every container, image, volume and network the Docker tests
/// create.
const LABEL: &str = "sidecar-init-test";
/// The unprivileged mode's uid and gid (`nobody`).
const NOBODY: u32 = 65534;
/// A uid that is neither root nor PID 1's: its control clients are refused.
const STRANGER: u32 = 4321;

/// Who PID 1 runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Privileges {
    /// root, with the engine's default capabilities and a writable root.
    Root,
    /// uid and gid [`NOBODY`], no capability, no_new_privs, and a root
    /// filesystem it cannot write (read-only in Docker).
    Unprivileged,
}

impl Privileges {
    /// PID 1's uid (and gid).
    fn uid(self) -> u32 {
        match self {
            Privileges::Root => 0,
            Privileges::Unprivileged => NOBODY,
        }
    }
}

// ---------------------------------------------------------------------------
// The scenarios, written once for both backends.
// ---------------------------------------------------------------------------

/// What runs as PID 1: a Procfile (at /Procfile), files next to it, extra
/// arguments and environment, and maybe a main program.
struct Scenario {
    name: &'static str,
    /// The Procfile (at /Procfile, named by SIDECAR_INIT_PROCFILE), or none.
    procfile: Option<&'static str>,
    files: &'static [(&'static str, &'static str)],
    /// sidecar-init's options. With a main program, Docker puts them in the
    /// image's `ENTRYPOINT ["/sidecar-init", OPTIONS..., "--"]`; else they
    /// are the container's command.
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    /// The main program (`-- CMD ARGS...`), empty for none: the container's
    /// command under the entrypoint above, the way tini is used.
    main: &'static [&'static str],
    /// /run (empty and root's in every root filesystem here) is writable
    /// by an unprivileged PID 1 too: Docker mounts `--tmpfs /run` owned by
    /// it, the chroot backend chowns the directory.
    writable_run: bool,
    /// Docker: the image has `HEALTHCHECK CMD ["/sidecar-init", "health"]`.
    healthcheck: bool,
    /// Docker: `docker run -t`, the engine's pseudo-terminal as stdin,
    /// stdout and stderr. (No other backend can run such a scenario.)
    tty: bool,
}

/// The fields a scenario leaves as they are.
const PLAIN: Scenario = Scenario {
    name: "",
    procfile: None,
    files: &[],
    args: &[],
    env: &[],
    main: &[],
    writable_run: false,
    healthcheck: false,
    tty: false,
};

/// Writes to stdout and stderr, reports HUP, stops on TERM. (`kill $!`: a
/// `sleep` started just after the group's SIGTERM would hold the output
/// pipe open for up to a second after the shell exits.)
const TALKER: &str = r#"trap 'echo "talker got TERM"; kill $! 2>/dev/null; exit 0' TERM
trap 'echo "talker got HUP"' HUP
echo "to stdout"
echo "to stderr" >&2
echo ready
while :; do sleep 1 & wait; done
"#;

/// Orphans three processes: each subshell exits at once, so its child is
/// re-parented to PID 1; the child reports its parent, then exits and must
/// be reaped by PID 1.
const ORPHANS: &str = r#"trap 'echo "orphans got TERM"; kill $! 2>/dev/null; exit 0' TERM
trap 'echo "orphans got HUP"' HUP
for i in 1 2 3; do
    ( sh /orphan.sh & )
done
echo ready
while :; do sleep 1 & wait; done
"#;

/// One orphan: waits (boundedly) to be re-parented, says to whom, exits.
const ORPHAN: &str = r#"n=0
while :; do
    read -r pid comm state ppid rest < /proc/self/stat
    if [ "$ppid" = 1 ] || [ "$n" -ge 100 ]; then break; fi
    n=$((n + 1))
    sleep 0.05
done
echo "orphan $pid has parent $ppid"
"#;

/// The control for the zombie check: a daemon (`exec sleep`) that never
/// reaps its own child, so a zombie whose parent is not PID 1 exists and
/// the check proves it can see zombies. HUP is ignored so the HUP check does
/// not kill it; TERM at shutdown does, and PID 1 then inherits the zombie.
const KEEPER: &str = r#"trap '' HUP
sleep 0.2 &
echo "control zombie $!"
exec sleep 1000
"#;

/// Reports TERM and goes on running: only SIGKILL stops it.
const STUBBORN: &str = r#"trap 'echo "stubborn ignores TERM"' TERM
echo ready
while :; do sleep 1 & wait; done
"#;

const LIFECYCLE: Scenario = Scenario {
    name: "lifecycle",
    procfile: Some("talker: sh /talker.sh\norphans: sh /orphans.sh\nkeeper: sh /keeper.sh\n"),
    files: &[
        ("talker.sh", TALKER),
        ("orphans.sh", ORPHANS),
        ("orphan.sh", ORPHAN),
        ("keeper.sh", KEEPER),
    ],
    args: &["--log-level", "debug"],
    ..PLAIN
};

const GRACE: Scenario = Scenario {
    name: "grace",
    procfile: Some("stubborn: sh /stubborn.sh\npolite: sh /talker.sh\n"),
    files: &[("stubborn.sh", STUBBORN), ("talker.sh", TALKER)],
    args: &["--grace", "1"], // GRACE_SECS
    ..PLAIN
};

const BAD_PROCFILE: Scenario = Scenario {
    name: "bad-procfile",
    procfile: Some("good: sh -c 'echo should not run'\nbad name!: sh -c 'echo nor this'\n"),
    ..PLAIN
};

const SELECTION: Scenario = Scenario {
    name: "selection",
    procfile: Some(
        "a: sh -c 'echo hello from a'\n\
         b: sh -c 'echo hello from b'\n\
         c: sh -c 'echo hello from c'\n",
    ),
    env: &[("CLAUDE_BOTTLE_SIDECAR_DAEMONS", " c, nosuch ,a")],
    ..PLAIN
};

/// Only a main program, run to its end once per program of
/// [`main_exit_codes`]. The grace period is long, so a run that waited for
/// it would show.
const MAIN_EXIT: Scenario = Scenario {
    name: "main-exit",
    args: &["--grace", "1m"],
    main: &["/bin/busybox", "true"],
    ..PLAIN
};

/// A main program that reports HUP and USR1, orphans three processes and
/// keeps a control zombie (as KEEPER does, in a child that ignores the
/// forwarded signals), and dies of SIGTERM.
const MAIN_SIGNALS_SH: &str = r#"trap 'echo "main got HUP"' HUP
trap 'echo "main got USR1"' USR1
for i in 1 2 3; do
    ( sh /orphan.sh & )
done
( trap '' HUP USR1; sleep 0.2 & echo "control zombie $!"; exec sleep 1000 ) &
echo "main ready"
while :; do sleep 1 & wait $!; done
"#;

const MAIN_SIGNALS: Scenario = Scenario {
    name: "main-signals",
    files: &[("main.sh", MAIN_SIGNALS_SH), ("orphan.sh", ORPHAN)],
    args: &["--log-level", "debug", "--grace", "1"],
    main: &["/bin/busybox", "sh", "/main.sh"],
    ..PLAIN
};

/// A sidecar: ready after a moment, exits 5 on TERM (a code that must not
/// count: the main program's status is the exit code).
const SIDE: &str = r#"trap 'echo "side got TERM"; kill $! 2>/dev/null; exit 5' TERM
sleep 0.5
echo "side ready"
while :; do sleep 1 & wait $!; done
"#;

/// A main program that stops cleanly on SIGTERM.
const POLITE_MAIN: &str = r#"trap 'echo "main got TERM"; kill $! 2>/dev/null; exit 0' TERM
echo "main ready"
while :; do sleep 1 & wait $!; done
"#;

/// The grace period is long enough for a `sleep 1` of the main program's
/// group that missed the SIGTERM (it can arrive between busybox's fork and
/// exec, where the child still has the shell's trap handler): the sidecar
/// gets its SIGTERM only once the main program's whole group is gone, and
/// at the grace period's end it would be SIGKILLed without one.
const MAIN_STOP: Scenario = Scenario {
    name: "main-stop",
    procfile: Some("side: sh /side.sh\n"),
    files: &[("side.sh", SIDE), ("main.sh", POLITE_MAIN)],
    args: &["--ready", "side=line:side ready", "--grace", "5s"],
    main: &["/bin/busybox", "sh", "/main.sh"],
    ..PLAIN
};

/// A daemon that leaves with code 3 when told (USR1), after the main
/// program has started.
const QUITTER: &str = r#"trap 'echo "quitter leaves"; kill $! 2>/dev/null; exit 3' USR1
while :; do sleep 1 & wait $!; done
"#;

/// Tells the quitter to leave, waits (boundedly) until it is gone, exits 42.
/// (busybox has no pkill; `quitter[.]sh` does not match grep's own
/// command line.)
const MAIN_AFTER_SH: &str = r#"echo "main starts"
for f in $(busybox grep -l 'quitter[.]sh' /proc/[0-9]*/cmdline 2>/dev/null); do
    pid=${f#/proc/}
    kill -USR1 "${pid%/cmdline}"
done
n=0
while busybox grep -q 'quitter[.]sh' /proc/[0-9]*/cmdline 2>/dev/null && [ "$n" -lt 100 ]; do
    n=$((n + 1))
    sleep 0.1
done
echo "main ends"
exit 42
"#;

const MAIN_AFTER: Scenario = Scenario {
    name: "main-after",
    procfile: Some(
        "side: sh /side.sh\nsetup: sh -c 'sleep 0.3; echo setup done'\nquitter: sh /quitter.sh\n",
    ),
    files: &[
        ("side.sh", SIDE),
        ("quitter.sh", QUITTER),
        ("main.sh", MAIN_AFTER_SH),
    ],
    args: &[
        "--ready",
        "side=line:side ready",
        "--oneshot",
        "setup",
        "--grace",
        "1",
    ],
    main: &["/bin/busybox", "sh", "/main.sh"],
    ..PLAIN
};

/// A daemon that reads its stdin: with the terminal as stdin, in a
/// background process group, it would be stopped by SIGTTIN.
const READER: &str = r#"if read -r line; then echo "reader read a line"; else echo "reader read EOF"; fi
echo "reader stdin is $(busybox readlink /proc/self/fd/0)"
echo "reader done"
while :; do sleep 1 & wait $!; done
"#;

/// Says whether it is the terminal's foreground process group.
const TTY_MAIN: &str = r#"read -r pid comm state ppid pgrp sid tty tpgid rest < /proc/self/stat
echo "main pid=$pid pgrp=$pgrp tpgid=$tpgid"
if [ -t 0 ]; then echo "main stdin is a terminal"; fi
"#;

const MAIN_TTY: Scenario = Scenario {
    name: "main-tty",
    procfile: Some("reader: sh /reader.sh\n"),
    files: &[("reader.sh", READER), ("main.sh", TTY_MAIN)],
    args: &[
        "--ready",
        "reader=line:reader done",
        "--ready-timeout",
        "10s",
        "--grace",
        "1",
    ],
    main: &["/bin/busybox", "sh", "/main.sh"],
    tty: true,
    ..PLAIN
};

/// web is ready once /run/web-go exists (the test makes it); cache at once.
const CONTROL: Scenario = Scenario {
    name: "control",
    procfile: Some("web: sh /talker.sh\ncache: sh /talker.sh\n"),
    files: &[("talker.sh", TALKER)],
    args: &["--ready", "web=file:/run/web-go", "--grace", "1"],
    writable_run: true,
    healthcheck: true,
    ..PLAIN
};

/// The first service of the compose project: healthy once web is ready,
/// which takes two seconds and leaves a marker on the shared volume.
const COMPOSE_WEB: &str = r#"trap 'echo "web got TERM"; kill $! 2>/dev/null; exit 0' TERM
sleep 2
: > /shared/web-ready
echo "web wrote its marker"
while :; do sleep 1 & wait $!; done
"#;

const COMPOSE_FIRST: Scenario = Scenario {
    name: "compose-first",
    procfile: Some("web: sh /web.sh\n"),
    files: &[("web.sh", COMPOSE_WEB)],
    ..PLAIN
};

/// The second: sidecar-init as a tini, its main program checking the
/// first's marker.
const COMPOSE_SECOND: Scenario = Scenario {
    name: "compose-second",
    main: &[
        "/bin/busybox",
        "sh",
        "-c",
        "if [ -e /shared/web-ready ]; then echo 'second: web was ready'; \
         else echo 'second: web was NOT ready'; exit 1; fi",
    ],
    ..PLAIN
};

/// Prefixed lines (stdout and stderr), orphans reaped by PID 1 with no
/// zombie left, PID 1's identity and control socket as the mode says,
/// SIGHUP forwarded, and a graceful stop exiting 0.
fn lifecycle(backend: &dyn Backend) {
    let mut run = backend.start(&LIFECYCLE);
    let run = run.as_mut();
    for line in ["[talker] ready", "[orphans] ready"] {
        wait_line(run, line, WAIT);
    }
    let log = wait_log(run, "3 orphan reports", WAIT, |log| {
        lines_starting(log, "[orphans] orphan ").len() >= 3
    });
    for line in [
        "[talker] to stdout",
        "[talker] to stderr",
        "sidecar-init: starting talker",
    ] {
        check(run, has_line(&log, line), &format!("no line {line:?}"));
    }
    let control = check_reaping(run, "[orphans] ", "[keeper] ");
    check_identity(backend, run);
    check_control_socket(backend, run, &["talker", "orphans", "keeper"]);

    // SIGHUP reaches the daemons and does not stop anything.
    run.signal(Signal::SIGHUP);
    wait_line(run, "[talker] talker got HUP", WAIT);
    wait_line(run, "[orphans] orphans got HUP", WAIT);
    let log = run.log();
    check(
        run,
        log.contains("forwarding SIGHUP to"),
        "no 'forwarding SIGHUP' line",
    );
    check(
        run,
        !log.contains("shutting down"),
        "SIGHUP started a shutdown",
    );

    // Graceful stop: every daemon ends by (or on) the forwarded SIGTERM: 0.
    let (code, _) = run.stop();
    let log = run.log();
    check(
        run,
        code == 0,
        &format!("graceful stop exited {code}, not 0"),
    );
    for line in [
        "sidecar-init: shutting down (SIGTERM); forwarding SIGTERM",
        "[talker] talker got TERM",
        "[orphans] orphans got TERM",
        // The keeper's zombie, inherited by PID 1 when the keeper died.
        &format!("sidecar-init: debug: reaped pid {control} (not a daemon)"),
    ] {
        check(run, has_line(&log, line), &format!("no line {line:?}"));
    }
    check(
        run,
        last_line(&log) == "sidecar-init: exit 0",
        "the last line is not 'exit 0'",
    );
}

/// A daemon ignoring SIGTERM is SIGKILLed at the grace deadline, long before
/// the engine's own stop timeout, and the exit code says so: 137.
fn grace_kill(backend: &dyn Backend) {
    let mut run = backend.start(&GRACE);
    let run = run.as_mut();
    wait_line(run, "[stubborn] ready", WAIT);
    wait_line(run, "[polite] ready", WAIT);
    let (code, took) = run.stop();
    let log = run.log();
    check(run, code == 137, &format!("exited {code}, not 137"));
    for line in [
        "[stubborn] stubborn ignores TERM",
        "[polite] talker got TERM",
        "sidecar-init: exit 137",
    ] {
        check(run, has_line(&log, line), &format!("no line {line:?}"));
    }
    // Also names any daemon whose process group may still have members.
    let killed = lines_starting(&log, "sidecar-init: grace (1s) elapsed; SIGKILL on ");
    check(
        run,
        killed.len() == 1 && killed[0].contains(" stubborn"),
        "no 'grace (1s) elapsed; SIGKILL on stubborn' line",
    );
    check(
        run,
        log.contains("stubborn exited with code 137"),
        "no 'stubborn exited with code 137'",
    );
    check(
        run,
        last_line(&log) == "sidecar-init: exit 137",
        "'exit 137' is not the last line",
    );
    let grace = Duration::from_secs(GRACE_SECS);
    check(
        run,
        took >= grace - Duration::from_millis(100) && took < grace + Duration::from_secs(8),
        &format!("stopping took {took:?}; the grace period is {grace:?}"),
    );
}

/// A bad Procfile: exit 2, the error names file and line, nothing starts.
fn bad_procfile(backend: &dyn Backend) {
    let done = backend.run(&BAD_PROCFILE);
    done.check(done.code == 2, &format!("exited {}, not 2", done.code));
    let error = "sidecar-init: error: /Procfile:2: invalid daemon name 'bad name!'";
    done.check(
        done.log.contains(error),
        &format!("no line starting {error:?}"),
    );
    done.check(!done.log.contains("starting"), "a daemon was started");
    done.check(!done.log.contains("[good]"), "a daemon ran");
}

/// CLAUDE_BOTTLE_SIDECAR_DAEMONS narrows the table, keeps its order and
/// warns about unknown names.
fn selection(backend: &dyn Backend) {
    let done = backend.run(&SELECTION);
    done.check(done.code == 0, &format!("exited {}, not 0", done.code));
    for line in [
        "[a] hello from a",
        "[c] hello from c",
        "sidecar-init: CLAUDE_BOTTLE_SIDECAR_DAEMONS names unknown daemons, ignored: nosuch",
        "sidecar-init: exit 0",
    ] {
        done.check(has_line(&done.log, line), &format!("no line {line:?}"));
    }
    done.check(!done.log.contains("[b]"), "b ran although not selected");
    done.check(
        !done.log.contains("starting b"),
        "b started although not selected",
    );
    let a = done.log.find("starting a");
    let c = done.log.find("starting c");
    done.check(
        matches!((a, c), (Some(a), Some(c)) if a < c),
        "a and c did not start in table order",
    );
}

/// The tini contract for a lone main program (issue 13): its exit status is
/// sidecar-init's, 0 to 255, also for a program that exits at once; death
/// by signal N is 128+N (SIGTERM included); a missing program is 127. No
/// run waits for the grace period (a minute here).
fn main_exit_codes(backend: &dyn Backend) {
    const SH: [&str; 3] = ["/bin/busybox", "sh", "-c"];
    let cases: [(&[&str], i32); 9] = [
        (&[SH[0], SH[1], SH[2], "exit 0"], 0),
        (&[SH[0], SH[1], SH[2], "exit 1"], 1),
        (&[SH[0], SH[1], SH[2], "exit 42"], 42),
        (&[SH[0], SH[1], SH[2], "exit 255"], 255),
        (&[SH[0], SH[1], SH[2], "kill -KILL $$"], 137),
        (&[SH[0], SH[1], SH[2], "kill -TERM $$"], 143),
        (&[SH[0], SH[1], SH[2], "echo 'main says hi'"], 0),
        (&["/bin/busybox", "true"], 0),
        (&["/no/such/program"], 127),
    ];
    let mains: Vec<&[&str]> = cases.iter().map(|(main, _)| *main).collect();
    let runs = backend.run_each(&MAIN_EXIT, &mains);
    for ((main, want), done) in cases.iter().zip(&runs) {
        let what = format!("main program {main:?}");
        done.check(
            done.code == *want,
            &format!("{what}: exited {}, not {want}", done.code),
        );
        done.check(
            last_line(&done.log) == format!("sidecar-init: exit {want}"),
            &format!("{what}: the last line is not 'exit {want}'"),
        );
        done.check(
            has_line(&done.log, "sidecar-init: starting the main program (main)"),
            &format!("{what}: no 'starting the main program' line"),
        );
        done.check(
            done.took < Duration::from_secs(20),
            &format!("{what}: the run took {:?}", done.took),
        );
    }
    let hi = &runs[6];
    hi.check(
        has_line(&hi.log, "main says hi"),
        "the main program's output is not on PID 1's stdout, unprefixed",
    );
}

/// The main program alone as PID 1's child: forwarded signals reach it
/// and start no shutdown, orphans are reaped by PID 1, and `docker stop`
/// ends it by SIGTERM: exit 143, as with tini.
fn main_signals(backend: &dyn Backend) {
    let mut run = backend.start(&MAIN_SIGNALS);
    let run = run.as_mut();
    wait_line(run, "main ready", WAIT);
    wait_log(run, "3 orphan reports", WAIT, |log| {
        lines_starting(log, "orphan ").len() >= 3
    });
    let control = check_reaping(run, "", "");

    for (sig, line) in [
        (Signal::SIGHUP, "main got HUP"),
        (Signal::SIGUSR1, "main got USR1"),
    ] {
        run.signal(sig);
        wait_line(run, line, WAIT);
    }
    check(
        run,
        !run.log().contains("shutting down"),
        "a forwarded signal started a shutdown",
    );

    let (code, took) = run.stop();
    let log = run.log();
    check(run, code == 143, &format!("exited {code}, not 143"));
    for line in [
        "sidecar-init: the main program (main) exited with code 143 (killed by SIGTERM)",
        &format!("sidecar-init: debug: reaped pid {control} (not a daemon)"),
    ] {
        check(run, has_line(&log, line), &format!("no line {line:?}"));
    }
    check(
        run,
        last_line(&log) == "sidecar-init: exit 143",
        "the last line is not 'exit 143'",
    );
    check(
        run,
        took < Duration::from_secs(GRACE_SECS + 8),
        &format!("stopping took {took:?}"),
    );
}

/// A main program with a sidecar: it starts once the sidecar is ready;
/// `docker stop` reaches it first (the main program depends on every
/// daemon), then the sidecar; the exit code is the main program's 0, not
/// the sidecar's 5.
fn main_stop(backend: &dyn Backend) {
    let mut run = backend.start(&MAIN_STOP);
    let run = run.as_mut();
    let log = wait_line(run, "main ready", WAIT);
    check(
        run,
        before(&log, "[side] side ready", "main ready"),
        "the main program started before its sidecar was ready",
    );
    let (code, took) = run.stop();
    let log = run.log();
    check(run, code == 0, &format!("exited {code}, not 0"));
    for line in ["main got TERM", "[side] side got TERM"] {
        check(run, has_line(&log, line), &format!("no line {line:?}"));
    }
    check(
        run,
        before(&log, "main got TERM", "[side] side got TERM"),
        "the sidecar was stopped before the main program",
    );
    check(
        run,
        log.contains("side exited with code 5"),
        "no 'side exited with code 5' line",
    );
    check(
        run,
        last_line(&log) == "sidecar-init: exit 0",
        "the last line is not 'exit 0'",
    );
    check(
        run,
        took < Duration::from_secs(5 + 8),
        &format!("stopping took {took:?}"),
    );
}

/// A main program after sidecars, run to its end: it starts once a daemon
/// is ready (line check) and a one-shot has finished; a daemon's exit
/// while it runs does not stop it, and its own exit stops the rest; the
/// exit code is its 42, not the daemons' 3 and 5.
fn main_after_sidecars(backend: &dyn Backend) {
    let done = backend.run(&MAIN_AFTER);
    let log = &done.log;
    done.check(done.code == 42, &format!("exited {}, not 42", done.code));
    for line in [
        "[side] side ready",
        "[setup] setup done",
        "main starts",
        "[quitter] quitter leaves",
        "main ends",
        "[side] side got TERM",
        "sidecar-init: exit 42",
    ] {
        done.check(has_line(log, line), &format!("no line {line:?}"));
    }
    for earlier in ["[side] side ready", "[setup] setup done"] {
        done.check(
            before(log, earlier, "main starts"),
            &format!("{earlier:?} is not before 'main starts'"),
        );
    }
    done.check(log.contains("setup finished"), "no 'setup finished' line");
    done.check(
        log.contains("quitter exited with code 3"),
        "no 'quitter exited with code 3' line",
    );
    done.check(
        before(log, "main ends", "[side] side got TERM"),
        "the sidecar was stopped before the main program ended",
    );
    done.check(
        last_line(log) == "sidecar-init: exit 42",
        "the last line is not 'exit 42'",
    );
}

/// `docker run -t`: the main program has the engine's terminal as stdin and
/// is its foreground process group (its own group, not PID 1's); a daemon
/// reading its stdin reads /dev/null and is not stopped by SIGTTIN. On the
/// terminal the daemons' names are coloured and sidecar-init's own lines
/// dim (`--color auto`); the lines are checked without the colour.
fn main_tty(backend: &dyn Backend) {
    let done = backend.run(&MAIN_TTY);
    done.check(done.code == 0, &format!("exited {}, not 0", done.code));
    done.check(
        done.log.contains("\x1b[36m[reader]\x1b[0m reader done")
            && done
                .log
                .contains("\x1b[2msidecar-init: starting reader\x1b[0m"),
        "no colour on the engine's terminal",
    );
    let log = &strip_colour(&done.log);
    for line in [
        "[reader] reader read EOF",
        "[reader] reader stdin is /dev/null",
        "main stdin is a terminal",
    ] {
        done.check(has_line(log, line), &format!("no line {line:?}"));
    }
    let ids = lines_starting(log, "main pid=");
    let ids: Vec<&str> = ids
        .first()
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .map(|w| w.split('=').nth(1).unwrap_or(""))
                .collect()
        })
        .unwrap_or_default();
    done.check(
        ids.len() == 3 && ids[0] != "1" && ids.iter().all(|id| *id == ids[0]),
        &format!("the main program is not its terminal's foreground group leader: {ids:?}"),
    );
}

/// The control socket from inside the container (as PID 1's user, the
/// default of `docker exec` and of HEALTHCHECK), and the engine's view of
/// `HEALTHCHECK CMD ["/sidecar-init", "health"]`: starting while web is not
/// ready (failing checks in the start period), healthy once it is,
/// unhealthy after `stop web`, healthy again after `start web`. The socket
/// is 0600 and another uid's client is refused; none of this disturbs the
/// daemons.
fn control(backend: &dyn Backend) {
    let me = backend.privileges().uid();
    let mut run = backend.start(&CONTROL);
    let run = run.as_mut();
    wait_line(run, "[web] ready", WAIT);
    wait_line(run, "[cache] ready", WAIT);

    let out = run.exec(
        me,
        &[
            "/bin/busybox",
            "stat",
            "-c",
            "%a %u",
            "/run/sidecar-init.sock",
        ],
    );
    check(
        run,
        out.ok() && out.stdout.trim() == format!("600 {me}"),
        &format!("the socket is not mode 600 and owned by uid {me}:\n{out}"),
    );

    // web waits for /run/web-go.
    let out = client(run, me, &["health"]);
    check(
        run,
        out.code() == Some(1) && out.stdout.contains("web") && !out.stdout.contains("cache"),
        &format!("health while web is not ready:\n{out}"),
    );
    let out = client(run, me, &["status"]);
    check(
        run,
        out.code() == Some(0)
            && status_row(&out.stdout, "web").get(1) == Some(&"starting")
            && status_row(&out.stdout, "cache").get(1) == Some(&"ready"),
        &format!("status while web is not ready:\n{out}"),
    );
    if run.engine_health().is_some() {
        // A failed check in the start period leaves the container starting.
        wait_engine_health(run, "a failed check while starting", |h| {
            h.status == "starting" && h.checks.iter().any(|c| c.code == 1)
        });
    }

    let out = run.exec(me, &["/bin/busybox", "sh", "-c", ": > /run/web-go"]);
    check(run, out.ok(), &format!("cannot create /run/web-go:\n{out}"));
    wait_log(run, "web's readiness", WAIT, |log| {
        log.contains("sidecar-init: web is ready (file:/run/web-go) after ")
    });
    let out = client(run, me, &["health"]);
    check(
        run,
        out.code() == Some(0),
        &format!("health once web is ready:\n{out}"),
    );
    wait_engine_health(run, "healthy", |h| h.status == "healthy");
    check_status_json(run, me);

    // Another uid's client is refused (by the socket's mode) and changes
    // nothing.
    let out = client(run, STRANGER, &["stop", "web"]);
    check(
        run,
        out.code() == Some(1)
            && out
                .stderr
                .contains("/run/sidecar-init.sock: permission denied"),
        &format!("a client of uid {STRANGER} was not refused:\n{out}"),
    );
    let out = client(run, me, &["health"]);
    check(
        run,
        out.code() == Some(0) && !run.log().contains("stopping web"),
        &format!("the refused client's stop was acted on:\n{out}"),
    );

    let out = client(run, me, &["stop", "web"]);
    check(run, out.ok(), &format!("stop web:\n{out}"));
    wait_log(run, "web's stop", WAIT, |log| {
        log.contains("web exited with code 0")
    });
    let out = client(run, me, &["health"]);
    check(
        run,
        out.code() == Some(1) && out.stdout.contains("web"),
        &format!("health after stop web:\n{out}"),
    );
    wait_engine_health(run, "unhealthy", |h| h.status == "unhealthy");
    let out = client(run, me, &["status"]);
    check(
        run,
        status_row(&out.stdout, "web").get(1) == Some(&"stopped")
            && status_row(&out.stdout, "cache").get(1) == Some(&"ready"),
        &format!("status after stop web:\n{out}"),
    );
    let log = run.log();
    check(
        run,
        !log.contains("shutting down") && !log.contains("[cache] talker got TERM"),
        "stopping web stopped more than web",
    );

    let out = client(run, me, &["start", "web"]);
    check(run, out.ok(), &format!("start web:\n{out}"));
    wait_client(run, me, "healthy after start web", &["health"], |out| {
        out.code() == Some(0)
    });
    wait_engine_health(run, "healthy again", |h| h.status == "healthy");

    let (code, _) = run.stop();
    let log = run.log();
    check(run, code == 0, &format!("exited {code}, not 0"));
    check(
        run,
        last_line(&log) == "sidecar-init: exit 0",
        "the last line is not 'exit 0'",
    );
}

/// `sidecar-init status --json`, parsed and checked field by field.
fn check_status_json(run: &mut dyn Running, me: u32) {
    let out = client(run, me, &["status", "--json"]);
    let parsed = parse_json(&out.stdout);
    let Ok(Json::Arr(rows)) = &parsed else {
        fail(
            run,
            &format!("status --json is no JSON array ({parsed:?}):\n{out}"),
        );
    };
    let names: Vec<Option<&str>> = rows
        .iter()
        .map(|r| r.get("name").and_then(Json::str))
        .collect();
    check(
        run,
        names == [Some("web"), Some("cache")],
        &format!("status --json names {names:?}:\n{out}"),
    );
    for row in rows {
        let name = row.get("name").and_then(Json::str).unwrap_or_default();
        let check_field = |field: &str| match field {
            "kind" => row.get(field) == Some(&Json::Str("daemon".into())),
            "state" => row.get(field) == Some(&Json::Str("ready".into())),
            "pid" => matches!(row.get(field), Some(Json::Num(p)) if *p > 1.0),
            "uptime_seconds" => matches!(row.get(field), Some(Json::Num(s)) if *s >= 0.0),
            "restarts" => row.get(field) == Some(&Json::Num(0.0)),
            "code" => row.get(field) == Some(&Json::Null),
            "check" if name == "web" => {
                row.get(field) == Some(&Json::Str("file:/run/web-go".into()))
            }
            "check" => row.get(field) == Some(&Json::Null),
            _ => false,
        };
        for field in [
            "kind",
            "state",
            "pid",
            "uptime_seconds",
            "restarts",
            "code",
            "check",
        ] {
            check(
                run,
                check_field(field),
                &format!(
                    "status --json: {name}'s {field} is {:?}:\n{out}",
                    row.get(field)
                ),
            );
        }
    }
}

/// A row of `sidecar-init status`'s table, as words.
fn status_row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|words| words.first() == Some(&name))
        .unwrap_or_default()
}

/// `sidecar-init VERB...` run inside, as `uid`.
fn client(run: &mut dyn Running, uid: u32, args: &[&str]) -> Output {
    let argv: Vec<&str> = std::iter::once("/sidecar-init")
        .chain(args.iter().copied())
        .collect();
    run.exec(uid, &argv)
}

/// Runs the client until `pred` holds for its output.
fn wait_client(
    run: &mut dyn Running,
    uid: u32,
    what: &str,
    args: &[&str],
    pred: impl Fn(&Output) -> bool,
) -> Output {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = client(run, uid, args);
        if pred(&out) {
            return out;
        }
        if Instant::now() >= deadline {
            fail(
                run,
                &format!("waiting for {what} within {WAIT:?}; last:\n{out}"),
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the engine's health of the container satisfies `pred` (at
/// once where there is no engine).
fn wait_engine_health(run: &mut dyn Running, what: &str, pred: impl Fn(&Health) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let Some(health) = run.engine_health() else {
            return;
        };
        if pred(&health) {
            return;
        }
        if Instant::now() >= deadline {
            fail(
                run,
                &format!("the engine's health is not {what} within {WAIT:?}: {health:?}"),
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The orphans reported with lines `{prefix}orphan PID has parent PPID`
/// were re-parented to PID 1 and reaped by it, and no zombie of PID 1 is
/// left, while the control zombie (`{control_prefix}control zombie PID`) is
/// visible. Needs `--log-level debug`. Returns the control zombie's pid.
fn check_reaping(run: &mut dyn Running, prefix: &str, control_prefix: &str) -> u32 {
    let log = run.log();
    let mut orphans = Vec::new();
    let reports = format!("{prefix}orphan ");
    for line in lines_starting(&log, &reports) {
        let words: Vec<&str> = line[prefix.len()..].split_whitespace().collect();
        let (pid, parent) = (words[1], words[4]);
        check(
            run,
            parent == "1",
            &format!("orphan not re-parented to PID 1: {line:?}"),
        );
        orphans.push(pid.parse::<u32>().expect("orphan pid"));
    }
    for pid in &orphans {
        wait_line(
            run,
            &format!("sidecar-init: debug: reaped pid {pid} (not a daemon)"),
            SETTLE,
        );
    }
    let zombie = format!("{control_prefix}control zombie ");
    let log = wait_log(run, "the control zombie's pid", WAIT, |log| {
        !lines_starting(log, &zombie).is_empty()
    });
    let control: u32 = lines_starting(&log, &zombie)[0]
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("control zombie pid");
    no_zombies_of_pid1(run, control, &orphans);
    control
}

/// PID 1 runs as the mode says: root, or uid and gid 65534 with no
/// capability and no_new_privs.
fn check_identity(backend: &dyn Backend, run: &mut dyn Running) {
    let status = run.pid1_status();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let uid = backend.privileges().uid();
    let ids = format!("{uid} {uid} {uid} {uid}");
    check(
        run,
        field("Uid:") == ids && field("Gid:") == ids,
        &format!("PID 1 does not run as {uid}:{uid}:\n{status}"),
    );
    if backend.privileges() == Privileges::Unprivileged {
        check(
            run,
            field("CapEff:") == "0000000000000000"
                && field("CapPrm:") == "0000000000000000"
                && field("NoNewPrivs:") == "1",
            &format!("PID 1 has capabilities or may gain privileges:\n{status}"),
        );
    }
}

/// As root, the control socket answers `status` from inside with a row per
/// daemon. Unprivileged on a root it cannot write (no `--tmpfs /run`):
/// one warning line naming both places tried, supervision goes on, and
/// the client says that no supervisor answers (exit 3).
fn check_control_socket(backend: &dyn Backend, run: &mut dyn Running, daemons: &[&str]) {
    let me = backend.privileges().uid();
    let out = client(run, me, &["status"]);
    match backend.privileges() {
        Privileges::Root => {
            check(run, out.ok(), &format!("status failed:\n{out}"));
            for name in daemons {
                check(
                    run,
                    !status_row(&out.stdout, name).is_empty(),
                    &format!("status has no row for {name}:\n{out}"),
                );
            }
        }
        Privileges::Unprivileged => {
            let log = run.log();
            let warnings: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("no control socket"))
                .collect();
            check(
                run,
                warnings.len() == 1
                    && warnings[0].contains("/run/sidecar-init.sock")
                    && warnings[0].contains("/tmp/sidecar-init.sock"),
                &format!("not one warning naming both socket paths: {warnings:?}"),
            );
            check(
                run,
                out.code() == Some(3) && out.stderr.contains("no supervisor answers"),
                &format!("status without a control socket:\n{out}"),
            );
        }
    }
}

/// Whether `first` appears as a whole line before the line `then`.
fn before(log: &str, first: &str, then: &str) -> bool {
    let at = |line: &str| log.lines().position(|l| l == line);
    matches!((at(first), at(then)), (Some(a), Some(b)) if a < b)
}

/// Waits until no zombie has PID 1 as its parent and the orphans are gone,
/// while the control zombie (a daemon's unreaped child) is visible: the
/// process table really shows zombies. PIDs are those of PID 1's namespace.
fn no_zombies_of_pid1(run: &mut dyn Running, control: u32, orphans: &[u32]) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let table = run.processes();
        let zombies: Vec<&Proc> = table
            .iter()
            .filter(|p| p.state == 'Z' && p.ppid == 1)
            .collect();
        let left: Vec<&Proc> = table.iter().filter(|p| orphans.contains(&p.pid)).collect();
        let seen = table
            .iter()
            .any(|p| p.pid == control && p.state == 'Z' && p.ppid != 1);
        let engine_zombies = run.engine_zombies();
        if zombies.is_empty() && left.is_empty() && seen && engine_zombies.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            let mut why = String::new();
            if !zombies.is_empty() {
                let _ = write!(why, "zombies of PID 1: {zombies:?}; ");
            }
            if !left.is_empty() {
                let _ = write!(why, "orphans still there: {left:?}; ");
            }
            if !seen {
                let _ = write!(why, "the control zombie {control} is not seen as one; ");
            }
            if !engine_zombies.is_empty() {
                let _ = write!(
                    why,
                    "the engine shows zombies of PID 1: {engine_zombies:?}; "
                );
            }
            let table: Vec<String> = table.iter().map(|p| format!("{p:?}")).collect();
            fail(run, &format!("{why}\nprocesses:\n{}", table.join("\n")));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// The tests: every scenario on every backend and mode where it makes sense.
// ---------------------------------------------------------------------------

/// A module of tests, one per scenario function, each run on the backend
/// that `$backend` makes (None: skipped).
macro_rules! scenarios {
    ($module:ident, $backend:expr, [$($scenario:ident),* $(,)?]) => {
        mod $module {
            use super::*;
            $(
                #[test]
                fn $scenario() {
                    if let Some(backend) = $backend {
                        super::$scenario(&backend);
                    }
                }
            )*
        }
    };
}

scenarios!(
    unshare_chroot,
    Chroot::get(Privileges::Root),
    [
        lifecycle,
        grace_kill,
        bad_procfile,
        selection,
        main_exit_codes,
        main_signals,
        main_stop,
        main_after_sidecars,
        control,
    ]
);

scenarios!(
    unshare_chroot_unprivileged,
    Chroot::get(Privileges::Unprivileged),
    [
        lifecycle,
        grace_kill,
        bad_procfile,
        selection,
        main_exit_codes,
        main_signals,
        main_stop,
        main_after_sidecars,
        control,
    ]
);

scenarios!(
    docker,
    Docker::get(Privileges::Root),
    [
        lifecycle,
        grace_kill,
        bad_procfile,
        selection,
        main_exit_codes,
        main_signals,
        main_stop,
        main_after_sidecars,
        main_tty,
        control,
        compose_service_healthy,
    ]
);

scenarios!(
    docker_unprivileged,
    Docker::get(Privileges::Unprivileged),
    [
        lifecycle,
        grace_kill,
        bad_procfile,
        selection,
        main_exit_codes,
        main_signals,
        main_stop,
        main_after_sidecars,
        main_tty,
        control,
    ]
);

/// The binary the tests put in containers is static: no program
/// interpreter, checked here independently of scripts/build-static.
#[test]
fn static_binary_is_static() {
    let Some(bin) = need(Need::Static, static_binary()) else {
        return;
    };
    match elf_interpreter(&bin) {
        Ok(None) => {}
        Ok(Some(interp)) => panic!("{} asks for the interpreter {interp}", bin.display()),
        Err(e) => panic!("{}: {e}", bin.display()),
    }
    // The project's goal: one static binary under 1 MiB.
    let size = fs::metadata(&bin).expect("stat the binary").len();
    assert!(
        size < 1024 * 1024,
        "{} is {size} bytes, over 1 MiB (see the size notes in Cargo.toml)",
        bin.display()
    );
}

// ---------------------------------------------------------------------------
// Backends.
// ---------------------------------------------------------------------------

/// Where PID 1 runs.
trait Backend {
    /// Who PID 1 runs as.
    fn privileges(&self) -> Privileges;
    /// Starts PID 1 on `s` and returns once it runs.
    fn start(&self, s: &Scenario) -> Box<dyn Running>;
    /// Runs PID 1 on `s` to its end, once for each main program of
    /// `mains` (which replaces `s.main`), in one root filesystem or image.
    fn run_each(&self, s: &Scenario, mains: &[&[&str]]) -> Vec<Finished>;
    /// Runs PID 1 on `s` to its end.
    fn run(&self, s: &Scenario) -> Finished {
        let mut runs = self.run_each(s, &[s.main]);
        runs.pop().expect("one run")
    }
}

/// A running PID 1.
trait Running {
    /// What PID 1 wrote so far (its stdout).
    fn log(&self) -> String;
    /// Waits until `pred` holds for the log.
    fn wait_log(&self, timeout: Duration, pred: &dyn Fn(&str) -> bool) -> Result<String, String>;
    /// Sends `sig` to PID 1 from outside.
    fn signal(&mut self, sig: Signal);
    /// Stops PID 1 the way its environment does (SIGTERM, then the engine's
    /// own timeout) and waits: the exit code and how long it took.
    fn stop(&mut self) -> (i32, Duration);
    /// The processes in PID 1's namespace (with that namespace's PIDs).
    fn processes(&mut self) -> Vec<Proc>;
    /// Zombies whose parent is PID 1 as the engine's own tools show them
    /// (`docker top`). Only a cross-check: under cgroup v1 a zombie has
    /// left its cgroup and `docker top` does not list it at all, which is
    /// why `processes` reads /proc.
    fn engine_zombies(&mut self) -> Vec<String>;
    /// Runs `argv` in PID 1's root filesystem as `uid` (and gid `uid`),
    /// the way `docker exec --user` does.
    fn exec(&mut self, uid: u32, argv: &[&str]) -> Output;
    /// PID 1's /proc/1/status.
    fn pid1_status(&mut self) -> String;
    /// The engine's health of the container (its HEALTHCHECK), None where
    /// there is no engine or no health check.
    fn engine_health(&mut self) -> Option<Health>;
    /// Everything worth showing when a check fails.
    fn describe(&self) -> String;
}

/// A PID 1 that ran to its end.
struct Finished {
    code: i32,
    log: String,
    /// From start to exit.
    took: Duration,
    context: String,
}

impl Finished {
    fn check(&self, ok: bool, what: &str) {
        assert!(ok, "{what}\n{}", self.context);
    }
}

/// The engine's `.State.Health` of a container.
#[derive(Debug)]
struct Health {
    /// starting, healthy or unhealthy.
    status: String,
    /// The last checks (the engine keeps five), oldest first.
    checks: Vec<HealthCheck>,
}

#[derive(Debug)]
#[allow(dead_code)] // output is for failure messages
struct HealthCheck {
    code: i64,
    /// When the check ended, in nanoseconds since the epoch.
    end: i128,
    output: String,
}

impl Health {
    /// From `docker inspect --format '{{json .State.Health}}'`; None for
    /// `null` (no health check).
    fn parse(json: &Json) -> Result<Option<Health>, String> {
        if *json == Json::Null {
            return Ok(None);
        }
        let status = json
            .get("Status")
            .and_then(Json::str)
            .ok_or("no Status")?
            .to_string();
        let mut checks = Vec::new();
        if let Some(Json::Arr(log)) = json.get("Log") {
            for entry in log {
                let code = match entry.get("ExitCode") {
                    Some(Json::Num(n)) => *n as i64,
                    _ => return Err("a check without ExitCode".into()),
                };
                let end = entry
                    .get("End")
                    .and_then(Json::str)
                    .and_then(parse_time)
                    .ok_or("a check without a readable End")?;
                let output = entry.get("Output").and_then(Json::str).unwrap_or_default();
                checks.push(HealthCheck {
                    code,
                    end,
                    output: output.to_string(),
                });
            }
        }
        Ok(Some(Health { status, checks }))
    }
}

// --- unshare + chroot ------------------------------------------------------

struct Chroot {
    binary: PathBuf,
    busybox: PathBuf,
    /// The host's `chroot`: the daemons' environment (PATH=/bin) cannot find it.
    chroot: PathBuf,
    /// The host's `setpriv`, for the unprivileged mode.
    setpriv: Option<PathBuf>,
    /// Extra `unshare` options (user namespace when not root).
    unshare_opts: Vec<&'static str>,
    privileges: Privileges,
}

impl Chroot {
    fn get(privileges: Privileges) -> Option<Chroot> {
        let binary = need(Need::Static, static_binary())?;
        let busybox = need(Need::Busybox, busybox())?;
        let unshare_opts = need(Need::Unshare, unshare_options())?;
        let chroot = need(Need::Unshare, host_program("chroot"))?;
        let setpriv = match privileges {
            Privileges::Root => None,
            Privileges::Unprivileged => {
                if !unshare_opts.is_empty() {
                    let why = "the unprivileged mode needs root: uid 65534 has no mapping in \
                               the user namespace of `unshare --map-root-user`";
                    need::<()>(Need::Unshare, Err(why.into()))?;
                }
                Some(need(Need::Unshare, host_program("setpriv"))?)
            }
        };
        Some(Chroot {
            binary,
            busybox,
            chroot,
            setpriv,
            unshare_opts,
            privileges,
        })
    }

    /// A root directory holding only the binary, busybox and the scenario,
    /// plus what an engine always provides and busybox needs: /proc (mounted
    /// by unshare) and /dev/null (busybox sh opens it for every `&` job);
    /// and an empty /run, root's, or PID 1's with `writable_run`.
    fn root(&self, s: &Scenario) -> TempDir {
        let dir = TempDir::new(s.name);
        populate(dir.path(), &self.busybox, s);
        copy_executable(&self.binary, &dir.path().join("sidecar-init"));
        fs::create_dir(dir.path().join("proc")).expect("mkdir proc");
        fs::create_dir(dir.path().join("dev")).expect("mkdir dev");
        dev_null(&dir.path().join("dev/null"));
        let run = dir.path().join("run");
        fs::create_dir(&run).expect("mkdir run");
        if s.writable_run && self.privileges == Privileges::Unprivileged {
            std::os::unix::fs::chown(&run, Some(NOBODY), Some(NOBODY)).expect("chown run");
        }
        dir
    }

    fn command(&self, root: &Path, s: &Scenario, main: &[&str]) -> Command {
        let mut cmd = match &self.setpriv {
            Some(setpriv) => {
                let mut cmd = Command::new(setpriv);
                cmd.args(["--no-new-privs", "unshare"]);
                cmd
            }
            None => Command::new("unshare"),
        };
        cmd.args(&self.unshare_opts)
            .args(["--pid", "--fork", "--kill-child"])
            .arg(format!("--mount-proc={}", root.join("proc").display()))
            .arg(&self.chroot);
        if self.privileges == Privileges::Unprivileged {
            cmd.arg(format!("--userspec={NOBODY}:{NOBODY}"));
        }
        cmd.arg(root).arg("/sidecar-init").args(s.args);
        if !main.is_empty() {
            cmd.arg("--").args(main);
        }
        cmd.env_clear()
            .env("PATH", "/bin")
            .envs(s.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if s.procfile.is_some() {
            cmd.env("SIDECAR_INIT_PROCFILE", "/Procfile");
        }
        cmd
    }

    fn spawn(&self, root: Arc<TempDir>, s: &Scenario, main: &[&str]) -> ChrootRun {
        assert!(!s.tty, "{}: the chroot backend has no terminal", s.name);
        let mut child = spawn(&mut self.command(root.path(), s, main)).expect("spawn unshare");
        let out = Captured::new(child.stdout.take().expect("stdout"));
        let err = Captured::new(child.stderr.take().expect("stderr"));
        ChrootRun {
            child,
            pid1: None,
            exited: None,
            out,
            err,
            chroot: self.chroot.clone(),
            privileges: self.privileges,
            root,
        }
    }
}

impl Backend for Chroot {
    fn privileges(&self) -> Privileges {
        self.privileges
    }

    fn start(&self, s: &Scenario) -> Box<dyn Running> {
        let root = Arc::new(self.root(s));
        let mut run = self.spawn(root, s, s.main);
        run.pid1 = Some(run.find_pid1());
        Box::new(run)
    }

    fn run_each(&self, s: &Scenario, mains: &[&[&str]]) -> Vec<Finished> {
        let root = Arc::new(self.root(s));
        in_parallel(mains, |main| {
            let started = Instant::now();
            let mut run = self.spawn(root.clone(), s, main);
            run.exited = wait_child(&mut run.child, EXIT);
            let took = started.elapsed();
            let Some(status) = run.exited else {
                fail(&run, &format!("PID 1 did not exit within {EXIT:?}"));
            };
            run.out.wait_closed(WAIT);
            run.err.wait_closed(WAIT);
            Finished {
                code: exit_code(status),
                log: run.out.text(),
                took,
                context: run.describe(),
            }
        })
    }
}

struct ChrootRun {
    /// The `unshare` process (or `setpriv`, which becomes it); sidecar-init
    /// is its child.
    child: Child,
    /// sidecar-init's PID as seen from here.
    pid1: Option<i32>,
    exited: Option<ExitStatus>,
    out: Captured,
    err: Captured,
    chroot: PathBuf,
    privileges: Privileges,
    root: Arc<TempDir>,
}

impl ChrootRun {
    /// The child of `unshare` once it has become sidecar-init.
    fn find_pid1(&mut self) -> i32 {
        let unshare = self.child.id();
        let children = format!("/proc/{unshare}/task/{unshare}/children");
        let deadline = Instant::now() + WAIT;
        loop {
            let text = fs::read_to_string(&children).unwrap_or_default();
            if let Some(pid) = text.split_whitespace().next().and_then(|p| p.parse().ok()) {
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "sidecar-init" {
                    return pid;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
                fail(self, &format!("unshare exited early: {status:?}"));
            }
            if Instant::now() >= deadline {
                fail(self, "sidecar-init did not start under unshare");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Running for ChrootRun {
    fn log(&self) -> String {
        self.out.text()
    }

    fn wait_log(&self, timeout: Duration, pred: &dyn Fn(&str) -> bool) -> Result<String, String> {
        self.out.wait_for(timeout, pred)
    }

    fn signal(&mut self, sig: Signal) {
        let pid = self.pid1.expect("PID 1 is known");
        if let Err(e) = kill(Pid::from_raw(pid), sig) {
            fail(self, &format!("kill({pid}, {sig}): {e}"));
        }
    }

    fn stop(&mut self) -> (i32, Duration) {
        let started = Instant::now();
        self.signal(Signal::SIGTERM);
        let status = wait_child(&mut self.child, EXIT);
        let took = started.elapsed();
        let Some(status) = status else {
            fail(self, &format!("no exit within {EXIT:?} of SIGTERM"));
        };
        self.exited = Some(status);
        self.out.wait_closed(WAIT);
        (exit_code(status), took)
    }

    fn processes(&mut self) -> Vec<Proc> {
        let pid1 = self.pid1.expect("PID 1 is known");
        namespace_processes(pid1)
    }

    fn engine_zombies(&mut self) -> Vec<String> {
        Vec::new()
    }

    /// `chroot [--userspec=UID:UID] ROOT ARGV`: in PID 1's root, though not
    /// in its PID namespace (enough for the client, which needs the socket).
    fn exec(&mut self, uid: u32, argv: &[&str]) -> Output {
        let mut cmd = Command::new(&self.chroot);
        if uid != 0 {
            cmd.arg(format!("--userspec={uid}:{uid}"));
        }
        cmd.arg(self.root.path())
            .args(argv)
            .env_clear()
            .env("PATH", "/bin");
        run_command(cmd, DOCKER_CMD)
    }

    fn pid1_status(&mut self) -> String {
        let pid1 = self.pid1.expect("PID 1 is known");
        fs::read_to_string(format!("/proc/{pid1}/status")).unwrap_or_default()
    }

    fn engine_health(&mut self) -> Option<Health> {
        None
    }

    fn describe(&self) -> String {
        format!(
            "[unshare+chroot, {:?}] PID 1 is host pid {:?}, exit status {:?}\n\
             --- PID 1's stdout ---\n{}\n--- stderr ---\n{}",
            self.privileges,
            self.pid1,
            self.exited,
            self.out.text(),
            self.err.text()
        )
    }
}

impl Drop for ChrootRun {
    fn drop(&mut self) {
        if self.exited.is_none() {
            // Killing PID 1 kills its whole namespace.
            if let Some(pid) = self.pid1 {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The processes of `pid1`'s PID namespace, read from the host's /proc and
/// translated to that namespace's PIDs (NSpid).
fn namespace_processes(pid1: i32) -> Vec<Proc> {
    let Ok(ns) = fs::read_link(format!("/proc/{pid1}/ns/pid")) else {
        return Vec::new();
    };
    // (host pid, host ppid, namespace pid, state, comm)
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let name = entry.file_name();
        let Some(host) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if fs::read_link(entry.path().join("ns/pid")).ok().as_ref() != Some(&ns) {
            continue;
        }
        let (Ok(stat), Ok(status)) = (
            fs::read_to_string(entry.path().join("stat")),
            fs::read_to_string(entry.path().join("status")),
        ) else {
            continue; // gone meanwhile
        };
        let Some(p) = parse_stat(&stat) else { continue };
        let nspid = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(nspid) = nspid {
            found.push((host, p.ppid, nspid, p.state, p.comm));
        }
    }
    let to_ns: HashMap<u32, u32> = found.iter().map(|f| (f.0, f.2)).collect();
    found
        .into_iter()
        .map(|(_, ppid, pid, state, comm)| Proc {
            pid,
            ppid: to_ns.get(&ppid).copied().unwrap_or(0),
            state,
            comm,
        })
        .collect()
}

// --- Docker ----------------------------------------------------------------

struct Docker {
    binary: PathBuf,
    busybox: PathBuf,
    privileges: Privileges,
}

impl Docker {
    fn get(privileges: Privileges) -> Option<Docker> {
        let binary = need(Need::Static, static_binary())?;
        let busybox = need(Need::Busybox, busybox())?;
        need(Need::Docker, docker_available())?;
        Some(Docker {
            binary,
            busybox,
            privileges,
        })
    }

    /// The image all scenarios' images build on, made once per test
    /// process and removed at its exit: docker/prebuilt.Dockerfile around
    /// the binary, then an empty /run. (A scratch image has no /run, nor
    /// /tmp, so no control socket; WORKDIR makes the directory: the
    /// README's recipe.)
    fn base(&self) -> String {
        static BASE: OnceLock<String> = OnceLock::new();
        BASE.get_or_init(|| {
            let id = unique("base");
            let ctx = TempDir::new("base");
            copy_executable(&self.binary, &ctx.path().join("sidecar-init"));
            let prebuilt = format!("{id}-prebuilt:test");
            let dockerfile =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/prebuilt.Dockerfile");
            remove_at_exit(&prebuilt);
            docker_build(&dockerfile, ctx.path(), &prebuilt);
            let base = format!("{id}:test");
            let dockerfile = ctx.path().join("Dockerfile.run");
            fs::write(
                &dockerfile,
                format!("FROM {prebuilt}\nWORKDIR /run\nWORKDIR /\n"),
            )
            .expect("write Dockerfile");
            remove_at_exit(&base);
            docker_build(&dockerfile, ctx.path(), &base);
            base
        })
        .clone()
    }

    /// Builds the scenario's image: busybox and the scenario's files on top
    /// of [`Docker::base`], and with a main program the tini-style
    /// entrypoint.
    fn image(&self, s: &Scenario) -> Images {
        let base = self.base();
        let ctx = TempDir::new(s.name);
        populate(&ctx.path().join("rootfs"), &self.busybox, s);
        let mut text = format!("FROM {base}\nCOPY rootfs/ /\n");
        if s.procfile.is_some() {
            text.push_str("ENV SIDECAR_INIT_PROCFILE=/Procfile\n");
        }
        if !s.main.is_empty() {
            let entrypoint: Vec<&str> = std::iter::once("/sidecar-init")
                .chain(s.args.iter().copied())
                .chain(std::iter::once("--"))
                .collect();
            let _ = writeln!(text, "ENTRYPOINT {}", json_list(&entrypoint));
        }
        if s.healthcheck {
            // The start period: failing checks while the daemons get ready
            // leave the container `starting` instead of `unhealthy`.
            text.push_str(
                "HEALTHCHECK --interval=1s --timeout=2s --start-period=60s --retries=1 \
                 CMD [\"/sidecar-init\", \"health\"]\n",
            );
        }
        let dockerfile = ctx.path().join("Dockerfile");
        fs::write(&dockerfile, text).expect("write Dockerfile");
        let image = format!("{}:test", unique(s.name));
        let images = Images(vec![image.clone()]);
        docker_build(&dockerfile, ctx.path(), &image);
        images
    }

    /// `docker run` arguments up to and including the command.
    fn run_args(&self, name: &str, image: &str, s: &Scenario, main: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = ["--name", name, "--label", LABEL]
            .iter()
            .map(|a| a.to_string())
            .collect();
        if s.tty {
            args.push("-t".into());
        }
        if self.privileges == Privileges::Unprivileged {
            args.extend(
                [
                    "--user",
                    "65534:65534", // NOBODY
                    "--read-only",
                    "--cap-drop",
                    "ALL",
                    "--security-opt",
                    "no-new-privileges",
                ]
                .map(String::from),
            );
            if s.writable_run {
                args.push("--tmpfs".into());
                args.push(format!("/run:uid={NOBODY},gid={NOBODY},mode=0755"));
            }
        }
        for (k, v) in s.env {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        args.push(image.into());
        if s.main.is_empty() {
            args.extend(s.args.iter().map(|a| a.to_string()));
        } else {
            args.extend(main.iter().map(|a| a.to_string()));
        }
        args
    }
}

impl Backend for Docker {
    fn privileges(&self) -> Privileges {
        self.privileges
    }

    fn start(&self, s: &Scenario) -> Box<dyn Running> {
        let images = self.image(s);
        let name = unique(s.name);
        let container = Container(name.clone());
        let mut args = vec!["run".to_string(), "-d".into()];
        args.extend(self.run_args(&name, images.last(), s, s.main));
        let out = docker(&args, DOCKER_CMD);
        if !out.ok() {
            panic!("docker run failed: {out}");
        }
        let mut logs = spawn(
            Command::new("docker")
                .args(["logs", "--follow", &name])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
        .expect("spawn docker logs");
        let log = Captured::new(logs.stdout.take().expect("stdout"));
        let log_err = Captured::new(logs.stderr.take().expect("stderr"));
        Box::new(DockerRun {
            name,
            main: !s.main.is_empty(),
            privileges: self.privileges,
            logs,
            log,
            log_err,
            exit: None,
            _container: container,
            _images: images,
        })
    }

    fn run_each(&self, s: &Scenario, mains: &[&[&str]]) -> Vec<Finished> {
        let images = self.image(s);
        in_parallel(mains, |main| {
            let name = unique(s.name);
            let _container = Container(name.clone());
            let mut args = vec!["run".to_string()];
            args.extend(self.run_args(&name, images.last(), s, main));
            let started = Instant::now();
            let run = docker(&args, EXIT);
            let took = started.elapsed();
            if run.status.is_none() {
                let logs = docker(&["logs", &name], DOCKER_CMD);
                panic!(
                    "docker run did not finish within {EXIT:?}\n{run}\n--- docker logs ---\n{logs}"
                );
            }
            let waited = docker(&["wait", &name], DOCKER_CMD);
            let inspected = docker(
                &["inspect", "--format", "{{.State.ExitCode}}", &name],
                DOCKER_CMD,
            );
            let logs = docker(&["logs", &name], DOCKER_CMD);
            let context = format!(
                "[docker, {:?}] container {name}\n--- docker run ---\n{run}\n\
                 --- docker wait ---\n{waited}\n--- docker inspect ---\n{inspected}\n\
                 --- docker logs ---\n{logs}",
                self.privileges
            );
            let code = run.status.map(exit_code).expect("checked");
            let from_wait = waited.stdout.trim().parse::<i32>().ok();
            let from_inspect = inspected.stdout.trim().parse::<i32>().ok();
            assert!(
                from_wait == Some(code) && from_inspect == Some(code),
                "docker run, wait and inspect disagree on the exit code\n{context}"
            );
            assert!(
                stderr_ok(&logs.stderr, !s.main.is_empty()),
                "PID 1 wrote to stderr\n{context}"
            );
            Finished {
                code,
                log: logs.stdout,
                took,
                context,
            }
        })
    }
}

struct DockerRun {
    name: String,
    /// Whether a main program runs (its stderr is the container's).
    main: bool,
    privileges: Privileges,
    /// `docker logs --follow`: its stdout is PID 1's stdout.
    logs: Child,
    log: Captured,
    log_err: Captured,
    exit: Option<i32>,
    // Dropped in this order: the container, then its images.
    _container: Container,
    _images: Images,
}

impl DockerRun {
    /// PID 1's PID on the host.
    fn host_pid(&self) -> Option<u32> {
        let out = docker(
            &["inspect", "--format", "{{.State.Pid}}", &self.name],
            DOCKER_CMD,
        );
        out.stdout.trim().parse().ok().filter(|&p| p != 0)
    }
}

impl Running for DockerRun {
    fn log(&self) -> String {
        self.log.text()
    }

    fn wait_log(&self, timeout: Duration, pred: &dyn Fn(&str) -> bool) -> Result<String, String> {
        self.log.wait_for(timeout, pred)
    }

    fn signal(&mut self, sig: Signal) {
        let out = docker(&["kill", "--signal", sig.as_str(), &self.name], DOCKER_CMD);
        if !out.ok() {
            fail(self, &format!("docker kill -s {sig} failed: {out}"));
        }
    }

    fn stop(&mut self) -> (i32, Duration) {
        let started = Instant::now();
        let timeout = ENGINE_STOP_SECS.to_string();
        let out = docker(
            &["stop", "--time", &timeout, &self.name],
            Duration::from_secs(ENGINE_STOP_SECS) + DOCKER_CMD,
        );
        let took = started.elapsed();
        if !out.ok() {
            fail(self, &format!("docker stop failed: {out}"));
        }
        let waited = docker(&["wait", &self.name], DOCKER_CMD);
        let inspected = docker(
            &["inspect", "--format", "{{.State.ExitCode}}", &self.name],
            DOCKER_CMD,
        );
        let from_wait = waited.stdout.trim().parse::<i32>().ok();
        let from_inspect = inspected.stdout.trim().parse::<i32>().ok();
        if from_wait.is_none() || from_wait != from_inspect {
            fail(
                self,
                &format!("docker wait and inspect disagree:\n{waited}\n{inspected}"),
            );
        }
        self.exit = from_wait;
        // The followed log ends with the container; it must be complete.
        if !self.log.wait_closed(WAIT) {
            fail(self, "docker logs --follow did not end with the container");
        }
        let full = docker(&["logs", &self.name], DOCKER_CMD);
        if full.stdout != self.log.text() {
            fail(
                self,
                &format!("docker logs differs from the followed log:\n{full}"),
            );
        }
        if !stderr_ok(&full.stderr, self.main) {
            fail(self, &format!("PID 1 wrote to stderr:\n{full}"));
        }
        (from_wait.expect("checked"), took)
    }

    fn processes(&mut self) -> Vec<Proc> {
        // The container's own /proc, read by its busybox.
        let out = docker(
            &[
                "exec",
                &self.name,
                "sh",
                "-c",
                "cat /proc/[0-9]*/stat 2>/dev/null; true",
            ],
            DOCKER_CMD,
        );
        if !out.ok() {
            fail(self, &format!("docker exec failed: {out}"));
        }
        out.stdout.lines().filter_map(parse_stat).collect()
    }

    fn engine_zombies(&mut self) -> Vec<String> {
        let Some(pid1) = self.host_pid() else {
            return Vec::new();
        };
        let out = docker(&["top", &self.name, "-o", "pid,ppid,stat,comm"], DOCKER_CMD);
        if !out.ok() {
            fail(self, &format!("docker top failed: {out}"));
        }
        let mut lines = out.stdout.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (Some(ppid), Some(stat)) = (col("PPID"), col("STAT")) else {
            fail(self, &format!("unexpected docker top output: {out}"));
        };
        lines
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(stat).is_some_and(|s| s.contains('Z'))
                    && f.get(ppid) == Some(&pid1.to_string().as_str())
            })
            .map(str::to_string)
            .collect()
    }

    fn exec(&mut self, uid: u32, argv: &[&str]) -> Output {
        let user = format!("{uid}:{uid}");
        let mut args = vec!["exec", "--user", &user, &self.name];
        args.extend(argv);
        docker(&args, DOCKER_CMD)
    }

    fn pid1_status(&mut self) -> String {
        let out = docker(&["exec", &self.name, "cat", "/proc/1/status"], DOCKER_CMD);
        if !out.ok() {
            fail(self, &format!("cannot read /proc/1/status: {out}"));
        }
        out.stdout
    }

    fn engine_health(&mut self) -> Option<Health> {
        let out = docker(
            &["inspect", "--format", "{{json .State.Health}}", &self.name],
            DOCKER_CMD,
        );
        let parsed = parse_json(out.stdout.trim()).and_then(|j| Health::parse(&j));
        match parsed {
            Ok(health) if out.ok() => health,
            Ok(_) => fail(self, &format!("docker inspect failed: {out}")),
            Err(e) => fail(self, &format!("unreadable .State.Health ({e}): {out}")),
        }
    }

    fn describe(&self) -> String {
        format!(
            "[docker, {:?}] container {}, exit code {:?}\n--- docker logs ---\n{}\n\
             --- docker logs (stderr) ---\n{}",
            self.privileges,
            self.name,
            self.exit,
            self.log.text(),
            self.log_err.text()
        )
    }
}

/// The container's stderr has nothing of sidecar-init's: daemons write
/// through it (their pipes go to its stdout) and it writes to stdout only;
/// a main program's stderr is the container's.
fn stderr_ok(stderr: &str, main: bool) -> bool {
    if main {
        !stderr.lines().any(|l| l.starts_with("sidecar-init"))
    } else {
        stderr.trim().is_empty()
    }
}

impl Drop for DockerRun {
    fn drop(&mut self) {
        let _ = self.logs.kill();
        let _ = self.logs.wait();
    }
}

/// Removes the container when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "--force", "--volumes", &self.0], DOCKER_CMD);
    }
}

/// Removes the images (newest first) when dropped.
struct Images(Vec<String>);

impl Images {
    fn last(&self) -> &str {
        self.0.last().expect("an image")
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        for image in self.0.iter().rev() {
            let _ = docker(&["rmi", "--force", image], DOCKER_CMD);
        }
    }
}

/// Images removed when the test process exits.
static AT_EXIT: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Removes `image` when the test process exits (the harness returns from
/// `main` or calls `exit`; a killed run leaves it, labelled, to .ci/run).
fn remove_at_exit(image: &str) {
    extern "C" fn remove() {
        let images = std::mem::take(&mut *AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()));
        for image in images.iter().rev() {
            let _ = docker(&["rmi", "--force", image], DOCKER_CMD);
        }
    }
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        // SAFETY: `remove` is a plain function that neither unwinds (it
        // ignores every error) nor needs anything atexit has torn down.
        let registered = unsafe { nix::libc::atexit(remove) };
        assert_eq!(registered, 0, "atexit failed");
    });
    AT_EXIT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(image.to_string());
}

fn docker_build(dockerfile: &Path, context: &Path, tag: &str) {
    let dockerfile = dockerfile.to_str().expect("UTF-8 path");
    let context = context.to_str().expect("UTF-8 path");
    let args = [
        "build",
        "--quiet",
        "--force-rm",
        // Nothing shared between tests (the same scenario is built by two
        // modes at once): removing one test's images must not remove a
        // cached layer another build is using.
        "--no-cache",
        "--label",
        LABEL,
        "--file",
        dockerfile,
        "--tag",
        tag,
        context,
    ];
    let out = docker(&args, BUILD);
    assert!(out.ok(), "docker build of {tag} failed: {out}");
}

// --- docker-compose --------------------------------------------------------

/// compose's `depends_on: condition: service_healthy` with
/// `sidecar-init health` as the first service's healthcheck: the second
/// service (sidecar-init as a tini, its main program checking the first's
/// marker on a shared volume) is not started before the engine calls the
/// first healthy, which it does only once the first's daemon is ready, two
/// seconds in, after failed checks.
fn compose_service_healthy(engine: &Docker) {
    let Some(()) = need(Need::Compose, compose_available()) else {
        return;
    };
    let first_images = engine.image(&COMPOSE_FIRST);
    let second_images = engine.image(&COMPOSE_SECOND);
    let project = ComposeProject::new(first_images.last(), second_images.last());

    let mut up = project.spawn(&["up", "-d", "--no-build"]);
    let up_out = Captured::new(up.stdout.take().expect("stdout"));
    let up_err = Captured::new(up.stderr.take().expect("stderr"));
    let failed = |what: &str| -> ! {
        panic!(
            "{what}\n--- docker-compose up ---\n{}{}\n{}",
            up_out.text(),
            up_err.text(),
            project.describe()
        )
    };

    // While compose waits for the first service, the second must not start.
    let deadline = Instant::now() + COMPOSE_CMD;
    let mut failed_checks = 0;
    let healthy_at = loop {
        // The second's state first: if it had started before the first's
        // state is read, the first must have been healthy by then.
        let second_started = project
            .state("second")
            .and_then(|s| s.get("StartedAt").and_then(Json::str).and_then(parse_time))
            .is_some_and(|t| t > 0);
        let first = project.state("first");
        let health = first
            .as_ref()
            .and_then(|s| s.get("Health"))
            .map(Health::parse)
            .transpose()
            .unwrap_or_else(|e| failed(&format!("unreadable health: {e}")))
            .flatten();
        if second_started && health.as_ref().is_none_or(|h| h.status != "healthy") {
            failed(&format!(
                "the second service started while the first was not healthy: {first:?}"
            ));
        }
        if let Some(health) = health {
            failed_checks = failed_checks.max(health.checks.iter().filter(|c| c.code == 1).count());
            if health.status == "healthy" {
                // The check that made it healthy: the first to pass after
                // the last failure (polled often, the engine still keeps it).
                let after = health.checks.iter().rposition(|c| c.code != 0);
                let from = after.map_or(0, |i| i + 1);
                let Some(passed) = health.checks.get(from) else {
                    failed(&format!("healthy without a passed check: {health:?}"));
                };
                break passed.end;
            }
            if health.status == "unhealthy" {
                failed(&format!("the first service is unhealthy: {health:?}"));
            }
        }
        if let Ok(Some(status)) = up.try_wait() {
            failed(&format!(
                "docker-compose up ended ({status}) before the first service was healthy"
            ));
        }
        if Instant::now() >= deadline {
            let _ = up.kill();
            let _ = up.wait();
            failed(&format!(
                "the first service was not healthy within {COMPOSE_CMD:?}"
            ));
        }
        thread::sleep(Duration::from_millis(100));
    };

    let status = wait_child(&mut up, COMPOSE_CMD);
    if status.is_none() {
        let _ = up.kill();
        let _ = up.wait();
    }
    up_out.wait_closed(WAIT);
    up_err.wait_closed(WAIT);
    if !status.is_some_and(|s| s.success()) {
        failed(&format!("docker-compose up failed: {status:?}"));
    }
    let second = project.container("second");
    let waited = docker(&["wait", &second], EXIT);
    if waited.stdout.trim() != "0" {
        failed(&format!("the second service did not exit 0: {waited}"));
    }
    let logs = docker(&["logs", &second], DOCKER_CMD);
    if !has_line(&logs.stdout, "second: web was ready") {
        failed(&format!(
            "the second service did not see the marker: {logs}"
        ));
    }
    let started = project
        .state("second")
        .and_then(|s| s.get("StartedAt").and_then(Json::str).and_then(parse_time));
    if started.is_none_or(|t| t < healthy_at) {
        failed(&format!(
            "the second service started at {started:?}, before the first's passing check \
             ended ({healthy_at} ns)"
        ));
    }
    if failed_checks == 0 {
        failed("no failing check was seen while the first service's daemon was not ready");
    }
}

/// A docker-compose project (a file in a temporary directory), taken down
/// with its containers, network and volume when dropped.
struct ComposeProject {
    name: String,
    dir: TempDir,
}

impl ComposeProject {
    /// Writes the project: `first` runs the Procfile image with
    /// `sidecar-init health` as its healthcheck, `second` the main-program
    /// image and depends on `first` being healthy; a volume for both.
    fn new(first_image: &str, second_image: &str) -> ComposeProject {
        let name = unique("compose");
        let dir = TempDir::new("compose");
        let label = format!("{{{}: \"\"}}", json_string(LABEL));
        let command = json_list(COMPOSE_SECOND.main);
        let file = format!(
            r#"version: "2.4"
services:
  first:
    image: {first_image}
    container_name: {name}-first
    labels: {label}
    environment:
      SIDECAR_INIT_READY: "web=file:/shared/web-ready"
    healthcheck:
      test: ["CMD", "/sidecar-init", "health"]
      interval: 1s
      timeout: 2s
      retries: 1
      start_period: 60s
    volumes: ["shared:/shared"]
  second:
    image: {second_image}
    container_name: {name}-second
    labels: {label}
    command: {command}
    depends_on:
      first:
        condition: service_healthy
    volumes: ["shared:/shared"]
volumes:
  shared:
    labels: {label}
networks:
  default:
    labels: {label}
"#,
            first_image = json_string(first_image),
            second_image = json_string(second_image),
        );
        fs::write(dir.path().join("compose.yml"), file).expect("write compose.yml");
        ComposeProject { name, dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.arg("--project-name")
            .arg(&self.name)
            .arg("--file")
            .arg(self.dir.path().join("compose.yml"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn spawn(&self, args: &[&str]) -> Child {
        spawn(&mut self.command(args)).expect("spawn docker-compose")
    }

    /// A service's container name.
    fn container(&self, service: &str) -> String {
        format!("{}-{service}", self.name)
    }

    /// A service's container's `.State`, None while it does not exist.
    fn state(&self, service: &str) -> Option<Json> {
        let out = docker(
            &[
                "inspect",
                "--format",
                "{{json .State}}",
                &self.container(service),
            ],
            DOCKER_CMD,
        );
        if !out.ok() {
            return None;
        }
        parse_json(out.stdout.trim()).ok()
    }

    fn describe(&self) -> String {
        let mut text = String::new();
        for service in ["first", "second"] {
            let name = self.container(service);
            let state = docker(
                &["inspect", "--format", "{{json .State}}", &name],
                DOCKER_CMD,
            );
            let logs = docker(&["logs", &name], DOCKER_CMD);
            let _ = write!(
                text,
                "--- {service}: docker inspect ---\n{}\n--- {service}: docker logs ---\n{}{}\n",
                state.stdout.trim(),
                logs.stdout,
                logs.stderr
            );
        }
        text
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        let cmd = self.command(&["down", "--volumes", "--remove-orphans", "--timeout", "5"]);
        let _ = run_command(cmd, COMPOSE_CMD);
    }
}

fn compose_available() -> Result<(), String> {
    static COMPOSE: OnceLock<Result<(), String>> = OnceLock::new();
    COMPOSE
        .get_or_init(|| {
            let mut cmd = Command::new("docker-compose");
            cmd.arg("version");
            let out = run_command(cmd, DOCKER_CMD);
            if out.ok() {
                Ok(())
            } else {
                Err(format!("no docker-compose: {}", out.stderr.trim()))
            }
        })
        .clone()
}
/// A finished command.
struct Output {
    what: String,
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl Output {
    fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The exit code, None if it did not exit (in time) or died of a signal.
    fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => writeln!(f, "$ {} => {s}", self.what)?,
            None => writeln!(f, "$ {} => no exit in time (killed)", self.what)?,
        }
        write!(f, "stdout:\n{}stderr:\n{}", self.stdout, self.stderr)
    }
}

/// Runs `docker args` with a deadline. Uses the legacy builder when BuildKit
/// is not installed (no buildx), so builds work on bare engines too.
fn docker(args: &[impl AsRef<str>], timeout: Duration) -> Output {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let mut cmd = Command::new("docker");
    cmd.args(&args);
    if args.first() == Some(&"build") && !buildx_available() {
        cmd.env("DOCKER_BUILDKIT", "0");
    }
    run_command(cmd, timeout)
}

/// Runs `cmd` (stdin from /dev/null) with a deadline: killed at the
/// deadline, its output all the same.
fn run_command(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = match spawn(&mut cmd) {
        Ok(c) => c,
        Err(e) => {
            return Output {
                stderr: format!("cannot run {what}: {e}"),
                what,
                status: None,
                stdout: String::new(),
            };
        }
    };
    let out = Captured::new(child.stdout.take().expect("stdout"));
    let err = Captured::new(child.stderr.take().expect("stderr"));
    let status = wait_child(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    out.wait_closed(WAIT);
    err.wait_closed(WAIT);
    Output {
        what,
        status,
        stdout: out.text(),
        stderr: err.text(),
    }
}

fn buildx_available() -> bool {
    static BUILDX: OnceLock<bool> = OnceLock::new();
    *BUILDX.get_or_init(|| {
        let out = docker(&["buildx", "version"], DOCKER_CMD);
        out.ok()
    })
}

fn docker_available() -> Result<(), String> {
    static DOCKER: OnceLock<Result<(), String>> = OnceLock::new();
    DOCKER
        .get_or_init(|| {
            let out = docker(&["info", "--format", "{{.ServerVersion}}"], DOCKER_CMD);
            if out.ok() && !out.stdout.trim().is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "no Docker engine answers `docker info`: {}",
                    out.stderr.trim()
                ))
            }
        })
        .clone()
}

// ---------------------------------------------------------------------------
// Requirements: the static binary, busybox, unshare, docker, compose.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Need {
    Static,
    Busybox,
    Unshare,
    Docker,
    Compose,
}

impl Need {
    fn name(self) -> &'static str {
        match self {
            Need::Static => "static",
            Need::Busybox => "busybox",
            Need::Unshare => "unshare",
            Need::Docker => "docker",
            Need::Compose => "compose",
        }
    }
}

/// The value, or a loud skip (a failure when SIDECAR_INIT_TEST_REQUIRE
/// lists the requirement).
fn need<T>(what: Need, got: Result<T, String>) -> Option<T> {
    match got {
        Ok(v) => Some(v),
        Err(reason) => {
            let required = std::env::var("SIDECAR_INIT_TEST_REQUIRE").unwrap_or_default();
            if required.split(',').any(|r| r.trim() == what.name()) {
                panic!(
                    "SIDECAR_INIT_TEST_REQUIRE has {}, but {reason}",
                    what.name()
                );
            }
            // Straight to fd 2: the harness captures eprintln! of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {}: {reason} (SIDECAR_INIT_TEST_REQUIRE={} makes this a failure)",
                std::thread::current().name().unwrap_or("a test"),
                what.name()
            );
            None
        }
    }
}

/// The static release binary: SIDECAR_INIT_TEST_BINARY, or built once per
/// test process by scripts/build-static (the last stdout line is its path).
fn static_binary() -> Result<PathBuf, String> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("SIDECAR_INIT_TEST_BINARY") {
                let path = PathBuf::from(path);
                return match elf_interpreter(&path) {
                    Ok(None) => Ok(path),
                    Ok(Some(i)) => Err(format!("{} is not static ({i})", path.display())),
                    Err(e) => Err(format!("SIDECAR_INIT_TEST_BINARY: {e}")),
                };
            }
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-static");
            let mut child = spawn(
                Command::new("bash")
                    .arg(&script)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped()),
            )
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            let out = Captured::new(child.stdout.take().expect("stdout"));
            let err = Captured::new(child.stderr.take().expect("stderr"));
            let status = wait_child(&mut child, BUILD);
            if status.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            out.wait_closed(WAIT);
            err.wait_closed(WAIT);
            let stdout = out.text();
            match status {
                Some(s) if s.success() => {}
                _ => {
                    return Err(format!(
                        "scripts/build-static failed ({status:?}):\n{}",
                        err.text()
                    ));
                }
            }
            let path = stdout.lines().last().unwrap_or_default().trim();
            let path = PathBuf::from(path);
            if path.is_file() {
                Ok(path)
            } else {
                Err(format!(
                    "scripts/build-static printed no binary path: {stdout:?}"
                ))
            }
        })
        .clone()
}

/// A static busybox (Debian's busybox-static).
fn busybox() -> Result<PathBuf, String> {
    let path = std::env::var_os("SIDECAR_INIT_TEST_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/bin/busybox"));
    match elf_interpreter(&path) {
        Ok(None) => Ok(path),
        Ok(Some(_)) => Err(format!(
            "{} is dynamically linked; install busybox-static",
            path.display()
        )),
        Err(e) => Err(format!("{e}; install busybox-static")),
    }
}

/// The `unshare` options that work here: none as root, a user namespace
/// mapping us to root otherwise. Probed once with a real PID namespace,
/// /proc mount and chroot.
fn unshare_options() -> Result<Vec<&'static str>, String> {
    static OPTS: OnceLock<Result<Vec<&'static str>, String>> = OnceLock::new();
    OPTS.get_or_init(|| {
        let busybox = busybox()?;
        let root = TempDir::new("probe");
        fs::create_dir_all(root.path().join("bin")).map_err(|e| e.to_string())?;
        fs::create_dir(root.path().join("proc")).map_err(|e| e.to_string())?;
        copy_executable(&busybox, &root.path().join("bin/busybox"));
        let mut errors = Vec::new();
        for opts in [vec![], vec!["--map-root-user"]] {
            let mut child = spawn(
                Command::new("unshare")
                    .args(&opts)
                    .args(["--pid", "--fork", "--kill-child"])
                    .arg(format!(
                        "--mount-proc={}",
                        root.path().join("proc").display()
                    ))
                    .arg("chroot")
                    .arg(root.path())
                    .args(["/bin/busybox", "true"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped()),
            )
            .map_err(|e| format!("cannot run unshare: {e}"))?;
            let err = Captured::new(child.stderr.take().expect("stderr"));
            let status = wait_child(&mut child, WAIT);
            if status.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            err.wait_closed(WAIT);
            if status.is_some_and(|s| s.success()) {
                return Ok(opts);
            }
            errors.push(format!(
                "unshare {opts:?}: {status:?} {}",
                err.text().trim()
            ));
        }
        Err(format!(
            "cannot make a PID namespace with a chroot: {}",
            errors.join("; ")
        ))
    })
    .clone()
}

/// Makes `path` the null device, or (where device nodes cannot be made: not
/// root) an empty file, which reads the same.
fn dev_null(path: &Path) {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let mode = Mode::from_bits_truncate(0o666);
    if mknod(path, SFlag::S_IFCHR, mode, makedev(1, 3)).is_err() {
        fs::write(path, "").expect("create dev/null");
    }
    // Writable for an unprivileged PID 1 too, whatever the umask.
    fs::set_permissions(path, fs::Permissions::from_mode(0o666)).expect("chmod dev/null");
}

/// `name`'s path in this process's PATH.
fn host_program(name: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("no {name} in PATH"))
}

/// The program interpreter an ELF file asks for (None: static). Reads the
/// program headers of a 64-bit little-endian ELF file.
fn elf_interpreter(path: &Path) -> Result<Option<String>, String> {
    let data = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if data.get(..4) != Some(b"\x7fELF") || data.get(4) != Some(&2) || data.get(5) != Some(&1) {
        return Err(format!(
            "{} is not a 64-bit little-endian ELF file",
            path.display()
        ));
    }
    let truncated = || format!("{}: truncated ELF file", path.display());
    let phoff = u64_at(0x20).ok_or_else(truncated)? as usize;
    let phentsize = u16_at(0x36).ok_or_else(truncated)? as usize;
    let phnum = u16_at(0x38).ok_or_else(truncated)? as usize;
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph).ok_or_else(truncated)? == PT_INTERP {
            let off = u64_at(ph + 8).ok_or_else(truncated)? as usize;
            let size = u64_at(ph + 32).ok_or_else(truncated)? as usize;
            let name = data.get(off..off + size).ok_or_else(truncated)?;
            let name = String::from_utf8_lossy(name)
                .trim_end_matches('\0')
                .to_string();
            return Ok(Some(name));
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

/// Held while starting a process and while writing an executable. A process
/// forked while another thread has an executable open for writing inherits
/// that descriptor until it execs, and exec'ing the file meanwhile fails
/// with ETXTBSY ("Text file busy"): tests run in parallel threads.
static FORK_LOCK: Mutex<()> = Mutex::new(());

/// Starts `cmd`; no executable is being written meanwhile. `spawn` returns
/// once the child has exec'd, so it holds no inherited descriptor after.
fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    let _guard = FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    cmd.spawn()
}

/// Copies an executable; no process is being started meanwhile.
fn copy_executable(from: &Path, to: &Path) {
    let _guard = FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = fs::copy(from, to) {
        panic!("copy {} to {}: {e}", from.display(), to.display());
    }
}

/// Busybox applets the scenarios use, as symlinks in /bin.
const APPLETS: &[&str] = &["sh", "sleep", "cat"];

/// Writes the scenario's root filesystem (without sidecar-init) into `dir`:
/// /bin/busybox and its applets, /Procfile (if any) and the scenario's
/// files.
fn populate(dir: &Path, busybox: &Path, s: &Scenario) {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).expect("mkdir bin");
    copy_executable(busybox, &bin.join("busybox"));
    fs::set_permissions(bin.join("busybox"), fs::Permissions::from_mode(0o755))
        .expect("chmod busybox");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("symlink applet");
    }
    if let Some(procfile) = s.procfile {
        fs::write(dir.join("Procfile"), procfile).expect("write Procfile");
    }
    for (name, text) in s.files {
        fs::write(dir.join(name), text).expect("write scenario file");
    }
}

/// A process as its /proc/PID/stat shows it.
#[derive(Debug)]
#[allow(dead_code)] // comm is for failure messages
struct Proc {
    pid: u32,
    ppid: u32,
    state: char,
    comm: String,
}

/// Parses `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
fn parse_stat(line: &str) -> Option<Proc> {
    let open = line.find(" (")?;
    let close = line.rfind(") ")?;
    let pid = line[..open].trim().parse().ok()?;
    let comm = line[open + 2..close].to_string();
    let mut rest = line[close + 2..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some(Proc {
        pid,
        ppid,
        state,
        comm,
    })
}

/// A child's output, read by a thread as it comes.
#[derive(Clone)]
struct Captured(Arc<Shared>);

struct Shared {
    stream: Mutex<Stream>,
    changed: Condvar,
}

#[derive(Default)]
struct Stream {
    bytes: Vec<u8>,
    ended: bool,
}

impl Captured {
    fn new(mut reader: impl Read + Send + 'static) -> Captured {
        let captured = Captured(Arc::new(Shared {
            stream: Mutex::new(Stream::default()),
            changed: Condvar::new(),
        }));
        let shared = captured.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                let n = match reader.read(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Ok(n) => n,
                    Err(_) => 0,
                };
                let mut stream = shared.lock();
                if n == 0 {
                    stream.ended = true;
                } else {
                    stream.bytes.extend_from_slice(&buf[..n]);
                }
                shared.0.changed.notify_all();
                if n == 0 {
                    return;
                }
            }
        });
        captured
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stream> {
        // A panicking test never holds the lock; tolerate poisoning anyway.
        self.0.stream.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock().bytes).into_owned()
    }

    /// Waits until `pred` holds for the text so far; the text, or why not.
    fn wait_for(&self, timeout: Duration, pred: &dyn Fn(&str) -> bool) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let mut stream = self.lock();
        loop {
            let text = String::from_utf8_lossy(&stream.bytes).into_owned();
            if pred(&text) {
                return Ok(text);
            }
            if stream.ended {
                return Err(ENDED.into());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("not within {timeout:?}"));
            }
            stream = match self.0.changed.wait_timeout(stream, deadline - now) {
                Ok((s, _)) => s,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Waits for the end of the output; whether it came in time.
    fn wait_closed(&self, timeout: Duration) -> bool {
        self.wait_for(timeout, &|_| false)
            .is_err_and(|e| e == ENDED)
    }
}

/// Why `Captured::wait_for` gave up when the output ended first.
const ENDED: &str = "the output ended";

/// `f` of each item, each in a thread of its own; a panic in one is
/// resumed here.
fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    thread::scope(|scope| {
        let f = &f;
        let threads: Vec<_> = items
            .iter()
            .map(|item| scope.spawn(move || f(item)))
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// Waits for `child` with a deadline; None if it is still running.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

/// An exit status as a shell shows it.
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

fn wait_log(
    run: &dyn Running,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&str) -> bool,
) -> String {
    match run.wait_log(timeout, &pred) {
        Ok(log) => log,
        Err(why) => fail(run, &format!("waiting for {what}: {why}")),
    }
}

fn wait_line(run: &dyn Running, line: &str, timeout: Duration) -> String {
    wait_log(run, &format!("the line {line:?}"), timeout, |log| {
        has_line(log, line)
    })
}

/// `log` without its SGR sequences (`ESC [ ... m`): the colour.
fn strip_colour(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut rest = log;
    while let Some(at) = rest.find("\x1b[") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        match after.find(|c: char| !(c.is_ascii_digit() || c == ';')) {
            Some(end) if after[end..].starts_with('m') => rest = &after[end + 1..],
            _ => {
                out.push_str("\x1b[");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn has_line(log: &str, line: &str) -> bool {
    log.lines().any(|l| l == line)
}

fn lines_starting<'a>(log: &'a str, prefix: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.starts_with(prefix)).collect()
}

fn last_line(log: &str) -> &str {
    log.lines().last().unwrap_or_default()
}

fn check(run: &dyn Running, ok: bool, what: &str) {
    if !ok {
        fail(run, what);
    }
}

fn fail(run: &dyn Running, what: &str) -> ! {
    panic!("{what}\n{}", run.describe());
}

/// A name no other test, process or earlier run uses.
fn unique(what: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "sidecar-init-test-{what}-{}-{}-{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique(what));
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// JSON and times, as `status --json` and `docker inspect` write them.
// ---------------------------------------------------------------------------

/// A JSON value.
#[derive(Clone, Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    /// Members in their order.
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// An object's member.
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Parses one JSON text (RFC 8259, strictly: nothing after the value).
fn parse_json(text: &str) -> Result<Json, String> {
    let mut p = JsonParser {
        bytes: text.as_bytes(),
        at: 0,
    };
    let value = p.value(0)?;
    p.space();
    if p.at != p.bytes.len() {
        return Err(p.error("trailing characters"));
    }
    Ok(value)
}

struct JsonParser<'a> {
    bytes: &'a [u8],
    /// The next byte to read.
    at: usize,
}

impl JsonParser<'_> {
    fn error(&self, what: &str) -> String {
        format!("{what} at byte {}", self.at)
    }

    fn space(&mut self) {
        while matches!(self.bytes.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, literal: &str) -> bool {
        let found = self.bytes[self.at..].starts_with(literal.as_bytes());
        if found {
            self.at += literal.len();
        }
        found
    }

    fn value(&mut self, depth: usize) -> Result<Json, String> {
        if depth > 64 {
            return Err(self.error("nested too deeply"));
        }
        self.space();
        match self.bytes.get(self.at) {
            Some(b'{') => {
                self.at += 1;
                let mut members = Vec::new();
                self.space();
                if self.eat("}") {
                    return Ok(Json::Obj(members));
                }
                loop {
                    self.space();
                    let key = self.string()?;
                    self.space();
                    if !self.eat(":") {
                        return Err(self.error("expected ':'"));
                    }
                    members.push((key, self.value(depth + 1)?));
                    self.space();
                    if self.eat("}") {
                        return Ok(Json::Obj(members));
                    }
                    if !self.eat(",") {
                        return Err(self.error("expected ',' or '}'"));
                    }
                }
            }
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                self.space();
                if self.eat("]") {
                    return Ok(Json::Arr(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.space();
                    if self.eat("]") {
                        return Ok(Json::Arr(items));
                    }
                    if !self.eat(",") {
                        return Err(self.error("expected ',' or ']'"));
                    }
                }
            }
            Some(b'"') => self.string().map(Json::Str),
            Some(b't') if self.eat("true") => Ok(Json::Bool(true)),
            Some(b'f') if self.eat("false") => Ok(Json::Bool(false)),
            Some(b'n') if self.eat("null") => Ok(Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.error("expected a value")),
        }
    }

    /// -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
    fn number(&mut self) -> Result<Json, String> {
        let start = self.at;
        let digits = |p: &mut Self| {
            let from = p.at;
            while p.bytes.get(p.at).is_some_and(u8::is_ascii_digit) {
                p.at += 1;
            }
            p.at - from
        };
        self.eat("-");
        if self.eat("0") {
            if self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
                return Err(self.error("a leading zero"));
            }
        } else if digits(self) == 0 {
            return Err(self.error("expected digits"));
        }
        if self.eat(".") && digits(self) == 0 {
            return Err(self.error("expected digits after '.'"));
        }
        if self.eat("e") || self.eat("E") {
            let _ = self.eat("+") || self.eat("-");
            if digits(self) == 0 {
                return Err(self.error("expected an exponent"));
            }
        }
        let text = std::str::from_utf8(&self.bytes[start..self.at]).expect("ASCII");
        text.parse()
            .map(Json::Num)
            .map_err(|e| self.error(&format!("number {text}: {e}")))
    }

    fn string(&mut self) -> Result<String, String> {
        if !self.eat("\"") {
            return Err(self.error("expected a string"));
        }
        let mut out = Vec::new();
        loop {
            let Some(&b) = self.bytes.get(self.at) else {
                return Err(self.error("unterminated string"));
            };
            self.at += 1;
            match b {
                b'"' => {
                    return String::from_utf8(out).map_err(|_| self.error("invalid UTF-8"));
                }
                0..=0x1f => return Err(self.error("a control character in a string")),
                b'\\' => {
                    let Some(&e) = self.bytes.get(self.at) else {
                        return Err(self.error("unterminated escape"));
                    };
                    self.at += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let high = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&high) {
                                if !self.eat("\\u") {
                                    return Err(self.error("a lone high surrogate"));
                                }
                                let low = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&low) {
                                    return Err(self.error("a bad low surrogate"));
                                }
                                0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00)
                            } else {
                                high
                            };
                            char::from_u32(code).ok_or_else(|| self.error("a lone surrogate"))?
                        }
                        _ => return Err(self.error("an unknown escape")),
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                _ => out.push(b),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let text = self
            .bytes
            .get(self.at..self.at + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| self.error("expected 4 hex digits"))?;
        self.at += 4;
        Ok(u32::from_str_radix(text, 16).expect("hex digits"))
    }
}

/// `s` as a JSON string (also a YAML double-quoted scalar).
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `items` as a JSON list of strings (a Dockerfile's exec form).
fn json_list(items: &[&str]) -> String {
    let items: Vec<String> = items.iter().map(|i| json_string(i)).collect();
    format!("[{}]", items.join(", "))
}

/// An RFC 3339 time as Docker writes it (`2026-12-01T09:00:00.123456789Z`,
/// or with an offset) in nanoseconds since the epoch.
fn parse_time(text: &str) -> Option<i128> {
    let num = |s: &str| -> Option<i128> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (date, rest) = text.split_once('T')?;
    let mut ymd = date.split('-');
    let (y, m, d) = (num(ymd.next()?)?, num(ymd.next()?)?, num(ymd.next()?)?);
    if ymd.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let zone_at = rest.find(['Z', '+', '-'])?;
    let (clock, zone) = rest.split_at(zone_at);
    let offset = match zone {
        "Z" => 0,
        _ => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let (h, m) = zone[1..].split_once(':')?;
            sign * (num(h)? * 3600 + num(m)? * 60)
        }
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut parts = hms.split(':');
    let (hh, mm, ss) = (
        num(parts.next()?)?,
        num(parts.next()?)?,
        num(parts.next()?)?,
    );
    if parts.next().is_some() || frac.len() > 9 {
        return None;
    }
    let nanos = if frac.is_empty() {
        0
    } else {
        num(frac)? * 10i128.pow(9 - frac.len() as u32)
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (the
    // days-from-civil computation over 400-year eras).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let seconds = days * 86400 + hh * 3600 + mm * 60 + ss - offset;
    Some(seconds * 1_000_000_000 + nanos)
}

/// The parsers above, on what they will meet.
#[test]
fn json_and_time_parsers() {
    let text = r#" [{"name":"web","pid":322,"up":1.806,"code":null,"ok":true,
        "s":"a\"b\\c\u00e9\ud83d\ude00\n"}, [], {}] "#;
    let parsed = parse_json(text).expect("valid JSON");
    let Json::Arr(items) = &parsed else {
        panic!("not an array: {parsed:?}")
    };
    assert_eq!(items.len(), 3);
    assert_eq!(items[0].get("name"), Some(&Json::Str("web".into())));
    assert_eq!(items[0].get("pid"), Some(&Json::Num(322.0)));
    assert_eq!(items[0].get("up"), Some(&Json::Num(1.806)));
    assert_eq!(items[0].get("code"), Some(&Json::Null));
    assert_eq!(items[0].get("ok"), Some(&Json::Bool(true)));
    assert_eq!(
        items[0].get("s"),
        Some(&Json::Str("a\"b\\c\u{e9}\u{1f600}\n".into()))
    );
    for bad in [
        "",
        "[",
        "[1,]",
        "{\"a\"}",
        "01",
        "1.",
        "\"\u{1}\"",
        "\"\\x\"",
        "[] []",
        "nul",
        "\"\\ud800\"",
        "-",
        "1e",
    ] {
        assert!(parse_json(bad).is_err(), "{bad:?} parsed");
    }
    assert_eq!(json_list(&["a\"b", "c\\"]), r#"["a\"b", "c\\"]"#);
    assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(parse_time("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
    assert_eq!(
        parse_time("2026-12-01T09:00:00.123456789Z"),
        Some(1_796_115_600_123_456_789)
    );
    assert_eq!(
        parse_time("2026-12-01T10:00:00.123456789+01:00"),
        parse_time("2026-12-01T09:00:00.123456789Z")
    );
    assert!(parse_time("0001-01-01T00:00:00Z").is_some_and(|t| t < 0));
    for bad in [
        "",
        "2026-12-01",
        "2026-13-01T00:00:00Z",
        "2026-12-01T00:00:00",
        "x",
    ] {
        assert_eq!(parse_time(bad), None, "{bad:?}");
    }
}
