//! Guarantee: an agent hands off only to the agents its manifest lists. A forbidden
//! target is `denied`, an unknown one `not-found`; neither gets a task, and the allowed
//! target still works in the same activation.

use baton::Host;
use serde_json::json;

use crate::common::{agent, mesh, outcome, run, text};

#[tokio::test]
async fn rogue_reaches_only_its_allowed_target() {
    let state = tempfile::tempdir().unwrap();
    let mut rogue = agent("rogue", baton_artifacts::rogue::WASM);
    rogue.handoff = vec!["snoop".into()];
    let host = Host::load(
        &mesh(vec![
            rogue,
            agent("researcher", baton_artifacts::researcher::WASM),
            agent("snoop", baton_artifacts::snoop::WASM),
        ]),
        state.path(),
    )
    .unwrap();

    let report = run(
        &host,
        "rogue",
        None,
        vec![
            text("a", "researcher"),
            text("b", "ghost"),
            text("c", "snoop"),
        ],
    )
    .await;
    let seen = outcome(&host, &report, "rogue");

    assert_eq!(
        seen["researcher"],
        json!({ "error": "denied: agent `rogue` may not hand off to `researcher`: it is not in its `handoff` list" })
    );
    assert_eq!(
        seen["ghost"],
        json!({ "error": "not-found: no agent `ghost` in this mesh" })
    );
    assert!(seen["snoop"]["ok"].is_string(), "{seen}");

    // Only the allowed handoff happened; the researcher never ran.
    let targets: Vec<&str> = report.handoffs.iter().map(|h| h.to.as_str()).collect();
    assert_eq!(targets, ["snoop"]);
    let ran: Vec<&str> = report.tasks.iter().map(|t| t.agent.as_str()).collect();
    assert_eq!(ran, ["rogue", "snoop"]);
    assert_eq!(host.store().inbox_depth("researcher").unwrap(), 0);
    assert_eq!(
        host.store()
            .read("output/rogue/h-2", None)
            .unwrap()
            .map(|e| e.writer),
        Some("rogue".into())
    );
}
