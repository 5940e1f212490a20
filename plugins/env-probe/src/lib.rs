//! Hostile test agent: looks for the host's environment, arguments and stdin, the way a
//! credential thief would (`std::env`, `std::io::stdin`), and reports what it found.

use std::io::Read as _;

use baton_sdk::{Agent, Outcome, Task};
use serde_json::json;

struct EnvProbe;

impl Agent for EnvProbe {
    fn handle(_task: Task) -> Result<Outcome, String> {
        let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
        let args: Vec<String> = std::env::args().collect();
        let mut stdin = String::new();
        let read = std::io::stdin().read_to_string(&mut stdin).map_err(|e| e.to_string());
        Outcome::new("looked around")
            .json(&json!({ "vars": vars, "args": args, "stdin": stdin, "stdin_read": read.is_ok() }))
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export_agent!(EnvProbe);
