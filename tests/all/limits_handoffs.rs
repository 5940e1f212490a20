//! Guarantee: an activation makes at most `limits.handoffs_per_activation` handoffs and a
//! callee's inbox holds at most its `limits.inbox_depth` tasks; past either bound the host
//! answers `busy` (a value the guest handles, not a trap), records exactly the handoffs it
//! accepted and nothing more, logs the refusal, and the host and every other agent carry on.

use baton::store::Status;
use baton::{Host, Report};
use serde_json::json;

use crate::common::{
    agent, assert_bystander_completed, assert_demo_chain_completes, claim_oldest, log,
    mesh_under_attack, outcome, task, text,
};

#[tokio::test]
async fn a_handoff_flood_is_cut_off_at_the_activation_limit_and_the_host_lives() {
    let state = tempfile::tempdir().unwrap();
    let mut flood = agent("flood", baton_artifacts::flood::WASM);
    flood.handoff = vec!["snoop".into()];
    flood.limits.handoffs_per_activation = 5;
    let host = Host::load(&mesh_under_attack(flood), state.path()).unwrap();

    let attack = host
        .submit("flood", "flood snoop", None, vec![text("target", "snoop")])
        .unwrap()
        .task;
    let behind = host
        .submit("snoop", "after the flood", None, vec![])
        .unwrap()
        .task;

    // Run the flood alone first, to see what it left in the callee's inbox.
    let claimed = claim_oldest(&host);
    assert_eq!(claimed.id, attack);
    host.activate(claimed).await.unwrap();
    // The bystander's task plus exactly the five accepted handoffs.
    assert_eq!(host.store().inbox_depth("snoop").unwrap(), 6);

    // The refusal came back to the guest as `busy`; the task itself completed.
    let report = Report::for_task(host.store(), &attack).unwrap().unwrap();
    let busy = "busy: agent `flood` has made 5 handoffs in this activation, its limit";
    assert_eq!(
        outcome(&host, &report, "flood"),
        json!({ "sent": 5, "error": busy })
    );
    assert!(
        log(state.path(), "flood").contains(busy),
        "the refusal is logged"
    );

    // Exactly five handoffs are recorded, each with its task; all five run.
    assert_eq!(host.run_until_idle().await.unwrap(), 6);
    let report = Report::for_task(host.store(), &attack).unwrap().unwrap();
    assert_eq!(report.handoffs.len(), 5, "{report:?}");
    assert!(
        report
            .handoffs
            .iter()
            .all(|h| (h.from.as_str(), h.to.as_str()) == ("flood", "snoop"))
    );
    let ran: Vec<(&str, Status)> = report
        .tasks
        .iter()
        .map(|t| (t.agent.as_str(), t.status))
        .collect();
    let mut expected = vec![("flood", Status::Completed)];
    expected.extend([("snoop", Status::Completed); 5]);
    assert_eq!(ran, expected);
    assert_eq!(host.store().inbox_depth("snoop").unwrap(), 0);

    assert_bystander_completed(&host, &behind);
    assert_demo_chain_completes(&host).await;
}

#[tokio::test]
async fn each_activation_gets_a_fresh_handoff_budget() {
    let state = tempfile::tempdir().unwrap();
    let mut flood = agent("flood", baton_artifacts::flood::WASM);
    flood.handoff = vec!["snoop".into()];
    flood.limits.handoffs_per_activation = 5;
    let host = Host::load(&mesh_under_attack(flood), state.path()).unwrap();

    let first = host
        .submit("flood", "flood", None, vec![text("target", "snoop")])
        .unwrap()
        .task;
    let second = host
        .submit("flood", "flood again", None, vec![text("target", "snoop")])
        .unwrap()
        .task;
    host.run_until_idle().await.unwrap();

    for id in [&first, &second] {
        let report = Report::for_task(host.store(), id).unwrap().unwrap();
        assert_eq!(outcome(&host, &report, "flood")["sent"], 5, "{report:?}");
        assert_eq!(report.handoffs.len(), 5);
    }
}

#[tokio::test]
async fn a_flood_stops_at_the_callee_inbox_depth_and_the_host_lives() {
    let state = tempfile::tempdir().unwrap();
    let mut flood = agent("flood", baton_artifacts::flood::WASM);
    flood.handoff = vec!["snoop".into()];
    let mut mesh = mesh_under_attack(flood);
    let snoop = mesh.agents.iter_mut().find(|a| a.id == "snoop").unwrap();
    snoop.limits.inbox_depth = 3;
    let host = Host::load(&mesh, state.path()).unwrap();

    let attack = host
        .submit(
            "flood",
            "fill snoop's inbox",
            None,
            vec![text("target", "snoop")],
        )
        .unwrap()
        .task;
    let claimed = claim_oldest(&host);
    host.activate(claimed).await.unwrap();
    assert_eq!(host.store().inbox_depth("snoop").unwrap(), 3);

    let report = Report::for_task(host.store(), &attack).unwrap().unwrap();
    let busy = "busy: inbox of `snoop` is full (3 pending tasks); try later";
    assert_eq!(
        outcome(&host, &report, "flood"),
        json!({ "sent": 3, "error": busy })
    );
    assert_eq!(report.handoffs.len(), 3);
    assert!(
        log(state.path(), "flood").contains(busy),
        "the refusal is logged"
    );

    // The queued tasks drain, and then snoop takes work again.
    assert_eq!(host.run_until_idle().await.unwrap(), 3);
    let behind = host
        .submit("snoop", "after the flood", None, vec![])
        .unwrap()
        .task;
    host.run_until_idle().await.unwrap();
    assert_bystander_completed(&host, &behind);
    assert_eq!(task(&host, &attack).status, Status::Completed);
    assert_demo_chain_completes(&host).await;
}
