//! Hostile test worker: serves a capability and traps on every task it claims. The host
//! must redeliver the task to another worker, not lose it.

use baton_sdk::{Agent, Outcome, Task};

struct Crasher;

impl Agent for Crasher {
    fn handle(task: Task) -> Result<Outcome, String> {
        panic!("crasher dies on {}", task.id());
    }
}

baton_sdk::export_agent!(Crasher);
