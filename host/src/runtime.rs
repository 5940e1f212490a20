//! Loading agents and running activations.
//!
//! One wasmtime `Engine` per host, with async support and epoch interruption. Loading an
//! agent checks its imports against its policy *before* compiling it, then pre-links it
//! once (`InstancePre`). Each activation gets a fresh `Store` with the agent's memory limit
//! and an epoch deadline for its CPU time, so a hostile or broken agent ends its own
//! activation and nothing else.
//!
//! Deny by default: the linker for the `default` policy offers `baton:agent/mesh` and the
//! inert WASI base (empty environment and stdin, stdout and stderr captured into the
//! agent's log, clocks, random); the `strict` linker offers `mesh` alone; the `virtualized`
//! linker adds filesystem and sockets over a context with no preopened directory and no
//! network, so they link but reach nothing. An agent whose manifest has outbound rules
//! gets its policy's linker plus `wasi:http`, whose every request the host sends itself
//! under those rules (see [`crate::outbound`]); no other agent is linked to HTTP.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store as WasmStore, Trap, WasmBacktrace};
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::{Agent, AgentPre};
use crate::manifest::{CAPABILITY, ManifestError, Mesh, OPERATOR};
use crate::mesh::{AgentPolicy, MeshCtx, MeshView, Shared, task_to_wit};
use crate::meter::{Meter, Ticker};
use crate::outbound::{AgentOutbound, Outbound, OutboundLog, Redactor};
use crate::policy::{self, Granted, Policy, Verdict};
use crate::roster::{Claims, Roster, Slots};
use crate::store::{
    Backend, Claimant, CommitPolicy, Committed, FailureKind, Fallback, Kind, NewHandoff, Param,
    Pattern, ReadAudits, Refusal, Status, Store, StoreError, TaskRecord, WriteFuture, now_ms,
};
use crate::vault::Vault;

/// Most bytes of stdout and of stderr kept per activation.
const LOG_CAPACITY: usize = 64 * 1024;
/// Deadline of reply tasks, in milliseconds.
const REPLY_DEADLINE_MS: u64 = 30_000;
/// Activations run at once unless told otherwise.
pub const DEFAULT_WORKERS: usize = 4;

/// A linear memory tried to grow past the agent's limit.
#[derive(Debug)]
struct MemoryLimit {
    desired: usize,
    mib: u64,
}

impl std::fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "memory limit: tried to grow linear memory to {} bytes, past {} MiB (limits.memory_mib)",
            self.desired, self.mib
        )
    }
}

impl std::error::Error for MemoryLimit {}

/// Most table elements an activation may have; tables hold function references only.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Caps an activation's memory at `limits.memory_mib`. Growing past it ends the
/// activation with a [`MemoryLimit`] that names the limit, rather than handing the guest
/// a failed allocation it may not survive readably.
struct Limiter {
    max_memory: usize,
    mib: u64,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            return Err(wasmtime::Error::new(MemoryLimit {
                desired,
                mib: self.mib,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Why a mesh could not be loaded. Nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The manifest is wrong.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A component imports something its policy refuses.
    #[error(
        "{file}: agent `{agent}`: component `{component}` refused by policy `{}`: it imports {}",
        verdict.policy,
        refusals(verdict)
    )]
    Refused {
        /// The manifest.
        file: String,
        /// The agent.
        agent: String,
        /// The component file.
        component: String,
        /// Every import and every refusal.
        verdict: Box<Verdict>,
    },
    /// A component is not a readable component.
    #[error("{file}: agent `{agent}`: component `{component}` is {reason}")]
    Unreadable {
        /// The manifest.
        file: String,
        /// The agent.
        agent: String,
        /// The component file.
        component: String,
        /// Why.
        reason: policy::Unreadable,
    },
    /// Compiling or linking failed.
    #[error("{file}: agent `{agent}`: component `{component}` cannot be loaded: {message}")]
    Link {
        /// The manifest.
        file: String,
        /// The agent.
        agent: String,
        /// The component file.
        component: String,
        /// What wasmtime said.
        message: String,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine could not be configured.
    #[error("engine: {0}")]
    Engine(String),
}

fn refusals(v: &Verdict) -> String {
    v.refused
        .iter()
        .map(|r| format!("{} ({})", r.import, r.reason))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why work could not be submitted. Nothing was recorded.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// No such agent.
    #[error("{file}: no agent `{agent}` in this mesh; agents: {known}")]
    UnknownAgent {
        /// The manifest.
        file: String,
        /// The agent asked for.
        agent: String,
        /// The agents there are.
        known: String,
    },
    /// The data is larger than the agent accepts.
    #[error("--data is {size} bytes; agent `{agent}` accepts at most {max} (limits.payload_kib)")]
    TooLarge {
        /// The agent.
        agent: String,
        /// The data's size.
        size: usize,
        /// The limit.
        max: u64,
    },
    /// The agent's inbox is full.
    #[error("{0}")]
    Full(String),
    /// A push payload does not fit the callee's input schema.
    #[error("--data: {0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The WASI context of one activation, made on the guest's first WASI call. Many tasks
/// never make one (an agent that only talks to the mesh and prints nothing), and making
/// it (seeding its random generators, boxing its streams) costs about 0.7 µs, a twentieth
/// of a trivial activation. What it grants is the same whenever it is made.
struct LazyWasi {
    ctx: Option<WasiCtx>,
    /// Where the guest's stdout and stderr go, for the agent's log.
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
}

impl LazyWasi {
    fn new(stdout: MemoryOutputPipe, stderr: MemoryOutputPipe) -> LazyWasi {
        LazyWasi {
            ctx: None,
            stdout,
            stderr,
        }
    }

    fn get(&mut self) -> &mut WasiCtx {
        // Deny by default: no environment, no arguments, no preopened directory; sockets
        // are refused by address and by kind, should a `virtualized` agent try one.
        self.ctx.get_or_insert_with(|| {
            WasiCtxBuilder::new()
                .stdin(MemoryInputPipe::new(Vec::<u8>::new()))
                .stdout(self.stdout.clone())
                .stderr(self.stderr.clone())
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .build()
        })
    }
}

/// The state of one activation's `Store`.
pub struct Activation {
    mesh: MeshCtx,
    wasi: LazyWasi,
    table: ResourceTable,
    limits: Limiter,
    /// `wasi:http` state; linked only for agents with outbound rules.
    http: wasmtime_wasi_http::WasiHttpCtx,
    /// Sends the agent's requests under its rules.
    outbound: Outbound,
}

impl wasmtime_wasi_http::WasiHttpView for Activation {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

impl WasiView for Activation {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: self.wasi.get(),
            table: &mut self.table,
        }
    }
}

impl wasmtime_wasi_io::IoView for Activation {
    fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

struct Loaded {
    pre: AgentPre<Activation>,
    policy: Arc<AgentPolicy>,
    outbound: Arc<AgentOutbound>,
}

/// A loaded mesh, ready to run tasks against its store. Cheap to clone: clones share
/// the engine, the agents and the store.
#[derive(Clone)]
pub struct Host {
    inner: Arc<Inner>,
    workers: usize,
    /// Whether activations run their agent. Only the benchmark's control run turns it
    /// off (see [`Host::without_sandbox`]).
    sandbox: bool,
}

struct Inner {
    engine: Engine,
    file: String,
    shared: Arc<Shared>,
    agents: HashMap<String, Loaded>,
    roster: Arc<Roster>,
    log_dir: PathBuf,
    recovered: usize,
    ticker: Ticker,
}

/// Most activations a host runs at once: the size of the instance pool. `--workers`
/// above it is lowered to it.
pub const MAX_WORKERS: usize = 256;

/// Bytes of each pooled memory kept mapped between activations (see [`engine`]).
const KEEP_RESIDENT: usize = 2 * 1024 * 1024;

/// The engine configuration every host uses.
///
/// Instances come from a pooling allocator: memories, tables and async stacks are
/// reserved once for [`MAX_WORKERS`] activations and reused, so an activation costs no
/// `mmap` and no page-table setup, only resetting the slot it had before (the pool keeps a
/// slot affine to the module that last used it). Each memory slot reserves 4 GiB of
/// address space (no physical memory), so compiled code needs no bounds checks; the
/// per-agent cap is the [`Limiter`], which runs before the pool's own ceiling.
fn engine() -> Result<Engine, LoadError> {
    let slots = MAX_WORKERS as u32;
    let mut pool = wasmtime::PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        // A component built by `wit-component` has a few core instances (the module and
        // its shims), one or two memories and a few tables.
        .total_core_instances(slots * 8)
        .total_memories(slots * 2)
        .total_tables(slots * 4)
        .total_stacks(slots)
        .max_core_instances_per_component(16)
        .max_memories_per_component(4)
        .max_tables_per_component(8)
        .table_elements(MAX_TABLE_ELEMENTS)
        // A freed slot is reset by rewriting only the pages the activation dirtied (found
        // with the PAGEMAP_SCAN ioctl where the kernel has it, Linux 6.7+), up to this
        // much, instead of unmapping them: the next activation takes no page faults.
        .pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT / 16);
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.max_wasm_stack(512 * 1024);
    config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).map_err(|e| LoadError::Engine(e.to_string()))
}

fn linker(engine: &Engine, policy: Policy) -> wasmtime::Result<Linker<Activation>> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView as _};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView as _};
    use wasmtime_wasi::p2::bindings::{cli, clocks, random};
    use wasmtime_wasi::random::WasiRandom;

    let mut l = Linker::new(engine);
    crate::mesh::add_to_linker(&mut l, |a: &mut Activation| MeshView::new(&mut a.mesh))?;
    match policy {
        Policy::Strict => return Ok(l),
        // Every WASI p2 interface, over a context with no preopens and no network.
        Policy::Virtualized => {
            wasmtime_wasi::p2::add_to_linker_async(&mut l)?;
            return Ok(l);
        }
        Policy::Default => {}
    }
    // The inert WASI base, interface by interface: `policy::INERT_WASI` and no more.
    wasmtime_wasi_io::add_to_linker_async(&mut l)?;
    clocks::wall_clock::add_to_linker::<_, WasiClocks>(&mut l, Activation::clocks)?;
    clocks::monotonic_clock::add_to_linker::<_, WasiClocks>(&mut l, Activation::clocks)?;
    random::random::add_to_linker::<_, WasiRandom>(&mut l, |a| a.wasi.get().random())?;
    random::insecure::add_to_linker::<_, WasiRandom>(&mut l, |a| a.wasi.get().random())?;
    random::insecure_seed::add_to_linker::<_, WasiRandom>(&mut l, |a| a.wasi.get().random())?;
    cli::exit::add_to_linker::<_, WasiCli>(&mut l, Activation::cli)?;
    cli::environment::add_to_linker::<_, WasiCli>(&mut l, Activation::cli)?;
    cli::stdin::add_to_linker::<_, WasiCli>(&mut l, Activation::cli)?;
    cli::stdout::add_to_linker::<_, WasiCli>(&mut l, Activation::cli)?;
    cli::stderr::add_to_linker::<_, WasiCli>(&mut l, Activation::cli)?;
    cli::terminal_input::add_to_linker::<_, WasiCli>(&mut l, Activation::cli)?;
    cli::terminal_output::add_to_linker::<_, WasiCli>(&mut l, Activation::cli)?;
    cli::terminal_stdin::add_to_linker::<_, WasiCli>(&mut l, Activation::cli)?;
    cli::terminal_stdout::add_to_linker::<_, WasiCli>(&mut l, Activation::cli)?;
    cli::terminal_stderr::add_to_linker::<_, WasiCli>(&mut l, Activation::cli)?;
    Ok(l)
}

/// The linker of an agent with outbound rules: its policy's, plus `wasi:http`.
fn http_linker(engine: &Engine, policy: Policy) -> wasmtime::Result<Linker<Activation>> {
    let mut l = linker(engine, policy)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut l)?;
    Ok(l)
}

impl Host {
    /// Check, compile and pre-link every agent of `mesh`, and open the store in `state`.
    /// The vault is empty: a mesh whose rules name a secret needs [`Host::load_with`].
    pub fn load(mesh: &Mesh, state: &Path) -> Result<Host, LoadError> {
        Host::load_with(mesh, state, &Vault::empty())
    }

    /// [`Host::load`], with the operator's secrets: every secret the outbound rules name
    /// must be in `vault`, or nothing loads.
    pub fn load_with(mesh: &Mesh, state: &Path, vault: &Vault) -> Result<Host, LoadError> {
        Host::load_on(mesh, state, vault, || {
            Ok(Arc::new(Store::open(state)?) as Arc<dyn Backend>)
        })
    }

    /// [`Host::load_with`], keeping state in the [`Backend`] that `open` returns instead
    /// of the redb store in `state` (which still holds agent logs and compiled
    /// components). `open` runs only once every agent has loaded, so a mesh that does not
    /// load touches no backend.
    pub fn load_on(
        mesh: &Mesh,
        state: &Path,
        vault: &Vault,
        open: impl FnOnce() -> Result<Arc<dyn Backend>, StoreError>,
    ) -> Result<Host, LoadError> {
        let engine = engine()?;
        let link_err = |agent: &str, component: &str, e: wasmtime::Error| LoadError::Link {
            file: mesh.file.clone(),
            agent: agent.to_string(),
            component: component.to_string(),
            message: format!("{e:#}"),
        };
        let linkers: HashMap<Policy, Linker<Activation>> =
            [Policy::Default, Policy::Strict, Policy::Virtualized]
                .into_iter()
                .map(|p| linker(&engine, p).map(|l| (p, l)))
                .collect::<wasmtime::Result<_>>()
                .map_err(|e| LoadError::Engine(format!("{e:#}")))?;

        let mut http_linkers: HashMap<Policy, Linker<Activation>> = HashMap::new();
        let redactor = Arc::new(Redactor::new(vault));
        let tls = crate::outbound::tls_config(&mesh.ca_certs);

        let mut agents = HashMap::new();
        let mut policies = HashMap::new();
        // Agents often share a component (a pool of workers); compile each one once, and
        // only if its compiled form is not on disk already.
        let mut compiled: HashMap<Vec<u8>, Component> = HashMap::new();
        let mut disk = crate::compiled::Cache::new(&engine, state);
        for spec in &mesh.agents {
            let outbound = AgentOutbound::new(
                &spec.id,
                &spec.outbound,
                vault,
                redactor.clone(),
                tls.clone(),
            )
            .map_err(|(i, (field, message))| ManifestError {
                file: mesh.file.clone(),
                agent: Some(spec.id.clone()),
                field: Some(format!("outbound[{i}].{field}")),
                message,
            })?;
            let granted = Granted {
                http: !spec.outbound.is_empty(),
            };
            let unreadable = |reason| LoadError::Unreadable {
                file: mesh.file.clone(),
                agent: spec.id.clone(),
                component: spec.component.clone(),
                reason,
            };
            // The function bodies are validated below, before compiling, unless the
            // compiled form is cached: made from these very bytes after they passed.
            let verdict =
                policy::check_structure(&spec.wasm, spec.policy, granted).map_err(unreadable)?;
            if !verdict.admitted() {
                return Err(LoadError::Refused {
                    file: mesh.file.clone(),
                    agent: spec.id.clone(),
                    component: spec.component.clone(),
                    verdict: Box::new(verdict),
                });
            }
            let digest = <sha2::Sha256 as sha2::Digest>::digest(&*spec.wasm).to_vec();
            let component = match compiled.get(&digest) {
                Some(c) => c.clone(),
                None => {
                    let c = match disk.get(&digest) {
                        Some(c) => c,
                        None => {
                            policy::validate(&spec.wasm).map_err(unreadable)?;
                            disk.compile(&spec.wasm, &digest)
                                .map_err(|e| link_err(&spec.id, &spec.component, e))?
                        }
                    };
                    compiled.insert(digest, c.clone());
                    c
                }
            };
            let linker = if granted.http {
                match http_linkers.entry(spec.policy) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => e.insert(
                        http_linker(&engine, spec.policy)
                            .map_err(|e| LoadError::Engine(format!("{e:#}")))?,
                    ),
                }
            } else {
                &linkers[&spec.policy]
            };
            let pre = linker
                .instantiate_pre(&component)
                .and_then(AgentPre::new)
                .map_err(|e| link_err(&spec.id, &spec.component, e))?;
            let policy = Arc::new(AgentPolicy::new(spec).map_err(|message| ManifestError {
                file: mesh.file.clone(),
                agent: Some(spec.id.clone()),
                field: Some("reads".into()),
                message,
            })?);
            policies.insert(spec.id.clone(), policy.clone());
            agents.insert(
                spec.id.clone(),
                Loaded {
                    pre,
                    policy,
                    outbound: Arc::new(outbound),
                },
            );
        }

        let store = open()?;
        // Tasks a previous host claimed but never finished are redelivered.
        let recovered = store.recover()?;
        store.set_commit_policy(CommitPolicy::Group);
        // Only a load that succeeded leaves compiled components behind.
        disk.persist();
        Ok(Host {
            inner: Arc::new(Inner {
                ticker: Ticker::start(engine.clone()),
                engine,
                file: mesh.file.clone(),
                roster: Arc::new(Roster::new(
                    policies
                        .values()
                        .map(|p| (p.id.as_str(), p.limits.concurrency, &p.capabilities[..])),
                )),
                shared: Arc::new(Shared::new(mesh, store, policies)),
                agents,
                log_dir: state.join("logs"),
                recovered,
            }),
            workers: DEFAULT_WORKERS,
            sandbox: true,
        })
    }

    /// Run at most `n` activations at once (at least 1, at most [`MAX_WORKERS`]).
    pub fn with_workers(mut self, n: usize) -> Self {
        self.workers = n.clamp(1, MAX_WORKERS);
        self
    }

    /// The benchmark's control: a host whose activations run no agent and instantiate
    /// nothing, but complete each task with its own payload, through the same claims,
    /// commits and fsyncs as a real activation. What it measures is the durable path
    /// around the sandbox, alone. Not reachable from the CLI or from a mesh file.
    pub(crate) fn without_sandbox(mut self) -> Self {
        self.sandbox = false;
        self
    }

    /// Commit acknowledged writes under `policy`. A loaded host uses
    /// [`CommitPolicy::Group`]: as durable as `Immediate`, with fewer fsyncs under load.
    pub fn with_commit_policy(self, policy: CommitPolicy) -> Self {
        self.inner.shared.store.set_commit_policy(policy);
        self
    }

    /// The store this host writes to.
    pub fn store(&self) -> &dyn Backend {
        &*self.inner.shared.store
    }

    /// How many unfinished tasks of a previous host this one redelivered at load.
    pub fn recovered(&self) -> usize {
        self.inner.recovered
    }

    /// Submit work from outside the mesh: the operator hands `data` to `to` through the
    /// blackboard. Returns the new chain's first task.
    pub fn submit(
        &self,
        to: &str,
        summary: &str,
        data: Option<Vec<u8>>,
        params: Vec<Param>,
    ) -> Result<Committed, SubmitError> {
        self.submit_with(to, summary, data, params, Pattern::Blackboard)
    }

    /// Submit work with a chosen pattern: `blackboard` or `push` to an agent, or `pull` to
    /// `capability:<name>` (any target with that prefix is dispatched by pull). Blocks
    /// until the handoff is on disk; async callers use [`Host::submit_async`].
    pub fn submit_with(
        &self,
        to: &str,
        summary: &str,
        data: Option<Vec<u8>>,
        params: Vec<Param>,
        pattern: Pattern,
    ) -> Result<Committed, SubmitError> {
        let queued = self.record_submission(to, summary, data, params, pattern)?;
        let committed = self.submitted(pollster::block_on(queued))?;
        // The operator gets the task id only once the handoff is on disk.
        self.inner.shared.store.durable_blocking()?;
        Ok(committed)
    }

    /// [`Host::submit_with`], waiting for the disk without blocking the thread.
    pub async fn submit_async(
        &self,
        to: &str,
        summary: &str,
        data: Option<Vec<u8>>,
        params: Vec<Param>,
        pattern: Pattern,
    ) -> Result<Committed, SubmitError> {
        let queued = self.record_submission(to, summary, data, params, pattern)?;
        let committed = self.submitted(queued.await)?;
        self.inner.shared.store.durable().await?;
        Ok(committed)
    }

    /// Check an operator's handoff and queue its commit; the caller waits for the commit,
    /// hands its result to [`Host::submitted`], then waits for the disk.
    fn record_submission(
        &self,
        to: &str,
        summary: &str,
        data: Option<Vec<u8>>,
        params: Vec<Param>,
        pattern: Pattern,
    ) -> Result<WriteFuture<Result<Committed, Refusal>>, SubmitError> {
        let inner = &self.inner;
        let shared = &inner.shared;
        let unknown = || {
            let mut known: Vec<&str> = inner.agents.keys().map(String::as_str).collect();
            known.sort_unstable();
            SubmitError::UnknownAgent {
                file: inner.file.clone(),
                agent: to.to_string(),
                known: known.join(", "),
            }
        };
        let (callee, pattern, inbox_depth) = match to.strip_prefix(CAPABILITY) {
            Some(cap) => {
                let first = *shared.workers(cap).first().ok_or_else(unknown)?;
                (
                    &inner.agents[first].policy,
                    Pattern::Pull,
                    shared.queue_depth,
                )
            }
            None => {
                let callee = &inner.agents.get(to).ok_or_else(unknown)?.policy;
                (callee, pattern, callee.limits.inbox_depth)
            }
        };
        if pattern == Pattern::Stream {
            return Err(SubmitError::Invalid(
                "the operator cannot open a stream; hand the data to an agent that streams it"
                    .into(),
            ));
        }
        let limits = &callee.limits;
        let max = limits.payload_kib * 1024;
        if let Some(d) = &data
            && d.len() as u64 > max
        {
            return Err(SubmitError::TooLarge {
                agent: to.to_string(),
                size: d.len(),
                max,
            });
        }
        let data = match pattern {
            Pattern::Push => Some(
                crate::mesh::push_payload(data, callee)
                    .map_err(|e| SubmitError::Invalid(crate::mesh::describe(&e)))?,
            ),
            _ => data,
        };
        Ok(shared.store.hand_off(NewHandoff {
            from: OPERATOR.to_string(),
            parent: None,
            to: to.to_string(),
            route: None,
            kind: Kind::Work,
            summary: summary.to_string(),
            completed: Vec::new(),
            outstanding: Vec::new(),
            params,
            pattern,
            data,
            deadline_ms: limits.deadline_ms,
            fallback: Fallback::None,
            reply: false,
            in_reply_to: None,
            nth: None,
            pointer: None,
            inbox_depth,
        }))
    }

    /// What the operator learns of a committed submission; the serve loop is woken for
    /// its task.
    fn submitted(
        &self,
        committed: Result<Result<Committed, Refusal>, StoreError>,
    ) -> Result<Committed, SubmitError> {
        let committed = committed?;
        self.inner.shared.wake();
        committed.map_err(|r| SubmitError::Full(r.to_string()))
    }

    /// Wake agents with their pending tasks, oldest first, running up to the worker
    /// count at once and each agent at most `limits.concurrency` at once, until no task
    /// is pending or running. Returns how many activations ran.
    pub async fn run_until_idle(&self) -> Result<usize, StoreError> {
        self.run(None::<std::future::Pending<()>>).await
    }

    /// Like [`Host::run_until_idle`], but an idle host waits for new work, until `stop`
    /// resolves; then it starts nothing new, lets running activations finish, and returns.
    pub async fn serve(&self, stop: impl Future<Output = ()>) -> Result<usize, StoreError> {
        self.run(Some(stop)).await
    }

    async fn run(&self, stop: Option<impl Future<Output = ()>>) -> Result<usize, StoreError> {
        let shared = &self.inner.shared;
        let store = &shared.store;
        let serving = stop.is_some();
        let stop = async {
            match stop {
                Some(stop) => stop.await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stop);
        let mut stopped = false;
        let slots = Arc::new(Slots::new(self.inner.roster.clone(), self.workers));
        // Tasks are claimed for this loop in the commits that make them ready (see
        // `store::Claimant`), and come down `tasks`, while `claims` is registered with
        // the store (until it stops).
        let (mut claims, mut tasks) = self.open_claims(&slots);
        // The loop's own claim under way, if it asked for one; and whether the last one
        // claimed nothing, so that it asks again only once something happened (a backend
        // that cannot tell what is claimable says everything is).
        let mut asked: Option<WriteFuture<usize>> = None;
        let mut fruitless = false;
        let mut set: JoinSet<Result<TaskRecord, StoreError>> = JoinSet::new();
        let spawn = |set: &mut JoinSet<_>, task: TaskRecord| {
            let (host, slots) = (self.clone(), slots.clone());
            // Boxed: an activation's future is large, and unboxed the runtime copied all
            // of it at each move into and out of its task.
            set.spawn(async move { Box::pin(host.activate_in(task, Some(&slots))).await });
        };
        let mut ran = 0;
        loop {
            while let Ok(task) = tasks.try_recv() {
                spawn(&mut set, task);
            }
            // A slot freed by an activation's end, or a backoff that ended, is filled by
            // a claim of the loop's own. Most looks find nothing (every activation's end
            // wakes this loop); a read says so without a write.
            if let Some(c) = &claims.0
                && asked.is_none()
                && !fruitless
                && slots.free() > 0
                && let running = slots.running()
                && store.claimable(&|t, avoid, picked| {
                    slots.roster().pick(t, avoid, &running, picked)
                })?
            {
                asked = Some(store.claim_for(c.clone()));
            }
            if set.is_empty() && asked.is_none() && (stopped || !serving) {
                if !stopped && store.has_delayed()? {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                // Idle, or stopped with nothing running: claim no more, and run what
                // claims under way still hand over.
                claims.stop();
                let mut late = Vec::new();
                while let Some(task) = tasks.recv().await {
                    late.push(task);
                }
                if late.is_empty() {
                    return Ok(ran);
                }
                for task in late {
                    spawn(&mut set, task);
                }
                if !stopped {
                    (claims, tasks) = self.open_claims(&slots);
                }
                continue;
            }
            let asking = asked.is_some();
            tokio::select! {
                Some(joined) = set.join_next() => {
                    let mut joined = Some(joined);
                    while let Some(joined) = joined.take().or_else(|| set.try_join_next()) {
                        match joined {
                            Ok(ended) => ended?,
                            Err(e) => std::panic::resume_unwind(e.into_panic()),
                        };
                        ran += 1;
                    }
                }
                Some(task) = tasks.recv() => spawn(&mut set, task),
                Some(done) = async { asked.as_mut()?.await.into() }, if asking => {
                    asked = None;
                    fruitless = done? == 0;
                    continue;
                }
                _ = shared.ready.notified() => {}
                _ = &mut stop, if !stopped => {
                    stopped = true;
                    claims.stop();
                }
                // Retries wait out their backoff; look again now and then.
                _ = tokio::time::sleep(Duration::from_millis(25)) => {}
            }
            fruitless = false;
        }
    }

    /// A claimant for the loop with `slots`, registered with the store, and where its
    /// tasks come.
    fn open_claims(
        &self,
        slots: &Arc<Slots>,
    ) -> (Serving<'_>, mpsc::UnboundedReceiver<TaskRecord>) {
        let (claims, tasks) = Claims::new(slots.clone());
        let store = &*self.inner.shared.store;
        store.serve_claims(claims.clone());
        (Serving(Some(claims), store), tasks)
    }

    /// Wait until task `id` is final (completed, failed or delivered) and that is on
    /// disk, or `bound` has passed (`None`).
    pub async fn finished(
        &self,
        id: &str,
        bound: Duration,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let shared = &self.inner.shared;
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            // Registered before the look, so an end in between is not missed. The look
            // decodes the status alone: most often the task has not ended yet.
            let ended = shared.on_end(id);
            if shared.store.task_status(id)?.is_some_and(Status::is_final)
                && let Some(t) = shared.store.task(id)?.filter(|t| t.status.is_final())
            {
                shared.store.durable().await?;
                return Ok(Some(t));
            }
            match tokio::time::timeout_at(deadline, ended).await {
                Err(_) => return Ok(None),
                // An activation's end hands over the record it stored, already on disk.
                Ok(Some(t)) if t.status.is_final() => {
                    return Ok(Some(Arc::unwrap_or_clone(t)));
                }
                Ok(_) => {}
            }
        }
    }

    /// Run one activation of the agent that claimed `task`, and record how it ended:
    /// its outcome, or its failure and the fallback that follows. Returns once that
    /// record is on disk.
    pub async fn activate(&self, task: TaskRecord) -> Result<TaskRecord, StoreError> {
        self.activate_in(task, None).await
    }

    /// [`Host::activate`] in a slot of `slots`, freed once the end is committed.
    async fn activate_in(
        &self,
        task: TaskRecord,
        slots: Option<&Slots>,
    ) -> Result<TaskRecord, StoreError> {
        let id = task.id.clone();
        let agent = task.runner().to_string();
        let ended = self.run_activation(task).await;
        // Freed before the wait for the disk, so that the commit in which the caller
        // hands off again can claim the slot.
        if let Some(slots) = slots {
            slots.release(&agent);
        }
        self.inner.shared.store.durable().await?;
        self.inner.shared.task_ended(&id, ended.as_ref().ok());
        ended
    }

    async fn run_activation(&self, task: TaskRecord) -> Result<TaskRecord, StoreError> {
        // Shared with the activation's mesh context rather than copied into it.
        let task = Arc::new(task);
        let inner = &self.inner;
        let shared = &inner.shared;
        let store = &shared.store;
        let agent_id = task.runner().to_string();
        // What became of the audit records of the activation's reads, which it does not
        // wait for: the write that records its end checks it.
        let reads = Arc::new(ReadAudits::default());
        let fail = async |kind: FailureKind, reason: &str| {
            let r = store
                .fail(&task.id, kind, reason, REPLY_DEADLINE_MS, &reads)
                .await;
            shared.wake();
            r
        };
        let complete = async |summary: &str, data: &[u8]| {
            let r = store
                .complete(&task.id, summary, data, REPLY_DEADLINE_MS, &reads)
                .await;
            shared.wake();
            r
        };
        let Some(loaded) = inner.agents.get(&agent_id) else {
            return fail(
                FailureKind::Error,
                &format!("agent `{agent_id}` is not in the loaded mesh"),
            )
            .await;
        };
        if !self.sandbox {
            let data = task.payload.as_deref().unwrap_or_default();
            return complete("completed without a sandbox", data).await;
        }
        let left = task.deadline.saturating_sub(now_ms());
        if left == 0 {
            return fail(FailureKind::Timeout, "deadline passed before it ran").await;
        }
        let limits = &loaded.policy.limits;
        let stdout = MemoryOutputPipe::new(LOG_CAPACITY);
        let stderr = MemoryOutputPipe::new(LOG_CAPACITY);
        let outbound_log = OutboundLog::default();
        let (mut wstore, meter) = self.new_store(
            loaded,
            &task,
            (stdout.clone(), stderr.clone()),
            outbound_log.clone(),
            reads.clone(),
        );

        let run = meter.run(async {
            let agent: Agent = loaded.pre.instantiate_async(&mut wstore).await?;
            agent.call_handle(&mut wstore, &task_to_wit(&task)).await
        });
        let result = tokio::time::timeout(Duration::from_millis(left), run).await;

        let ctx = &mut wstore.data_mut().mesh;
        let mut refusals = std::mem::take(&mut ctx.log);
        refusals.append(&mut outbound_log.lock().unwrap_or_else(|e| e.into_inner()));
        // The streams it left open stay open: the store closes them when the task ends
        // for good, in the commit that ends it, and a delivery to come carries them on.
        self.append_log(
            &task,
            &agent_id,
            &stdout.contents(),
            &stderr.contents(),
            &refusals,
        );

        // The reads' audit records were queued before the write recording the end, which
        // is queued now without waiting for them: a read the host could not audit makes
        // that write fail the task, as any host fault in an import does (`ReadAudits`).
        match result {
            Err(_elapsed) => {
                fail(
                    FailureKind::Timeout,
                    &format!("deadline: no outcome within {left} ms"),
                )
                .await
            }
            Ok(Ok(Ok(outcome))) => {
                let max = limits.payload_kib * 1024;
                if outcome.data.len() as u64 > max {
                    return fail(
                        FailureKind::Error,
                        &format!(
                            "outcome is {} bytes; agent `{agent_id}` may store at most {max} (limits.payload_kib)",
                            outcome.data.len(),
                        ),
                    )
                    .await;
                }
                complete(&outcome.summary, &outcome.data).await
            }
            Ok(Ok(Err(message))) => {
                fail(
                    FailureKind::Error,
                    &format!("agent returned an error: {message}"),
                )
                .await
            }
            Ok(Err(e)) => fail(FailureKind::Trap, &trap_reason(&e)).await,
        }
    }

    /// A fresh wasmtime store for one activation of `loaded` with `task`: deny-by-default
    /// WASI (made when the guest first calls it), the agent's memory cap, and its CPU
    /// meter, which must run everything that uses the store.
    fn new_store(
        &self,
        loaded: &Loaded,
        task: &Arc<TaskRecord>,
        (stdout, stderr): (MemoryOutputPipe, MemoryOutputPipe),
        outbound_log: OutboundLog,
        reads: Arc<ReadAudits>,
    ) -> (WasmStore<Activation>, Meter) {
        let limits = &loaded.policy.limits;
        let memory = usize::try_from(limits.memory_mib * 1024 * 1024).unwrap_or(usize::MAX);
        let mut wstore = WasmStore::new(
            &self.inner.engine,
            Activation {
                mesh: MeshCtx {
                    agent: loaded.policy.clone(),
                    shared: self.inner.shared.clone(),
                    task: task.clone(),
                    handoffs: 0,
                    streams: Vec::new(),
                    log: Vec::new(),
                    reads,
                },
                wasi: LazyWasi::new(stdout, stderr),
                table: ResourceTable::new(),
                limits: Limiter {
                    max_memory: memory,
                    mib: limits.memory_mib,
                },
                http: wasmtime_wasi_http::WasiHttpCtx::new(),
                outbound: Outbound::new(loaded.outbound.clone(), outbound_log),
            },
        );
        wstore.limiter(|a| &mut a.limits);
        let meter = self.inner.ticker.meter(limits.cpu_ms);
        meter.install(&mut wstore);
        (wstore, meter)
    }

    /// Time `runs` bare activations of `agent` with `task`: a fresh store, instantiation
    /// from the pre-linked component, and the `handle` call, with nothing stored. For
    /// `baton bench`.
    pub async fn time_activations(
        &self,
        agent: &str,
        task: &TaskRecord,
        runs: usize,
    ) -> anyhow::Result<Vec<Duration>> {
        let loaded = self
            .inner
            .agents
            .get(agent)
            .ok_or_else(|| anyhow::anyhow!("no agent `{agent}`"))?;
        let wit_task = task_to_wit(task);
        let task = Arc::new(task.clone());
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = std::time::Instant::now();
            let (mut wstore, meter) = self.new_store(
                loaded,
                &task,
                (
                    MemoryOutputPipe::new(LOG_CAPACITY),
                    MemoryOutputPipe::new(LOG_CAPACITY),
                ),
                OutboundLog::default(),
                Arc::default(),
            );
            meter
                .run(async {
                    let agent: Agent = loaded.pre.instantiate_async(&mut wstore).await?;
                    agent.call_handle(&mut wstore, &wit_task).await
                })
                .await?
                .map_err(|e| anyhow::anyhow!("the agent failed: {e}"))?;
            times.push(started.elapsed());
        }
        Ok(times)
    }

    /// Append what an activation printed, and what the host refused it, to its log.
    fn append_log(
        &self,
        task: &TaskRecord,
        agent: &str,
        stdout: &[u8],
        stderr: &[u8],
        refusals: &[String],
    ) {
        if stdout.is_empty() && stderr.is_empty() && refusals.is_empty() {
            return;
        }
        let dir = &self.inner.log_dir;
        let path = dir.join(format!("{agent}.log"));
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            for line in refusals {
                writeln!(f, "[{}] host: {line}", task.id)?;
            }
            for (stream, bytes) in [("stdout", stdout), ("stderr", stderr)] {
                for line in String::from_utf8_lossy(bytes).lines() {
                    writeln!(f, "[{}] {stream}: {line}", task.id)?;
                }
            }
            Ok(())
        };
        // A log that cannot be written must not fail the task; say so and go on.
        if let Err(e) = write() {
            tracing::error!("cannot write agent log `{}`: {e}", path.display());
        }
    }
}

/// A scheduler loop's claimant while the store claims for it (`None` once it stopped).
/// Dropped with the loop, it stops, so a loop whose future was dropped leaves nothing
/// claiming for it.
struct Serving<'a>(Option<Arc<Claims>>, &'a dyn Backend);

impl Serving<'_> {
    /// Claim no more for the loop. Claims under way still hand their tasks over.
    fn stop(&mut self) {
        if let Some(c) = self.0.take() {
            c.close();
            self.1.stop_claims(&(c as Arc<dyn Claimant>));
        }
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A readable reason for an activation that trapped: one line, naming the limit when a
/// limit ended it, and never the wasm backtrace wasmtime attaches as context.
fn trap_reason(e: &wasmtime::Error) -> String {
    if let Some(cpu) = e.downcast_ref::<crate::meter::CpuLimit>() {
        return cpu.to_string();
    }
    if let Some(memory) = e.downcast_ref::<MemoryLimit>() {
        return memory.to_string();
    }
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return format!("agent exited with code {}", exit.0);
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::StackOverflow) => "trap: stack overflow".into(),
        Some(trap) => format!(
            "trap: {}",
            trap.to_string().trim_start_matches("wasm trap: ")
        ),
        None => {
            let backtrace = e.downcast_ref::<WasmBacktrace>().map(ToString::to_string);
            let chain: Vec<String> = e
                .chain()
                .map(ToString::to_string)
                .filter(|layer| Some(layer) != backtrace.as_ref())
                .collect();
            format!("trap: {}", chain.join(": "))
        }
    }
}

#[cfg(test)]
mod tests {
    //! Waiting for a task's end leaves nothing behind, however the wait ends: a host that
    //! clients keep asking must not grow with every task they asked about. And what the
    //! wait answers is the task as stored, whether it ended before or during the wait.
    //! And the benchmark's control, a host without a sandbox, runs no agent.

    use std::time::Duration;

    use super::Host;
    use crate::manifest::{AgentSpec, Mesh};
    use crate::store::{Pattern, Status};

    #[tokio::test]
    async fn a_wait_for_a_task_takes_its_registration_back_however_it_ends() {
        let state = tempfile::tempdir().unwrap();
        let echo = AgentSpec::new("echo", "echo.wasm", baton_artifacts::echo::WASM.into());
        let host = Host::load(&Mesh::new("<test>", vec![echo]), state.path()).unwrap();
        let submit = async |summary: &str| {
            let data = br#"{"title":"t"}"#.to_vec();
            let c = host.submit_async("echo", summary, Some(data), vec![], Pattern::Push);
            c.await.unwrap().task
        };

        // The task ended before anyone asked.
        let early = submit("early").await;
        host.run_until_idle().await.unwrap();
        let done = host
            .finished(&early, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(done.unwrap().status, Status::Completed);

        // The task ends while someone waits.
        let late = submit("late").await;
        let (done, ran) = tokio::join!(
            host.finished(&late, Duration::from_secs(30)),
            host.run_until_idle()
        );
        assert_eq!(ran.unwrap(), 1);
        // Handed over by the activation's end, not read back: still the record stored.
        let done = done.unwrap().unwrap();
        assert_eq!(done.status, Status::Completed);
        assert!(done.outcome_key.is_some() && done.finished_at.is_some());
        assert_eq!(Some(done), host.store().task(&late).unwrap());

        // Nobody runs the task, and the waiter gives up.
        let never = submit("never").await;
        let done = host.finished(&never, Duration::from_millis(20)).await;
        assert!(done.unwrap().is_none());

        assert_eq!(host.inner.shared.end_waits(), 0);
    }

    /// The benchmark's control must measure a push handoff's commits and nothing of its
    /// sandbox: the agent does not run (its outcome would say what it read), and the task
    /// still ends as a real one does: completed, its outcome stored.
    #[tokio::test]
    async fn the_benchmarks_control_runs_no_agent_and_ends_the_task_as_an_activation_does() {
        let state = tempfile::tempdir().unwrap();
        let echo = AgentSpec::new("echo", "echo.wasm", baton_artifacts::echo::WASM.into());
        let host = Host::load(&Mesh::new("<test>", vec![echo]), state.path()).unwrap();
        let data = br#"{"title":"t"}"#.to_vec();
        let run = async |host: &Host| {
            let c = host.submit_async("echo", "s", Some(data.clone()), vec![], Pattern::Push);
            let task = c.await.unwrap().task;
            assert_eq!(host.run_until_idle().await.unwrap(), 1);
            let done = host.store().task(&task).unwrap().unwrap();
            assert_eq!(done.status, Status::Completed);
            let key = done.outcome_key.as_deref().unwrap();
            let stored = host.store().read(key, None).unwrap().unwrap();
            (done.outcome_summary.unwrap(), stored.value)
        };

        let (summary, outcome) = run(&host.clone().without_sandbox()).await;
        assert_eq!(summary, "completed without a sandbox");
        assert_eq!(outcome, data);

        // The same host with its sandbox runs `echo`, whose outcome is its own.
        let (summary, outcome) = run(&host).await;
        assert_ne!(summary, "completed without a sandbox");
        assert_ne!(outcome, data);
    }
}
