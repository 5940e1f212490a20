//! Guarantee: a host with nothing to do writes nothing. The scheduler looks for work
//! whenever it is woken and at least every 25 ms; a look that finds nothing must not
//! commit an empty claim, which would append to the log (and so to the disk) forever,
//! 40 times a second. Work that arrives after the pause still runs.

use std::time::Duration;

use baton::Host;
use baton::store::{Pattern, Status};
use serde_json::json;

use crate::common::research_mesh;

/// Submit a researcher → writer chain and wait until both of its tasks have ended;
/// returns them.
async fn chain(host: &Host, topic: &str) -> Vec<String> {
    let data = serde_json::to_vec(&json!({ "topic": topic })).unwrap();
    let c = host
        .submit_async(
            "researcher",
            "research",
            Some(data),
            vec![],
            Pattern::Blackboard,
        )
        .await
        .unwrap();
    let mut tasks = vec![c.task.clone()];
    ended(host, &c.task).await;
    let report = baton::Report::for_task(host.store(), &c.task)
        .unwrap()
        .unwrap();
    for h in &report.handoffs {
        ended(host, &h.task).await;
        tasks.push(h.task.clone());
    }
    tasks
}

async fn ended(host: &Host, task: &str) {
    host.finished(task, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("task {task} did not end within 30 s"));
}

#[tokio::test]
async fn an_idle_host_appends_nothing_to_its_log_and_still_runs_what_comes_next() {
    let state = tempfile::tempdir().unwrap();
    let host = Host::load(&research_mesh(), state.path()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let host = host.clone();
        tokio::spawn(async move { host.serve(async { stopped.await.unwrap() }).await })
    };
    let mut tasks = chain(&host, "before the pause").await;

    let log = state.path().join(baton::store::WAL_FILE);
    let size = || std::fs::metadata(&log).unwrap().len();
    let before = size();
    // A dozen of the scheduler's looks, all finding nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        size(),
        before,
        "the idle host appended to `{}`",
        log.display()
    );

    tasks.extend(chain(&host, "after the pause").await);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert_eq!(tasks.len(), 4, "{tasks:?}");
    for t in &tasks {
        let task = host.store().task(t).unwrap().unwrap();
        assert_eq!(task.status, Status::Completed, "{task:?}");
    }
}
