//! `mesh.toml`: the agents a host runs and what each may do.
//!
//! Parsing is strict: unknown fields are errors, and every error names the file, the
//! agent and the field, so a typo never silently widens or narrows a grant.
//!
//! ```toml
//! [mesh]
//! policy = "default"            # default policy for agents: default | strict
//!
//! [[agent]]
//! id = "researcher"
//! component = "researcher.wasm" # relative to this file
//! sha256 = "…"                  # optional pin
//! reads = ["shared/**"]         # readable key globs, beyond its own namespace
//! handoff = ["writer"]          # agents it may hand off to
//!
//! [agent.limits]
//! memory_mib = 64
//!
//! [[agent.outbound]]            # HTTP it may send; none at all by default
//! scheme = "https"              # default https
//! host = "api.example.com"      # a name (public addresses only) or a literal IP
//! path_prefix = "/v1/"          # default "/"
//! headers = { Authorization = "Bearer {secret:example}" }  # injected by the host
//!
//! [[route]]                     # conditional routing: hand off to `route:by-lang`
//! id = "by-lang"
//! rules = [
//!   { param = "lang", equals = "fr", to = "writer-fr" },
//!   { to = "writer" },          # no condition: the default
//! ]
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::outbound::OutboundRule;
use crate::policy::Policy;
use crate::store::{Kind, Param, ParamValue};

/// The pseudo-agent that submits work from outside the mesh (`baton run`).
pub const OPERATOR: &str = "operator";

/// A manifest problem: which file, which agent, which field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// The manifest file (or a label such as `<demo>`).
    pub file: String,
    /// The agent concerned, when the error is inside one.
    pub agent: Option<String>,
    /// The field concerned, dotted (`limits.memory_mib`).
    pub field: Option<String>,
    /// What is wrong and, where it helps, what to do.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(agent) = &self.agent {
            write!(f, ": agent `{agent}`")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Per-agent limits. Every one has a safe default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory, in MiB.
    pub memory_mib: u64,
    /// CPU time per activation, in milliseconds: 5 ms epoch ticks spent running wasm or
    /// host code for it, not waiting.
    pub cpu_ms: u64,
    /// Largest `data` or outcome, in KiB.
    pub payload_kib: u64,
    /// Most pending tasks in this agent's inbox; handoffs past it get `busy`.
    pub inbox_depth: u64,
    /// Most handoffs one activation may make.
    pub handoffs_per_activation: u32,
    /// Default deadline of tasks handed to this agent, in milliseconds.
    pub deadline_ms: u64,
    /// Most activations of this agent at once.
    pub concurrency: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 64,
            cpu_ms: 5_000,
            payload_kib: 1024,
            inbox_depth: 1_000,
            handoffs_per_activation: 64,
            deadline_ms: 30_000,
            concurrency: 1,
        }
    }
}

/// One agent as written in the manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    id: String,
    component: PathBuf,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    policy: Option<Policy>,
    #[serde(default)]
    reads: Vec<String>,
    #[serde(default)]
    handoff: Vec<String>,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    input_schema: Option<toml::Value>,
    #[serde(default)]
    strip: Vec<String>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    outbound: Vec<OutboundRule>,
}

/// A rule of a conditional route: when it matches, the handoff goes to `to`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Match when the handoff has this parameter...
    #[serde(default)]
    pub param: Option<String>,
    /// ...with this value (text, integer, number or boolean).
    #[serde(default)]
    pub equals: Option<ParamValue>,
    /// Match when the caller is handling this kind of task (`work` or `reply`).
    #[serde(default)]
    pub kind: Option<Kind>,
    /// The agent the handoff goes to.
    pub to: String,
}

impl Rule {
    /// Whether a handoff with `params`, made while handling a `kind` task, matches.
    pub fn matches(&self, params: &[Param], kind: Kind) -> bool {
        let param_ok = match (&self.param, &self.equals) {
            (Some(name), Some(value)) => {
                params.iter().any(|p| &p.name == name && &p.value == value)
            }
            _ => true,
        };
        param_ok && self.kind.is_none_or(|k| k == kind)
    }
}

/// A conditional route: handoffs to `route:<id>` go to the first rule that matches.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The route's name.
    pub id: String,
    /// Rules, tried in order.
    pub rules: Vec<Rule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeshSection {
    #[serde(default)]
    policy: Option<Policy>,
    #[serde(default)]
    max_hops: Option<u32>,
    #[serde(default)]
    queue_depth: Option<u64>,
    #[serde(default)]
    ca_certs: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    mesh: RawMeshSection,
    #[serde(default)]
    agent: Vec<toml::Value>,
    #[serde(default)]
    route: Vec<Route>,
}

/// An agent ready to load: its component bytes are in memory and its grants are checked.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// The agent's id, unique in the mesh.
    pub id: String,
    /// Where the component came from, for messages.
    pub component: String,
    /// The component's bytes.
    pub wasm: Arc<[u8]>,
    /// The import policy it is loaded under.
    pub policy: Policy,
    /// Readable key globs beyond its own namespace.
    pub reads: Vec<String>,
    /// Agents, `capability:<name>` pools and `route:<name>` routes it may hand off to.
    pub handoff: Vec<String>,
    /// Capabilities it serves: it claims tasks handed to `capability:<name>`.
    pub capabilities: Vec<String>,
    /// JSON Schema that `push` payloads to it must satisfy.
    pub input_schema: Option<serde_json::Value>,
    /// Top-level payload fields the host removes before a `push` task reaches it.
    pub strip: Vec<String>,
    /// Its limits.
    pub limits: Limits,
    /// The HTTP requests it may send, and the headers the host injects into them. Empty:
    /// no `wasi:http` at all.
    pub outbound: Vec<OutboundRule>,
}

impl AgentSpec {
    /// An agent with default policy and limits and no grants.
    pub fn new(id: impl Into<String>, component: impl Into<String>, wasm: Arc<[u8]>) -> Self {
        AgentSpec {
            id: id.into(),
            component: component.into(),
            wasm,
            policy: Policy::Default,
            reads: Vec::new(),
            handoff: Vec::new(),
            capabilities: Vec::new(),
            input_schema: None,
            strip: Vec::new(),
            limits: Limits::default(),
            outbound: Vec::new(),
        }
    }
}

/// A validated mesh: every agent loaded from disk and cross-checked.
#[derive(Debug, Clone)]
pub struct Mesh {
    /// The manifest it came from, for messages.
    pub file: String,
    /// The agents, in manifest order.
    pub agents: Vec<AgentSpec>,
    /// Conditional routes.
    pub routes: Vec<Route>,
    /// Most hops in one chain; a handoff past it is denied.
    pub max_hops: u32,
    /// Most pending tasks in one capability queue.
    pub queue_depth: u64,
    /// CA certificates `https` outbound requests trust besides the public web's roots
    /// (`[mesh] ca_certs`, a PEM file): a private CA, or a proxy the operator runs.
    pub ca_certs: Vec<CertificateDer<'static>>,
}

/// Default hop budget of a chain.
pub const DEFAULT_MAX_HOPS: u32 = 16;
/// Default bound of a capability queue.
pub const DEFAULT_QUEUE_DEPTH: u64 = 1_000;

impl Mesh {
    /// A mesh of `agents` with no routes and default budgets, labelled `file` in errors.
    pub fn new(file: impl Into<String>, agents: Vec<AgentSpec>) -> Mesh {
        Mesh {
            file: file.into(),
            agents,
            routes: Vec::new(),
            max_hops: DEFAULT_MAX_HOPS,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            ca_certs: Vec::new(),
        }
    }
}

impl Mesh {
    /// Read and validate `path`; component paths are relative to its folder.
    pub fn load(path: &Path) -> Result<Mesh, ManifestError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
            file: file.clone(),
            agent: None,
            field: None,
            message: format!("cannot read the manifest: {e}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Mesh::parse(&file, &text, |named| {
            let resolved = base.join(named);
            std::fs::read(&resolved).map_err(|e| {
                format!(
                    "cannot read `{}` (resolved to `{}`): {e}",
                    named.display(),
                    resolved.display()
                )
            })
        })
    }

    /// Validate manifest `text`, reading the files it names (components, `ca_certs`)
    /// through `read`.
    pub fn parse(
        file: &str,
        text: &str,
        mut read: impl FnMut(&Path) -> Result<Vec<u8>, String>,
    ) -> Result<Mesh, ManifestError> {
        let err = |agent: Option<&str>, field: Option<&str>, message: String| ManifestError {
            file: file.to_string(),
            agent: agent.map(str::to_string),
            field: field.map(str::to_string),
            message,
        };

        let raw: RawManifest = {
            let de = toml::Deserializer::parse(text).map_err(|e| {
                let at = e.span().map(|s| format!(" at {}", line_col(text, s.start)));
                let message = format!("not valid TOML{}: {}", at.unwrap_or_default(), e.message());
                err(None, None, message)
            })?;
            serde_path_to_error::deserialize(de).map_err(|e| {
                let field = field_of(&e.path().to_string(), e.inner().message());
                err(None, field.as_deref(), e.into_inner().message().to_string())
            })?
        };
        let mesh_policy = raw.mesh.policy.unwrap_or_default();

        let mut agents: Vec<AgentSpec> = Vec::new();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (index, value) in raw.agent.into_iter().enumerate() {
            let label = value
                .get("id")
                .and_then(toml::Value::as_str)
                .map_or_else(|| format!("#{}", index + 1), str::to_string);
            let a: RawAgent = serde_path_to_error::deserialize(value).map_err(|e| {
                let message = e.inner().message().to_string();
                let field = field_of(&e.path().to_string(), &message);
                err(Some(&label), field.as_deref(), message)
            })?;
            let here = |field: &str, message: String| err(Some(&a.id), Some(field), message);

            validate_id(&a.id).map_err(|m| here("id", m))?;
            if let Some(first) = seen.insert(a.id.clone(), index + 1) {
                return Err(here(
                    "id",
                    format!(
                        "duplicate agent id `{}`: agents #{first} and #{} both use it; ids must be unique",
                        a.id,
                        index + 1
                    ),
                ));
            }
            for glob in &a.reads {
                crate::grants::compile_glob(glob).map_err(|m| here("reads", m))?;
            }
            check_limits(&a.limits).map_err(|(f, m)| here(&format!("limits.{f}"), m))?;
            for cap in &a.capabilities {
                validate_name(cap).map_err(|m| here("capabilities", m))?;
            }
            let input_schema = a
                .input_schema
                .map(|schema| {
                    let json = serde_json::to_value(schema).map_err(|e| e.to_string())?;
                    compile_schema(&json).map(|_| json)
                })
                .transpose()
                .map_err(|m| here("input_schema", m))?;

            let mut outbound = a.outbound;
            for (i, rule) in outbound.iter_mut().enumerate() {
                rule.check()
                    .map_err(|(f, m)| here(&format!("outbound[{i}].{f}"), m))?;
            }

            let wasm = read(&a.component).map_err(|m| here("component", m))?;
            if let Some(pin) = &a.sha256 {
                let actual = hex(&Sha256::digest(&wasm));
                if !pin.eq_ignore_ascii_case(&actual) {
                    return Err(here(
                        "sha256",
                        format!(
                            "component `{}` does not match its pin: expected sha256 {pin}, actual {actual}",
                            a.component.display()
                        ),
                    ));
                }
            }
            agents.push(AgentSpec {
                component: a.component.display().to_string(),
                wasm: wasm.into(),
                policy: a.policy.unwrap_or(mesh_policy),
                id: a.id,
                reads: a.reads,
                handoff: a.handoff,
                capabilities: a.capabilities,
                input_schema,
                strip: a.strip,
                limits: a.limits,
                outbound,
            });
        }

        let ca_certs = match &raw.mesh.ca_certs {
            Some(path) => {
                let here = |m: String| err(None, Some("mesh.ca_certs"), m);
                let pem = read(path).map_err(here)?;
                crate::outbound::trust_anchors(&pem)
                    .map_err(|m| here(format!("`{}` {m}", path.display())))?
            }
            None => Vec::new(),
        };
        let mesh = Mesh {
            file: file.to_string(),
            agents,
            routes: raw.route,
            max_hops: raw.mesh.max_hops.unwrap_or(DEFAULT_MAX_HOPS),
            queue_depth: raw.mesh.queue_depth.unwrap_or(DEFAULT_QUEUE_DEPTH),
            ca_certs,
        };
        if mesh.max_hops == 0 {
            return Err(err(
                None,
                Some("mesh.max_hops"),
                "must be greater than 0".into(),
            ));
        }
        if mesh.queue_depth == 0 {
            return Err(err(
                None,
                Some("mesh.queue_depth"),
                "must be greater than 0".into(),
            ));
        }
        mesh.check_routes()?;
        mesh.check_targets()?;
        Ok(mesh)
    }

    /// Every route has a valid, unique name, rules, and agents as targets.
    pub fn check_routes(&self) -> Result<(), ManifestError> {
        let err = |route: &str, field: &str, message: String| ManifestError {
            file: self.file.clone(),
            agent: None,
            field: Some(format!("route[{route}].{field}")),
            message,
        };
        for (i, r) in self.routes.iter().enumerate() {
            validate_name(&r.id).map_err(|m| err(&r.id, "id", m))?;
            if self.routes[..i].iter().any(|o| o.id == r.id) {
                return Err(err(&r.id, "id", format!("duplicate route id `{}`", r.id)));
            }
            if r.rules.is_empty() {
                return Err(err(
                    &r.id,
                    "rules",
                    "a route needs at least one rule".into(),
                ));
            }
            for (n, rule) in r.rules.iter().enumerate() {
                let field = format!("rules[{n}]");
                if rule.param.is_some() != rule.equals.is_some() {
                    return Err(err(
                        &r.id,
                        &field,
                        "`param` and `equals` go together".into(),
                    ));
                }
                if self.agent(&rule.to).is_none() {
                    return Err(err(
                        &r.id,
                        &format!("{field}.to"),
                        format!(
                            "unknown agent `{}`; agents in this mesh: {}",
                            rule.to,
                            self.ids().join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every `handoff` entry must name an agent, a capability some agent serves, or a
    /// route of this mesh.
    pub fn check_targets(&self) -> Result<(), ManifestError> {
        for a in &self.agents {
            for target in &a.handoff {
                let problem = if let Some(cap) = target.strip_prefix(CAPABILITY) {
                    (!self
                        .agents
                        .iter()
                        .any(|w| w.capabilities.iter().any(|c| c == cap)))
                    .then(|| format!("no agent serves capability `{cap}`"))
                } else if let Some(route) = target.strip_prefix(ROUTE) {
                    (!self.routes.iter().any(|r| r.id == route))
                        .then(|| format!("no route `{route}` in this mesh"))
                } else {
                    self.agent(target).is_none().then(|| {
                        format!(
                            "unknown agent `{target}`; agents in this mesh: {}",
                            self.ids().join(", ")
                        )
                    })
                };
                if let Some(message) = problem {
                    return Err(ManifestError {
                        file: self.file.clone(),
                        agent: Some(a.id.clone()),
                        field: Some("handoff".into()),
                        message,
                    });
                }
            }
        }
        Ok(())
    }

    /// The route called `id`.
    pub fn route(&self, id: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.id == id)
    }

    /// The agent called `id`.
    pub fn agent(&self, id: &str) -> Option<&AgentSpec> {
        self.agents.iter().find(|a| a.id == id)
    }

    /// All agent ids, in manifest order.
    pub fn ids(&self) -> Vec<&str> {
        self.agents.iter().map(|a| a.id.as_str()).collect()
    }
}

/// The dotted field an error is about: serde's path, or for a field that is missing at
/// the top of a table, the name in the message.
fn field_of(path: &str, message: &str) -> Option<String> {
    if path != "." {
        return Some(path.to_string());
    }
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name.to_string())
}

/// `line L, column C` of a byte offset, both from 1.
fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("line {line}, column {column}")
}

/// The prefix of a pull-dispatch target.
pub const CAPABILITY: &str = "capability:";
/// The prefix of a conditional-route target.
pub const ROUTE: &str = "route:";

/// Compile a JSON Schema, or say why it is not one.
pub fn compile_schema(schema: &serde_json::Value) -> Result<jsonschema::Validator, String> {
    jsonschema::validator_for(schema).map_err(|e| format!("not a valid JSON Schema: {e}"))
}

fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid name: use 1 to 64 of a-z, 0-9, `-` and `_`"
        ))
    }
}

fn validate_id(id: &str) -> Result<(), String> {
    if id == OPERATOR {
        return Err(format!(
            "`{OPERATOR}` is reserved for work submitted from outside the mesh"
        ));
    }
    validate_name(id).map_err(|_| {
        format!("`{id}` is not a valid agent id: use 1 to 64 of a-z, 0-9, `-` and `_`")
    })
}

fn check_limits(l: &Limits) -> Result<(), (&'static str, String)> {
    let positive = [
        ("memory_mib", l.memory_mib),
        ("cpu_ms", l.cpu_ms),
        ("payload_kib", l.payload_kib),
        ("inbox_depth", l.inbox_depth),
        (
            "handoffs_per_activation",
            u64::from(l.handoffs_per_activation),
        ),
        ("deadline_ms", l.deadline_ms),
        ("concurrency", u64::from(l.concurrency)),
    ];
    for (field, value) in positive {
        if value == 0 {
            return Err((field, "must be greater than 0".into()));
        }
    }
    if l.memory_mib > 4096 {
        return Err(("memory_mib", "at most 4096 (a 32-bit memory)".into()));
    }
    Ok(())
}

/// Lowercase hex of a digest, two digits a byte, in order:
///
/// ```
/// assert_eq!(baton::manifest::hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
/// ```
pub fn hex(bytes: &[u8]) -> String {
    // Into a buffer sized up front: `hex::encode` builds the string a char at a time,
    // and a handoff hexes several digests (fingerprint, entry, audit chain).
    let mut out = vec![0; bytes.len() * 2];
    ::hex::encode_to_slice(bytes, &mut out).expect("the buffer holds two digits a byte");
    String::from_utf8(out).expect("hex digits are ASCII")
}
