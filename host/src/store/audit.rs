//! The tamper-evident audit log: every handoff and every read of a key (granted or
//! denied) is appended with the hash of the record before it, so editing, dropping or
//! reordering any record breaks the chain at that record.
//!
//! `hash = sha256(prev-hash || record-without-hash as JSON)`; the first record's
//! `prev` is 64 zeros.

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use redb::{ReadableDatabase as _, ReadableTable as _, TableHandle as _, Value as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::commit::{Ack, Write};
use super::recent::Bytes;
use super::wal::Tx;
use super::{AUDIT, Store, StoreError, now_ms};
use crate::manifest::hex;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audited event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the log, from 1.
    pub seq: u64,
    /// Unix ms.
    pub at: u64,
    /// `handoff`, `read` or `denied`.
    pub event: String,
    /// The agent that acted.
    pub agent: String,
    /// The key handed off or read.
    pub key: Option<String>,
    /// The task concerned (the created task for a handoff, the reader's task for a read).
    pub task: Option<String>,
    /// What happened, for people: `researcher -> writer (blackboard)`, `version 3`.
    pub detail: String,
    /// The previous record's hash.
    pub prev: String,
    /// This record's hash.
    pub hash: String,
}

/// What `audit_verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditVerdict {
    /// Every record links to the one before and hashes to what it says.
    Whole {
        /// How many records.
        records: u64,
    },
    /// The first record that does not.
    Broken {
        /// Its position.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// An event to append; the store fills in position, time and hashes.
pub(super) struct AuditEvent<'a> {
    pub event: &'a str,
    pub agent: &'a str,
    pub key: Option<&'a str>,
    pub task: Option<&'a str>,
    pub detail: String,
}

/// The chain's last record: its position and hash, all an append needs. The writer
/// thread keeps it from one transaction to the next, so an append does not read and
/// decode the record before it; a transaction that does not commit loses it, and the
/// next append reads it from the table again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Head {
    seq: u64,
    hash: String,
}

/// `sha256(prev || body)`, where `body` is the record's JSON with `hash` empty.
fn chain_hash(prev: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(body);
    hex(&h.finalize())
}

fn digest(record: &AuditRecord) -> String {
    let mut unhashed = record.clone();
    unhashed.hash = String::new();
    let body = serde_json::to_vec(&unhashed).expect("audit records serialize");
    chain_hash(&record.prev, &body)
}

/// The records of the audit log's row at `first`, with their numbers: a line each, the
/// first numbered `first`, the next one more. A transaction writes its records as one
/// row (see `Tx::append_audit`); a store written before that holds a row for each.
fn records(first: u64, row: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    (first..).zip(row.split(|b| *b == b'\n'))
}

/// Append `e` to the log inside `txn`.
pub(super) fn append(txn: &Tx<'_>, e: AuditEvent<'_>) -> Result<(), StoreError> {
    let head = match txn.audit_head() {
        Some(head) => head,
        None => match txn.last(AUDIT)? {
            Some((first, row)) => {
                // A row splits into one line at least, if an empty one.
                let (seq, json) = records(first, &row).last().unwrap_or((first, &[]));
                let last: AuditRecord = super::decode_bytes("audit", json)?;
                Head {
                    seq,
                    hash: last.hash,
                }
            }
            None => Head {
                seq: 0,
                hash: GENESIS.to_string(),
            },
        },
    };
    let seq = head.seq + 1;
    let mut record = AuditRecord {
        seq,
        at: now_ms(),
        event: e.event.into(),
        agent: e.agent.into(),
        key: e.key.map(str::to_string),
        task: e.task.map(str::to_string),
        detail: e.detail,
        prev: head.hash,
        hash: String::new(),
    };
    // With room for the hash put in below.
    let mut json = super::json_in(&record, 512);
    record.hash = chain_hash(&record.prev, json.as_bytes());
    // The record as stored is the body hashed with `hash` filled in: it is the last
    // field, so its empty string closes the body, and the hash goes in between its
    // quotes instead of serializing the record a second time.
    let open = json.len() - "\"}".len();
    debug_assert_eq!(&json[open - "\"hash\":\"".len()..], "\"hash\":\"\"}");
    json.insert_str(open, &record.hash);
    txn.append_audit(seq, json);
    txn.set_audit_head(Head {
        seq,
        hash: record.hash,
    });
    Ok(())
}

/// Whether the audit records of one activation's reads were all stored. The host queues
/// each read's record without waiting for it (waiting put a commit between the agent's
/// last read and the write that records its end, about a tenth of a blackboard
/// handoff's time under load), and hands this to the write that records the end, which
/// fails the task instead of storing what the activation produced if a record failed.
///
/// That check is exact because writes apply in the order they were queued: when the
/// end's write applies, every record queued before it has either finished (committed,
/// or failed and marked here) or been applied in the same transaction as the end, with
/// which it commits or fails.
#[derive(Debug, Default)]
pub struct ReadAudits {
    failed: Mutex<Option<String>>,
}

impl ReadAudits {
    /// A read's record could not be stored, because of `e`; the first reason is kept.
    pub fn fail(&self, e: &StoreError) {
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        failed.get_or_insert_with(|| e.to_string());
    }

    /// Why a read's record could not be stored, if one could not.
    pub fn failed(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The reason an activation's end is recorded with instead of its own, if one of its
    /// reads went unaudited: the agent was handed data the audit log does not show.
    pub(super) fn unaudited(&self) -> Option<String> {
        let why = self.failed()?;
        Some(format!(
            "trap: the audit record of a read could not be stored: {why}"
        ))
    }
}

/// A read's audit record as one write, which marks its activation's [`ReadAudits`] if
/// it does not commit.
struct ReadRecord {
    agent: String,
    task: String,
    key: String,
    event: &'static str,
    detail: String,
    audits: Arc<ReadAudits>,
}

impl Write for ReadRecord {
    fn ack(&self) -> Ack {
        Ack::Lazy
    }

    fn apply(&mut self, tx: &Tx<'_>) -> Result<(), StoreError> {
        append(
            tx,
            AuditEvent {
                event: self.event,
                agent: &self.agent,
                key: Some(&self.key),
                task: Some(&self.task),
                detail: self.detail.clone(),
            },
        )
    }

    fn finish(self: Box<Self>, outcome: Result<(), StoreError>) {
        if let Err(e) = outcome {
            self.audits.fail(&e);
        }
    }
}

impl Store {
    /// Queue the record that `agent`, handling `task`, read `key` (or was denied it); if
    /// it cannot be stored, `audits` is marked (see [`ReadAudits`]).
    pub fn audit_read(
        &self,
        agent: &str,
        task: &str,
        key: &str,
        outcome: Result<u64, &str>,
        audits: &Arc<ReadAudits>,
    ) {
        let (event, detail) = match outcome {
            Ok(version) => ("read", format!("version {version}")),
            Err(why) => ("denied", why.to_string()),
        };
        let record = ReadRecord {
            agent: agent.to_string(),
            task: task.to_string(),
            key: key.to_string(),
            event,
            detail,
            audits: audits.clone(),
        };
        if let Err(e) = self.syncer.push(Box::new(record)) {
            audits.fail(&e);
        }
    }

    /// Every audit record, oldest first.
    pub fn audit_log(&self) -> Result<Vec<AuditRecord>, StoreError> {
        let mut records = Vec::new();
        let walked =
            self.each_audit_record(|_, json| match super::decode_bytes("audit", json) {
                Ok(record) => {
                    records.push(record);
                    ControlFlow::Continue(())
                }
                Err(e) => ControlFlow::Break(e),
            })?;
        match walked {
            ControlFlow::Continue(()) => Ok(records),
            ControlFlow::Break(e) => Err(e),
        }
    }

    /// Hand `each` every audit record's number and bytes, oldest first, until it breaks:
    /// redb's, then those kept in memory after them (see `recent`). A row both hold,
    /// moved to redb by a checkpoint meanwhile, is handed once.
    fn each_audit_record<B>(
        &self,
        mut each: impl FnMut(u64, &[u8]) -> ControlFlow<B>,
    ) -> Result<ControlFlow<B>, StoreError> {
        // Kept rows first: one that leaves for redb in between is then in the
        // transaction begun after.
        let mut kept: Vec<(u64, Bytes)> = self
            .recent
            .rows(AUDIT.name(), |_| true)
            .into_iter()
            .map(|(k, v)| (u64::from_bytes(&k), v))
            .collect();
        kept.sort_unstable_by_key(|(seq, _)| *seq);
        let txn = self.db.begin_read()?;
        let mut last = 0;
        for row in txn.open_table(AUDIT)?.iter()? {
            let (k, v) = row?;
            last = k.value();
            for (seq, json) in records(last, v.value().as_bytes()) {
                if let ControlFlow::Break(b) = each(seq, json) {
                    return Ok(ControlFlow::Break(b));
                }
            }
        }
        // Rows, not records, are what redb and memory may both hold.
        for (first, row) in kept.iter().filter(|(first, _)| *first > last) {
            for (seq, json) in records(*first, row) {
                if let ControlFlow::Break(b) = each(seq, json) {
                    return Ok(ControlFlow::Break(b));
                }
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Walk the chain and report the first record that is out of place or altered.
    pub fn audit_verify(&self) -> Result<AuditVerdict, StoreError> {
        let mut prev = GENESIS.to_string();
        let mut expected = 1;
        let walked = self.each_audit_record(|seq, json| {
            let broken = |reason: String| ControlFlow::Break(AuditVerdict::Broken { seq, reason });
            let record: AuditRecord = match serde_json::from_slice(json) {
                Ok(r) => r,
                Err(e) => return broken(format!("does not decode: {e}")),
            };
            if seq != expected || record.seq != seq {
                return broken(format!(
                    "expected record #{expected} here, found #{} stored at #{seq}",
                    record.seq
                ));
            }
            if record.prev != prev {
                return broken(format!(
                    "links to {}, but the record before hashes to {prev}",
                    record.prev
                ));
            }
            let actual = digest(&record);
            if record.hash != actual {
                return broken(format!(
                    "its content hashes to {actual}, but it says {}",
                    record.hash
                ));
            }
            prev = record.hash;
            expected += 1;
            ControlFlow::Continue(())
        })?;
        Ok(match walked {
            ControlFlow::Break(verdict) => verdict,
            ControlFlow::Continue(()) => AuditVerdict::Whole {
                records: expected - 1,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::STORE_FILE;
    use crate::store::commit::tests::{group_store, handoff, hold_writer, queued};

    /// The rows of the audit log in the redb file of the stopped store in `dir`: each
    /// one's key and how many records it holds.
    fn rows(dir: &std::path::Path) -> Vec<(u64, usize)> {
        let db = redb::Database::open(dir.join(STORE_FILE)).unwrap();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(AUDIT).unwrap();
        let rows = table.iter().unwrap().map(|row| {
            let (k, v) = row.unwrap();
            (k.value(), v.value().lines().count())
        });
        rows.collect()
    }

    /// The records a batch of writes appends share one row, written once, and read back
    /// numbered in order as a whole chain with the rows before and after it, from memory
    /// and, after a restart, from redb.
    #[test]
    fn a_batch_s_audit_records_share_one_row() {
        let (dir, store) = group_store();
        store.hand_off(handoff(0)).wait().unwrap().unwrap();
        let release = hold_writer(&store);
        let batch: Vec<_> = (1..5).map(|i| store.hand_off(handoff(i))).collect();
        queued(&store, 4);
        release();
        for write in batch {
            write.wait().unwrap().unwrap();
        }
        store.hand_off(handoff(5)).wait().unwrap().unwrap();
        let whole = |store: &Store| {
            let seqs: Vec<u64> = store.audit_log().unwrap().iter().map(|r| r.seq).collect();
            assert_eq!(seqs, (1..=6).collect::<Vec<_>>());
            assert_eq!(
                store.audit_verify().unwrap(),
                AuditVerdict::Whole { records: 6 }
            );
        };
        whole(&store);
        drop(store);
        assert_eq!(rows(dir.path()), [(1, 1), (2, 4), (6, 1)]);
        whole(&Store::open(dir.path()).unwrap());
    }
}
