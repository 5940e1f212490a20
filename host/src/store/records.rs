//! The records the store keeps: tasks, handoffs, blackboard entries, streams and
//! escalations. They are stored as JSON so a damaged or foreign file fails loudly.

use serde::{Deserialize, Serialize};

/// How a handoff moved its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// Data on the blackboard, pointer in the task.
    Blackboard,
    /// Data inline in the task.
    Push,
    /// Through a capability queue.
    Pull,
    /// Chunk by chunk.
    Stream,
}

impl Pattern {
    /// The lowercase name used in JSON and messages.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Blackboard => "blackboard",
            Pattern::Push => "push",
            Pattern::Pull => "pull",
            Pattern::Stream => "stream",
        }
    }
}

/// New work, or a reply to earlier work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// New work.
    Work,
    /// The outcome of a handoff the recipient made.
    Reply,
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// In the callee's inbox.
    Pending,
    /// An activation is handling it.
    Running,
    /// Claimed through `check-inbox` by an activation that was already running.
    Delivered,
    /// Done; the outcome is on the blackboard.
    Completed,
    /// A stream task whose stream has no chunk yet; it wakes at the first.
    Waiting,
    /// Failed; `error` says why.
    Failed,
}

impl Status {
    /// Whether the task will change no more.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Delivered | Status::Completed | Status::Failed)
    }

    /// The lowercase name used in JSON and text.
    pub fn name(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Delivered => "delivered",
            Status::Completed => "completed",
            Status::Waiting => "waiting",
            Status::Failed => "failed",
        }
    }
}

/// A typed parameter value, as stored and printed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// `true` / `false`.
    Flag(bool),
    /// A whole number.
    Integer(i64),
    /// A number with a fraction.
    Number(f64),
    /// Text.
    Text(String),
}

/// A named parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Param {
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: ParamValue,
}

/// A task, as stored. Fields at their defaults (none, empty, zero, false) are left out of
/// the stored JSON and read back as those defaults: a task is written three times per
/// handoff (hand-off, claim, end) and read back as often, and its defaults were a third
/// of its bytes. Records stored before that, with every field, read the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// `t-<n>`.
    pub id: String,
    /// The first task of the chain this one belongs to.
    pub root: String,
    /// The task whose activation handed this off (none for operator work).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Work or reply.
    pub kind: Kind,
    /// Who handed it off.
    pub from: String,
    /// Whose inbox it is in.
    pub to: String,
    /// The caller's summary.
    pub summary: String,
    /// Steps the caller finished.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub completed: Vec<String>,
    /// Subtasks for the callee.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outstanding: Vec<String>,
    /// Typed parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
    /// How the data travelled.
    pub pattern: Pattern,
    /// The blackboard key holding the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// Inline data (push).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "payload")]
    pub payload: Option<Vec<u8>>,
    /// Unix ms by which the outcome is due.
    pub deadline: u64,
    /// Whether the caller wants the outcome back.
    #[serde(default, skip_serializing_if = "is_false")]
    pub reply: bool,
    /// For a reply: the task whose outcome it carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<String>,
    /// The handoff that created it.
    pub handoff: String,
    /// Where it is in its life.
    pub status: Status,
    /// The agent that ran it: `to`, or the worker that claimed a `capability:` task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The `route:<name>` that chose `to`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Handoffs between the chain's first task and this one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hops: u32,
    /// sha256 of target, summary and data: the same work handed round again is a cycle.
    #[serde(default)]
    pub fingerprint: String,
    /// What to do if it fails.
    #[serde(default, skip_serializing_if = "Fallback::is_none")]
    pub fallback: Fallback,
    /// Deliveries so far.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// The time each delivery has, in ms (a pull task's lease).
    #[serde(default)]
    pub budget_ms: u64,
    /// Not to be delivered before this Unix ms (retry backoff).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub not_before: u64,
    /// What the host did when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_applied: Option<FallbackApplied>,
    /// Workers a pull task trapped or timed out on; redelivery prefers others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_on: Vec<String>,
    /// Unix ms.
    pub created_at: u64,
    /// Unix ms, once final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// Where the outcome is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome_key: Option<String>,
    /// The agent's summary of its outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome_summary: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl TaskRecord {
    /// Who runs (or ran) the task: the agent that claimed it, else its target.
    pub fn runner(&self) -> &str {
        self.agent.as_deref().unwrap_or(&self.to)
    }
}

/// A handoff, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffRecord {
    /// `h-<n>`.
    pub id: String,
    /// The caller.
    pub from: String,
    /// The callee.
    pub to: String,
    /// How the data travelled.
    pub pattern: Pattern,
    /// The blackboard key holding the data, if any.
    pub key: Option<String>,
    /// The task it created.
    pub task: String,
    /// The caller's task, when an agent made it.
    pub parent: Option<String>,
    /// The chain's first task.
    pub root: String,
    /// The `route:<name>` that chose `to`, if any.
    #[serde(default)]
    pub route: Option<String>,
    /// Unix ms.
    pub at: u64,
}

impl HandoffRecord {
    /// The handoff that made `task`. Each of its fields is one of the task's, set from
    /// the same values in the same commit, and a task's never change after it.
    pub(crate) fn of(task: &TaskRecord) -> HandoffRecord {
        HandoffRecord {
            id: task.handoff.clone(),
            from: task.from.clone(),
            to: task.to.clone(),
            pattern: task.pattern,
            key: task.pointer.clone(),
            task: task.id.clone(),
            parent: task.parent.clone(),
            root: task.root.clone(),
            route: task.route.clone(),
            at: task.created_at,
        }
    }
}

/// One version of a key, with provenance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRecord {
    /// The key.
    pub key: String,
    /// From 1, one per write.
    pub version: u64,
    /// The agent whose handoff or outcome wrote it.
    pub writer: String,
    /// Lowercase hex sha256 of `value`.
    pub sha256: String,
    /// Unix ms.
    pub written_at: u64,
    /// The bytes.
    pub value: Vec<u8>,
}

/// What the host does when a task misses its deadline or fails, declared by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Fallback {
    /// The task fails, and so does its chain.
    #[default]
    None,
    /// Run the task again, up to `attempts` more times, waiting `backoff_ms` (doubling).
    Retry {
        /// Extra attempts.
        attempts: u32,
        /// First wait, in ms.
        backoff_ms: u32,
    },
    /// Hand the task to another agent.
    Reroute {
        /// The alternative agent.
        to: String,
    },
    /// Put the task in the operator inbox.
    Escalate,
    /// Record the failure on the blackboard and continue.
    Record,
}

impl Fallback {
    /// Whether this is [`Fallback::None`], the default.
    pub fn is_none(&self) -> bool {
        *self == Fallback::None
    }

    /// The action's name, as printed.
    pub fn name(&self) -> &'static str {
        match self {
            Fallback::None => "none",
            Fallback::Retry { .. } => "retry",
            Fallback::Reroute { .. } => "reroute",
            Fallback::Escalate => "escalate",
            Fallback::Record => "record",
        }
    }
}

/// Why an activation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// It ran past its deadline (or its lease).
    Timeout,
    /// It trapped: a limit, a crash, a host refusal that ends the activation.
    Trap,
    /// It returned an error.
    Error,
}

/// What the host did about a failed task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackApplied {
    /// Why the task failed.
    pub reason: FailureKind,
    /// `retry`, `reroute`, `escalate`, `record`, `redeliver` or `none`.
    pub action: String,
    /// The task that carries the work on (the same task for a retry), if any.
    pub next_task: Option<String>,
}

/// A stream opened by a `stream` handoff; its chunks are the versions of `key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamMeta {
    /// The stream key, `output/<writer>/<handoff>`.
    pub key: String,
    /// The handoff that opened it.
    pub handoff: String,
    /// The agent that writes it.
    pub writer: String,
    /// The reader's task.
    pub task: String,
    /// Chunks written.
    pub chunks: u64,
    /// Whether the writer closed it.
    pub closed: bool,
    /// Chunks the reader has read.
    pub read: u64,
    /// Unix ms of the reader's first chunk.
    pub first_read_at: Option<u64>,
}

/// A task handed to the operator by an `escalate` fallback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escalation {
    /// The failed task.
    pub task: String,
    /// The agent it failed on.
    pub agent: String,
    /// Why.
    pub reason: String,
    /// Unix ms.
    pub at: u64,
    /// Set by `baton operator resolve`.
    pub resolved_at: Option<u64>,
    /// The operator's note.
    pub note: Option<String>,
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

fn is_false(b: &bool) -> bool {
    !b
}

/// A push payload in a stored task: as a JSON string when it is UTF-8 (push payloads are
/// JSON, so nearly always), else as an array of bytes, as every payload was stored
/// before. Either reads back as the same bytes.
mod payload {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::ser::Serializer;

    pub fn serialize<S: Serializer>(payload: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match payload.as_deref().map(std::str::from_utf8) {
            Some(Ok(text)) => s.serialize_str(text),
            Some(Err(_)) => s.collect_seq(payload.iter().flatten()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        d.deserialize_option(Maybe)
    }

    struct Maybe;

    impl<'de> Visitor<'de> for Maybe {
        type Value = Option<Vec<u8>>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a payload: null, a string or an array of bytes")
        }

        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(Bytes).map(Some)
        }
    }

    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string or an array of bytes")
        }

        fn visit_str<E: Error>(self, text: &str) -> Result<Self::Value, E> {
            Ok(text.as_bytes().to_vec())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(b) = seq.next_element::<u8>()? {
                bytes.push(b);
            }
            Ok(bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task with every field it may leave out at its default: decoded from JSON that
    /// holds only the others.
    fn task(payload: Option<Vec<u8>>) -> TaskRecord {
        let mut t: TaskRecord = serde_json::from_value(serde_json::json!({
            "id": "t-1", "root": "t-1", "kind": "work", "from": "operator", "to": "echo",
            "summary": "s", "pattern": "push", "deadline": 9, "handoff": "h-1",
            "status": "pending", "created_at": 0,
        }))
        .unwrap();
        t.payload = payload;
        t
    }

    fn round_trip(t: &TaskRecord) -> (serde_json::Value, TaskRecord) {
        let json = serde_json::to_string(t).unwrap();
        (
            serde_json::from_str(&json).unwrap(),
            serde_json::from_str(&json).unwrap(),
        )
    }

    #[test]
    fn a_payload_that_is_not_utf8_is_stored_as_bytes_and_reads_back() {
        let t = task(Some(vec![0xff, 0x00, b'a']));
        let (json, back) = round_trip(&t);
        assert_eq!(json["payload"], serde_json::json!([255, 0, 97]));
        assert_eq!(back, t);
    }

    #[test]
    fn a_payload_of_another_type_is_refused_saying_what_it_should_be() {
        let mut json = serde_json::to_value(task(None)).unwrap();
        json["payload"] = serde_json::json!(5);
        let e = serde_json::from_value::<TaskRecord>(json).unwrap_err();
        assert!(
            e.to_string()
                .contains("expected a string or an array of bytes"),
            "{e}"
        );
    }

    #[test]
    fn fields_away_from_their_defaults_are_all_stored() {
        let mut t = task(Some(b"{}".to_vec()));
        t.parent = Some("t-0".into());
        t.completed = vec!["c".into()];
        t.outstanding = vec!["o".into()];
        t.params = vec![Param {
            name: "n".into(),
            value: ParamValue::Integer(3),
        }];
        t.pointer = Some("k".into());
        t.reply = true;
        t.in_reply_to = Some("t-0".into());
        t.agent = Some("echo".into());
        t.route = Some("route:r".into());
        t.hops = 2;
        t.fallback = Fallback::Escalate;
        t.attempts = 3;
        t.budget_ms = 4;
        t.not_before = 5;
        t.fallback_applied = Some(FallbackApplied {
            reason: FailureKind::Trap,
            action: "escalate".into(),
            next_task: None,
        });
        t.failed_on = vec!["w".into()];
        t.finished_at = Some(6);
        t.outcome_key = Some("out".into());
        t.outcome_summary = Some("sum".into());
        t.error = Some("e".into());
        let (json, back) = round_trip(&t);
        assert_eq!(back, t);
        // Every field is in the JSON.
        assert_eq!(json.as_object().unwrap().len(), 33, "{json}");

        // And an empty payload is not mistaken for none.
        let (_, back) = round_trip(&task(Some(Vec::new())));
        assert_eq!(back.payload, Some(Vec::new()));
    }
}
