//! Example agent: gathers findings on a topic and hands them to `writer` through the
//! blackboard. With the flag param `await_reply`, it asks for the writer's outcome back and,
//! when woken with that reply, reads the article the reply points at.

use baton_sdk::{Agent, Handoff, Outcome, ParamValue, Task, TaskKind};
use serde_json::{Value, json};

struct Researcher;

impl Agent for Researcher {
    fn handle(task: Task) -> Result<Outcome, String> {
        if task.kind() == TaskKind::Reply {
            // The reply's pointer is the writer's outcome key; this delivery grants reading it.
            let article: Value = task.data().map_err(|e| e.to_string())?;
            return Outcome::new(format!("received the article from {}", task.from()))
                .json(&json!({ "reply_from": task.from(), "article": article }))
                .map_err(|e| e.to_string());
        }

        let input: Value = task.data().unwrap_or(Value::Null);
        let topic = input["topic"].as_str().unwrap_or(task.summary()).to_string();
        let findings = json!({
            "topic": topic,
            "findings": [
                format!("{topic}: the handoff is where multi-agent systems lose context"),
                format!("{topic}: structured payloads beat forwarded transcripts"),
                format!("{topic}: a sandbox per agent keeps credentials out of reach"),
            ],
            "sources": 3,
        });

        let await_reply = matches!(task.param("await_reply"), Some(ParamValue::Flag(true)));
        let receipt = Handoff::to("writer")
            .summary(format!("write a short article on {topic}"))
            .completed(["collected findings", "checked sources"])
            .outstanding(["write the article"])
            .param("tone", "plain")
            .param("max_words", 120i64)
            .json(&findings)
            .reply(await_reply)
            .send()
            .map_err(|e| e.to_string())?;

        Outcome::new(format!("handed findings on {topic} to {}", receipt.target))
            .json(&json!({
                "handoff": receipt.handoff_id,
                "task": receipt.task_id,
                "key": receipt.key,
            }))
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export_agent!(Researcher);
