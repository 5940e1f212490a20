//! What a component may import, decided before it is compiled or instantiated.
//!
//! The host reads the component's top-level imports straight from its binary and refuses
//! any import outside the policy, naming every offender. Only then is it compiled and
//! linked, and the linker offers nothing beyond what the policy admits, so an import that
//! slipped past this list would still fail to link rather than reach the host.

use std::fmt;

use serde::{Deserialize, Serialize};
use wasmparser::{
    BinaryReaderError, ComponentTypeRef, FuncValidatorAllocations, Parser, Payload, TypeBounds,
    ValidPayload, Validator, WasmFeatures,
};

/// The WASI interfaces a Rust `wasm32-wasip2` agent pulls in through `std`. Each is linked
/// inert: an empty environment, empty stdin, stdout and stderr captured into the agent's
/// log, a clock and a random source. None of them reaches a host resource.
pub const INERT_WASI: &[&str] = &[
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
];

/// What a language runtime (e.g. Python built with componentize-py) imports wholesale.
/// The `virtualized` policy links these too, with nothing behind them: no preopened
/// directory, and every socket, name lookup and address refused.
pub const VIRTUALIZED_WASI: &[&str] = &[
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:sockets/ip-name-lookup",
];

/// The `wasi:http` interfaces an agent with outbound rules may import: the host sends
/// every request itself, under the agent's rules (see [`crate::outbound`]).
pub const OUTBOUND_HTTP: &[&str] = &["wasi:http/outgoing-handler", "wasi:http/types"];

/// What an agent's manifest grants beyond its policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Granted {
    /// It has outbound rules, so it may import [`OUTBOUND_HTTP`].
    pub http: bool,
}

/// The WASI version family the host links (wasmtime 48 implements 0.2.x).
const WASI_VERSION_PREFIX: &str = "0.2.";

/// The baton contract; any interface of this package at this version is admitted.
const BATON_PACKAGE: &str = "baton:agent/";
const BATON_VERSION: &str = "0.1.0";

/// Which imports a component may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// `baton:agent/*` plus the inert WASI base listed in [`INERT_WASI`].
    #[default]
    Default,
    /// `baton:agent/*` only.
    Strict,
    /// The default set plus filesystem and sockets ([`VIRTUALIZED_WASI`]), linked so they
    /// reach nothing: for language runtimes that import the whole WASI set.
    Virtualized,
}

impl Policy {
    /// The policy's name as written in manifests and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Default => "default",
            Policy::Strict => "strict",
            Policy::Virtualized => "virtualized",
        }
    }

    /// Why `import` is refused under this policy, or `None` when it is admitted.
    pub fn refuse(self, import: &str) -> Option<String> {
        self.refuse_granted(import, Granted::default())
    }

    /// [`Policy::refuse`], for an agent whose manifest grants `granted` too.
    pub fn refuse_granted(self, import: &str, granted: Granted) -> Option<String> {
        let (path, version) = match import.split_once('@') {
            Some((p, v)) => (p, Some(v)),
            None => (import, None),
        };
        if granted.http
            && OUTBOUND_HTTP.contains(&path)
            && version.is_some_and(|v| v.starts_with(WASI_VERSION_PREFIX))
        {
            return None;
        }
        if path.starts_with(BATON_PACKAGE) {
            return match version {
                Some(BATON_VERSION) => None,
                _ => Some(format!(
                    "this host speaks baton:agent@{BATON_VERSION}, not {}",
                    version.unwrap_or("an unversioned contract")
                )),
            };
        }
        let virtualized = self == Policy::Virtualized && VIRTUALIZED_WASI.contains(&path);
        if !INERT_WASI.contains(&path) && !virtualized {
            return Some(match path.split_once('/') {
                Some((pkg @ ("wasi:filesystem" | "wasi:sockets"), _)) => format!(
                    "`{pkg}` reaches host resources; only the `virtualized` policy links it, with nothing behind it"
                ),
                Some((pkg, _)) if is_host_reaching(pkg) => {
                    format!("`{pkg}` reaches host resources; no baton policy links it")
                }
                Some(_) => "unknown interface; the host offers no such import".into(),
                None => "a bare function import; agents import interfaces only".into(),
            });
        }
        if self == Policy::Strict {
            return Some("the strict policy admits baton:agent only".into());
        }
        match version {
            Some(v) if v.starts_with(WASI_VERSION_PREFIX) => None,
            Some(v) => Some(format!(
                "WASI {v} is not linked; this host links WASI {WASI_VERSION_PREFIX}x"
            )),
            None => Some("unversioned WASI import".into()),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "default" => Ok(Policy::Default),
            "strict" => Ok(Policy::Strict),
            "virtualized" => Ok(Policy::Virtualized),
            other => Err(format!(
                "unknown policy `{other}`; expected `default`, `strict` or `virtualized`"
            )),
        }
    }
}

fn is_host_reaching(package: &str) -> bool {
    matches!(
        package,
        "wasi:filesystem" | "wasi:sockets" | "wasi:http" | "wasi:config" | "wasi:keyvalue"
    )
}

/// One import the policy refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The full import name, e.g. `wasi:filesystem/preopens@0.2.6`.
    pub import: String,
    /// Why it was refused.
    pub reason: String,
}

/// The verdict on a component: its imports and the ones refused.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The policy applied.
    pub policy: Policy,
    /// Every top-level import, in the component's order.
    pub imports: Vec<String>,
    /// The refused imports; empty when the component is admitted.
    pub refused: Vec<Refusal>,
}

impl Verdict {
    /// Whether the policy admits the component.
    pub fn admitted(&self) -> bool {
        self.refused.is_empty()
    }

    /// The refused import names, comma-separated, for error messages.
    pub fn refused_names(&self) -> String {
        self.refused
            .iter()
            .map(|r| r.import.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Why bytes are not a component the host can judge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    /// Not WebAssembly at all.
    #[error("not a WebAssembly file (no `\\0asm` header)")]
    NotWasm,
    /// A core module: agents must be components.
    #[error(
        "a core WebAssembly module, not a component; build for wasm32-wasip2 or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    /// A component that does not parse or validate (truncated, corrupt).
    #[error("an invalid component: {0}")]
    Invalid(String),
}

/// The top-level imports of a component, after validating it whole. Type imports bound
/// by equality (a world's `use` of a record) are aliases, grant nothing, and are left out;
/// every other import, including an abstract resource type, is listed and judged.
pub fn imports(bytes: &[u8]) -> Result<Vec<String>, Unreadable> {
    read_imports(bytes, true)
}

/// Validate a component whole, function bodies included.
pub fn validate(bytes: &[u8]) -> Result<(), Unreadable> {
    read_imports(bytes, true).map(drop)
}

/// The top-level imports of `bytes`, in one pass of the validator; function bodies, which
/// are nearly all of a large component's bytes and of its validation time, are validated
/// only when `code` is set.
fn read_imports(bytes: &[u8], code: bool) -> Result<Vec<String>, Unreadable> {
    if !Parser::is_component(bytes) {
        return Err(if Parser::is_core_wasm(bytes) {
            Unreadable::CoreModule
        } else {
            Unreadable::NotWasm
        });
    }
    let invalid = |e: BinaryReaderError| Unreadable::Invalid(e.to_string());
    let mut validator = Validator::new_with_features(WasmFeatures::default());
    let mut parser = Parser::new(0);
    parser.set_features(*validator.features());
    let mut bodies = Vec::new();
    let mut names = Vec::new();
    // Nested modules and components have imports of their own, satisfied inside the
    // component; only depth 0 faces the host.
    let mut depth = 0usize;
    for payload in parser.parse_all(bytes) {
        let payload = payload.map_err(invalid)?;
        if let ValidPayload::Func(func, body) = validator.payload(&payload).map_err(invalid)?
            && code
        {
            bodies.push((func, body));
        }
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    let import = import.map_err(invalid)?;
                    if !matches!(import.ty, ComponentTypeRef::Type(TypeBounds::Eq(_))) {
                        names.push(import.name.name.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    let mut allocs = FuncValidatorAllocations::default();
    for (func, body) in bodies {
        let mut validator = func.into_validator(allocs);
        validator.validate(&body).map_err(invalid)?;
        allocs = validator.into_allocations();
    }
    Ok(names)
}

/// Judge a component's bytes under `policy`.
pub fn check(bytes: &[u8], policy: Policy) -> Result<Verdict, Unreadable> {
    check_granted(bytes, policy, Granted::default())
}

/// Judge a component's bytes under `policy` plus what its manifest `granted`.
pub fn check_granted(
    bytes: &[u8],
    policy: Policy,
    granted: Granted,
) -> Result<Verdict, Unreadable> {
    Ok(judge(imports(bytes)?, policy, granted))
}

/// [`check_granted`], validating every part of the component but its function bodies.
/// The verdict is the same, since imports are never in function bodies; what it leaves
/// unproven is that the code is valid, so [`validate`] must pass before the component is
/// compiled. Loading uses it so that a component whose compiled form is already cached,
/// made from these exact bytes after they passed [`validate`], is not validated twice: on
/// the 11 MiB benchmark agent the bodies take about 90 ms, more than the rest of a
/// cached load.
pub fn check_structure(
    bytes: &[u8],
    policy: Policy,
    granted: Granted,
) -> Result<Verdict, Unreadable> {
    Ok(judge(read_imports(bytes, false)?, policy, granted))
}

fn judge(imports: Vec<String>, policy: Policy, granted: Granted) -> Verdict {
    let refused = imports
        .iter()
        .filter_map(|i| {
            policy.refuse_granted(i, granted).map(|reason| Refusal {
                import: i.clone(),
                reason,
            })
        })
        .collect();
    Verdict {
        policy,
        imports,
        refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_the_contract_and_inert_wasi_only() {
        let d = Policy::Default;
        assert_eq!(d.refuse("baton:agent/mesh@0.1.0"), None);
        assert_eq!(d.refuse("wasi:cli/environment@0.2.6"), None);
        assert!(d.refuse("baton:agent/mesh@0.2.0").is_some());
        assert!(
            d.refuse("wasi:filesystem/preopens@0.2.6")
                .unwrap()
                .contains("reaches host resources")
        );
        assert!(d.refuse("wasi:sockets/tcp@0.2.0").is_some());
        assert!(d.refuse("wasi:cli/environment@0.3.0").is_some());
        assert!(d.refuse("evil:backdoor/exfil").unwrap().contains("unknown"));
        assert!(
            Policy::Strict
                .refuse("wasi:cli/environment@0.2.6")
                .is_some()
        );
        assert_eq!(Policy::Strict.refuse("baton:agent/mesh@0.1.0"), None);
        let v = Policy::Virtualized;
        assert_eq!(v.refuse("wasi:filesystem/preopens@0.2.6"), None);
        assert_eq!(v.refuse("wasi:sockets/tcp@0.2.6"), None);
        assert!(v.refuse("wasi:http/outgoing-handler@0.2.6").is_some());
        assert!(v.refuse("evil:backdoor/exfil").is_some());
    }

    #[test]
    fn outbound_rules_admit_the_two_http_interfaces_only() {
        let http = Granted { http: true };
        let d = Policy::Default;
        assert!(d.refuse("wasi:http/outgoing-handler@0.2.4").is_some());
        assert_eq!(
            d.refuse_granted("wasi:http/outgoing-handler@0.2.4", http),
            None
        );
        assert_eq!(d.refuse_granted("wasi:http/types@0.2.12", http), None);
        assert!(
            d.refuse_granted("wasi:http/incoming-handler@0.2.4", http)
                .is_some()
        );
        assert!(d.refuse_granted("wasi:http/types@0.3.0", http).is_some());
        assert!(d.refuse_granted("wasi:sockets/tcp@0.2.4", http).is_some());
    }

    #[test]
    fn unreadable_inputs_are_named() {
        assert_eq!(imports(b"hello"), Err(Unreadable::NotWasm));
        assert_eq!(imports(b"\0asm\x01\0\0\0"), Err(Unreadable::CoreModule));
        let truncated = b"\0asm\x0d\0\x01\0\x01\x10";
        assert!(matches!(imports(truncated), Err(Unreadable::Invalid(_))));
    }

    #[test]
    fn only_the_structural_check_skips_function_bodies() {
        // A component holding a core module whose one function adds with nothing on the
        // stack: valid structure, invalid code.
        let module: &[u8] = &[
            0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // core module header
            0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type section: [] -> []
            0x03, 0x02, 0x01, 0x00, // function section: one function of type 0
            0x0a, 0x05, 0x01, 0x03, 0x00, 0x6a, 0x0b, // code: `i32.add` `end`
        ];
        let mut component = vec![0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
        component.extend([0x01, module.len() as u8]);
        component.extend(module);

        let bad_code = |r| matches!(r, Err(Unreadable::Invalid(m)) if m.contains("type mismatch"));
        assert!(bad_code(validate(&component)));
        assert!(bad_code(check(&component, Policy::Default).map(drop)));
        let v = check_structure(&component, Policy::Default, Granted::default()).unwrap();
        assert!(v.admitted() && v.imports.is_empty(), "{v:?}");
    }
}
