//! The `baton` binary: all of it lives in [`baton::cli`].

// The store and the runtime allocate many short-lived buffers per handoff (redb pages,
// records, activation state); mimalloc's thread-local free lists serve them faster than
// the system allocator, with the host's threads contending less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    baton::cli::main()
}
