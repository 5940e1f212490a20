//! Guarantee: under the `virtualized` policy (for language runtimes that import the whole
//! WASI set), filesystem and socket imports link but reach nothing: no file can be read,
//! listed or written, no connection leaves, no name resolves; the same component is
//! refused outright by the default policy.

use std::net::TcpListener;

use baton::{Host, LoadError, Policy};

use crate::common::{agent, assert_demo_chain_completes, mesh_under_attack, outcome, run, text};

#[tokio::test]
async fn files_and_sockets_reach_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let marker = std::path::Path::new("/tmp/baton-escape");
    let _ = std::fs::remove_file(marker);

    let state = tempfile::tempdir().unwrap();
    let mut probe = agent("probe", baton_artifacts::escape_probe::WASM);
    probe.policy = Policy::Virtualized;
    let host = Host::load(&mesh_under_attack(probe), state.path()).unwrap();
    let report = run(&host, "probe", None, vec![text("addr", &addr)]).await;
    let seen = outcome(&host, &report, "probe");

    for attempt in ["read_file", "list_root", "write_tmp", "connect", "lookup"] {
        assert!(
            seen[attempt]["error"].is_string(),
            "{attempt} got through: {seen}"
        );
    }
    // Nothing arrived at the listener and nothing was written on the host.
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a connection reached the host"
    );
    assert!(!marker.exists(), "the agent wrote a host file");
    assert_demo_chain_completes(&host).await;
}

#[test]
fn the_default_policy_refuses_the_same_component() {
    let state = tempfile::tempdir().unwrap();
    let err = Host::load(
        &mesh_under_attack(agent("probe", baton_artifacts::escape_probe::WASM)),
        state.path(),
    )
    .err()
    .expect("refused");
    let LoadError::Refused { verdict, .. } = &err else {
        panic!("{err}")
    };
    let refused: Vec<&str> = verdict.refused.iter().map(|r| r.import.as_str()).collect();
    assert!(
        refused.contains(&"wasi:filesystem/preopens@0.2.6"),
        "{refused:?}"
    );
    assert!(refused.contains(&"wasi:sockets/tcp@0.2.6"), "{refused:?}");
}
