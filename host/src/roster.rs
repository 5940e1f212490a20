//! Who may run a ready task now: each agent's concurrency limit and each capability's
//! workers. The scheduler's claims run on the store's writer thread, so what they consult
//! is this small, immutable table, built once when the mesh loads, and not the host.

use std::collections::HashMap;

use crate::manifest::CAPABILITY;

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
