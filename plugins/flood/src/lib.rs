//! Hostile test agent: attacks `limits.handoffs_per_activation`. It hands off to the agent
//! named in its text param `target` in a loop, up to 10,000 times, and stops at the first
//! error. Its outcome says how far it got and what stopped it:
//! `{"sent": N, "error": "<what the host answered>"}` (`error` is null if nothing did).

use baton_sdk::{Agent, Error, Handoff, Outcome, ParamValue, Task};
use serde_json::json;

const ATTEMPTS: u32 = 10_000;

struct Flood;

impl Agent for Flood {
    fn handle(task: Task) -> Result<Outcome, String> {
        let Some(ParamValue::Text(target)) = task.param("target") else {
            return Err("text param `target` is required".into());
        };
        let mut sent = 0u32;
        let mut error = None;
        for n in 0..ATTEMPTS {
            match Handoff::to(target.as_str())
                .summary(format!("flood #{n}"))
                .send()
            {
                Ok(_) => sent += 1,
                Err(Error::Mesh(e)) => {
                    error = Some(baton_sdk::describe(&e));
                    break;
                }
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        Outcome::new(format!("sent {sent} handoffs"))
            .json(&json!({ "sent": sent, "error": error }))
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export_agent!(Flood);
