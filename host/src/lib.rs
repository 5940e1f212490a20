//! baton runs AI agents as sandboxed WebAssembly components and moves work between them
//! through durable, audited handoffs.
//!
//! An agent can do three things to the world, all through the host: hand work off, claim
//! tasks from its inbox, and read the blackboard keys it was granted. It cannot see the
//! host's files, environment, sockets or secrets, because no import reaches them.
//!
//! # Layout
//!
//! - [`manifest`]: `mesh.toml`, strictly parsed; every error names file, agent and field.
//! - [`policy`]: which imports a component may have, checked before it is compiled.
//! - [`grants`]: which blackboard keys an agent may read.
//! - [`vault`]: the operator's secrets, by name; never shown, never handed to a guest.
//! - [`outbound`]: the HTTP an agent may send, the credentials the host attaches to it,
//!   and the redaction of secrets from responses.
//! - [`mesh`]: the host side of `baton:agent/mesh` (hand-off, check-inbox, read-blackboard).
//! - [`store`]: the state behind the `Backend` trait, and its redb implementation:
//!   blackboard with version history, inboxes, tasks, handoffs; group commit.
//! - [`runtime`]: the wasmtime engine and its instance pool, loading agents, activations
//!   and their limits.
//! - `meter` (private): the CPU meter of an activation, which charges epoch ticks only
//!   while the activation runs, not while it waits.
//! - [`compiled`]: the on-disk cache of compiled components, checked before it is trusted.
//! - [`report`]: the chain of a task, as JSON for machines and text for people.
//! - [`demo`]: the zero-config example meshes, one per pattern, embedded in the binary.
//! - [`mod@bench`]: `baton bench`, what isolation and durability cost.
//! - [`cli`]: the `baton` command line.

pub mod bench;
pub mod bindings;
pub mod cli;
pub mod compiled;
pub mod demo;
pub mod grants;
pub mod manifest;
pub mod mesh;
mod meter;
pub mod outbound;
pub mod policy;
pub mod report;
pub mod roster;
pub mod runtime;
pub mod store;
pub mod vault;

pub use manifest::{AgentSpec, Limits, ManifestError, Mesh};
pub use policy::{Policy, Verdict};
pub use report::Report;

pub use runtime::{Host, LoadError, SubmitError};
pub use store::{EntryRecord, Store, StoreError, TaskRecord};
pub use vault::{Vault, VaultError};
