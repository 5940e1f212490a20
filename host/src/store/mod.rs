//! The durable state of a mesh, in one redb file: the blackboard with every version of
//! every key, the inboxes and capability queues, and the task and handoff records that
//! make up the audit trail.
//!
//! Each operation is applied whole in one write transaction (under group commit, one it
//! shares with the other writes waiting at the time): a handoff the host acknowledged is
//! on disk with its data, its task and the callee's inbox entry together or not at all,
//! and a failure is recorded together with what its fallback did. Whether an operation's
//! commit is on disk when it returns depends on the [`CommitPolicy`]; under group commit,
//! the caller awaits [`Store::durable`] before acknowledging anything.
//!
//! - [`Backend`]: the trait the host reaches its state through; [`Store`] is its redb
//!   implementation.
//! - [`records`]: what is stored.
//! - `commit`: the commit policy, group commit and checkpoints.
//! - `wal`: the write-ahead log that group commit fsyncs, and how a restart redoes it.
//! - `dispatch`: the wake queue, inboxes and running tasks, kept in memory.
//! - `decoded`: the task records the writer wrote last, kept decoded for the writes
//!   that read them back.
//! - `recent`: what a handoff writes besides (tasks, handoffs, grants, entries, chains,
//!   audit records) since the last checkpoint, in memory.
//! - `queue`: handoffs, claims, completion, failure and fallback, crash recovery.
//! - `claimant`: standing claims, for the scheduler, in the commits that make tasks
//!   ready.
//! - `streams`: chunks of `stream` handoffs.
//! - `operator`: the operator inbox of escalated tasks.
//! - `audit`: the hash-chained log of every handoff and read.

mod audit;
mod backend;
mod claimant;
mod commit;
mod decoded;
mod dispatch;
mod operator;
mod queue;
mod recent;
pub mod records;
mod streams;
mod wal;

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{
    Database, Key, ReadableDatabase, TableDefinition, TableHandle, Value, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::hex;

pub use audit::{AuditRecord, AuditVerdict, ReadAudits};
pub use backend::{Backend, BoxFuture, WriteFuture};
pub use claimant::{Claim, Claimant};
use commit::Ack;
pub use commit::{CommitPolicy, Queued};
pub use queue::{Committed, NewHandoff, Pick, PickFn, Picker, Refusal, fingerprint};
pub use records::*;
pub use streams::{StreamRead, StreamWriter, Written};
use wal::Tx;
pub use wal::{WAL_FILE, WAL_FILES, logged_frames};

/// The file inside the state directory.
pub const STORE_FILE: &str = "store.redb";

/// (key, version) → the entry: its [`EntryMeta`]'s length (`u32`, little-endian), that
/// metadata as JSON, then the value's bytes. One row per version, where there were two.
const BB_ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("bb_entries");
/// Versions written before `bb_entries`, as value and metadata apart: read where a
/// version is not in `bb_entries`, and never written now. A store is not rewritten to
/// move them (see `Reader::entry`).
const BB_VALUES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("bb_values");
const BB_META: TableDefinition<(&str, u64), &str> = TableDefinition::new("bb_meta");
/// key → its newest version, once it has a second. A key written once, as most are (a
/// handoff's data and outcome each get a key of their own), has no row here: its version
/// 1 in `bb_entries` says it exists. A store written before holds a row for every key.
const BB_HEAD: TableDefinition<&str, u64> = TableDefinition::new("bb_head");
const TASKS: TableDefinition<&str, &str> = TableDefinition::new("tasks");
/// handoff id → [`HandoffRecord`], for a handoff numbered unlike the task it made
/// (`h-7` made `t-9`). Every field of a handoff's record is one of its task's (see
/// [`HandoffRecord::of`]), so a handoff numbered like its task, as every handoff is in
/// a store whose two counters never drifted apart, has no row: `h-9` is read from `t-9`.
/// A store written before holds a row for every handoff.
const HANDOFFS: TableDefinition<&str, &str> = TableDefinition::new("handoffs");
/// (task, n) → handoff id: the n-th hand-off made while handling that task, so a
/// redelivered task that hands off again gets the original back (see `Store::hand_off`).
const HANDOFF_ONCE: TableDefinition<(&str, u32), &str> = TableDefinition::new("handoff_once");
/// (running task, task it claimed through `check-inbox`): given back if the first one
/// fails or its host dies, so a claimed task is never lost with its claimer.
const INBOX_CLAIMS: TableDefinition<(&str, &str), ()> = TableDefinition::new("inbox_claims");
/// (agent or `capability:<name>`, seq) → task id: what `check-inbox` claims from.
const INBOX: TableDefinition<(&str, u64), &str> = TableDefinition::new("inbox");
/// seq → `<target>\t<task>\t<not-before>`: the order in which the host wakes agents.
const READY: TableDefinition<u64, &str> = TableDefinition::new("ready");
/// task id → (): claimed by an activation that has not finished; redelivered on restart.
const RUNNING: TableDefinition<&str, ()> = TableDefinition::new("running");
/// (root task, seq) → `h:<handoff>` and `t:<task>`, a line each (a handoff and the task
/// it made; a store written before holds them in a row each): everything in one chain,
/// in order. A chain's first handoff and task, its root's, have no row: the root task's
/// record names them (a store written before holds that row too; see `Store::chain`).
const CHAIN: TableDefinition<(&str, u64), &str> = TableDefinition::new("chain");
/// (agent, key): keys an agent may read because a task delivered to it points there.
const GRANTS: TableDefinition<(&str, &str), ()> = TableDefinition::new("grants");
/// stream key → [`StreamMeta`].
const STREAMS: TableDefinition<&str, &str> = TableDefinition::new("streams");
/// task id → [`Escalation`].
const OPERATOR_INBOX: TableDefinition<&str, &str> = TableDefinition::new("operator_inbox");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// The hash-chained audit log: the number of a row's first [`AuditRecord`] → the
/// records one transaction appended, a line of JSON each, numbered on from the first.
pub const AUDIT: TableDefinition<u64, &str> = TableDefinition::new("audit");

/// Bytes of redb's page cache, its write buffer included. redb's default, 1 GiB, is a
/// ceiling the cache grows towards as the store does: capped, a host's peak after 150,000
/// handoffs fell from 688 to 153 MiB, at the same rate (see docs/performance.md). The
/// write buffer, half of it, still holds the pages a checkpoint's worth of log dirties.
const CACHE: usize = 64 << 20;

/// Calls macro `$m` with every table of the store: one list, so that a table added to the
/// store is also created at open and redone from the log.
macro_rules! every_table {
    ($m:ident) => {
        $m!(
            BB_ENTRIES,
            BB_VALUES,
            BB_META,
            BB_HEAD,
            TASKS,
            HANDOFFS,
            HANDOFF_ONCE,
            INBOX_CLAIMS,
            INBOX,
            READY,
            RUNNING,
            CHAIN,
            GRANTS,
            STREAMS,
            OPERATOR_INBOX,
            COUNTERS,
            AUDIT
        )
    };
}

/// How many tables the store has.
const TABLES: usize = {
    macro_rules! count {
        ($($def:ident),*) => {
            [$(stringify!($def)),*].len()
        };
    }
    every_table!(count)
};

/// The place of the table called `name` in the store's list of tables.
fn table_index(name: &str) -> Option<usize> {
    macro_rules! position {
        ($($def:ident),*) => {
            [$($def.name()),*].iter().position(|n| *n == name)
        };
    }
    every_table!(position)
}

/// A store operation failed; the operation changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (I/O, corruption, lock).
    #[error("store: {0}")]
    Db(#[from] redb::Error),
    /// A record did not decode; the file was written by something else or damaged.
    #[error("store: damaged record `{0}`: {1}")]
    Corrupt(String, String),
    /// A record the operation needs does not exist.
    #[error("store: no {0} `{1}`")]
    Missing(&'static str, String),
    /// The store's file could not be opened: it is not a redb file, another host holds
    /// it, or the disk refused.
    #[error("store: cannot open `{}`: {}", .0.display(), .1)]
    Open(PathBuf, String),
}

/// Open the store file `file` and say whether redb had to repair it first: walk the
/// whole file to rebuild the allocator state a crash left unrecorded, which makes a
/// restart's time grow with the store. The open leaves the file repaired and cleanly
/// closed, so a caller who wants to know what a crash left looks at a copy.
pub fn opened_with_repair(file: &Path) -> Result<bool, StoreError> {
    let repaired = Arc::new(AtomicBool::new(false));
    let seen = repaired.clone();
    drop(
        Database::builder()
            .set_repair_callback(move |_| seen.store(true, Ordering::SeqCst))
            .create(file)
            .map_err(|e| open_error(file, e))?,
    );
    Ok(repaired.load(Ordering::SeqCst))
}

/// `e`, met opening the store's file at `path`, as an error that names the file.
fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    let reason = match e {
        // Its own words, without redb's "I/O error: " before them.
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => io.to_string(),
        other => other.to_string(),
    };
    StoreError::Open(path.to_path_buf(), reason)
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.into()) }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

#[derive(Serialize, Deserialize)]
struct EntryMeta {
    writer: String,
    sha256: String,
    written_at: u64,
}

/// Everything in one chain, in the order it happened.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    /// Tasks, oldest first.
    pub tasks: Vec<TaskRecord>,
    /// Handoffs, oldest first.
    pub handoffs: Vec<HandoffRecord>,
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The redb-backed store of one state directory.
pub struct Store {
    db: Arc<Database>,
    queues: Arc<dispatch::Shared>,
    recent: Arc<recent::Recent>,
    path: PathBuf,
    syncer: commit::Syncer,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Open (or create) the store in `dir`, with [`CommitPolicy::Immediate`]. Writes a
    /// host that was killed had made durable only in the write-ahead log ([`WAL_FILE`])
    /// are redone first.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let (db, log, next) = Store::recovered(dir)?;
        Store::start(db, dir, log, next)
    }

    /// [`Store::open`], with `wrap(file)` in the place of the write-ahead log's file: a
    /// test's way to make the disk fail under the store.
    #[cfg(test)]
    fn open_with_log(
        dir: &Path,
        wrap: impl FnMut(Box<dyn wal::LogFile>) -> Box<dyn wal::LogFile>,
    ) -> Result<Store, StoreError> {
        let (db, log, next) = Store::recovered(dir)?;
        Store::start(db, dir, log.wrapped(wrap), next)
    }

    /// The database in `dir` with every table in it and the log redone: the log, and
    /// the number of its next frame.
    fn recovered(dir: &Path) -> Result<(Database, wal::Wal, u64), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Db(redb::Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot create state directory `{}`: {e}", dir.display()),
            )))
        })?;
        let path = dir.join(STORE_FILE);
        let db = Database::builder()
            .set_cache_size(CACHE)
            .create(&path)
            .map_err(|e| open_error(&path, e))?;
        // Create every table up front so readers never meet a missing one. Like every
        // durable commit but an acknowledged one under `CommitPolicy::Immediate`, it
        // records redb's allocator state, so a host killed before its first checkpoint
        // still reopens without redb's repair (see `commit::flush`).
        let mut txn = db.begin_write()?;
        txn.set_quick_repair(true);
        macro_rules! create {
            ($($def:ident),*) => {
                $(txn.open_table($def)?;)*
            };
        }
        every_table!(create);
        txn.commit()?;
        let (log, next) = redo_log(&db, dir)?;
        Ok((db, log, next))
    }

    /// The store of `db`, in `dir`, its writer thread started on `log`.
    fn start(db: Database, dir: &Path, log: wal::Wal, next: u64) -> Result<Store, StoreError> {
        let queues = Arc::new(std::sync::Mutex::new(dispatch::Queues::load(&db)?));
        let recent = Arc::new(recent::Recent::default());
        let db = Arc::new(db);
        Ok(Store {
            syncer: commit::Syncer::start(db.clone(), log, next, queues.clone(), recent.clone())?,
            queues,
            recent,
            db,
            path: dir.join(STORE_FILE),
        })
    }

    /// Commit acknowledged writes under `policy` from now on.
    pub fn set_commit_policy(&self, policy: CommitPolicy) {
        self.syncer.set_policy(policy);
    }

    /// How acknowledged writes reach the disk.
    pub fn commit_policy(&self) -> CommitPolicy {
        self.syncer.policy()
    }

    /// Under group commit: how many acknowledged writes were committed unsynced, and how
    /// many flushes made them durable, since the store was opened.
    pub fn group_commit_counts(&self) -> (u64, u64) {
        self.syncer.counts()
    }

    /// Wait until every write this store committed before the call is on disk. Under
    /// [`CommitPolicy::Immediate`] it already is. An error means the write may be lost:
    /// it must not be acknowledged.
    pub async fn durable(&self) -> Result<(), StoreError> {
        self.syncer.durable().await
    }

    /// [`Store::durable`], blocking the calling thread (for callers outside async code).
    pub fn durable_blocking(&self) -> Result<(), StoreError> {
        self.syncer.durable_blocking()
    }

    /// Queue `f` to be applied in a write transaction; the [`Queued`] yields its result
    /// once committed (see [`commit`]): an acknowledged write is awaited with
    /// [`Store::durable`] before it is acknowledged. If `f` fails, nothing it wrote is
    /// committed. `f` may run more than once (a failed batch is redone write by write),
    /// each time in a fresh transaction.
    fn write<T, F>(&self, ack: Ack, f: F) -> Queued<T>
    where
        T: Send + 'static,
        F: FnMut(&Tx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.syncer.queue(ack, f)
    }

    /// End every write's commit with a claim for `claimant` while it wants tasks,
    /// until [`Store::stop_claims`] (see `claimant`).
    pub fn serve_claims(&self, claimant: Arc<dyn Claimant>) {
        self.syncer.serve_claims(claimant);
    }

    /// Claim no more for `claimant` in commits to come; claims already under way still
    /// hand their tasks over.
    pub fn stop_claims(&self, claimant: &Arc<dyn Claimant>) {
        self.syncer.stop_claims(claimant);
    }

    /// Claim ready tasks for `claimant` now; yields how many, once they were handed over.
    pub fn claim_for(&self, claimant: Arc<dyn Claimant>) -> Queued<usize> {
        self.syncer.claim_for(claimant)
    }

    /// The redb file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One version of `key` (the newest when `version` is `None`).
    pub fn read(&self, key: &str, version: Option<u64>) -> Result<Option<EntryRecord>, StoreError> {
        self.reader().entry(key, version)
    }

    /// Every version of `key`, oldest first.
    pub fn history(&self, key: &str) -> Result<Vec<EntryRecord>, StoreError> {
        let mut reader = self.reader();
        let Some(head) = reader.head(key)? else {
            return Ok(Vec::new());
        };
        (1..=head)
            .filter_map(|v| reader.entry(key, Some(v)).transpose())
            .collect()
    }

    /// Every key on the blackboard that starts with `prefix`, in order.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        // Every key has a version 1 in `bb_entries`, or, written before that table, a
        // head row. Those kept in memory first: a key that leaves them for redb
        // meanwhile is then in the transaction begun after.
        fn entry_key(k: &[u8]) -> &str {
            <(&str, u64)>::from_bytes(k).0
        }
        let mut keys: std::collections::BTreeSet<String> = self
            .recent
            .rows(BB_ENTRIES.name(), |k| entry_key(k).starts_with(prefix))
            .into_iter()
            .map(|(k, _)| entry_key(&k).to_string())
            .collect();
        let txn = self.db.begin_read()?;
        let head = txn.open_table(BB_HEAD)?;
        for row in head.range(prefix..)? {
            let (k, _) = row?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            keys.insert(k.to_string());
        }
        // One look per key, past all its versions to the next key's first.
        let entries = txn.open_table(BB_ENTRIES)?;
        let mut last: Option<String> = None;
        loop {
            let from = match &last {
                Some(k) => Bound::Excluded((k.as_str(), u64::MAX)),
                None => Bound::Included((prefix, 0)),
            };
            let Some(row) = entries.range((from, Bound::Unbounded))?.next() else {
                break;
            };
            let key = row?.0.value().0.to_string();
            if !key.starts_with(prefix) {
                break;
            }
            keys.insert(key.clone());
            last = Some(key);
        }
        Ok(keys.into_iter().collect())
    }

    /// Whether a task delivered to `agent` pointed at `key`.
    pub fn is_granted(&self, agent: &str, key: &str) -> Result<bool, StoreError> {
        Ok(self.reader().get(GRANTS, &(agent, key))?.is_some())
    }

    /// The task called `id`.
    pub fn task(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        self.get(TASKS, id)
    }

    /// Where the task called `id` is in its life: its record's status alone, which
    /// decodes without building the rest of the record.
    pub fn task_status(&self, id: &str) -> Result<Option<Status>, StoreError> {
        /// The one field read; serde skips the others.
        #[derive(Deserialize)]
        struct StatusOnly {
            status: Status,
        }
        Ok(self.get::<StatusOnly>(TASKS, id)?.map(|t| t.status))
    }

    /// The handoff called `id`.
    pub fn handoff(&self, id: &str) -> Result<Option<HandoffRecord>, StoreError> {
        self.reader().handoff(id)
    }

    /// The stream at `key`, if a `stream` handoff opened one there.
    pub fn stream(&self, key: &str) -> Result<Option<StreamMeta>, StoreError> {
        self.get(STREAMS, key)
    }

    /// How many tasks wait in the inbox of `target` (an agent or `capability:<name>`).
    pub fn inbox_depth(&self, target: &str) -> Result<u64, StoreError> {
        Ok(pending(
            &dispatch::lock(&self.queues).inbox,
            target,
            u64::MAX,
        ))
    }

    /// Everything in the chain that starts at task `root`.
    pub fn chain(&self, root: &str) -> Result<Chain, StoreError> {
        // Rows kept in memory first, then redb's, merged in order (see `recent`).
        let mut rows: std::collections::BTreeMap<u64, String> = self
            .recent
            .rows(CHAIN.name(), |k| <(&str, u64)>::from_bytes(k).0 == root)
            .into_iter()
            .map(|(k, v)| {
                let seq = <(&str, u64)>::from_bytes(&k).1;
                (seq, String::from_utf8_lossy(&v).into_owned())
            })
            .collect();
        let mut reader = self.reader();
        for row in reader.table(CHAIN)?.range((root, 0)..=(root, u64::MAX))? {
            let (k, v) = row?;
            rows.insert(k.value().1, v.value().to_string());
        }
        let mut out = Chain::default();
        // The root's own handoff and task come first, from its record: they have no
        // row, unless a store written before wrote one.
        let listed = format!("t:{root}");
        if !rows
            .values()
            .flat_map(|row| row.lines())
            .any(|v| v == listed)
            && let Some(task) = reader
                .record::<TaskRecord>(TASKS, root)?
                .filter(|t| t.root == root)
        {
            out.handoffs.push(HandoffRecord::of(&task));
            out.tasks.push(task);
        }
        // A row holds a handoff and the task it made, a line each; a store written
        // before that holds them in a row each.
        for v in rows.values().flat_map(|row| row.lines()) {
            match v.split_once(':') {
                Some(("t", id)) => out.tasks.push(
                    reader
                        .record(TASKS, id)?
                        .ok_or_else(|| StoreError::Missing("task", id.into()))?,
                ),
                Some(("h", id)) => out.handoffs.push(
                    reader
                        .handoff(id)?
                        .ok_or_else(|| StoreError::Missing("handoff", id.into()))?,
                ),
                _ => return Err(StoreError::Corrupt(root.into(), format!("chain row `{v}`"))),
            }
        }
        Ok(out)
    }

    fn get<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<'static, &str, &str>,
        id: &str,
    ) -> Result<Option<T>, StoreError> {
        self.reader().record(table, id)
    }

    /// A reader of the committed state: what is kept in memory, else redb's.
    fn reader(&self) -> Reader<'_> {
        Reader::new(&self.db, &self.recent)
    }
}

/// Reads the committed state for one call of [`Store`]: a row kept in memory since the
/// last checkpoint (see `recent`) without a transaction, any other from redb, in a read
/// transaction begun at the first such row, and begun again if a checkpoint has moved
/// rows from memory to redb since.
struct Reader<'s> {
    db: &'s Database,
    recent: &'s recent::Recent,
    txn: Option<(u64, redb::ReadTransaction)>,
    /// The tables opened in `txn`, by name, each a `ReadOnlyTable` of its own key and
    /// value types: the writer reads the same table (a blackboard key's newest version)
    /// for many writes of a batch, and opening it cost more than the read through it.
    tables: Vec<(String, Box<dyn std::any::Any>)>,
}

impl<'s> Reader<'s> {
    /// A reader of `db` and the rows `recent` keeps for it.
    fn new(db: &'s Database, recent: &'s recent::Recent) -> Self {
        Reader {
            db,
            recent,
            txn: None,
            tables: Vec::new(),
        }
    }

    /// Table `def` of redb's state, in the read transaction (begun if need be).
    fn table<K: Key + 'static, V: Value + 'static>(
        &mut self,
        def: TableDefinition<'static, K, V>,
    ) -> Result<&redb::ReadOnlyTable<K, V>, StoreError> {
        let generation = self.recent.generation();
        self.table_at(def, generation)
    }

    fn table_at<K: Key + 'static, V: Value + 'static>(
        &mut self,
        def: TableDefinition<'static, K, V>,
        generation: u64,
    ) -> Result<&redb::ReadOnlyTable<K, V>, StoreError> {
        let txn = begun(self.db, &mut self.txn, &mut self.tables, generation)?;
        let at = match self.tables.iter().position(|(name, _)| name == def.name()) {
            Some(at) => at,
            None => {
                let table = txn.open_table(def)?;
                self.tables.push((def.name().to_string(), Box::new(table)));
                self.tables.len() - 1
            }
        };
        self.tables[at]
            .1
            .downcast_ref::<redb::ReadOnlyTable<K, V>>()
            .ok_or_else(|| {
                StoreError::Corrupt(
                    def.name().to_string(),
                    "opened before with other key or value types".into(),
                )
            })
    }

    /// The bytes of the value at `key` of `def`.
    fn get<K: Key + 'static, V: Value + 'static>(
        &mut self,
        def: TableDefinition<'static, K, V>,
        key: &K::SelfType<'_>,
    ) -> Result<Option<recent::Bytes>, StoreError> {
        let (kept, generation) = self.recent.get(def.name(), K::as_bytes(key).as_ref());
        if kept.is_some() {
            return Ok(kept);
        }
        let table = self.table_at(def, generation)?;
        let value = table.get(key)?;
        Ok(value.map(|v| recent::Bytes::copy_from_slice(V::as_bytes(&v.value()).as_ref())))
    }

    /// Handoff `id`: its row, else its task's record (see [`HANDOFFS`]).
    fn handoff(&mut self, id: &str) -> Result<Option<HandoffRecord>, StoreError> {
        if let Some(handoff) = self.record(HANDOFFS, id)? {
            return Ok(Some(handoff));
        }
        paired(id, |task| self.record(TASKS, task))
    }

    /// The record `id` of `table`, decoded.
    fn record<T: for<'de> Deserialize<'de>>(
        &mut self,
        table: TableDefinition<'static, &str, &str>,
        id: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.get(table, &id)? {
            Some(json) => decode_bytes(id, &json).map(Some),
            None => Ok(None),
        }
    }

    /// The newest version of `key`: its head row, else 1 if it has a version 1 (see
    /// `BB_HEAD`).
    fn head(&mut self, key: &str) -> Result<Option<u64>, StoreError> {
        let first = <(&str, u64)>::as_bytes(&(key, 1));
        loop {
            // Both looked for in memory before either in redb: a version 1 kept there
            // means no checkpoint has written it, so none has written a head row since
            // either, and a key written once costs no read of redb.
            let (head, generation) = self.recent.get(BB_HEAD.name(), key.as_bytes());
            if let Some(v) = head {
                return Ok(Some(u64::from_bytes(&v)));
            }
            let (kept, again) = self.recent.get(BB_ENTRIES.name(), first.as_ref());
            if again != generation {
                continue; // a checkpoint moved rows to redb between the two looks
            }
            if kept.is_some() {
                return Ok(Some(1));
            }
            if let Some(v) = self.table_at(BB_HEAD, generation)?.get(key)? {
                return Ok(Some(v.value()));
            }
            let entries = self.table_at(BB_ENTRIES, generation)?;
            return Ok(entries.get((key, 1))?.map(|_| 1));
        }
    }

    /// One version of `key` (the newest when `version` is `None`).
    fn entry(
        &mut self,
        key: &str,
        version: Option<u64>,
    ) -> Result<Option<EntryRecord>, StoreError> {
        let version = match version {
            Some(v) => v,
            None => match self.head(key)? {
                Some(v) => v,
                None => return Ok(None),
            },
        };
        if let Some(row) = self.get(BB_ENTRIES, &(key, version))? {
            return entry(key, version, &row).map(Some);
        }
        let Some(meta) = self.get(BB_META, &(key, version))? else {
            return Ok(None);
        };
        let value = self.get(BB_VALUES, &(key, version))?;
        legacy_entry(key, version, &meta, value.as_deref()).map(Some)
    }
}

/// The read transaction in `slot` if it was begun at `generation` of the rows kept in
/// memory, else a new one, without the `tables` opened in the old.
fn begun<'t>(
    db: &Database,
    slot: &'t mut Option<(u64, redb::ReadTransaction)>,
    tables: &mut Vec<(String, Box<dyn std::any::Any>)>,
    generation: u64,
) -> Result<&'t redb::ReadTransaction, StoreError> {
    let txn = match slot.take() {
        Some((g, txn)) if g == generation => txn,
        _ => {
            tables.clear();
            db.begin_read()?
        }
    };
    Ok(&slot.insert((generation, txn)).1)
}

/// Open the write-ahead log in `dir` and redo, in one durable commit, the frames in it
/// that redb does not hold (a host that stopped without a checkpoint left them), then
/// start the log over. Returns the log and the number of its next frame.
fn redo_log(db: &Database, dir: &Path) -> Result<(wal::Wal, u64), StoreError> {
    let held = db
        .begin_read()?
        .open_table(COUNTERS)?
        .get(wal::LSN_COUNTER)?
        .map_or(0, |v| v.value());
    let (mut log, wal::Unapplied { frames, next }) = wal::Wal::open(dir, held)?;
    if !frames.is_empty() {
        let mut txn = db.begin_write()?;
        txn.set_quick_repair(true);
        for payload in &frames {
            let changes = wal::changes(payload).ok_or_else(|| {
                StoreError::Corrupt(
                    WAL_FILE.into(),
                    "a frame whose checksum matches does not parse".into(),
                )
            })?;
            for change in &changes {
                redo(&txn, change)?;
            }
        }
        // Frames no longer say their number in a change of their own: the checkpoint
        // that folds them in does.
        txn.open_table(COUNTERS)?
            .insert(wal::LSN_COUNTER, next - 1)?;
        txn.commit()?;
        tracing::info!(
            "redid {} transactions from the write-ahead log in `{}` that were not in the store yet",
            frames.len(),
            dir.display()
        );
    }
    if !log.is_empty() {
        log.reset()?;
    }
    Ok((log, next))
}

/// Redo one logged change on the table it names.
fn redo(txn: &WriteTransaction, change: &wal::Change<'_>) -> Result<(), StoreError> {
    macro_rules! on_its_table {
        ($($def:ident),*) => {
            match change.table {
                $(name if name == $def.name() => wal::redo(txn, $def, change),)*
                other => Err(StoreError::Corrupt(
                    WAL_FILE.into(),
                    format!("a change to `{other}`, which is no table of the store"),
                )),
            }
        };
    }
    every_table!(on_its_table)
}

/// How many tasks wait in the inbox of `target`, counted up to `at_most`: a hand-off
/// only asks whether the inbox is full, and counting a deep inbox whole would make each
/// hand-off to it cost as much as the inbox is deep.
fn pending(
    inbox: &dispatch::Rows<(&'static str, u64), &'static str>,
    target: &str,
    at_most: u64,
) -> u64 {
    let at_most = usize::try_from(at_most).unwrap_or(usize::MAX);
    inbox
        .from(&(target, 0))
        .take_while(|((t, _), _)| *t == target)
        .take(at_most)
        .count() as u64
}

/// Version `version` of `key`, from its row of `bb_entries`.
fn entry(key: &str, version: u64, row: &[u8]) -> Result<EntryRecord, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("{key} v{version}"), "entry row cut short".into());
    let (len, rest) = row.split_first_chunk::<4>().ok_or_else(corrupt)?;
    let len = u32::from_le_bytes(*len) as usize;
    let (meta, value) = rest.split_at_checked(len).ok_or_else(corrupt)?;
    legacy_entry(key, version, meta, Some(value))
}

/// Version `version` of `key`, from the bytes of its metadata and its value.
fn legacy_entry(
    key: &str,
    version: u64,
    meta: &[u8],
    value: Option<&[u8]>,
) -> Result<EntryRecord, StoreError> {
    let meta: EntryMeta = decode_bytes(key, meta)?;
    Ok(EntryRecord {
        key: key.to_string(),
        version,
        writer: meta.writer,
        sha256: meta.sha256,
        written_at: meta.written_at,
        value: value.map(<[u8]>::to_vec).unwrap_or_default(),
    })
}

/// Version `version` of `key`, as the writer's transaction `txn` sees it.
fn entry_in(txn: &Tx<'_>, key: &str, version: u64) -> Result<Option<EntryRecord>, StoreError> {
    if let Some(row) = txn.get(BB_ENTRIES, (key, version))? {
        return entry(key, version, &row).map(Some);
    }
    let Some(meta) = txn.get(BB_META, (key, version))? else {
        return Ok(None);
    };
    let value = txn.get(BB_VALUES, (key, version))?;
    legacy_entry(key, version, &meta, value.as_deref()).map(Some)
}

/// Append a version of `key` written by `writer`.
fn put(txn: &Tx<'_>, key: &str, writer: &str, value: &[u8], now: u64) -> Result<u64, StoreError> {
    // A key without a version 1 is new, unless the store is of the earlier layout,
    // which had no `bb_entries`: one look for a new key, the most common write.
    let first = txn.get(BB_ENTRIES, (key, 1))?;
    let version = if first.is_none() && !txn.legacy_entries()? {
        1
    } else {
        match txn.get(BB_HEAD, key)? {
            Some(v) => u64::from_bytes(&v) + 1,
            None => u64::from(first.is_some()) + 1,
        }
    };
    // A head row only from the second version on (see `BB_HEAD`).
    if version > 1 {
        txn.put(BB_HEAD, key, version)?;
    }
    let meta = EntryMeta {
        writer: writer.to_string(),
        sha256: hex(&Sha256::digest(value)),
        written_at: now,
    };
    let meta = serde_json::to_vec(&meta).expect("entry metadata serializes");
    let mut row = Vec::with_capacity(4 + meta.len() + value.len());
    row.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    row.extend_from_slice(&meta);
    row.extend_from_slice(value);
    txn.put(BB_ENTRIES, (key, version), row.as_slice())?;
    Ok(version)
}

/// Draw the next number from `counter`. It is written to its table when `txn` is
/// finished, once however many numbers the transaction drew.
fn next(txn: &Tx<'_>, counter: &'static str) -> Result<u64, StoreError> {
    let last = match txn.counter(counter) {
        Some(n) => n,
        None => txn
            .get(COUNTERS, counter)?
            .map_or(0, |v| u64::from_bytes(&v)),
    };
    txn.set_counter(counter, last + 1);
    Ok(last + 1)
}

fn put_json<T: Serialize>(
    txn: &Tx<'_>,
    table: TableDefinition<'static, &str, &str>,
    id: &str,
    value: &T,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(value).expect("records serialize");
    txn.put(table, id, json.as_str())
}

/// `value` as JSON, written into room made for `room` bytes: serde_json's own starts at
/// 128 and grows by doubling, and the writer thread serializes records of some 500
/// bytes (tasks, three times a handoff) and 300 (audit records).
fn json_in(value: &impl Serialize, room: usize) -> String {
    let mut json = Vec::with_capacity(room);
    serde_json::to_writer(&mut json, value).expect("records serialize");
    String::from_utf8(json).expect("serde_json writes UTF-8")
}

/// Save `task` (see `decoded`: the writer keeps it decoded for the next write that reads
/// it back).
fn put_task(txn: &Tx<'_>, task: &TaskRecord) -> Result<(), StoreError> {
    let json = json_in(task, 640);
    if let Some(bytes) = txn.put_kept(TASKS, task.id.as_str(), json.as_str())? {
        txn.keep_task(bytes, task);
    }
    Ok(())
}

/// Task `id`, which must exist.
fn get_task(txn: &Tx<'_>, id: &str) -> Result<TaskRecord, StoreError> {
    try_get_task(txn, id)?.ok_or_else(|| StoreError::Missing("record", id.into()))
}

/// Task `id`, if it exists: as the writer keeps it decoded if it still does, else decoded
/// from its row.
fn try_get_task(txn: &Tx<'_>, id: &str) -> Result<Option<TaskRecord>, StoreError> {
    let Some(json) = txn.get(TASKS, id)? else {
        return Ok(None);
    };
    match txn.decoded_task(id, &json) {
        Some(task) => Ok(Some(task)),
        None => decode_bytes(id, &json).map(Some),
    }
}

/// Handoff `id` as the task numbered like it records it (`t-<n>` for `h-<n>`), read with
/// `task`, if that task names `id` as its handoff: a handoff with no row (see
/// [`HANDOFFS`]). The one rule for both of the store's ways to read.
fn paired(
    id: &str,
    task: impl FnOnce(&str) -> Result<Option<TaskRecord>, StoreError>,
) -> Result<Option<HandoffRecord>, StoreError> {
    let Some(n) = id.strip_prefix("h-") else {
        return Ok(None);
    };
    Ok(task(&format!("t-{n}"))?
        .filter(|t| t.handoff == id)
        .map(|t| HandoffRecord::of(&t)))
}

/// Handoff `id`, which must exist: its row, else its task's record (see [`HANDOFFS`]).
fn get_handoff(txn: &Tx<'_>, id: &str) -> Result<HandoffRecord, StoreError> {
    try_get_handoff(txn, id)?.ok_or_else(|| StoreError::Missing("handoff", id.into()))
}

/// Handoff `id`, if it exists: its row, else its task's record (see [`HANDOFFS`]).
fn try_get_handoff(txn: &Tx<'_>, id: &str) -> Result<Option<HandoffRecord>, StoreError> {
    if let Some(handoff) = try_get_json(txn, HANDOFFS, id)? {
        return Ok(Some(handoff));
    }
    paired(id, |task| try_get_task(txn, task))
}

fn get_json<T: for<'de> Deserialize<'de>>(
    txn: &Tx<'_>,
    table: TableDefinition<'static, &str, &str>,
    id: &str,
) -> Result<T, StoreError> {
    try_get_json(txn, table, id)?.ok_or_else(|| StoreError::Missing("record", id.into()))
}

fn try_get_json<T: for<'de> Deserialize<'de>>(
    txn: &Tx<'_>,
    table: TableDefinition<'static, &str, &str>,
    id: &str,
) -> Result<Option<T>, StoreError> {
    match txn.get(table, id)? {
        Some(json) => decode_bytes(id, &json).map(Some),
        None => Ok(None),
    }
}

fn decode_bytes<T: for<'de> Deserialize<'de>>(id: &str, json: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(json).map_err(|e| StoreError::Corrupt(id.to_string(), e.to_string()))
}

fn decode<T: for<'de> Deserialize<'de>>(id: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(id.to_string(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blackboard row reads back as written; cut short, it is refused with the key and
    /// version it belongs to, not read as a shorter value.
    #[test]
    fn an_entry_row_cut_short_is_refused_naming_its_key() {
        let meta = br#"{"writer":"researcher","sha256":"00","written_at":7}"#;
        let mut row = (meta.len() as u32).to_le_bytes().to_vec();
        row.extend_from_slice(meta);
        row.extend_from_slice(b"the value");
        let read = entry("notes/k", 3, &row).unwrap();
        assert_eq!(
            (read.writer.as_str(), read.written_at, &read.value[..]),
            ("researcher", 7, &b"the value"[..])
        );
        for cut in [2, 4 + meta.len() - 1] {
            let err = entry("notes/k", 3, &row[..cut]).unwrap_err().to_string();
            assert_eq!(
                err,
                "store: damaged record `notes/k v3`: entry row cut short"
            );
        }
    }
}
