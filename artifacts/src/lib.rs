//! The agents in `plugins/`, compiled for `wasm32-wasip2` by this crate's build script.
//!
//! Each component is a module with `PATH` (the built file) and `WASM` (its bytes, embedded
//! so the `baton` binary runs the demo with no other step).

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
