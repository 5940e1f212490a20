//! Guarantee: an agent cannot read the host's environment, arguments or stdin: under the
//! default policy they are linked, but empty.

use baton::Host;

use crate::common::{agent, assert_demo_chain_completes, mesh_under_attack, outcome, run};

#[tokio::test]
async fn the_environment_the_agent_sees_is_empty() {
    // The host process has an environment worth stealing.
    assert!(std::env::vars().count() > 0);
    let state = tempfile::tempdir().unwrap();
    let host = Host::load(
        &mesh_under_attack(agent("probe", baton_artifacts::env_probe::WASM)),
        state.path(),
    )
    .unwrap();
    let report = run(&host, "probe", None, vec![]).await;
    let seen = outcome(&host, &report, "probe");
    assert_eq!(seen["vars"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["args"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["stdin"], "");
    assert_demo_chain_completes(&host).await;
}
