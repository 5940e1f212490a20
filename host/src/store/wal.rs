//! The write-ahead log: what makes a group commit's fsync cheap.
//!
//! redb writes a commit as copy-on-write pages scattered over its file, and an fsync
//! costs about 25 µs per scattered page on these disks: a flush of a few handoffs touched
//! some 35 pages and took 0.8 ms, where one append of the same changes takes 0.15 ms.
//! So under group commit the store logs every change a transaction made (each key it
//! inserted or removed, byte for byte), one frame per transaction, in commit order, and
//! fsyncs *that* to acknowledge writes. redb is made durable only now and then, at a
//! checkpoint.
//!
//! The log is two files, [`WAL_FILES`]: frames go to one until it holds a checkpoint's
//! worth, then to the other, while a checkpoint folds the first into redb; once it has,
//! the first is written over from its start when its turn comes again. Frames are
//! numbered, and each checkpoint's commit stores the number of the last frame it holds
//! (`wal` in the counters table), so the redb file always says which frames it holds.
//! After a crash redb comes back at its last durable commit, and the frames of either
//! file after the number it holds are redone, in order. Redoing a change is writing the
//! same bytes to the same key, so a crash during recovery is recovered the same way. A
//! frame cut short by the crash (its length or checksum does not match) ends the log,
//! and so does a gap in the numbers: it was never fsynced, so nothing in it or after it
//! was acknowledged.
//!
//! A file that grows costs more to fsync than one written over: each fsync that
//! extends it also commits the file system's journal (the new blocks and the file's
//! size). So the writer writes zeros ahead of its frames, [`RESERVE`] at a time, and
//! the fsyncs between two such steps write data alone. The zeros end the log as a
//! frame cut short does (their checksum does not match), and nothing is lost if they
//! never reach the disk. For the same reason the files keep their bytes when the log
//! starts over while the store runs ([`Wal::start_over`]); only an open empties them,
//! as a crash may have left frames there that redb lacks.
//!
//! Frame: `len: u32 | crc32(lsn, payload): u32 | lsn: u64 | payload`, little-endian.
//! Payload: changes, each `op: u8 | table name: u8 len + bytes | key: u32 len + bytes`
//! then, for an insert, `value: u32 len + bytes`.

use std::borrow::Borrow;
use std::cell::{OnceCell, RefCell, RefMut};
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek, SeekFrom, Write as _};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, MutexGuard};

use redb::{Database, Durability, Key, TableDefinition, TableHandle, Value, WriteTransaction};

use super::audit::Head;
use super::decoded::Decoded;
use super::dispatch::{self, Queues, Shared, Undo};
use super::recent::{self, Bytes, Recent, Staged};
use super::records::TaskRecord;
use super::{Reader, StoreError};

/// The log's two files, beside the redb file in the state directory. Frames go to one
/// while a checkpoint folds the other into redb on its own thread; then they swap.
pub const WAL_FILES: [&str; 2] = ["store.wal", "store-2.wal"];

/// The log's first file, the one a store starts on.
pub const WAL_FILE: &str = WAL_FILES[0];

/// The counter holding the number of the last frame the redb file holds.
pub(super) const LSN_COUNTER: &str = "wal";

/// Bytes of zeros the log writes ahead of its frames at a time (see the module's
/// header). On this project's 2-vCPU VM (ext4 on virtio), an fsync of 5 KB written over
/// zeros took 105 to 136 µs (p50) and 51 to 61 µs of CPU, against 164 to 225 µs and 72
/// to 111 µs when the write extended the file; blackboard handoffs one at a time on a
/// fresh log went from 0.62 to 0.76 ms (p50) to 0.45 to 0.55, in six alternating runs
/// of 2,000 (docs/performance.md). The fsync after a step
/// still grows the file and writes its zeros: about 1 ms instead of 0.17 (p50, the same
/// scratch program), once in some 180 blackboard handoffs. Unit tests take small steps,
/// so their logs cross several.
pub(super) const RESERVE: u64 = if cfg!(test) { 4 << 10 } else { 1 << 20 };

/// What [`RESERVE`] is written from.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

const INSERT: u8 = 1;
const REMOVE: u8 = 2;
/// Bytes of a frame's header: length, checksum, number.
pub(super) const HEADER: usize = 16;

/// A write transaction as the store's writes see it: redb's, and, under group commit, a
/// record of every change made through it. Under group commit redb's transaction is
/// begun only by the first change to a table redb holds itself (a handoff made by an
/// agent, a stream, an escalation): every other table is kept in memory (`dispatch`,
/// `recent`), so most batches commit nothing to redb, and a checkpoint can write redb
/// on its own thread meanwhile. Rows it does not find in memory it then reads in a
/// read transaction. Each table is opened in redb's write transaction at its first use
/// and kept open until the transaction ends: opening and closing a redb table cost about
/// as much as the change made through it, and a batch of writes uses the same few
/// tables dozens of times.
///
/// It also keeps what the store's writes read back most ([`Known`]): the counters that
/// number tasks, handoffs and queue places, the audit chain's head, and the task records
/// it wrote last, decoded (see `decoded`). A counter is
/// written to its table once, when the transaction is [finished](Tx::finish), however
/// many times it was drawn; a batch draws the same three counters dozens of times.
///
/// The dispatch state's tables (see `dispatch`) are changed through it in memory, logged
/// like the others; without a log they are also written through to redb. With a log,
/// rows of tasks, handoffs, grants, entries, chains, audit records and counters are held
/// back from redb (see `recent`).
pub(super) struct Tx<'a> {
    db: &'a Database,
    /// redb's write transaction, once begun.
    txn: &'a OnceCell<WriteTransaction>,
    /// Reads of what redb holds while `txn` is not begun.
    reader: RefCell<Reader<'a>>,
    log: Option<&'a RefCell<Vec<u8>>>,
    /// The tables opened so far, at their place in the store's list of tables.
    open: [RefCell<Option<Slot<'a>>>; super::TABLES],
    /// What this transaction knows of the state it leaves, so far.
    known: RefCell<Known>,
    queues: &'a Arc<Shared>,
    /// Its changes to the dispatch state, taken back if it does not commit.
    undo: RefCell<Undo>,
    recent: &'a Arc<Recent>,
    /// Its rows of the tables `recent` keeps, kept there once it has committed.
    staged: RefCell<Staged>,
    /// The audit records appended so far, as one row: the first's number and the
    /// records, a line each. Written when the transaction [finishes](Tx::finish).
    audit: RefCell<Option<(u64, String)>>,
}

/// A transaction's work, once [finished](Tx::finish): what to keep once it has committed.
/// Dropped instead, it takes back its changes to the dispatch state.
pub(super) struct Done {
    known: Known,
    undo: Undo,
    staged: Staged,
    recent: Arc<Recent>,
}

impl Done {
    /// The transaction committed: keep its changes, and give back what it knows of the
    /// state it left, for the next transaction.
    pub(super) fn committed(mut self) -> Known {
        self.undo.keep();
        self.recent.publish(&mut self.staged);
        self.known.spare = self.staged;
        self.known
    }
}

/// What the writer knows of the store's committed state without reading it: carried from
/// one transaction to the next, and handed on only once the transaction that left it has
/// committed. A transaction that fails loses it, and the next reads what it needs from
/// the tables again.
#[derive(Debug, Default)]
pub(super) struct Known {
    /// The audit chain's last record.
    audit_head: Option<Head>,
    /// Counters' values, and whether this transaction changed them.
    counters: Vec<Counter>,
    /// Task records as last written, decoded.
    tasks: Decoded,
    /// Whether the store holds blackboard versions written before `bb_entries`, once
    /// looked up: where it does not, a key without a version 1 there is new.
    legacy_entries: Option<bool>,
    /// The last transaction's maps of staged rows, emptied and kept for their capacity:
    /// grown from empty in each transaction, they were rehashed several times in each,
    /// a twentieth of the writer's time.
    spare: Staged,
}

#[derive(Debug)]
struct Counter {
    name: &'static str,
    value: u64,
    changed: bool,
}

impl<'a> Tx<'a> {
    /// Changes through this are applied to the write transaction of `db` in `txn` (or
    /// `queues`, or held for `recent`) and appended to `log`, if any. Without a log,
    /// `txn` must hold the transaction; with one, it is begun if need be, unsynced.
    /// `known` is what is known of the state as the transaction starts.
    pub(super) fn new(
        (db, txn): (&'a Database, &'a OnceCell<WriteTransaction>),
        log: Option<&'a RefCell<Vec<u8>>>,
        mut known: Known,
        queues: &'a Arc<Shared>,
        recent: &'a Arc<Recent>,
    ) -> Self {
        let staged = std::mem::take(&mut known.spare);
        Tx {
            db,
            txn,
            reader: RefCell::new(Reader::new(db, recent)),
            log,
            open: std::array::from_fn(|_| RefCell::new(None)),
            known: RefCell::new(known),
            queues,
            undo: RefCell::new(Undo::new(queues.clone())),
            recent,
            staged: RefCell::new(staged),
            audit: RefCell::new(None),
        }
    }

    /// Set `key` of `def` to `value`. A row of the dispatch state is set in memory (see
    /// `dispatch`). With a log, a row of a table `recent` keeps is logged and held back
    /// from redb; without, it goes to redb like any other.
    pub(super) fn put<'k, 'v, K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<'static, K, V>,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<(), StoreError>
    where
        (K, V): Slotted<'a, K = K, V = V>,
    {
        self.put_kept(def, key, value).map(drop)
    }

    /// [`Tx::put`], giving back the bytes kept in memory for the row, if it is kept
    /// there (see `recent`): a later read in the writer gets those very bytes back.
    pub(super) fn put_kept<'k, 'v, K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<'static, K, V>,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<Option<Bytes>, StoreError>
    where
        (K, V): Slotted<'a, K = K, V = V>,
    {
        if let Some(place) = dispatch::place(def.name()) {
            let key = K::as_bytes(key.borrow()).as_ref().to_vec();
            let value = V::as_bytes(value.borrow()).as_ref().to_vec();
            return self
                .queue_set((place, def), key, Some(value))
                .map(|()| None);
        }
        let Some(slot) = recent::slot(def.name()) else {
            return self.open_table(def)?.insert(key, value).map(|()| None);
        };
        let (key, value) = (key.borrow(), value.borrow());
        let bytes = K::as_bytes(key);
        let bytes = bytes.as_ref();
        match self.log {
            Some(log) => {
                let value = V::as_bytes(value);
                record(
                    &mut log.borrow_mut(),
                    INSERT,
                    def.name(),
                    bytes,
                    Some(value.as_ref()),
                );
            }
            None => {
                self.open_table(def)?.insert(key, value)?;
                // Kept only if a checkpoint failed to save it: the newer row replaces it.
                if self.recent.get(def.name(), bytes).0.is_none() {
                    return Ok(None);
                }
            }
        }
        let value = V::as_bytes(value);
        Ok(Some(self.staged.borrow_mut().put(
            slot,
            bytes,
            value.as_ref(),
        )))
    }

    /// Remove `key` from `def`, if it is there. A row of the dispatch state is removed in
    /// memory (see `dispatch`).
    pub(super) fn remove<'k, K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<'static, K, V>,
        key: impl Borrow<K::SelfType<'k>>,
    ) -> Result<(), StoreError>
    where
        (K, V): Slotted<'a, K = K, V = V>,
    {
        match dispatch::place(def.name()) {
            Some(place) => {
                let key = K::as_bytes(key.borrow()).as_ref().to_vec();
                self.queue_set((place, def), key, None)
            }
            None => self.open_table(def)?.remove(key),
        }
    }

    /// The bytes of the value at `key` of `def`: what this transaction wrote there, else
    /// what `recent` keeps, else what redb holds.
    pub(super) fn get<'k, K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<'static, K, V>,
        key: impl Borrow<K::SelfType<'k>>,
    ) -> Result<Option<Bytes>, StoreError>
    where
        (K, V): Slotted<'a, K = K, V = V>,
    {
        let bytes = K::as_bytes(key.borrow());
        if let Some(slot) = recent::slot(def.name()) {
            let kept = self.staged.borrow().get(slot, bytes.as_ref());
            if let Some(v) = kept {
                return Ok(Some(v));
            }
        }
        if self.txn.get().is_none() {
            // Kept rows first, then redb's (see `Reader`).
            return self.reader.borrow_mut().get(def, key.borrow());
        }
        if let Some(v) = self.recent.get(def.name(), bytes.as_ref()).0 {
            return Ok(Some(v));
        }
        let table = self.open_table(def)?;
        let value = redb::ReadableTable::get(&*table.inner, key.borrow())?;
        Ok(value.map(|v| Bytes::copy_from_slice(V::as_bytes(&v.value()).as_ref())))
    }

    /// The rows of `def` whose keys are in `range`, in key order, as bytes, as this
    /// transaction sees them. Only for a table redb holds itself: read from redb's
    /// write transaction if one is begun, else in a read transaction, so a read alone
    /// begins none.
    pub(super) fn range<'k, K: Key + 'static, V: Value + 'static, KR>(
        &self,
        def: TableDefinition<'static, K, V>,
        range: impl std::ops::RangeBounds<KR> + 'k,
    ) -> Result<Vec<(Vec<u8>, Bytes)>, StoreError>
    where
        (K, V): Slotted<'a, K = K, V = V>,
        KR: Borrow<K::SelfType<'k>> + 'k,
    {
        if recent::slot(def.name()).is_some() || dispatch::place(def.name()).is_some() {
            return Err(StoreError::Corrupt(
                def.name().to_string(),
                "a table kept in memory is not read by range".into(),
            ));
        }
        let rows = |range: redb::Range<'_, K, V>| {
            range
                .map(|row| {
                    let (k, v) = row?;
                    let key = K::as_bytes(&k.value()).as_ref().to_vec();
                    Ok((
                        key,
                        Bytes::copy_from_slice(V::as_bytes(&v.value()).as_ref()),
                    ))
                })
                .collect::<Result<Vec<_>, StoreError>>()
        };
        if self.txn.get().is_none() {
            let mut reader = self.reader.borrow_mut();
            let table = reader.table(def)?;
            return rows(redb::ReadableTable::range(table, range)?);
        }
        let table = self.open_table(def)?;
        rows(redb::ReadableTable::range(&*table.inner, range)?)
    }

    /// The row of `def` with the greatest key, in this transaction's view. Only for a
    /// table whose keys only grow (the audit log): rows this transaction wrote, then
    /// those `recent` keeps, come after redb's.
    pub(super) fn last(
        &self,
        def: TableDefinition<'static, u64, &'static str>,
    ) -> Result<Option<(u64, Bytes)>, StoreError> {
        let newest = |rows: &mut dyn Iterator<Item = (u64, Bytes)>| rows.max_by_key(|(k, _)| *k);
        if let Some(slot) = recent::slot(def.name()) {
            let staged = self.staged.borrow();
            let mut written = staged
                .rows(slot)
                .map(|(k, v)| (u64::from_bytes(k), v.clone()));
            if let Some(row) = newest(&mut written) {
                return Ok(Some(row));
            }
            let kept = self.recent.rows(def.name(), |_| true);
            let mut kept = kept.into_iter().map(|(k, v)| (u64::from_bytes(&k), v));
            if let Some(row) = newest(&mut kept) {
                return Ok(Some(row));
            }
        }
        let row = |last: Option<(redb::AccessGuard<u64>, redb::AccessGuard<&str>)>| {
            last.map(|(k, v)| (k.value(), Bytes::copy_from_slice(v.value().as_bytes())))
        };
        if self.txn.get().is_none() {
            let mut reader = self.reader.borrow_mut();
            let table = reader.table(def)?;
            return Ok(row(redb::ReadableTable::last(table)?));
        }
        let table = self.open_table(def)?;
        Ok(row(redb::ReadableTable::last(&*table.inner)?))
    }

    /// The dispatch state, to read. It is changed only through [`Tx::put`] and
    /// [`Tx::remove`]: let go of this before calling them.
    pub(super) fn queues(&self) -> MutexGuard<'a, Queues> {
        dispatch::lock(self.queues)
    }

    /// Set `key` (its bytes) of the dispatch state's table at `place`, `def`, to
    /// `value` (`None` removes it).
    fn queue_set<K: Key + 'static, V: Value + 'static>(
        &self,
        (place, def): (usize, TableDefinition<'static, K, V>),
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    ) -> Result<(), StoreError>
    where
        (K, V): Slotted<'a, K = K, V = V>,
    {
        match self.log {
            Some(log) => {
                let op = if value.is_some() { INSERT } else { REMOVE };
                record(
                    &mut log.borrow_mut(),
                    op,
                    def.name(),
                    &key,
                    value.as_deref(),
                );
            }
            // No log: redb's commit is the durable one, so it holds the row too.
            None => {
                let mut table = self.open_table(def)?;
                match &value {
                    Some(v) => table.insert(K::from_bytes(&key), V::from_bytes(v))?,
                    None => table.remove(K::from_bytes(&key))?,
                }
            }
        }
        let tracked = self.log.is_some();
        let before = self.queues().set(place, key.clone(), value, tracked);
        self.undo.borrow_mut().push(place, key, before);
        Ok(())
    }

    /// The audit chain's last record, if known; see [`Head`].
    pub(super) fn audit_head(&self) -> Option<Head> {
        self.known.borrow().audit_head.clone()
    }

    /// Note the audit chain's new last record.
    pub(super) fn set_audit_head(&self, head: Head) {
        self.known.borrow_mut().audit_head = Some(head);
    }

    /// Append audit record `seq`, as `json`, to the transaction's row of the audit log:
    /// one row however many records it appends, written when it finishes. A batch of
    /// writes appends dozens, and a row each was a fifth of the rows a checkpoint wrote.
    pub(super) fn append_audit(&self, seq: u64, json: String) {
        let mut row = self.audit.borrow_mut();
        match &mut *row {
            Some((_, records)) => {
                records.push('\n');
                records.push_str(&json);
            }
            None => *row = Some((seq, json)),
        }
    }

    /// Whether the store holds blackboard versions in the layout before `bb_entries`,
    /// which nothing writes now: looked up in redb once, then known.
    pub(super) fn legacy_entries(&self) -> Result<bool, StoreError> {
        if let Some(legacy) = self.known.borrow().legacy_entries {
            return Ok(legacy);
        }
        let mut reader = self.reader.borrow_mut();
        let legacy = redb::ReadableTable::first(reader.table(super::BB_META)?)?.is_some();
        self.known.borrow_mut().legacy_entries = Some(legacy);
        Ok(legacy)
    }

    /// The record of task `id` decoded from `bytes`, the row as this transaction reads
    /// it, if the writer still has it decoded (see `decoded`). Taken out: write it again
    /// with [`Tx::keep_task`] to keep it.
    pub(super) fn decoded_task(&self, id: &str, bytes: &Bytes) -> Option<TaskRecord> {
        self.known.borrow_mut().tasks.take(id, bytes)
    }

    /// Keep `task`, just written as `bytes`, decoded for the writes that read it back.
    pub(super) fn keep_task(&self, bytes: Bytes, task: &TaskRecord) {
        self.known.borrow_mut().tasks.keep(bytes, task);
    }

    /// Counter `name`'s value, if known.
    pub(super) fn counter(&self, name: &str) -> Option<u64> {
        let known = self.known.borrow();
        known
            .counters
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.value)
    }

    /// Set counter `name` to `value`; it is written when the transaction is finished.
    pub(super) fn set_counter(&self, name: &'static str, value: u64) {
        let mut known = self.known.borrow_mut();
        match known.counters.iter_mut().find(|c| c.name == name) {
            Some(c) => {
                c.value = value;
                c.changed = true;
            }
            None => known.counters.push(Counter {
                name,
                value,
                changed: true,
            }),
        }
    }

    /// Write the counters this transaction changed, and give back what it knows of the
    /// state it leaves: to be handed to the next transaction once `txn` has committed.
    /// A transaction that changed a counter must be finished before it commits. Its
    /// [`Done`] must be told once `txn` has committed; dropped, it takes the transaction's
    /// changes to the dispatch state back.
    pub(super) fn finish(self) -> Result<Done, StoreError> {
        if let Some((first, records)) = self.audit.take() {
            self.put(super::AUDIT, first, records.as_str())?;
        }
        let mut known = self.known.take();
        for c in known.counters.iter_mut().filter(|c| c.changed) {
            self.put(super::COUNTERS, c.name, c.value)?;
            c.changed = false;
        }
        Ok(Done {
            known,
            undo: self.undo.take(),
            staged: self.staged.take(),
            recent: self.recent.clone(),
        })
    }

    /// Open `def` to read and change it. A table is open once at a time: opening it
    /// again while it is open is an error, as it is in redb.
    pub(super) fn open_table<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<'static, K, V>,
    ) -> Result<Table<'_, 'a, K, V>, StoreError>
    where
        (K, V): Slotted<'a, K = K, V = V>,
    {
        let unknown = || StoreError::Missing("table", def.name().to_string());
        let cell = super::table_index(def.name())
            .and_then(|i| self.open.get(i))
            .ok_or_else(unknown)?;
        let mut slot = cell.try_borrow_mut().map_err(|_| {
            StoreError::Db(redb::Error::TableAlreadyOpen(
                def.name().to_string(),
                std::panic::Location::caller(),
            ))
        })?;
        if slot.is_none() {
            *slot = Some(<(K, V)>::wrap(self.write_txn()?.open_table(def)?));
        }
        let inner = RefMut::filter_map(slot, |s| s.as_mut().and_then(<(K, V)>::table))
            .map_err(|_| unknown())?;
        Ok(Table {
            inner,
            def,
            log: self.log,
        })
    }

    /// redb's write transaction, begun (unsynced) if it is not yet.
    fn write_txn(&self) -> Result<&'a WriteTransaction, StoreError> {
        if let Some(txn) = self.txn.get() {
            return Ok(txn);
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        Ok(self.txn.get_or_init(|| txn))
    }
}

/// The key and value types of the store's tables, each an arm of [`Slot`], so that a
/// transaction can keep tables of different types open side by side.
macro_rules! slots {
    ($($arm:ident: $k:ty => $v:ty;)*) => {
        /// An open table of one of the store's key and value types.
        pub(super) enum Slot<'a> {
            $($arm(redb::Table<'a, $k, $v>),)*
        }

        /// A table's key and value types, `(K, V)`, and the arm of [`Slot`] that holds it.
        pub(super) trait Slotted<'a> {
            type K: Key + 'static;
            type V: Value + 'static;
            fn wrap(table: redb::Table<'a, Self::K, Self::V>) -> Slot<'a>;
            fn table<'s>(slot: &'s mut Slot<'a>) -> Option<&'s mut redb::Table<'a, Self::K, Self::V>>;
        }

        $(impl<'a> Slotted<'a> for ($k, $v) {
            type K = $k;
            type V = $v;
            fn wrap(table: redb::Table<'a, $k, $v>) -> Slot<'a> {
                Slot::$arm(table)
            }
            fn table<'s>(slot: &'s mut Slot<'a>) -> Option<&'s mut redb::Table<'a, $k, $v>> {
                match slot {
                    Slot::$arm(table) => Some(table),
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
        })*
    };
}

slots! {
    Values: (&'static str, u64) => &'static [u8];
    Versions: (&'static str, u64) => &'static str;
    Numbers: &'static str => u64;
    Records: &'static str => &'static str;
    Positions: (&'static str, u32) => &'static str;
    Pairs: (&'static str, &'static str) => ();
    Sequence: u64 => &'static str;
    Set: &'static str => ();
}

/// A table open in a [`Tx`]: reads go straight to redb (through `Deref`), and every
/// change is logged before it is made.
pub(super) struct Table<'t, 'a, K: Key + 'static, V: Value + 'static> {
    inner: RefMut<'t, redb::Table<'a, K, V>>,
    def: TableDefinition<'static, K, V>,
    log: Option<&'t RefCell<Vec<u8>>>,
}

impl<K: Key + 'static, V: Value + 'static> Table<'_, '_, K, V> {
    /// Set `key` to `value`. (A table kept in memory is written through [`Tx::put`].)
    pub(super) fn insert<'k, 'v>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<(), StoreError> {
        let (key, value) = (key.borrow(), value.borrow());
        if let Some(log) = self.log {
            held_back(self.def.name())?;
            let value = V::as_bytes(value);
            record(
                &mut log.borrow_mut(),
                INSERT,
                self.def.name(),
                K::as_bytes(key).as_ref(),
                Some(value.as_ref()),
            );
        }
        self.inner.insert(key, value)?;
        Ok(())
    }

    /// Remove `key`, if it is there.
    pub(super) fn remove<'k>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
    ) -> Result<(), StoreError> {
        let key = key.borrow();
        if let Some(log) = self.log {
            held_back(self.def.name())?;
            record(
                &mut log.borrow_mut(),
                REMOVE,
                self.def.name(),
                K::as_bytes(key).as_ref(),
                None,
            );
        }
        self.inner.remove(key)?;
        Ok(())
    }
}

impl<'a, K: Key + 'static, V: Value + 'static> Deref for Table<'_, 'a, K, V> {
    type Target = redb::Table<'a, K, V>;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

/// Refuses a logged change made to redb directly to a table kept in memory (`dispatch`,
/// `recent`): a later read would find the row kept there, not this one.
fn held_back(table: &str) -> Result<(), StoreError> {
    if recent::slot(table).is_some() || dispatch::place(table).is_some() {
        return Err(StoreError::Corrupt(
            table.to_string(),
            "a logged change to this table must go through `Tx::put` or `Tx::remove`".into(),
        ));
    }
    Ok(())
}

/// Empty `frame` for the next transaction's changes, leaving room for the header that
/// [`Wal::append`] fills in: the frame is written as built, with no copy. The buffer is
/// reused, so it keeps its capacity, unless one huge transaction grew it past a limit.
pub(super) fn start_frame(frame: &mut Vec<u8>) {
    const KEPT: usize = 1 << 20;
    if frame.capacity() > KEPT {
        *frame = Vec::new();
    }
    frame.clear();
    frame.resize(HEADER, 0);
}

fn record(log: &mut Vec<u8>, op: u8, table: &str, key: &[u8], value: Option<&[u8]>) {
    let name = u8::try_from(table.len()).expect("table names are short");
    log.push(op);
    log.push(name);
    log.extend_from_slice(table.as_bytes());
    for bytes in std::iter::once(key).chain(value) {
        let len = u32::try_from(bytes.len()).expect("redb bounds keys and values below 4 GiB");
        log.extend_from_slice(&len.to_le_bytes());
        log.extend_from_slice(bytes);
    }
}

/// One logged change, borrowed from a frame.
pub(super) struct Change<'a> {
    /// The table's name.
    pub table: &'a str,
    /// The key's bytes, as redb stores them.
    pub key: &'a [u8],
    /// The value's bytes for an insert; `None` for a removal.
    pub value: Option<&'a [u8]>,
}

/// Redo `change` in `txn`, on `def`, the table it names.
pub(super) fn redo<K: Key + 'static, V: Value + 'static>(
    txn: &WriteTransaction,
    def: TableDefinition<'static, K, V>,
    change: &Change<'_>,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(def)?;
    match change.value {
        Some(value) => {
            table.insert(K::from_bytes(change.key), V::from_bytes(value))?;
        }
        None => {
            table.remove(K::from_bytes(change.key))?;
        }
    }
    Ok(())
}

/// The changes of one frame's payload, in order; `None` if it does not parse (a frame
/// whose checksum matched always does: the log wrote it).
pub(super) fn changes(mut payload: &[u8]) -> Option<Vec<Change<'_>>> {
    fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (buf.get(..n)?, buf.get(n..)?);
        *buf = tail;
        Some(head)
    }
    fn sized<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(take(buf, 4)?.try_into().ok()?);
        take(buf, usize::try_from(len).ok()?)
    }
    let mut out = Vec::new();
    while !payload.is_empty() {
        let op = take(&mut payload, 1)?[0];
        let name_len = usize::from(take(&mut payload, 1)?[0]);
        let table = std::str::from_utf8(take(&mut payload, name_len)?).ok()?;
        let key = sized(&mut payload)?;
        let value = match op {
            INSERT => Some(sized(&mut payload)?),
            REMOVE => None,
            _ => return None,
        };
        out.push(Change { table, key, value });
    }
    Some(out)
}

fn crc(lsn: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&lsn.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// What [`Wal::open`] found in the log that redb does not hold.
pub(super) struct Unapplied {
    /// The frames' payloads, in order.
    pub frames: Vec<Vec<u8>>,
    /// The number for the next frame.
    pub next: u64,
}

/// What the log needs of its file: [`File`] in the store; a test puts in its place one
/// that fails on command, to check what the store does when the disk fails.
pub(super) trait LogFile: Send + 'static {
    /// Write `frame` at byte `at`.
    fn write_at(&mut self, at: u64, frame: &[u8]) -> std::io::Result<()>;
    /// Make every byte written so far durable (`fdatasync`).
    fn sync(&self) -> std::io::Result<()>;
    /// Empty the file, durably.
    fn clear(&mut self) -> std::io::Result<()>;
    /// A second handle on the same file, for the thread that fsyncs it.
    fn share(&self) -> std::io::Result<Box<dyn LogFile>>;
}

impl LogFile for File {
    fn write_at(&mut self, at: u64, frame: &[u8]) -> std::io::Result<()> {
        self.seek(SeekFrom::Start(at))?;
        self.write_all(frame)
    }

    fn sync(&self) -> std::io::Result<()> {
        self.sync_data()
    }

    fn clear(&mut self) -> std::io::Result<()> {
        self.set_len(0)?;
        self.sync_all()
    }

    fn share(&self) -> std::io::Result<Box<dyn LogFile>> {
        Ok(Box::new(self.try_clone()?))
    }
}

/// The handle on the log that the thread fsyncing it holds.
pub(super) struct SyncHandle {
    file: Box<dyn LogFile>,
    path: PathBuf,
}

impl SyncHandle {
    /// Make every frame appended so far durable.
    pub(super) fn sync(&self) -> Result<(), StoreError> {
        self.file
            .sync()
            .map_err(|e| io_error(&self.path, "cannot fsync the write-ahead log", &e))
    }
}

/// One of the log's files, as the writer thread appends to it.
struct Part {
    file: Box<dyn LogFile>,
    path: PathBuf,
    /// Bytes appended since it last started over.
    len: u64,
    /// Bytes the file holds: frames, then frames redb holds already, left from before
    /// it started over, and zeros written ahead ([`RESERVE`]). Not 0 whenever the file
    /// holds any bytes, beyond `len` too.
    size: u64,
}

/// The log: its two files, appended to by the writer thread alone, one at a time.
pub(super) struct Wal {
    parts: [Part; 2],
    /// The file frames go to.
    current: usize,
}

impl Part {
    /// Write zeros past the frames from `len` on, up to the [`RESERVE`] step after
    /// `end`, so that the fsyncs of the frames written over them change no file
    /// metadata. Never below `len`: the frames there are the log. If the disk will not
    /// take them, the frames still go on, growing the file as they do.
    fn reserve(&mut self, end: u64) {
        let to = end.next_multiple_of(RESERVE);
        let mut at = self.size.max(self.len);
        while at < to {
            let n = (to - at).min(ZEROS.len() as u64);
            if let Err(e) = self.file.write_at(at, &ZEROS[..n as usize]) {
                tracing::debug!(
                    "`{}`: cannot write zeros ahead of the log's frames: {e}",
                    self.path.display()
                );
                break;
            }
            at += n;
            self.size = at;
        }
    }
}

fn io_error(path: &Path, what: &str, e: &std::io::Error) -> StoreError {
    StoreError::Db(redb::Error::Io(std::io::Error::new(
        e.kind(),
        format!("{what} `{}`: {e}", path.display()),
    )))
}

/// The whole frames at the start of `bytes`, as (number, payload), and how many bytes
/// they take: a frame cut short by a crash (its length or checksum does not match) ends
/// them.
#[cfg(test)]
pub(super) fn frames(bytes: &[u8]) -> (Vec<(u64, Vec<u8>)>, usize) {
    let mut whole = Vec::new();
    let read = read_frames(bytes, bytes.len() as u64, |lsn, payload| {
        whole.push((lsn, std::mem::take(payload)));
    })
    .expect("a slice reads without error");
    (whole, read.end as usize)
}

/// What [`read_frames`] found at the start of a file.
struct Read {
    /// How many whole frames.
    whole: usize,
    /// The bytes they take.
    end: u64,
    /// Whether the file ends there, or goes on with zeros (written ahead, or a first
    /// frame's header cleared once redb held every frame; see [`Wal::start_over`]).
    clean: bool,
}

/// The whole frames at the start of `from`, a file of `size` bytes, read one at a time
/// and each given to `each` as (number, payload): reading stops at the first that is
/// cut short (its length or checksum does not match), so bytes left past the log's end
/// are never read. `each` takes the payload's buffer if it keeps the frame; else the
/// buffer is read into again, so a count of frames, or an open that skips those redb
/// holds, keeps no more than one frame in memory.
fn read_frames(
    mut from: impl std::io::Read,
    size: u64,
    mut each: impl FnMut(u64, &mut Vec<u8>),
) -> std::io::Result<Read> {
    let mut read = Read {
        whole: 0,
        end: 0,
        clean: true,
    };
    let (mut head, mut payload) = (Vec::with_capacity(HEADER), Vec::new());
    loop {
        head.clear();
        (&mut from).take(HEADER as u64).read_to_end(&mut head)?;
        read.clean = head.iter().all(|&b| b == 0);
        if read.clean || head.len() < HEADER {
            return Ok(read);
        }
        let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
        let sum = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        let lsn = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        // A length past the file's end is a frame cut short, not a size to allocate.
        if read.end + (HEADER as u64) + u64::from(len) > size {
            return Ok(read);
        }
        payload.clear();
        payload.reserve(len as usize);
        (&mut from).take(u64::from(len)).read_to_end(&mut payload)?;
        if payload.len() < len as usize || crc(lsn, &payload) != sum {
            return Ok(read);
        }
        read.end += (HEADER + payload.len()) as u64;
        read.whole += 1;
        each(lsn, &mut payload);
    }
}

/// [`read_frames`] of the log's file `file`, at `path`; and the file's size.
fn read_file(
    file: &File,
    path: &Path,
    each: impl FnMut(u64, &mut Vec<u8>),
) -> Result<(Read, u64), StoreError> {
    file.metadata()
        .and_then(|m| {
            read_frames(std::io::BufReader::new(file), m.len(), each).map(|r| (r, m.len()))
        })
        .map_err(|e| io_error(path, "cannot read the write-ahead log", &e))
}

/// How many whole frames the log's files in `dir` start with, together: what a restart
/// would read (it redoes those redb lacks). 0 once the host has gone quiet and folded
/// its log into redb, or never logged; while it runs, frames redb holds already may
/// still be counted, until frames written over them end the log sooner.
pub fn logged_frames(dir: &Path) -> Result<usize, StoreError> {
    let mut n = 0;
    for name in WAL_FILES {
        let path = dir.join(name);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(&path, "cannot open the write-ahead log", &e)),
        };
        n += read_file(&file, &path, |_, _| {})?.0.whole;
    }
    Ok(n)
}

impl Wal {
    /// Open (or create) the log's files in `dir`, and give back the frames in them that
    /// are not in redb yet: those whose numbers follow `held`, the last frame redb holds,
    /// one after another from either file.
    pub(super) fn open(dir: &Path, held: u64) -> Result<(Wal, Unapplied), StoreError> {
        let mut found = Vec::new();
        let parts = WAL_FILES.map(|name| -> Result<Part, StoreError> {
            let path = dir.join(name);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| io_error(&path, "cannot open the write-ahead log", &e))?;
            // Frames redb holds already are skipped as they are read.
            let (read, size) = read_file(&file, &path, |lsn, payload| {
                if lsn > held {
                    found.push((lsn, std::mem::take(payload)));
                }
            })?;
            // Zeros end the log as it should end: nothing to say of them.
            if !read.clean {
                tracing::info!(
                    "`{}`: the last {} bytes are not whole frames (a frame cut short by a crash, never fsynced, so never acknowledged, or what is left of frames already in the store); ignored",
                    path.display(),
                    size - read.end
                );
            }
            Ok(Part {
                file: Box::new(file),
                path,
                len: size,
                size,
            })
        });
        let [first, second] = parts;
        let parts = [first?, second?];
        // The rest must follow on one by one, as they were committed: a gap is where a
        // crash cut the log short, and nothing after it was acknowledged.
        found.sort_by_key(|(lsn, _)| *lsn);
        let mut frames = Vec::new();
        let mut last = held;
        for (lsn, payload) in found {
            if lsn != last + 1 {
                break;
            }
            frames.push(payload);
            last = lsn;
        }
        Ok((
            Wal { parts, current: 0 },
            Unapplied {
                frames,
                next: last + 1,
            },
        ))
    }

    /// The log, with `wrap(file)` in the place of each of its files.
    #[cfg(test)]
    pub(super) fn wrapped(self, mut wrap: impl FnMut(Box<dyn LogFile>) -> Box<dyn LogFile>) -> Wal {
        let [a, b] = self.parts;
        let mut wrap = |p: Part| Part {
            file: wrap(p.file),
            ..p
        };
        Wal {
            parts: [wrap(a), wrap(b)],
            ..self
        }
    }

    /// A second handle on the file frames go to, to fsync it from another thread.
    pub(super) fn sync_handle(&self) -> Result<SyncHandle, StoreError> {
        let part = &self.parts[self.current];
        let file = part
            .file
            .share()
            .map_err(|e| io_error(&part.path, "cannot share the write-ahead log", &e))?;
        Ok(SyncHandle {
            file,
            path: part.path.clone(),
        })
    }

    /// Append `frame` (not fsynced), numbered `lsn`: its payload follows the header's
    /// room that [`start_frame`] left, and this fills the header in.
    pub(super) fn append(&mut self, lsn: u64, frame: &mut [u8]) -> Result<(), StoreError> {
        let (head, payload) = frame.split_at_mut(HEADER);
        let len = u32::try_from(payload.len()).map_err(|_| {
            StoreError::Corrupt(
                "write".into(),
                format!(
                    "a transaction of {} bytes is too large to log",
                    payload.len()
                ),
            )
        })?;
        head[0..4].copy_from_slice(&len.to_le_bytes());
        head[4..8].copy_from_slice(&crc(lsn, payload).to_le_bytes());
        head[8..16].copy_from_slice(&lsn.to_le_bytes());
        let part = &mut self.parts[self.current];
        let end = part.len + frame.len() as u64;
        if end > part.size {
            part.reserve(end);
        }
        part.file
            .write_at(part.len, frame)
            .map_err(|e| io_error(&part.path, "cannot append to the write-ahead log", &e))?;
        part.len = end;
        part.size = part.size.max(end);
        Ok(())
    }

    /// Bytes appended to the file frames go to since it last started over.
    pub(super) fn len(&self) -> u64 {
        self.parts[self.current].len
    }

    /// Whether both files are empty, on disk too.
    pub(super) fn is_empty(&self) -> bool {
        self.parts.iter().all(|p| p.size == 0)
    }

    /// Whether frames were appended since the log last [started over](Wal::start_over).
    pub(super) fn holds_frames(&self) -> bool {
        self.parts.iter().any(|p| p.len > 0)
    }

    /// Whether frames can go to the other file: it is empty.
    pub(super) fn can_swap(&self) -> bool {
        self.parts[1 - self.current].len == 0
    }

    /// Send frames to the other file from now on (see [`Wal::can_swap`]); the handle the
    /// fsync thread is to use for it. Once redb durably holds every frame of the file
    /// left, call [`Wal::recycled`].
    pub(super) fn swap(&mut self) -> Result<SyncHandle, StoreError> {
        self.current = 1 - self.current;
        self.sync_handle()
            .inspect_err(|_| self.current = 1 - self.current)
    }

    /// redb durably holds every frame of the file left at the last [`Wal::swap`]: the
    /// next frames to go there overwrite it from its start. Its bytes stay on disk, so
    /// its blocks are already allocated and written, and an fsync of frames written
    /// over them changes no file metadata: no journal commit, which made such an fsync
    /// cost 0.49 to 0.50 ms a handoff (p50, one at a time) against 0.33 to 0.41 over
    /// written blocks. A restart skips frames redb holds, so the old ones left after the
    /// new are ignored.
    pub(super) fn recycled(&mut self) {
        self.parts[1 - self.current].len = 0;
    }

    /// Start over, with both files emptied: every frame is in redb's durable state. For
    /// a restart, whose frames a crash may have left with numbers redb lacks.
    pub(super) fn reset(&mut self) -> Result<(), StoreError> {
        for part in &mut self.parts {
            if part.size > 0 {
                part.file
                    .clear()
                    .map_err(|e| io_error(&part.path, "cannot reset the write-ahead log", &e))?;
                part.len = 0;
                part.size = 0;
            }
        }
        Ok(())
    }

    /// Start over while the store runs, every frame being in redb's durable state: the
    /// next frame goes to the start of the current file, and both files keep their
    /// bytes, so the next burst of writes fsyncs blocks the files have already (see
    /// [`Wal::recycled`]), where a file emptied here grew again at every burst after a
    /// quiet second. The first frame's header in each file is cleared, so that a
    /// restart reads no further than it (and would skip those frames anyway: redb holds
    /// them). If the disk will not take that, a restart reads them and skips them.
    pub(super) fn start_over(&mut self) {
        for part in &mut self.parts {
            part.len = 0;
            if part.size >= HEADER as u64
                && let Err(e) = part.file.write_at(0, &ZEROS[..HEADER])
            {
                tracing::debug!(
                    "`{}`: cannot clear the first frame of a log redb holds whole: {e}",
                    part.path.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase as _, ReadableTable as _};

    use super::*;
    use crate::store::{STREAMS, Store};

    /// A table stays open for the rest of its transaction: a second use sees the first
    /// one's changes, both are logged, and opening it while it is in use is an error that
    /// names it, not a panic.
    #[test]
    fn a_transaction_keeps_its_tables_open_and_refuses_a_second_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let log = RefCell::new(Vec::new());
        let txn = OnceCell::from(store.db.begin_write().unwrap());
        {
            let tx = Tx::new(
                (&store.db, &txn),
                Some(&log),
                Known::default(),
                &store.queues,
                &store.recent,
            );
            let mut first = tx.open_table(STREAMS).unwrap();
            first.insert("t-1", "one").unwrap();
            let again = tx
                .open_table(STREAMS)
                .err()
                .expect("a second open is refused");
            assert!(again.to_string().contains("streams"), "{again}");
            drop(first);
            let mut second = tx.open_table(STREAMS).unwrap();
            assert_eq!(second.get("t-1").unwrap().unwrap().value(), "one");
            second.insert("t-2", "two").unwrap();
        }
        txn.into_inner().unwrap().commit().unwrap();
        let logged = log.into_inner();
        let changes = changes(&logged).unwrap();
        let keys: Vec<&[u8]> = changes.iter().map(|c| c.key).collect();
        assert_eq!(keys, [b"t-1".as_slice(), b"t-2".as_slice()]);
        assert!(changes.iter().all(|c| c.table == "streams"));
        let read = store.db.begin_read().unwrap();
        let streams = read.open_table(STREAMS).unwrap();
        assert_eq!(streams.get("t-2").unwrap().unwrap().value(), "two");
    }
}
