//! Guarantee: an agent stuck waiting inside a host call (its inbox, or a sleep on a WASI
//! pollable) is cut off at its deadline, with the reason recorded, and costs no CPU
//! budget while it waits; the host and every other agent carry on.

use baton::Host;
use baton::store::Status;

use crate::common::{
    agent, assert_bystander_completed, assert_demo_chain_completes, mesh_under_attack, text,
};

#[tokio::test]
async fn waiting_forever_in_host_calls_ends_at_the_deadline() {
    let state = tempfile::tempdir().unwrap();
    // `fanout` waits on its inbox for replies that never come: its callee sleeps.
    let mut waiter = agent("waiter", baton_artifacts::fanout::WASM);
    waiter.handoff = vec!["sleeper".into()];
    waiter.limits.deadline_ms = 400;
    let mut m = mesh_under_attack(waiter);
    let mut sleeper = agent("sleeper", baton_artifacts::sleeper::WASM);
    sleeper.limits.deadline_ms = 400;
    // A tiny CPU budget: waiting must not be charged to it.
    sleeper.limits.cpu_ms = 50;
    m.agents.push(sleeper);
    let host = Host::load(&m, state.path()).unwrap();

    let stuck = host
        .submit("waiter", "wait", None, vec![text("a", "sleeper")])
        .unwrap()
        .task;
    let behind = host.submit("snoop", "after", None, vec![]).unwrap().task;
    host.run_until_idle().await.unwrap();

    let t = host.store().task(&stuck).unwrap().unwrap();
    assert_eq!(t.status, Status::Failed);
    assert!(
        t.error
            .as_deref()
            .unwrap()
            .starts_with("deadline: no outcome within"),
        "{t:?}"
    );
    let report = baton::Report::for_task(host.store(), &stuck)
        .unwrap()
        .unwrap();
    let slept = report.tasks.iter().find(|t| t.agent == "sleeper").unwrap();
    assert!(
        slept
            .error
            .as_deref()
            .unwrap()
            .starts_with("deadline: no outcome within"),
        "the sleeper hit its deadline, not its 50 ms CPU budget: {slept:?}"
    );
    assert_bystander_completed(&host, &behind);
    assert_demo_chain_completes(&host).await;
}
