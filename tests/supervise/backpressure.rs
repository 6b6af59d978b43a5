//! A slow, stalled or vanished log reader must never stall supervision, and
//! heavy concurrent output must come out whole.

use std::fmt::Write as _;
use std::time::Instant;

use nix::libc::{SIGHUP, SIGTERM};

use crate::harness::{DEADLINE, Init, Reader, Spec, pid_file, wait_file};

#[test]
fn a_stalled_stdout_does_not_stall_shutdown() {
    // Nobody reads sidecar-init's stdout; `yes` fills the pipe and then
    // blocks, as does sidecar-init's own output buffer. SIGTERM must still
    // reach every daemon at once, and sidecar-init must still exit.
    let procfile = "\
spew: sh -c 'echo $$ > spew.pid; exec yes spamspamspamspamspamspamspamspamspamspam'
calm: sh -c 'trap \"touch calm.got-term; exit 0\" TERM; touch calm.ready; while :; do sleep 1 & wait $!; done'
";
    let mut init = Spec::procfile(procfile).stdout(Reader::Stall).start();
    let dir = init.dir.path().to_path_buf();
    assert!(
        wait_file(&dir.join("calm.ready"), DEADLINE),
        "calm never started"
    );
    let spew = pid_file(&dir.join("spew.pid"));
    // Let the pipes and the output buffer fill up.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let sent = Instant::now();
    init.signal(SIGTERM);
    assert!(
        wait_file(&dir.join("calm.got-term"), DEADLINE),
        "SIGTERM did not reach calm"
    );
    assert!(
        crate::harness::wait_gone(spew, DEADLINE),
        "SIGTERM did not stop spew"
    );
    let code = init.wait_exit(DEADLINE);
    assert_eq!(code, 0, "graceful stop with a stalled stdout");
    eprintln!("stalled stdout: SIGTERM to exit took {:?}", sent.elapsed());
}

#[test]
fn a_closed_stdout_keeps_supervision_going() {
    // The reader goes away (EPIPE on the next write). sidecar-init must not
    // die of SIGPIPE: it keeps forwarding signals and reports the right code.
    let procfile = "\
chatty: sh -c 'trap \"\" HUP; echo ready; while :; do echo still talking; sleep 0.01; done'
hup: sh -c 'trap \"trap \\\"\\\" TERM; touch hup.got; exit 3\" HUP; echo ready; while :; do sleep 1 & wait $!; done'
";
    // (The SIGTERM below may come between the touch and the exit: `hup`
    // ignores it from the SIGHUP on, so its code is 3 either way.)
    let mut init = Spec::procfile(procfile)
        .stdout(Reader::CloseAfter("[hup] ready".into()))
        .start();
    init.wait_for("[hup] ready");
    let dir = init.dir.path().to_path_buf();
    // Give sidecar-init time to hit EPIPE on the closed pipe.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(init.running(), "sidecar-init died when its reader left");
    init.signal(SIGHUP);
    assert!(
        wait_file(&dir.join("hup.got"), DEADLINE),
        "SIGHUP not forwarded after EPIPE"
    );
    init.signal(SIGTERM);
    assert_eq!(
        init.wait_exit(DEADLINE),
        3,
        "the exit code still tells the truth"
    );
}

#[test]
fn unaligned_64k_writes_from_four_daemons_come_out_whole() {
    // Each daemon writes a file of lines of varying length with `dd bs=64k`,
    // so lines straddle write boundaries. Every line must come out whole,
    // in order, under the right prefix.
    let mut init_procfile = String::new();
    let dir = crate::harness::TempDir::new();
    let mut expected = Vec::new();
    for d in ["a", "b", "c", "d"] {
        let mut text = String::new();
        for i in 0..20_000u32 {
            let pad = (i * 7919 + d.as_bytes()[0] as u32) % 180;
            writeln!(text, "{d}-{i:06}-{}", "z".repeat(pad as usize)).unwrap();
        }
        let path = dir.write(&format!("{d}.lines"), &text);
        init_procfile.push_str(&format!(
            "{d}: dd if={} bs=65536 status=none\n",
            path.display()
        ));
        expected.push((d, text));
    }
    let (code, out, init) = Spec::procfile(&init_procfile).run();
    assert_eq!(code, 0, "{}", &out[out.len().saturating_sub(2000)..]);
    for (d, text) in expected {
        let prefix = format!("[{d}] ");
        let got: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect();
        let want: Vec<&str> = text.lines().collect();
        if got != want {
            let first_bad = got.iter().zip(&want).position(|(g, w)| g != w);
            init.fail(&format!(
                "{d}: {} lines out of {}, first difference at {first_bad:?}",
                got.len(),
                want.len()
            ));
        }
    }
    let stray: Vec<&str> = out
        .lines()
        .filter(|l| {
            !l.starts_with("sidecar-init: ")
                && !["[a] ", "[b] ", "[c] ", "[d] "]
                    .iter()
                    .any(|p| l.starts_with(p))
        })
        .take(3)
        .collect();
    assert!(stray.is_empty(), "garbled lines: {stray:?}");
}

#[test]
fn an_abandoned_notify_pipe_keeps_memory_bounded_while_stdout_stalls() {
    // Two daemons exit together once told to, so the notify command runs
    // twice, one run after the other. Each run prints 900,000 empty lines
    // (9 MB once framed) into a stdout nobody reads. The first run's pipe
    // is abandoned after its drain period with much of that output read but
    // not framed; the second run starting (its file appears) shows that has
    // happened. Framing those leftovers without the buffer's limit once
    // grew memory by about 4.6 MiB.
    let procfile = format!(
        "\
a: sh -c 'while [ ! -e go ]; do sleep 0.01; done'
b: sh -c 'while [ ! -e go ]; do sleep 0.01; done'
{STEADY}"
    );
    let notify = "sh -c 'touch notified.$SIDECAR_INIT_EVENT_DAEMON; yes \"\" | head -n 900000'";
    // The first run blocks on its full pipe until its timeout kills it;
    // then what it left in the pipe is waited for while stdout stalls
    // (5 s) and abandoned.
    let mut init = Spec::procfile(&procfile)
        .args(&["--notify", notify, "--notify-timeout", "2"])
        .stdout(Reader::Stall)
        .start();
    let dir = init.dir.path().to_path_buf();
    wait_steady(&init);
    let before = peak_rss_kib(&init);
    std::fs::write(dir.join("go"), "").unwrap();
    assert!(
        wait_file(&dir.join("notified.a"), DEADLINE),
        "no notify run for a"
    );
    assert!(
        wait_file(&dir.join("notified.b"), DEADLINE),
        "the second notify run never started: the first was not abandoned"
    );
    let after = peak_rss_kib(&init);
    eprintln!("peak RSS: {before} KiB at rest, {after} KiB after an abandoned notify pipe");
    // The read buffer (512 KiB), the output buffer's memory (about 1 MiB)
    // and 512 KiB for everything else.
    let bound = 2048;
    assert!(
        after - before <= bound,
        "peak RSS grew by {} KiB with stdout stalled (bound {bound} KiB): \
         the leftovers were not bounded",
        after - before
    );
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0, "stop with a stalled stdout");
}

/// VmHWM of sidecar-init, in KiB.
fn peak_rss_kib(init: &Init) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", init.pid)).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| init.fail(&format!("no VmHWM in {status}")))
}

#[test]
fn a_slow_reader_gets_a_daemons_last_lines_before_its_exit_line() {
    // Nobody reads stdout while `burst` writes 150,000 numbered lines (2.2 MB
    // framed) and exits: about 1.5 MiB fills the stdout pipe and the output
    // buffer, the rest waits in burst's pipe, unread. The reader comes back
    // only well after the 1 s drain period. The wait for burst's pipe must
    // not have run out while stdout was stalled: its exit line comes after
    // all its lines, and none is lost.
    let procfile = format!("burst: sh -c 'echo $$ > burst.pid; seq 1 150000; exit 7'\n{STEADY}");
    let mut init = Spec::procfile(&procfile)
        .stdout(Reader::StallUntil("read-now".into()))
        .start();
    let dir = init.dir.path().to_path_buf();
    wait_steady(&init);
    let burst = pid_file(&dir.join("burst.pid"));
    assert!(
        crate::harness::wait_gone(burst, DEADLINE),
        "burst did not finish writing into its pipe"
    );
    // Past the drain period (1 s), within the most a stall may add (5 s).
    std::thread::sleep(std::time::Duration::from_millis(2500));
    std::fs::write(dir.join("read-now"), "").unwrap();
    init.wait_for("sidecar-init: burst exited with code 7");
    let lines = init.lines();
    let numbers: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("[burst] "))
        .collect();
    let want: Vec<String> = (1..=150_000).map(|n| n.to_string()).collect();
    if numbers != want {
        let first_bad = numbers.iter().zip(&want).position(|(g, w)| g != w);
        init.fail(&format!(
            "{} of 150000 lines, first difference at {first_bad:?}",
            numbers.len()
        ));
    }
    let exit_line = init
        .line_index("sidecar-init: burst exited with code 7; leaving surviving daemons running");
    let last_line = init.line_index("[burst] 150000");
    assert!(
        exit_line > last_line,
        "the exit line (line {exit_line}) came before burst's last line (line {last_line})"
    );
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 7);
}

#[test]
fn a_restart_after_a_stalled_drain_starts_its_output_afresh() {
    // As above, but nobody reads stdout for longer than a stall may extend
    // the drain (1 s + 5 s): burst's exit is logged with its output still
    // unread, and it restarts. What was read from its first run's pipe but
    // not framed must not come out as part of the second run: after the
    // restart line, its lines count from 1 again, each one whole.
    let procfile = format!(
        "burst: sh -c 'if [ -e run1 ]; then touch run2; else touch run1; fi; seq 1 150000; exit 1'\n{STEADY}"
    );
    let mut init = Spec::procfile(&procfile)
        .args(&["--restart", "burst=always", "--restart-delay", "0.1"])
        .stdout(Reader::StallUntil("read-now".into()))
        .start();
    let dir = init.dir.path().to_path_buf();
    wait_steady(&init);
    assert!(
        wait_file(&dir.join("run2"), DEADLINE),
        "burst was not restarted while stdout stalled"
    );
    std::fs::write(dir.join("read-now"), "").unwrap();
    init.wait_for("sidecar-init: restarting burst (restart 1)");
    init.wait_for("[burst] 150000");
    init.signal(SIGTERM);
    init.wait_exit(DEADLINE);
    let lines = init.lines();
    let restart = init.line_index("sidecar-init: restarting burst (restart 1)");
    // The exit line says why, and that output was lost.
    let exit_line = lines
        .iter()
        .find(|l| l.starts_with("sidecar-init: burst exited with code 1 ("))
        .unwrap_or_else(|| init.fail("no exit line for burst's first run"));
    assert!(
        exit_line.contains("(not all its output is out: stdout is not being read; ")
            && exit_line.ends_with(" bytes of output dropped); restarting in 0.1s (restart 1)"),
        "{exit_line}"
    );
    let numbers = |range: &[String]| -> Vec<u32> {
        range
            .iter()
            .filter_map(|l| l.strip_prefix("[burst] "))
            .map(|n| {
                n.parse()
                    .unwrap_or_else(|_| init.fail(&format!("a garbled line: {n:?}")))
            })
            .collect()
    };
    // A loaded machine may let the second run end, and a third begin,
    // before the SIGTERM: only the second run's lines count here.
    let third = lines
        .iter()
        .position(|l| l == "sidecar-init: restarting burst (restart 2)")
        .unwrap_or(lines.len());
    let first = numbers(&lines[..restart]);
    let second = numbers(&lines[restart..third]);
    assert!(
        first.iter().copied().eq(1..=first.len() as u32),
        "the first run's lines are not 1..{}",
        first.len()
    );
    assert!(
        second.iter().copied().eq(1..=second.len() as u32),
        "after the restart, burst's lines start with {:?}",
        &second[..second.len().min(3)]
    );
}

/// A daemon that stays up and, since stdout may be stalled, says it has
/// started with a file: `steady.ready`.
const STEADY: &str = "steady: sh -c 'touch steady.ready; exec sleep 1000'\n";

fn wait_steady(init: &Init) {
    if !wait_file(&init.dir.path().join("steady.ready"), DEADLINE) {
        init.fail("steady never started");
    }
}
