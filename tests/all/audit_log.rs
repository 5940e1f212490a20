//! Guarantee: every handoff and every read of a key (granted or denied) is in a
//! hash-chained audit log; editing, re-hashing or deleting any record is detected at
//! exactly that record.

use baton::Host;
use baton::store::{AUDIT, AuditRecord, AuditVerdict, STORE_FILE, Store};
use redb::{Database, ReadableTable};
use serde_json::json;

use crate::common::{agent, agent_to, mesh, run, text};

/// Run a chain with a denied read in it, and return the state directory.
async fn audited_state() -> tempfile::TempDir {
    let state = tempfile::tempdir().unwrap();
    let mut snoop = agent("snoop", baton_artifacts::snoop::WASM);
    snoop.handoff = vec![];
    let host = Host::load(
        &mesh(vec![
            agent_to("researcher", baton_artifacts::researcher::WASM, &["writer"]),
            agent("writer", baton_artifacts::writer::WASM),
            snoop,
        ]),
        state.path(),
    )
    .unwrap();
    run(
        &host,
        "researcher",
        Some(json!({ "topic": "audits" })),
        vec![],
    )
    .await;
    run(&host, "snoop", None, vec![text("a", "output/writer/t-2")]).await;
    state
}

/// Rewrite the records of the row that holds record `seq` behind the store's back: `change`
/// gets them, a line each, and the place of record `seq` among them. A row holds the
/// records one transaction appended (see `baton::store::AUDIT`); one left empty is removed.
fn rewrite(state: &std::path::Path, seq: u64, change: impl FnOnce(&mut Vec<String>, usize)) {
    let db = Database::open(state.join(STORE_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(AUDIT).unwrap();
        let (first, mut lines) = {
            let (k, v) = table.range(..=seq).unwrap().next_back().unwrap().unwrap();
            let lines: Vec<String> = v.value().lines().map(str::to_string).collect();
            (k.value(), lines)
        };
        change(&mut lines, (seq - first) as usize);
        if lines.is_empty() {
            table.remove(first).unwrap();
        } else {
            table.insert(first, lines.join("\n").as_str()).unwrap();
        }
    }
    txn.commit().unwrap();
}

fn edit(state: &std::path::Path, seq: u64, change: impl FnOnce(&mut AuditRecord)) {
    rewrite(state, seq, |lines, at| {
        let mut record: AuditRecord = serde_json::from_str(&lines[at]).unwrap();
        change(&mut record);
        lines[at] = serde_json::to_string(&record).unwrap();
    });
}

#[tokio::test]
async fn the_log_records_handoffs_reads_and_denials_in_a_whole_chain() {
    let state = audited_state().await;
    let store = Store::open(state.path()).unwrap();
    let log = store.audit_log().unwrap();
    let events: Vec<(&str, &str, Option<&str>)> = log
        .iter()
        .map(|r| (r.event.as_str(), r.agent.as_str(), r.key.as_deref()))
        .collect();
    assert_eq!(
        events,
        [
            ("handoff", "operator", Some("output/operator/h-1")),
            ("read", "researcher", Some("output/operator/h-1")),
            ("handoff", "researcher", Some("output/researcher/h-2")),
            ("read", "writer", Some("output/researcher/h-2")),
            ("handoff", "operator", None),
            ("denied", "snoop", Some("output/writer/t-2")),
        ]
    );
    assert_eq!(
        store.audit_verify().unwrap(),
        AuditVerdict::Whole { records: 6 }
    );
}

#[tokio::test]
async fn an_edited_record_breaks_the_chain_at_that_record() {
    let state = audited_state().await;
    edit(state.path(), 4, |r| r.agent = "researcher".into());
    let verdict = Store::open(state.path()).unwrap().audit_verify().unwrap();
    let AuditVerdict::Broken { seq, reason } = verdict else {
        panic!("tampering went unnoticed");
    };
    assert_eq!(seq, 4);
    assert!(reason.starts_with("its content hashes to"), "{reason}");
}

#[tokio::test]
async fn a_re_hashed_forgery_breaks_the_next_link() {
    let state = audited_state().await;
    // The forger fixes the edited record's own hash; the next record still links to the old one.
    edit(state.path(), 2, |r| {
        r.key = Some("output/operator/h-9".into());
        let mut unhashed = r.clone();
        unhashed.hash = String::new();
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(r.prev.as_bytes());
        h.update(serde_json::to_vec(&unhashed).unwrap());
        r.hash = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    });
    let verdict = Store::open(state.path()).unwrap().audit_verify().unwrap();
    assert!(
        matches!(&verdict, AuditVerdict::Broken { seq: 3, reason } if reason.starts_with("links to")),
        "{verdict:?}"
    );
}

#[tokio::test]
async fn a_deleted_record_is_named() {
    let state = audited_state().await;
    // Record 4 then takes its place, if it shared its row; else its row starts at 4.
    let mut at = 4;
    rewrite(state.path(), 3, |lines, i| {
        lines.remove(i);
        if i < lines.len() {
            at = 3;
        }
    });
    let verdict = Store::open(state.path()).unwrap().audit_verify().unwrap();
    assert_eq!(
        verdict,
        AuditVerdict::Broken {
            seq: at,
            reason: format!("expected record #3 here, found #4 stored at #{at}")
        }
    );
}
