//! baton's integration tests: one module per guarantee, each driving real components
//! built from `plugins/` by `baton-artifacts`. One test binary, so wasmtime links once.

mod common;

mod handoff_targets;
mod isolation_imports;
mod isolation_keys;
mod manifest_errors;
mod pipeline;
mod restart;
