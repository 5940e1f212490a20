//! Guarantee: work moves between real agent components through the blackboard: the
//! caller's data lands in its own namespace with provenance, the callee gets only a
//! pointer, reads exactly that key, and its outcome is stored under its own namespace;
//! a requested reply comes back to the caller.

use baton::Host;
use baton::store::{Kind, Pattern, Status};
use serde_json::json;

use crate::common::{outcome, research_mesh, run};

#[tokio::test]
async fn researcher_hands_findings_to_writer_through_the_blackboard() {
    let state = tempfile::tempdir().unwrap();
    let host = Host::load(&research_mesh(), state.path()).unwrap();
    let report = run(
        &host,
        "researcher",
        Some(json!({ "topic": "tides" })),
        vec![],
    )
    .await;

    assert_eq!(report.status, "completed", "{report:?}");
    let ran: Vec<&str> = report.tasks.iter().map(|t| t.agent.as_str()).collect();
    assert_eq!(ran, ["researcher", "writer"]);

    // One agent-to-agent handoff, by pointer, into the caller's own namespace.
    assert_eq!(report.handoffs.len(), 1);
    let h = &report.handoffs[0];
    assert_eq!((h.from.as_str(), h.to.as_str()), ("researcher", "writer"));
    assert_eq!(h.pattern, "blackboard");
    let key = h.key.clone().unwrap();
    assert_eq!(key, format!("output/researcher/{}", h.id));

    // The data is on the blackboard with the researcher's provenance.
    let entry = host.store().read(&key, None).unwrap().unwrap();
    assert_eq!(entry.version, 1);
    assert_eq!(entry.writer, "researcher");
    let findings: serde_json::Value = serde_json::from_slice(&entry.value).unwrap();
    assert_eq!(findings["topic"], "tides");

    // The writer's task held only the pointer, no inline copy of the data.
    let task = host.store().task(&h.task).unwrap().unwrap();
    assert_eq!(task.pointer.as_deref(), Some(key.as_str()));
    assert_eq!(task.payload, None);
    assert_eq!(task.pattern, Pattern::Blackboard);
    assert_eq!(task.completed, ["collected findings", "checked sources"]);

    // The writer read that exact key and version, and says who wrote it.
    let article = outcome(&host, &report, "writer");
    assert_eq!(article["based_on"]["key"], key.as_str());
    assert_eq!(article["based_on"]["writer"], "researcher");
    assert_eq!(article["based_on"]["sha256"], entry.sha256.as_str());
    assert!(
        article["article"]
            .as_str()
            .unwrap()
            .starts_with("On tides:")
    );

    // The outcome lives in the writer's namespace, written by the writer.
    let outcome_key = report.outcome_key.clone().unwrap();
    assert_eq!(outcome_key, format!("output/writer/{}", h.task));
    let stored = host.store().read(&outcome_key, None).unwrap().unwrap();
    assert_eq!(stored.writer, "writer");
    assert_eq!(report.outcome, article);
}

#[tokio::test]
async fn a_requested_reply_wakes_the_caller_with_a_pointer_to_the_outcome() {
    let state = tempfile::tempdir().unwrap();
    let host = Host::load(&research_mesh(), state.path()).unwrap();
    let await_reply = baton::store::Param {
        name: "await_reply".into(),
        value: baton::store::ParamValue::Flag(true),
    };
    let report = run(
        &host,
        "researcher",
        Some(json!({ "topic": "reefs" })),
        vec![await_reply],
    )
    .await;

    assert_eq!(report.status, "completed", "{report:?}");
    let ran: Vec<(&str, Kind)> = report
        .tasks
        .iter()
        .map(|t| (t.agent.as_str(), t.kind))
        .collect();
    assert_eq!(
        ran,
        [
            ("researcher", Kind::Work),
            ("writer", Kind::Work),
            ("researcher", Kind::Reply)
        ]
    );
    assert!(report.tasks.iter().all(|t| t.status == Status::Completed));

    // The reply points at the writer's outcome; the researcher read it through that grant.
    let writer_task = &report.tasks[1];
    let reply = &report.handoffs[1];
    assert_eq!(
        (reply.from.as_str(), reply.to.as_str()),
        ("writer", "researcher")
    );
    assert_eq!(reply.key, writer_task.outcome_key);
    let final_outcome = &report.outcome;
    assert_eq!(final_outcome["reply_from"], "writer");
    assert!(
        final_outcome["article"]["article"]
            .as_str()
            .unwrap()
            .starts_with("On reefs:")
    );
}
