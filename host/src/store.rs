//! The durable state of a mesh, in one redb file: the blackboard with every version of
//! every key, the inboxes, and the task and handoff records that make up the audit trail.
//!
//! Each operation is one write transaction, committed before it returns: a handoff the
//! host acknowledged is on disk, with its data, its task and the callee's inbox entry
//! together or not at all.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::grants::output_key;
use crate::manifest::{OPERATOR, hex};

/// The file inside the state directory.
pub const STORE_FILE: &str = "store.redb";

const BB_VALUES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("bb_values");
const BB_META: TableDefinition<(&str, u64), &str> = TableDefinition::new("bb_meta");
const BB_HEAD: TableDefinition<&str, u64> = TableDefinition::new("bb_head");
const TASKS: TableDefinition<&str, &str> = TableDefinition::new("tasks");
const HANDOFFS: TableDefinition<&str, &str> = TableDefinition::new("handoffs");
/// (agent, seq) → task id: what `check-inbox` claims from, in arrival order.
const INBOX: TableDefinition<(&str, u64), &str> = TableDefinition::new("inbox");
/// seq → task id: the order in which the host wakes agents.
const READY: TableDefinition<u64, &str> = TableDefinition::new("ready");
/// (root task, seq) → `t:<task>` or `h:<handoff>`: everything in one chain, in order.
const CHAIN: TableDefinition<(&str, u64), &str> = TableDefinition::new("chain");
/// (agent, key): keys an agent may read because a task delivered to it points there.
const GRANTS: TableDefinition<(&str, &str), ()> = TableDefinition::new("grants");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// A store operation failed; the operation changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (I/O, corruption, lock).
    #[error("store: {0}")]
    Db(#[from] redb::Error),
    /// A record did not decode; the file was written by something else or damaged.
    #[error("store: damaged record `{0}`: {1}")]
    Corrupt(String, String),
    /// A record the operation needs does not exist.
    #[error("store: no {0} `{1}`")]
    Missing(&'static str, String),
    /// The callee's inbox is at its bound.
    #[error("inbox of `{agent}` is full ({depth} pending tasks); try later")]
    InboxFull {
        /// The callee.
        agent: String,
        /// Its bound.
        depth: u64,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.into()) }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

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
    /// Failed; `error` says why.
    Failed,
}

impl Status {
    /// Whether the task will change no more.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Delivered | Status::Completed | Status::Failed)
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

/// A task, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// `t-<n>`.
    pub id: String,
    /// The first task of the chain this one belongs to.
    pub root: String,
    /// The task whose activation handed this off (none for operator work).
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
    pub completed: Vec<String>,
    /// Subtasks for the callee.
    pub outstanding: Vec<String>,
    /// Typed parameters.
    pub params: Vec<Param>,
    /// How the data travelled.
    pub pattern: Pattern,
    /// The blackboard key holding the data.
    pub pointer: Option<String>,
    /// Inline data (push).
    pub payload: Option<Vec<u8>>,
    /// Unix ms by which the outcome is due.
    pub deadline: u64,
    /// Whether the caller wants the outcome back.
    pub reply: bool,
    /// For a reply: the task whose outcome it carries.
    pub in_reply_to: Option<String>,
    /// The handoff that created it.
    pub handoff: String,
    /// Where it is in its life.
    pub status: Status,
    /// Unix ms.
    pub created_at: u64,
    /// Unix ms, once final.
    pub finished_at: Option<u64>,
    /// Where the outcome is stored.
    pub outcome_key: Option<String>,
    /// The agent's summary of its outcome.
    pub outcome_summary: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
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
    /// Unix ms.
    pub at: u64,
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

#[derive(Serialize, Deserialize)]
struct EntryMeta {
    writer: String,
    sha256: String,
    written_at: u64,
}

/// A handoff to record: everything but the ids, which the store assigns.
#[derive(Debug, Clone)]
pub struct NewHandoff {
    /// The caller (an agent id or `operator`).
    pub from: String,
    /// The caller's current task, if an agent hands off.
    pub parent: Option<TaskRecord>,
    /// The callee.
    pub to: String,
    /// Work or reply.
    pub kind: Kind,
    /// Summary for the callee.
    pub summary: String,
    /// Steps done.
    pub completed: Vec<String>,
    /// Subtasks.
    pub outstanding: Vec<String>,
    /// Typed parameters.
    pub params: Vec<Param>,
    /// How the data travels.
    pub pattern: Pattern,
    /// The data.
    pub data: Option<Vec<u8>>,
    /// Milliseconds the callee has.
    pub deadline_ms: u64,
    /// Whether to send the outcome back.
    pub reply: bool,
    /// For replies: the task answered.
    pub in_reply_to: Option<String>,
    /// For replies: the key the reply points at, instead of writing new data.
    pub pointer: Option<String>,
    /// The callee's inbox bound.
    pub inbox_depth: u64,
}

/// What `hand_off` committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The handoff record.
    pub handoff: HandoffRecord,
    /// The task created for the callee.
    pub task: String,
}

/// Everything in one chain, in the order it happened.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    /// Tasks, oldest first.
    pub tasks: Vec<TaskRecord>,
    /// Handoffs, oldest first.
    pub handoffs: Vec<HandoffRecord>,
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The redb-backed store of one state directory.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Open (or create) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Db(redb::Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot create state directory `{}`: {e}", dir.display()),
            )))
        })?;
        let path = dir.join(STORE_FILE);
        let db = Database::create(&path)?;
        // Create every table up front so readers never meet a missing one.
        let txn = db.begin_write()?;
        {
            txn.open_table(BB_VALUES)?;
            txn.open_table(BB_META)?;
            txn.open_table(BB_HEAD)?;
            txn.open_table(TASKS)?;
            txn.open_table(HANDOFFS)?;
            txn.open_table(INBOX)?;
            txn.open_table(READY)?;
            txn.open_table(CHAIN)?;
            txn.open_table(GRANTS)?;
            txn.open_table(COUNTERS)?;
        }
        txn.commit()?;
        Ok(Store { db, path })
    }

    /// The redb file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record a handoff: write its data to `output/<from>/<handoff-id>` (blackboard
    /// pattern), create the callee's task and put it in the callee's inbox, in one commit.
    pub fn hand_off(&self, h: NewHandoff) -> Result<Committed, StoreError> {
        let txn = self.db.begin_write()?;
        let committed = record_handoff(&txn, h)?;
        txn.commit()?;
        Ok(committed)
    }

    /// Take the oldest pending task of any agent, mark it running, and grant its
    /// pointer to the agent it wakes.
    pub fn claim_next(&self) -> Result<Option<TaskRecord>, StoreError> {
        let txn = self.db.begin_write()?;
        let task = {
            let mut ready = txn.open_table(READY)?;
            let Some((seq, tid)) = ready
                .pop_first()?
                .map(|(k, v)| (k.value(), v.value().to_string()))
            else {
                return Ok(None);
            };
            drop(ready);
            let mut task: TaskRecord = get_json(&txn, TASKS, &tid)?;
            txn.open_table(INBOX)?.remove((task.to.as_str(), seq))?;
            task.status = Status::Running;
            deliver(&txn, &task)?;
            task
        };
        txn.commit()?;
        Ok(Some(task))
    }

    /// Claim up to `max` pending tasks from `agent`'s inbox (for `check-inbox`).
    pub fn claim_inbox(&self, agent: &str, max: u32) -> Result<Vec<TaskRecord>, StoreError> {
        let txn = self.db.begin_write()?;
        let mut claimed = Vec::new();
        {
            let mut inbox = txn.open_table(INBOX)?;
            let entries: Vec<(u64, String)> = inbox
                .range((agent, 0)..=(agent, u64::MAX))?
                .take(max as usize)
                .map(|r| r.map(|(k, v)| (k.value().1, v.value().to_string())))
                .collect::<Result<_, _>>()?;
            let mut ready = txn.open_table(READY)?;
            for (seq, tid) in entries {
                inbox.remove((agent, seq))?;
                ready.remove(seq)?;
                let mut task: TaskRecord = get_json(&txn, TASKS, &tid)?;
                task.status = Status::Delivered;
                task.finished_at = Some(now_ms());
                deliver(&txn, &task)?;
                claimed.push(task);
            }
        }
        txn.commit()?;
        Ok(claimed)
    }

    /// Store the outcome of `task` at `output/<agent>/<task>`, mark the task completed,
    /// and, if the caller asked, put a reply pointing there in the caller's inbox (due in
    /// `reply_deadline_ms`), all in one commit.
    pub fn complete(
        &self,
        task_id: &str,
        summary: &str,
        data: &[u8],
        reply_deadline_ms: u64,
    ) -> Result<TaskRecord, StoreError> {
        let txn = self.db.begin_write()?;
        let task = {
            let mut task: TaskRecord = get_json(&txn, TASKS, task_id)?;
            let now = now_ms();
            let key = output_key(&task.to, &task.id);
            put(&txn, &key, &task.to, data, now)?;
            task.status = Status::Completed;
            task.finished_at = Some(now);
            task.outcome_key = Some(key);
            task.outcome_summary = Some(summary.to_string());
            put_json(&txn, TASKS, &task.id, &task)?;
            if task.reply && task.from != OPERATOR {
                // The caller asked for this; its bound must not drop the answer.
                record_handoff(
                    &txn,
                    NewHandoff {
                        from: task.to.clone(),
                        parent: Some(task.clone()),
                        to: task.from.clone(),
                        kind: Kind::Reply,
                        summary: summary.to_string(),
                        completed: Vec::new(),
                        outstanding: Vec::new(),
                        params: Vec::new(),
                        pattern: Pattern::Blackboard,
                        data: None,
                        deadline_ms: reply_deadline_ms,
                        reply: false,
                        in_reply_to: Some(task.id.clone()),
                        pointer: task.outcome_key.clone(),
                        inbox_depth: u64::MAX,
                    },
                )?;
            }
            task
        };
        txn.commit()?;
        Ok(task)
    }

    /// Mark `task` failed with `reason`.
    pub fn fail(&self, task_id: &str, reason: &str) -> Result<TaskRecord, StoreError> {
        let txn = self.db.begin_write()?;
        let task = {
            let mut task: TaskRecord = get_json(&txn, TASKS, task_id)?;
            task.status = Status::Failed;
            task.finished_at = Some(now_ms());
            task.error = Some(reason.to_string());
            put_json(&txn, TASKS, &task.id, &task)?;
            task
        };
        txn.commit()?;
        Ok(task)
    }

    /// One version of `key` (the newest when `version` is `None`).
    pub fn read(&self, key: &str, version: Option<u64>) -> Result<Option<EntryRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let version = match version {
            Some(v) => v,
            None => match txn.open_table(BB_HEAD)?.get(key)? {
                Some(v) => v.value(),
                None => return Ok(None),
            },
        };
        let meta = txn.open_table(BB_META)?;
        let Some(m) = meta.get((key, version))? else {
            return Ok(None);
        };
        let meta: EntryMeta = decode(key, m.value())?;
        let value = txn
            .open_table(BB_VALUES)?
            .get((key, version))?
            .map(|v| v.value().to_vec())
            .unwrap_or_default();
        Ok(Some(EntryRecord {
            key: key.to_string(),
            version,
            writer: meta.writer,
            sha256: meta.sha256,
            written_at: meta.written_at,
            value,
        }))
    }

    /// Every version of `key`, oldest first.
    pub fn history(&self, key: &str) -> Result<Vec<EntryRecord>, StoreError> {
        let head = match self.db.begin_read()?.open_table(BB_HEAD)?.get(key)? {
            Some(v) => v.value(),
            None => return Ok(Vec::new()),
        };
        (1..=head)
            .filter_map(|v| self.read(key, Some(v)).transpose())
            .collect()
    }

    /// Whether a task delivered to `agent` pointed at `key`.
    pub fn is_granted(&self, agent: &str, key: &str) -> Result<bool, StoreError> {
        Ok(self
            .db
            .begin_read()?
            .open_table(GRANTS)?
            .get((agent, key))?
            .is_some())
    }

    /// The task called `id`.
    pub fn task(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TASKS)?;
        let Some(v) = table.get(id)? else {
            return Ok(None);
        };
        decode(id, v.value()).map(Some)
    }

    /// How many tasks wait in `agent`'s inbox.
    pub fn inbox_depth(&self, agent: &str) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let inbox = txn.open_table(INBOX)?;
        let n = inbox.range((agent, 0)..=(agent, u64::MAX))?.count();
        Ok(n as u64)
    }

    /// Everything in the chain that starts at task `root`.
    pub fn chain(&self, root: &str) -> Result<Chain, StoreError> {
        let txn = self.db.begin_read()?;
        let chain = txn.open_table(CHAIN)?;
        let tasks = txn.open_table(TASKS)?;
        let handoffs = txn.open_table(HANDOFFS)?;
        let mut out = Chain::default();
        for row in chain.range((root, 0)..=(root, u64::MAX))? {
            let (_, v) = row?;
            let v = v.value();
            match v.split_once(':') {
                Some(("t", id)) => {
                    let t = tasks
                        .get(id)?
                        .ok_or_else(|| StoreError::Missing("task", id.into()))?;
                    out.tasks.push(decode(id, t.value())?);
                }
                Some(("h", id)) => {
                    let h = handoffs
                        .get(id)?
                        .ok_or_else(|| StoreError::Missing("handoff", id.into()))?;
                    out.handoffs.push(decode(id, h.value())?);
                }
                _ => return Err(StoreError::Corrupt(root.into(), format!("chain row `{v}`"))),
            }
        }
        Ok(out)
    }
}

/// The body of a handoff, inside the caller's transaction.
fn record_handoff(txn: &WriteTransaction, h: NewHandoff) -> Result<Committed, StoreError> {
    let depth = count_prefix(txn, &h.to)?;
    if depth >= h.inbox_depth {
        return Err(StoreError::InboxFull {
            agent: h.to,
            depth: h.inbox_depth,
        });
    }
    let hid = format!("h-{}", next(txn, "handoff")?);
    let tid = format!("t-{}", next(txn, "task")?);
    let now = now_ms();
    let root = h
        .parent
        .as_ref()
        .map_or_else(|| tid.clone(), |p| p.root.clone());

    let (pointer, payload) = match (h.pattern, h.pointer, h.data) {
        (_, Some(pointer), _) => (Some(pointer), None),
        (Pattern::Push, None, data) => (None, data),
        (_, None, Some(data)) => {
            let key = output_key(&h.from, &hid);
            put(txn, &key, &h.from, &data, now)?;
            (Some(key), None)
        }
        (_, None, None) => (None, None),
    };

    let task = TaskRecord {
        id: tid.clone(),
        root: root.clone(),
        parent: h.parent.as_ref().map(|p| p.id.clone()),
        kind: h.kind,
        from: h.from.clone(),
        to: h.to.clone(),
        summary: h.summary,
        completed: h.completed,
        outstanding: h.outstanding,
        params: h.params,
        pattern: h.pattern,
        pointer: pointer.clone(),
        payload,
        deadline: now.saturating_add(h.deadline_ms),
        reply: h.reply,
        in_reply_to: h.in_reply_to,
        handoff: hid.clone(),
        status: Status::Pending,
        created_at: now,
        finished_at: None,
        outcome_key: None,
        outcome_summary: None,
        error: None,
    };
    let handoff = HandoffRecord {
        id: hid.clone(),
        from: h.from,
        to: h.to.clone(),
        pattern: h.pattern,
        key: pointer,
        task: tid.clone(),
        parent: task.parent.clone(),
        root: root.clone(),
        at: now,
    };
    put_json(txn, TASKS, &tid, &task)?;
    put_json(txn, HANDOFFS, &hid, &handoff)?;
    let seq = next(txn, "seq")?;
    txn.open_table(INBOX)?
        .insert((h.to.as_str(), seq), tid.as_str())?;
    txn.open_table(READY)?.insert(seq, tid.as_str())?;
    let mut chain = txn.open_table(CHAIN)?;
    chain.insert(
        (root.as_str(), next(txn, "seq")?),
        format!("h:{hid}").as_str(),
    )?;
    chain.insert(
        (root.as_str(), next(txn, "seq")?),
        format!("t:{tid}").as_str(),
    )?;
    Ok(Committed { handoff, task: tid })
}

/// Mark a task delivered to its agent: save it and grant its pointer.
fn deliver(txn: &WriteTransaction, task: &TaskRecord) -> Result<(), StoreError> {
    put_json(txn, TASKS, &task.id, task)?;
    if let Some(key) = &task.pointer {
        txn.open_table(GRANTS)?
            .insert((task.to.as_str(), key.as_str()), ())?;
    }
    Ok(())
}

/// Append a version of `key` written by `writer`.
fn put(
    txn: &WriteTransaction,
    key: &str,
    writer: &str,
    value: &[u8],
    now: u64,
) -> Result<u64, StoreError> {
    let mut head = txn.open_table(BB_HEAD)?;
    let version = head.get(key)?.map_or(0, |v| v.value()) + 1;
    head.insert(key, version)?;
    let meta = EntryMeta {
        writer: writer.to_string(),
        sha256: hex(&Sha256::digest(value)),
        written_at: now,
    };
    let meta = serde_json::to_string(&meta).expect("entry metadata serializes");
    txn.open_table(BB_META)?
        .insert((key, version), meta.as_str())?;
    txn.open_table(BB_VALUES)?.insert((key, version), value)?;
    Ok(version)
}

fn next(txn: &WriteTransaction, counter: &str) -> Result<u64, StoreError> {
    let mut counters = txn.open_table(COUNTERS)?;
    let n = counters.get(counter)?.map_or(0, |v| v.value()) + 1;
    counters.insert(counter, n)?;
    Ok(n)
}

fn count_prefix(txn: &WriteTransaction, agent: &str) -> Result<u64, StoreError> {
    let inbox = txn.open_table(INBOX)?;
    let n = inbox.range((agent, 0)..=(agent, u64::MAX))?.count();
    Ok(n as u64)
}

fn put_json<T: Serialize>(
    txn: &WriteTransaction,
    table: TableDefinition<&str, &str>,
    id: &str,
    value: &T,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(value).expect("records serialize");
    txn.open_table(table)?.insert(id, json.as_str())?;
    Ok(())
}

fn get_json<T: for<'de> Deserialize<'de>>(
    txn: &WriteTransaction,
    table: TableDefinition<&str, &str>,
    id: &str,
) -> Result<T, StoreError> {
    let t = txn.open_table(table)?;
    let v = t
        .get(id)?
        .ok_or_else(|| StoreError::Missing("record", id.into()))?;
    decode(id, v.value())
}

fn decode<T: for<'de> Deserialize<'de>>(id: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(id.to_string(), e.to_string()))
}
