//! The host side of `wit/agent.wit`: the one `bindgen!` of the host.
//!
//! Imports are async (a later pattern waits inside `read-blackboard`) and trappable, so a
//! host failure ends the activation instead of being dressed up as a guest error.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "baton:agent/agent",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use self::baton::agent::mesh;
