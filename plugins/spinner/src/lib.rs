//! Hostile test agent: attacks the CPU limit. `handle` spins forever; `black_box` keeps the
//! optimiser from proving the loop has no effect and deleting it. Only the host's epoch
//! deadline (`limits.cpu_ms`) can end the activation.

use baton_sdk::{Agent, Outcome, Task};

struct Spinner;

impl Agent for Spinner {
    fn handle(_task: Task) -> Result<Outcome, String> {
        let mut turns: u64 = 0;
        loop {
            turns = std::hint::black_box(turns.wrapping_add(1));
        }
    }
}

baton_sdk::export_agent!(Spinner);
