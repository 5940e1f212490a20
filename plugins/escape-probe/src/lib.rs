//! Hostile test agent: tries to leave the sandbox through the filesystem and the network
//! (`std::fs`, `std::net`), so its component imports `wasi:filesystem` and `wasi:sockets`.
//! Under the `virtualized` policy those link but must reach nothing; it reports what each
//! attempt returned. Text params: `addr` to connect to, `file` to read (default
//! `/etc/passwd`).

use baton_sdk::{Agent, Outcome, ParamValue, Task};
use serde_json::json;

struct EscapeProbe;

fn attempt<T>(r: std::io::Result<T>, show: impl FnOnce(T) -> String) -> serde_json::Value {
    match r {
        Ok(v) => json!({ "ok": show(v) }),
        Err(e) => json!({ "error": e.to_string() }),
    }
}

impl Agent for EscapeProbe {
    fn handle(task: Task) -> Result<Outcome, String> {
        let addr = match task.param("addr") {
            Some(ParamValue::Text(a)) => a.clone(),
            _ => "127.0.0.1:9".into(),
        };
        let file = match task.param("file") {
            Some(ParamValue::Text(f)) => f.clone(),
            _ => "/etc/passwd".into(),
        };
        let read = attempt(std::fs::read_to_string(&file), |s| s);
        let root = attempt(std::fs::read_dir("/"), |d| format!("{} entries", d.count()));
        let write = attempt(std::fs::write("/tmp/baton-escape", b"x"), |_| "written".into());
        let socket = attempt(std::net::TcpStream::connect(&addr), |_| "connected".into());
        let lookup = attempt(std::net::ToSocketAddrs::to_socket_addrs("localhost:80"), |a| {
            format!("{} addresses", a.count())
        });
        Outcome::new("tried to escape")
            .json(&json!({
                "read_file": read,
                "list_root": root,
                "write_tmp": write,
                "connect": socket,
                "lookup": lookup,
            }))
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export_agent!(EscapeProbe);
