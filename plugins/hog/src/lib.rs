//! Hostile test agent: attacks the memory limit. It hoards 1 MiB buffers filled with
//! non-zero bytes (so every page is touched) until something stops it. The host's limit
//! (`limits.memory_mib`) must end the activation; should the limit fail to hold, it stops by
//! itself after `mib` MiB (integer param, default 1024) and says how much it got, so a
//! broken limit shows up as a readable outcome rather than a hung test.

use baton_sdk::{Agent, Outcome, ParamValue, Task};
use serde_json::json;

const MIB: usize = 1 << 20;

struct Hog;

impl Agent for Hog {
    fn handle(task: Task) -> Result<Outcome, String> {
        let cap = match task.param("mib") {
            Some(ParamValue::Integer(n)) => usize::try_from(*n).unwrap_or(0),
            _ => 1024,
        };
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        while hoard.len() < cap {
            hoard.push(vec![0xA5; MIB]);
            std::hint::black_box(&hoard);
        }
        Outcome::new("hoarded memory unchecked")
            .json(&json!({ "allocated_mib": hoard.len() }))
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export_agent!(Hog);
