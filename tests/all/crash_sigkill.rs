//! Guarantee: a host killed with SIGKILL at any moment loses nothing it acknowledged.
//! Restarted on the same state, it redelivers what the dead host had claimed but not
//! finished, and every acknowledged submission's chain completes exactly once: one task
//! and one hand-off per hop, one version of each outcome, each chunk of a stream once and
//! in order, a whole audit chain.
//!
//! The host runs in `crash_driver` (`tests/src/bin/`), killed after a random time; the
//! delays come from a seed printed with every failure. Set `BATON_CRASH_SEED` to replay
//! one (the kills land at the same times, not on the same instructions).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead as _, BufReader, Read as _};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton::store::{AuditVerdict, Status, TaskRecord};
use baton::{Report, Store};
use serde_json::Value;

/// Host processes killed, each after running work for a random time.
const KILLS: u32 = 6;
/// The range of that time, in ms, counted from the end of the driver's load.
const RUN_MS: (u64, u64) = (80, 600);
/// Chunks of each stream the driver's streamer writes.
const CHUNKS: i64 = 3;
/// Longest wait for a driver to load, or to finish.
const PATIENCE: Duration = Duration::from_secs(60);

#[test]
fn acknowledged_work_survives_sigkill_and_completes_exactly_once() {
    let seed = std::env::var("BATON_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            now.as_nanos() as u64
        });
    let mut rng = seed;
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().to_str().unwrap();
    let started = Instant::now();

    let mut acked = Vec::new();
    // Tasks each load redelivered: claimed by the host killed before it, not finished.
    let mut recovered = Vec::new();
    for kill in 1..=KILLS {
        let ctx = format!("seed {seed}, kill {kill}");
        let mut driver = Driver::spawn(&["run", dir, &kill.to_string()]);
        recovered.push(driver.ready(&ctx));
        let (lo, hi) = RUN_MS;
        std::thread::sleep(Duration::from_millis(lo + splitmix(&mut rng) % (hi - lo)));
        for line in driver.kill(&ctx) {
            match line.split(' ').collect::<Vec<_>>()[..] {
                ["acked", task, marker] => acked.push((task.to_string(), marker.to_string())),
                _ => panic!("{ctx}: unexpected line `{line}`"),
            }
        }
    }

    let ctx = format!("seed {seed}");
    let mut finish = Driver::spawn(&["finish", dir]);
    recovered.push(finish.ready(&ctx));
    let idle = finish.lines.recv_timeout(PATIENCE);
    let status = finish.child.wait().unwrap();
    assert!(
        status.success() && idle.as_deref().is_ok_and(|l| l.starts_with("idle ")),
        "{ctx}: the finishing host failed ({status}, {idle:?}): {}",
        finish.stderr()
    );

    let replays = |what: &str| -> usize {
        ["researcher", "bouncer", "streamer"]
            .iter()
            .map(|agent| {
                let log = state.path().join(format!("logs/{agent}.log"));
                let log = std::fs::read_to_string(log).unwrap_or_default();
                log.matches(what).count()
            })
            .sum()
    };
    let summary = format!(
        "{ctx}: {KILLS} kills, {} submissions acknowledged, {recovered:?} tasks redelivered at each load, \
         {} hand-offs and {} stream chunks replayed, {:.1} s",
        acked.len(),
        replays("was made by an earlier delivery"),
        replays("was written by an earlier delivery"),
        started.elapsed().as_secs_f64()
    );
    eprintln!("crash_sigkill: {summary}");
    assert!(!acked.is_empty(), "{summary}: nothing was acknowledged");
    // Some kill must have caught a task mid-run, or nothing here was tested.
    assert!(
        recovered.iter().sum::<usize>() > 0,
        "{summary}: no kill left a task unfinished"
    );
    check_store(state.path(), &acked, &summary);
}

/// Everything the store holds after the last restart: every chain complete exactly
/// once, every acknowledged submission among them under the id it was acknowledged with.
fn check_store(state: &Path, acked: &[(String, String)], ctx: &str) {
    let store = Store::open(state).unwrap();
    // Ids are handed out by a counter committed with the record, so they run without gaps.
    let tasks: Vec<TaskRecord> = (1..)
        .map_while(|n| store.task(&format!("t-{n}")).unwrap())
        .collect();
    let handoffs = (1..)
        .map_while(|n| store.handoff(&format!("h-{n}")).unwrap())
        .count();
    for t in &tasks {
        assert_eq!(t.status, Status::Completed, "{ctx}: {t:?}");
        // Every agent that was handed a task has nothing left in its inbox.
        assert_eq!(store.inbox_depth(&t.to).unwrap(), 0, "{ctx}: {}", t.to);
    }

    // Every submission the store holds, by its marker; one seen twice was recorded twice.
    let mut submitted: HashMap<String, &TaskRecord> = HashMap::new();
    for root in tasks.iter().filter(|t| t.from == "operator") {
        let key = root
            .pointer
            .as_deref()
            .expect("a submission points at its data");
        let input = value(&store.read(key, None).unwrap().unwrap().value);
        let marker = input["topic"].as_str().or(input["text"].as_str());
        let marker = marker
            .expect("the driver's data carries a marker")
            .to_string();
        check_chain(&store, root, &marker, ctx);
        if let Some(first) = submitted.insert(marker.clone(), root) {
            panic!(
                "{ctx}: {marker} was submitted as {} and {}",
                first.id, root.id
            );
        }
    }
    assert_eq!(tasks.len(), 2 * submitted.len(), "{ctx}: two tasks a chain");
    assert_eq!(
        handoffs,
        2 * submitted.len(),
        "{ctx}: two hand-offs a chain"
    );

    // Nothing acknowledged is lost, and no id was given out twice.
    let mut ids = HashSet::new();
    for (task, marker) in acked {
        assert!(ids.insert(task), "{ctx}: {task} was acknowledged twice");
        let root = submitted
            .get(marker)
            .unwrap_or_else(|| panic!("{ctx}: acknowledged {marker} ({task}) is lost"));
        assert_eq!(&root.id, task, "{ctx}: {marker}");
        let report = Report::for_task(&store, task).unwrap().unwrap();
        assert_eq!(report.status, "completed", "{ctx}: {report:?}");
    }

    // The audit chain is whole and holds each hand-off once.
    assert!(
        matches!(store.audit_verify().unwrap(), AuditVerdict::Whole { .. }),
        "{ctx}: {:?}",
        store.audit_verify()
    );
    let mut audited: Vec<String> = store
        .audit_log()
        .unwrap()
        .into_iter()
        .filter(|r| r.event == "handoff")
        .filter_map(|r| r.task)
        .collect();
    audited.sort_unstable();
    let mut created: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
    created.sort_unstable();
    assert_eq!(audited, created, "{ctx}: one audited hand-off per task");
}

/// The chain of the submission `root`: operator → researcher → writer, operator →
/// bouncer → summarizer, or operator → streamer → reader; each hop made once, each
/// outcome written once, the first naming the second task (or its stream), the last
/// about `marker` (or the whole stream).
fn check_chain(store: &Store, root: &TaskRecord, marker: &str, ctx: &str) {
    let (second, names_task, about, expected) = match root.to.as_str() {
        "researcher" => ("writer", "task", "title", format!("Notes on {marker}")),
        "bouncer" => ("summarizer", "forwarded", "summary", marker.to_uppercase()),
        "streamer" => ("reader", "stream", "text", stream_text(CHUNKS)),
        other => panic!("{ctx}: a submission to `{other}`"),
    };
    let chain = store.chain(&root.id).unwrap();
    let hops: Vec<(&str, &str)> = chain
        .handoffs
        .iter()
        .map(|h| (h.from.as_str(), h.to.as_str()))
        .collect();
    assert_eq!(
        hops,
        [("operator", root.to.as_str()), (root.to.as_str(), second)],
        "{ctx}: {marker}: {chain:?}"
    );
    let [head, last] = &chain.tasks[..] else {
        panic!("{ctx}: {marker}: {chain:?}");
    };
    assert_eq!(head.id, root.id, "{ctx}: {marker}");
    assert_eq!(last.parent.as_ref(), Some(&root.id), "{ctx}: {marker}");
    assert_eq!(last.handoff, chain.handoffs[1].id, "{ctx}: {marker}");

    let first = only_version(store, root, ctx);
    let outcome = only_version(store, last, ctx);
    assert_eq!(outcome[about], expected.as_str(), "{ctx}: {outcome}");
    if second != "reader" {
        assert_eq!(first[names_task], last.id.as_str(), "{ctx}: {first}");
        return;
    }
    // Each chunk was written once, in order, however many deliveries wrote the stream.
    let key = chain.handoffs[1].key.as_deref().unwrap();
    assert_eq!(first[names_task], key, "{ctx}: {first}");
    let chunks: Vec<Value> = store
        .history(key)
        .unwrap()
        .iter()
        .map(|e| value(&e.value))
        .collect();
    let written: Vec<i64> = chunks.iter().map(|c| c["n"].as_i64().unwrap()).collect();
    assert_eq!(written, (0..CHUNKS).collect::<Vec<_>>(), "{ctx}: {marker}");
    let stream = store.stream(key).unwrap().unwrap();
    assert!(stream.closed, "{ctx}: {marker}: {stream:?}");
    assert_eq!(outcome["chunks"], CHUNKS, "{ctx}: {outcome}");
}

/// What the reader makes of a whole stream of `chunks` chunks.
fn stream_text(chunks: i64) -> String {
    let parts: Vec<String> = (0..chunks).map(|n| format!("paragraph {n}")).collect();
    parts.join(" / ")
}

/// The outcome of `task`, which must have been written exactly once.
fn only_version(store: &Store, task: &TaskRecord, ctx: &str) -> Value {
    let key = task.outcome_key.as_deref().unwrap();
    let history = store.history(key).unwrap();
    assert_eq!(history.len(), 1, "{ctx}: {key}: {history:?}");
    value(&history[0].value)
}

fn value(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

/// The next number of a splitmix64 sequence.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A running `crash_driver` and the whole lines it printed. Dropping it kills it, so a
/// failed test leaves no host behind.
struct Driver {
    child: Child,
    lines: Receiver<String>,
}

impl Driver {
    fn spawn(args: &[&str]) -> Driver {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash_driver"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start crash_driver");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            // A line the kill cut short has no newline, and is not counted.
            while stdout.read_line(&mut line).is_ok_and(|n| n > 0) && line.ends_with('\n') {
                if tx.send(line.trim_end().to_string()).is_err() {
                    break;
                }
                line.clear();
            }
        });
        Driver { child, lines }
    }

    /// Wait for the load; returns how many tasks it redelivered.
    fn ready(&mut self, ctx: &str) -> usize {
        let Ok(line) = self.lines.recv_timeout(PATIENCE) else {
            panic!("{ctx}: the host never loaded: {}", self.stderr());
        };
        line.strip_prefix("ready ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{ctx}: expected `ready <n>`, got `{line}`"))
    }

    /// SIGKILL it and return the lines it printed since `ready`.
    fn kill(mut self, ctx: &str) -> Vec<String> {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        if status.signal() != Some(9) {
            panic!(
                "{ctx}: the host had stopped before the kill ({status}): {}",
                self.stderr()
            );
        }
        self.lines.iter().collect()
    }

    /// What it wrote to stderr, once it is stopped (killed, if need be).
    fn stderr(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut text = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
