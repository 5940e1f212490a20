//! Guarantee: handoffs are routed statically (an agent id), conditionally (a manifest
//! route whose first matching rule picks the agent), or dynamically (a router agent picks);
//! a route the caller may not use, or one with no matching rule, fails at `hand-off`.

use baton::Host;
use baton::manifest::{Route, Rule};
use baton::store::ParamValue;
use serde_json::json;

use crate::common::{agent, agent_to, mesh, outcome, run, text};

fn lang(l: &str, to: &str) -> Rule {
    Rule {
        param: Some("lang".into()),
        equals: Some(ParamValue::Text(l.into())),
        kind: None,
        to: to.into(),
    }
}

#[tokio::test]
async fn rules_and_a_router_send_each_ticket_to_its_agent() {
    let state = tempfile::tempdir().unwrap();
    let mut m = mesh(vec![
        agent_to(
            "triage",
            baton_artifacts::triage::WASM,
            &["route:by-lang", "router"],
        ),
        agent_to(
            "router",
            baton_artifacts::router::WASM,
            &["french", "english"],
        ),
        agent("french", baton_artifacts::echo::WASM),
        agent("english", baton_artifacts::echo::WASM),
        agent("desk", baton_artifacts::echo::WASM),
    ]);
    let default = Rule {
        param: None,
        equals: None,
        kind: None,
        to: "desk".into(),
    };
    m.routes = vec![Route {
        id: "by-lang".into(),
        rules: vec![lang("fr", "french"), lang("en", "english"), default],
    }];
    let host = Host::load(&m, state.path()).unwrap();
    let report = run(&host, "triage", None, vec![]).await;
    assert_eq!(report.status, "completed", "{report:?}");

    let hops: Vec<(&str, &str, Option<&str>)> = report
        .handoffs
        .iter()
        .map(|h| (h.from.as_str(), h.to.as_str(), h.route.as_deref()))
        .collect();
    assert_eq!(
        hops,
        [
            ("triage", "french", Some("route:by-lang")),
            ("triage", "english", Some("route:by-lang")),
            ("triage", "desk", Some("route:by-lang")),
            ("triage", "router", None),
            ("router", "french", None),
        ]
    );
    // Each agent got the ticket meant for it.
    for t in report
        .tasks
        .iter()
        .filter(|t| t.agent == "english" || t.agent == "desk")
    {
        let key = t.outcome_key.clone().unwrap();
        let seen: serde_json::Value =
            serde_json::from_slice(&host.store().read(&key, None).unwrap().unwrap().value).unwrap();
        let want = if t.agent == "english" { "en" } else { "de" };
        assert_eq!(seen["data"]["lang"], want);
    }
    let triage = outcome(&host, &report, "triage");
    assert_eq!(
        triage,
        json!({ "route:fr": "french", "route:en": "english", "route:de": "desk", "router": "router" })
    );
}

#[tokio::test]
async fn a_route_without_a_match_or_permission_fails_at_hand_off() {
    let state = tempfile::tempdir().unwrap();
    let mut m = mesh(vec![
        agent_to("rogue", baton_artifacts::rogue::WASM, &["route:strict"]),
        agent("french", baton_artifacts::echo::WASM),
    ]);
    m.routes = vec![
        Route {
            id: "strict".into(),
            rules: vec![lang("fr", "french")],
        },
        Route {
            id: "other".into(),
            rules: vec![lang("fr", "french")],
        },
    ];
    let host = Host::load(&m, state.path()).unwrap();
    // The rogue hands off with no params, so no rule of `strict` matches.
    let report = run(
        &host,
        "rogue",
        None,
        vec![text("a", "route:strict"), text("b", "route:other")],
    )
    .await;
    let seen = outcome(&host, &report, "rogue");
    assert_eq!(
        seen["route:strict"]["error"],
        "not-found: route `strict` has no rule matching this handoff"
    );
    assert_eq!(
        seen["route:other"]["error"],
        "denied: agent `rogue` may not hand off to `route:other`: it is not in its `handoff` list"
    );
    assert!(report.handoffs.is_empty());
}
