//! Guarantee: a component's compiled form is cached on disk under `<state>/compiled/`,
//! named by the component's sha256, and a later load runs the agent from it; an entry that
//! is damaged, swapped for another component's code or not made by the cache is caught
//! with a warning naming it, recompiled and rewritten, and the agent still runs correctly;
//! a cache that cannot be written never fails a load; a refused component is never
//! compiled nor taken from the cache; after a load, this engine's entries that no agent
//! of the mesh uses are removed, and other engines' entries are kept.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use baton::policy::Policy;
use baton::{Host, LoadError, Mesh};
use serde_json::json;

use crate::common::{agent, mesh, outcome, run};

/// Bytes the entry header takes before the compiled code: magic, then three sha256s.
const HEADER: usize = 8 + 3 * 32;

/// Where a test's `tracing` output goes.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Run `f` and return what the host logged meanwhile, as the operator would read it.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

fn hex_sha256(bytes: &[u8]) -> String {
    baton::manifest::hex(&<sha2::Sha256 as sha2::Digest>::digest(bytes))
}

/// The files in the cache directory of `state`, sorted.
fn entries(state: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(state.join("compiled"))
        .map(|dir| dir.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// The cache entry of `wasm` in `state`; there must be exactly one.
fn entry(state: &Path, wasm: &[u8]) -> PathBuf {
    let prefix = format!("{}-", hex_sha256(wasm));
    let found: Vec<PathBuf> = entries(state)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&prefix)
        })
        .collect();
    assert_eq!(found.len(), 1, "entries of {prefix}: {found:?}");
    found.into_iter().next().unwrap()
}

fn echo_mesh() -> Mesh {
    mesh(vec![agent("echo", baton_artifacts::echo::WASM)])
}

/// Load the echo mesh in `state` and prove the agent is echo, working: it hands back the
/// data it was given. Returns what the load logged; the host is dropped on return.
async fn load_and_echo(state: &Path) -> String {
    let (host, logs) = logged(|| Host::load(&echo_mesh(), state).unwrap());
    let report = run(&host, "echo", Some(json!({ "n": 42 })), vec![]).await;
    let echoed = outcome(&host, &report, "echo");
    assert_eq!(echoed["data"], json!({ "n": 42 }), "{echoed}");
    assert_eq!(echoed["from"], "operator", "{echoed}");
    logs
}

/// A fresh state whose cache holds the echo entry; the entry and its bytes.
async fn cached_echo() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let state = tempfile::tempdir().unwrap();
    load_and_echo(state.path()).await;
    let path = entry(state.path(), baton_artifacts::echo::WASM);
    let bytes = std::fs::read(&path).unwrap();
    (state, path, bytes)
}

#[tokio::test]
async fn a_second_load_runs_the_agent_from_the_entry_named_by_its_hash() {
    let state = tempfile::tempdir().unwrap();
    let logs = load_and_echo(state.path()).await;
    assert_eq!(logs, "", "a first load on an empty cache is quiet");

    let path = entry(state.path(), baton_artifacts::echo::WASM);
    assert_eq!(
        entries(state.path()),
        std::slice::from_ref(&path),
        "one entry, no leftovers"
    );
    let name = path.file_name().unwrap().to_str().unwrap();
    let engine = name
        .strip_prefix(&format!("{}-", hex_sha256(baton_artifacts::echo::WASM)))
        .and_then(|rest| rest.strip_suffix(".cwasm"))
        .unwrap();
    assert!(
        engine.len() == 16 && engine.bytes().all(|b| b.is_ascii_hexdigit()),
        "{name}"
    );
    let before = (
        std::fs::metadata(&path).unwrap().ino(),
        std::fs::read(&path).unwrap(),
    );

    // A restarted host: nothing shared in memory, the entry is read back as it is.
    let logs = load_and_echo(state.path()).await;
    assert_eq!(logs, "", "a sound entry is used without a word");
    let after = (
        std::fs::metadata(&path).unwrap().ino(),
        std::fs::read(&path).unwrap(),
    );
    assert!(before == after, "a sound entry is not rewritten");
}

#[tokio::test]
async fn a_damaged_entry_is_caught_recompiled_and_rewritten() {
    let flip = |bytes: &mut Vec<u8>, at: usize| {
        for b in &mut bytes[at..at + 16] {
            *b ^= 0xa5;
        }
    };
    type Damage = fn(&mut Vec<u8>, &dyn Fn(&mut Vec<u8>, usize));
    let cases: [(&str, Damage, &str); 5] = [
        (
            "bytes flipped in the code",
            |b, flip| flip(b, b.len() / 2),
            "is damaged: its code does not match its sha256",
        ),
        (
            "the recorded sha256 of the code changed",
            |b, flip| flip(b, HEADER - 16),
            "is damaged: its code does not match its sha256",
        ),
        (
            "the recorded engine changed",
            |b, flip| flip(b, 8 + 32),
            "was compiled by another engine",
        ),
        (
            "cut short",
            |b, _| b.truncate(HEADER / 2),
            "is not an entry of this cache",
        ),
        ("emptied", |b, _| b.clear(), "is not an entry of this cache"),
    ];
    for (what, damage, reason) in cases {
        let (state, path, sound) = cached_echo().await;
        let mut damaged = sound.clone();
        damage(&mut damaged, &flip);
        std::fs::write(&path, &damaged).unwrap();

        let logs = load_and_echo(state.path()).await;
        assert!(
            logs.contains("WARN")
                && logs.contains(&format!(
                    "`{}` {reason}; recompiling and overwriting it",
                    path.display()
                )),
            "{what}: {logs}"
        );
        assert_eq!(entries(state.path()), std::slice::from_ref(&path), "{what}");
        assert!(
            std::fs::read(&path).unwrap() == sound,
            "{what}: the entry is rewritten sound"
        );
        assert_eq!(load_and_echo(state.path()).await, "", "{what}: then used");
    }
}

#[tokio::test]
async fn an_entry_swapped_for_other_code_is_caught_recompiled_and_rewritten() {
    let (state, path, sound) = cached_echo().await;
    // Another component's entry, made by this same cache in another state.
    let other = tempfile::tempdir().unwrap();
    let snoop = mesh(vec![agent("snoop", baton_artifacts::snoop::WASM)]);
    drop(Host::load(&snoop, other.path()).unwrap());
    let snoop_entry = std::fs::read(entry(other.path(), baton_artifacts::snoop::WASM)).unwrap();

    let cases = [
        (
            "another component's entry",
            snoop_entry.clone(),
            format!(
                "holds the code of another component (sha256 {})",
                hex_sha256(baton_artifacts::snoop::WASM)
            ),
        ),
        (
            "another component's bare compiled code",
            snoop_entry[HEADER..].to_vec(),
            "is not an entry of this cache".to_string(),
        ),
    ];
    for (what, swapped, reason) in cases {
        std::fs::write(&path, &swapped).unwrap();
        // Still echo: the agent runs its own code, not the code put in its place.
        let logs = load_and_echo(state.path()).await;
        assert!(
            logs.contains(&format!(
                "`{}` {reason}; recompiling and overwriting it",
                path.display()
            )),
            "{what}: {logs}"
        );
        assert!(
            std::fs::read(&path).unwrap() == sound,
            "{what}: the entry is rewritten sound"
        );
    }
}

/// An agent rebuilt is a new component. After a load that no longer uses the old entry,
/// that entry is gone, with any temporary file a crash left mid-write; the entry in use
/// stays, and so does an entry of another engine (another baton version may share the
/// state directory). An agent whose entry was removed is compiled again, and still runs.
#[tokio::test]
async fn entries_no_agent_uses_are_removed_after_a_load_and_other_engines_kept() {
    let (state, echo_entry, _) = cached_echo().await;
    let dir = state.path().join("compiled");
    let torn = dir.join(".tmp-Xq3vB1");
    std::fs::write(&torn, b"half an entry").unwrap();
    let foreign = dir.join(format!(
        "{}-0123456789abcdef.cwasm",
        hex_sha256(baton_artifacts::echo::WASM)
    ));
    assert_ne!(foreign, echo_entry, "the test's engine is this engine");
    std::fs::write(&foreign, b"another engine's entry").unwrap();

    // The mesh now runs snoop instead of echo.
    let snoop = mesh(vec![agent("snoop", baton_artifacts::snoop::WASM)]);
    let (host, logs) = logged(|| Host::load(&snoop, state.path()).unwrap());
    drop(host);
    assert!(
        logs.contains(&format!(
            "compiled cache: removed 2 files under `{}` that no agent of this mesh uses",
            dir.display()
        )),
        "{logs}"
    );
    let snoop_entry = entry(state.path(), baton_artifacts::snoop::WASM);
    let mut kept = vec![foreign.clone(), snoop_entry.clone()];
    kept.sort();
    assert_eq!(entries(state.path()), kept);
    assert_eq!(
        std::fs::read(&foreign).unwrap(),
        b"another engine's entry",
        "another engine's entry is left as it was"
    );

    // Echo again: compiled anew (its entry is gone), it runs, and snoop's entry goes.
    load_and_echo(state.path()).await;
    assert!(echo_entry.exists(), "echo's entry is written again");
    let mut kept = vec![foreign, echo_entry];
    kept.sort();
    assert_eq!(entries(state.path()), kept);
}

#[tokio::test]
async fn a_cache_that_cannot_be_written_never_fails_a_load() {
    let state = tempfile::tempdir().unwrap();
    // A file where the cache directory belongs: no entry can be read or written under it,
    // whoever runs the test (file modes do not stop root).
    let blocker = state.path().join("compiled");
    std::fs::write(&blocker, "not a directory").unwrap();
    let two = || {
        mesh(vec![
            agent("echo", baton_artifacts::echo::WASM),
            agent("snoop", baton_artifacts::snoop::WASM),
        ])
    };
    for _ in 0..2 {
        let (host, logs) = logged(|| Host::load(&two(), state.path()).unwrap());
        assert_eq!(
            logs.lines().count(),
            1,
            "one warning per load, however many components: {logs}"
        );
        assert!(
            logs.contains("WARN")
                && logs.contains(&format!(
                    "compiled cache: cannot write under `{}`: ",
                    blocker.display()
                ))
                && logs.contains("; compiling at every load"),
            "{logs}"
        );
        let report = run(&host, "echo", Some(json!({ "n": 7 })), vec![]).await;
        assert_eq!(outcome(&host, &report, "echo")["data"], json!({ "n": 7 }));
    }
    assert_eq!(std::fs::read(&blocker).unwrap(), b"not a directory");
}

#[test]
fn a_refused_component_is_neither_compiled_nor_taken_from_the_cache() {
    let state = tempfile::tempdir().unwrap();
    let reader = |policy| {
        let mut spec = agent("reader", baton_artifacts::fs_reader::WASM);
        spec.policy = policy;
        mesh(vec![spec])
    };
    // Admitted under `virtualized`, so its compiled form is cached.
    drop(Host::load(&reader(Policy::Virtualized), state.path()).unwrap());
    entry(state.path(), baton_artifacts::fs_reader::WASM);
    let before = entries(state.path());

    // The same bytes under `default`: refused by the policy check, before the cache.
    let (err, logs) = logged(|| Host::load(&reader(Policy::Default), state.path()).err());
    assert!(
        matches!(err, Some(LoadError::Refused { .. })),
        "expected a refusal, got {err:?}"
    );
    assert_eq!(logs, "");
    assert_eq!(entries(state.path()), before);

    // A refused mesh caches nothing, not even its admitted agents.
    let fresh = tempfile::tempdir().unwrap();
    let mut refused = agent("reader", baton_artifacts::fs_reader::WASM);
    refused.policy = Policy::Default;
    let mixed = mesh(vec![agent("echo", baton_artifacts::echo::WASM), refused]);
    assert!(Host::load(&mixed, fresh.path()).is_err());
    assert!(!fresh.path().join("compiled").exists());
}
