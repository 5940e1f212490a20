//! `baton-sdk`: write agents for the baton host.
//!
//! An agent is a WebAssembly component that the host wakes with a [`Task`]. It can do
//! three things to the world, all through the host: hand work off ([`Handoff`]), claim
//! more tasks from its inbox ([`check_inbox`]), and read the blackboard keys it was
//! granted ([`read_blackboard`]). It returns an [`Outcome`], which the host stores at
//! `output/<agent>/<task-id>`.
//!
//! A complete agent that summarises what it was handed and passes the result on:
//!
//! ```no_run
//! use baton_sdk::{Agent, Handoff, Outcome, Task};
//! use serde_json::{json, Value};
//!
//! struct Summariser;
//!
//! impl Agent for Summariser {
//!     fn handle(task: Task) -> Result<Outcome, String> {
//!         // The task holds a pointer; reading it is granted by this delivery.
//!         let notes: Value = task.data().map_err(|e| e.to_string())?;
//!         let summary = json!({ "topic": task.summary(), "points": notes["points"] });
//!
//!         let receipt = Handoff::to("writer")
//!             .summary("draft a paragraph from these points")
//!             .completed(["summarised the notes"])
//!             .outstanding(["write the paragraph"])
//!             .json(&summary)
//!             .send()
//!             .map_err(|e| e.to_string())?;
//!
//!         Outcome::new(format!("handed to writer as {}", receipt.task_id))
//!             .json(&summary)
//!             .map_err(|e| e.to_string())
//!     }
//! }
//!
//! baton_sdk::export_agent!(Summariser);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` and name the `.wasm` in a
//! `mesh.toml`.

use serde::Serialize;
use serde::de::DeserializeOwned;

extern crate self as baton_sdk;

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// The bindings generated from `wit/agent.wit`. Use the wrappers at the crate root instead.
#[doc(hidden)]
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod wit {
    wit_bindgen::generate!({
        path: "../wit",
        world: "baton:agent/agent",
        pub_export_macro: true,
        export_macro_name: "__export_agent_world",
        default_bindings_module: "baton_sdk::wit",
        runtime_path: "baton_sdk::__wit_bindgen::rt",
    });
}

use wit::baton::agent::mesh;

pub use mesh::{Fallback, FieldError, MeshError, Param, ParamValue, Pattern, Retry, TaskKind};

/// An agent: the host calls [`Agent::handle`] each time it wakes the agent with a task.
pub trait Agent {
    /// Do the work of one task. `Err` fails the task; the message is recorded by the host.
    fn handle(task: Task) -> Result<Outcome, String>;
}

/// Export `$agent` (a type implementing [`Agent`]) as this component's entry point.
#[macro_export]
macro_rules! export_agent {
    ($agent:ty) => {
        const _: () = {
            struct __BatonAgent;
            impl $crate::wit::Guest for __BatonAgent {
                fn handle(
                    task: $crate::wit::baton::agent::mesh::Task,
                ) -> ::core::result::Result<
                    $crate::wit::baton::agent::mesh::Outcome,
                    ::std::string::String,
                > {
                    $crate::__dispatch::<$agent>(task)
                }
            }
    $crate::wit::__export_agent_world!(__BatonAgent with_types_in $crate::wit);
        };
    };
}

#[doc(hidden)]
pub fn __dispatch<A: Agent>(task: mesh::Task) -> Result<mesh::Outcome, String> {
    A::handle(Task(task)).map(|o| mesh::Outcome {
        summary: o.summary,
        data: o.data,
    })
}

/// What went wrong in an SDK call.
#[derive(Debug)]
pub enum Error {
    /// The host refused or failed the call.
    Mesh(MeshError),
    /// A value could not be turned into or out of JSON.
    Json(serde_json::Error),
    /// The task carries no data (no pointer and no inline payload).
    NoData,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Mesh(e) => write!(f, "{}", describe(e)),
            Error::Json(e) => write!(f, "json: {e}"),
            Error::NoData => f.write_str("the task carries no data"),
        }
    }
}

impl std::error::Error for Error {}

impl From<MeshError> for Error {
    fn from(e: MeshError) -> Self {
        Error::Mesh(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Json(e)
    }
}

/// A one-line description of a host error, such as `denied: agent ...`.
pub fn describe(e: &MeshError) -> String {
    match e {
        MeshError::Denied(m) => format!("denied: {m}"),
        MeshError::NotFound(m) => format!("not-found: {m}"),
        MeshError::Invalid(f) => format!("invalid: field `{}`: {}", f.field, f.message),
        MeshError::TooLarge(m) => format!("too-large: {m}"),
        MeshError::Busy(m) => format!("busy: {m}"),
        MeshError::Timeout(m) => format!("timeout: {m}"),
    }
}

/// A task the host delivered to this agent.
#[derive(Debug, Clone)]
pub struct Task(mesh::Task);

impl Task {
    /// The task id; the outcome is stored at `output/<agent>/<id>`.
    pub fn id(&self) -> &str {
        &self.0.id
    }
    /// New work, or the reply to a handoff this agent made.
    pub fn kind(&self) -> TaskKind {
        self.0.kind
    }
    /// The agent that handed this off, or `operator`.
    pub fn from(&self) -> &str {
        &self.0.from
    }
    /// The caller's short summary.
    pub fn summary(&self) -> &str {
        &self.0.summary
    }
    /// Steps the caller finished.
    pub fn completed(&self) -> &[String] {
        &self.0.completed
    }
    /// Subtasks left for this agent.
    pub fn outstanding(&self) -> &[String] {
        &self.0.outstanding
    }
    /// All typed parameters.
    pub fn params(&self) -> &[Param] {
        &self.0.params
    }
    /// The parameter called `name`, if present.
    pub fn param(&self, name: &str) -> Option<&ParamValue> {
        self.0
            .params
            .iter()
            .find(|p| p.name == name)
            .map(|p| &p.value)
    }
    /// How the data travelled.
    pub fn pattern(&self) -> Pattern {
        self.0.pattern
    }
    /// The blackboard key holding the data, if any.
    pub fn pointer(&self) -> Option<&str> {
        self.0.pointer.as_deref()
    }
    /// Unix milliseconds by which the outcome is due.
    pub fn deadline(&self) -> u64 {
        self.0.deadline
    }
    /// For a reply: the task whose outcome this is.
    pub fn in_reply_to(&self) -> Option<&str> {
        self.0.in_reply_to.as_deref()
    }
    /// A reader for the stream this task points at (the `stream` pattern).
    pub fn stream(&self) -> Option<StreamReader> {
        (self.0.pattern == Pattern::Stream)
            .then(|| self.0.pointer.clone().map(StreamReader::new))
            .flatten()
    }
    /// The task's data as bytes: the inline payload, or the value behind the pointer.
    pub fn bytes(&self) -> Result<Vec<u8>, Error> {
        if let Some(payload) = &self.0.payload {
            return Ok(payload.clone());
        }
        let key = self.0.pointer.as_deref().ok_or(Error::NoData)?;
        Ok(read_blackboard(key)?.value)
    }
    /// The task's data, decoded from JSON.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, Error> {
        // An inline payload is decoded where it lies, not copied first.
        match &self.0.payload {
            Some(payload) => Ok(serde_json::from_slice(payload)?),
            None => Ok(serde_json::from_slice(&self.bytes()?)?),
        }
    }
}

/// One version of a blackboard key, with its provenance.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// Version number, from 1.
    pub version: u64,
    /// The agent that wrote this version.
    pub writer: String,
    /// Lowercase hex sha256 of `value`.
    pub sha256: String,
    /// Unix milliseconds.
    pub written_at: u64,
    /// The stored bytes.
    pub value: Vec<u8>,
}

impl Entry {
    /// The value decoded from JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(serde_json::from_slice(&self.value)?)
    }
}

impl From<mesh::Entry> for Entry {
    fn from(e: mesh::Entry) -> Self {
        Entry {
            key: e.key,
            version: e.version,
            writer: e.writer,
            sha256: e.sha256,
            written_at: e.written_at,
            value: e.value,
        }
    }
}

/// Read the newest version of `key`. Denied unless the manifest grants it, it is in this
/// agent's own namespace, or a delivered task points at it.
pub fn read_blackboard(key: &str) -> Result<Entry, MeshError> {
    mesh::read_blackboard(key, None).map(Entry::from)
}

/// Read one version of `key`.
pub fn read_blackboard_version(key: &str, version: u64) -> Result<Entry, MeshError> {
    mesh::read_blackboard(key, Some(version)).map(Entry::from)
}

/// Claim up to `max` pending tasks addressed to this agent, without waiting.
pub fn check_inbox(max: u32) -> Vec<Task> {
    wait_inbox(max, 0)
}

/// Claim up to `max` pending tasks, waiting up to `wait_ms` for the first one. Use it to
/// join the replies of a fan-out.
pub fn wait_inbox(max: u32, wait_ms: u32) -> Vec<Task> {
    mesh::check_inbox(max, wait_ms)
        .into_iter()
        .map(Task)
        .collect()
}

/// The writing end of a `stream` handoff: chunks become versions of the stream key, and
/// the callee is woken at the first one.
#[derive(Debug)]
pub struct StreamWriter {
    receipt: Receipt,
}

impl StreamWriter {
    /// The handoff that opened the stream; `key` is the stream key.
    pub fn receipt(&self) -> &Receipt {
        &self.receipt
    }
    /// Append a chunk; returns its version.
    pub fn write(&self, chunk: &[u8]) -> Result<u64, MeshError> {
        mesh::write_stream(&self.receipt.handoff_id, chunk)
    }
    /// Append a chunk encoded as JSON.
    pub fn write_json<T: Serialize + ?Sized>(&self, value: &T) -> Result<u64, Error> {
        Ok(self.write(&serde_json::to_vec(value)?)?)
    }
    /// Close the stream: the reader sees the end after the last chunk.
    pub fn close(self) -> Result<(), MeshError> {
        mesh::close_stream(&self.receipt.handoff_id)
    }
}

/// The reading end of a stream: chunk after chunk until the writer closes it.
#[derive(Debug, Clone)]
pub struct StreamReader {
    key: String,
    after: u64,
}

impl StreamReader {
    /// Read the stream at `key` from its first chunk.
    pub fn new(key: impl Into<String>) -> Self {
        StreamReader {
            key: key.into(),
            after: 0,
        }
    }
    /// The next chunk, waiting up to `wait_ms` for it; `None` once the stream is closed.
    pub fn next(&mut self, wait_ms: u32) -> Result<Option<Entry>, MeshError> {
        match mesh::read_stream(&self.key, self.after, wait_ms)? {
            mesh::StreamItem::Chunk(e) => {
                self.after = e.version;
                Ok(Some(Entry::from(e)))
            }
            mesh::StreamItem::Closed => Ok(None),
        }
    }
}

/// The host's answer to a successful handoff.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// The handoff's id.
    pub handoff_id: String,
    /// The task created for the callee.
    pub task_id: String,
    /// The agent that received it.
    pub target: String,
    /// The blackboard key holding the data, for the blackboard pattern.
    pub key: Option<String>,
}

/// A handoff under construction: `Handoff::to("writer").summary(..).json(&v).send()`.
#[derive(Debug)]
pub struct Handoff {
    request: mesh::HandoffRequest,
    json_error: Option<serde_json::Error>,
}

impl Handoff {
    /// Start a handoff to an agent id, or to `capability:<name>`.
    pub fn to(target: impl Into<String>) -> Self {
        Handoff {
            request: mesh::HandoffRequest {
                target: target.into(),
                summary: String::new(),
                completed: Vec::new(),
                outstanding: Vec::new(),
                params: Vec::new(),
                data: None,
                pattern: Pattern::Blackboard,
                deadline_ms: None,
                fallback: Fallback::None,
                reply: false,
            },
            json_error: None,
        }
    }
    /// A sentence or two for the callee.
    pub fn summary(mut self, summary: impl Into<String>) -> Self {
        self.request.summary = summary.into();
        self
    }
    /// Steps already done.
    pub fn completed<I: IntoIterator<Item = S>, S: Into<String>>(mut self, steps: I) -> Self {
        self.request.completed = steps.into_iter().map(Into::into).collect();
        self
    }
    /// Subtasks for the callee.
    pub fn outstanding<I: IntoIterator<Item = S>, S: Into<String>>(mut self, steps: I) -> Self {
        self.request.outstanding = steps.into_iter().map(Into::into).collect();
        self
    }
    /// Add a typed parameter.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<ParamValue>) -> Self {
        self.request.params.push(Param {
            name: name.into(),
            value: value.into(),
        });
        self
    }
    /// Attach `value` as JSON data.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(bytes) => self.request.data = Some(bytes),
            Err(e) => self.json_error = Some(e),
        }
        self
    }
    /// Attach raw bytes as data.
    pub fn bytes(mut self, data: Vec<u8>) -> Self {
        self.request.data = Some(data);
        self
    }
    /// Choose how the data travels (default: blackboard pointer).
    pub fn pattern(mut self, pattern: Pattern) -> Self {
        self.request.pattern = pattern;
        self
    }
    /// The callee's deadline, in milliseconds from now.
    pub fn deadline_ms(mut self, ms: u64) -> Self {
        self.request.deadline_ms = Some(ms);
        self
    }
    /// What the host does if the callee misses its deadline or fails.
    pub fn fallback(mut self, fallback: Fallback) -> Self {
        self.request.fallback = fallback;
        self
    }
    /// Ask for the callee's outcome back in this agent's inbox.
    pub fn reply(mut self, reply: bool) -> Self {
        self.request.reply = reply;
        self
    }
    /// Open a stream to the target: write chunks with the returned writer. Data set on
    /// this builder becomes the first chunk.
    pub fn open_stream(mut self) -> Result<StreamWriter, Error> {
        self.request.pattern = Pattern::Stream;
        self.send().map(|receipt| StreamWriter { receipt })
    }
    /// Hand off. Returns once the host has made the handoff durable.
    pub fn send(self) -> Result<Receipt, Error> {
        if let Some(e) = self.json_error {
            return Err(Error::Json(e));
        }
        let r = mesh::hand_off(&self.request)?;
        Ok(Receipt {
            handoff_id: r.handoff_id,
            task_id: r.task_id,
            target: r.target,
            key: r.key,
        })
    }
}

impl From<&str> for ParamValue {
    fn from(v: &str) -> Self {
        ParamValue::Text(v.to_string())
    }
}
impl From<String> for ParamValue {
    fn from(v: String) -> Self {
        ParamValue::Text(v)
    }
}
impl From<i64> for ParamValue {
    fn from(v: i64) -> Self {
        ParamValue::Integer(v)
    }
}
impl From<f64> for ParamValue {
    fn from(v: f64) -> Self {
        ParamValue::Number(v)
    }
}
impl From<bool> for ParamValue {
    fn from(v: bool) -> Self {
        ParamValue::Flag(v)
    }
}

/// What `handle` returns: a summary and the data the host stores at `output/<agent>/<task-id>`.
#[derive(Debug, Clone)]
pub struct Outcome {
    summary: String,
    data: Vec<u8>,
}

impl Outcome {
    /// An outcome with a summary and no data yet.
    pub fn new(summary: impl Into<String>) -> Self {
        Outcome {
            summary: summary.into(),
            data: Vec::new(),
        }
    }
    /// Attach `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self, Error> {
        self.data = serde_json::to_vec(value)?;
        Ok(self)
    }
    /// Attach raw bytes.
    pub fn bytes(mut self, data: Vec<u8>) -> Self {
        self.data = data;
        self
    }
}
