//! The on-disk cache of compiled components. It guards two things: a component is compiled
//! once per content and engine, not at every load; and the only machine code ever loaded
//! from disk is code this host wrote, intact, for exactly these component bytes and this
//! engine.
//!
//! Entries live in `<state>/compiled/`, one file per component and engine:
//! `<sha256 of the component>-<engine>.cwasm`, where `<engine>` abbreviates wasmtime's
//! compatibility hash of the engine (its version, target, and every setting that shapes
//! the code), so a wasmtime upgrade or another configuration never reuses an entry. A file
//! is a header (magic, the component's sha256, the engine's hash, the sha256 of the
//! compiled bytes) followed by the compiled bytes, as [`Component::serialize`] wrote them.
//!
//! Entries no longer used are removed after each load: an agent rebuilt is a new
//! component with a new entry, and the old one would otherwise stay for good. After a
//! load, the cache keeps the entries of this engine that the load used, and every entry
//! of other engines (another baton version or configuration may share the state
//! directory, as after a rollback); it removes this engine's other entries and any
//! temporary file a crash left mid-write. A mesh loaded in turn with another one in the
//! same state directory therefore compiles again after each switch.
//!
//! An entry is checked before its code is loaded, so a damaged file (bytes that no longer
//! match their digest) or a swapped one (an entry made for another component or engine,
//! or not made by this cache) is caught: the host warns, recompiles and overwrites it. The
//! cache never fails a load: an unreadable entry is a miss, and a directory that cannot be
//! written means compiling at every load, with one warning per load. The digests catch
//! accidents and misplaced files, not a forger: whoever can write the state directory can
//! rewrite the store too, so that directory is trusted like the host binary.

use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The cache directory inside the state directory. The state directory is already where
/// the operator keeps what the host writes for a mesh (the store, the agents' logs), so
/// the cache shares its owner, trust and lifetime: no directory shared with other users or
/// processes, and removing the state removes the cache.
pub const DIR: &str = "compiled";

/// First bytes of every entry: "baton compiled component", format 1.
const MAGIC: &[u8; 8] = b"batoncc\x01";
/// Magic, the component's sha256, the engine's hash, the code's sha256.
const HEADER: usize = MAGIC.len() + 32 * 3;

/// Compiled components of one engine, in one state directory.
pub struct Cache<'a> {
    engine: &'a Engine,
    dir: PathBuf,
    /// sha256 of wasmtime's compatibility hash of `engine`.
    engine_hash: [u8; 32],
    /// Compiled by this cache and not written yet, with their components' sha256.
    fresh: Vec<(Vec<u8>, Component)>,
    /// The sha256s of the components this load took from the cache or compiled.
    used: Vec<Vec<u8>>,
}

/// Feeds what a `Hash` impl writes into sha256: stable across processes and builds,
/// unlike `DefaultHasher`.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("sha256 is 32 bytes"))
    }
}

/// Compiled bytes whose entry passed every check in [`Cache::verify`]; nothing else
/// makes one.
struct Verified<'a>(&'a [u8]);

impl<'a> Cache<'a> {
    /// The cache of `engine` under the state directory `state`. Nothing is created until
    /// the first entry is written.
    pub fn new(engine: &'a Engine, state: &Path) -> Cache<'a> {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Cache {
            engine,
            dir: state.join(DIR),
            engine_hash: hasher.0.finalize().into(),
            fresh: Vec::new(),
            used: Vec::new(),
        }
    }

    /// Where the entry for the component whose sha256 is `digest` lives.
    pub fn path(&self, digest: &[u8]) -> PathBuf {
        self.dir
            .join(format!("{}{}", crate::manifest::hex(digest), self.suffix()))
    }

    /// How the names of this engine's entries end.
    fn suffix(&self) -> String {
        format!("-{}.cwasm", crate::manifest::hex(&self.engine_hash[..8]))
    }

    /// The component whose sha256 is `digest`, from its entry, if there is a sound one.
    /// A missing entry (or cache directory) is a quiet miss; any other failure is a
    /// warning and a miss.
    pub fn get(&mut self, digest: &[u8]) -> Option<Component> {
        self.used.push(digest.to_vec());
        use std::io::ErrorKind::{NotADirectory, NotFound};
        let path = self.path(digest);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if matches!(e.kind(), NotFound | NotADirectory) => return None,
            Err(e) => {
                tracing::warn!(
                    "compiled cache: cannot read `{}`: {e}; compiling instead",
                    path.display()
                );
                return None;
            }
        };
        let loaded = self
            .verify(digest, &bytes)
            .and_then(|code| deserialize(self.engine, code).map_err(|e| format!("{e:#}")));
        match loaded {
            Ok(component) => Some(component),
            Err(why) => {
                tracing::warn!(
                    "compiled cache: `{}` {why}; recompiling and overwriting it",
                    path.display()
                );
                None
            }
        }
    }

    /// Check that `bytes` is an entry this cache wrote for `digest` and this engine, and
    /// that its code is intact.
    fn verify<'b>(&self, digest: &[u8], bytes: &'b [u8]) -> Result<Verified<'b>, String> {
        if bytes.len() < HEADER || &bytes[..MAGIC.len()] != MAGIC {
            return Err("is not an entry of this cache".into());
        }
        let (header, code) = bytes.split_at(HEADER);
        let (component, rest) = header[MAGIC.len()..].split_at(32);
        let (engine, code_digest) = rest.split_at(32);
        if component != digest {
            return Err(format!(
                "holds the code of another component (sha256 {})",
                crate::manifest::hex(component)
            ));
        }
        if engine != self.engine_hash {
            return Err("was compiled by another engine".into());
        }
        if Sha256::digest(code)[..] != *code_digest {
            return Err("is damaged: its code does not match its sha256".into());
        }
        Ok(Verified(code))
    }

    /// Compile `wasm`, whose sha256 is `digest`. Its entry is written by
    /// [`Cache::persist`], once the whole mesh has loaded, so a refused or failed load
    /// leaves nothing behind.
    pub fn compile(&mut self, wasm: &[u8], digest: &[u8]) -> wasmtime::Result<Component> {
        let component = Component::new(self.engine, wasm)?;
        self.used.push(digest.to_vec());
        self.fresh.push((digest.to_vec(), component.clone()));
        Ok(component)
    }

    /// Write an entry for every component this cache compiled, then remove the entries
    /// the load did not use (see the module doc). A failure is one warning, never an
    /// error: the next load compiles again, or tries the removal again.
    pub fn persist(self) {
        for (digest, component) in &self.fresh {
            let written = component
                .serialize()
                .map_err(|e| format!("cannot serialize a component: {e:#}"))
                .and_then(|code| self.write(digest, &code).map_err(|e| e.to_string()));
            if let Err(e) = written {
                tracing::warn!(
                    "compiled cache: cannot write under `{}`: {e}; compiling at every load",
                    self.dir.display()
                );
                return;
            }
        }
        self.prune();
    }

    /// Remove this engine's entries that the load did not use, and temporary files left
    /// by a write a crash cut short.
    fn prune(&self) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let suffix = self.suffix();
        let used: Vec<String> = self.used.iter().map(|d| crate::manifest::hex(d)).collect();
        let mut removed = 0;
        for file in dir.flatten() {
            let name = file.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            let stale = name.starts_with(".tmp-")
                || name
                    .strip_suffix(&suffix)
                    .is_some_and(|digest| !used.iter().any(|u| u == digest));
            if !stale {
                continue;
            }
            match std::fs::remove_file(file.path()) {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(
                    "compiled cache: cannot remove `{}`, which no agent uses: {e}",
                    file.path().display()
                ),
            }
        }
        if removed > 0 {
            tracing::info!(
                "compiled cache: removed {removed} files under `{}` that no agent of this mesh uses",
                self.dir.display()
            );
        }
    }

    /// Write the entry for `digest` whole or not at all: into a temporary file in the
    /// cache directory, then renamed over the old entry. Not synced: an entry torn by a
    /// crash fails its digest at the next load and is rewritten, so a sync would only
    /// slow the first load down.
    fn write(&self, digest: &[u8], code: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut file = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.dir)?;
        file.write_all(MAGIC)?;
        file.write_all(digest)?;
        file.write_all(&self.engine_hash)?;
        file.write_all(&Sha256::digest(code))?;
        file.write_all(code)?;
        file.persist(self.path(digest)).map_err(|e| e.error)?;
        Ok(())
    }
}

/// Load compiled code from a checked entry.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, code: Verified<'_>) -> wasmtime::Result<Component> {
    // SAFETY: `Component::deserialize` turns its input into executable code, so the input
    // must be the unmodified output of `Component::serialize`. `Verified` bytes are: they
    // sit in the trusted state directory (see the module doc) in an entry recorded for
    // this component and this engine, and they hash to the sha256 that `Cache::write`
    // recorded beside `serialize`'s output. They are the very bytes that were hashed, in
    // memory, not a file that could change after the check. Wasmtime itself refuses code
    // from another version or configuration.
    unsafe { Component::deserialize(engine, code.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_configured_differently_use_different_entries() {
        let engine = |epochs: bool| {
            let mut config = wasmtime::Config::new();
            config.epoch_interruption(epochs);
            Engine::new(&config).unwrap()
        };
        let (a, b, a_again) = (engine(true), engine(false), engine(true));
        let state = Path::new("state");
        let digest = [7; 32];
        let path = |e: &Engine| Cache::new(e, state).path(&digest);
        assert_eq!(path(&a), path(&a_again));
        assert_ne!(path(&a), path(&b));
        let name = path(&a).file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.starts_with(&format!("{}-", "07".repeat(32))), "{name}");
        assert!(
            name.ends_with(".cwasm") && name.len() == 64 + 1 + 16 + 6,
            "{name}"
        );
    }
}
