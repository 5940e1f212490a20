//! Hostile test agent: attacks `limits.payload_kib`. With text param `mode` = `handoff` it
//! hands data of `bytes` bytes (integer param) to the agent named in text param `target`
//! and reports the host's answer as its outcome, `{"ok": task_id}` or `{"error": ...}`.
//! With `mode` = `outcome` it returns an outcome whose data is `bytes` bytes long.

use baton_sdk::{Agent, Handoff, Outcome, ParamValue, Task};
use serde_json::json;

struct Bloat;

impl Agent for Bloat {
    fn handle(task: Task) -> Result<Outcome, String> {
        let bytes = match task.param("bytes") {
            Some(ParamValue::Integer(n)) => {
                usize::try_from(*n).map_err(|_| format!("param `bytes` is {n}; want >= 0"))?
            }
            _ => return Err("integer param `bytes` is required".into()),
        };
        let data = vec![b'x'; bytes];
        match task.param("mode") {
            Some(ParamValue::Text(mode)) if mode == "handoff" => {
                let Some(ParamValue::Text(target)) = task.param("target") else {
                    return Err("text param `target` is required".into());
                };
                let answer = match Handoff::to(target.as_str())
                    .summary(format!("{bytes} bytes of data"))
                    .bytes(data)
                    .send()
                {
                    Ok(r) => json!({ "ok": r.task_id }),
                    Err(e) => json!({ "error": e.to_string() }),
                };
                Outcome::new("tried to hand off")
                    .json(&answer)
                    .map_err(|e| e.to_string())
            }
            Some(ParamValue::Text(mode)) if mode == "outcome" => {
                Ok(Outcome::new(format!("{bytes} bytes of outcome")).bytes(data))
            }
            _ => Err("text param `mode` must be `handoff` or `outcome`".into()),
        }
    }
}

baton_sdk::export_agent!(Bloat);
