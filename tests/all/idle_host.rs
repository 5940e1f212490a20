//! Guarantee: a host with nothing to do writes nothing, once it has made its store
//! durable. The scheduler looks for work whenever it is woken and at least every 25 ms; a
//! look that finds nothing must not commit an empty claim, which would append to the log
//! (and so to the disk) forever, 40 times a second. After a second of quiet the writer
//! folds the log into redb, so `store.redb` alone then holds every task, the log holds
//! no frame a restart would read, and a crash then costs no repair at restart, under
//! either commit policy. Work that arrives after the pause still runs.

use std::time::Duration;

use baton::store::{
    CommitPolicy, STORE_FILE, Status, WAL_FILES, logged_frames, opened_with_repair,
};

use crate::common::{Serving, research_mesh, serve_research_chain};

#[tokio::test]
async fn an_idle_host_appends_nothing_to_its_log_and_still_runs_what_comes_next() {
    let state = tempfile::tempdir().unwrap();
    let serving = Serving::start(&research_mesh(), state.path(), 4);
    let host = &serving.host;
    let mut tasks = serve_research_chain(host, "before the pause").await;

    // The frames in the log's two files, together. Not their size: the log writes zeros
    // a mebibyte ahead of its frames, so a frame appended goes where the file was.
    let frames = || logged_frames(state.path()).unwrap();
    let before = frames();
    assert!(before > 0, "the chain logged no frames");
    // A dozen of the scheduler's looks, all finding nothing. The log may only have been
    // folded into redb meanwhile, by a checkpoint, never appended to.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        frames() <= before,
        "the idle host appended to its log ({WAL_FILES:?}): {before} frames, then {}",
        frames()
    );

    tasks.extend(serve_research_chain(host, "after the pause").await);
    let host = serving.stop().await;
    assert_eq!(tasks.len(), 4, "{tasks:?}");
    for t in &tasks {
        let task = host.store().task(t).unwrap().unwrap();
        assert_eq!(task.status, Status::Completed, "{task:?}");
    }
}

#[tokio::test]
async fn a_host_gone_quiet_makes_its_store_durable_without_the_log() {
    let state = tempfile::tempdir().unwrap();
    let serving = Serving::start(&research_mesh(), state.path(), 4);
    let host = &serving.host;
    let tasks = serve_research_chain(host, "then quiet").await;

    // The writer checkpoints after a second of quiet; wait for it, within bounds.
    let waited = std::time::Instant::now();
    while logged_frames(state.path()).unwrap() > 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "the log ({WAL_FILES:?}) still holds frames after 30 s of quiet"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // What a crash now would leave, minus the log: redb's file alone has the chain, and
    // opens without redb's repair (a walk of the whole file).
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(state.path().join(STORE_FILE), copy.path().join(STORE_FILE)).unwrap();
    assert!(
        !opened_with_repair(&copy.path().join(STORE_FILE)).unwrap(),
        "redb repaired a store the idle checkpoint had made durable"
    );
    let store = baton::Store::open(copy.path()).unwrap();
    for t in &tasks {
        let task = store
            .task(t)
            .unwrap()
            .unwrap_or_else(|| panic!("{t} is not in redb"));
        assert_eq!(task.status, Status::Completed, "{task:?}");
    }
    serving.stop().await;
}

/// Under the immediate policy nothing is logged, but its commits leave redb's allocator
/// state unrecorded (recording it costs an fsync per write): once the host has gone
/// quiet, the writer records it, so a crash then costs no repair at restart.
#[tokio::test]
async fn a_host_gone_quiet_under_immediate_commits_leaves_redb_nothing_to_repair() {
    let state = tempfile::tempdir().unwrap();
    let serving = Serving::start(&research_mesh(), state.path(), 4);
    serving
        .host
        .store()
        .set_commit_policy(CommitPolicy::Immediate);
    let tasks = serve_research_chain(&serving.host, "immediate, then quiet").await;
    assert_eq!(tasks.len(), 2);

    // What a crash would leave, looked at until the quiet second has passed.
    let waited = std::time::Instant::now();
    loop {
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(state.path().join(STORE_FILE), copy.path().join(STORE_FILE)).unwrap();
        if !opened_with_repair(&copy.path().join(STORE_FILE)).unwrap() {
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(15),
            "after 15 s of quiet, redb still has to repair the store"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    serving.stop().await;
}
