//! Guarantee: `https` outbound requests go out over TLS, checked against the public web's
//! roots and the CA certificates the mesh trusts (`[mesh] ca_certs`), and the host still
//! signs them with the vault's credential and redacts it from what comes back. A server
//! whose certificate no trusted CA signed gets no request: the handshake fails, the agent
//! gets an error, and the host carries on.

use crate::common::{assert_demo_chain_completes, log};
use crate::http_fixture::{DEMO_PAIR, SECRET, Server, TestCa, fetch, get, load, mesh_with};

/// A mesh whose fetcher may GET `https://127.0.0.1:<port>/v1/`, signed with the vault's
/// credential, and that trusts the CA in `ca_pem` if one is given.
fn https_mesh(port: u16, ca_pem: Option<&str>) -> baton::Mesh {
    let trust = if ca_pem.is_some() {
        "[mesh]\nca_certs = \"private-ca.pem\"\n"
    } else {
        ""
    };
    let text = format!(
        r#"{trust}
[[agent]]
id = "fetcher"
component = "fetcher.wasm"

[[agent.outbound]]
scheme = "https"
host = "127.0.0.1"
port = {port}
path_prefix = "/v1/"
headers = {{ Authorization = "Bearer {{secret:example}}" }}
{DEMO_PAIR}"#
    );
    let files: Vec<(&str, &[u8])> = ca_pem
        .map(|pem| ("private-ca.pem", pem.as_bytes()))
        .into_iter()
        .collect();
    mesh_with(&text, &files)
}

#[tokio::test]
async fn an_https_request_to_a_server_the_mesh_trusts_is_signed_and_redacted() {
    let ca = TestCa::new("baton test CA");
    let server = Server::start_tls(&ca);
    let (host, _state) = load(&https_mesh(server.port(), Some(&ca.pem)));

    let seen = fetch(&host, "fetcher", get(&server.url("/v1/models"))).await;

    // The server got the request over TLS, with the host's credential.
    let received = server.received();
    assert_eq!(received.len(), 1, "{seen}");
    assert_eq!(received[0].path, "/v1/models");
    assert_eq!(
        received[0].header("authorization"),
        [format!("Bearer {SECRET}").as_str()]
    );
    // What the server echoed came back to the guest redacted.
    assert_eq!(seen["status"], 200, "{seen}");
    let shown = seen.to_string();
    assert!(!shown.contains(SECRET), "the guest saw the secret: {shown}");
    assert!(
        seen["body"]
            .as_str()
            .unwrap_or_default()
            .contains("authorization: Bearer [REDACTED]\n"),
        "{seen}"
    );

    assert_demo_chain_completes(&host).await;
}

#[tokio::test]
async fn a_server_no_trusted_ca_signed_gets_no_request() {
    let untrusted = TestCa::new("a CA nobody trusts");
    let server = Server::start_tls(&untrusted);
    let trusted = TestCa::new("the mesh's CA");
    // Public roots only, and the public roots with another private CA.
    for ca_pem in [None, Some(trusted.pem.as_str())] {
        let (host, state) = load(&https_mesh(server.port(), ca_pem));

        let seen = fetch(&host, "fetcher", get(&server.url("/v1/models"))).await;

        assert_eq!(
            seen["error"], "ErrorCode::TlsCertificateError",
            "trusting {ca_pem:?}: {seen}"
        );
        assert!(!seen.to_string().contains(SECRET), "{seen}");
        // The operator learns why from the agent's log.
        let log = log(state.path(), "fetcher");
        assert!(
            log.contains(&format!(
                "outbound request failed: GET {}: TLS error: invalid peer certificate: UnknownIssuer",
                server.url("/v1/models")
            )),
            "{log}"
        );
        assert!(server.received().is_empty(), "{:?}", server.received());
        assert_demo_chain_completes(&host).await;
    }
}
