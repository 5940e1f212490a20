//! Hostile test agent: reads a host file with `std::fs`, which makes the component import
//! `wasi:filesystem`. The host must refuse it at load time, before it ever runs.

use baton_sdk::{Agent, Outcome, Task};

struct FsReader;

impl Agent for FsReader {
    fn handle(_task: Task) -> Result<Outcome, String> {
        let text = std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())?;
        Ok(Outcome::new("read a host file").bytes(text.into_bytes()))
    }
}

baton_sdk::export_agent!(FsReader);
