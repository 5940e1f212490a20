//! The vault: secrets the operator controls, kept outside the mesh folder.
//!
//! A vault file is TOML, one `name = "value"` per secret; an environment variable
//! `BATON_SECRET_<NAME>` (the name uppercased, `-` as `_`) supplies or overrides one.
//! Manifests name secrets only (`{secret:name}` in an outbound rule's headers); the host
//! substitutes the value into a request after the guest built it, and redacts every value
//! from responses before the guest sees them.
//!
//! A value never leaves this module except to be written into an outbound request or
//! matched in a response: `Debug` prints names only, and no error carries a value (a
//! vault file that is not valid TOML is reported by line and column alone, because the
//! parser's own message may quote the offending text).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// The prefix of environment variables that supply secrets.
pub const ENV_PREFIX: &str = "BATON_SECRET_";

/// A secret's value. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the host to write into a request or match in a response.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why a vault could not be read. No variant carries a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    /// The file could not be read.
    #[error("{file}: cannot read the vault: {reason}")]
    Unreadable {
        /// The vault file.
        file: String,
        /// Why.
        reason: String,
    },
    /// The file is not TOML.
    #[error("{file}: the vault is not valid TOML (at {at}); expected `name = \"value\"` lines")]
    NotToml {
        /// The vault file.
        file: String,
        /// Line and column.
        at: String,
    },
    /// An entry is not a secret.
    #[error("{file}: secret `{name}`: {problem}")]
    Entry {
        /// The vault file.
        file: String,
        /// The secret's name.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// Secrets by name. Empty unless loaded from a file or the environment.
#[derive(Clone, Default)]
pub struct Vault {
    file: BTreeMap<String, Secret>,
    /// `BATON_SECRET_*` variables, by variable name, captured when asked for.
    env: BTreeMap<String, Secret>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("file", &self.file.keys().collect::<Vec<_>>())
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Vault {
    /// A vault with no secrets.
    pub fn empty() -> Vault {
        Vault::default()
    }

    /// Read a vault file.
    pub fn load(path: &Path) -> Result<Vault, VaultError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| VaultError::Unreadable {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        Vault::parse(&file, &text)
    }

    /// Parse vault `text`, labelled `file` in errors.
    pub fn parse(file: &str, text: &str) -> Result<Vault, VaultError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| VaultError::NotToml {
            file: file.to_string(),
            at: e.span().map_or_else(
                || "an unknown place".to_string(),
                |s| line_col(text, s.start),
            ),
        })?;
        let mut vault = Vault::empty();
        for (name, value) in table {
            let entry = |problem: &str| VaultError::Entry {
                file: file.to_string(),
                name: name.clone(),
                problem: problem.to_string(),
            };
            validate_name(&name).map_err(|m| entry(&m))?;
            let toml::Value::String(value) = value else {
                return Err(entry("must be a string (`name = \"value\"`)"));
            };
            check_value(&value).map_err(entry)?;
            vault.file.insert(name, Secret(value));
        }
        Ok(vault)
    }

    /// Add or replace a secret.
    pub fn with(mut self, name: &str, value: &str) -> Vault {
        self.file
            .insert(name.to_string(), Secret(value.to_string()));
        self
    }

    /// Also take secrets from this process's `BATON_SECRET_*` environment variables,
    /// which override the file's.
    pub fn with_env(self) -> Vault {
        self.with_vars(std::env::vars())
    }

    /// Also take secrets from `BATON_SECRET_*` among `vars` (name, value pairs). Empty
    /// values are ignored: they would match everywhere when redacting.
    pub fn with_vars(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Vault {
        for (var, value) in vars {
            if var.starts_with(ENV_PREFIX) && check_value(&value).is_ok() {
                self.env.insert(var, Secret(value));
            }
        }
        self
    }

    /// The secret called `name`: its environment variable first, then the file.
    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.env.get(&env_var(name)).or_else(|| self.file.get(name))
    }

    /// Every value the vault holds, for redaction: a server may echo any of them.
    pub fn values(&self) -> impl Iterator<Item = &Secret> {
        self.file.values().chain(self.env.values())
    }

    /// Whether it holds no secret at all.
    pub fn is_empty(&self) -> bool {
        self.file.is_empty() && self.env.is_empty()
    }
}

/// The environment variable that supplies secret `name`.
pub fn env_var(name: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

/// A secret name: 1 to 64 of `A-Z a-z 0-9 - _`.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid secret name: use 1 to 64 of A-Z, a-z, 0-9, `-` and `_`"
        ))
    }
}

/// A value the host can put in a header and find again in a response.
fn check_value(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("is empty; an empty secret would match everywhere when redacting");
    }
    if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
        return Err("contains a control character, which no HTTP header may carry");
    }
    Ok(())
}

fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("line {line}, column {column}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUE: &str = "sk-live-0123456789";

    #[test]
    fn reads_names_and_values_and_debug_hides_values() {
        let v = Vault::parse("vault.toml", &format!("example = \"{VALUE}\"\n")).unwrap();
        assert_eq!(v.get("example").unwrap().expose(), VALUE);
        assert_eq!(v.get("other"), None);
        let shown = format!("{v:?} {:?}", v.get("example").unwrap());
        assert!(shown.contains("example"), "{shown}");
        assert!(!shown.contains(VALUE), "{shown}");
    }

    #[test]
    fn the_environment_supplies_and_overrides_secrets() {
        let v = Vault::empty().with("api-key", "from-file").with_vars([
            ("BATON_SECRET_API_KEY".to_string(), "from-env".to_string()),
            ("BATON_SECRET_OTHER".to_string(), "other".to_string()),
            ("BATON_SECRET_EMPTY".to_string(), String::new()),
            ("HOME".to_string(), "/root".to_string()),
        ]);
        assert_eq!(v.get("api-key").unwrap().expose(), "from-env");
        assert_eq!(v.get("other").unwrap().expose(), "other");
        assert_eq!(v.get("empty"), None);
        assert_eq!(v.get("home"), None);
        assert_eq!(v.values().count(), 3);
    }

    #[test]
    fn errors_name_the_secret_never_its_value() {
        for (text, expect) in [
            (
                format!("ok = \"{VALUE}\"\nbad = 5\n"),
                "vault.toml: secret `bad`: must be a string",
            ),
            (
                "empty = \"\"\n".to_string(),
                "vault.toml: secret `empty`: is empty",
            ),
            (
                format!("[table]\nx = \"{VALUE}\"\n"),
                "vault.toml: secret `table`: must be a string",
            ),
            (
                format!("broken = \"{VALUE}\n"),
                "vault.toml: the vault is not valid TOML (at line 1",
            ),
            (
                format!("\"bad name\" = \"{VALUE}\"\n"),
                "vault.toml: secret `bad name`: `bad name` is not a valid secret name",
            ),
        ] {
            let err = Vault::parse("vault.toml", &text).unwrap_err().to_string();
            assert!(err.starts_with(expect), "{err}");
            assert!(!err.contains(VALUE), "{err}");
            assert!(!err.contains("sk-live"), "{err}");
        }
    }
}
