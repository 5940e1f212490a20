//! Guarantee: the `baton` binary keeps its contract: the commands, flags, exit codes and
//! JSON fields that scripts depend on. Every invocation is a fresh process, so reading
//! state back here also proves it survives a restart.

use std::path::Path;
use std::process::{Command, Output};

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

    let out = baton(&["check", "x.wasm", "--policy", "lax"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
    assert!(
        stderr(&out).contains("unknown policy `lax`"),
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
