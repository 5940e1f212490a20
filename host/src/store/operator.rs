//! The operator inbox: tasks an `escalate` fallback handed to a human, until resolved.

use redb::{ReadableDatabase as _, ReadableTable as _};

use super::commit::Ack;
use super::queue::Refusal;
use super::{OPERATOR_INBOX, Queued, Store, StoreError, decode, get_json, now_ms, put_json};
use crate::store::records::Escalation;

impl Store {
    /// Every escalation, oldest first; resolved ones too when `all`.
    pub fn escalations(&self, all: bool) -> Result<Vec<Escalation>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OPERATOR_INBOX)?;
        let mut out: Vec<Escalation> = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let e: Escalation = decode(k.value(), v.value())?;
            if all || e.resolved_at.is_none() {
                out.push(e);
            }
        }
        out.sort_by_key(|e| e.at);
        Ok(out)
    }

    /// Mark the escalation of `task` resolved, with the operator's note.
    pub fn resolve(&self, task: &str, note: Option<&str>) -> Queued<Result<Escalation, Refusal>> {
        let (task, note) = (task.to_string(), note.map(str::to_string));
        self.write(Ack::Acknowledged, move |txn| {
            let exists = txn
                .open_table(OPERATOR_INBOX)?
                .get(task.as_str())?
                .is_some();
            if !exists {
                return Ok(Err(Refusal::NotFound(format!(
                    "no escalation for task `{task}` in the operator inbox"
                ))));
            }
            let mut e: Escalation = get_json(txn, OPERATOR_INBOX, &task)?;
            if e.resolved_at.is_some() {
                return Ok(Err(Refusal::Invalid(format!(
                    "the escalation of task `{task}` is already resolved"
                ))));
            }
            e.resolved_at = Some(now_ms());
            e.note.clone_from(&note);
            put_json(txn, OPERATOR_INBOX, &task, &e)?;
            Ok(Ok(e))
        })
    }
}
