//! Guarantee: a caller can hand off to several agents at once and join their replies
//! through `check-inbox`: every reply arrives exactly once, pointing at its callee's
//! outcome, and none is left behind in the inbox.

use std::collections::BTreeSet;

use baton::Host;
use baton::store::{Kind, Status};

use crate::common::{agent, agent_to, mesh, outcome, run, text};

#[tokio::test]
async fn three_callees_three_replies_none_lost_none_doubled() {
    let state = tempfile::tempdir().unwrap();
    let host = Host::load(
        &mesh(vec![
            agent_to("fanout", baton_artifacts::fanout::WASM, &["e1", "e2", "e3"]),
            agent("e1", baton_artifacts::echo::WASM),
            agent("e2", baton_artifacts::echo::WASM),
            agent("e3", baton_artifacts::echo::WASM),
        ]),
        state.path(),
    )
    .unwrap();
    let report = run(
        &host,
        "fanout",
        None,
        vec![text("a", "e1"), text("b", "e2"), text("c", "e3")],
    )
    .await;
    assert_eq!(report.status, "completed", "{report:?}");

    let joined = outcome(&host, &report, "fanout");
    let sent: BTreeSet<String> = joined["sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(sent.len(), 3);
    let replies = joined["replies"].as_array().unwrap();
    assert_eq!(replies.len(), 3, "{joined}");
    let answered: BTreeSet<String> = replies
        .iter()
        .map(|r| r["in_reply_to"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(answered, sent, "each handoff answered exactly once");
    let from: BTreeSet<&str> = replies
        .iter()
        .map(|r| r["from"].as_str().unwrap())
        .collect();
    assert_eq!(from, BTreeSet::from(["e1", "e2", "e3"]));
    // Each reply carried the callee's outcome, read through the reply's pointer.
    for r in replies {
        assert_eq!(r["data"]["from"], "fanout");
        assert!(sent.contains(r["data"]["task"].as_str().unwrap()));
    }

    // The replies were claimed by the running caller, not delivered again.
    let reply_tasks: Vec<_> = report
        .tasks
        .iter()
        .filter(|t| t.kind == Kind::Reply)
        .collect();
    assert_eq!(reply_tasks.len(), 3);
    assert!(reply_tasks.iter().all(|t| t.status == Status::Delivered));
    assert_eq!(host.store().inbox_depth("fanout").unwrap(), 0);
    let fanout_runs = report
        .tasks
        .iter()
        .filter(|t| t.agent == "fanout" && t.kind == Kind::Work)
        .count();
    assert_eq!(fanout_runs, 1);
}
