//! Chunks of `stream` handoffs. Each chunk is a new version of the stream key, so the
//! audit trail covers streams like any other write; the reader's task is made ready at
//! the first chunk (or at the close of an empty stream).
//!
//! A stream is written once, like a hand-off: a task delivered again carries on the stream
//! its earlier delivery opened, and the chunks it writes again are matched by position
//! with those the stream holds, not appended twice. It stays open until the writer closes
//! it or its task ends for good (completed, or failed with no delivery to come), so the
//! reader sees one stream, whole, however many deliveries wrote it.

use super::commit::Ack;
use super::queue::{Outcome, Refusal, make_ready};
use super::wal::Tx;
use super::{
    Queued, STREAMS, Store, StoreError, get_handoff, get_json, get_task, now_ms, put, put_json,
    try_get_handoff, try_get_json,
};
use crate::store::records::*;

/// What a read of a stream found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRead {
    /// The next chunk.
    Chunk(EntryRecord),
    /// The writer closed the stream and every chunk was read.
    Closed,
    /// Nothing new yet; the writer is still going.
    Pending,
}

/// A write to a stream by an activation of the task that opened it. A stream belongs to
/// the task whose activation handed it off, whichever worker runs that task now: a task
/// delivered again (its activation trapped, or the host died) carries on the same stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamWriter {
    /// The agent running the activation; what its chunks record as their writer.
    pub agent: String,
    /// The task it runs.
    pub task: String,
    /// The handoff that opened the stream.
    pub handoff: String,
    /// Chunks this activation wrote to the stream before, counting one its hand-off
    /// carried: the position of the next. A chunk at a position the stream already holds
    /// was written by an earlier delivery of the task, and is not written again.
    pub written: u64,
}

/// What a stream write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The chunk's version of the stream key.
    pub version: u64,
    /// Whether an earlier delivery of the task wrote this chunk already, so nothing new
    /// was recorded and `version` is the original's.
    pub replayed: bool,
}

impl Store {
    /// Append `chunk` to the stream `by.task` opened with `by.handoff`, at position
    /// `by.written + 1`; a chunk the stream holds at that position already is returned,
    /// not written again (see [`StreamWriter`]).
    pub fn stream_write(
        &self,
        by: &StreamWriter,
        chunk: &[u8],
    ) -> Queued<Result<Written, Refusal>> {
        let (by, chunk) = (by.clone(), chunk.to_vec());
        self.write(Ack::Acknowledged, move |txn| write_chunk(txn, &by, &chunk))
    }

    /// Close the stream `by.task` opened with `by.handoff`. Returns whether an earlier
    /// delivery of the task had closed it after the chunks this one wrote, so nothing
    /// changed. A stream closed before the chunks this activation wrote is refused.
    pub fn stream_close(&self, by: &StreamWriter) -> Queued<Result<bool, Refusal>> {
        let by = by.clone();
        self.write(Ack::Acknowledged, move |txn| close(txn, &by))
    }

    /// Read the chunk after version `after` of the stream at `key`, for `reader`, and
    /// note the read (the first read's time is what a stream's report shows).
    pub fn stream_read(
        &self,
        reader: &str,
        key: &str,
        after: u64,
    ) -> Queued<Result<StreamRead, Refusal>> {
        let (reader, key) = (reader.to_string(), key.to_string());
        self.write(Ack::Lazy, move |txn| read_chunk(txn, &reader, &key, after))
    }
}

/// The body of [`Store::stream_read`]. The chunk is read in the same transaction as the
/// stream's record: a chunk written in the same batch is not on any snapshot yet.
fn read_chunk(txn: &Tx<'_>, reader: &str, key: &str, after: u64) -> Outcome<StreamRead> {
    let Some(mut meta) = try_get_json::<StreamMeta>(txn, STREAMS, key)? else {
        return Ok(Err(Refusal::NotFound(format!("no stream at `{key}`"))));
    };
    let task: TaskRecord = get_task(txn, &meta.task)?;
    if task.runner() != reader {
        return Ok(Err(Refusal::Denied(format!(
            "agent `{reader}` is not the reader of the stream at `{key}`"
        ))));
    }
    if after >= meta.chunks {
        return Ok(Ok(if meta.closed {
            StreamRead::Closed
        } else {
            StreamRead::Pending
        }));
    }
    let entry = super::entry_in(txn, key, after + 1)?
        .ok_or_else(|| StoreError::Missing("chunk", format!("{key}@{}", after + 1)))?;
    meta.read = meta.read.max(after + 1);
    meta.first_read_at.get_or_insert(now_ms());
    put_json(txn, STREAMS, key, &meta)?;
    super::audit::append(
        txn,
        super::audit::AuditEvent {
            event: "read",
            agent: reader,
            key: Some(key),
            task: Some(&meta.task),
            detail: format!("stream chunk {}", entry.version),
        },
    )?;
    Ok(Ok(StreamRead::Chunk(entry)))
}

/// The body of [`Store::stream_write`].
fn write_chunk(txn: &Tx<'_>, by: &StreamWriter, chunk: &[u8]) -> Outcome<Written> {
    let mut meta = match stream_of(txn, by)? {
        Ok(m) => m,
        Err(r) => return Ok(Err(r)),
    };
    let at = by.written + 1;
    if at <= meta.chunks {
        return Ok(Ok(Written {
            version: at,
            replayed: true,
        }));
    }
    if meta.closed {
        return Ok(Err(closed(&meta)));
    }
    if at > meta.chunks + 1 {
        return Ok(Err(Refusal::Invalid(format!(
            "chunk {at} of the stream at `{}` would follow chunk {}, its last",
            meta.key, meta.chunks
        ))));
    }
    let version = put(txn, &meta.key, &by.agent, chunk, now_ms())?;
    meta.chunks += 1;
    put_json(txn, STREAMS, &meta.key.clone(), &meta)?;
    wake_reader(txn, &meta)?;
    Ok(Ok(Written {
        version,
        replayed: false,
    }))
}

/// The body of [`Store::stream_close`].
fn close(txn: &Tx<'_>, by: &StreamWriter) -> Outcome<bool> {
    let meta = match stream_of(txn, by)? {
        Ok(m) => m,
        Err(r) => return Ok(Err(r)),
    };
    if meta.closed {
        return Ok(if by.written <= meta.chunks {
            Ok(true)
        } else {
            Err(closed(&meta))
        });
    }
    close_open(txn, meta)?;
    Ok(Ok(false))
}

/// Close the stream of `meta`, open until now, and wake its reader if it waited for a
/// first chunk.
fn close_open(txn: &Tx<'_>, mut meta: StreamMeta) -> Result<(), StoreError> {
    meta.closed = true;
    put_json(txn, STREAMS, &meta.key.clone(), &meta)?;
    wake_reader(txn, &meta)?;
    Ok(())
}

/// Close the stream handoff `handoff` opened, if it opened one still open: the task that
/// made the handoff has ended for good, and its reader must not wait for more.
pub(super) fn close_if_open(txn: &Tx<'_>, handoff: &str) -> Result<(), StoreError> {
    let h = get_handoff(txn, handoff)?;
    let Some(key) = h.key.filter(|_| h.pattern == Pattern::Stream) else {
        return Ok(());
    };
    match try_get_json::<StreamMeta>(txn, STREAMS, &key)? {
        Some(meta) if meta.handoff == h.id && !meta.closed => close_open(txn, meta),
        _ => Ok(()),
    }
}

fn closed(meta: &StreamMeta) -> Refusal {
    Refusal::Invalid(format!("the stream at `{}` is closed", meta.key))
}

/// The stream `by.handoff` opened, if `by.task` opened it.
fn stream_of(txn: &Tx<'_>, by: &StreamWriter) -> Outcome<StreamMeta> {
    let Some(h) = try_get_handoff(txn, &by.handoff)? else {
        return Ok(Err(Refusal::NotFound(format!(
            "no handoff `{}`",
            by.handoff
        ))));
    };
    if h.parent.as_deref() != Some(by.task.as_str()) || h.pattern != Pattern::Stream {
        return Ok(Err(Refusal::Denied(format!(
            "agent `{}` did not open a stream with handoff `{}` in task `{}`",
            by.agent, by.handoff, by.task
        ))));
    }
    let key = h.key.unwrap_or_default();
    Ok(Ok(get_json(txn, STREAMS, &key)?))
}

/// Make the reader's task ready if it still waits for its first chunk.
fn wake_reader(txn: &Tx<'_>, meta: &StreamMeta) -> Result<(), StoreError> {
    let mut task: TaskRecord = get_task(txn, &meta.task)?;
    if task.status != Status::Waiting {
        return Ok(());
    }
    task.status = Status::Pending;
    make_ready(txn, &task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::queue::tests::{end_task, only, running, work};
    use crate::store::{CommitPolicy, NewHandoff};

    /// A store with one running task of agent `w`, which opened an empty stream to `r`
    /// as its first hand-off: the task, and the writer of that stream.
    fn writing(store: &Store) -> (TaskRecord, StreamWriter) {
        let task = running(store, "w");
        let opened = store
            .hand_off(NewHandoff {
                pattern: Pattern::Stream,
                data: None,
                ..work("w", Some(task.clone()), "r", Some(0))
            })
            .wait()
            .unwrap()
            .unwrap();
        let by = StreamWriter {
            agent: "w".into(),
            task: task.id.clone(),
            handoff: opened.handoff.id,
            written: 0,
        };
        (task, by)
    }

    fn at(by: &StreamWriter, written: u64) -> StreamWriter {
        StreamWriter {
            written,
            ..by.clone()
        }
    }

    /// Write `chunk` at position `written` of `by`'s stream; the version it got.
    fn version(store: &Store, by: &StreamWriter, written: u64, chunk: &[u8]) -> u64 {
        let w = store.stream_write(&at(by, written), chunk).wait();
        w.unwrap().unwrap().version
    }

    fn chunks(store: &Store, by: &StreamWriter) -> Vec<Vec<u8>> {
        let key = store.handoff(&by.handoff).unwrap().unwrap().key.unwrap();
        let history = store.history(&key).unwrap();
        history.into_iter().map(|e| e.value).collect()
    }

    /// Later deliveries get the chunks and the close of earlier ones back, and carry the
    /// stream on after them; only a write past a close is refused.
    #[test]
    fn each_position_of_a_stream_is_written_once_and_a_close_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (_, by) = writing(&store);
        let write = |written, chunk: &[u8]| store.stream_write(&at(&by, written), chunk).wait();
        let first = write(0, b"a").unwrap().unwrap();
        assert_eq!(
            first,
            Written {
                version: 1,
                replayed: false
            }
        );

        // A second delivery writes "a", "b", "c": "a" is the first one's.
        let again = write(0, b"a, again").unwrap().unwrap();
        assert_eq!(
            again,
            Written {
                version: 1,
                replayed: true
            }
        );
        assert_eq!(write(1, b"b").unwrap().unwrap().version, 2);
        assert_eq!(write(2, b"c").unwrap().unwrap().version, 3);
        assert_eq!(store.stream_close(&at(&by, 3)).wait().unwrap(), Ok(false));

        // A third delivery replays all of it; one chunk more is past the close.
        assert!(write(2, b"c").unwrap().unwrap().replayed);
        assert_eq!(store.stream_close(&at(&by, 3)).wait().unwrap(), Ok(true));
        let key = store.handoff(&by.handoff).unwrap().unwrap().key.unwrap();
        assert_eq!(
            write(3, b"d").unwrap(),
            Err(Refusal::Invalid(format!("the stream at `{key}` is closed")))
        );
        assert_eq!(
            chunks(&store, &by),
            [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        let meta = store.stream(&key).unwrap().unwrap();
        assert_eq!((meta.chunks, meta.closed), (3, true));
    }

    /// A key's versions go on whatever of them a checkpoint has moved to redb: a key
    /// written once has no head row, so its second version must find the first in redb,
    /// and readers then see the newest, under either commit policy.
    #[test]
    fn a_key_s_versions_go_on_once_the_first_is_in_redb() {
        for policy in [CommitPolicy::Group, CommitPolicy::Immediate] {
            let dir = tempfile::tempdir().unwrap();
            let open = || {
                let store = Store::open(dir.path()).unwrap();
                store.set_commit_policy(policy);
                store
            };
            let store = open();
            let (_, by) = writing(&store);
            assert_eq!(version(&store, &by, 0, b"a"), 1);
            let key = store.handoff(&by.handoff).unwrap().unwrap().key.unwrap();
            assert_eq!(store.read(&key, None).unwrap().unwrap().value, b"a");
            drop(store); // closed: every row is in redb
            let store = open();
            assert_eq!(store.read(&key, None).unwrap().unwrap().value, b"a");
            assert_eq!(store.keys(&key).unwrap(), vec![key.clone()]);
            assert_eq!(version(&store, &by, 1, b"b"), 2, "{policy:?}");
            assert_eq!(store.read(&key, None).unwrap().unwrap().value, b"b");
            drop(store);
            let store = open();
            assert_eq!(version(&store, &by, 2, b"c"), 3, "{policy:?}");
            assert_eq!(
                chunks(&store, &by),
                [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
            );
            assert_eq!(store.read(&key, None).unwrap().unwrap().version, 3);
            assert_eq!(store.keys(&key).unwrap(), vec![key.clone()]);
        }
    }

    /// A key written before `bb_entries` (its version in `bb_meta` and `bb_values`, its
    /// newest in `bb_head`) gets its next version after that one, and reads back whole.
    #[test]
    fn a_key_of_the_earlier_layout_gets_its_next_version() {
        use crate::store::{BB_ENTRIES, BB_HEAD, BB_META, BB_VALUES, STORE_FILE};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (_, by) = writing(&store);
        assert_eq!(version(&store, &by, 0, b"a"), 1);
        let key = store.handoff(&by.handoff).unwrap().unwrap().key.unwrap();
        let before = store.read(&key, None).unwrap().unwrap();
        drop(store);

        let db = redb::Database::open(dir.path().join(STORE_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut entries = txn.open_table(BB_ENTRIES).unwrap();
            let row = entries.remove((key.as_str(), 1)).unwrap().unwrap();
            let row = row.value();
            let len = u32::from_le_bytes(row[..4].try_into().unwrap()) as usize;
            let meta = std::str::from_utf8(&row[4..4 + len]).unwrap();
            let mut table = txn.open_table(BB_META).unwrap();
            table.insert((key.as_str(), 1), meta).unwrap();
            let mut table = txn.open_table(BB_VALUES).unwrap();
            table.insert((key.as_str(), 1), &row[4 + len..]).unwrap();
            txn.open_table(BB_HEAD)
                .unwrap()
                .insert(key.as_str(), 1)
                .unwrap();
        }
        txn.commit().unwrap();
        drop(db);

        let store = Store::open(dir.path()).unwrap();
        store.set_commit_policy(CommitPolicy::Group);
        assert_eq!(store.read(&key, None).unwrap().unwrap(), before);
        assert_eq!(version(&store, &by, 1, b"b"), 2);
        assert_eq!(chunks(&store, &by), [b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(store.keys(&key).unwrap(), vec![key.clone()]);
    }

    /// Only the task that opened a stream writes to it, whichever agent runs it; a write
    /// from another task of the same agent, or to a handoff that is no stream, is refused.
    #[test]
    fn a_stream_takes_chunks_from_its_own_task_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (task, by) = writing(&store);
        let other = StreamWriter {
            task: "t-99".into(),
            ..by.clone()
        };
        let refused = store.stream_write(&other, b"x").wait().unwrap();
        assert_eq!(
            refused,
            Err(Refusal::Denied(format!(
                "agent `w` did not open a stream with handoff `{}` in task `t-99`",
                by.handoff
            )))
        );
        let plain = store
            .hand_off(work("w", Some(task), "r", Some(1)))
            .wait()
            .unwrap()
            .unwrap();
        let not_a_stream = StreamWriter {
            handoff: plain.handoff.id.clone(),
            ..by.clone()
        };
        assert!(matches!(
            store.stream_write(&not_a_stream, b"x").wait().unwrap(),
            Err(Refusal::Denied(_))
        ));
        // Another worker running the task after a redelivery may go on.
        let worker = StreamWriter {
            agent: "w2".into(),
            ..by.clone()
        };
        assert!(store.stream_write(&worker, b"y").wait().unwrap().is_ok());
        assert_eq!(chunks(&store, &by), [b"y".to_vec()]);
    }

    /// A stream left open stays open while its task may be delivered again, and is closed
    /// in the commit that ends the task for good; an empty one wakes its reader then.
    #[test]
    fn a_stream_left_open_is_closed_when_its_task_ends_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for end in ["complete", "fail"] {
            let (task, by) = writing(&store);
            let key = store.handoff(&by.handoff).unwrap().unwrap().key.unwrap();
            let reader = store.stream(&key).unwrap().unwrap().task;
            assert_eq!(
                store.task(&reader).unwrap().unwrap().status,
                Status::Waiting
            );
            // The host dies: the running task is delivered again, and the stream waits.
            assert_eq!(store.recover().wait().unwrap(), 1);
            assert!(!store.stream(&key).unwrap().unwrap().closed, "{end}");
            let again = store.claim_ready(1, only("w")).wait().unwrap();
            assert_eq!(again.first().map(|t| &t.id), Some(&task.id));

            end_task(&store, &task.id, end).wait().unwrap();
            let meta = store.stream(&key).unwrap().unwrap();
            assert!(meta.closed && meta.chunks == 0, "{end}: {meta:?}");
            assert_eq!(
                store.task(&reader).unwrap().unwrap().status,
                Status::Pending,
                "{end}: the reader is woken to find the stream closed"
            );
        }
    }
}
