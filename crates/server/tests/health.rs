//! Sync health over HTTP: the digests a client can check its replica with, on SQLite and
//! PostgreSQL.

use nextsync_core::api::{BucketDigests, BucketRecords, DigestResponse, PullResponse};
use nextsync_core::digest::{Digest, bucket_of, view_hash};
use nextsync_testkit::{Api, Session, TestDb, both_backends, error_code, start};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeMap;

both_backends!(
    the_digests_match_what_the_feed_delivered,
    bucket_requests_are_checked,
);

fn stamp(counter: u32) -> String {
    format!(
        "{:015}-{counter:05}-laptop",
        nextsync_core::time::Timestamp::now().as_millis()
    )
}

fn upsert(collection: &str, id: &str, counter: u32) -> Value {
    json!({"mutation_id": format!("{collection}-{id}-{counter}"), "collection": collection, "id": id,
        "op": "upsert", "fields": {"text": format!("{id} {counter}"), "n": counter}, "hlc": stamp(counter)})
}

async fn get<T: serde::de::DeserializeOwned>(api: &Api, session: &Session, path: &str) -> T {
    let (status, body) = api.get(path, session.token()).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    serde_json::from_value(body).expect("shape")
}

async fn the_digests_match_what_the_feed_delivered(db: TestDb) {
    let (_server, api) = start(&db).await;
    let ann = api.register("ann@example.org").await;
    let bo = api.register("bo@example.org").await;
    let mut mutations: Vec<Value> = (0..50).map(|i| upsert("messages", &format!("m{i}"), i)).collect();
    mutations.extend((0..5).map(|i| upsert("sessions", &format!("s{i}"), 100 + i)));
    api.push(&ann, mutations).await;
    api.push(&ann,
        vec![json!({"mutation_id": "d1", "collection": "messages", "id": "m3", "op": "delete", "hlc": stamp(200)})],
    )
    .await;
    api.push(&bo, vec![upsert("messages", "m1", 1)]).await;

    let pulled: PullResponse = get(&api, &ann, "/v1/sync/pull?limit=1000").await;
    let mut from_feed: BTreeMap<String, (Digest, u64)> = BTreeMap::new();
    for view in &pulled.changes {
        let hash = view_hash(view);
        if hash != 0 {
            let entry = from_feed.entry(view.collection.clone()).or_default();
            entry.0.toggle(hash);
            entry.1 += 1;
        }
    }
    let digests: DigestResponse = get(&api, &ann, "/v1/sync/digest").await;
    assert_eq!(
        digests.cursor, pulled.cursor,
        "the digests hold where the pull ended"
    );
    let served: BTreeMap<String, (Digest, u64)> = digests
        .collections
        .iter()
        .map(|c| (c.collection.clone(), (c.digest, c.records)))
        .collect();
    assert_eq!(served, from_feed);
    assert_eq!(served["messages"].1, 49);

    let buckets: BucketDigests = get(&api, &ann, "/v1/sync/digest/messages?buckets=4").await;
    assert_eq!(buckets.buckets.len(), 4);
    let wanted = bucket_of("messages", "m3", 4);
    let records: BucketRecords = get(
        &api,
        &ann,
        &format!("/v1/sync/digest/messages/records?buckets=4&bucket={wanted}"),
    )
    .await;
    let m3 = records
        .records
        .iter()
        .find(|r| r.id == "m3")
        .expect("deleted ones too");
    assert!(m3.deleted);
    let mut bucket = Digest::EMPTY;
    records.records.iter().for_each(|r| bucket.toggle(view_hash(r)));
    assert_eq!(bucket, buckets.buckets[wanted as usize]);
    // Bo sees only his own.
    let theirs: DigestResponse = get(&api, &bo, "/v1/sync/digest").await;
    assert_eq!(theirs.collections.len(), 1);
    assert_eq!(theirs.collections[0].records, 1);
    let (status, _) = api.get("/v1/sync/digest", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn bucket_requests_are_checked(db: TestDb) {
    let (_server, api) = start(&db).await;
    let ann = api.register("ann@example.org").await;
    for path in [
        "/v1/sync/digest/messages?buckets=0",
        "/v1/sync/digest/messages?buckets=3",
        "/v1/sync/digest/messages?buckets=8192",
        "/v1/sync/digest/messages/records?buckets=4&bucket=4",
        "/v1/sync/digest/messages/records?buckets=4&bucket=",
        "/v1/sync/digest/messages/records?buckets=4&bucket=1,x",
    ] {
        let (status, body) = api.get(path, ann.token()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(error_code(&body), "invalid_buckets", "{path}");
    }
    let (status, body) = api.get("/v1/sync/digest/bad%20name?buckets=2", ann.token()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let empty: BucketDigests = get(&api, &ann, "/v1/sync/digest/messages?buckets=2").await;
    assert_eq!(empty.buckets, [Digest::EMPTY, Digest::EMPTY]);
}
