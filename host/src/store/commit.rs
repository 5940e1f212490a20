//! When a commit is on disk: the commit policy, and group commit.
//!
//! redb commits in one total order. A commit with `Durability::None` is visible at once
//! but written to disk only by the next `Durability::Immediate` commit, which writes every
//! commit before it. So after a crash the store always holds a *prefix* of the commits:
//! whatever survived, everything committed before it survived too.
//!
//! - [`CommitPolicy::Immediate`]: every write is a transaction of its caller's own, and
//!   every acknowledged write commits with an fsync of its own.
//! - [`CommitPolicy::Group`]: writes go to one writer thread, which applies every write
//!   waiting for it in *one* transaction and commits it without an fsync. The same thread
//!   then makes one immediate commit that covers every write before it, once writes stop
//!   arriving for 150 µs or 4 ms after the first unsynced one; whoever waits on
//!   [`Store::durable`](super::Store::durable) learns it is on disk. Nothing is
//!   acknowledged before its flush: the caller of a write waits for `durable` before it
//!   tells anyone (the agent's receipt, the operator's task id, the activation's end).
//!
//! Why one transaction for many writes: redb's cost is mostly per transaction (copying
//! the pages a write touches, checksums, the commit), and redb holds its write lock through
//! an fsync, so writes that arrive during a flush queue up. Applied together, they cost
//! about a third of what they cost one transaction each. A write that fails in a batch
//! aborts it, and each write of the batch is then redone alone, so one bad write never
//! fails the others and each write still commits whole or not at all.
//!
//! A write seen by another activation before its flush (a task claimed from an inbox)
//! is safe by the prefix rule: a crash that loses the write loses everything that
//! followed from it, and the writer, never acknowledged, is redelivered.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::watch;

use super::StoreError;

/// A flush waits for writers until none writes for this long...
const QUIET: Duration = Duration::from_micros(150);
/// ...or this long has passed since the first unsynced write.
const WINDOW: Duration = Duration::from_millis(4);

/// How acknowledged writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitPolicy {
    /// One fsync per acknowledged write.
    Immediate,
    /// Acknowledged writes share transactions and fsyncs; each is acknowledged after the
    /// fsync that covers it.
    Group,
}

impl CommitPolicy {
    /// What the policy does, for the benchmark report.
    pub fn describe(self) -> &'static str {
        match self {
            CommitPolicy::Immediate => {
                "immediate: every handoff, completion and failure is its own fsynced commit"
            }
            CommitPolicy::Group => {
                "group commit: one writer thread applies the writes waiting for it in one unsynced transaction, in redb's single commit order; one fsynced commit then covers every write before it, and no handoff or outcome is acknowledged until the fsync that covers it returns"
            }
        }
    }
}

/// Whether a write is acknowledged, and so must be on disk before its caller tells
/// anyone, or lazy: safe to lose in a crash because it is redone (a claim: the task is
/// redelivered; a read's audit record: the redelivered task reads, and is audited, again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ack {
    Acknowledged,
    Lazy,
}

/// A write waiting for the writer thread.
trait Write: Send {
    fn ack(&self) -> Ack;
    /// Apply the write in `txn`. It may run again, in a fresh transaction, when its
    /// batch is redone write by write.
    fn apply(&mut self, txn: &WriteTransaction) -> Result<(), StoreError>;
    /// Give the caller its result, once the write's transaction committed or failed.
    fn finish(self: Box<Self>, outcome: Result<(), StoreError>);
}

struct Job<T, F> {
    f: F,
    ack: Ack,
    out: Option<T>,
    reply: mpsc::SyncSender<Result<T, StoreError>>,
}

impl<T, F> Write for Job<T, F>
where
    T: Send,
    F: FnMut(&WriteTransaction) -> Result<T, StoreError> + Send,
{
    fn ack(&self) -> Ack {
        self.ack
    }

    fn apply(&mut self, txn: &WriteTransaction) -> Result<(), StoreError> {
        self.out = Some((self.f)(txn)?);
        Ok(())
    }

    fn finish(self: Box<Self>, outcome: Result<(), StoreError>) {
        let Job { out, reply, .. } = *self;
        let result = outcome.and_then(|()| out.ok_or_else(closed));
        // The caller waits on the other end; if it is gone there is no one to tell.
        let _ = reply.send(result);
    }
}

/// How far the writer got, and what waits for it.
#[derive(Default)]
struct Progress {
    /// Writes waiting to be applied.
    queue: Vec<Box<dyn Write>>,
    /// Acknowledged writes committed unsynced so far (a sequence number).
    committed: u64,
    /// Every acknowledged write up to this one is on disk.
    synced: u64,
    /// The writer has flushed up to this one.
    attempted: u64,
    /// Flushes made so far.
    flushes: u64,
    /// The last flush failed: writes up to `.0` may be lost, and why.
    failed: Option<(u64, String)>,
    /// The store is closing: apply and flush what is left and end.
    stop: bool,
}

type State = (Mutex<Progress>, Condvar, Condvar);

/// The group-commit state of one store.
pub(super) struct Syncer {
    db: Arc<Database>,
    group: AtomicBool,
    progress: Arc<State>,
    /// `synced`, for async waiters.
    synced: watch::Sender<u64>,
    thread: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<Progress>) -> MutexGuard<'_, Progress> {
    // A panic elsewhere leaves the counters and the queue consistent: each is changed in
    // one step under the lock.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Syncer {
    /// A syncer for `db`, with its writer thread started; the policy starts as `Immediate`.
    pub(super) fn start(db: Arc<Database>) -> Syncer {
        let progress: Arc<State> = Arc::default();
        let (synced, _) = watch::channel(0);
        let (state, tx, writer_db) = (progress.clone(), synced.clone(), db.clone());
        let thread = std::thread::Builder::new()
            .name("baton-writer".into())
            .spawn(move || run(&writer_db, &state, &tx))
            .expect("spawn the writer thread");
        Syncer {
            db,
            group: AtomicBool::new(false),
            progress,
            synced,
            thread: Some(thread),
        }
    }

    pub(super) fn set_policy(&self, policy: CommitPolicy) {
        self.group
            .store(policy == CommitPolicy::Group, Ordering::Release);
    }

    pub(super) fn policy(&self) -> CommitPolicy {
        if self.group.load(Ordering::Acquire) {
            CommitPolicy::Group
        } else {
            CommitPolicy::Immediate
        }
    }

    /// Apply `f` in a write transaction and return what it returned once that
    /// transaction committed: a transaction of its own under `Immediate` (fsynced if the
    /// write is acknowledged), or the writer thread's next batch under `Group`. If `f`
    /// fails, nothing it wrote is committed. An acknowledged write must then be awaited
    /// with [`Syncer::durable`] before it is acknowledged.
    pub(super) fn write<T, F>(&self, ack: Ack, mut f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        if !self.group.load(Ordering::Acquire) {
            let mut txn = self.db.begin_write()?;
            if ack == Ack::Lazy {
                txn.set_durability(Durability::None)?;
            }
            let out = f(&txn)?;
            txn.commit()?;
            return Ok(out);
        }
        let (reply, answer) = mpsc::sync_channel(1);
        {
            let (m, work, _) = &*self.progress;
            let mut p = lock(m);
            if p.stop {
                return Err(closed());
            }
            p.queue.push(Box::new(Job {
                f,
                ack,
                out: None,
                reply,
            }));
            drop(p);
            work.notify_one();
        }
        answer.recv().unwrap_or_else(|_| Err(closed()))
    }

    /// The newest acknowledged write so far, or `None` when every one is on disk.
    fn pending(&self) -> Result<Option<u64>, StoreError> {
        let p = lock(&self.progress.0);
        check(&p, p.committed)?;
        Ok((p.committed > p.synced).then_some(p.committed))
    }

    /// Acknowledged writes committed unsynced, and the flushes that synced them, so far.
    pub(super) fn counts(&self) -> (u64, u64) {
        let p = lock(&self.progress.0);
        (p.committed, p.flushes)
    }

    /// Wait until every write committed before this call is on disk.
    pub(super) async fn durable(&self) -> Result<(), StoreError> {
        let Some(target) = self.pending()? else {
            return Ok(());
        };
        let mut rx = self.synced.subscribe();
        loop {
            {
                let p = lock(&self.progress.0);
                check(&p, target)?;
                if p.synced >= target {
                    return Ok(());
                }
            }
            if rx.changed().await.is_err() {
                return Err(closed());
            }
        }
    }

    /// [`Syncer::durable`], blocking the thread.
    pub(super) fn durable_blocking(&self) -> Result<(), StoreError> {
        let Some(target) = self.pending()? else {
            return Ok(());
        };
        let (m, _, done) = &*self.progress;
        let mut p = lock(m);
        loop {
            check(&p, target)?;
            if p.synced >= target {
                return Ok(());
            }
            p = done.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        let (m, work, _) = &*self.progress;
        lock(m).stop = true;
        work.notify_one();
        // The last handle on the store may go with a write the writer thread just
        // finished: that thread must not wait for itself. It sees `stop` and ends once
        // it has flushed.
        let Some(thread) = self.thread.take() else {
            return;
        };
        if thread.thread().id() != std::thread::current().id() && thread.join().is_err() {
            tracing::error!("the writer thread panicked; unsynced writes are redone at restart");
        }
    }
}

/// Whether acknowledged write `seq` can still become durable.
fn check(p: &Progress, seq: u64) -> Result<(), StoreError> {
    match &p.failed {
        Some((upto, why)) if seq <= *upto && p.synced < seq => {
            Err(StoreError::Db(redb::Error::Io(std::io::Error::other(
                format!("group commit: the fsync failed, the write may be lost: {why}"),
            ))))
        }
        _ => Ok(()),
    }
}

fn closed() -> StoreError {
    StoreError::Db(redb::Error::Io(std::io::Error::other(
        "group commit: the store closed before the write was committed",
    )))
}

/// What the writer thread does next.
enum Next {
    Apply(Vec<Box<dyn Write>>),
    Flush(u64),
}

/// When the writer thread ends, however it ends, no write may wait for it forever:
/// later writes are refused and waiting ones get an error.
struct Closing<'a>(&'a Mutex<Progress>);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        let mut p = lock(self.0);
        p.stop = true;
        let orphans = std::mem::take(&mut p.queue);
        drop(p);
        for w in orphans {
            w.finish(Err(closed()));
        }
    }
}

/// The writer thread: apply waiting writes in batches, and flush acknowledged ones once
/// writers pause.
fn run(db: &Database, state: &State, synced: &watch::Sender<u64>) {
    let (m, work, done) = state;
    let _closing = Closing(m);
    // When the oldest unsynced acknowledged write was seen.
    let mut opened: Option<Instant> = None;
    loop {
        let next = {
            let mut p = lock(m);
            loop {
                let unsynced = p.committed > p.attempted;
                // The window is checked first: under a steady stream of writes the queue
                // is never empty, and acknowledged writes must still reach the disk.
                if unsynced {
                    let since = *opened.get_or_insert_with(Instant::now);
                    if p.stop || since.elapsed() >= WINDOW {
                        break Next::Flush(p.committed);
                    }
                }
                if !p.queue.is_empty() {
                    break Next::Apply(std::mem::take(&mut p.queue));
                }
                if !unsynced {
                    if p.stop {
                        return;
                    }
                    opened = None;
                    p = work.wait(p).unwrap_or_else(|e| e.into_inner());
                    continue;
                }
                // The flush holds redb's write lock through its fsync, so every write
                // waits for it: let writes in while they keep coming, until a quiet gap
                // or the window closes, then flush them all at once.
                let seen = p.committed;
                let (q, waited) = work
                    .wait_timeout(p, QUIET)
                    .unwrap_or_else(|e| e.into_inner());
                p = q;
                if waited.timed_out() && p.queue.is_empty() && p.committed == seen {
                    break Next::Flush(p.committed);
                }
            }
        };
        match next {
            Next::Apply(batch) => apply(db, m, batch),
            Next::Flush(target) => {
                let flushed = flush(db);
                let mut p = lock(m);
                p.attempted = target;
                p.flushes += 1;
                match flushed {
                    Ok(()) => {
                        p.synced = target;
                        p.failed = None;
                    }
                    Err(e) => {
                        tracing::error!("group commit: fsync failed: {e}");
                        p.failed = Some((target, e.to_string()));
                    }
                }
                let now = p.synced;
                drop(p);
                opened = None;
                done.notify_all();
                synced.send_replace(now);
            }
        }
    }
}

/// Apply `batch` in one unsynced transaction; if any write in it fails, redo each alone.
/// Acknowledged writes are counted before their callers hear back, so a caller that then
/// awaits `durable` waits for the flush that covers its write.
fn apply(db: &Database, m: &Mutex<Progress>, mut batch: Vec<Box<dyn Write>>) {
    let acks =
        |ws: &[Box<dyn Write>]| ws.iter().filter(|w| w.ack() == Ack::Acknowledged).count() as u64;
    if batch.len() > 1 {
        if together(db, &mut batch).is_ok() {
            lock(m).committed += acks(&batch);
            for w in batch {
                w.finish(Ok(()));
            }
            return;
        }
        tracing::debug!(
            "a write failed in a batch of {}; redoing each alone",
            batch.len()
        );
    }
    for mut w in batch {
        let outcome = together(db, std::slice::from_mut(&mut w));
        if outcome.is_ok() {
            lock(m).committed += acks(std::slice::from_ref(&w));
        }
        w.finish(outcome);
    }
}

/// Apply `writes` in one unsynced transaction and commit it; on any failure (a panic
/// included) nothing is committed.
fn together(db: &Database, writes: &mut [Box<dyn Write>]) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::None)?;
    for w in writes.iter_mut() {
        catch_unwind(AssertUnwindSafe(|| w.apply(&txn))).unwrap_or_else(|_| {
            Err(StoreError::Corrupt(
                "write".into(),
                "the write panicked; nothing of it was committed".into(),
            ))
        })?;
    }
    txn.commit()?;
    Ok(())
}

/// An empty immediate commit: it writes every unsynced commit before it.
fn flush(db: &Database) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::CommitPolicy;
    use crate::store::{Kind, NewHandoff, Pattern, Store};

    fn handoff(i: usize) -> NewHandoff {
        NewHandoff {
            from: "operator".into(),
            parent: None,
            to: "writer".into(),
            route: None,
            kind: Kind::Work,
            summary: format!("task {i}"),
            completed: Vec::new(),
            outstanding: Vec::new(),
            params: Vec::new(),
            pattern: Pattern::Blackboard,
            data: Some(format!("{{\"n\":{i}}}").into_bytes()),
            deadline_ms: 30_000,
            fallback: crate::store::Fallback::None,
            reply: false,
            in_reply_to: None,
            nth: None,
            pointer: None,
            inbox_depth: 1_000,
        }
    }

    /// Writes queued behind a busy writer are applied together; one that fails in the
    /// batch fails alone, with its own error, and every other write of the batch commits.
    #[test]
    fn a_write_that_fails_in_a_batch_fails_alone() {
        const GOOD: usize = 8;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        store.set_commit_policy(CommitPolicy::Group);
        // Hold redb's write lock, so the writer thread waits and the writes queue up.
        let hold = store.db.begin_write().unwrap();
        let first = {
            let store = store.clone();
            std::thread::spawn(move || store.hand_off(handoff(GOOD)).unwrap().unwrap().task)
        };
        // Time for the writer thread to take the first write and block on the lock.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let good: Vec<_> = (0..GOOD)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let c = store.hand_off(handoff(i)).unwrap().unwrap();
                    store.durable_blocking().unwrap();
                    c.task
                })
            })
            .collect();
        let bad = {
            let store = store.clone();
            std::thread::spawn(move || store.complete("t-nowhere", "done", b"{}", 1_000))
        };
        // Every later write waits in the queue, to be applied as one batch.
        let since = std::time::Instant::now();
        while super::lock(&store.syncer.progress.0).queue.len() < GOOD + 1 {
            assert!(since.elapsed().as_secs() < 10, "the writes never queued up");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(hold);
        let err = bad.join().unwrap().unwrap_err().to_string();
        assert!(err.contains("t-nowhere"), "{err}");
        let mut tasks: Vec<String> = good.into_iter().map(|t| t.join().unwrap()).collect();
        tasks.push(first.join().unwrap());
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        for t in &tasks {
            assert!(
                store.task(t).unwrap().is_some(),
                "task {t} of the batch is gone"
            );
        }
        assert!(store.task("t-nowhere").unwrap().is_none());
    }

    /// Writers that commit together share fsyncs, and each learns its write is on disk:
    /// after the store is reopened, every acknowledged handoff is there.
    #[test]
    fn concurrent_writers_share_flushes_and_every_acknowledged_write_survives() {
        const WRITERS: usize = 32;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        store.set_commit_policy(CommitPolicy::Group);
        let start = Arc::new(Barrier::new(WRITERS));
        let tasks: Vec<String> = (0..WRITERS)
            .map(|i| {
                let (store, start) = (store.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let c = store.hand_off(handoff(i)).unwrap().unwrap();
                    store.durable_blocking().unwrap();
                    c.task
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let (committed, flushes) = store.syncer.counts();
        assert_eq!(committed, WRITERS as u64);
        assert!(
            flushes < WRITERS as u64,
            "{WRITERS} writers at once took {flushes} flushes: nothing was shared"
        );
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        for t in &tasks {
            assert!(
                store.task(t).unwrap().is_some(),
                "acknowledged task {t} is gone"
            );
        }
    }
}
