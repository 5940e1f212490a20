//! When a commit is on disk: the commit policy, and group commit.
//!
//! redb commits in one total order. A commit with `Durability::None` is visible at once
//! but written to disk only by the next `Durability::Immediate` commit, which writes every
//! commit before it. So after a crash the store always holds a *prefix* of the commits:
//! whatever survived, everything committed before it survived too.
//!
//! - [`CommitPolicy::Immediate`]: every acknowledged write commits with an fsync of its
//!   own. One fsync per handoff, completion or failure.
//! - [`CommitPolicy::Group`]: acknowledged writes commit without an fsync; a syncer thread
//!   then makes one immediate commit that covers every write committed before it started,
//!   and whoever waits on [`Store::durable`](super::Store::durable) learns it is on disk.
//!   The syncer starts a flush once writes stop arriving for 150 µs, or 4 ms after the
//!   first, so under load one fsync acknowledges many handoffs. Nothing is acknowledged before its flush: the caller of
//!   a write waits for `durable` before it tells anyone (the agent's receipt, the
//!   operator's task id, the activation's end).
//!
//! A write seen by another activation before its flush (a task claimed from an inbox)
//! is safe by the prefix rule: a crash that loses the write loses everything that
//! followed from it, and the writer, never acknowledged, is redelivered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::watch;

use super::StoreError;

/// A flush waits for writers until none commits for this long...
const QUIET: Duration = Duration::from_micros(150);
/// ...or this long has passed since the first of them.
const WINDOW: Duration = Duration::from_millis(4);

/// How acknowledged writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitPolicy {
    /// One fsync per acknowledged write.
    Immediate,
    /// Acknowledged writes share fsyncs; each is acknowledged after the one that covers it.
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
                "group commit: writes commit unsynced in redb's single commit order; one fsynced commit then covers every write before it, and no handoff or outcome is acknowledged until the fsync that covers it returns"
            }
        }
    }
}

/// How far the syncer got.
#[derive(Debug, Default)]
struct Progress {
    /// Unsynced commits so far (a sequence number).
    committed: u64,
    /// Every commit up to this one is on disk.
    synced: u64,
    /// The syncer has tried up to this one.
    attempted: u64,
    /// Flushes made so far.
    flushes: u64,
    /// The last flush failed: commits up to `.0` may be lost, and why.
    failed: Option<(u64, String)>,
    /// The store is closing: flush what is left and end.
    stop: bool,
}

/// The group-commit state of one store.
pub(super) struct Syncer {
    group: AtomicBool,
    progress: Arc<(Mutex<Progress>, Condvar, Condvar)>,
    /// `synced`, for async waiters.
    synced: watch::Sender<u64>,
    thread: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<Progress>) -> MutexGuard<'_, Progress> {
    // The lock guards plain counters; a panic elsewhere leaves them consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Syncer {
    /// A syncer for `db`, with its thread started; the policy starts as `Immediate`.
    pub(super) fn start(db: Arc<Database>) -> Syncer {
        let progress: Arc<(Mutex<Progress>, Condvar, Condvar)> = Arc::default();
        let (synced, _) = watch::channel(0);
        let state = progress.clone();
        let tx = synced.clone();
        let thread = std::thread::Builder::new()
            .name("baton-syncer".into())
            .spawn(move || run(&db, &state, &tx))
            .expect("spawn the syncer thread");
        Syncer {
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

    /// Commit a write that will be acknowledged, under the policy.
    pub(super) fn commit(&self, mut txn: WriteTransaction) -> Result<(), StoreError> {
        if !self.group.load(Ordering::Acquire) {
            txn.commit()?;
            return Ok(());
        }
        txn.set_durability(Durability::None)?;
        txn.commit()?;
        // Numbered after the commit returns: a flush that reads `committed` before it
        // starts covers every commit numbered up to what it read.
        let (m, work, _) = &*self.progress;
        lock(m).committed += 1;
        work.notify_one();
        Ok(())
    }

    /// The newest commit so far, or `None` when every commit is already on disk.
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
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the syncer thread panicked; unsynced commits are redone at restart");
        }
    }
}

/// Whether commit `seq` can still become durable.
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
        "group commit: the store closed before the write was on disk",
    )))
}

/// The syncer thread: whenever commits wait, one immediate commit for all of them.
fn run(db: &Database, state: &(Mutex<Progress>, Condvar, Condvar), synced: &watch::Sender<u64>) {
    let (m, work, done) = state;
    loop {
        let target = {
            let mut p = lock(m);
            while p.committed == p.attempted && !p.stop {
                p = work.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            if p.committed == p.attempted {
                return; // stopping, and nothing is left to flush
            }
            // The flush holds redb's write lock through its fsync, so every writer waits
            // for it: flushing the moment one commit arrives would let one write in per
            // fsync. Let writers in while they keep coming, until a quiet gap or the
            // window closes, then flush them all at once.
            let opened = Instant::now();
            while !p.stop && opened.elapsed() < WINDOW {
                let seen = p.committed;
                p = work
                    .wait_timeout(p, QUIET)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                if p.committed == seen {
                    break;
                }
            }
            p.committed
        };
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
        done.notify_all();
        synced.send_replace(now);
    }
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
