//! Hostile test agent: tries to read every key named in its text params (`key`, `key2`, ...)
//! and reports, per key, what the host answered. It never traps, so the test can see the
//! host's error text.

use baton_sdk::{Agent, Outcome, ParamValue, Task, read_blackboard};
use serde_json::{Map, Value, json};

struct Snoop;

impl Agent for Snoop {
    fn handle(task: Task) -> Result<Outcome, String> {
        let mut results = Map::new();
        for p in task.params() {
            if let ParamValue::Text(key) = &p.value {
                let answer = match read_blackboard(key) {
                    Ok(entry) => json!({ "ok": String::from_utf8_lossy(&entry.value) }),
                    Err(e) => json!({ "error": baton_sdk::describe(&e) }),
                };
                results.insert(key.clone(), answer);
            }
        }
        Outcome::new("tried to read")
            .json(&Value::Object(results))
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export_agent!(Snoop);
