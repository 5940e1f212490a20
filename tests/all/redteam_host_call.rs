//! Guarantee: an agent stuck waiting inside a host call (its inbox, or a sleep on a WASI
//! pollable) is cut off at its deadline, with the reason recorded; the host and every
//! other agent carry on.

use baton::Host;
use baton::store::Status;

use crate::common::{
    agent, assert_bystander_completed, assert_demo_chain_completes, mesh_under_attack, text,
};

#[tokio::test]
async fn waiting_forever_in_host_calls_ends_at_the_deadline() {
    let state = tempfile::tempdir().unwrap();
    // `fanout` waits in `check-inbox` for a reply that cannot come before its deadline: its
    // callee is busy with an earlier task for longer than that.
    let mut waiter = agent("waiter", baton_artifacts::fanout::WASM);
    waiter.handoff = vec!["sleeper".into()];
    waiter.limits.deadline_ms = 400;
    let mut m = mesh_under_attack(waiter);
    // The sleeper sleeps on a WASI pollable (a host call) until its deadline.
    let mut sleeper = agent("sleeper", baton_artifacts::sleeper::WASM);
    sleeper.limits.deadline_ms = 1_500;
    m.agents.push(sleeper);
    let host = Host::load(&m, state.path()).unwrap();

    let busy = host.submit("sleeper", "sleep", None, vec![]).unwrap().task;
    let stuck = host
        .submit("waiter", "wait", None, vec![text("a", "sleeper")])
        .unwrap()
        .task;
    let behind = host.submit("snoop", "after", None, vec![]).unwrap().task;
    host.run_until_idle().await.unwrap();

    for (task, who) in [(&stuck, "waiter"), (&busy, "sleeper")] {
        let t = host.store().task(task).unwrap().unwrap();
        assert_eq!(t.status, Status::Failed, "{who}: {t:?}");
        assert!(
            t.error
                .as_deref()
                .unwrap()
                .starts_with("deadline: no outcome within"),
            "{who} ended at its deadline: {t:?}"
        );
    }
    assert_bystander_completed(&host, &behind);
    assert_demo_chain_completes(&host).await;
}
