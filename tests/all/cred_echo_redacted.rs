//! Guarantee: a server that echoes the injected credential back, in a response header
//! and in a body that splits it across chunks, shows the guest `[REDACTED]`, never the
//! secret; and the secret is written nowhere in the state: not in any blackboard value,
//! task or handoff, not in the store file, not in the agent logs.

use crate::common::{assert_demo_chain_completes, log, text};
use crate::http_fixture::{
    DEMO_PAIR, SECRET, Server, contains, every_file, fetch, get, load, mesh,
};

#[tokio::test]
async fn an_echoed_secret_is_redacted_before_the_guest_sees_a_byte() {
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
headers = {{ Authorization = "Bearer {{secret:example}}" }}
{DEMO_PAIR}"#,
        port = server.port()
    ));
    let (host, state) = load(&m);

    let seen = fetch(&host, "fetcher", get(&server.url("/echo"))).await;

    // The server really echoed the credential it received.
    let received = server.received();
    assert_eq!(
        received[0].header("authorization"),
        [format!("Bearer {SECRET}").as_str()]
    );

    // Header: the echo is there, redacted.
    let headers = seen["headers"].as_array().expect("headers").clone();
    let echoed: Vec<&str> = headers
        .iter()
        .filter(|h| h[0] == "x-echo-authorization")
        .map(|h| h[1].as_str().unwrap())
        .collect();
    assert_eq!(echoed, ["Bearer [REDACTED]"], "{seen}");
    // A redacted body has no length to promise.
    assert!(headers.iter().all(|h| h[0] != "content-length"), "{seen}");

    // Body: the line was sent in three chunks, the secret split between them.
    let body = seen["body"].as_str().expect("body");
    assert!(
        body.contains("authorization: Bearer [REDACTED]\n"),
        "{body}"
    );
    assert!(!seen.to_string().contains(SECRET), "{seen}");
    assert!(!seen.to_string().contains("sk-live"), "{seen}");

    // A second request, with a body the server does not echo, and the host lives on.
    let again = fetch(
        &host,
        "fetcher",
        vec![
            text("url", &server.url("/echo")),
            text("method", "POST"),
            text("body", "hello"),
        ],
    )
    .await;
    assert_eq!(again["status"], 200, "{again}");
    let post = &server.received()[1];
    assert_eq!(
        (post.method.as_str(), post.body.as_slice()),
        ("POST", &b"hello"[..])
    );
    assert_demo_chain_completes(&host).await;

    // Nothing in the store: every task's outcome (and its history), every handoff key.
    let store = host.store();
    let mut scanned = 0;
    for id in 1..=64u32 {
        let Some(task) = store.task(&format!("t-{id}")).ok().flatten() else {
            continue;
        };
        let record = format!("{task:?}");
        assert!(!record.contains(SECRET), "task {id}: {record}");
        for key in [task.outcome_key.clone(), task.pointer.clone()]
            .into_iter()
            .flatten()
        {
            for entry in store.history(&key).unwrap() {
                scanned += 1;
                assert!(!contains(&entry.value, SECRET), "{key}");
            }
        }
    }
    assert!(scanned >= 4, "scanned only {scanned} blackboard values");

    // Nor anywhere on disk: the raw redb file and every log.
    let files = every_file(state.path());
    assert!(files.iter().any(|(name, _)| name.ends_with("store.redb")));
    for (name, bytes) in &files {
        assert!(!contains(bytes, SECRET), "the secret is in {name}");
    }
    assert!(!log(state.path(), "fetcher").contains(SECRET));
}
