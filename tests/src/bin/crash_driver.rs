//! The host process that `tests/all/crash_sigkill.rs` kills with SIGKILL.
//!
//! `crash_driver run STATE CYCLE` loads its mesh over `STATE` (which redelivers what a
//! killed host left running), prints `ready <redelivered>`, and then, until it is killed,
//! submits work carrying the marker `c<CYCLE>-<n>` while the host runs the chains. After
//! each submission has committed it prints `acked <task> <marker>`: the test's record of
//! what the host acknowledged.
//!
//! `crash_driver finish STATE` loads, prints `ready <redelivered>`, runs until no task is
//! left, prints `idle <activations>`, and exits.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use baton::store::{Param, ParamValue};
use baton::{AgentSpec, Host, Mesh};
use serde_json::json;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Tasks waiting in the inboxes before the submitter pauses: enough to keep every agent
/// busy, few enough that every chain finishes long before its deadline.
const BACKLOG: u64 = 8;

/// The agents of [`mesh`].
const AGENTS: [&str; 6] = [
    "researcher",
    "writer",
    "bouncer",
    "summarizer",
    "streamer",
    "reader",
];

/// Chunks each stream of the streaming chain carries (`crash_sigkill` checks as many).
const CHUNKS: i64 = 3;

/// A driver nobody kills stops by itself, so a failed test leaves no process behind.
const LIFETIME: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["run", state, cycle] => run(Path::new(state), cycle),
        ["finish", state] => finish(Path::new(state)),
        _ => Err("usage: crash_driver run STATE CYCLE | crash_driver finish STATE".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crash_driver: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Three chains, submitted in turn. The demo pair: the researcher hands a topic's
/// findings to the writer, who reads them from the blackboard and writes the article. A
/// bouncer forwarding a text to summarizers that take 20 ms a task, as a model call
/// would, so that a kill almost always finds a task mid-run. And a streamer writing
/// [`CHUNKS`] chunks, 30 ms apart, to a reader that reads them as they come, so that a
/// kill often finds a stream half written.
fn mesh() -> Mesh {
    let agent = |id: &str, wasm: &'static [u8], handoff: &[&str]| {
        let mut a = AgentSpec::new(id, format!("{id}.wasm"), wasm.into());
        a.handoff = handoff.iter().map(|h| h.to_string()).collect();
        a
    };
    let mut summarizer = agent("summarizer", baton_artifacts::summarizer::WASM, &[]);
    summarizer.limits.concurrency = 3;
    let mut streamer = agent("streamer", baton_artifacts::streamer::WASM, &["reader"]);
    streamer.limits.concurrency = 3;
    let mut reader = agent("reader", baton_artifacts::reader::WASM, &[]);
    reader.limits.concurrency = 3;
    Mesh::new(
        "crash.toml",
        vec![
            agent("researcher", baton_artifacts::researcher::WASM, &["writer"]),
            agent("writer", baton_artifacts::writer::WASM, &[]),
            agent("bouncer", baton_artifacts::bouncer::WASM, &["summarizer"]),
            summarizer,
            streamer,
            reader,
        ],
    )
}

/// The `n`-th submission: its agent, data and params.
fn work(n: u64, marker: &str) -> (&'static str, serde_json::Value, Vec<Param>) {
    match n % 3 {
        0 => ("researcher", json!({ "topic": marker }), Vec::new()),
        1 => {
            let next = Param {
                name: "next".into(),
                value: ParamValue::Text("summarizer".into()),
            };
            ("bouncer", json!({ "part": n, "text": marker }), vec![next])
        }
        // The streamer writes the same chunks whatever its data; the marker names the chain.
        _ => {
            let chunks = Param {
                name: "chunks".into(),
                value: ParamValue::Integer(CHUNKS),
            };
            ("streamer", json!({ "text": marker }), vec![chunks])
        }
    }
}

/// Print one line and flush it, so the test has it before anything that follows.
fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// Load the mesh over `state`; the load redelivers what a killed host left running.
fn load(state: &Path) -> Result<Host> {
    let host = Host::load(&mesh(), state)?;
    say(&format!("ready {}", host.recovered()))?;
    Ok(host)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(state: &Path, cycle: &str) -> Result<()> {
    let host = load(state)?;
    let rt = runtime()?;
    let runner = host.clone();
    rt.spawn(async move {
        loop {
            if let Err(e) = runner.run_until_idle().await {
                eprintln!("crash_driver: run: {e}");
                std::process::exit(2);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });

    let store = host.store();
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < LIFETIME {
        let mut waiting = 0;
        for agent in AGENTS {
            waiting += store.inbox_depth(agent)?;
        }
        if waiting >= BACKLOG {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let marker = format!("c{cycle}-{n}");
        let (to, data, params) = work(n, &marker);
        // `submit` returns once the submission is committed: only then is it acknowledged.
        let submitted = host.submit(
            to,
            &format!("work on {marker}"),
            Some(serde_json::to_vec(&data)?),
            params,
        )?;
        say(&format!("acked {} {marker}", submitted.task))?;
        n += 1;
    }
    Err(format!("not killed within {} s", LIFETIME.as_secs()).into())
}

fn finish(state: &Path) -> Result<()> {
    let host = load(state)?;
    let ran = runtime()?.block_on(host.run_until_idle())?;
    say(&format!("idle {ran}"))
}
