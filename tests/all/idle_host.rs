//! Guarantee: a host with nothing to do writes nothing. The scheduler looks for work
//! whenever it is woken and at least every 25 ms; a look that finds nothing must not
//! commit an empty claim, which would append to the log (and so to the disk) forever,
//! 40 times a second. Work that arrives after the pause still runs.

use std::time::Duration;

use baton::Host;
use baton::store::Status;

use crate::common::{research_mesh, serve_research_chain};

#[tokio::test]
async fn an_idle_host_appends_nothing_to_its_log_and_still_runs_what_comes_next() {
    let state = tempfile::tempdir().unwrap();
    let host = Host::load(&research_mesh(), state.path()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let host = host.clone();
        tokio::spawn(async move { host.serve(async { stopped.await.unwrap() }).await })
    };
    let mut tasks = serve_research_chain(&host, "before the pause").await;

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

    tasks.extend(serve_research_chain(&host, "after the pause").await);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert_eq!(tasks.len(), 4, "{tasks:?}");
    for t in &tasks {
        let task = host.store().task(t).unwrap().unwrap();
        assert_eq!(task.status, Status::Completed, "{task:?}");
    }
}
