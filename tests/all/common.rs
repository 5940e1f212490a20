//! Helpers shared by the tests: meshes built from the real plugin components, a run
//! helper, and readers for what the store holds afterwards.

use std::path::Path;

use baton::manifest::{AgentSpec, Mesh};
use baton::store::{Param, ParamValue, Status};
use baton::{Host, Report};
use serde_json::Value;

/// An agent running `wasm`, with default policy and limits.
pub fn agent(id: &str, wasm: &'static [u8]) -> AgentSpec {
    AgentSpec::new(id, format!("{id}.wasm"), wasm.into())
}

/// A mesh of `agents`, labelled `test.toml` in errors.
pub fn mesh(agents: Vec<AgentSpec>) -> Mesh {
    Mesh::new("test.toml", agents)
}

/// The demo pair: researcher may hand off to writer.
pub fn research_mesh() -> Mesh {
    let mut researcher = agent("researcher", baton_artifacts::researcher::WASM);
    researcher.handoff = vec!["writer".into()];
    mesh(vec![
        researcher,
        agent("writer", baton_artifacts::writer::WASM),
    ])
}

/// A text parameter.
pub fn text(name: &str, value: &str) -> Param {
    Param {
        name: name.into(),
        value: ParamValue::Text(value.into()),
    }
}

/// Submit to `to` and run until no task is pending; return the chain's report.
pub async fn run(host: &Host, to: &str, data: Option<Value>, params: Vec<Param>) -> Report {
    let data = data.map(|d| serde_json::to_vec(&d).unwrap());
    let submitted = host.submit(to, "test task", data, params).unwrap();
    host.run_until_idle().await.unwrap();
    Report::for_task(host.store(), &submitted.task)
        .unwrap()
        .expect("the submitted task is in the store")
}

/// The outcome a task stored, parsed as JSON.
pub fn outcome(host: &Host, report: &Report, agent: &str) -> Value {
    let task = report
        .tasks
        .iter()
        .find(|t| t.agent == agent)
        .unwrap_or_else(|| panic!("no task ran on `{agent}`: {:?}", report.tasks));
    assert_eq!(task.status, Status::Completed, "{task:?}");
    let key = task.outcome_key.as_deref().unwrap();
    let entry = host.store().read(key, None).unwrap().unwrap();
    serde_json::from_slice(&entry.value).unwrap()
}

/// The agent's log file in `state`, or empty.
pub fn log(state: &Path, agent: &str) -> String {
    std::fs::read_to_string(state.join("logs").join(format!("{agent}.log"))).unwrap_or_default()
}

/// An agent running `wasm` that may hand off to `handoff`.
pub fn agent_to(id: &str, wasm: &'static [u8], handoff: &[&str]) -> AgentSpec {
    let mut a = agent(id, wasm);
    a.handoff = handoff.iter().map(|h| h.to_string()).collect();
    a
}

/// An integer parameter.
pub fn int(name: &str, value: i64) -> Param {
    Param {
        name: name.into(),
        value: ParamValue::Integer(value),
    }
}

/// A flag parameter.
pub fn flag(name: &str, value: bool) -> Param {
    Param {
        name: name.into(),
        value: ParamValue::Flag(value),
    }
}
