//! The `baton` binary: all of it lives in [`baton::cli`], but for the choice of allocator.

/// jemalloc instead of the system's malloc. A handoff makes and frees hundreds of small
/// buffers across threads (records, rows, frames, futures); glibc's malloc spent over a
/// tenth of the host's CPU on them, and jemalloc's per-thread caches made a handoff a
/// tenth to a fifth cheaper (docs/performance.md). The library leaves the choice of
/// allocator to whoever links it, and builds jemalloc only with its `jemalloc` feature
/// (on by default, for this binary).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    baton::cli::main()
}
