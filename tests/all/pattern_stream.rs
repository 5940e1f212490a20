//! Guarantee: a stream handoff wakes the callee at the first chunk; the callee reads chunk
//! by chunk, in order, until the writer closes the stream, and can finish before the
//! writer's activation ends. Every chunk is a version of the stream key, written by the
//! writer, so the audit trail covers streams. A writer that dies mid-stream leaves the
//! stream open for the next delivery of its task, which carries it on: each chunk is
//! written once, and the reader reads one whole stream.

use baton::Host;
use baton::store::{Pattern, Status};

use crate::common::{agent_to, int, log, mesh, outcome, run, text};

#[tokio::test]
async fn the_reader_reads_every_chunk_before_the_writer_finishes() {
    let state = tempfile::tempdir().unwrap();
    let host = Host::load(
        &mesh(vec![
            agent_to("streamer", baton_artifacts::streamer::WASM, &["reader"]),
            agent_to("reader", baton_artifacts::reader::WASM, &[]),
        ]),
        state.path(),
    )
    .unwrap();
    let report = run(&host, "streamer", None, vec![int("chunks", 4)]).await;
    assert_eq!(report.status, "completed", "{report:?}");

    let h = &report.handoffs[0];
    assert_eq!(
        (h.from.as_str(), h.to.as_str(), h.pattern.as_str()),
        ("streamer", "reader", "stream")
    );
    let key = h.key.clone().unwrap();

    // The reader read the four chunks in order.
    let read = outcome(&host, &report, "reader");
    assert_eq!(read["chunks"], 4);
    assert_eq!(
        read["text"],
        "paragraph 0 / paragraph 1 / paragraph 2 / paragraph 3"
    );

    // Each chunk is a version of the stream key, written by the streamer.
    let history = host.store().history(&key).unwrap();
    assert_eq!(history.len(), 4);
    assert!(history.iter().all(|e| e.writer == "streamer"));
    let stream = host.store().stream(&key).unwrap().unwrap();
    assert!(stream.closed);
    assert_eq!((stream.chunks, stream.read), (4, 4));

    // The reader started on the first chunk and was done before the streamer.
    let streamer = host.store().task(&report.task).unwrap().unwrap();
    let reader = host.store().task(&h.task).unwrap().unwrap();
    assert_eq!(
        (streamer.status, reader.status),
        (Status::Completed, Status::Completed)
    );
    let first_read = stream.first_read_at.unwrap();
    assert!(first_read < streamer.finished_at.unwrap());
    assert!(reader.finished_at.unwrap() < streamer.finished_at.unwrap());
}

#[tokio::test]
async fn a_writer_that_dies_mid_stream_is_carried_on_by_the_next_delivery_and_read_once() {
    let state = tempfile::tempdir().unwrap();
    // Two workers serve `draft`: the crasher, picked first, writes two chunks and traps;
    // the task goes to the streamer, which writes the same four-chunk draft whole.
    let mut crasher = agent_to("crasher", baton_artifacts::crasher::WASM, &["reader"]);
    crasher.capabilities = vec!["draft".into()];
    let mut streamer = agent_to("streamer", baton_artifacts::streamer::WASM, &["reader"]);
    streamer.capabilities = vec!["draft".into()];
    let host = Host::load(
        &mesh(vec![
            crasher,
            streamer,
            agent_to("reader", baton_artifacts::reader::WASM, &[]),
        ]),
        state.path(),
    )
    .unwrap();
    let submitted = host
        .submit_with(
            "capability:draft",
            "draft kelp",
            None,
            vec![
                int("chunks", 4),
                text("stream_to", "reader"),
                int("stream_chunks", 2),
            ],
            Pattern::Pull,
        )
        .unwrap();
    host.run_until_idle().await.unwrap();

    let draft = host.store().task(&submitted.task).unwrap().unwrap();
    assert_eq!(
        (draft.status, draft.attempts, draft.agent.as_deref()),
        (Status::Completed, 2, Some("streamer")),
        "{draft:?}"
    );
    assert_eq!(draft.failed_on, ["crasher"]);
    let crasher_log = log(state.path(), "crasher");
    assert!(
        crasher_log.contains("wrote chunk 1 as version 2"),
        "{crasher_log}"
    );

    // One stream, opened once: the streamer's hand-off was the crasher's, replayed.
    let report = baton::Report::for_task(host.store(), &submitted.task)
        .unwrap()
        .unwrap();
    assert_eq!(report.handoffs.len(), 1, "{report:?}");
    let h = &report.handoffs[0];
    assert_eq!((h.from.as_str(), h.to.as_str()), ("crasher", "reader"));
    let key = h.key.clone().unwrap();

    // Each chunk was written once, by whoever wrote it first; the streamer's first two
    // were the crasher's, given back.
    let writers: Vec<(u64, String)> = host
        .store()
        .history(&key)
        .unwrap()
        .into_iter()
        .map(|e| (e.version, e.writer))
        .collect();
    assert_eq!(
        writers,
        [
            (1, "crasher".to_string()),
            (2, "crasher".to_string()),
            (3, "streamer".to_string()),
            (4, "streamer".to_string()),
        ]
    );
    let streamer_log = log(state.path(), "streamer");
    for chunk in [1, 2] {
        assert!(
            streamer_log.contains(&format!(
                "chunk {chunk} of the stream of {} was written by an earlier delivery",
                h.id
            )),
            "{streamer_log}"
        );
    }
    assert!(
        !streamer_log.contains("chunk 3 of the stream"),
        "{streamer_log}"
    );

    // The reader read the whole draft once, in order, and the stream is closed.
    let reader = host.store().task(&h.task).unwrap().unwrap();
    assert_eq!(reader.status, Status::Completed, "{reader:?}");
    let read: serde_json::Value = serde_json::from_slice(
        &host
            .store()
            .read(reader.outcome_key.as_deref().unwrap(), None)
            .unwrap()
            .unwrap()
            .value,
    )
    .unwrap();
    assert_eq!(read["chunks"], 4, "{read}");
    assert_eq!(
        read["text"],
        "paragraph 0 / paragraph 1 / paragraph 2 / paragraph 3"
    );
    let stream = host.store().stream(&key).unwrap().unwrap();
    assert!(stream.closed);
    assert_eq!((stream.chunks, stream.read), (4, 4));
}
