//! Hostile test agent: never answers. It sleeps in a loop, costing no CPU, so only the
//! task's wall-clock deadline can end it.

use baton_sdk::{Agent, Outcome, Task};

struct Sleeper;

impl Agent for Sleeper {
    fn handle(_task: Task) -> Result<Outcome, String> {
        loop {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

baton_sdk::export_agent!(Sleeper);
