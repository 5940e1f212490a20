//! Demo agent for dynamic routing: reads the ticket it was handed and chooses the agent
//! for it (`french` for French tickets, `english` otherwise), passing the data on.

use baton_sdk::{Agent, Handoff, Outcome, Task};
use serde_json::{Value, json};

struct Router;

impl Agent for Router {
    fn handle(task: Task) -> Result<Outcome, String> {
        let ticket: Value = task.data().map_err(|e| e.to_string())?;
        let target = if ticket["lang"] == "fr" { "french" } else { "english" };
        let r = Handoff::to(target)
            .summary(task.summary())
            .completed(["read the ticket", "chose an agent"])
            .json(&ticket)
            .send()
            .map_err(|e| e.to_string())?;
        Outcome::new(format!("routed to {target}"))
            .json(&json!({ "chose": target, "task": r.task_id }))
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export_agent!(Router);
