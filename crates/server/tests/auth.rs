//! The auth contract end to end: the real server over real TCP, on SQLite and PostgreSQL.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nextsync_server::config::Registration;
use nextsync_testkit::{
    Api, PASSWORD, Session, TestDb, TestServer, both_backends, error_code, eventually, start,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

both_backends!(
    register_login_and_me_work_together,
    registration_refuses_bad_input_and_taken_emails,
    closed_registration_is_forbidden,
    a_refresh_rotates_and_a_reused_token_revokes_the_family,
    forged_and_expired_access_tokens_are_refused,
    logout_and_device_removal_refuse_the_device_at_once,
    users_cannot_see_or_touch_each_others_devices_and_app_passwords,
    app_passwords_need_a_fresh_sign_in_and_end_with_the_password_or_their_device,
    a_password_reset_mail_works_once_and_signs_everything_out,
    changing_the_password_signs_out_the_other_devices,
    deleting_the_account_removes_every_row,
    a_restart_keeps_accounts_and_issued_tokens,
    readiness_reports_the_store,
);

async fn register_login_and_me_work_together(db: TestDb) {
    let (_server, api) = start(&db).await;
    let (status, body) = api
        .post(
            "/v1/auth/register",
            None,
            json!({"email": "Ann@Example.org", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let first = Session::from_json(&body);
    assert!(first.refresh.starts_with("nsr_"));

    let second = api.login("ann@example.org", PASSWORD).await;
    // A client may say what it is; the device list shows it (`other` when it does not say).
    let (status, cli) = api
        .post(
            "/v1/auth/login",
            None,
            json!({"email": "ann@example.org", "password": PASSWORD, "device_name": "terminal", "device_kind": "cli"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{cli}");
    let (_, devices) = api.get("/v1/devices", second.token()).await;
    let kinds: Vec<(&str, &str)> = devices["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| {
            (
                d["name"].as_str().expect("name"),
                d["kind"].as_str().expect("kind"),
            )
        })
        .collect();
    assert!(kinds.contains(&("terminal", "cli")), "{kinds:?}");
    assert!(kinds.contains(&("phone", "other")), "{kinds:?}");
    let (status, body) = api
        .post(
            "/v1/auth/login",
            None,
            json!({"email": "ann@example.org", "password": PASSWORD, "device_kind": "toaster"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(second.user_id, first.user_id);
    assert_ne!(second.device_id, first.device_id, "each login is a new device");

    let (status, me) = api.get("/v1/me", second.token()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["user_id"], first.user_id.as_str());
    assert_eq!(me["email"], "ann@example.org");
    assert!(me["created_at"].as_str().is_some_and(|t| t.ends_with('Z')));

    let (_, devices) = api.get("/v1/devices", second.token()).await;
    let devices = devices["devices"].as_array().expect("devices");
    assert_eq!(devices.len(), 3, "laptop, phone and terminal");
    let current: Vec<_> = devices.iter().filter(|d| d["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["device_id"], second.device_id.as_str());
    assert_eq!(current[0]["name"], "phone");
    for key in ["device_id", "name", "created_at", "last_seen_at", "current"] {
        assert!(devices[0].get(key).is_some(), "device lacks {key}");
    }
}

async fn registration_refuses_bad_input_and_taken_emails(db: TestDb) {
    let (_server, api) = start(&db).await;
    let register = |email: &'static str, password: &'static str| {
        let api = api.clone();
        async move {
            api.post(
                "/v1/auth/register",
                None,
                json!({"email": email, "password": password}),
            )
            .await
        }
    };
    let (status, body) = register("not-an-email", PASSWORD).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_email")
    );
    let (status, body) = register("ann@example.org", "short").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "weak_password")
    );
    let (status, body) = register("ann@example.org", "qwertyuiop").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "weak_password")
    );
    let (status, _) = register("ann@example.org", PASSWORD).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = register("ANN@example.org", PASSWORD).await;
    assert_eq!((status, error_code(&body)), (StatusCode::CONFLICT, "email_taken"));

    // Malformed bodies get the error shape, never a half-made account.
    let response = api
        .http
        .post(format!("{}/v1/auth/register", api.base_url))
        .body(r#"{"email":"bob@example.org","password":"#)
        .header("content-type", "application/json")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("json");
    assert_eq!(error_code(&body), "malformed_json");
    // Trailing text after the JSON value is malformed too, and a `+json` type is JSON.
    for (content_type, body, status, code) in [
        (
            "application/json",
            r#"{"email":"bob@example.org","password":"long enough to pass"} trailing"#,
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "application/merge-patch+json; charset=utf-8",
            r#"{"email":"bob@example.org","password":"short"}"#,
            StatusCode::BAD_REQUEST,
            "weak_password",
        ),
    ] {
        let response = api
            .http
            .post(format!("{}/v1/auth/register", api.base_url))
            .body(body)
            .header("content-type", content_type)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), status, "{content_type} {body}");
        let answer: Value = response.json().await.expect("json");
        assert_eq!(error_code(&answer), code, "{content_type} {body}");
    }
    let response = api
        .http
        .post(format!("{}/v1/auth/register", api.base_url))
        .body(format!(
            r#"{{"email":"bob@example.org","password":"{PASSWORD}"}}"#
        ))
        .header("content-type", "text/plain")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let body: Value = response.json().await.expect("json");
    assert_eq!(error_code(&body), "unsupported_media_type");
    let (status, body) = api
        .post("/v1/auth/register", None, json!({"email": "bob@example.org"}))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_body")
    );
    let (status, body) = api
        .post(
            "/v1/auth/login",
            None,
            json!({"email": "bob@example.org", "password": PASSWORD}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, "invalid_credentials"),
        "bob was never created"
    );
}

async fn closed_registration_is_forbidden(db: TestDb) {
    let mut config = db.config();
    config.registration = Registration::Closed;
    let server = TestServer::start(config).await;
    let api = Api::new(&server);
    let (status, body) = api
        .post(
            "/v1/auth/register",
            None,
            json!({"email": "ann@example.org", "password": PASSWORD}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "registration_closed")
    );
    // Sign-in pages ask first, and offer no sign-up.
    let (status, info) = api.get("/v1/server", None).await;
    assert_eq!(
        (status, info["registration"].as_str()),
        (StatusCode::OK, Some("closed"))
    );
    let (_, open) = Api::new(&TestServer::start(db.config()).await)
        .get("/v1/server", None)
        .await;
    assert_eq!(open["registration"], "open");
}

async fn a_refresh_rotates_and_a_reused_token_revokes_the_family(db: TestDb) {
    let (_server, api) = start(&db).await;
    let first = api.register("ann@example.org").await;
    let other_device = api.login("ann@example.org", PASSWORD).await;

    let (status, body) = api
        .post("/v1/auth/refresh", None, json!({"refresh_token": first.refresh}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let second = Session::from_json(&body);
    assert_ne!(
        second.refresh, first.refresh,
        "a refresh hands out a new refresh token"
    );
    assert_eq!(second.device_id, first.device_id, "same device, same family");
    assert_eq!(api.get("/v1/me", second.token()).await.0, StatusCode::OK);

    let (status, body) = api
        .post("/v1/auth/refresh", None, json!({"refresh_token": second.refresh}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let newest = Session::from_json(&body);

    // The first token again: theft. Every token of the family dies, the newest included.
    let (status, body) = api
        .post("/v1/auth/refresh", None, json!({"refresh_token": first.refresh}))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, "refresh_token_reused")
    );
    let (status, _) = api
        .post("/v1/auth/refresh", None, json!({"refresh_token": newest.refresh}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = api.get("/v1/me", newest.token()).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, "token_revoked")
    );
    // Another device of the same account is a different family and keeps working.
    assert_eq!(api.get("/v1/me", other_device.token()).await.0, StatusCode::OK);

    let (status, body) = api
        .post("/v1/auth/refresh", None, json!({"refresh_token": "nsr_nonsense"}))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, "invalid_refresh_token")
    );
}

async fn forged_and_expired_access_tokens_are_refused(db: TestDb) {
    let (server, api) = start(&db).await;
    let session = api.register("ann@example.org").await;
    let parts: Vec<&str> = session.access.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("b64")).expect("json");
    assert_eq!(header["alg"], "HS256");
    assert!(header["kid"].as_str().is_some_and(|k| !k.is_empty()));
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
    for claim in ["sub", "did", "iat", "exp", "jti"] {
        assert!(claims.get(claim).is_some(), "claim {claim} missing from {claims}");
    }
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"));

    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": header["kid"]})),
        parts[1]
    );
    let mut tampered_claims = claims.clone();
    tampered_claims["exp"] = json!(claims["exp"].as_i64().expect("exp") + 3600);
    let tampered = format!("{}.{}.{}", parts[0], b64(&tampered_claims), parts[2]);
    let unknown_kid = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "HS256", "typ": "JWT", "kid": "someone-else"})),
        parts[1],
        parts[2]
    );
    let user = session.user_id.parse().expect("user id");
    let device = session.device_id.parse().expect("device id");
    let expired = server
        .state
        .tokens
        .issue(
            user,
            device,
            nextsync_core::time::Timestamp::now().minus_secs(901),
        )
        .expect("issue");

    for (name, token) in [
        ("alg none", alg_none.as_str()),
        ("tampered", tampered.as_str()),
        ("unknown kid", unknown_kid.as_str()),
        ("garbage", "not.a.jwt"),
        ("expired", expired.expose()),
    ] {
        let (status, body) = api.get("/v1/me", Some(token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        assert!(
            error_code(&body) == "invalid_token" || error_code(&body) == "token_expired",
            "{name}: {body}"
        );
    }
    let (status, body) = api.get("/v1/me", None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, "missing_token")
    );

    // An app password never opens /v1.
    let (_, created) = api
        .post("/v1/app-passwords", session.token(), json!({"label": "NextChat"}))
        .await;
    let app_password = created["password"].as_str().expect("password");
    let (status, _) = api.get("/v1/me", Some(app_password)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn logout_and_device_removal_refuse_the_device_at_once(db: TestDb) {
    let (_server, api) = start(&db).await;
    let laptop = api.register("ann@example.org").await;
    let phone = api.login("ann@example.org", PASSWORD).await;
    let tablet = api.login("ann@example.org", PASSWORD).await;

    let (status, body) = api.post("/v1/auth/logout", phone.token(), json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = api.get("/v1/me", phone.token()).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, "token_revoked")
    );
    let (status, _) = api
        .post("/v1/auth/refresh", None, json!({"refresh_token": phone.refresh}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, _) = api
        .delete(&format!("/v1/devices/{}", tablet.device_id), laptop.token(), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        api.get("/v1/me", tablet.token()).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (_, devices) = api.get("/v1/devices", laptop.token()).await;
    let ids: Vec<_> = devices["devices"]
        .as_array()
        .expect("list")
        .iter()
        .map(|d| d["device_id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(laptop.device_id)]);
    let (status, _) = api
        .delete(&format!("/v1/devices/{}", tablet.device_id), laptop.token(), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "already removed");
    let (status, _) = api.delete("/v1/devices/not-a-uuid", laptop.token(), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn users_cannot_see_or_touch_each_others_devices_and_app_passwords(db: TestDb) {
    let (_server, api) = start(&db).await;
    let ann = api.register("ann@example.org").await;
    let bob = api.register("bob@example.org").await;

    let (_, bob_devices) = api.get("/v1/devices", bob.token()).await;
    assert_eq!(bob_devices["devices"].as_array().expect("list").len(), 1);
    assert!(!bob_devices.to_string().contains(&ann.device_id));
    let (status, _) = api
        .delete(&format!("/v1/devices/{}", ann.device_id), bob.token(), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.get("/v1/me", ann.token()).await.0,
        StatusCode::OK,
        "ann's device survives"
    );

    let (status, created) = api
        .post(
            "/v1/app-passwords",
            ann.token(),
            json!({"label": "NextChat laptop"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert!(
        created["password"]
            .as_str()
            .is_some_and(|p| p.starts_with("nsa_"))
    );
    let id = created["id"].as_str().expect("id");
    let (_, listed) = api.get("/v1/app-passwords", ann.token()).await;
    let listed = listed["app_passwords"].as_array().expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["label"], "NextChat laptop");
    assert!(
        listed[0].get("password").is_none(),
        "listing never shows the secret"
    );
    let (_, bob_list) = api.get("/v1/app-passwords", bob.token()).await;
    assert_eq!(bob_list["app_passwords"], json!([]));
    let (status, _) = api
        .delete(&format!("/v1/app-passwords/{id}"), bob.token(), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .delete(&format!("/v1/app-passwords/{id}"), ann.token(), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = api
        .post("/v1/app-passwords", ann.token(), json!({"label": "  "}))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_label")
    );
}

/// The reset link from the newest mail in the outbox.
async fn reset_token_from_outbox(db: &TestDb, expected_mails: usize) -> String {
    let outbox = db.data_dir().join("outbox");
    let mail = eventually(Duration::from_secs(10), || {
        let outbox = outbox.clone();
        async move {
            let mut files: Vec<_> = std::fs::read_dir(&outbox)
                .ok()?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .collect();
            files.sort();
            if files.len() < expected_mails {
                return None;
            }
            std::fs::read_to_string(files.last()?).ok()
        }
    })
    .await
    .expect("a reset mail in the outbox");
    let start = mail.find("token=").expect("token in mail") + "token=".len();
    mail[start..].split_whitespace().next().expect("token").to_owned()
}

/// An app password outlives the access token that made it, so a stolen 15-minute token must
/// not be able to mint one that survives the owner's response: creating one needs a fresh
/// sign-in or the password, removing the device that made it ends it, and so does a new
/// password.
async fn app_passwords_need_a_fresh_sign_in_and_end_with_the_password_or_their_device(db: TestDb) {
    let (server, api) = start(&db).await;
    let laptop = api.register("ann@example.org").await;
    let create = async |token: &str, body: Value| api.post("/v1/app-passwords", Some(token), body).await;
    let door = async |password: &str| {
        api.http
            .get(format!("{}/dav/chatgpt-next-web/backup.json", api.base_url))
            .basic_auth("ann@example.org", Some(password))
            .send()
            .await
            .expect("request")
            .status()
    };
    // A fresh sign-in needs no password.
    let (status, fresh) = create(&laptop.access, json!({"label": "fresh"})).await;
    assert_eq!(status, StatusCode::CREATED, "{fresh}");
    let fresh = fresh["password"].as_str().expect("password").to_owned();

    // A device that signed in an hour ago (its access token still valid) needs the password.
    let user: nextsync_core::ids::UserId = laptop.user_id.parse().expect("user id");
    let an_hour_ago = nextsync_core::time::Timestamp::now().minus_secs(3600);
    let old_device = nextsync_store::accounts::NewDevice {
        kind: Default::default(),
        user_id: user,
        device_id: nextsync_core::ids::DeviceId::new(),
        name: "old tab".into(),
        refresh: nextsync_store::accounts::NewRefreshToken {
            hash: nextsync_core::ids::TokenHash([7; 32]),
            created_at: an_hour_ago,
            expires_at: an_hour_ago.plus_secs(86_400),
        },
    };
    server
        .state
        .store
        .add_device(&old_device)
        .await
        .expect("add device");
    let old_token = server
        .state
        .tokens
        .issue(user, old_device.device_id, nextsync_core::time::Timestamp::now())
        .expect("token");
    let old_token = old_token.expose();
    let (status, body) = create(old_token, json!({"label": "stolen?"})).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "password_required")
    );
    let (status, body) = create(
        old_token,
        json!({"label": "stolen?", "password": "not it at all"}),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "wrong_password")
    );
    let (status, by_old) = create(old_token, json!({"label": "confirmed", "password": PASSWORD})).await;
    assert_eq!(status, StatusCode::CREATED, "{by_old}");
    let by_old = by_old["password"].as_str().expect("password").to_owned();
    assert_eq!(
        door(&by_old).await,
        StatusCode::NOT_FOUND,
        "works: nothing uploaded yet"
    );

    // Removing the device that made it ends it; the others keep working.
    let (status, _) = api
        .delete(
            &format!("/v1/devices/{}", old_device.device_id),
            laptop.token(),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(door(&by_old).await, StatusCode::UNAUTHORIZED);
    assert_eq!(door(&fresh).await, StatusCode::NOT_FOUND);
    // Signing out of the web app does not stop a NextChat set up from it.
    let phone = api.login("ann@example.org", PASSWORD).await;
    let (status, _) = api.post("/v1/auth/logout", laptop.token(), json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(door(&fresh).await, StatusCode::NOT_FOUND);

    // A new password ends every app password.
    let (status, body) = api
        .post(
            "/v1/auth/password/change",
            phone.token(),
            json!({"current_password": PASSWORD, "new_password": "a brand new passphrase"}),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    assert_eq!(door(&fresh).await, StatusCode::UNAUTHORIZED);
    let (_, listed) = api.get("/v1/app-passwords", phone.token()).await;
    assert_eq!(listed["app_passwords"], json!([]));
}

async fn a_password_reset_mail_works_once_and_signs_everything_out(db: TestDb) {
    let (_server, api) = start(&db).await;
    let laptop = api.register("ann@example.org").await;
    let phone = api.login("ann@example.org", PASSWORD).await;

    let (status, _) = api
        .post(
            "/v1/auth/password/forgot",
            None,
            json!({"email": "nobody@example.org"}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "unknown accounts get the same answer"
    );
    let (status, _) = api
        .post(
            "/v1/auth/password/forgot",
            None,
            json!({"email": "Ann@example.org"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let token = reset_token_from_outbox(&db, 1).await;
    let outbox: Vec<_> = std::fs::read_dir(db.data_dir().join("outbox"))
        .expect("outbox")
        .collect();
    assert_eq!(outbox.len(), 1, "no mail for an unknown address");

    let (status, body) = api
        .post(
            "/v1/auth/password/reset",
            None,
            json!({"token": token, "new_password": "short"}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "weak_password")
    );
    let new_password = "a brand new passphrase";
    let (status, body) = api
        .post(
            "/v1/auth/password/reset",
            None,
            json!({"token": token, "new_password": new_password}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    for session in [&laptop, &phone] {
        let (status, body) = api.get("/v1/me", session.token()).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::UNAUTHORIZED, "token_revoked")
        );
        let (status, _) = api
            .post(
                "/v1/auth/refresh",
                None,
                json!({"refresh_token": session.refresh}),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, _) = api
        .post(
            "/v1/auth/login",
            None,
            json!({"email": "ann@example.org", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the old password is gone");
    api.login("ann@example.org", new_password).await;

    let (status, body) = api
        .post(
            "/v1/auth/password/reset",
            None,
            json!({"token": token, "new_password": "yet another passphrase"}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::GONE, "reset_token_used")
    );
    let (status, body) = api
        .post(
            "/v1/auth/password/reset",
            None,
            json!({"token": "nsp_bogus", "new_password": new_password}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_reset_token")
    );
}

async fn changing_the_password_signs_out_the_other_devices(db: TestDb) {
    let (_server, api) = start(&db).await;
    let laptop = api.register("ann@example.org").await;
    let phone = api.login("ann@example.org", PASSWORD).await;
    let new_password = "another good passphrase";

    let (status, body) = api
        .post(
            "/v1/auth/password/change",
            laptop.token(),
            json!({"current_password": "wrong password!", "new_password": new_password}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "wrong_password")
    );
    let (status, body) = api
        .post(
            "/v1/auth/password/change",
            laptop.token(),
            json!({"current_password": PASSWORD, "new_password": new_password}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(
        api.get("/v1/me", laptop.token()).await.0,
        StatusCode::OK,
        "the changing device stays in"
    );
    assert_eq!(api.get("/v1/me", phone.token()).await.0, StatusCode::UNAUTHORIZED);
    api.login("ann@example.org", new_password).await;
}

async fn deleting_the_account_removes_every_row(db: TestDb) {
    let (_server, api) = start(&db).await;
    let ann = api.register("ann@example.org").await;
    let bob = api.register("bob@example.org").await;
    api.login("ann@example.org", PASSWORD).await;
    api.post("/v1/app-passwords", ann.token(), json!({"label": "NextChat"}))
        .await;
    api.post(
        "/v1/auth/password/forgot",
        None,
        json!({"email": "ann@example.org"}),
    )
    .await;
    reset_token_from_outbox(&db, 1).await;
    // Synced data and a conflict, so every sync table holds rows of ann too.
    let now = nextsync_core::time::Timestamp::now().as_millis();
    let write = |mid: &str, ms: i64, node: &str, text: &str| {
        json!({"mutation_id": mid, "collection": "notes", "id": "n1", "op": "upsert",
            "fields": {"text": text}, "hlc": format!("{ms:015}-00000-{node}"), "base_seq": 0})
    };
    api.post(
        "/v1/sync/push",
        ann.token(),
        json!({"mutations": [write("a", now, "laptop", "one")]}),
    )
    .await;
    let (_, pushed) = api
        .post(
            "/v1/sync/push",
            ann.token(),
            json!({"mutations": [write("b", now + 1, "phone", "two")]}),
        )
        .await;
    assert_eq!(pushed["conflicts"].as_array().map(Vec::len), Some(1), "{pushed}");
    let user: uuid::Uuid = ann.user_id.parse().expect("uuid");
    assert!(db.rows_of_user(user).await > 0);

    let (status, body) = api
        .delete(
            "/v1/me",
            ann.token(),
            Some(json!({"password": "not my password"})),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "wrong_password")
    );
    let (status, _) = api
        .delete("/v1/me", ann.token(), Some(json!({"password": PASSWORD})))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(db.rows_of_user(user).await, 0);
    assert_eq!(api.get("/v1/me", ann.token()).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(api.get("/v1/me", bob.token()).await.0, StatusCode::OK);
    let (status, _) = api
        .post(
            "/v1/auth/login",
            None,
            json!({"email": "ann@example.org", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn a_restart_keeps_accounts_and_issued_tokens(db: TestDb) {
    let (server, api) = start(&db).await;
    let session = api.register("ann@example.org").await;
    server.stop().await.expect("clean shutdown");

    let (_server, api) = start(&db).await;
    let (status, me) = api.get("/v1/me", session.token()).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a token issued before the restart still verifies: {me}"
    );
    let (status, _) = api
        .post(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": session.refresh}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    api.login("ann@example.org", PASSWORD).await;
}

async fn readiness_reports_the_store(db: TestDb) {
    let (_server, api) = start(&db).await;
    let (status, body) = api.get("/readyz", None).await;
    assert_eq!(status, StatusCode::OK);
    let expected = match db.backend {
        nextsync_testkit::Backend::Sqlite => "sqlite",
        nextsync_testkit::Backend::Postgres => "postgres",
    };
    assert_eq!(body["store"], expected);
    assert_eq!(api.get("/healthz", None).await.0, StatusCode::OK);
}
