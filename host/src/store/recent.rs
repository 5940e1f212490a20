//! The rows of tasks, handoffs, grants, blackboard entries, chains, audit records and
//! counters written since the last checkpoint, kept in memory: redb gets them at the
//! next one.
//!
//! These are the tables a handoff's steps write and read back: its task record is
//! written at the hand-off, the claim and the end (some 700 bytes of JSON each time) and
//! read back by the claim, the end and whoever waits for it; the claim's grant and the
//! entry the hand-off wrote are read at `read-blackboard`. In redb each of those writes
//! was a change to a table in every transaction, and each read from outside the writer
//! a read transaction of its own. Most are read by key alone; a reader that lists rows
//! (`Store::keys`, a chain, the audit log) takes those kept here first, then redb's in
//! a transaction begun after, and merges them by key: a row that left for redb in
//! between is then in that transaction.
//!
//! Under group commit, a write to one of these tables is logged as before and kept here
//! instead of in redb. A checkpoint [freezes](Recent::freeze) the rows kept so far: they
//! are still read, behind the rows written since, while its thread writes them into redb
//! in one durable commit, and are dropped from memory once it has committed (or go back
//! with the others if it failed). So memory holds at most two checkpoints' worth of log,
//! and what survives a crash is unchanged: redb's durable state, then the log redone on
//! it. The counters (task and handoff numbers, queue places) are kept here too, so that
//! a batch of writes commits nothing to redb at all. Under
//! [`CommitPolicy::Immediate`](super::CommitPolicy) the writes go to redb, as all others
//! do, and nothing is kept here.
//!
//! A transaction's rows reach this only once it has committed ([`Staged`]): a reader
//! never sees a task or a grant a failed write took back. A reader looks here first,
//! then in redb: a row leaves here only after redb has committed it, and each time rows
//! leave, the [generation](Recent::get) changes, so that a reader knows to read redb in
//! a transaction begun after that commit.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::BytesMut;
use foldhash::HashMap;
use redb::{Key, TableDefinition, TableHandle, Value, WriteTransaction};

use super::commit::CHECKPOINT;
use super::{AUDIT, BB_ENTRIES, BB_HEAD, CHAIN, COUNTERS, GRANTS, HANDOFFS, StoreError, TASKS};

/// A row's bytes, shared by the writer's transaction, this and its readers. The writer
/// copies the rows it writes into shared chunks (see [`Staged::put`]).
pub(super) type Bytes = bytes::Bytes;

/// How many tables keep rows here.
const KEPT: usize = 8;

/// Rows each map the writer fills between checkpoints (the tables kept here, and
/// `dispatch`'s notes of changed rows) has room for from the start, and again after
/// each checkpoint: about what one checkpoint interval adds to the busiest (a handoff
/// logs some 3 KB and adds a row or two to each). Grown from empty instead, a map is
/// rehashed whole each time it doubles, inside one of the writer's transactions: after
/// an open, handoffs one at a time took 1.4 to 3.5 ms at the 449th, 897th and 1,793rd,
/// against about 0.5 ms: three of the ten slowest in a thousand. Only a map's control
/// bytes are written up front; the room for a row is touched when a row takes it.
pub(super) const ROOM: usize = (CHECKPOINT / 2048) as usize;

/// An empty map of rows with [`ROOM`] for at least `rows`.
pub(super) fn room<K, V>(rows: usize) -> HashMap<K, V> {
    HashMap::with_capacity_and_hasher(rows.max(ROOM), Default::default())
}

/// Rows of each table kept here, by the bytes of their keys. Hashed with foldhash (seeded
/// at random, as std's SipHash is), not SipHash: the writer hashes every row it writes
/// several times (staged, kept, frozen), and SipHash was a tenth of its time.
pub(super) type Tables = [HashMap<Bytes, Bytes>; KEPT];

/// The place of the tasks table among the tables kept here.
const TASKS_SLOT: usize = 0;

/// The place of the table called `name` among the tables kept here, if it is one.
pub(super) fn slot(name: &str) -> Option<usize> {
    let names: [&str; KEPT] = [
        TASKS.name(), // TASKS_SLOT
        HANDOFFS.name(),
        GRANTS.name(),
        BB_ENTRIES.name(),
        BB_HEAD.name(),
        CHAIN.name(),
        AUDIT.name(),
        COUNTERS.name(),
    ];
    names.iter().position(|n| *n == name)
}

/// The rows kept, as the writer thread and readers share them.
#[derive(Default)]
pub(super) struct Recent {
    state: Mutex<State>,
}

struct State {
    tables: Tables,
    /// The rows a checkpoint running on its own thread is writing into redb: older than
    /// `tables`, and still read until that checkpoint has committed.
    frozen: Option<Arc<Tables>>,
    /// How many times rows have left for redb.
    generation: u64,
}

impl Default for State {
    fn default() -> Self {
        State {
            tables: std::array::from_fn(|_| room(0)),
            frozen: None,
            generation: 0,
        }
    }
}

impl State {
    fn row(&self, slot: usize, key: &[u8]) -> Option<Bytes> {
        self.tables[slot]
            .get(key)
            .or_else(|| self.frozen.as_ref()?[slot].get(key))
            .cloned()
    }
}

impl Recent {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Each change is one map operation: a panic elsewhere leaves the maps whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The row at `key` of the table called `table`, if it is kept here; and the
    /// generation. A row not kept here now, if it exists, is in redb as any read
    /// transaction sees it that was begun after a call that returned the same generation.
    pub(super) fn get(&self, table: &str, key: &[u8]) -> (Option<Bytes>, u64) {
        let state = self.lock();
        let row = slot(table).and_then(|s| state.row(s, key));
        (row, state.generation)
    }

    /// How many times rows have left for redb: see [`Recent::get`].
    pub(super) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// The rows of the table called `table` kept here whose keys `wanted` picks, in no
    /// order but one: a key kept twice (by a checkpoint under way, and written again
    /// since) comes twice, the newer row last.
    pub(super) fn rows(
        &self,
        table: &str,
        wanted: impl Fn(&[u8]) -> bool,
    ) -> Vec<(Vec<u8>, Bytes)> {
        let state = self.lock();
        let Some(s) = slot(table) else {
            return Vec::new();
        };
        let frozen = state.frozen.iter().map(|f| &f[s]);
        frozen
            .chain([&state.tables[s]])
            .flatten()
            .filter(|(k, _)| wanted(k))
            .map(|(k, v)| (k.to_vec(), v.clone()))
            .collect()
    }

    /// Keep the rows of a transaction that has committed, leaving `staged` empty (with
    /// its capacity, for the next transaction to reuse).
    pub(super) fn publish(&self, staged: &mut Staged) {
        if staged.is_empty() {
            return;
        }
        let mut state = self.lock();
        for (table, rows) in state.tables.iter_mut().zip(&mut staged.tables) {
            table.extend(rows.drain());
        }
    }

    /// Hand every row kept to a checkpoint: they stay readable here, behind the rows
    /// written from now on, until [`Recent::saved`] (the checkpoint committed) or
    /// [`Recent::thaw`] (it failed). Only the writer thread changes the rows kept, and
    /// one checkpoint runs at a time.
    pub(super) fn freeze(&self) -> Arc<Tables> {
        let mut state = self.lock();
        // The rows to come are sized like those frozen (the next checkpoint's worth of
        // log holds about as many), and at least [`ROOM`]: a checkpoint after a short
        // burst must not leave the next interval to grow from a few rows. Grown from
        // empty, each table was rehashed a dozen times over an interval, a twentieth of
        // the writer's time.
        let sized = std::array::from_fn(|s| room(state.tables[s].len()));
        // A frozen set left over (never, as the writer uses this) goes into this one.
        let mut rows = std::mem::replace(&mut state.tables, sized);
        if let Some(older) = state.frozen.take() {
            behind(&mut rows, &older);
        }
        let rows = Arc::new(rows);
        state.frozen = Some(rows.clone());
        rows
    }

    /// Whether rows are [frozen](Recent::freeze): a checkpoint of them has not ended.
    #[cfg(test)]
    pub(super) fn frozen(&self) -> bool {
        self.lock().frozen.is_some()
    }

    /// redb's durable state now holds the rows [frozen](Recent::freeze): drop them.
    pub(super) fn saved(&self) {
        let mut state = self.lock();
        state.generation += 1;
        state.frozen = None;
    }

    /// The checkpoint of the rows frozen failed: keep them with the others, behind any
    /// written since, for the next checkpoint.
    pub(super) fn thaw(&self) {
        let mut state = self.lock();
        if let Some(older) = state.frozen.take() {
            behind(&mut state.tables, &older);
        }
    }
}

/// Add to `rows` the rows of `older` whose keys it lacks.
fn behind(rows: &mut Tables, older: &Tables) {
    for (table, old) in rows.iter_mut().zip(older) {
        for (k, v) in old {
            table.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

/// Write `rows` (from [`Recent::freeze`]) into `txn`.
pub(super) fn write(txn: &WriteTransaction, rows: &Tables) -> Result<(), StoreError> {
    let [
        tasks,
        handoffs,
        grants,
        entries,
        head,
        chain,
        audit,
        counters,
    ] = rows;
    save(txn, TASKS, tasks)?;
    save(txn, HANDOFFS, handoffs)?;
    save(txn, GRANTS, grants)?;
    save(txn, BB_ENTRIES, entries)?;
    save(txn, BB_HEAD, head)?;
    save(txn, CHAIN, chain)?;
    save(txn, AUDIT, audit)?;
    save(txn, COUNTERS, counters)
}

fn save<K: Key + 'static, V: Value + 'static>(
    txn: &WriteTransaction,
    def: TableDefinition<'static, K, V>,
    rows: &HashMap<Bytes, Bytes>,
) -> Result<(), StoreError> {
    // In the table's key order, not the map's: each B-tree leaf is then reached once, in
    // turn, instead of at random. That took about a tenth off the checkpoint thread's
    // CPU per blackboard handoff (docs/performance.md).
    let mut sorted: Vec<(&[u8], &[u8])> = rows.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    sorted.sort_unstable_by(|a, b| K::compare(a.0, b.0));
    super::dispatch::save(txn, def, sorted.into_iter().map(|(k, v)| (k, Some(v))))
}

/// A transaction's rows for these tables, held back until it commits.
#[derive(Debug, Default)]
pub(super) struct Staged {
    tables: Tables,
    /// Room for the bytes of rows to come. Each row's key and value are copied into one
    /// shared allocation after another, instead of two of their own, which every
    /// checkpoint freed one by one on its thread (a tenth of its time); a chunk goes once
    /// the last row in it has, so a row written over stays in memory until every row
    /// of its chunk has gone to redb, at most two checkpoints later. The value of a
    /// task's row is copied alone: `decoded` holds on to it for as long as the task
    /// waits, which in a chunk would keep the whole chunk.
    chunk: BytesMut,
}

/// Bytes of a [`Staged`] chunk; a row larger than a quarter of it is copied alone.
const CHUNK: usize = 64 << 10;

impl Staged {
    fn is_empty(&self) -> bool {
        self.tables.iter().all(HashMap::is_empty)
    }

    /// The row at `key` of table `slot`, if the transaction wrote it.
    pub(super) fn get(&self, slot: usize, key: &[u8]) -> Option<Bytes> {
        self.tables.get(slot)?.get(key).cloned()
    }

    /// The rows of table `slot` the transaction wrote.
    pub(super) fn rows(&self, slot: usize) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        self.tables.get(slot).into_iter().flatten()
    }

    /// Note that the transaction set `key` of table `slot` to `value`; the row's bytes
    /// as kept.
    pub(super) fn put(&mut self, slot: usize, key: &[u8], value: &[u8]) -> Bytes {
        let key = self.copy(key);
        let value = if slot == TASKS_SLOT {
            Bytes::copy_from_slice(value)
        } else {
            self.copy(value)
        };
        if let Some(table) = self.tables.get_mut(slot) {
            table.insert(key, value.clone());
        }
        value
    }

    fn copy(&mut self, bytes: &[u8]) -> Bytes {
        if bytes.len() > CHUNK / 4 {
            return Bytes::copy_from_slice(bytes);
        }
        if self.chunk.capacity() < bytes.len() {
            self.chunk = BytesMut::with_capacity(CHUNK);
        }
        self.chunk.extend_from_slice(bytes);
        self.chunk.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Task rows, whose values are kept out of chunks, are where [`TASKS_SLOT`] says.
    #[test]
    fn the_tasks_slot_is_the_tasks_table() {
        assert_eq!(slot(TASKS.name()), Some(TASKS_SLOT));
    }

    /// Every map has [`ROOM`] from the start and keeps it when a checkpoint takes a
    /// handful of rows, so that the next rows never grow it from a few.
    #[test]
    fn the_maps_keep_room_for_an_intervals_rows() {
        let recent = Recent::default();
        let mut staged = Staged::default();
        staged.put(TASKS_SLOT, b"t-1", b"{}");
        recent.publish(&mut staged);
        for when in ["at first", "after a checkpoint of one row"] {
            for (s, table) in recent.lock().tables.iter().enumerate() {
                assert!(
                    table.capacity() >= ROOM,
                    "table {s} {when}: room for {} rows, not {ROOM}",
                    table.capacity()
                );
            }
            recent.freeze();
            recent.saved();
        }
    }

    /// Rows copied into shared chunks read back as written, across chunk boundaries and
    /// for a row too large for a chunk, once published and while a later transaction
    /// reuses the staged maps and their chunk.
    #[test]
    fn rows_copied_into_chunks_read_back_as_written() {
        let recent = Recent::default();
        let values = slot(BB_ENTRIES.name()).unwrap();
        let row = |i: usize| -> (Vec<u8>, Vec<u8>) {
            let len = if i == 7 { CHUNK } else { 100 + i % 900 };
            (format!("key-{i}").into_bytes(), vec![(i % 251) as u8; len])
        };
        let mut staged = Staged::default();
        for batch in 0..4 {
            for i in batch * 100..(batch + 1) * 100 {
                let (key, value) = row(i);
                assert_eq!(&staged.put(values, &key, &value)[..], value);
            }
            recent.publish(&mut staged);
            assert!(staged.is_empty());
        }
        for i in 0..400 {
            let (key, value) = row(i);
            let kept = recent.get(BB_ENTRIES.name(), &key).0.expect("row kept");
            assert_eq!(&kept[..], value, "row {i}");
        }
        let mut keys: Vec<Vec<u8>> = recent
            .rows(BB_ENTRIES.name(), |_| true)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        keys.sort();
        let mut want: Vec<Vec<u8>> = (0..400).map(|i| row(i).0).collect();
        want.sort();
        assert_eq!(keys, want);
    }
}
