//! Test agent for the CPU meter: takes `naps` naps of `ms` milliseconds (waits in the
//! host, which cost no CPU), spinning for `spin_ms` milliseconds before each one, then
//! answers with how many it took.

use std::time::{Duration, Instant};

use baton_sdk::{Agent, Outcome, ParamValue, Task};
use serde_json::json;

struct Napper;

fn integer(task: &Task, name: &str) -> u64 {
    match task.param(name) {
        Some(ParamValue::Integer(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

impl Agent for Napper {
    fn handle(task: Task) -> Result<Outcome, String> {
        let naps = integer(&task, "naps");
        let nap = Duration::from_millis(integer(&task, "ms"));
        let spin = Duration::from_millis(integer(&task, "spin_ms"));
        for _ in 0..naps {
            let started = Instant::now();
            while started.elapsed() < spin {
                std::hint::black_box(started);
            }
            std::thread::sleep(nap);
        }
        Outcome::new(format!("took {naps} naps"))
            .json(&json!({ "naps": naps }))
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export_agent!(Napper);
