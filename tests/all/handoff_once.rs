//! Guarantee: an agent's hand-offs happen once per task. A task delivered again after its
//! activation handed off but did not finish (the worker trapped, the host died) hands off
//! again; each repeat gets the original receipt, and the callee gets one task.

use baton::Host;
use baton::store::{Fallback, Kind, NewHandoff, Pattern, Status};
use serde_json::json;

use crate::common::{agent, claim_oldest, log, research_mesh, text};

/// How often the host delivers a pull task whose worker keeps trapping.
const DELIVERIES: u32 = 3;

#[tokio::test]
async fn a_worker_that_traps_after_handing_off_hands_off_once() {
    let state = tempfile::tempdir().unwrap();
    let mut crasher = agent("crasher", baton_artifacts::crasher::WASM);
    crasher.capabilities = vec!["research".into()];
    crasher.handoff = vec!["writer".into()];
    let host = Host::load(
        &crate::common::mesh(vec![
            crasher,
            agent("writer", baton_artifacts::writer::WASM),
        ]),
        state.path(),
    )
    .unwrap();
    let data = json!({ "topic": "kelp", "findings": ["kelp: it grows fast"] });
    let submitted = host
        .submit_with(
            "capability:research",
            "research kelp",
            Some(serde_json::to_vec(&data).unwrap()),
            vec![text("hand_to", "writer")],
            Pattern::Pull,
        )
        .unwrap();
    host.run_until_idle().await.unwrap();

    // The crasher's task was delivered until its deliveries ran out, and handed off each time.
    let task = host.store().task(&submitted.task).unwrap().unwrap();
    assert_eq!(
        (task.status, task.attempts),
        (Status::Failed, DELIVERIES),
        "{task:?}"
    );
    let log = log(state.path(), "crasher");
    let receipts: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once("stdout: handed off as "))
        .map(|(_, r)| r)
        .collect();
    assert_eq!(receipts, ["h-2 (t-2)"; DELIVERIES as usize], "{log}");
    assert_eq!(
        log.matches("hand-off #0 was made by an earlier delivery of this task as h-2")
            .count(),
        DELIVERIES as usize - 1,
        "{log}"
    );

    // One hand-off, one writer task, one article.
    let report = baton::Report::for_task(host.store(), &submitted.task)
        .unwrap()
        .unwrap();
    let hops: Vec<(&str, &str, &str)> = report
        .handoffs
        .iter()
        .map(|h| (h.id.as_str(), h.from.as_str(), h.to.as_str()))
        .collect();
    assert_eq!(hops, [("h-2", "crasher", "writer")], "{report:?}");
    let writer = report.task("t-2").unwrap();
    assert_eq!((writer.status, writer.attempts), (Status::Completed, 1));
    assert_eq!(
        host.store().history("output/writer/t-2").unwrap().len(),
        1,
        "the writer wrote its article once"
    );
    assert_eq!(host.store().task("t-3").unwrap(), None, "no second task");
    let audited = host
        .store()
        .audit_log()
        .unwrap()
        .into_iter()
        .filter(|r| r.event == "handoff" && r.agent == "crasher")
        .count();
    assert_eq!(audited, 1);
}

#[tokio::test]
async fn a_task_redelivered_after_its_host_died_gets_its_original_receipt() {
    let state = tempfile::tempdir().unwrap();
    let (task, handoff) = {
        let host = Host::load(&research_mesh(), state.path()).unwrap();
        let submitted = host
            .submit(
                "researcher",
                "research kelp",
                Some(br#"{"topic":"kelp"}"#.to_vec()),
                vec![],
            )
            .unwrap();
        let claimed = claim_oldest(&host);
        assert_eq!(claimed.id, submitted.task);
        // The researcher's activation makes its first hand-off, committed as an agent's
        // hand-off is; then the host dies before the researcher's outcome is stored.
        let findings = json!({ "topic": "kelp", "findings": ["kelp: before the crash"] });
        let committed = pollster::block_on(host.store().hand_off(NewHandoff {
            from: "researcher".into(),
            parent: Some(claimed.clone()),
            to: "writer".into(),
            route: None,
            kind: Kind::Work,
            summary: "write a short article on kelp".into(),
            completed: vec![],
            outstanding: vec![],
            params: vec![],
            pattern: Pattern::Blackboard,
            data: Some(serde_json::to_vec(&findings).unwrap()),
            deadline_ms: 30_000,
            fallback: Fallback::None,
            reply: false,
            in_reply_to: None,
            pointer: None,
            inbox_depth: 1000,
            nth: Some(0),
        }))
        .unwrap()
        .unwrap();
        assert!(!committed.replayed);
        (claimed.id, committed)
    };

    let host = Host::load(&research_mesh(), state.path()).unwrap();
    assert_eq!(host.recovered(), 1);
    host.run_until_idle().await.unwrap();

    let report = baton::Report::for_task(host.store(), &task)
        .unwrap()
        .unwrap();
    assert_eq!(report.status, "completed", "{report:?}");
    let hops: Vec<&str> = report.handoffs.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(
        hops,
        [handoff.handoff.id.as_str()],
        "the rerun's hand-off is the one committed before the crash: {report:?}"
    );
    let researcher = crate::common::outcome(&host, &report, "researcher");
    assert_eq!(researcher["task"], handoff.task.as_str());
    assert_eq!(researcher["handoff"], handoff.handoff.id.as_str());
    // The writer ran once, on what was handed off before the crash.
    let article = crate::common::outcome(&host, &report, "writer");
    assert_eq!(article["article"], "On kelp: before the crash.");
    assert_eq!(report.tasks.len(), 2, "{report:?}");
    assert!(
        log(state.path(), "researcher").contains("was made by an earlier delivery"),
        "{}",
        log(state.path(), "researcher")
    );
}
