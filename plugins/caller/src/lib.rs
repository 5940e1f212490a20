//! Test and demo agent for deadlines and fallbacks: hands research notes to the agent in
//! text param `target`, with the deadline (`deadline_ms`) and fallback (`fallback` =
//! none | retry | reroute | escalate | record, with `reroute_to`, `attempts`,
//! `backoff_ms`) its params name, and `reply` if asked. Reports the receipt or error.

use baton_sdk::{Agent, Fallback, Handoff, Outcome, ParamValue, Retry, Task};
use serde_json::json;

struct Caller;

fn text<'a>(task: &'a Task, name: &str) -> Option<&'a str> {
    match task.param(name) {
        Some(ParamValue::Text(s)) => Some(s),
        _ => None,
    }
}

fn int(task: &Task, name: &str) -> Option<i64> {
    match task.param(name) {
        Some(ParamValue::Integer(n)) => Some(*n),
        _ => None,
    }
}

impl Agent for Caller {
    fn handle(task: Task) -> Result<Outcome, String> {
        let target = text(&task, "target").ok_or("param `target` is required")?;
        let fallback = match text(&task, "fallback").unwrap_or("none") {
            "retry" => Fallback::Retry(Retry {
                attempts: int(&task, "attempts").unwrap_or(2) as u32,
                backoff_ms: int(&task, "backoff_ms").unwrap_or(10) as u32,
            }),
            "reroute" => Fallback::Reroute(text(&task, "reroute_to").unwrap_or("writer").into()),
            "escalate" => Fallback::Escalate,
            "record" => Fallback::Record,
            _ => Fallback::None,
        };
        let mut handoff = Handoff::to(target)
            .summary("write up these findings")
            .json(&json!({
                "topic": "fallbacks",
                "findings": ["fallbacks: a deadline makes a silent callee visible"],
            }))
            .fallback(fallback)
            .reply(matches!(task.param("reply"), Some(ParamValue::Flag(true))));
        if let Some(ms) = int(&task, "deadline_ms") {
            handoff = handoff.deadline_ms(ms as u64);
        }
        let answer = match handoff.send() {
            Ok(r) => json!({ "ok": r.task_id }),
            Err(e) => json!({ "error": e.to_string() }),
        };
        Outcome::new("handed off")
            .json(&answer)
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export_agent!(Caller);
