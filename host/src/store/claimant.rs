//! Standing claims: ready tasks claimed for the scheduler in the commit that made them
//! ready.
//!
//! The scheduler used to claim with a write of its own ([`Store::claim_ready`]) after a
//! handoff's commit woke it. Under load that write waited for the writer thread's next
//! batch: about 0.3 ms a claim on a 2-core machine, in every handoff's path, and
//! the scheduler could not claim again until it came back. Now the scheduler registers
//! a [`Claimant`], and the writer thread ends each batch of writes with a claim for it
//! (`ClaimFor`), in the same transaction: a task handed off to an agent with a free
//! slot is claimed in its handoff's commit, and reaches the scheduler as that commit
//! returns. The scheduler still asks for a claim of its own ([`Store::claim_for`]) when
//! something else freed a slot or a backoff ended.
//!
//! Slots are reserved while the claim is applied, under the claimant's lock, so two
//! claims in one batch never take the same slot; a claim whose transaction does not
//! commit gives its slots back, and one applied again (its batch redone write by write)
//! first gives back what it reserved the first time. A claim is lazy like every claim:
//! a crash that loses it leaves its tasks ready.
//!
//! [`Store::claim_ready`]: super::Store::claim_ready
//! [`Store::claim_for`]: super::Store::claim_for

use std::sync::Arc;

use super::commit::{Ack, Write};
use super::queue::claim_ready_in;
use super::wal::Tx;
use super::{Picker, StoreError, TaskRecord};

/// What a claim runs: the most tasks to claim and how to pick their agents; it returns
/// the tasks it claimed.
pub type Claim<'a> = dyn FnMut(usize, &Picker<'_>) -> Result<Vec<TaskRecord>, StoreError> + 'a;

/// Who ready tasks are claimed for: the scheduler's free slots.
pub trait Claimant: Send + Sync {
    /// Whether it takes tasks now (it is open and has a free slot): the writer thread
    /// ends a batch with a claim for it only then.
    fn wants(&self) -> bool;
    /// Run `claim` with how many tasks it takes at most and a pick that sees its free
    /// slots, and reserve a slot for each task claimed, all under its lock. `claim`
    /// locks the store's queues under it, so a pick the store calls under those (as
    /// [`Store::claimable`](super::Store::claimable) does) must not take this lock.
    fn reserve(&self, claim: &mut Claim<'_>) -> Result<Vec<TaskRecord>, StoreError>;
    /// Give back the slots reserved for `tasks`, whose claim did not commit.
    fn release(&self, tasks: &[TaskRecord]);
    /// Hand over `tasks`, whose claim committed: they are running, and must be run.
    fn deliver(&self, tasks: Vec<TaskRecord>);
}

/// A claim for a claimant, as one write of a batch.
pub(super) struct ClaimFor {
    claimant: Arc<dyn Claimant>,
    /// What the last application claimed, with a slot reserved for each.
    reserved: Vec<TaskRecord>,
    /// Who asked for it, if anyone waits: told once the claimed tasks were handed over.
    reply: Option<oneshot::Sender<Result<usize, StoreError>>>,
}

impl ClaimFor {
    pub(super) fn new(
        claimant: Arc<dyn Claimant>,
        reply: Option<oneshot::Sender<Result<usize, StoreError>>>,
    ) -> ClaimFor {
        ClaimFor {
            claimant,
            reserved: Vec::new(),
            reply,
        }
    }
}

impl Write for ClaimFor {
    fn ack(&self) -> Ack {
        Ack::Lazy
    }

    fn apply(&mut self, tx: &Tx<'_>) -> Result<(), StoreError> {
        // Applied again in a fresh transaction: the first one's claims are not in it.
        self.claimant.release(&std::mem::take(&mut self.reserved));
        self.reserved = self.claimant.reserve(&mut |max, pick| match max {
            0 => Ok(Vec::new()),
            max => claim_ready_in(tx, max, pick),
        })?;
        Ok(())
    }

    fn finish(self: Box<Self>, outcome: Result<(), StoreError>) {
        let ClaimFor {
            claimant,
            reserved,
            reply,
        } = *self;
        let claimed = match outcome {
            Ok(()) => {
                let n = reserved.len();
                claimant.deliver(reserved);
                Ok(n)
            }
            Err(e) => {
                claimant.release(&reserved);
                // Its tasks stay ready; the scheduler's next look claims them.
                if reply.is_none() {
                    tracing::error!("a claim for the scheduler failed: {e}");
                }
                Err(e)
            }
        };
        if let Some(reply) = reply {
            let _ = reply.send(claimed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::store::commit::tests::{acknowledged, group_store, in_one_batch};
    use crate::store::{Status, Store};

    /// A claimant with `limit` slots, any agent: what it holds and what it was handed.
    struct Slots {
        limit: usize,
        taken: Mutex<usize>,
        got: Mutex<Vec<String>>,
    }

    impl Slots {
        fn new(limit: usize) -> Arc<Slots> {
            Arc::new(Slots {
                limit,
                taken: Mutex::new(0),
                got: Mutex::new(Vec::new()),
            })
        }

        fn taken(&self) -> usize {
            *self.taken.lock().unwrap()
        }

        fn got(&self) -> Vec<String> {
            self.got.lock().unwrap().clone()
        }
    }

    impl Claimant for Slots {
        fn wants(&self) -> bool {
            self.taken() < self.limit
        }

        fn reserve(&self, claim: &mut Claim<'_>) -> Result<Vec<TaskRecord>, StoreError> {
            let mut taken = self.taken.lock().unwrap();
            let tasks = claim(self.limit - *taken, &|to, _, _| Some(to.to_string()))?;
            *taken += tasks.len();
            Ok(tasks)
        }

        fn release(&self, tasks: &[TaskRecord]) {
            *self.taken.lock().unwrap() -= tasks.len();
        }

        fn deliver(&self, tasks: Vec<TaskRecord>) {
            self.got
                .lock()
                .unwrap()
                .extend(tasks.into_iter().map(|t| t.id));
        }
    }

    /// Frames the writer has appended to the log so far: one per transaction.
    fn frames(store: &Store) -> u64 {
        super::super::commit::tests::appended(store)
    }

    /// Wait until every write queued so far has finished, claims included: a write queued
    /// now is applied in a later batch than theirs.
    fn settled(store: &Store) {
        store.write(Ack::Lazy, |_| Ok(())).wait().unwrap();
    }

    fn status(store: &Store, task: &str) -> Status {
        store.task(task).unwrap().unwrap().status
    }

    /// A task handed off while its claimant has a free slot is claimed in the handoff's
    /// own transaction; once the slots are full it waits, ready, for a claim of its own.
    #[test]
    fn a_handoff_to_a_free_slot_is_claimed_in_its_own_commit() {
        let (_dir, store) = group_store();
        let slots = Slots::new(2);
        let claimant: Arc<dyn Claimant> = slots.clone();
        store.serve_claims(claimant.clone());

        let before = frames(&store);
        let first = acknowledged(&store, 1);
        settled(&store);
        // The handoff with its claim, then the settling write: no transaction between.
        assert_eq!(frames(&store) - before, 2);
        assert_eq!(slots.got(), std::slice::from_ref(&first));
        assert_eq!(status(&store, &first), Status::Running);

        let second = acknowledged(&store, 2);
        let third = acknowledged(&store, 3);
        settled(&store);
        assert_eq!(slots.got(), [first.clone(), second.clone()]);
        assert_eq!(slots.taken(), 2);
        assert_eq!(status(&store, &third), Status::Pending);

        // A slot frees up; the scheduler asks for a claim of its own.
        slots.release(&[store.task(&first).unwrap().unwrap()]);
        assert_eq!(store.claim_for(claimant.clone()).wait().unwrap(), 1);
        assert_eq!(slots.got(), [first, second, third.clone()]);
        assert_eq!(status(&store, &third), Status::Running);

        // Stopped, it is claimed for no more.
        store.stop_claims(&claimant);
        slots.release(&[store.task(&third).unwrap().unwrap()]);
        let fourth = acknowledged(&store, 4);
        settled(&store);
        assert_eq!(status(&store, &fourth), Status::Pending);
        assert_eq!(slots.got().len(), 3);
    }

    /// A batch whose other write fails is redone write by write: the claim that ended it
    /// gives back the slots it had reserved before it reserves again, so the claimant
    /// holds a slot for exactly the tasks it was handed, and each of them is running.
    #[test]
    fn a_claim_redone_after_its_batch_failed_leaks_no_slot() {
        const GOOD: usize = 6;
        let (_dir, store) = group_store();
        let store = Arc::new(store);
        let slots = Slots::new(4);
        store.serve_claims(slots.clone());
        let (tasks, bad) = in_one_batch(&store, GOOD, |store| {
            store
                .complete("t-nowhere", "done", b"{}", 1_000, &Default::default())
                .wait()
        });
        assert!(bad.is_err());
        settled(&store);
        let got = slots.got();
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(slots.taken(), 4);
        for t in &tasks {
            let expected = if got.contains(t) {
                Status::Running
            } else {
                Status::Pending
            };
            assert_eq!(status(&store, t), expected, "task {t}");
        }
    }
}
