//! Guarantee: an agent reads only its own namespace, the keys its manifest globs grant,
//! and the exact keys that tasks delivered to it point at. Any other read is a `denied`
//! error returned to the guest (not a trap), logged, and the host carries on.

use baton::Host;
use serde_json::{Value, json};

use crate::common::{agent, log, mesh, outcome, run, text};

#[tokio::test]
async fn snoop_is_denied_other_agents_keys_and_the_host_lives() {
    let state = tempfile::tempdir().unwrap();
    let mut researcher = agent("researcher", baton_artifacts::researcher::WASM);
    researcher.handoff = vec!["writer".into()];
    let mut snoop = agent("snoop", baton_artifacts::snoop::WASM);
    snoop.reads = vec!["output/researcher/*".into()];
    let mesh = mesh(vec![
        researcher,
        agent("writer", baton_artifacts::writer::WASM),
        snoop,
    ]);
    let host = Host::load(&mesh, state.path()).unwrap();

    // Something worth stealing: the researcher → writer chain.
    let first = run(
        &host,
        "researcher",
        Some(json!({ "topic": "gold" })),
        vec![],
    )
    .await;
    let findings = first.handoffs[0].key.clone().unwrap();
    let article = first.outcome_key.clone().unwrap();
    let other_input = first.input.key.clone().unwrap();

    // Snoop gets its own task with data, then tries everything.
    let data = json!({ "mine": true });
    let submitted = host
        .submit(
            "snoop",
            "look around",
            Some(serde_json::to_vec(&data).unwrap()),
            vec![
                text("a", &article),
                text("b", &other_input),
                text("c", "output/snoop/scratch"),
                text("d", &findings),
                text("e", "vault/openai"),
            ],
        )
        .unwrap();
    let pointer = host
        .store()
        .task(&submitted.task)
        .unwrap()
        .unwrap()
        .pointer
        .unwrap();
    host.run_until_idle().await.unwrap();
    let report = baton::Report::for_task(host.store(), &submitted.task)
        .unwrap()
        .unwrap();
    let seen = outcome(&host, &report, "snoop");

    let denied = |key: &str| {
        format!(
            "denied: agent `snoop` may not read `{key}`: it is not in its namespace, its `reads` globs, or a task delivered to it"
        )
    };
    // Another agent's outcome, and another task's input: denied, with the key named.
    assert_eq!(seen[&article], json!({ "error": denied(&article) }));
    assert_eq!(seen[&other_input], json!({ "error": denied(&other_input) }));
    assert_eq!(
        seen["vault/openai"],
        json!({ "error": denied("vault/openai") })
    );
    // Its own namespace is readable (nothing there yet), and so is a granted glob.
    assert_eq!(
        seen["output/snoop/scratch"],
        json!({ "error": "not-found: no key `output/snoop/scratch`" })
    );
    let stolen: Value = serde_json::from_str(seen[&findings]["ok"].as_str().unwrap()).unwrap();
    assert_eq!(
        stolen["topic"], "gold",
        "the `reads` glob grants researcher keys"
    );

    // Nothing was granted by the failed reads; the delivered pointer was.
    assert!(!host.store().is_granted("snoop", &article).unwrap());
    assert!(host.store().is_granted("snoop", &pointer).unwrap());

    // Every denial is in the snoop's log, naming the key.
    let log = log(state.path(), "snoop");
    for key in [&article, &other_input, "vault/openai"] {
        assert!(log.contains(&denied(key)), "log lacks {key}:\n{log}");
    }

    // The host lives: the next chain runs normally.
    let again = run(
        &host,
        "researcher",
        Some(json!({ "topic": "silver" })),
        vec![],
    )
    .await;
    assert_eq!(again.status, "completed");
}

#[tokio::test]
async fn a_pointer_grants_exactly_its_key() {
    let state = tempfile::tempdir().unwrap();
    let host = Host::load(
        &mesh(vec![agent("snoop", baton_artifacts::snoop::WASM)]),
        state.path(),
    )
    .unwrap();

    // Two submissions; the second snoop task may read its own pointer but not the first's.
    let first = host
        .submit("snoop", "one", Some(b"1".to_vec()), vec![])
        .unwrap();
    let first_key = first.handoff.key.clone().unwrap();
    host.run_until_idle().await.unwrap();

    let second = host
        .submit("snoop", "two", Some(b"2".to_vec()), vec![])
        .unwrap();
    let second_key = second.handoff.key.clone().unwrap();
    // Grants are made at delivery, so the first delivery granted only the first key.
    assert!(host.store().is_granted("snoop", &first_key).unwrap());
    assert!(!host.store().is_granted("snoop", &second_key).unwrap());
    host.run_until_idle().await.unwrap();

    let third = host
        .submit(
            "snoop",
            "three",
            None,
            vec![text("a", &second_key), text("b", "output/operator/h-99")],
        )
        .unwrap();
    host.run_until_idle().await.unwrap();
    let report = baton::Report::for_task(host.store(), &third.task)
        .unwrap()
        .unwrap();
    let seen = outcome(&host, &report, "snoop");
    assert_eq!(
        seen[&second_key],
        json!({ "ok": "2" }),
        "a delivered pointer stays readable"
    );
    assert!(
        seen["output/operator/h-99"]["error"]
            .as_str()
            .unwrap()
            .starts_with("denied: agent `snoop` may not read `output/operator/h-99`")
    );
}
