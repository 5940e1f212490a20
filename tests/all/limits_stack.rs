//! Guarantee: unbounded recursion ends the activation at the host's wasm stack limit; the
//! task fails with a readable reason, the host's own stack is untouched, and the host and
//! every other agent carry on.

use baton::Host;

use crate::common::{
    agent, assert_bystander_completed, assert_demo_chain_completes, assert_failed,
    mesh_under_attack,
};

#[tokio::test]
async fn unbounded_recursion_is_a_stack_overflow_and_the_host_lives() {
    let state = tempfile::tempdir().unwrap();
    let host = Host::load(
        &mesh_under_attack(agent("deep", baton_artifacts::deep::WASM)),
        state.path(),
    )
    .unwrap();

    let attack = host.submit("deep", "dive", None, vec![]).unwrap().task;
    let behind = host
        .submit("snoop", "after the dive", None, vec![])
        .unwrap()
        .task;
    let again = host
        .submit("deep", "dive again", None, vec![])
        .unwrap()
        .task;
    assert_eq!(host.run_until_idle().await.unwrap(), 3);

    assert_failed(&host, &attack, "trap: stack overflow");
    assert_failed(&host, &again, "trap: stack overflow");
    assert_bystander_completed(&host, &behind);
    assert_demo_chain_completes(&host).await;
}
