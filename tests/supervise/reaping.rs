//! Reaping: orphans as PID 1 and as a subreaper; no descriptor leaks.

use nix::libc::SIGTERM;

use crate::harness::{DEADLINE, Spec, can_unshare, skip};

/// A daemon that makes an orphan (a `sleep` whose parent shell exits at
/// once), reports the orphan's parent, then waits for it to disappear: it
/// stays a zombie forever unless its new parent reaps it.
const ORPHANS: &str = "orphans: sh -c '\
pid=$(sh -c \"sleep 0.3 >/dev/null 2>&1 & echo \\$!\"); \
echo orphan $pid; \
echo parent $(grep PPid /proc/$pid/status | cut -f2); \
i=0; while [ -e /proc/$pid ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; \
if [ -e /proc/$pid ]; then echo \"orphan NOT reaped: $(grep State /proc/$pid/status)\"; else echo orphan reaped; fi; \
echo zombies $(grep -l \"^State:.*Z\" /proc/[0-9]*/status 2>/dev/null | wc -l); \
echo done; sleep 1000'
";

#[test]
fn orphans_are_reaped_as_pid_1() {
    if let Err(why) = can_unshare() {
        return skip("orphans_are_reaped_as_pid_1", &why);
    }
    let mut init = Spec::procfile(ORPHANS).pid1().start();
    init.wait_for("[orphans] done");
    init.expect("[orphans] parent 1");
    init.expect("[orphans] orphan reaped");
    // Zombies counted in the namespace's own /proc, which holds only our
    // processes: none may be left.
    init.expect("[orphans] zombies 0");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
}

#[test]
fn orphans_are_reaped_by_a_subreaper() {
    let mut init = Spec::procfile(ORPHANS).start();
    init.wait_for("[orphans] done");
    init.expect(&format!("[orphans] parent {}", init.pid));
    init.expect("[orphans] orphan reaped");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
}

#[test]
fn pid_1_stops_and_reports_like_any_other_run() {
    if let Err(why) = can_unshare() {
        return skip("pid_1_stops_and_reports_like_any_other_run", &why);
    }
    let procfile = "a: sh -c 'echo ready; echo my pid $$; exec sleep 1000'\nb: sh -c 'exit 5'\n";
    let mut init = Spec::procfile(procfile).pid1().start();
    init.wait_for("[a] ready");
    init.wait_for("b exited with code 5");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 5);
}

#[test]
fn daemons_get_only_stdin_stdout_and_stderr() {
    // sidecar-init itself starts with descriptors 7 and 8 open; a sibling's
    // pipe, the epoll and signal descriptors must not leak either.
    let procfile = "\
first: sh -c 'echo ready; exec sleep 1000'
second: sh -c 'echo fds; ls /proc/$$/fd; echo end'
";
    let mut init = Spec::procfile(procfile).leak_fds().start();
    init.wait_for("[first] ready");
    init.wait_for("[second] end");
    let lines = init.lines();
    let fds: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("[second] "))
        .skip_while(|l| *l != "fds")
        .skip(1)
        .take_while(|l| *l != "end")
        .collect();
    assert_eq!(fds, ["0", "1", "2"], "{}", init.output());
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
}
