//! Who may run a ready task now: each agent's concurrency limit and each capability's
//! workers ([`Roster`], a small immutable table built once when the mesh loads), and the
//! scheduler's slots ([`Slots`]): how many activations run, of each agent and in all.
//! The scheduler's claims run on the store's writer thread, in the commits that make
//! tasks ready (see [`Claimant`]), so what they consult is this and not the host.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::manifest::CAPABILITY;
use crate::store::{Claim, Claimant, StoreError, TaskRecord};

/// The agents of a mesh as the scheduler sees them.
#[derive(Debug, Default)]
pub struct Roster {
    /// Agent → how many activations of it may run at once.
    limits: HashMap<String, u32>,
    /// Capability → the agents serving it, in a stable order.
    workers: HashMap<String, Vec<String>>,
}

impl Roster {
    /// A roster of `agents`: (id, concurrency limit, capabilities served).
    pub fn new<'a>(agents: impl IntoIterator<Item = (&'a str, u32, &'a [String])>) -> Roster {
        let mut roster = Roster::default();
        for (id, limit, capabilities) in agents {
            roster.limits.insert(id.to_string(), limit);
            for cap in capabilities {
                roster
                    .workers
                    .entry(cap.clone())
                    .or_default()
                    .push(id.to_string());
            }
        }
        for w in roster.workers.values_mut() {
            w.sort_unstable();
        }
        roster
    }

    /// The agent to run a task for `target` now, if one is free: the agent itself, or an
    /// idle worker serving the capability, preferring workers the task has not failed on
    /// (a worker that trapped on it gets it again only when every worker has). `running`
    /// counts activations running; `picked`, agents picked for tasks claimed with this one.
    pub fn pick(
        &self,
        target: &str,
        avoid: &[&str],
        running: &HashMap<String, u32>,
        picked: &[String],
    ) -> Option<String> {
        let free = |agent: &str| {
            let limit = self.limits.get(agent).copied().unwrap_or(1);
            let claimed = picked.iter().filter(|p| *p == agent).count() as u32;
            running.get(agent).copied().unwrap_or(0) + claimed < limit
        };
        match target.strip_prefix(CAPABILITY) {
            Some(cap) => {
                let workers = self.workers.get(cap).map_or(&[][..], Vec::as_slice);
                let fresh = workers.iter().any(|w| !avoid.contains(&w.as_str()));
                workers
                    .iter()
                    .filter(|w| !fresh || !avoid.contains(&w.as_str()))
                    .find(|w| free(w))
                    .cloned()
            }
            // An agent no longer in the mesh is claimed too, so `activate` can fail it.
            None => free(target).then(|| target.to_string()),
        }
    }
}

/// The activation slots of one scheduler loop: at most `workers` activations at once,
/// each agent at most its limit. A slot is taken when a claim for the loop picks a task
/// (before the claim commits; given back if it does not) and freed when the activation's
/// end is committed.
#[derive(Debug)]
pub struct Slots {
    roster: Arc<Roster>,
    workers: usize,
    taken: Mutex<Taken>,
}

#[derive(Debug, Default)]
struct Taken {
    /// Agent → slots it holds.
    running: HashMap<String, u32>,
    /// Slots held in all.
    total: usize,
}

impl Slots {
    /// Slots for `workers` activations at once of the agents of `roster`.
    pub fn new(roster: Arc<Roster>, workers: usize) -> Slots {
        Slots {
            roster,
            workers,
            taken: Mutex::new(Taken::default()),
        }
    }

    fn taken(&self) -> MutexGuard<'_, Taken> {
        // Each change is made in one step under the lock: a panic leaves it consistent.
        self.taken.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Slots free now.
    pub fn free(&self) -> usize {
        self.workers.saturating_sub(self.taken().total)
    }

    /// How many activations of each agent run now, copied: a pick made with it (see
    /// [`Roster::pick`]) holds no lock. The store calls a claim's pick under its own
    /// lock, and a claim for these slots locks the store's queues under this one.
    pub fn running(&self) -> HashMap<String, u32> {
        self.taken().running.clone()
    }

    /// The roster the slots are of.
    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    /// Free the slot an activation of `agent` held.
    pub fn release(&self, agent: &str) {
        let mut taken = self.taken();
        if let Some(n) = taken.running.get_mut(agent) {
            *n = n.saturating_sub(1);
        }
        taken.total = taken.total.saturating_sub(1);
    }
}

/// The [`Claimant`] of one scheduler loop: claims fill its [`Slots`] and send the tasks
/// down a channel to the loop, until it closes.
pub struct Claims {
    slots: Arc<Slots>,
    closed: AtomicBool,
    sink: mpsc::UnboundedSender<TaskRecord>,
}

impl Claims {
    /// A claimant for `slots`, and the receiving end of its tasks. The channel ends once
    /// the claimant is dropped, by the loop and by the store (see
    /// [`Backend::stop_claims`](crate::store::Backend::stop_claims)).
    pub fn new(slots: Arc<Slots>) -> (Arc<Claims>, mpsc::UnboundedReceiver<TaskRecord>) {
        let (sink, tasks) = mpsc::unbounded_channel();
        let claims = Claims {
            slots,
            closed: AtomicBool::new(false),
            sink,
        };
        (Arc::new(claims), tasks)
    }

    /// Take no more tasks: claims from now on claim nothing.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Closed, or its loop is gone (its future dropped): a task claimed now would never
    /// run.
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.sink.is_closed()
    }
}

impl Claimant for Claims {
    fn wants(&self) -> bool {
        !self.is_closed() && self.slots.free() > 0
    }

    fn reserve(&self, claim: &mut Claim<'_>) -> Result<Vec<TaskRecord>, StoreError> {
        let slots = &self.slots;
        let mut taken = slots.taken();
        if self.is_closed() {
            return Ok(Vec::new());
        }
        let free = slots.workers.saturating_sub(taken.total);
        let tasks = {
            let running = &taken.running;
            claim(free, &|t, avoid, picked| {
                slots.roster.pick(t, avoid, running, picked)
            })?
        };
        for t in &tasks {
            *taken.running.entry(t.runner().to_string()).or_default() += 1;
            taken.total += 1;
        }
        Ok(tasks)
    }

    fn release(&self, tasks: &[TaskRecord]) {
        for t in tasks {
            self.slots.release(t.runner());
        }
    }

    fn deliver(&self, tasks: Vec<TaskRecord>) {
        for t in tasks {
            // The loop holds the receiver until every claimant it made is dropped, and
            // this one is not yet; the send fails only if the loop ended in an error,
            // and then a restart redelivers the task.
            if let Err(mpsc::error::SendError(t)) = self.sink.send(t) {
                tracing::error!("task {} was claimed after its scheduler stopped", t.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roster() -> Roster {
        let caps = ["sum".to_string()];
        Roster::new([("a", 2, &caps[..]), ("b", 1, &caps[..]), ("c", 1, &[][..])])
    }

    #[test]
    fn an_agent_runs_up_to_its_limit_counting_what_this_claim_picked() {
        let r = roster();
        let running = HashMap::from([("a".to_string(), 1)]);
        assert_eq!(r.pick("a", &[], &running, &[]), Some("a".into()));
        assert_eq!(r.pick("a", &[], &running, &["a".into()]), None);
        assert_eq!(r.pick("c", &[], &HashMap::new(), &["c".into()]), None);
    }

    /// A claim as the store makes one: the targets of ready tasks, oldest first, each
    /// taken if `pick` finds it an agent, up to `max`.
    fn claim_of<'a>(
        ready: &'a [&'a str],
    ) -> impl FnMut(usize, &crate::store::Picker<'_>) -> Result<Vec<TaskRecord>, StoreError> + 'a
    {
        move |max, pick| {
            let mut picked: Vec<String> = Vec::new();
            for target in ready {
                if picked.len() < max
                    && let Some(agent) = pick(target, &[], &picked)
                {
                    picked.push(agent);
                }
            }
            Ok(picked
                .into_iter()
                .enumerate()
                .map(|(i, agent)| {
                    let mut t: TaskRecord = serde_json::from_value(serde_json::json!({
                        "id": format!("t-{i}"), "root": "t-0", "kind": "work",
                        "from": "operator", "to": agent, "summary": "s",
                        "pattern": "blackboard", "deadline": 9, "handoff": "h-1",
                        "status": "running", "created_at": 0,
                    }))
                    .unwrap();
                    t.agent = Some(agent);
                    t
                })
                .collect())
        }
    }

    fn agents(tasks: &[TaskRecord]) -> Vec<&str> {
        tasks.iter().filter_map(|t| t.agent.as_deref()).collect()
    }

    /// Claims fill the free slots, each agent up to its limit and all up to the worker
    /// count; a freed slot is filled again, one given back is free, and a closed
    /// claimant takes nothing.
    #[test]
    fn claims_fill_free_slots_up_to_each_agents_limit_and_the_worker_count() {
        let slots = Arc::new(Slots::new(Arc::new(roster()), 3));
        let (claims, _tasks) = Claims::new(slots.clone());
        let ready = ["c", "c", "a", "a", "a", "b"];
        let first = claims.reserve(&mut claim_of(&ready)).unwrap();
        assert_eq!(agents(&first), ["c", "a", "a"]);
        assert_eq!(slots.free(), 0);
        assert!(!claims.wants());
        assert!(claims.reserve(&mut claim_of(&ready)).unwrap().is_empty());

        // An activation of `a` ends.
        slots.release("a");
        assert!(claims.wants());
        let again = claims.reserve(&mut claim_of(&ready)).unwrap();
        assert_eq!(agents(&again), ["a"]);
        // A claim that did not commit gives its slots back.
        claims.release(&again);
        assert_eq!(slots.free(), 1);
        assert_eq!(slots.running().get("a"), Some(&1));

        claims.close();
        assert!(!claims.wants());
        assert!(claims.reserve(&mut claim_of(&ready)).unwrap().is_empty());
    }

    #[test]
    fn a_capability_goes_to_a_free_worker_it_has_not_failed_on() {
        let r = roster();
        let none = HashMap::new();
        assert_eq!(r.pick("capability:sum", &[], &none, &[]), Some("a".into()));
        assert_eq!(
            r.pick("capability:sum", &["a"], &none, &[]),
            Some("b".into())
        );
        // Every worker failed on it: any free one gets it again.
        assert_eq!(
            r.pick("capability:sum", &["a", "b"], &none, &[]),
            Some("a".into())
        );
        let busy = HashMap::from([("b".to_string(), 1)]);
        assert_eq!(r.pick("capability:sum", &["a"], &busy, &[]), None);
        assert_eq!(r.pick("capability:none", &[], &none, &[]), None);
    }
}
