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
//! [`KubeDouble::restart`] it on the same port with the same objects. Only pods are registered
//! today; adding `apps/v1` deployments means one more [`ResourceDef`] in [`resources`], and the
//! scale subresource or PATCH a new arm in [`handle`].

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

/// The resources served. Later work adds `apps/v1` deployments here.
pub fn resources() -> Vec<ResourceDef> {
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
            verbs: READ_VERBS,
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
        },
    ]
}

const READ_VERBS: &[&str] = &["get", "list", "watch"];

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
                if md.get("uid").is_none() {
                    inner.uid_counter += 1;
                    md["uid"] = json!(format!(
                        "00000000-0000-4000-8000-{:012x}",
                        inner.uid_counter
                    ));
                }
                if md.get("creationTimestamp").is_none() {
                    md["creationTimestamp"] = json!(rfc3339(now_secs()));
                }
            }
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
    if req.method() != axum::http::Method::GET {
        return status_error(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource: {path}"),
        );
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
    let resources: Vec<Value> = defs
        .iter()
        .filter(|d| d.group == group && d.version == version)
        .map(|d| {
            json!({
                "name": d.plural, "singularName": d.singular, "namespaced": d.namespaced,
                "kind": d.kind, "verbs": d.verbs,
                "shortNames": d.short_names, "categories": ["all"],
            })
        })
        .collect();
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
    let (namespace, plural, name) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        _ => {
            return status_error(
                404,
                "NotFound",
                "the server could not find the requested resource".into(),
            );
        }
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
        return match store.get(def, namespace.unwrap_or_default(), name) {
            Some(obj) if table => json_response(StatusCode::OK, &to_table(def, &[obj])),
            Some(obj) => json_response(StatusCode::OK, &obj),
            None => json_response(
                StatusCode::NOT_FOUND,
                &json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("{} \"{name}\" not found", def.plural),
                    "reason": "NotFound", "details": {"name": name, "kind": def.plural}, "code": 404,
                }),
            ),
        };
    }
    let filter = match Filter::parse(def, query) {
        Ok(f) => f,
        Err(msg) => return status_error(400, "BadRequest", msg),
    };
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return watch(store, def, namespace, filter, query, table);
    }
    let (items, rv) = store.list(def, namespace, &filter);
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
                let (items, rv) = list_locked(&inner, &def, namespace.as_deref(), &filter);
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
        let object = if table && kind != "ERROR" && kind != "BOOKMARK" {
            to_table(&def, std::slice::from_ref(obj))
        } else {
            obj.clone()
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

fn to_table(def: &ResourceDef, objs: &[Value]) -> Value {
    let col = |name: &str, ty: &str, priority: u8, desc: &str| {
        json!({"name": name, "type": ty, "format": if name == "Name" {"name"} else {""},
               "description": desc, "priority": priority})
    };
    let pods = def.kind == "Pod";
    let columns = if pods {
        vec![
            col(
                "Name",
                "string",
                0,
                "Name must be unique within a namespace.",
            ),
            col(
                "Ready",
                "string",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col(
                "Status",
                "string",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            col(
                "Restarts",
                "string",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            col(
                "Age",
                "string",
                0,
                "CreationTimestamp is a timestamp representing the server time when this object was created.",
            ),
            col("IP", "string", 1, "The IP address assigned to the pod"),
            col(
                "Node",
                "string",
                1,
                "The name of the node to which the pod is assigned",
            ),
        ]
    } else {
        vec![
            col(
                "Name",
                "string",
                0,
                "Name must be unique within a namespace.",
            ),
            col(
                "Age",
                "string",
                0,
                "CreationTimestamp is a timestamp representing the server time when this object was created.",
            ),
        ]
    };
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let name = meta(o, "name");
            let age = age(&meta(o, "creationTimestamp"));
            let cells = if pods {
                let statuses = o
                    .pointer("/status/containerStatuses")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let total = o
                    .pointer("/spec/containers")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                let ready = statuses.iter().filter(|s| s["ready"] == json!(true)).count();
                let restarts: u64 = statuses
                    .iter()
                    .map(|s| s["restartCount"].as_u64().unwrap_or(0))
                    .sum();
                let reason = statuses
                    .iter()
                    .find_map(|s| {
                        s.pointer("/state/waiting/reason")
                            .or_else(|| s.pointer("/state/terminated/reason"))
                            .and_then(Value::as_str)
                    })
                    .or_else(|| o.pointer("/status/phase").and_then(Value::as_str))
                    .unwrap_or("Unknown");
                let reason = if o.pointer("/metadata/deletionTimestamp").is_some() {
                    "Terminating"
                } else {
                    reason
                };
                json!([
                    name,
                    format!("{ready}/{total}"),
                    reason,
                    restarts.to_string(),
                    age,
                    o.pointer("/status/podIP").and_then(Value::as_str).unwrap_or("<none>"),
                    o.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("<none>"),
                ])
            } else {
                json!([name, age])
            };
            let mut partial = o["metadata"].clone();
            if let Some(m) = partial.as_object_mut() {
                m.remove("managedFields");
            }
            json!({
                "cells": cells,
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": partial},
            })
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {},
        "columnDefinitions": columns, "rows": rows,
    })
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
