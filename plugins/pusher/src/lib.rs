//! Demo agent for the push pattern: sends `editor` one malformed payload (no `title`),
//! which the host must refuse naming the field, then a good one carrying a `scratchpad`
//! that the callee's manifest strips before delivery.

use baton_sdk::{Agent, Error, Handoff, MeshError, Outcome, Pattern, Task};
use serde_json::json;

struct Pusher;

impl Agent for Pusher {
    fn handle(_task: Task) -> Result<Outcome, String> {
        let bad = Handoff::to("editor")
            .summary("an article without a title")
            .pattern(Pattern::Push)
            .json(&json!({ "body": "no title here" }))
            .send();
        let refused = match bad {
            Err(Error::Mesh(MeshError::Invalid(f))) => {
                json!({ "error": "invalid", "field": f.field, "message": f.message })
            }
            Err(e) => json!({ "error": e.to_string() }),
            Ok(r) => json!({ "accepted": r.task_id }),
        };
        let good = Handoff::to("editor")
            .summary("edit this article")
            .pattern(Pattern::Push)
            .json(&json!({
                "title": "Handoffs",
                "body": "Structured payloads beat transcripts.",
                "scratchpad": "private chain of thought the editor must never see",
            }))
            .send()
            .map_err(|e| e.to_string())?;
        Outcome::new("pushed one bad and one good payload")
            .json(&json!({ "refused": refused, "sent": good.task_id }))
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export_agent!(Pusher);
