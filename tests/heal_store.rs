//! Healing's action records on both stores (SQLite in a temp directory, DynamoDB on moto): the
//! intent is a conditional insert (the second writer of a key is told so and reads the stored
//! record), outcomes update it, unfinished records are what a restart resumes.

use crate::incidents_store::dynamo;
use crate::support::moto::Moto;
use selfheal_aggregator::store::sqlite::SqliteStore;
use selfheal_aggregator::store::{
    ActionRecord, ActionStore, RecordedOutcome, RecordedVerification, efficacy,
};
use selfheal_core::action::{
    Action, ActionOutcome, ActionRequest, ObjectVersion, Target, WorkloadKind,
};
use selfheal_core::incident::IncidentId;

fn record(incident: &str, step: u32, at_ms: i64) -> ActionRecord {
    let request_id = format!("{incident}/{step}");
    ActionRecord {
        request_id: request_id.clone(),
        incident: IncidentId(incident.into()),
        step,
        playbook: "scale_out".into(),
        executor: "dry-run".into(),
        dry_run: true,
        request: ActionRequest {
            request_id,
            target: Target {
                namespace: "shop".into(),
                kind: WorkloadKind::Deployment,
                name: "checkout".into(),
            },
            expect: ObjectVersion {
                uid: "u".into(),
                resource_version: "1".into(),
            },
            action: Action::Scale { from: 2, to: 3 },
        },
        intent_at_ms: at_ms,
        attempts: 0,
        outcome: None,
        verification: None,
        restore: None,
    }
}

async fn suite<S: ActionStore>(s: &S) {
    let a = record("0000000000010000aaaa", 1, 1_000);
    assert!(s.insert_intent(&a).await.expect("insert"), "first writer");
    let mut other = a.clone();
    other.executor = "another replica".into();
    assert!(
        !s.insert_intent(&other).await.expect("insert again"),
        "second writer refused"
    );
    let stored = s.action(&a.request_id).await.expect("get").expect("there");
    assert_eq!(stored.executor, "dry-run", "the first intent stands");
    let b = record("0000000000020000bbbb", 1, 2_000);
    assert!(s.insert_intent(&b).await.expect("insert b"));
    let unfinished: Vec<String> = s
        .unfinished_actions()
        .await
        .expect("unfinished")
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    assert_eq!(unfinished, vec![a.request_id.clone(), b.request_id.clone()]);
    let mut done = a.clone();
    done.outcome = Some(RecordedOutcome {
        at_ms: 1_100,
        result: Ok(ActionOutcome {
            already_applied: false,
            dry_run: true,
            version_after: None,
            detail: "recorded".into(),
        }),
    });
    done.verification = Some(RecordedVerification {
        at_ms: 5_000,
        healed: Some(true),
        detail: "quiet".into(),
    });
    s.update_action(&done).await.expect("update");
    let unfinished = s.unfinished_actions().await.expect("unfinished");
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0].request_id, b.request_id);
    assert_eq!(s.actions_since(1_500).await.expect("since").len(), 1);
    let of_a = s.actions_of(&a.incident).await.expect("of");
    assert_eq!(of_a, vec![done.clone()]);
    let all = s.actions_since(0).await.expect("all");
    assert_eq!(efficacy(&all)["scale_out"].share(), Some(1.0));
}

#[test]
fn action_records_keep_the_same_promises_on_sqlite_and_dynamodb() {
    let rt = crate::incidents::runtime();
    let dir = tempfile::tempdir().expect("dir");
    rt.block_on(async {
        let sqlite = SqliteStore::open(dir.path()).await.expect("sqlite");
        suite(&sqlite).await;
    });
    let moto = Moto::start();
    rt.block_on(async {
        let d = dynamo(&moto).await;
        suite(&d).await;
    });
}
