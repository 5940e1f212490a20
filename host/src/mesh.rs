//! `baton:agent/mesh`: everything an agent can do to the world, and the checks on it.
//!
//! Refusals an agent can act on (a denied key, a forbidden target, a full inbox) come back
//! as `mesh-error` values and are logged. Failures of the host itself (the store cannot
//! commit) are traps: the activation ends and the task is recorded as failed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use wasmtime::component::{HasData, Linker};

use crate::bindings::mesh::{self as wit, Host, MeshError};
use crate::grants::{ReadGrants, validate_key};
use crate::manifest::{AgentSpec, Limits};
use crate::store::{self, Kind, NewHandoff, Store, StoreError, TaskRecord};

/// Longest `summary` accepted, in bytes.
pub const MAX_SUMMARY: usize = 4096;
/// Most entries in `completed`, `outstanding` or `params`.
pub const MAX_LIST: usize = 256;
/// Most tasks one `check-inbox` call claims.
pub const MAX_CLAIM: u32 = 100;

/// What the host knows of one agent while it runs: its grants and limits.
#[derive(Debug)]
pub struct AgentPolicy {
    /// The agent id.
    pub id: String,
    /// Its static read grants.
    pub reads: ReadGrants,
    /// Agents it may hand off to.
    pub handoff: HashSet<String>,
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
            limits: spec.limits.clone(),
        })
    }
}

/// State shared by every activation of a mesh.
#[derive(Debug)]
pub struct Shared {
    /// The durable store.
    pub store: Arc<Store>,
    /// Every agent of the mesh.
    pub agents: HashMap<String, Arc<AgentPolicy>>,
}

/// The `mesh` state of one activation.
#[derive(Debug)]
pub struct MeshCtx {
    /// The running agent.
    pub agent: Arc<AgentPolicy>,
    /// The mesh it runs in.
    pub shared: Arc<Shared>,
    /// The task that woke it.
    pub task: TaskRecord,
    /// Handoffs made so far in this activation.
    pub handoffs: u32,
    /// Refusals, for the agent's log.
    pub log: Vec<String>,
}

impl MeshCtx {
    fn refuse(&mut self, e: MeshError) -> MeshError {
        let line = format!("{}: {}", self.task.id, describe(&e));
        tracing::warn!(agent = %self.agent.id, "{line}");
        self.log.push(line);
        e
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

impl MeshView<'_> {
    /// Check a handoff request against the caller's grants and limits.
    fn admit(&self, r: &wit::HandoffRequest) -> Result<(Arc<AgentPolicy>, u64), MeshError> {
        let me = &self.ctx.agent;
        if me.handoffs_exhausted(self.ctx.handoffs) {
            return Err(MeshError::Busy(format!(
                "agent `{}` has made {} handoffs in this activation, its limit",
                me.id, me.limits.handoffs_per_activation
            )));
        }
        if r.pattern != wit::Pattern::Blackboard {
            return Err(invalid(
                "pattern",
                format!(
                    "pattern `{}` is not available in this host; use `blackboard`",
                    pattern_name(r.pattern)
                ),
            ));
        }
        if !matches!(r.fallback, wit::Fallback::None) {
            return Err(invalid(
                "fallback",
                "fallbacks are not available in this host; use `none`",
            ));
        }
        let Some(target) = self.ctx.shared.agents.get(&r.target) else {
            return Err(MeshError::NotFound(format!(
                "no agent `{}` in this mesh",
                r.target
            )));
        };
        if !me.handoff.contains(&r.target) {
            return Err(MeshError::Denied(format!(
                "agent `{}` may not hand off to `{}`: it is not in its `handoff` list",
                me.id, r.target
            )));
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
        let deadline = match r.deadline_ms {
            Some(0) => return Err(invalid("deadline-ms", "must be greater than 0")),
            Some(ms) => ms,
            None => target.limits.deadline_ms,
        };
        Ok((target.clone(), deadline))
    }
}

impl AgentPolicy {
    fn handoffs_exhausted(&self, made: u32) -> bool {
        made >= self.limits.handoffs_per_activation
    }
}

impl Host for MeshView<'_> {
    async fn hand_off(
        &mut self,
        request: wit::HandoffRequest,
    ) -> wasmtime::Result<Result<wit::Receipt, MeshError>> {
        let (target, deadline_ms) = match self.admit(&request) {
            Ok(ok) => ok,
            Err(e) => return Ok(Err(self.ctx.refuse(e))),
        };
        let committed = self.ctx.shared.store.hand_off(NewHandoff {
            from: self.ctx.agent.id.clone(),
            parent: Some(self.ctx.task.clone()),
            to: target.id.clone(),
            kind: Kind::Work,
            summary: request.summary,
            completed: request.completed,
            outstanding: request.outstanding,
            params: request.params.into_iter().map(param_from_wit).collect(),
            pattern: store::Pattern::Blackboard,
            data: request.data,
            deadline_ms,
            reply: request.reply,
            in_reply_to: None,
            pointer: None,
            inbox_depth: target.limits.inbox_depth,
        });
        match committed {
            Ok(c) => {
                self.ctx.handoffs += 1;
                Ok(Ok(wit::Receipt {
                    handoff_id: c.handoff.id,
                    task_id: c.task,
                    target: c.handoff.to,
                    key: c.handoff.key,
                }))
            }
            Err(e @ StoreError::InboxFull { .. }) => {
                Ok(Err(self.ctx.refuse(MeshError::Busy(e.to_string()))))
            }
            Err(e) => Err(trap(e)),
        }
    }

    async fn check_inbox(&mut self, max: u32) -> wasmtime::Result<Vec<wit::Task>> {
        let tasks = self
            .ctx
            .shared
            .store
            .claim_inbox(&self.ctx.agent.id, max.min(MAX_CLAIM))
            .map_err(trap)?;
        Ok(tasks.iter().map(task_to_wit).collect())
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
        if !allowed {
            let e = MeshError::Denied(format!(
                "agent `{}` may not read `{key}`: it is not in its namespace, its `reads` globs, or a task delivered to it",
                me.id
            ));
            return Ok(Err(self.ctx.refuse(e)));
        }
        match store.read(&key, version).map_err(trap)? {
            Some(e) => Ok(Ok(wit::Entry {
                key: e.key,
                version: e.version,
                writer: e.writer,
                sha256: e.sha256,
                written_at: e.written_at,
                value: e.value,
            })),
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

fn pattern_name(p: wit::Pattern) -> &'static str {
    pattern_from_wit(p).name()
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
