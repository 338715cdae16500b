//! terraform/: every file parses with python-hcl2 (`bc-python-hcl2`, the fork checkov itself depends on and pins), `checkov`
//! finds no failed check in it (the waivers are in place, each with its reason), and the
//! module's IAM policies, read from the HCL, grant each role exactly the actions listed here:
//! the agent puts records (and, optionally, reads the model prefix), the aggregator reads the
//! stream and writes its tables, the lake and the topic, the trainer reads the lake and writes
//! the model prefix. The storage settings the module promises (KMS everywhere, a private,
//! versioned, TLS-only bucket, point-in-time recovery, the store's key schema) are checked on
//! the parsed resources, and every variable and output is documented.

use crate::support::{python, repo_root};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::OnceLock;

/// Every `.tf` file and `terraform.tfvars.example` under terraform/, parsed, by path relative
/// to terraform/. python-hcl2 wraps each attribute's value in a one-element list; the script
/// unwraps those (a list holding one block stays a list), so `x = "a"` reads as `"a"`.
fn parsed() -> &'static BTreeMap<String, Value> {
    static PARSED: OnceLock<BTreeMap<String, Value>> = OnceLock::new();
    PARSED.get_or_init(|| {
        let script = r#"
import json, pathlib, sys, hcl2
def unwrap(v):
    # An attribute's value is wrapped once; a block is a list of dicts (never unwrapped).
    if isinstance(v, dict):
        return {k: unwrap(attr(x)) for k, x in v.items() if not k.startswith("__")}
    if isinstance(v, list):
        return [unwrap(x) for x in v]
    return v
def attr(x):
    return x[0] if isinstance(x, list) and len(x) == 1 and not isinstance(x[0], dict) else x
root = pathlib.Path(sys.argv[1])
out = {}
for p in sorted(list(root.rglob("*.tf")) + list(root.rglob("terraform.tfvars.example"))):
    with open(p) as f:
        out[str(p.relative_to(root))] = unwrap(hcl2.load(f))
json.dump(out, sys.stdout)
"#;
        let out = Command::new(python())
            .args(["-c", script])
            .arg(repo_root().join("terraform"))
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "python-hcl2 could not parse terraform/:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    })
}

const MODULE: &str = "modules/selfheal";

/// The blocks `kind` (`resource`, `data`, `variable`, `output`) of type `ty` in the module,
/// by name. (For `variable` and `output`, `ty` is ignored: they have no type label.)
fn blocks(kind: &str, ty: Option<&str>) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (path, file) in parsed() {
        if !path.starts_with(MODULE) {
            continue;
        }
        for entry in file[kind].as_array().into_iter().flatten() {
            for (t, named) in entry.as_object().expect("block") {
                match ty {
                    Some(ty) if t != ty => {}
                    Some(_) => {
                        for (name, body) in named.as_object().expect("named block") {
                            out.insert(name.clone(), body.clone());
                        }
                    }
                    None => {
                        out.insert(t.clone(), named.clone());
                    }
                }
            }
        }
    }
    out
}

fn list(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::Null => vec![],
        one => vec![one.clone()],
    }
}

fn strings(v: &Value) -> BTreeSet<String> {
    list(v)
        .iter()
        .map(|x| x.as_str().expect("a string").to_owned())
        .collect()
}

/// The actions of an `aws_iam_policy_document`, after checking that every statement allows
/// (no Deny needed to make it safe), names its resources, and has no wildcard action.
fn policy_actions(doc_name: &str, doc: &Value) -> BTreeSet<String> {
    let mut actions = BTreeSet::new();
    for st in list(&doc["statement"]) {
        let sid = &st["sid"];
        assert!(
            st["effect"].is_null() || st["effect"] == "Allow",
            "{doc_name}/{sid}"
        );
        let resources = strings(&st["resources"]);
        assert!(!resources.is_empty(), "{doc_name}/{sid} names no resource");
        assert!(
            !resources.contains("*"),
            "{doc_name}/{sid} grants on every resource"
        );
        assert!(
            st["not_actions"].is_null() && st["not_resources"].is_null(),
            "{doc_name}/{sid}"
        );
        for a in strings(&st["actions"]) {
            assert!(!a.contains('*'), "{doc_name}/{sid} grants the wildcard {a}");
            actions.insert(a);
        }
    }
    actions
}

/// `a.b["key"].c` out of an interpolation like `${a.b["key"].c}`.
fn reference(v: &Value) -> String {
    let s = v.as_str().expect("an expression");
    s.trim_start_matches("${").trim_end_matches('}').to_owned()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn terraform_parses_with_python_hcl2() {
    let files: BTreeSet<&str> = parsed().keys().map(String::as_str).collect();
    for want in [
        "modules/selfheal/main.tf",
        "modules/selfheal/iam.tf",
        "modules/selfheal/variables.tf",
        "modules/selfheal/outputs.tf",
        "modules/selfheal/versions.tf",
        "examples/eks/main.tf",
        "examples/eks/variables.tf",
        "examples/eks/outputs.tf",
        "examples/eks/terraform.tfvars.example",
    ] {
        assert!(
            files.contains(want),
            "{want} missing or not parsed: {files:?}"
        );
    }
    // The example root uses the module, and its tfvars example sets only declared variables,
    // every required one among them.
    let example = |f: &str| &parsed()[&format!("examples/eks/{f}")];
    let module = list(&example("main.tf")["module"])
        .into_iter()
        .find_map(|m| m.get("selfheal").cloned())
        .expect("module \"selfheal\"");
    assert_eq!(module["source"], "../../modules/selfheal");
    let declared: BTreeMap<String, Value> = list(&example("variables.tf")["variable"])
        .into_iter()
        .flat_map(|v| v.as_object().cloned().expect("variable"))
        .collect();
    let tfvars = example("terraform.tfvars.example")
        .as_object()
        .expect("tfvars");
    for k in tfvars.keys() {
        assert!(
            declared.contains_key(k),
            "terraform.tfvars.example sets undeclared {k}"
        );
    }
    for (k, v) in &declared {
        if v.get("default").is_none() {
            assert!(
                tfvars.contains_key(k),
                "terraform.tfvars.example lacks required {k}"
            );
        }
    }
    // Every variable and output, of the module and the example, says what it is.
    for (path, file) in parsed() {
        for kind in ["variable", "output"] {
            for entry in list(&file[kind]) {
                for (name, body) in entry.as_object().expect("block") {
                    let d = body["description"].as_str().unwrap_or("");
                    assert!(
                        d.split_whitespace().count() >= 3,
                        "{path}: {kind} {name} is undocumented"
                    );
                }
            }
        }
    }
}

#[test]
fn each_role_gets_exactly_its_actions() {
    let docs = blocks("data", Some("aws_iam_policy_document"));
    // Which document each role's inline policies attach: `role = aws_iam_role.this["agent"].id`,
    // `policy = data.aws_iam_policy_document.agent_put_records.json`.
    let mut by_role: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut by_doc: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, rp) in blocks("resource", Some("aws_iam_role_policy")) {
        let role = reference(&rp["role"]);
        let role = role
            .strip_prefix("aws_iam_role.this[\"")
            .and_then(|r| r.strip_suffix("\"].id"))
            .unwrap_or_else(|| panic!("{name}: role {role}"))
            .to_owned();
        let doc = reference(&rp["policy"]);
        let doc = doc
            .strip_prefix("data.aws_iam_policy_document.")
            .and_then(|d| d.strip_suffix(".json"))
            .unwrap_or_else(|| panic!("{name}: policy {doc}"))
            .to_owned();
        let actions = policy_actions(&doc, docs.get(&doc).expect("the policy document"));
        by_role
            .entry(role)
            .or_default()
            .extend(actions.iter().cloned());
        by_doc.insert(doc, actions);
    }
    let put_records = set(&["kinesis:PutRecords", "kms:GenerateDataKey"]);
    let model_pull = set(&["s3:GetObject", "s3:ListBucket", "kms:Decrypt"]);
    let aggregator = set(&[
        "kinesis:ListShards",
        "kinesis:GetShardIterator",
        "kinesis:GetRecords",
        "dynamodb:DescribeTable",
        "dynamodb:GetItem",
        "dynamodb:Query",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:BatchWriteItem",
        "dynamodb:ConditionCheckItem",
        "s3:PutObject",
        "sns:Publish",
        "secretsmanager:GetSecretValue",
        "kms:Decrypt",
        "kms:GenerateDataKey",
    ]);
    let trainer = set(&[
        "s3:ListBucket",
        "s3:GetObject",
        "s3:PutObject",
        "kms:Decrypt",
        "kms:GenerateDataKey",
    ]);
    let heal_api = set(&["secretsmanager:GetSecretValue", "kms:Decrypt"]);
    assert_eq!(by_doc["agent_put_records"], put_records);
    assert_eq!(by_doc["model_pull"], model_pull);
    assert_eq!(by_doc["aggregator"], aggregator);
    assert_eq!(by_doc["trainer"], trainer);
    assert_eq!(by_doc["heal_api"], heal_api);
    assert_eq!(by_doc.len(), 5, "an unlisted policy: {:?}", by_doc.keys());
    let agent: BTreeSet<String> = put_records.union(&model_pull).cloned().collect();
    assert_eq!(
        by_role,
        BTreeMap::from([
            ("agent".to_owned(), agent),
            ("aggregator".to_owned(), aggregator),
            ("heal_api".to_owned(), heal_api),
            ("trainer".to_owned(), trainer),
        ])
    );

    // Scopes: the agent writes the stream and nothing else; the model reads and the trainer's
    // writes stay under the model prefix; the aggregator writes only under the lake prefix.
    let statement = |doc: &str, sid: &str| {
        list(&docs[doc]["statement"])
            .into_iter()
            .find(|s| s["sid"] == sid)
            .unwrap_or_else(|| panic!("{doc}/{sid}"))
    };
    assert_eq!(
        strings(&statement("agent_put_records", "PutRecords")["resources"]),
        set(&["${aws_kinesis_stream.records.arn}"])
    );
    let models = set(&["${aws_s3_bucket.lake.arn}/${var.model_prefix}*"]);
    assert_eq!(
        strings(&statement("model_pull", "ReadModels")["resources"]),
        models
    );
    assert_eq!(
        strings(&statement("trainer", "PublishModels")["resources"]),
        models
    );
    assert_eq!(
        strings(&statement("aggregator", "WriteLake")["resources"]),
        set(&["${aws_s3_bucket.lake.arn}/${var.lake_prefix}*"])
    );
    // Listing is confined to the prefixes, and every KMS use to the services that need it.
    for (doc, sid) in [
        ("model_pull", "ListModels"),
        ("trainer", "ListLakeAndModels"),
    ] {
        let cond = &list(&statement(doc, sid)["condition"])[0];
        assert_eq!(cond["variable"], "s3:prefix", "{doc}/{sid}");
    }
    for (doc, d) in &docs {
        for st in list(&d["statement"]) {
            if strings(&st["actions"])
                .iter()
                .any(|a| a.starts_with("kms:"))
                && doc != "key"
            {
                assert_eq!(
                    strings(&st["resources"]),
                    set(&["${aws_kms_key.this.arn}"]),
                    "{doc}: KMS beyond the stack's key"
                );
                let cond = &list(&st["condition"])[0];
                assert_eq!(cond["variable"], "kms:ViaService", "{doc}");
            }
        }
    }
}

#[test]
fn storage_is_encrypted_private_versioned_and_recoverable() {
    let res = |ty: &str| blocks("resource", Some(ty));
    let key = "${aws_kms_key.this.arn}";
    assert_eq!(res("aws_kms_key")["this"]["enable_key_rotation"], true);

    let stream = &res("aws_kinesis_stream")["records"];
    assert_eq!(stream["encryption_type"], "KMS");
    assert_eq!(stream["kms_key_id"], key);
    assert_eq!(stream["shard_count"], "${var.kinesis_shard_count}");

    let pab = &res("aws_s3_bucket_public_access_block")["lake"];
    for k in [
        "block_public_acls",
        "block_public_policy",
        "ignore_public_acls",
        "restrict_public_buckets",
    ] {
        assert_eq!(pab[k], true, "{k}");
    }
    assert_eq!(
        res("aws_s3_bucket_versioning")["lake"]["versioning_configuration"][0]["status"],
        "Enabled"
    );
    let sse = &res("aws_s3_bucket_server_side_encryption_configuration")["lake"]["rule"][0]["apply_server_side_encryption_by_default"]
        [0];
    assert_eq!(sse["sse_algorithm"], "aws:kms");
    assert_eq!(sse["kms_master_key_id"], key);
    // Lifecycle: the lake moves to cheaper tiers.
    let rules = list(&res("aws_s3_bucket_lifecycle_configuration")["lake"]["rule"]);
    let lake = rules
        .iter()
        .find(|r| r["id"] == "lake-to-cheaper-tiers")
        .expect("lake rule");
    let classes: Vec<Value> = list(&lake["transition"])
        .iter()
        .map(|t| t["storage_class"].clone())
        .collect();
    assert_eq!(classes, [json!("STANDARD_IA"), json!("GLACIER_IR")]);
    // TLS only: one Deny on aws:SecureTransport = false over the bucket and its objects.
    let docs = blocks("data", Some("aws_iam_policy_document"));
    let deny = &list(&docs["lake_bucket"]["statement"])[0];
    assert_eq!(deny["effect"], "Deny");
    assert_eq!(strings(&deny["actions"]), set(&["s3:*"]));
    assert_eq!(
        strings(&deny["resources"]),
        set(&["${aws_s3_bucket.lake.arn}", "${aws_s3_bucket.lake.arn}/*"])
    );
    assert_eq!(
        list(&deny["condition"])[0],
        json!({"test": "Bool", "variable": "aws:SecureTransport", "values": ["false"]})
    );
    assert_eq!(
        res("aws_s3_bucket_policy")["lake"]["policy"],
        "${data.aws_iam_policy_document.lake_bucket.json}"
    );

    // DynamoDB: the aggregator store's table (incidents and, as `pk = ACT` items, the heal
    // actions) and a leases table, with the store's key schema (string `pk` and `sk`),
    // point-in-time recovery and the stack's key.
    let table = &res("aws_dynamodb_table")["this"];
    // (An object-valued attribute stays wrapped, like a block: the parser cannot tell them apart.)
    let names: BTreeSet<String> = list(&blocks("locals", None)["tables"])[0]
        .as_object()
        .expect("local.tables")
        .keys()
        .cloned()
        .collect();
    assert_eq!(names, set(&["incidents", "leases"]));
    assert_eq!(table["hash_key"], "pk");
    assert_eq!(table["range_key"], "sk");
    let attrs: BTreeSet<(String, String)> = list(&table["attribute"])
        .iter()
        .map(|a| {
            (
                a["name"].as_str().expect("name").to_owned(),
                a["type"].as_str().expect("type").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        attrs,
        BTreeSet::from([("pk".into(), "S".into()), ("sk".into(), "S".into())])
    );
    let store = std::fs::read_to_string(repo_root().join("aggregator/src/store/dynamodb.rs"))
        .expect("read");
    for k in [
        "attr(\"pk\")",
        "attr(\"sk\")",
        "ks(\"pk\", KeyType::Hash)",
        "ks(\"sk\", KeyType::Range)",
    ] {
        assert!(
            store.contains(k),
            "the aggregator's store no longer keys its table by {k}"
        );
    }
    assert_eq!(table["point_in_time_recovery"][0]["enabled"], true);
    assert_eq!(table["server_side_encryption"][0]["enabled"], true);
    assert_eq!(table["server_side_encryption"][0]["kms_key_arn"], key);

    assert_eq!(res("aws_secretsmanager_secret")["hmac"]["kms_key_id"], key);
    assert_eq!(
        res("aws_sns_topic")["notifications"]["kms_master_key_id"],
        key
    );
    // The HMAC key never passes through Terraform's state.
    assert!(res("aws_secretsmanager_secret_version").is_empty());
}

#[test]
fn checkov_passes_terraform() {
    let r = crate::manifests::checkov_report("terraform");
    assert!(
        r["summary"]["passed"].as_u64().unwrap_or(0) > 100,
        "checkov ran too few checks on terraform/: {}",
        r["summary"]
    );
    let skipped: BTreeSet<String> = r["results"]["skipped_checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{} {}",
                c["check_id"].as_str().unwrap_or(""),
                c["resource"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        skipped,
        set(&[
            "CKV2_AWS_57 module.selfheal.aws_secretsmanager_secret.hmac",
            "CKV2_AWS_62 module.selfheal.aws_s3_bucket.lake",
            "CKV_AWS_109 module.selfheal.aws_iam_policy_document.key",
            "CKV_AWS_111 module.selfheal.aws_iam_policy_document.key",
            "CKV_AWS_144 module.selfheal.aws_s3_bucket.lake",
            "CKV_AWS_356 module.selfheal.aws_iam_policy_document.key",
        ]),
        "the waived checks changed"
    );
}
