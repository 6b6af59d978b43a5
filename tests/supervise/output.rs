//! Output: prefixing, UTF-8 repair, long lines, nothing lost at exit.

use crate::harness::Spec;

#[test]
fn stdout_and_stderr_are_both_prefixed() {
    let (code, _, init) = Spec::procfile("a: sh -c 'echo to stdout; echo to stderr >&2'\n").run();
    assert_eq!(code, 0, "{}", init.output());
    init.line_index("[a] to stdout");
    init.line_index("[a] to stderr");
    init.line_index("sidecar-init: starting a");
}

#[test]
fn lines_keep_their_daemon_and_order() {
    let procfile = "\
a: sh -c 'for i in 1 2 3 4 5; do echo a$i; done'
b: sh -c 'for i in 1 2 3 4 5; do echo b$i >&2; done'
";
    let (code, _, init) = Spec::procfile(procfile).run();
    assert_eq!(code, 0);
    for d in ["a", "b"] {
        let idx: Vec<usize> = (1..=5)
            .map(|i| init.line_index(&format!("[{d}] {d}{i}")))
            .collect();
        assert!(
            idx.windows(2).all(|w| w[0] < w[1]),
            "{d} out of order: {idx:?}\n{}",
            init.output()
        );
    }
}

#[test]
fn a_last_line_without_newline_is_emitted() {
    let (code, _, init) = Spec::procfile("a: printf 'first\\nno newline at the end'\n").run();
    assert_eq!(code, 0);
    let partial = init.line_index("[a] no newline at the end");
    let exited = init.line_index("sidecar-init: a exited with code 0; no daemons left");
    assert!(partial < exited, "{}", init.output());
}

#[test]
fn invalid_utf8_is_replaced() {
    let (code, _, init) = Spec::procfile("a: printf 'bad \\377\\376 bytes\\n'\n").run();
    assert_eq!(code, 0);
    let raw = init.raw_output();
    assert!(
        std::str::from_utf8(&raw).is_ok(),
        "output is not valid UTF-8: {raw:?}"
    );
    init.line_index("[a] bad \u{fffd}\u{fffd} bytes");
}

#[test]
fn a_200k_line_is_split_without_losing_a_byte() {
    let procfile = "a: sh -c 'head -c 204800 /dev/zero | tr \"\\\\000\" x; echo; echo after'\n";
    let (code, _, init) = Spec::procfile(procfile).run();
    assert_eq!(code, 0, "{}", init.output());
    let lines = init.lines();
    let pieces: Vec<usize> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("[a] "))
        .filter(|l| l.starts_with('x'))
        .map(|l| {
            assert!(l.bytes().all(|b| b == b'x'), "garbled piece");
            l.len()
        })
        .collect();
    assert_eq!(
        pieces,
        [65536, 65536, 65536, 8192],
        "pieces of the long line"
    );
    init.line_index("[a] after");
}

#[test]
fn a_burst_just_before_exit_arrives_whole_and_in_order() {
    let (code, _, init) = Spec::procfile("a: seq 1 100000\n").run();
    assert_eq!(code, 0);
    let lines = init.lines();
    let numbers: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("[a] "))
        .collect();
    assert_eq!(numbers.len(), 100_000, "lines lost");
    for (i, n) in numbers.iter().enumerate() {
        if *n != (i + 1).to_string() {
            init.fail(&format!("line {} is {n:?}", i + 1));
        }
    }
    let last = init.line_index("[a] 100000");
    let exited = init.line_index("sidecar-init: a exited with code 0; no daemons left");
    assert!(last < exited, "exit logged before the last line");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("sidecar-init: exit 0")
    );
}

#[test]
fn many_daemons_writing_at_once_are_not_garbled() {
    // Four daemons each write 2000 long lines; every line must come out
    // whole, under its own prefix.
    let line = "y".repeat(1000);
    let mut procfile = String::new();
    for d in ["a", "b", "c", "d"] {
        procfile.push_str(&format!(
            "{d}: sh -c 'i=0; while [ $i -lt 2000 ]; do echo {d}{line}; i=$((i+1)); done'\n"
        ));
    }
    let (code, _, init) = Spec::procfile(&procfile).run();
    assert_eq!(code, 0);
    for d in ["a", "b", "c", "d"] {
        let want = format!("[{d}] {d}{line}");
        let n = init.lines().iter().filter(|l| **l == want).count();
        assert_eq!(n, 2000, "whole lines from {d}");
    }
    let stray = init
        .lines()
        .into_iter()
        .filter(|l| !l.starts_with("sidecar-init: ") && !l.starts_with('['))
        .count();
    assert_eq!(stray, 0, "unprefixed lines");
}

#[test]
fn a_grandchild_holding_the_pipe_cannot_hold_the_exit() {
    // The daemon exits at once, leaving a background sleep that holds its
    // output pipe open (in its own session, so no group signal reaches it).
    let procfile = "a: sh -c 'setsid sleep 1000 & echo holder $!; exit 0'\n";
    let mut init = Spec::procfile(procfile).start();
    let holder = init.pid_from("a", "holder");
    let code = init.wait_exit(crate::harness::DEADLINE);
    // SAFETY: kill has no memory effects.
    unsafe { nix::libc::kill(holder, nix::libc::SIGKILL) };
    assert_eq!(code, 0);
    init.expect(
        "sidecar-init: a exited with code 0 (its output pipe is still held open by another process); no daemons left",
    );
}

#[test]
fn a_line_logged_at_a_deadline_goes_out_without_another_wake_up() {
    // `a` exits, its pipe held open by a background sleep in the same
    // group. One second later its drain deadline passes and the exit line
    // is logged; nothing else happens after that (no deadline, no output,
    // no signal), so the line must go out on its own.
    let procfile = "\
a: sh -c 'sleep 1000 & echo holder $!; exit 3'
steady: sh -c 'echo ready; exec sleep 1000'
";
    let mut init = Spec::procfile(procfile).start();
    init.wait_for("[steady] ready");
    let holder = init.pid_from("a", "holder");
    init.wait_for(
        "sidecar-init: a exited with code 3 (its output pipe is still held open by another process)",
    );
    // SAFETY: kill has no memory effects.
    unsafe { nix::libc::kill(holder, nix::libc::SIGKILL) };
    init.signal(nix::libc::SIGTERM);
    assert_eq!(init.wait_exit(crate::harness::DEADLINE), 3);
}
