//! The tamper-evident audit log: every handoff and every read of a key (granted or
//! denied) is appended with the hash of the record before it, so editing, dropping or
//! reordering any record breaks the chain at that record.
//!
//! `hash = sha256(prev-hash || record-without-hash as JSON)`; the first record's
//! `prev` is 64 zeros.

use std::ops::ControlFlow;

use redb::{ReadableDatabase as _, ReadableTable as _, TableHandle as _, Value as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::recent::Bytes;
use super::wal::Tx;
use super::{AUDIT, Queued, Store, StoreError, now_ms};
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

/// Append `e` to the log inside `txn`.
pub(super) fn append(txn: &Tx<'_>, e: AuditEvent<'_>) -> Result<(), StoreError> {
    let head = match txn.audit_head() {
        Some(head) => head,
        None => match txn.last(AUDIT)? {
            Some((seq, json)) => {
                let last: AuditRecord = super::decode_bytes("audit", &json)?;
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
    txn.put(AUDIT, seq, json.as_str())?;
    txn.set_audit_head(Head {
        seq,
        hash: record.hash,
    });
    Ok(())
}

impl Store {
    /// Record that `agent`, handling `task`, read `key` (or was denied it).
    pub fn audit_read(
        &self,
        agent: &str,
        task: &str,
        key: &str,
        outcome: Result<u64, &str>,
    ) -> Queued<()> {
        let (event, detail) = match outcome {
            Ok(version) => ("read", format!("version {version}")),
            Err(why) => ("denied", why.to_string()),
        };
        let (agent, task, key) = (agent.to_string(), task.to_string(), key.to_string());
        self.write(super::commit::Ack::Lazy, move |txn| {
            append(
                txn,
                AuditEvent {
                    event,
                    agent: &agent,
                    key: Some(&key),
                    task: Some(&task),
                    detail: detail.clone(),
                },
            )
        })
    }

    /// Every audit record, oldest first.
    pub fn audit_log(&self) -> Result<Vec<AuditRecord>, StoreError> {
        let mut records = Vec::new();
        let walked = self.each_audit_row(|_, json| match super::decode_bytes("audit", json) {
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
    /// redb's, then those kept in memory after them (see `recent`). A record both hold,
    /// moved to redb by a checkpoint meanwhile, is handed once.
    fn each_audit_row<B>(
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
            if let ControlFlow::Break(b) = each(last, v.value().as_bytes()) {
                return Ok(ControlFlow::Break(b));
            }
        }
        for (seq, json) in kept.iter().filter(|(seq, _)| *seq > last) {
            if let ControlFlow::Break(b) = each(*seq, json) {
                return Ok(ControlFlow::Break(b));
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Walk the chain and report the first record that is out of place or altered.
    pub fn audit_verify(&self) -> Result<AuditVerdict, StoreError> {
        let mut prev = GENESIS.to_string();
        let mut expected = 1;
        let walked = self.each_audit_row(|seq, json| {
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
