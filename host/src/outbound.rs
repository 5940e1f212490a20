//! Outbound HTTP: which requests an agent may make, and the credentials the host attaches.
//!
//! Deny by default. An agent whose manifest has no `[[agent.outbound]]` rule is not linked
//! to `wasi:http` at all, and a component that imports it is refused at load. An agent with
//! rules gets `wasi:http/outgoing-handler` and `wasi:http/types`, but the host sends every
//! request itself ([`Outbound`] replaces wasmtime-wasi-http's sender), after the guest has
//! built it:
//!
//! 1. The request must match a rule: scheme, host, port and path prefix, the path in plain
//!    form (no `.`/`..` segments, no encoded dots or slashes). Otherwise it is refused with
//!    `HTTP-request-denied` and the refusal goes to the agent's log; it never leaves the
//!    host.
//! 2. A rule whose host is a name is resolved by the host, and the request is refused with
//!    `destination-IP-prohibited` when any address is loopback, private, link-local or
//!    otherwise not public: `localhost` is a name like any other. Only a rule that names
//!    an IP address literally (the operator wrote `127.0.0.1`) reaches such an address. The
//!    host connects to the address it checked, so a second lookup cannot swap it.
//! 3. Every header the matching rule injects is removed from the guest's request
//!    (case-insensitively), then set from the rule, `{secret:name}` replaced by the value
//!    from the [`Vault`]. The guest never holds the value, so it can neither set nor read it.
//! 4. The response's headers and body are scanned, as they stream, and every value the
//!    vault holds is replaced by `[REDACTED]` before the guest sees a byte, including a
//!    value split across body chunks. `content-length` is dropped, since redaction changes
//!    the length. Redaction matches exact bytes: a server that re-encodes a secret (base64,
//!    say) is not caught, which is why the rules, not redaction, are the first line.
//!
//! `https` requests are sent over TLS checked against the public web's roots and the CA
//! certificates the mesh trusts besides ([`tls_config`]). A failure to send is logged with
//! its reason, and the guest gets its `wasi:http` error code.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde::Deserialize;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::vault::{Vault, validate_name};

/// What replaces a secret in a response.
pub const REDACTED: &[u8] = b"[REDACTED]";
/// Connect timeout when the guest sets none.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time to the response's first byte when the guest sets none.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);
/// Headers the host sets itself; no rule may inject them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
];

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS, the default.
    #[default]
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// One `[[agent.outbound]]` rule: requests it admits, and headers the host injects.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundRule {
    /// `http` or `https` (the default).
    #[serde(default)]
    pub scheme: Scheme,
    /// A host name or an IP address, alone: `api.example.com`, `127.0.0.1`, `::1`.
    pub host: String,
    /// The port; the scheme's default when absent.
    #[serde(default)]
    pub port: Option<u16>,
    /// Paths it admits start with this; `/` admits every path.
    #[serde(default = "root")]
    pub path_prefix: String,
    /// Headers the host sets on every request the rule admits; `{secret:name}` in a
    /// value is replaced by that vault secret.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn root() -> String {
    "/".into()
}

impl OutboundRule {
    /// A rule admitting every path of `scheme://host`, injecting nothing.
    pub fn new(scheme: Scheme, host: impl Into<String>) -> Self {
        OutboundRule {
            scheme,
            host: host.into(),
            port: None,
            path_prefix: root(),
            headers: BTreeMap::new(),
        }
    }

    /// Check the rule and lowercase its host. Errors name the field inside the rule.
    pub fn check(&mut self) -> Result<(), (String, String)> {
        self.host = normalize_host(&self.host).ok_or_else(|| {
            (
                "host".to_string(),
                format!(
                    "`{}` is not a host name or IP address: write the host alone (`api.example.com`, `127.0.0.1`); scheme, port and path_prefix are fields of their own",
                    self.host
                ),
            )
        })?;
        if self.port == Some(0) {
            return Err(("port".into(), "must be between 1 and 65535".into()));
        }
        if !self.path_prefix.starts_with('/') || !plain_path(&self.path_prefix) {
            return Err((
                "path_prefix".into(),
                format!(
                    "`{}` is not a plain path: start with `/`, no `.` or `..` segments, no `?`, `#`, `\\` or encoded dots and slashes",
                    self.path_prefix
                ),
            ));
        }
        let mut seen: Vec<String> = Vec::new();
        for (name, value) in &self.headers {
            let field = format!("headers.{name}");
            let lower = name.to_ascii_lowercase();
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err((field, format!("`{name}` is not a valid header name")));
            }
            if RESERVED_HEADERS.contains(&lower.as_str()) {
                return Err((
                    field,
                    format!("the host sets `{lower}` itself; a rule may not inject it"),
                ));
            }
            if seen.contains(&lower) {
                return Err((
                    field,
                    format!("header `{lower}` is injected twice (names are case-insensitive)"),
                ));
            }
            seen.push(lower);
            parse_template(value).map_err(|m| (field, m))?;
        }
        Ok(())
    }

    /// The names of the secrets the rule's headers use, with the header of each.
    pub fn secrets(&self) -> Vec<(&str, String)> {
        self.headers
            .iter()
            .flat_map(|(name, value)| {
                parse_template(value)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(move |p| match p {
                        Part::Secret(s) => Some((name.as_str(), s)),
                        Part::Text(_) => None,
                    })
            })
            .collect()
    }
}

/// A piece of an injected header's value.
#[derive(Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Secret(String),
}

const OPEN: &str = "{secret:";

/// Split `value` into text and `{secret:name}` references.
fn parse_template(value: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find(OPEN) {
        if start > 0 {
            parts.push(Part::Text(rest[..start].to_string()));
        }
        let after = &rest[start + OPEN.len()..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("`{OPEN}` is not closed by `}}`"))?;
        let name = &after[..end];
        validate_name(name)?;
        parts.push(Part::Secret(name.to_string()));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    for p in &parts {
        if let Part::Text(t) = p
            && HeaderValue::from_str(t).is_err()
        {
            return Err("has characters no HTTP header value may carry".into());
        }
    }
    Ok(parts)
}

/// A lowercase host name, or an IP address without brackets; `None` when it is neither.
fn normalize_host(host: &str) -> Option<String> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(ip.to_string());
    }
    let lower = host.to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    (lower.len() <= 253 && lower.split('.').all(label_ok)).then_some(lower)
}

/// A path with no dot segments and nothing a server might decode into one.
fn plain_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    !path.split('/').any(|s| s == "." || s == "..")
        && !["%2e", "%2f", "%5c", "\\", "?", "#"]
            .iter()
            .any(|bad| lower.contains(bad))
        && !path.bytes().any(|b| b.is_ascii_control() || b == b' ')
}

/// Where a rule's host points.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A name, resolved at request time and admitted only to public addresses.
    Name(String),
    /// An address the operator wrote literally: admitted whatever it is.
    Ip(IpAddr),
}

/// A checked rule with its headers ready to inject.
struct Compiled {
    scheme: Scheme,
    target: Target,
    port: u16,
    path_prefix: String,
    inject: Vec<(HeaderName, HeaderValue)>,
}

/// Why a rule could not be compiled: the field inside the rule and the message.
pub type RuleError = (String, String);

/// An agent's outbound rules, with the secrets its headers need, and the redactor.
pub struct AgentOutbound {
    agent: String,
    rules: Vec<Compiled>,
    redactor: Arc<Redactor>,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for AgentOutbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentOutbound")
            .field("agent", &self.agent)
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
    }
}

impl AgentOutbound {
    /// Check `rules` and resolve every secret they name in `vault`; `https` requests are
    /// sent under `tls` (see [`tls_config`]). The error names the rule's index and field,
    /// and the missing secret by name only.
    pub fn new(
        agent: &str,
        rules: &[OutboundRule],
        vault: &Vault,
        redactor: Arc<Redactor>,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, (usize, RuleError)> {
        let mut compiled = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let mut rule = rule.clone();
            rule.check().map_err(|e| (i, e))?;
            let mut inject = Vec::new();
            for (name, template) in &rule.headers {
                let mut value = String::new();
                for part in
                    parse_template(template).map_err(|m| (i, (format!("headers.{name}"), m)))?
                {
                    match part {
                        Part::Text(t) => value.push_str(&t),
                        Part::Secret(s) => {
                            let secret = vault.get(&s).ok_or_else(|| {
                                (
                                    i,
                                    (
                                        format!("headers.{name}"),
                                        format!(
                                            "secret `{s}` is not in the vault: add `{s} = \"...\"` to the vault file (`--vault`) or set {}",
                                            crate::vault::env_var(&s)
                                        ),
                                    ),
                                )
                            })?;
                            value.push_str(secret.expose());
                        }
                    }
                }
                let mut value = HeaderValue::from_str(&value).map_err(|_| {
                    (
                        i,
                        (
                            format!("headers.{name}"),
                            "a secret it names cannot be carried in an HTTP header".to_string(),
                        ),
                    )
                })?;
                // Keeps the value out of `Debug` output and HPACK tables.
                value.set_sensitive(true);
                let name = HeaderName::from_bytes(name.as_bytes()).expect("checked above");
                inject.push((name, value));
            }
            let target = match rule.host.parse::<IpAddr>() {
                Ok(ip) => Target::Ip(ip),
                Err(_) => Target::Name(rule.host.clone()),
            };
            compiled.push(Compiled {
                scheme: rule.scheme,
                target,
                port: rule.port.unwrap_or(rule.scheme.default_port()),
                path_prefix: rule.path_prefix.clone(),
                inject,
            });
        }
        Ok(AgentOutbound {
            agent: agent.to_string(),
            rules: compiled,
            redactor,
            tls,
        })
    }

    /// No rules: every request is denied.
    pub fn none(agent: &str) -> Self {
        AgentOutbound {
            agent: agent.to_string(),
            rules: Vec::new(),
            redactor: Arc::new(Redactor::default()),
            tls: tls_config(&[]),
        }
    }

    /// The rule admitting a request to `scheme://host:port/path`, or why none does.
    fn find(&self, uri: &http::Uri) -> Result<&Compiled, String> {
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            other => return Err(format!("scheme `{}` is not http(s)", other.unwrap_or(""))),
        };
        let host = uri
            .host()
            .and_then(normalize_host)
            .ok_or("the request names no valid host")?;
        let port = uri.port_u16().unwrap_or(scheme.default_port());
        let path = uri.path();
        if !plain_path(path) {
            return Err(
                "its path is not in plain form (dot segments or encoded separators)".into(),
            );
        }
        self.rules
            .iter()
            .find(|r| {
                let host_ok = match &r.target {
                    Target::Name(n) => *n == host,
                    Target::Ip(ip) => host.parse::<IpAddr>().is_ok_and(|h| h == *ip),
                };
                r.scheme == scheme && host_ok && r.port == port && path.starts_with(&r.path_prefix)
            })
            .ok_or_else(|| format!("no outbound rule of agent `{}` admits it", self.agent))
    }
}

/// Refusals of outbound requests during one activation, for the agent's log.
pub type OutboundLog = Arc<Mutex<Vec<String>>>;

/// The `wasi:http` hooks of one activation: every request the guest makes goes through
/// [`WasiHttpHooks::send_request`] here.
pub struct Outbound {
    rules: Arc<AgentOutbound>,
    log: OutboundLog,
}

impl Outbound {
    /// Hooks sending under `rules`, logging refusals to `log`.
    pub fn new(rules: Arc<AgentOutbound>, log: OutboundLog) -> Self {
        Outbound { rules, log }
    }
}

fn note(log: &OutboundLog, line: String) {
    log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        mut request: Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> SendFuture {
        let what = format!("{} {}", request.method(), request.uri());
        let rule = match self.rules.find(request.uri()) {
            Ok(rule) => rule,
            Err(why) => {
                note(&self.log, format!("outbound request denied: {what}: {why}"));
                return Box::new(async { Err(Error::HttpRequestDenied) });
            }
        };
        // The guest's copy of an injected header goes, whatever its case: only the
        // host's value reaches the server.
        for (name, value) in &rule.inject {
            request.headers_mut().remove(name);
            request.headers_mut().insert(name.clone(), value.clone());
        }
        let target = rule.target.clone();
        let port = rule.port;
        let tls = (rule.scheme == Scheme::Https).then(|| self.rules.tls.clone());
        let redactor = self.rules.redactor.clone();
        let log = self.log.clone();
        Box::new(async move {
            let addr = match checked_address(&target, port).await {
                Ok(addr) => addr,
                Err((error, why)) => {
                    note(&log, format!("outbound request denied: {what}: {why}"));
                    return Err(error);
                }
            };
            // The agent gets the error's code; why it failed (which certificate check,
            // say) goes to its log, for the operator.
            let (response, io) = send(request, addr, tls, options).await.map_err(|e| {
                note(&log, format!("outbound request failed: {what}: {e}"));
                for_guest(e)
            })?;
            let response = redact_response(response, &redactor);
            Ok((response, io))
        })
    }
}

/// The address to connect to: the literal one, or the first resolved one when every
/// resolved address is public.
async fn checked_address(target: &Target, port: u16) -> Result<SocketAddr, (Error, String)> {
    let name = match target {
        Target::Ip(ip) => return Ok(SocketAddr::new(*ip, port)),
        Target::Name(name) => name,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), port))
        .await
        .map_err(|e| {
            (
                Error::DnsError {
                    rcode: Some("lookup failed".into()),
                    info_code: None,
                },
                format!("cannot resolve `{name}`: {e}"),
            )
        })?
        .collect();
    if let Some(private) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err((
            Error::DestinationIpProhibited,
            format!(
                "`{name}` resolves to {}, which is not a public address; only a rule naming that address literally reaches it",
                private.ip()
            ),
        ));
    }
    addrs.first().copied().ok_or((
        Error::DestinationNotFound,
        format!("`{name}` resolves to no address"),
    ))
}

/// Whether `ip` is a public unicast address: not loopback, private, link-local, shared,
/// unspecified, broadcast, multicast or documentation.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8
                || v6.segments()[..6].iter().all(|s| *s == 0))
        }
    }
}

/// The TLS client configuration of `https` requests: the public web's roots
/// (webpki-roots), and `extra`, the CA certificates the mesh trusts besides (see
/// [`trust_anchors`]).
pub fn tls_config(extra: &[CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    static PUBLIC: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let build = |extra: &[CertificateDer<'static>]| {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        // `trust_anchors` checked each of them already.
        roots.add_parsable_certificates(extra.iter().cloned());
        Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    };
    if extra.is_empty() {
        PUBLIC.get_or_init(|| build(&[])).clone()
    } else {
        build(extra)
    }
}

/// The CA certificates in `pem`, each one checked to be usable as a trust anchor. The
/// error says which certificate is wrong and why; it does not name the file, which the
/// caller does.
pub fn trust_anchors(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut certs = Vec::new();
    for (i, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let cert = cert.map_err(|e| format!("PEM block {} does not parse: {e}", i + 1))?;
        rustls::RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| format!("certificate {} is not a usable CA certificate: {e}", i + 1))?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err("holds no PEM `CERTIFICATE` block".into());
    }
    Ok(certs)
}

/// `e` as the guest gets it: a certificate the host does not trust is the
/// `TLS-certificate-error` it is, not any failed handshake's `TLS-protocol-error`.
fn for_guest(e: Error) -> Error {
    match e {
        Error::Tls(io)
            if io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_))) =>
        {
            Error::TlsCertificateError
        }
        other => other,
    }
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Stream for T {}

type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

/// Send `request` to `addr` over HTTP/1.1, through TLS under `tls` if given.
async fn send(
    mut request: Request<WasiBody>,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    options: Option<RequestOptions>,
) -> Result<(Response<hyper::body::Incoming>, IoFuture), Error> {
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(CONNECT_TIMEOUT);
    let first_byte_timeout = options
        .and_then(|o| o.first_byte_timeout)
        .unwrap_or(FIRST_BYTE_TIMEOUT);
    let tcp = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| Error::ConnectionTimeout)?
        .map_err(Error::Connect)?;
    let stream: Box<dyn Stream> = if let Some(tls) = tls {
        let host = request.uri().host().unwrap_or_default();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let name = match bare.parse::<IpAddr>() {
            Ok(ip) => rustls::pki_types::ServerName::from(ip),
            Err(_) => rustls::pki_types::ServerName::try_from(bare.to_string())
                .map_err(|_| Error::HttpRequestUriInvalid)?,
        };
        let connector = tokio_rustls::TlsConnector::from(tls);
        Box::new(
            tokio::time::timeout(connect_timeout, connector.connect(name, tcp))
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(Error::Tls)?,
        )
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(Error::from)?;
    let conn = tokio::spawn(conn);
    // On the wire the request line carries the path only; the authority is in `host`.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *request.uri_mut() = path.parse().map_err(|_| Error::HttpRequestUriInvalid)?;
    let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
        .await
        .map_err(|_| Error::ConnectionReadTimeout)?
        .map_err(Error::from)?;
    let io: IoFuture = Box::new(async move {
        match conn.await {
            Ok(result) => result.map_err(Error::from),
            Err(_) => Ok(()),
        }
    });
    Ok((response, io))
}

/// The response with every secret redacted from its headers and, as it streams, its body.
fn redact_response(
    response: Response<hyper::body::Incoming>,
    redactor: &Arc<Redactor>,
) -> Response<WasiBody> {
    let (mut parts, body) = response.into_parts();
    parts.headers = redactor.headers(&parts.headers);
    if !redactor.is_empty() {
        parts.headers.remove(http::header::CONTENT_LENGTH);
    }
    let body = RedactBody {
        inner: body.map_err(Error::from).boxed_unsync(),
        redactor: redactor.clone(),
        carry: Vec::new(),
        queued: VecDeque::new(),
        done: false,
    };
    Response::from_parts(parts, body.boxed_unsync())
}

/// Finds and replaces secret values, in whole buffers or in a stream of chunks.
#[derive(Default)]
pub struct Redactor {
    /// Distinct non-empty values, longest first, so the longest match wins.
    secrets: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    /// A redactor for every value `vault` holds.
    pub fn new(vault: &Vault) -> Self {
        let mut secrets: Vec<Vec<u8>> = vault
            .values()
            .map(|s| s.expose().as_bytes().to_vec())
            .filter(|s| !s.is_empty())
            .collect();
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        secrets.dedup();
        Redactor { secrets }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// `bytes` with every secret replaced.
    pub fn redact(&self, bytes: &[u8]) -> Vec<u8> {
        let mut carry = Vec::new();
        self.feed(&mut carry, bytes, true)
    }

    /// Redact the next chunk of a stream. Bytes that might begin a secret continuing in
    /// the next chunk stay in `carry` (fewer than the longest secret) until `end`.
    pub fn feed(&self, carry: &mut Vec<u8>, chunk: &[u8], end: bool) -> Vec<u8> {
        let mut buf = std::mem::take(carry);
        buf.extend_from_slice(chunk);
        if self.secrets.is_empty() {
            return buf;
        }
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        'scan: while i < buf.len() {
            let rest = &buf[i..];
            // A secret may start here and finish in the next chunk: wait for it, before
            // taking a shorter secret that matches in full (it may be a prefix of the
            // longer one, whose tail would then slip through).
            if !end
                && self
                    .secrets
                    .iter()
                    .any(|s| s.len() > rest.len() && s.starts_with(rest))
            {
                *carry = rest.to_vec();
                return out;
            }
            // Longest first, so the longest match wins.
            for s in &self.secrets {
                if rest.starts_with(s) {
                    out.extend_from_slice(REDACTED);
                    i += s.len();
                    continue 'scan;
                }
            }
            out.push(buf[i]);
            i += 1;
        }
        out
    }

    /// `headers` with every secret replaced in values; a header whose name contains a
    /// secret is dropped.
    pub fn headers(&self, headers: &HeaderMap) -> HeaderMap {
        if self.secrets.is_empty() {
            return headers.clone();
        }
        let mut out = HeaderMap::with_capacity(headers.len());
        for (name, value) in headers {
            if self.redact(name.as_str().as_bytes()) != name.as_str().as_bytes() {
                continue;
            }
            let redacted = self.redact(value.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&redacted) {
                out.append(name.clone(), v);
            }
        }
        out
    }
}

/// A response body with secrets redacted as it streams.
struct RedactBody {
    inner: WasiBody,
    redactor: Arc<Redactor>,
    carry: Vec<u8>,
    queued: VecDeque<Frame<Bytes>>,
    done: bool,
}

impl Body for RedactBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        loop {
            if let Some(frame) = this.queued.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.redactor.feed(&mut this.carry, &data, false);
                        if !out.is_empty() {
                            this.queued.push_back(Frame::data(Bytes::from(out)));
                        }
                    }
                    Err(frame) => {
                        // Trailers end the data: flush what was held back first.
                        this.flush();
                        if let Ok(trailers) = frame.into_trailers() {
                            let trailers = this.redactor.headers(&trailers);
                            this.queued.push_back(Frame::trailers(trailers));
                        }
                    }
                },
                Some(Err(e)) => {
                    // Whatever was held back may be half a secret: drop it.
                    this.carry.clear();
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.flush();
                    this.done = true;
                }
            }
        }
    }
}

impl RedactBody {
    fn flush(&mut self) {
        let out = self.redactor.feed(&mut self.carry, &[], true);
        if !out.is_empty() {
            self.queued.push_back(Frame::data(Bytes::from(out)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(values: &[&str]) -> Redactor {
        let mut v = Vault::empty();
        for (i, s) in values.iter().enumerate() {
            v = v.with(&format!("s{i}"), s);
        }
        Redactor::new(&v)
    }

    #[test]
    fn a_secret_split_across_chunks_is_redacted_at_every_split() {
        let r = redactor(&["sk-SECRET-42", "sk-SECRET"]);
        let text = b"a sk-SECRET-42 b sk-SECRET c sk-SECRE";
        for split in 0..=text.len() {
            for second in split..=text.len() {
                let mut carry = Vec::new();
                let mut out = r.feed(&mut carry, &text[..split], false);
                out.extend(r.feed(&mut carry, &text[split..second], false));
                out.extend(r.feed(&mut carry, &text[second..], false));
                out.extend(r.feed(&mut carry, b"", true));
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    "a [REDACTED] b [REDACTED] c sk-SECRE",
                    "split at {split}, {second}"
                );
            }
        }
    }

    #[test]
    fn rules_are_checked_and_hosts_lowercased() {
        let mut rule = OutboundRule::new(Scheme::Https, "API.Example.com");
        rule.check().unwrap();
        assert_eq!(rule.host, "api.example.com");
        for (host, ok) in [
            ("127.0.0.1", true),
            ("[::1]", true),
            ("https://x.com", false),
            ("x.com:80", false),
            ("x.com/p", false),
            ("", false),
        ] {
            assert_eq!(
                OutboundRule::new(Scheme::Http, host).check().is_ok(),
                ok,
                "{host}"
            );
        }
        let mut bad = OutboundRule::new(Scheme::Https, "x.com");
        bad.path_prefix = "/v1/../admin".into();
        assert_eq!(bad.check().unwrap_err().0, "path_prefix");
        assert!(parse_template("Bearer {secret:key").is_err());
        assert_eq!(
            parse_template("Bearer {secret:key}").unwrap(),
            [Part::Text("Bearer ".into()), Part::Secret("key".into())]
        );
    }

    #[test]
    fn only_public_addresses_are_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn requests_match_scheme_host_port_and_plain_path() {
        let mut rule = OutboundRule::new(Scheme::Http, "127.0.0.1");
        rule.port = Some(8080);
        rule.path_prefix = "/v1/".into();
        let rules = AgentOutbound::new(
            "a",
            &[rule],
            &Vault::empty(),
            Arc::new(Redactor::default()),
            tls_config(&[]),
        )
        .unwrap();
        let ok = |u: &str| rules.find(&u.parse().unwrap()).is_ok();
        assert!(ok("http://127.0.0.1:8080/v1/x"));
        assert!(!ok("http://127.0.0.1:8081/v1/x"));
        assert!(!ok("https://127.0.0.1:8080/v1/x"));
        assert!(!ok("http://127.0.0.1:8080/v2/x"));
        assert!(!ok("http://127.0.0.1:8080/v1/../admin"));
        assert!(!ok("http://127.0.0.1:8080/v1/%2e%2e/admin"));
        assert!(!ok("http://localhost:8080/v1/x"));
    }
}
