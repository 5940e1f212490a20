//! The `baton` command line. JSON for machines (`--json`), readable text for people.
//!
//! Exit codes: 0 success; 1 failure (a run that failed, a refused component, bad input);
//! 2 for `baton check` on a file that is not a readable component, and for usage errors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use crate::demo::Demo;
use crate::manifest::Mesh;
use crate::policy::{self, Policy};
use crate::report::{EntryView, Report};
use crate::runtime::{DEFAULT_WORKERS, Host, MAX_WORKERS};
use crate::store::{AuditVerdict, Param, ParamValue, STORE_FILE, Store};
use crate::vault::Vault;

/// Run AI agents as sandboxed WebAssembly components with secure, audited handoffs.
#[derive(Debug, Parser)]
#[command(name = "baton", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an embedded example mesh: blackboard (the default), push, pull, stream, route
    /// or fallback.
    Demo {
        /// Which demo.
        #[arg(default_value = "blackboard")]
        pattern: Demo,
        /// Activations run at once (1 to 256).
        #[arg(long, default_value_t = DEFAULT_WORKERS, value_parser = workers_in_range)]
        workers: usize,
        /// State directory (created if missing).
        #[arg(long, default_value = ".baton")]
        state: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Submit a task to an agent of a mesh and run the chain to its end.
    Run {
        /// The mesh manifest.
        #[arg(long)]
        mesh: PathBuf,
        /// The agent that gets the task.
        #[arg(long)]
        to: String,
        /// What the agent should do.
        #[arg(long)]
        summary: String,
        /// JSON data, written to the blackboard for the agent.
        #[arg(long)]
        data: Option<String>,
        /// A typed parameter, `name=value` (true/false, integers and numbers are typed).
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Activations run at once (1 to 256).
        #[arg(long, default_value_t = DEFAULT_WORKERS, value_parser = workers_in_range)]
        workers: usize,
        /// State directory (created if missing).
        #[arg(long, default_value = ".baton")]
        state: PathBuf,
        /// Secrets for outbound rules: a TOML file of `name = "value"`, kept outside the
        /// mesh folder. `BATON_SECRET_<NAME>` environment variables add to it and win.
        #[arg(long, value_name = "FILE")]
        vault: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a component's imports and whether a policy admits it; with --mesh and
    /// --agent, everything that agent can reach.
    Check {
        /// The component file.
        #[arg(required_unless_present = "mesh")]
        file: Option<PathBuf>,
        /// The policy to judge it by.
        #[arg(long, default_value = "default")]
        policy: Policy,
        /// A mesh manifest: explain one of its agents instead.
        #[arg(long, requires = "agent", conflicts_with = "file")]
        mesh: Option<PathBuf>,
        /// The agent of --mesh to explain.
        #[arg(long, requires = "mesh")]
        agent: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure activation, handoffs, loading and memory (medians and p99).
    Bench {
        /// A short run, to prove the benchmark works (CI).
        #[arg(long)]
        quick: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Read the blackboard.
    Bb {
        #[command(subcommand)]
        command: BbCommand,
    },
    /// The operator inbox: tasks an `escalate` fallback handed to a human.
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
    /// The tamper-evident audit log of every handoff and read.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Show the handoff chain of a task.
    Trace {
        /// Any task of the chain.
        task: String,
        /// State directory.
        #[arg(long, default_value = ".baton")]
        state: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain: exit 0 when whole, 1 naming the first broken record.
    Verify {
        /// State directory.
        #[arg(long, default_value = ".baton")]
        state: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the audit log as JSON.
    Log {
        /// State directory.
        #[arg(long, default_value = ".baton")]
        state: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum OperatorCommand {
    /// List escalated tasks (unresolved ones, or all with --all).
    List {
        /// Include resolved escalations.
        #[arg(long)]
        all: bool,
        /// State directory.
        #[arg(long, default_value = ".baton")]
        state: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mark an escalated task resolved.
    Resolve {
        /// The escalated task.
        task: String,
        /// What the operator did about it.
        #[arg(long)]
        note: Option<String>,
        /// State directory.
        #[arg(long, default_value = ".baton")]
        state: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum BbCommand {
    /// Print a key as a JSON array of versions (the newest, or all with --history).
    Get {
        /// The key.
        key: String,
        /// Every version, oldest first.
        #[arg(long)]
        history: bool,
        /// State directory.
        #[arg(long, default_value = ".baton")]
        state: PathBuf,
    },
}

/// Parse the command line, run it, print any error with its causes, and exit.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BATON_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Demo {
            pattern,
            workers,
            state,
            json,
        } => {
            let report = block_on(crate::demo::run(pattern, &state, workers))??;
            Ok(print_report(&report, json))
        }
        Command::Run {
            mesh,
            to,
            summary,
            data,
            params,
            workers,
            state,
            vault,
            json,
        } => {
            let vault = match vault {
                Some(file) => Vault::load(&file)?,
                None => Vault::empty(),
            }
            .with_env();
            let data = data
                .map(|d| {
                    serde_json::from_str::<serde_json::Value>(&d)
                        .map(|_| d.into_bytes())
                        .context("--data is not valid JSON")
                })
                .transpose()?;
            let params = params
                .iter()
                .map(|p| parse_param(p))
                .collect::<anyhow::Result<_>>()?;
            let mesh = Mesh::load(&mesh)?;
            let report = block_on(async {
                let host = Host::load_with(&mesh, &state, &vault)?.with_workers(workers);
                let submitted = host.submit(&to, &summary, data, params)?;
                host.run_until_idle().await?;
                Report::for_task(host.store(), &submitted.task)?
                    .context("the submitted task vanished from the store")
            })??;
            Ok(print_report(&report, json))
        }
        Command::Bench { quick, json } => {
            let dir = tempfile::tempdir().context("cannot create a scratch directory")?;
            let report = block_on(crate::bench::run(dir.path(), quick))??;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", crate::bench::to_text(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            file,
            policy,
            mesh,
            agent,
            json,
        } => match (file, mesh, agent) {
            (Some(file), _, _) => Ok(check(&file, policy, json)),
            (None, Some(mesh), Some(agent)) => explain(&mesh, &agent, json),
            _ => bail!("give a component file, or --mesh and --agent"),
        },
        Command::Bb {
            command:
                BbCommand::Get {
                    key,
                    history,
                    state,
                },
        } => {
            let store = open_existing(&state)?;
            let entries = if history {
                store.history(&key)?
            } else {
                store.read(&key, None)?.into_iter().collect()
            };
            if entries.is_empty() {
                bail!("no key `{key}` in {}", store.path().display());
            }
            let views: Vec<EntryView> = entries.iter().map(EntryView::from).collect();
            println!("{}", serde_json::to_string_pretty(&views)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Operator {
            command: OperatorCommand::List { all, state, json },
        } => {
            let store = open_existing(&state)?;
            let list = store.escalations(all)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("the operator inbox is empty");
            } else {
                for e in &list {
                    let state = if e.resolved_at.is_some() {
                        "resolved"
                    } else {
                        "open"
                    };
                    println!("{}  {}  {state}  {}", e.task, e.agent, e.reason);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Operator {
            command: OperatorCommand::Resolve { task, note, state },
        } => {
            let store = open_existing(&state)?;
            match store.resolve(&task, note.as_deref()).wait()? {
                Ok(e) => {
                    println!("resolved {} ({})", e.task, e.agent);
                    Ok(ExitCode::SUCCESS)
                }
                Err(refusal) => bail!("{refusal}"),
            }
        }
        Command::Audit {
            command: AuditCommand::Verify { state, json },
        } => {
            let store = open_existing(&state)?;
            let verdict = store.audit_verify()?;
            let (whole, line, value) = match &verdict {
                AuditVerdict::Whole { records } => (
                    true,
                    format!("audit log whole: {records} records"),
                    serde_json::json!({ "whole": true, "records": records }),
                ),
                AuditVerdict::Broken { seq, reason } => (
                    false,
                    format!("audit log broken at record #{seq}: {reason}"),
                    serde_json::json!({ "whole": false, "broken": seq, "reason": reason }),
                ),
            };
            if json {
                println!("{value}");
            } else if whole {
                println!("{line}");
            } else {
                eprintln!("error: {line}");
            }
            Ok(if whole {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Audit {
            command: AuditCommand::Log { state },
        } => {
            let store = open_existing(&state)?;
            println!("{}", serde_json::to_string_pretty(&store.audit_log()?)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Trace { task, state, json } => {
            let store = open_existing(&state)?;
            let report = Report::for_task(&store, &task)?
                .with_context(|| format!("no task `{task}` in {}", store.path().display()))?;
            Ok(print_report(&report, json))
        }
    }
}

/// `--workers`: at least one, at most the instance pool's size.
fn workers_in_range(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|e| format!("`{s}` is not a number: {e}"))?;
    if (1..=MAX_WORKERS).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "must be 1 to {MAX_WORKERS} (the instance pool's size)"
        ))
    }
}

/// Runtime threads. Store writes park their task, not a thread, so the runtime needs
/// about as many threads as cores; a few more cover the short blocking calls left (redb
/// reads, agent log appends). With 32 handoffs in flight on 2 cores, 4 threads did as
/// well as 8 and better than 2 or 32 (more threads only added context switches).
const RUNTIME_THREADS: usize = 4;

fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_THREADS)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(rt.block_on(f))
}

/// Open the store of a state directory that must already exist: reading commands never
/// create state.
fn open_existing(state: &Path) -> anyhow::Result<Store> {
    if !state.join(STORE_FILE).exists() {
        bail!(
            "no baton state in `{}` (no {STORE_FILE}); run `baton demo` or `baton run` first, or pass --state",
            state.display()
        );
    }
    Ok(Store::open(state)?)
}

fn print_report(report: &Report, json: bool) -> ExitCode {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("reports serialize")
        );
    } else {
        print!("{}", report.to_text());
    }
    if report.status == "failed" {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `name=value`, typed: `true`/`false`, then integers, then numbers, else text.
fn parse_param(p: &str) -> anyhow::Result<Param> {
    let Some((name, value)) = p.split_once('=') else {
        bail!("--param `{p}` is not NAME=VALUE");
    };
    if name.is_empty() {
        bail!("--param `{p}` has an empty name");
    }
    let value = match value {
        "true" => ParamValue::Flag(true),
        "false" => ParamValue::Flag(false),
        v => v
            .parse::<i64>()
            .map(ParamValue::Integer)
            .or_else(|_| v.parse::<f64>().map(ParamValue::Number))
            .unwrap_or_else(|_| ParamValue::Text(v.to_string())),
    };
    Ok(Param {
        name: name.to_string(),
        value,
    })
}

fn check(file: &Path, policy: Policy, json: bool) -> ExitCode {
    let shown = file.display();
    let verdict = std::fs::read(file)
        .map_err(|e| format!("cannot read: {e}"))
        .and_then(|bytes| policy::check(&bytes, policy).map_err(|e| format!("{e}")));
    match verdict {
        Err(reason) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "file": shown.to_string(), "policy": policy, "error": reason })
                );
            } else {
                eprintln!("error: {shown}: {reason}");
            }
            ExitCode::from(2)
        }
        Ok(v) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "file": shown.to_string(),
                        "policy": v.policy,
                        "admitted": v.admitted(),
                        "imports": v.imports,
                        "refused": v.refused,
                    }))
                    .expect("verdicts serialize")
                );
            } else {
                let word = if v.admitted() { "admitted" } else { "refused" };
                println!("{shown}: {word} by policy `{}`", v.policy);
                for r in &v.refused {
                    println!("  refused {}: {}", r.import, r.reason);
                }
                println!("imports:");
                for i in &v.imports {
                    println!("  {i}");
                }
            }
            if v.admitted() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Everything one agent of a mesh can reach: what it imports and whether its policy admits
/// that, which keys it may read, where it may hand off, and its limits.
fn explain(mesh_file: &Path, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let mesh = Mesh::load(mesh_file)?;
    let Some(spec) = mesh.agent(id) else {
        bail!(
            "{}: no agent `{id}` in this mesh; agents: {}",
            mesh.file,
            mesh.ids().join(", ")
        );
    };
    let granted = policy::Granted {
        http: !spec.outbound.is_empty(),
    };
    let verdict = policy::check_granted(&spec.wasm, spec.policy, granted).map_err(|e| {
        anyhow::anyhow!(
            "{}: agent `{id}`: component `{}` is {e}",
            mesh.file,
            spec.component
        )
    })?;
    // Rules as written: header templates name secrets (`{secret:name}`), never values.
    let outbound: Vec<serde_json::Value> = spec
        .outbound
        .iter()
        .map(|r| {
            serde_json::json!({
                "scheme": format!("{:?}", r.scheme).to_lowercase(),
                "host": r.host,
                "port": r.port,
                "path_prefix": r.path_prefix,
                "headers": r.headers,
            })
        })
        .collect();
    let handoff: Vec<serde_json::Value> = spec
        .handoff
        .iter()
        .map(|target| {
            if let Some(cap) = target.strip_prefix(crate::manifest::CAPABILITY) {
                let workers: Vec<&str> = mesh
                    .agents
                    .iter()
                    .filter(|a| a.capabilities.iter().any(|c| c == cap))
                    .map(|a| a.id.as_str())
                    .collect();
                serde_json::json!({ "target": target, "kind": "capability", "reaches": workers })
            } else if let Some(name) = target.strip_prefix(crate::manifest::ROUTE) {
                let mut to: Vec<&str> = mesh
                    .route(name)
                    .map(|r| r.rules.iter().map(|rule| rule.to.as_str()).collect())
                    .unwrap_or_default();
                to.sort_unstable();
                to.dedup();
                serde_json::json!({ "target": target, "kind": "route", "reaches": to })
            } else {
                serde_json::json!({ "target": target, "kind": "agent", "reaches": [target] })
            }
        })
        .collect();
    let report = serde_json::json!({
        "mesh": mesh.file,
        "agent": id,
        "component": spec.component,
        "sha256": crate::manifest::hex(&<sha2::Sha256 as sha2::Digest>::digest(&*spec.wasm)),
        "policy": spec.policy,
        "admitted": verdict.admitted(),
        "imports": verdict.imports,
        "refused": verdict.refused,
        "reads": {
            "own_namespace": crate::grants::namespace(id),
            "globs": spec.reads,
            "delivered_pointers": "the exact keys that tasks delivered to it point at",
        },
        "writes": format!("{} (through hand-off data and outcomes only)", crate::grants::namespace(id)),
        "handoff": handoff,
        "outbound": outbound,
        "capabilities": spec.capabilities,
        "limits": {
            "memory_mib": spec.limits.memory_mib,
            "cpu_ms": spec.limits.cpu_ms,
            "payload_kib": spec.limits.payload_kib,
            "inbox_depth": spec.limits.inbox_depth,
            "handoffs_per_activation": spec.limits.handoffs_per_activation,
            "deadline_ms": spec.limits.deadline_ms,
            "concurrency": spec.limits.concurrency,
        },
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let word = if verdict.admitted() {
            "admitted"
        } else {
            "refused"
        };
        println!(
            "agent `{id}` of {}: component {} {word} by policy `{}`",
            mesh.file, spec.component, spec.policy
        );
        for r in &verdict.refused {
            println!("  refused {}: {}", r.import, r.reason);
        }
        println!("imports: {}", verdict.imports.join(", "));
        println!(
            "reads: its namespace {}, the keys its delivered tasks point at{}",
            crate::grants::namespace(id),
            if spec.reads.is_empty() {
                String::new()
            } else {
                format!(", and {}", spec.reads.join(", "))
            }
        );
        println!(
            "writes: {} only, through hand-off data and outcomes",
            crate::grants::namespace(id)
        );
        if handoff.is_empty() {
            println!("hands off to: nobody");
        }
        for h in &handoff {
            println!(
                "hands off to: {} ({}) -> {}",
                h["target"].as_str().unwrap_or_default(),
                h["kind"].as_str().unwrap_or_default(),
                h["reaches"]
            );
        }
    }
    Ok(if verdict.admitted() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
