//! The seam between the host and where its state lives.
//!
//! The runtime, the mesh imports, reports and the benchmark reach the state only
//! through [`Backend`], so a replicated or networked backend can take the embedded redb
//! [`Store`]'s place without the host changing. What a backend must keep, whatever it is
//! built on:
//!
//! - **Each operation is atomic.** Each write (a handoff with its data, task, inbox entry
//!   and audit record; a completion with its outcome and reply; a failure with its
//!   fallback) happens entirely or not at all, whether or not it shares a commit with
//!   others.
//! - **A single commit order, and prefixes after a crash.** What survives a crash is
//!   everything committed up to some point, never a later write without an earlier one.
//! - **Nothing acknowledged is lost.** The host acknowledges a write only after
//!   [`Backend::durable`] returned for it; from then on it survives a crash.
//! - **Claims are redone.** [`Backend::recover`] makes tasks that were running when the
//!   last host stopped ready again.
//! - **Writes are queued when called, in call order.** A write method returns a future
//!   for its result, but the write is on its way before that future is first polled, and
//!   writes a caller makes one after another are applied in that order. The host relies
//!   on it to queue a read's audit record without waiting, then the write that records
//!   the activation's end, which must see whether that record failed (see
//!   [`ReadAudits`]).
//!
//! Writes return futures so a caller parks its task, not a runtime thread, while the
//! backend works: on a 2-core machine, threads blocked on the store were what kept the
//! runtime from filling both cores.

use std::future::{Future, IntoFuture as _};
use std::pin::Pin;
use std::sync::Arc;

use super::{
    AuditRecord, AuditVerdict, Chain, Claimant, CommitPolicy, Committed, EntryRecord, Escalation,
    FailureKind, HandoffRecord, NewHandoff, Pick, Picker, ReadAudits, Refusal, Status, Store,
    StoreError, StreamMeta, StreamRead, StreamWriter, TaskRecord, Written, queue::Outcome,
};

/// A future a backend returns from a trait method.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The future of a write: already queued (see the module documentation), and
/// independent of the borrow of the backend, so it can be kept and awaited later.
pub type WriteFuture<T> = BoxFuture<'static, Result<T, StoreError>>;

/// Everything the host asks of its state. [`Store`] (redb) is the default; see the
/// module documentation for what every implementation must guarantee.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Commit acknowledged writes under `policy` from now on.
    fn set_commit_policy(&self, policy: CommitPolicy);
    /// How acknowledged writes reach durable storage.
    fn commit_policy(&self) -> CommitPolicy;
    /// Resolves once every write committed before the call is durable; an error means
    /// such a write may be lost and must not be acknowledged.
    fn durable(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// [`Backend::durable`], blocking the calling thread.
    fn durable_blocking(&self) -> Result<(), StoreError>;
    /// Under group commit, acknowledged writes committed and flushes that made them
    /// durable so far, if the backend counts them.
    fn group_commit_counts(&self) -> Option<(u64, u64)> {
        None
    }

    /// One version of `key` (the newest when `version` is `None`).
    fn read(&self, key: &str, version: Option<u64>) -> Result<Option<EntryRecord>, StoreError>;
    /// Every version of `key`, oldest first.
    fn history(&self, key: &str) -> Result<Vec<EntryRecord>, StoreError>;
    /// Every blackboard key that starts with `prefix`, in order.
    fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Whether a task delivered to `agent` pointed at `key`.
    fn is_granted(&self, agent: &str, key: &str) -> Result<bool, StoreError>;
    /// The task called `id`.
    fn task(&self, id: &str) -> Result<Option<TaskRecord>, StoreError>;
    /// The status of the task called `id`: a backend may answer it without the whole
    /// record.
    fn task_status(&self, id: &str) -> Result<Option<Status>, StoreError> {
        Ok(self.task(id)?.map(|t| t.status))
    }
    /// The handoff called `id`.
    fn handoff(&self, id: &str) -> Result<Option<HandoffRecord>, StoreError>;
    /// The stream at `key`.
    fn stream(&self, key: &str) -> Result<Option<StreamMeta>, StoreError>;
    /// How many tasks wait in the inbox of `target`.
    fn inbox_depth(&self, target: &str) -> Result<u64, StoreError>;
    /// Everything in the chain that starts at task `root`.
    fn chain(&self, root: &str) -> Result<Chain, StoreError>;

    /// Record a handoff: its data, the callee's task, made ready; once per (task, n).
    fn hand_off(&self, h: NewHandoff) -> WriteFuture<Result<Committed, Refusal>>;
    /// Claim up to `max` ready tasks, oldest first, that `pick` finds agents for (see
    /// [`Store::claim_ready`]).
    fn claim_ready(&self, max: usize, pick: Pick) -> WriteFuture<Vec<TaskRecord>>;
    /// Whether [`Backend::claim_ready`] would claim at least one task now. The scheduler asks
    /// before each claim, so a backend that can tell without a write saves one whenever
    /// nothing is ready; one that cannot says `true`, and the claim finds out.
    fn claimable(&self, _pick: &Picker<'_>) -> Result<bool, StoreError> {
        Ok(true)
    }
    /// Claim ready tasks for `claimant` in the commits of writes to come, as they make
    /// tasks ready, while it wants them, until [`Backend::stop_claims`].
    fn serve_claims(&self, claimant: Arc<dyn Claimant>);
    /// Claim no more for `claimant`. Claims under way still hand their tasks over; it
    /// holds the claimant until then.
    fn stop_claims(&self, claimant: &Arc<dyn Claimant>);
    /// Claim ready tasks for `claimant` now; resolves to how many, once they were handed
    /// over.
    fn claim_for(&self, claimant: Arc<dyn Claimant>) -> WriteFuture<usize>;
    /// Claim up to `max` pending tasks from `agent`'s inbox for its running task
    /// `claimer`; given back if the claimer fails or its host dies.
    fn claim_inbox(&self, agent: &str, claimer: &str, max: u32) -> WriteFuture<Vec<TaskRecord>>;
    /// Store a task's outcome and any reply. If `audits` shows that a read of the
    /// activation could not be audited, fail the task instead (a trap, with
    /// [`ReadAudits`]' reason) and store nothing of the outcome.
    fn complete(
        &self,
        task: &str,
        summary: &str,
        data: &[u8],
        reply_deadline_ms: u64,
        audits: &Arc<ReadAudits>,
    ) -> WriteFuture<TaskRecord>;
    /// Record a failure and apply its fallback; the unaudited read, if `audits` shows one,
    /// is the failure recorded.
    fn fail(
        &self,
        task: &str,
        kind: FailureKind,
        reason: &str,
        reply_deadline_ms: u64,
        audits: &Arc<ReadAudits>,
    ) -> WriteFuture<TaskRecord>;
    /// Make every task left running by a previous host ready again; how many. Blocks:
    /// the host calls it once, while it loads.
    fn recover(&self) -> Result<usize, StoreError>;
    /// Whether a ready task waits for its backoff.
    fn has_delayed(&self) -> Result<bool, StoreError>;

    /// Append a chunk to a stream `by.task` opened, once at its position.
    fn stream_write(
        &self,
        by: &StreamWriter,
        chunk: &[u8],
    ) -> WriteFuture<Result<Written, Refusal>>;
    /// Close a stream `by.task` opened; whether an earlier delivery had closed it.
    fn stream_close(&self, by: &StreamWriter) -> WriteFuture<Result<bool, Refusal>>;
    /// Read the chunk after `after` of the stream at `key`, for `reader`.
    fn stream_read(
        &self,
        reader: &str,
        key: &str,
        after: u64,
    ) -> WriteFuture<Result<StreamRead, Refusal>>;

    /// The operator inbox, oldest first; resolved escalations too when `all`.
    fn escalations(&self, all: bool) -> Result<Vec<Escalation>, StoreError>;
    /// Mark an escalation resolved. Blocks: only the operator's command calls it.
    fn resolve(&self, task: &str, note: Option<&str>) -> Outcome<Escalation>;

    /// Queue the audit record of a read of `key` by `agent` handling `task` (or of its
    /// refusal), and mark `audits` if it cannot be stored. The host does not wait for
    /// it: it hands `audits` to the write that records the activation's end
    /// ([`Backend::complete`], [`Backend::fail`]), which must be applied after this
    /// record and see whether it failed.
    fn audit_read(
        &self,
        agent: &str,
        task: &str,
        key: &str,
        outcome: Result<u64, &str>,
        audits: &Arc<ReadAudits>,
    );
    /// The audit log, oldest first.
    fn audit_log(&self) -> Result<Vec<AuditRecord>, StoreError>;
    /// Check the audit log's hash chain.
    fn audit_verify(&self) -> Result<AuditVerdict, StoreError>;
}

impl Backend for Store {
    fn set_commit_policy(&self, policy: CommitPolicy) {
        Store::set_commit_policy(self, policy);
    }
    fn commit_policy(&self) -> CommitPolicy {
        Store::commit_policy(self)
    }
    fn durable(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(Store::durable(self))
    }
    fn durable_blocking(&self) -> Result<(), StoreError> {
        Store::durable_blocking(self)
    }
    fn group_commit_counts(&self) -> Option<(u64, u64)> {
        Some(Store::group_commit_counts(self))
    }
    fn read(&self, key: &str, version: Option<u64>) -> Result<Option<EntryRecord>, StoreError> {
        Store::read(self, key, version)
    }
    fn history(&self, key: &str) -> Result<Vec<EntryRecord>, StoreError> {
        Store::history(self, key)
    }
    fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Store::keys(self, prefix)
    }
    fn is_granted(&self, agent: &str, key: &str) -> Result<bool, StoreError> {
        Store::is_granted(self, agent, key)
    }
    fn task(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        Store::task(self, id)
    }
    fn task_status(&self, id: &str) -> Result<Option<Status>, StoreError> {
        Store::task_status(self, id)
    }
    fn handoff(&self, id: &str) -> Result<Option<HandoffRecord>, StoreError> {
        Store::handoff(self, id)
    }
    fn stream(&self, key: &str) -> Result<Option<StreamMeta>, StoreError> {
        Store::stream(self, key)
    }
    fn inbox_depth(&self, target: &str) -> Result<u64, StoreError> {
        Store::inbox_depth(self, target)
    }
    fn chain(&self, root: &str) -> Result<Chain, StoreError> {
        Store::chain(self, root)
    }
    fn hand_off(&self, h: NewHandoff) -> WriteFuture<Result<Committed, Refusal>> {
        Store::hand_off(self, h).into_future()
    }
    fn claim_ready(&self, max: usize, pick: Pick) -> WriteFuture<Vec<TaskRecord>> {
        Store::claim_ready(self, max, pick).into_future()
    }
    fn claimable(&self, pick: &Picker<'_>) -> Result<bool, StoreError> {
        Store::claimable(self, pick)
    }
    fn serve_claims(&self, claimant: Arc<dyn Claimant>) {
        Store::serve_claims(self, claimant);
    }
    fn stop_claims(&self, claimant: &Arc<dyn Claimant>) {
        Store::stop_claims(self, claimant);
    }
    fn claim_for(&self, claimant: Arc<dyn Claimant>) -> WriteFuture<usize> {
        Store::claim_for(self, claimant).into_future()
    }
    fn claim_inbox(&self, agent: &str, claimer: &str, max: u32) -> WriteFuture<Vec<TaskRecord>> {
        Store::claim_inbox(self, agent, claimer, max).into_future()
    }
    fn complete(
        &self,
        task: &str,
        summary: &str,
        data: &[u8],
        reply_deadline_ms: u64,
        audits: &Arc<ReadAudits>,
    ) -> WriteFuture<TaskRecord> {
        Store::complete(self, task, summary, data, reply_deadline_ms, audits).into_future()
    }
    fn fail(
        &self,
        task: &str,
        kind: FailureKind,
        reason: &str,
        reply_deadline_ms: u64,
        audits: &Arc<ReadAudits>,
    ) -> WriteFuture<TaskRecord> {
        Store::fail(self, task, kind, reason, reply_deadline_ms, audits).into_future()
    }
    fn recover(&self) -> Result<usize, StoreError> {
        Store::recover(self).wait()
    }
    fn has_delayed(&self) -> Result<bool, StoreError> {
        Store::has_delayed(self)
    }
    fn stream_write(
        &self,
        by: &StreamWriter,
        chunk: &[u8],
    ) -> WriteFuture<Result<Written, Refusal>> {
        Store::stream_write(self, by, chunk).into_future()
    }
    fn stream_close(&self, by: &StreamWriter) -> WriteFuture<Result<bool, Refusal>> {
        Store::stream_close(self, by).into_future()
    }
    fn stream_read(
        &self,
        reader: &str,
        key: &str,
        after: u64,
    ) -> WriteFuture<Result<StreamRead, Refusal>> {
        Store::stream_read(self, reader, key, after).into_future()
    }
    fn escalations(&self, all: bool) -> Result<Vec<Escalation>, StoreError> {
        Store::escalations(self, all)
    }
    fn resolve(&self, task: &str, note: Option<&str>) -> Outcome<Escalation> {
        Store::resolve(self, task, note).wait()
    }
    fn audit_read(
        &self,
        agent: &str,
        task: &str,
        key: &str,
        outcome: Result<u64, &str>,
        audits: &Arc<ReadAudits>,
    ) {
        Store::audit_read(self, agent, task, key, outcome, audits);
    }
    fn audit_log(&self) -> Result<Vec<AuditRecord>, StoreError> {
        Store::audit_log(self)
    }
    fn audit_verify(&self) -> Result<AuditVerdict, StoreError> {
        Store::audit_verify(self)
    }
}
