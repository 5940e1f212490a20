//! Guarantee: the `baton` binary keeps its contract: the commands, flags, exit codes and
//! JSON fields that scripts depend on. Every invocation is a fresh process, so reading
//! state back here also proves it survives a restart.

use std::path::Path;
use std::process::{Command, Output};

use redb::ReadableTable as _;
use serde_json::Value;

fn baton(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .env_remove("BATON_LOG")
        .output()
        .expect("run baton")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn demo_json_shows_a_blackboard_handoff_with_provenance_that_outlives_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = baton(&["demo", "--state", s(&state), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);

    assert_eq!(report["status"], "completed");
    let task = report["task"].as_str().unwrap().to_string();
    let h = &report["handoffs"][0];
    assert_eq!(h["from"], "researcher");
    assert_eq!(h["to"], "writer");
    assert_eq!(h["pattern"], "blackboard");
    let id = h["id"].as_str().unwrap();
    let key = h["key"].as_str().unwrap().to_string();
    assert_eq!(key, format!("output/researcher/{id}"));
    let outcome_key = report["outcome_key"].as_str().unwrap();
    assert!(outcome_key.starts_with("output/writer/t-"), "{outcome_key}");
    assert_eq!(report["outcome"]["based_on"]["key"], key.as_str());

    // A new process reads the handed-off key's history, with the writer's provenance.
    let out = baton(&["bb", "get", &key, "--history", "--state", s(&state)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let history = json(&out);
    let versions = history.as_array().unwrap();
    assert_eq!(versions.len(), 1);
    let v = &versions[0];
    for field in ["key", "version", "writer", "sha256", "written_at", "value"] {
        assert!(v.get(field).is_some(), "bb get lacks `{field}`: {v}");
    }
    assert_eq!(v["writer"], "researcher");
    assert_eq!(v["version"], 1);
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(v["value"]["topic"], "secure agent handoffs");

    // And traces the chain from any of its tasks, identically.
    let out = baton(&["trace", &task, "--state", s(&state), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json(&out), report);
    let writer_task = h["task"].as_str().unwrap();
    let out = baton(&["trace", writer_task, "--state", s(&state)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("task {task}: completed")),
        "{text}"
    );
    assert!(text.contains("researcher -> writer  blackboard"), "{text}");
}

#[test]
fn check_exit_codes_are_0_admitted_1_refused_2_unreadable() {
    let out = baton(&["check", baton_artifacts::researcher::PATH, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["admitted"], true);
    assert_eq!(v["policy"], "default");
    assert!(
        v["imports"]
            .as_array()
            .unwrap()
            .contains(&"baton:agent/mesh@0.1.0".into())
    );

    let out = baton(&["check", baton_artifacts::wasi_command::PATH]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("refused by policy `default`"), "{text}");
    assert!(
        text.contains("refused wasi:filesystem/preopens@0.2.6"),
        "{text}"
    );
    assert!(
        text.contains("refused wasi:filesystem/types@0.2.6"),
        "{text}"
    );

    let out = baton(&[
        "check",
        baton_artifacts::researcher::PATH,
        "--policy",
        "strict",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let refused = json(&out)["refused"].as_array().unwrap().clone();
    assert!(
        refused
            .iter()
            .any(|r| r["import"] == "wasi:cli/environment@0.2.6")
    );

    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8], &str); 4] = [
        ("text.wasm", b"not wasm at all", "not a WebAssembly file"),
        (
            "core.wasm",
            b"\0asm\x01\0\0\0",
            "a core WebAssembly module, not a component",
        ),
        (
            "cut.wasm",
            &baton_artifacts::writer::WASM[..2000],
            "an invalid component",
        ),
        ("empty.wasm", b"", "not a WebAssembly file"),
    ];
    for (name, bytes, expect) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = baton(&["check", s(&path)]);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(s(&path)) && err.contains(expect),
            "{name}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let missing = dir.path().join("missing.wasm");
    let out = baton(&["check", s(&missing), "--json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        json(&out)["error"]
            .as_str()
            .unwrap()
            .starts_with("cannot read")
    );
}

fn write_mesh(dir: &Path, body: &str) -> std::path::PathBuf {
    std::fs::write(
        dir.join("researcher.wasm"),
        baton_artifacts::researcher::WASM,
    )
    .unwrap();
    std::fs::write(dir.join("writer.wasm"), baton_artifacts::writer::WASM).unwrap();
    let path = dir.join("mesh.toml");
    std::fs::write(&path, body).unwrap();
    path
}

const MESH: &str = r#"
[[agent]]
id = "researcher"
component = "researcher.wasm"
handoff = ["writer"]

[[agent]]
id = "writer"
component = "writer.wasm"
"#;

#[test]
fn run_executes_a_manifest_and_reports_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = write_mesh(dir.path(), MESH);
    let state = dir.path().join("state");
    let out = baton(&[
        "run",
        "--mesh",
        s(&mesh),
        "--to",
        "researcher",
        "--summary",
        "look into kelp",
        "--data",
        r#"{"topic":"kelp"}"#,
        "--param",
        "await_reply=true",
        "--state",
        s(&state),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = json(&out);
    for field in ["task", "status", "handoffs", "outcome_key", "outcome"] {
        assert!(r.get(field).is_some(), "run JSON lacks `{field}`");
    }
    assert_eq!(r["status"], "completed");
    let hops: Vec<(String, String)> = r["handoffs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["from"].as_str().unwrap().into(),
                h["to"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        hops,
        [
            ("researcher".into(), "writer".into()),
            ("writer".into(), "researcher".into())
        ]
    );
    assert_eq!(r["outcome"]["reply_from"], "writer");
    assert!(
        r["outcome_key"]
            .as_str()
            .unwrap()
            .starts_with("output/researcher/")
    );
}

#[test]
fn bad_input_is_named_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let bad = write_mesh(
        dir.path(),
        &MESH.replace(
            "handoff = [\"writer\"]",
            "handoff = [\"writer\"]\ncolour = \"red\"",
        ),
    );
    let out = baton(&[
        "run",
        "--mesh",
        s(&bad),
        "--to",
        "researcher",
        "--summary",
        "x",
        "--state",
        s(&state),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "error: {}: agent `researcher`: field `colour`: unknown field `colour`, expected one of `id`, `component`, `sha256`, `policy`, `reads`, `handoff`, `capabilities`, `input_schema`, `strip`, `limits`, `outbound`",
            s(&bad)
        )
    );
    assert!(!state.exists(), "a refused manifest must not create state");

    let good = write_mesh(dir.path(), MESH);
    let out = baton(&[
        "run",
        "--mesh",
        s(&good),
        "--to",
        "editor",
        "--summary",
        "x",
        "--state",
        s(&state),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no agent `editor` in this mesh; agents: researcher, writer"),
        "{}",
        stderr(&out)
    );

    let out = baton(&[
        "run",
        "--mesh",
        s(&good),
        "--to",
        "writer",
        "--summary",
        "x",
        "--data",
        "{oops",
        "--state",
        s(&state),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error: --data is not valid JSON"),
        "{}",
        stderr(&out)
    );

    let out = baton(&[
        "bb",
        "get",
        "output/writer/t-1",
        "--state",
        s(&dir.path().join("nowhere")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no baton state in"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("nowhere").exists());

    // A store that cannot be opened is refused with exit 1, naming its file and why.
    let refused = |state: &Path, why: &str| {
        let out = baton(&["audit", "log", "--state", s(state)]);
        assert_eq!(out.status.code(), Some(1));
        let file = state.join("store.redb");
        assert_eq!(
            stderr(&out).trim(),
            format!("error: store: cannot open `{}`: {why}", s(&file))
        );
    };
    // Something other than a store: named, and left as it was.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("store.redb"), b"not a store").unwrap();
    refused(&other, "Not a redb database: magic number mismatch");
    assert_eq!(
        std::fs::read(other.join("store.redb")).unwrap(),
        b"not a store"
    );
    // A store another host holds open: named, not waited for.
    std::fs::create_dir_all(&state).unwrap();
    let held = redb::Database::create(state.join("store.redb")).unwrap();
    refused(&state, "Database already open. Cannot acquire lock.");
    drop(held);

    let out = baton(&["check", "x.wasm", "--policy", "lax"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
    assert!(
        stderr(&out).contains("unknown policy `lax`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn every_demo_keeps_its_json_contract() {
    let dir = tempfile::tempdir().unwrap();
    let demo = |pattern: &str| {
        let state = dir.path().join(pattern);
        let out = baton(&["demo", pattern, "--state", s(&state), "--json"]);
        assert_eq!(out.status.code(), Some(0), "{pattern}: {}", stderr(&out));
        let r = json(&out);
        assert_eq!(r["status"], "completed", "{pattern}: {r}");
        for field in ["task", "status", "handoffs", "outcome_key", "outcome"] {
            assert!(r.get(field).is_some(), "{pattern} lacks `{field}`");
        }
        for h in r["handoffs"].as_array().unwrap() {
            for field in ["id", "from", "to", "pattern", "key"] {
                assert!(
                    h.get(field).is_some(),
                    "{pattern} handoff lacks `{field}`: {h}"
                );
            }
            let p = h["pattern"].as_str().unwrap();
            assert!(["blackboard", "push", "pull", "stream"].contains(&p), "{p}");
        }
        r
    };

    let r = demo("blackboard");
    assert_eq!(r["handoffs"][0]["pattern"], "blackboard");

    let r = demo("push");
    assert_eq!(
        r["refused"],
        serde_json::json!({ "error": "invalid", "field": "title" })
    );
    assert!(
        r["handoffs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["pattern"] == "push")
    );

    let r = demo("pull");
    let pulls: Vec<&Value> = r["handoffs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["pattern"] == "pull")
        .collect();
    assert!(pulls.len() >= 8, "{r}");
    let workers: std::collections::BTreeSet<&str> = pulls
        .iter()
        .map(|h| {
            h["claimed_by"]
                .as_str()
                .expect("every pull handoff is claimed")
        })
        .collect();
    assert!(workers.len() >= 2, "{workers:?}");

    let r = demo("stream");
    assert_eq!(r["handoffs"][0]["pattern"], "stream");
    let first = r["first_chunk_read_at"].as_u64().unwrap();
    let finished = r["caller_finished_at"].as_u64().unwrap();
    assert!(first < finished, "{first} !< {finished}");
    assert!(r["chunks"].as_u64().unwrap() >= 3);

    let r = demo("route");
    let to: Vec<&str> = r["handoffs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["to"].as_str().unwrap())
        .collect();
    assert_eq!(
        to,
        ["french", "english", "fallback-desk", "router", "french"]
    );

    let r = demo("fallback");
    assert_eq!(
        r["fallback"],
        serde_json::json!({ "reason": "timeout", "action": "reroute", "final_agent": "writer" })
    );

    let out = baton(&["demo", "teleport"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown demo `teleport`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn operator_lists_and_resolves_escalations() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("caller.wasm"),
        baton_artifacts::caller::WASM,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("sleeper.wasm"),
        baton_artifacts::sleeper::WASM,
    )
    .unwrap();
    let mesh = dir.path().join("mesh.toml");
    std::fs::write(
        &mesh,
        "[[agent]]\nid = \"caller\"\ncomponent = \"caller.wasm\"\nhandoff = [\"sleeper\"]\n\n[[agent]]\nid = \"sleeper\"\ncomponent = \"sleeper.wasm\"\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    let out = baton(&[
        "run",
        "--mesh",
        s(&mesh),
        "--to",
        "caller",
        "--summary",
        "call",
        "--param",
        "target=sleeper",
        "--param",
        "fallback=escalate",
        "--param",
        "deadline_ms=200",
        "--state",
        s(&state),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = json(&out);
    let escalated = run["tasks"][1]["id"].as_str().unwrap().to_string();

    let out = baton(&["operator", "list", "--state", s(&state), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let list = json(&out);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["task"], escalated.as_str());
    assert_eq!(list[0]["agent"], "sleeper");

    let out = baton(&[
        "operator",
        "resolve",
        &escalated,
        "--note",
        "done by hand",
        "--state",
        s(&state),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = baton(&["operator", "list", "--state", s(&state), "--json"]);
    assert_eq!(json(&out), serde_json::json!([]));
    let out = baton(&["operator", "list", "--all", "--state", s(&state), "--json"]);
    assert_eq!(json(&out)[0]["note"], "done by hand");

    let out = baton(&["operator", "resolve", &escalated, "--state", s(&state)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already resolved"),
        "{}",
        stderr(&out)
    );
    let out = baton(&["operator", "resolve", "t-999", "--state", s(&state)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no escalation for task `t-999`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_explains_what_an_agent_of_a_mesh_can_reach() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = write_mesh(
        dir.path(),
        &MESH.replace(
            "handoff = [\"writer\"]",
            "handoff = [\"writer\"]\nreads = [\"shared/*\"]",
        ),
    );
    let out = baton(&[
        "check",
        "--mesh",
        s(&mesh),
        "--agent",
        "researcher",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["agent"], "researcher");
    assert_eq!(v["admitted"], true);
    assert_eq!(v["policy"], "default");
    assert_eq!(v["reads"]["own_namespace"], "output/researcher/");
    assert_eq!(v["reads"]["globs"], serde_json::json!(["shared/*"]));
    assert_eq!(
        v["handoff"],
        serde_json::json!([{ "target": "writer", "kind": "agent", "reaches": ["writer"] }])
    );
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
    assert!(
        v["imports"]
            .as_array()
            .unwrap()
            .contains(&"baton:agent/mesh@0.1.0".into())
    );

    let out = baton(&["check", "--mesh", s(&mesh), "--agent", "ghost"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no agent `ghost` in this mesh; agents: researcher, writer"));
}

#[test]
fn audit_verify_exits_0_when_whole_and_1_naming_the_broken_record() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = baton(&["demo", "--state", s(&state)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let out = baton(&["audit", "verify", "--state", s(&state)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "audit log whole: 4 records"
    );

    // Tamper with record 2 behind the host's back.
    {
        let db = redb::Database::open(state.join(baton::store::STORE_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            // In the row of the records its transaction appended, a line each.
            let mut t = txn.open_table(baton::store::AUDIT).unwrap();
            let (first, edited) = {
                let (k, v) = t.range(..=2).unwrap().next_back().unwrap().unwrap();
                let mut lines: Vec<String> = v.value().lines().map(str::to_string).collect();
                let line = &mut lines[(2 - k.value()) as usize];
                *line = line.replace("researcher", "mallory");
                (k.value(), lines.join("\n"))
            };
            t.insert(first, edited.as_str()).unwrap();
        }
        txn.commit().unwrap();
    }
    let out = baton(&["audit", "verify", "--state", s(&state), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["whole"], false);
    assert_eq!(v["broken"], 2);
    let out = baton(&["audit", "verify", "--state", s(&state)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error: audit log broken at record #2: its content hashes to"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_takes_secrets_from_a_vault_file_or_the_environment_and_never_prints_them() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = write_mesh(
        dir.path(),
        &format!(
            "{MESH}\n[[agent.outbound]]\nhost = \"api.example.com\"\n\
             headers = {{ Authorization = \"Bearer {{secret:example}}\" }}\n"
        ),
    );
    let vault = dir.path().join("vault.toml");
    let state = dir.path().join("state");
    let run = |extra: &[&str], env: Option<&str>| {
        let mut args = vec![
            "run",
            "--mesh",
            s(&mesh),
            "--to",
            "researcher",
            "--summary",
            "look into kelp",
            "--state",
            s(&state),
        ];
        args.extend_from_slice(extra);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton"));
        cmd.args(&args)
            .env_remove("BATON_LOG")
            .env_remove("BATON_SECRET_EXAMPLE");
        if let Some(value) = env {
            cmd.env("BATON_SECRET_EXAMPLE", value);
        }
        cmd.output().expect("run baton")
    };

    std::fs::write(&vault, "other = \"sk-other-value-1234\"\n").unwrap();
    let out = run(&["--vault", s(&vault)], None);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("agent `writer`: field `outbound[0].headers.Authorization`: secret `example` is not in the vault"),
        "{err}"
    );
    assert!(!err.contains("sk-other-value-1234"), "{err}");
    assert!(!state.exists(), "a refused mesh must not create state");

    std::fs::write(&vault, "example = \"sk-file-value-1234\"\n").unwrap();
    let out = run(&["--vault", s(&vault)], None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = run(&[], Some("sk-env-value-1234"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!all.contains("sk-env-value"), "{all}");
}

#[test]
fn workers_outside_the_instance_pool_are_a_usage_error_that_creates_no_state() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    for workers in ["0", "257", "many"] {
        let out = baton(&["demo", "--workers", workers, "--state", s(&state)]);
        assert_eq!(out.status.code(), Some(2), "--workers {workers}: {out:?}");
        let err = stderr(&out);
        assert!(
            err.contains("--workers") && err.contains(workers),
            "--workers {workers}: {err}"
        );
        assert!(!state.exists(), "--workers {workers} created state");
    }
    let out = baton(&["demo", "--workers", "256", "--state", s(&state), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json(&out)["status"], "completed");
}
