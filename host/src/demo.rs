//! The zero-config demos, one per handoff pattern and failure path. Every component is
//! embedded in the binary at build time, so `baton demo <pattern>` needs no files.
//!
//! - `blackboard`: researcher hands its findings to writer through the blackboard.
//! - `push`: pusher sends editor a payload inline; a malformed one is refused at hand-off.
//! - `pull`: dispatcher hands 8 parts to `capability:summarize`; two workers claim them.
//! - `stream`: streamer writes chunks to reader, who reads them while streamer works on.
//! - `route`: triage sends tickets through a conditional route and a router agent.
//! - `fallback`: caller hands work to sleeper, who never answers; it is rerouted to writer.

use std::path::Path;
use std::str::FromStr;

use serde_json::{Value, json};

use crate::manifest::{AgentSpec, Mesh, Route, Rule};
use crate::report::Report;
use crate::runtime::Host;
use crate::store::{Param, ParamValue, StoreError};

/// The label demo errors carry instead of a manifest path.
pub const DEMO_FILE: &str = "<demo mesh>";

/// Which demo to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Demo {
    /// researcher → writer through the blackboard.
    #[default]
    Blackboard,
    /// Inline payload, validated against the callee's schema.
    Push,
    /// A capability queue served by two workers.
    Pull,
    /// Chunks read while the writer works on.
    Stream,
    /// Conditional and dynamic routing.
    Route,
    /// A deadline missed and the fallback that follows.
    Fallback,
}

impl FromStr for Demo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "blackboard" => Demo::Blackboard,
            "push" => Demo::Push,
            "pull" => Demo::Pull,
            "stream" => Demo::Stream,
            "route" => Demo::Route,
            "fallback" => Demo::Fallback,
            other => {
                return Err(format!(
                    "unknown demo `{other}`; expected blackboard, push, pull, stream, route or fallback"
                ));
            }
        })
    }
}

fn agent(id: &str, plugin: &str, wasm: &'static [u8], handoff: &[&str]) -> AgentSpec {
    let mut a = AgentSpec::new(id, format!("plugins/{plugin} (embedded)"), wasm.into());
    a.handoff = handoff.iter().map(|h| h.to_string()).collect();
    a
}

fn text(name: &str, value: &str) -> Param {
    Param {
        name: name.into(),
        value: ParamValue::Text(value.into()),
    }
}

/// The mesh of a demo, the agent its task goes to, and that task's data and params.
pub fn mesh(demo: Demo) -> (Mesh, &'static str, Value, Vec<Param>) {
    use baton_artifacts as a;
    match demo {
        Demo::Blackboard => (
            Mesh::new(
                DEMO_FILE,
                vec![
                    agent("researcher", "researcher", a::researcher::WASM, &["writer"]),
                    agent("writer", "writer", a::writer::WASM, &[]),
                ],
            ),
            "researcher",
            json!({ "topic": "secure agent handoffs" }),
            Vec::new(),
        ),
        Demo::Push => {
            let mut editor = agent("editor", "echo", a::echo::WASM, &[]);
            editor.input_schema = Some(json!({
                "type": "object",
                "required": ["title", "body"],
                "properties": {
                    "title": { "type": "string", "minLength": 1 },
                    "body": { "type": "string" },
                },
            }));
            editor.strip = vec!["scratchpad".into()];
            (
                Mesh::new(
                    DEMO_FILE,
                    vec![
                        agent("pusher", "pusher", a::pusher::WASM, &["editor"]),
                        editor,
                    ],
                ),
                "pusher",
                Value::Null,
                Vec::new(),
            )
        }
        Demo::Pull => {
            let worker = |id: &str| {
                let mut w = agent(id, "summarizer", a::summarizer::WASM, &[]);
                w.capabilities = vec!["summarize".into()];
                w
            };
            (
                Mesh::new(
                    DEMO_FILE,
                    vec![
                        agent(
                            "dispatcher",
                            "dispatcher",
                            a::dispatcher::WASM,
                            &["capability:summarize"],
                        ),
                        worker("summarizer-1"),
                        worker("summarizer-2"),
                    ],
                ),
                "dispatcher",
                Value::Null,
                Vec::new(),
            )
        }
        Demo::Stream => (
            Mesh::new(
                DEMO_FILE,
                vec![
                    agent("streamer", "streamer", a::streamer::WASM, &["reader"]),
                    agent("reader", "reader", a::reader::WASM, &[]),
                ],
            ),
            "streamer",
            Value::Null,
            Vec::new(),
        ),
        Demo::Route => {
            let mut mesh = Mesh::new(
                DEMO_FILE,
                vec![
                    agent(
                        "triage",
                        "triage",
                        a::triage::WASM,
                        &["route:by-lang", "router"],
                    ),
                    agent("router", "router", a::router::WASM, &["french", "english"]),
                    agent("french", "echo", a::echo::WASM, &[]),
                    agent("english", "echo", a::echo::WASM, &[]),
                    agent("fallback-desk", "echo", a::echo::WASM, &[]),
                ],
            );
            let lang = |l: &str, to: &str| Rule {
                param: Some("lang".into()),
                equals: Some(ParamValue::Text(l.into())),
                kind: None,
                to: to.into(),
            };
            mesh.routes = vec![Route {
                id: "by-lang".into(),
                rules: vec![
                    lang("fr", "french"),
                    lang("en", "english"),
                    Rule {
                        param: None,
                        equals: None,
                        kind: None,
                        to: "fallback-desk".into(),
                    },
                ],
            }];
            (mesh, "triage", Value::Null, Vec::new())
        }
        Demo::Fallback => (
            Mesh::new(
                DEMO_FILE,
                vec![
                    agent("caller", "caller", a::caller::WASM, &["sleeper", "writer"]),
                    agent("sleeper", "sleeper", a::sleeper::WASM, &[]),
                    agent("writer", "writer", a::writer::WASM, &[]),
                ],
            ),
            "caller",
            Value::Null,
            vec![
                text("target", "sleeper"),
                text("fallback", "reroute"),
                text("reroute_to", "writer"),
                Param {
                    name: "deadline_ms".into(),
                    value: ParamValue::Integer(300),
                },
            ],
        ),
    }
}

/// Run a demo on the store in `state` with `workers` concurrent activations, and report
/// the chain with the facts the demo is about.
pub async fn run(demo: Demo, state: &Path, workers: usize) -> anyhow::Result<Report> {
    let (mesh, to, data, params) = mesh(demo);
    let host = Host::load(&mesh, state)?.with_workers(workers);
    let data = (!data.is_null())
        .then(|| serde_json::to_vec(&data))
        .transpose()?;
    let submitted = host.submit(to, &format!("{demo:?} demo").to_lowercase(), data, params)?;
    host.run_until_idle().await?;
    let store = host.store();
    let mut report = Report::for_task(store, &submitted.task)?
        .ok_or_else(|| anyhow::anyhow!("task {} vanished from the store", submitted.task))?;
    let extra = match demo {
        Demo::Blackboard | Demo::Pull | Demo::Route => serde_json::Map::new(),
        Demo::Push => push_facts(&host, &report)?,
        Demo::Stream => stream_facts(&host, &report)?,
        Demo::Fallback => fallback_facts(&report),
    };
    report.extra = extra;
    Ok(report)
}

fn outcome_of(host: &Host, report: &Report, agent: &str) -> Result<Value, StoreError> {
    let key = report
        .tasks
        .iter()
        .find(|t| t.agent == agent)
        .and_then(|t| t.outcome_key.clone());
    Ok(match key {
        Some(k) => host
            .store()
            .read(&k, None)?
            .map_or(Value::Null, |e| crate::report::value_of(&e.value)),
        None => Value::Null,
    })
}

/// `refused`: what the host answered the malformed push, as the pusher received it.
fn push_facts(host: &Host, report: &Report) -> anyhow::Result<serde_json::Map<String, Value>> {
    let pusher = outcome_of(host, report, "pusher")?;
    let refused = &pusher["refused"];
    let mut m = serde_json::Map::new();
    m.insert(
        "refused".into(),
        json!({ "error": refused["error"], "field": refused["field"] }),
    );
    Ok(m)
}

/// When the reader read its first chunk, when the streamer finished, and how many
/// chunks the reader read, all from the store.
fn stream_facts(host: &Host, report: &Report) -> anyhow::Result<serde_json::Map<String, Value>> {
    let handoff = report
        .handoffs
        .iter()
        .find(|h| h.pattern == "stream")
        .ok_or_else(|| anyhow::anyhow!("the stream demo made no stream handoff"))?;
    let key = handoff.key.clone().unwrap_or_default();
    let stream = host
        .store()
        .stream(&key)?
        .ok_or_else(|| anyhow::anyhow!("no stream at `{key}`"))?;
    let caller = host
        .store()
        .task(&report.task)?
        .ok_or_else(|| anyhow::anyhow!("task {} vanished", report.task))?;
    let mut m = serde_json::Map::new();
    m.insert("first_chunk_read_at".into(), json!(stream.first_read_at));
    m.insert("caller_finished_at".into(), json!(caller.finished_at));
    m.insert("chunks".into(), json!(stream.read));
    Ok(m)
}

/// `fallback`: why the first failed task failed, what the host did, and which agent
/// finally carried the work.
fn fallback_facts(report: &Report) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    let Some((failed, applied)) = report
        .tasks
        .iter()
        .find_map(|t| t.fallback.as_ref().map(|f| (t, f)))
    else {
        return m;
    };
    let mut last = failed;
    while let Some(next) = last
        .fallback
        .as_ref()
        .and_then(|f| f.next_task.as_deref())
        .filter(|n| *n != last.id)
        .and_then(|n| report.task(n))
    {
        last = next;
    }
    m.insert(
        "fallback".into(),
        json!({ "reason": applied.reason, "action": applied.action, "final_agent": last.agent }),
    );
    m
}
