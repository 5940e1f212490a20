//! Hostile test agent: hands off to every agent named in its text params and reports what
//! the host answered for each. It never traps, so the test can see the host's error text.

use baton_sdk::{Agent, Handoff, Outcome, ParamValue, Task};
use serde_json::{Map, Value, json};

struct Rogue;

impl Agent for Rogue {
    fn handle(task: Task) -> Result<Outcome, String> {
        let mut results = Map::new();
        for p in task.params() {
            if let ParamValue::Text(target) = &p.value {
                let answer = match Handoff::to(target.as_str())
                    .summary("do my bidding")
                    .json(&json!({ "stolen": true }))
                    .send()
                {
                    Ok(r) => json!({ "ok": r.task_id }),
                    Err(e) => json!({ "error": e.to_string() }),
                };
                results.insert(target.clone(), answer);
            }
        }
        Outcome::new("tried to hand off")
            .json(&Value::Object(results))
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export_agent!(Rogue);
