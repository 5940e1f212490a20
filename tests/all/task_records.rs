//! Guarantee: a task is stored without the fields it leaves at their defaults, and its
//! push payload as text, yet reads back whole; a task stored by an earlier version, with
//! every field and its payload as an array of bytes, reads back the same as before.

use baton::store::{Fallback, Kind, Pattern, STORE_FILE, Status};
use baton::{Host, Store};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde_json::{Value, json};

use crate::common::{agent, mesh};

/// The store's task table, as its file names it.
const TASKS: TableDefinition<&str, &str> = TableDefinition::new("tasks");

/// The row of task `id` in the store under `state`, as JSON (the host must be gone).
fn stored_row(state: &std::path::Path, id: &str) -> Value {
    let db = Database::open(state.join(STORE_FILE)).unwrap();
    let txn = db.begin_read().unwrap();
    let row = txn.open_table(TASKS).unwrap().get(id).unwrap().unwrap();
    serde_json::from_str(row.value()).unwrap()
}

#[tokio::test]
async fn a_push_task_is_stored_compactly_and_read_back_whole() {
    let state = tempfile::tempdir().unwrap();
    let payload =
        serde_json::to_vec(&json!({ "title": "t", "body": "ünïcode \"quoted\"" })).unwrap();
    let host = Host::load(
        &mesh(vec![agent("echo", baton_artifacts::echo::WASM)]),
        state.path(),
    )
    .unwrap();
    let submitted = host
        .submit_with(
            "echo",
            "push it",
            Some(payload.clone()),
            vec![],
            Pattern::Push,
        )
        .unwrap();
    host.run_until_idle().await.unwrap();
    let read = host.store().task(&submitted.task).unwrap().unwrap();
    assert_eq!(read.status, Status::Completed, "{read:?}");
    assert_eq!(read.payload.as_deref(), Some(&payload[..]));
    drop(host);

    let row = stored_row(state.path(), &submitted.task);
    assert_eq!(
        row["payload"].as_str().map(str::as_bytes),
        Some(&payload[..]),
        "the payload is stored as text: {row}"
    );
    for default in [
        "parent",
        "completed",
        "outstanding",
        "params",
        "pointer",
        "reply",
        "in_reply_to",
        "route",
        "hops",
        "fallback",
        "not_before",
        "fallback_applied",
        "failed_on",
        "error",
    ] {
        assert!(
            row.get(default).is_none(),
            "`{default}` is at its default and still stored: {row}"
        );
    }

    let reopened = Store::open(state.path()).unwrap();
    assert_eq!(reopened.task(&submitted.task).unwrap(), Some(read));
}

#[test]
fn a_task_stored_with_every_field_reads_back_as_before() {
    let state = tempfile::tempdir().unwrap();
    drop(Store::open(state.path()).unwrap());
    // A completed push task as the previous version stored it: every field, the
    // payload `{"title":"t"}` as an array of bytes.
    let old = r#"{"id":"t-7","root":"t-7","parent":null,"kind":"work","from":"operator","to":"echo","summary":"old","completed":["a"],"outstanding":[],"params":[],"pattern":"push","pointer":null,"payload":[123,34,116,105,116,108,101,34,58,34,116,34,125],"deadline":99,"reply":false,"in_reply_to":null,"handoff":"h-7","status":"completed","agent":"echo","route":null,"hops":0,"fingerprint":"ab","fallback":{"action":"retry","attempts":2,"backoff_ms":5},"attempts":1,"budget_ms":30000,"not_before":0,"fallback_applied":null,"failed_on":[],"created_at":1,"finished_at":2,"outcome_key":"output/echo/t-7","outcome_summary":"done","error":null}"#;
    {
        let db = Database::open(state.path().join(STORE_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TASKS).unwrap().insert("t-7", old).unwrap();
        txn.commit().unwrap();
    }

    let store = Store::open(state.path()).unwrap();
    let task = store.task("t-7").unwrap().expect("the old task is found");
    assert_eq!(task.payload.as_deref(), Some(&br#"{"title":"t"}"#[..]));
    assert_eq!(task.completed, vec!["a".to_string()]);
    assert_eq!(task.kind, Kind::Work);
    assert_eq!(task.status, Status::Completed);
    assert_eq!(
        task.fallback,
        Fallback::Retry {
            attempts: 2,
            backoff_ms: 5
        }
    );
    assert_eq!((task.attempts, task.budget_ms, task.hops), (1, 30_000, 0));
    assert_eq!((task.parent, task.error), (None, None));
    assert_eq!(task.outcome_key.as_deref(), Some("output/echo/t-7"));
    assert_eq!(task.finished_at, Some(2));
}
