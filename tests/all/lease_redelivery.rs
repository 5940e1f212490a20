//! Guarantee: a pull task is acknowledged only when an activation succeeds. A worker that
//! traps gives the task back and another worker completes it; a task left running by a
//! host that died is redelivered when the next host loads the same state.

use baton::Host;
use baton::store::{FailureKind, Status};

use crate::common::{agent, agent_to, claim_oldest, int, mesh, research_mesh, run};

fn worker(id: &str, wasm: &'static [u8]) -> baton::AgentSpec {
    let mut w = agent(id, wasm);
    w.capabilities = vec!["summarize".into()];
    w
}

#[tokio::test]
async fn a_trapping_worker_loses_its_lease_and_another_completes_the_task() {
    let state = tempfile::tempdir().unwrap();
    let host = Host::load(
        &mesh(vec![
            agent_to(
                "dispatcher",
                baton_artifacts::dispatcher::WASM,
                &["capability:summarize"],
            ),
            // Sorted first, so it is offered work first.
            worker("a-crasher", baton_artifacts::crasher::WASM),
            worker("b-summarizer", baton_artifacts::summarizer::WASM),
        ]),
        state.path(),
    )
    .unwrap();
    let report = run(&host, "dispatcher", None, vec![int("count", 4)]).await;
    assert_eq!(report.status, "completed", "{report:?}");

    let mut redelivered = 0;
    for h in report.handoffs.iter().filter(|h| h.pattern == "pull") {
        let task = host.store().task(&h.task).unwrap().unwrap();
        // Every task ends completed, by the worker that does not crash, exactly once.
        assert_eq!(task.status, Status::Completed, "{task:?}");
        assert_eq!(task.agent.as_deref(), Some("b-summarizer"));
        let key = format!("output/b-summarizer/{}", task.id);
        assert_eq!(host.store().history(&key).unwrap().len(), 1);
        assert!(
            host.store()
                .read(&format!("output/a-crasher/{}", task.id), None)
                .unwrap()
                .is_none()
        );
        if task.failed_on == ["a-crasher"] {
            redelivered += 1;
            assert_eq!(task.attempts, 2);
            let applied = task.fallback_applied.unwrap();
            assert_eq!(
                (applied.reason, applied.action.as_str()),
                (FailureKind::Trap, "redeliver")
            );
        } else {
            assert_eq!(task.attempts, 1);
        }
    }
    assert!(redelivered >= 1, "the crasher never got a task: {report:?}");
}

#[tokio::test]
async fn a_task_left_running_by_a_dead_host_is_redelivered() {
    let state = tempfile::tempdir().unwrap();
    let task = {
        let host = Host::load(&research_mesh(), state.path()).unwrap();
        let submitted = host
            .submit(
                "researcher",
                "research kelp",
                Some(br#"{"topic":"kelp"}"#.to_vec()),
                vec![],
            )
            .unwrap();
        // Claimed as an activation would be, then the host "dies" before finishing it.
        let claimed = claim_oldest(&host);
        assert_eq!(claimed.id, submitted.task);
        assert_eq!(
            host.store().task(&claimed.id).unwrap().unwrap().status,
            Status::Running
        );
        claimed.id
    };

    let host = Host::load(&research_mesh(), state.path()).unwrap();
    assert_eq!(host.recovered(), 1);
    host.run_until_idle().await.unwrap();
    let t = host.store().task(&task).unwrap().unwrap();
    assert_eq!(t.status, Status::Completed);
    assert_eq!(
        t.attempts, 2,
        "claimed once by the dead host, once by this one"
    );
    let report = baton::Report::for_task(host.store(), &task)
        .unwrap()
        .unwrap();
    assert_eq!(report.status, "completed");
    assert_eq!(
        report.handoffs.len(),
        1,
        "the researcher handed off once, after recovery"
    );
}

#[tokio::test]
async fn tasks_a_dead_activation_claimed_from_its_inbox_go_back_to_the_inbox() {
    let state = tempfile::tempdir().unwrap();
    let echo_mesh = || mesh(vec![agent("echo", baton_artifacts::echo::WASM)]);
    let (first, second) = {
        let host = Host::load(&echo_mesh(), state.path()).unwrap();
        let submit = |n: i64| {
            host.submit("echo", "echo this", None, vec![int("n", n)])
                .unwrap()
                .task
        };
        let (first, second) = (submit(1), submit(2));
        // The first task's activation starts and takes the second through `check-inbox`;
        // then the host "dies" before that activation ends.
        let running = claim_oldest(&host);
        assert_eq!(running.id, first);
        let taken = pollster::block_on(host.store().claim_inbox("echo", &first, 10)).unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].id, second);
        assert_eq!(
            host.store().task(&second).unwrap().unwrap().status,
            Status::Delivered
        );
        (first, second)
    };

    // The next host redelivers the first task and gives the second back: neither is lost
    // with the activation that held them.
    let host = Host::load(&echo_mesh(), state.path()).unwrap();
    assert_eq!(host.recovered(), 1);
    assert_eq!(
        host.store().task(&second).unwrap().unwrap().status,
        Status::Pending
    );
    host.run_until_idle().await.unwrap();
    for (task, n) in [(&first, 1), (&second, 2)] {
        let report = baton::Report::for_task(host.store(), task)
            .unwrap()
            .unwrap();
        assert_eq!(report.status, "completed", "{report:?}");
        assert_eq!(report.outcome["params"]["n"], n, "{report:?}");
    }
}
