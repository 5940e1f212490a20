//! The zero-config demo: a `researcher` hands its findings to a `writer` through the
//! blackboard. Both components are embedded in the binary at build time, so `baton demo`
//! needs no files and no other step.

use std::path::Path;

use crate::manifest::{AgentSpec, Mesh};
use crate::report::Report;
use crate::runtime::{Host, LoadError};

/// The label demo errors carry instead of a manifest path.
pub const DEMO_FILE: &str = "<demo mesh>";

/// The demo mesh: `researcher` may hand off to `writer`; `writer` reads what it is handed.
pub fn mesh() -> Mesh {
    let mut researcher = AgentSpec::new(
        "researcher",
        "plugins/researcher (embedded)",
        baton_artifacts::researcher::WASM.into(),
    );
    researcher.handoff = vec!["writer".into()];
    let writer = AgentSpec::new(
        "writer",
        "plugins/writer (embedded)",
        baton_artifacts::writer::WASM.into(),
    );
    Mesh {
        file: DEMO_FILE.into(),
        agents: vec![researcher, writer],
    }
}

/// Run researcher → writer on the store in `state` and report the chain.
pub async fn run(state: &Path) -> anyhow::Result<Report> {
    let host = Host::load(&mesh(), state).map_err(|e: LoadError| anyhow::anyhow!(e))?;
    let topic = serde_json::json!({ "topic": "secure agent handoffs" });
    let submitted = host.submit(
        "researcher",
        "research secure agent handoffs",
        Some(serde_json::to_vec(&topic)?),
        Vec::new(),
    )?;
    host.run_until_idle().await?;
    Report::for_task(host.store(), &submitted.task)?
        .ok_or_else(|| anyhow::anyhow!("task {} vanished from the store", submitted.task))
}
