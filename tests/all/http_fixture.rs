//! What the outbound tests share: a tiny HTTP/1.1 server on `127.0.0.1:0` that records
//! every request it gets and echoes the request's headers back (as `x-echo-<name>`
//! response headers and, line by line, in a chunked body that splits every line across
//! chunks), and meshes of the `fetcher` agent written as real `mesh.toml` text.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton::store::Param;
use baton::{Host, Mesh, Vault};
use serde_json::Value;

use crate::common::{outcome, run, text};

/// The secret the tests put in the vault: it must never reach a guest or the store.
pub const SECRET: &str = "sk-live-7d1f0c2e9a8b4c3d5e6f0a1b2c3d4e5f";

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Lowercased names, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    /// Every value of header `name`.
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// The recording echo server; it stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Start a server on a fresh port of 127.0.0.1.
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, flag) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let log = log.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &log);
                });
            }
        });
        Server {
            addr,
            received,
            stop,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(conn: TcpStream, log: &Mutex<Vec<Received>>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(len) = get("content-length").and_then(|l| l.parse::<usize>().ok()) {
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    log.lock().unwrap().push(Received {
        method,
        path,
        headers: headers.clone(),
        body,
    });

    let mut conn = conn;
    let mut head = String::from("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n");
    for (n, v) in &headers {
        if !["host", "content-length", "transfer-encoding", "connection"].contains(&n.as_str()) {
            head.push_str(&format!("x-echo-{n}: {v}\r\n"));
        }
    }
    head.push_str("connection: close\r\n\r\n");
    conn.write_all(head.as_bytes())?;
    conn.flush()?;
    // Each header line goes out in three chunks, a pause between them, so a long value
    // (the injected credential) is split across body chunks on the host's side too.
    for (n, v) in &headers {
        let line = format!("{n}: {v}\n");
        let bytes = line.as_bytes();
        let thirds = [0, bytes.len() / 3, 2 * bytes.len() / 3, bytes.len()];
        for w in thirds.windows(2) {
            let piece = &bytes[w[0]..w[1]];
            if piece.is_empty() {
                continue;
            }
            write!(conn, "{:x}\r\n", piece.len())?;
            conn.write_all(piece)?;
            conn.write_all(b"\r\n")?;
            conn.flush()?;
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    conn.write_all(b"0\r\n\r\n")?;
    conn.flush()
}

/// A mesh from manifest `text`: `fetcher.wasm` is the fetcher agent, and the demo pair
/// (`researcher.wasm`, `writer.wasm`) is there to show the host lives on.
pub fn mesh(text: &str) -> Mesh {
    Mesh::parse("test.toml", text, |path| {
        Ok(match path.to_str().unwrap() {
            "fetcher.wasm" => baton_artifacts::fetcher::WASM,
            "researcher.wasm" => baton_artifacts::researcher::WASM,
            "writer.wasm" => baton_artifacts::writer::WASM,
            "snoop.wasm" => baton_artifacts::snoop::WASM,
            other => panic!("no component {other}"),
        }
        .to_vec())
    })
    .unwrap()
}

/// The demo pair, to append to a manifest.
pub const DEMO_PAIR: &str = r#"
[[agent]]
id = "researcher"
component = "researcher.wasm"
handoff = ["writer"]

[[agent]]
id = "writer"
component = "writer.wasm"
"#;

/// A vault holding [`SECRET`] as `example`.
pub fn vault() -> Vault {
    Vault::empty().with("example", SECRET)
}

/// Load `mesh` with [`vault`] into a fresh state folder.
pub fn load(mesh: &Mesh) -> (Host, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let host = Host::load_with(mesh, state.path(), &vault()).unwrap();
    (host, state)
}

/// Run `agent` with `params` and return the outcome it stored.
pub async fn fetch(host: &Host, agent: &str, params: Vec<Param>) -> Value {
    let report = run(host, agent, None, params).await;
    outcome(host, &report, agent)
}

/// A GET of `url`.
pub fn get(url: &str) -> Vec<Param> {
    vec![text("url", url)]
}

/// Every file under `dir`, read whole (the redb store, the logs).
pub fn every_file(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(every_file(&path));
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

/// Whether `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}
