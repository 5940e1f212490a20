//! Guarantee: a rule that names a secret the vault lacks stops the load, with an error
//! naming the file, the agent, the field and the secret's name, and no secret value in it;
//! nothing starts and no state is created.

use baton::{Host, Vault};

use crate::http_fixture::{DEMO_PAIR, mesh};

const OTHER: &str = "sk-other-91b2c3d4e5f60718293a4b5c";

#[test]
fn a_missing_secret_is_named_and_no_value_is_shown() {
    let m = mesh(&format!(
        r#"
[[agent]]
id = "fetcher"
component = "fetcher.wasm"

[[agent.outbound]]
host = "api.example.com"
path_prefix = "/v1/"
headers = {{ Authorization = "Bearer {{secret:example}}", X-Other = "{{secret:other}}" }}
{DEMO_PAIR}"#
    ));
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("state");
    let vault = Vault::empty().with("other", OTHER);

    let err = Host::load_with(&m, &dir, &vault)
        .err()
        .expect("the load is refused");
    assert_eq!(
        err.to_string(),
        "test.toml: agent `fetcher`: field `outbound[0].headers.Authorization`: secret `example` \
         is not in the vault: add `example = \"...\"` to the vault file (`--vault`) or set \
         BATON_SECRET_EXAMPLE"
    );
    for shown in [err.to_string(), format!("{err:?}"), format!("{vault:?}")] {
        assert!(!shown.contains(OTHER), "{shown}");
    }
    assert!(!dir.exists(), "a refused mesh must not create state");

    // With an empty vault (`Host::load`), the same mesh fails the same way.
    let err = Host::load(&m, &dir).err().expect("refused").to_string();
    assert!(
        err.contains("secret `example` is not in the vault"),
        "{err}"
    );
}

#[test]
fn a_broken_vault_file_is_reported_without_its_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.toml");
    std::fs::write(&path, format!("example = \"{OTHER}\nnext = 1\n")).unwrap();
    let err = Vault::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("the vault is not valid TOML (at line"),
        "{err}"
    );
    assert!(!err.contains(OTHER) && !err.contains("sk-other"), "{err}");

    std::fs::write(&path, format!("example = \"{OTHER}\"\nnumber = 12345\n")).unwrap();
    let err = Vault::load(&path).unwrap_err().to_string();
    assert!(
        err.ends_with("secret `number`: must be a string (`name = \"value\"`)"),
        "{err}"
    );
    assert!(!err.contains("12345") && !err.contains(OTHER), "{err}");
}
