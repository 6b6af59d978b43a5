//! The readiness and liveness checks of SPEC §8 (`--ready`, `--live`):
//! their text form and its canonical rendering. No I/O here: running a
//! check is the event loop's business.
//!
//! ```
//! use sidecar_init::check::Check;
//!
//! let c = Check::parse("tcp:3128").unwrap();
//! assert_eq!(c.to_string(), "tcp:127.0.0.1:3128");
//! assert!(c.is_polled());
//!
//! let c = Check::parse("http:8080/healthz").unwrap();
//! assert_eq!(c.to_string(), "http://127.0.0.1:8080/healthz");
//!
//! let e = Check::parse("tcp:db:5432").unwrap_err();
//! assert!(e.contains("never does DNS"), "{e}");
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use crate::{grammar, procfile};

/// A readiness or liveness check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// A TCP connection to addr succeeds. The port is never 0.
    Tcp(SocketAddr),
    /// A GET of `path` answers 2xx or 3xx. `host` is the Host header value (as written, with the port).
    ///
    /// `addr`'s port is never 0; `host` is the address as written
    /// (`127.0.0.1:8080`, `localhost`, `[::1]:80`), for the Host header;
    /// `path` starts with `/` and holds no blank or control character,
    /// so it fits a request line as it is.
    Http {
        addr: SocketAddr,
        host: String,
        path: String,
    },
    /// The path exists. Never empty, never holds a NUL byte; may be
    /// relative.
    File(PathBuf),
    /// The command (split like a Procfile command: procfile::split_words) exits 0.
    /// At least one word; no word holds a NUL byte.
    Exec(Vec<String>),
    /// The daemon writes a line containing this text (non-empty, no newline).
    Line(String),
    /// The daemon sends READY=1 over NOTIFY_SOCKET (sd_notify).
    Notify,
}

/// Every form, for errors about text that is no check at all.
const ALL_FORMS: &str = "tcp:PORT, tcp:HOST:PORT, http:PORT/PATH, http://HOST:PORT/PATH, \
                         file:PATH, exec:COMMAND, line:TEXT, notify";
const TCP_FORMS: &str = "tcp:PORT, tcp:HOST:PORT";
const HTTP_FORMS: &str = "http:PORT/PATH, http://HOST:PORT/PATH, http://HOST/PATH";

impl Check {
    /// Parses one check (SPEC §8): `tcp:PORT`, `tcp:HOST:PORT`,
    /// `http:PORT/PATH`, `http:PORT` (path `/`), `http://HOST:PORT/PATH`,
    /// `http://HOST/PATH` (port 80), `file:PATH`, `exec:COMMAND`,
    /// `line:TEXT` or `notify`. The kind before the `:` is
    /// case-insensitive; the rest is taken as written.
    ///
    /// HOST is an IP literal (`[::1]` for IPv6) or `localhost`
    /// (127.0.0.1), never a name to resolve: sidecar-init does no DNS
    /// lookups, which would block its one thread. Ports are 1 to 65535.
    /// Errors name the problem and the forms, e.g. "'tcp:x' is not a
    /// check: 'x' is not a port (1 to 65535) (tcp:PORT, tcp:HOST:PORT)".
    pub fn parse(text: &str) -> Result<Check, String> {
        parse_check(text).map_err(|e| grammar::printable(&e))
    }

    /// Polled on an interval (tcp, http, file, exec) rather than event-driven (line, notify).
    pub fn is_polled(&self) -> bool {
        match self {
            Check::Tcp(_) | Check::Http { .. } | Check::File(_) | Check::Exec(_) => true,
            Check::Line(_) | Check::Notify => false,
        }
    }
}

/// [`Check::parse`] before control characters are escaped.
fn parse_check(text: &str) -> Result<Check, String> {
    let bad = |why: String, forms: &str| format!("'{text}' is not a check: {why} ({forms})");
    if text.eq_ignore_ascii_case("notify") {
        return Ok(Check::Notify);
    }
    let Some((kind, rest)) = text.split_once(':') else {
        return Err(format!("'{text}' is not a check ({ALL_FORMS})"));
    };
    match kind.to_ascii_lowercase().as_str() {
        "tcp" => {
            let (host, port) = split_host_port(rest).map_err(|why| bad(why, TCP_FORMS))?;
            let addr = match port {
                Some(port) => {
                    let port = parse_port(port).map_err(|why| bad(why, TCP_FORMS))?;
                    let ip = parse_host(host).map_err(|why| bad(why, TCP_FORMS))?;
                    SocketAddr::new(ip, port)
                }
                None if host.starts_with('[') => {
                    return Err(bad(format!("no port after {host}"), TCP_FORMS));
                }
                None => {
                    let port = parse_port(host).map_err(|why| bad(why, TCP_FORMS))?;
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
                }
            };
            Ok(Check::Tcp(addr))
        }
        "http" => parse_http(rest).map_err(|why| bad(why, HTTP_FORMS)),
        "file" => {
            if rest.is_empty() {
                Err(bad("the path is empty".into(), "file:PATH"))
            } else if rest.contains('\0') {
                Err(bad("the path holds a NUL byte".into(), "file:PATH"))
            } else {
                Ok(Check::File(PathBuf::from(rest)))
            }
        }
        "exec" => procfile::split_words(rest)
            .map(Check::Exec)
            .map_err(|why| bad(why, "exec:COMMAND")),
        "line" => {
            if rest.is_empty() {
                Err(bad("the text is empty".into(), "line:TEXT"))
            } else if rest.contains('\n') {
                Err(bad("a line cannot hold a newline".into(), "line:TEXT"))
            } else {
                Ok(Check::Line(rest.to_string()))
            }
        }
        _ => Err(format!("'{text}' is not a check ({ALL_FORMS})")),
    }
}

/// The part of an `http:` check after `http:`: `PORT[/PATH]` or
/// `//HOST[:PORT][/PATH]`.
fn parse_http(rest: &str) -> Result<Check, String> {
    let (addr, host, path) = match rest.strip_prefix("//") {
        Some(url) => {
            let (authority, path) = split_path(url);
            if authority.is_empty() {
                return Err("no host".into());
            }
            let (host, port) = split_host_port(authority)?;
            let port = match port {
                Some(port) => parse_port(port)?,
                None => 80,
            };
            let addr = SocketAddr::new(parse_host(host)?, port);
            (addr, authority.to_string(), path)
        }
        None => {
            let (port, path) = split_path(rest);
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), parse_port(port)?);
            (addr, addr.to_string(), path)
        }
    };
    let path = if path.is_empty() { "/" } else { path };
    if let Some(c) = path.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "the path holds {c:?}: a path has no blank or control character"
        ));
    }
    Ok(Check::Http {
        addr,
        host,
        path: path.to_string(),
    })
}

/// `text` cut before its first `/`: the part before and the path (empty
/// when there is no `/`).
fn split_path(text: &str) -> (&str, &str) {
    text.split_at(text.find('/').unwrap_or(text.len()))
}

/// `HOST:PORT` or `HOST` (where HOST may be a bracketed IPv6 address) cut
/// into the host and the port, if there is one; not yet checked.
fn split_host_port(text: &str) -> Result<(&str, Option<&str>), String> {
    if text.starts_with('[') {
        let Some(end) = text.find(']') else {
            return Err(format!("'{text}' has no closing ']'"));
        };
        let (host, after) = text.split_at(end + 1);
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(format!("'{after}' after {host} is not ':PORT'")),
        };
    }
    Ok(match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    })
}

/// A port, 1 to 65535, in decimal digits.
fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port) if port > 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(format!("'{text}' is not a port (1 to 65535)")),
    }
}

/// An IPv4 address, `[IPv6]` or `localhost`.
fn parse_host(host: &str) -> Result<IpAddr, String> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| format!("'{v6}' is not an IPv6 address"));
    }
    if let Ok(v4) = host.parse::<Ipv4Addr>() {
        return Ok(IpAddr::V4(v4));
    }
    if host.parse::<Ipv6Addr>().is_ok() {
        return Err(format!("an IPv6 address goes in brackets: [{host}]"));
    }
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    Err(format!(
        "'{host}' is not an IP address or localhost (sidecar-init never does DNS: \
         a lookup would block its one thread)"
    ))
}

/// The canonical text, which [`Check::parse`] reads back as the same check:
/// `tcp:127.0.0.1:3128`, `tcp:[::1]:80`, `http://127.0.0.1:8080/healthz`,
/// `file:/run/ready`, `exec:wget -qO- localhost` (words quoted with
/// `procfile::quote` where needed), `line:TEXT`, `notify`.
impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Tcp(addr) => write!(f, "tcp:{addr}"),
            Check::Http { host, path, .. } => write!(f, "http://{host}{path}"),
            Check::File(path) => write!(f, "file:{}", path.display()),
            Check::Exec(argv) => {
                f.write_str("exec:")?;
                for (i, word) in argv.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    f.write_str(&procfile::quote(word))?;
                }
                Ok(())
            }
            Check::Line(text) => write!(f, "line:{text}"),
            Check::Notify => f.write_str("notify"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Check {
        let c = Check::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let canonical = c.to_string();
        assert_eq!(
            Check::parse(&canonical),
            Ok(c.clone()),
            "{text:?} shown as {canonical:?}"
        );
        c
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("a test address")
    }

    fn http(a: &str, host: &str, path: &str) -> Check {
        Check::Http {
            addr: addr(a),
            host: host.into(),
            path: path.into(),
        }
    }

    #[test]
    fn tcp_forms() {
        assert_eq!(ok("tcp:3128"), Check::Tcp(addr("127.0.0.1:3128")));
        assert_eq!(ok("tcp:10.0.0.2:5432"), Check::Tcp(addr("10.0.0.2:5432")));
        assert_eq!(ok("tcp:localhost:80"), Check::Tcp(addr("127.0.0.1:80")));
        assert_eq!(ok("tcp:[::1]:80"), Check::Tcp(addr("[::1]:80")));
        assert_eq!(ok("TCP:65535"), Check::Tcp(addr("127.0.0.1:65535")));
        assert_eq!(ok("tcp:3128").to_string(), "tcp:127.0.0.1:3128");
        assert_eq!(ok("tcp:[::1]:80").to_string(), "tcp:[::1]:80");
        assert_eq!(
            ok("tcp:[::ffff:1.2.3.4]:1").to_string(),
            "tcp:[::ffff:1.2.3.4]:1"
        );
    }

    #[test]
    fn http_forms() {
        assert_eq!(
            ok("http:8080/healthz"),
            http("127.0.0.1:8080", "127.0.0.1:8080", "/healthz")
        );
        assert_eq!(
            ok("http:8080"),
            http("127.0.0.1:8080", "127.0.0.1:8080", "/")
        );
        assert_eq!(
            ok("http://127.0.0.1:8080/healthz"),
            http("127.0.0.1:8080", "127.0.0.1:8080", "/healthz")
        );
        assert_eq!(
            ok("http://localhost:9000/x?a=b&c"),
            http("127.0.0.1:9000", "localhost:9000", "/x?a=b&c")
        );
        assert_eq!(
            ok("http://10.1.2.3/ready"),
            http("10.1.2.3:80", "10.1.2.3", "/ready")
        );
        assert_eq!(ok("http://[::1]:81/"), http("[::1]:81", "[::1]:81", "/"));
        assert_eq!(ok("http://[::1]/a"), http("[::1]:80", "[::1]", "/a"));
        assert_eq!(ok("http://[::1]"), http("[::1]:80", "[::1]", "/"));
        assert_eq!(
            ok("http:8080/healthz").to_string(),
            "http://127.0.0.1:8080/healthz"
        );
        assert_eq!(
            ok("http://localhost:9000/x").to_string(),
            "http://localhost:9000/x"
        );
        assert_eq!(ok("http://[::1]").to_string(), "http://[::1]/");
    }

    #[test]
    fn file_exec_line_notify() {
        assert_eq!(ok("file:/run/ready"), Check::File("/run/ready".into()));
        assert_eq!(ok("file:ready flag"), Check::File("ready flag".into()));
        assert_eq!(ok("file:/run/ready").to_string(), "file:/run/ready");
        assert_eq!(
            ok("exec:wget -qO- localhost"),
            Check::Exec(vec!["wget".into(), "-qO-".into(), "localhost".into()])
        );
        assert_eq!(
            ok("exec:sh -c 'test -e /x'"),
            Check::Exec(vec!["sh".into(), "-c".into(), "test -e /x".into()])
        );
        assert_eq!(
            ok("exec:wget -qO- localhost").to_string(),
            "exec:wget -qO- localhost"
        );
        assert_eq!(
            ok("exec:sh -c 'test -e /x'").to_string(),
            "exec:sh -c 'test -e /x'"
        );
        assert_eq!(ok("exec:printf 'a\nb'").to_string(), "exec:printf 'a\nb'");
        assert_eq!(ok("line:listening on"), Check::Line("listening on".into()));
        assert_eq!(ok("line: ready:"), Check::Line(" ready:".into()));
        assert_eq!(ok("line:ready").to_string(), "line:ready");
        assert_eq!(ok("notify"), Check::Notify);
        assert_eq!(ok("NOTIFY"), Check::Notify);
        assert_eq!(ok("notify").to_string(), "notify");
    }

    #[test]
    fn polled_or_event_driven() {
        for (text, polled) in [
            ("tcp:1", true),
            ("http:1", true),
            ("file:/x", true),
            ("exec:true", true),
            ("line:x", false),
            ("notify", false),
        ] {
            assert_eq!(ok(text).is_polled(), polled, "{text}");
        }
    }

    #[test]
    fn errors_name_the_problem_and_the_forms() {
        let all = "(tcp:PORT, tcp:HOST:PORT, http:PORT/PATH, http://HOST:PORT/PATH, file:PATH, exec:COMMAND, line:TEXT, notify)";
        let tcp = "(tcp:PORT, tcp:HOST:PORT)";
        let http = "(http:PORT/PATH, http://HOST:PORT/PATH, http://HOST/PATH)";
        let dns = "is not an IP address or localhost (sidecar-init never does DNS: a lookup would block its one thread)";
        let cases: Vec<(&str, String)> = vec![
            ("", format!("'' is not a check {all}")),
            ("3128", format!("'3128' is not a check {all}")),
            ("udp:53", format!("'udp:53' is not a check {all}")),
            ("notify:x", format!("'notify:x' is not a check {all}")),
            (
                "tcp:x",
                format!("'tcp:x' is not a check: 'x' is not a port (1 to 65535) {tcp}"),
            ),
            (
                "tcp:",
                format!("'tcp:' is not a check: '' is not a port (1 to 65535) {tcp}"),
            ),
            (
                "tcp:0",
                format!("'tcp:0' is not a check: '0' is not a port (1 to 65535) {tcp}"),
            ),
            (
                "tcp:65536",
                format!("'tcp:65536' is not a check: '65536' is not a port (1 to 65535) {tcp}"),
            ),
            (
                "tcp:+80",
                format!("'tcp:+80' is not a check: '+80' is not a port (1 to 65535) {tcp}"),
            ),
            (
                "tcp: 80",
                format!("'tcp: 80' is not a check: ' 80' is not a port (1 to 65535) {tcp}"),
            ),
            (
                "tcp:db:5432",
                format!("'tcp:db:5432' is not a check: 'db' {dns} {tcp}"),
            ),
            (
                "tcp::80",
                format!("'tcp::80' is not a check: the host is empty {tcp}"),
            ),
            (
                "tcp:::1:80",
                format!(
                    "'tcp:::1:80' is not a check: an IPv6 address goes in brackets: [::1] {tcp}"
                ),
            ),
            (
                "tcp:[x]:80",
                format!("'tcp:[x]:80' is not a check: 'x' is not an IPv6 address {tcp}"),
            ),
            (
                "tcp:[::1]",
                format!("'tcp:[::1]' is not a check: no port after [::1] {tcp}"),
            ),
            (
                "tcp:[::1:80",
                format!("'tcp:[::1:80' is not a check: '[::1:80' has no closing ']' {tcp}"),
            ),
            (
                "tcp:[::1]80",
                format!("'tcp:[::1]80' is not a check: '80' after [::1] is not ':PORT' {tcp}"),
            ),
            (
                "tcp:[::1]:",
                format!("'tcp:[::1]:' is not a check: '' is not a port (1 to 65535) {tcp}"),
            ),
            (
                "http://[::1/",
                format!("'http://[::1/' is not a check: '[::1' has no closing ']' {http}"),
            ),
            (
                "tcp:1.2.3:80",
                format!("'tcp:1.2.3:80' is not a check: '1.2.3' {dns} {tcp}"),
            ),
            (
                "http:x/y",
                format!("'http:x/y' is not a check: 'x' is not a port (1 to 65535) {http}"),
            ),
            (
                "http:/y",
                format!("'http:/y' is not a check: '' is not a port (1 to 65535) {http}"),
            ),
            (
                "http://",
                format!("'http://' is not a check: no host {http}"),
            ),
            (
                "http:///x",
                format!("'http:///x' is not a check: no host {http}"),
            ),
            (
                "http://example.com/",
                format!("'http://example.com/' is not a check: 'example.com' {dns} {http}"),
            ),
            (
                "http://1.2.3.4:0/",
                format!(
                    "'http://1.2.3.4:0/' is not a check: '0' is not a port (1 to 65535) {http}"
                ),
            ),
            (
                "http://1.2.3.4:/",
                format!("'http://1.2.3.4:/' is not a check: '' is not a port (1 to 65535) {http}"),
            ),
            (
                "http://u@1.2.3.4/",
                format!("'http://u@1.2.3.4/' is not a check: 'u@1.2.3.4' {dns} {http}"),
            ),
            (
                "http:80/a b",
                format!(
                    "'http:80/a b' is not a check: the path holds ' ': a path has no blank or control character {http}"
                ),
            ),
            (
                "http:80/a\tb",
                format!(
                    "'http:80/a\\tb' is not a check: the path holds '\\t': a path has no blank or control character {http}"
                ),
            ),
            (
                "http:80/a\r\n",
                format!(
                    "'http:80/a\\r\\n' is not a check: the path holds '\\r': a path has no blank or control character {http}"
                ),
            ),
            (
                "file:",
                "'file:' is not a check: the path is empty (file:PATH)".into(),
            ),
            (
                "file:a\0b",
                "'file:a\\0b' is not a check: the path holds a NUL byte (file:PATH)".into(),
            ),
            (
                "exec:",
                "'exec:' is not a check: empty command (exec:COMMAND)".into(),
            ),
            (
                "exec:  ",
                "'exec:  ' is not a check: empty command (exec:COMMAND)".into(),
            ),
            (
                "exec:a 'b",
                "'exec:a 'b' is not a check: unterminated single quote (exec:COMMAND)".into(),
            ),
            (
                "exec:a\nb",
                "'exec:a\\nb' is not a check: a command must be a single line (exec:COMMAND)"
                    .into(),
            ),
            (
                "line:",
                "'line:' is not a check: the text is empty (line:TEXT)".into(),
            ),
            (
                "line:a\nb",
                "'line:a\\nb' is not a check: a line cannot hold a newline (line:TEXT)".into(),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Check::parse(text), Err(want), "{text:?}");
        }
    }
}
