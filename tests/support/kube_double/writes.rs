//! Writes on the double, with kube-apiserver's semantics: create (`POST`, 201, 409
//! AlreadyExists), replace (`PUT`), patch (`PATCH`: merge, strategic merge, JSON patch), delete
//! (`DELETE` with `DeleteOptions` preconditions), and the `scale` subresource (`autoscaling/v1`
//! `Scale`, GET/PUT/PATCH). Optimistic concurrency as the API server does it: a
//! `metadata.resourceVersion` (or `uid`) in the written object, or left in it by a patch, that is
//! not the stored one is a 409 Conflict with a real `Status` body. Writes to the main resource
//! keep the stored `status` (it is a subresource), `metadata.generation` moves only when `spec`
//! does, and a write that changes nothing keeps the resourceVersion (no event), as a no-op update
//! does on a real cluster. HPAs are stored as autoscaling/v2 and converted for autoscaling/v1.

// The error of a write step is the HTTP answer itself (a `Status` body with its code), returned
// as is; boxing it would only add an allocation to a test double's error path.
#![allow(clippy::result_large_err)]

use super::patch::{self, PatchType};
use super::*;
use axum::http::Method;

/// One write request, routed.
#[derive(Debug)]
pub(super) struct WriteReq<'a> {
    pub method: &'a Method,
    /// The resource as addressed (its version may differ from storage: autoscaling/v1 HPAs).
    pub def: &'a ResourceDef,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    pub sub: Option<&'a str>,
    pub content_type: &'a str,
    pub body: &'a [u8],
}

pub(super) fn write(store: &Store, w: &WriteReq<'_>) -> Response {
    let verb = match w.method.as_str() {
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "",
    };
    if !w.def.verbs.contains(&verb) {
        return method_not_allowed();
    }
    let ns = w.namespace.unwrap_or_default();
    match (verb, w.name, w.sub) {
        ("create", None, None) => create(store, w.def, ns, w.body),
        ("update", Some(name), None) => match parse_object(w.body) {
            Ok(obj) => respond(update(store, w.def, ns, name, Part::Main, |_| Ok(obj))),
            Err(e) => e,
        },
        ("patch", Some(name), None) => {
            patch_object(store, w.def, ns, name, Part::Main, w.content_type, w.body)
        }
        ("update", Some(name), Some("status")) if w.def.status => match parse_object(w.body) {
            Ok(obj) => respond(update(store, w.def, ns, name, Part::Status, |_| Ok(obj))),
            Err(e) => e,
        },
        ("patch", Some(name), Some("status")) if w.def.status => {
            patch_object(store, w.def, ns, name, Part::Status, w.content_type, w.body)
        }
        ("delete", Some(name), None) => delete(store, w.def, ns, name, w.body),
        ("update", Some(name), Some("scale")) if w.def.scale => match parse_object(w.body) {
            Ok(scale) => write_scale(store, w.def, ns, name, scale),
            Err(e) => e,
        },
        ("patch", Some(name), Some("scale")) if w.def.scale => {
            let Some(kind) = PatchType::from_content_type(w.content_type) else {
                return unsupported_patch(w.content_type);
            };
            let Some(parent) = store.get(&storage_def(w.def), ns, name) else {
                return not_found(w.def, name);
            };
            let mut scale = scale_of(&parent);
            if let Err(msg) = patch::apply(kind, &mut scale, w.body) {
                return status_error(400, "BadRequest", msg);
            }
            write_scale(store, w.def, ns, name, scale)
        }
        _ => method_not_allowed(),
    }
}

fn method_not_allowed() -> Response {
    status_error(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource".into(),
    )
}

fn unsupported_patch(ct: &str) -> Response {
    status_error(
        415,
        "UnsupportedMediaType",
        format!(
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {ct:?})"
        ),
    )
}

fn parse_object(body: &[u8]) -> Result<Value, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(status_error(
            400,
            "BadRequest",
            "the object provided is unrecognized: not a JSON object".into(),
        )),
        Err(e) => Err(status_error(
            400,
            "BadRequest",
            format!("the object provided is unrecognized: {e}"),
        )),
    }
}

fn respond(r: Result<Value, Response>) -> Response {
    match r {
        Ok(obj) => json_response(StatusCode::OK, &obj),
        Err(e) => e,
    }
}

/// `deployments.apps` (`pods` in the core group): how the API server names a resource in
/// messages.
fn qualified(def: &ResourceDef) -> String {
    if def.group.is_empty() {
        def.plural.to_owned()
    } else {
        format!("{}.{}", def.plural, def.group)
    }
}

fn details(def: &ResourceDef, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": def.plural});
    if !def.group.is_empty() {
        d["group"] = json!(def.group);
    }
    d
}

fn failure(code: u16, reason: &str, message: String, details: Value) -> Response {
    let mut s = status_object(code, reason, &message);
    s["details"] = details;
    json_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &s,
    )
}

pub(super) fn not_found(def: &ResourceDef, name: &str) -> Response {
    failure(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", qualified(def)),
        details(def, name),
    )
}

fn conflict(def: &ResourceDef, name: &str, why: &str) -> Response {
    failure(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": {why}",
            qualified(def)
        ),
        details(def, name),
    )
}

const MODIFIED: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

/// A 422 for one field, as field validation reports it.
fn invalid(def: &ResourceDef, name: &str, field: &str, value: &Value, detail: &str) -> Response {
    let group = if def.group.is_empty() {
        String::new()
    } else {
        format!(".{}", def.group)
    };
    let cause = format!("Invalid value: {value}: {detail}");
    let mut d = json!({
        "name": name, "kind": def.kind,
        "causes": [{"reason": "FieldValueInvalid", "message": cause, "field": field}],
    });
    if !def.group.is_empty() {
        d["group"] = json!(def.group);
    }
    failure(
        422,
        "Invalid",
        format!(
            "{}{group} \"{name}\" is invalid: {field}: {cause}",
            def.kind
        ),
        d,
    )
}

/// Field validation for what healing writes: replica counts and HPA bounds.
fn validate(def: &ResourceDef, name: &str, obj: &Value) -> Result<(), Response> {
    let int = |p: &str| obj.pointer(p).and_then(Value::as_i64);
    match def.kind {
        "Deployment" | "StatefulSet" | "ReplicaSet" => {
            if let Some(r) = int("/spec/replicas")
                && r < 0
            {
                return Err(invalid(
                    def,
                    name,
                    "spec.replicas",
                    &json!(r),
                    "must be greater than or equal to 0",
                ));
            }
        }
        "HorizontalPodAutoscaler" => {
            let min = int("/spec/minReplicas").unwrap_or(1);
            let max = int("/spec/maxReplicas").unwrap_or(0);
            if min < 1 {
                return Err(invalid(
                    def,
                    name,
                    "spec.minReplicas",
                    &json!(min),
                    "must be greater than or equal to 1",
                ));
            }
            if max < 1 {
                return Err(invalid(
                    def,
                    name,
                    "spec.maxReplicas",
                    &json!(max),
                    "must be greater than or equal to 1",
                ));
            }
            if min > max {
                return Err(invalid(
                    def,
                    name,
                    "spec.maxReplicas",
                    &json!(max),
                    "must be greater than or equal to `minReplicas`",
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

/// The API server's defaulting for the fields the double's readers rely on.
fn default(def: &ResourceDef, obj: &mut Value) {
    match def.kind {
        "Deployment" | "StatefulSet" | "ReplicaSet"
            if obj.pointer("/spec/replicas").is_none_or(Value::is_null)
                && obj["spec"].is_object() =>
        {
            obj["spec"]["replicas"] = json!(1);
        }
        "HorizontalPodAutoscaler" if def.version == "v2" => {
            if obj.pointer("/spec/minReplicas").is_none_or(Value::is_null) {
                obj["spec"]["minReplicas"] = json!(1);
            }
            if obj
                .pointer("/spec/metrics")
                .is_none_or(|m| m.as_array().is_none_or(Vec::is_empty))
            {
                obj["spec"]["metrics"] = json!([{"type": "Resource", "resource": {
                    "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]);
            }
        }
        _ => {}
    }
}

fn create(store: &Store, def: &ResourceDef, ns: &str, body: &[u8]) -> Response {
    let mut obj = match parse_object(body) {
        Ok(o) => o,
        Err(e) => return e,
    };
    if obj["metadata"]
        .get("namespace")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty() && n != ns)
    {
        return status_error(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        );
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if meta(&obj, "name").is_empty() {
        let prefix = meta(&obj, "generateName");
        if prefix.is_empty() {
            return failure(
                422,
                "Invalid",
                format!(
                    "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                    def.kind
                ),
                json!({"kind": def.kind, "causes": [{"reason": "FieldValueRequired", "message": "Required value: name or generateName is required", "field": "metadata.name"}]}),
            );
        }
        obj["metadata"]["name"] = json!(format!("{prefix}{}", random_suffix()));
    }
    let name = meta(&obj, "name");
    if def.namespaced {
        obj["metadata"]["namespace"] = json!(ns);
    }
    // A client's `resourceVersion` or `uid` on create is ignored (the API server clears them);
    // a null `creationTimestamp` (Go clients send one) is not a timestamp.
    for f in ["resourceVersion", "uid", "creationTimestamp", "generation"] {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove(f);
        }
    }
    let storage = storage_def(def);
    let mut obj = convert_in(def, obj);
    default(&storage, &mut obj);
    if let Err(e) = validate(&storage, &name, &obj) {
        return e;
    }
    let stored = {
        let mut inner = lock(&store.inner);
        if def.namespaced {
            let nsdef = namespaces();
            let key = Store::key(&nsdef, &json!({"metadata": {"name": ns}}));
            if !inner.objects.contains_key(&key) {
                return not_found(&nsdef, ns);
            }
        }
        if inner.objects.contains_key(&Store::key(&storage, &obj)) {
            return failure(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", qualified(def)),
                details(def, &name),
            );
        }
        let stored = store.put_locked(&mut inner, &storage, obj);
        store.settle_locked(&mut inner, &storage, ns, &name);
        stored
    };
    json_response(StatusCode::CREATED, &convert_out(def, stored))
}

/// Which part of an object a write may change: the main resource keeps the stored status,
/// the status subresource keeps everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    Main,
    Status,
}

/// Replaces object `name` with what `f` makes of the current one (as the client sees it, in
/// `def`'s version), under the store lock, with the API server's preconditions.
pub(super) fn update(
    store: &Store,
    def: &ResourceDef,
    ns: &str,
    name: &str,
    part: Part,
    f: impl FnOnce(Value) -> Result<Value, Response>,
) -> Result<Value, Response> {
    let storage = storage_def(def);
    let mut inner = lock(&store.inner);
    let key = (
        storage.group.to_owned(),
        storage.version.to_owned(),
        storage.plural.to_owned(),
        if storage.namespaced {
            ns.to_owned()
        } else {
            String::new()
        },
        name.to_owned(),
    );
    let Some(current) = inner.objects.get(&key).cloned() else {
        return Err(not_found(def, name));
    };
    let new = f(convert_out(def, current.clone()))?;
    if !new["metadata"].is_object() {
        return Err(status_error(400, "BadRequest", "metadata: required".into()));
    }
    let given = meta(&new, "name");
    if !given.is_empty() && given != name {
        return Err(status_error(
            400,
            "BadRequest",
            format!("the name of the object ({given}) does not match the name on the URL ({name})"),
        ));
    }
    let want_rv = meta(&new, "resourceVersion");
    if !want_rv.is_empty() && want_rv != meta(&current, "resourceVersion") {
        return Err(conflict(def, name, MODIFIED));
    }
    let want_uid = meta(&new, "uid");
    if !want_uid.is_empty() && want_uid != meta(&current, "uid") {
        return Err(conflict(
            def,
            name,
            &format!(
                "Precondition failed: UID in precondition: {want_uid}, UID in object meta: {}",
                meta(&current, "uid")
            ),
        ));
    }
    let mut new = convert_in(def, new);
    new["metadata"]["name"] = json!(name);
    if storage.namespaced {
        new["metadata"]["namespace"] = json!(ns);
    }
    match part {
        Part::Main if storage.status => match current.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        },
        Part::Status => {
            let status = new.get("status").cloned();
            let metadata = new["metadata"].clone();
            new = current.clone();
            new["metadata"]["labels"] = metadata["labels"].clone();
            new["metadata"]["annotations"] = metadata["annotations"].clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        Part::Main => {}
    }
    for f in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
        new["metadata"][f] = current["metadata"][f].clone();
    }
    if let Some(m) = new["metadata"].as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    default(&storage, &mut new);
    validate(&storage, name, &new)?;
    new["kind"] = current["kind"].clone();
    new["apiVersion"] = current["apiVersion"].clone();
    if new == current {
        // A no-op update: the API server writes nothing and keeps the version.
        return Ok(convert_out(def, current));
    }
    let stored = store.put_locked(&mut inner, &storage, new);
    store.settle_locked(&mut inner, &storage, ns, name);
    Ok(convert_out(def, stored))
}

fn patch_object(
    store: &Store,
    def: &ResourceDef,
    ns: &str,
    name: &str,
    part: Part,
    content_type: &str,
    body: &[u8],
) -> Response {
    let Some(kind) = PatchType::from_content_type(content_type) else {
        return unsupported_patch(content_type);
    };
    respond(update(store, def, ns, name, part, |mut current| {
        patch::apply(kind, &mut current, body)
            .map_err(|msg| status_error(400, "BadRequest", msg))?;
        Ok(current)
    }))
}

fn delete(store: &Store, def: &ResourceDef, ns: &str, name: &str, body: &[u8]) -> Response {
    let opts: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match parse_object(body) {
            Ok(o) => o,
            Err(e) => return e,
        }
    };
    let storage = storage_def(def);
    let Some(current) = store.get(&storage, ns, name) else {
        return not_found(def, name);
    };
    let want_uid = opts
        .pointer("/preconditions/uid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !want_uid.is_empty() && want_uid != meta(&current, "uid") {
        return conflict(
            def,
            name,
            &format!(
                "Precondition failed: UID in precondition: {want_uid}, UID in object meta: {}",
                meta(&current, "uid")
            ),
        );
    }
    let want_rv = opts
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !want_rv.is_empty() && want_rv != meta(&current, "resourceVersion") {
        return conflict(
            def,
            name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {want_rv}, ResourceVersion in object meta: {}",
                meta(&current, "resourceVersion")
            ),
        );
    }
    // Deleted at once, as with no kubelet to wait for (grace period 0): the deleted object is
    // the answer, as for any immediate deletion.
    match store.delete(&storage, ns, name) {
        Some(obj) => json_response(StatusCode::OK, &convert_out(def, obj)),
        None => not_found(def, name),
    }
}

/// The `autoscaling/v1` Scale of a workload: its identity and version are the parent's.
pub(super) fn scale_of(parent: &Value) -> Value {
    let mut md = json!({});
    for f in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = parent["metadata"].get(f) {
            md[f] = v.clone();
        }
    }
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": md,
        "spec": {"replicas": parent.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {
            "replicas": parent.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector_string(parent.pointer("/spec/selector")),
        },
    })
}

/// A label selector as the Scale's `status.selector` string (`app=web,tier in (a,b)`).
fn selector_string(sel: Option<&Value>) -> String {
    let Some(sel) = sel else {
        return String::new();
    };
    let mut terms: Vec<String> = sel["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        terms.push(match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_owned(),
            _ => format!("!{key}"),
        });
    }
    terms.sort();
    terms.join(",")
}

fn write_scale(store: &Store, def: &ResourceDef, ns: &str, name: &str, scale: Value) -> Response {
    let replicas = scale.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
    let Some(r) = replicas.as_i64() else {
        return status_error(400, "BadRequest", "spec.replicas: not an integer".into());
    };
    if r < 0 {
        let scale_def = ResourceDef {
            group: "autoscaling",
            kind: "Scale",
            ..def.clone()
        };
        return invalid(
            &scale_def,
            name,
            "spec.replicas",
            &json!(r),
            "must be greater than or equal to 0",
        );
    }
    let result = update(store, def, ns, name, Part::Main, |mut parent| {
        // The Scale's resourceVersion and uid are the parent's: a stale one is a conflict.
        for f in ["resourceVersion", "uid"] {
            let v = meta(&scale, f);
            parent["metadata"][f] = json!(v);
        }
        parent["spec"]["replicas"] = json!(r);
        Ok(parent)
    });
    match result {
        Ok(parent) => json_response(StatusCode::OK, &scale_of(&parent)),
        Err(e) => e,
    }
}

/// `generateName`'s five-character suffix, from the API server's alphabet.
fn random_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mut x = (nanos
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15))
    .wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (0..5)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

// ---- HorizontalPodAutoscaler versions --------------------------------------------------------

/// The stored resource of `def`: HPAs live as autoscaling/v2 whichever version is asked.
pub(super) fn storage_def(def: &ResourceDef) -> ResourceDef {
    if def.group == "autoscaling" && def.version != "v2" {
        resource_version("autoscaling", "v2", def.plural)
    } else {
        def.clone()
    }
}

/// A stored object as `def`'s version shows it.
pub(super) fn convert_out(def: &ResourceDef, obj: Value) -> Value {
    if !(def.group == "autoscaling" && def.version == "v1") {
        return obj;
    }
    let mut out = obj.clone();
    out["apiVersion"] = json!("autoscaling/v1");
    let mut spec = json!({
        "scaleTargetRef": obj.pointer("/spec/scaleTargetRef").cloned().unwrap_or(json!({})),
        "maxReplicas": obj.pointer("/spec/maxReplicas").cloned().unwrap_or(json!(0)),
    });
    if let Some(min) = obj.pointer("/spec/minReplicas") {
        spec["minReplicas"] = min.clone();
    }
    if let Some(cpu) = cpu_target(obj.pointer("/spec/metrics")) {
        spec["targetCPUUtilizationPercentage"] = json!(cpu);
    }
    out["spec"] = spec;
    let st = obj.get("status").cloned().unwrap_or(json!({}));
    let mut status = json!({
        "currentReplicas": st.get("currentReplicas").cloned().unwrap_or(json!(0)),
        "desiredReplicas": st.get("desiredReplicas").cloned().unwrap_or(json!(0)),
    });
    for f in ["observedGeneration", "lastScaleTime"] {
        if let Some(v) = st.get(f) {
            status[f] = v.clone();
        }
    }
    if let Some(cur) = st["currentMetrics"].as_array().and_then(|ms| {
        ms.iter().find_map(|m| {
            (m.pointer("/resource/name") == Some(&json!("cpu")))
                .then(|| m.pointer("/resource/current/averageUtilization").cloned())
                .flatten()
        })
    }) {
        status["currentCPUUtilizationPercentage"] = cur;
    }
    out["status"] = status;
    out
}

fn cpu_target(metrics: Option<&Value>) -> Option<i64> {
    metrics?.as_array()?.iter().find_map(|m| {
        (m["type"] == "Resource" && m.pointer("/resource/name") == Some(&json!("cpu")))
            .then(|| m.pointer("/resource/target/averageUtilization")?.as_i64())
            .flatten()
    })
}

/// An object written in `def`'s version, as stored.
pub(super) fn convert_in(def: &ResourceDef, obj: Value) -> Value {
    if !(def.group == "autoscaling" && def.version == "v1") {
        return obj;
    }
    let mut out = obj.clone();
    out["apiVersion"] = json!("autoscaling/v2");
    let mut spec = json!({
        "scaleTargetRef": obj.pointer("/spec/scaleTargetRef").cloned().unwrap_or(json!({})),
        "maxReplicas": obj.pointer("/spec/maxReplicas").cloned().unwrap_or(json!(0)),
    });
    if let Some(min) = obj.pointer("/spec/minReplicas") {
        spec["minReplicas"] = min.clone();
    }
    if let Some(cpu) = obj.pointer("/spec/targetCPUUtilizationPercentage") {
        spec["metrics"] = json!([{"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": cpu}}}]);
    }
    out["spec"] = spec;
    if let Some(st) = obj.get("status") {
        let mut status = json!({
            "currentReplicas": st.get("currentReplicas").cloned().unwrap_or(json!(0)),
            "desiredReplicas": st.get("desiredReplicas").cloned().unwrap_or(json!(0)),
        });
        for f in ["observedGeneration", "lastScaleTime"] {
            if let Some(v) = st.get(f) {
                status[f] = v.clone();
            }
        }
        out["status"] = status;
    }
    out
}

/// The API server's 404 for a path it does not serve.
pub(super) fn not_found_path() -> Response {
    status_error(
        404,
        "NotFound",
        "the server could not find the requested resource".into(),
    )
}
