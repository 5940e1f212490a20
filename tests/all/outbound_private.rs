//! Guarantee: a rule naming a host by name reaches public addresses only. The host
//! resolves the name itself and refuses loopback, private and link-local results, so
//! `localhost` (a name that resolves to 127.0.0.1) is denied; only a rule that writes the
//! address literally, like `127.0.0.1`, reaches it.

use crate::common::{assert_demo_chain_completes, log};
use crate::http_fixture::{DEMO_PAIR, SECRET, Server, fetch, get, load, mesh};

#[tokio::test]
async fn a_name_resolving_to_loopback_is_denied_and_the_literal_address_works() {
    let server = Server::start();
    let port = server.port();
    let m = mesh(&format!(
        r#"
[[agent]]
id = "fetcher"
component = "fetcher.wasm"

[[agent.outbound]]
scheme = "http"
host = "localhost"
port = {port}
headers = {{ Authorization = "Bearer {{secret:example}}" }}

[[agent]]
id = "direct"
component = "fetcher.wasm"

[[agent.outbound]]
scheme = "http"
host = "127.0.0.1"
port = {port}
{DEMO_PAIR}"#
    ));
    let (host, state) = load(&m);

    let seen = fetch(
        &host,
        "fetcher",
        get(&format!("http://localhost:{port}/v1/models")),
    )
    .await;
    let error = seen["error"].as_str().unwrap_or_else(|| panic!("{seen}"));
    assert!(error.contains("DestinationIpProhibited"), "{error}");
    assert!(
        server.received().is_empty(),
        "the credential left the host: {:?}",
        server.received()
    );
    let log = log(state.path(), "fetcher");
    assert!(
        log.contains("`localhost` resolves to") && log.contains("not a public address"),
        "{log}"
    );
    assert!(!log.contains(SECRET));

    // The same server, named by its literal address, is reachable.
    let seen = fetch(&host, "direct", get(&server.url("/v1/models"))).await;
    assert_eq!(seen["status"], 200, "{seen}");
    assert_eq!(server.received().len(), 1);
    assert!(server.received()[0].header("authorization").is_empty());

    assert_demo_chain_completes(&host).await;
}
