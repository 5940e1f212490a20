//! Guarantee: a request no outbound rule admits never leaves the host: the server records
//! nothing, the guest gets `HTTP-request-denied`, the refusal is in the agent's log, and
//! the host carries on. An agent with no rules that imports `wasi:http` is refused at load.

use baton::{Host, LoadError};

use crate::common::{agent, assert_demo_chain_completes, log, mesh as agents_mesh};
use crate::http_fixture::{DEMO_PAIR, SECRET, Server, fetch, get, load, mesh};

fn denied(seen: &serde_json::Value) {
    let error = seen["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {seen}"));
    assert!(error.contains("HttpRequestDenied"), "{error}");
}

#[tokio::test]
async fn other_paths_ports_schemes_and_dot_segments_are_denied() {
    let server = Server::start();
    let other = Server::start();
    let m = mesh(&format!(
        r#"
[[agent]]
id = "fetcher"
component = "fetcher.wasm"

[[agent.outbound]]
scheme = "http"
host = "127.0.0.1"
port = {port}
path_prefix = "/v1/"
headers = {{ Authorization = "Bearer {{secret:example}}" }}
{DEMO_PAIR}"#,
        port = server.port()
    ));
    let (host, state) = load(&m);

    for url in [
        server.url("/admin"),
        server.url("/v1"),
        server.url("/v1/../admin"),
        server.url("/v1/%2e%2e/admin"),
        other.url("/v1/models"),
        format!("https://{}/v1/models", server.addr),
        format!("http://localhost:{}/v1/models", server.port()),
    ] {
        let seen = fetch(&host, "fetcher", get(&url)).await;
        denied(&seen);
        assert!(!seen.to_string().contains(SECRET));
    }
    assert!(server.received().is_empty(), "{:?}", server.received());
    assert!(other.received().is_empty(), "{:?}", other.received());

    let log = log(state.path(), "fetcher");
    assert_eq!(log.matches("outbound request denied").count(), 7, "{log}");
    assert!(
        log.contains("/admin: no outbound rule of agent `fetcher` admits it"),
        "{log}"
    );
    assert!(!log.contains(SECRET));

    // The rule itself still works, and so does the rest of the mesh.
    let seen = fetch(&host, "fetcher", get(&server.url("/v1/models"))).await;
    assert_eq!(seen["status"], 200, "{seen}");
    assert_eq!(server.received().len(), 1);
    assert_demo_chain_completes(&host).await;
}

#[tokio::test]
async fn rules_for_another_host_admit_nothing_here() {
    let server = Server::start();
    let m = mesh(&format!(
        r#"
[[agent]]
id = "fetcher"
component = "fetcher.wasm"

[[agent.outbound]]
host = "api.example.com"
headers = {{ Authorization = "Bearer {{secret:example}}" }}
{DEMO_PAIR}"#
    ));
    let (host, _state) = load(&m);

    let seen = fetch(&host, "fetcher", get(&server.url("/v1/models"))).await;
    denied(&seen);
    assert!(server.received().is_empty(), "{:?}", server.received());
    assert_demo_chain_completes(&host).await;
}

#[tokio::test]
async fn an_agent_without_rules_that_imports_http_is_refused_at_load() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("state");
    let err = Host::load(
        &agents_mesh(vec![
            agent("writer", baton_artifacts::writer::WASM),
            agent("fetcher", baton_artifacts::fetcher::WASM),
        ]),
        &dir,
    )
    .err()
    .expect("the load is refused");
    let LoadError::Refused { agent, verdict, .. } = &err else {
        panic!("expected a refusal, got {err}");
    };
    assert_eq!(agent, "fetcher");
    let refused: Vec<&str> = verdict.refused.iter().map(|r| r.import.as_str()).collect();
    assert!(!refused.is_empty());
    assert!(
        refused.iter().all(|i| i.starts_with("wasi:http/")),
        "{refused:?}"
    );
    assert!(
        err.to_string()
            .contains("(`wasi:http` reaches host resources; no baton policy links it)"),
        "{err}"
    );
    assert!(!dir.exists(), "a refused mesh must not create state");
}
