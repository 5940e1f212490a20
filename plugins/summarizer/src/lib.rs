//! Demo worker for pull dispatch: serves `capability:summarize`, reads the part it
//! claimed, and takes a little while (so several workers share the queue).

use baton_sdk::{Agent, Outcome, Task};
use serde_json::{Value, json};

struct Summarizer;

impl Agent for Summarizer {
    fn handle(task: Task) -> Result<Outcome, String> {
        let part: Value = task.data().map_err(|e| e.to_string())?;
        std::thread::sleep(std::time::Duration::from_millis(20));
        let text = part["text"].as_str().unwrap_or_default();
        Outcome::new(format!("summarized part {}", part["part"]))
            .json(&json!({ "part": part["part"], "summary": text.to_uppercase() }))
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export_agent!(Summarizer);
