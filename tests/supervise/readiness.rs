//! Start order by readiness, one-shot tasks and the stop order (SPEC §8).

use std::time::Duration;

use nix::libc::SIGTERM;

use crate::harness::{DEADLINE, Spec, cpu_and_wakeups, free_port, wait_file};

/// `server.py PORT DELAY [http STATUS]`: after DELAY seconds listens on
/// 127.0.0.1:PORT; answers HTTP requests with STATUS in http mode. Says
/// `listening` once it does.
const SERVER: &str = r#"import signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
port, delay = int(sys.argv[1]), float(sys.argv[2])
mode = sys.argv[3] if len(sys.argv) > 3 else "tcp"
time.sleep(delay)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(64)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    if mode == "http":
        c.recv(4096)
        c.sendall(("HTTP/1.0 %s X\r\nContent-Length: 0\r\n\r\n" % sys.argv[4]).encode())
    c.close()
"#;

/// `client.py PORT`: connects once; says whether it could.
const CLIENT: &str = r#"import socket, sys, time
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()
    print("reached the server", flush=True)
except OSError as e:
    print("could not reach the server: %s" % e, flush=True)
    sys.exit(1)
while True:
    time.sleep(1000)
"#;

/// `notifier.py`: prints NOTIFY_SOCKET, waits for the file `go`, then sends
/// READY=1 there itself.
const NOTIFIER: &str = r#"import os, socket, sys, time
path = os.environ.get("NOTIFY_SOCKET", "")
print("socket " + path, flush=True)
while not os.path.exists("go"):
    time.sleep(0.01)
addr = "\0" + path[1:] if path.startswith("@") else path
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"STATUS=warming up\nREADY=1\n", addr)
print("sent READY=1", flush=True)
while True:
    time.sleep(1000)
"#;

/// A daemon that says `ready` and then idles until signalled.
const IDLE: &str = "sh -c 'echo up; while :; do sleep 1 & wait $!; done'";

fn index(init: &crate::harness::Init, needle: &str) -> usize {
    match init.lines().iter().position(|l| l.contains(needle)) {
        Some(i) => i,
        None => init.fail(&format!("no line containing {needle:?}")),
    }
}

#[test]
fn tcp_readiness_orders_the_start_of_a_dependent() {
    let port = free_port();
    let procfile = format!("db: python3 server.py {port} 0.5\nweb: python3 client.py {port}\n");
    let mut init = Spec::procfile(&procfile)
        .file("server.py", SERVER)
        .file("client.py", CLIENT)
        .args(&["--ready", &format!("db=tcp:{port}"), "--after", "web=db"])
        .start();
    init.wait_for("[web] reached the server");
    let ready = index(
        &init,
        &format!("sidecar-init: db is ready (tcp:127.0.0.1:{port}) after "),
    );
    let start = index(&init, "sidecar-init: starting web");
    assert!(ready < start, "web started before db was ready");
    init.expect_not("could not reach");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
}

#[test]
fn http_readiness_wants_a_2xx_or_3xx() {
    let (ok, bad) = (free_port(), free_port());
    let procfile = format!(
        "good: python3 server.py {ok} 0.3 http 204\nbad: python3 server.py {bad} 0 http 503\nafter-good: {IDLE}\n"
    );
    let mut init = Spec::procfile(&procfile)
        .file("server.py", SERVER)
        .args(&[
            "--ready",
            &format!("good=http:{ok}/health,bad=http://127.0.0.1:{bad}/"),
            "--after",
            "after-good=good",
            "--ready-timeout",
            "1.5",
            "--grace",
            "1",
        ])
        .start();
    init.wait_for(&format!(
        "good is ready (http://127.0.0.1:{ok}/health) after"
    ));
    init.wait_for("[after-good] up");
    init.wait_for(&format!(
        "bad not ready after 1.5s (http://127.0.0.1:{bad}/: HTTP 503 X); stopping it"
    ));
    init.wait_for("bad exited with code 124 (not ready in time; ");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 124, "a readiness failure counts");
}

#[test]
fn file_and_exec_readiness() {
    let procfile = format!(
        "maker: sh -c 'sleep 0.3; touch made; sleep 0.3; touch flag; exec sleep 1000'\n\
         on-file: {IDLE}\non-exec: {IDLE}\n"
    );
    let mut init = Spec::procfile(&procfile)
        .args(&[
            "--ready",
            "maker=file:made",
            "--after",
            "on-file=maker",
            "--ready",
            "on-exec=exec:test -e flag",
        ])
        .start();
    // The second --ready wins: on-exec's check is the only one.
    init.wait_for("[on-file] up");
    init.wait_for("[on-exec] up");
    init.wait_for("on-exec is ready (exec:test -e flag) after");
    init.expect_not("maker is ready");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
}

#[test]
fn line_readiness_is_event_driven() {
    let procfile = format!(
        "app: sh -c 'echo starting; sleep 0.3; printf \"listen\"; sleep 0.2; echo \"ing on :8080\"; exec sleep 1000'\n\
         web: {IDLE}\n"
    );
    let mut init = Spec::procfile(&procfile)
        .args(&["--ready", "app=line:listening on", "--after", "web=app"])
        .start();
    init.wait_for("[web] up");
    // The text came in two writes 0.2 s apart: found across them.
    let ready = index(&init, "app is ready (line:listening on) after");
    assert!(index(&init, "[app] starting") < ready);
    init.expect("[app] listening on :8080");
    assert!(
        ready < index(&init, "starting web"),
        "web started before app was ready"
    );
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
}

#[test]
fn notify_readiness_counts_only_the_daemons_own_processes() {
    let procfile = format!("svc: python3 notifier.py\nweb: {IDLE}\n");
    let mut init = Spec::procfile(&procfile)
        .file("notifier.py", NOTIFIER)
        .args(&["--ready", "svc=notify", "--after", "web=svc"])
        .start();
    let needle = "[svc] socket @";
    init.wait_for(needle);
    let out = init.output();
    let name = out
        .lines()
        .find_map(|l| l.strip_prefix("[svc] socket @"))
        .unwrap()
        .to_string();
    // A stranger (this test process) claims readiness for it: ignored.
    let sock = std::os::unix::net::UnixDatagram::unbound().unwrap();
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    sock.send_to_addr(b"READY=1\n", &addr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    init.expect_not("svc is ready");
    init.expect_not("starting web");
    // The daemon itself says so: ready, and web starts.
    std::fs::write(init.dir.path().join("go"), "").unwrap();
    init.wait_for("[web] up");
    let ready = index(&init, "svc is ready (notify) after");
    assert!(ready > index(&init, "[svc] socket @"));
    assert!(ready < index(&init, "starting web"));
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
}

#[test]
fn a_daemon_not_ready_in_time_is_stopped_and_its_dependents_never_start() {
    let procfile = format!("slow: {IDLE}\nweb: {IDLE}\nother: {IDLE}\n");
    let mut init = Spec::procfile(&procfile)
        .args(&[
            "--ready",
            "slow=file:never",
            "--ready-timeout",
            "500ms",
            "--after",
            "web=slow",
        ])
        .start();
    init.wait_for("sidecar-init: web not started: slow failed with code 124");
    init.wait_for("[other] up");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 124);
    init.expect("sidecar-init: slow not ready after 0.5s (file:never: ");
    init.expect(
        "sidecar-init: slow exited with code 124 (not ready in time; killed by SIGTERM); leaving surviving daemons running",
    );
    init.expect_not("starting web");
    init.expect("[other] up");
}

#[test]
fn one_shots_finish_before_their_dependents_start() {
    let procfile = format!("migrate: sh -c 'echo migrating; sleep 0.2; echo done'\nweb: {IDLE}\n");
    let mut init = Spec::procfile(&procfile)
        .args(&["--oneshot", "migrate", "--after", "web=migrate"])
        .start();
    init.wait_for("[web] up");
    let finished = index(&init, "sidecar-init: migrate finished (in ");
    assert!(finished > index(&init, "[migrate] done"));
    assert!(finished < index(&init, "starting web"));
    init.expect_not("migrate exited");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
    assert_eq!(init.output().matches("[migrate] migrating").count(), 1);
}

#[test]
fn a_failed_one_shot_keeps_its_dependents_from_starting() {
    let procfile = format!("migrate: sh -c 'exit 3'\nweb: {IDLE}\nother: {IDLE}\n");
    let mut init = Spec::procfile(&procfile)
        .args(&["--oneshot", "migrate", "--after", "web=migrate"])
        .start();
    init.wait_for("sidecar-init: web not started: migrate failed with code 3");
    init.wait_for("[other] up");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 3);
    init.expect_not("starting web");
}

#[test]
fn an_on_failure_one_shot_is_retried_until_it_succeeds() {
    let procfile = format!(
        "migrate: sh -c 'if [ -e tried ]; then echo ok; else touch tried; exit 1; fi'\nweb: {IDLE}\n"
    );
    let mut init = Spec::procfile(&procfile)
        .args(&[
            "--oneshot",
            "migrate",
            "--restart",
            "migrate=on-failure",
            "--restart-delay",
            "100ms",
            "--after",
            "web=migrate",
        ])
        .start();
    init.wait_for("[web] up");
    init.expect("migrate exited with code 1; restarting in 0.1s (restart 1)");
    init.expect("migrate finished");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0, "the last run counts");
}

#[test]
fn only_one_shots_run_to_completion_and_exit() {
    let (code, out, init) = Spec::procfile("a: true\nb: sh -c 'sleep 0.1'\n")
        .args(&["--oneshot", "a,b", "--after", "b=a"])
        .run();
    assert_eq!(code, 0, "{out}");
    init.expect("a finished");
    init.expect("b finished");
}

#[test]
fn dependents_stop_first() {
    // web depends on db; at shutdown db gets its SIGTERM only once web has
    // exited, so db's trap sees web gone.
    let procfile = "\
db: sh -c 'trap \"echo db got TERM; exit 0\" TERM; echo up; while :; do sleep 1 & wait $!; done'
web: sh -c 'trap \"echo web stopping; sleep 0.3; echo web done; exit 0\" TERM; echo up; while :; do sleep 1 & wait $!; done'
";
    let mut init = Spec::procfile(procfile)
        .args(&["--after", "web=db"])
        .start();
    init.wait_for("[web] up");
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
    init.expect("sidecar-init: shutting down (SIGTERM); forwarding SIGTERM, dependents first");
    let web_done = index(&init, "sidecar-init: web exited with code 0");
    let db_term = index(&init, "[db] db got TERM");
    assert!(web_done < db_term, "db was signalled before web had exited");
}

#[test]
fn the_stop_order_stays_within_one_grace_period() {
    // web ignores SIGTERM: at the grace's end both are SIGKILLed, db never
    // having had its turn.
    let procfile = "\
db: sh -c 'trap \"echo db got TERM; exit 0\" TERM; echo up; while :; do sleep 1 & wait $!; done'
web: sh -c 'trap \"\" TERM; echo up; while :; do sleep 1; done'
";
    let mut init = Spec::procfile(procfile)
        .args(&["--after", "web=db", "--grace", "0.5"])
        .start();
    init.wait_for("[web] up");
    let sent = std::time::Instant::now();
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 137);
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "more than one grace period"
    );
    init.expect("grace (0.5s) elapsed; SIGKILL on db, web");
    init.expect_not("db got TERM");
}

#[test]
fn cycles_and_unknown_names_are_configuration_errors() {
    for (args, needle) in [
        (
            &["--after", "a=b,b=a"][..],
            "--after: a dependency cycle: a → b → a",
        ),
        (
            &["--after", "a=ghost"][..],
            "--after: a=ghost: no daemon named 'ghost'",
        ),
        (
            &["--ready", "ghost=tcp:1"][..],
            "--ready: no daemon named 'ghost'",
        ),
        (
            &["--oneshot", "a", "--restart", "always"][..],
            "'always' for the one-shot 'a'",
        ),
    ] {
        let (code, out, init) = Spec::procfile("a: touch spawned\nb: touch spawned\n")
            .args(args)
            .run();
        assert_eq!(code, 2, "{args:?}: {out}");
        assert_eq!(init.lines().len(), 1, "{out}");
        assert!(out.contains(needle), "{needle}: {out}");
        assert!(!init.dir.path().join("spawned").exists());
    }
}

#[test]
fn the_selection_drops_options_for_unselected_daemons_with_a_warning() {
    let procfile = format!("db: {IDLE}\nweb: {IDLE}\n");
    let mut init = Spec::procfile(&procfile)
        .args(&["--after", "web=db", "--ready", "db=file:never"])
        .env("CLAUDE_BOTTLE_SIDECAR_DAEMONS", "web")
        .start();
    init.wait_for("[web] up");
    init.expect(
        "sidecar-init: --ready: ignored for daemons not selected (CLAUDE_BOTTLE_SIDECAR_DAEMONS): db",
    );
    init.expect(
        "sidecar-init: --after: ignored for daemons not selected (CLAUDE_BOTTLE_SIDECAR_DAEMONS): web=db",
    );
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
}

#[test]
fn check_shows_checks_dependencies_and_kinds() {
    let (code, out, _) = Spec::procfile("db: sh -c true\nmigrate: sh -c true\nweb: sh -c true\n")
        .args(&[
            "--check",
            "--ready",
            "db=tcp:5432",
            "--oneshot",
            "migrate",
            "--after",
            "migrate=db,web=migrate",
        ])
        .run();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("db: sh -c true\n#   daemon; restart never; ready tcp:127.0.0.1:5432;"),
        "{out}"
    );
    assert!(
        out.contains("migrate: sh -c true\n#   oneshot; restart never; after db;"),
        "{out}"
    );
    assert!(
        out.contains("web: sh -c true\n#   daemon; restart never; after migrate;"),
        "{out}"
    );
}

#[test]
fn once_everything_is_ready_the_supervisor_is_idle() {
    let port = free_port();
    let procfile = format!("db: python3 server.py {port} 0.2\nweb: {IDLE}\n");
    let mut init = Spec::procfile(&procfile)
        .file("server.py", SERVER)
        .args(&[
            "--ready",
            &format!("db=tcp:{port}"),
            "--after",
            "web=db",
            "--ready-interval",
            "50ms",
        ])
        .start();
    init.wait_for("[web] up");
    std::thread::sleep(Duration::from_millis(200));
    let before = cpu_and_wakeups(init.pid);
    std::thread::sleep(Duration::from_secs(2));
    let after = cpu_and_wakeups(init.pid);
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
    assert!(
        after.1 - before.1 <= 1,
        "woke up while every daemon was ready: {before:?} -> {after:?}"
    );
    assert!(after.0 - before.0 <= 1, "used CPU: {before:?} -> {after:?}");
}

#[test]
fn ready_events_reach_the_notify_command() {
    let mut init = Spec::procfile("app: sh -c 'touch ok; exec sleep 1000'\n")
        .args(&[
            "--ready",
            "app=file:ok",
            "--notify",
            "sh -c 'echo $SIDECAR_INIT_EVENT $SIDECAR_INIT_EVENT_DAEMON >> events'",
        ])
        .start();
    init.wait_for("app is ready");
    let events = init.dir.path().join("events");
    assert!(wait_file(&events, DEADLINE), "no event");
    let deadline = std::time::Instant::now() + DEADLINE;
    while !std::fs::read_to_string(&events)
        .unwrap_or_default()
        .contains("ready app")
    {
        assert!(std::time::Instant::now() < deadline, "no ready event");
        std::thread::sleep(Duration::from_millis(10));
    }
    init.signal(SIGTERM);
    assert_eq!(init.wait_exit(DEADLINE), 0);
}
