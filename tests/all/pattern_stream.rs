//! Guarantee: a stream handoff wakes the callee at the first chunk; the callee reads chunk
//! by chunk, in order, until the writer closes the stream, and can finish before the
//! writer's activation ends. Every chunk is a version of the stream key, written by the
//! writer, so the audit trail covers streams.

use baton::Host;
use baton::store::Status;

use crate::common::{agent_to, int, mesh, outcome, run};

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
