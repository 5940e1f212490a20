//! Hostile test worker: serves a capability and traps on every task it claims. The host
//! must redeliver the task to another worker, not lose it. With text param `hand_to`, it
//! first hands the task's data on to that agent and prints the receipt, then traps: each
//! redelivery hands off again, and the host must make that hand-off once. With text param
//! `stream_to`, it opens a stream to that agent and writes `stream_chunks` chunks (integer
//! param) in the streamer's format before it traps: the next delivery must carry the
//! stream on, not write those chunks twice.

use baton_sdk::{Agent, Handoff, Outcome, ParamValue, Task};
use serde_json::json;

struct Crasher;

impl Agent for Crasher {
    fn handle(task: Task) -> Result<Outcome, String> {
        if let Some(ParamValue::Text(to)) = task.param("hand_to") {
            let data = task.bytes().map_err(|e| e.to_string())?;
            let receipt = Handoff::to(to.as_str())
                .summary(format!("carry on with {}", task.id()))
                .bytes(data)
                .send()
                .map_err(|e| e.to_string())?;
            println!("handed off as {} ({})", receipt.handoff_id, receipt.task_id);
        }
        if let Some(ParamValue::Text(to)) = task.param("stream_to") {
            let chunks = match task.param("stream_chunks") {
                Some(ParamValue::Integer(n)) => *n,
                _ => 1,
            };
            let stream = Handoff::to(to.as_str())
                .summary("read the draft as I write it")
                .open_stream()
                .map_err(|e| e.to_string())?;
            for n in 0..chunks {
                let version = stream
                    .write_json(&json!({ "n": n, "text": format!("paragraph {n}") }))
                    .map_err(|e| e.to_string())?;
                println!("wrote chunk {n} as version {version}");
            }
        }
        panic!("crasher dies on {}", task.id());
    }
}

baton_sdk::export_agent!(Crasher);
