//! sidecar-init where it lives: PID 1 of a container.
//!
//! Every scenario runs on two backends, with the static release binary (from
//! scripts/build-static) and a static busybox as the daemons' toolbox:
//!
//! - **unshare + chroot**: `unshare --pid --fork --mount-proc` makes
//!   sidecar-init PID 1 of a new PID namespace, chrooted into a directory
//!   holding only `/sidecar-init`, busybox and the scenario's files (plus
//!   the /proc and /dev/null any engine provides): proof that nothing else
//!   is needed. Needs no container engine; runs as root, or as a user where
//!   user namespaces are allowed (`unshare --map-root-user`).
//! - **Docker**: a `FROM scratch` image built with docker/prebuilt.Dockerfile
//!   around the same binary, with busybox and the scenario's files added on
//!   top, checked through the engine's own commands (`logs`, `stop`,
//!   `kill -s`, `wait`, `inspect`, `top`, `exec`).
//!
//! A backend that cannot run here (no static binary, no static busybox, no
//! usable unshare, no engine answering) is skipped with a `SKIPPED: reason`
//! line written straight to stderr (not captured by the test harness).
//! `SIDECAR_INIT_TEST_REQUIRE=static,busybox,unshare,docker` (any subset)
//! turns those skips into failures. `SIDECAR_INIT_TEST_BINARY` names a static
//! binary to use instead of running scripts/build-static, and
//! `SIDECAR_INIT_TEST_BUSYBOX` a busybox other than /bin/busybox.
//!
//! Every wait has a deadline, and every failure message carries what PID 1
//! wrote. Containers, images and directories are unique per test and removed
//! by drop guards, failures included (leftovers from a killed run carry the
//! label `sidecar-init-test`).

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

/// Daemons reaching `ready`, a line appearing, a signal being handled.
const WAIT: Duration = Duration::from_secs(20);
/// Reaping orphans, zombies disappearing.
const SETTLE: Duration = Duration::from_secs(10);
/// From SIGTERM (or start, for a run to completion) to exit.
const EXIT: Duration = Duration::from_secs(30);
/// Building the static binary from scratch on a busy machine.
const BUILD: Duration = Duration::from_secs(600);
/// A docker command other than a build or a wait.
const DOCKER_CMD: Duration = Duration::from_secs(60);
/// sidecar-init's grace period in these tests (`--grace`).
const GRACE_SECS: u64 = 1;
/// The engine's own timeout for `docker stop`: well above the grace period,
/// so a SIGKILL at the grace deadline is sidecar-init's, not the engine's.
const ENGINE_STOP_SECS: u64 = 30;
/// Label on every container and image the Docker tests create.
const LABEL: &str = "sidecar-init-test";

// ---------------------------------------------------------------------------
// The scenarios, written once for both backends.
// ---------------------------------------------------------------------------

/// What runs as PID 1: a Procfile (at /Procfile), files next to it, extra
/// arguments and environment.
struct Scenario {
    name: &'static str,
    procfile: &'static str,
    files: &'static [(&'static str, &'static str)],
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
}

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
    procfile: "talker: sh /talker.sh\norphans: sh /orphans.sh\nkeeper: sh /keeper.sh\n",
    files: &[
        ("talker.sh", TALKER),
        ("orphans.sh", ORPHANS),
        ("orphan.sh", ORPHAN),
        ("keeper.sh", KEEPER),
    ],
    args: &["--log-level", "debug"],
    env: &[],
};

const GRACE: Scenario = Scenario {
    name: "grace",
    procfile: "stubborn: sh /stubborn.sh\npolite: sh /talker.sh\n",
    files: &[("stubborn.sh", STUBBORN), ("talker.sh", TALKER)],
    args: &["--grace", "1"], // GRACE_SECS
    env: &[],
};

const BAD_PROCFILE: Scenario = Scenario {
    name: "bad-procfile",
    procfile: "good: sh -c 'echo should not run'\nbad name!: sh -c 'echo nor this'\n",
    files: &[],
    args: &[],
    env: &[],
};

const SELECTION: Scenario = Scenario {
    name: "selection",
    procfile: "a: sh -c 'echo hello from a'\n\
               b: sh -c 'echo hello from b'\n\
               c: sh -c 'echo hello from c'\n",
    files: &[],
    args: &[],
    env: &[("CLAUDE_BOTTLE_SIDECAR_DAEMONS", " c, nosuch ,a")],
};

/// Prefixed lines (stdout and stderr), orphans reaped by PID 1 with no
/// zombie left, SIGHUP forwarded, and a graceful stop exiting 0.
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

    // Orphans: re-parented to PID 1, then reaped by it.
    let mut orphans = Vec::new();
    for line in lines_starting(&log, "[orphans] orphan ") {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (pid, parent) = (words[2], words[5]);
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
    let control = wait_log(run, "the control zombie's pid", WAIT, |log| {
        !lines_starting(log, "[keeper] control zombie ").is_empty()
    });
    let control: u32 = lines_starting(&control, "[keeper] control zombie ")[0]
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("control zombie pid");
    no_zombies_of_pid1(run, control, &orphans);

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
// The tests.
// ---------------------------------------------------------------------------

#[test]
fn unshare_chroot_lifecycle() {
    if let Some(b) = Chroot::get() {
        lifecycle(&b);
    }
}

#[test]
fn unshare_chroot_grace_kill() {
    if let Some(b) = Chroot::get() {
        grace_kill(&b);
    }
}

#[test]
fn unshare_chroot_bad_procfile() {
    if let Some(b) = Chroot::get() {
        bad_procfile(&b);
    }
}

#[test]
fn unshare_chroot_selection() {
    if let Some(b) = Chroot::get() {
        selection(&b);
    }
}

#[test]
fn docker_lifecycle() {
    if let Some(b) = Docker::get() {
        lifecycle(&b);
    }
}

#[test]
fn docker_grace_kill() {
    if let Some(b) = Docker::get() {
        grace_kill(&b);
    }
}

#[test]
fn docker_bad_procfile() {
    if let Some(b) = Docker::get() {
        bad_procfile(&b);
    }
}

#[test]
fn docker_selection() {
    if let Some(b) = Docker::get() {
        selection(&b);
    }
}

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
}

// ---------------------------------------------------------------------------
// Backends.
// ---------------------------------------------------------------------------

/// Where PID 1 runs.
trait Backend {
    /// Starts PID 1 on `s` and returns once it runs.
    fn start(&self, s: &Scenario) -> Box<dyn Running>;
    /// Runs PID 1 on `s` to its end.
    fn run(&self, s: &Scenario) -> Finished;
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
    /// Everything worth showing when a check fails.
    fn describe(&self) -> String;
}

/// A PID 1 that ran to its end.
struct Finished {
    code: i32,
    log: String,
    context: String,
}

impl Finished {
    fn check(&self, ok: bool, what: &str) {
        assert!(ok, "{what}\n{}", self.context);
    }
}

// --- unshare + chroot ------------------------------------------------------

struct Chroot {
    binary: PathBuf,
    busybox: PathBuf,
    /// The host's `chroot`: the daemons' environment (PATH=/bin) cannot find it.
    chroot: PathBuf,
    /// Extra `unshare` options (user namespace when not root).
    unshare_opts: Vec<&'static str>,
}

impl Chroot {
    fn get() -> Option<Chroot> {
        let binary = need(Need::Static, static_binary())?;
        let busybox = need(Need::Busybox, busybox())?;
        let unshare_opts = need(Need::Unshare, unshare_options())?;
        let chroot = need(Need::Unshare, host_program("chroot"))?;
        Some(Chroot {
            binary,
            busybox,
            chroot,
            unshare_opts,
        })
    }

    /// A root directory holding only the binary, busybox and the scenario,
    /// plus what an engine always provides and busybox needs: /proc (mounted
    /// by unshare) and /dev/null (busybox sh opens it for every `&` job).
    fn root(&self, s: &Scenario) -> TempDir {
        let dir = TempDir::new(s.name);
        populate(dir.path(), &self.busybox, s);
        copy_executable(&self.binary, &dir.path().join("sidecar-init"));
        fs::create_dir(dir.path().join("proc")).expect("mkdir proc");
        fs::create_dir(dir.path().join("dev")).expect("mkdir dev");
        dev_null(&dir.path().join("dev/null"));
        dir
    }

    fn command(&self, root: &Path, s: &Scenario) -> Command {
        let mut cmd = Command::new("unshare");
        cmd.args(&self.unshare_opts)
            .args(["--pid", "--fork", "--kill-child"])
            .arg(format!("--mount-proc={}", root.join("proc").display()))
            .arg(&self.chroot)
            .arg(root)
            .arg("/sidecar-init")
            .args(s.args)
            .env_clear()
            .env("PATH", "/bin")
            .env("SIDECAR_INIT_PROCFILE", "/Procfile")
            .envs(s.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }
}

impl Backend for Chroot {
    fn start(&self, s: &Scenario) -> Box<dyn Running> {
        let mut run = self.spawn(s);
        run.pid1 = Some(run.find_pid1());
        Box::new(run)
    }

    fn run(&self, s: &Scenario) -> Finished {
        let mut run = self.spawn(s);
        run.exited = wait_child(&mut run.child, EXIT);
        let Some(status) = run.exited else {
            fail(&run, &format!("PID 1 did not exit within {EXIT:?}"));
        };
        run.out.wait_closed(WAIT);
        run.err.wait_closed(WAIT);
        Finished {
            code: exit_code(status),
            log: run.out.text(),
            context: run.describe(),
        }
    }
}

impl Chroot {
    fn spawn(&self, s: &Scenario) -> ChrootRun {
        let root = self.root(s);
        let mut child = spawn(&mut self.command(root.path(), s)).expect("spawn unshare");
        let out = Captured::new(child.stdout.take().expect("stdout"));
        let err = Captured::new(child.stderr.take().expect("stderr"));
        ChrootRun {
            child,
            pid1: None,
            exited: None,
            out,
            err,
            _root: root,
        }
    }
}

struct ChrootRun {
    /// The `unshare` process; sidecar-init is its child.
    child: Child,
    /// sidecar-init's PID as seen from here.
    pid1: Option<i32>,
    exited: Option<ExitStatus>,
    out: Captured,
    err: Captured,
    _root: TempDir,
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

    fn describe(&self) -> String {
        format!(
            "[unshare+chroot] PID 1 is host pid {:?}, exit status {:?}\n\
             --- PID 1's stdout ---\n{}\n--- stderr ---\n{}",
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
}

impl Docker {
    fn get() -> Option<Docker> {
        let binary = need(Need::Static, static_binary())?;
        let busybox = need(Need::Busybox, busybox())?;
        need(Need::Docker, docker_available())?;
        Some(Docker { binary, busybox })
    }

    /// Builds the scenario's image: docker/prebuilt.Dockerfile around the
    /// binary, then busybox and the scenario's files on top.
    fn image(&self, s: &Scenario) -> Images {
        let id = unique(s.name);
        let mut images = Images(Vec::new());

        let base_ctx = TempDir::new(&format!("{}-base", s.name));
        copy_executable(&self.binary, &base_ctx.path().join("sidecar-init"));
        let base = format!("{id}-base:test");
        let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/prebuilt.Dockerfile");
        docker_build(&dockerfile, base_ctx.path(), &base);
        images.0.push(base.clone());

        let ctx = TempDir::new(s.name);
        populate(&ctx.path().join("rootfs"), &self.busybox, s);
        let dockerfile = ctx.path().join("Dockerfile");
        fs::write(
            &dockerfile,
            format!("FROM {base}\nCOPY rootfs/ /\nENV SIDECAR_INIT_PROCFILE=/Procfile\n"),
        )
        .expect("write Dockerfile");
        let image = format!("{id}:test");
        docker_build(&dockerfile, ctx.path(), &image);
        images.0.push(image);
        images
    }

    fn run_args(name: &str, image: &str, s: &Scenario) -> Vec<String> {
        let mut args: Vec<String> = ["--name", name, "--label", LABEL]
            .iter()
            .map(|a| a.to_string())
            .collect();
        for (k, v) in s.env {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        args.push(image.into());
        args.extend(s.args.iter().map(|a| a.to_string()));
        args
    }
}

impl Backend for Docker {
    fn start(&self, s: &Scenario) -> Box<dyn Running> {
        let images = self.image(s);
        let name = unique(s.name);
        let container = Container(name.clone());
        let mut args = vec!["run".to_string(), "-d".into()];
        args.extend(Docker::run_args(&name, images.last(), s));
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
            logs,
            log,
            log_err,
            exit: None,
            _container: container,
            _images: images,
        })
    }

    fn run(&self, s: &Scenario) -> Finished {
        let images = self.image(s);
        let name = unique(s.name);
        let _container = Container(name.clone());
        let mut args = vec!["run".to_string()];
        args.extend(Docker::run_args(&name, images.last(), s));
        let run = docker(&args, EXIT);
        if run.status.is_none() {
            let logs = docker(&["logs", &name], DOCKER_CMD);
            panic!("docker run did not finish within {EXIT:?}\n{run}\n--- docker logs ---\n{logs}");
        }
        let waited = docker(&["wait", &name], DOCKER_CMD);
        let inspected = docker(
            &["inspect", "--format", "{{.State.ExitCode}}", &name],
            DOCKER_CMD,
        );
        let logs = docker(&["logs", &name], DOCKER_CMD);
        let context = format!(
            "[docker] container {name}\n--- docker run ---\n{run}\n--- docker wait ---\n\
             {waited}\n--- docker inspect ---\n{inspected}\n--- docker logs ---\n{logs}"
        );
        let code = run.status.map(exit_code).expect("checked");
        let from_wait = waited.stdout.trim().parse::<i32>().ok();
        let from_inspect = inspected.stdout.trim().parse::<i32>().ok();
        assert!(
            from_wait == Some(code) && from_inspect == Some(code),
            "docker run, wait and inspect disagree on the exit code\n{context}"
        );
        assert!(
            logs.stderr.trim().is_empty(),
            "PID 1 wrote to stderr\n{context}"
        );
        Finished {
            code,
            log: logs.stdout,
            context,
        }
    }
}

struct DockerRun {
    name: String,
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
        if !full.stderr.trim().is_empty() {
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

    fn describe(&self) -> String {
        format!(
            "[docker] container {}, exit code {:?}\n--- docker logs ---\n{}\n\
             --- docker logs (stderr) ---\n{}",
            self.name,
            self.exit,
            self.log.text(),
            self.log_err.text()
        )
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

fn docker_build(dockerfile: &Path, context: &Path, tag: &str) {
    let dockerfile = dockerfile.to_str().expect("UTF-8 path");
    let context = context.to_str().expect("UTF-8 path");
    let args = [
        "build",
        "--quiet",
        "--force-rm",
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
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if args.first() == Some(&"build") && !buildx_available() {
        cmd.env("DOCKER_BUILDKIT", "0");
    }
    let what = format!("docker {}", args.join(" "));
    let mut child = match spawn(&mut cmd) {
        Ok(c) => c,
        Err(e) => {
            return Output {
                what,
                status: None,
                stdout: String::new(),
                stderr: format!("cannot run docker: {e}"),
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
// Requirements: the static binary, busybox, unshare.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Need {
    Static,
    Busybox,
    Unshare,
    Docker,
}

impl Need {
    fn name(self) -> &'static str {
        match self {
            Need::Static => "static",
            Need::Busybox => "busybox",
            Need::Unshare => "unshare",
            Need::Docker => "docker",
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
/// /bin/busybox and its applets, /Procfile and the scenario's files.
fn populate(dir: &Path, busybox: &Path, s: &Scenario) {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).expect("mkdir bin");
    copy_executable(busybox, &bin.join("busybox"));
    fs::set_permissions(bin.join("busybox"), fs::Permissions::from_mode(0o755))
        .expect("chmod busybox");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("symlink applet");
    }
    fs::write(dir.join("Procfile"), s.procfile).expect("write Procfile");
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
