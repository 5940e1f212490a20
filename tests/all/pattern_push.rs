//! Guarantee: a push handoff carries its payload inline, validated against the callee's
//! input schema at hand-off time: a malformed payload is refused to the caller naming the
//! failing field and never reaches the callee, and fields the callee's manifest strips are
//! removed by the host before delivery.

use baton::Host;
use baton::store::Pattern;
use serde_json::json;

use crate::common::{agent, agent_to, mesh, outcome, run};

fn editor() -> baton::AgentSpec {
    let mut editor = agent("editor", baton_artifacts::echo::WASM);
    editor.input_schema = Some(json!({
        "type": "object",
        "required": ["title", "body"],
        "properties": { "title": { "type": "string" }, "body": { "type": "string" } },
    }));
    editor.strip = vec!["scratchpad".into()];
    editor
}

#[tokio::test]
async fn a_bad_payload_is_refused_and_a_good_one_arrives_inline_and_filtered() {
    let state = tempfile::tempdir().unwrap();
    let host = Host::load(
        &mesh(vec![
            agent_to("pusher", baton_artifacts::pusher::WASM, &["editor"]),
            editor(),
        ]),
        state.path(),
    )
    .unwrap();
    let report = run(&host, "pusher", None, vec![]).await;
    assert_eq!(report.status, "completed", "{report:?}");

    // The caller got `invalid` naming the missing field.
    let pusher = outcome(&host, &report, "pusher");
    assert_eq!(pusher["refused"]["error"], "invalid");
    assert_eq!(pusher["refused"]["field"], "title");
    assert!(
        pusher["refused"]["message"]
            .as_str()
            .unwrap()
            .contains("does not match the input schema of `editor`"),
        "{pusher}"
    );

    // Only the good payload became a handoff and a task; the editor ran once.
    assert_eq!(report.handoffs.len(), 1);
    let h = &report.handoffs[0];
    assert_eq!((h.pattern.as_str(), h.key.as_deref()), ("push", None));
    let ran: Vec<&str> = report.tasks.iter().map(|t| t.agent.as_str()).collect();
    assert_eq!(ran, ["pusher", "editor"]);

    // The payload travelled in the task, without the stripped field, and nothing of it
    // was written to the blackboard.
    let task = host.store().task(&h.task).unwrap().unwrap();
    assert_eq!(task.pattern, Pattern::Push);
    assert_eq!(task.pointer, None);
    let delivered: serde_json::Value = serde_json::from_slice(&task.payload.unwrap()).unwrap();
    assert_eq!(
        delivered,
        json!({ "title": "Handoffs", "body": "Structured payloads beat transcripts." })
    );
    assert!(
        host.store()
            .history(&format!("output/pusher/{}", h.id))
            .unwrap()
            .is_empty()
    );

    // What the editor saw is exactly that.
    let seen = outcome(&host, &report, "editor");
    assert_eq!(seen["pattern"], "push");
    assert_eq!(seen["data"], delivered);
}
