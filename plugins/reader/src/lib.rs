//! Demo agent for streaming: woken at the first chunk, reads the stream chunk by chunk
//! until the writer closes it.

use baton_sdk::{Agent, Outcome, Task};
use serde_json::{Value, json};

struct Reader;

impl Agent for Reader {
    fn handle(task: Task) -> Result<Outcome, String> {
        let mut stream = task.stream().ok_or("the task is not a stream")?;
        let mut texts = Vec::new();
        while let Some(chunk) = stream.next(2_000).map_err(|e| baton_sdk::describe(&e))? {
            let v: Value = chunk.json().map_err(|e| e.to_string())?;
            texts.push(v["text"].as_str().unwrap_or_default().to_string());
        }
        Outcome::new(format!("read {} chunks", texts.len()))
            .json(&json!({ "chunks": texts.len(), "text": texts.join(" / ") }))
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export_agent!(Reader);
