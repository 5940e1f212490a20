//! Guarantee: no agent stores more than its `limits.payload_kib`: handoff data over the
//! limit is refused as `too-large` (a value the guest handles) and nothing is recorded; an
//! outcome over it fails the task with a readable reason and is not stored; work submitted
//! over the callee's limit is refused before anything is recorded. Data exactly at the
//! limit passes, and the host and every other agent carry on.

use baton::store::Status;
use baton::{Host, Report, SubmitError};
use serde_json::json;

use crate::common::{
    agent, assert_bystander_completed, assert_demo_chain_completes, assert_failed, int,
    mesh_under_attack, outcome, task, text,
};

const LIMIT: i64 = 4 * 1024;

fn host(state: &std::path::Path) -> Host {
    let mut bloat = agent("bloat", baton_artifacts::bloat::WASM);
    bloat.handoff = vec!["snoop".into()];
    bloat.limits.payload_kib = 4;
    Host::load(&mesh_under_attack(bloat), state).unwrap()
}

/// Submit a `bloat` task with these params; return its id.
fn bloat(host: &Host, mode: &str, bytes: i64) -> String {
    let params = vec![
        text("mode", mode),
        int("bytes", bytes),
        text("target", "snoop"),
    ];
    host.submit("bloat", mode, None, params).unwrap().task
}

#[tokio::test]
async fn handoff_data_over_the_limit_is_too_large_and_nothing_is_stored() {
    let state = tempfile::tempdir().unwrap();
    let host = host(state.path());

    let over = bloat(&host, "handoff", LIMIT + 1);
    let behind = host
        .submit("snoop", "after the bloat", None, vec![])
        .unwrap()
        .task;
    let at = bloat(&host, "handoff", LIMIT);
    host.run_until_idle().await.unwrap();

    // Over: refused to the guest, which completed and reported it; nothing recorded.
    let report = Report::for_task(host.store(), &over).unwrap().unwrap();
    assert_eq!(
        outcome(&host, &report, "bloat"),
        json!({ "error": "too-large: data is 4097 bytes; agent `bloat` may send at most 4096" })
    );
    assert!(report.handoffs.is_empty(), "{report:?}");
    let ran: Vec<&str> = report.tasks.iter().map(|t| t.agent.as_str()).collect();
    assert_eq!(ran, ["bloat"]);

    // At the limit: accepted, and the data stored is exactly the limit.
    let report = Report::for_task(host.store(), &at).unwrap().unwrap();
    assert_eq!(report.handoffs.len(), 1, "{report:?}");
    let h = &report.handoffs[0];
    assert_eq!(
        outcome(&host, &report, "bloat"),
        json!({ "ok": h.task.as_str() })
    );
    let stored = host
        .store()
        .read(h.key.as_deref().unwrap(), None)
        .unwrap()
        .unwrap();
    assert_eq!(stored.value.len() as i64, LIMIT);
    assert_eq!(task(&host, &h.task).status, Status::Completed);

    // The only data bloat ever got onto the blackboard is that one handoff.
    for n in 1..=6 {
        let key = format!("output/bloat/h-{n}");
        let entry = host.store().read(&key, None).unwrap();
        match &h.key {
            Some(k) if *k == key => assert!(entry.is_some()),
            _ => assert_eq!(entry, None, "{key}"),
        }
    }

    assert_bystander_completed(&host, &behind);
    assert_demo_chain_completes(&host).await;
}

#[tokio::test]
async fn an_outcome_over_the_limit_fails_the_task_and_is_not_stored() {
    let state = tempfile::tempdir().unwrap();
    let host = host(state.path());

    let over = bloat(&host, "outcome", LIMIT + 1);
    let behind = host
        .submit("snoop", "after the bloat", None, vec![])
        .unwrap()
        .task;
    let huge = bloat(&host, "outcome", 8 * 1024 * 1024);
    let at = bloat(&host, "outcome", LIMIT);
    assert_eq!(host.run_until_idle().await.unwrap(), 4);

    assert_failed(
        &host,
        &over,
        "outcome is 4097 bytes; agent `bloat` may store at most 4096 (limits.payload_kib)",
    );
    assert_failed(
        &host,
        &huge,
        "outcome is 8388608 bytes; agent `bloat` may store at most 4096 (limits.payload_kib)",
    );

    let t = task(&host, &at);
    assert_eq!(t.status, Status::Completed, "{t:?}");
    let stored = host
        .store()
        .read(t.outcome_key.as_deref().unwrap(), None)
        .unwrap()
        .unwrap();
    assert_eq!(stored.value.len() as i64, LIMIT);

    assert_bystander_completed(&host, &behind);
    assert_demo_chain_completes(&host).await;
}

#[tokio::test]
async fn work_submitted_over_the_limit_is_refused_before_it_is_recorded() {
    let state = tempfile::tempdir().unwrap();
    let host = host(state.path());

    let err = host
        .submit("bloat", "too big", Some(vec![b'x'; 4097]), vec![])
        .unwrap_err();
    assert!(matches!(err, SubmitError::TooLarge { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "--data is 4097 bytes; agent `bloat` accepts at most 4096 (limits.payload_kib)"
    );
    assert_eq!(host.store().inbox_depth("bloat").unwrap(), 0);
    assert_eq!(
        host.store().read("output/operator/h-1", None).unwrap(),
        None
    );
    assert_eq!(host.run_until_idle().await.unwrap(), 0);

    assert_demo_chain_completes(&host).await;
}
