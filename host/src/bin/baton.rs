//! The `baton` binary: all of it lives in [`baton::cli`].

fn main() -> std::process::ExitCode {
    baton::cli::main()
}
