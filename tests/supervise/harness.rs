//! Runs the real sidecar-init binary against real child processes.
//!
//! Every wait has a deadline; every failure prints the command and all the
//! output captured so far.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The default deadline for anything a test waits for. Generous: the
/// machines are shared and noisy, and a passing test never waits it out.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// The binary under test: this build's, or the one
/// `SIDECAR_INIT_TEST_SUPERVISE_BINARY` names (to run these tests against
/// another build, e.g. an older commit's, and see which of them fail there).
pub fn binary() -> &'static str {
    static BINARY: OnceLock<String> = OnceLock::new();
    BINARY.get_or_init(|| {
        std::env::var("SIDECAR_INIT_TEST_SUPERVISE_BINARY")
            .ok()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_sidecar-init").to_string())
    })
}

/// A scratch directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sidecar-init-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How to start sidecar-init.
pub struct Spec {
    pub procfile: Option<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Run as PID 1 of a new PID namespace (`unshare --pid --fork --mount-proc`).
    pub pid1: bool,
    /// Start with these extra descriptors open (not close-on-exec).
    pub leak_fds: bool,
    pub stdout: Reader,
    /// Files written into the test's directory before the start.
    pub files: Vec<(String, String)>,
    /// A command that starts sidecar-init: it gets the binary and its
    /// arguments as its own last arguments and must exec them (e.g. to
    /// enter a cgroup, or to start it with a signal mask).
    pub wrapper: Vec<String>,
}

/// What the test does with sidecar-init's stdout.
#[derive(Clone, Debug)]
pub enum Reader {
    /// Read everything as it comes.
    Read,
    /// Never read: the pipe fills up and stays full.
    Stall,
    /// Read until this text appears, then close the read end (EPIPE).
    CloseAfter(String),
    /// Read nothing until this file (relative to the test's directory)
    /// exists, then read everything: a log reader that fell behind.
    StallUntil(String),
    /// Read steadily at about this many bytes per second, in small reads:
    /// a log reader that is slow but never stalls.
    Slow(usize),
    /// Stdout is this file (not a pipe): the output is read from it.
    File(PathBuf),
}

impl Spec {
    pub fn procfile(text: &str) -> Spec {
        Spec {
            procfile: Some(text.to_string()),
            args: Vec::new(),
            env: Vec::new(),
            pid1: false,
            leak_fds: false,
            stdout: Reader::Read,
            files: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    /// A file written into the test's directory (sidecar-init's working
    /// directory) before sidecar-init starts.
    pub fn file(mut self, name: &str, contents: &str) -> Spec {
        self.files.push((name.to_string(), contents.to_string()));
        self
    }

    /// Starts sidecar-init through `wrapper` (see [`Spec::wrapper`]).
    pub fn wrap(mut self, wrapper: &[&str]) -> Spec {
        self.wrapper = wrapper.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn args(mut self, args: &[&str]) -> Spec {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Spec {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    pub fn pid1(mut self) -> Spec {
        self.pid1 = true;
        self
    }

    pub fn leak_fds(mut self) -> Spec {
        self.leak_fds = true;
        self
    }

    pub fn stdout(mut self, reader: Reader) -> Spec {
        self.stdout = reader;
        self
    }

    pub fn start(self) -> Init {
        Init::start(self)
    }

    /// Runs to completion (within the deadline) and returns the result.
    pub fn run(self) -> (i32, String, Init) {
        let mut init = self.start();
        let code = init.wait_exit(DEADLINE);
        let out = init.output();
        (code, out, init)
    }
}

/// Captured stdout, shared with the reader thread.
#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    eof: bool,
}

/// A running sidecar-init.
pub struct Init {
    child: Child,
    /// The pid sidecar-init itself has, seen from here (differs from the
    /// child's pid when it runs under unshare).
    pub pid: i32,
    captured: Arc<(Mutex<Captured>, Condvar)>,
    reader: Option<JoinHandle<()>>,
    command: String,
    pub dir: TempDir,
    status: Option<ExitStatus>,
    mode: Reader,
}

/// Whether this machine lets us run sidecar-init as PID 1 of a new PID
/// namespace. Tests that need it skip loudly when it does not.
pub fn can_unshare() -> Result<(), String> {
    match Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stderr(Stdio::piped())
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "unshare --pid --fork --mount-proc failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("unshare not runnable: {e}")),
    }
}

/// Prints a loud skip notice (test runners show it with --nocapture, and
/// it is in the test's output either way).
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
    println!("SKIPPED {test}: {why}");
}

impl Init {
    /// The control socket of this run (see `start`).
    pub fn control_socket(&self) -> std::path::PathBuf {
        self.dir.path().join("control.sock")
    }

    fn start(spec: Spec) -> Init {
        let dir = TempDir::new();
        for (name, contents) in &spec.files {
            dir.write(name, contents);
        }
        let mut args = spec.args.clone();
        if let Some(text) = &spec.procfile {
            let p = dir.write("Procfile", text);
            args.insert(0, p.display().to_string());
            args.insert(0, "--procfile".into());
        }
        let mut cmd;
        if let Some((first, rest)) = spec.wrapper.split_first() {
            cmd = Command::new(first);
            cmd.args(rest);
            if spec.pid1 {
                cmd.args(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]);
            }
            cmd.arg(binary());
        } else if spec.pid1 {
            cmd = Command::new("unshare");
            cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child", binary()]);
        } else if spec.leak_fds {
            // A shell opens descriptors 7 and 8 without close-on-exec and
            // execs sidecar-init, which inherits them.
            cmd = Command::new("sh");
            cmd.args(["-c", "exec 7</dev/null 8>>\"$1\"; shift; exec \"$@\"", "sh"]);
            cmd.arg(dir.path().join("leak"));
            cmd.arg(binary());
        } else {
            cmd = Command::new(binary());
        }
        let stdout = match &spec.stdout {
            Reader::File(path) => match std::fs::File::create(path) {
                Ok(f) => Stdio::from(f),
                Err(e) => panic!("create {}: {e}", path.display()),
            },
            _ => Stdio::piped(),
        };
        cmd.args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::inherit());
        // Each run's own control socket: tests run side by side, and the
        // default places are shared (one would answer another's probe).
        cmd.env("SIDECAR_INIT_CONTROL", dir.path().join("control.sock"));
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        // Own process group, so a test's signals and kills never reach the
        // test runner.
        cmd.process_group(0);
        let command = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command}: {e}"));
        let captured: Arc<(Mutex<Captured>, Condvar)> = Arc::default();
        let shared = Arc::clone(&captured);
        let mode = spec.stdout.clone();
        let release = match &mode {
            Reader::StallUntil(name) => Some(dir.path().join(name)),
            _ => None,
        };
        let reader = child.stdout.take().map(|mut stdout| {
            std::thread::spawn(move || {
                let (lock, cvar) = &*shared;
                if let Some(file) = release {
                    // Bounded like every wait: the test fails on its own
                    // deadlines if the file never comes.
                    wait_file(&file, 4 * DEADLINE);
                }
                if let Reader::Stall = mode {
                    // Hold the pipe open without reading until sidecar-init is
                    // gone (the test marks eof), then take what is in it: what
                    // got out to a reader that stalled for good.
                    let mut c = lock.lock().unwrap();
                    while !c.eof {
                        c = cvar.wait(c).unwrap();
                    }
                    drop(c);
                    let leftover = read_what_is_there(&mut stdout);
                    lock.lock().unwrap().bytes = leftover;
                    cvar.notify_all();
                    return;
                }
                let (chunk, rate) = match mode {
                    Reader::Slow(rate) => (16 * 1024, Some(rate as f64)),
                    _ => (64 * 1024, None),
                };
                let started = Instant::now();
                let mut total = 0usize;
                let mut buf = vec![0u8; chunk];
                loop {
                    if let Some(rate) = rate {
                        // Ahead of the rate: wait until it catches up.
                        let due = Duration::from_secs_f64(total as f64 / rate);
                        if let Some(ahead) = due.checked_sub(started.elapsed()) {
                            std::thread::sleep(ahead);
                        }
                    }
                    let n = stdout.read(&mut buf).unwrap_or(0);
                    total += n;
                    let mut c = lock.lock().unwrap();
                    if n == 0 {
                        c.eof = true;
                        cvar.notify_all();
                        return;
                    }
                    c.bytes.extend_from_slice(&buf[..n]);
                    if let Reader::CloseAfter(needle) = &mode {
                        if String::from_utf8_lossy(&c.bytes).contains(needle.as_str()) {
                            // Closing the read end: sidecar-init's next write
                            // gets EPIPE. Mark eof so waits do not hang.
                            c.eof = true;
                            cvar.notify_all();
                            return;
                        }
                    }
                    cvar.notify_all();
                }
            })
        });
        let mut init = Init {
            pid: child.id() as i32,
            child,
            captured,
            reader,
            command,
            dir,
            status: None,
            mode: spec.stdout,
        };
        if spec.pid1 {
            init.pid = init.find_namespace_init();
        }
        init
    }

    /// The host pid of unshare's forked child, i.e. sidecar-init as PID 1.
    fn find_namespace_init(&self) -> i32 {
        let unshare = self.child.id();
        let path = format!("/proc/{unshare}/task/{unshare}/children");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Some(pid) = text.split_whitespace().next().and_then(|p| p.parse().ok()) {
                    if exe_is_sidecar(pid) {
                        return pid;
                    }
                }
            }
            if Instant::now() > deadline {
                self.fail("sidecar-init did not appear under unshare");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Everything written to stdout so far (lossy).
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.raw_output()).into_owned()
    }

    /// Everything written to stdout so far, as bytes.
    pub fn raw_output(&self) -> Vec<u8> {
        if let Reader::File(path) = &self.mode {
            return std::fs::read(path).unwrap_or_default();
        }
        self.captured.0.lock().unwrap().bytes.clone()
    }

    /// Panics with the command and the output.
    pub fn fail(&self, why: &str) -> ! {
        panic!(
            "{why}\n--- command: {}\n--- stdout of sidecar-init:\n{}--- end",
            self.command,
            self.output()
        );
    }

    /// Waits until the output satisfies `pred`.
    pub fn wait_until(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        if let Reader::File(_) = &self.mode {
            while !pred(&self.output()) {
                if Instant::now() >= deadline {
                    self.fail(&format!("timed out waiting for {what}"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            return;
        }
        let (lock, cvar) = &*self.captured;
        let mut c = lock.lock().unwrap();
        loop {
            // Borrowed when valid (it always is): no copy of a long output
            // on every wake-up.
            let met = match std::str::from_utf8(&c.bytes) {
                Ok(text) => pred(text),
                Err(_) => pred(&String::from_utf8_lossy(&c.bytes)),
            };
            if met {
                return;
            }
            let now = Instant::now();
            if now >= deadline || c.eof {
                drop(c);
                let why = if now >= deadline {
                    "timed out"
                } else {
                    "stdout closed"
                };
                self.fail(&format!("{why} waiting for {what}"));
            }
            c = cvar.wait_timeout(c, deadline - now).unwrap().0;
        }
    }

    /// Waits for a line containing `needle`.
    pub fn wait_for(&self, needle: &str) {
        self.wait_until(&format!("{needle:?}"), DEADLINE, |out| out.contains(needle));
    }

    /// Sends a signal to sidecar-init.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory effects.
        let r = unsafe { nix::libc::kill(self.pid, sig) };
        if r != 0 {
            self.fail(&format!("kill({}, {sig}) failed", self.pid));
        }
    }

    /// sidecar-init has not exited yet.
    pub fn running(&mut self) -> bool {
        self.status.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for sidecar-init to exit and for its stdout to close; returns
    /// its exit code. Kills it and fails on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.status {
                break s;
            }
            match self.child.try_wait() {
                Ok(Some(s)) => {
                    self.status = Some(s);
                    break s;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => {
                    let _ = self.child.kill();
                    self.fail(&format!("sidecar-init did not exit within {timeout:?}"));
                }
            }
        };
        match self.mode {
            Reader::Stall => {
                let (lock, cvar) = &*self.captured;
                lock.lock().unwrap().eof = true;
                cvar.notify_all();
                // The reader takes what got out once the pipe is let go.
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
            }
            Reader::File(_) => {}
            _ => self.wait_eof(),
        }
        match status.code() {
            Some(c) => c,
            None => self.fail(&format!("sidecar-init died of a signal: {status:?}")),
        }
    }

    /// Waits until sidecar-init's stdout is closed (every writer gone).
    fn wait_eof(&self) {
        let deadline = Instant::now() + DEADLINE;
        let (lock, cvar) = &*self.captured;
        let mut c = lock.lock().unwrap();
        while !c.eof {
            let now = Instant::now();
            if now >= deadline {
                drop(c);
                self.fail("stdout still open after sidecar-init exited");
            }
            c = cvar.wait_timeout(c, deadline - now).unwrap().0;
        }
    }

    /// Fails unless the output holds `needle`.
    pub fn expect(&self, needle: &str) {
        if !self.output().contains(needle) {
            self.fail(&format!("expected {needle:?} in the output"));
        }
    }

    /// Fails if the output holds `needle`.
    pub fn expect_not(&self, needle: &str) {
        if self.output().contains(needle) {
            self.fail(&format!("did not expect {needle:?} in the output"));
        }
    }

    /// The output's lines.
    pub fn lines(&self) -> Vec<String> {
        self.output().lines().map(str::to_string).collect()
    }

    /// Index of the first line equal to `line`; fails if absent.
    pub fn line_index(&self, line: &str) -> usize {
        match self.lines().iter().position(|l| l == line) {
            Some(i) => i,
            None => self.fail(&format!("expected the line {line:?}")),
        }
    }

    /// Reads `pid <N>` printed by daemon `name` as `[name] <label> <N>`.
    pub fn pid_from(&self, name: &str, label: &str) -> i32 {
        let needle = format!("[{name}] {label} ");
        self.wait_for(&needle);
        let out = self.output();
        let line = out.lines().find(|l| l.starts_with(&needle)).unwrap();
        match line[needle.len()..].trim().parse() {
            Ok(pid) => pid,
            Err(_) => self.fail(&format!("no pid in {line:?}")),
        }
    }
}

impl Drop for Init {
    fn drop(&mut self) {
        {
            let (lock, cvar) = &*self.captured;
            if let Ok(mut c) = lock.lock() {
                if let Reader::Stall = self.mode {
                    c.eof = true;
                }
            }
            cvar.notify_all();
        }
        if self.status.is_none() {
            let _ = self.child.kill();
            // Also the namespace init, for pid1 runs (kill-child does too).
            // SAFETY: kill has no memory effects.
            unsafe {
                nix::libc::kill(self.pid, nix::libc::SIGKILL);
            }
            let _ = self.child.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// What a pipe holds now, without waiting for more (its writers may be
/// gone or not).
fn read_what_is_there(stdout: &mut std::process::ChildStdout) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    let fd = stdout.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = nix::libc::fcntl(fd, nix::libc::F_GETFL);
        nix::libc::fcntl(fd, nix::libc::F_SETFL, flags | nix::libc::O_NONBLOCK);
    }
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = stdout.read(&mut buf) {
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n]);
    }
    bytes
}

/// The value, or a loud skip: `None` after printing why, unless
/// `SIDECAR_INIT_TEST_REQUIRE` (comma-separated) lists `requirement`, which
/// makes it a failure (CI sets it where the machine has what it takes).
pub fn need<T>(test: &str, requirement: &str, got: Result<T, String>) -> Option<T> {
    match got {
        Ok(v) => Some(v),
        Err(why) => {
            let required = std::env::var("SIDECAR_INIT_TEST_REQUIRE").unwrap_or_default();
            if required.split(',').any(|r| r.trim() == requirement) {
                panic!("{test}: SIDECAR_INIT_TEST_REQUIRE has {requirement}, but {why}");
            }
            skip(
                test,
                &format!("{why} (SIDECAR_INIT_TEST_REQUIRE={requirement} makes this a failure)"),
            );
            None
        }
    }
}

fn exe_is_sidecar(pid: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().contains("sidecar-init"))
        .unwrap_or(false)
}

/// The state letter of `pid` (`R`, `S`, `Z`...), or None when it is gone.
pub fn proc_state(pid: i32) -> Option<char> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("State:"))?;
    line["State:".len()..].trim().chars().next()
}

/// utime + stime in clock ticks, and voluntary context switches, of `pid`.
pub fn cpu_and_wakeups(pid: i32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let switches = status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (ticks, switches)
}

/// A TCP port nobody listens on right now (the kernel's pick, released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// Waits until `path` exists.
pub fn wait_file(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Waits until `pid` no longer exists (not even as a zombie).
/// The pid a daemon wrote into `path` (`echo $$ > name.pid`), once the
/// file is there.
/// (A shell creates the file before it writes the pid: an empty or
/// partial file is read again.)
pub fn pid_file(path: &Path) -> i32 {
    assert!(
        wait_file(path, DEADLINE),
        "{} never appeared",
        path.display()
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(pid) = text.strip_suffix('\n').and_then(|t| t.trim().parse().ok()) {
            return pid;
        }
        if Instant::now() > deadline {
            panic!("{}: not a pid: {text:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while proc_state(pid).is_some() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}
