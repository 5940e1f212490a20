//! Test and demo agent: reports what it was handed (who from, how, which params) and its
//! data, as its outcome. Used as the callee of push, routing, fan-out and reroute tests.

use baton_sdk::{Agent, Outcome, ParamValue, Pattern, Task, TaskKind};
use serde_json::{Map, Value, json};

struct Echo;

fn param_json(v: &ParamValue) -> Value {
    match v {
        ParamValue::Text(s) => json!(s),
        ParamValue::Integer(i) => json!(i),
        ParamValue::Number(n) => json!(n),
        ParamValue::Flag(b) => json!(b),
    }
}

impl Agent for Echo {
    fn handle(task: Task) -> Result<Outcome, String> {
        let params: Map<String, Value> = task
            .params()
            .iter()
            .map(|p| (p.name.clone(), param_json(&p.value)))
            .collect();
        let pattern = match task.pattern() {
            Pattern::Blackboard => "blackboard",
            Pattern::Push => "push",
            Pattern::Pull => "pull",
            Pattern::Stream => "stream",
        };
        let data: Value = task.data().unwrap_or(Value::Null);
        Outcome::new(format!("echoed {}", task.id()))
            .json(&json!({
                "task": task.id(),
                "from": task.from(),
                "kind": if task.kind() == TaskKind::Reply { "reply" } else { "work" },
                "pattern": pattern,
                "pointer": task.pointer(),
                "summary": task.summary(),
                "params": params,
                "data": data,
            }))
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export_agent!(Echo);
