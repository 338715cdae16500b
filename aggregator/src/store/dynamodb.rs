//! The shared store: one DynamoDB table (created on demand, pay per request) with a string
//! partition key `pk` and sort key `sk`:
//!
//! | item | pk | sk | attributes |
//! |---|---|---|---|
//! | incident | `INC` | id | `doc` (JSON), `state`, `severity`, `resolved_at_ms` |
//! | event | `EV#<incident>` | seq, 12 digits | `doc` |
//! | silence | `SIL` | id | `doc`, `ends_at_ms` |
//! | seen id | `SEEN#<bucket_ms>` | id, 32 hex | `commit` |
//! | bucket index | `BUCKETS` | bucket_ms, 16 digits | |
//! | commit marker | `COMMIT` | commit id | `at_ms` |
//! | heal action | `ACT` | request id (`<incident>/<step>`) | `doc`, `incident`, `intent_at_ms`, `finished` |
//!
//! An action's intent is a PutItem conditional on `attribute_not_exists(pk)`: of two writers
//! (a crashed aggregator's retry, a second replica) exactly one records it, and the other
//! reads the stored record instead.
//!
//! Incident ids sort by opening time, so one Query on `INC`, newest first, pages the list; the
//! filters are applied to the documents read (the incident partition holds incidents within
//! retention, a few thousand at most: a GSI per filter would cost more than it saves).
//!
//! All or nothing without a transaction big enough for a batch's ids (TransactWriteItems takes
//! 100 items): [`DynamoStore::apply`] writes the seen ids first with BatchWriteItem, each
//! tagged with a fresh commit id, then the incidents, events, silences and the commit marker in
//! TransactWriteItems (the marker in the last). [`DynamoStore::load`] ignores ids whose marker is
//! missing, so a crash between the two leaves ids that count for nothing, and the replay counts
//! the records once. An update of more than 100 items (more than about 50 incidents changed by
//! one batch) spans several transactions; a crash between them can leave early incidents
//! updated whose ids are not committed, the one case where a replay can count twice.

use super::{
    ActionRecord, ActionStore, Counts, IncidentStore, Page, Pruned, Query, StoreError, corrupt,
};
use crate::incident::dedup::SeenId;
use crate::incident::{Snapshot, Update};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{BuildError, DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, DeleteRequest, KeySchemaElement, KeyType,
    Put, PutRequest, ScalarAttributeType, TransactWriteItem, WriteRequest,
};
use selfheal_core::RecordId;
use selfheal_core::incident::{Event, Incident, IncidentId, Severity, Silence, State};
use std::collections::{BTreeSet, HashMap, HashSet};

type Item = HashMap<String, AttributeValue>;

/// The DynamoDB store.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

/// A failed call, with the service's error code (`ValidationException`, ...) when it gave one.
fn dy<E>(context: &'static str) -> impl FnOnce(E) -> StoreError
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    move |e| StoreError::Dynamo {
        context,
        code: e.code().map(str::to_owned),
        message: DisplayErrorContext(&e).to_string(),
    }
}

/// A request the SDK's builder refused (a required field missing: a bug, not the batch).
fn dyb(context: &'static str) -> impl FnOnce(BuildError) -> StoreError {
    move |e| StoreError::Dynamo {
        context,
        code: None,
        message: DisplayErrorContext(&e).to_string(),
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn get_n(item: &Item, name: &str) -> Option<i64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

fn doc<T: serde::de::DeserializeOwned>(what: &'static str, item: &Item) -> Result<T, StoreError> {
    serde_json::from_str(get_s(item, "doc").unwrap_or("")).map_err(corrupt(what))
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn incident_item(i: &Incident) -> Item {
    let mut it = key("INC", i.id.as_str());
    it.insert("doc".into(), s(json(i)));
    it.insert("state".into(), s(i.state.as_str()));
    it.insert("severity".into(), s(i.severity.as_str()));
    if let Some(r) = i.resolved_at_ms {
        it.insert("resolved_at_ms".into(), n(r));
    }
    it
}

fn event_item(e: &Event) -> Item {
    let mut it = key(format!("EV#{}", e.incident), format!("{:012}", e.seq));
    it.insert("doc".into(), s(json(e)));
    it
}

fn silence_item(x: &Silence) -> Item {
    let mut it = key("SIL", x.id.as_str());
    it.insert("doc".into(), s(json(x)));
    it.insert("ends_at_ms".into(), n(x.ends_at_ms));
    it
}

impl DynamoStore {
    /// A store on `table`, created (pay per request) if it does not exist.
    pub async fn open(client: Client, table: &str) -> Result<DynamoStore, StoreError> {
        let st = DynamoStore {
            client,
            table: table.to_owned(),
        };
        match st.client.describe_table().table_name(table).send().await {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                let attr = |name: &str| {
                    AttributeDefinition::builder()
                        .attribute_name(name)
                        .attribute_type(ScalarAttributeType::S)
                        .build()
                        .map_err(dyb("create table"))
                };
                let ks = |name: &str, t: KeyType| {
                    KeySchemaElement::builder()
                        .attribute_name(name)
                        .key_type(t)
                        .build()
                        .map_err(dyb("create table"))
                };
                st.client
                    .create_table()
                    .table_name(table)
                    .billing_mode(BillingMode::PayPerRequest)
                    .attribute_definitions(attr("pk")?)
                    .attribute_definitions(attr("sk")?)
                    .key_schema(ks("pk", KeyType::Hash)?)
                    .key_schema(ks("sk", KeyType::Range)?)
                    .send()
                    .await
                    .map_err(dy("create table"))?;
                tracing::info!(table, "IncidentTableCreated");
            }
            Err(e) => return Err(dy("describe table")(e)),
        }
        Ok(st)
    }

    /// Every item of partition `pk` (sort key above `sk_gt` if given), in sort order (reversed
    /// when `newest_first`), stopping after `limit` items.
    async fn query(
        &self,
        pk: &str,
        sk_lt: Option<&str>,
        sk_ge: Option<&str>,
        newest_first: bool,
        limit: Option<usize>,
    ) -> Result<Vec<Item>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .scan_index_forward(!newest_first)
                .expression_attribute_values(":p", s(pk))
                .set_exclusive_start_key(start.take());
            q = match (sk_lt, sk_ge) {
                (Some(lt), _) => q
                    .key_condition_expression("pk = :p AND sk < :s")
                    .expression_attribute_values(":s", s(lt)),
                (None, Some(ge)) => q
                    .key_condition_expression("pk = :p AND sk >= :s")
                    .expression_attribute_values(":s", s(ge)),
                (None, None) => q.key_condition_expression("pk = :p"),
            };
            let r = q.send().await.map_err(dy("query"))?;
            out.extend(r.items().iter().cloned());
            if limit.is_some_and(|l| out.len() >= l) {
                break;
            }
            match r.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// BatchWriteItem in chunks of 25, resending what DynamoDB left unprocessed.
    async fn batch_write(&self, reqs: Vec<WriteRequest>) -> Result<(), StoreError> {
        for chunk in reqs.chunks(25) {
            let mut pending = chunk.to_vec();
            let mut delay = std::time::Duration::from_millis(20);
            while !pending.is_empty() {
                let r = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, pending)
                    .send()
                    .await
                    .map_err(dy("batch write"))?;
                pending = r
                    .unprocessed_items()
                    .and_then(|m| m.get(&self.table))
                    .cloned()
                    .unwrap_or_default();
                if !pending.is_empty() {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(2));
                }
            }
        }
        Ok(())
    }

    async fn delete_keys(&self, keys: Vec<Item>) -> Result<(), StoreError> {
        let reqs = keys
            .into_iter()
            .map(|k| {
                DeleteRequest::builder()
                    .set_key(Some(k))
                    .build()
                    .map(|d| WriteRequest::builder().delete_request(d).build())
                    .map_err(dyb("delete request"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.batch_write(reqs).await
    }

    fn put_item(&self, item: Item) -> Result<TransactWriteItem, StoreError> {
        Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .build()
            .map(|p| TransactWriteItem::builder().put(p).build())
            .map_err(dyb("put"))
    }
}

fn only_key(mut it: Item) -> Item {
    it.retain(|k, _| k == "pk" || k == "sk");
    it
}

impl IncidentStore for DynamoStore {
    async fn load(
        &self,
        seen_since_ms: i64,
        silences_since_ms: i64,
    ) -> Result<Snapshot, StoreError> {
        let mut snap = Snapshot::default();
        for it in self.query("INC", None, None, false, None).await? {
            if get_s(&it, "state") != Some("resolved") {
                snap.active.push(doc("incident", &it)?);
            }
        }
        for it in self.query("SIL", None, None, false, None).await? {
            if get_n(&it, "ends_at_ms").is_some_and(|e| e >= silences_since_ms) {
                snap.silences.push(doc("silence", &it)?);
            }
        }
        let commits: HashSet<String> = self
            .query("COMMIT", None, None, false, None)
            .await?
            .iter()
            .filter_map(|it| get_s(it, "sk").map(str::to_owned))
            .collect();
        let since = format!("{:016}", seen_since_ms.max(0));
        for b in self
            .query("BUCKETS", None, Some(&since), false, None)
            .await?
        {
            let Some(bucket_ms) = get_s(&b, "sk").and_then(|v| v.parse::<i64>().ok()) else {
                continue;
            };
            for it in self
                .query(&format!("SEEN#{bucket_ms}"), None, None, false, None)
                .await?
            {
                let committed = get_s(&it, "commit").is_some_and(|c| commits.contains(c));
                let id = get_s(&it, "sk").and_then(|h| u128::from_str_radix(h, 16).ok());
                if let (true, Some(id)) = (committed, id) {
                    snap.seen.push(SeenId {
                        bucket_ms,
                        id: RecordId::from_u128(id),
                    });
                }
            }
        }
        Ok(snap)
    }

    async fn apply(&self, up: &Update) -> Result<(), StoreError> {
        if up.is_empty() {
            return Ok(());
        }
        let commit = (!up.seen.is_empty()).then(|| format!("{:032x}", fastrand::u128(..)));
        if let Some(c) = &commit {
            let mut reqs = Vec::with_capacity(up.seen.len() + 4);
            let buckets: BTreeSet<i64> = up.seen.iter().map(|x| x.bucket_ms).collect();
            let mut items: Vec<Item> = buckets
                .iter()
                .map(|b| key("BUCKETS", format!("{b:016}")))
                .collect();
            for x in &up.seen {
                let mut it = key(format!("SEEN#{}", x.bucket_ms), x.id.to_string());
                it.insert("commit".into(), s(c.clone()));
                items.push(it);
            }
            for it in items {
                let p = PutRequest::builder()
                    .set_item(Some(it))
                    .build()
                    .map_err(dyb("put request"))?;
                reqs.push(WriteRequest::builder().put_request(p).build());
            }
            self.batch_write(reqs).await?;
        }
        let mut items: Vec<Item> = Vec::new();
        items.extend(up.incidents.iter().map(incident_item));
        items.extend(up.events.iter().map(event_item));
        items.extend(up.silences.iter().map(silence_item));
        if let Some(c) = commit {
            let mut it = key("COMMIT", c);
            let at = up.seen.iter().map(|x| x.bucket_ms).max().unwrap_or(0);
            it.insert("at_ms".into(), n(at));
            items.push(it);
        }
        // An incident changed twice in one update appears once: TransactWriteItems refuses two
        // writes to one item. The later copy wins.
        let mut seen_keys = HashSet::new();
        let mut unique: Vec<Item> = Vec::with_capacity(items.len());
        for it in items.into_iter().rev() {
            let k = (
                get_s(&it, "pk").unwrap_or("").to_owned(),
                get_s(&it, "sk").unwrap_or("").to_owned(),
            );
            if seen_keys.insert(k) {
                unique.push(it);
            }
        }
        unique.reverse();
        // The commit marker is last, so the last transaction commits the ids.
        for chunk in unique.chunks(100) {
            let tx = chunk
                .iter()
                .cloned()
                .map(|it| self.put_item(it))
                .collect::<Result<Vec<_>, _>>()?;
            self.client
                .transact_write_items()
                .set_transact_items(Some(tx))
                .send()
                .await
                .map_err(dy("transact write"))?;
        }
        Ok(())
    }

    async fn list(&self, q: &Query) -> Result<Page, StoreError> {
        let limit = q.limit.max(1);
        let mut incidents = Vec::new();
        let mut after = q.after.as_ref().map(|a| a.0.clone());
        let mut next = None;
        'pages: loop {
            let items = self
                .query("INC", after.as_deref(), None, true, Some(limit * 4))
                .await?;
            if items.is_empty() {
                break;
            }
            for it in &items {
                let inc: Incident = doc("incident", it)?;
                after = Some(inc.id.0.clone());
                if q.matches(&inc) {
                    if incidents.len() == limit {
                        next = incidents.last().map(|i: &Incident| i.id.clone());
                        break 'pages;
                    }
                    incidents.push(inc);
                }
            }
        }
        Ok(Page { incidents, next })
    }

    async fn get(&self, id: &IncidentId) -> Result<Option<Incident>, StoreError> {
        let r = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key("INC", id.as_str())))
            .consistent_read(true)
            .send()
            .await
            .map_err(dy("get"))?;
        r.item().map(|it| doc("incident", it)).transpose()
    }

    async fn events(
        &self,
        id: &IncidentId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let from = format!("{from_seq:012}");
        let items = self
            .query(&format!("EV#{id}"), None, Some(&from), false, Some(limit))
            .await?;
        items
            .iter()
            .take(limit)
            .map(|it| doc("event", it))
            .collect()
    }

    async fn silences(&self) -> Result<Vec<Silence>, StoreError> {
        let items = self.query("SIL", None, None, true, None).await?;
        items.iter().map(|it| doc("silence", it)).collect()
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        let mut out = Counts::default();
        for it in self.query("INC", None, None, false, None).await? {
            let state = get_s(&it, "state").and_then(|v| v.parse::<State>().ok());
            let sev = get_s(&it, "severity").and_then(|v| v.parse::<Severity>().ok());
            if let (Some(st), Some(sv)) = (state, sev) {
                out.add(st, sv);
            }
        }
        Ok(out)
    }

    async fn prune(&self, before_ms: i64, seen_before_ms: i64) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        for it in self.query("INC", None, None, false, None).await? {
            if get_n(&it, "resolved_at_ms").is_some_and(|r| r < before_ms) {
                let id = get_s(&it, "sk").unwrap_or("").to_owned();
                let evs = self
                    .query(&format!("EV#{id}"), None, None, false, None)
                    .await?;
                // Events first: an incident is never left without the events it names.
                self.delete_keys(evs.into_iter().map(only_key).collect())
                    .await?;
                self.delete_keys(vec![only_key(it)]).await?;
                pruned.incidents += 1;
            }
        }
        let old_silences: Vec<Item> = self
            .query("SIL", None, None, false, None)
            .await?
            .into_iter()
            .filter(|it| get_n(it, "ends_at_ms").is_some_and(|e| e < before_ms))
            .map(only_key)
            .collect();
        pruned.silences = old_silences.len() as u64;
        self.delete_keys(old_silences).await?;
        let below = format!("{:016}", seen_before_ms.max(0));
        for b in self
            .query("BUCKETS", Some(&below), None, false, None)
            .await?
        {
            let Some(bucket) = get_s(&b, "sk").and_then(|v| v.parse::<i64>().ok()) else {
                continue;
            };
            let ids = self
                .query(&format!("SEEN#{bucket}"), None, None, false, None)
                .await?;
            pruned.seen_ids += ids.len() as u64;
            self.delete_keys(ids.into_iter().map(only_key).collect())
                .await?;
            self.delete_keys(vec![only_key(b)]).await?;
        }
        let old_commits: Vec<Item> = self
            .query("COMMIT", None, None, false, None)
            .await?
            .into_iter()
            .filter(|it| get_n(it, "at_ms").is_some_and(|a| a < seen_before_ms))
            .map(only_key)
            .collect();
        self.delete_keys(old_commits).await?;
        Ok(pruned)
    }
}

fn action_item(r: &ActionRecord) -> Item {
    let mut it = key("ACT", r.request_id.as_str());
    it.insert("doc".into(), s(json(r)));
    it.insert("incident".into(), s(r.incident.as_str()));
    it.insert("intent_at_ms".into(), n(r.intent_at_ms));
    it.insert("finished".into(), AttributeValue::Bool(r.is_finished()));
    it
}

impl DynamoStore {
    async fn all_actions(&self) -> Result<Vec<ActionRecord>, StoreError> {
        let mut v: Vec<ActionRecord> = self
            .query("ACT", None, None, false, None)
            .await?
            .iter()
            .map(|it| doc("action", it))
            .collect::<Result<_, _>>()?;
        v.sort_by(|a, b| (a.intent_at_ms, &a.request_id).cmp(&(b.intent_at_ms, &b.request_id)));
        Ok(v)
    }
}

impl ActionStore for DynamoStore {
    async fn insert_intent(&self, record: &ActionRecord) -> Result<bool, StoreError> {
        let r = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(action_item(record)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(dy("insert intent")(e)),
        }
    }

    async fn update_action(&self, record: &ActionRecord) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(action_item(record)))
            .condition_expression("attribute_exists(pk)")
            .send()
            .await
            .map_err(dy("update action"))?;
        Ok(())
    }

    async fn action(&self, request_id: &str) -> Result<Option<ActionRecord>, StoreError> {
        let r = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key("ACT", request_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(dy("get action"))?;
        r.item().map(|it| doc("action", it)).transpose()
    }

    async fn actions_since(&self, since_ms: i64) -> Result<Vec<ActionRecord>, StoreError> {
        let mut v = self.all_actions().await?;
        v.retain(|r| r.intent_at_ms >= since_ms);
        Ok(v)
    }

    async fn unfinished_actions(&self) -> Result<Vec<ActionRecord>, StoreError> {
        let mut v = self.all_actions().await?;
        v.retain(|r| !r.is_finished());
        Ok(v)
    }

    async fn actions_of(&self, incident: &IncidentId) -> Result<Vec<ActionRecord>, StoreError> {
        let mut v = self.all_actions().await?;
        v.retain(|r| &r.incident == incident);
        v.sort_by_key(|r| r.step);
        Ok(v)
    }
}
