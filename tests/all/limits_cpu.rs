//! Guarantee: an activation that runs past its agent's `limits.cpu_ms` is interrupted by
//! the epoch deadline and its task fails with a readable reason naming the limit; every
//! activation gets a fresh budget, and the host and every other agent carry on. Time the
//! activation spends waiting in host calls is not charged to it; time it runs is, waits
//! or no waits.

use baton::Host;

use crate::common::{
    agent, assert_bystander_completed, assert_demo_chain_completes, assert_failed, int, mesh,
    mesh_under_attack, outcome, run,
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

#[tokio::test]
async fn waiting_in_host_calls_costs_no_cpu_time() {
    let state = tempfile::tempdir().unwrap();
    // A budget of four 5 ms ticks, and eight naps of two ticks each that use next to no
    // CPU: the meter used to charge a tick on each return from a wait, and stopped the
    // agent at its fourth nap.
    let host = napper(state.path(), 20);

    let report = run(&host, "napper", None, vec![int("naps", 8), int("ms", 10)]).await;
    assert_eq!(outcome(&host, &report, "napper")["naps"], 8);
}

#[tokio::test]
async fn running_between_waits_is_charged() {
    let state = tempfile::tempdir().unwrap();
    // The same naps, but 10 ms of spinning before each: 80 ms of CPU against a 50 ms
    // budget. Waiting in between must not reset or hide what the spinning costs.
    let host = napper(state.path(), 50);

    let naps = vec![int("naps", 8), int("ms", 10), int("spin_ms", 10)];
    let task = host
        .submit("napper", "spin and nap", None, naps)
        .unwrap()
        .task;
    host.run_until_idle().await.unwrap();
    assert_failed(
        &host,
        &task,
        "cpu time limit: ran past 50 ms (limits.cpu_ms)",
    );
}

/// A host in `state` running only the `napper` agent, with a CPU budget of `cpu_ms`.
fn napper(state: &std::path::Path, cpu_ms: u64) -> Host {
    let mut napper = agent("napper", baton_artifacts::napper::WASM);
    napper.limits.cpu_ms = cpu_ms;
    Host::load(&mesh(vec![napper]), state).unwrap()
}
