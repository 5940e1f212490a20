//! Guarantee: state survives a restart of the host: the blackboard with its history and
//! provenance, every task and handoff, and the trace of a chain read back identically;
//! a restarted host continues without reusing an id.

use baton::{Host, Report, Store};
use serde_json::json;

use crate::common::{research_mesh, run};

#[tokio::test]
async fn trace_and_blackboard_survive_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let before = {
        let host = Host::load(&research_mesh(), state.path()).unwrap();
        run(&host, "researcher", Some(json!({ "topic": "ice" })), vec![]).await
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
    let next = run(
        &host,
        "researcher",
        Some(json!({ "topic": "fire" })),
        vec![],
    )
    .await;
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
        run(&host, "researcher", Some(json!({ "topic": topic })), vec![]).await;
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
