//! Demo and test agent for fan-out and join: hands an item to every agent named in its
//! text params, asking each for a reply, then collects the replies from its inbox until
//! it has one per handoff (or its waits run out).

use baton_sdk::{Agent, Handoff, Outcome, ParamValue, Task, TaskKind, wait_inbox};
use serde_json::{Value, json};

struct Fanout;

impl Agent for Fanout {
    fn handle(task: Task) -> Result<Outcome, String> {
        let mut sent = Vec::new();
        for (i, p) in task.params().iter().enumerate() {
            if let ParamValue::Text(target) = &p.value {
                let r = Handoff::to(target.as_str())
                    .summary(format!("item {i}"))
                    .json(&json!({ "item": i }))
                    .reply(true)
                    .send()
                    .map_err(|e| e.to_string())?;
                sent.push(r.task_id);
            }
        }
        let mut replies = Vec::new();
        let mut empty_waits = 0;
        while replies.len() < sent.len() && empty_waits < 5 {
            let got = wait_inbox(16, 2_000);
            if got.is_empty() {
                empty_waits += 1;
            }
            for reply in got.into_iter().filter(|t| t.kind() == TaskKind::Reply) {
                let data: Value = reply.data().unwrap_or(Value::Null);
                replies.push(json!({
                    "from": reply.from(),
                    "in_reply_to": reply.in_reply_to(),
                    "data": data,
                }));
            }
        }
        Outcome::new(format!("joined {} of {} replies", replies.len(), sent.len()))
            .json(&json!({ "sent": sent, "replies": replies }))
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export_agent!(Fanout);
