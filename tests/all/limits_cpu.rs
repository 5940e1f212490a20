//! Guarantee: an activation that runs past its agent's `limits.cpu_ms` is interrupted by
//! the epoch deadline and its task fails with a readable reason naming the limit; every
//! activation gets a fresh budget, and the host and every other agent carry on.

use baton::Host;

use crate::common::{
    agent, assert_bystander_completed, assert_demo_chain_completes, assert_failed,
    mesh_under_attack,
};

#[tokio::test]
async fn a_spinning_agent_is_stopped_at_its_cpu_limit_and_the_host_lives() {
    let state = tempfile::tempdir().unwrap();
    let mut spinner = agent("spinner", baton_artifacts::spinner::WASM);
    spinner.limits.cpu_ms = 200;
    let host = Host::load(&mesh_under_attack(spinner), state.path()).unwrap();

    // Two attacks, each with a bystander queued behind it; tasks run oldest first.
    let first = host.submit("spinner", "spin", None, vec![]).unwrap().task;
    let behind_first = host
        .submit("snoop", "after the spin", None, vec![])
        .unwrap()
        .task;
    let second = host
        .submit("spinner", "spin again", None, vec![])
        .unwrap()
        .task;
    let behind_second = host
        .submit("snoop", "after that", None, vec![])
        .unwrap()
        .task;
    assert_eq!(host.run_until_idle().await.unwrap(), 4);

    // Each spin ended at the limit, with the limit named, and stored nothing.
    let reason = "cpu time limit: ran past 200 ms (limits.cpu_ms)";
    assert_failed(&host, &first, reason);
    assert_failed(&host, &second, reason);

    assert_bystander_completed(&host, &behind_first);
    assert_bystander_completed(&host, &behind_second);
    assert_demo_chain_completes(&host).await;
}
