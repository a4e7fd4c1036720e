//! The sync part of the store contract, on SQLite and PostgreSQL.

use nextsync_core::account::Email;
use nextsync_core::api::MutationStatus;
use nextsync_core::hlc::Hlc;
use nextsync_core::ids::{Seq, UserId};
use nextsync_core::push::{Mutation, Precondition, RecordKey};
use nextsync_core::secret::Secret;
use nextsync_core::sync::Op;
use nextsync_core::time::Timestamp;
use nextsync_store::Store;
use nextsync_store::accounts::NewUser;
use nextsync_store::sync::ApplyError;
use nextsync_testkit::{TestDb, both_backends};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

async fn user(store: &dyn Store, email: &str) -> UserId {
    let user = NewUser {
        id: UserId::new(),
        email: Email::parse(email).expect("email"),
        password_hash: Secret::new("$argon2id$fake"),
        created_at: Timestamp::now(),
    };
    store.create_user(&user, None).await.expect("create user");
    user.id
}

fn upsert(mutation_id: &str, id: &str, ms: u64, fields: serde_json::Value) -> Mutation {
    let fields = Op::Upsert(fields.as_object().expect("object").clone());
    write(mutation_id, "messages", id, ms, fields)
}

both_backends!(
    pushes_land_in_the_feed_once_each_in_seq_order,
    pages_end_at_their_byte_budget_but_hold_at_least_one_record,
    a_repeated_mutation_id_changes_nothing,
    a_failed_precondition_writes_nothing,
    a_conflict_resolves_once,
    users_never_see_each_others_records,
    concurrent_writers_never_let_a_reader_skip_a_change,
    concurrent_applies_commit_or_refuse_each_on_its_own,
    a_recent_first_page_holds_the_newest_live_parents_and_their_children,
);

fn write(mutation_id: &str, collection: &str, id: &str, ms: u64, op: Op) -> Mutation {
    Mutation {
        mutation_id: mutation_id.into(),
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

async fn a_recent_first_page_holds_the_newest_live_parents_and_their_children(db: TestDb) {
    let store = db.store().await;
    let u = user(&*store, "ann@example.org").await;
    let other = user(&*store, "bo@example.org").await;
    let now = Timestamp::now();
    let fields = |v: serde_json::Value| Op::Upsert(v.as_object().expect("object").clone());
    let mut batch = Vec::new();
    for s in 0..5u64 {
        batch.push(write(
            &format!("s{s}"),
            "sessions",
            &format!("s{s}"),
            1000 + s,
            fields(json!({"topic": s})),
        ));
        for m in 0..3u64 {
            let id = format!("s{s}-m{m}");
            batch.push(write(
                &id,
                "messages",
                &id,
                1000 + s,
                fields(json!({"session_id": format!("s{s}"), "n": m})),
            ));
        }
    }
    store.apply(u, batch, now, None).await.expect("apply");
    // s1 changes last; s4 is deleted; another user's message claims s1 as its session.
    let later = [
        (
            u,
            write("s1b", "sessions", "s1", 3000, fields(json!({"topic": "edited"}))),
        ),
        (u, write("s4d", "sessions", "s4", 3001, Op::Delete)),
        (
            other,
            write("x", "messages", "x", 3002, fields(json!({"session_id": "s1"}))),
        ),
    ];
    for (owner, mutation) in later {
        store
            .apply(owner, vec![mutation], now, None)
            .await
            .expect("apply");
    }

    let page = store
        .recent(u, "sessions", 2, Some(("messages", "session_id")))
        .await
        .expect("recent");
    let ids: Vec<(&str, &str)> = page
        .iter()
        .map(|(k, _)| (k.collection.as_str(), k.id.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            ("sessions", "s1"),
            ("sessions", "s3"),
            ("messages", "s1-m0"),
            ("messages", "s1-m1"),
            ("messages", "s1-m2"),
            ("messages", "s3-m0"),
            ("messages", "s3-m1"),
            ("messages", "s3-m2"),
        ]
    );
    let parents_only = store.recent(u, "sessions", 10, None).await.expect("recent");
    assert_eq!(parents_only.len(), 4, "the deleted session is left out");
}

async fn pushes_land_in_the_feed_once_each_in_seq_order(db: TestDb) {
    let store = db.store().await;
    let u = user(&*store, "ann@example.org").await;
    let now = Timestamp::now();
    let batch: Vec<_> = (0..10)
        .map(|i| upsert(&format!("m{i}"), &format!("r{i}"), 1000 + i, json!({"n": i})))
        .collect();
    let applied = store.apply(u, batch, now, None).await.expect("apply");
    assert_eq!(applied.head, Seq(10));
    // Update r3: it moves to the end of the feed and appears once.
    store
        .apply(u, vec![upsert("m10", "r3", 2000, json!({"n": 33}))], now, None)
        .await
        .expect("apply");

    let mut seen = Vec::new();
    let mut since = Seq(0);
    loop {
        let page = store.pull(u, since, 4, usize::MAX).await.expect("pull");
        if page.records.is_empty() {
            break;
        }
        since = page.records.last().expect("last").1.seq;
        seen.extend(page.records);
    }
    let ids: Vec<_> = seen.iter().map(|(k, _)| k.id.as_str()).collect();
    assert_eq!(ids, ["r0", "r1", "r2", "r4", "r5", "r6", "r7", "r8", "r9", "r3"]);
    assert!(seen.windows(2).all(|w| w[0].1.seq < w[1].1.seq));
    assert_eq!(seen.last().expect("r3").1.visible().0["n"], json!(33));
}

async fn pages_end_at_their_byte_budget_but_hold_at_least_one_record(db: TestDb) {
    let store = db.store().await;
    let u = user(&*store, "ann@example.org").await;
    let now = Timestamp::now();
    let batch: Vec<_> = (0..5)
        .map(|i| {
            upsert(
                &format!("m{i}"),
                &format!("r{i}"),
                1000 + i,
                json!({"text": "x".repeat(1000)}),
            )
        })
        .collect();
    store.apply(u, batch, now, None).await.expect("apply");

    // ~1.1 KB each: a 2,500-byte budget takes two.
    let page = store.pull(u, Seq(0), 100, 2500).await.expect("pull");
    assert_eq!(page.records.len(), 2);
    assert!(page.has_more);
    // A budget below one record still moves: one record per page.
    let mut since = Seq(0);
    let mut pages = 0;
    loop {
        let page = store.pull(u, since, 100, 10).await.expect("pull");
        assert_eq!(page.records.len(), 1, "page {pages}");
        pages += 1;
        since = page.records[0].1.seq;
        if !page.has_more {
            break;
        }
    }
    assert_eq!(pages, 5);
    // The count still bounds a page, and the last page says there is no more.
    let page = store.pull(u, Seq(0), 3, usize::MAX).await.expect("pull");
    assert_eq!((page.records.len(), page.has_more), (3, true));
    let page = store.pull(u, Seq(0), 5, usize::MAX).await.expect("pull");
    assert_eq!((page.records.len(), page.has_more), (5, false));
}

async fn a_repeated_mutation_id_changes_nothing(db: TestDb) {
    let store = db.store().await;
    let u = user(&*store, "ann@example.org").await;
    let first = store
        .apply(
            u,
            vec![upsert("m1", "r1", 1000, json!({"t": "a"}))],
            Timestamp::now(),
            None,
        )
        .await
        .expect("apply");
    let again = store
        .apply(
            u,
            vec![upsert("m1", "r1", 5000, json!({"t": "b"}))],
            Timestamp::now(),
            None,
        )
        .await
        .expect("apply");
    assert_eq!(again.results[0].status, MutationStatus::Duplicate);
    assert_eq!(again.results[0].seq, first.results[0].seq);
    assert_eq!(again.head, first.head);
    let record = store
        .record(
            u,
            &RecordKey {
                collection: "messages".into(),
                id: "r1".into(),
            },
        )
        .await
        .expect("read");
    assert_eq!(record.expect("exists").visible().0["t"], json!("a"));
}

async fn a_failed_precondition_writes_nothing(db: TestDb) {
    let store = db.store().await;
    let u = user(&*store, "ann@example.org").await;
    store
        .apply(
            u,
            vec![upsert("m1", "r1", 1000, json!({"t": "a"}))],
            Timestamp::now(),
            None,
        )
        .await
        .expect("apply");
    let mut stale = upsert("m3", "r1", 3000, json!({"t": "c"}));
    stale.precondition = Some(Precondition::Seq(Seq(7)));
    let batch = [upsert("m2", "r2", 2000, json!({"t": "b"})), stale];
    match store.apply(u, batch.to_vec(), Timestamp::now(), None).await {
        Err(ApplyError::PreconditionFailed {
            current: Some(current),
            ..
        }) => assert_eq!(current.seq, Seq(1)),
        other => panic!("expected a failed precondition, got {other:?}"),
    }
    let feed = store.pull(u, Seq(0), 100, usize::MAX).await.expect("pull");
    assert_eq!(feed.records.len(), 1, "r2 of the failed batch was not written");
    let retry = store
        .apply(
            u,
            vec![upsert("m2", "r2", 2000, json!({"t": "b"}))],
            Timestamp::now(),
            None,
        )
        .await;
    assert_eq!(
        retry.expect("apply").results[0].status,
        MutationStatus::Applied,
        "m2 was not remembered either"
    );
}

async fn a_conflict_resolves_once(db: TestDb) {
    let store = db.store().await;
    let u = user(&*store, "ann@example.org").await;
    let now = Timestamp::now();
    store
        .apply(
            u,
            vec![upsert("m1", "r1", 1000, json!({"t": "laptop"}))],
            now,
            None,
        )
        .await
        .expect("apply");
    let mut phone = upsert("m2", "r1", 2000, json!({"t": "phone"}));
    phone.hlc = Some(Hlc::new(2000, 0, "phone").expect("hlc"));
    phone.base_seq = Some(Seq(0));
    let applied = store.apply(u, vec![phone], now, None).await.expect("apply");
    assert_eq!(applied.conflicts.len(), 1);
    let conflict = &store.conflicts(u).await.expect("list")[0];
    assert_eq!(
        (conflict.kept.value.clone(), conflict.lost.value.clone()),
        (json!("phone"), json!("laptop"))
    );

    let mut resolution = upsert("resolve-1", "r1", 0, json!({"t": "laptop"}));
    resolution.hlc = None;
    store
        .apply(u, vec![resolution.clone()], now, Some(conflict.id))
        .await
        .expect("resolve");
    assert!(store.conflicts(u).await.expect("list").is_empty());
    let again = store
        .apply(
            u,
            vec![Mutation {
                mutation_id: "resolve-2".into(),
                ..resolution
            }],
            now,
            Some(conflict.id),
        )
        .await;
    assert!(matches!(again, Err(ApplyError::ConflictGone)), "{again:?}");
    let record = store
        .record(
            u,
            &RecordKey {
                collection: "messages".into(),
                id: "r1".into(),
            },
        )
        .await
        .expect("read");
    let record = record.expect("exists");
    assert_eq!(record.visible().0["t"], json!("laptop"));
    assert_eq!(record.record.fields["t"].hlc.node(), "server");
}

async fn users_never_see_each_others_records(db: TestDb) {
    let store = db.store().await;
    let ann = user(&*store, "ann@example.org").await;
    let bob = user(&*store, "bob@example.org").await;
    store
        .apply(
            ann,
            vec![upsert("m1", "r1", 1000, json!({"t": "ann"}))],
            Timestamp::now(),
            None,
        )
        .await
        .expect("apply");
    // Had bob's write met ann's record, it would conflict with it: it has seen nothing
    // (`base_seq` 0) and loses on stamp. It must land alone in bob's space instead.
    let bob_push = store
        .apply(
            bob,
            vec![Mutation {
                base_seq: Some(Seq(0)),
                ..upsert("m1", "r1", 900, json!({"t": "bob"}))
            }],
            Timestamp::now(),
            None,
        )
        .await
        .expect("apply");
    assert_eq!(
        bob_push.results[0].status,
        MutationStatus::Applied,
        "mutation ids are per user"
    );
    assert!(bob_push.conflicts.is_empty(), "{:?}", bob_push.conflicts);
    let key = RecordKey {
        collection: "messages".into(),
        id: "r1".into(),
    };
    assert_eq!(
        store
            .record(ann, &key)
            .await
            .expect("read")
            .expect("ann's")
            .visible()
            .0["t"],
        json!("ann")
    );
    assert_eq!(
        store
            .record(bob, &key)
            .await
            .expect("read")
            .expect("bob's")
            .visible()
            .0["t"],
        json!("bob")
    );
    let ann_feed = store.pull(ann, Seq(0), 10, usize::MAX).await.expect("pull");
    let bob_feed = store.pull(bob, Seq(0), 10, usize::MAX).await.expect("pull");
    assert_eq!((ann_feed.records.len(), bob_feed.records.len()), (1, 1));
    assert_ne!(ann_feed.epoch, bob_feed.epoch);
    assert!(store.conflicts(bob).await.expect("list").is_empty());
    assert!(store.conflicts(ann).await.expect("list").is_empty());
}

/// Writers commit concurrently while a reader pulls from its cursor; every record is written
/// once, so a reader that ever passed a seq committed later would miss one for good.
async fn concurrent_writers_never_let_a_reader_skip_a_change(db: TestDb) {
    let store: Arc<dyn Store> = db.store().await;
    let u = user(&*store, "ann@example.org").await;
    const WRITERS: usize = 6;
    const BATCHES: usize = 40;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for b in 0..BATCHES {
                    let id = format!("w{w}-b{b}");
                    let m = upsert(&id, &id, 1000 + b as u64, json!({"w": w, "b": b}));
                    store
                        .apply(u, vec![m], Timestamp::now(), None)
                        .await
                        .expect("apply");
                }
            })
        })
        .collect();
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seen: HashMap<String, usize> = HashMap::new();
            let mut since = Seq(0);
            loop {
                let page = store.pull(u, since, 7, usize::MAX).await.expect("pull");
                for (key, record) in &page.records {
                    *seen.entry(key.id.clone()).or_default() += 1;
                    since = record.seq;
                }
                if seen.len() == WRITERS * BATCHES {
                    return seen;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    for w in writers {
        w.await.expect("writer");
    }
    let seen = tokio::time::timeout(std::time::Duration::from_secs(30), reader)
        .await
        .expect("the reader saw every change: none was skipped")
        .expect("reader");
    assert!(seen.values().all(|&n| n == 1), "each record once");
}

/// Many applies at once (on SQLite they share group commits): each refused one leaves
/// nothing, each accepted one is in its user's feed exactly once, in seq order.
async fn concurrent_applies_commit_or_refuse_each_on_its_own(db: TestDb) {
    let store = db.store().await;
    let mut users = Vec::new();
    for n in 0..4 {
        users.push(user(&*store, &format!("u{n}@example.org")).await);
    }
    let mut tasks = Vec::new();
    for n in 0..40u64 {
        let (store, u) = (store.clone(), users[(n % 4) as usize]);
        tasks.push(tokio::spawn(async move {
            let mut m = upsert(&format!("m{n}"), &format!("r{n}"), 1000 + n, json!({ "n": n }));
            // Every fifth apply carries a precondition that cannot hold.
            let refused = n % 5 == 0;
            if refused {
                m.precondition = Some(Precondition::Seq(Seq(999)));
            }
            let result = store.apply(u, vec![m], Timestamp::now(), None).await;
            (n, refused, result)
        }));
    }
    let mut accepted: HashMap<UserId, Vec<u64>> = HashMap::new();
    for task in tasks {
        let (n, refused, result) = task.await.expect("task");
        match (refused, result) {
            (true, Err(ApplyError::PreconditionFailed { .. })) => {}
            (false, Ok(_)) => accepted.entry(users[(n % 4) as usize]).or_default().push(n),
            (refused, other) => panic!("apply {n} (refused: {refused}): {other:?}"),
        }
    }
    for u in users {
        let feed = store.pull(u, Seq(0), 100, usize::MAX).await.expect("pull");
        let seqs: Vec<u64> = feed.records.iter().map(|(_, r)| r.seq.0).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "gapless, in order"
        );
        let mut ids: Vec<String> = feed.records.iter().map(|(k, _)| k.id.clone()).collect();
        ids.sort();
        let mut expected: Vec<String> = accepted[&u].iter().map(|n| format!("r{n}")).collect();
        expected.sort();
        assert_eq!(ids, expected);
    }
}
