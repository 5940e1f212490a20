//! Guarantee: an agent cannot read the vault, even while the host holds it for another
//! agent's outbound rules: not the vault file (under the permissive `virtualized` policy
//! too), not the `BATON_SECRET_*` environment, not a blackboard key; nothing it stores
//! contains a secret.

use baton::store::Status;
use baton::vault::Vault;
use baton::{Host, Mesh};

use crate::common::{outcome, run, text};
use crate::http_fixture::SECRET;

#[tokio::test]
async fn no_agent_reaches_the_vault() {
    let dir = tempfile::tempdir().unwrap();
    let vault_file = dir.path().join("vault.toml");
    std::fs::write(&vault_file, format!("example = \"{SECRET}\"\n")).unwrap();
    let vault = Vault::load(&vault_file).unwrap();

    let manifest = r#"
[[agent]]
id = "escape"
component = "escape.wasm"
policy = "virtualized"

[[agent]]
id = "env"
component = "env.wasm"

[[agent]]
id = "snoop"
component = "snoop.wasm"
reads = ["**"]

[[agent]]
id = "fetcher"
component = "fetcher.wasm"

[[agent.outbound]]
scheme = "http"
host = "127.0.0.1"
port = 9
headers = { Authorization = "Bearer {secret:example}" }
"#;
    let mesh = Mesh::parse("test.toml", manifest, |path| {
        Ok(match path.to_str().unwrap() {
            "escape.wasm" => baton_artifacts::escape_probe::WASM,
            "env.wasm" => baton_artifacts::env_probe::WASM,
            "snoop.wasm" => baton_artifacts::snoop::WASM,
            "fetcher.wasm" => baton_artifacts::fetcher::WASM,
            other => panic!("no component {other}"),
        }
        .to_vec())
    })
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let host = Host::load_with(&mesh, state.path(), &vault).unwrap();

    // The vault file, by its real path, from an agent that may link the filesystem.
    let path = vault_file.display().to_string();
    let report = run(&host, "escape", None, vec![text("file", &path)]).await;
    let seen = outcome(&host, &report, "escape");
    assert!(seen["read_file"]["error"].is_string(), "{seen}");

    // The environment, where `BATON_SECRET_*` would be.
    let report = run(&host, "env", None, vec![]).await;
    assert_eq!(
        outcome(&host, &report, "env")["vars"],
        serde_json::json!([])
    );

    // The blackboard, with a grant to read everything: the vault is not there.
    let report = run(
        &host,
        "snoop",
        None,
        vec![text("a", "vault/example"), text("b", "example")],
    )
    .await;
    let seen = outcome(&host, &report, "snoop");
    assert_eq!(
        seen["vault/example"]["error"],
        "not-found: no key `vault/example`"
    );
    assert_eq!(seen["example"]["error"], "not-found: no key `example`");

    // Nothing any agent stored holds the secret.
    for key in host.store().keys("").unwrap() {
        for entry in host.store().history(&key).unwrap() {
            assert!(
                !String::from_utf8_lossy(&entry.value).contains(SECRET),
                "{key} holds the secret"
            );
        }
    }
    // The host lives.
    let report = run(&host, "env", None, vec![]).await;
    assert_eq!(report.tasks[0].status, Status::Completed);
}
