//! Guarantee: every handoff has a deadline; when the callee misses it (or traps, or
//! errs) the caller's declared fallback runs: retry with backoff, reroute to another
//! agent, escalate to the operator inbox, or record the failure on the blackboard and
//! continue. With no fallback the chain fails, with the reason recorded.

use baton::Host;
use baton::store::{FailureKind, Param, Status};

use crate::common::{agent, agent_to, int, mesh, outcome, run, text};

fn host(state: &std::path::Path) -> Host {
    Host::load(
        &mesh(vec![
            agent_to(
                "caller",
                baton_artifacts::caller::WASM,
                &["sleeper", "writer", "crasher"],
            ),
            agent("sleeper", baton_artifacts::sleeper::WASM),
            agent("writer", baton_artifacts::writer::WASM),
            agent("crasher", baton_artifacts::crasher::WASM),
        ]),
        state,
    )
    .unwrap()
}

fn params(target: &str, fallback: &str, extra: Vec<Param>) -> Vec<Param> {
    let mut p = vec![
        text("target", target),
        text("fallback", fallback),
        int("deadline_ms", 500),
    ];
    p.extend(extra);
    p
}

#[tokio::test]
async fn reroute_after_a_timeout_lets_another_agent_finish() {
    let state = tempfile::tempdir().unwrap();
    let host = host(state.path());
    let report = run(
        &host,
        "caller",
        None,
        params("sleeper", "reroute", vec![text("reroute_to", "writer")]),
    )
    .await;
    assert_eq!(report.status, "completed", "{report:?}");

    let slept = report.tasks.iter().find(|t| t.agent == "sleeper").unwrap();
    assert_eq!(slept.status, Status::Failed);
    assert!(
        slept
            .error
            .as_deref()
            .unwrap()
            .starts_with("deadline: no outcome within"),
        "{slept:?}"
    );
    let applied = slept.fallback.clone().unwrap();
    assert_eq!(
        (applied.reason, applied.action.as_str()),
        (FailureKind::Timeout, "reroute")
    );

    // The rerouted task carries the same pointer; the writer read it and finished.
    let rerouted = report.task(applied.next_task.as_deref().unwrap()).unwrap();
    assert_eq!(
        (rerouted.agent.as_str(), rerouted.status),
        ("writer", Status::Completed)
    );
    let article = outcome(&host, &report, "writer");
    assert_eq!(article["based_on"]["writer"], "caller");
    assert_eq!(report.outcome, article);
}

#[tokio::test]
async fn retry_runs_again_with_backoff_then_gives_up() {
    let state = tempfile::tempdir().unwrap();
    let host = host(state.path());
    let report = run(
        &host,
        "caller",
        None,
        params(
            "crasher",
            "retry",
            vec![int("attempts", 2), int("backoff_ms", 20)],
        ),
    )
    .await;
    let crashed = report.tasks.iter().find(|t| t.to == "crasher").unwrap();
    assert_eq!(crashed.status, Status::Failed);
    assert_eq!(crashed.attempts, 3, "one run and two retries");
    assert!(
        crashed.error.as_deref().unwrap().starts_with("trap: "),
        "{crashed:?}"
    );
    assert_eq!(
        report.status, "failed",
        "retries ran out, so the chain failed"
    );
    assert!(report.error.as_deref().unwrap().contains("crasher"));
}

#[tokio::test]
async fn escalate_puts_the_task_in_the_operator_inbox() {
    let state = tempfile::tempdir().unwrap();
    let host = host(state.path());
    let report = run(&host, "caller", None, params("sleeper", "escalate", vec![])).await;
    let slept = report.tasks.iter().find(|t| t.agent == "sleeper").unwrap();
    assert_eq!(slept.fallback.as_ref().unwrap().action, "escalate");
    assert_eq!(
        report.status, "completed",
        "an escalated task is handled, by a human"
    );

    let inbox = host.store().escalations(false).unwrap();
    assert_eq!(inbox.len(), 1);
    assert_eq!(
        (inbox[0].task.as_str(), inbox[0].agent.as_str()),
        (slept.id.as_str(), "sleeper")
    );
    assert!(inbox[0].reason.starts_with("deadline: no outcome within"));

    let resolved = host
        .store()
        .resolve(&slept.id, Some("called the vendor"))
        .unwrap()
        .unwrap();
    assert_eq!(resolved.note.as_deref(), Some("called the vendor"));
    assert!(host.store().escalations(false).unwrap().is_empty());
    assert_eq!(host.store().escalations(true).unwrap().len(), 1);
    assert!(
        host.store().resolve(&slept.id, None).unwrap().is_err(),
        "resolved twice"
    );
}

#[tokio::test]
async fn record_writes_the_failure_to_the_blackboard_and_the_chain_continues() {
    let state = tempfile::tempdir().unwrap();
    let host = host(state.path());
    let report = run(&host, "caller", None, params("crasher", "record", vec![])).await;
    assert_eq!(report.status, "completed");
    let crashed = report.tasks.iter().find(|t| t.to == "crasher").unwrap();
    let key = format!("failures/{}", crashed.id);
    assert_eq!(crashed.outcome_key.as_deref(), Some(key.as_str()));
    let entry = host.store().read(&key, None).unwrap().unwrap();
    assert_eq!(entry.writer, "host");
    let record: serde_json::Value = serde_json::from_slice(&entry.value).unwrap();
    assert_eq!(record["agent"], "crasher");
    assert_eq!(
        record["reason"],
        "trap: wasm `unreachable` instruction executed"
    );
    // Why it panicked is in the agent's log, from its captured stderr.
    let log = crate::common::log(state.path(), "crasher");
    assert!(
        log.contains(&format!("crasher dies on {}", crashed.id)),
        "{log}"
    );
}

#[tokio::test]
async fn without_a_fallback_a_missed_deadline_fails_the_chain() {
    let state = tempfile::tempdir().unwrap();
    let host = host(state.path());
    let report = run(&host, "caller", None, params("sleeper", "none", vec![])).await;
    assert_eq!(report.status, "failed");
    let slept = report.tasks.iter().find(|t| t.agent == "sleeper").unwrap();
    assert_eq!(slept.fallback, None);
    assert!(
        report
            .error
            .as_deref()
            .unwrap()
            .contains("deadline: no outcome within")
    );
    // The host lives: the next chain runs.
    let again = run(&host, "caller", None, vec![text("target", "writer")]).await;
    assert_eq!(again.status, "completed", "{again:?}");
}
