//! Chunks of `stream` handoffs. Each chunk is a new version of the stream key, so the
//! audit trail covers streams like any other write; the reader's task is made ready at
//! the first chunk (or at the close of an empty stream).

use super::commit::Ack;
use super::queue::{Outcome, Refusal, make_ready};
use super::wal::Tx;
use super::{
    BB_META, BB_VALUES, HANDOFFS, Queued, STREAMS, Store, StoreError, TASKS, get_json, now_ms, put,
    put_json, try_get_json,
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

impl Store {
    /// Append `chunk` to the stream `writer` opened with handoff `handoff`. Returns the
    /// chunk's version and whether this woke the reader.
    pub fn stream_write(
        &self,
        writer: &str,
        handoff: &str,
        chunk: &[u8],
    ) -> Queued<Result<(u64, bool), Refusal>> {
        let (writer, handoff, chunk) = (writer.to_string(), handoff.to_string(), chunk.to_vec());
        self.write(Ack::Acknowledged, move |txn| {
            let mut meta = match open_stream_of(txn, &writer, &handoff)? {
                Ok(m) => m,
                Err(r) => return Ok(Err(r)),
            };
            let version = put(txn, &meta.key, &writer, &chunk, now_ms())?;
            meta.chunks += 1;
            put_json(txn, STREAMS, &meta.key.clone(), &meta)?;
            let woke = wake_reader(txn, &meta)?;
            Ok(Ok((version, woke)))
        })
    }

    /// Close the stream `writer` opened with `handoff`. Returns whether this woke the
    /// reader (an empty stream). Closing a closed stream is refused.
    pub fn stream_close(&self, writer: &str, handoff: &str) -> Queued<Result<bool, Refusal>> {
        let (writer, handoff) = (writer.to_string(), handoff.to_string());
        self.write(Ack::Acknowledged, move |txn| close(txn, &writer, &handoff))
    }

    /// Close every stream still open that `writer` opened with `handoffs`, in one
    /// commit: an activation that ends must not leave its reader waiting. Returns how
    /// many were closed.
    pub fn close_streams_of(&self, writer: &str, handoffs: &[String]) -> Queued<usize> {
        let (writer, handoffs) = (writer.to_string(), handoffs.to_vec());
        self.write(Ack::Acknowledged, move |txn| {
            let mut closed = 0;
            for h in &handoffs {
                if close(txn, &writer, h)?.is_ok() {
                    closed += 1;
                }
            }
            Ok(closed)
        })
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
    let task: TaskRecord = get_json(txn, TASKS, &meta.task)?;
    if task.agent.as_deref().unwrap_or(&task.to) != reader {
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
    let entry = super::entry(
        &*txn.open_table(BB_META)?,
        &*txn.open_table(BB_VALUES)?,
        key,
        after + 1,
    )?
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

/// The body of [`Store::stream_close`].
fn close(txn: &Tx<'_>, writer: &str, handoff: &str) -> Outcome<bool> {
    let mut meta = match open_stream_of(txn, writer, handoff)? {
        Ok(m) => m,
        Err(r) => return Ok(Err(r)),
    };
    meta.closed = true;
    put_json(txn, STREAMS, &meta.key.clone(), &meta)?;
    let woke = wake_reader(txn, &meta)?;
    Ok(Ok(woke))
}

fn open_stream_of(txn: &Tx<'_>, writer: &str, handoff: &str) -> Outcome<StreamMeta> {
    let Some(h) = try_get_json::<HandoffRecord>(txn, HANDOFFS, handoff)? else {
        return Ok(Err(Refusal::NotFound(format!("no handoff `{handoff}`"))));
    };
    if h.from != writer || h.pattern != Pattern::Stream {
        return Ok(Err(Refusal::Denied(format!(
            "agent `{writer}` did not open a stream with handoff `{handoff}`"
        ))));
    }
    let key = h.key.unwrap_or_default();
    let meta: StreamMeta = get_json(txn, STREAMS, &key)?;
    if meta.closed {
        return Ok(Err(Refusal::Invalid(format!(
            "the stream at `{key}` is closed"
        ))));
    }
    Ok(Ok(meta))
}

/// Make the reader's task ready if it still waits for its first chunk.
fn wake_reader(txn: &Tx<'_>, meta: &StreamMeta) -> Result<bool, StoreError> {
    let mut task: TaskRecord = get_json(txn, TASKS, &meta.task)?;
    if task.status != Status::Waiting {
        return Ok(false);
    }
    task.status = Status::Pending;
    make_ready(txn, &task)?;
    Ok(true)
}
