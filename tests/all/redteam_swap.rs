//! Guarantee: a component pinned by sha256 in the manifest and swapped on disk afterwards
//! is refused at load, naming the expected and actual digests; nothing runs.

use baton::Mesh;

#[test]
fn a_swapped_component_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("writer.wasm");
    std::fs::write(&wasm, baton_artifacts::writer::WASM).unwrap();
    let pin = baton::manifest::hex(&<sha2::Sha256 as sha2::Digest>::digest(
        baton_artifacts::writer::WASM,
    ));
    let manifest = dir.path().join("mesh.toml");
    std::fs::write(
        &manifest,
        format!("[[agent]]\nid = \"writer\"\ncomponent = \"writer.wasm\"\nsha256 = \"{pin}\"\n"),
    )
    .unwrap();
    assert!(Mesh::load(&manifest).is_ok(), "the pinned component loads");

    // An attacker with write access to the mesh folder swaps in another component.
    std::fs::write(&wasm, baton_artifacts::snoop::WASM).unwrap();
    let actual = baton::manifest::hex(&<sha2::Sha256 as sha2::Digest>::digest(
        baton_artifacts::snoop::WASM,
    ));
    let err = Mesh::load(&manifest).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: agent `writer`: field `sha256`: component `writer.wasm` does not match its pin: expected sha256 {pin}, actual {actual}",
            manifest.display()
        )
    );
}
