//! Handoffs, claims, completion and failure: the life of a task, one commit per step.
//!
//! A task is made ready (inbox + wake queue) when it is handed off, or, for a stream, at
//! its first chunk. The host claims the oldest ready task whose agent is free; the claim
//! grants the task's pointer to the agent that runs it. Completion stores the outcome and
//! any reply; failure applies the caller's declared fallback in the same commit, so a
//! crash never leaves a failure without its consequence.

use std::sync::Arc;

use redb::Value as _;
use sha2::{Digest, Sha256};

use super::commit::Ack;
use super::wal::Tx;
use super::{
    CHAIN, GRANTS, HANDOFF_ONCE, HANDOFFS, INBOX, INBOX_CLAIMS, OPERATOR_INBOX, Queued, READY,
    RUNNING, ReadAudits, STREAMS, Store, StoreError, get_handoff, get_task, next, now_ms, put,
    put_json, put_task, try_get_task,
};
use crate::grants::output_key;
use crate::manifest::{OPERATOR, hex};
use crate::store::records::*;

/// A pull task is redelivered this many times after traps or lease expiries before its
/// fallback applies.
pub const MAX_DELIVERIES: u32 = 3;

/// Writer of the records the host itself puts on the blackboard (failure records).
pub const HOST_WRITER: &str = "host";

/// A handoff to record: everything but the ids, which the store assigns.
#[derive(Debug, Clone)]
pub struct NewHandoff {
    /// The caller (an agent id or `operator`).
    pub from: String,
    /// The caller's current task, if an agent hands off.
    pub parent: Option<TaskRecord>,
    /// The callee: an agent id or `capability:<name>`.
    pub to: String,
    /// The `route:<name>` that chose `to`.
    pub route: Option<String>,
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
    /// Milliseconds the callee has (per delivery, for pull).
    pub deadline_ms: u64,
    /// What to do if the callee fails.
    pub fallback: Fallback,
    /// Whether to send the outcome back.
    pub reply: bool,
    /// For replies: the task answered.
    pub in_reply_to: Option<String>,
    /// An existing key the task points at, instead of writing new data (replies, reroutes).
    pub pointer: Option<String>,
    /// The callee's inbox (or queue) bound.
    pub inbox_depth: u64,
    /// For an agent's hand-off: how many hand-offs its activation made before this one.
    /// The n-th hand-off of a task is recorded once (see [`Store::hand_off`]); `None` for
    /// the host's own (submissions, replies, reroutes), which commit with their cause.
    pub nth: Option<u32>,
}

/// What `hand_off` committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The handoff record.
    pub handoff: HandoffRecord,
    /// The task created for the callee.
    pub task: String,
    /// Whether an earlier delivery of the caller's task made this hand-off already, so
    /// nothing new was recorded and this is its original receipt.
    pub replayed: bool,
}

/// A request the store turned down; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The callee's inbox or queue is at its bound.
    #[error("{0}")]
    Full(String),
    /// No such handoff, stream or record.
    #[error("{0}")]
    NotFound(String),
    /// The caller may not do this.
    #[error("{0}")]
    Denied(String),
    /// The request does not fit the record's state.
    #[error("{0}")]
    Invalid(String),
}

/// How [`Store::claim_ready`] chooses an agent for a ready task: from its target, the
/// workers it failed on, and the agents already picked in the same claim. It may be
/// called again for the same tasks (a claim redone in a fresh transaction), so it keeps
/// no state of its own.
pub type Pick = std::sync::Arc<PickFn>;

/// What a [`Pick`] calls.
pub type PickFn = dyn Fn(&str, &[&str], &[String]) -> Option<String> + Send + Sync;

/// A pick for one claim, made now: free to borrow what it consults.
pub type Picker<'a> = dyn Fn(&str, &[&str], &[String]) -> Option<String> + 'a;

/// A store result that may also be a refusal.
pub type Outcome<T> = Result<Result<T, Refusal>, StoreError>;

impl Store {
    /// Record a handoff: write its data (to `output/<from>/<handoff-id>`, or inline for
    /// push), create the callee's task and make it ready, all in one commit.
    ///
    /// An agent's hand-offs happen once per task. A task is delivered again when its
    /// activation did not finish (the host died, the worker trapped or lost its lease,
    /// a retry), and the new activation hands off again what the first one may already
    /// have committed. So the store keeps, with each hand-off, the caller's task and its
    /// position `nth` in the activation; a later hand-off at the same position of the same
    /// task returns that original, marked `replayed`, and records nothing. This assumes
    /// agents are deterministic in the hand-offs they make: a redelivered activation that
    /// hands off differently still gets the original receipts for its first n hand-offs.
    pub fn hand_off(&self, h: NewHandoff) -> Queued<Result<Committed, Refusal>> {
        self.write(Ack::Acknowledged, move |txn| record_handoff(txn, h.clone()))
    }

    /// Claim up to `max` ready tasks, oldest first, that `pick` finds agents for. `pick`
    /// gets a task's target (an agent or `capability:<name>`), the workers it already
    /// failed on, and the agents picked so far in this claim; it returns the agent to run
    /// the task, or `None` while none is free. Each claimed task becomes running and its
    /// pointer is granted. The claim is lazy (not fsynced by itself): a crash that loses it
    /// leaves the tasks ready.
    pub fn claim_ready(&self, max: usize, pick: Pick) -> Queued<Vec<TaskRecord>> {
        self.write(Ack::Lazy, move |txn| claim_ready_in(txn, max, &*pick))
    }

    /// Claim up to `max` pending tasks from `agent`'s inbox (for `check-inbox`), on
    /// behalf of its running task `claimer`. They stay the claimer's until it completes;
    /// if it fails, or the host dies first, they go back to the inbox.
    pub fn claim_inbox(&self, agent: &str, claimer: &str, max: u32) -> Queued<Vec<TaskRecord>> {
        let (agent, claimer) = (agent.to_string(), claimer.to_string());
        self.write(Ack::Lazy, move |txn| {
            claim_inbox_in(txn, &agent, &claimer, max)
        })
    }

    /// Store the outcome of `task` at `output/<agent>/<task>`, mark it completed, and, if
    /// the caller asked, put a reply pointing there in the caller's inbox (due in
    /// `reply_deadline_ms`), all in one commit. If `audits` shows a read of the
    /// activation went unaudited, the task fails instead, and nothing of the outcome is
    /// stored (see [`ReadAudits`]).
    pub fn complete(
        &self,
        task_id: &str,
        summary: &str,
        data: &[u8],
        reply_deadline_ms: u64,
        audits: &Arc<ReadAudits>,
    ) -> Queued<TaskRecord> {
        let (task_id, summary, data) = (task_id.to_string(), summary.to_string(), data.to_vec());
        let audits = audits.clone();
        self.write(Ack::Acknowledged, move |txn| match audits.unaudited() {
            None => complete_in(txn, &task_id, &summary, &data, reply_deadline_ms),
            Some(reason) => {
                fail_claimer(txn, &task_id, FailureKind::Trap, &reason, reply_deadline_ms)
            }
        })
    }

    /// Record that `task` failed, and apply its fallback in the same commit: redeliver a
    /// pull task, retry with backoff, reroute to another agent, escalate to the operator,
    /// or record the failure on the blackboard. Returns the task as stored. If `audits`
    /// shows a read of the activation went unaudited, that is the failure recorded.
    pub fn fail(
        &self,
        task_id: &str,
        kind: FailureKind,
        reason: &str,
        reply_deadline_ms: u64,
        audits: &Arc<ReadAudits>,
    ) -> Queued<TaskRecord> {
        let (task_id, reason) = (task_id.to_string(), reason.to_string());
        let audits = audits.clone();
        self.write(Ack::Acknowledged, move |txn| match audits.unaudited() {
            None => fail_claimer(txn, &task_id, kind, &reason, reply_deadline_ms),
            Some(reason) => {
                fail_claimer(txn, &task_id, FailureKind::Trap, &reason, reply_deadline_ms)
            }
        })
    }

    /// Make every task that was running when the host stopped ready again (a crash left
    /// them claimed but unfinished). Returns how many were redelivered.
    pub fn recover(&self) -> Queued<usize> {
        self.write(Ack::Acknowledged, |txn| {
            let ids: Vec<String> = txn
                .queues()
                .running
                .iter()
                .map(|(k, ())| k.to_string())
                .collect();
            for id in &ids {
                txn.remove(RUNNING, id.as_str())?;
                release_claims(txn, id, true)?;
                let mut task: TaskRecord = get_task(txn, id)?;
                task.status = Status::Pending;
                task.agent = None;
                make_ready(txn, &task)?;
            }
            Ok(ids.len())
        })
    }

    /// Whether [`Store::claim_ready`] would claim anything now, read without a write:
    /// the scheduler asks before it queues a claim, so that a look that finds nothing to
    /// run costs the writer thread no transaction.
    pub fn claimable(&self, pick: &Picker<'_>) -> Result<bool, StoreError> {
        let q = super::dispatch::lock(&self.queues);
        Ok(!choose(q.ready.iter(), 1, pick, now_ms())?.is_empty())
    }

    /// Whether any task is ready but waiting for its backoff to pass.
    pub fn has_delayed(&self) -> Result<bool, StoreError> {
        let now = now_ms();
        for (_, v) in super::dispatch::lock(&self.queues).ready.iter() {
            if parse_ready(v)?.not_before > now {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Tasks a claim takes: each one's queue place, target and id, and the agent picked to
/// run it.
type Chosen = Vec<((u64, String, String), String)>;

/// The tasks of the wake queue `ready` (place, entry; oldest first) a claim of at most
/// `max` would take at `now`, oldest first.
fn choose<'r>(
    ready: impl Iterator<Item = (u64, &'r str)>,
    max: usize,
    pick: &Picker<'_>,
    now: u64,
) -> Result<Chosen, StoreError> {
    let mut chosen: Vec<(u64, String, String)> = Vec::new();
    let mut picked: Vec<String> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    for (seq, v) in ready {
        if chosen.len() >= max {
            break;
        }
        let entry = parse_ready(v)?;
        if entry.not_before > now || refused.iter().any(|r| r == entry.target) {
            continue;
        }
        match pick(entry.target, &entry.avoid, &picked) {
            Some(agent) => {
                chosen.push((seq, entry.target.into(), entry.task.into()));
                picked.push(agent);
            }
            // Tasks with workers to avoid may still go to others; only a plain
            // refusal means the whole target is busy.
            None if entry.avoid.is_empty() => refused.push(entry.target.to_string()),
            None => {}
        }
    }
    Ok(chosen.into_iter().zip(picked).collect())
}

/// The body of [`Store::claim_ready`].
pub(super) fn claim_ready_in(
    txn: &Tx<'_>,
    max: usize,
    pick: &Picker<'_>,
) -> Result<Vec<TaskRecord>, StoreError> {
    let now = now_ms();
    let chosen = choose(txn.queues().ready.iter(), max, pick, now)?;
    let mut claimed = Vec::with_capacity(chosen.len());
    for ((seq, target, tid), agent) in chosen {
        txn.remove(READY, seq)?;
        txn.remove(INBOX, (target.as_str(), seq))?;
        let mut task: TaskRecord = get_task(txn, &tid)?;
        task.status = Status::Running;
        task.agent = Some(agent);
        task.attempts += 1;
        if task.pattern == Pattern::Pull {
            // A pull task's deadline is a lease, renewed at each delivery.
            task.deadline = now.saturating_add(task.budget_ms);
        }
        txn.put(RUNNING, tid.as_str(), ())?;
        deliver(txn, &task)?;
        claimed.push(task);
    }
    Ok(claimed)
}

/// The body of [`Store::claim_inbox`].
fn claim_inbox_in(
    txn: &Tx<'_>,
    agent: &str,
    claimer: &str,
    max: u32,
) -> Result<Vec<TaskRecord>, StoreError> {
    let now = now_ms();
    let entries: Vec<(u64, String)> = txn
        .queues()
        .inbox
        .from(&(agent, 0))
        .take_while(|((a, _), _)| *a == agent)
        .map(|(k, v)| (k.1, v.to_string()))
        .collect();
    let mut claimed = Vec::new();
    for (seq, tid) in entries {
        if claimed.len() >= max as usize {
            break;
        }
        let mut task: TaskRecord = get_task(txn, &tid)?;
        if task.not_before > now {
            continue;
        }
        txn.remove(INBOX, (agent, seq))?;
        txn.remove(READY, seq)?;
        task.status = Status::Delivered;
        task.agent = Some(agent.to_string());
        task.finished_at = Some(now);
        deliver(txn, &task)?;
        txn.put(INBOX_CLAIMS, (claimer, task.id.as_str()), ())?;
        claimed.push(task);
    }
    Ok(claimed)
}

/// Record that `task_id` failed, giving back what it claimed through `check-inbox`.
fn fail_claimer(
    txn: &Tx<'_>,
    task_id: &str,
    kind: FailureKind,
    reason: &str,
    reply_deadline_ms: u64,
) -> Result<TaskRecord, StoreError> {
    release_claims(txn, task_id, true)?;
    fail_in(txn, task_id, kind, reason, reply_deadline_ms)
}

/// The body of [`Store::complete`].
fn complete_in(
    txn: &Tx<'_>,
    task_id: &str,
    summary: &str,
    data: &[u8],
    reply_deadline_ms: u64,
) -> Result<TaskRecord, StoreError> {
    let mut task: TaskRecord = get_task(txn, task_id)?;
    let now = now_ms();
    let key = output_key(task.runner(), &task.id);
    put(txn, &key, task.runner(), data, now)?;
    task.status = Status::Completed;
    task.finished_at = Some(now);
    task.outcome_key = Some(key);
    task.outcome_summary = Some(summary.to_string());
    task.error = None;
    put_task(txn, &task)?;
    txn.remove(RUNNING, task.id.as_str())?;
    // What it claimed through `check-inbox` was handled with it.
    release_claims(txn, &task.id, false)?;
    end_handoffs_of(txn, &task.id)?;
    send_reply(txn, &task, summary, reply_deadline_ms)?;
    Ok(task)
}

/// One entry of the wake queue.
struct Ready<'a> {
    target: &'a str,
    task: &'a str,
    not_before: u64,
    avoid: Vec<&'a str>,
}

fn parse_ready(v: &str) -> Result<Ready<'_>, StoreError> {
    let mut parts = v.split('\t');
    match (
        parts.next(),
        parts.next(),
        parts.next().map(str::parse::<u64>),
        parts.next(),
    ) {
        (Some(target), Some(task), Some(Ok(not_before)), avoid) => Ok(Ready {
            target,
            task,
            not_before,
            avoid: avoid
                .map(|a| a.split(',').filter(|w| !w.is_empty()).collect())
                .unwrap_or_default(),
        }),
        _ => Err(StoreError::Corrupt("ready".into(), v.to_string())),
    }
}

/// The fingerprint of a piece of work: who gets it, what it says, and its data.
pub fn fingerprint(to: &str, summary: &str, data: Option<&[u8]>, pointer: Option<&str>) -> String {
    let mut h = Sha256::new();
    for part in [to.as_bytes(), summary.as_bytes(), data.unwrap_or_default()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(pointer.unwrap_or_default().as_bytes());
    hex(&h.finalize())
}

/// The body of a handoff, inside the caller's transaction.
pub(super) fn record_handoff(txn: &Tx<'_>, h: NewHandoff) -> Outcome<Committed> {
    let once = match (&h.parent, h.nth) {
        (Some(parent), Some(n)) => Some((parent.id.clone(), n)),
        _ => None,
    };
    // Before any check: what was handed off stays handed off, even if the inbox is full now.
    if let Some((parent, n)) = &once
        && let Some(hid) = txn.get(HANDOFF_ONCE, (parent.as_str(), *n))?
    {
        let hid = String::from_utf8_lossy(&hid);
        let handoff = get_handoff(txn, &hid)?;
        return Ok(Ok(Committed {
            task: handoff.task.clone(),
            handoff,
            replayed: true,
        }));
    }
    let depth = super::pending(&txn.queues().inbox, &h.to, h.inbox_depth);
    if depth >= h.inbox_depth {
        return Ok(Err(Refusal::Full(format!(
            "inbox of `{}` is full ({} pending tasks); try later",
            h.to, h.inbox_depth
        ))));
    }
    let (handoff_n, task_n) = (next(txn, "handoff")?, next(txn, "task")?);
    let (hid, tid) = (format!("h-{handoff_n}"), format!("t-{task_n}"));
    let now = now_ms();
    let root = h
        .parent
        .as_ref()
        .map_or_else(|| tid.clone(), |p| p.root.clone());
    let fingerprint = fingerprint(&h.to, &h.summary, h.data.as_deref(), h.pointer.as_deref());

    let mut waiting = false;
    let (pointer, payload) = match (h.pattern, h.pointer, h.data) {
        (_, Some(pointer), _) => (Some(pointer), None),
        (Pattern::Push, None, data) => (None, data),
        (Pattern::Stream, None, data) => {
            let key = output_key(&h.from, &hid);
            let chunks = match data {
                Some(first) => {
                    put(txn, &key, &h.from, &first, now)?;
                    1
                }
                None => 0,
            };
            waiting = chunks == 0;
            let meta = StreamMeta {
                key: key.clone(),
                handoff: hid.clone(),
                writer: h.from.clone(),
                task: tid.clone(),
                chunks,
                closed: false,
                read: 0,
                first_read_at: None,
            };
            put_json(txn, STREAMS, &key, &meta)?;
            (Some(key), None)
        }
        (_, None, Some(data)) => {
            let key = output_key(&h.from, &hid);
            put(txn, &key, &h.from, &data, now)?;
            (Some(key), None)
        }
        (_, None, None) => (None, None),
    };

    // The chain's remaining time shrinks at each hop; a pull task's deadline is a lease
    // set at each claim instead.
    let mut deadline = now.saturating_add(h.deadline_ms);
    if let Some(p) = &h.parent
        && h.kind == Kind::Work
    {
        deadline = deadline.min(p.deadline.max(now));
    }
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
        deadline,
        reply: h.reply,
        in_reply_to: h.in_reply_to,
        handoff: hid.clone(),
        status: if waiting {
            Status::Waiting
        } else {
            Status::Pending
        },
        agent: None,
        route: h.route.clone(),
        hops: h.parent.as_ref().map_or(0, |p| p.hops + 1),
        fingerprint,
        fallback: h.fallback,
        attempts: 0,
        budget_ms: h.deadline_ms,
        not_before: 0,
        fallback_applied: None,
        failed_on: Vec::new(),
        created_at: now,
        finished_at: None,
        outcome_key: None,
        outcome_summary: None,
        error: None,
    };
    let handoff = HandoffRecord::of(&task);
    // A handoff numbered like its task is read from the task (see `HANDOFFS`).
    if handoff_n != task_n {
        put_json(txn, HANDOFFS, &hid, &handoff)?;
    }
    if let Some((parent, n)) = &once {
        txn.open_table(HANDOFF_ONCE)?
            .insert((parent.as_str(), *n), hid.as_str())?;
    }
    super::audit::append(
        txn,
        super::audit::AuditEvent {
            event: "handoff",
            agent: &handoff.from,
            key: handoff.key.as_deref(),
            task: Some(&tid),
            detail: format!(
                "{hid}: {} -> {} ({}{})",
                handoff.from,
                handoff.to,
                handoff.pattern.name(),
                if task.kind == Kind::Reply {
                    ", reply"
                } else {
                    ""
                }
            ),
        },
    )?;
    // Making it ready saves the task; a stream's task waiting for its first chunk is
    // saved as it is.
    if waiting {
        put_task(txn, &task)?;
    } else {
        make_ready(txn, &task)?;
    }
    // One row for the handoff and the task it made, a line each (see `Store::chain`);
    // none for a chain's first, which its root task's record holds.
    if task.parent.is_some() {
        txn.put(
            CHAIN,
            (root.as_str(), next(txn, "seq")?),
            format!("h:{hid}\nt:{tid}").as_str(),
        )?;
    }
    Ok(Ok(Committed {
        handoff,
        task: tid,
        replayed: false,
    }))
}

/// Put a task in its target's inbox and the wake queue, at the back.
pub(super) fn make_ready(txn: &Tx<'_>, task: &TaskRecord) -> Result<(), StoreError> {
    put_task(txn, task)?;
    let seq = next(txn, "seq")?;
    txn.put(INBOX, (task.to.as_str(), seq), task.id.as_str())?;
    let entry = format!(
        "{}\t{}\t{}\t{}",
        task.to,
        task.id,
        task.not_before,
        task.failed_on.join(",")
    );
    txn.put(READY, seq, entry.as_str())?;
    Ok(())
}

/// Forget what `claimer` claimed through `check-inbox`; with `give_back`, put those
/// tasks back in their inbox, pending, as if never claimed (their claimer failed or died).
fn release_claims(txn: &Tx<'_>, claimer: &str, give_back: bool) -> Result<(), StoreError> {
    let claimed: Vec<String> = txn
        .queues()
        .claims
        .from(&(claimer, ""))
        .take_while(|((by, _), ())| *by == claimer)
        .map(|((_, id), ())| id.to_string())
        .collect();
    for id in &claimed {
        txn.remove(INBOX_CLAIMS, (claimer, id.as_str()))?;
        if !give_back {
            continue;
        }
        let mut task: TaskRecord = get_task(txn, id)?;
        if task.status == Status::Delivered {
            task.status = Status::Pending;
            task.agent = None;
            task.finished_at = None;
            make_ready(txn, &task)?;
        }
    }
    Ok(())
}

/// Drop the record of which hand-offs `task` made (see [`Store::hand_off`]) once it has
/// ended for good: it is never delivered again, so nothing will replay them. A crash
/// before this commit loses the drop with the end, and the rerun still finds them. The
/// streams those hand-offs opened and no delivery closed are closed with it: nothing will
/// write to them any more.
fn end_handoffs_of(txn: &Tx<'_>, task: &str) -> Result<(), StoreError> {
    // Read without a write transaction: most tasks made no hand-off, and their end
    // then commits nothing to redb (see `Tx`).
    let made = txn.range(HANDOFF_ONCE, (task, 0)..=(task, u32::MAX))?;
    for (key, handoff) in made {
        let n = <(&str, u32)>::from_bytes(&key).1;
        let handoff = String::from_utf8_lossy(&handoff);
        super::streams::close_if_open(txn, &handoff)?;
        txn.open_table(HANDOFF_ONCE)?.remove((task, n))?;
    }
    Ok(())
}

/// Mark a task delivered to its agent: save it and grant its pointer.
fn deliver(txn: &Tx<'_>, task: &TaskRecord) -> Result<(), StoreError> {
    put_task(txn, task)?;
    if let Some(key) = &task.pointer {
        txn.put(GRANTS, (task.runner(), key.as_str()), ())?;
    }
    Ok(())
}

/// If the caller of `task` asked for a reply, hand it one pointing at the task's outcome.
fn send_reply(
    txn: &Tx<'_>,
    task: &TaskRecord,
    summary: &str,
    deadline_ms: u64,
) -> Result<(), StoreError> {
    if !task.reply || task.from == OPERATOR || task.kind != Kind::Work {
        return Ok(());
    }
    let from = task.runner().to_string();
    let reply = NewHandoff {
        from,
        parent: Some(task.clone()),
        to: task.from.clone(),
        route: None,
        kind: Kind::Reply,
        summary: summary.to_string(),
        completed: Vec::new(),
        outstanding: Vec::new(),
        params: Vec::new(),
        pattern: Pattern::Blackboard,
        data: None,
        deadline_ms,
        fallback: Fallback::None,
        reply: false,
        in_reply_to: Some(task.id.clone()),
        pointer: task.outcome_key.clone(),
        // The caller asked for this answer; its bound must not drop it.
        inbox_depth: u64::MAX,
        nth: None,
    };
    match record_handoff(txn, reply)? {
        Ok(_) => Ok(()),
        Err(r) => Err(StoreError::Corrupt(task.id.clone(), r.to_string())),
    }
}

fn fail_in(
    txn: &Tx<'_>,
    task_id: &str,
    kind: FailureKind,
    reason: &str,
    reply_deadline_ms: u64,
) -> Result<TaskRecord, StoreError> {
    let now = now_ms();
    let mut task: TaskRecord = get_task(txn, task_id)?;
    txn.remove(RUNNING, task.id.as_str())?;
    task.error = Some(reason.to_string());
    let applied = |action: &str, next_task: Option<String>| FallbackApplied {
        reason: kind,
        action: action.into(),
        next_task,
    };

    // A pull worker that trapped or lost its lease gives the task back to the queue.
    if task.pattern == Pattern::Pull && kind != FailureKind::Error && task.attempts < MAX_DELIVERIES
    {
        task.status = Status::Pending;
        if let Some(worker) = task.agent.take() {
            task.failed_on.push(worker);
        }
        task.fallback_applied = Some(applied("redeliver", Some(task.id.clone())));
        make_ready(txn, &task)?;
        return Ok(task);
    }

    task.fallback_applied = None;
    match task.fallback.clone() {
        Fallback::Retry {
            attempts,
            backoff_ms,
        } if task.attempts <= attempts => {
            let wait = u64::from(backoff_ms) << (task.attempts.saturating_sub(1)).min(16);
            task.status = Status::Pending;
            task.agent = None;
            task.not_before = now.saturating_add(wait);
            task.deadline = now.saturating_add(wait).saturating_add(task.budget_ms);
            task.fallback_applied = Some(applied("retry", Some(task.id.clone())));
            make_ready(txn, &task)?;
            return Ok(task);
        }
        Fallback::Reroute { to } => {
            let parent: Option<TaskRecord> = match &task.parent {
                Some(p) => try_get_task(txn, p)?,
                None => None,
            };
            let rerouted = NewHandoff {
                from: task.from.clone(),
                parent: parent.or_else(|| Some(task.clone())),
                to,
                route: None,
                kind: Kind::Work,
                summary: task.summary.clone(),
                completed: task.completed.clone(),
                outstanding: task.outstanding.clone(),
                params: task.params.clone(),
                pattern: task.pattern,
                data: task.payload.clone(),
                deadline_ms: task.budget_ms,
                fallback: Fallback::None,
                reply: task.reply,
                in_reply_to: None,
                pointer: task.pointer.clone(),
                inbox_depth: u64::MAX,
                nth: None,
            };
            let next_task = match record_handoff(txn, rerouted)? {
                Ok(c) => Some(c.task),
                Err(_) => None,
            };
            finish_failed(txn, &mut task, now)?;
            task.fallback_applied = Some(applied("reroute", next_task));
            put_task(txn, &task)?;
            return Ok(task);
        }
        Fallback::Escalate => {
            let agent = task.runner().to_string();
            let escalation = Escalation {
                task: task.id.clone(),
                agent,
                reason: reason.to_string(),
                at: now,
                resolved_at: None,
                note: None,
            };
            put_json(txn, OPERATOR_INBOX, &task.id, &escalation)?;
            task.fallback_applied = Some(applied("escalate", None));
        }
        Fallback::Record => task.fallback_applied = Some(applied("record", None)),
        Fallback::Retry { .. } => task.fallback_applied = Some(applied("retry", None)),
        Fallback::None => {}
    }
    finish_failed(txn, &mut task, now)?;
    put_task(txn, &task)?;
    send_reply(txn, &task, &format!("failed: {reason}"), reply_deadline_ms)?;
    Ok(task)
}

/// Mark a task failed for good and put its failure record on the blackboard, at
/// `failures/<task>`, written by the host, so a caller's reply can point at it.
fn finish_failed(txn: &Tx<'_>, task: &mut TaskRecord, now: u64) -> Result<(), StoreError> {
    task.status = Status::Failed;
    task.finished_at = Some(now);
    end_handoffs_of(txn, &task.id)?;
    let key = format!("failures/{}", task.id);
    let record = serde_json::json!({
        "task": task.id,
        "agent": task.runner(),
        "reason": task.error,
        "attempts": task.attempts,
    });
    put(txn, &key, HOST_WRITER, record.to_string().as_bytes(), now)?;
    task.outcome_key = Some(key);
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;

    use redb::{ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _};

    use super::*;

    /// A blackboard hand-off from `from` to `to` carrying `{}`, the `nth` its caller's
    /// activation made (`parent`'s).
    pub(in crate::store) fn work(
        from: &str,
        parent: Option<TaskRecord>,
        to: &str,
        nth: Option<u32>,
    ) -> NewHandoff {
        NewHandoff {
            from: from.into(),
            parent,
            to: to.into(),
            route: None,
            kind: Kind::Work,
            summary: "work".into(),
            completed: Vec::new(),
            outstanding: Vec::new(),
            params: Vec::new(),
            pattern: Pattern::Blackboard,
            data: Some(b"{}".to_vec()),
            deadline_ms: 30_000,
            fallback: Fallback::None,
            reply: false,
            in_reply_to: None,
            pointer: None,
            inbox_depth: 100,
            nth,
        }
    }

    /// A pick that gives each task for `agent` to it, and no other task.
    pub(in crate::store) fn only(agent: &'static str) -> Pick {
        Arc::new(move |t, _, _| (t == agent).then(|| t.to_string()))
    }

    /// Hand work from the operator to `agent` and claim it: the task, running.
    pub(in crate::store) fn running(store: &Store, agent: &'static str) -> TaskRecord {
        store
            .hand_off(work(OPERATOR, None, agent, None))
            .wait()
            .unwrap()
            .unwrap();
        store
            .claim_ready(1, only(agent))
            .wait()
            .unwrap()
            .pop()
            .unwrap()
    }

    /// End running task `id` as `end` says: `complete`, or else `fail`, with no read
    /// left unaudited.
    pub(in crate::store) fn end_task(store: &Store, id: &str, end: &str) -> Queued<TaskRecord> {
        match end {
            "complete" => store.complete(id, "done", b"{}", 1_000, &Default::default()),
            _ => store.fail(id, FailureKind::Error, "no", 1_000, &Default::default()),
        }
    }

    /// How many rows redb holds in `table`.
    fn rows<K: redb::Key + 'static, V: redb::Value + 'static>(
        store: &Store,
        table: redb::TableDefinition<'static, K, V>,
    ) -> u64 {
        let txn = store.db.begin_read().unwrap();
        txn.open_table(table).unwrap().len().unwrap()
    }

    /// A task's hand-offs are remembered while it may be delivered again, and forgotten
    /// once it has ended for good.
    #[test]
    fn a_finished_task_forgets_which_handoffs_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let only_a = only("a");
        for end in ["complete", "fail"] {
            let root = store
                .hand_off(work(OPERATOR, None, "a", None))
                .wait()
                .unwrap()
                .unwrap();
            let task = store
                .claim_ready(1, only_a.clone())
                .wait()
                .unwrap()
                .pop()
                .unwrap();
            assert_eq!(task.id, root.task);
            let first = store
                .hand_off(work("a", Some(task.clone()), "b", Some(0)))
                .wait()
                .unwrap()
                .unwrap();
            let again = store
                .hand_off(work("a", Some(task.clone()), "b", Some(0)))
                .wait()
                .unwrap()
                .unwrap();
            assert!(again.replayed && again.task == first.task);
            assert_eq!(rows(&store, HANDOFF_ONCE), 1);
            let ended = end_task(&store, &task.id, end).wait().unwrap();
            assert!(ended.status.is_final(), "{end}: {:?}", ended.status);
            assert_eq!(rows(&store, HANDOFF_ONCE), 0, "after {end}");
        }
    }

    /// A handoff numbered like the task it made is read from that task: it writes no row
    /// of its own, and a chain's first handoff and task write no chain row; both read
    /// back whole, in the chain's order.
    #[test]
    fn a_handoff_is_read_from_the_task_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let root = running(&store, "a");
        let child = store
            .hand_off(work("a", Some(root.clone()), "b", Some(0)))
            .wait()
            .unwrap()
            .unwrap();

        let first = store.handoff(&root.handoff).unwrap().unwrap();
        let expected = HandoffRecord {
            id: root.handoff.clone(),
            from: OPERATOR.into(),
            to: "a".into(),
            pattern: Pattern::Blackboard,
            key: Some(format!("output/{OPERATOR}/{}", root.handoff)),
            task: root.id.clone(),
            parent: None,
            root: root.id.clone(),
            route: None,
            at: root.created_at,
        };
        assert_eq!(first, expected);
        let second = store.handoff(&child.handoff.id).unwrap().unwrap();
        assert_eq!(
            (second.from.as_str(), second.to.as_str(), &second.task),
            ("a", "b", &child.task)
        );
        assert_eq!(
            (second.parent.as_deref(), second.root.as_str()),
            (Some(root.id.as_str()), root.id.as_str())
        );
        assert_eq!(second.key, Some(format!("output/a/{}", child.handoff.id)));

        let chain = store.chain(&root.id).unwrap();
        assert_eq!(chain.handoffs, [first, second]);
        let tasks: Vec<&str> = chain.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(tasks, [root.id.as_str(), child.task.as_str()]);
        // What the store holds: no handoff row, and one chain row, the second's.
        assert_eq!(rows(&store, HANDOFFS), 0);
        assert_eq!(rows(&store, CHAIN), 1);
        // A handoff never made is none, row or not.
        assert!(store.handoff("h-9").unwrap().is_none());
    }

    /// Where a store's two counters drifted apart, a handoff numbered unlike its task
    /// keeps a row, and reads back from it; the task of its number is not taken for it.
    #[test]
    fn a_handoff_numbered_unlike_its_task_keeps_its_row() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        {
            let db = redb::Database::open(dir.path().join(crate::store::STORE_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(crate::store::COUNTERS)
                .unwrap()
                .insert("task", 5)
                .unwrap();
            txn.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let made = store
            .hand_off(work(OPERATOR, None, "a", None))
            .wait()
            .unwrap()
            .unwrap();
        assert_eq!(
            (made.handoff.id.as_str(), made.task.as_str()),
            ("h-1", "t-6")
        );
        assert_eq!(rows(&store, HANDOFFS), 1);
        assert_eq!(store.handoff("h-1").unwrap().unwrap(), made.handoff);
        assert!(store.handoff("h-6").unwrap().is_none());
        let chain = store.chain("t-6").unwrap();
        assert_eq!(chain.handoffs, [made.handoff]);
    }

    /// A read whose audit record the writer could not store fails the activation's end
    /// queued after it without waiting for it: the task fails with the store's error as
    /// its reason, and nothing the activation produced (an outcome, or the agent's own
    /// account of its failure) is stored. Under group commit the record and the end are
    /// in one batch; under immediate commits the record fails first, alone. Here the
    /// record fails for real: the audit chain's last record is unreadable, so no record
    /// can be chained to it.
    #[test]
    fn an_end_queued_behind_a_read_that_could_not_be_audited_fails_the_task() {
        use crate::store::CommitPolicy;
        for policy in [CommitPolicy::Group, CommitPolicy::Immediate] {
            for end in ["complete", "fail"] {
                unaudited_read_then(policy, end);
            }
        }
    }

    fn unaudited_read_then(policy: crate::store::CommitPolicy, end: &str) {
        let dir = tempfile::tempdir().unwrap();
        let task = running(&Store::open(dir.path()).unwrap(), "a");
        {
            let db = redb::Database::open(dir.path().join(super::super::STORE_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut audit = txn.open_table(super::super::AUDIT).unwrap();
                let last = audit.last().unwrap().unwrap().0.value();
                audit.insert(last, "not a record").unwrap();
            }
            txn.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        store.set_commit_policy(policy);
        let reads = Arc::new(ReadAudits::default());
        let release = crate::store::commit::tests::hold_writer(&store);
        store.audit_read("a", &task.id, "notes/a", Ok(1), &reads);
        let ended = match end {
            "complete" => store.complete(&task.id, "done", b"{\"secret\":1}", 1_000, &reads),
            _ => store.fail(&task.id, FailureKind::Error, "secret", 1_000, &reads),
        };
        crate::store::commit::tests::queued(&store, 2);
        release();

        let ended = ended.wait().unwrap();
        let case = format!("{policy:?}, {end}: {ended:?}");
        assert_eq!(ended.status, Status::Failed, "{case}");
        let error = ended.error.as_deref().unwrap_or_default();
        assert!(
            error.starts_with("trap: the audit record of a read could not be stored: ")
                && error.contains("audit")
                && !error.contains("secret"),
            "{case}"
        );
        // What the failure left is the failure's record, not the outcome.
        assert_eq!(
            ended.outcome_key,
            Some(format!("failures/{}", task.id)),
            "{case}"
        );
        assert_eq!(
            store.keys("output/a/").unwrap(),
            Vec::<String>::new(),
            "{case}"
        );
        assert_eq!(store.task(&task.id).unwrap().unwrap(), ended, "{case}");
    }
}
