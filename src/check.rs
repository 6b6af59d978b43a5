use std::net::SocketAddr;
use std::path::PathBuf;
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    Tcp(SocketAddr),
    Http { addr: SocketAddr, host: String, path: String },
    File(PathBuf),
    Exec(Vec<String>),
    Line(String),
    Notify,
}
