//! Guarantee: a guest cannot forge or override an injected credential: its own header of
//! that name (in any case) is removed and only the host's value reaches the server, and a
//! `{secret:...}` reference the guest writes itself is sent as plain text, never resolved.

use crate::common::{assert_demo_chain_completes, text};
use crate::http_fixture::{DEMO_PAIR, SECRET, Server, fetch, load, mesh};

fn manifest(port: u16) -> String {
    format!(
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

[[agent.outbound]]
scheme = "http"
host = "127.0.0.1"
port = {port}
path_prefix = "/open/"
{DEMO_PAIR}"#
    )
}

#[tokio::test]
async fn the_guests_own_authorization_header_never_reaches_the_server() {
    let server = Server::start();
    let (host, _state) = load(&crate::http_fixture::mesh(&manifest(server.port())));

    for name in ["Authorization", "authorization", "AUTHORIZATION"] {
        let seen = fetch(
            &host,
            "fetcher",
            vec![
                text("url", &server.url("/v1/chat")),
                text("header", name),
                text("value", "Bearer forged-by-the-guest"),
            ],
        )
        .await;
        assert_eq!(seen["status"], 200, "{seen}");
        assert!(!seen.to_string().contains(SECRET), "{seen}");
    }

    let received = server.received();
    assert_eq!(received.len(), 3, "{received:?}");
    for request in &received {
        assert_eq!(
            request.header("authorization"),
            [format!("Bearer {SECRET}").as_str()],
            "{request:?}"
        );
    }
    assert_demo_chain_completes(&host).await;
}

#[tokio::test]
async fn a_secret_reference_written_by_the_guest_is_not_resolved() {
    let server = Server::start();
    let (host, _state) = load(&mesh(&manifest(server.port())));

    let seen = fetch(
        &host,
        "fetcher",
        vec![
            text("url", &server.url("/open/x")),
            text("header", "Authorization"),
            text("value", "Bearer {secret:example}"),
        ],
    )
    .await;
    assert_eq!(seen["status"], 200, "{seen}");

    let received = server.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        received[0].header("authorization"),
        ["Bearer {secret:example}"]
    );
    assert!(!seen.to_string().contains(SECRET), "{seen}");
    assert_demo_chain_completes(&host).await;
}
