//! The history part of the store contract (trash, rewind, purge, pruning), on SQLite and
//! PostgreSQL. Applies are given their own clock (`now`), so moments are exact.

use nextsync_core::history::Visible;
use nextsync_core::hlc::Hlc;
use nextsync_core::ids::{Seq, UserId};
use nextsync_core::push::{Mutation, RecordKey};
use nextsync_core::sync::Op;
use nextsync_core::time::Timestamp;
use nextsync_store::Store;
use nextsync_store::history::Scope;
use nextsync_testkit::{TestDb, both_backends, store_user};
use serde_json::{Value, json};
use std::collections::BTreeMap;

both_backends!(
    every_visible_change_rewinds_to_each_earlier_moment,
    a_random_history_rewinds_to_what_readers_saw,
    the_trash_holds_deleted_records_until_they_come_back,
    purging_forgets_a_record_for_good,
    pruning_keeps_the_trash_copy_longer_than_the_rest,
);

fn key(collection: &str, id: &str) -> RecordKey {
    RecordKey {
        collection: collection.into(),
        id: id.into(),
    }
}

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

/// A device write to `messages/<id>` stamped at `ms` by `node`.
fn write(id: &str, ms: u64, node: &str, op: Op) -> Mutation {
    Mutation {
        mutation_id: format!("{node}-{id}-{ms}"),
        key: key("messages", id),
        op,
        hlc: Some(Hlc::new(ms, 0, node).expect("hlc")),
        base_seq: None,
        precondition: None,
    }
}

fn set(id: &str, ms: u64, fields: Value) -> Mutation {
    write(
        id,
        ms,
        "laptop",
        Op::Upsert(fields.as_object().expect("object").clone()),
    )
}

fn delete(id: &str, ms: u64) -> Mutation {
    write(id, ms, "laptop", Op::Delete)
}

fn state(value: Value) -> Visible {
    value.as_object().cloned()
}

async fn apply(store: &dyn Store, user: UserId, now: i64, mutations: Vec<Mutation>) -> Seq {
    store
        .apply(user, mutations, at(now), None)
        .await
        .expect("apply")
        .head
}

/// `then` of each record the rewind to `moment` concerns.
async fn rewound(store: &dyn Store, user: UserId, moment: i64) -> BTreeMap<String, Visible> {
    store
        .rewind(user, at(moment), Scope::default())
        .await
        .expect("rewind")
        .into_iter()
        .map(|r| (r.key.id, r.then))
        .collect()
}

async fn every_visible_change_rewinds_to_each_earlier_moment(db: TestDb) {
    let store = db.store().await;
    let u = store_user(&*store, "ann@example.org").await;
    apply(
        &*store,
        u,
        1_000,
        vec![set("a", 1, json!({"text": "one", "n": 1}))],
    )
    .await;
    apply(&*store, u, 2_000, vec![set("a", 2, json!({"text": "two"}))]).await;
    apply(&*store, u, 2_500, vec![set("b", 3, json!({"text": "bee"}))]).await;
    apply(&*store, u, 3_000, vec![delete("a", 4)]).await;
    // Written before the delete by a device that had not seen it: hidden, no visible change.
    apply(
        &*store,
        u,
        3_500,
        vec![write(
            "a",
            3,
            "phone",
            Op::Upsert(json!({"text": "late"}).as_object().expect("object").clone()),
        )],
    )
    .await;
    // Revived with a new field only.
    apply(&*store, u, 4_000, vec![set("a", 5, json!({"tag": "back"}))]).await;

    let now = rewound(&*store, u, 4_000).await;
    assert!(now.is_empty(), "nothing changed after the last write: {now:?}");
    let at_3s = rewound(&*store, u, 3_000).await;
    assert_eq!(at_3s, BTreeMap::from([("a".into(), None)]), "deleted at 3 s");
    let at_2s = rewound(&*store, u, 2_000).await;
    assert_eq!(
        at_2s,
        BTreeMap::from([
            ("a".into(), state(json!({"text": "two", "n": 1}))),
            ("b".into(), None),
        ])
    );
    let at_1s = rewound(&*store, u, 1_000).await;
    assert_eq!(at_1s["a"], state(json!({"text": "one", "n": 1})));
    let before = rewound(&*store, u, 999).await;
    assert_eq!(before, BTreeMap::from([("a".into(), None), ("b".into(), None)]));
    // Scoped to one record, and another account sees none of it.
    let one = store
        .rewind(
            u,
            at(1_000),
            Scope {
                collection: Some("messages"),
                id: Some("b"),
            },
        )
        .await
        .expect("rewind one");
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].key, key("messages", "b"));
    let other = store_user(&*store, "bo@example.org").await;
    assert!(rewound(&*store, other, 0).await.is_empty());
}

/// Deterministic pseudo-random numbers (no test dependency needed for a fixed sequence).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Random writes and deletes from two devices (with stale stamps, so some are hidden or lose),
/// one apply per moment; after each apply the test reads every record. Rewinding to any
/// moment must give exactly what a reader saw then.
async fn a_random_history_rewinds_to_what_readers_saw(db: TestDb) {
    let store = db.store().await;
    let u = store_user(&*store, "ann@example.org").await;
    let mut rng = Lcg(7);
    let ids = ["a", "b", "c", "d"];
    let mut seen: Vec<(i64, BTreeMap<&str, Visible>)> = Vec::new();
    for step in 0..60i64 {
        let now = 10_000 + step * 100;
        let mut batch = Vec::new();
        for _ in 0..=rng.below(2) {
            let id = ids[rng.below(4) as usize];
            // Stamps run near the step, some behind it: late writes and lost races.
            let ms = (step as u64 * 10).saturating_sub(rng.below(25)) + 1;
            let node = if rng.below(2) == 0 { "laptop" } else { "phone" };
            let op = if rng.below(4) == 0 {
                Op::Delete
            } else {
                let mut fields = serde_json::Map::new();
                fields.insert(["x", "y", "z"][rng.below(3) as usize].into(), json!(rng.below(3)));
                Op::Upsert(fields)
            };
            let mut m = write(id, ms, node, op);
            m.mutation_id = format!("{step}-{}", batch.len());
            batch.push(m);
        }
        apply(&*store, u, now, batch).await;
        let mut readers_saw = BTreeMap::new();
        for id in ids {
            let record = store.record(u, &key("messages", id)).await.expect("read");
            readers_saw.insert(id, record.and_then(|r| r.visible_state()));
        }
        seen.push((now, readers_saw));
    }
    for (moment, expected) in &seen {
        let rewound = rewound(&*store, u, *moment).await;
        let latest = &seen.last().expect("steps").1;
        for id in ids {
            let then = rewound.get(id).cloned().unwrap_or_else(|| latest[id].clone());
            assert_eq!(&then, &expected[id], "{id} at {moment}");
        }
    }
}

async fn the_trash_holds_deleted_records_until_they_come_back(db: TestDb) {
    let store = db.store().await;
    let u = store_user(&*store, "ann@example.org").await;
    let other = store_user(&*store, "bo@example.org").await;
    let mut batch = Vec::new();
    for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
        batch.push(set(id, i as u64 + 1, json!({"text": format!("{id}!")})));
    }
    apply(&*store, u, 1_000, batch).await;
    apply(
        &*store,
        other,
        1_000,
        vec![set("a", 1, json!({"text": "theirs"}))],
    )
    .await;
    // a and b in one write, c on its own; d stays.
    let together = apply(&*store, u, 2_000, vec![delete("a", 10), delete("b", 11)]).await;
    apply(&*store, u, 3_000, vec![delete("c", 12)]).await;
    // A second delete of a deleted record changes nothing a reader sees: c stays one entry.
    apply(&*store, u, 3_100, vec![write("c", 13, "phone", Op::Delete)]).await;
    apply(&*store, other, 3_000, vec![delete("a", 20)]).await;

    let all = store
        .trash(u, Scope::default(), at(0), None, 10)
        .await
        .expect("trash");
    let ids: Vec<&str> = all.iter().map(|t| t.key.id.as_str()).collect();
    assert_eq!(ids, ["c", "b", "a"], "most recently deleted first");
    assert_eq!(
        all[2].values,
        *state(json!({"text": "a!"})).as_ref().expect("object")
    );
    assert_eq!(all[2].deleted_at, at(2_000));
    assert_eq!(all[0].batch, all[0].seq);
    assert_eq!((all[1].batch, all[2].batch), (together, together));

    // Pages: below a seq, a limit; expired entries are left out.
    let page = store
        .trash(u, Scope::default(), at(0), Some(all[0].seq), 1)
        .await
        .expect("page");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].key.id, "b");
    let fresh = store
        .trash(u, Scope::default(), at(2_500), None, 10)
        .await
        .expect("fresh only");
    assert_eq!(fresh.len(), 1);
    let one = store
        .trash(
            u,
            Scope {
                collection: Some("messages"),
                id: Some("b"),
            },
            at(0),
            None,
            10,
        )
        .await
        .expect("one");
    assert_eq!(one.len(), 1);
    assert!(
        store
            .trash(
                u,
                Scope {
                    collection: Some("sessions"),
                    id: None,
                },
                at(0),
                None,
                10,
            )
            .await
            .expect("other collection")
            .is_empty()
    );
    let batch = store.trash_batch(u, together, at(0)).await.expect("batch");
    let ids: Vec<&str> = batch.iter().map(|t| t.key.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);

    // b comes back: it leaves the trash, and its batch shrinks to a.
    apply(&*store, u, 4_000, vec![set("b", 30, json!({"text": "again"}))]).await;
    let ids: Vec<String> = store
        .trash(u, Scope::default(), at(0), None, 10)
        .await
        .expect("trash")
        .into_iter()
        .map(|t| t.key.id)
        .collect();
    assert_eq!(ids, ["c", "a"]);
    assert_eq!(
        store.trash_batch(u, together, at(0)).await.expect("batch").len(),
        1
    );
    // The other account's trash is its own.
    let theirs = store
        .trash(other, Scope::default(), at(0), None, 10)
        .await
        .expect("theirs");
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].values["text"], "theirs");
}

async fn purging_forgets_a_record_for_good(db: TestDb) {
    let store = db.store().await;
    let u = store_user(&*store, "ann@example.org").await;
    let other = store_user(&*store, "bo@example.org").await;
    apply(
        &*store,
        u,
        1_000,
        vec![
            set("a", 1, json!({"t": 1})),
            set("b", 2, json!({"t": 2})),
            set("c", 3, json!({"t": 3})),
        ],
    )
    .await;
    apply(&*store, other, 1_000, vec![set("a", 1, json!({"t": 1}))]).await;
    apply(&*store, u, 2_000, vec![delete("a", 10), delete("b", 11)]).await;
    apply(&*store, other, 2_000, vec![delete("a", 10)]).await;

    let one = Scope {
        collection: Some("messages"),
        id: Some("a"),
    };
    assert_eq!(store.purge_trash(u, one).await.expect("purge a"), 1);
    assert_eq!(store.purge_trash(u, one).await.expect("again"), 0);
    // A live record is not in the trash: purging it does nothing.
    let live = Scope {
        collection: Some("messages"),
        id: Some("c"),
    };
    assert_eq!(store.purge_trash(u, live).await.expect("live"), 0);
    let left = rewound(&*store, u, 500).await;
    assert!(!left.contains_key("a"), "a's history is gone: {left:?}");
    assert!(left.contains_key("b") && left.contains_key("c"));
    assert_eq!(
        store.purge_trash(u, Scope::default()).await.expect("purge all"),
        1
    );
    assert!(
        store
            .trash(u, Scope::default(), at(0), None, 10)
            .await
            .expect("trash")
            .is_empty()
    );
    // The other account kept its own.
    assert_eq!(
        store
            .trash(other, Scope::default(), at(0), None, 10)
            .await
            .expect("theirs")
            .len(),
        1
    );
}

async fn pruning_keeps_the_trash_copy_longer_than_the_rest(db: TestDb) {
    let store = db.store().await;
    let u = store_user(&*store, "ann@example.org").await;
    // a: created, changed, deleted (in the trash). b: deleted, then revived. c: created late.
    apply(
        &*store,
        u,
        1_000,
        vec![set("a", 1, json!({"t": 1})), set("b", 2, json!({"t": 2}))],
    )
    .await;
    apply(
        &*store,
        u,
        2_000,
        vec![set("a", 3, json!({"t": 3})), delete("b", 4)],
    )
    .await;
    apply(
        &*store,
        u,
        3_000,
        vec![delete("a", 5), set("b", 6, json!({"t": 6}))],
    )
    .await;
    apply(&*store, u, 9_000, vec![set("c", 7, json!({"t": 7}))]).await;

    // History kept from 5 s, the trash from 2.5 s: every entry before 5 s goes but a's
    // deletion (still in the trash, 3 s ≥ 2.5 s); b's deletion was undone, so it goes too.
    let mut pruned = 0;
    loop {
        let n = store.prune_history(at(5_000), at(2_500), 2).await.expect("prune");
        assert!(n <= 2, "at most the limit");
        pruned += n;
        if n < 2 {
            break;
        }
    }
    assert_eq!(
        pruned, 5,
        "a created/changed, b created/deleted/revived, and nothing after 5 s"
    );
    let trash = store
        .trash(u, Scope::default(), at(0), None, 10)
        .await
        .expect("trash");
    assert_eq!(trash.len(), 1);
    assert_eq!(trash[0].key.id, "a");
    assert_eq!(trash[0].values["t"], 3);
    assert_eq!(rewound(&*store, u, 5_000).await.len(), 1, "c's creation is kept");
    // Past the trash retention the deletion goes as well.
    assert_eq!(
        store
            .prune_history(at(5_000), at(3_001), 100)
            .await
            .expect("prune"),
        1
    );
    assert!(
        store
            .trash(u, Scope::default(), at(0), None, 10)
            .await
            .expect("trash")
            .is_empty()
    );
}
