//! When a commit is on disk: the commit policy, group commit and checkpoints.
//!
//! Every write goes to one writer thread, which applies them in redb's single commit
//! order. redb commits with `Durability::None` are visible at once but reach the disk only
//! with the next `Durability::Immediate` commit, which writes every commit before it.
//!
//! - [`CommitPolicy::Immediate`]: every write is a transaction of its own, and every
//!   acknowledged write commits with an fsync of its own.
//! - [`CommitPolicy::Group`]: the writer thread applies every write waiting for it in
//!   *one* transaction and appends the changes it made to the write-ahead log as one
//!   frame (see `wal`). Most of those changes are kept in memory (`dispatch`, `recent`);
//!   only a batch that changed a table redb holds itself commits a redb transaction, and
//!   without an fsync. A second thread, `baton-wal`, fsyncs the log whenever an
//!   acknowledged write waits for it; writes that arrive during an fsync are covered by
//!   the next one, so fsyncs are shared without waiting on a timer. Nothing is
//!   acknowledged before its frame's fsync: the caller of a write waits for
//!   [`Store::durable`](super::Store::durable) before it tells anyone (the agent's
//!   receipt, the operator's task id, the activation's end).
//! - Checkpoints: every [`CHECKPOINT`] bytes of log, the writer hands the state kept
//!   in memory so far to a third thread, `baton-checkpoint`, and logs on to the log's
//!   other file. That thread writes the state into redb in one durable commit, which
//!   also says the last frame it holds, and drops it from memory; the file the writer
//!   left is then written over when its turn comes again. The writer goes on meanwhile:
//!   before, the commit of some 50,000 rows stopped every write for 120 to 170 ms. Once
//!   nothing has been written for [`IDLE`], when the store closes, when the policy
//!   changes, and after a failure, the writer checkpoints itself (after the one under
//!   way), and both files start over: written over from their start, as above, by the
//!   next burst of writes, or emptied once the store closes.
//!
//! Why one transaction for many writes: redb's cost is mostly per transaction (copying
//! the pages a write touches, checksums, the commit). Applied together, writes cost about
//! a third of what they cost one transaction each. A write that fails in a batch aborts
//! it, and each write of the batch is then redone alone, so one bad write never fails the
//! others and each write still commits whole or not at all. Why a log: an fsync of redb's
//! scattered pages costs several times one of an append (see `wal`).
//!
//! What survives a crash is always a *prefix* of the commits: redb's last durable commit,
//! then the log's frames, in order, up to the first one that did not reach the disk. A
//! write seen by another activation before its fsync (a task claimed from an inbox) is
//! safe by the prefix rule: a crash that loses the write loses everything that followed
//! from it, and the writer, never acknowledged, is redelivered. A checkpoint's commit
//! may also carry redb commits of batches logged after the last frame it holds (made
//! while it ran): the restart redoes those frames, which writes the same bytes again.

use std::cell::{OnceCell, RefCell};
use std::future::IntoFuture;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Database, Durability};
use tokio::sync::watch;

use super::claimant::{ClaimFor, Claimant};
use super::dispatch::{self, Shared, Unsaved};
use super::recent::{self, Recent, Tables};
use super::wal::{self, Known, LSN_COUNTER, SyncHandle, Tx, Wal};
use super::{StoreError, WriteFuture};

/// Log bytes after which the writer makes redb durable and starts the log over: a bound
/// on what a restart redoes, and on the pages redb holds unsynced. Unit tests checkpoint
/// every 64 KiB, so a few dozen writes cross several checkpoints.
pub const CHECKPOINT: u64 = if cfg!(test) { 64 << 10 } else { 16 << 20 };

/// Quiet time after which the writer checkpoints whatever the log holds (or, under
/// [`CommitPolicy::Immediate`], records the allocator state its commits left out): a
/// host that has gone quiet then restarts after a crash with no log to redo and nothing
/// for redb to repair, and its next burst starts on an empty log, so a checkpoint under
/// load comes later. Nobody waits on a checkpoint made while nothing is queued. Unit
/// tests never go quiet for this long: several of them show what the log holds that
/// redb does not.
pub const IDLE: Duration = Duration::from_secs(if cfg!(test) { 3600 } else { 1 });

/// How acknowledged writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitPolicy {
    /// One fsync per acknowledged write.
    Immediate,
    /// Acknowledged writes share transactions and fsyncs of the write-ahead log; each is
    /// acknowledged after the fsync that covers it.
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
                "group commit: one writer thread applies the writes waiting for it in one unsynced redb transaction and appends its changes to a write-ahead log; one fsync of the log covers every write appended before it, no handoff or outcome is acknowledged until the fsync that covers it returns, and redb is made durable at checkpoints"
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
pub(super) trait Write: Send {
    fn ack(&self) -> Ack;
    /// Apply the write in `tx`. It may run again, in a fresh transaction, when its
    /// batch is redone write by write.
    fn apply(&mut self, tx: &Tx<'_>) -> Result<(), StoreError>;
    /// Give the caller its result, once the write's transaction committed or failed.
    fn finish(self: Box<Self>, outcome: Result<(), StoreError>);
}

struct Job<T, F> {
    f: F,
    ack: Ack,
    out: Option<T>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Write for Job<T, F>
where
    T: Send,
    F: FnMut(&Tx<'_>) -> Result<T, StoreError> + Send,
{
    fn ack(&self) -> Ack {
        self.ack
    }

    fn apply(&mut self, tx: &Tx<'_>) -> Result<(), StoreError> {
        self.out = Some((self.f)(tx)?);
        Ok(())
    }

    fn finish(self: Box<Self>, outcome: Result<(), StoreError>) {
        let Job { out, reply, .. } = *self;
        let result = outcome.and_then(|()| out.ok_or_else(closed));
        // The caller waits on the other end; if it is gone there is no one to tell.
        let _ = reply.send(result);
    }
}

/// A write handed to the writer thread. It is applied whether or not anyone waits for
/// it; [`Queued::wait`] blocks the calling thread until its transaction committed, and
/// `.await` parks the calling task instead, so an async caller never holds a runtime
/// thread while the writer works.
#[must_use = "the write is applied either way; wait for it to learn whether it committed"]
pub struct Queued<T>(Result<oneshot::Receiver<Result<T, StoreError>>, StoreError>);

impl<T> Queued<T> {
    /// Block the calling thread until the write committed, and return its result.
    pub fn wait(self) -> Result<T, StoreError> {
        self.0?.recv().unwrap_or_else(|_| Err(closed()))
    }
}

impl<T: Send + 'static> IntoFuture for Queued<T> {
    type Output = Result<T, StoreError>;
    type IntoFuture = WriteFuture<T>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.0?.await.unwrap_or_else(|_| Err(closed())) })
    }
}

impl<T> std::fmt::Debug for Queued<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Queued")
    }
}

/// How far the writer and the log got, and what waits for them. Positions are frame
/// numbers of the log.
#[derive(Default)]
struct Progress {
    /// Writes waiting to be applied.
    queue: Vec<Box<dyn Write>>,
    /// Whom each batch ends with a claim for (see `claimant`).
    claimants: Vec<Arc<dyn Claimant>>,
    /// The last frame appended to the log.
    appended: u64,
    /// The last frame holding an acknowledged write.
    committed: u64,
    /// Every frame up to this one is on disk (fsynced, or in redb's durable state).
    synced: u64,
    /// The log has been fsynced, or that was tried, up to this frame.
    attempted: u64,
    /// Acknowledged writes logged so far.
    acknowledged: u64,
    /// Fsyncs of the log so far.
    flushes: u64,
    /// An fsync failed: writes up to `.0` may be lost, and why.
    failed: Option<(u64, String)>,
    /// Since a failed fsync, the log cannot be trusted to hold the frames after it: no
    /// write is durable until a checkpoint makes redb durable.
    broken: bool,
    /// The store is closing: apply what is left, checkpoint and end.
    stop: bool,
    /// The writer thread ended; the log's thread ends too.
    ended: bool,
    /// Handles on the files the log went on to, oldest first, for the fsync thread: it
    /// fsyncs the file it holds before it takes the next.
    swaps: Vec<SyncHandle>,
    /// The writer thread waits for work, and no one has woken it yet.
    writer_waits: bool,
    /// The log's fsync thread waits for a frame to sync, and no one has woken it yet.
    syncer_waits: bool,
}

/// The progress, and who waits on it: the writer thread (`work`), callers of `durable`
/// (`done`) and the log's fsync thread (`sync`).
struct State {
    progress: Mutex<Progress>,
    work: Condvar,
    done: Condvar,
    sync: Condvar,
    /// `synced`, for async waiters.
    synced: watch::Sender<u64>,
}

/// The group-commit state of one store.
pub(super) struct Syncer {
    group: Arc<AtomicBool>,
    state: Arc<State>,
    thread: Option<JoinHandle<()>>,
}

impl State {
    /// Tell the callers of `durable`, blocked and async, that every frame up to `synced`
    /// is on disk (or that `failed` changed). Called with the progress unlocked.
    fn tell(&self, synced: u64) {
        self.done.notify_all();
        self.synced.send_replace(synced);
    }
}

fn lock(m: &Mutex<Progress>) -> MutexGuard<'_, Progress> {
    // A panic elsewhere leaves the counters and the queue consistent: each is changed in
    // one step under the lock.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Syncer {
    /// A syncer for `db`, whose log is `wal` and whose next frame is `next`, and whose
    /// dispatch state is `queues`, with its writer thread started; the policy starts as
    /// `Immediate`.
    pub(super) fn start(
        db: Arc<Database>,
        wal: Wal,
        next: u64,
        queues: Arc<Shared>,
        recent: Arc<Recent>,
    ) -> Result<Syncer, StoreError> {
        let log = wal.sync_handle()?;
        let at = next - 1;
        let state = Arc::new(State {
            progress: Mutex::new(Progress {
                appended: at,
                committed: at,
                synced: at,
                attempted: at,
                ..Progress::default()
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            sync: Condvar::new(),
            synced: watch::channel(at).0,
        });
        let group = Arc::new(AtomicBool::new(false));
        let (folds, to_fold) = mpsc::channel::<Fold>();
        let (back, folded) = mpsc::channel::<Outcome>();
        let folder = {
            let (db, recent, state) = (db.clone(), recent.clone(), state.clone());
            std::thread::Builder::new()
                .name("baton-checkpoint".into())
                .spawn(move || fold_loop(&db, &recent, &to_fold, &back, &state))
                .map_err(|e| StoreError::Db(redb::Error::Io(e)))?
        };
        let mut writer = Writer {
            db,
            queues,
            recent,
            wal,
            next,
            group: false,
            known: Known::default(),
            unrecorded: false,
            state: state.clone(),
            folding: None,
            folds,
            folded,
            frame: Vec::new(),
        };
        let policy = group.clone();
        let thread = std::thread::Builder::new()
            .name("baton-writer".into())
            .spawn(move || {
                writer.run(&policy, log);
                // Its channel closed, the checkpoint thread ends, and lets go of redb.
                drop(writer);
                if folder.join().is_err() {
                    tracing::error!("the checkpoint thread panicked");
                }
            })
            .map_err(|e| StoreError::Db(redb::Error::Io(e)))?;
        Ok(Syncer {
            group,
            state,
            thread: Some(thread),
        })
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

    /// Queue `f` to be applied in a write transaction on the writer thread; the
    /// [`Queued`] yields what it returned once that transaction committed: a transaction
    /// of its own under `Immediate` (fsynced if the write is acknowledged), the writer
    /// thread's next batch under `Group`. Writes are applied in the order they were
    /// queued. If `f` fails, nothing it wrote is committed. An acknowledged write must
    /// then be awaited with [`Syncer::durable`] before it is acknowledged.
    pub(super) fn queue<T, F>(&self, ack: Ack, f: F) -> Queued<T>
    where
        T: Send + 'static,
        F: FnMut(&Tx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            f,
            ack,
            out: None,
            reply,
        };
        Queued(self.push(Box::new(job)).map(|()| answer))
    }

    /// Queue `w` for the writer thread, waking it if it waits.
    pub(super) fn push(&self, w: Box<dyn Write>) -> Result<(), StoreError> {
        let wake = {
            let mut p = lock(&self.state.progress);
            if p.stop {
                return Err(closed());
            }
            p.queue.push(w);
            // Woken once, not at every write: a writer at work finds the queue when it
            // next looks, and each wake is a system call.
            std::mem::replace(&mut p.writer_waits, false)
        };
        if wake {
            self.state.work.notify_one();
        }
        Ok(())
    }

    /// End every batch with a claim for `claimant` while it wants tasks, until
    /// [`Syncer::stop_claims`].
    pub(super) fn serve_claims(&self, claimant: Arc<dyn Claimant>) {
        lock(&self.state.progress).claimants.push(claimant);
    }

    /// Claim no more for `claimant` in batches to come. A claim already in a batch still
    /// hands its tasks over.
    pub(super) fn stop_claims(&self, claimant: &Arc<dyn Claimant>) {
        lock(&self.state.progress)
            .claimants
            .retain(|c| !Arc::ptr_eq(c, claimant));
    }

    /// Queue a claim for `claimant` now; it yields how many tasks it claimed once they
    /// were handed over.
    pub(super) fn claim_for(&self, claimant: Arc<dyn Claimant>) -> Queued<usize> {
        let (reply, answer) = oneshot::channel();
        let claim = ClaimFor::new(claimant, Some(reply));
        Queued(self.push(Box::new(claim)).map(|()| answer))
    }

    /// The newest acknowledged write so far, or `None` when every one is on disk.
    fn pending(&self) -> Result<Option<u64>, StoreError> {
        let p = lock(&self.state.progress);
        check(&p, p.committed)?;
        Ok((p.committed > p.synced).then_some(p.committed))
    }

    /// Acknowledged writes logged, and the fsyncs of the log, so far.
    pub(super) fn counts(&self) -> (u64, u64) {
        let p = lock(&self.state.progress);
        (p.acknowledged, p.flushes)
    }

    /// Wait until every write committed before this call is on disk.
    pub(super) async fn durable(&self) -> Result<(), StoreError> {
        let Some(target) = self.pending()? else {
            return Ok(());
        };
        let mut rx = self.state.synced.subscribe();
        loop {
            {
                let p = lock(&self.state.progress);
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
        let mut p = lock(&self.state.progress);
        loop {
            check(&p, target)?;
            if p.synced >= target {
                return Ok(());
            }
            p = self.state.done.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        lock(&self.state.progress).stop = true;
        self.state.work.notify_one();
        // The last handle on the store may go with a write the writer thread just
        // finished: that thread must not wait for itself. It sees `stop` and ends once
        // it has checkpointed.
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
        Some((upto, why)) if p.synced < seq && (seq <= *upto || p.broken) => {
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

/// When the writer thread ends, however it ends, no write may wait for it forever:
/// later writes are refused and waiting ones get an error.
struct Closing<'a>(&'a State);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        let mut p = lock(&self.0.progress);
        p.stop = true;
        p.ended = true;
        let orphans = std::mem::take(&mut p.queue);
        drop(p);
        self.0.sync.notify_one();
        self.0.done.notify_all();
        for w in orphans {
            w.finish(Err(closed()));
        }
    }
}

/// The writer thread's own state.
struct Writer {
    db: Arc<Database>,
    queues: Arc<Shared>,
    recent: Arc<Recent>,
    wal: Wal,
    /// The next frame's number.
    next: u64,
    /// The policy the last batch was applied under.
    group: bool,
    /// What the last committed transaction left known of the state.
    known: Known,
    /// Whether a durable commit since the last checkpoint left redb's allocator state
    /// unrecorded (an acknowledged write under [`CommitPolicy::Immediate`]): a crash now
    /// would cost a repair at the next open, so the writer checkpoints once quiet.
    unrecorded: bool,
    state: Arc<State>,
    /// The checkpoint running on its own thread, if one is: its last frame, and the
    /// dispatch state's changes it writes, to be noted again if it fails.
    folding: Option<(u64, Arc<Unsaved>)>,
    /// Where checkpoints go to their thread, and how they ended comes back.
    folds: mpsc::Sender<Fold>,
    folded: mpsc::Receiver<Outcome>,
    /// The bytes of the frame being built, kept from one transaction to the next so that
    /// logging allocates only when a batch logs more than any before it.
    frame: Vec<u8>,
}

impl Writer {
    /// Apply waiting writes in batches until the store closes, then checkpoint. `log`
    /// is the handle the log's fsync thread uses.
    fn run(&mut self, policy: &AtomicBool, log: SyncHandle) {
        let state = self.state.clone();
        let closing = Closing(&state);
        let syncer = {
            let state = state.clone();
            std::thread::Builder::new()
                .name("baton-wal".into())
                .spawn(move || sync_log(log, &state))
                .expect("spawn the log's fsync thread")
        };
        loop {
            self.settle(false);
            let (batch, broken) = {
                let mut p = lock(&state.progress);
                let mut quiet = false;
                while p.queue.is_empty() && !p.stop && !quiet {
                    p.writer_waits = true;
                    if !self.wal.holds_frames() && !self.unrecorded && self.folding.is_none() {
                        p = state.work.wait(p).unwrap_or_else(|e| e.into_inner());
                    } else {
                        let (q, waited) = state
                            .work
                            .wait_timeout(p, IDLE)
                            .unwrap_or_else(|e| e.into_inner());
                        p = q;
                        quiet = waited.timed_out();
                    }
                    p.writer_waits = false;
                }
                if p.queue.is_empty() {
                    if p.stop {
                        break;
                    }
                    drop(p);
                    // Quiet: fold the log into redb now, while nobody waits on it. If
                    // that fails, the log still holds everything, and the next quiet
                    // spell tries again.
                    let _ = self.checkpoint();
                    continue;
                }
                let mut batch = std::mem::take(&mut p.queue);
                // Last, so it claims what the writes before it made ready.
                for c in p.claimants.iter().filter(|c| c.wants()) {
                    batch.push(Box::new(ClaimFor::new(c.clone(), None)));
                }
                (batch, p.broken)
            };
            let group = policy.load(Ordering::Acquire);
            // A failed fsync leaves the log behind redb; a change of policy mixes
            // commits the log holds with commits it does not. Either way redb is made
            // durable first, so what the log holds always follows on from it.
            if broken || group != self.group {
                let _ = self.checkpoint();
                self.group = group;
            }
            if group {
                self.apply_group(batch);
                if self.wal.len() >= CHECKPOINT {
                    self.fold();
                }
            } else {
                for mut w in batch {
                    let outcome = immediate(
                        &self.db,
                        (&self.queues, &self.recent),
                        w.as_mut(),
                        &mut self.known,
                    );
                    self.unrecorded |= outcome.is_ok() && w.ack() == Ack::Acknowledged;
                    w.finish(outcome);
                }
            }
        }
        let _ = self.checkpoint();
        // Closing, the log gives its blocks back: the next open empties it anyway (see
        // `Wal::reset`), so nothing would write over them.
        if !self.wal.holds_frames()
            && let Err(e) = self.wal.reset()
        {
            // Harmless: the frames left are all in redb and are skipped at restart.
            tracing::warn!("group commit: {e}");
        }
        drop(closing);
        if syncer.join().is_err() {
            tracing::error!("the log's fsync thread panicked");
        }
    }

    /// Apply `batch` in one unsynced transaction and log it; if any write in it fails,
    /// redo each alone. Acknowledged writes are counted before their callers hear back,
    /// so a caller that then awaits `durable` waits for the fsync that covers its write.
    fn apply_group(&mut self, mut batch: Vec<Box<dyn Write>>) {
        if batch.len() > 1 {
            if self.together(&mut batch).is_ok() {
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
            let outcome = self.together(std::slice::from_mut(&mut w));
            w.finish(outcome);
        }
    }

    /// Apply `writes` in one transaction, commit it (to redb, unsynced, if it changed a
    /// table redb holds itself) and append its changes to the log as the next frame; on
    /// any failure (a panic included) nothing is committed.
    fn together(&mut self, writes: &mut [Box<dyn Write>]) -> Result<(), StoreError> {
        let lsn = self.next;
        let mut frame = std::mem::take(&mut self.frame);
        wal::start_frame(&mut frame);
        let log = RefCell::new(frame);
        let txn = OnceCell::new();
        // Taken, not copied: if anything below fails, the next transaction reads what it
        // needs from the tables again.
        let done = {
            let tx = Tx::new(
                (&self.db, &txn),
                Some(&log),
                std::mem::take(&mut self.known),
                &self.queues,
                &self.recent,
            );
            for w in writes.iter_mut() {
                caught(w.as_mut(), &tx)?;
            }
            tx.finish()?
        };
        if let Some(txn) = txn.into_inner() {
            txn.commit()?;
        }
        self.known = done.committed();
        self.next += 1;
        let acknowledged = writes
            .iter()
            .filter(|w| w.ack() == Ack::Acknowledged)
            .count() as u64;
        let mut frame = log.into_inner();
        let logged = self.wal.append(lsn, &mut frame);
        self.frame = frame;
        let mut p = lock(&self.state.progress);
        p.appended = lsn;
        // The fsync thread is woken for an acknowledged write the log took, if it waits:
        // one at work looks again when it is done. (Whoever clears `syncer_waits` must
        // wake it.)
        let wake =
            logged.is_ok() && acknowledged > 0 && std::mem::replace(&mut p.syncer_waits, false);
        if acknowledged > 0 {
            p.committed = lsn;
            p.acknowledged += acknowledged;
        }
        drop(p);
        // The transaction has committed whatever happens now: its writes must not be
        // redone, so this returns `Ok` either way.
        match logged {
            Ok(()) if wake => self.state.sync.notify_one(),
            Ok(()) => {}
            Err(e) => {
                // The log lacks this frame, and later frames would be redone without it:
                // make redb durable at once instead. If that fails too, the log is
                // marked broken and no write is acknowledged until a checkpoint works.
                tracing::error!("group commit: {e}; checkpointing instead");
                let _ = self.checkpoint();
            }
        }
        Ok(())
    }

    /// The log's file is full: hand what it holds to a checkpoint on its own thread, and
    /// go on logging to the other file meanwhile. While the last checkpoint still runs,
    /// the file grows on; if it failed, so that the other file still holds frames redb
    /// lacks, checkpoint here.
    fn fold(&mut self) {
        // Twice the interval bounds the log and the rows kept in memory: past that, the
        // writer waits for the last checkpoint to end.
        self.settle(self.wal.len() >= 2 * CHECKPOINT);
        if self.folding.is_some() {
            return;
        }
        if !self.wal.can_swap() {
            let _ = self.checkpoint();
            return;
        }
        let sync = match self.wal.swap() {
            Ok(swapped) => swapped,
            Err(e) => {
                tracing::error!("group commit: {e}; checkpointing here instead");
                let _ = self.checkpoint();
                return;
            }
        };
        // Before any frame goes to the new file, so the fsync thread covers the old
        // file's last frames first.
        lock(&self.state.progress).swaps.push(sync);
        let lsn = self.next - 1;
        let unsaved = Arc::new(dispatch::lock(&self.queues).take_unsaved());
        let fold = Fold {
            rows: self.recent.freeze(),
            unsaved: unsaved.clone(),
            lsn,
        };
        self.folding = Some((lsn, unsaved));
        if let Err(mpsc::SendError(fold)) = self.folds.send(fold) {
            // The thread is gone (it never ends before the writer): do it here.
            let outcome = fold.run(&self.db, &self.recent);
            self.settled(outcome);
        }
    }

    /// Take the outcome of the checkpoint running on its own thread, if there is one:
    /// waiting for it with `wait`, else only if it has ended.
    fn settle(&mut self, wait: bool) {
        if self.folding.is_none() {
            return;
        }
        let outcome = if wait {
            self.folded.recv().ok()
        } else {
            match self.folded.try_recv() {
                Ok(outcome) => Some(outcome),
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => None,
            }
        };
        // Never `None`: the thread catches its panics and ends after the writer.
        let outcome = outcome.unwrap_or_else(|| {
            Err(StoreError::Corrupt(
                "checkpoint".into(),
                "the checkpoint thread is gone".into(),
            ))
        });
        self.settled(outcome);
    }

    /// The checkpoint handed to its thread ended with `outcome`.
    fn settled(&mut self, outcome: Outcome) {
        let Some((lsn, unsaved)) = self.folding.take() else {
            return;
        };
        match outcome {
            Ok(()) => {
                self.wal.recycled();
                let mut p = lock(&self.state.progress);
                p.synced = p.synced.max(lsn);
                p.attempted = p.attempted.max(lsn);
                let synced = p.synced;
                drop(p);
                self.state.tell(synced);
            }
            Err(e) => {
                // Nothing is lost: the old file still holds its frames, and the rows
                // go back with those written since, for the next checkpoint, which
                // then runs here (the old file cannot be reused before).
                tracing::error!("group commit: checkpoint failed: {e}");
                self.recent.thaw();
                dispatch::lock(&self.queues).restore(&unsaved);
            }
        }
    }

    /// Make redb durable here (after the checkpoint running on its own thread, if any),
    /// with every row kept in memory written into it, so every frame is in it, and
    /// start the log over.
    fn checkpoint(&mut self) -> Result<(), StoreError> {
        self.settle(true);
        let flushed = flush(&self.db, &self.queues, &self.recent, self.next - 1);
        let mut p = lock(&self.state.progress);
        match &flushed {
            Ok(()) => {
                self.unrecorded = false;
                p.synced = p.synced.max(p.appended);
                p.attempted = p.attempted.max(p.appended);
                p.failed = None;
                p.broken = false;
            }
            Err(e) => {
                tracing::error!("group commit: checkpoint failed: {e}");
                p.failed = Some((p.appended, e.to_string()));
                // Whatever the log lacks now, only a checkpoint can make up for.
                p.broken = true;
            }
        }
        let synced = p.synced;
        drop(p);
        self.state.tell(synced);
        if flushed.is_ok() && !self.wal.is_empty() {
            self.wal.start_over();
        }
        flushed
    }
}

/// A checkpoint handed to its thread: the rows kept in memory and the dispatch state's
/// changes up to frame `lsn`.
struct Fold {
    rows: Arc<Tables>,
    unsaved: Arc<Unsaved>,
    lsn: u64,
}

/// How a checkpoint handed to its thread ended.
type Outcome = Result<(), StoreError>;

impl Fold {
    /// Write the rows into redb in one durable commit, then drop them from memory.
    fn run(self, db: &Database, kept: &Recent) -> Outcome {
        catch_unwind(AssertUnwindSafe(|| {
            durable_commit(db, &self.rows, &self.unsaved, self.lsn)
        }))
        .unwrap_or_else(|_| {
            Err(StoreError::Corrupt(
                "checkpoint".into(),
                "the checkpoint panicked; nothing of it was committed".into(),
            ))
        })?;
        kept.saved();
        Ok(())
    }
}

/// The checkpoint thread: run each checkpoint the writer hands over, and hand back how
/// it ended, waking the writer.
fn fold_loop(
    db: &Database,
    kept: &Recent,
    folds: &mpsc::Receiver<Fold>,
    back: &mpsc::Sender<Outcome>,
    state: &State,
) {
    for fold in folds {
        let outcome = fold.run(db, kept);
        if back.send(outcome).is_err() {
            return;
        }
        state.work.notify_one();
    }
}

/// Apply `w` in a transaction of its own, fsynced if it is acknowledged. `known` is
/// taken, and given back only if the transaction commits.
fn immediate(
    db: &Database,
    (queues, recent): (&Arc<Shared>, &Arc<Recent>),
    w: &mut dyn Write,
    known: &mut Known,
) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    if w.ack() == Ack::Lazy {
        txn.set_durability(Durability::None)?;
    }
    let txn = OnceCell::from(txn);
    let tx = Tx::new((db, &txn), None, std::mem::take(known), queues, recent);
    caught(w, &tx)?;
    let done = tx.finish()?;
    if let Some(txn) = txn.into_inner() {
        txn.commit()?;
    }
    *known = done.committed();
    Ok(())
}

/// Apply `w` in `tx`, a panic turned into an error (the transaction is then dropped, so
/// nothing of it is committed).
fn caught(w: &mut dyn Write, tx: &Tx<'_>) -> Result<(), StoreError> {
    catch_unwind(AssertUnwindSafe(|| w.apply(tx))).unwrap_or_else(|_| {
        Err(StoreError::Corrupt(
            "write".into(),
            "the write panicked; nothing of it was committed".into(),
        ))
    })
}

/// The log's fsync thread: whenever an acknowledged write waits, fsync every frame
/// appended so far, and tell the waiters.
fn sync_log(mut log: SyncHandle, state: &State) {
    loop {
        let (target, swaps) = {
            let mut p = lock(&state.progress);
            // No timer: the frames appended while one fsync runs wait for the next, and
            // that is what makes writes share fsyncs.
            loop {
                if p.ended {
                    return;
                }
                if p.committed > p.attempted && !p.broken {
                    break (p.appended, std::mem::take(&mut p.swaps));
                }
                p.syncer_waits = true;
                p = state.sync.wait(p).unwrap_or_else(|e| e.into_inner());
                p.syncer_waits = false;
            }
        };
        // Each file the log left holds frames before those of the next.
        let mut synced = Ok(());
        for next in swaps {
            if synced.is_ok() {
                synced = log.sync();
            }
            log = next;
        }
        let synced = synced.and_then(|()| log.sync());
        let mut p = lock(&state.progress);
        p.attempted = p.attempted.max(target);
        p.flushes += 1;
        match synced {
            Ok(()) => p.synced = p.synced.max(target),
            Err(e) => {
                tracing::error!("group commit: {e}");
                p.failed = Some((target, e.to_string()));
                p.broken = true;
            }
        }
        let now = p.synced;
        drop(p);
        state.tell(now);
    }
}

/// A durable commit, here, of what redb lacks of the dispatch state (see `dispatch`) and
/// of the rows kept in memory (see `recent`), up to frame `lsn`: taken back into memory
/// if it fails.
fn flush(db: &Database, queues: &Shared, kept: &Recent, lsn: u64) -> Result<(), StoreError> {
    let unsaved = dispatch::lock(queues).take_unsaved();
    let rows = kept.freeze();
    match durable_commit(db, &rows, &unsaved, lsn) {
        Ok(()) => {
            kept.saved();
            Ok(())
        }
        Err(e) => {
            kept.thaw();
            dispatch::lock(queues).restore(&unsaved);
            Err(e)
        }
    }
}

/// An immediate commit of `unsaved` and `rows`, noting that redb holds every frame up
/// to `lsn`: it writes every unsynced commit before it.
///
/// It also records redb's allocator state (quick repair). A host killed after it then
/// reopens redb by loading that state, instead of redb rebuilding it by walking every
/// page of the file: measured on a store of 40,000 handoffs, 0.5 ms against 56 to 109
/// ms, and the walk grows with the store. The record costs a second fsync, once per
/// checkpoint. Commits under [`CommitPolicy::Immediate`] do not record it: there it
/// would cost that fsync on every acknowledged write (p50 of a hand-off 0.73 to 0.77 ms
/// without, 0.90 to 1.12 ms with). Under that policy the writer checkpoints after
/// [`IDLE`] of quiet instead, so only a host killed while busy repairs at its next open.
fn durable_commit(
    db: &Database,
    rows: &Tables,
    unsaved: &Unsaved,
    lsn: u64,
) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    txn.set_quick_repair(true);
    unsaved.write(&txn)?;
    recent::write(&txn, rows)?;
    txn.open_table(super::COUNTERS)?.insert(LSN_COUNTER, lsn)?;
    txn.commit()?;
    Ok(())
}
#[cfg(test)]
pub(super) mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Barrier};

    use super::CommitPolicy;
    use crate::store::wal::{self, LogFile};
    use crate::store::{Kind, NewHandoff, Pattern, Store};

    /// The operator's blackboard handoff to `writer` of task `i`, with `{"n": i}`.
    pub(in crate::store) fn handoff(i: usize) -> NewHandoff {
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

    /// A store in a fresh directory, under group commit.
    pub(in crate::store) fn group_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.set_commit_policy(CommitPolicy::Group);
        (dir, store)
    }

    /// Hand off `handoff(i)` and wait until it is on disk, as the host does before it
    /// acknowledges a handoff; the new task's id.
    pub(in crate::store) fn acknowledged(store: &Store, i: usize) -> String {
        let task = store.hand_off(handoff(i)).wait().unwrap().unwrap().task;
        store.durable_blocking().unwrap();
        task
    }

    /// The last frame the writer appended to the log.
    pub(in crate::store) fn appended(store: &Store) -> u64 {
        super::lock(&store.syncer.state.progress).appended
    }

    /// Wait until no checkpoint runs on its own thread: a test's way to copy the store's
    /// files as a kill would leave them between checkpoints.
    fn between_checkpoints(store: &Store) {
        while store.recent.frozen() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Every one of `tasks` is in `store`; `when` says when, in the message if one is not.
    fn assert_kept(store: &Store, tasks: &[String], when: &str) {
        for t in tasks {
            assert!(
                store.task(t).unwrap().is_some(),
                "acknowledged task {t} is gone {when}"
            );
        }
    }

    /// Hold the writer thread with a write of its own until the returned function is
    /// called: the writes queued meanwhile are then taken as one batch.
    pub(in crate::store) fn hold_writer(store: &Store) -> impl FnOnce() + use<> {
        let (hold, held) = std::sync::mpsc::channel::<()>();
        let held = std::sync::Mutex::new(held);
        let holding = store.write(super::Ack::Lazy, move |_| {
            let _ = held.lock().unwrap().recv();
            Ok(())
        });
        // The writer thread takes the holding write alone.
        queued(store, 0);
        move || {
            drop(hold);
            holding.wait().unwrap();
        }
    }

    /// Wait until exactly `n` writes wait for the writer thread.
    pub(in crate::store) fn queued(store: &Store, n: usize) {
        let since = std::time::Instant::now();
        while super::lock(&store.syncer.state.progress).queue.len() != n {
            assert!(since.elapsed().as_secs() < 10, "{n} writes never queued up");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Hand off `good` + 1 tasks, acknowledged, and make the write `bad`, all queued
    /// behind a write that holds the writer thread until they are: the writer then takes
    /// them as one batch. The tasks handed off, and what `bad` returned.
    pub(in crate::store) fn in_one_batch<T: Send + 'static>(
        store: &Arc<Store>,
        good: usize,
        bad: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> (Vec<String>, T) {
        let release = hold_writer(store);
        let first = {
            let store = store.clone();
            std::thread::spawn(move || acknowledged(&store, good))
        };
        let others: Vec<_> = (0..good)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || acknowledged(&store, i))
            })
            .collect();
        let bad = {
            let store = store.clone();
            std::thread::spawn(move || bad(&store))
        };
        queued(store, good + 2);
        release();
        let bad = bad.join().unwrap();
        let mut tasks: Vec<String> = others.into_iter().map(|t| t.join().unwrap()).collect();
        tasks.push(first.join().unwrap());
        (tasks, bad)
    }

    /// Writes queued behind a busy writer are applied together; one that fails in the
    /// batch fails alone, with its own error, and every other write of the batch commits.
    #[test]
    fn a_write_that_fails_in_a_batch_fails_alone() {
        const GOOD: usize = 8;
        let (dir, store) = group_store();
        let store = Arc::new(store);
        let (tasks, bad) = in_one_batch(&store, GOOD, |store| {
            store
                .complete("t-nowhere", "done", b"{}", 1_000, &Default::default())
                .wait()
        });
        let err = bad.unwrap_err().to_string();
        assert!(err.contains("t-nowhere"), "{err}");
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_kept(&store, &tasks, "of the batch");
        assert!(store.task("t-nowhere").unwrap().is_none());
        // The aborted batch had drawn task numbers and appended audit records; redone
        // alone, the writes number on from what was committed, not from what was rolled
        // back: no number is skipped and the chain has no gap.
        let mut numbers: Vec<u64> = tasks.iter().map(|t| t[2..].parse().unwrap()).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (1..=GOOD as u64 + 1).collect::<Vec<_>>());
        assert_eq!(
            store.audit_verify().unwrap(),
            crate::store::AuditVerdict::Whole {
                records: GOOD as u64 + 1
            }
        );
    }

    /// Copy the store's files from `from` to a fresh directory while its host runs: what a
    /// host killed at that moment leaves on disk (the kernel keeps what was written).
    /// Without `wal`, the copy has redb's file alone.
    fn as_killed(from: &std::path::Path, wal: bool) -> tempfile::TempDir {
        let to = tempfile::tempdir().unwrap();
        let [first, second] = crate::store::WAL_FILES;
        let files = [crate::store::STORE_FILE, first, second];
        for f in &files[..if wal { 3 } else { 1 }] {
            std::fs::copy(from.join(f), to.path().join(f)).unwrap();
        }
        to
    }

    /// Acknowledged handoffs are on disk in the log before redb has them: a host killed
    /// before a checkpoint comes back with every one, redone from the log, and without the
    /// log they would be gone.
    #[test]
    fn a_killed_host_redoes_its_log_and_keeps_every_acknowledged_write() {
        const WRITES: usize = 20;
        let (dir, store) = group_store();
        let tasks: Vec<String> = (0..WRITES).map(|i| acknowledged(&store, i)).collect();
        let killed = as_killed(dir.path(), true);
        let redb_alone = as_killed(dir.path(), false);
        drop(store);

        let wal = killed.path().join(crate::store::WAL_FILE);
        assert!(
            std::fs::metadata(&wal).unwrap().len() > 0,
            "nothing was logged"
        );
        let store = Store::open(killed.path()).unwrap();
        assert_kept(&store, &tasks, "after the kill");
        assert_eq!(
            std::fs::metadata(&wal).unwrap().len(),
            0,
            "the log did not start over once redone"
        );
        drop(store);
        // Opened again, nothing is redone twice: every task once, in its inbox once, and
        // the next task is numbered on from the last one (the counters were redone too).
        let store = Store::open(killed.path()).unwrap();
        assert_eq!(store.inbox_depth("writer").unwrap(), WRITES as u64);
        assert_eq!(acknowledged(&store, WRITES), format!("t-{}", WRITES + 1));
        drop(store);

        let store = Store::open(redb_alone.path()).unwrap();
        let kept = tasks
            .iter()
            .filter(|t| store.task(t).unwrap().is_some())
            .count();
        assert!(
            kept < WRITES,
            "redb held all {WRITES} tasks without the log: the test proves nothing"
        );
    }

    /// A restart redoes the log in one durable commit, then empties the log. Killed in
    /// between, the host comes back to redb with the frames in it *and* the log still
    /// holding them: it redoes nothing twice (every task once in its inbox, the audit
    /// chain whole) and numbers on from the last task.
    #[test]
    fn a_kill_after_the_redo_but_before_the_log_is_emptied_redoes_nothing_twice() {
        const WRITES: usize = 8;
        let (dir, store) = group_store();
        let tasks: Vec<String> = (0..WRITES).map(|i| acknowledged(&store, i)).collect();
        let killed = as_killed(dir.path(), true);
        drop(store);
        let logs =
            crate::store::WAL_FILES.map(|f| (f, std::fs::read(killed.path().join(f)).unwrap()));
        assert!(!logs[0].1.is_empty(), "nothing was logged");

        drop(Store::open(killed.path()).unwrap());
        // The redo's commit reached the disk; the log's emptying did not.
        for (f, bytes) in &logs {
            std::fs::write(killed.path().join(f), bytes).unwrap();
        }
        assert_eq!(kept_prefix(killed.path(), &tasks, "redone twice"), WRITES);
        let store = Store::open(killed.path()).unwrap();
        assert_eq!(acknowledged(&store, WRITES), format!("t-{}", WRITES + 1));
    }

    /// Checkpoints in the middle of a run start the log over while writes go on: a host
    /// killed after several of them keeps every acknowledged write, from redb or the log,
    /// and redb, last made durable by a checkpoint, opens without a repair.
    #[test]
    fn writes_across_checkpoints_survive_a_kill() {
        const WRITES: usize = 200;
        let (dir, store) = group_store();
        let mut tasks = Vec::new();
        // The last frame redb holds, as its durable commits say.
        let held = || {
            use redb::ReadableDatabase as _;
            let txn = store.db.begin_read().unwrap();
            let counters = txn.open_table(crate::store::COUNTERS).unwrap();
            counters
                .get(super::LSN_COUNTER)
                .unwrap()
                .map_or(0, |v| v.value())
        };
        let mut checkpoints = 0;
        let mut last = held();
        for i in 0..WRITES {
            tasks.push(acknowledged(&store, i));
            between_checkpoints(&store);
            checkpoints += usize::from(held() > last);
            last = held();
        }
        assert!(checkpoints >= 2, "{checkpoints} checkpoints");
        // Memory keeps only what was written since the last checkpoint; readers see the
        // rows kept there and those already in redb as one.
        let kept = store.recent.rows("tasks", |_| true).len();
        assert!(
            kept > 0 && kept < WRITES,
            "{kept} task records of {WRITES} kept in memory"
        );
        let whole = crate::store::AuditVerdict::Whole {
            records: WRITES as u64,
        };
        assert_eq!(store.audit_verify().unwrap(), whole);
        assert_eq!(store.chain(&tasks[0]).unwrap().tasks.len(), 1);
        assert_eq!(store.chain(&tasks[WRITES - 1]).unwrap().handoffs.len(), 1);
        let appended = super::lock(&store.syncer.state.progress).appended;
        assert!(
            held() < appended,
            "the last writes were checkpointed: nothing to redo"
        );
        let killed = as_killed(dir.path(), true);
        let redb_alone = as_killed(dir.path(), false);
        drop(store);
        assert!(
            !crate::store::opened_with_repair(&redb_alone.path().join(crate::store::STORE_FILE))
                .unwrap(),
            "redb repaired a file whose last durable commit was a checkpoint"
        );
        let store = Store::open(killed.path()).unwrap();
        assert_kept(&store, &tasks, "after the kill");
        assert_eq!(store.inbox_depth("writer").unwrap(), WRITES as u64);
        assert_eq!(store.audit_verify().unwrap(), whole);
    }

    /// A frame the crash cut short ends the log: the write in it, never fsynced and so
    /// never acknowledged, is gone, and every write before it is redone. Its last bytes
    /// are what the disk held there before: the zeros the log wrote ahead.
    #[test]
    fn a_frame_cut_short_by_a_crash_is_dropped_and_the_frames_before_it_are_redone() {
        let (dir, store) = group_store();
        let before: Vec<String> = (0..5).map(|i| acknowledged(&store, i)).collect();
        // Logged last, alone in its frame; the kill cuts that frame short.
        let last = store.hand_off(handoff(99)).wait().unwrap().unwrap().task;
        let killed = as_killed(dir.path(), true);
        drop(store);
        let wal = killed.path().join(crate::store::WAL_FILE);
        let mut bytes = std::fs::read(&wal).unwrap();
        let (frames, end) = wal::frames(&bytes);
        assert!(end < bytes.len(), "no zeros after the frames");
        // The second half of the last frame never reached the disk.
        let torn = end - frames.last().expect("frames").1.len() / 2;
        bytes[torn..end].fill(0);
        std::fs::write(&wal, &bytes).unwrap();

        let store = Store::open(killed.path()).unwrap();
        assert_kept(&store, &before, "after the kill");
        assert!(
            store.task(&last).unwrap().is_none(),
            "task {last}, whose frame was cut short, came back"
        );
        assert_eq!(store.inbox_depth("writer").unwrap(), 5);
    }

    /// The log writes zeros ahead of its frames, a step at a time, so that most of its
    /// fsyncs find the file's blocks there already; a host killed with them there
    /// keeps every acknowledged write and redoes nothing twice.
    #[test]
    fn the_log_writes_zeros_ahead_of_its_frames_and_a_kill_keeps_every_write() {
        let (dir, store) = group_store();
        let wal = dir.path().join(crate::store::WAL_FILE);
        let mut tasks = Vec::new();
        let mut sizes = std::collections::BTreeSet::new();
        for i in 0..12 {
            tasks.push(acknowledged(&store, i));
            let bytes = std::fs::read(&wal).unwrap();
            let (_, end) = wal::frames(&bytes);
            assert!(
                end < bytes.len() && (bytes.len() as u64).is_multiple_of(wal::RESERVE),
                "after write {i}: frames end at {end} in a file of {}",
                bytes.len()
            );
            assert!(bytes[end..].iter().all(|&b| b == 0), "after write {i}");
            sizes.insert(bytes.len());
        }
        assert!(sizes.len() > 1, "the zeros ahead never grew: {sizes:?}");
        let killed = as_killed(dir.path(), true);
        drop(store);
        let store = Store::open(killed.path()).unwrap();
        assert_kept(&store, &tasks, "after the kill");
        assert_eq!(store.inbox_depth("writer").unwrap(), tasks.len() as u64);
    }

    /// Acknowledged writes until the log has gone on to its second file, and four of
    /// them there, while the checkpoint of the first waits for redb's write lock, which
    /// the returned transaction holds; the writes' tasks.
    fn across_a_swap(
        store: &Store,
        dir: &std::path::Path,
    ) -> (Vec<String>, redb::WriteTransaction) {
        let second = dir.join(crate::store::WAL_FILES[1]);
        // The first write switches to group commit, which checkpoints first.
        let mut tasks = vec![acknowledged(store, 0)];
        // Hand-offs need no redb write lock; the checkpoint does.
        let hold = store.db.begin_write().unwrap();
        while std::fs::metadata(&second).unwrap().len() == 0 {
            tasks.push(acknowledged(store, tasks.len()));
            assert!(
                tasks.len() < 1_000,
                "the log never went on to its second file"
            );
        }
        for _ in 0..3 {
            tasks.push(acknowledged(store, tasks.len()));
        }
        (tasks, hold)
    }

    /// A checkpoint runs on its own thread while the writer logs on to the log's other
    /// file. A host killed before that checkpoint commits redoes both files, in order,
    /// and keeps every acknowledged write, none of which redb alone holds; once it has
    /// committed, the file it folded in is emptied.
    #[test]
    fn a_kill_during_a_checkpoint_redoes_both_files_of_the_log() {
        let (dir, store) = group_store();
        let [first, second] = crate::store::WAL_FILES;
        let (tasks, hold) = across_a_swap(&store, dir.path());
        let size = std::fs::metadata(dir.path().join(first)).unwrap().len();
        assert!(size >= super::CHECKPOINT, "{size} bytes");
        let killed = as_killed(dir.path(), true);
        let redb_alone = as_killed(dir.path(), false);
        drop(hold);
        between_checkpoints(&store);
        drop(store);

        let store = Store::open(redb_alone.path()).unwrap();
        let held = tasks.iter().filter(|t| store.task(t).unwrap().is_some());
        assert_eq!(held.count(), 0, "redb alone held tasks the log was to redo");
        drop(store);
        let store = Store::open(killed.path()).unwrap();
        assert_kept(&store, &tasks, "after a kill during a checkpoint");
        assert_eq!(store.inbox_depth("writer").unwrap(), tasks.len() as u64);
        assert_eq!(
            store.audit_verify().unwrap(),
            crate::store::AuditVerdict::Whole {
                records: tasks.len() as u64
            }
        );
        for f in [first, second] {
            let left = std::fs::metadata(killed.path().join(f)).unwrap().len();
            assert_eq!(left, 0, "`{f}` after the redo");
        }
    }

    /// Frame by frame, the byte ranges of the whole frames at the start of `bytes`.
    fn frame_spans(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
        let mut at = 0;
        wal::frames(bytes)
            .0
            .iter()
            .map(|(_, payload)| {
                let span = at..at + wal::HEADER + payload.len();
                at = span.end;
                span
            })
            .collect()
    }

    /// Which of `tasks` a store opened on `dir` holds: their count, once checked to be
    /// a prefix (the first ones, with no gap), as a crash must leave them.
    fn kept_prefix(dir: &std::path::Path, tasks: &[String], when: &str) -> usize {
        let store = Store::open(dir).unwrap_or_else(|e| panic!("{when}: open failed: {e}"));
        let held: Vec<bool> = tasks
            .iter()
            .map(|t| store.task(t).unwrap().is_some())
            .collect();
        let kept = held.iter().take_while(|&&h| h).count();
        assert!(
            held[kept..].iter().all(|&h| !h),
            "{when}: the store holds {held:?} of {tasks:?}, not the first ones alone"
        );
        assert_eq!(
            store.inbox_depth("writer").unwrap(),
            kept as u64,
            "{when}: inbox"
        );
        assert_eq!(
            store.audit_verify().unwrap(),
            crate::store::AuditVerdict::Whole {
                records: kept as u64
            },
            "{when}: audit chain"
        );
        kept
    }

    /// Damage anywhere in a frame (its length, checksum, number or changes) ends the
    /// log there: a restart redoes exactly the frames before it, whatever byte it hit,
    /// and opens a store that is whole (inbox and audit chain agree) rather than failing
    /// or redoing half a frame. Each write here is acknowledged before the next is made,
    /// so each is a frame of its own.
    #[test]
    fn damage_anywhere_in_a_frame_ends_the_log_at_that_frame() {
        let (dir, store) = group_store();
        let tasks: Vec<String> = (0..6).map(|i| acknowledged(&store, i)).collect();
        let killed = as_killed(dir.path(), true);
        drop(store);
        let wal = crate::store::WAL_FILE;
        let bytes = std::fs::read(killed.path().join(wal)).unwrap();
        let spans = frame_spans(&bytes);
        assert_eq!(spans.len(), tasks.len(), "one frame per acknowledged write");

        let mut opened = 0;
        for (k, span) in spans.iter().enumerate() {
            // Every byte of the header, and bytes spread over the changes.
            let payload = span.start + wal::HEADER..span.end;
            let step = (payload.len() / 12).max(1);
            let hits = (span.start..payload.start)
                .chain(payload.clone().step_by(step))
                .chain([span.end - 1]);
            for at in hits {
                let copy = tempfile::tempdir().unwrap();
                for f in [crate::store::STORE_FILE, wal] {
                    std::fs::copy(killed.path().join(f), copy.path().join(f)).unwrap();
                }
                let mut damaged = bytes.clone();
                damaged[at] ^= 0xA5;
                std::fs::write(copy.path().join(wal), &damaged).unwrap();
                let when = format!("byte {at} damaged, in frame {k} ({span:?})");
                assert_eq!(kept_prefix(copy.path(), &tasks, &when), k, "{when}");
                opened += 1;
            }
        }
        assert!(opened > 6 * wal::HEADER, "{opened} damaged logs opened");
        // Undamaged, the same files keep every write.
        assert_eq!(kept_prefix(killed.path(), &tasks, "undamaged"), tasks.len());
    }

    /// The fsync thread syncs the file the log left before the one it went on to, so a
    /// crash can leave on disk frames of the second file while the last frame of the
    /// first never got there (none of them acknowledged). A restart then redoes the
    /// first file up to the lost frame and nothing of the second: the numbers have a
    /// gap, and what follows a gap may depend on what the gap lost.
    #[test]
    fn a_frame_lost_at_the_end_of_the_first_file_leaves_the_second_file_unredone() {
        let (dir, store) = group_store();
        let [first, second] = crate::store::WAL_FILES;
        let (tasks, hold) = across_a_swap(&store, dir.path());
        let killed = as_killed(dir.path(), true);
        drop(hold);
        between_checkpoints(&store);
        drop(store);

        let in_second = frame_spans(&std::fs::read(killed.path().join(second)).unwrap()).len();
        assert_eq!(in_second, 4, "frames in `{second}`");
        let path = killed.path().join(first);
        let mut bytes = std::fs::read(&path).unwrap();
        let spans = frame_spans(&bytes);
        let lost = spans.last().expect("frames in the first file").clone();
        bytes[lost].fill(0);
        std::fs::write(&path, &bytes).unwrap();

        // The writes before the lost frame are kept; its own and the second file's are not.
        let kept = kept_prefix(killed.path(), &tasks, "first file's last frame lost");
        assert_eq!(kept, tasks.len() - in_second - 1);
        for f in [first, second] {
            let left = std::fs::metadata(killed.path().join(f)).unwrap().len();
            assert_eq!(left, 0, "`{f}` after the redo");
        }
    }

    /// Which of the log file's operations fail; a test switches them while the store runs.
    #[derive(Default)]
    struct Faults {
        write: AtomicBool,
        sync: AtomicBool,
        /// Only the zeros written ahead of the frames fail, as on a disk with room for
        /// a frame but not for a step of zeros.
        zeros: AtomicBool,
    }

    /// The store's log file, failing as `faults` say, as a full or failing disk does.
    struct Failing {
        file: Box<dyn LogFile>,
        faults: Arc<Faults>,
    }

    impl LogFile for Failing {
        fn write_at(&mut self, at: u64, frame: &[u8]) -> std::io::Result<()> {
            // A frame is never all zeros: its header holds its length.
            let zeros = self.faults.zeros.load(Ordering::SeqCst)
                && !frame.is_empty()
                && frame.iter().all(|&b| b == 0);
            if zeros || self.faults.write.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("injected: no space left on device"));
            }
            self.file.write_at(at, frame)
        }

        fn sync(&self) -> std::io::Result<()> {
            if self.faults.sync.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("injected: input/output error"));
            }
            self.file.sync()
        }

        fn clear(&mut self) -> std::io::Result<()> {
            self.file.clear()
        }

        fn share(&self) -> std::io::Result<Box<dyn LogFile>> {
            Ok(Box::new(Failing {
                file: self.file.share()?,
                faults: self.faults.clone(),
            }))
        }
    }

    /// A store under group commit whose log's disk fails when the test says.
    fn failing_store() -> (tempfile::TempDir, Store, Arc<Faults>) {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        let store = Store::open_with_log(dir.path(), |file| {
            Box::new(Failing {
                file,
                faults: faults.clone(),
            })
        })
        .unwrap();
        store.set_commit_policy(CommitPolicy::Group);
        (dir, store, faults)
    }

    /// An fsync of the log that fails is never taken for success: the write it was to
    /// cover is reported as possibly lost, and so is every write after it while the disk
    /// keeps failing. The store goes on: once the disk works, the next write makes redb
    /// durable first (the log may lack what the failed fsync held), is acknowledged, and
    /// survives a kill with everything acknowledged before.
    #[test]
    fn a_failed_fsync_is_reported_not_acknowledged_and_the_store_goes_on() {
        let (dir, store, faults) = failing_store();
        let mut kept = vec![acknowledged(&store, 0)];
        faults.sync.store(true, Ordering::SeqCst);
        for i in 1..=2 {
            let task = store.hand_off(handoff(i)).wait().unwrap().unwrap().task;
            let err = store.durable_blocking().unwrap_err().to_string();
            assert!(
                err.contains("the fsync failed, the write may be lost")
                    && err.contains("cannot fsync the write-ahead log")
                    && err.contains(crate::store::WAL_FILE)
                    && err.contains("injected: input/output error"),
                "write {task}: {err}"
            );
        }
        faults.sync.store(false, Ordering::SeqCst);
        kept.push(acknowledged(&store, 3));
        let killed = as_killed(dir.path(), true);
        drop(store);
        let store = Store::open(killed.path()).unwrap();
        assert_kept(&store, &kept, "after the kill");
    }

    /// Zeros the disk will not take ahead of the frames cost nothing but speed: the
    /// frames go on, the file growing with them, and every acknowledged write survives a
    /// kill.
    #[test]
    fn zeros_the_disk_will_not_take_ahead_of_the_log_leave_its_frames_whole() {
        let (dir, store, faults) = failing_store();
        faults.zeros.store(true, Ordering::SeqCst);
        let tasks: Vec<String> = (0..12).map(|i| acknowledged(&store, i)).collect();
        let wal = dir.path().join(crate::store::WAL_FILE);
        let bytes = std::fs::read(&wal).unwrap();
        let (frames, end) = wal::frames(&bytes);
        assert!(!frames.is_empty(), "nothing was logged");
        assert_eq!(
            end,
            bytes.len(),
            "zeros after the frames: {} bytes",
            bytes.len()
        );
        let killed = as_killed(dir.path(), true);
        drop(store);
        let store = Store::open(killed.path()).unwrap();
        assert_kept(&store, &tasks, "after the kill");
        assert_eq!(store.inbox_depth("writer").unwrap(), tasks.len() as u64);
    }

    /// A frame the log could not take loses nothing: redb is made durable at once instead,
    /// and the writes in it are acknowledged only after that, so they survive a kill even
    /// without the log. Once the disk takes frames again, the log carries on after them.
    #[test]
    fn a_frame_the_log_could_not_take_is_made_durable_by_a_checkpoint_instead() {
        let (dir, store, faults) = failing_store();
        faults.write.store(true, Ordering::SeqCst);
        let mut kept: Vec<String> = (0..3).map(|i| acknowledged(&store, i)).collect();
        let redb_alone = as_killed(dir.path(), false);
        faults.write.store(false, Ordering::SeqCst);
        kept.push(acknowledged(&store, 3));
        let killed = as_killed(dir.path(), true);
        drop(store);
        let store = Store::open(redb_alone.path()).unwrap();
        assert_kept(&store, &kept[..3], "without the log");
        drop(store);
        let store = Store::open(killed.path()).unwrap();
        assert_kept(&store, &kept, "after the kill");
        assert_eq!(store.inbox_depth("writer").unwrap(), 4);
    }

    /// Once a checkpoint holds the frames of the log's first file, frames go there again
    /// when the second is full, written over the old ones in place (the file is not cut
    /// short, so its blocks are reused). A host killed then skips the old frames left
    /// after the new, and keeps every acknowledged write.
    #[test]
    fn a_log_file_is_written_over_once_a_checkpoint_holds_its_frames() {
        let (dir, store) = group_store();
        let [first, second] = crate::store::WAL_FILES;
        let read = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
        // The number of the first frame in `f`.
        let first_frame = |f: &str| {
            read(f)
                .get(8..16)
                .map(|n| u64::from_le_bytes(n.try_into().unwrap()))
        };
        let mut tasks = vec![acknowledged(&store, 0)];
        let started = first_frame(first);
        let mut longest = 0;
        while first_frame(first) == started {
            let len = read(first).len();
            assert!(
                len >= longest,
                "`{first}` was cut short: {longest} bytes, then {len}"
            );
            longest = len;
            tasks.push(acknowledged(&store, tasks.len()));
            assert!(tasks.len() < 3_000, "frames never went to `{first}` again");
        }
        assert!(read(second).len() as u64 >= super::CHECKPOINT);
        for _ in 0..3 {
            tasks.push(acknowledged(&store, tasks.len()));
        }
        between_checkpoints(&store);
        let killed = as_killed(dir.path(), true);
        drop(store);
        let store = Store::open(killed.path()).unwrap();
        assert_kept(
            &store,
            &tasks,
            "after a kill with old frames left in the log",
        );
        assert_eq!(store.inbox_depth("writer").unwrap(), tasks.len() as u64);
        assert_eq!(
            store.audit_verify().unwrap(),
            crate::store::AuditVerdict::Whole {
                records: tasks.len() as u64
            }
        );
    }

    /// When the writer checkpoints itself while the store runs (after a quiet second, a
    /// change of policy or a failure) the log starts over without losing its blocks:
    /// its files keep their size, a restart finds no frame in them, and the writes that
    /// follow go over the old bytes from the start, growing nothing. A host killed then
    /// keeps every acknowledged write, each once; a store closed empties the files.
    #[test]
    fn a_checkpoint_of_the_writer_keeps_the_logs_blocks_and_a_kill_after_keeps_every_write() {
        let (dir, store) = group_store();
        let wal = dir.path().join(crate::store::WAL_FILE);
        let size = || std::fs::metadata(&wal).unwrap().len();
        let mut tasks: Vec<String> = (0..6).map(|i| acknowledged(&store, i)).collect();
        let grown = size();
        assert_eq!(crate::store::logged_frames(dir.path()).unwrap(), 6);

        // A change of policy makes the writer checkpoint before the write that follows.
        store.set_commit_policy(CommitPolicy::Immediate);
        tasks.push(acknowledged(&store, tasks.len()));
        assert_eq!(crate::store::logged_frames(dir.path()).unwrap(), 0);
        assert_eq!(size(), grown, "the log's file after the checkpoint");

        store.set_commit_policy(CommitPolicy::Group);
        for _ in 0..6 {
            tasks.push(acknowledged(&store, tasks.len()));
        }
        let bytes = std::fs::read(&wal).unwrap();
        let (frames, _) = wal::frames(&bytes);
        assert!(frames.len() >= 6, "{} frames", frames.len());
        assert_eq!(
            bytes.len() as u64,
            grown,
            "the writes after it grew the log"
        );
        let killed = as_killed(dir.path(), true);
        drop(store);
        assert_eq!(
            kept_prefix(killed.path(), &tasks, "after the kill"),
            tasks.len()
        );
        // Closed, the store gives the log's blocks back.
        for f in crate::store::WAL_FILES {
            let left = std::fs::metadata(dir.path().join(f)).unwrap().len();
            assert_eq!(left, 0, "`{f}` once the store closed");
        }
    }

    /// Writers that commit together share fsyncs, and each learns its write is on disk:
    /// after the store is reopened, every acknowledged handoff is there.
    #[test]
    fn concurrent_writers_share_flushes_and_every_acknowledged_write_survives() {
        const WRITERS: usize = 32;
        let (dir, store) = group_store();
        let store = Arc::new(store);
        let start = Arc::new(Barrier::new(WRITERS));
        let tasks: Vec<String> = (0..WRITERS)
            .map(|i| {
                let (store, start) = (store.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    acknowledged(&store, i)
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
        assert_kept(&store, &tasks, "after the reopen");
    }

    /// Claim up to `max` ready tasks for the agent each names.
    fn claim(store: &Store, max: usize) -> Vec<String> {
        let pick: crate::store::Pick =
            Arc::new(|target: &str, _: &[&str], _: &[String]| Some(target.to_string()));
        let claimed = store.claim_ready(max, pick).wait().unwrap();
        claimed.into_iter().map(|t| t.id).collect()
    }

    /// What the redb file of a stopped store in `dir` holds of the state kept in memory:
    /// rows of the wake queue, the inboxes, the running tasks, the grants and the
    /// blackboard's entries, and each task's status, in task order.
    fn in_redb(dir: &std::path::Path) -> ([u64; 5], Vec<crate::store::Status>) {
        use redb::{ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _};
        let db = redb::Database::open(dir.join(crate::store::STORE_FILE)).unwrap();
        let txn = db.begin_read().unwrap();
        let rows = [
            txn.open_table(crate::store::READY).unwrap().len().unwrap(),
            txn.open_table(crate::store::INBOX).unwrap().len().unwrap(),
            txn.open_table(crate::store::RUNNING)
                .unwrap()
                .len()
                .unwrap(),
            txn.open_table(crate::store::GRANTS).unwrap().len().unwrap(),
            txn.open_table(crate::store::BB_ENTRIES)
                .unwrap()
                .len()
                .unwrap(),
        ];
        let statuses = txn
            .open_table(crate::store::TASKS)
            .unwrap()
            .iter()
            .unwrap()
            .map(|row| {
                let json = row.unwrap().1;
                serde_json::from_str::<crate::store::TaskRecord>(json.value())
                    .unwrap()
                    .status
            })
            .collect();
        (rows, statuses)
    }

    /// Under group commit the wake queue, inboxes and running tasks live in memory, and
    /// so do tasks, grants and entries written since the last checkpoint. The checkpoint
    /// of a clean stop writes redb what they hold then: the next host finds every task
    /// and entry as it was, the waiting tasks still waiting, and redelivers the ones left
    /// running.
    #[test]
    fn a_checkpoint_leaves_redb_the_state_kept_in_memory() {
        use crate::store::Status::{Completed, Pending, Running};
        let (dir, store) = group_store();
        let tasks: Vec<String> = (0..6).map(|i| acknowledged(&store, i)).collect();
        let running = claim(&store, 3);
        assert_eq!(running, tasks[..3]);
        store
            .complete(&running[0], "done", b"{}", 1_000, &Default::default())
            .wait()
            .unwrap();
        store.durable_blocking().unwrap();
        let keys = store.keys("output/").unwrap();
        assert_eq!(
            keys.len(),
            7,
            "six handoffs' data and one outcome: {keys:?}"
        );
        let outcome = format!("output/writer/{}", running[0]);
        assert!(keys.contains(&outcome), "{keys:?}");
        drop(store);
        assert_eq!(
            in_redb(dir.path()),
            (
                [3, 3, 2, 3, 7],
                vec![Completed, Running, Running, Pending, Pending, Pending]
            ),
            "redb's wake queue, inboxes, running tasks, grants, entries and tasks after the stop"
        );

        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.keys("output/").unwrap(), keys);
        assert_eq!(store.read(&outcome, None).unwrap().unwrap().value, b"{}");
        assert_eq!(store.inbox_depth("writer").unwrap(), 3);
        assert_eq!(store.recover().wait().unwrap(), 2);
        assert_eq!(store.inbox_depth("writer").unwrap(), 5);
        let again = claim(&store, 10);
        assert_eq!(again.len(), 5, "claimed after the restart: {again:?}");
        for t in &tasks[1..] {
            assert!(
                again.contains(t),
                "task {t} was not claimable again: {again:?}"
            );
        }
    }

    /// Under immediate commits each write's own durable commit holds its changes to the
    /// dispatch state: redb's file alone, copied while the host runs, has them. (A claim
    /// commits unsynced, as lazy writes do, and is made durable by the next acknowledged
    /// write.)
    #[test]
    fn under_immediate_commits_redb_alone_holds_the_dispatch_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..3 {
            acknowledged(&store, i);
        }
        assert_eq!(claim(&store, 1).len(), 1);
        acknowledged(&store, 3);
        let redb_alone = as_killed(dir.path(), false);
        drop(store);
        let store = Store::open(redb_alone.path()).unwrap();
        assert_eq!(store.inbox_depth("writer").unwrap(), 3);
        assert_eq!(store.recover().wait().unwrap(), 1);
        assert_eq!(store.inbox_depth("writer").unwrap(), 4);
    }

    /// A write that fails takes back what it changed in memory (the dispatch state, a
    /// task and a grant), alone or in a batch with others, whose changes stay: no reader
    /// ever sees them.
    #[test]
    fn a_write_that_fails_takes_back_what_it_changed_in_memory() {
        let (_dir, store) = group_store();
        let store = Arc::new(store);
        let failing = |store: &Store| {
            store.write(super::Ack::Acknowledged, |tx| {
                tx.put(crate::store::READY, 999, "writer\tt-999\t0\t")?;
                tx.put(crate::store::INBOX, ("writer", 999), "t-999")?;
                tx.put(crate::store::TASKS, "t-999", "{}")?;
                tx.put(crate::store::GRANTS, ("writer", "secret"), ())?;
                Err::<(), _>(crate::store::StoreError::Missing("task", "t-999".into()))
            })
        };
        let unseen = |store: &Store, when: &str| {
            assert!(store.task("t-999").unwrap().is_none(), "{when}");
            assert!(!store.is_granted("writer", "secret").unwrap(), "{when}");
        };
        let err = failing(&store).wait().unwrap_err().to_string();
        assert!(err.contains("t-999"), "{err}");
        unseen(&store, "alone");
        assert_eq!(store.inbox_depth("writer").unwrap(), 0);
        assert!(claim(&store, 10).is_empty());

        // In a batch, which the failing write aborts; each is then redone alone.
        let (mut tasks, bad) = in_one_batch(&store, 4, move |store| failing(store).wait());
        assert!(bad.is_err());
        tasks.sort();
        unseen(&store, "in a batch");
        assert_eq!(store.inbox_depth("writer").unwrap(), 5);
        let mut claimed = claim(&store, 10);
        claimed.sort();
        assert_eq!(claimed, tasks, "the failed write's task was claimable");
    }

    /// The writer reads a task back from the record it keeps decoded (see `decoded`) only
    /// while the row still holds the bytes it wrote: a row changed some other way is
    /// decoded again, and a claim neither reads nor writes back the record it replaced.
    #[test]
    fn a_task_is_read_back_as_its_row_holds_it_not_as_it_was_last_decoded() {
        let (_dir, store) = group_store();
        let task = acknowledged(&store, 0);
        let mut changed = store.task(&task).unwrap().unwrap();
        changed.summary = "changed behind the writer's back".into();
        let json = serde_json::to_string(&changed).unwrap();
        let id = task.clone();
        store
            .write(super::Ack::Acknowledged, move |tx| {
                tx.put(crate::store::TASKS, id.as_str(), json.as_str())
            })
            .wait()
            .unwrap();
        let pick: crate::store::Pick =
            Arc::new(|target: &str, _: &[&str], _: &[String]| Some(target.to_string()));
        let claimed = store.claim_ready(1, pick).wait().unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].summary, changed.summary);
        let stored = store.task(&task).unwrap().unwrap();
        assert_eq!(stored.summary, changed.summary);
        assert_eq!(stored.status, crate::store::Status::Running);
    }

    /// A reader that began reading redb before a checkpoint moved a row from memory to
    /// redb still finds the row: it reads it in a transaction begun after, not in the
    /// table it had opened in the old one.
    #[test]
    fn a_reader_finds_a_row_a_checkpoint_moved_to_redb_meanwhile() {
        let (_dir, store) = group_store();
        let task = acknowledged(&store, 0);
        let mut reader = store.reader();
        reader.table(crate::store::TASKS).unwrap();
        // The checkpoint's commit, made here while the writer thread waits for work.
        let last = super::lock(&store.syncer.state.progress).appended;
        super::flush(&store.db, &store.queues, &store.recent, last).unwrap();
        let found: Option<crate::store::TaskRecord> =
            reader.record(crate::store::TASKS, &task).unwrap();
        assert_eq!(found.map(|t| t.id), Some(task));
    }
}
