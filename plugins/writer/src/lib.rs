//! Example agent: reads the findings a task points at, checks who wrote them, and writes
//! an article as its outcome.

use baton_sdk::{Agent, Outcome, ParamValue, Task, read_blackboard};
use serde_json::{Value, json};

struct Writer;

impl Agent for Writer {
    fn handle(task: Task) -> Result<Outcome, String> {
        let key = task.pointer().ok_or("the task carries no pointer")?;
        let entry = read_blackboard(key).map_err(|e| baton_sdk::describe(&e))?;
        let notes: Value = entry.json().map_err(|e| e.to_string())?;

        let topic = notes["topic"].as_str().unwrap_or("the topic");
        let points: Vec<&str> = notes["findings"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let max_words = match task.param("max_words") {
            Some(ParamValue::Integer(n)) => usize::try_from(*n).unwrap_or(120),
            _ => 120,
        };
        let body = points
            .iter()
            .map(|p| p.split_once(": ").map_or(*p, |(_, rest)| rest))
            .collect::<Vec<_>>()
            .join(". ");
        let article: String = format!("On {topic}: {body}.")
            .split_whitespace()
            .take(max_words)
            .collect::<Vec<_>>()
            .join(" ");

        Outcome::new(format!("wrote an article on {topic}"))
            .json(&json!({
                "title": format!("Notes on {topic}"),
                "article": article,
                "based_on": { "key": entry.key, "version": entry.version, "writer": entry.writer, "sha256": entry.sha256 },
            }))
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export_agent!(Writer);
