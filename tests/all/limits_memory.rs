//! Guarantee: an agent cannot grow its linear memory past its `limits.memory_mib`: the
//! growth that would cross the limit ends the activation, the task fails with a readable
//! reason naming the limit, and the host and every other agent carry on. The limit is the
//! agent's own: the same component under a larger limit gets what it asks for.

use baton::Host;
use baton::store::Status;

use crate::common::{
    agent, assert_bystander_completed, assert_demo_chain_completes, int, mesh_under_attack, task,
};

#[tokio::test]
async fn a_memory_hog_is_stopped_at_its_memory_limit_and_the_host_lives() {
    let state = tempfile::tempdir().unwrap();
    let mut hog = agent("hog", baton_artifacts::hog::WASM);
    hog.limits.memory_mib = 16;
    // The same component, allowed more: proves the hog is stopped by its own limit.
    let mut roomy = agent("roomy", baton_artifacts::hog::WASM);
    roomy.limits.memory_mib = 64;
    let mut mesh = mesh_under_attack(hog);
    mesh.agents.push(roomy);
    let host = Host::load(&mesh, state.path()).unwrap();

    let attack = host.submit("hog", "eat", None, vec![]).unwrap().task;
    let behind = host
        .submit("snoop", "after the hog", None, vec![])
        .unwrap()
        .task;
    let allowed = host
        .submit("roomy", "eat a little", None, vec![int("mib", 32)])
        .unwrap()
        .task;
    assert_eq!(host.run_until_idle().await.unwrap(), 3);

    let t = task(&host, &attack);
    assert_eq!(t.status, Status::Failed, "{t:?}");
    assert_eq!(t.outcome_key, Some(format!("failures/{}", t.id)));
    assert_eq!(
        host.store()
            .read(&format!("output/hog/{attack}"), None)
            .unwrap(),
        None
    );

    // 32 MiB of buffers fit in 64 MiB: the cap is the agent's limit, not something else.
    let r = task(&host, &allowed);
    assert_eq!(r.status, Status::Completed, "{r:?}");
    let stored = host
        .store()
        .read(r.outcome_key.as_deref().unwrap(), None)
        .unwrap()
        .unwrap();
    let got: serde_json::Value = serde_json::from_slice(&stored.value).unwrap();
    assert_eq!(got["allocated_mib"], 32);

    assert_bystander_completed(&host, &behind);
    assert_demo_chain_completes(&host).await;

    // The reason is one readable line that names the limit, not a wasm backtrace.
    let reason = t.error.unwrap();
    assert!(
        reason.starts_with("memory limit: ") && reason.ends_with("(limits.memory_mib)"),
        "{reason:?}"
    );
    assert!(!reason.contains('\n'), "{reason:?}");
    assert!(reason.contains("16 MiB"), "{reason:?}");
}

#[tokio::test]
async fn an_agent_whose_memory_cannot_fit_its_limit_fails_to_start_with_the_limit_named() {
    let state = tempfile::tempdir().unwrap();
    // A Rust guest's initial memory (1 MiB of stack plus its data) is already past 1 MiB.
    let mut hog = agent("hog", baton_artifacts::hog::WASM);
    hog.limits.memory_mib = 1;
    let host = Host::load(&mesh_under_attack(hog), state.path()).unwrap();

    let attack = host.submit("hog", "eat", None, vec![]).unwrap().task;
    let behind = host
        .submit("snoop", "after the hog", None, vec![])
        .unwrap()
        .task;
    assert_eq!(host.run_until_idle().await.unwrap(), 2);

    let t = task(&host, &attack);
    assert_eq!(t.status, Status::Failed, "{t:?}");
    assert_eq!(t.outcome_key, Some(format!("failures/{}", t.id)));
    assert_bystander_completed(&host, &behind);
    assert_demo_chain_completes(&host).await;

    let reason = t.error.unwrap();
    assert!(
        reason.starts_with("memory limit: ") && reason.ends_with("(limits.memory_mib)"),
        "{reason:?}"
    );
    assert!(!reason.contains('\n'), "{reason:?}");
    assert!(reason.contains("1 MiB"), "{reason:?}");
}
