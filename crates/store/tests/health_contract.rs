//! The sync-health part of the store contract (digests, buckets, the invariant check), on
//! SQLite and PostgreSQL.

use nextsync_core::digest::{Digest, bucket_of, stored_hash};
use nextsync_core::hlc::Hlc;
use nextsync_core::ids::UserId;
use nextsync_core::push::{Mutation, RecordKey};
use nextsync_core::sync::Op;
use nextsync_core::time::Timestamp;
use nextsync_store::Store;
use nextsync_store::nextchat::UploadExtras;
use nextsync_testkit::{TestDb, both_backends, store_user};
use serde_json::json;
use std::collections::BTreeMap;

both_backends!(
    digests_follow_every_write_once_they_exist,
    buckets_split_a_collection_and_return_its_records,
    the_invariant_check_passes_and_finds_planted_damage,
);

fn write(collection: &str, id: &str, ms: u64, op: Op) -> Mutation {
    Mutation {
        mutation_id: format!("{collection}-{id}-{ms}"),
        key: RecordKey {
            collection: collection.into(),
            id: id.into(),
        },
        op,
        hlc: Some(Hlc::new(ms, 0, "laptop").expect("hlc")),
        base_seq: None,
        precondition: None,
    }
}

fn set(collection: &str, id: &str, ms: u64) -> Mutation {
    let fields = json!({"text": format!("{id} at {ms}")});
    write(
        collection,
        id,
        ms,
        Op::Upsert(fields.as_object().expect("object").clone()),
    )
}

/// Per collection: digest and live count, from every record read back one by one.
async fn recomputed(
    store: &dyn Store,
    u: UserId,
    keys: &[(&str, String)],
) -> BTreeMap<String, (Digest, u64)> {
    let mut out: BTreeMap<String, (Digest, u64)> = BTreeMap::new();
    for (collection, id) in keys {
        let key = RecordKey {
            collection: (*collection).into(),
            id: id.clone(),
        };
        if let Some(record) = store.record(u, &key).await.expect("read") {
            let hash = stored_hash(collection, id, &record);
            if hash != 0 {
                let entry = out.entry((*collection).to_owned()).or_default();
                entry.0.toggle(hash);
                entry.1 += 1;
            }
        }
    }
    out
}

async fn kept(store: &dyn Store, u: UserId) -> BTreeMap<String, (Digest, u64)> {
    store
        .digests(u)
        .await
        .expect("digests")
        .collections
        .into_iter()
        .map(|(c, d, n)| (c, (d, n)))
        .collect()
}

async fn digests_follow_every_write_once_they_exist(db: TestDb) {
    let store = db.store().await;
    let u = store_user(&*store, "ann@example.org").await;
    let other = store_user(&*store, "bo@example.org").await;
    let mut keys = Vec::new();
    let mut batch = Vec::new();
    for i in 0..30 {
        let collection = if i % 3 == 0 { "sessions" } else { "messages" };
        keys.push((collection, format!("r{i}")));
        batch.push(set(collection, &format!("r{i}"), i + 1));
    }
    store
        .apply(u, batch, Timestamp::now(), None)
        .await
        .expect("apply");
    store
        .apply(other, vec![set("messages", "r1", 1)], Timestamp::now(), None)
        .await
        .expect("apply");
    // The first read computes them; every later write keeps them.
    let first = store.digests(u).await.expect("digests");
    assert_eq!(first.head.0, 30);
    let as_map: BTreeMap<_, _> = first
        .collections
        .iter()
        .map(|(c, d, n)| (c.clone(), (*d, *n)))
        .collect();
    assert_eq!(as_map, recomputed(&*store, u, &keys).await);
    assert_eq!(as_map["sessions"].1, 10);
    let writes = vec![
        vec![set("messages", "r1", 100), set("messages", "new", 101)],
        vec![
            write("messages", "r2", 102, Op::Delete),
            write("sessions", "r3", 103, Op::Delete),
        ],
        // Hidden under a newer delete: no visible change, the digest stays.
        vec![set("messages", "r2", 50)],
        // Revived.
        vec![set("messages", "r2", 104)],
        // Every session deleted: the collection drops out of the answer.
        keys.iter()
            .filter(|(c, _)| *c == "sessions")
            .enumerate()
            .map(|(n, (c, id))| write(c, id, 200 + n as u64, Op::Delete))
            .collect(),
    ];
    keys.push(("messages", "new".into()));
    for batch in writes {
        store
            .apply(u, batch, Timestamp::now(), None)
            .await
            .expect("apply");
        assert_eq!(kept(&*store, u).await, recomputed(&*store, u, &keys).await);
    }
    assert!(!kept(&*store, u).await.contains_key("sessions"));
    // NextChat uploads write through their own transaction: the same bookkeeping.
    keys.push(("messages", "uploaded".into()));
    store
        .apply_upload(
            u,
            vec![set("messages", "uploaded", 300), set("messages", "r4", 301)],
            Timestamp::now(),
            UploadExtras::default(),
        )
        .await
        .expect("upload");
    assert_eq!(kept(&*store, u).await, recomputed(&*store, u, &keys).await);
    // Bo's digests are his own (computed at his first read).
    let theirs = kept(&*store, other).await;
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs["messages"].1, 1);
}

async fn buckets_split_a_collection_and_return_its_records(db: TestDb) {
    let store = db.store().await;
    let u = store_user(&*store, "ann@example.org").await;
    let batch: Vec<Mutation> = (0..200)
        .map(|i| set("messages", &format!("m{i}"), i + 1))
        .collect();
    store
        .apply(u, batch, Timestamp::now(), None)
        .await
        .expect("apply");
    store
        .apply(
            u,
            vec![write("messages", "m7", 500, Op::Delete)],
            Timestamp::now(),
            None,
        )
        .await
        .expect("delete");
    let whole = store.digests(u).await.expect("digests").collections[0].1;
    let (epoch, head, buckets) = store.bucket_digests(u, "messages", 8).await.expect("buckets");
    assert_eq!((epoch.is_empty(), head.0), (false, 201));
    assert_eq!(buckets.len(), 8);
    let mut xor = Digest::EMPTY;
    buckets.iter().for_each(|b| xor.toggle(b.0));
    assert_eq!(xor, whole, "the buckets add up to the collection");
    let wanted = bucket_of("messages", "m7", 8);
    let (_, _, records) = store
        .bucket_records(u, "messages", 8, &[wanted])
        .await
        .expect("records");
    assert!(
        records
            .iter()
            .all(|(k, _)| bucket_of("messages", &k.id, 8) == wanted)
    );
    let m7 = records
        .iter()
        .find(|(k, _)| k.id == "m7")
        .expect("deleted ones come too");
    assert!(m7.1.record.is_deleted());
    let mut bucket = Digest::EMPTY;
    records
        .iter()
        .for_each(|(k, r)| bucket.toggle(stored_hash(&k.collection, &k.id, r)));
    assert_eq!(bucket, buckets[wanted as usize]);
}

async fn the_invariant_check_passes_and_finds_planted_damage(db: TestDb) {
    let store = db.store().await;
    let u = store_user(&*store, "ann@example.org").await;
    let batch: Vec<Mutation> = (0..20)
        .map(|i| set("messages", &format!("m{i}"), i + 1))
        .collect();
    store
        .apply(u, batch, Timestamp::now(), None)
        .await
        .expect("apply");
    store
        .apply(
            u,
            vec![write("messages", "m3", 100, Op::Delete)],
            Timestamp::now(),
            None,
        )
        .await
        .expect("delete");
    store.digests(u).await.expect("digests");
    let clean = store.check().await.expect("check");
    assert_eq!((clean.users, clean.records, clean.digests_checked), (1, 20, 1));
    assert!(clean.problems.is_empty(), "{:?}", clean.problems);

    // A record pushed above the head, and a digest that no longer matches its records.
    assert_eq!(
        db.execute("UPDATE records SET seq = seq + 1000 WHERE record_id = 'm5'")
            .await,
        1
    );
    assert_eq!(
        db.execute("UPDATE collection_digests SET records = records + 1 WHERE collection = 'messages'")
            .await,
        1
    );
    let damaged = store.check().await.expect("check");
    assert_eq!(damaged.problems.len(), 2, "{:?}", damaged.problems);
    assert!(damaged.problems[0].contains("1 records above their user's feed head"));
    assert!(damaged.problems[1].contains("1 users whose digests differ"));
}
