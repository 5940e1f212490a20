//! Test and demo agent: reports what it was handed (who from, how, which params) and its
//! data, as its outcome. Used as the callee of push, routing, fan-out and reroute tests,
//! and timed by `baton bench` as the trivial task of an activation.

use baton_sdk::{Agent, Outcome, ParamValue, Pattern, Task, TaskKind};
use serde::Serialize;
use serde_json::{Map, Value, json};

struct Echo;

/// The report, serialised straight from the task's fields rather than built as a
/// `serde_json::Value` first. The fields are in alphabetical order, the order a `Value`
/// object keeps, so the outcome's bytes are what they were when it was built that way.
#[derive(Serialize)]
struct Echoed<'a> {
    data: Value,
    from: &'a str,
    kind: &'static str,
    params: Map<String, Value>,
    pattern: &'static str,
    pointer: Option<&'a str>,
    summary: &'a str,
    task: &'a str,
}

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
        let echoed = Echoed {
            data: task.data().unwrap_or(Value::Null),
            from: task.from(),
            kind: match task.kind() {
                TaskKind::Reply => "reply",
                TaskKind::Work => "work",
            },
            params: task
                .params()
                .iter()
                .map(|p| (p.name.clone(), param_json(&p.value)))
                .collect(),
            pattern: match task.pattern() {
                Pattern::Blackboard => "blackboard",
                Pattern::Push => "push",
                Pattern::Pull => "pull",
                Pattern::Stream => "stream",
            },
            pointer: task.pointer(),
            summary: task.summary(),
            task: task.id(),
        };
        Outcome::new(format!("echoed {}", task.id()))
            .json(&echoed)
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export_agent!(Echo);
