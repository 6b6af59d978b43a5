//! Promises kept under hostile conditions (issue 11): a sidecar-init short
//! of CPU, a slow reader, process groups that outlive their leader, signal
//! storms, huge tables and configurations, a full disk, an inherited signal
//! mask, stray signals.
//!
//! Each test reproduces one attack that broke a promise before, and says
//! what it measures.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::libc::{self, SIGINT, SIGTERM};

use crate::harness::{DEADLINE, Reader, Spec, can_unshare, need, pid_file, wait_file, wait_gone};

/// Kills the processes it holds when dropped: what a failing test leaves
/// behind (a process that outlived sidecar-init) does not outlive the test.
struct Reap(Vec<i32>);

impl Drop for Reap {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if pid > 0 {
                // SAFETY: kill has no memory effects.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// The lines of raw output (without their newlines).
fn lines_of(out: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', out).map(move |end| {
        let line = &out[start..end];
        start = end + 1;
        line
    })
}

/// The numbers `[prefix] N` lines carry, in order, from raw output.
fn numbered(out: &[u8], prefix: &[u8]) -> Vec<u64> {
    lines_of(out)
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|n| {
            std::str::from_utf8(n)
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

/// The first difference between `got` and `1..=want`, for a message.
fn first_gap(got: &[u64], want: u64) -> String {
    match got.iter().zip(1..=want).position(|(&g, w)| g != w) {
        Some(i) => format!(
            "line {} is {} ({} lines of {want})",
            i + 1,
            got[i],
            got.len()
        ),
        None => format!("{} lines of {want}", got.len()),
    }
}

// --- 1. nothing lost at exit, however slowly sidecar-init runs -------------

/// A cgroup with a CPU quota, made for one test and removed after it.
struct CpuLimit {
    dir: PathBuf,
}

impl CpuLimit {
    /// `percent` of one CPU for the processes put in it: cgroup v1's
    /// `cpu.cfs_quota_us`, or v2's `cpu.max`.
    fn new(percent: u32) -> Result<CpuLimit, String> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "sidecar-init-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let period = 100_000;
        let quota = period * percent / 100;
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let v2 = Path::new("/sys/fs/cgroup");
        let write = |path: PathBuf, text: &str| {
            std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))
        };
        if v1.join("cpu.cfs_quota_us").exists() {
            let dir = v1.join(&name);
            std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
            let limit = CpuLimit { dir };
            write(limit.dir.join("cpu.cfs_period_us"), &period.to_string())?;
            write(limit.dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            return Ok(limit);
        }
        let controllers = std::fs::read_to_string(v2.join("cgroup.controllers"))
            .map_err(|e| format!("no cgroup v1 cpu controller, and no cgroup v2: {e}"))?;
        if !controllers.split_whitespace().any(|c| c == "cpu") {
            return Err("no cgroup v1 cpu controller, and cgroup v2 lacks cpu".into());
        }
        // Best effort: it may already be on, or be refused (then mkdir or
        // cpu.max says so).
        let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+cpu");
        let dir = v2.join(&name);
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let limit = CpuLimit { dir };
        write(limit.dir.join("cpu.max"), &format!("{quota} {period}"))?;
        Ok(limit)
    }

    /// The file a process writes its pid into to enter the cgroup.
    fn procs(&self) -> String {
        self.dir.join("cgroup.procs").display().to_string()
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        // Whatever is still in it goes, then the cgroup.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill has no memory effects.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if std::fs::remove_dir(&self.dir).is_ok() || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn short_of_cpu_it_still_writes_every_line_before_the_exit_line() {
    // sidecar-init and its daemon run in a cgroup with a 10% CPU quota (a
    // Kubernetes CPU limit); `seq` writes 300,000 lines and exits. Framing
    // what was still queued in the pipe at the reap takes this debug build
    // seconds of wall-clock time (about what a 1% quota costs a release
    // build), so a drain deadline measured in wall-clock time ran out while
    // output was still moving: at 41219d5 only 250,000 to 298,000 lines
    // came out, and the exit line blamed a process holding the pipe open
    // (nobody did); at 049b628 every line came out, under the same false
    // blame. Measured: every line, in order, before an exit line that
    // blames no one.
    let test = "short_of_cpu_it_still_writes_every_line_before_the_exit_line";
    let Some(limit) = need(test, "cgroup", CpuLimit::new(10)) else {
        return;
    };
    let procs = limit.procs();
    let lines = 300_000;
    let started = Instant::now();
    let mut init = Spec::procfile(&format!("a: seq 1 {lines}\n"))
        .wrap(&["sh", "-c", "echo $$ > \"$0\" && exec \"$@\"", &procs])
        .start();
    let code = init.wait_exit(Duration::from_secs(60));
    eprintln!("{lines} lines at 10% CPU: {:?}", started.elapsed());
    let out = init.raw_output();
    assert_eq!(code, 0, "exit code");
    let got = numbered(&out, b"[a] ");
    if !got.iter().copied().eq(1..=lines) {
        init.fail(&format!(
            "not every line came out: {}",
            first_gap(&got, lines)
        ));
    }
    let exit_line = init.line_index("sidecar-init: a exited with code 0; no daemons left");
    let last = init.line_index(&format!("[a] {lines}"));
    assert!(exit_line > last, "the exit line came before the last line");
}

#[test]
fn a_slow_steady_reader_gets_every_line_before_the_exit_line() {
    // A daemon with a 4 KiB name writes 20,000 short lines and exits: the
    // 110 KB in its pipe become 82 MB of log, which a reader taking 30 MB/s
    // needs almost 3 s for. The reader never stalls, so the wait for those
    // lines must not run out: at 41219d5 only 6,700 to 13,000 lines came
    // before the exit line (which blamed a process holding the pipe), at
    // 049b628 in about one run of three. Measured: all 20,000 lines, in
    // order, before the exit line.
    let name = "n".repeat(4096);
    let lines = 20_000;
    let started = Instant::now();
    let mut init = Spec::procfile(&format!("{name}: seq 1 {lines}\n"))
        .stdout(Reader::Slow(30_000_000))
        .start();
    let code = init.wait_exit(Duration::from_secs(60));
    eprintln!("{lines} lines to a 30 MB/s reader: {:?}", started.elapsed());
    let out = init.raw_output();
    let prefix = format!("[{name}] ");
    let got = numbered(&out, prefix.as_bytes());
    let exit_line = format!("sidecar-init: {name} exited with code 0; no daemons left\n");
    let exit_at = find(&out, exit_line.as_bytes());
    let last_at = find(&out, format!("{prefix}{lines}\n").as_bytes());
    if code != 0 || !got.iter().copied().eq(1..=lines) || exit_at.is_none() || exit_at < last_at {
        panic!(
            "code {code}, {}, exit line at {exit_at:?}, last line at {last_at:?}; \
             sidecar-init's own lines:\n{}",
            first_gap(&got, lines),
            own_lines(&out).replace(&name, "NAME")
        );
    }
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// sidecar-init's own lines in `out`.
fn own_lines(out: &[u8]) -> String {
    lines_of(out)
        .filter(|l| l.starts_with(b"sidecar-init: "))
        .map(|l| String::from_utf8_lossy(l).into_owned() + "\n")
        .collect()
}

// --- 2. a stop is over when the whole process group is -------------------

#[test]
fn as_pid_1_it_waits_for_a_wrappers_worker_and_sweeps_what_is_left() {
    // A shell wrapper's background worker traps SIGTERM and needs 2 s to
    // clean up. The wrapper itself dies at once, and its pipe... is still
    // held by the worker. As PID 1, sidecar-init exiting kills every
    // process of the namespace: at 41219d5 it exited 20 ms after SIGTERM
    // and the worker never finished. A second daemon leaves a process in a
    // session of its own (setsid), outside every daemon's group: after
    // the daemons, it is swept. Measured: the worker's `cleaned` line
    // comes before the exit, 2 s after SIGTERM, and the sweep names one
    // process.
    let test = "as_pid_1_it_waits_for_a_wrappers_worker_and_sweeps_what_is_left";
    if need(test, "unshare", can_unshare()).is_none() {
        return;
    }
    let procfile = "\
wrapper: sh -c 'sh -c \"trap \\\"sleep 2; echo cleaned; exit 0\\\" TERM; echo worker ready; while :; do sleep 1 & wait \\$!; done\" & wait'
stray: sh -c 'setsid sh -c \"echo \\$\\$ > stray.pid; exec sleep 1000\" >/dev/null 2>&1 & exec sleep 1000'
";
    let mut init = Spec::procfile(procfile).pid1().start();
    init.wait_for("[wrapper] worker ready");
    // In its own session now (it wrote the file after setsid).
    pid_file(&init.dir.path().join("stray.pid"));
    let sent = Instant::now();
    init.signal(SIGTERM);
    let code = init.wait_exit(DEADLINE);
    let took = sent.elapsed();
    eprintln!("stop with a 2 s cleanup as PID 1: {took:?}");
    assert_eq!(code, 0, "{}", init.output());
    let cleaned = init.line_index("[wrapper] cleaned");
    let swept = init.line_index("sidecar-init: sending SIGTERM to 1 remaining processes");
    let exit = init.line_index("sidecar-init: exit 0");
    assert!(cleaned < swept && swept < exit, "{}", init.output());
    assert!(took >= Duration::from_millis(1900), "exited after {took:?}");
}

#[test]
fn a_group_member_ignoring_sigterm_is_killed_at_the_graces_end() {
    // The daemon's leader dies of SIGTERM; a member of its group ignores
    // it (and does not hold the output pipe). At 41219d5 the leader's death
    // ended the stop and sidecar-init exited, the member running on.
    // Measured: the group is SIGKILLed at the grace's end (0.5 s), and the
    // member is gone when sidecar-init is.
    let procfile = "group: sh -c 'sh -c \"trap \\\"\\\" TERM; echo member \\$\\$; exec sleep 1000 >/dev/null 2>&1\" & exec sleep 1000'\n";
    let mut init = Spec::procfile(procfile).args(&["--grace", "0.5"]).start();
    let member = init.pid_from("group", "member");
    let _reap = Reap(vec![member]);
    let sent = Instant::now();
    init.signal(SIGTERM);
    let code = init.wait_exit(DEADLINE);
    let took = sent.elapsed();
    let left = !wait_gone(member, Duration::from_secs(1));
    assert!(!left, "the group member {member} outlived sidecar-init");
    assert_eq!(code, 0, "{}", init.output());
    init.expect("sidecar-init: grace (0.5s) elapsed; SIGKILL on group");
    assert!(took >= Duration::from_millis(500), "exited after {took:?}");
}

#[test]
fn a_double_forked_process_is_swept_after_the_daemons() {
    // The daemon starts a process in a session of its own (setsid) and
    // exits: the process is reparented to sidecar-init (a subreaper here)
    // and belongs to no daemon's group. At 41219d5 sidecar-init exited and
    // left it running. Measured: the log names one remaining process, and
    // it is gone when sidecar-init is.
    let procfile = "starter: sh -c 'setsid sh -c \"echo \\$\\$ > stray.pid; exec sleep 1000\" >/dev/null 2>&1 & \
                    while [ ! -s stray.pid ]; do sleep 0.01; done'\n";
    let mut init = Spec::procfile(procfile).start();
    let stray = pid_file(&init.dir.path().join("stray.pid"));
    let _reap = Reap(vec![stray]);
    let code = init.wait_exit(DEADLINE);
    let left = !wait_gone(stray, Duration::from_secs(1));
    assert!(!left, "the stray process {stray} outlived sidecar-init");
    assert_eq!(code, 0, "{}", init.output());
    let swept = init.line_index("sidecar-init: sending SIGTERM to 1 remaining processes");
    assert!(
        swept > init.line_index("sidecar-init: starter exited with code 0; no daemons left"),
        "{}",
        init.output()
    );
}

// --- 3. every SIGINT counts -------------------------------------------------

#[test]
fn two_sigints_a_few_ms_apart_kill_at_once() {
    // A chatty daemon keeps sidecar-init framing output, so both SIGINTs
    // (5 ms apart) are delivered within one round of the loop. signal-hook
    // reports a signal once per round however often it came: at 41219d5 the
    // second was lost in most runs and the stop waited out the whole grace
    // (60 s). Measured, three runs: `second SIGINT; SIGKILL on ...` within
    // 5 s each time.
    let procfile = "\
busy: yes busy-busy-busy-busy-busy-busy
stubborn: sh -c 'trap \"\" TERM INT; echo ready; while :; do sleep 1; done'
";
    for run in 1..=3 {
        let mut init = Spec::procfile(procfile).args(&["--grace", "60"]).start();
        init.wait_for("[stubborn] ready");
        init.wait_for("[busy] busy");
        let sent = Instant::now();
        init.signal(SIGINT);
        // Two SIGINTs pending at once are one to the kernel: the second is
        // sent once the first has been delivered (on a loaded machine that
        // may take longer than the few ms the test means to leave).
        wait_delivered(init.pid, SIGINT);
        std::thread::sleep(Duration::from_millis(2));
        init.signal(SIGINT);
        init.wait_until(
            &format!("run {run}: the second SIGINT's kill"),
            Duration::from_secs(5),
            |out| out.contains("sidecar-init: second SIGINT; SIGKILL on "),
        );
        assert_eq!(init.wait_exit(DEADLINE), 137, "run {run}");
        eprintln!("run {run}: two SIGINTs to exit in {:?}", sent.elapsed());
    }
}

/// Waits (up to a second) until `sig` is no longer pending for `pid`:
/// delivered to its handler.
fn wait_delivered(pid: i32, sig: i32) {
    let bit = 1u64 << (sig - 1);
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let pending = status
            .lines()
            .filter(|l| l.starts_with("SigPnd:") || l.starts_with("ShdPnd:"))
            .filter_map(|l| u64::from_str_radix(l[7..].trim(), 16).ok())
            .fold(0, |a, b| a | b);
        if pending & bit == 0 {
            return;
        }
        std::thread::yield_now();
    }
}

// --- 4. sidecar-init's own lines --------------------------------------------

#[test]
fn five_thousand_starting_lines_all_come_out() {
    // 5,000 daemons (`true`) and a reader that keeps up. At 41219d5, 2,702
    // `starting` lines were dropped as if stdout was not being read.
    // Measured: all 5,000 `starting` and exit lines, no drop notice, and
    // `exit 0` last.
    let n = 5000;
    let procfile: String = (0..n).map(|i| format!("d{i}: true\n")).collect();
    let started = Instant::now();
    let mut init = Spec::procfile(&procfile).start();
    let code = init.wait_exit(Duration::from_secs(60));
    eprintln!("5,000 daemons started and gone in {:?}", started.elapsed());
    assert_eq!(code, 0);
    let lines = init.lines();
    let count = |what: &str| lines.iter().filter(|l| l.contains(what)).count();
    assert_eq!(count("sidecar-init: starting d"), n, "starting lines");
    assert_eq!(count(" exited with code 0"), n, "exit lines");
    init.expect_not("dropped");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("sidecar-init: exit 0")
    );
}

#[test]
fn an_own_line_over_the_line_limit_is_split_whole() {
    // 20,000 unknown names in the selection make a warning of about 100 KB.
    // At 41219d5 it was dropped whole (and counted as not read). Measured:
    // it comes out as lines of at most the line limit (64 KiB, then
    // `--line-max 1000`) that put together are the whole warning.
    let alphabet: Vec<char> = ('a'..='z').chain('A'..='Z').chain('0'..='9').collect();
    let names: Vec<String> = (0..20_000)
        .map(|i| {
            let n = alphabet.len();
            [i / (n * n), i / n % n, i % n]
                .iter()
                .map(|&k| alphabet[k])
                .collect::<String>()
                + "x"
        })
        .collect();
    let want = format!(
        "CLAUDE_BOTTLE_SIDECAR_DAEMONS names unknown daemons, ignored: {}",
        names.join(", ")
    );
    for (args, max) in [(&[][..], 65536), (&["--line-max", "1000"][..], 1000)] {
        let selection = format!("a,{}", names.join(","));
        let (code, _, init) = Spec::procfile("a: true\n")
            .args(args)
            .env("CLAUDE_BOTTLE_SIDECAR_DAEMONS", &selection)
            .run();
        assert_eq!(code, 0);
        let lines = init.lines();
        let first = lines
            .iter()
            .position(|l| l.starts_with("sidecar-init: CLAUDE_BOTTLE_SIDECAR_DAEMONS"))
            .unwrap_or_else(|| init.fail("no warning"));
        let pieces: Vec<&str> = lines[first..]
            .iter()
            .map_while(|l| l.strip_prefix("sidecar-init: "))
            .take(want.len() / max + 1)
            .collect();
        assert!(
            pieces.iter().all(|p| p.len() <= max),
            "a piece over {max} bytes"
        );
        if pieces.concat() != want {
            init.fail(&format!(
                "the warning is not whole: {} pieces, {} of {} bytes",
                pieces.len(),
                pieces.concat().len(),
                want.len()
            ));
        }
        init.expect_not("dropped");
    }
}

#[test]
fn own_lines_dropped_in_a_stall_are_counted_in_place() {
    // Stdout stalls (a `yes` fills it and nobody reads). After more than a
    // second of that, SIGHUP, SIGUSR1 and SIGUSR2 each log a 40 KB
    // forwarding line (the daemon's name is that long), and SIGTERM a short
    // one. The queue keeps 64 KiB while stdout is stalled: the first
    // forwarding line, not the next two. Measured: once the reader is
    // back, the notice of the two comes before the shutdown line that
    // followed them (at 41219d5 it came after, wherever the queue was next
    // emptied), and `exit 0` is last.
    let name = "n".repeat(40 * 1024);
    let procfile = format!(
        "spew: sh -c 'trap \"\" HUP USR1 USR2; touch spew.ready; exec yes spew'\n\
         {name}: sh -c 'trap \"\" HUP USR1 USR2; exec sleep 1000'\n"
    );
    let mut init = Spec::procfile(&procfile)
        .stdout(Reader::StallUntil("go".into()))
        .start();
    let dir = init.dir.path().to_path_buf();
    assert!(
        wait_file(&dir.join("spew.ready"), DEADLINE),
        "spew never started"
    );
    // The queue may drop once stdout has made no progress for a second.
    if !wait_stdout_still(init.pid, Duration::from_millis(1300)) {
        init.fail("stdout never stalled");
    }
    for sig in [libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2, SIGTERM] {
        init.signal(sig);
        wait_delivered(init.pid, sig);
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(dir.join("go"), "").unwrap();
    assert_eq!(init.wait_exit(DEADLINE), 0);
    let out = init.raw_output();
    let own = own_lines(&out).replace(&name, "NAME");
    let own: Vec<&str> = own
        .lines()
        .filter(|l| !l.starts_with("sidecar-init: starting"))
        .collect();
    assert_eq!(
        own[..3],
        [
            "sidecar-init: forwarding SIGHUP to spew, NAME",
            "sidecar-init: 2 log lines dropped: stdout was not being read",
            "sidecar-init: shutting down (SIGTERM); forwarding SIGTERM",
        ],
        "{own:#?}"
    );
    assert_eq!(own.last(), Some(&"sidecar-init: exit 0"), "{own:#?}");
}

/// Waits (up to the deadline) until the pipe that is `pid`'s stdout has
/// held the same number of bytes for `still`: its writer is stalled.
fn wait_stdout_still(pid: i32, still: Duration) -> bool {
    let fill = || {
        // Another opening of the pipe, for FIONREAD only.
        let f = std::fs::File::open(format!("/proc/{pid}/fd/1")).ok()?;
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int.
        let r = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::FIONREAD, &mut n) };
        (r == 0).then_some(n)
    };
    let deadline = Instant::now() + DEADLINE;
    let (mut last, mut since) = (fill(), Instant::now());
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let now = fill();
        if now != last || now.is_none_or(|n| n == 0) {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= still {
            return true;
        }
    }
    false
}

// --- 5. hostile configuration ----------------------------------------------

/// Runs `sidecar-init ARGS` with `env`; its exit code, stdout and run time.
fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, Duration) {
    let started = Instant::now();
    let mut cmd = std::process::Command::new(crate::harness::binary());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Bounded memory, so that a build that reads without bound fails
    // instead of eating the machine.
    // SAFETY: setrlimit only, in the child before exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 1 << 30,
                rlim_max: 1 << 30,
            };
            libc::setrlimit(libc::RLIMIT_AS, &limit);
            Ok(())
        });
    }
    let out = cmd.output().expect("run sidecar-init");
    let code = out.status.code().unwrap_or(-1);
    (
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn an_endless_or_oversized_procfile_is_one_error_line() {
    // At 41219d5 `--procfile /dev/zero` read on until memory ran out.
    // Measured: /dev/zero, and a file one byte over the limit, are one
    // error line naming the limit and exit 2; a file of exactly the limit
    // is read.
    let dir = crate::harness::TempDir::new();
    let limit = 1 << 20;
    let want = |path: &str| {
        format!("sidecar-init: error: {path}: larger than 1 MiB (the Procfile size limit)\n")
    };
    let (code, out, took) = run_cli(&["--procfile", "/dev/zero", "--check"], &[]);
    assert_eq!((code, out.as_str()), (2, want("/dev/zero").as_str()));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let mut text = "a: true\n".to_string();
    text.push_str(&"#".repeat(limit - text.len() - 1));
    text.push('\n');
    let at_limit = dir.write("at-limit", &text);
    let (code, out, _) = run_cli(&["--procfile", at_limit.to_str().unwrap(), "--check"], &[]);
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "a: true\n#   daemon; restart never; stop-signal SIGTERM\n"
        )
    );
    text.push('#');
    let over = dir.write("over", &text);
    let over = over.to_str().unwrap();
    let (code, out, _) = run_cli(&["--procfile", over, "--check"], &[]);
    assert_eq!((code, out.as_str()), (2, want(over).as_str()));
}

#[test]
fn a_40000_entry_procfile_and_a_10000_name_selection_are_quick() {
    // Name checks were quadratic: a 40,000-entry table took seconds to
    // parse in a release build, and this debug build needed over a minute
    // at 41219d5. Measured: `--check` of 40,000 entries with a quarter of
    // them selected (and names the table lacks) within a sanity bound of 5 s
    // (about 0.6 s here); the linear code is checked by construction
    // (hash sets) and by the unit test of the rules on the same sizes.
    let dir = crate::harness::TempDir::new();
    let table: String = (0..40_000).map(|i| format!("d{i}: sleep {i}\n")).collect();
    let procfile = dir.write("Procfile", &table);
    let selection: Vec<String> = (0..40_000)
        .step_by(4)
        .map(|i| format!("d{i}"))
        .chain((0..100).map(|i| format!("unknown{i}")))
        .collect();
    let selection = selection.join(",");
    let (code, out, took) = run_cli(
        &["--procfile", procfile.to_str().unwrap(), "--check"],
        &[("CLAUDE_BOTTLE_SIDECAR_DAEMONS", &selection)],
    );
    eprintln!("40,000 entries, 10,100 names selected: --check in {took:?}");
    assert_eq!(code, 0);
    // Each daemon's entry is followed by a comment with its settings.
    let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 10_001, "the warning and 10,000 daemons");
    assert!(
        lines[0].ends_with("unknown98, unknown99"),
        "{}",
        &lines[0][..100]
    );
    assert_eq!(lines[10_000], "d39996: sleep 39996");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

// --- 6. signals during a large start-up; reports ---------------------------

#[test]
fn sigterm_during_a_large_start_up_stops_the_spawning() {
    // 5,000 daemons, SIGTERM right after the first `starting` line. At
    // 41219d5 all 5,000 were spawned before the signal was looked at
    // (seconds). Measured: shutdown begins after only a few batches of
    // spawns, none is started after it, and sidecar-init exits promptly.
    let n = 5000;
    let procfile: String = (0..n).map(|i| format!("d{i}: sleep 1000\n")).collect();
    let mut init = Spec::procfile(&procfile).start();
    init.wait_for("sidecar-init: starting d0\n");
    let sent = Instant::now();
    init.signal(SIGTERM);
    let code = init.wait_exit(DEADLINE);
    let took = sent.elapsed();
    let lines = init.lines();
    let shutdown = init.line_index("sidecar-init: shutting down (SIGTERM); forwarding SIGTERM");
    let started = |range: &[String]| {
        range
            .iter()
            .filter(|l| l.starts_with("sidecar-init: starting "))
            .count()
    };
    let before = started(&lines[..shutdown]);
    let after = started(&lines[shutdown..]);
    eprintln!("{before} of {n} daemons started before shutdown, which took {took:?}");
    assert_eq!(after, 0, "daemons started after shutdown began");
    assert!(
        before < n / 4,
        "{before} of {n} daemons started before shutdown"
    );
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
}

#[test]
fn the_grace_kill_names_only_daemons_that_may_still_run() {
    // Stdout stalls; `polite` exits 0 at SIGTERM but its pipe cannot be
    // read while stdout is stalled, so its run is not over; `chatty` ignores
    // SIGTERM. At 41219d5 the grace's end said `SIGKILL on chatty, polite`.
    // Measured: it names chatty alone, in the log and in the `kill` event.
    let procfile = "\
chatty: sh -c 'trap \"\" TERM; touch chatty.ready; exec yes chatty'
polite: sh -c 'trap \"exit 0\" TERM; touch polite.ready; while :; do sleep 1 & wait $!; done'
";
    let notify = "sh -c 'echo $SIDECAR_INIT_EVENT $SIDECAR_INIT_EVENT_DAEMON >> events'";
    let mut init = Spec::procfile(procfile)
        .args(&["--grace", "1", "--notify", notify])
        .stdout(Reader::StallUntil("go".into()))
        .start();
    let dir = init.dir.path().to_path_buf();
    for f in ["chatty.ready", "polite.ready"] {
        assert!(wait_file(&dir.join(f), DEADLINE), "{f} never appeared");
    }
    // Let stdout fill up.
    std::thread::sleep(Duration::from_millis(300));
    init.signal(SIGTERM);
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(dir.join("go"), "").unwrap();
    assert_eq!(init.wait_exit(DEADLINE), 137);
    let kill = init
        .lines()
        .into_iter()
        .find(|l| l.contains("elapsed; SIGKILL on"))
        .unwrap_or_else(|| init.fail("no SIGKILL at the grace's end"));
    assert_eq!(kill, "sidecar-init: grace (1s) elapsed; SIGKILL on chatty");
    init.expect("sidecar-init: polite exited with code 0");
    let events = std::fs::read_to_string(dir.join("events")).unwrap_or_default();
    let kills: Vec<&str> = events.lines().filter(|l| l.starts_with("kill ")).collect();
    assert_eq!(kills, ["kill chatty"], "events:\n{events}");
}

#[test]
fn spawns_short_of_descriptors_are_125_with_the_cause_and_retried() {
    // sidecar-init starts with a limit of 40 descriptors (soft and hard)
    // and 60 daemons: some cannot get a pipe. At 41219d5 they were
    // `command not executable` (126). Measured: the error names the cause,
    // the code is 125, `on-failure` retries them, and the exit code is 125.
    let prlimit = std::process::Command::new("prlimit")
        .args(["--nofile=40:40", "true"])
        .status();
    if !matches!(prlimit, Ok(s) if s.success()) {
        return crate::harness::skip(
            "spawns_short_of_descriptors_are_125_with_the_cause_and_retried",
            "prlimit is not runnable",
        );
    }
    let procfile: String = (0..60).map(|i| format!("d{i}: sleep 1000\n")).collect();
    let mut init = Spec::procfile(&procfile)
        .args(&["--restart", "on-failure", "--restart-delay", "0.2"])
        .wrap(&["prlimit", "--nofile=40:40"])
        .start();
    init.wait_until("a failed spawn's restart", DEADLINE, |out| {
        out.lines()
            .any(|l| l.contains(" exited with code 125 (could not be started); restarting in 0.2s"))
            && out.contains(" (restart 1)\n")
    });
    init.signal(SIGTERM);
    let code = init.wait_exit(DEADLINE);
    assert_eq!(code, 125, "{}", init.output());
    let cause = init
        .lines()
        .into_iter()
        .find(|l| l.starts_with("sidecar-init: error: cannot start d"))
        .unwrap_or_else(|| init.fail("no spawn error"));
    assert!(cause.ends_with(": Too many open files"), "{cause}");
}

#[test]
fn a_reader_that_stalls_for_good_gets_whole_lines() {
    // Nobody ever reads stdout; `seq` writes 120,000 lines (all of which
    // fit in stdout's pipe and the output buffer) and exits. sidecar-init
    // gives up on the reader 2 s after the end. At 41219d5 the log in the
    // pipe ended in the middle of a line (`[a] 1050`). Measured: it ends
    // with a newline, and every line in it is whole: `[a] N` in order from
    // 1, or one of sidecar-init's own.
    let mut init = Spec::procfile("a: seq 1 120000\n")
        .stdout(Reader::Stall)
        .start();
    assert_eq!(init.wait_exit(DEADLINE), 0);
    let out = init.raw_output();
    assert!(out.len() > 64 * 1024, "only {} bytes got out", out.len());
    let tail = String::from_utf8_lossy(&out[out.len() - 60..]).into_owned();
    assert!(out.ends_with(b"\n"), "the log ends inside a line: {tail:?}");
    let mut next = 1u64;
    for line in lines_of(&out) {
        if line.starts_with(b"sidecar-init: ") {
            continue;
        }
        let n = line
            .strip_prefix(b"[a] ")
            .and_then(|n| std::str::from_utf8(n).ok());
        match n.and_then(|n| n.parse::<u64>().ok()) {
            Some(n) if n == next => next += 1,
            _ => panic!(
                "line {next} is {:?}; the log ends {tail:?}",
                String::from_utf8_lossy(line)
            ),
        }
    }
    eprintln!(
        "{} whole lines got out to a reader stalled for good",
        next - 1
    );
}

#[test]
fn a_reader_stalled_at_exit_gets_the_drop_notice_and_exit_last() {
    // As above, with 3,004-byte lines: a pipe page holds one, so the pipe
    // stalled for good still has room for two short lines. Measured: the
    // last two lines that got out are the count of the lines given up (the
    // daemon's and sidecar-init's own) and `exit 0`.
    let procfile = "a: sh -c 'for i in $(seq 1 400); do printf \"%03d%03000d\\n\" $i 0; done'\n";
    let mut init = Spec::procfile(procfile).stdout(Reader::Stall).start();
    assert_eq!(init.wait_exit(DEADLINE), 0);
    let out = init.raw_output();
    let lines: Vec<&[u8]> = lines_of(&out).collect();
    let last: Vec<String> = lines[lines.len().saturating_sub(2)..]
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    let got = lines.iter().filter(|l| l.starts_with(b"[a] ")).count();
    let own = [
        "sidecar-init: starting a",
        "sidecar-init: a exited with code 0; no daemons left",
    ];
    let own_missing = own
        .iter()
        .filter(|o| !lines.contains(&o.as_bytes()))
        .count();
    let dropped = 400 - got + own_missing;
    assert!(
        last.len() == 2
            && last[0]
                == format!("sidecar-init: {dropped} lines dropped: stdout was not being read")
            && last[1] == "sidecar-init: exit 0",
        "{got} lines of 400 got out, then {last:?}"
    );
}

/// A tmpfs of `size` mounted for one test, unmounted after it.
struct Tmpfs {
    dir: crate::harness::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = crate::harness::TempDir::new();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount not runnable: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn output_resumes_after_a_full_disk_with_a_count_of_the_lines_dropped() {
    // Stdout is a file on a 4 MiB tmpfs that a filler leaves 64 KiB of.
    // `seq` writes 200,000 lines (2.2 MB framed): the disk fills. At
    // 41219d5 a write error other than EPIPE turned output off for good.
    // Measured: once the filler is deleted, output resumes (retried every
    // second) with `N lines dropped: stdout failed (No space left on
    // device)`, and the lines in the file plus N are all 200,000, each
    // whole and in order.
    let test = "output_resumes_after_a_full_disk_with_a_count_of_the_lines_dropped";
    let Some(disk) = need(test, "tmpfs", Tmpfs::mount("4m")) else {
        return;
    };
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![0u8; 4 * 1024 * 1024 - 64 * 1024])
        .unwrap_or_else(|e| panic!("write {}: {e}", filler.display()));
    let log = disk.path().join("log");
    let lines = 200_000;
    let mut init = Spec::procfile(&format!(
        "a: sh -c 'seq 1 {lines}; touch written; exec sleep 1000'\n"
    ))
    .stdout(Reader::File(log.clone()))
    .start();
    assert!(
        wait_file(&init.dir.path().join("written"), DEADLINE),
        "seq did not get its lines out: {} bytes in the log",
        std::fs::metadata(&log).map_or(0, |m| m.len())
    );
    // Let sidecar-init read (and drop) the rest of the pipe.
    std::thread::sleep(Duration::from_millis(500));
    std::fs::remove_file(&filler).unwrap();
    let notice = "lines dropped: stdout failed (No space left on device)";
    init.wait_until("the drop notice", Duration::from_secs(5), |out| {
        out.contains(notice)
    });
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
    let out = init.raw_output();
    let text = String::from_utf8_lossy(&out);
    let dropped: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("sidecar-init: ")?.strip_suffix(notice))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| init.fail("no count in the notice"));
    let got = numbered(&out, b"[a] ");
    assert!(
        got.windows(2).all(|w| w[0] < w[1]) && got.iter().all(|&n| (1..=lines).contains(&n)),
        "lines out of order or garbled"
    );
    eprintln!(
        "{} lines written, {dropped} dropped while the disk was full",
        got.len()
    );
    assert!(dropped > 0);
    assert_eq!(
        got.len() as u64 + dropped,
        lines,
        "lines written and dropped"
    );
    assert_eq!(text.lines().last(), Some("sidecar-init: exit 0"));
}

// --- 7. an inherited signal mask --------------------------------------------

/// A python3 wrapper that starts sidecar-init with `setup` (Python
/// statements) done first, or None (with a loud skip) without python3.
fn python_wrapper(test: &str, setup: &str) -> Option<Vec<String>> {
    let ok = std::process::Command::new("python3")
        .args(["-c", "pass"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        crate::harness::skip(test, "python3 is not runnable");
        return None;
    }
    // What it starts sidecar-init with (exec keeps the mask and the ignored
    // signals) is in `started.status`.
    let code = format!(
        "import os, signal, sys\n{setup}\n\
         open('started.status', 'w').write(open('/proc/self/status').read())\n\
         os.execv(sys.argv[1], sys.argv[1:])\n"
    );
    Some(vec!["python3".into(), "-c".into(), code])
}

#[test]
fn started_with_sigchld_blocked_it_reaps_and_children_get_its_mask_back() {
    // The parent blocks SIGCHLD and SIGUSR2 and ignores SIGHUP and SIGUSR1
    // before it execs sidecar-init. At 41219d5 nothing was reaped: `true`
    // stayed a zombie and sidecar-init ran for good. Measured: both daemons
    // are reaped and it exits on its own; a daemon starts with exactly the
    // mask and ignored signals sidecar-init was started with (SigBlk, SigIgn).
    let test = "started_with_sigchld_blocked_it_reaps_and_children_get_its_mask_back";
    let setup = "\
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
signal.signal(signal.SIGUSR1, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD, signal.SIGUSR2})";
    let Some(wrapper) = python_wrapper(test, setup) else {
        return;
    };
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let procfile = "a: true\nb: sh -c 'exec grep -E \"^Sig(Blk|Ign)\" /proc/self/status'\n";
    let mut init = Spec::procfile(procfile).wrap(&wrapper).start();
    assert_eq!(
        init.wait_exit(Duration::from_secs(5)),
        0,
        "{}",
        init.output()
    );
    let started = std::fs::read_to_string(init.dir.path().join("started.status")).unwrap();
    let field = |name: &str| {
        let line = started.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line[name.len()..].trim(), 16).unwrap()
    };
    let (blocked, ignored) = (field("SigBlk:"), field("SigIgn:"));
    let bit = |sig: i32| 1u64 << (sig - 1);
    assert_eq!(
        blocked & (bit(libc::SIGCHLD) | bit(libc::SIGUSR2)),
        bit(libc::SIGCHLD) | bit(libc::SIGUSR2)
    );
    assert_eq!(ignored & bit(libc::SIGHUP), bit(libc::SIGHUP));
    init.line_index(&format!("[b] SigBlk:\t{blocked:016x}"));
    init.line_index(&format!("[b] SigIgn:\t{ignored:016x}"));
}

#[test]
fn daemons_start_with_nothing_blocked_when_it_started_so() {
    // sidecar-init blocks SIGTTOU and SIGTTIN for itself (since 2578ce9),
    // and std's posix_spawn hands a child the parent's mask: at 049b628
    // every daemon started with both blocked. Measured: a daemon's SigBlk
    // is empty, as sidecar-init's was at its start (the harness starts it
    // so).
    let procfile = "b: grep -E \"^SigBlk\" /proc/self/status\n";
    let (code, _, init) = Spec::procfile(procfile).run();
    assert_eq!(code, 0);
    init.line_index("[b] SigBlk:\t0000000000000000");
}

#[test]
fn started_with_sigterm_blocked_sigterm_still_stops_it() {
    // At 41219d5 a blocked SIGTERM stayed blocked: SIGTERM did nothing.
    // The daemon inherits the blocked SIGTERM (as a child of tini does), so
    // it is SIGKILLed at the grace's end. Measured: sidecar-init shuts down
    // and exits.
    let test = "started_with_sigterm_blocked_sigterm_still_stops_it";
    let setup = "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})";
    let Some(wrapper) = python_wrapper(test, setup) else {
        return;
    };
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let procfile = "a: sh -c 'echo ready; exec sleep 1000'\n";
    let mut init = Spec::procfile(procfile)
        .args(&["--grace", "0.5"])
        .wrap(&wrapper)
        .start();
    init.wait_for("[a] ready");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(Duration::from_secs(5)), 137);
    init.expect("sidecar-init: shutting down (SIGTERM); forwarding SIGTERM");
}

#[test]
fn a_sigterm_pending_at_start_is_a_shutdown_before_any_spawn() {
    // The parent blocks SIGTERM, gets one (it stays pending across exec)
    // and execs sidecar-init, which unblocks it first thing: the signal is
    // delivered before the loop exists. Up to 489bb98 its handlers came
    // only after the configuration was read, so the default action ran:
    // sidecar-init died of SIGTERM (and as PID 1 the kernel would have
    // dropped it: a `docker stop` during start-up lost). Measured: it is a
    // shutdown, taken before the first spawn, and the exit is 0 with
    // nothing started.
    let test = "a_sigterm_pending_at_start_is_a_shutdown_before_any_spawn";
    let setup = "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n\
                 os.kill(os.getpid(), signal.SIGTERM)";
    let Some(wrapper) = python_wrapper(test, setup) else {
        return;
    };
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let procfile = "a: touch spawned\n";
    let mut init = Spec::procfile(procfile).wrap(&wrapper).start();
    assert_eq!(
        init.wait_exit(Duration::from_secs(5)),
        0,
        "{}",
        init.output()
    );
    init.expect("sidecar-init: shutting down (SIGTERM)");
    assert!(
        !init.dir.path().join("spawned").exists(),
        "a daemon was started after the SIGTERM\n{}",
        init.output()
    );
    assert_eq!(
        init.lines().last().map(String::as_str),
        Some("sidecar-init: exit 0")
    );
}

/// The children of `pid` whose name (`/proc/PID/comm`, readable without
/// ptrace rights, unlike `exe` of a process that switched users) is
/// `comm`.
fn children_named(pid: i32, comm: &str) -> Vec<i32> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) else {
        return Vec::new();
    };
    text.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&p: &i32| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim_end() == comm)
        })
        .collect()
}

/// strace runs here and has the syscall delay the test holds a child with
/// (strace 4.22 and later).
fn strace_delays() -> Result<(), String> {
    match std::process::Command::new("strace")
        .args([
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "inject=setpgid:delay_exit=1",
            "true",
        ])
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!(
            "strace cannot trace here or has no delay_exit ({s})"
        )),
        Err(e) => Err(format!("strace is not runnable: {e}")),
    }
}

/// Starts sidecar-init under strace with one `--user` daemon, `a`, which
/// is spawned by fork (posix_spawn cannot switch users); strace holds the
/// child for 3 s at the end of its setpgid, between fork and exec, where
/// it still has sidecar-init's handlers. Returns sidecar-init (its `pid`
/// is sidecar-init's, not strace's) and the held child, or `None` after a
/// loud skip.
fn held_before_exec(test: &str) -> Option<(crate::harness::Init, i32)> {
    if !nix::unistd::geteuid().is_root() {
        crate::harness::skip(test, "--user needs root");
        return None;
    }
    need(test, "strace", strace_delays())?;
    // Short-lived, so that a failure leaves nothing running.
    let procfile = "a: sh -c 'echo started; exec sleep 5'\n";
    let mut init = Spec::procfile(procfile)
        .wrap(&[
            "strace",
            "-f",
            "-qq",
            "-o",
            "strace.log",
            "-e",
            "trace=setpgid,execve",
            "-e",
            "inject=setpgid:delay_exit=3000000",
        ])
        .args(&["--user", "a=65534"])
        .start();
    let deadline = Instant::now() + DEADLINE;
    let strace = init.pid;
    // The program's name, as a fresh child before its exec has it too.
    let comm = Path::new(crate::harness::binary())
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(15).collect::<String>())
        .unwrap_or_default();
    let child = loop {
        if let Some(&si) = children_named(strace, &comm).first() {
            // The harness's signals and kills are for sidecar-init, not
            // strace (which would detach and leave it running).
            init.pid = si;
            // Once in a process group of its own (strace holds it at the
            // end of that setpgid): before, a signal sent to it is one to
            // sidecar-init's group, which the child leaves to sidecar-init.
            let own_group = |&p: &i32| {
                std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .ok()
                    .and_then(|s| {
                        let after = &s[s.rfind(')')? + 2..];
                        after.split(' ').nth(2)?.parse::<i32>().ok()
                    })
                    == Some(p)
            };
            if let Some(&child) = children_named(si, &comm).iter().find(|p| own_group(p)) {
                break child;
            }
        }
        if Instant::now() > deadline {
            init.fail("no child of sidecar-init appeared before its exec");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Some((init, child))
}

#[test]
fn a_signal_reaching_a_child_between_fork_and_exec_acts_on_the_child() {
    // A SIGTERM sent to the held child ran sidecar-init's handler in the
    // child up to c15f4ef: the signal was lost, the program was exec'd
    // and ran on ("started", and exit 0 after its sleep). Measured: the
    // child dies of it before the exec, as the program would have a
    // moment later, and that is the daemon's exit (143).
    let test = "a_signal_reaching_a_child_between_fork_and_exec_acts_on_the_child";
    let Some((mut init, child)) = held_before_exec(test) else {
        return;
    };
    // SAFETY: a plain kill of a process of this test's.
    assert_eq!(unsafe { libc::kill(child, SIGTERM) }, 0);
    init.wait_for("a exited");
    init.expect("a exited with code 143 (killed by SIGTERM)");
    init.expect_not("[a] started");
    assert_eq!(init.wait_exit(DEADLINE), 143, "{}", init.output());
    let log = std::fs::read_to_string(init.dir.path().join("strace.log")).unwrap_or_default();
    let mine: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with(&format!("{child} ")))
        .collect();
    // The premise: the signal came before any exec (not after the hold).
    let signal = mine.iter().position(|l| l.contains("--- SIGTERM"));
    let exec = mine.iter().position(|l| l.contains("execve("));
    assert!(
        signal.is_some() && exec.is_none_or(|e| e > signal.unwrap()),
        "the SIGTERM did not come between fork and exec:\n{}\n{}",
        mine.join("\n"),
        init.output()
    );
}

#[test]
fn a_sigtstp_reaching_a_child_before_its_exec_does_not_hold_sidecar_init() {
    // SIGTSTP stops by default: raised again in the held child it would
    // stop it before its exec, and sidecar-init, waiting in spawn for that
    // exec, would handle nothing more (not even SIGTERM) until someone
    // sent the child SIGCONT (found by review, in a version that raised
    // every signal again). Measured: the child drops it, execs, and a
    // SIGTERM stops everything as usual.
    let test = "a_sigtstp_reaching_a_child_before_its_exec_does_not_hold_sidecar_init";
    let Some((mut init, child)) = held_before_exec(test) else {
        return;
    };
    // SAFETY: a plain kill of a process of this test's.
    assert_eq!(unsafe { libc::kill(child, libc::SIGTSTP) }, 0);
    init.wait_for("[a] started");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0, "{}", init.output());
    init.expect("a exited with code 0 (stopped by SIGTERM)");
}

// --- 8. stray signals -------------------------------------------------------

#[test]
fn stray_signals_are_forwarded_and_do_not_end_it() {
    // Not PID 1, a signal whose default action terminates used to kill
    // sidecar-init outright (at 41219d5 the first, SIGALRM, did), leaving
    // the daemons orphaned. Measured: each reaches a daemon that traps it,
    // and sidecar-init keeps running until SIGTERM.
    let test = "stray_signals_are_forwarded_and_do_not_end_it";
    if python_wrapper(test, "").is_none() {
        return;
    }
    let signals = [
        libc::SIGALRM,
        libc::SIGIO,
        libc::SIGPWR,
        libc::SIGXCPU,
        libc::SIGXFSZ,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGSTKFLT,
        libc::SIGRTMIN() + 3,
        libc::SIGRTMAX(),
    ];
    let numbers: Vec<String> = signals.iter().map(i32::to_string).collect();
    let procfile = format!(
        "trap: python3 -u -c 'import signal, sys, time\n\
         def got(sig, frame): print(\"got\", sig, flush=True)\n\
         for s in sys.argv[1:]: signal.signal(int(s), got)\n\
         print(\"ready\", flush=True)\n\
         while True: time.sleep(1)\n' {}\n",
        numbers.join(" ")
    );
    let mut init = Spec::procfile(&procfile).start();
    init.wait_for("[trap] ready");
    for sig in signals {
        init.signal(sig);
        init.wait_for(&format!("[trap] got {sig}\n"));
        assert!(init.running(), "signal {sig} ended sidecar-init");
    }
    init.expect("sidecar-init: forwarding SIGALRM to trap");
    init.expect_not("shutting down");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
}
