//! Helpers shared by the tests: meshes built from the real plugin components, a run
//! helper, and readers for what the store holds afterwards.

use std::path::Path;
use std::sync::Arc;

use baton::manifest::{AgentSpec, Mesh};
use baton::store::{Param, ParamValue, Status, TaskRecord};
use baton::{Host, Report};
use serde_json::{Value, json};

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

/// `attacker` beside the demo pair (researcher → writer) and `snoop`, a harmless
/// bystander that completes any task with no params: the rest of a mesh under attack.
pub fn mesh_under_attack(attacker: AgentSpec) -> Mesh {
    let mut m = research_mesh();
    m.agents.push(agent("snoop", baton_artifacts::snoop::WASM));
    m.agents.insert(0, attacker);
    m
}

/// Claim the oldest ready task as the scheduler would, for its own target, without
/// running it: a test then decides what happens to the activation.
pub fn claim_oldest(host: &Host) -> TaskRecord {
    pollster::block_on(
        host.store()
            .claim_ready(1, Arc::new(|t, _, _| Some(t.to_string()))),
    )
    .unwrap()
    .pop()
    .expect("a ready task to claim")
}

/// The stored record of task `id`.
pub fn task(host: &Host, id: &str) -> TaskRecord {
    host.store()
        .task(id)
        .unwrap()
        .unwrap_or_else(|| panic!("no task `{id}` in the store"))
}

/// Assert that `id` failed with exactly `reason`: its only record is the host's failure
/// record, and the agent stored no outcome.
pub fn assert_failed(host: &Host, id: &str, reason: &str) {
    let t = task(host, id);
    assert_eq!(t.status, Status::Failed, "{t:?}");
    assert_eq!(t.error.as_deref(), Some(reason), "{t:?}");
    assert_eq!(t.outcome_key, Some(format!("failures/{id}")), "{t:?}");
    let key = format!("output/{}/{id}", t.to);
    assert_eq!(host.store().read(&key, None).unwrap(), None, "{key}");
}

/// Assert that the bystander's task `id`, queued behind an attack, completed.
pub fn assert_bystander_completed(host: &Host, id: &str) {
    let t = task(host, id);
    assert_eq!(t.status, Status::Completed, "{t:?}");
    let key = t.outcome_key.expect("a completed task has an outcome key");
    assert_eq!(
        host.store().read(&key, None).unwrap().unwrap().writer,
        "snoop"
    );
}

/// Assert that the host lived: the demo chain runs to completion in the same host.
pub async fn assert_demo_chain_completes(host: &Host) {
    let report = run(
        host,
        "researcher",
        Some(json!({ "topic": "tides" })),
        vec![],
    )
    .await;
    assert_eq!(report.status, "completed", "{report:?}");
    let ran: Vec<&str> = report.tasks.iter().map(|t| t.agent.as_str()).collect();
    assert_eq!(ran, ["researcher", "writer"]);
    let article = outcome(host, &report, "writer");
    assert!(
        article["article"]
            .as_str()
            .is_some_and(|a| a.starts_with("On tides:")),
        "{article}"
    );
}

/// A host serving in the background until [`Serving::stop`].
pub struct Serving {
    pub host: Host,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<usize, baton::StoreError>>,
}

impl Serving {
    /// Load `mesh` on the state in `state` and serve it with `workers` activations at once.
    pub fn start(mesh: &Mesh, state: &Path, workers: usize) -> Serving {
        let host = Host::load(mesh, state).unwrap().with_workers(workers);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = {
            let host = host.clone();
            tokio::spawn(async move { host.serve(async { stopped.await.unwrap() }).await })
        };
        Serving { host, stop, server }
    }

    /// Stop serving once the running activations end; returns the host.
    pub async fn stop(self) -> Host {
        self.stop.send(()).unwrap();
        self.server.await.unwrap().unwrap();
        self.host
    }
}

/// Submit a researcher → writer chain on `topic` to a host that is serving, wait until
/// each of its tasks has completed, and return them, the researcher's first.
pub async fn serve_research_chain(host: &Host, topic: &str) -> Vec<String> {
    let data = serde_json::to_vec(&json!({ "topic": topic })).unwrap();
    let submitted = host
        .submit_async(
            "researcher",
            "research",
            Some(data),
            vec![],
            baton::store::Pattern::Blackboard,
        )
        .await
        .unwrap();
    completes(host, &submitted.task).await;
    // The writer's task exists once the researcher's hand-off committed.
    let report = Report::for_task(host.store(), &submitted.task)
        .unwrap()
        .unwrap();
    let mut tasks = vec![submitted.task];
    for h in report.handoffs {
        completes(host, &h.task).await;
        tasks.push(h.task);
    }
    tasks
}

/// Wait for `task` to end, and check it completed.
pub async fn completes(host: &Host, task: &str) {
    let done = host
        .finished(task, std::time::Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("task {task} did not end within 30 s"));
    assert_eq!(done.status, Status::Completed, "{done:?}");
}

/// A flag parameter.
pub fn flag(name: &str, value: bool) -> Param {
    Param {
        name: name.into(),
        value: ParamValue::Flag(value),
    }
}
