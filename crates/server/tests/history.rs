//! The trash and point-in-time restore end to end over real TCP, on SQLite and PostgreSQL.

use nextsync_testkit::{Api, Session, TestDb, both_backends, error_code, start};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

both_backends!(
    a_deleted_conversation_waits_in_the_trash_and_comes_back_on_every_device,
    purged_records_are_gone_for_good,
    a_restore_to_a_moment_undoes_every_change_since,
    restores_are_refused_outside_the_history_kept,
    one_accounts_trash_is_invisible_to_another,
);

fn now() -> nextsync_core::time::Timestamp {
    nextsync_core::time::Timestamp::now()
}

fn stamp(counter: u32) -> String {
    format!("{:015}-{counter:05}-laptop", now().as_millis())
}

fn upsert(collection: &str, id: &str, counter: u32, fields: Value) -> Value {
    json!({"mutation_id": format!("{collection}-{id}-{counter}"), "collection": collection, "id": id,
        "op": "upsert", "fields": fields, "hlc": stamp(counter)})
}

fn delete(collection: &str, id: &str, counter: u32) -> Value {
    json!({"mutation_id": format!("del-{collection}-{id}-{counter}"), "collection": collection, "id": id,
        "op": "delete", "hlc": stamp(counter)})
}

/// Every record the device has, pulled from the start: `collection/id` → fields, live only.
async fn live_records(api: &Api, session: &Session) -> BTreeMap<String, Value> {
    let mut records = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/sync/pull?since={c}"),
            None => "/v1/sync/pull".to_owned(),
        };
        let (status, body) = api.get(&path, session.token()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for change in body["changes"].as_array().expect("changes") {
            let key = format!(
                "{}/{}",
                change["collection"].as_str().expect("collection"),
                change["id"].as_str().expect("id")
            );
            if change["deleted"] == true {
                records.remove(&key);
            } else {
                records.insert(key, change["fields"].clone());
            }
        }
        cursor = Some(body["cursor"].as_str().expect("cursor").to_owned());
        if body["has_more"] != true {
            return records;
        }
    }
}

fn keys(items: &Value) -> Vec<String> {
    items
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            format!(
                "{}/{}",
                i["collection"].as_str().expect("collection"),
                i["id"].as_str().expect("id")
            )
        })
        .collect()
}

async fn a_deleted_conversation_waits_in_the_trash_and_comes_back_on_every_device(db: TestDb) {
    let (_server, api) = start(&db).await;
    let laptop = api.register("ann@example.org").await;
    let phone = api.login("ann@example.org", nextsync_testkit::PASSWORD).await;
    api.push(
        &laptop,
        vec![
            upsert("sessions", "s1", 1, json!({"topic": "Rust"})),
            upsert("messages", "m1", 2, json!({"session_id": "s1", "content": "hi"})),
            upsert(
                "messages",
                "m2",
                3,
                json!({"session_id": "s1", "content": "hello"}),
            ),
            upsert("sessions", "s2", 4, json!({"topic": "Go"})),
        ],
    )
    .await;
    // The conversation and its messages in one write; s2 alone through the records API.
    api.push(
        &laptop,
        vec![
            delete("sessions", "s1", 5),
            delete("messages", "m1", 6),
            delete("messages", "m2", 7),
        ],
    )
    .await;
    let (status, _) = api.delete("/v1/records/sessions/s2", laptop.token(), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        live_records(&api, &phone).await.is_empty(),
        "every record deleted"
    );

    let (status, trash) = api.get("/v1/trash", phone.token()).await;
    assert_eq!(status, StatusCode::OK, "{trash}");
    assert_eq!(
        keys(&trash["items"]),
        ["sessions/s2", "messages/m2", "messages/m1", "sessions/s1"],
        "most recently deleted first"
    );
    let items = trash["items"].as_array().expect("items");
    assert_eq!(items[3]["fields"], json!({"topic": "Rust"}));
    assert_eq!(items[1]["batch"], items[3]["batch"], "deleted together");
    assert_ne!(items[0]["batch"], items[3]["batch"]);
    let deleted_at =
        nextsync_core::time::Timestamp::parse_rfc3339(items[0]["deleted_at"].as_str().expect("time"))
            .expect("rfc 3339");
    let expires_at =
        nextsync_core::time::Timestamp::parse_rfc3339(items[0]["expires_at"].as_str().expect("time"))
            .expect("rfc 3339");
    assert_eq!(
        expires_at.as_millis() - deleted_at.as_millis(),
        30 * 24 * 3600 * 1000,
        "30 days"
    );
    // A page, and one collection.
    let (_, page) = api.get("/v1/trash?limit=3", phone.token()).await;
    assert_eq!(keys(&page["items"]).len(), 3);
    let (_, rest) = api
        .get(
            &format!("/v1/trash?limit=3&before={}", page["next"]),
            phone.token(),
        )
        .await;
    assert_eq!(keys(&rest["items"]), ["sessions/s1"]);
    assert!(rest.get("next").is_none(), "{rest}");
    let (_, sessions) = api.get("/v1/trash?collection=sessions", phone.token()).await;
    assert_eq!(keys(&sessions["items"]), ["sessions/s2", "sessions/s1"]);

    // From the phone: the conversation with everything deleted with it.
    let (status, restored) = api
        .post(
            "/v1/trash/sessions/s1/restore?together=true",
            phone.token(),
            json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{restored}");
    assert_eq!(restored["restored"].as_array().expect("restored").len(), 3);
    let on_laptop = live_records(&api, &laptop).await;
    assert_eq!(
        on_laptop.keys().collect::<Vec<_>>(),
        ["messages/m1", "messages/m2", "sessions/s1"]
    );
    assert_eq!(
        on_laptop["messages/m2"],
        json!({"session_id": "s1", "content": "hello"})
    );
    let (_, trash) = api.get("/v1/trash", laptop.token()).await;
    assert_eq!(keys(&trash["items"]), ["sessions/s2"]);
    // Restored already: not in the trash any more.
    let (status, body) = api
        .post("/v1/trash/messages/m1/restore", phone.token(), json!(null))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // Alone, without `together`.
    let (status, restored) = api
        .post("/v1/trash/sessions/s2/restore", phone.token(), json!(null))
        .await;
    assert_eq!(status, StatusCode::OK, "{restored}");
    assert_eq!(restored["restored"][0]["fields"], json!({"topic": "Go"}));
    assert_eq!(live_records(&api, &laptop).await.len(), 4);
}

async fn purged_records_are_gone_for_good(db: TestDb) {
    let (_server, api) = start(&db).await;
    let ann = api.register("ann@example.org").await;
    api.push(
        &ann,
        vec![
            upsert("prompts", "p1", 1, json!({"title": "a"})),
            upsert("prompts", "p2", 2, json!({"title": "b"})),
            upsert("masks", "k1", 3, json!({"name": "c"})),
        ],
    )
    .await;
    api.push(
        &ann,
        vec![
            delete("prompts", "p1", 4),
            delete("prompts", "p2", 5),
            delete("masks", "k1", 6),
        ],
    )
    .await;
    let (status, body) = api.delete("/v1/trash/prompts/p1", ann.token(), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["purged"], 1);
    let (status, body) = api.delete("/v1/trash/prompts/p1", ann.token(), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = api
        .post("/v1/trash/prompts/p1/restore", ann.token(), json!(null))
        .await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = api
        .delete("/v1/trash?collection=prompts", ann.token(), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["purged"], 1);
    let (_, trash) = api.get("/v1/trash", ann.token()).await;
    assert_eq!(keys(&trash["items"]), ["masks/k1"]);
    let (_, body) = api.delete("/v1/trash", ann.token(), None).await;
    assert_eq!(body["purged"], 1);
    let (_, trash) = api.get("/v1/trash", ann.token()).await;
    assert!(keys(&trash["items"]).is_empty());
    // Purged history is gone from point-in-time restore too: nothing to bring back.
    let (status, plan) = api
        .post(
            "/v1/restore",
            ann.token(),
            json!({"at": now().minus_secs(60), "dry_run": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(
        (plan["restored"].clone(), plan["trashed"].clone()),
        (json!(0), json!(0)),
        "{plan}"
    );
    let (status, body) = api.get("/v1/trash?collection=bad%20name", ann.token()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

async fn a_restore_to_a_moment_undoes_every_change_since(db: TestDb) {
    let (_server, api) = start(&db).await;
    let laptop = api.register("ann@example.org").await;
    let phone = api.login("ann@example.org", nextsync_testkit::PASSWORD).await;
    api.push(
        &laptop,
        vec![
            upsert(
                "messages",
                "edited",
                1,
                json!({"content": "original", "model": "gpt"}),
            ),
            upsert("messages", "deleted", 2, json!({"content": "keep me"})),
            upsert("messages", "untouched", 3, json!({"content": "same"})),
            upsert("messages", "grown", 4, json!({"content": "short"})),
        ],
    )
    .await;
    let before = live_records(&api, &phone).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let moment = now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    api.push(
        &laptop,
        vec![
            upsert("messages", "edited", 5, json!({"content": "rewritten"})),
            delete("messages", "deleted", 6),
            upsert("messages", "created", 7, json!({"content": "new"})),
            upsert("messages", "grown", 8, json!({"extra": "field"})),
        ],
    )
    .await;
    // The end-to-end encryption keyring is never rewound unless asked for by name.
    api.push(
        &laptop,
        vec![upsert("nextsync-keys", "keyring", 9, json!({"wrapped": "k"}))],
    )
    .await;

    let (status, plan) = api
        .post(
            "/v1/restore",
            phone.token(),
            json!({"at": moment, "dry_run": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(
        (
            plan["restored"].clone(),
            plan["reverted"].clone(),
            plan["trashed"].clone()
        ),
        (json!(1), json!(2), json!(1)),
        "{plan}"
    );
    let actions: BTreeMap<String, String> = plan["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            (
                c["id"].as_str().expect("id").to_owned(),
                c["action"].as_str().expect("action").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        BTreeMap::from([
            ("created".into(), "trash".into()),
            ("deleted".into(), "restore".into()),
            ("edited".into(), "revert".into()),
            ("grown".into(), "revert".into()),
        ])
    );
    assert_eq!(plan["truncated"], false);
    let after_dry_run = live_records(&api, &phone).await;
    assert_eq!(after_dry_run.len(), 5, "a dry run writes nothing");

    let (status, done) = api
        .post("/v1/restore", phone.token(), json!({"at": moment}))
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["dry_run"], false);
    let mut now_on_laptop = live_records(&api, &laptop).await;
    assert_eq!(
        now_on_laptop.remove("nextsync-keys/keyring"),
        Some(json!({"wrapped": "k"})),
        "the keyring stays"
    );
    assert_eq!(
        now_on_laptop, before,
        "exactly the state at the moment, fields added since gone"
    );
    // The record created since is in the trash; a second restore has nothing left to do.
    let (_, trash) = api.get("/v1/trash", laptop.token()).await;
    assert_eq!(keys(&trash["items"]), ["messages/created"]);
    let (_, again) = api
        .post(
            "/v1/restore",
            phone.token(),
            json!({"at": moment, "dry_run": true}),
        )
        .await;
    assert_eq!(again["changes"], json!([]), "{again}");
    // One record alone.
    let (status, one) = api
        .post(
            "/v1/restore",
            phone.token(),
            json!({"at": now().minus_secs(3600), "collection": "messages", "id": "untouched", "dry_run": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["trashed"], 1, "it did not exist an hour ago: {one}");
    assert_eq!(one["changes"].as_array().expect("changes").len(), 1);
}

async fn restores_are_refused_outside_the_history_kept(db: TestDb) {
    let (_server, api) = start(&db).await;
    let ann = api.register("ann@example.org").await;
    let cases = [
        (json!({"at": now().minus_secs(8 * 24 * 3600)}), "beyond_retention"),
        (json!({"at": now().plus_secs(3600)}), "restore_in_future"),
        (json!({"at": now(), "id": "x"}), "invalid_scope"),
        (json!({"at": "yesterday"}), "invalid_body"),
    ];
    for (body, code) in cases {
        let (status, answer) = api.post("/v1/restore", ann.token(), body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {answer}");
        if code != "invalid_body" {
            assert_eq!(error_code(&answer), code, "{body} → {answer}");
        }
    }
    let (_, answer) = api
        .post(
            "/v1/restore",
            ann.token(),
            json!({"at": now().minus_secs(8 * 24 * 3600)}),
        )
        .await;
    assert!(answer["earliest"].is_string(), "{answer}");
    let (status, _) = api.post("/v1/restore", None, json!({"at": now()})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn one_accounts_trash_is_invisible_to_another(db: TestDb) {
    let (_server, api) = start(&db).await;
    let ann = api.register("ann@example.org").await;
    let bo = api.register("bo@example.org").await;
    api.push(
        &ann,
        vec![upsert("messages", "m1", 1, json!({"content": "ann's"}))],
    )
    .await;
    api.push(&ann, vec![delete("messages", "m1", 2)]).await;
    let (_, trash) = api.get("/v1/trash", bo.token()).await;
    assert!(keys(&trash["items"]).is_empty());
    let (status, _) = api
        .post("/v1/trash/messages/m1/restore", bo.token(), json!(null))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.delete("/v1/trash/messages/m1", bo.token(), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, purged) = api.delete("/v1/trash", bo.token(), None).await;
    assert_eq!(purged["purged"], 0);
    let (_, plan) = api
        .post("/v1/restore", bo.token(), json!({"at": now().minus_secs(60)}))
        .await;
    assert_eq!(plan["changes"], json!([]));
    let (_, trash) = api.get("/v1/trash", ann.token()).await;
    assert_eq!(keys(&trash["items"]), ["messages/m1"], "ann's trash untouched");
}
