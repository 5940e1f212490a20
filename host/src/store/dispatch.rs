//! The dispatch state, kept in memory: the wake queue, the inboxes, the tasks running
//! and what running tasks claimed through `check-inbox`.
//!
//! Every row of these four tables lives for the moments between a hand-off and its
//! claim, or a claim and its end: a handoff inserted and removed six of them, each a
//! change to a redb table (about 3 µs apiece, and a table more for each transaction to
//! commit), and every look of the scheduler opened a read transaction to scan the wake
//! queue. Here they are ordered maps the writer thread changes and the scheduler reads
//! without a transaction.
//!
//! Durability is unchanged, and so is the store's file format:
//!
//! - Each change is logged like any other (same table, same bytes), so a restart
//!   redoes it; under [`CommitPolicy::Immediate`](super::CommitPolicy) it is written
//!   through to redb's table in the write's own transaction.
//! - Under group commit, redb's copy of these tables is brought up to date only by a
//!   durable commit (a checkpoint), from the rows changed since the last one: rows that
//!   came and went in between cost redb nothing.
//! - At open, after the log is redone into redb, the maps are loaded from redb.
//!
//! A write that fails takes its changes back (see [`Undo`]). Readers outside the writer
//! thread ([`Store::claimable`](super::Store::claimable), an inbox's depth) may see a
//! write's changes a moment before its transaction commits, or one that is then taken
//! back: they only ever use what they see as a hint, which the writer checks again.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use foldhash::HashMap;
use redb::{Key, ReadableTable, TableDefinition, TableHandle, Value, WriteTransaction};

use super::{INBOX, INBOX_CLAIMS, READY, RUNNING, StoreError, recent};

/// A key as redb stores it, ordered as redb orders keys of type `K`.
struct Ordered<K>(Vec<u8>, PhantomData<fn() -> K>);

impl<K: Key> Ordered<K> {
    fn new(bytes: Vec<u8>) -> Self {
        Ordered(bytes, PhantomData)
    }

    fn of(key: &K::SelfType<'_>) -> Self {
        Ordered::new(K::as_bytes(key).as_ref().to_vec())
    }
}

impl<K: Key> Ord for Ordered<K> {
    fn cmp(&self, other: &Self) -> Ordering {
        K::compare(&self.0, &other.0)
    }
}

impl<K: Key> PartialOrd for Ordered<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<K: Key> PartialEq for Ordered<K> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<K: Key> Eq for Ordered<K> {}

/// One of the tables, in memory.
pub(super) struct Rows<K: Key + 'static, V: Value + 'static> {
    rows: BTreeMap<Ordered<K>, Vec<u8>>,
    /// Rows changed since redb last held this table, each with whether redb held the
    /// row then: what the next durable commit must write or remove.
    dirty: Noted,
    values: PhantomData<fn() -> V>,
}

impl<K: Key + 'static, V: Value + 'static> Rows<K, V> {
    fn new() -> Self {
        Rows {
            rows: BTreeMap::new(),
            dirty: recent::room(0),
            values: PhantomData,
        }
    }

    /// Set the row at `key` (its bytes) to `value` (`None` removes it); the row before.
    /// With `track`, the row is noted for the next durable commit to write.
    fn set(&mut self, key: Vec<u8>, value: Option<Vec<u8>>, track: bool) -> Option<Vec<u8>> {
        if track && !self.dirty.contains_key(&key) {
            // A row unchanged since redb last held the table is in redb exactly when it
            // is here.
            let held = self.rows.contains_key(&Ordered::new(key.clone()));
            self.dirty.insert(key.clone(), held);
        }
        let key = Ordered::new(key);
        match value {
            Some(v) => self.rows.insert(key, v),
            None => self.rows.remove(&key),
        }
    }

    /// Every row, in key order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (K::SelfType<'_>, V::SelfType<'_>)> {
        self.rows
            .iter()
            .map(|(k, v)| (K::from_bytes(&k.0), V::from_bytes(v)))
    }

    /// The rows from `from` on, in key order.
    pub(super) fn from<'s>(
        &'s self,
        from: &K::SelfType<'_>,
    ) -> impl Iterator<Item = (K::SelfType<'s>, V::SelfType<'s>)> + 's {
        self.rows
            .range((Bound::Included(Ordered::<K>::of(from)), Bound::Unbounded))
            .map(|(k, v)| (K::from_bytes(&k.0), V::from_bytes(v)))
    }

    /// Fill from redb's table, which holds every row now.
    fn load(&mut self, table: &impl ReadableTable<K, V>) -> Result<(), StoreError> {
        for row in table.iter()? {
            let (k, v) = row?;
            self.rows.insert(
                Ordered::of(&k.value()),
                V::as_bytes(&v.value()).as_ref().to_vec(),
            );
        }
        Ok(())
    }

    /// The changes redb's table lacks, as (key, new value or `None` to remove), handed
    /// to a checkpoint: from now on, changes are noted as if redb held the table as it
    /// is now. Also what was noted, for [`Rows::restore`].
    fn take_unsaved(&mut self) -> (Changes, Noted) {
        // The notes to come get room for as many as these (see `recent::ROOM`).
        let room = recent::room(self.dirty.len());
        let dirty = std::mem::replace(&mut self.dirty, room);
        let rows = dirty
            .iter()
            .filter_map(|(key, held)| {
                let now = self.rows.get(&Ordered::new(key.clone())).cloned();
                // A row that came and went since redb last held the table costs nothing.
                (now.is_some() || *held).then(|| (key.clone(), now))
            })
            .collect();
        (rows, dirty)
    }

    /// The checkpoint handed [`Rows::take_unsaved`] failed: what redb held before it is
    /// what it still holds.
    fn restore(&mut self, taken: &Noted) {
        self.dirty
            .extend(taken.iter().map(|(k, held)| (k.clone(), *held)));
    }
}

/// The dispatch state: the four tables, in memory.
pub(super) struct Queues {
    /// seq → `<target>\t<task>\t<not-before>\t<avoid>`: the order agents are woken in.
    pub ready: Rows<u64, &'static str>,
    /// (agent or `capability:<name>`, seq) → task id: what `check-inbox` claims from.
    pub inbox: Rows<(&'static str, u64), &'static str>,
    /// Tasks claimed by an activation that has not ended.
    pub running: Rows<&'static str, ()>,
    /// (running task, task it claimed through `check-inbox`).
    pub claims: Rows<(&'static str, &'static str), ()>,
}

/// The dispatch state as the writer thread and the readers share it.
pub(super) type Shared = Mutex<Queues>;

/// Lock `shared`. A panic elsewhere leaves the maps whole: each change is one map
/// operation.
pub(super) fn lock(shared: &Shared) -> MutexGuard<'_, Queues> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl Queues {
    /// The state redb's file holds: call after the log has been redone into it.
    pub(super) fn load(db: &redb::Database) -> Result<Queues, StoreError> {
        use redb::ReadableDatabase as _;
        let mut q = Queues {
            ready: Rows::new(),
            inbox: Rows::new(),
            running: Rows::new(),
            claims: Rows::new(),
        };
        let txn = db.begin_read()?;
        q.ready.load(&txn.open_table(READY)?)?;
        q.inbox.load(&txn.open_table(INBOX)?)?;
        q.running.load(&txn.open_table(RUNNING)?)?;
        q.claims.load(&txn.open_table(INBOX_CLAIMS)?)?;
        Ok(q)
    }

    /// Rows redb's tables lack, for a durable commit to write: see [`Rows::take_unsaved`].
    /// If that commit fails, hand them back to [`Queues::restore`].
    pub(super) fn take_unsaved(&mut self) -> Unsaved {
        let (ready, ready_noted) = self.ready.take_unsaved();
        let (inbox, inbox_noted) = self.inbox.take_unsaved();
        let (running, running_noted) = self.running.take_unsaved();
        let (claims, claims_noted) = self.claims.take_unsaved();
        Unsaved {
            ready,
            inbox,
            running,
            claims,
            noted: [ready_noted, inbox_noted, running_noted, claims_noted],
        }
    }

    /// The durable commit of `unsaved` failed: redb still lacks those rows.
    pub(super) fn restore(&mut self, unsaved: &Unsaved) {
        let [ready, inbox, running, claims] = &unsaved.noted;
        self.ready.restore(ready);
        self.inbox.restore(inbox);
        self.running.restore(running);
        self.claims.restore(claims);
    }
}

/// What [`Queues::take_unsaved`] found, copied out so the checkpoint does not hold the
/// lock while it writes them.
pub(super) struct Unsaved {
    ready: Changes,
    inbox: Changes,
    running: Changes,
    claims: Changes,
    /// Each table's notes of what redb held, as they were taken.
    noted: [Noted; 4],
}

/// Rows to write, as (key, new value or `None` to remove).
type Changes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Rows changed since redb last held a table, each with whether redb held it then.
type Noted = HashMap<Vec<u8>, bool>;

impl Unsaved {
    /// Write the rows into `txn`.
    pub(super) fn write(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        save(txn, READY, pairs(&self.ready))?;
        save(txn, INBOX, pairs(&self.inbox))?;
        save(txn, RUNNING, pairs(&self.running))?;
        save(txn, INBOX_CLAIMS, pairs(&self.claims))
    }
}

fn pairs(rows: &[(Vec<u8>, Option<Vec<u8>>)]) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
    rows.iter().map(|(k, v)| (k.as_slice(), v.as_deref()))
}

/// Write `rows` (key, value or `None` to remove, as bytes) into `def` in `txn`.
pub(super) fn save<'r, K: Key + 'static, V: Value + 'static>(
    txn: &WriteTransaction,
    def: TableDefinition<'static, K, V>,
    rows: impl IntoIterator<Item = (&'r [u8], Option<&'r [u8]>)>,
) -> Result<(), StoreError> {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut table = txn.open_table(def)?;
    for (key, value) in rows {
        match value {
            Some(v) => {
                table.insert(K::from_bytes(key), V::from_bytes(v))?;
            }
            None => {
                table.remove(K::from_bytes(key))?;
            }
        }
    }
    Ok(())
}

/// The place among the dispatch state's tables of the table called `name`, if it is one
/// of them.
pub(super) fn place(name: &str) -> Option<usize> {
    [
        READY.name(),
        INBOX.name(),
        RUNNING.name(),
        INBOX_CLAIMS.name(),
    ]
    .iter()
    .position(|n| *n == name)
}

/// A table of the dispatch state, whatever its key and value types.
trait Changed {
    fn set(&mut self, key: Vec<u8>, value: Option<Vec<u8>>, track: bool) -> Option<Vec<u8>>;
}

impl<K: Key + 'static, V: Value + 'static> Changed for Rows<K, V> {
    fn set(&mut self, key: Vec<u8>, value: Option<Vec<u8>>, track: bool) -> Option<Vec<u8>> {
        Rows::set(self, key, value, track)
    }
}

impl Queues {
    /// The table at `place` (see [`place`]).
    fn at(&mut self, place: usize) -> Option<&mut dyn Changed> {
        match place {
            0 => Some(&mut self.ready),
            1 => Some(&mut self.inbox),
            2 => Some(&mut self.running),
            3 => Some(&mut self.claims),
            _ => None,
        }
    }

    /// Set the row at `key` (its bytes) of the table at `place` to `value` (`None`
    /// removes it); the row before. With `track`, the row is noted for the next durable
    /// commit to write.
    pub(super) fn set(
        &mut self,
        place: usize,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        track: bool,
    ) -> Option<Vec<u8>> {
        self.at(place)?.set(key, value, track)
    }
}

/// A write's changes to the dispatch state, newest last, each with the row it replaced:
/// taken back, newest first, unless [`Undo::keep`] is called once the write's
/// transaction has committed.
#[derive(Default)]
pub(super) struct Undo {
    shared: Option<Arc<Shared>>,
    /// The table's place, the key, and the row before.
    changes: Vec<(usize, Vec<u8>, Option<Vec<u8>>)>,
}

impl Undo {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Undo {
            shared: Some(shared),
            changes: Vec::new(),
        }
    }

    /// Note that the row at `key` of the table at `place` was `before`.
    pub(super) fn push(&mut self, place: usize, key: Vec<u8>, before: Option<Vec<u8>>) {
        self.changes.push((place, key, before));
    }

    /// The transaction committed: its changes stay.
    pub(super) fn keep(mut self) {
        self.changes.clear();
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if self.changes.is_empty() {
            return;
        }
        let Some(shared) = &self.shared else { return };
        let mut q = lock(shared);
        // A row put back is still one redb may lack: its note for the next durable
        // commit stays.
        for (place, key, before) in self.changes.drain(..).rev() {
            q.set(place, key, before, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The notes of changed rows keep [`recent::ROOM`] when a checkpoint takes them, so
    /// that the next interval's notes never grow from a few.
    #[test]
    fn a_checkpoint_leaves_the_notes_room_for_an_intervals_rows() {
        let mut rows = Rows::<u64, &'static str>::new();
        assert!(rows.dirty.capacity() >= recent::ROOM, "at first");
        rows.set(1u64.to_le_bytes().to_vec(), Some(b"t-1".to_vec()), true);
        let (changes, _) = rows.take_unsaved();
        assert_eq!(
            changes.len(),
            1,
            "the one row set is what the checkpoint writes"
        );
        assert!(rows.dirty.is_empty());
        assert!(
            rows.dirty.capacity() >= recent::ROOM,
            "after a checkpoint of one row: room for {}",
            rows.dirty.capacity()
        );
    }
}
