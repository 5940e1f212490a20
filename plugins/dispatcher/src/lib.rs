//! Demo agent for pull dispatch: hands `count` tasks (integer param, default 8) to the
//! `capability:summarize` pool; idle workers claim them.

use baton_sdk::{Agent, Handoff, Outcome, ParamValue, Pattern, Task};
use serde_json::json;

struct Dispatcher;

impl Agent for Dispatcher {
    fn handle(task: Task) -> Result<Outcome, String> {
        let count = match task.param("count") {
            Some(ParamValue::Integer(n)) => *n,
            _ => 8,
        };
        let mut sent = Vec::new();
        for n in 0..count {
            let r = Handoff::to("capability:summarize")
                .summary(format!("summarize part {n}"))
                .pattern(Pattern::Pull)
                .json(&json!({ "part": n, "text": format!("part {n} of the report") }))
                .send()
                .map_err(|e| e.to_string())?;
            sent.push(r.task_id);
        }
        Outcome::new(format!("dispatched {count} parts"))
            .json(&json!({ "sent": sent }))
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export_agent!(Dispatcher);
