//! baton's integration tests: one module per guarantee, each driving real components
//! built from `plugins/` by `baton-artifacts`. One test binary, so wasmtime links once.

mod common;
mod http_fixture;

mod audit_fault;
mod audit_log;
mod compiled_cache;
#[cfg(unix)]
mod crash_sigkill;
mod cred_echo_redacted;
mod cred_guest_header;
mod cred_injection;
mod cycles;
mod fallback;
mod fan_out;
mod handoff_once;
mod handoff_targets;
mod idle_host;
mod isolation_imports;
mod isolation_keys;
mod lease_redelivery;
mod limits_cpu;
mod limits_handoffs;
mod limits_memory;
mod limits_payload;
mod limits_stack;
mod manifest_errors;
mod outbound_denied;
mod outbound_https;
mod outbound_private;
mod pattern_pull;
mod pattern_push;
mod pattern_stream;
mod pipeline;
mod redteam_env;
mod redteam_escape;
mod redteam_host_call;
mod redteam_namespace;
mod redteam_swap;
mod redteam_vault;
mod restart;
mod routing;
mod store_backend;
mod task_records;
mod vault_missing;
