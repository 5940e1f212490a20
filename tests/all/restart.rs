//! Guarantee: state survives a restart of the host: the blackboard with its history and
//! provenance, every task and handoff, and the trace of a chain read back identically;
//! a restarted host continues without reusing an id.

use baton::{Host, Report, Store};
use serde_json::json;

use crate::common::{research_mesh, run};

/// Submit a research topic to `host`'s researcher and run the chain to its end.
async fn research(host: &Host, topic: &str) -> Report {
    run(host, "researcher", Some(json!({ "topic": topic })), vec![]).await
}

#[tokio::test]
async fn trace_and_blackboard_survive_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let before = {
        let host = Host::load(&research_mesh(), state.path()).unwrap();
        research(&host, "ice").await
    }; // the host, its engine and its store are dropped here

    // A bare store, as `baton trace` opens it, sees the same chain.
    let store = Store::open(state.path()).unwrap();
    let after = Report::for_task(&store, &before.task).unwrap().unwrap();
    assert_eq!(
        serde_json::to_value(&after).unwrap(),
        serde_json::to_value(&before).unwrap()
    );
    // Any task of the chain leads to the same trace.
    let via_writer = Report::for_task(&store, &before.tasks[1].id)
        .unwrap()
        .unwrap();
    assert_eq!(via_writer.task, before.task);

    let key = before.handoffs[0].key.clone().unwrap();
    let entry = store.read(&key, None).unwrap().unwrap();
    assert_eq!((entry.version, entry.writer.as_str()), (1, "researcher"));
    drop(store);

    // A new host on the same state continues the numbering and keeps the old chain.
    let host = Host::load(&research_mesh(), state.path()).unwrap();
    let next = research(&host, "fire").await;
    assert_eq!(next.task, "t-3");
    assert_eq!(next.handoffs[0].id, "h-4");
    let old = Report::for_task(host.store(), &before.task)
        .unwrap()
        .unwrap();
    assert_eq!(old.outcome, before.outcome);
}

#[tokio::test]
async fn every_write_to_a_key_is_kept_as_a_version() {
    let state = tempfile::tempdir().unwrap();
    let host = Host::load(&research_mesh(), state.path()).unwrap();
    for topic in ["one", "two"] {
        research(&host, topic).await;
    }
    drop(host);
    // Keys are per handoff, so each holds one version; the operator namespace holds both inputs.
    let store = Store::open(state.path()).unwrap();
    let inputs: Vec<serde_json::Value> = ["output/operator/h-1", "output/operator/h-3"]
        .iter()
        .map(|k| serde_json::from_slice(&store.read(k, None).unwrap().unwrap().value).unwrap())
        .collect();
    assert_eq!(
        inputs,
        [json!({ "topic": "one" }), json!({ "topic": "two" })]
    );
    let history = store.history("output/operator/h-1").unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].writer, "operator");
}

/// What a store holds, as its readers see it: the chain's report, every version of every
/// key on the blackboard with its provenance, and the audit log, which must be whole.
type Seen = (
    serde_json::Value,
    Vec<Vec<baton::EntryRecord>>,
    Vec<baton::store::AuditRecord>,
);

fn seen(store: &Store, task: &str) -> Seen {
    let report = Report::for_task(store, task).unwrap().unwrap();
    let keys = store.keys("").unwrap();
    let history = keys.iter().map(|k| store.history(k).unwrap()).collect();
    let audit = store.audit_log().unwrap();
    let records = audit.len() as u64;
    assert_eq!(
        store.audit_verify().unwrap(),
        baton::store::AuditVerdict::Whole { records }
    );
    (serde_json::to_value(report).unwrap(), history, audit)
}

/// Guarantee: a store written before a blackboard version became one row (its metadata
/// and value had a row each, in `bb_meta` and `bb_values`, and every key a head row),
/// before a handoff and the task it made shared a chain row, before a transaction's
/// audit records shared a row, and before a handoff was read from its task (every
/// handoff had a row in `handoffs`, and a chain's first handoff and task a chain row),
/// reads back the same, and takes new work beside it.
/// The test writes the old layout into redb itself, by the tables' names on disk.
#[tokio::test]
async fn a_store_in_the_earlier_layout_reads_back_the_same() {
    use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
    const ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("bb_entries");
    const VALUES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("bb_values");
    const META: TableDefinition<(&str, u64), &str> = TableDefinition::new("bb_meta");
    const HEAD: TableDefinition<&str, u64> = TableDefinition::new("bb_head");
    const CHAIN: TableDefinition<(&str, u64), &str> = TableDefinition::new("chain");
    const AUDIT: TableDefinition<u64, &str> = TableDefinition::new("audit");
    const HANDOFFS: TableDefinition<&str, &str> = TableDefinition::new("handoffs");

    let state = tempfile::tempdir().unwrap();
    let before = {
        let host = Host::load(&research_mesh(), state.path()).unwrap();
        research(&host, "ice").await
    };
    let store = Store::open(state.path()).unwrap();
    let expected = seen(&store, &before.task);
    let chain_records = store.chain(&before.task).unwrap();
    drop(store);

    let db = redb::Database::open(state.path().join(baton::store::STORE_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut entries = txn.open_table(ENTRIES).unwrap();
        let (mut values, mut meta) = (
            txn.open_table(VALUES).unwrap(),
            txn.open_table(META).unwrap(),
        );
        let rows: Vec<((String, u64), Vec<u8>)> = entries
            .iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                let (key, version) = k.value();
                ((key.to_string(), version), v.value().to_vec())
            })
            .collect();
        assert!(!rows.is_empty(), "the run wrote no blackboard entry");
        let mut head = txn.open_table(HEAD).unwrap();
        for ((key, version), row) in rows {
            // Every key had a head row then, its newest version.
            let newest = head.get(key.as_str()).unwrap().map_or(0, |v| v.value());
            head.insert(key.as_str(), newest.max(version)).unwrap();
            let len = u32::from_le_bytes(row[..4].try_into().unwrap()) as usize;
            let text = std::str::from_utf8(&row[4..4 + len]).unwrap();
            meta.insert((key.as_str(), version), text).unwrap();
            values
                .insert((key.as_str(), version), &row[4 + len..])
                .unwrap();
            entries.remove((key.as_str(), version)).unwrap();
        }
        let mut chain = txn.open_table(CHAIN).unwrap();
        let rows: Vec<((String, u64), String)> = chain
            .iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                let (root, seq) = k.value();
                ((root.to_string(), seq), v.value().to_string())
            })
            .collect();
        assert!(rows.iter().any(|(_, v)| v.lines().count() == 2));
        chain.retain(|_, _| false).unwrap();
        // A row a line, numbered apart so that they keep their order.
        for ((root, seq), v) in rows {
            for (n, line) in v.lines().enumerate() {
                chain
                    .insert((root.as_str(), seq * 2 + n as u64), line)
                    .unwrap();
            }
        }
        // The root's own handoff and task, before the rest (each seq above is 1 or more).
        let root = &before.task;
        let first = format!("h:{}", chain_records.handoffs[0].id);
        chain.insert((root.as_str(), 0), first.as_str()).unwrap();
        chain
            .insert((root.as_str(), 1), format!("t:{root}").as_str())
            .unwrap();
        // A row for every handoff.
        let mut handoffs = txn.open_table(HANDOFFS).unwrap();
        assert_eq!(handoffs.len().unwrap(), 0, "a handoff row was written");
        assert!(chain_records.handoffs.len() > 1);
        for h in &chain_records.handoffs {
            let json = serde_json::to_string(h).unwrap();
            handoffs.insert(h.id.as_str(), json.as_str()).unwrap();
        }
        // A row a record, at its number.
        let mut audit = txn.open_table(AUDIT).unwrap();
        let rows: Vec<(u64, String)> = audit
            .iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.value(), v.value().to_string())
            })
            .collect();
        audit.retain(|_, _| false).unwrap();
        for (first, records) in rows {
            for (n, record) in records.lines().enumerate() {
                audit.insert(first + n as u64, record).unwrap();
            }
        }
    }
    txn.commit().unwrap();
    drop(db);

    let store = Store::open(state.path()).unwrap();
    assert_eq!(seen(&store, &before.task), expected);
    drop(store);

    // New work goes in beside it, in the new layout; the old chain still reads, and
    // the audit log, old rows and new, is one whole chain.
    let host = Host::load(&research_mesh(), state.path()).unwrap();
    let next = research(&host, "fire").await;
    assert_eq!((next.status.as_str(), next.tasks.len()), ("completed", 2));
    drop(host);
    let (report, _, audit) = seen(&Store::open(state.path()).unwrap(), &before.task);
    assert_eq!(report, expected.0);
    assert_eq!(audit[..expected.2.len()], expected.2);
    assert!(audit.len() > expected.2.len());
}
