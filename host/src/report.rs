//! The chain of a task, as `baton run`, `baton demo` and `baton trace` print it.
//!
//! Everything here is read back from the store, never from memory of the run, so a trace
//! after a restart shows exactly what a live run showed.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::manifest::OPERATOR;
use crate::store::{
    Backend, Chain, EntryRecord, FallbackApplied, Kind, Status, StoreError, TaskRecord,
};

/// One handoff between agents.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HandoffView {
    /// `h-<n>`.
    pub id: String,
    /// The caller.
    pub from: String,
    /// The callee.
    pub to: String,
    /// `blackboard`, `push`, `pull` or `stream`.
    pub pattern: String,
    /// The blackboard key holding the data, if any.
    pub key: Option<String>,
    /// The task it created.
    pub task: String,
    /// `work`, or `reply` for an outcome sent back to the caller.
    pub kind: Kind,
    /// The agent that ran the task: for pull dispatch, the worker that claimed it.
    pub claimed_by: Option<String>,
    /// The `route:<name>` whose rule chose `to`, if any.
    pub route: Option<String>,
}

/// One task of the chain.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskView {
    /// `t-<n>`.
    pub id: String,
    /// The agent that ran it, or its target while none has.
    pub agent: String,
    /// Its target: an agent or `capability:<name>`.
    pub to: String,
    /// Who handed it over.
    pub from: String,
    /// Work or reply.
    pub kind: Kind,
    /// Where it is in its life.
    pub status: Status,
    /// The caller's summary.
    pub summary: String,
    /// Where its outcome is stored.
    pub outcome_key: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// Deliveries.
    pub attempts: u32,
    /// What the host did when it failed.
    pub fallback: Option<FallbackApplied>,
}

/// The operator's submission that started the chain.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InputView {
    /// The first agent.
    pub to: String,
    /// The blackboard key holding the submitted data, if any.
    pub key: Option<String>,
}

/// The whole chain of a task.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The chain's first task.
    pub task: String,
    /// `completed` when every task finished, `failed` when any failed, else `pending`.
    pub status: String,
    /// What the operator submitted.
    pub input: InputView,
    /// Every handoff between agents, in order.
    pub handoffs: Vec<HandoffView>,
    /// Every task, in order.
    pub tasks: Vec<TaskView>,
    /// The outcome of the chain: that of the completed task created last.
    pub outcome_key: Option<String>,
    /// That outcome, as JSON when it parses, else as text.
    pub outcome: Value,
    /// The first failure that no fallback handled, if any.
    pub error: Option<String>,
    /// Extra facts a demo adds (stream timings, the refused push, ...).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// A failed task that no fallback carried on: the chain failed.
fn unhandled(t: &TaskRecord) -> bool {
    t.status == Status::Failed
        && t.fallback_applied
            .as_ref()
            .is_none_or(|a| a.action == "retry" || a.action == "redeliver")
}

impl Report {
    /// Build the report of the chain that `task` (any task in it) belongs to.
    pub fn for_task(store: &dyn Backend, task: &str) -> Result<Option<Report>, StoreError> {
        let Some(t) = store.task(task)? else {
            return Ok(None);
        };
        let chain = store.chain(&t.root)?;
        let outcome = last_outcome(&chain.tasks)
            .map(|key| store.read(key, None))
            .transpose()?
            .flatten();
        Ok(Some(Report::from_chain(&t.root, &chain, outcome.as_ref())))
    }

    fn from_chain(root: &str, chain: &Chain, outcome: Option<&EntryRecord>) -> Report {
        let first = chain.tasks.first();
        let failed = chain.tasks.iter().find(|t| unhandled(t));
        let status = if failed.is_some() {
            "failed"
        } else if chain.tasks.iter().all(|t| t.status.is_final()) {
            "completed"
        } else {
            "pending"
        };
        Report {
            task: root.to_string(),
            status: status.into(),
            input: InputView {
                to: first.map(|t| t.to.clone()).unwrap_or_default(),
                key: first.and_then(|t| t.pointer.clone()),
            },
            handoffs: chain
                .handoffs
                .iter()
                .filter(|h| h.from != OPERATOR)
                .map(|h| {
                    let task = chain.tasks.iter().find(|t| t.id == h.task);
                    HandoffView {
                        id: h.id.clone(),
                        from: h.from.clone(),
                        to: h.to.clone(),
                        pattern: h.pattern.name().into(),
                        key: h.key.clone(),
                        task: h.task.clone(),
                        kind: task.map_or(Kind::Work, |t| t.kind),
                        claimed_by: task.and_then(|t| t.agent.clone()),
                        route: h.route.clone(),
                    }
                })
                .collect(),
            tasks: chain
                .tasks
                .iter()
                .map(|t| TaskView {
                    id: t.id.clone(),
                    agent: t.runner().to_string(),
                    to: t.to.clone(),
                    from: t.from.clone(),
                    kind: t.kind,
                    status: t.status,
                    summary: t.summary.clone(),
                    outcome_key: t.outcome_key.clone(),
                    error: t.error.clone(),
                    attempts: t.attempts,
                    fallback: t.fallback_applied.clone(),
                })
                .collect(),
            outcome_key: outcome.map(|e| e.key.clone()),
            outcome: outcome.map_or(Value::Null, |e| value_of(&e.value)),
            error: failed.map(|t| {
                format!(
                    "task {} ({}): {}",
                    t.id,
                    t.to,
                    t.error.clone().unwrap_or_default()
                )
            }),
            extra: serde_json::Map::new(),
        }
    }

    /// The task called `id` in this chain.
    pub fn task(&self, id: &str) -> Option<&TaskView> {
        self.tasks.iter().find(|t| t.id == id)
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "task {}: {}", self.task, self.status);
        let _ = writeln!(
            s,
            "  operator -> {}  (input {})",
            self.input.to,
            self.input.key.as_deref().unwrap_or("none")
        );
        for h in &self.handoffs {
            let _ = writeln!(
                s,
                "  {} {} -> {}  {}{}  key {}  task {}",
                h.id,
                h.from,
                h.to,
                h.pattern,
                if h.kind == Kind::Reply {
                    " (reply)"
                } else {
                    ""
                },
                h.key.as_deref().unwrap_or("-"),
                h.task
            );
        }
        for t in &self.tasks {
            let mut detail = match (&t.outcome_key, &t.error) {
                (_, Some(e)) => format!("error: {e}"),
                (Some(k), None) => format!("outcome {k}"),
                (None, None) => String::new(),
            };
            if let Some(f) = &t.fallback {
                let _ = write!(detail, "  -> {} ({:?})", f.action, f.reason);
            }
            let _ = writeln!(s, "  {} {} {}  {detail}", t.id, t.agent, t.status.name());
        }
        if let Some(key) = &self.outcome_key {
            let pretty = serde_json::to_string_pretty(&self.outcome).unwrap_or_default();
            let _ = writeln!(s, "outcome ({key}):\n{pretty}");
        }
        s
    }
}

/// The outcome key of the chain: that of the completed task created last. Creation order
/// follows the handoffs (a callee after its caller, a reply after the work it answers), so
/// it does not depend on which of two concurrent activations happened to finish first.
fn last_outcome(tasks: &[TaskRecord]) -> Option<&str> {
    tasks
        .iter()
        .rev()
        .find(|t| t.status == Status::Completed)
        .and_then(|t| t.outcome_key.as_deref())
}

/// A stored value for display: JSON when it parses, else text.
pub fn value_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// One blackboard version as `baton bb get` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct EntryView {
    /// The key.
    pub key: String,
    /// From 1.
    pub version: u64,
    /// The agent that wrote it.
    pub writer: String,
    /// Hex sha256 of the stored bytes.
    pub sha256: String,
    /// Unix ms.
    pub written_at: u64,
    /// JSON when it parses, else text.
    pub value: Value,
}

impl From<&EntryRecord> for EntryView {
    fn from(e: &EntryRecord) -> Self {
        EntryView {
            key: e.key.clone(),
            version: e.version,
            writer: e.writer.clone(),
            sha256: e.sha256.clone(),
            written_at: e.written_at,
            value: value_of(&e.value),
        }
    }
}
