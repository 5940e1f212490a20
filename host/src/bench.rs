//! `baton bench`: what isolation and durability cost, measured over the example agents.
//!
//! Each figure is a median and a 99th percentile (nearest rank) of per-operation wall
//! times, plus a rate where it applies. A handoff "end to end" is: the operator's
//! handoff is committed and on disk, the callee is activated, reads the payload, and its
//! outcome is committed and on disk. Latencies are of one handoff at a time; rates are
//! with [`IN_FLIGHT`] handoffs at a time, which is what group commit needs to share
//! fsyncs. `blackboard_durable` fsyncs every commit; the other handoff figures use the
//! host's default, group commit. Then `setup.restart_after_kill` times the reopening of
//! the store all those handoffs went through, as a kill would leave it. Last comes a
//! control, `setup.push_without_sandbox`: push through the same store with activations
//! that instantiate nothing, which shows what the durable path alone allows.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::manifest::{AgentSpec, Mesh};
use crate::runtime::Host;
use crate::store::{
    CommitPolicy, Param, ParamValue, Pattern, STORE_FILE, Status, Store, TaskRecord, WAL_FILES,
};

/// Handoffs in flight at once in the handoff measurements.
pub const IN_FLIGHT: usize = 32;

/// Handoffs in flight in the second run of the control (`setup.push_without_sandbox`):
/// enough that the CPU, not the wait for fsyncs, bounds the rate.
const MOST_IN_FLIGHT: usize = 4 * IN_FLIGHT;

/// Percentiles of a latency sample, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile, nearest rank.
    pub p99_us: f64,
    /// Operations per second over the whole timed loop.
    pub handoffs_per_s: f64,
}

/// Activation latency, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Activation {
    /// Median.
    pub p50: f64,
    /// 99th percentile, nearest rank.
    pub p99: f64,
}

/// Everything `baton bench` reports.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Instantiate a pre-linked agent in a fresh store and run a trivial task.
    pub activation_us: Activation,
    /// Blackboard handoffs end to end, every commit immediate.
    pub blackboard_durable: Latency,
    /// Blackboard handoffs with the fastest safe commit policy; `null` while only
    /// immediate commits exist.
    pub blackboard_fast: Option<Latency>,
    /// Push handoffs end to end (payload inline, schema-checked).
    pub push: Latency,
    /// Pull dispatch end to end (queue, claim by a worker, completion).
    pub pull: Latency,
    /// First load (policy check, compile, link, store) of a mesh holding the `heavy`
    /// agent, a component of over 10 MiB, on an empty compiled cache.
    pub cold_load_ms: f64,
    /// The same load again, after a restart: the compiled component comes from the
    /// on-disk cache (median of several loads).
    pub cached_load_ms: Option<f64>,
    /// Peak resident memory with 1,000 agents registered and 100 activations in flight.
    pub rss_mib_1000_agents: f64,
    /// What `blackboard_fast` does.
    pub commit_policy: String,
    /// Sample sizes and the machine.
    pub setup: serde_json::Value,
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Median and nearest-rank p99 of `sample`, in µs.
fn percentiles(sample: &mut [Duration]) -> (f64, f64) {
    sample.sort_unstable();
    let rank = |p: f64| {
        let i = ((p * sample.len() as f64).ceil() as usize).clamp(1, sample.len()) - 1;
        micros(sample[i])
    };
    (rank(0.50), rank(0.99))
}

fn latency(mut sample: Vec<Duration>, total: Duration) -> Latency {
    let n = sample.len();
    let (p50_us, p99_us) = percentiles(&mut sample);
    Latency {
        p50_us,
        p99_us,
        handoffs_per_s: n as f64 / total.as_secs_f64(),
    }
}

fn agent(id: &str, wasm: &'static [u8]) -> AgentSpec {
    AgentSpec::new(id, format!("plugins/{id} (embedded)"), wasm.into())
}

/// Time `n` end-to-end handoffs to `to` with `pattern`, `in_flight` at a time: each of
/// `in_flight` clients submits, waits until the callee's outcome is on disk, and submits
/// again, while the host serves with one worker per client. Also the slowest handoff,
/// in µs: a checkpoint under load shows there.
async fn handoffs(
    host: &Host,
    to: &str,
    pattern: Pattern,
    n: usize,
    in_flight: usize,
) -> anyhow::Result<(Latency, f64)> {
    let data = serde_json::to_vec(&json!({ "title": "bench", "body": "a small payload" }))?;
    let host = host.clone().with_workers(in_flight);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let host = host.clone();
        tokio::spawn(async move {
            host.serve(async {
                let _ = stopped.await;
            })
            .await
        })
    };
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..in_flight {
        let (host, to, data) = (host.clone(), to.to_string(), data.clone());
        let runs = n / in_flight + usize::from(c < n % in_flight);
        clients.spawn(async move {
            let mut sample = Vec::with_capacity(runs);
            for _ in 0..runs {
                let t = Instant::now();
                let c = host
                    .submit_async(&to, "bench", Some(data.clone()), Vec::new(), pattern)
                    .await?;
                let done = host
                    .finished(&c.task, Duration::from_secs(30))
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("task {} did not finish in 30 s", c.task))?;
                anyhow::ensure!(
                    done.status == Status::Completed,
                    "task {} ended {:?}: {:?}",
                    c.task,
                    done.status,
                    done.error
                );
                sample.push(t.elapsed());
            }
            anyhow::Ok(sample)
        });
    }
    let mut sample = Vec::with_capacity(n);
    while let Some(client) = clients.join_next().await {
        sample.extend(client??);
    }
    let total = started.elapsed();
    let _ = stop.send(());
    server.await??;
    let slowest = sample.iter().max().map_or(0.0, |d| micros(*d));
    Ok((latency(sample, total), slowest))
}

/// What a restart costs the host whose state is in `state`, if it were killed now: its
/// store's files are copied to `scratch` as a kill leaves them (the kernel keeps what
/// was written) and synced, so that the open then times redb and the log's redo, not
/// the copy's write-back. redb's file is first opened alone, to learn whether redb had
/// to repair it (a walk of the whole file). The copies are removed afterwards: after a
/// full run the store is hundreds of MB.
fn restart(state: &Path, scratch: &Path) -> anyhow::Result<serde_json::Value> {
    let copy = |files: &[&str]| -> anyhow::Result<()> {
        std::fs::create_dir_all(scratch)?;
        for f in files {
            let to = scratch.join(f);
            std::fs::copy(state.join(f), &to)?;
            std::fs::File::open(&to)?.sync_all()?;
        }
        Ok(())
    };
    copy(&[STORE_FILE])?;
    let store_bytes = std::fs::metadata(scratch.join(STORE_FILE))?.len();
    let repaired = crate::store::opened_with_repair(&scratch.join(STORE_FILE))?;
    std::fs::remove_dir_all(scratch)?;

    let [first, second] = WAL_FILES;
    copy(&[STORE_FILE, first, second])?;
    let mut log_bytes = 0;
    for f in WAL_FILES {
        log_bytes += std::fs::metadata(scratch.join(f))?.len();
    }
    let started = Instant::now();
    drop(Store::open(scratch)?);
    let open_ms = started.elapsed().as_secs_f64() * 1e3;
    std::fs::remove_dir_all(scratch)?;
    Ok(json!({
        "open_ms": open_ms,
        "log_bytes": log_bytes,
        "redb_repaired": repaired,
        "store_bytes": store_bytes,
    }))
}

/// CPU time (user + system) this process has used so far, from `/proc/self/stat`, in
/// clock ticks of 10 ms; `None` where that file is missing.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time this process used per handoff since `before` ([`cpu_ticks`]), in µs, over
/// `n` handoffs.
fn cpu_us_since(before: Option<u64>, n: usize) -> Option<f64> {
    let used = cpu_ticks()?.checked_sub(before?)?;
    Some((used as f64 * 10_000.0 / n as f64).round())
}

/// A memory figure of this process from `/proc/self/status` (`VmHWM`: the peak resident
/// set; `VmRSS`: the resident set now), in MiB.
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Load a mesh of the heavy agent into `state`, cold, then `n` times more from the compiled
/// cache, each time as a restarted host would (the previous one dropped, so nothing is
/// shared in memory). Returns the cold time and the median cached time, in ms. Each host
/// runs one task, so every load timed is a working agent, and the cached one gives the
/// same answer as the compiled one.
async fn loads(state: &Path, n: usize) -> anyhow::Result<(f64, f64)> {
    let mesh = Mesh::new(
        "<bench: heavy>",
        vec![agent("heavy", baton_artifacts::heavy::WASM)],
    );
    let started = Instant::now();
    let host = Host::load(&mesh, state)?;
    let cold = started.elapsed();
    let expected = heavy_task(&host).await?;
    drop(host);
    let cached = std::fs::read_dir(state.join(crate::compiled::DIR))
        .map_or(0, |dir| dir.filter(|e| e.is_ok()).count());
    anyhow::ensure!(
        cached > 0,
        "the cold load wrote no compiled-cache entry under `{}`",
        state.display()
    );

    let mut sample = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let host = Host::load(&mesh, state)?;
        sample.push(started.elapsed());
        let got = heavy_task(&host).await?;
        drop(host);
        anyhow::ensure!(
            got == expected,
            "the heavy agent loaded from the compiled cache answered differently"
        );
    }
    let (median_us, _) = percentiles(&mut sample);
    Ok((cold.as_secs_f64() * 1e3, median_us / 1e3))
}

/// Run one task on the heavy agent; its outcome.
async fn heavy_task(host: &Host) -> anyhow::Result<Vec<u8>> {
    let routine = Param {
        name: "routine".into(),
        value: ParamValue::Integer(1_234),
    };
    let submitted = host.submit("heavy", "bench", None, vec![routine])?;
    host.run_until_idle().await?;
    let task = host.store().task(&submitted.task)?;
    let key = task
        .as_ref()
        .filter(|t| t.status == Status::Completed)
        .and_then(|t| t.outcome_key.as_deref())
        .ok_or_else(|| anyhow::anyhow!("the heavy agent did not complete its task: {task:?}"))?;
    let entry = host.store().read(key, None)?;
    Ok(entry.map(|e| e.value).unwrap_or_default())
}

/// Run every measurement in fresh state directories under `dir`.
pub async fn run(dir: &Path, quick: bool) -> anyhow::Result<BenchReport> {
    use baton_artifacts as a;
    let (activations, latency_runs, handoff_runs, cached_loads) = if quick {
        (50, 30, 200, 5)
    } else {
        (2_000, 1_000, 20_000, 21)
    };

    // Memory first, so earlier phases do not set the peak.
    let workers: Vec<AgentSpec> = (0..1_000)
        .map(|i| {
            let mut w = agent(&format!("w{i:04}"), a::summarizer::WASM);
            w.capabilities = vec!["summarize".into()];
            w
        })
        .collect();
    let big = Host::load(
        &Mesh::new("<bench: 1000 agents>", workers),
        &dir.join("rss"),
    )?
    .with_workers(100);
    for i in 0..100 {
        let part = serde_json::to_vec(&json!({ "part": i, "text": "in flight" }))?;
        big.submit(&format!("w{i:04}"), "hold", Some(part), Vec::new())?;
    }
    big.run_until_idle().await?;
    let rss_mib_1000_agents = status_mib("VmHWM");
    drop(big);

    let (cold_load_ms, cached_load_ms) = loads(&dir.join("load"), cached_loads).await?;

    // Every bench agent may run once per client at a time, with as many clients as the
    // control's second run has.
    let concurrent = |mut spec: AgentSpec| {
        spec.limits.concurrency = MOST_IN_FLIGHT as u32;
        spec
    };
    let mut echo = concurrent(agent("echo", a::echo::WASM));
    echo.input_schema = Some(json!({ "type": "object", "required": ["title"] }));
    let mut worker = concurrent(agent("worker", a::echo::WASM));
    worker.capabilities = vec!["bench".into()];
    let writer = concurrent(agent("writer", a::writer::WASM));
    let host = Host::load(
        &Mesh::new("<bench>", vec![echo, worker, writer]),
        &dir.join("handoffs"),
    )?;

    let probe = TaskRecord {
        id: "bench".into(),
        root: "bench".into(),
        parent: None,
        kind: crate::store::Kind::Work,
        from: "operator".into(),
        to: "echo".into(),
        summary: "trivial".into(),
        completed: Vec::new(),
        outstanding: Vec::new(),
        params: Vec::new(),
        pattern: Pattern::Push,
        pointer: None,
        payload: Some(b"{}".to_vec()),
        deadline: u64::MAX,
        reply: false,
        in_reply_to: None,
        handoff: "bench".into(),
        status: crate::store::Status::Running,
        agent: Some("echo".into()),
        route: None,
        hops: 0,
        fingerprint: String::new(),
        fallback: crate::store::Fallback::None,
        attempts: 1,
        budget_ms: u64::MAX,
        not_before: 0,
        fallback_applied: None,
        failed_on: Vec::new(),
        created_at: 0,
        finished_at: None,
        outcome_key: None,
        outcome_summary: None,
        error: None,
    };
    host.time_activations("echo", &probe, 20).await?; // warm-up
    let mut sample = host.time_activations("echo", &probe, activations).await?;
    let (p50, p99) = percentiles(&mut sample);

    // CPU per handoff, next to the wall-clock figures: it shows what the machine's
    // other load did to them.
    let mut cpu = serde_json::Map::new();
    let mut loaded = serde_json::Map::new();
    // Latency of one handoff alone, then throughput with `IN_FLIGHT` at once (whose
    // latencies, queueing included, go to `setup.loaded_latency_us`).
    let mut run = async |name: &str, to: &str, pattern| -> anyhow::Result<Latency> {
        let (alone, _) = handoffs(&host, to, pattern, latency_runs, 1).await?;
        let before = cpu_ticks();
        let (busy, slowest) = handoffs(&host, to, pattern, handoff_runs, IN_FLIGHT).await?;
        if let Some(us) = cpu_us_since(before, handoff_runs) {
            cpu.insert(name.into(), json!(us));
        }
        loaded.insert(
            name.into(),
            json!({ "p50_us": busy.p50_us, "p99_us": busy.p99_us, "max_us": slowest }),
        );
        Ok(Latency {
            handoffs_per_s: busy.handoffs_per_s,
            ..alone
        })
    };
    host.store().set_commit_policy(CommitPolicy::Immediate);
    let blackboard_durable = run("blackboard_durable", "writer", Pattern::Blackboard).await?;
    host.store().set_commit_policy(CommitPolicy::Group);
    let counted = host.store().group_commit_counts();
    let blackboard_fast = run("blackboard_fast", "writer", Pattern::Blackboard).await?;
    let writes_per_fsync = match (counted, host.store().group_commit_counts()) {
        (Some((w0, f0)), Some((w1, f1))) if f1 > f0 => json!((w1 - w0) as f64 / (f1 - f0) as f64),
        _ => serde_json::Value::Null,
    };
    let push = run("push", "echo", Pattern::Push).await?;
    let pull = run("pull", "capability:bench", Pattern::Pull).await?;
    // What the process holds once every handoff above has gone through one store: the
    // store's page cache is bounded, so this does not grow with the store.
    let rss_mib_after_handoffs = status_mib("VmRSS");
    // A restart of that store, were the host killed at once, and after the second of
    // quiet that lets the writer checkpoint.
    let state = dir.join("handoffs");
    let killed_busy = restart(&state, &dir.join("restart-busy"))?;
    let waited = Instant::now();
    while crate::store::logged_frames(&state)? > 0 {
        anyhow::ensure!(
            waited.elapsed() < Duration::from_secs(30),
            "the idle host did not checkpoint its store in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed_quiet = restart(&state, &dir.join("restart-quiet"))?;

    // The control, after the restart figures so that they stay of the runs above: push
    // through a host whose activations complete each task with its payload and run no
    // agent (`Host::without_sandbox`), so the same claims, commits and fsyncs, at the
    // bench's in-flight count and at four times it. Its rate is the ceiling that the
    // durable path alone puts on push, whatever the sandbox costs.
    let bare = host.clone().without_sandbox();
    let mut control = Vec::new();
    for in_flight in [IN_FLIGHT, MOST_IN_FLIGHT] {
        let before = cpu_ticks();
        let (busy, _) = handoffs(&bare, "echo", Pattern::Push, handoff_runs, in_flight).await?;
        control.push(json!({
            "in_flight": in_flight,
            "handoffs_per_s": busy.handoffs_per_s.round(),
            "cpu_us_per_handoff": cpu_us_since(before, handoff_runs),
        }));
    }

    Ok(BenchReport {
        activation_us: Activation { p50, p99 },
        blackboard_durable,
        blackboard_fast: Some(blackboard_fast),
        push,
        pull,
        cold_load_ms,
        cached_load_ms: Some(cached_load_ms),
        rss_mib_1000_agents,
        commit_policy: CommitPolicy::Group.describe().into(),
        setup: json!({
            "activations": activations,
            "latency_handoffs": latency_runs,
            "throughput_handoffs": handoff_runs,
            "in_flight": IN_FLIGHT,
            "figures": "p50_us and p99_us: one handoff at a time; handoffs_per_s: IN_FLIGHT at a time",
            "loaded_latency_us": loaded,
            "handoff": "operator submits (committed, on disk) -> callee activated, reads the payload -> outcome committed and on disk; one worker per client",
            "blackboard_durable": CommitPolicy::Immediate.describe(),
            "push_pull_policy": "group commit (the host's default)",
            "cpu_us_per_handoff": cpu,
            "rss_mib_after_handoffs": rss_mib_after_handoffs,
            "restart_after_kill": {
                "what": "Store::open of the store above (every handoff of this run), its files copied as a kill leaves them: at once, and after the idle checkpoint; log_bytes counts both log files, frames redb already holds and the zeros written ahead of the frames included; after the idle checkpoint the files keep their bytes but hold no frame a restart reads",
                "at_once": killed_busy,
                "after_quiet": killed_quiet,
            },
            "blackboard_fast_writes_per_fsync": writes_per_fsync,
            "push_without_sandbox": {
                "what": "push as above, but each activation completes its task with the task's own payload and instantiates nothing: the claims, commits and fsyncs of a push handoff without its sandbox",
                "runs": control,
            },
            "load": format!(
                "a mesh of the heavy agent ({:.1} MiB component): cold = first load, compiled by cranelift into an empty state directory; cached = loads of the same mesh in the same state directory after the host is dropped, its compiled form read from `compiled/`, verified and deserialized",
                a::heavy::WASM.len() as f64 / (1024.0 * 1024.0)
            ),
            "cached_loads": cached_loads,
            "heavy_component_bytes": a::heavy::WASM.len(),
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
        }),
    })
}

/// The report for people.
pub fn to_text(r: &BenchReport) -> String {
    let row = |name: &str, l: &Latency| {
        format!(
            "{name:<20} p50 {:>9.1} µs  p99 {:>9.1} µs  {:>9.0} handoffs/s\n",
            l.p50_us, l.p99_us, l.handoffs_per_s
        )
    };
    let mut s = format!(
        "{:<20} p50 {:>9.1} µs  p99 {:>9.1} µs\n",
        "activation", r.activation_us.p50, r.activation_us.p99
    );
    s += &row("blackboard durable", &r.blackboard_durable);
    if let Some(l) = &r.blackboard_fast {
        s += &row("blackboard fast", l);
    }
    s += &row("push", &r.push);
    s += &row("pull", &r.pull);
    if let Some(runs) = r.setup["push_without_sandbox"]["runs"].as_array() {
        let rates: Vec<String> = runs
            .iter()
            .map(|run| {
                format!(
                    "{:.0} handoffs/s at {} in flight",
                    run["handoffs_per_s"].as_f64().unwrap_or(f64::NAN),
                    run["in_flight"]
                )
            })
            .collect();
        s += &format!("push, no sandbox     {}\n", rates.join(", "));
    }
    s += &format!(
        "cold load            {:>9.1} ms  (compile)\n",
        r.cold_load_ms
    );
    match r.cached_load_ms {
        Some(ms) => s += &format!("cached load          {ms:>9.1} ms  (compiled cache, median)\n"),
        None => s += "cached load          not measured\n",
    }
    s += &format!("rss, 1000 agents     {:.1} MiB\n", r.rss_mib_1000_agents);
    let restart = &r.setup["restart_after_kill"];
    if let (Some(busy), Some(quiet)) = (
        restart["at_once"]["open_ms"].as_f64(),
        restart["after_quiet"]["open_ms"].as_f64(),
    ) {
        s += &format!(
            "restart after kill   {busy:>9.1} ms  (at once; {quiet:.1} ms after a quiet second)\n"
        );
    }
    s
}
