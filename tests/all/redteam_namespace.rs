//! Guarantee: no agent can write outside its own namespace or poison another's keys.
//! The contract has no call that names a key to write: after hostile agents run, every
//! key on the blackboard is `output/<agent>/…` written by that agent, or a host record.

use baton::Host;
use serde_json::json;

use crate::common::{agent, agent_to, mesh, run, text};

#[tokio::test]
async fn every_key_belongs_to_its_writer() {
    let state = tempfile::tempdir().unwrap();
    let host = Host::load(
        &mesh(vec![
            agent_to("researcher", baton_artifacts::researcher::WASM, &["writer"]),
            agent("writer", baton_artifacts::writer::WASM),
            agent_to("rogue", baton_artifacts::rogue::WASM, &["writer", "snoop"]),
            agent("snoop", baton_artifacts::snoop::WASM),
            agent("crasher", baton_artifacts::crasher::WASM),
        ]),
        state.path(),
    )
    .unwrap();
    run(
        &host,
        "researcher",
        Some(json!({ "topic": "walls" })),
        vec![],
    )
    .await;
    // The rogue hands "stolen" data to the writer and to snoop (which probes keys).
    run(
        &host,
        "rogue",
        None,
        vec![
            text("a", "writer"),
            text("b", "snoop"),
            text("c", "output/writer/x"),
        ],
    )
    .await;
    run(&host, "crasher", None, vec![]).await;

    let keys = host.store().keys("").unwrap();
    assert!(keys.len() >= 8, "{keys:?}");
    for key in &keys {
        for entry in host.store().history(key).unwrap() {
            let owner = match key.split('/').collect::<Vec<_>>().as_slice() {
                ["output", agent, ..] => agent.to_string(),
                ["failures", ..] => "host".to_string(),
                _ => panic!("a key outside every namespace: {key}"),
            };
            assert_eq!(
                entry.writer, owner,
                "{key} v{} was written by {}",
                entry.version, entry.writer
            );
        }
    }
    // The writer's outcome of the rogue's task says it came from the rogue, not from the
    // researcher whose namespace it never touched.
    let researcher_keys = host.store().keys("output/researcher/").unwrap();
    for key in researcher_keys {
        assert!(
            host.store()
                .history(&key)
                .unwrap()
                .iter()
                .all(|e| e.writer == "researcher")
        );
    }
}
