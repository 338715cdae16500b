//! An in-repo Kubernetes API double: an axum server on 127.0.0.1 serving real Kubernetes JSON
//! from an in-memory object store, faithful enough that the real `kubectl` drives it (checked by
//! `tests/pods.rs`).
//!
//! What it serves: `/version`, discovery (`/api`, `/apis`, `/api/v1`, `/apis/{group}/{version}`),
//! list / get / watch of every registered resource (`/api/v1/pods`,
//! `/api/v1/namespaces/{ns}/pods[/{name}]`, and the same shape under `/apis/{group}/{version}`),
//! with `fieldSelector`, `labelSelector`, `resourceVersion` (410 Gone once compacted),
//! `timeoutSeconds`, server-side `Table` output when the client asks for it (as kubectl does),
//! the kubelet's `/pods`, and `POST /apis/authentication.k8s.io/v1/tokenreviews` answering for
//! the service-account tokens a test issued with [`Store::issue_token`] (as the API server does
//! for a pod-bound projected token: its audiences, and the node in the user's extras).
//!
//! The store is keyed by group/version/resource/namespace/name and outlives the server: tests
//! [`KubeDouble::stop`] it mid-watch (every connection is cut, as when an API server dies) and
//! [`KubeDouble::restart`] it on the same port with the same objects.
//!
//! What healing touches is served too, with kube-apiserver's write semantics (`writes`):
//! `apps/v1` Deployments, StatefulSets and ReplicaSets with their `scale` subresource
//! (`autoscaling/v1` Scale: GET, PUT, PATCH), `autoscaling/v2` HorizontalPodAutoscalers (and
//! `autoscaling/v1`, converted, which is what kubectl 1.32's `autoscale` creates), create /
//! replace / patch (JSON merge, strategic merge, JSON patch; `patch`) / delete, resourceVersion
//! and uid preconditions answered with a 409 Conflict `Status`, `metadata.generation` bumped on
//! spec changes. Every write received is logged ([`Store::writes`]: method, path, body, the
//! status answered), so a test can assert that a refused action never reached the API; faults
//! are injected with [`Store::fail_next`]. Nothing runs controllers unless asked:
//! [`Store::complete_rollout`] finishes one rollout (status catches up with spec, as the
//! deployment controller would), [`Store::set_auto_rollout`] does it after every write.
//! `tests/kube_double.rs` proves these with the real `kubectl`.

#![allow(dead_code)]

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc};

mod patch;
mod tables;
mod writes;

use tables::to_table;
use writes::{convert_out, storage_def};

/// A resource the double serves.
#[derive(Debug, Clone)]
pub struct ResourceDef {
    /// API group, `""` for the core group.
    pub group: &'static str,
    /// API version, e.g. `v1`.
    pub version: &'static str,
    /// Plural resource name as in URLs, e.g. `pods`.
    pub plural: &'static str,
    /// Singular name.
    pub singular: &'static str,
    /// Kind, e.g. `Pod`.
    pub kind: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: &'static [&'static str],
    /// Field labels accepted in `fieldSelector` besides `metadata.name` and `metadata.namespace`.
    pub field_labels: &'static [&'static str],
    /// Verbs in discovery.
    pub verbs: &'static [&'static str],
    /// Serves the `scale` subresource (`autoscaling/v1` Scale).
    pub scale: bool,
    /// `status` is a subresource: writes to the main resource keep the stored status.
    pub status: bool,
}

impl ResourceDef {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// The resources served.
pub fn resources() -> Vec<ResourceDef> {
    let workload = |plural, singular, kind, short_names| ResourceDef {
        group: "apps",
        version: "v1",
        plural,
        singular,
        kind,
        namespaced: true,
        short_names,
        field_labels: &[],
        verbs: WRITE_VERBS,
        scale: true,
        status: true,
    };
    let hpa = |version| ResourceDef {
        group: "autoscaling",
        version,
        plural: "horizontalpodautoscalers",
        singular: "horizontalpodautoscaler",
        kind: "HorizontalPodAutoscaler",
        namespaced: true,
        short_names: &["hpa"],
        field_labels: &[],
        verbs: WRITE_VERBS,
        scale: false,
        status: true,
    };
    vec![
        ResourceDef {
            group: "",
            version: "v1",
            plural: "namespaces",
            singular: "namespace",
            kind: "Namespace",
            namespaced: false,
            short_names: &["ns"],
            field_labels: &["status.phase"],
            verbs: READ_VERBS,
            scale: false,
            status: true,
        },
        ResourceDef {
            group: "",
            version: "v1",
            plural: "pods",
            singular: "pod",
            kind: "Pod",
            namespaced: true,
            short_names: &["po"],
            field_labels: &[
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
            verbs: POD_VERBS,
            scale: false,
            status: true,
        },
        ResourceDef {
            group: "authentication.k8s.io",
            version: "v1",
            plural: "tokenreviews",
            singular: "tokenreview",
            kind: "TokenReview",
            namespaced: false,
            short_names: &[],
            field_labels: &[],
            verbs: &["create"],
            scale: false,
            status: false,
        },
        workload("deployments", "deployment", "Deployment", &["deploy"]),
        workload("statefulsets", "statefulset", "StatefulSet", &["sts"]),
        workload("replicasets", "replicaset", "ReplicaSet", &["rs"]),
        // v2 first: it is the group's preferred version, as on a real cluster.
        hpa("v2"),
        hpa("v1"),
    ]
}

const READ_VERBS: &[&str] = &["get", "list", "watch"];
/// Pods: read, and delete (healing's DeletePod); the double creates them only from tests.
const POD_VERBS: &[&str] = &["delete", "get", "list", "watch"];
const WRITE_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// `POST .../tokenreviews`: what kube-apiserver answers (201 with the review's status), for the
/// tokens issued with [`Store::issue_token`]. A token issued for other audiences than the
/// review asks about is refused as the API server refuses it.
async fn token_review(store: &Store, req: Request) -> Response {
    let body = match axum::body::to_bytes(req.into_body(), 1 << 20).await {
        Ok(b) => b,
        Err(e) => return status_error(400, "BadRequest", e.to_string()),
    };
    let review: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return status_error(
                400,
                "BadRequest",
                format!("the object provided is unrecognized: {e}"),
            );
        }
    };
    if review["kind"] != "TokenReview" || review["apiVersion"] != "authentication.k8s.io/v1" {
        return status_error(
            400,
            "BadRequest",
            "not an authentication.k8s.io/v1 TokenReview".into(),
        );
    }
    let spec = review["spec"].clone();
    let token = spec["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = spec["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_else(|| vec!["https://kubernetes.default.svc.cluster.local".into()]);
    let issued = lock(&store.issued).get(token).cloned();
    let status = match issued {
        None => {
            json!({"user": {}, "error": "[invalid bearer token, service account token has been invalidated]"})
        }
        Some(t) => {
            let common: Vec<&String> = wanted.iter().filter(|a| t.audiences.contains(a)).collect();
            if common.is_empty() {
                json!({"user": {}, "error": format!(
                    "[invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}]",
                    t.audiences, wanted
                )})
            } else {
                let (ns, sa) = t
                    .service_account
                    .split_once(':')
                    .unwrap_or(("default", "default"));
                let mut extra = json!({
                    "authentication.kubernetes.io/credential-id": [format!("JTI={}", credential_id(token))],
                });
                if let Some(node) = &t.node {
                    extra["authentication.kubernetes.io/node-name"] = json!([node]);
                    extra["authentication.kubernetes.io/node-uid"] =
                        json!([format!("uid-of-{node}")]);
                    extra["authentication.kubernetes.io/pod-name"] =
                        json!([format!("selfheal-agent-{node}")]);
                    extra["authentication.kubernetes.io/pod-uid"] =
                        json!([format!("pod-uid-on-{node}")]);
                }
                json!({
                    "authenticated": true,
                    "user": {
                        "username": format!("system:serviceaccount:{ns}:{sa}"),
                        "uid": format!("sa-uid-{ns}-{sa}"),
                        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
                        "extra": extra,
                    },
                    "audiences": common,
                })
            }
        }
    };
    json_response(
        StatusCode::CREATED,
        &json!({
            "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": spec, "status": status,
        }),
    )
}

/// A stable id derived from a token (the JTI the API server reports), not the token itself.
fn credential_id(token: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in token.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Store key: group, version, resource, namespace (`""` when cluster-scoped), name.
type Key = (String, String, String, String, String);

/// One change, as a watch delivers it.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    kind: &'static str,
    group: String,
    resource: String,
    object: Value,
}

#[derive(Debug, Default)]
struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// Recent changes, for watches that start from an older resource version.
    history: VecDeque<Change>,
    /// Changes at or below this version are forgotten: watching from before it is 410 Gone.
    compacted: u64,
    uid_counter: u64,
}

/// The in-memory object store, shared by every incarnation of the server.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Change>,
    /// Bearer tokens seen, in order (consecutive repeats collapsed).
    tokens_seen: Mutex<Vec<String>>,
    /// When set, requests without this bearer token get 401.
    required_token: Mutex<Option<String>>,
    /// Node whose pods the kubelet endpoint `/pods` reports.
    kubelet_node: String,
    /// Requests served, as `METHOD path?query`, for assertions on what a client did.
    requests: Mutex<Vec<String>>,
    /// Service-account tokens a TokenReview authenticates.
    issued: Mutex<HashMap<String, IssuedToken>>,
    /// Every write received (not TokenReviews, which store nothing), in order.
    writes: Mutex<Vec<Write>>,
    /// Injected failures, consumed in order of registration.
    faults: Mutex<Vec<Fault>>,
    /// Finish every workload rollout right after each write, as controllers would.
    auto_rollout: std::sync::atomic::AtomicBool,
}

/// One write the double received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: String,
    /// The path and query, e.g. `/apis/apps/v1/namespaces/default/deployments/web/scale`.
    pub path: String,
    /// The request's `Content-Type` (the patch type of a PATCH).
    pub content_type: String,
    /// The request body as sent.
    pub body: String,
    /// The status code the double answered.
    pub status: u16,
}

impl Write {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// A failure to answer instead of serving a request.
#[derive(Debug, Clone)]
struct Fault {
    /// The method it applies to (`None`: any).
    method: Option<String>,
    /// A substring of the request path.
    path_contains: String,
    code: u16,
    remaining: usize,
}

/// A projected service-account token, as the API server knows it.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// `namespace:name` of the service account.
    pub service_account: String,
    /// The node of the pod the token is bound to (`None`: not pod-bound).
    pub node: Option<String>,
    /// The audiences it was issued for.
    pub audiences: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kinds whose `metadata.generation` the API server maintains.
fn has_generation(def: &ResourceDef) -> bool {
    def.group == "apps" || def.group == "autoscaling"
}

fn meta(obj: &Value, field: &str) -> String {
    obj.pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

impl Store {
    fn new(kubelet_node: &str) -> Store {
        Store {
            inner: Mutex::new(Inner::default()),
            changes: broadcast::channel(4096).0,
            tokens_seen: Mutex::new(Vec::new()),
            required_token: Mutex::new(None),
            issued: Mutex::new(HashMap::new()),
            kubelet_node: kubelet_node.to_owned(),
            requests: Mutex::new(Vec::new()),
            writes: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            auto_rollout: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn key(def: &ResourceDef, obj: &Value) -> Key {
        (
            def.group.to_owned(),
            def.version.to_owned(),
            def.plural.to_owned(),
            if def.namespaced {
                meta(obj, "namespace")
            } else {
                String::new()
            },
            meta(obj, "name"),
        )
    }

    fn record(&self, inner: &mut Inner, kind: &'static str, def: &ResourceDef, object: Value) {
        let change = Change {
            rv: inner.rv,
            kind,
            group: def.group.to_owned(),
            resource: def.plural.to_owned(),
            object,
        };
        inner.history.push_back(change.clone());
        if inner.history.len() > 10_000
            && let Some(old) = inner.history.pop_front()
        {
            inner.compacted = old.rv;
        }
        // No receiver is fine: nobody is watching.
        let _ = self.changes.send(change);
    }

    /// Creates or replaces an object of resource `def`, as the API server would: a fresh
    /// `resourceVersion`, and a `uid` and `creationTimestamp` on creation. Returns the stored
    /// object. Watches see ADDED or MODIFIED.
    pub fn put(&self, def: &ResourceDef, obj: Value) -> Value {
        let mut inner = lock(&self.inner);
        let ns = meta(&obj, "namespace");
        // Like a cluster where namespaces are made first: the namespace of a new object exists.
        if def.namespaced && !ns.is_empty() {
            let namespaces = namespaces();
            let key = Store::key(&namespaces, &json!({"metadata": {"name": ns}}));
            if !inner.objects.contains_key(&key) {
                let namespace = json!({
                    "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}},
                    "spec": {"finalizers": ["kubernetes"]},
                    "status": {"phase": "Active"},
                });
                self.put_locked(&mut inner, &namespaces, namespace);
            }
        }
        self.put_locked(&mut inner, def, obj)
    }

    fn put_locked(&self, inner: &mut Inner, def: &ResourceDef, mut obj: Value) -> Value {
        let key = Store::key(def, &obj);
        inner.rv += 1;
        let rv = inner.rv;
        let existing = inner.objects.get(&key).cloned();
        if obj.get("metadata").is_none_or(|m| !m.is_object()) {
            obj["metadata"] = json!({});
        }
        let md = &mut obj["metadata"];
        md["resourceVersion"] = json!(rv.to_string());
        match &existing {
            Some(old) => {
                md["uid"] = old["metadata"]["uid"].clone();
                md["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
            }
            None => {
                if md
                    .get("uid")
                    .is_none_or(|u| u.as_str().is_none_or(str::is_empty))
                {
                    inner.uid_counter += 1;
                    md["uid"] = json!(format!(
                        "00000000-0000-4000-8000-{:012x}",
                        inner.uid_counter
                    ));
                }
                if md.get("creationTimestamp").is_none_or(Value::is_null) {
                    md["creationTimestamp"] = json!(rfc3339(now_secs()));
                }
            }
        }
        // The generation counts spec changes, as the API server keeps it for workloads.
        if has_generation(def) {
            let generation = match &existing {
                None => md.get("generation").and_then(Value::as_i64).unwrap_or(1),
                Some(old) => {
                    let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                    if old.get("spec") == obj.get("spec") {
                        g
                    } else {
                        g + 1
                    }
                }
            };
            obj["metadata"]["generation"] = json!(generation);
        }
        obj["kind"] = json!(def.kind);
        obj["apiVersion"] = json!(def.api_version());
        inner.objects.insert(key, obj.clone());
        let kind = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.record(inner, kind, def, obj.clone());
        obj
    }

    /// Finishes the rollout of workload `name` as its controller would once the pods are up:
    /// `status` catches up with `spec` (observed generation, every replica updated, ready and
    /// available; a StatefulSet's current revision becomes its update revision). A no-op when
    /// it is already finished; `None` when there is no such object.
    pub fn complete_rollout(
        &self,
        def: &ResourceDef,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let mut inner = lock(&self.inner);
        self.finish_rollout_locked(&mut inner, def, namespace, name)
    }

    /// When on, every write through the API finishes the written workload's rollout at once
    /// (a second version, as the controller's status update is a write of its own).
    pub fn set_auto_rollout(&self, on: bool) {
        self.auto_rollout
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    fn settle_locked(&self, inner: &mut Inner, def: &ResourceDef, ns: &str, name: &str) {
        if self.auto_rollout.load(std::sync::atomic::Ordering::SeqCst) {
            self.finish_rollout_locked(inner, def, ns, name);
        }
    }

    fn finish_rollout_locked(
        &self,
        inner: &mut Inner,
        def: &ResourceDef,
        ns: &str,
        name: &str,
    ) -> Option<Value> {
        let key = (
            def.group.to_owned(),
            def.version.to_owned(),
            def.plural.to_owned(),
            ns.to_owned(),
            name.to_owned(),
        );
        let current = inner.objects.get(&key)?.clone();
        if def.group != "apps" {
            return Some(current);
        }
        let replicas = current
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let mut obj = current.clone();
        let st = &mut obj["status"];
        if !st.is_object() {
            *st = json!({});
        }
        st["observedGeneration"] = current["metadata"]["generation"].clone();
        st["replicas"] = json!(replicas);
        st["readyReplicas"] = json!(replicas);
        st["availableReplicas"] = json!(replicas);
        match def.kind {
            "Deployment" => {
                st["updatedReplicas"] = json!(replicas);
                st["conditions"] = json!([
                    {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                     "message": "Deployment has minimum availability."},
                    {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                     "message": format!("ReplicaSet \"{name}\" has successfully progressed.")},
                ]);
            }
            "StatefulSet" => {
                st["updatedReplicas"] = json!(replicas);
                st["currentReplicas"] = json!(replicas);
                let rev = st.get("updateRevision").cloned().unwrap_or_else(|| {
                    json!(format!("{name}-rev{}", current["metadata"]["generation"]))
                });
                st["updateRevision"] = rev.clone();
                st["currentRevision"] = rev;
            }
            _ => {
                st["fullyLabeledReplicas"] = json!(replicas);
            }
        }
        if obj == current {
            return Some(current);
        }
        Some(self.put_locked(inner, def, obj))
    }

    /// Every write received so far (POST, PUT, PATCH, DELETE; TokenReviews aside), in order,
    /// whatever was answered.
    pub fn writes(&self) -> Vec<Write> {
        lock(&self.writes).clone()
    }

    /// Answers the next `times` requests whose method is `method` (`None`: any) and whose path
    /// contains `path_contains` with a `code` failure `Status` instead of serving them
    /// (403 Forbidden, 409 Conflict, 429 TooManyRequests, 500 InternalError, 503 ServiceUnavailable, ...).
    /// A faulted write is still logged in [`Store::writes`]: it reached the API.
    pub fn fail_next(&self, method: Option<&str>, path_contains: &str, code: u16, times: usize) {
        lock(&self.faults).push(Fault {
            method: method.map(str::to_owned),
            path_contains: path_contains.to_owned(),
            code,
            remaining: times,
        });
    }

    fn take_fault(&self, method: &str, path: &str) -> Option<u16> {
        let mut faults = lock(&self.faults);
        let f = faults.iter_mut().find(|f| {
            f.remaining > 0
                && f.method.as_deref().is_none_or(|m| m == method)
                && path.contains(&f.path_contains)
        })?;
        f.remaining -= 1;
        let code = f.code;
        faults.retain(|f| f.remaining > 0);
        Some(code)
    }

    /// Changes an existing object in place through `f`; `None` when it does not exist.
    pub fn modify(
        &self,
        def: &ResourceDef,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        let mut obj = self.get(def, namespace, name)?;
        f(&mut obj);
        Some(self.put(def, obj))
    }

    /// Deletes an object; watches see DELETED with a new `resourceVersion`.
    pub fn delete(&self, def: &ResourceDef, namespace: &str, name: &str) -> Option<Value> {
        let mut inner = lock(&self.inner);
        let ns = if def.namespaced { namespace } else { "" };
        let key = (
            def.group.to_owned(),
            def.version.to_owned(),
            def.plural.to_owned(),
            ns.to_owned(),
            name.to_owned(),
        );
        let mut obj = inner.objects.remove(&key)?;
        inner.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        self.record(&mut inner, "DELETED", def, obj.clone());
        Some(obj)
    }

    /// One object.
    pub fn get(&self, def: &ResourceDef, namespace: &str, name: &str) -> Option<Value> {
        let ns = if def.namespaced { namespace } else { "" };
        lock(&self.inner)
            .objects
            .get(&(
                def.group.to_owned(),
                def.version.to_owned(),
                def.plural.to_owned(),
                ns.to_owned(),
                name.to_owned(),
            ))
            .cloned()
    }

    /// Forgets the change history, as etcd compaction does: a watch from any version before
    /// now gets `410 Gone` and the client must list again.
    pub fn compact(&self) {
        let mut inner = lock(&self.inner);
        inner.history.clear();
        inner.compacted = inner.rv;
    }

    /// Ends every open watch with an `ERROR` event carrying `410 Gone`, as an API server does
    /// when its watch cache no longer holds the version a watcher is at.
    pub fn expire_watches(&self) {
        let inner = lock(&self.inner);
        let _ = self.changes.send(Change {
            rv: inner.rv,
            kind: "ERROR",
            group: String::new(),
            resource: String::new(),
            object: status_object(
                410,
                "Expired",
                &format!("too old resource version: 1 ({})", inner.rv),
            ),
        });
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        lock(&self.inner).rv
    }

    /// Bearer tokens presented so far, in order, consecutive repeats collapsed.
    pub fn tokens_seen(&self) -> Vec<String> {
        lock(&self.tokens_seen).clone()
    }

    /// Makes every request without `Authorization: Bearer <token>` fail with 401 (`None`
    /// accepts any token or none).
    pub fn require_token(&self, token: Option<&str>) {
        *lock(&self.required_token) = token.map(str::to_owned);
    }

    /// Makes `token` a service-account token a TokenReview authenticates (replacing any
    /// earlier token of the same string); [`Store::revoke_token`] undoes it.
    pub fn issue_token(&self, token: &str, issued: IssuedToken) {
        lock(&self.issued).insert(token.to_owned(), issued);
    }

    /// Forgets `token` (as when its pod is deleted): reviews of it fail from now on.
    pub fn revoke_token(&self, token: &str) {
        lock(&self.issued).remove(token);
    }

    /// Requests served so far, as `GET /path?query`.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.requests).clone()
    }

    fn list(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        filter: &Filter,
    ) -> (Vec<Value>, u64) {
        list_locked(&lock(&self.inner), def, namespace, filter)
    }
}

fn list_locked(
    inner: &Inner,
    def: &ResourceDef,
    namespace: Option<&str>,
    filter: &Filter,
) -> (Vec<Value>, u64) {
    let items = inner
        .objects
        .iter()
        .filter(|((g, v, r, ns, _), _)| {
            g == def.group
                && v == def.version
                && r == def.plural
                && namespace.is_none_or(|n| n == ns)
        })
        .map(|(_, o)| o)
        .filter(|o| filter.matches(o))
        .cloned()
        .collect();
    (items, inner.rv)
}

/// The double: a server bound to a loopback port, and its store.
#[derive(Debug)]
pub struct KubeDouble {
    store: Arc<Store>,
    addr: SocketAddr,
    /// The server's own runtime: dropping it cuts every connection at once, like a crash.
    runtime: Option<tokio::runtime::Runtime>,
}

impl KubeDouble {
    /// Starts an empty double on a free port; its kubelet endpoint reports `node-a`.
    pub fn start() -> KubeDouble {
        KubeDouble::start_for_node("node-a")
    }

    /// Starts an empty double whose kubelet endpoint reports `node`'s pods.
    pub fn start_for_node(node: &str) -> KubeDouble {
        let store = Arc::new(Store::new(node));
        let (runtime, addr) = serve(store.clone(), "127.0.0.1:0".parse().expect("addr"));
        KubeDouble {
            store,
            addr,
            runtime: Some(runtime),
        }
    }

    /// Starts a double holding every pod of a recorded `PodList` fixture, UIDs kept.
    pub fn with_pod_list(fixture: &Value) -> KubeDouble {
        let double = KubeDouble::start();
        for pod in fixture["items"].as_array().expect("PodList items") {
            double.store.put(&pods(), pod.clone());
        }
        double
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port served.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The object store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Kills the server: open watches are cut, new connections refused. The store is kept.
    pub fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// The real `kubectl` (/usr/bin/kubectl) pointed at this double with a bearer token,
    /// isolated from any kubeconfig or discovery cache on the machine; its output.
    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        const KUBECTL: &str = "/usr/bin/kubectl";
        assert!(
            std::path::Path::new(KUBECTL).is_file(),
            "{KUBECTL} not found: run scripts/test.sh, which installs the test tools"
        );
        let home = tempfile::tempdir().expect("kubectl home");
        std::process::Command::new(KUBECTL)
            .env_clear()
            .env("HOME", home.path())
            .env("KUBECONFIG", home.path().join("no-kubeconfig"))
            .args([
                "--server",
                &self.url(),
                "--token",
                "x",
                "--request-timeout=10s",
            ])
            .arg(format!(
                "--cache-dir={}",
                home.path().join("cache").display()
            ))
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// Serves again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        let (runtime, _) = serve(self.store.clone(), self.addr);
        self.runtime = Some(runtime);
    }
}

impl Drop for KubeDouble {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The core/v1 pods resource.
pub fn pods() -> ResourceDef {
    resource("", "pods")
}

/// The apps/v1 deployments resource.
pub fn deployments() -> ResourceDef {
    resource("apps", "deployments")
}

/// The apps/v1 statefulsets resource.
pub fn statefulsets() -> ResourceDef {
    resource("apps", "statefulsets")
}

/// The apps/v1 replicasets resource.
pub fn replicasets() -> ResourceDef {
    resource("apps", "replicasets")
}

/// The autoscaling/v2 horizontalpodautoscalers resource (the stored version).
pub fn hpas() -> ResourceDef {
    resource_version("autoscaling", "v2", "horizontalpodautoscalers")
}

/// A rolled-out `apps/v1` Deployment `namespace/name` of `replicas` pods labelled
/// `app=<name>`, with two containers (`app`, `sidecar`), as `kubectl get -o json` shows one.
pub fn deployment_object(namespace: &str, name: &str, replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "generation": 1,
                     "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,
            "template": pod_template(name),
        },
        "status": {
            "observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": replicas, "availableReplicas": replicas,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
            ],
        },
    })
}

/// A rolled-out `apps/v1` StatefulSet `namespace/name` of `replicas` pods.
pub fn statefulset_object(namespace: &str, name: &str, replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": namespace, "generation": 1,
                     "labels": {"app": name}},
        "spec": {
            "replicas": replicas, "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
            "podManagementPolicy": "OrderedReady",
            "template": pod_template(name),
        },
        "status": {
            "observedGeneration": 1, "replicas": replicas, "readyReplicas": replicas,
            "currentReplicas": replicas, "updatedReplicas": replicas,
            "availableReplicas": replicas,
            "currentRevision": format!("{name}-5d8f7c9b4"), "updateRevision": format!("{name}-5d8f7c9b4"),
        },
    })
}

/// An `autoscaling/v2` HPA `namespace/name` on the Deployment `target`, CPU at 70%.
pub fn hpa_object(namespace: &str, name: &str, target: &str, min: i64, max: i64) -> Value {
    json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": min, "maxReplicas": max,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 70}}}],
        },
        "status": {"currentReplicas": min, "desiredReplicas": min},
    })
}

fn pod_template(app: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": app}},
        "spec": {
            "containers": [
                {"name": "app", "image": "registry.example/app:1.4.2",
                 "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                 "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}},
                {"name": "sidecar", "image": "registry.example/proxy:2.1"},
            ],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
        },
    })
}

impl Store {
    /// A rolled-out Deployment with its ReplicaSet and `replicas` running pods on `node-a`,
    /// owner references as the controllers set them. Returns the stored Deployment.
    pub fn add_deployment_with_pods(&self, namespace: &str, name: &str, replicas: i64) -> Value {
        let deploy = self.put(&deployments(), deployment_object(namespace, name, replicas));
        let hash = "7c5b9d8f6";
        let rs_name = format!("{name}-{hash}");
        let controller = |kind: &str, of: &Value| {
            json!([{"apiVersion": "apps/v1", "kind": kind, "name": meta(of, "name"),
                    "uid": meta(of, "uid"), "controller": true, "blockOwnerDeletion": true}])
        };
        let mut rs = json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": rs_name, "namespace": namespace,
                         "labels": {"app": name, "pod-template-hash": hash},
                         "ownerReferences": controller("Deployment", &deploy)},
            "spec": {"replicas": replicas,
                     "selector": {"matchLabels": {"app": name, "pod-template-hash": hash}},
                     "template": pod_template(name)},
            "status": {"replicas": replicas, "readyReplicas": replicas,
                       "availableReplicas": replicas, "fullyLabeledReplicas": replicas,
                       "observedGeneration": 1},
        });
        rs["spec"]["template"]["metadata"]["labels"]["pod-template-hash"] = json!(hash);
        let rs = self.put(&replicasets(), rs);
        for i in 0..replicas {
            self.put(
                &pods(),
                json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("{rs_name}-p{i:03}"), "namespace": namespace,
                                 "labels": {"app": name, "pod-template-hash": hash},
                                 "ownerReferences": controller("ReplicaSet", &rs)},
                    "spec": {"nodeName": "node-a",
                             "containers": [{"name": "app", "image": "registry.example/app:1.4.2"},
                                            {"name": "sidecar", "image": "registry.example/proxy:2.1"}]},
                    "status": {"phase": "Running", "podIP": format!("10.0.0.{}", 10 + i),
                               "containerStatuses": [
                                   {"name": "app", "ready": true, "restartCount": 0, "state": {"running": {}}},
                                   {"name": "sidecar", "ready": true, "restartCount": 0, "state": {"running": {}}}]},
                }),
            );
        }
        deploy
    }
}

/// The core/v1 namespaces resource.
pub fn namespaces() -> ResourceDef {
    resource("", "namespaces")
}

fn resource(group: &str, plural: &str) -> ResourceDef {
    resources()
        .into_iter()
        .find(|r| r.group == group && r.plural == plural)
        .expect("resource registered")
}

fn resource_version(group: &str, version: &str, plural: &str) -> ResourceDef {
    resources()
        .into_iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
        .expect("resource registered")
}

fn serve(store: Arc<Store>, addr: SocketAddr) -> (tokio::runtime::Runtime, SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("kube-double")
        .enable_all()
        .build()
        .expect("double runtime");
    let listener = {
        let _guard = runtime.enter();
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        // The port is rebound right after a stop; old connections may linger in TIME_WAIT.
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(addr).expect("bind the double's port");
        socket.listen(128).expect("listen")
    };
    let bound = listener.local_addr().expect("local addr");
    let app = Router::new().fallback(handle).with_state(store);
    runtime.spawn(async move {
        // Ends only with the runtime.
        let _ = axum::serve(listener, app).await;
    });
    (runtime, bound)
}

// ---- request handling ---------------------------------------------------------------------

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn status_error(code: u16, reason: &str, message: String) -> Response {
    json_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &status_object(code, reason, &message),
    )
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

async fn handle(
    State(store): State<Arc<Store>>,
    Query(query): Query<HashMap<String, String>>,
    req: Request,
) -> Response {
    let path = req.uri().path().to_owned();
    lock(&store.requests).push(format!(
        "{} {}",
        req.method(),
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or_default()
    ));
    let headers = req.headers();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    if let Some(t) = &token {
        let mut seen = lock(&store.tokens_seen);
        if seen.last() != Some(t) {
            seen.push(t.clone());
        }
    }
    let required = lock(&store.required_token).clone();
    if required.is_some() && token != required {
        return status_error(401, "Unauthorized", "Unauthorized".into());
    }
    if req.method() == axum::http::Method::POST
        && path.trim_end_matches('/') == "/apis/authentication.k8s.io/v1/tokenreviews"
    {
        return token_review(&store, req).await;
    }
    let method = req.method().clone();
    let fault = store.take_fault(method.as_str(), &path);
    if method != axum::http::Method::GET {
        let path_and_query = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        // kube-apiserver's request body limit.
        let (body, response) = match axum::body::to_bytes(req.into_body(), 3 << 20).await {
            Ok(body) => {
                let response = match fault {
                    Some(code) => injected(code, &path),
                    None => write_request(&store, &method, &path, &content_type, &body),
                };
                (body, response)
            }
            Err(e) => (
                Bytes::new(),
                status_error(413, "RequestEntityTooLarge", format!("request body: {e}")),
            ),
        };
        lock(&store.writes).push(Write {
            method: method.to_string(),
            path: path_and_query,
            content_type,
            body: String::from_utf8_lossy(&body).into_owned(),
            status: response.status().as_u16(),
        });
        return response;
    }
    if let Some(code) = fault {
        return injected(code, &path);
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let defs = resources();
    match segs.as_slice() {
        ["version"] => json_response(
            StatusCode::OK,
            &json!({
                "major": "1", "minor": "32", "gitVersion": "v1.32.4",
                "gitCommit": "59526cd4867447956156ae3a602fcbac10a2c335",
                "gitTreeState": "clean", "buildDate": "2025-04-22T16:02:27Z",
                "goVersion": "go1.23.6", "compiler": "gc", "platform": "linux/amd64",
            }),
        ),
        ["api"] => json_response(
            StatusCode::OK,
            &json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}],
            }),
        ),
        ["apis"] => json_response(StatusCode::OK, &api_group_list(&defs)),
        ["pods"] => kubelet_pods(&store),
        ["api", version] => resource_list(&defs, "", version),
        ["apis", group, version] => resource_list(&defs, group, version),
        ["api", version, rest @ ..] => {
            resource_request(&store, &defs, "", version, rest, &query, headers)
        }
        ["apis", group, version, rest @ ..] => {
            resource_request(&store, &defs, group, version, rest, &query, headers)
        }
        _ => status_error(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
        ),
    }
}

/// An injected failure, with the `Status` the API server would send for its code.
fn injected(code: u16, path: &str) -> Response {
    let (reason, message) = match code {
        401 => ("Unauthorized", "Unauthorized".to_owned()),
        403 => (
            "Forbidden",
            format!(
                "forbidden: User \"system:serviceaccount:selfheal:selfheal\" cannot access {path}"
            ),
        ),
        404 => (
            "NotFound",
            "the server could not find the requested resource".to_owned(),
        ),
        409 => (
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {path}: {}",
                "the object has been modified; please apply your changes to the latest version and try again"
            ),
        ),
        422 => ("Invalid", format!("{path} is invalid")),
        429 => (
            "TooManyRequests",
            "Too many requests, please try again later.".to_owned(),
        ),
        503 => (
            "ServiceUnavailable",
            "the server is currently unable to handle the request".to_owned(),
        ),
        504 => (
            "Timeout",
            "the server was unable to return a response in the time allotted".to_owned(),
        ),
        _ => (
            "InternalError",
            format!("Internal error occurred: injected failure on {path}"),
        ),
    };
    status_error(code, reason, message)
}

/// Routes a write to `writes`.
fn write_request(
    store: &Store,
    method: &axum::http::Method,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Response {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return writes::not_found_path(),
    };
    let Some((namespace, plural, name, sub)) = parse_resource_path(rest) else {
        return writes::not_found_path();
    };
    let defs = resources();
    let Some(def) = defs
        .iter()
        .find(|d| d.group == group && d.version == version && d.plural == plural)
    else {
        return writes::not_found_path();
    };
    writes::write(
        store,
        &writes::WriteReq {
            method,
            def,
            namespace,
            name,
            sub,
            content_type,
            body,
        },
    )
}

/// `[namespaces/NS/]PLURAL[/NAME[/SUBRESOURCE]]`.
type ResourcePath<'a> = (Option<&'a str>, &'a str, Option<&'a str>, Option<&'a str>);

fn parse_resource_path<'a>(rest: &[&'a str]) -> Option<ResourcePath<'a>> {
    Some(match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name), None),
        ["namespaces", ns, plural, name, sub] => (Some(*ns), *plural, Some(*name), Some(*sub)),
        [plural] => (None, *plural, None, None),
        [plural, name] => (None, *plural, Some(*name), None),
        [plural, name, sub] => (None, *plural, Some(*name), Some(*sub)),
        _ => return None,
    })
}

fn api_group_list(defs: &[ResourceDef]) -> Value {
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for d in defs.iter().filter(|d| !d.group.is_empty()) {
        let versions = groups.entry(d.group).or_default();
        if !versions.contains(&d.version) {
            versions.push(d.version);
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(defs: &[ResourceDef], group: &str, version: &str) -> Response {
    let mut resources: Vec<Value> = Vec::new();
    for d in defs
        .iter()
        .filter(|d| d.group == group && d.version == version)
    {
        resources.push(json!({
            "name": d.plural, "singularName": d.singular, "namespaced": d.namespaced,
            "kind": d.kind, "verbs": d.verbs,
            "shortNames": d.short_names, "categories": ["all"],
        }));
        if d.scale {
            // kubectl scale finds the Scale's group and version here.
            resources.push(json!({
                "name": format!("{}/scale", d.plural), "singularName": "", "namespaced": d.namespaced,
                "group": "autoscaling", "version": "v1", "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
        if d.status {
            resources.push(json!({
                "name": format!("{}/status", d.plural), "singularName": "", "namespaced": d.namespaced,
                "kind": d.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return status_error(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
        );
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

fn resource_request(
    store: &Arc<Store>,
    defs: &[ResourceDef],
    group: &str,
    version: &str,
    rest: &[&str],
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    let Some((namespace, plural, name, sub)) = parse_resource_path(rest) else {
        return writes::not_found_path();
    };
    let Some(def) = defs
        .iter()
        .find(|d| d.group == group && d.version == version && d.plural == plural)
    else {
        return status_error(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
        );
    };
    let table = wants_table(headers);
    if let Some(name) = name {
        let found = store
            .get(&storage_def(def), namespace.unwrap_or_default(), name)
            .map(|o| convert_out(def, o));
        return match (found, sub) {
            (Some(obj), Some("scale")) if def.scale => {
                json_response(StatusCode::OK, &writes::scale_of(&obj))
            }
            (Some(obj), Some("status")) if def.status => json_response(StatusCode::OK, &obj),
            (Some(_), Some(_)) => writes::not_found_path(),
            (Some(obj), None) if table => json_response(StatusCode::OK, &to_table(def, &[obj])),
            (Some(obj), None) => json_response(StatusCode::OK, &obj),
            (None, _) => writes::not_found(def, name),
        };
    }
    if sub.is_some() {
        return writes::not_found_path();
    }
    let filter = match Filter::parse(def, query) {
        Ok(f) => f,
        Err(msg) => return status_error(400, "BadRequest", msg),
    };
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return watch(store, def, namespace, filter, query, table);
    }
    let (items, rv) = store.list(&storage_def(def), namespace, &filter);
    let items: Vec<Value> = items.into_iter().map(|o| convert_out(def, o)).collect();
    if table {
        let mut t = to_table(def, &items);
        t["metadata"] = json!({"resourceVersion": rv.to_string()});
        return json_response(StatusCode::OK, &t);
    }
    json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", def.kind), "apiVersion": def.api_version(),
            "metadata": {"resourceVersion": rv.to_string()}, "items": items,
        }),
    )
}

/// The kubelet's `/pods`: a PodList of this node's pods. A static pod appears under its own
/// UID (the mirror pod's `kubernetes.io/config.mirror`), as the kubelet knows it.
fn kubelet_pods(store: &Store) -> Response {
    let filter = Filter {
        fields: vec![("spec.nodeName".into(), store.kubelet_node.clone(), true)],
        labels: Vec::new(),
    };
    let (items, _) = store.list(&pods(), None, &filter);
    let items: Vec<Value> = items
        .into_iter()
        .map(|mut p| {
            if let Some(uid) = p["metadata"]["annotations"]
                .as_object_mut()
                .and_then(|a| a.remove("kubernetes.io/config.mirror"))
            {
                p["metadata"]["uid"] = uid;
            }
            p
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}),
    )
}

fn watch(
    store: &Arc<Store>,
    def: &ResourceDef,
    namespace: Option<&str>,
    filter: Filter,
    query: &HashMap<String, String>,
    table: bool,
) -> Response {
    let since = query.get("resourceVersion").cloned().unwrap_or_default();
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let def = def.clone();
    let namespace = namespace.map(str::to_owned);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    // Subscribe and read the backlog under the store lock, so no change falls in between.
    let (mut live, backlog, gone) = {
        let inner = lock(&store.inner);
        let live = store.changes.subscribe();
        let relevant = |c: &Change| {
            c.group == def.group
                && c.resource == def.plural
                && namespace
                    .as_deref()
                    .is_none_or(|n| meta(&c.object, "namespace") == n)
                && filter.matches(&c.object)
        };
        match since.parse::<u64>() {
            // No version (or "0"): the current state as synthetic ADDED events, then changes.
            Err(_) | Ok(0) => {
                let (items, rv) =
                    list_locked(&inner, &storage_def(&def), namespace.as_deref(), &filter);
                let backlog: Vec<(u64, &'static str, Value)> =
                    items.into_iter().map(|o| (rv, "ADDED", o)).collect();
                (live, backlog, None)
            }
            Ok(v) if v < inner.compacted => (
                live,
                Vec::new(),
                Some(format!(
                    "too old resource version: {v} ({})",
                    inner.compacted + 1
                )),
            ),
            Ok(v) => {
                let backlog = inner
                    .history
                    .iter()
                    .filter(|c| c.rv > v && relevant(c))
                    .map(|c| (c.rv, c.kind, c.object.clone()))
                    .collect();
                (live, backlog, None)
            }
        }
    };
    let group = def.group.to_owned();
    let plural = def.plural;
    let line = move |kind: &str, obj: &Value| -> Bytes {
        let object = if kind == "ERROR" || kind == "BOOKMARK" {
            obj.clone()
        } else if table {
            to_table(&def, &[convert_out(&def, obj.clone())])
        } else {
            convert_out(&def, obj.clone())
        };
        let mut s = json!({"type": kind, "object": object}).to_string();
        s.push('\n');
        Bytes::from(s)
    };
    let ns = namespace.clone();
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        if let Some(message) = gone {
            let _ = tx
                .send(line("ERROR", &status_object(410, "Expired", &message)))
                .await;
            return;
        }
        let mut last = 0;
        for (rv, kind, obj) in backlog {
            last = last.max(rv);
            if tx.send(line(kind, &obj)).await.is_err() {
                return;
            }
        }
        loop {
            let change = tokio::select! {
                c = live.recv() => c,
                _ = &mut deadline => return,
                _ = tx.closed() => return,
            };
            match change {
                Ok(c) if c.kind == "ERROR" => {
                    let _ = tx.send(line("ERROR", &c.object)).await;
                    return;
                }
                Ok(c) => {
                    let wanted = c.rv > last
                        && c.group == group
                        && c.resource == plural
                        && ns
                            .as_deref()
                            .is_none_or(|n| meta(&c.object, "namespace") == n)
                        && filter.matches(&c.object);
                    if wanted && tx.send(line(c.kind, &c.object)).await.is_err() {
                        return;
                    }
                }
                // Fell behind: a real API server ends the watch; the client lists again.
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| status_error(500, "InternalError", "response".into()))
}

// ---- selectors ----------------------------------------------------------------------------

/// A parsed `fieldSelector` and `labelSelector`.
#[derive(Debug, Clone, Default)]
struct Filter {
    /// (field path, value, equal?)
    fields: Vec<(String, String, bool)>,
    labels: Vec<LabelReq>,
}

#[derive(Debug, Clone)]
enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Filter {
    fn parse(def: &ResourceDef, query: &HashMap<String, String>) -> Result<Filter, String> {
        let mut f = Filter::default();
        for term in query
            .get("fieldSelector")
            .map(String::as_str)
            .unwrap_or_default()
            .split(',')
            .filter(|t| !t.is_empty())
        {
            let (field, value, eq) = if let Some((k, v)) = term.split_once("!=") {
                (k, v, false)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, v, true)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, v, true)
            } else {
                return Err(format!(
                    "invalid selector: '{term}'; can't understand '{term}'"
                ));
            };
            let known = ["metadata.name", "metadata.namespace"].contains(&field)
                || def.field_labels.contains(&field);
            if !known {
                return Err(format!("field label not supported: {field}"));
            }
            f.fields.push((field.to_owned(), value.to_owned(), eq));
        }
        let labels = query
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or_default();
        for term in split_outside_parens(labels) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let set = |s: &str| -> Vec<String> {
                s.trim()
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .split(',')
                    .map(|v| v.trim().to_owned())
                    .collect()
            };
            let req = if let Some((k, v)) = term.split_once(" notin ") {
                LabelReq::NotIn(k.trim().into(), set(v))
            } else if let Some((k, v)) = term.split_once(" in ") {
                LabelReq::In(k.trim().into(), set(v))
            } else if let Some((k, v)) = term.split_once("!=") {
                LabelReq::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once("==") {
                LabelReq::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once('=') {
                LabelReq::Eq(k.trim().into(), v.trim().into())
            } else if let Some(k) = term.strip_prefix('!') {
                LabelReq::NotExists(k.trim().into())
            } else {
                LabelReq::Exists(term.into())
            };
            f.labels.push(req);
        }
        Ok(f)
    }

    fn matches(&self, obj: &Value) -> bool {
        let fields_ok = self.fields.iter().all(|(path, want, eq)| {
            let pointer = format!("/{}", path.replace('.', "/"));
            let got = match obj.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (got == *want) == *eq
        });
        let label = |k: &str| {
            obj.pointer("/metadata/labels")
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        fields_ok
            && self.labels.iter().all(|r| match r {
                LabelReq::Eq(k, v) => label(k).as_deref() == Some(v),
                LabelReq::Ne(k, v) => label(k).as_deref() != Some(v),
                LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.contains(&l)),
                LabelReq::NotIn(k, vs) => label(k).is_none_or(|l| !vs.contains(&l)),
                LabelReq::Exists(k) => label(k).is_some(),
                LabelReq::NotExists(k) => label(k).is_none(),
            })
    }
}

fn split_outside_parens(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

// ---- server-side printing (Table), as kubectl asks for ------------------------------------

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("as=Table"))
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Inverse of days_from_civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn parse_rfc3339(s: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let days = days_from_civil(num(0..4)?, num(5..7)?, num(8..10)?);
    Some(days * 86_400 + num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?)
}

/// kubectl's short age: `45s`, `12m`, `3h5m`, `4d2h`, `200d`.
fn age(created: &str) -> String {
    let Some(t) = parse_rfc3339(created) else {
        return "<unknown>".into();
    };
    let s = (now_secs() - t).max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s if s < 8 * 86_400 => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
        s => format!("{}d", s / 86_400),
    }
}
