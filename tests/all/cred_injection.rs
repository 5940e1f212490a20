//! Guarantee: a request that matches an outbound rule reaches the server carrying the
//! credential the host injected from the vault, and the agent that made it never sees it.

use crate::common::assert_demo_chain_completes;
use crate::http_fixture::{DEMO_PAIR, SECRET, Server, fetch, get, load, mesh};

#[tokio::test]
async fn the_host_signs_the_request_and_the_guest_never_holds_the_key() {
    let server = Server::start();
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
headers = {{ Authorization = "Bearer {{secret:example}}", X-Client = "baton" }}
{DEMO_PAIR}"#,
        port = server.port()
    ));
    let (host, _state) = load(&m);

    let seen = fetch(&host, "fetcher", get(&server.url("/v1/models"))).await;

    let received = server.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let request = &received[0];
    assert_eq!(request.path, "/v1/models");
    assert_eq!(
        request.header("authorization"),
        [format!("Bearer {SECRET}").as_str()]
    );
    assert_eq!(request.header("x-client"), ["baton"]);

    assert_eq!(seen["status"], 200, "{seen}");
    let shown = seen.to_string();
    assert!(!shown.contains(SECRET), "the guest saw the secret: {shown}");
    assert!(
        !shown.contains("sk-live"),
        "the guest saw part of it: {shown}"
    );

    assert_demo_chain_completes(&host).await;
}
