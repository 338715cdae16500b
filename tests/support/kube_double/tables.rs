//! Server-side printing: the `Table` kubectl asks for (`Accept: ...;as=Table`), with the
//! columns kube-apiserver's printers give each kind (`kubectl get` shows exactly these).

use super::*;

fn col(name: &str, ty: &str, priority: u8, desc: &str) -> Value {
    json!({"name": name, "type": ty, "format": if name == "Name" {"name"} else {""},
           "description": desc, "priority": priority})
}

const NAME: &str = "Name must be unique within a namespace.";
const AGE: &str =
    "CreationTimestamp is a timestamp representing the server time when this object was created.";

fn columns(kind: &str) -> Vec<Value> {
    let mut cols = vec![col("Name", "string", 0, NAME)];
    match kind {
        "Pod" => cols.extend([
            col("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
            col("Status", "string", 0, "The aggregate status of the containers in this pod."),
            col("Restarts", "string", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            col("Age", "string", 0, AGE),
            col("IP", "string", 1, "The IP address assigned to the pod"),
            col("Node", "string", 1, "The name of the node to which the pod is assigned"),
        ]),
        "Deployment" => cols.extend([
            col("Ready", "string", 0, "Number of the pod with ready state"),
            col("Up-to-date", "string", 0, "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
            col("Available", "string", 0, "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
            col("Age", "string", 0, AGE),
            col("Containers", "string", 1, "Names of each container in the template."),
            col("Images", "string", 1, "Images referenced by each container in the template."),
            col("Selector", "string", 1, "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment."),
        ]),
        "StatefulSet" => cols.extend([
            col("Ready", "string", 0, "Number of the pod with ready state"),
            col("Age", "string", 0, AGE),
            col("Containers", "string", 1, "Names of each container in the template."),
            col("Images", "string", 1, "Images referenced by each container in the template."),
        ]),
        "ReplicaSet" => cols.extend([
            col("Desired", "integer", 0, "Replicas is the number of desired replicas."),
            col("Current", "integer", 0, "Replicas is the most recently observed number of replicas."),
            col("Ready", "integer", 0, "The number of ready replicas for this replica set."),
            col("Age", "string", 0, AGE),
            col("Containers", "string", 1, "Names of each container in the template."),
            col("Images", "string", 1, "Images referenced by each container in the template."),
            col("Selector", "string", 1, "Selector is a label query over pods that should match the replica count."),
        ]),
        "HorizontalPodAutoscaler" => cols.extend([
            col("Reference", "string", 0, "Reference to the target resource"),
            col("Targets", "string", 0, "Targets of the metrics"),
            col("MinPods", "string", 0, "Minimum number of pods"),
            col("MaxPods", "integer", 0, "Maximum number of pods"),
            col("Replicas", "integer", 0, "Current number of replicas"),
            col("Age", "string", 0, AGE),
        ]),
        _ => cols.push(col("Age", "string", 0, AGE)),
    }
    cols
}

fn int(o: &Value, p: &str) -> i64 {
    o.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

fn template_columns(o: &Value) -> (String, String) {
    let containers = o
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let join = |f: &str| {
        containers
            .iter()
            .map(|c| c[f].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
            .join(",")
    };
    (join("name"), join("image"))
}

fn selector(o: &Value) -> String {
    let s = writes::scale_of(o);
    let s = s["status"]["selector"].as_str().unwrap_or_default();
    if s.is_empty() {
        "<none>".into()
    } else {
        s.to_owned()
    }
}

/// The HPA's `Targets` cell, as kubectl 1.32 prints it (`cpu: <unknown>/80%`).
fn hpa_targets(o: &Value) -> String {
    let metrics = o
        .pointer("/spec/metrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if metrics.is_empty() {
        return "<none>".into();
    }
    let current = o
        .pointer("/status/currentMetrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    metrics
        .iter()
        .map(|m| {
            let name = m
                .pointer("/resource/name")
                .and_then(Value::as_str)
                .unwrap_or("metric");
            let target = &m.pointer("/resource/target").cloned().unwrap_or_default();
            let now = current
                .iter()
                .find(|c| c.pointer("/resource/name").and_then(Value::as_str) == Some(name))
                .and_then(|c| c.pointer("/resource/current/averageUtilization"))
                .and_then(Value::as_i64)
                .map_or("<unknown>".to_owned(), |v| format!("{v}%"));
            match target["averageUtilization"].as_i64() {
                Some(t) => format!("{name}: {now}/{t}%"),
                None => format!(
                    "{name}: {now}/{}",
                    target["averageValue"]
                        .as_str()
                        .or(target["value"].as_str())
                        .unwrap_or("<unknown>")
                ),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn cells(kind: &str, o: &Value) -> Value {
    let name = meta(o, "name");
    let age = age(&meta(o, "creationTimestamp"));
    match kind {
        "Pod" => {
            let statuses = o
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let total = o
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let ready = statuses
                .iter()
                .filter(|s| s["ready"] == json!(true))
                .count();
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
                o.pointer("/status/podIP")
                    .and_then(Value::as_str)
                    .unwrap_or("<none>"),
                o.pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or("<none>"),
            ])
        }
        "Deployment" => {
            let (containers, images) = template_columns(o);
            json!([
                name,
                format!(
                    "{}/{}",
                    int(o, "/status/readyReplicas"),
                    int(o, "/spec/replicas")
                ),
                int(o, "/status/updatedReplicas"),
                int(o, "/status/availableReplicas"),
                age,
                containers,
                images,
                selector(o),
            ])
        }
        "StatefulSet" => {
            let (containers, images) = template_columns(o);
            json!([
                name,
                format!(
                    "{}/{}",
                    int(o, "/status/readyReplicas"),
                    int(o, "/spec/replicas")
                ),
                age,
                containers,
                images,
            ])
        }
        "ReplicaSet" => {
            let (containers, images) = template_columns(o);
            json!([
                name,
                int(o, "/spec/replicas"),
                int(o, "/status/replicas"),
                int(o, "/status/readyReplicas"),
                age,
                containers,
                images,
                selector(o),
            ])
        }
        "HorizontalPodAutoscaler" => {
            let target = o
                .pointer("/spec/scaleTargetRef")
                .cloned()
                .unwrap_or_default();
            json!([
                name,
                format!(
                    "{}/{}",
                    target["kind"].as_str().unwrap_or_default(),
                    target["name"].as_str().unwrap_or_default()
                ),
                hpa_targets(o),
                o.pointer("/spec/minReplicas")
                    .and_then(Value::as_i64)
                    .map_or("<unset>".to_owned(), |m| m.to_string()),
                int(o, "/spec/maxReplicas"),
                int(o, "/status/currentReplicas"),
                age,
            ])
        }
        _ => json!([name, age]),
    }
}

/// The `Table` of `objs`, all of `def`'s kind.
pub(super) fn to_table(def: &ResourceDef, objs: &[Value]) -> Value {
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let mut partial = o["metadata"].clone();
            if let Some(m) = partial.as_object_mut() {
                m.remove("managedFields");
            }
            json!({
                "cells": cells(def.kind, o),
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": partial},
            })
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {},
        "columnDefinitions": columns(def.kind), "rows": rows,
    })
}
