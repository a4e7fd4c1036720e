//! The sync contract end to end over real TCP, on SQLite and PostgreSQL.

use nextsync_testkit::{Api, Session, TestDb, both_backends, error_code, start};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn now_ms() -> u64 {
    nextsync_core::time::Timestamp::now().as_millis() as u64
}

fn stamp(ms: u64, counter: u32, node: &str) -> String {
    format!("{ms:015}-{counter:05}-{node}")
}

fn upsert(mid: &str, id: &str, hlc: &str, fields: Value, base_seq: Option<u64>) -> Value {
    let mut m = json!({"mutation_id": mid, "collection": "messages", "id": id, "op": "upsert", "fields": fields, "hlc": hlc});
    if let Some(base) = base_seq {
        m["base_seq"] = json!(base);
    }
    m
}

async fn push(api: &Api, session: &Session, mutations: Vec<Value>) -> (StatusCode, Value) {
    api.post(
        "/v1/sync/push",
        session.token(),
        json!({ "mutations": mutations }),
    )
    .await
}

/// Pulls everything after `since`, page by page; returns the changes and the final cursor.
async fn pull_all(api: &Api, session: &Session, since: Option<&str>, limit: u32) -> (Vec<Value>, String) {
    let mut changes = Vec::new();
    let mut cursor = since.map(str::to_owned);
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/sync/pull?since={c}&limit={limit}"),
            None => format!("/v1/sync/pull?limit={limit}"),
        };
        let (status, body) = api.get(&path, session.token()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        changes.extend(body["changes"].as_array().expect("changes").iter().cloned());
        cursor = Some(body["cursor"].as_str().expect("cursor").to_owned());
        if body["has_more"] != true {
            return (changes, cursor.expect("cursor"));
        }
    }
}

both_backends!(
    two_devices_editing_one_field_apart_keep_the_later_and_list_the_loser,
    a_delete_beats_an_older_edit_and_keeps_it_as_a_conflict,
    a_duplicate_push_changes_nothing,
    paging_through_ten_thousand_records_gives_each_once_in_order,
    large_records_come_a_few_per_page,
    a_foreign_users_push_lands_only_in_their_space,
    refused_pushes_leave_nothing_behind,
    names_with_control_characters_are_refused_alike_on_both_backends,
    the_records_api_locks_optimistically,
    cursors_of_another_feed_require_a_resync,
    compressed_pushes_are_accepted_and_the_bus_hears_commits,
    a_long_poll_answers_at_once_wakes_on_a_change_and_times_out_empty,
);

async fn two_devices_editing_one_field_apart_keep_the_later_and_list_the_loser(db: TestDb) {
    let (_server, api) = start(&db).await;
    let laptop = api.register("ann@example.org").await;
    let phone = api.login("ann@example.org", nextsync_testkit::PASSWORD).await;
    let t = now_ms();
    let (status, body) = push(
        &api,
        &laptop,
        vec![upsert(
            "l1",
            "m1",
            &stamp(t, 0, "laptop"),
            json!({"text": "hello"}),
            Some(0),
        )],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, base) = pull_all(&api, &phone, None, 100).await;
    let base_seq = body["results"][0]["seq"].as_u64().expect("seq");

    // Both edit while apart (neither pulls the other's edit).
    push(
        &api,
        &laptop,
        vec![upsert(
            "l2",
            "m1",
            &stamp(t + 10, 0, "laptop"),
            json!({"text": "hello from the laptop"}),
            Some(base_seq),
        )],
    )
    .await;
    let (status, body) = push(
        &api,
        &phone,
        vec![upsert(
            "p1",
            "m1",
            &stamp(t + 20, 0, "phone"),
            json!({"text": "hello from the phone"}),
            Some(base_seq),
        )],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["conflicts"].as_array().expect("conflicts").len(),
        1,
        "{body}"
    );

    let (changes, _) = pull_all(&api, &laptop, Some(&base), 100).await;
    assert_eq!(changes.len(), 1);
    assert_eq!(
        changes[0]["fields"]["text"], "hello from the phone",
        "the later stamp wins"
    );
    assert_eq!(changes[0]["stamps"]["text"], stamp(t + 20, 0, "phone"));

    let (_, list) = api.get("/v1/conflicts", laptop.token()).await;
    let conflicts = list["conflicts"].as_array().expect("list");
    assert_eq!(conflicts.len(), 1);
    let c = &conflicts[0];
    assert_eq!(
        (c["collection"].as_str(), c["id"].as_str(), c["field"].as_str()),
        (Some("messages"), Some("m1"), Some("text"))
    );
    assert_eq!(c["kept"]["value"], "hello from the phone");
    assert_eq!(c["lost"]["value"], "hello from the laptop");
    assert_eq!(c["lost"]["hlc"], stamp(t + 10, 0, "laptop"));

    // Resolve by taking the lost value back: a new change every device pulls.
    let id = c["conflict_id"].as_str().expect("id");
    let (status, body) = api
        .post(
            &format!("/v1/conflicts/{id}/resolve"),
            phone.token(),
            json!({"choose": "lost"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["fields"]["text"], "hello from the laptop");
    let (changes, _) = pull_all(&api, &phone, Some(&base), 100).await;
    assert_eq!(
        changes.last().expect("change")["fields"]["text"],
        "hello from the laptop"
    );
    let (_, list) = api.get("/v1/conflicts", laptop.token()).await;
    assert_eq!(list["conflicts"], json!([]));
    let (status, _) = api
        .post(
            &format!("/v1/conflicts/{id}/resolve"),
            phone.token(),
            json!({"choose": "kept"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "resolved once");
    let (status, body) = api
        .post(
            &format!("/v1/conflicts/{id}/resolve"),
            phone.token(),
            json!({"choose": "kept", "value": 1}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_resolution")
    );
}

async fn a_delete_beats_an_older_edit_and_keeps_it_as_a_conflict(db: TestDb) {
    let (_server, api) = start(&db).await;
    let laptop = api.register("ann@example.org").await;
    let t = now_ms();
    push(
        &api,
        &laptop,
        vec![upsert(
            "a",
            "m1",
            &stamp(t, 0, "laptop"),
            json!({"text": "draft"}),
            Some(0),
        )],
    )
    .await;
    // The phone deletes at t+20; an edit made offline at t+10 arrives afterwards.
    let delete = json!({"mutation_id": "d", "collection": "messages", "id": "m1", "op": "delete", "hlc": stamp(t + 20, 0, "phone"), "base_seq": 1});
    let (status, body) = push(&api, &laptop, vec![delete]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = push(
        &api,
        &laptop,
        vec![upsert(
            "e",
            "m1",
            &stamp(t + 10, 0, "tablet"),
            json!({"text": "typed offline"}),
            Some(1),
        )],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["conflicts"][0]["lost"]["value"], "typed offline");
    assert_eq!(body["conflicts"][0]["kept"]["deleted"], true);

    let (changes, _) = pull_all(&api, &laptop, None, 100).await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["deleted"], true, "an older write never revives");
    assert_eq!(changes[0]["fields"], json!({}));
    assert_eq!(changes[0]["tombstone"], stamp(t + 20, 0, "phone"));
    // A newer write does.
    push(
        &api,
        &laptop,
        vec![upsert(
            "f",
            "m1",
            &stamp(t + 30, 0, "laptop"),
            json!({"text": "again"}),
            None,
        )],
    )
    .await;
    let (changes, _) = pull_all(&api, &laptop, None, 100).await;
    assert_eq!(
        (changes[0]["deleted"].clone(), changes[0]["fields"].clone()),
        (json!(false), json!({"text": "again"}))
    );
}

async fn a_duplicate_push_changes_nothing(db: TestDb) {
    let (_server, api) = start(&db).await;
    let s = api.register("ann@example.org").await;
    let t = now_ms();
    let batch = vec![
        upsert("m-1", "a", &stamp(t, 0, "x"), json!({"v": 1}), None),
        upsert("m-2", "b", &stamp(t, 1, "x"), json!({"v": 2}), None),
    ];
    let (_, first) = push(&api, &s, batch.clone()).await;
    let (status, again) = push(&api, &s, batch).await;
    assert_eq!(status, StatusCode::OK);
    for (a, b) in first["results"]
        .as_array()
        .expect("results")
        .iter()
        .zip(again["results"].as_array().expect("results"))
    {
        assert_eq!(a["status"], "applied");
        assert_eq!(b["status"], "duplicate");
        assert_eq!(a["seq"], b["seq"]);
    }
    let (changes, _) = pull_all(&api, &s, None, 100).await;
    assert_eq!(changes.len(), 2);
    assert_eq!(
        changes.iter().map(|c| c["seq"].as_u64().expect("seq")).max(),
        Some(2),
        "no new seq"
    );
}

async fn paging_through_ten_thousand_records_gives_each_once_in_order(db: TestDb) {
    let (_server, api) = start(&db).await;
    let s = api.register("ann@example.org").await;
    let t = now_ms();
    for batch in 0..10 {
        let mutations = (0..1000)
            .map(|i| {
                let n = batch * 1000 + i;
                upsert(
                    &format!("m{n}"),
                    &format!("r{n:05}"),
                    &stamp(t, n as u32, "laptop"),
                    json!({"n": n}),
                    None,
                )
            })
            .collect();
        let (status, body) = push(&api, &s, mutations).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Touch a few again: they move to the end of the feed and still appear once.
    push(
        &api,
        &s,
        vec![upsert(
            "again",
            "r00042",
            &stamp(t + 1, 0, "laptop"),
            json!({"n": -42}),
            None,
        )],
    )
    .await;
    let (changes, _) = pull_all(&api, &s, None, 777).await;
    assert_eq!(changes.len(), 10_000);
    let seqs: Vec<u64> = changes.iter().map(|c| c["seq"].as_u64().expect("seq")).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
    let ids: std::collections::HashSet<_> = changes.iter().map(|c| c["id"].as_str().expect("id")).collect();
    assert_eq!(ids.len(), 10_000, "each record exactly once");
    assert_eq!(changes.last().expect("last")["id"], "r00042");
}

/// Pages are capped by bytes as well as by count (4 MiB of stored text, at least one record):
/// 500 records of 3 MiB in one page would hold gigabytes in the server.
async fn large_records_come_a_few_per_page(db: TestDb) {
    let (_server, api) = start(&db).await;
    let s = api.register("ann@example.org").await;
    let t = now_ms();
    let mib = "x".repeat(1024 * 1024 - 16);
    for n in 0..3u32 {
        let fields = json!({"a": mib, "b": mib, "c": mib});
        let (status, body) = push(
            &api,
            &s,
            vec![upsert(
                &format!("m{n}"),
                &format!("big{n}"),
                &stamp(t, n, "x"),
                fields,
                None,
            )],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, page) = api.get("/v1/sync/pull?limit=500", s.token()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["changes"].as_array().expect("changes").len(), 1);
    assert_eq!(page["has_more"], true);
    let (changes, _) = pull_all(&api, &s, None, 500).await;
    let ids: Vec<_> = changes.iter().map(|c| c["id"].as_str().expect("id")).collect();
    assert_eq!(ids, ["big0", "big1", "big2"]);
}

async fn a_foreign_users_push_lands_only_in_their_space(db: TestDb) {
    let (_server, api) = start(&db).await;
    let ann = api.register("ann@example.org").await;
    let bob = api.register("bob@example.org").await;
    let t = now_ms();
    push(
        &api,
        &ann,
        vec![upsert(
            "m1",
            "shared-id",
            &stamp(t, 0, "a"),
            json!({"owner": "ann"}),
            None,
        )],
    )
    .await;
    let (_, body) = push(
        &api,
        &bob,
        vec![upsert(
            "m1",
            "shared-id",
            &stamp(t + 5, 0, "b"),
            json!({"owner": "bob"}),
            None,
        )],
    )
    .await;
    assert_eq!(body["results"][0]["status"], "applied");
    assert_eq!(body["conflicts"], json!([]));
    let (ann_changes, _) = pull_all(&api, &ann, None, 100).await;
    assert_eq!(ann_changes[0]["fields"]["owner"], "ann");
    let (status, record) = api.get("/v1/records/messages/shared-id", bob.token()).await;
    assert_eq!(
        (status, record["fields"]["owner"].as_str()),
        (StatusCode::OK, Some("bob"))
    );
    let (status, _) = api.get("/v1/records/messages/only-ann", bob.token()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// PostgreSQL's text refuses NUL; SQLite takes it. A name that one backend would store and
/// the other would fail on with a 500 at every retry (wedging a client's outbox) is refused
/// at validation, alike on both.
async fn names_with_control_characters_are_refused_alike_on_both_backends(db: TestDb) {
    let (_server, api) = start(&db).await;
    let laptop = api.register("ann@example.org").await;
    let phone = api.login("ann@example.org", nextsync_testkit::PASSWORD).await;
    let t = now_ms();
    let (status, body) = push(
        &api,
        &laptop,
        vec![upsert("m1", "r1", &stamp(t, 0, "laptop"), json!({"t": 1}), None)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A concurrent write of another field would keep a conflict entry named by the field.
    for name in ["a\u{0}b", "tab\there"] {
        let (status, body) = push(
            &api,
            &phone,
            vec![upsert(
                "m2",
                "r1",
                &stamp(t, 1, "phone"),
                json!({ name: 2 }),
                Some(0),
            )],
        )
        .await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::BAD_REQUEST, "invalid_field"),
            "{name:?}"
        );
        let (status, body) = api
            .send(
                reqwest::Method::PUT,
                "/v1/records/messages/r1",
                phone.token(),
                Some(json!({ "fields": { name: 2 } })),
            )
            .await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::BAD_REQUEST, "invalid_field"),
            "{name:?}"
        );
    }
    // Nothing is wedged: the same mutation id with a clean name goes through.
    let (status, body) = push(
        &api,
        &phone,
        vec![upsert(
            "m2",
            "r1",
            &stamp(t, 1, "phone"),
            json!({"ok": 2}),
            Some(0),
        )],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["status"], "applied", "{body}");
}

async fn refused_pushes_leave_nothing_behind(db: TestDb) {
    let (server, api) = start(&db).await;
    let s = api.register("ann@example.org").await;
    let t = now_ms();
    let good = |n: u32| {
        upsert(
            &format!("g{n}"),
            &format!("r{n}"),
            &stamp(t, n, "x"),
            json!({"v": n}),
            None,
        )
    };

    let mut bad_collection = upsert("bad", "r", &stamp(t, 9, "x"), json!({"v": 1}), None);
    bad_collection["collection"] = json!("Not Valid");
    let (status, body) = push(&api, &s, vec![good(1), bad_collection, good(2)]).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_collection")
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("mutation 1 (\"bad\")"),
        "{body}"
    );

    let future = upsert(
        "future",
        "r",
        &stamp(t + 11 * 60 * 1000, 0, "x"),
        json!({"v": 1}),
        None,
    );
    let (status, body) = push(&api, &s, vec![good(1), future]).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "clock_skew")
    );

    let limit = server.state.config.sync_limits;
    let huge = "x".repeat(limit.max_field_bytes + 1);
    let (status, body) = push(
        &api,
        &s,
        vec![
            good(1),
            upsert("huge", "r", &stamp(t, 9, "x"), json!({"v": huge}), None),
        ],
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "field_too_large")
    );

    let too_many: Vec<_> = (0..=limit.max_mutations as u32).map(good).collect();
    let (status, body) = push(&api, &s, too_many).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_many_mutations")
    );

    let (status, body) = api
        .post(
            "/v1/sync/push",
            s.token(),
            json!({"mutations": [{"mutation_id": "x"}]}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_body")
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("mutations[0]") && message.contains("collection"),
        "the message names the bad value's path: {message}"
    );

    let (changes, _) = pull_all(&api, &s, None, 100).await;
    assert_eq!(
        changes,
        Vec::<Value>::new(),
        "nothing of any refused batch was written"
    );
    let (_, body) = push(&api, &s, vec![good(1)]).await;
    assert_eq!(
        body["results"][0]["status"], "applied",
        "g1 was never remembered as applied"
    );
}

async fn the_records_api_locks_optimistically(db: TestDb) {
    let (_server, api) = start(&db).await;
    let s = api.register("ann@example.org").await;
    let bob = api.register("bob@example.org").await;
    let url = |path: &str| format!("{}{path}", api.base_url);
    let put = |if_match: Option<&str>, fields: Value| {
        let mut request = api
            .http
            .put(url("/v1/records/prompts/p1"))
            .bearer_auth(&s.access)
            .json(&json!({"fields": fields}));
        if let Some(tag) = if_match {
            request = request.header("if-match", tag);
        }
        request.send()
    };
    let created = put(None, json!({"title": "Translate", "body": "Translate to French"}))
        .await
        .expect("put");
    assert_eq!(created.status(), StatusCode::OK);
    let etag = created.headers()["etag"].to_str().expect("etag").to_owned();

    let response = api
        .http
        .get(url("/v1/records/prompts/p1"))
        .bearer_auth(&s.access)
        .send()
        .await
        .expect("get");
    assert_eq!(response.headers()["etag"].to_str().expect("etag"), etag);
    let record: Value = response.json().await.expect("json");
    assert_eq!(record["fields"]["title"], "Translate");
    assert_eq!(format!("\"{}\"", record["seq"]), etag);

    let updated = put(Some(&etag), json!({"title": "Translate (FR)"}))
        .await
        .expect("put");
    assert_eq!(updated.status(), StatusCode::OK);
    let new_etag = updated.headers()["etag"].to_str().expect("etag").to_owned();
    assert_ne!(new_etag, etag);
    let body: Value = updated.json().await.expect("json");
    assert_eq!(
        (body["fields"]["title"].as_str(), body["fields"]["body"].as_str()),
        (Some("Translate (FR)"), Some("Translate to French"))
    );

    let stale = put(Some(&etag), json!({"title": "lost update"}))
        .await
        .expect("put");
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let body: Value = stale.json().await.expect("json");
    assert_eq!(error_code(&body), "precondition_failed");
    assert_eq!(
        body["current"]["fields"]["title"], "Translate (FR)",
        "412 carries the current record: {body}"
    );

    let bad = put(Some("W/\"1\""), json!({"title": "x"})).await.expect("put");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    let delete = |tag: &str| {
        api.http
            .delete(url("/v1/records/prompts/p1"))
            .bearer_auth(&s.access)
            .header("if-match", tag)
            .send()
    };
    assert_eq!(
        delete(&etag).await.expect("delete").status(),
        StatusCode::PRECONDITION_FAILED
    );
    let deleted = delete(&new_etag).await.expect("delete");
    assert_eq!(deleted.status(), StatusCode::OK);
    let body: Value = deleted.json().await.expect("json");
    assert_eq!(body["deleted"], true);
    let (status, _) = api.delete("/v1/records/prompts/p1", s.token(), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "already deleted");

    let (status, _) = api.get("/v1/records/prompts/p1", bob.token()).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another user's record is simply absent"
    );
    let (status, _) = api
        .send(
            reqwest::Method::PUT,
            "/v1/records/Bad Name/p1",
            bob.token(),
            Some(json!({"fields": {"a": 1}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

async fn cursors_of_another_feed_require_a_resync(db: TestDb) {
    let (_server, api) = start(&db).await;
    let ann = api.register("ann@example.org").await;
    let bob = api.register("bob@example.org").await;
    push(
        &api,
        &ann,
        vec![upsert("m", "r", &stamp(now_ms(), 0, "x"), json!({"v": 1}), None)],
    )
    .await;
    let (_, ann_cursor) = pull_all(&api, &ann, None, 10).await;
    let (changes, again) = pull_all(&api, &ann, Some(&ann_cursor), 10).await;
    assert!(changes.is_empty());
    assert_eq!(again, ann_cursor, "an empty pull keeps the cursor");
    let (status, body) = api
        .get(&format!("/v1/sync/pull?since={ann_cursor}"), bob.token())
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "resync_required")
    );
    let (status, body) = api.get("/v1/sync/pull?since=%21%21", bob.token()).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_cursor")
    );
}

async fn compressed_pushes_are_accepted_and_the_bus_hears_commits(db: TestDb) {
    let (server, api) = start(&db).await;
    let s = api.register("ann@example.org").await;
    let mut notices = server.state.bus.subscribe(s.user_id.parse().expect("user id"));
    let body = json!({"mutations": [upsert("z1", "r1", &stamp(now_ms(), 0, "x"), json!({"text": "squeezed"}), None)]});
    let compressed = zstd::encode_all(serde_json::to_vec(&body).expect("json").as_slice(), 3).expect("zstd");
    let response = api
        .http
        .post(format!("{}/v1/sync/push", api.base_url))
        .bearer_auth(&s.access)
        .header("content-type", "application/json")
        .header("content-encoding", "zstd")
        .body(compressed)
        .send()
        .await
        .expect("push");
    assert_eq!(response.status(), StatusCode::OK);
    let notice = tokio::time::timeout(std::time::Duration::from_secs(5), notices.recv())
        .await
        .expect("notice")
        .expect("bus");
    match notice {
        nextsync_server::bus::Notice::Changed { user, head, .. } => {
            assert_eq!((user.to_string(), head.0), (s.user_id.clone(), 1));
        }
        other => panic!("expected a change notice, got {other:?}"),
    }
    let (changes, _) = pull_all(&api, &s, None, 10).await;
    assert_eq!(changes[0]["fields"]["text"], "squeezed");
}

async fn a_long_poll_answers_at_once_wakes_on_a_change_and_times_out_empty(db: TestDb) {
    let (server, api) = start(&db).await;
    let laptop = api.register("ann@example.org").await;
    let phone = api.login("ann@example.org", nextsync_testkit::PASSWORD).await;
    let bob = api.register("bob@example.org").await;
    let t = now_ms();
    push(
        &api,
        &laptop,
        vec![upsert("a", "r1", &stamp(t, 0, "laptop"), json!({"v": 1}), None)],
    )
    .await;
    let (_, cursor) = pull_all(&api, &phone, None, 100).await;

    // Changes already waiting: the answer comes at once.
    push(
        &api,
        &laptop,
        vec![upsert("b", "r2", &stamp(t, 1, "laptop"), json!({"v": 2}), None)],
    )
    .await;
    let started = std::time::Instant::now();
    let (status, body) = api
        .get(&format!("/v1/sync/pull?since={cursor}&wait=30"), phone.token())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["changes"][0]["id"], "r2");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let cursor = body["cursor"].as_str().expect("cursor").to_owned();

    // Nothing yet: the request waits until the laptop writes, then answers with it.
    let writer = {
        let (api, laptop) = (api.clone(), laptop.clone());
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
            push(
                &api,
                &laptop,
                vec![upsert("c", "r3", &stamp(t, 2, "laptop"), json!({"v": 3}), None)],
            )
            .await
        })
    };
    let started = std::time::Instant::now();
    let (status, body) = api
        .get(&format!("/v1/sync/pull?since={cursor}&wait=30"), phone.token())
        .await;
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["changes"][0]["id"], "r3", "{body}");
    assert!(
        waited >= std::time::Duration::from_millis(300),
        "answered before the write: {waited:?}"
    );
    assert!(
        waited < std::time::Duration::from_secs(10),
        "woke late: {waited:?}"
    );
    writer.await.expect("writer");
    let cursor = body["cursor"].as_str().expect("cursor").to_owned();

    // Another account's write is not even announced to this account's listeners (the bus
    // keeps a channel per account), so it cannot wake the long-poll below.
    let ann: nextsync_core::ids::UserId = laptop.user_id.parse().expect("user id");
    let mut ann_notices = server.state.bus.subscribe(ann);
    push(
        &api,
        &bob,
        vec![upsert("w", "r8", &stamp(t, 2, "bob"), json!({"v": 8}), None)],
    )
    .await;
    assert!(
        matches!(
            ann_notices.try_recv(),
            Err(tokio::sync::broadcast::error::TryRecvError::Empty)
        ),
        "bob's commit was announced to ann's listeners"
    );
    // Nor does it reach this account's feed: the deadline answers empty with the same cursor.
    let other = {
        let (api, bob) = (api.clone(), bob.clone());
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            push(
                &api,
                &bob,
                vec![upsert("x", "r9", &stamp(t, 3, "bob"), json!({"v": 9}), None)],
            )
            .await
        })
    };
    let started = std::time::Instant::now();
    let (status, body) = api
        .get(&format!("/v1/sync/pull?since={cursor}&wait=1"), phone.token())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["changes"], json!([]));
    assert_eq!(body["cursor"], cursor.as_str());
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    other.await.expect("other");

    let (status, body) = api
        .get(&format!("/v1/sync/pull?since={cursor}&wait=61"), phone.token())
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_wait")
    );
    // The control for the bus check above: ann's own commit is announced to her listeners.
    while ann_notices.try_recv().is_ok() {}
    push(
        &api,
        &laptop,
        vec![upsert("z", "r10", &stamp(t, 4, "laptop"), json!({"v": 10}), None)],
    )
    .await;
    assert!(ann_notices.try_recv().is_ok(), "ann's commit was not announced");
}
