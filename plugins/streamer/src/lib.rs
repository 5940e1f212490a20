//! Demo agent for streaming: opens a stream to `reader`, writes `chunks` chunks (integer
//! param, default 5) while it "works", closes it, and goes on working afterwards, so the
//! reader can finish before this activation ends.

use baton_sdk::{Agent, Handoff, Outcome, ParamValue, Task};
use serde_json::json;
use std::time::Duration;

struct Streamer;

impl Agent for Streamer {
    fn handle(task: Task) -> Result<Outcome, String> {
        let chunks = match task.param("chunks") {
            Some(ParamValue::Integer(n)) => *n,
            _ => 5,
        };
        let stream = Handoff::to("reader")
            .summary("read the draft as I write it")
            .open_stream()
            .map_err(|e| e.to_string())?;
        let key = stream.receipt().key.clone();
        for n in 0..chunks {
            std::thread::sleep(Duration::from_millis(30));
            stream
                .write_json(&json!({ "n": n, "text": format!("paragraph {n}") }))
                .map_err(|e| e.to_string())?;
        }
        stream.close().map_err(|e| baton_sdk::describe(&e))?;
        // More work after the stream is done; the reader does not wait for it.
        std::thread::sleep(Duration::from_millis(400));
        Outcome::new(format!("streamed {chunks} chunks"))
            .json(&json!({ "chunks": chunks, "stream": key }))
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export_agent!(Streamer);
