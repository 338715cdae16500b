//! The incident store suite: one generic function per behaviour, run against the SQLite store
//! (a temp directory) and the DynamoDB store (a moto server), so both keep the same promises.

use crate::support::moto::Moto;
use selfheal_aggregator::incident::Update;
use selfheal_aggregator::incident::dedup::SeenId;
use selfheal_aggregator::store::dynamodb::DynamoStore;
use selfheal_aggregator::store::sqlite::SqliteStore;
use selfheal_aggregator::store::{IncidentStore, Query};
use selfheal_core::incident::{
    Actor, Event, EventKind, Incident, IncidentId, Labels, Scope, Severity, Silence, State,
};
use selfheal_core::{Family, RecordId};

const T0: i64 = 1_764_000_000_000;
const H: i64 = 3_600_000;

fn incident(n: i64, ns: &str, workload: &str, family: Family) -> (Incident, Event) {
    let key = format!("workload={ns}/{workload},family={family}");
    let labels = Labels::from([
        ("namespace".to_owned(), ns.to_owned()),
        ("workload".to_owned(), workload.to_owned()),
        ("family".to_owned(), family.to_string()),
        ("scope".to_owned(), "pod".to_owned()),
    ]);
    let (mut i, ev) = Incident::open(
        key,
        labels,
        Scope::Pod,
        family,
        format!("{ns}/{workload}"),
        T0 + n * 1000,
        T0 + n * 1000 + 30_000,
    );
    i.first_seen_ms = T0 + n * 1000;
    i.last_seen_ms = T0 + n * 1000 + 500;
    i.anomaly_count = n as u64 + 1;
    (i, ev)
}

fn silence(id: &str, ends: i64) -> Silence {
    Silence {
        id: id.into(),
        matchers: vec!["namespace=shop".parse().expect("matcher")],
        starts_at_ms: T0,
        ends_at_ms: ends,
        created_by: "ana".into(),
        comment: "deploy".into(),
        created_at_ms: T0,
        expired_by: None,
    }
}

fn seen(n: u128, bucket_ms: i64) -> SeenId {
    SeenId {
        bucket_ms,
        id: RecordId::from_u128(n),
    }
}

async fn round_trip_restores_active_incidents_silences_and_seen_ids<S: IncidentStore>(s: &S) {
    let (a, ea) = incident(1, "shop", "Deployment/checkout", Family::Cpu);
    let (mut b, eb) = incident(2, "shop", "Deployment/cart", Family::Memory);
    let resolved = b
        .transition(State::Resolved, T0 + 5000, "done", Actor::System)
        .expect("resolve");
    let up = Update {
        incidents: vec![a.clone(), b.clone()],
        events: vec![ea, eb, resolved],
        seen: (0..300).map(|n| seen(n, T0)).collect(),
        silences: vec![silence("s1", T0 + H), silence("s0", T0 - H)],
    };
    s.apply(&up).await.expect("apply");
    // Replaying the same update (a retry after an unknown outcome) changes nothing.
    s.apply(&up).await.expect("apply again");
    let snap = s.load(T0, T0).await.expect("load");
    assert_eq!(
        snap.active,
        vec![a.clone()],
        "only the unresolved incident is active"
    );
    assert_eq!(
        snap.silences.len(),
        1,
        "the silence that ended before is not loaded"
    );
    assert_eq!(snap.silences[0].id, "s1");
    assert_eq!(snap.seen.len(), 300);
    assert_eq!(s.get(&b.id).await.expect("get"), Some(b.clone()));
    assert_eq!(
        s.get(&IncidentId("00000000000000000000".into()))
            .await
            .expect("get missing"),
        None
    );
    let later = s.load(T0 + 1, T0).await.expect("load later");
    assert!(
        later.seen.is_empty(),
        "buckets before the horizon are not loaded"
    );
}

async fn list_filters_and_pages_newest_first<S: IncidentStore>(s: &S) {
    let mut incidents = Vec::new();
    let mut events = Vec::new();
    for n in 0..25 {
        let (ns, w, f) = match n % 3 {
            0 => ("shop", "Deployment/checkout", Family::Cpu),
            1 => ("shop", "Deployment/cart", Family::Memory),
            _ => ("pay", "StatefulSet/ledger", Family::Cpu),
        };
        let (mut i, e) = incident(n, ns, w, f);
        if n % 5 == 0 {
            i.severity = Severity::Critical;
        }
        if n % 4 == 0 {
            let ev = i
                .transition(
                    State::Acknowledged,
                    T0 + n * 1000 + 1,
                    "mine",
                    Actor::Person("bo".into()),
                )
                .expect("ack");
            events.push(ev);
        }
        incidents.push(i);
        events.push(e);
    }
    s.apply(&Update {
        incidents: incidents.clone(),
        events,
        ..Update::default()
    })
    .await
    .expect("apply");
    // Pages of 10, newest first, every incident once.
    let mut got = Vec::new();
    let mut q = Query {
        limit: 10,
        ..Query::default()
    };
    loop {
        let page = s.list(&q).await.expect("list");
        assert!(page.incidents.len() <= 10);
        got.extend(page.incidents.iter().map(|i| i.id.clone()));
        match page.next {
            Some(n) => q.after = Some(n),
            None => break,
        }
    }
    let mut want: Vec<IncidentId> = incidents.iter().map(|i| i.id.clone()).collect();
    want.sort();
    want.reverse();
    assert_eq!(got, want);
    let count = |q: Query| async move {
        s.list(&Query { limit: 100, ..q })
            .await
            .expect("list")
            .incidents
    };
    let shop_cpu = count(Query {
        namespace: Some("shop".into()),
        family: Some(Family::Cpu),
        ..Query::default()
    })
    .await;
    assert_eq!(shop_cpu.len(), 9);
    assert!(
        shop_cpu
            .iter()
            .all(|i| i.labels["workload"] == "Deployment/checkout")
    );
    let acked = count(Query {
        states: vec![State::Acknowledged],
        ..Query::default()
    })
    .await;
    assert_eq!(acked.len(), 7);
    let critical_open = count(Query {
        states: vec![State::Open],
        severities: vec![Severity::Critical],
        ..Query::default()
    })
    .await;
    assert!(
        critical_open
            .iter()
            .all(|i| i.severity == Severity::Critical && i.state == State::Open)
    );
    assert_eq!(
        critical_open.len(),
        3,
        "5, 10, 15 (0 and 20 are acknowledged)"
    );
    let ledger = count(Query {
        workload: Some("StatefulSet/ledger".into()),
        ..Query::default()
    })
    .await;
    assert_eq!(ledger.len(), 8);
    let window = count(Query {
        since_ms: Some(T0 + 10_000),
        until_ms: Some(T0 + 14_000),
        ..Query::default()
    })
    .await;
    assert_eq!(window.len(), 5, "incidents 10..=14 overlap the range");
    let counts = s.counts().await.expect("counts");
    assert_eq!(counts.by_state.get(&State::Acknowledged), Some(&7));
    assert_eq!(counts.by_state.get(&State::Open), Some(&18));
    assert_eq!(counts.by_severity.get(&Severity::Critical), Some(&5));
}

async fn timelines_come_back_in_order_from_a_seq<S: IncidentStore>(s: &S) {
    let (mut i, opened) = incident(1, "shop", "Deployment/checkout", Family::Cpu);
    let mut events = vec![opened];
    for n in 0..150u64 {
        events.push(i.event(
            T0 + n as i64,
            EventKind::Anomalies {
                added: n,
                pods: 1,
                nodes: 1,
                peak_score: 0.9,
                threshold: 0.6,
            },
            "batch",
            Actor::System,
        ));
    }
    // More than one DynamoDB transaction's worth of items in one update.
    s.apply(&Update {
        incidents: vec![i.clone()],
        events: events.clone(),
        seen: (0..2_000).map(|n| seen(n, T0)).collect(),
        ..Update::default()
    })
    .await
    .expect("apply");
    let all = s.events(&i.id, 0, 1_000).await.expect("events");
    assert_eq!(all, events);
    let tail = s.events(&i.id, 140, 5).await.expect("tail");
    assert_eq!(
        tail.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![140, 141, 142, 143, 144]
    );
    assert_eq!(s.load(T0, T0).await.expect("load").seen.len(), 2_000);
}

async fn prune_removes_what_retention_and_the_window_let_go<S: IncidentStore>(s: &S) {
    let (mut old, e1) = incident(1, "shop", "Deployment/a", Family::Cpu);
    let r1 = old
        .transition(State::Resolved, T0 + 10_000, "done", Actor::System)
        .expect("resolve");
    let (mut recent, e2) = incident(2, "shop", "Deployment/b", Family::Cpu);
    let r2 = recent
        .transition(State::Resolved, T0 + 5 * H, "done", Actor::System)
        .expect("resolve");
    let (active, e3) = incident(3, "shop", "Deployment/c", Family::Cpu);
    s.apply(&Update {
        incidents: vec![old.clone(), recent.clone(), active.clone()],
        events: vec![e1, r1, e2, r2, e3],
        seen: vec![seen(1, T0), seen(2, T0 + H), seen(3, T0 + 2 * H)],
        silences: vec![silence("gone", T0 + H), silence("kept", T0 + 10 * H)],
    })
    .await
    .expect("apply");
    let p = s.prune(T0 + 2 * H, T0 + H).await.expect("prune");
    assert_eq!((p.incidents, p.silences, p.seen_ids), (1, 1, 1));
    assert_eq!(s.get(&old.id).await.expect("get"), None);
    assert!(s.events(&old.id, 0, 10).await.expect("events").is_empty());
    assert_eq!(s.get(&recent.id).await.expect("get"), Some(recent.clone()));
    assert_eq!(s.get(&active.id).await.expect("get"), Some(active.clone()));
    let ids: Vec<String> = s
        .silences()
        .await
        .expect("silences")
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(ids, vec!["kept".to_owned()]);
    assert_eq!(s.load(0, 0).await.expect("load").seen.len(), 2);
}

async fn an_incident_update_replaces_the_document<S: IncidentStore>(s: &S) {
    let (mut i, e) = incident(1, "shop", "Deployment/a", Family::Cpu);
    s.apply(&Update {
        incidents: vec![i.clone()],
        events: vec![e],
        ..Update::default()
    })
    .await
    .expect("apply");
    i.anomaly_count = 999;
    i.severity = Severity::Warning;
    let ev = i
        .transition(
            State::Acknowledged,
            T0 + 9,
            "mine",
            Actor::Person("ana".into()),
        )
        .expect("ack");
    s.apply(&Update {
        incidents: vec![i.clone()],
        events: vec![ev],
        ..Update::default()
    })
    .await
    .expect("apply");
    assert_eq!(s.get(&i.id).await.expect("get"), Some(i.clone()));
    let q = Query {
        states: vec![State::Acknowledged],
        severities: vec![Severity::Warning],
        limit: 10,
        ..Query::default()
    };
    assert_eq!(s.list(&q).await.expect("list").incidents, vec![i]);
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let dir = tempfile::tempdir().expect("tmp");
                    let s = super::SqliteStore::open(dir.path()).await.expect("open sqlite");
                    super::$case(&s).await;
                }
            )*
        }
        mod dynamodb {
            $(
                #[tokio::test]
                async fn $case() {
                    let moto = super::Moto::start();
                    let s = super::dynamo(&moto).await;
                    super::$case(&s).await;
                }
            )*
        }
    };
}

pub(crate) async fn dynamo(moto: &Moto) -> DynamoStore {
    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
    let conf = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(moto.endpoint())
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .build();
    DynamoStore::open(aws_sdk_dynamodb::Client::from_conf(conf), "incidents")
        .await
        .expect("open dynamodb store")
}

suite!(
    round_trip_restores_active_incidents_silences_and_seen_ids,
    list_filters_and_pages_newest_first,
    timelines_come_back_in_order_from_a_seq,
    prune_removes_what_retention_and_the_window_let_go,
    an_incident_update_replaces_the_document,
);
