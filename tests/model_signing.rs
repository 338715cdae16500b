//! Signed and bounded models (issue 11, item 2): the agent's registry and poller with model
//! keys configured and without, on model directories published by `selfheal_model_export`;
//! a graph whose `n_targets` would size a 1 TiB allocation, loaded in a child process whose
//! address space is bounded so an abort would show; and the S3 mirror against a loopback
//! server that sends a model without `Content-Length`.

use crate::support::forest::{self, Rng, dataset, grow_forest};
use crate::support::moto::s3_client;
use futures_util::StreamExt as _;
use prometheus_client::registry::Registry;
use selfheal_agent::config::AgentConfig;
use selfheal_agent::detect::{
    DetectError, ModelEvent, ModelRegistry, ModelsConfig, SeriesDetector, family_signals,
};
use selfheal_agent::models::mirror::{MirrorError, S3Mirror};
use selfheal_agent::models::poller::ModelPoller;
use selfheal_agent::score::{ScoreError, Scorer};
use selfheal_core::Family;
use selfheal_core::features::FeatureSpec;
use selfheal_core::model::{AlarmRule, MANIFEST_FILE, MODEL_FILE, ModelManifest};
use selfheal_core::signature::{SIGNATURE_FILE, SigningKey, VerifyingKey, verifying_key_text};
use selfheal_core::store::S3Store;
use selfheal_model_export::onnx::{sha256_hex, write_model_dir, write_set_dir};
use selfheal_model_export::publish::{Signing, publish};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn publisher_key() -> SigningKey {
    SigningKey::from_bytes(&[11; 32])
}

fn keys() -> Arc<[VerifyingKey]> {
    Arc::from(vec![publisher_key().verifying_key()])
}

/// A node CPU model directory `<root>/src-<version>` (value features over the cpu metrics,
/// `windows` if any).
fn cpu_model(root: &Path, version: &str, windows: Vec<usize>) -> PathBuf {
    let signals = family_signals(Family::Cpu);
    let mut spec = FeatureSpec::raw(signals.clone());
    spec.windows = windows;
    spec.mean = !spec.windows.is_empty();
    let mut rng = Rng::new(3);
    let n = spec.len();
    let train = dataset(&mut rng, 512, n);
    let forest = grow_forest(&mut rng, &train, n, 10, 64);
    let manifest = forest::manifest(
        &forest,
        spec,
        Family::Cpu.as_str(),
        version,
        0.6,
        AlarmRule::default(),
    );
    let dir = root.join(format!("src-{version}"));
    write_model_dir(&dir, &forest, manifest).expect("write model dir");
    dir
}

fn signing(rollback: bool) -> Signing {
    Signing {
        key: publisher_key(),
        rollback,
    }
}

fn read_manifest(dir: &Path) -> ModelManifest {
    serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).expect("read")).expect("json")
}

/// The one refusal in `events`.
fn refusal(events: &[ModelEvent]) -> &DetectError {
    match events {
        [ModelEvent::Refused { error, .. }] => error,
        other => panic!("expected one refusal, got {other:?}"),
    }
}

fn loaded_version(events: &[ModelEvent]) -> String {
    match events {
        [ModelEvent::Loaded { scorer, .. }] => scorer.manifest().version.clone(),
        other => panic!("expected one load, got {other:?}"),
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[test]
fn a_manifest_edited_to_threshold_1e300_with_a_recomputed_checksum_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let src = cpu_model(tmp.path(), "v1", vec![]);
    let dest = publish(&src, &store, Some(&signing(false))).expect("signed publish");
    assert!(dest.join(SIGNATURE_FILE).is_file());
    let mut registry = ModelRegistry::with_keys(store.clone(), keys());
    assert_eq!(loaded_version(&registry.poll()), "v1");

    // The bucket's writer edits the threshold (1e300 silences the family) and, to pass the
    // checksum too, swaps in another graph and recomputes `model_sha256` for it.
    let other = cpu_model(tmp.path(), "other", vec![]);
    let model = std::fs::read(other.join(MODEL_FILE)).expect("read");
    let mut manifest = read_manifest(&dest);
    manifest.threshold = 1e300;
    manifest.model_sha256 = sha256_hex(&model);
    std::fs::write(dest.join(MODEL_FILE), &model).expect("write model");
    std::fs::write(
        dest.join(MANIFEST_FILE),
        serde_json::to_vec_pretty(&manifest).expect("json"),
    )
    .expect("write manifest");
    let events = registry.poll();
    let error = refusal(&events);
    assert_eq!(error.reason(), "bad_signature", "{}", chain(error));
    assert!(
        chain(error).contains("does not verify"),
        "the log says why: {}",
        chain(error)
    );

    // The threshold alone edited, the model left as signed: refused the same way.
    let src2 = cpu_model(tmp.path(), "v2", vec![]);
    let dest2 = publish(&src2, &store, Some(&signing(false))).expect("publish v2");
    let mut registry = ModelRegistry::with_keys(store.clone(), keys());
    assert_eq!(loaded_version(&registry.poll()), "v2");
    let text = std::fs::read_to_string(dest2.join(MANIFEST_FILE)).expect("read");
    let silenced = text.replace("\"threshold\": 0.6", "\"threshold\": 1e300");
    assert_ne!(silenced, text);
    std::fs::write(dest2.join(MANIFEST_FILE), silenced).expect("write");
    assert_eq!(refusal(&registry.poll()).reason(), "bad_signature");

    // With no key configured, the bounds still refuse a threshold outside the score range.
    let mut unkeyed = ModelRegistry::new(store);
    let events = unkeyed.poll();
    let error = refusal(&events);
    assert_eq!(error.reason(), "bounds", "{}", chain(error));
    assert!(chain(error).contains("`threshold`"), "{}", chain(error));
}

#[test]
fn an_unsigned_model_is_refused_where_a_key_is_configured_and_loads_with_a_warning_where_none_is() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let src = cpu_model(tmp.path(), "v1", vec![]);
    publish(&src, &store, None).expect("unsigned publish");
    let mut keyed = ModelRegistry::with_keys(store.clone(), keys());
    let events = keyed.poll();
    let error = refusal(&events);
    assert_eq!(error.reason(), "unsigned", "{}", chain(error));
    assert!(chain(error).contains(SIGNATURE_FILE), "{}", chain(error));
    // Not retried until the files change; signing it (a new signature.json) loads it.
    assert!(keyed.poll().is_empty());
    publish(&src, &store, Some(&signing(false))).expect("sign the published version");
    assert_eq!(loaded_version(&keyed.poll()), "v1");

    // Signed by another key: refused, naming the key.
    let other = Signing {
        key: SigningKey::from_bytes(&[12; 32]),
        rollback: false,
    };
    let src2 = cpu_model(tmp.path(), "v2", vec![]);
    publish(&src2, &store, Some(&other)).expect("publish with another key");
    assert_eq!(refusal(&keyed.poll()).reason(), "unknown_key");

    // No key configured: the same unsigned model loads (existing setups keep working).
    let plain = tmp.path().join("plain");
    publish(&src, &plain, None).expect("unsigned publish");
    assert_eq!(loaded_version(&ModelRegistry::new(plain).poll()), "v1");
}

#[test]
fn an_older_version_needs_a_signed_rollback() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let v1 = cpu_model(tmp.path(), "v1", vec![]);
    let v2 = cpu_model(tmp.path(), "v2", vec![]);
    publish(&v1, &store, Some(&signing(false))).expect("v1");
    let mut registry = ModelRegistry::with_keys(store.clone(), keys());
    assert_eq!(loaded_version(&registry.poll()), "v1");
    std::thread::sleep(std::time::Duration::from_millis(5));
    publish(&v2, &store, Some(&signing(false))).expect("v2");
    assert_eq!(loaded_version(&registry.poll()), "v2");
    // `latest` pointed back at v1 with its old signature: a replay, refused.
    std::fs::write(store.join("cpu/latest"), "v1\n").expect("point latest back");
    let events = registry.poll();
    assert_eq!(refusal(&events).reason(), "stale_signature");
    // Re-signed without saying rollback: the publisher refuses (agents would)...
    std::fs::write(store.join("cpu/latest"), "v2\n").expect("latest back to v2");
    let err = publish(&v1, &store, Some(&signing(false))).expect_err("an unsigned rollback");
    assert!(err.to_string().contains("--rollback"), "{err}");
    // ...and so does the agent, to a signature made around the publisher's check.
    let sig_path = store.join("cpu/v1").join(SIGNATURE_FILE);
    let old = std::fs::read(&sig_path).expect("v1's signature");
    let resigned = signing(false).sign_dir(&v1, Some(&old)).expect("re-sign");
    std::fs::write(&sig_path, resigned).expect("write");
    std::fs::write(store.join("cpu/latest"), "v1\n").expect("point latest back");
    assert_eq!(refusal(&registry.poll()).reason(), "unsigned_rollback");
    // Signed as a rollback: accepted.
    publish(&v1, &store, Some(&signing(true))).expect("signed rollback to v1");
    assert_eq!(loaded_version(&registry.poll()), "v1");
}

#[test]
fn windows_of_10_to_the_12_are_refused_with_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = cpu_model(tmp.path(), "v1", vec![12]);
    // Same feature count, so only the bounds can tell: a window of 10^12 samples would size
    // every series' rolling buffers at the first cycle.
    let mut manifest = read_manifest(&src);
    manifest.features.windows = vec![1_000_000_000_000];
    std::fs::write(
        src.join(MANIFEST_FILE),
        serde_json::to_vec(&manifest).expect("json"),
    )
    .expect("write manifest");
    let err = Scorer::load(&src).expect_err("refused");
    assert!(matches!(err, ScoreError::Bounds(_)), "{err:?}");
    assert!(
        chain(&err).contains("features.windows") && chain(&err).contains("1000000000000"),
        "{}",
        chain(&err)
    );
    let family_dir = tmp.path().join("models/cpu");
    std::fs::create_dir_all(family_dir.parent().expect("parent")).expect("mkdir");
    std::fs::rename(&src, &family_dir).expect("move");
    let events = ModelRegistry::new(tmp.path().join("models")).poll();
    assert_eq!(refusal(&events).reason(), "bounds");
}

/// The environment variable that turns [`bounded_child_loads_the_model`] on, naming the
/// model directory to load.
const CHILD_MODEL: &str = "SELFHEAL_TEST_BOUNDED_MODEL";
/// Address space the child gets: far below the 1 TiB `n_targets = 2^40` would size.
const CHILD_ADDRESS_SPACE: u64 = 4 << 30;

/// Runs this test binary's [`bounded_child_loads_the_model`] under `prlimit --as`.
fn run_bounded_child(mode: &str, dir: &Path) -> std::process::Output {
    let exe = std::env::current_exe().expect("test binary");
    std::process::Command::new("prlimit")
        .arg(format!("--as={CHILD_ADDRESS_SPACE}"))
        .arg(exe)
        .args([
            "--exact",
            "model_signing::bounded_child_loads_the_model",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_MODEL, dir)
        .env("SELFHEAL_TEST_BOUNDED_MODE", mode)
        .output()
        .expect("run prlimit (util-linux)")
}

/// In a child started by [`run_bounded_child`]: loads the model and reports the error, or
/// (mode `alloc`, the control) allocates what the bounds prevent. Does nothing otherwise.
#[test]
fn bounded_child_loads_the_model() {
    let Some(dir) = std::env::var_os(CHILD_MODEL) else {
        return;
    };
    if std::env::var("SELFHEAL_TEST_BOUNDED_MODE").as_deref() == Ok("alloc") {
        let n: usize = std::hint::black_box(1 << 40);
        let huge = vec![false; n];
        println!("CHILD_ALLOCATED {}", huge.len());
        return;
    }
    match Scorer::load(Path::new(&dir)) {
        Ok(_) => println!("CHILD_LOADED"),
        Err(e) => println!("CHILD_REFUSED {}", chain(&e)),
    }
}

#[test]
fn n_targets_of_2_pow_40_is_an_error_not_an_abort() {
    use prost::Message;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("model");
    let (set, manifest) = forest::forest_set(5, 4, 2, 5);
    let manifest = write_set_dir(&dir, &set, manifest).expect("write set dir");
    let path = dir.join(MODEL_FILE);
    let mut model =
        tract_onnx::pb::ModelProto::decode(std::fs::read(&path).expect("read model").as_slice())
            .expect("decode");
    let graph = model.graph.as_mut().expect("graph");
    let ensemble = graph
        .node
        .iter_mut()
        .find(|n| n.op_type == "TreeEnsembleRegressor")
        .expect("the per-signal graph has a regressor");
    let n_targets = ensemble
        .attribute
        .iter_mut()
        .find(|a| a.name == "n_targets")
        .expect("n_targets");
    assert_eq!(n_targets.i, 4);
    n_targets.i = 1 << 40;
    let bytes = model.encode_to_vec();
    std::fs::write(&path, &bytes).expect("write model");
    let mut manifest = manifest;
    manifest.model_sha256 = sha256_hex(&bytes);
    std::fs::write(
        dir.join(MANIFEST_FILE),
        serde_json::to_vec(&manifest).expect("json"),
    )
    .expect("write manifest");

    // The control: what the bound prevents, allocated under the same limit, aborts the child.
    let control = run_bounded_child("alloc", &dir);
    assert!(
        !control.status.success()
            && !String::from_utf8_lossy(&control.stdout).contains("CHILD_ALLOCATED"),
        "a 1 TiB allocation must fail under a {CHILD_ADDRESS_SPACE}-byte address space: {:?}",
        control.status
    );
    let out = run_bounded_child("load", &dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the child must exit normally, not abort: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The harness prints the test's name on the same line.
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("CHILD_").map(|(_, rest)| rest))
        .unwrap_or_default();
    assert!(
        line.starts_with("REFUSED") && line.contains("n_targets 1099511627776 is not in 1..=256"),
        "{stdout}"
    );
    // In this process too, as the agent sees it.
    let err = Scorer::load(&dir).expect_err("refused");
    assert_eq!(err.reason(), "onnx", "{}", chain(&err));
}

/// A loopback "S3" that serves `latest` = `v1` for cpu, and `model.onnx` as `model_bytes`
/// bytes without `Content-Length` (chunked; `None`: a body that never ends). Counts the bytes
/// it produced.
async fn chunked_s3(
    model_bytes: Option<usize>,
    produced: Arc<std::sync::atomic::AtomicUsize>,
) -> String {
    use axum::body::Body;
    use axum::extract::Path as UrlPath;
    use axum::response::Response;
    use std::sync::atomic::Ordering;
    let app = axum::Router::new().route(
        "/{bucket}/{*key}",
        axum::routing::get(move |UrlPath((_, key)): UrlPath<(String, String)>| {
            let produced = produced.clone();
            async move {
                if key.ends_with("/cpu/latest") {
                    return Response::new(Body::from("v1\n"));
                }
                if !key.ends_with(&format!("cpu/v1/{MODEL_FILE}")) {
                    return Response::builder()
                        .status(404)
                        .body(Body::from(
                            "<Error><Code>NoSuchKey</Code><Message>none</Message></Error>",
                        ))
                        .expect("response");
                }
                const CHUNK: usize = 64 * 1024;
                let chunks = model_bytes.map_or(usize::MAX, |n| n.div_ceil(CHUNK));
                let stream = futures_util::stream::iter(0..chunks).map(move |_| {
                    produced.fetch_add(CHUNK, Ordering::Relaxed);
                    Ok::<_, std::io::Error>(vec![0x42u8; CHUNK])
                });
                Response::new(Body::from_stream(stream))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mib_model_served_without_content_length_is_refused() {
    use std::sync::atomic::Ordering;
    for model_bytes in [Some(20 << 20), None] {
        let produced = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let endpoint = chunked_s3(model_bytes, produced.clone()).await;
        let cache = tempfile::tempdir().expect("tempdir");
        let store = S3Store::parse("s3://models/fleet")
            .expect("url")
            .expect("s3");
        let mut mirror = S3Mirror::new(s3_client(&endpoint), store, cache.path().to_owned());
        let report = tokio::time::timeout(std::time::Duration::from_secs(60), mirror.sync())
            .await
            .expect("the sync ends: the download stops at the bound");
        let refused: Vec<&MirrorError> = report
            .errors
            .iter()
            .filter(|(f, _)| *f == Family::Cpu)
            .map(|(_, e)| e)
            .collect();
        assert!(
            matches!(refused[..], [MirrorError::TooLarge { max, key, .. }]
                if *max == 16 << 20 && key.ends_with(MODEL_FILE)),
            "{model_bytes:?}: {:?}",
            report.errors
        );
        assert!(report.downloaded.is_empty());
        assert!(
            !cache.path().join("cpu/v1").exists() && !cache.path().join("cpu/latest").exists(),
            "nothing of the refused version reaches the cache"
        );
        if model_bytes.is_none() {
            // A body that never ends was read only a little past the bound.
            let sent = produced.load(Ordering::Relaxed);
            assert!(sent < 64 << 20, "{sent} bytes produced for a 16 MiB bound");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_counted_by_reason_on_metrics() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let src = cpu_model(tmp.path(), "v1", vec![]);
    publish(&src, &store, None).expect("unsigned publish");
    let config = AgentConfig {
        models: ModelsConfig {
            source: Some(store.display().to_string()),
            public_keys: vec![verifying_key_text(&publisher_key().verifying_key())],
            cache_dir: tmp.path().join("cache"),
            poll_secs: 0.1,
            ..ModelsConfig::default()
        },
        ..AgentConfig::default()
    };
    let settings = config.validate().expect("valid config");
    let mut registry = Registry::with_prefix("selfheal_agent");
    let mut poller = ModelPoller::new(&settings, &mut registry).await;
    let mut detector = SeriesDetector::new(0);
    poller.between_cycles(&mut detector, true).await;
    assert!(detector.model(Family::Cpu).is_none(), "unsigned: refused");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(
        text.contains(r#"selfheal_agent_model_refused_total{family="cpu",reason="unsigned"} 1"#),
        "{text}"
    );
    // A signed v2 loads, and its signature is kept for the next start.
    let v2 = cpu_model(tmp.path(), "v2", vec![]);
    publish(&v2, &store, Some(&signing(false))).expect("signed publish");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    poller.between_cycles(&mut detector, true).await;
    let model = detector.model(Family::Cpu).expect("signed: loaded");
    assert_eq!(model.manifest().version, "v2");
    let state = tmp
        .path()
        .join("cache")
        .join(selfheal_agent::models::poller::MODEL_STATE_FILE);
    assert!(state.is_file(), "signatures kept across restarts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_s3_publish_is_mirrored_with_its_signature_and_a_rollback_resigns_it() {
    use crate::support::moto::{Moto, create_bucket, get_object};
    use selfheal_model_export::publish::s3;
    let moto = Moto::start();
    let client = s3_client(&moto.endpoint());
    create_bucket(&client, "models").await;
    let store = S3Store::parse("s3://models/fleet")
        .expect("url")
        .expect("s3");
    let tmp = tempfile::tempdir().expect("tempdir");
    let v1 = cpu_model(tmp.path(), "v1", vec![]);
    let v2 = cpu_model(tmp.path(), "v2", vec![]);
    s3::publish(&client, &v1, &store, Some(&signing(false)))
        .await
        .expect("signed publish v1");
    let sig_key = store.file_key("cpu", "v1", SIGNATURE_FILE);
    let first = get_object(&client, "models", &sig_key)
        .await
        .expect("signature.json uploaded");
    let cache = tmp.path().join("cache");
    std::fs::create_dir_all(&cache).expect("mkdir");
    let mut mirror = S3Mirror::new(client.clone(), store.clone(), cache.clone());
    let mut registry = ModelRegistry::with_keys(cache.clone(), keys());
    assert!(mirror.sync().await.errors.is_empty());
    assert_eq!(loaded_version(&registry.poll()), "v1");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    s3::publish(&client, &v2, &store, Some(&signing(false)))
        .await
        .expect("signed publish v2");
    assert!(mirror.sync().await.errors.is_empty());
    assert_eq!(loaded_version(&registry.poll()), "v2");
    // Back to v1 as a signed rollback: only its signature object changes, and the mirror,
    // which pruned v1, fetches it again with the new signature.
    s3::publish(&client, &v1, &store, Some(&signing(true)))
        .await
        .expect("rollback to v1");
    let second = get_object(&client, "models", &sig_key)
        .await
        .expect("signature.json");
    assert_ne!(first, second, "re-signed");
    assert!(mirror.sync().await.errors.is_empty());
    assert_eq!(loaded_version(&registry.poll()), "v1");
    // An unsigned v3 written into the bucket is mirrored and refused.
    let v3 = cpu_model(tmp.path(), "v3", vec![]);
    s3::publish(&client, &v3, &store, None)
        .await
        .expect("unsigned publish");
    assert!(mirror.sync().await.errors.is_empty());
    assert_eq!(refusal(&registry.poll()).reason(), "unsigned");
}

#[test]
fn a_restarted_agent_still_refuses_a_replay() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let state = tmp.path().join("cache/.model-signatures.json");
    std::fs::create_dir_all(state.parent().expect("parent")).expect("mkdir");
    let v1 = cpu_model(tmp.path(), "v1", vec![]);
    let v2 = cpu_model(tmp.path(), "v2", vec![]);
    publish(&v1, &store, Some(&signing(false))).expect("v1");
    std::thread::sleep(std::time::Duration::from_millis(5));
    publish(&v2, &store, Some(&signing(false))).expect("v2");
    let agent = || ModelRegistry::with_keys(store.clone(), keys()).with_state(state.clone());
    assert_eq!(loaded_version(&agent().poll()), "v2");
    // The agent restarts while `latest` is pointed back at v1's old signature: still a replay.
    std::fs::write(store.join("cpu/latest"), "v1\n").expect("point latest back");
    assert_eq!(refusal(&agent().poll()).reason(), "stale_signature");
    // Without the state (a new pod), the first validly signed model is accepted.
    assert_eq!(
        loaded_version(&ModelRegistry::with_keys(store.clone(), keys()).poll()),
        "v1"
    );
    // A damaged state file is ignored with a warning, not a crash.
    std::fs::write(&state, b"{not json").expect("damage");
    assert_eq!(loaded_version(&agent().poll()), "v1");
}

#[test]
fn keygen_sign_and_publish_through_the_binary() {
    use crate::support::{selfheal, stdout_of};
    use selfheal_core::signature::parse_verifying_key;
    let tmp = tempfile::tempdir().expect("tempdir");
    let keys_dir = tmp.path().join("keys");
    let public = stdout_of(selfheal().args(["model", "keygen", "--out"]).arg(&keys_dir));
    let public = PathBuf::from(public.trim());
    let key = parse_verifying_key(&std::fs::read_to_string(&public).expect("read public key"))
        .expect("a public key");
    let secret = keys_dir.join("model-signing.key");
    // A second keygen into the same directory must not overwrite the key.
    let again = selfheal()
        .args(["model", "keygen", "--out"])
        .arg(&keys_dir)
        .output()
        .expect("run");
    assert!(
        !again.status.success(),
        "an existing key is never overwritten"
    );

    let src = cpu_model(tmp.path(), "v1", vec![]);
    let store = tmp.path().join("store");
    stdout_of(
        selfheal()
            .args(["model", "publish"])
            .arg(&src)
            .arg("--to")
            .arg(&store)
            .arg("--sign-key")
            .arg(&secret),
    );
    let mut registry = ModelRegistry::with_keys(store, Arc::from(vec![key]));
    assert_eq!(loaded_version(&registry.poll()), "v1");

    // `model sign` for a ConfigMap: signature.json in the model directory itself.
    let signed = stdout_of(
        selfheal()
            .args(["model", "sign"])
            .arg(&src)
            .arg("--sign-key")
            .arg(&secret),
    );
    assert_eq!(PathBuf::from(signed.trim()), src.join(SIGNATURE_FILE));
    let (_, facts) = Scorer::load_trusted(&src, &[key]).expect("signed in place");
    assert!(facts.is_some());
    // --rollback needs --sign-key.
    let out = selfheal()
        .args(["model", "publish"])
        .arg(&src)
        .args(["--to", "/nonexistent", "--rollback"])
        .output()
        .expect("run");
    assert!(!out.status.success());
}

/// Random edits of a valid `model.onnx` (its checksum recomputed, as a writer of the bucket
/// would) through the agent's whole load path: every one is loaded or refused, none panics.
/// Seeded and deterministic; the edits reach past the protobuf framing because most leave it
/// decodable and change a value inside the graph.
#[test]
fn edited_graphs_are_loaded_or_refused_never_a_panic() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("model");
    let (set, manifest) = forest::forest_set(9, 3, 2, 4);
    let manifest = write_set_dir(&dir, &set, manifest).expect("write set dir");
    let model = std::fs::read(dir.join(MODEL_FILE)).expect("read");
    let mut rng = Rng::new(17);
    let (mut loaded, mut refused, mut panicked) = (0, 0, Vec::new());
    for case in 0..400 {
        let mut bytes = model.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(bytes.len());
            match rng.below(4) {
                0 => bytes[at] ^= 1 << rng.below(8),
                1 => bytes[at] = rng.below(256) as u8,
                2 => bytes.insert(at, rng.below(256) as u8),
                _ => {
                    bytes.remove(at);
                }
            }
        }
        let mut m = manifest.clone();
        m.model_sha256 = sha256_hex(&bytes);
        let result = std::panic::catch_unwind(|| Scorer::from_parts(m, &bytes).map(|_| ()));
        match result {
            Ok(Ok(())) => loaded += 1,
            Ok(Err(_)) => refused += 1,
            Err(_) => panicked.push(case),
        }
    }
    assert!(panicked.is_empty(), "cases that panicked: {panicked:?}");
    // Seed 17: 27 loaded (values edited inside the graph), 373 refused.
    assert!(
        loaded > 0 && refused > 0 && loaded + refused == 400,
        "{loaded} loaded, {refused} refused"
    );
}

#[test]
fn a_graph_computing_a_value_too_wide_per_row_is_refused() {
    use prost::Message;
    use tract_onnx::pb;
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = cpu_model(tmp.path(), "v1", vec![]);
    Scorer::load(&src).expect("the model as written loads");
    let path = src.join(MODEL_FILE);
    let mut model =
        pb::ModelProto::decode(std::fs::read(&path).expect("read").as_slice()).expect("decode");
    let graph = model.graph.as_mut().expect("graph");
    let output = graph.output[0].name.clone();
    for node in &mut graph.node {
        for o in &mut node.output {
            if *o == output {
                *o = "pre".into();
            }
        }
    }
    // [N, 1] + [1, 20000]: a [N, 20000] value, reduced back to the [N, 1] score.
    let width = 20_000;
    graph.initializer.push(pb::TensorProto {
        name: "wide".into(),
        dims: vec![1, width],
        data_type: pb::tensor_proto::DataType::Float as i32,
        float_data: vec![0.5; width as usize],
        ..Default::default()
    });
    graph.node.push(pb::NodeProto {
        name: "widen".into(),
        op_type: "Add".into(),
        input: vec!["pre".into(), "wide".into()],
        output: vec!["widened".into()],
        ..Default::default()
    });
    graph.node.push(pb::NodeProto {
        name: "narrow".into(),
        op_type: "ReduceMax".into(),
        input: vec!["widened".into()],
        output: vec![output],
        attribute: vec![
            pb::AttributeProto {
                name: "axes".into(),
                r#type: pb::attribute_proto::AttributeType::Ints as i32,
                ints: vec![1],
                ..Default::default()
            },
            pb::AttributeProto {
                name: "keepdims".into(),
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                i: 1,
                ..Default::default()
            },
        ],
        ..Default::default()
    });
    let bytes = model.encode_to_vec();
    std::fs::write(&path, &bytes).expect("write");
    let mut manifest = read_manifest(&src);
    manifest.model_sha256 = sha256_hex(&bytes);
    std::fs::write(
        src.join(MANIFEST_FILE),
        serde_json::to_vec(&manifest).expect("json"),
    )
    .expect("write manifest");
    let err = Scorer::load(&src).expect_err("too wide");
    assert_eq!(err.reason(), "graph_bounds", "{}", chain(&err));
    assert!(
        chain(&err).contains("elements per input row"),
        "{}",
        chain(&err)
    );
}
