//! Who may read which blackboard key.
//!
//! An agent may read: keys matching its manifest `reads` globs, its own namespace
//! `output/<agent>/…`, and the exact keys that tasks delivered to it point at (the pointer
//! is the capability; the store records it at delivery). Everything else is denied.
//! Writes never come through here: the host writes only into the writer's own namespace.

use globset::{GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};

/// Longest key the host accepts, in bytes.
pub const MAX_KEY_LEN: usize = 512;

/// The namespace an agent writes into: `output/<agent>/`.
pub fn namespace(agent: &str) -> String {
    format!("output/{agent}/")
}

/// The key where `agent` stores the thing called `id` (a handoff's data, a task's outcome).
pub fn output_key(agent: &str, id: &str) -> String {
    format!("output/{agent}/{id}")
}

/// Compile one `reads` glob. `*` stays within one `/` segment; `**` crosses them.
pub fn compile_glob(glob: &str) -> Result<GlobMatcher, String> {
    build_glob(glob).map(|g| g.compile_matcher())
}

fn build_glob(glob: &str) -> Result<globset::Glob, String> {
    GlobBuilder::new(glob)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("`{glob}` is not a valid glob: {}", e.kind()))
}

/// Check that a key is well formed before it is looked up or granted.
pub fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!(
            "the key is {} bytes; at most {MAX_KEY_LEN}",
            key.len()
        ));
    }
    if key.chars().any(char::is_control) {
        return Err("the key contains a control character".into());
    }
    Ok(())
}

/// One agent's static read grants, compiled once at load.
#[derive(Debug, Clone)]
pub struct ReadGrants {
    own: String,
    globs: GlobSet,
}

impl ReadGrants {
    /// Grants for `agent` from its manifest `reads` globs.
    pub fn new(agent: &str, reads: &[String]) -> Result<Self, String> {
        let mut set = GlobSetBuilder::new();
        for glob in reads {
            set.add(build_glob(glob)?);
        }
        Ok(ReadGrants {
            own: namespace(agent),
            globs: set.build().map_err(|e| e.to_string())?,
        })
    }

    /// Whether the manifest or the agent's own namespace grants `key`. Delivered pointers
    /// are checked against the store separately.
    pub fn allows(&self, key: &str) -> bool {
        key.starts_with(&self.own) || self.globs.is_match(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_and_globs_only() {
        let g = ReadGrants::new("writer", &["shared/*".into(), "docs/**".into()]).unwrap();
        assert!(g.allows("output/writer/t-1"));
        assert!(
            !g.allows("output/writer-2/t-1"),
            "a prefix is not a namespace"
        );
        assert!(!g.allows("output/researcher/h-1"));
        assert!(g.allows("shared/facts"));
        assert!(!g.allows("shared/deep/facts"), "`*` stays within a segment");
        assert!(g.allows("docs/a/b/c"));
    }

    #[test]
    fn bad_globs_and_keys_are_named() {
        assert!(compile_glob("a/[").unwrap_err().contains("`a/[`"));
        assert!(validate_key("").is_err());
        assert!(validate_key("a\nb").is_err());
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN + 1)).is_err());
    }
}
