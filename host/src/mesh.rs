//! `baton:agent/mesh`: everything an agent can do to the world, and the checks on it.
//!
//! Refusals an agent can act on (a denied key, a forbidden target, an invalid payload, a
//! full inbox) come back as `mesh-error` values and are logged. Failures of the host itself
//! (the store cannot commit) are traps: the activation ends and the task fails.
//!
//! Waiting calls (`check-inbox` and `read-stream` with a wait) are bounded by
//! [`MAX_WAIT_MS`] and yield to the runtime, so the activation's deadline always cuts an
//! agent off, even inside a host call.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use wasmtime::component::{HasData, Linker};

use crate::bindings::mesh::{self as wit, Host, MeshError};
use crate::grants::{ReadGrants, validate_key};
use crate::manifest::{AgentSpec, CAPABILITY, Limits, Mesh, ROUTE, Route, compile_schema};
use crate::store::{
    self, Backend, Fallback, Kind, NewHandoff, ReadAudits, Refusal, StoreError, StreamRead,
    StreamWriter, TaskRecord,
};

/// Longest `summary` accepted, in bytes.
pub const MAX_SUMMARY: usize = 4096;
/// Most entries in `completed`, `outstanding` or `params`.
pub const MAX_LIST: usize = 256;
/// Most tasks one `check-inbox` call claims.
pub const MAX_CLAIM: u32 = 100;
/// Longest wait of one `check-inbox` or `read-stream` call, in ms.
pub const MAX_WAIT_MS: u64 = 10_000;
/// Most extra attempts a `retry` fallback may ask for.
pub const MAX_RETRIES: u32 = 10;

/// What the host knows of one agent while it runs: its grants and limits.
#[derive(Debug)]
pub struct AgentPolicy {
    /// The agent id.
    pub id: String,
    /// Its static read grants.
    pub reads: ReadGrants,
    /// Agents, capabilities and routes it may hand off to.
    pub handoff: HashSet<String>,
    /// Capabilities it serves.
    pub capabilities: Vec<String>,
    /// Its compiled input schema, for `push` payloads.
    pub schema: Option<jsonschema::Validator>,
    /// Payload fields stripped before a `push` task reaches it.
    pub strip: Vec<String>,
    /// Its limits.
    pub limits: Limits,
}

impl AgentPolicy {
    /// Compile an agent's grants from its manifest entry.
    pub fn new(spec: &AgentSpec) -> Result<Self, String> {
        Ok(AgentPolicy {
            id: spec.id.clone(),
            reads: ReadGrants::new(&spec.id, &spec.reads)?,
            handoff: spec.handoff.iter().cloned().collect(),
            capabilities: spec.capabilities.clone(),
            schema: spec.input_schema.as_ref().map(compile_schema).transpose()?,
            strip: spec.strip.clone(),
            limits: spec.limits.clone(),
        })
    }
}

/// State shared by every activation of a mesh.
#[derive(Debug)]
pub struct Shared {
    /// The durable store.
    pub store: Arc<dyn Backend>,
    /// Every agent of the mesh.
    pub agents: HashMap<String, Arc<AgentPolicy>>,
    /// Conditional routes.
    pub routes: HashMap<String, Route>,
    /// Hop budget of a chain.
    pub max_hops: u32,
    /// Bound of each capability queue.
    pub queue_depth: u64,
    /// Wakes the scheduler when a task becomes ready.
    pub ready: Notify,
    /// Wakes `check-inbox` and `read-stream` waiters when something was written.
    pub changed: Notify,
    /// Who waits for which task to end ([`crate::Host::finished`]), so an ending task
    /// wakes its own waiters and no others, handing them its record when it has it.
    ended: std::sync::Mutex<HashMap<String, Vec<tokio::sync::oneshot::Sender<Ended>>>>,
}

impl Shared {
    /// The shared state for `mesh` over `store`.
    pub fn new(
        mesh: &Mesh,
        store: Arc<dyn Backend>,
        agents: HashMap<String, Arc<AgentPolicy>>,
    ) -> Self {
        Shared {
            store,
            agents,
            routes: mesh
                .routes
                .iter()
                .map(|r| (r.id.clone(), r.clone()))
                .collect(),
            max_hops: mesh.max_hops,
            queue_depth: mesh.queue_depth,
            ready: Notify::new(),
            changed: Notify::new(),
            ended: Default::default(),
        }
    }

    /// A future that resolves when task `id` may have ended (see [`Shared::task_ended`]).
    pub fn on_end(&self, id: &str) -> EndWait<'_> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        // A waiter that gave up took its registration back (see `EndWait`'s drop).
        ended.entry(id.to_string()).or_default().push(tx);
        EndWait {
            shared: self,
            id: id.to_string(),
            rx,
        }
    }

    /// How many tasks someone waits on, for tests.
    #[cfg(test)]
    pub fn end_waits(&self) -> usize {
        self.ended.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Wake whoever waits for task `id`: it reached a final state, or changed state.
    /// `record` is the task as stored now, on disk, if the caller has it: the waiters
    /// then need not read it back.
    pub fn task_ended(&self, id: &str, record: Option<&TaskRecord>) {
        let Some(waiters) = self
            .ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
        else {
            return;
        };
        let record = record.map(|r| Arc::new(r.clone()));
        for w in waiters {
            let _ = w.send(record.clone());
        }
    }

    /// Tell the scheduler and every waiter that the store changed.
    pub fn wake(&self) {
        self.ready.notify_one();
        self.changed.notify_waiters();
    }

    /// The agents serving `capability`, in a stable order.
    pub fn workers(&self, capability: &str) -> Vec<&str> {
        let mut w: Vec<&str> = self
            .agents
            .values()
            .filter(|a| a.capabilities.iter().any(|c| c == capability))
            .map(|a| a.id.as_str())
            .collect();
        w.sort_unstable();
        w
    }
}

/// The `mesh` state of one activation.
#[derive(Debug)]
pub struct MeshCtx {
    /// The running agent.
    pub agent: Arc<AgentPolicy>,
    /// The mesh it runs in.
    pub shared: Arc<Shared>,
    /// The task that woke it; shared with the host, which records how it ended.
    pub task: Arc<TaskRecord>,
    /// Handoffs made so far in this activation: also the position of the next one, by
    /// which the store matches a redelivered task's hand-offs with those it made before.
    pub handoffs: u32,
    /// Streams this activation opened (or found opened by an earlier delivery of its
    /// task), with how many chunks it wrote to each: the position of its next chunk.
    pub streams: Vec<OpenStream>,
    /// Refusals and replayed hand-offs, for the agent's log.
    pub log: Vec<String>,
    /// Whether the audit records of this activation's reads, queued but not waited for,
    /// were stored: the write that records how the activation ended checks it (see
    /// `read_blackboard`).
    pub reads: Arc<ReadAudits>,
}

/// A stream an activation writes.
#[derive(Debug)]
pub struct OpenStream {
    /// The handoff that opened it.
    pub handoff: String,
    /// The stream key.
    pub key: String,
    /// Chunks this activation wrote to it, counting one its hand-off carried.
    pub written: u64,
    /// Whether this activation closed it.
    pub closed: bool,
}

/// A wait for a task's end, registered with [`Shared::on_end`]. Dropped, it takes its
/// registration back: a waiter that finds the task already ended, or gives up, would
/// otherwise leave it in the map for the life of the host, since the end it waited for
/// was announced before it registered (about 250 bytes per task a client waited on).
pub struct EndWait<'a> {
    shared: &'a Shared,
    id: String,
    rx: tokio::sync::oneshot::Receiver<Ended>,
}

/// What an [`EndWait`] hands over: the task as stored when it ended, if the one who
/// ended it had the record.
pub type Ended = Option<Arc<TaskRecord>>;

impl Future for EndWait<'_> {
    type Output = Ended;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Ended> {
        // Only `task_ended` drops a sender, right after it sends: either answer means
        // the task may have ended.
        std::pin::Pin::new(&mut self.rx)
            .poll(cx)
            .map(|sent| sent.ok().flatten())
    }
}

impl Drop for EndWait<'_> {
    fn drop(&mut self) {
        self.rx.close();
        let mut ended = self.shared.ended.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waiters) = ended.get_mut(&self.id) {
            waiters.retain(|w| !w.is_closed());
            if waiters.is_empty() {
                ended.remove(&self.id);
            }
        }
    }
}

impl MeshCtx {
    /// This activation as the writer of the stream `handoff` opened. A stream it did not
    /// open is the store's to refuse; its position then counts from the start.
    fn stream_writer(&self, handoff: &str) -> StreamWriter {
        StreamWriter {
            agent: self.agent.id.clone(),
            task: self.task.id.clone(),
            handoff: handoff.to_string(),
            written: self
                .streams
                .iter()
                .find(|s| s.handoff == handoff)
                .map_or(0, |s| s.written),
        }
    }

    fn stream_mut(&mut self, handoff: &str) -> Option<&mut OpenStream> {
        self.streams.iter_mut().find(|s| s.handoff == handoff)
    }

    fn refuse(&mut self, e: MeshError) -> MeshError {
        let line = format!("{}: {}", self.task.id, describe(&e));
        tracing::warn!(agent = %self.agent.id, "{line}");
        self.log.push(line);
        e
    }

    /// How long a wait of `wait_ms` may last: at most [`MAX_WAIT_MS`]. It is not shortened
    /// to the task's deadline: a wait that outlasts the deadline is cut off by it, so the
    /// task fails for missing its deadline instead of racing it.
    fn wait_bound(&self, wait_ms: u32) -> Duration {
        Duration::from_millis(u64::from(wait_ms).min(MAX_WAIT_MS))
    }
}

/// A one-line description of a mesh error, as logged and shown to operators.
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

fn invalid(field: &str, message: impl Into<String>) -> MeshError {
    MeshError::Invalid(wit::FieldError {
        field: field.into(),
        message: message.into(),
    })
}

fn refusal(r: Refusal, field: &str) -> MeshError {
    match r {
        Refusal::Full(m) => MeshError::Busy(m),
        Refusal::NotFound(m) => MeshError::NotFound(m),
        Refusal::Denied(m) => MeshError::Denied(m),
        Refusal::Invalid(m) => invalid(field, m),
    }
}

fn trap(e: StoreError) -> wasmtime::Error {
    wasmtime::Error::msg(e.to_string())
}

/// The borrowed view the generated `Host` trait is implemented on.
pub struct MeshView<'a> {
    ctx: &'a mut MeshCtx,
}

impl<'a> MeshView<'a> {
    /// A view of `ctx`.
    pub fn new(ctx: &'a mut MeshCtx) -> Self {
        MeshView { ctx }
    }
}

struct HasMesh;

impl HasData for HasMesh {
    type Data<'a> = MeshView<'a>;
}

/// Link `baton:agent/mesh` into `linker`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> MeshView<'_>,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasMesh>(linker, get)
}

/// A handoff request that passed every check.
struct Admitted {
    to: String,
    route: Option<String>,
    pattern: store::Pattern,
    data: Option<Vec<u8>>,
    deadline_ms: u64,
    fallback: Fallback,
    inbox_depth: u64,
}

impl MeshView<'_> {
    /// Check a handoff request against the caller's grants, the mesh and its budgets.
    fn admit(&self, r: wit::HandoffRequest) -> Result<Admitted, MeshError> {
        let me = &self.ctx.agent;
        let shared = &self.ctx.shared;
        let current = &self.ctx.task;
        if self.ctx.handoffs >= me.limits.handoffs_per_activation {
            return Err(MeshError::Busy(format!(
                "agent `{}` has made {} handoffs in this activation, its limit",
                me.id, me.limits.handoffs_per_activation
            )));
        }
        if current.hops + 1 > shared.max_hops {
            return Err(MeshError::Denied(format!(
                "hop budget of {} exhausted: this chain is {} handoffs deep",
                shared.max_hops, current.hops
            )));
        }
        let may = |target: &str| {
            if me.handoff.contains(target) {
                Ok(())
            } else {
                Err(MeshError::Denied(format!(
                    "agent `{}` may not hand off to `{target}`: it is not in its `handoff` list",
                    me.id
                )))
            }
        };
        let mut pattern = pattern_from_wit(r.pattern);
        let params: Vec<store::Param> = r.params.iter().cloned().map(param_from_wit).collect();

        // Resolve the target: a capability pool, a conditional route, or an agent.
        let (to, route, callee) = if let Some(cap) = r.target.strip_prefix(CAPABILITY) {
            let workers = shared.workers(cap);
            let Some(first) = workers.first() else {
                return Err(MeshError::NotFound(format!(
                    "no agent serves capability `{cap}`"
                )));
            };
            may(&r.target)?;
            if !matches!(pattern, store::Pattern::Pull | store::Pattern::Blackboard) {
                return Err(invalid(
                    "pattern",
                    "a `capability:` target is served by pull dispatch; use `pull`",
                ));
            }
            pattern = store::Pattern::Pull;
            (r.target.clone(), None, shared.agents[*first].clone())
        } else if let Some(name) = r.target.strip_prefix(ROUTE) {
            let Some(route) = shared.routes.get(name) else {
                return Err(MeshError::NotFound(format!(
                    "no route `{name}` in this mesh"
                )));
            };
            may(&r.target)?;
            let Some(rule) = route
                .rules
                .iter()
                .find(|rule| rule.matches(&params, current.kind))
            else {
                return Err(MeshError::NotFound(format!(
                    "route `{name}` has no rule matching this handoff"
                )));
            };
            let callee = shared.agents[&rule.to].clone();
            (rule.to.clone(), Some(r.target.clone()), callee)
        } else {
            let Some(callee) = shared.agents.get(&r.target) else {
                return Err(MeshError::NotFound(format!(
                    "no agent `{}` in this mesh",
                    r.target
                )));
            };
            may(&r.target)?;
            (r.target.clone(), None, callee.clone())
        };
        if pattern == store::Pattern::Pull && !to.starts_with(CAPABILITY) {
            return Err(invalid(
                "pattern",
                "pull dispatch needs a `capability:<name>` target",
            ));
        }

        if r.summary.len() > MAX_SUMMARY {
            return Err(MeshError::TooLarge(format!(
                "summary is {} bytes; at most {MAX_SUMMARY}",
                r.summary.len()
            )));
        }
        for (field, len) in [
            ("completed", r.completed.len()),
            ("outstanding", r.outstanding.len()),
            ("params", r.params.len()),
        ] {
            if len > MAX_LIST {
                return Err(MeshError::TooLarge(format!(
                    "{field} has {len} entries; at most {MAX_LIST}"
                )));
            }
        }
        let max = me.limits.payload_kib * 1024;
        if let Some(data) = &r.data
            && data.len() as u64 > max
        {
            return Err(MeshError::TooLarge(format!(
                "data is {} bytes; agent `{}` may send at most {max}",
                data.len(),
                me.id
            )));
        }
        let accepts = callee.limits.payload_kib * 1024;
        if let Some(data) = &r.data
            && data.len() as u64 > accepts
        {
            return Err(MeshError::TooLarge(format!(
                "data is {} bytes; agent `{}` accepts at most {accepts}",
                data.len(),
                callee.id
            )));
        }
        let data = if pattern == store::Pattern::Push {
            Some(push_payload(r.data, &callee)?)
        } else {
            r.data
        };
        let deadline_ms = match r.deadline_ms {
            Some(0) => return Err(invalid("deadline-ms", "must be greater than 0")),
            Some(ms) => ms,
            None => callee.limits.deadline_ms,
        };
        let fallback = match r.fallback {
            wit::Fallback::None => Fallback::None,
            wit::Fallback::Retry(rt) => {
                if rt.attempts == 0 || rt.attempts > MAX_RETRIES {
                    return Err(invalid(
                        "fallback",
                        format!("retry attempts must be 1 to {MAX_RETRIES}"),
                    ));
                }
                Fallback::Retry {
                    attempts: rt.attempts,
                    backoff_ms: rt.backoff_ms,
                }
            }
            wit::Fallback::Reroute(alt) => {
                if !shared.agents.contains_key(&alt) {
                    return Err(invalid(
                        "fallback",
                        format!("no agent `{alt}` to reroute to"),
                    ));
                }
                may(&alt)?;
                Fallback::Reroute { to: alt }
            }
            wit::Fallback::Escalate => Fallback::Escalate,
            wit::Fallback::Record => Fallback::Record,
        };
        self.check_cycle(&to, &r.summary, data.as_deref())?;
        let inbox_depth = if to.starts_with(CAPABILITY) {
            shared.queue_depth
        } else {
            callee.limits.inbox_depth
        };
        Ok(Admitted {
            to,
            route,
            pattern,
            data,
            deadline_ms,
            fallback,
            inbox_depth,
        })
    }

    /// Refuse handing `to` the exact work it was already handed in this chain: the same
    /// target, summary and data coming round again is a cycle with no progress.
    fn check_cycle(&self, to: &str, summary: &str, data: Option<&[u8]>) -> Result<(), MeshError> {
        let fp = store::fingerprint(to, summary, data, None);
        let store = &self.ctx.shared.store;
        let mut at = Some(TaskRecord::clone(&self.ctx.task));
        while let Some(t) = at {
            if t.to == to && t.fingerprint == fp {
                return Err(MeshError::Denied(format!(
                    "cycle: `{to}` was already handed this exact work in this chain (task {}); change the work or stop",
                    t.id
                )));
            }
            at = match &t.parent {
                Some(p) => store.task(p).map_err(|e| MeshError::Busy(e.to_string()))?,
                None => None,
            };
        }
        Ok(())
    }
}

/// The payload of a `push` handoff as the callee will get it: JSON, with the callee's
/// `strip` fields removed, valid against its input schema.
pub(crate) fn push_payload(
    data: Option<Vec<u8>>,
    callee: &AgentPolicy,
) -> Result<Vec<u8>, MeshError> {
    let Some(data) = data else {
        return Err(invalid(
            "data",
            "a push handoff carries its payload in `data`",
        ));
    };
    let mut value: serde_json::Value =
        serde_json::from_slice(&data).map_err(|e| invalid("data", format!("not JSON: {e}")))?;
    if let Some(object) = value.as_object_mut() {
        for field in &callee.strip {
            object.remove(field);
        }
    }
    if let Some(schema) = &callee.schema
        && let Err(e) = schema.validate(&value)
    {
        let field = match e.kind() {
            jsonschema::error::ValidationErrorKind::Required { property } => join_path(
                e.instance_path().as_str(),
                property.as_str().unwrap_or_default(),
            ),
            _ => join_path(e.instance_path().as_str(), ""),
        };
        return Err(invalid(
            &field,
            format!("does not match the input schema of `{}`: {e}", callee.id),
        ));
    }
    Ok(serde_json::to_vec(&value).expect("JSON re-serializes"))
}

/// The payload field an error is about, dotted (`author.name`), from the JSON pointer of
/// the offending value and, for a missing property, its name; `data` for the whole.
fn join_path(pointer: &str, property: &str) -> String {
    let parts: Vec<&str> = pointer
        .split('/')
        .filter(|p| !p.is_empty())
        .chain((!property.is_empty()).then_some(property))
        .collect();
    if parts.is_empty() {
        "data".into()
    } else {
        parts.join(".")
    }
}

impl Host for MeshView<'_> {
    async fn hand_off(
        &mut self,
        request: wit::HandoffRequest,
    ) -> wasmtime::Result<Result<wit::Receipt, MeshError>> {
        let summary = request.summary.clone();
        let completed = request.completed.clone();
        let outstanding = request.outstanding.clone();
        let params = request.params.iter().cloned().map(param_from_wit).collect();
        let reply = request.reply;
        let a = match self.admit(request) {
            Ok(a) => a,
            Err(e) => return Ok(Err(self.ctx.refuse(e))),
        };
        let stream = a.pattern == store::Pattern::Stream;
        // A stream's hand-off may carry its first chunk.
        let carried = u64::from(a.data.is_some());
        let nth = self.ctx.handoffs;
        let committed = self
            .ctx
            .shared
            .store
            .hand_off(NewHandoff {
                from: self.ctx.agent.id.clone(),
                parent: Some(TaskRecord::clone(&self.ctx.task)),
                to: a.to,
                route: a.route,
                kind: Kind::Work,
                summary,
                completed,
                outstanding,
                params,
                pattern: a.pattern,
                data: a.data,
                deadline_ms: a.deadline_ms,
                fallback: a.fallback,
                reply,
                in_reply_to: None,
                pointer: None,
                inbox_depth: a.inbox_depth,
                nth: Some(nth),
            })
            .await
            .map_err(trap)?;
        match committed {
            Ok(c) => {
                self.ctx.handoffs += 1;
                if c.replayed {
                    let line = format!(
                        "{}: hand-off #{nth} was made by an earlier delivery of this task as {}; returned its receipt, recorded nothing new",
                        self.ctx.task.id, c.handoff.id
                    );
                    tracing::info!(agent = %self.ctx.agent.id, "{line}");
                    self.ctx.log.push(line);
                }
                if stream {
                    self.ctx.streams.push(OpenStream {
                        handoff: c.handoff.id.clone(),
                        key: c.handoff.key.clone().unwrap_or_default(),
                        written: carried,
                        closed: false,
                    });
                }
                // The callee may start while the commit is flushed (a crash loses both);
                // the caller learns of the handoff only once it is on disk.
                self.ctx.shared.wake();
                self.ctx.shared.store.durable().await.map_err(trap)?;
                Ok(Ok(wit::Receipt {
                    handoff_id: c.handoff.id,
                    task_id: c.task,
                    target: c.handoff.to,
                    key: c.handoff.key,
                }))
            }
            Err(r) => Ok(Err(self.ctx.refuse(refusal(r, "target")))),
        }
    }

    async fn check_inbox(&mut self, max: u32, wait_ms: u32) -> wasmtime::Result<Vec<wit::Task>> {
        let shared = self.ctx.shared.clone();
        let agent = &self.ctx.agent.id;
        let claimer = &self.ctx.task.id;
        let claimed = wait_for_change(&shared, self.ctx.wait_bound(wait_ms), || {
            let claim = shared.store.claim_inbox(agent, claimer, max.min(MAX_CLAIM));
            async move {
                let tasks = claim.await?;
                Ok((!tasks.is_empty()).then_some(tasks))
            }
        })
        .await
        .map_err(trap)?;
        for t in claimed.iter().flatten() {
            shared.task_ended(&t.id, None);
        }
        Ok(claimed
            .unwrap_or_default()
            .iter()
            .map(task_to_wit)
            .collect())
    }

    async fn write_stream(
        &mut self,
        handoff_id: String,
        chunk: Vec<u8>,
    ) -> wasmtime::Result<Result<u64, MeshError>> {
        let max = self.ctx.agent.limits.payload_kib * 1024;
        if chunk.len() as u64 > max {
            let e = MeshError::TooLarge(format!(
                "chunk is {} bytes; agent `{}` may send at most {max}",
                chunk.len(),
                self.ctx.agent.id
            ));
            return Ok(Err(self.ctx.refuse(e)));
        }
        let by = self.ctx.stream_writer(&handoff_id);
        let written = self
            .ctx
            .shared
            .store
            .stream_write(&by, &chunk)
            .await
            .map_err(trap)?;
        match written {
            Ok(w) => {
                if let Some(open) = self.ctx.stream_mut(&handoff_id) {
                    open.written += 1;
                }
                if w.replayed {
                    let line = format!(
                        "{}: chunk {} of the stream of {handoff_id} was written by an earlier delivery of this task; returned its version, recorded nothing new",
                        self.ctx.task.id, w.version
                    );
                    tracing::info!(agent = %self.ctx.agent.id, "{line}");
                    self.ctx.log.push(line);
                }
                self.ctx.shared.wake();
                self.ctx.shared.store.durable().await.map_err(trap)?;
                Ok(Ok(w.version))
            }
            Err(r) => Ok(Err(self.ctx.refuse(refusal(r, "handoff-id")))),
        }
    }

    async fn close_stream(
        &mut self,
        handoff_id: String,
    ) -> wasmtime::Result<Result<(), MeshError>> {
        // The store takes a close of a closed stream for an earlier delivery's, which this
        // activation's own second close is not.
        if let Some(open) = self.ctx.stream_mut(&handoff_id)
            && open.closed
        {
            let e = invalid(
                "handoff-id",
                format!("the stream at `{}` is closed", open.key),
            );
            return Ok(Err(self.ctx.refuse(e)));
        }
        let by = self.ctx.stream_writer(&handoff_id);
        let closed = self
            .ctx
            .shared
            .store
            .stream_close(&by)
            .await
            .map_err(trap)?;
        match closed {
            Ok(_) => {
                if let Some(open) = self.ctx.stream_mut(&handoff_id) {
                    open.closed = true;
                }
                self.ctx.shared.wake();
                self.ctx.shared.store.durable().await.map_err(trap)?;
                Ok(Ok(()))
            }
            Err(r) => Ok(Err(self.ctx.refuse(refusal(r, "handoff-id")))),
        }
    }

    async fn read_stream(
        &mut self,
        key: String,
        after: u64,
        wait_ms: u32,
    ) -> wasmtime::Result<Result<wit::StreamItem, MeshError>> {
        if let Err(m) = validate_key(&key) {
            return Ok(Err(self.ctx.refuse(invalid("key", m))));
        }
        let bound = self.ctx.wait_bound(wait_ms);
        let shared = self.ctx.shared.clone();
        let reader = &self.ctx.agent.id;
        let read = wait_for_change(&shared, bound, || {
            let read = shared.store.stream_read(reader, &key, after);
            async move {
                Ok(match read.await? {
                    Ok(StreamRead::Pending) => None,
                    done => Some(done),
                })
            }
        })
        .await
        .map_err(trap)?;
        match read {
            Some(Ok(StreamRead::Chunk(e))) => Ok(Ok(wit::StreamItem::Chunk(entry_to_wit(e)))),
            Some(Ok(StreamRead::Closed)) => Ok(Ok(wit::StreamItem::Closed)),
            Some(Err(r)) => Ok(Err(self.ctx.refuse(refusal(r, "key")))),
            Some(Ok(StreamRead::Pending)) | None => {
                let e = MeshError::Timeout(format!(
                    "no chunk after version {after} of `{key}` within {} ms",
                    bound.as_millis()
                ));
                Ok(Err(self.ctx.refuse(e)))
            }
        }
    }

    async fn read_blackboard(
        &mut self,
        key: String,
        version: Option<u64>,
    ) -> wasmtime::Result<Result<wit::Entry, MeshError>> {
        if let Err(m) = validate_key(&key) {
            return Ok(Err(self.ctx.refuse(invalid("key", m))));
        }
        let me = &self.ctx.agent;
        let store = &self.ctx.shared.store;
        let allowed = me.reads.allows(&key) || store.is_granted(&me.id, &key).map_err(trap)?;
        let task = &self.ctx.task.id;
        // Each read's audit record is queued here and not waited for: writes are applied
        // in order, so the record commits no later than the write that records the
        // activation's end, and that write fails the task if the record failed (see
        // `ReadAudits`). A crash that loses the record loses the end too, so the
        // redelivered task reads, and is audited, again. Waiting here would add a commit
        // to every read.
        if !allowed {
            store.audit_read(&me.id, task, &key, Err("not granted"), &self.ctx.reads);
            let e = MeshError::Denied(format!(
                "agent `{}` may not read `{key}`: it is not in its namespace, its `reads` globs, or a task delivered to it",
                me.id
            ));
            return Ok(Err(self.ctx.refuse(e)));
        }
        match store.read(&key, version).map_err(trap)? {
            Some(e) => {
                store.audit_read(&me.id, task, &key, Ok(e.version), &self.ctx.reads);
                Ok(Ok(entry_to_wit(e)))
            }
            None => {
                let what = match version {
                    Some(v) => format!("no version {v} of key `{key}`"),
                    None => format!("no key `{key}`"),
                };
                Ok(Err(self.ctx.refuse(MeshError::NotFound(what))))
            }
        }
    }
}

/// Try `attempt` until it yields something or `bound` has passed, sleeping between tries
/// until the store changes. `None` when the bound passed first. The wait yields to the
/// runtime, so the activation's deadline can always end it.
async fn wait_for_change<T, F>(
    shared: &Shared,
    bound: Duration,
    mut attempt: impl FnMut() -> F,
) -> Result<Option<T>, StoreError>
where
    F: Future<Output = Result<Option<T>, StoreError>>,
{
    let started = tokio::time::Instant::now();
    loop {
        // Registered before the attempt, so a change in between is not missed.
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if let Some(found) = attempt().await? {
            return Ok(Some(found));
        }
        let left = bound.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Ok(None);
        }
        let _ = tokio::time::timeout(left, changed).await;
    }
}

fn entry_to_wit(e: store::EntryRecord) -> wit::Entry {
    wit::Entry {
        key: e.key,
        version: e.version,
        writer: e.writer,
        sha256: e.sha256,
        written_at: e.written_at,
        value: e.value,
    }
}

fn pattern_from_wit(p: wit::Pattern) -> store::Pattern {
    match p {
        wit::Pattern::Blackboard => store::Pattern::Blackboard,
        wit::Pattern::Push => store::Pattern::Push,
        wit::Pattern::Pull => store::Pattern::Pull,
        wit::Pattern::Stream => store::Pattern::Stream,
    }
}

fn pattern_to_wit(p: store::Pattern) -> wit::Pattern {
    match p {
        store::Pattern::Blackboard => wit::Pattern::Blackboard,
        store::Pattern::Push => wit::Pattern::Push,
        store::Pattern::Pull => wit::Pattern::Pull,
        store::Pattern::Stream => wit::Pattern::Stream,
    }
}

fn param_from_wit(p: wit::Param) -> store::Param {
    store::Param {
        name: p.name,
        value: match p.value {
            wit::ParamValue::Text(s) => store::ParamValue::Text(s),
            wit::ParamValue::Integer(i) => store::ParamValue::Integer(i),
            wit::ParamValue::Number(n) => store::ParamValue::Number(n),
            wit::ParamValue::Flag(b) => store::ParamValue::Flag(b),
        },
    }
}

fn param_to_wit(p: &store::Param) -> wit::Param {
    wit::Param {
        name: p.name.clone(),
        value: match &p.value {
            store::ParamValue::Text(s) => wit::ParamValue::Text(s.clone()),
            store::ParamValue::Integer(i) => wit::ParamValue::Integer(*i),
            store::ParamValue::Number(n) => wit::ParamValue::Number(*n),
            store::ParamValue::Flag(b) => wit::ParamValue::Flag(*b),
        },
    }
}

/// A stored task as the guest sees it: the pointer, never the caller's state.
pub fn task_to_wit(t: &TaskRecord) -> wit::Task {
    wit::Task {
        id: t.id.clone(),
        kind: match t.kind {
            Kind::Work => wit::TaskKind::Work,
            Kind::Reply => wit::TaskKind::Reply,
        },
        from: t.from.clone(),
        summary: t.summary.clone(),
        completed: t.completed.clone(),
        outstanding: t.outstanding.clone(),
        params: t.params.iter().map(param_to_wit).collect(),
        pattern: pattern_to_wit(t.pattern),
        pointer: t.pointer.clone(),
        payload: t.payload.clone(),
        deadline: t.deadline,
        in_reply_to: t.in_reply_to.clone(),
    }
}
