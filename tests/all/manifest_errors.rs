//! Guarantee: a bad manifest is refused with an error that names the file, the agent and
//! the field, and nothing starts. Each `tests/ui/<case>.toml` is paired with the exact
//! error text in `tests/ui/<case>.err` (`$DIR` stands for the folder of the manifest).

use std::path::Path;

use baton::Mesh;

/// Copy the UI case and the components it names into a fresh folder and load it there.
fn load_case(case: &str) -> (String, tempfile::TempDir) {
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("researcher.wasm"),
        baton_artifacts::researcher::WASM,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("writer.wasm"),
        baton_artifacts::writer::WASM,
    )
    .unwrap();
    let manifest = dir.path().join("mesh.toml");
    std::fs::copy(ui.join(format!("{case}.toml")), &manifest).unwrap();
    let err = Mesh::load(&manifest)
        .err()
        .unwrap_or_else(|| panic!("{case}.toml was accepted"));
    let text = err
        .to_string()
        .replace(&dir.path().display().to_string(), "$DIR");
    (text, dir)
}

#[test]
fn every_bad_manifest_gets_its_expected_error() {
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
    let mut cases: Vec<String> = std::fs::read_dir(&ui)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".toml").map(str::to_string)
        })
        .collect();
    cases.sort();
    assert!(cases.len() >= 8, "found only {cases:?}");
    let mut failures = Vec::new();
    for case in &cases {
        let expected = std::fs::read_to_string(ui.join(format!("{case}.err")))
            .unwrap_or_else(|_| panic!("{case}.toml has no {case}.err"));
        let (actual, _dir) = load_case(case);
        if actual != expected.trim_end() {
            failures.push(format!(
                "{case}:\n  expected: {}\n  actual:   {actual}",
                expected.trim_end()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_good_manifest_loads_with_its_grants() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.wasm"), baton_artifacts::researcher::WASM).unwrap();
    std::fs::write(dir.path().join("w.wasm"), baton_artifacts::writer::WASM).unwrap();
    let pin = sha256sum(baton_artifacts::writer::WASM);
    let manifest = dir.path().join("mesh.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"
[mesh]
policy = "default"

[[agent]]
id = "researcher"
component = "r.wasm"
handoff = ["writer"]

[[agent]]
id = "writer"
component = "w.wasm"
sha256 = "{pin}"
reads = ["output/researcher/**"]
[agent.limits]
memory_mib = 32
"#
        ),
    )
    .unwrap();
    let mesh = Mesh::load(&manifest).unwrap();
    assert_eq!(mesh.ids(), ["researcher", "writer"]);
    let writer = mesh.agent("writer").unwrap();
    assert_eq!(writer.reads, ["output/researcher/**"]);
    assert_eq!(writer.limits.memory_mib, 32);
    assert_eq!(writer.limits.cpu_ms, baton::Limits::default().cpu_ms);
}

/// The pin as `sha256sum` prints it, computed outside baton.
fn sha256sum(bytes: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn a_pin_mismatch_names_expected_and_actual() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w.wasm"), baton_artifacts::writer::WASM).unwrap();
    let wrong = "0".repeat(64);
    let manifest = dir.path().join("mesh.toml");
    std::fs::write(
        &manifest,
        format!("[[agent]]\nid = \"writer\"\ncomponent = \"w.wasm\"\nsha256 = \"{wrong}\"\n"),
    )
    .unwrap();
    let err = Mesh::load(&manifest).unwrap_err();
    assert_eq!(err.agent.as_deref(), Some("writer"));
    assert_eq!(err.field.as_deref(), Some("sha256"));
    assert_eq!(
        err.message,
        format!(
            "component `w.wasm` does not match its pin: expected sha256 {wrong}, actual {}",
            sha256sum(baton_artifacts::writer::WASM)
        )
    );
}
