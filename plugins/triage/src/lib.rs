//! Demo agent for routing: sends one item per language through the conditional route
//! `route:by-lang` (rules in the manifest pick the agent), and one item to the `router`
//! agent, which chooses its target itself.

use baton_sdk::{Agent, Handoff, Outcome, Task};
use serde_json::{Map, Value, json};

struct Triage;

impl Agent for Triage {
    fn handle(_task: Task) -> Result<Outcome, String> {
        let mut sent = Map::new();
        for lang in ["fr", "en", "de"] {
            let r = Handoff::to("route:by-lang")
                .summary(format!("handle the {lang} ticket"))
                .param("lang", lang)
                .json(&json!({ "lang": lang, "text": format!("ticket in {lang}") }))
                .send()
                .map_err(|e| e.to_string())?;
            sent.insert(format!("route:{lang}"), json!(r.target));
        }
        let r = Handoff::to("router")
            .summary("pick someone for this ticket")
            .json(&json!({ "lang": "fr", "text": "ticket for the router" }))
            .send()
            .map_err(|e| e.to_string())?;
        sent.insert("router".into(), json!(r.target));
        Outcome::new("triaged four tickets")
            .json(&Value::Object(sent))
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export_agent!(Triage);
