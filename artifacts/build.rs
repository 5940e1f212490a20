//! Builds every agent in `plugins/` for `wasm32-wasip2` and writes `plugins.rs` into
//! `OUT_DIR`: one module per component with its `PATH` and its bytes (`WASM`), so the host
//! can embed the demo agents and the tests can load the hostile ones.
//!
//! The plugins are their own workspace, built with a nested cargo into `<target>/plugins`:
//! one target directory for the whole repo, but a different lock from the outer build.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

/// (module name, file the build produces). Every member of `plugins/Cargo.toml`.
const COMPONENTS: &[(&str, &str)] = &[
    ("researcher", "researcher.wasm"),
    ("writer", "writer.wasm"),
    ("snoop", "snoop.wasm"),
    ("rogue", "rogue.wasm"),
    ("fs_reader", "fs_reader.wasm"),
    ("backdoor", "backdoor.wasm"),
    ("wasi_command", "wasi-command.wasm"),
    ("echo", "echo.wasm"),
    ("pusher", "pusher.wasm"),
    ("dispatcher", "dispatcher.wasm"),
    ("summarizer", "summarizer.wasm"),
    ("streamer", "streamer.wasm"),
    ("reader", "reader.wasm"),
    ("triage", "triage.wasm"),
    ("router", "router.wasm"),
    ("caller", "caller.wasm"),
    ("fanout", "fanout.wasm"),
    ("sleeper", "sleeper.wasm"),
    ("bouncer", "bouncer.wasm"),
    ("crasher", "crasher.wasm"),
    ("spinner", "spinner.wasm"),
    ("hog", "hog.wasm"),
    ("deep", "deep.wasm"),
    ("flood", "flood.wasm"),
    ("bloat", "bloat.wasm"),
    ("env_probe", "env_probe.wasm"),
    ("escape_probe", "escape_probe.wasm"),
    ("fetcher", "fetcher.wasm"),
    ("napper", "napper.wasm"),
    ("heavy", "heavy.wasm"),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    let plugins = root.join("plugins");
    for watched in ["plugins", "guest-sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let target_dir = outer_target_dir(&out_dir).join("plugins");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());

    ensure_wasm_target();

    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&plugins)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    // The outer build's flags are for the host; they must not leak into the guest build.
    for (key, _) in env::vars() {
        if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_MAKEFLAGS"
            || key == "RUSTFLAGS"
            || key == "RUSTC_WORKSPACE_WRAPPER"
        {
            cmd.env_remove(&key);
        }
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run `{cargo}` to build plugins/: {e}"));
    assert!(status.success(), "building plugins/ for {TARGET} failed");

    let built = target_dir.join(TARGET).join("release");
    let mut code = String::new();
    for (module, file) in COMPONENTS {
        let path = built.join(file);
        assert!(
            path.exists(),
            "plugins/ built, but {} is missing",
            path.display()
        );
        let path = path.display().to_string();
        writeln!(
            code,
            "/// `{file}`, built from `plugins/`.\npub mod {module} {{\n    \
             /// Where the component was built.\n    pub const PATH: &str = {path:?};\n    \
             /// The component's bytes.\n    pub static WASM: &[u8] = include_bytes!({path:?});\n}}"
        )
        .unwrap();
    }
    std::fs::write(out_dir.join("plugins.rs"), code).unwrap();
}

/// `OUT_DIR` is `<target>/<profile>/build/<pkg>-<hash>/out` (with a triple before the
/// profile when cross-compiling); the target directory is the parent of that profile dir.
fn outer_target_dir(out_dir: &Path) -> PathBuf {
    let build = out_dir
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .expect("OUT_DIR lies under a `build` directory");
    build.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// `rust-toolchain.toml` names the target, but a toolchain installed before that file
/// existed lacks it; add it rather than fail with a missing-std error.
fn ensure_wasm_target() {
    let installed = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_some_and(|dir| dir.exists());
    if !installed {
        let _ = Command::new("rustup")
            .args(["target", "add", TARGET])
            .status();
    }
}
