//! Guarantee: the host keeps its state through the `Backend` trait, so it runs on any
//! backend it is given, and under either commit policy every acknowledged handoff and
//! outcome is in the store when the host is gone. (That group commit acknowledges only
//! what is on disk is attacked for real, with SIGKILL, in `crash_sigkill`.)

use std::sync::Arc;

use baton::store::{Backend, CommitPolicy};
use baton::{Host, Store, Vault};

use crate::common::{research_mesh, serve_research_chain};

/// Submit `n` researcher → writer chains from `n` concurrent clients and serve them until
/// every chain has ended; returns the submitted task ids.
async fn run_concurrently(host: &Host, n: usize) -> Vec<String> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let host = host.clone().with_workers(8);
        tokio::spawn(async move { host.serve(async { stopped.await.unwrap() }).await })
    };
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..n {
        let host = host.clone();
        clients.spawn(async move {
            // The server stops once every client returns, so each waits for its whole
            // chain.
            serve_research_chain(&host, &format!("topic-{i}")).await[0].clone()
        });
    }
    let mut tasks = Vec::new();
    while let Some(t) = clients.join_next().await {
        tasks.push(t.unwrap());
    }
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    tasks
}

/// Every chain in `tasks` completed in `store`: the writer wrote the researcher's topic.
fn assert_chains_complete(store: &dyn Backend, tasks: &[String]) {
    for task in tasks {
        let report = baton::Report::for_task(store, task).unwrap().unwrap();
        assert_eq!(report.status, "completed", "{report:?}");
        assert_eq!(report.handoffs.len(), 1, "{report:?}");
        let key = report.outcome_key.as_deref().expect("an outcome key");
        assert!(key.starts_with("output/writer/"), "{key}");
        let article = store.read(key, None).unwrap().unwrap();
        let input = store
            .read(report.input.key.as_deref().unwrap(), None)
            .unwrap()
            .unwrap();
        let input: serde_json::Value = serde_json::from_slice(&input.value).unwrap();
        let topic = input["topic"].as_str().unwrap();
        assert!(
            String::from_utf8_lossy(&article.value).contains(topic),
            "{topic} not in {}",
            String::from_utf8_lossy(&article.value)
        );
    }
}

#[tokio::test]
async fn a_host_runs_on_the_backend_it_is_given() {
    let state = tempfile::tempdir().unwrap();
    let store: Arc<dyn Backend> = Arc::new(Store::open(state.path()).unwrap());
    let given = store.clone();
    let host = Host::load_on(&research_mesh(), state.path(), &Vault::empty(), move || {
        Ok(given)
    })
    .unwrap();
    // Loading switched the backend to group commit.
    assert_eq!(store.commit_policy(), CommitPolicy::Group);
    let tasks = run_concurrently(&host, 24).await;
    // What the host wrote is in the backend the test holds.
    assert_chains_complete(&*store, &tasks);
}

#[tokio::test]
async fn acknowledged_chains_are_in_the_store_after_the_host_is_gone() {
    for policy in [CommitPolicy::Group, CommitPolicy::Immediate] {
        let state = tempfile::tempdir().unwrap();
        let tasks = {
            let host = Host::load(&research_mesh(), state.path())
                .unwrap()
                .with_commit_policy(policy);
            run_concurrently(&host, 24).await
        };
        // A new process would open the file like this.
        let store = Store::open(state.path()).unwrap();
        assert_chains_complete(&store, &tasks);
        let records = store.audit_log().unwrap().len() as u64;
        assert_eq!(
            store.audit_verify().unwrap(),
            baton::store::AuditVerdict::Whole { records },
            "{policy:?}"
        );
    }
}

/// A scheduler whose future is dropped (an aborted task, a timeout) leaves nothing
/// claiming for it in the store: work handed off afterwards goes to the next scheduler
/// and completes, none of it left running for the one that is gone.
#[tokio::test]
async fn work_after_a_dropped_scheduler_goes_to_the_next_one() {
    let state = tempfile::tempdir().unwrap();
    let host = Host::load(&research_mesh(), state.path()).unwrap();
    let gone = {
        let host = host.clone();
        tokio::spawn(async move { host.serve(std::future::pending()).await })
    };
    // Long enough for it to start serving.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    let tasks = run_concurrently(&host, 4).await;
    assert_chains_complete(host.store(), &tasks);
}
