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
//! agent's log, clocks, random); the `strict` linker offers `mesh` alone. No filesystem,
//! sockets or HTTP is ever linked here.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store as WasmStore, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::{Agent, AgentPre};
use crate::manifest::{ManifestError, Mesh, OPERATOR};
use crate::mesh::{AgentPolicy, MeshCtx, MeshView, Shared, task_to_wit};
use crate::policy::{self, Policy, Verdict};
use crate::store::{Committed, Kind, NewHandoff, Param, Pattern, Store, StoreError, TaskRecord};

/// How often the epoch advances; CPU limits are rounded up to it.
const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Most bytes of stdout and of stderr kept per activation.
const LOG_CAPACITY: usize = 64 * 1024;
/// Deadline of reply tasks, in milliseconds.
const REPLY_DEADLINE_MS: u64 = 30_000;

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
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The state of one activation's `Store`.
pub struct Activation {
    mesh: MeshCtx,
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for Activation {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
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
}

/// Advances the engine's epoch until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Ticker {
    fn start(engine: Engine) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("baton-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn the epoch thread");
        Ticker { stop }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A loaded mesh, ready to run tasks against its store.
pub struct Host {
    engine: Engine,
    file: String,
    shared: Arc<Shared>,
    agents: HashMap<String, Loaded>,
    log_dir: PathBuf,
    _ticker: Ticker,
}

/// The engine configuration every host uses.
fn engine() -> Result<Engine, LoadError> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.max_wasm_stack(512 * 1024);
    Engine::new(&config).map_err(|e| LoadError::Engine(e.to_string()))
}

fn linker(engine: &Engine, policy: Policy) -> wasmtime::Result<Linker<Activation>> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView as _};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView as _};
    use wasmtime_wasi::p2::bindings::{cli, clocks, random};
    use wasmtime_wasi::random::WasiRandom;

    let mut l = Linker::new(engine);
    crate::mesh::add_to_linker(&mut l, |a: &mut Activation| MeshView::new(&mut a.mesh))?;
    if policy == Policy::Strict {
        return Ok(l);
    }
    // The inert WASI base, interface by interface: `policy::INERT_WASI` and no more.
    wasmtime_wasi_io::add_to_linker_async(&mut l)?;
    clocks::wall_clock::add_to_linker::<_, WasiClocks>(&mut l, Activation::clocks)?;
    clocks::monotonic_clock::add_to_linker::<_, WasiClocks>(&mut l, Activation::clocks)?;
    random::random::add_to_linker::<_, WasiRandom>(&mut l, |a| a.wasi.random())?;
    random::insecure::add_to_linker::<_, WasiRandom>(&mut l, |a| a.wasi.random())?;
    random::insecure_seed::add_to_linker::<_, WasiRandom>(&mut l, |a| a.wasi.random())?;
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

impl Host {
    /// Check, compile and pre-link every agent of `mesh`, and open the store in `state`.
    pub fn load(mesh: &Mesh, state: &Path) -> Result<Host, LoadError> {
        let engine = engine()?;
        let link_err = |agent: &str, component: &str, e: wasmtime::Error| LoadError::Link {
            file: mesh.file.clone(),
            agent: agent.to_string(),
            component: component.to_string(),
            message: format!("{e:#}"),
        };
        let linkers: HashMap<Policy, Linker<Activation>> = [Policy::Default, Policy::Strict]
            .into_iter()
            .map(|p| linker(&engine, p).map(|l| (p, l)))
            .collect::<wasmtime::Result<_>>()
            .map_err(|e| LoadError::Engine(format!("{e:#}")))?;

        let mut agents = HashMap::new();
        let mut policies = HashMap::new();
        for spec in &mesh.agents {
            let verdict =
                policy::check(&spec.wasm, spec.policy).map_err(|reason| LoadError::Unreadable {
                    file: mesh.file.clone(),
                    agent: spec.id.clone(),
                    component: spec.component.clone(),
                    reason,
                })?;
            if !verdict.admitted() {
                return Err(LoadError::Refused {
                    file: mesh.file.clone(),
                    agent: spec.id.clone(),
                    component: spec.component.clone(),
                    verdict: Box::new(verdict),
                });
            }
            let component = Component::new(&engine, &*spec.wasm)
                .map_err(|e| link_err(&spec.id, &spec.component, e))?;
            let pre = linkers[&spec.policy]
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
            agents.insert(spec.id.clone(), Loaded { pre, policy });
        }

        let store = Arc::new(Store::open(state)?);
        Ok(Host {
            _ticker: Ticker::start(engine.clone()),
            engine,
            file: mesh.file.clone(),
            shared: Arc::new(Shared {
                store,
                agents: policies,
            }),
            agents,
            log_dir: state.join("logs"),
        })
    }

    /// The store this host writes to.
    pub fn store(&self) -> &Arc<Store> {
        &self.shared.store
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
        let Some(agent) = self.agents.get(to) else {
            let mut known: Vec<&str> = self.agents.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(SubmitError::UnknownAgent {
                file: self.file.clone(),
                agent: to.to_string(),
                known: known.join(", "),
            });
        };
        let limits = &agent.policy.limits;
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
        Ok(self.shared.store.hand_off(NewHandoff {
            from: OPERATOR.to_string(),
            parent: None,
            to: to.to_string(),
            kind: Kind::Work,
            summary: summary.to_string(),
            completed: Vec::new(),
            outstanding: Vec::new(),
            params,
            pattern: Pattern::Blackboard,
            data,
            deadline_ms: limits.deadline_ms,
            reply: false,
            in_reply_to: None,
            pointer: None,
            inbox_depth: limits.inbox_depth,
        })?)
    }

    /// Wake agents with their pending tasks, oldest first, until no task is pending.
    /// Returns how many activations ran.
    pub async fn run_until_idle(&self) -> Result<usize, StoreError> {
        let mut ran = 0;
        while let Some(task) = self.shared.store.claim_next()? {
            self.activate(task).await?;
            ran += 1;
        }
        Ok(ran)
    }

    /// Run one activation of `task.to` with `task`, and record how it ended.
    pub async fn activate(&self, task: TaskRecord) -> Result<TaskRecord, StoreError> {
        let store = &self.shared.store;
        let Some(loaded) = self.agents.get(&task.to) else {
            return store.fail(
                &task.id,
                &format!("agent `{}` is not in the loaded mesh", task.to),
            );
        };
        let limits = &loaded.policy.limits;
        let stdout = MemoryOutputPipe::new(LOG_CAPACITY);
        let stderr = MemoryOutputPipe::new(LOG_CAPACITY);
        let wasi = WasiCtxBuilder::new()
            .stdin(MemoryInputPipe::new(Vec::<u8>::new()))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        let memory = usize::try_from(limits.memory_mib * 1024 * 1024).unwrap_or(usize::MAX);
        let mut wstore = WasmStore::new(
            &self.engine,
            Activation {
                mesh: MeshCtx {
                    agent: loaded.policy.clone(),
                    shared: self.shared.clone(),
                    task: task.clone(),
                    handoffs: 0,
                    log: Vec::new(),
                },
                wasi,
                table: ResourceTable::new(),
                limits: StoreLimitsBuilder::new()
                    .memory_size(memory)
                    .trap_on_grow_failure(true)
                    .build(),
            },
        );
        wstore.limiter(|a| &mut a.limits);
        wstore.set_epoch_deadline(limits.cpu_ms.div_ceil(EPOCH_TICK.as_millis() as u64));
        wstore.epoch_deadline_trap();

        let result = async {
            let agent: Agent = loaded.pre.instantiate_async(&mut wstore).await?;
            agent.call_handle(&mut wstore, &task_to_wit(&task)).await
        }
        .await;

        let refusals = std::mem::take(&mut wstore.data_mut().mesh.log);
        self.append_log(&task, &stdout.contents(), &stderr.contents(), &refusals);

        match result {
            Ok(Ok(outcome)) => {
                let max = limits.payload_kib * 1024;
                if outcome.data.len() as u64 > max {
                    return store.fail(
                        &task.id,
                        &format!(
                            "outcome is {} bytes; agent `{}` may store at most {max} (limits.payload_kib)",
                            outcome.data.len(),
                            task.to
                        ),
                    );
                }
                store.complete(&task.id, &outcome.summary, &outcome.data, REPLY_DEADLINE_MS)
            }
            Ok(Err(message)) => {
                store.fail(&task.id, &format!("agent returned an error: {message}"))
            }
            Err(e) => store.fail(&task.id, &trap_reason(&e, limits.cpu_ms)),
        }
    }

    /// Append what an activation printed, and what the host refused it, to its log.
    fn append_log(&self, task: &TaskRecord, stdout: &[u8], stderr: &[u8], refusals: &[String]) {
        if stdout.is_empty() && stderr.is_empty() && refusals.is_empty() {
            return;
        }
        let path = self.log_dir.join(format!("{}.log", task.to));
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.log_dir)?;
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

/// A readable reason for an activation that trapped.
fn trap_reason(e: &wasmtime::Error, cpu_ms: u64) -> String {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!("cpu time limit: ran past {cpu_ms} ms (limits.cpu_ms)"),
        Some(Trap::StackOverflow) => "trap: stack overflow".into(),
        Some(trap) => format!("trap: {trap}"),
        None => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(exit) => format!("agent exited with code {}", exit.0),
            None => format!("trap: {e:#}"),
        },
    }
}
