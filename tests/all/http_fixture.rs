//! What the outbound tests share: a tiny HTTP/1.1 server on `127.0.0.1:0` that records
//! every request it gets and echoes the request's headers back (as `x-echo-<name>`
//! response headers and, line by line, in a chunked body that splits every line across
//! chunks), over plain TCP or over TLS with a certificate from a CA made for the test;
//! and meshes of the `fetcher` agent written as real `mesh.toml` text.

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

/// A certificate authority made for one test, and a server certificate it signed for
/// `127.0.0.1`.
pub struct TestCa {
    /// The CA's certificate, PEM: what a mesh's `ca_certs` file holds.
    pub pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    /// A fresh CA called `name`, and its server certificate.
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        TestCa {
            pem: ca.pem(),
            server: Arc::new(server),
        }
    }
}

/// The recording echo server; it stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    scheme: &'static str,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Start a server on a fresh port of 127.0.0.1.
    pub fn start() -> Server {
        Server::listen(None)
    }

    /// Start a server on a fresh port of 127.0.0.1 that speaks TLS only, with the
    /// server certificate of `ca`.
    pub fn start_tls(ca: &TestCa) -> Server {
        Server::listen(Some(ca.server.clone()))
    }

    fn listen(tls: Option<Arc<rustls::ServerConfig>>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, flag) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let (log, tls) = (log.clone(), tls.clone());
                std::thread::spawn(move || {
                    // A failed handshake ends here, before anything is recorded.
                    let _ = match tls {
                        Some(config) => rustls::ServerConnection::new(config)
                            .map_err(std::io::Error::other)
                            .and_then(|c| serve(rustls::StreamOwned::new(c, conn), &log)),
                        None => serve(conn, &log),
                    };
                });
            }
        });
        Server {
            addr,
            scheme,
            received,
            stop,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:<port><path>`, or `https://` for a TLS server.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
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

fn serve(conn: impl Read + Write, log: &Mutex<Vec<Received>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn);
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

    // The request was read whole: nothing the buffer holds is lost.
    let conn = reader.get_mut();
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
    mesh_with(text, &[])
}

/// [`mesh`], with `files` (name, contents) beside the manifest too.
pub fn mesh_with(text: &str, files: &[(&str, &[u8])]) -> Mesh {
    Mesh::parse("test.toml", text, |path| {
        let path = path.to_str().unwrap();
        if let Some((_, bytes)) = files.iter().find(|(name, _)| *name == path) {
            return Ok(bytes.to_vec());
        }
        Ok(match path {
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
