//! The task records the writer wrote last, kept decoded beside the bytes it wrote, so
//! that the write that next reads a task back does not parse its JSON again: a claim
//! reads what the hand-off wrote, a completion what the claim wrote, and decoding those
//! records was the largest single item of the writer thread's time.
//!
//! An entry is used only while the row still holds the very bytes it was made from. It
//! holds on to them (the row's shared bytes), so their memory cannot be reused for other
//! bytes; a row written any other way, read back from redb after a checkpoint, or taken
//! back with a transaction that failed, has other bytes, and its entry is not used.
//! The writer carries this from one transaction to the next with what else it knows
//! (see `wal::Known`), and a transaction that fails drops it whole.

use foldhash::HashMap;

use super::recent::Bytes;
use super::records::TaskRecord;

/// How many records are kept at most. Tasks still to be claimed or finished are read
/// back; a task that never is (an inbox nobody drains) would stay for good, so when the
/// set is full it starts over rather than grow.
const KEPT: usize = 4096;

/// Decoded task records, by id, each with the bytes it was written as.
#[derive(Debug, Default)]
pub(super) struct Decoded {
    tasks: HashMap<String, (Bytes, TaskRecord)>,
}

impl Decoded {
    /// The record of task `id`, if it was kept when `bytes` were written. It is taken
    /// out: whoever reads a task in the writer almost always writes it again, and that
    /// keeps the new record. One kept for other bytes goes too: the row never holds
    /// those again (a failed transaction, which could take a row back, drops all this).
    pub(super) fn take(&mut self, id: &str, bytes: &Bytes) -> Option<TaskRecord> {
        match self.tasks.remove(id)? {
            (kept, task) if same(&kept, bytes) => Some(task),
            _ => None,
        }
    }

    /// Keep `task`, just written as `bytes`. A task that will change no more is not
    /// kept: the writer reads one back only to reroute a failed child or to give back
    /// what a failed claimer claimed, which is rare.
    pub(super) fn keep(&mut self, bytes: Bytes, task: &TaskRecord) {
        if task.status.is_final() {
            self.tasks.remove(&task.id);
            return;
        }
        if self.tasks.len() >= KEPT && !self.tasks.contains_key(&task.id) {
            self.tasks.clear();
        }
        self.tasks.insert(task.id.clone(), (bytes, task.clone()));
    }
}

/// Whether `a` and `b` are the very same bytes in memory, not equal bytes: while `a` is
/// held, no other row's bytes can be where it is. (No record is empty; empty bytes are
/// never the same, as they need not be anywhere.)
fn same(a: &Bytes, b: &Bytes) -> bool {
    !a.is_empty() && a.as_ptr() == b.as_ptr() && a.len() == b.len()
}
