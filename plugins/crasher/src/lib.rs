//! Hostile test worker: serves a capability and traps on every task it claims. The host
//! must redeliver the task to another worker, not lose it. With text param `hand_to`, it
//! first hands the task's data on to that agent and prints the receipt, then traps: each
//! redelivery hands off again, and the host must make that hand-off once.

use baton_sdk::{Agent, Handoff, Outcome, ParamValue, Task};

struct Crasher;

impl Agent for Crasher {
    fn handle(task: Task) -> Result<Outcome, String> {
        if let Some(ParamValue::Text(to)) = task.param("hand_to") {
            let data = task.bytes().map_err(|e| e.to_string())?;
            let receipt = Handoff::to(to.as_str())
                .summary(format!("carry on with {}", task.id()))
                .bytes(data)
                .send()
                .map_err(|e| e.to_string())?;
            println!("handed off as {} ({})", receipt.handoff_id, receipt.task_id);
        }
        panic!("crasher dies on {}", task.id());
    }
}

baton_sdk::export_agent!(Crasher);
