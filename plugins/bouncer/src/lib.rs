//! Test agent for cycles and hop budgets: bounces what it was handed back to the agent
//! that sent it (or, for work from the operator, to the agent in text param `next`),
//! unchanged, or with `data.n` incremented when flag param `progress` is set. Reports the
//! host's answer instead of failing.

use baton_sdk::{Agent, Handoff, Outcome, ParamValue, Task};
use serde_json::{Value, json};

struct Bouncer;

impl Agent for Bouncer {
    fn handle(task: Task) -> Result<Outcome, String> {
        let target = match (task.from(), task.param("next")) {
            ("operator", Some(ParamValue::Text(next))) => next.clone(),
            ("operator", _) => return Err("param `next` is required".into()),
            (from, _) => from.to_string(),
        };
        let mut data: Value = task.data().map_err(|e| e.to_string())?;
        if matches!(task.param("progress"), Some(ParamValue::Flag(true))) {
            data["n"] = json!(data["n"].as_i64().unwrap_or(0) + 1);
        }
        let mut handoff = Handoff::to(target.as_str()).summary(task.summary()).json(&data);
        for p in task.params() {
            handoff = handoff.param(p.name.clone(), p.value.clone());
        }
        let answer = match handoff.send() {
            Ok(r) => json!({ "forwarded": r.task_id }),
            Err(e) => json!({ "error": e.to_string() }),
        };
        Outcome::new("bounced")
            .json(&answer)
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export_agent!(Bouncer);
