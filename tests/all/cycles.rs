//! Guarantee: a chain cannot run forever. The same work handed round again (A → B → A
//! with no progress) is refused as a cycle, a chain that makes progress stops at the hop
//! budget, and each hop's deadline lies within its caller's.

use baton::Host;

use crate::common::{agent_to, flag, mesh, outcome, run, text};

fn ping_pong(max_hops: u32) -> baton::Mesh {
    let mut m = mesh(vec![
        agent_to("ping", baton_artifacts::bouncer::WASM, &["pong"]),
        agent_to("pong", baton_artifacts::bouncer::WASM, &["ping"]),
    ]);
    m.max_hops = max_hops;
    m
}

#[tokio::test]
async fn the_same_work_bounced_back_is_refused_as_a_cycle() {
    let state = tempfile::tempdir().unwrap();
    let host = Host::load(&ping_pong(16), state.path()).unwrap();
    let report = run(
        &host,
        "ping",
        Some(serde_json::json!({ "ball": 1 })),
        vec![text("next", "pong")],
    )
    .await;
    assert_eq!(report.status, "completed", "{report:?}");

    // ping → pong went through; pong → ping with the same work was refused.
    let hops: Vec<(&str, &str)> = report
        .handoffs
        .iter()
        .map(|h| (h.from.as_str(), h.to.as_str()))
        .collect();
    assert_eq!(hops, [("ping", "pong")]);
    let pong = outcome(&host, &report, "pong");
    assert_eq!(
        pong["error"],
        format!(
            "denied: cycle: `ping` was already handed this exact work in this chain (task {}); change the work or stop",
            report.task
        )
    );
}

#[tokio::test]
async fn progress_runs_until_the_hop_budget_and_deadlines_shrink() {
    let state = tempfile::tempdir().unwrap();
    let host = Host::load(&ping_pong(4), state.path()).unwrap();
    let report = run(
        &host,
        "ping",
        Some(serde_json::json!({ "n": 0 })),
        vec![text("next", "pong"), flag("progress", true)],
    )
    .await;
    assert_eq!(report.status, "completed", "{report:?}");

    // Four handoffs between agents, then the fifth task's bounce is refused.
    assert_eq!(report.handoffs.len(), 4);
    assert_eq!(report.tasks.len(), 5);
    let last = report.tasks.last().unwrap();
    let key = last.outcome_key.clone().unwrap();
    let refused: serde_json::Value =
        serde_json::from_slice(&host.store().read(&key, None).unwrap().unwrap().value).unwrap();
    assert_eq!(
        refused["error"],
        "denied: hop budget of 4 exhausted: this chain is 4 handoffs deep"
    );

    // Every hop's deadline lies within its caller's.
    for t in &report.tasks {
        let task = host.store().task(&t.id).unwrap().unwrap();
        if let Some(parent) = &task.parent {
            let parent = host.store().task(parent).unwrap().unwrap();
            assert!(
                task.deadline <= parent.deadline,
                "{} outlives {}",
                task.id,
                parent.id
            );
            assert_eq!(task.hops, parent.hops + 1);
        }
    }
}
