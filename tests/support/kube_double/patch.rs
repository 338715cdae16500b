//! The three patch types the double's PATCH accepts, as kube-apiserver applies them: JSON merge
//! patch (RFC 7386) and JSON patch (RFC 6902) through the `json-patch` crate, and Kubernetes'
//! strategic merge patch, hand-written because no crate implements it: lists of objects with a
//! patch merge key (containers by `name`, volume mounts by `mountPath`, ...) are merged by key,
//! and the `$patch`, `$retainKeys`, `$setElementOrder/…` and `$deleteFromPrimitiveList/…`
//! directives are honoured. The merge keys are looked up by field name, which is exact for the
//! apps/v1, core/v1 pod-template and autoscaling objects the double serves.

use serde_json::{Map, Value};

/// A PATCH's type, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/json-patch+json`.
    Json,
}

impl PatchType {
    /// The patch type of a `Content-Type`, `None` for anything else (server-side apply
    /// included, which the double does not implement).
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/json-patch+json" => Some(PatchType::Json),
            _ => None,
        }
    }
}

/// Applies `patch` to `doc`. The error is the message kube-apiserver's 400 or 422 carries.
pub fn apply(kind: PatchType, doc: &mut Value, patch: &[u8]) -> Result<(), String> {
    match kind {
        PatchType::Merge => {
            let p: Value = serde_json::from_slice(patch).map_err(|e| format!("{e}"))?;
            if !p.is_object() {
                return Err(
                    "json: cannot unmarshal into Go value of type map[string]interface {}".into(),
                );
            }
            json_patch::merge(doc, &p);
            Ok(())
        }
        PatchType::Json => {
            let ops: Vec<json_patch::PatchOperation> =
                serde_json::from_slice(patch).map_err(|e| format!("{e}"))?;
            json_patch::patch(doc, &ops).map_err(|e| format!("{e}"))
        }
        PatchType::Strategic => {
            let p: Value = serde_json::from_slice(patch).map_err(|e| format!("{e}"))?;
            let Value::Object(p) = p else {
                return Err(
                    "json: cannot unmarshal into Go value of type map[string]interface {}".into(),
                );
            };
            if !doc.is_object() {
                *doc = Value::Object(Map::new());
            }
            if let Value::Object(d) = doc {
                merge_map(d, &p)?;
            }
            Ok(())
        }
    }
}

/// The patch merge key of a list field, by its name.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims" => "name",
        "ports" => "containerPort",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        "conditions" => "type",
        "ownerReferences" => "uid",
        _ => return None,
    })
}

/// Lists of scalars merged as sets.
fn primitive_merge(field: &str) -> bool {
    field == "finalizers"
}

fn merge_map(doc: &mut Map<String, Value>, patch: &Map<String, Value>) -> Result<(), String> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *doc = strip(patch);
            return Ok(());
        }
        Some("delete") => {
            doc.clear();
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("Unknown patch type: {other}")),
    }
    for (k, v) in patch {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let drop: Vec<Value> = v.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = doc.get_mut(field) {
                list.retain(|x| !drop.contains(x));
            }
            continue;
        }
        if v.is_null() {
            doc.remove(k);
            continue;
        }
        match (doc.get_mut(k), v) {
            (Some(Value::Object(d)), Value::Object(p)) => {
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    doc.remove(k);
                } else {
                    merge_map(d, p)?;
                }
            }
            (Some(Value::Array(d)), Value::Array(p)) if merge_key(k).is_some() => {
                merge_list(d, p, merge_key(k).unwrap_or("name"))?;
            }
            (Some(Value::Array(d)), Value::Array(p)) if primitive_merge(k) => {
                for x in p {
                    if !d.contains(x) {
                        d.push(x.clone());
                    }
                }
            }
            _ => {
                doc.insert(k.clone(), strip_value(v));
            }
        }
    }
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        doc.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(())
}

fn merge_list(doc: &mut Vec<Value>, patch: &[Value], key: &str) -> Result<(), String> {
    if patch
        .iter()
        .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace") && e.get(key).is_none())
    {
        *doc = patch
            .iter()
            .filter(|e| e.get("$patch").is_none() || e.get(key).is_some())
            .map(strip_value)
            .collect();
        return Ok(());
    }
    for elem in patch {
        let Some(p) = elem.as_object() else {
            return Err(format!(
                "merging a list by \"{key}\": an element is not an object"
            ));
        };
        let Some(id) = p.get(key) else {
            return Err(format!(
                "map: {elem} does not contain declared merge key: {key}"
            ));
        };
        let at = doc.iter().position(|d| d.get(key) == Some(id));
        match (p.get("$patch").and_then(Value::as_str), at) {
            (Some("delete"), Some(i)) => {
                doc.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => {
                if let Value::Object(d) = &mut doc[i] {
                    merge_map(d, p)?;
                }
            }
            (_, None) => doc.push(strip_value(elem)),
        }
    }
    Ok(())
}

/// A patch fragment without its directives, as stored.
fn strip(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
        .map(|(k, v)| (k.clone(), strip_value(v)))
        .collect()
}

fn strip_value(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip(m)),
        Value::Array(a) => Value::Array(a.iter().map(strip_value).collect()),
        other => other.clone(),
    }
}
