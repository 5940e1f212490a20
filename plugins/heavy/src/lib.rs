//! Benchmark agent: a large component (over 10 MiB of compiled-in code) for measuring
//! load time, cold and from the compiled cache. Its build script generates thousands of
//! distinct routines; integer param `routine` (default 0) picks one, which runs on integer
//! param `seed` (default 0). The outcome is `{"routine", "routines", "value"}`: the same
//! inputs give the same value, however the component was loaded.

use baton_sdk::{Agent, Outcome, ParamValue, Task};
use serde_json::json;

include!(concat!(env!("OUT_DIR"), "/routines.rs"));

struct Heavy;

fn integer(task: &Task, name: &str) -> Result<u64, String> {
    match task.param(name) {
        None => Ok(0),
        Some(ParamValue::Integer(n)) => {
            u64::try_from(*n).map_err(|_| format!("param `{name}` is {n}; want >= 0"))
        }
        Some(_) => Err(format!("param `{name}` must be an integer")),
    }
}

impl Agent for Heavy {
    fn handle(task: Task) -> Result<Outcome, String> {
        let routine = integer(&task, "routine")?;
        let seed = integer(&task, "seed")?;
        let index = usize::try_from(routine)
            .ok()
            .filter(|&i| i < ROUTINES.len())
            .ok_or_else(|| format!("param `routine` is {routine}; there are {}", ROUTINES.len()))?;
        let value = ROUTINES[index](seed);
        Outcome::new(format!("ran routine {routine} on seed {seed}"))
            .json(&json!({ "routine": routine, "routines": ROUTINES.len(), "value": value }))
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export_agent!(Heavy);
