//! Guarantee: a read the host could not audit fails the task that made it. The agent was
//! handed what it read before the audit record was stored, so the host does not store
//! anything that activation produced: the task fails with the store's error as its
//! reason, other work goes on, and the audit chain stays whole. The fault is injected
//! under the host through the `Backend` trait: a store whose read audits fail for one
//! agent (it marks the activation's `ReadAudits`, as the real store's writer does when
//! a record does not commit), and passes everything else to the real store. The store's
//! own test of a record that fails in its writer, in one batch with the end it must
//! fail, is `an_end_queued_behind_a_read_that_could_not_be_audited_fails_the_task`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use baton::store::{
    AuditRecord, AuditVerdict, Backend, BoxFuture, Chain, Claimant, CommitPolicy, Committed,
    Escalation, FailureKind, HandoffRecord, NewHandoff, Pick, ReadAudits, Refusal, Status,
    StreamMeta, StreamRead, StreamWriter, WriteFuture, Written,
};
use baton::{EntryRecord, Host, Store, StoreError, TaskRecord, Vault};

use crate::common::research_mesh;

/// What the failing audit write reports.
const CAUSE: &str = "injected: no space left on device";

/// The real store, except that audits of reads by `agent` fail while `failing` is set.
#[derive(Debug)]
struct FailingAudits {
    store: Store,
    agent: &'static str,
    failing: AtomicBool,
}

impl Backend for FailingAudits {
    fn audit_read(
        &self,
        agent: &str,
        task: &str,
        key: &str,
        outcome: Result<u64, &str>,
        audits: &Arc<ReadAudits>,
    ) {
        if agent == self.agent && self.failing.load(Ordering::SeqCst) {
            audits.fail(&StoreError::Db(redb::Error::Io(std::io::Error::other(
                CAUSE,
            ))));
            return;
        }
        Backend::audit_read(&self.store, agent, task, key, outcome, audits);
    }

    fn set_commit_policy(&self, policy: CommitPolicy) {
        Backend::set_commit_policy(&self.store, policy);
    }
    fn commit_policy(&self) -> CommitPolicy {
        Backend::commit_policy(&self.store)
    }
    fn durable(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Backend::durable(&self.store)
    }
    fn durable_blocking(&self) -> Result<(), StoreError> {
        Backend::durable_blocking(&self.store)
    }
    fn read(&self, key: &str, version: Option<u64>) -> Result<Option<EntryRecord>, StoreError> {
        Backend::read(&self.store, key, version)
    }
    fn history(&self, key: &str) -> Result<Vec<EntryRecord>, StoreError> {
        Backend::history(&self.store, key)
    }
    fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Backend::keys(&self.store, prefix)
    }
    fn is_granted(&self, agent: &str, key: &str) -> Result<bool, StoreError> {
        Backend::is_granted(&self.store, agent, key)
    }
    fn task(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        Backend::task(&self.store, id)
    }
    fn handoff(&self, id: &str) -> Result<Option<HandoffRecord>, StoreError> {
        Backend::handoff(&self.store, id)
    }
    fn stream(&self, key: &str) -> Result<Option<StreamMeta>, StoreError> {
        Backend::stream(&self.store, key)
    }
    fn inbox_depth(&self, target: &str) -> Result<u64, StoreError> {
        Backend::inbox_depth(&self.store, target)
    }
    fn chain(&self, root: &str) -> Result<Chain, StoreError> {
        Backend::chain(&self.store, root)
    }
    fn hand_off(&self, h: NewHandoff) -> WriteFuture<Result<Committed, Refusal>> {
        Backend::hand_off(&self.store, h)
    }
    fn claim_ready(&self, max: usize, pick: Pick) -> WriteFuture<Vec<TaskRecord>> {
        Backend::claim_ready(&self.store, max, pick)
    }
    fn serve_claims(&self, claimant: Arc<dyn Claimant>) {
        Backend::serve_claims(&self.store, claimant);
    }
    fn stop_claims(&self, claimant: &Arc<dyn Claimant>) {
        Backend::stop_claims(&self.store, claimant);
    }
    fn claim_for(&self, claimant: Arc<dyn Claimant>) -> WriteFuture<usize> {
        Backend::claim_for(&self.store, claimant)
    }
    fn claim_inbox(&self, agent: &str, claimer: &str, max: u32) -> WriteFuture<Vec<TaskRecord>> {
        Backend::claim_inbox(&self.store, agent, claimer, max)
    }
    fn complete(
        &self,
        task: &str,
        summary: &str,
        data: &[u8],
        reply_deadline_ms: u64,
        audits: &Arc<ReadAudits>,
    ) -> WriteFuture<TaskRecord> {
        Backend::complete(&self.store, task, summary, data, reply_deadline_ms, audits)
    }
    fn fail(
        &self,
        task: &str,
        kind: FailureKind,
        reason: &str,
        reply_deadline_ms: u64,
        audits: &Arc<ReadAudits>,
    ) -> WriteFuture<TaskRecord> {
        Backend::fail(&self.store, task, kind, reason, reply_deadline_ms, audits)
    }
    fn recover(&self) -> Result<usize, StoreError> {
        Backend::recover(&self.store)
    }
    fn has_delayed(&self) -> Result<bool, StoreError> {
        Backend::has_delayed(&self.store)
    }
    fn stream_write(
        &self,
        by: &StreamWriter,
        chunk: &[u8],
    ) -> WriteFuture<Result<Written, Refusal>> {
        Backend::stream_write(&self.store, by, chunk)
    }
    fn stream_close(&self, by: &StreamWriter) -> WriteFuture<Result<bool, Refusal>> {
        Backend::stream_close(&self.store, by)
    }
    fn stream_read(
        &self,
        reader: &str,
        key: &str,
        after: u64,
    ) -> WriteFuture<Result<StreamRead, Refusal>> {
        Backend::stream_read(&self.store, reader, key, after)
    }
    fn escalations(&self, all: bool) -> Result<Vec<Escalation>, StoreError> {
        Backend::escalations(&self.store, all)
    }
    fn resolve(
        &self,
        task: &str,
        note: Option<&str>,
    ) -> Result<Result<Escalation, Refusal>, StoreError> {
        Backend::resolve(&self.store, task, note)
    }
    fn audit_log(&self) -> Result<Vec<AuditRecord>, StoreError> {
        Backend::audit_log(&self.store)
    }
    fn audit_verify(&self) -> Result<AuditVerdict, StoreError> {
        Backend::audit_verify(&self.store)
    }
}

/// Submit the research chain and run it to its end.
async fn research(host: &Host) -> Committed {
    let kelp = br#"{"topic":"kelp"}"#.to_vec();
    let submitted = host
        .submit("researcher", "research kelp", Some(kelp), vec![])
        .unwrap();
    host.run_until_idle().await.unwrap();
    submitted
}

#[tokio::test]
async fn a_read_the_host_could_not_audit_fails_its_task_and_stores_nothing_of_it() {
    let state = tempfile::tempdir().unwrap();
    let backend = Arc::new(FailingAudits {
        store: Store::open(state.path()).unwrap(),
        agent: "writer",
        failing: AtomicBool::new(true),
    });
    let given: Arc<dyn Backend> = backend.clone();
    let host = Host::load_on(&research_mesh(), state.path(), &Vault::empty(), move || {
        Ok(given)
    })
    .unwrap();

    let first = research(&host).await;

    // The researcher's reads were audited, and it handed off; the writer read the
    // findings, but that read's audit failed, so its activation counts for nothing.
    let report = baton::Report::for_task(host.store(), &first.task)
        .unwrap()
        .unwrap();
    assert_eq!(report.handoffs.len(), 1, "{report:?}");
    let researcher = host.store().task(&first.task).unwrap().unwrap();
    assert_eq!(researcher.status, Status::Completed, "{researcher:?}");
    let writer = host
        .store()
        .task(&report.handoffs[0].task)
        .unwrap()
        .unwrap();
    assert_eq!(writer.status, Status::Failed, "{writer:?}");
    assert_eq!(
        writer.error.as_deref(),
        Some(
            format!(
                "trap: the audit record of a read could not be stored: store: I/O error: {CAUSE}"
            )
            .as_str()
        )
    );
    assert_eq!(
        host.store().keys("output/writer/").unwrap(),
        Vec::<String>::new(),
        "nothing the writer produced is stored"
    );
    assert!(
        !host
            .store()
            .audit_log()
            .unwrap()
            .iter()
            .any(|r| r.agent == "writer" && r.event == "read"),
        "no record of a read that was not stored"
    );

    // The host lives: once the store takes audits again, the same chain completes.
    backend.failing.store(false, Ordering::SeqCst);
    let second = research(&host).await;
    let report = baton::Report::for_task(host.store(), &second.task)
        .unwrap()
        .unwrap();
    assert_eq!(report.status, "completed", "{report:?}");
    assert!(
        host.store()
            .audit_log()
            .unwrap()
            .iter()
            .any(|r| r.agent == "writer" && r.event == "read")
    );
    let records = host.store().audit_log().unwrap().len() as u64;
    assert_eq!(
        host.store().audit_verify().unwrap(),
        AuditVerdict::Whole { records }
    );
}
