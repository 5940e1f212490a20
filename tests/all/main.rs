//! baton's integration tests: one module per guarantee, each driving real components
//! built from `plugins/` by `baton-artifacts`. One test binary, so wasmtime links once.

mod common;

mod handoff_targets;
mod isolation_imports;
mod isolation_keys;
mod limits_cpu;
mod limits_handoffs;
mod limits_memory;
mod limits_payload;
mod limits_stack;
mod manifest_errors;
mod pipeline;
mod restart;
