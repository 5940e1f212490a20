//! Guarantee: pull dispatch hands tasks to a capability queue that several workers serve
//! concurrently; every task is claimed and completed exactly once, by a worker that
//! declares the capability, and the queue is bounded: past its depth `hand-off` is
//! refused with `busy` instead of growing.

use std::collections::BTreeMap;

use baton::Host;
use baton::store::Status;

use crate::common::{agent, agent_to, int, mesh, run};

fn worker(id: &str) -> baton::AgentSpec {
    let mut w = agent(id, baton_artifacts::summarizer::WASM);
    w.capabilities = vec!["summarize".into()];
    w
}

#[tokio::test]
async fn eight_tasks_spread_over_two_workers_each_done_once() {
    let state = tempfile::tempdir().unwrap();
    let host = Host::load(
        &mesh(vec![
            agent_to(
                "dispatcher",
                baton_artifacts::dispatcher::WASM,
                &["capability:summarize"],
            ),
            worker("w1"),
            worker("w2"),
        ]),
        state.path(),
    )
    .unwrap()
    .with_workers(3);
    let report = run(&host, "dispatcher", None, vec![int("count", 8)]).await;
    assert_eq!(report.status, "completed", "{report:?}");

    let pulls: Vec<_> = report
        .handoffs
        .iter()
        .filter(|h| h.pattern == "pull")
        .collect();
    assert_eq!(pulls.len(), 8);
    let mut per_worker: BTreeMap<String, usize> = BTreeMap::new();
    let mut parts = Vec::new();
    for h in &pulls {
        assert_eq!(h.to, "capability:summarize");
        let worker = h.claimed_by.clone().expect("every pull task was claimed");
        *per_worker.entry(worker.clone()).or_default() += 1;
        // Exactly one completion, stored in the claiming worker's namespace.
        let task = host.store().task(&h.task).unwrap().unwrap();
        assert_eq!(task.status, Status::Completed);
        assert_eq!(task.attempts, 1);
        let key = format!("output/{worker}/{}", h.task);
        assert_eq!(task.outcome_key.as_deref(), Some(key.as_str()));
        let history = host.store().history(&key).unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].writer, worker);
        let v: serde_json::Value = serde_json::from_slice(&history[0].value).unwrap();
        parts.push(v["part"].as_i64().unwrap());
    }
    assert_eq!(
        per_worker.keys().collect::<Vec<_>>(),
        ["w1", "w2"],
        "{per_worker:?}"
    );
    parts.sort_unstable();
    assert_eq!(
        parts,
        (0..8).collect::<Vec<_>>(),
        "no part lost or done twice"
    );
    assert_eq!(host.store().inbox_depth("capability:summarize").unwrap(), 0);
}

#[tokio::test]
async fn a_full_queue_refuses_with_busy() {
    let state = tempfile::tempdir().unwrap();
    let mut m = mesh(vec![
        agent_to(
            "dispatcher",
            baton_artifacts::dispatcher::WASM,
            &["capability:summarize"],
        ),
        worker("w1"),
    ]);
    m.queue_depth = 3;
    let host = Host::load(&m, state.path()).unwrap().with_workers(1);
    let report = run(&host, "dispatcher", None, vec![int("count", 5)]).await;

    // With one worker slot taken by the dispatcher, nothing drains the queue while it
    // hands off: the fourth handoff meets the bound.
    let dispatcher = &report.tasks[0];
    assert_eq!(dispatcher.status, Status::Failed);
    assert_eq!(
        dispatcher.error.as_deref(),
        Some(
            "agent returned an error: busy: inbox of `capability:summarize` is full (3 pending tasks); try later"
        )
    );
    // The three accepted tasks were still done.
    let done = report
        .tasks
        .iter()
        .filter(|t| t.agent == "w1" && t.status == Status::Completed)
        .count();
    assert_eq!(done, 3);
    // The dispatcher failed, so it stored no outcome.
    assert!(
        host.store()
            .read(&format!("output/dispatcher/{}", dispatcher.id), None)
            .unwrap()
            .is_none()
    );
}
