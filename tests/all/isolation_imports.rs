//! Guarantee: a component that imports anything outside its policy is refused at load
//! time, before it is compiled or run, with every offending import named in full, and
//! the refused load creates no state.

use baton::policy::{self, Policy};
use baton::{Host, LoadError};

use crate::common::{agent, mesh};

fn refuse(id: &str, wasm: &'static [u8], policy: Policy) -> (LoadError, bool) {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("state");
    let mut spec = agent(id, wasm);
    spec.policy = policy;
    let writer = agent("writer", baton_artifacts::writer::WASM);
    let err = Host::load(&mesh(vec![writer, spec]), &dir)
        .err()
        .expect("the load is refused");
    (err, dir.exists())
}

#[test]
fn filesystem_imports_are_refused_and_each_is_named() {
    let (err, state_created) = refuse("reader", baton_artifacts::fs_reader::WASM, Policy::Default);
    let LoadError::Refused { agent, verdict, .. } = &err else {
        panic!("expected a refusal, got {err}");
    };
    assert_eq!(agent, "reader");
    let refused: Vec<&str> = verdict.refused.iter().map(|r| r.import.as_str()).collect();
    assert_eq!(
        refused,
        [
            "wasi:filesystem/types@0.2.6",
            "wasi:filesystem/preopens@0.2.6"
        ]
    );
    let text = err.to_string();
    assert!(
        text.starts_with("test.toml: agent `reader`: component `reader.wasm` refused by policy `default`: it imports wasi:filesystem/types@0.2.6 ("),
        "{text}"
    );
    assert!(text.contains("wasi:filesystem/preopens@0.2.6 ("), "{text}");
    assert!(!state_created, "a refused mesh must not create state");
}

#[test]
fn an_unknown_interface_is_refused_by_name() {
    let (err, _) = refuse("backdoor", baton_artifacts::backdoor::WASM, Policy::Default);
    let text = err.to_string();
    assert!(
        text.contains(
            "it imports evil:backdoor/exfil (unknown interface; the host offers no such import)"
        ),
        "{text}"
    );
    // The backdoor's legitimate imports are not blamed.
    assert!(!text.contains("baton:agent/mesh"), "{text}");
}

#[test]
fn the_strict_policy_refuses_even_inert_wasi() {
    let (err, _) = refuse("writer2", baton_artifacts::writer::WASM, Policy::Strict);
    let LoadError::Refused { verdict, .. } = &err else {
        panic!("expected a refusal, got {err}");
    };
    assert!(
        verdict
            .refused
            .iter()
            .any(|r| r.import == "wasi:cli/environment@0.2.6")
    );
    assert!(
        verdict
            .refused
            .iter()
            .all(|r| !r.import.starts_with("baton:agent/"))
    );
}

#[test]
fn a_plain_wasi_command_is_refused_naming_its_filesystem_imports() {
    let v = policy::check(baton_artifacts::wasi_command::WASM, Policy::Default).unwrap();
    assert!(!v.admitted());
    assert!(
        v.refused
            .iter()
            .any(|r| r.import == "wasi:filesystem/preopens@0.2.6")
    );
}

#[test]
fn agents_built_with_the_sdk_are_admitted_by_the_default_policy() {
    for wasm in [
        baton_artifacts::researcher::WASM,
        baton_artifacts::writer::WASM,
        baton_artifacts::snoop::WASM,
        baton_artifacts::rogue::WASM,
    ] {
        let v = policy::check(wasm, Policy::Default).unwrap();
        assert!(v.admitted(), "{:?}", v.refused);
        assert!(v.imports.contains(&"baton:agent/mesh@0.1.0".to_string()));
    }
}

#[test]
fn unreadable_components_are_named_not_panicked_on() {
    let state = tempfile::tempdir().unwrap();
    let truncated: &'static [u8] = &baton_artifacts::writer::WASM[..4096];
    let core_module: &'static [u8] = b"\0asm\x01\0\0\0";
    for (wasm, expect) in [
        (truncated, "is an invalid component"),
        (core_module, "is a core WebAssembly module, not a component"),
        (&b"#!/bin/sh\n"[..], "is not a WebAssembly file"),
    ] {
        let err = Host::load(&mesh(vec![agent("broken", wasm)]), state.path())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("test.toml: agent `broken`: component `broken.wasm` ")
                && err.contains(expect),
            "{err}"
        );
    }
}
