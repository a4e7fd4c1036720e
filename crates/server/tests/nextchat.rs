//! NextChat's doors against the real server, driven by a model of the unmodified client:
//! the exact requests of NEXTCHAT.md §2.1 and §3.2 (URLs, headers, bodies), its sync flow
//! (§1: get, get again, merge, set), its merge (§5.1) and its lossy Upstash chunker (§3.3).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use nextsync_testkit::{Api, Session, TestDb, both_backends, error_code, start};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};
use std::collections::HashSet;

/// What the user typed as "WebDAV Endpoint" / "UpStash Redis REST Url": passed along, ignored.
const DAV_ENDPOINT: &str = "https%3A%2F%2Fdav.example.com%2Fdav%2F";
const UPSTASH_ENDPOINT: &str = "https%3A%2F%2Fexample-1234.upstash.io";
/// NextChat's chunk size for Upstash values.
const CHUNK_BYTES: usize = 1_000_000;

// ---------------------------------------------------------------------------------------
// The client model.

#[derive(Debug, Clone)]
enum Provider {
    WebDav { username: String, password: String },
    Upstash { backup_name: String, token: String },
}

/// One NextChat installation: its local state and its sync settings, with "Enable CORS
/// Proxy" on and "Proxy Endpoint" set to the nextsync URL.
#[derive(Debug, Clone)]
struct Device {
    http: reqwest::Client,
    proxy: String,
    provider: Provider,
    local: Value,
}

impl Device {
    fn webdav(api: &Api, email: &str, app_password: &str, local: Value) -> Self {
        Self {
            http: api.http.clone(),
            proxy: api.base_url.clone(),
            provider: Provider::WebDav {
                username: email.to_owned(),
                password: app_password.to_owned(),
            },
            local,
        }
    }

    fn upstash(api: &Api, app_password: &str, local: Value) -> Self {
        Self {
            http: api.http.clone(),
            proxy: api.base_url.clone(),
            provider: Provider::Upstash {
                backup_name: "chatgpt-next-web".to_owned(),
                token: app_password.to_owned(),
            },
            local,
        }
    }

    fn authorization(&self) -> String {
        match &self.provider {
            Provider::WebDav { username, password } => {
                // btoa: Latin-1 bytes.
                let bytes: Vec<u8> = format!("{username}:{password}")
                    .chars()
                    .map(|c| c as u8)
                    .collect();
                format!("Basic {}", STANDARD.encode(bytes))
            }
            Provider::Upstash { token, .. } => format!("Bearer {token}"),
        }
    }

    fn dav_url(&self, path: &str, extra: &str) -> String {
        format!("{}/api/webdav/{path}?endpoint={DAV_ENDPOINT}{extra}", self.proxy)
    }

    /// `path()` of the Upstash client: proxy + "/" + "/api/upstash/…" + "/".
    fn upstash_url(&self, command: &str, key: &str) -> String {
        format!(
            "{}//api/upstash/{command}/{key}/?endpoint={UPSTASH_ENDPOINT}",
            self.proxy
        )
    }

    async fn request(&self, method: Method, url: String, body: Option<String>) -> reqwest::Response {
        let mut request = self
            .http
            .request(method, url)
            .header("authorization", self.authorization());
        if let Some(body) = body {
            request = request
                .header("content-type", "text/plain;charset=UTF-8")
                .body(body);
        }
        request.send().await.expect("request")
    }

    /// "Check Connection".
    async fn check(&self) -> (bool, StatusCode) {
        let response = match &self.provider {
            Provider::WebDav { .. } => {
                let url = self.dav_url("chatgpt-next-web", "&proxy_method=MKCOL");
                self.request(Method::GET, url, None).await
            }
            Provider::Upstash { backup_name, .. } => {
                let url = self.upstash_url("get", backup_name);
                self.request(Method::GET, url, None).await
            }
        };
        let status = response.status();
        let ok = match &self.provider {
            Provider::WebDav { .. } => [200, 201, 301, 302, 307, 308, 404, 405].contains(&status.as_u16()),
            Provider::Upstash { .. } => status == StatusCode::OK,
        };
        (ok, status)
    }

    /// `client.get()`: `Ok("")` means "remote empty"; `Err` is where NextChat's code throws
    /// (the sync then shows "Sync Fail").
    async fn try_get(&self) -> Result<String, String> {
        match &self.provider {
            Provider::WebDav { .. } => {
                let url = self.dav_url("chatgpt-next-web/backup.json", "");
                let response = self.request(Method::GET, url, None).await;
                if response.status() == StatusCode::NOT_FOUND {
                    return Ok(String::new());
                }
                Ok(response.text().await.expect("body"))
            }
            Provider::Upstash { backup_name, .. } => {
                // `res.json()` with no status check: a body that is not JSON throws.
                let json = async |url: String| -> Result<Value, String> {
                    let response = self.request(Method::GET, url, None).await;
                    let status = response.status();
                    let text = response.text().await.expect("body");
                    serde_json::from_str(&text)
                        .map_err(|e| format!("res.json() threw on {status} {text:?}: {e}"))
                };
                let body = json(self.upstash_url("get", &format!("{backup_name}-chunk-count"))).await?;
                // Number(result): null is 0, anything unparseable is "empty".
                let count = match &body["result"] {
                    Value::Null => 0,
                    Value::String(s) => match s.parse::<usize>() {
                        Ok(n) => n,
                        Err(_) => return Ok(String::new()),
                    },
                    _ => return Ok(String::new()),
                };
                let mut chunks = Vec::new();
                for i in 0..count {
                    let body = json(self.upstash_url("get", &format!("{backup_name}-chunk-{i}"))).await?;
                    chunks.push(body["result"].as_str().unwrap_or_default().to_owned());
                }
                Ok(chunks.concat())
            }
        }
    }

    /// [`Self::try_get`] where NextChat would not throw.
    async fn get(&self) -> String {
        self.try_get().await.expect("NextChat's get() would throw")
    }

    /// `client.set()`; NextChat ignores the statuses, the tests look at them.
    async fn set(&self, text: String) -> Vec<StatusCode> {
        match &self.provider {
            Provider::WebDav { .. } => {
                let url = self.dav_url("chatgpt-next-web/backup.json", "");
                vec![self.request(Method::PUT, url, Some(text)).await.status()]
            }
            Provider::Upstash { backup_name, .. } => {
                let parts = lossy_chunks(&text, CHUNK_BYTES);
                let mut statuses = Vec::new();
                for (i, part) in parts.iter().enumerate() {
                    let url = self.upstash_url("set", &format!("{backup_name}-chunk-{i}"));
                    statuses.push(self.request(Method::POST, url, Some(part.clone())).await.status());
                }
                let url = self.upstash_url("set", &format!("{backup_name}-chunk-count"));
                statuses.push(
                    self.request(Method::POST, url, Some(parts.len().to_string()))
                        .await
                        .status(),
                );
                statuses
            }
        }
    }

    /// The first half of `sync()`: both downloads, merged into the local state. `Ok(false)`
    /// when the remote was empty; `Err` where NextChat throws (`JSON.parse`, or its merge
    /// meeting a state without the stores it reads).
    async fn try_download(&mut self) -> Result<bool, String> {
        if self.try_get().await?.is_empty() {
            return Ok(false);
        }
        let text = self.try_get().await?;
        let remote: Value = serde_json::from_str(&text).map_err(|e| format!("JSON.parse threw: {e}"))?;
        if !remote["chat-next-web-store"]["sessions"].is_array() {
            return Err(format!("mergeAppState threw on {text:?}"));
        }
        merge_app_state(&mut self.local, &remote);
        Ok(true)
    }

    async fn download(&mut self) -> bool {
        self.try_download().await.expect("NextChat's sync would fail")
    }

    /// `sync()` as the user sees it: `Ok` with the upload's statuses is "Sync Success"
    /// (NextChat ignores them), `Err` is "Sync Fail".
    async fn try_sync(&mut self) -> Result<Vec<StatusCode>, String> {
        self.try_download().await?;
        Ok(self.set(self.local.to_string()).await)
    }

    /// `sync()`, which must succeed and be stored.
    async fn sync(&mut self) {
        let statuses = self.try_sync().await.expect("Sync Fail");
        assert!(
            statuses.iter().all(|s| s.is_success()),
            "an upload was refused: {statuses:?}"
        );
    }
}

/// `chunks()` of `app/utils/format.ts`: splits at the last space at or before `max + 1`
/// and drops that space.
fn lossy_chunks(s: &str, max: usize) -> Vec<String> {
    let mut buf = s.as_bytes();
    let mut out = Vec::new();
    while !buf.is_empty() {
        let from = (max + 1).min(buf.len() - 1);
        let split = buf[..=from]
            .iter()
            .rposition(|&b| b == b' ')
            .or_else(|| buf.iter().skip(max).position(|&b| b == b' ').map(|p| p + max))
            .unwrap_or(buf.len());
        out.push(String::from_utf8(buf[..split].to_vec()).expect("splits are at spaces"));
        buf = buf.get(split + 1..).unwrap_or_default();
    }
    out
}

/// `mergeAppState(local, remote)` (§5.1).
fn merge_app_state(local: &mut Value, remote: &Value) {
    // Sessions: unknown ones whole, known ones gain unknown messages; local metadata wins.
    let remote_sessions = remote["chat-next-web-store"]["sessions"]
        .as_array()
        .expect("sessions");
    let sessions = local["chat-next-web-store"]["sessions"]
        .as_array_mut()
        .expect("sessions");
    for remote_session in remote_sessions {
        let remote_messages = remote_session["messages"].as_array().expect("messages");
        if remote_messages.is_empty() {
            continue;
        }
        match sessions.iter_mut().find(|s| s["id"] == remote_session["id"]) {
            None => sessions.push(remote_session.clone()),
            Some(session) => {
                let messages = session["messages"].as_array_mut().expect("messages");
                let known: HashSet<Value> = messages.iter().map(|m| m["id"].clone()).collect();
                messages.extend(
                    remote_messages
                        .iter()
                        .filter(|m| !known.contains(&m["id"]))
                        .cloned(),
                );
                // The tests' dates are "YYYY/MM/DD hh:mm:ss": V8 parses them, and they sort as text.
                messages.sort_by(|a, b| a["date"].as_str().cmp(&b["date"].as_str()));
            }
        }
    }
    sessions.sort_by(|a, b| b["lastUpdate"].as_u64().cmp(&a["lastUpdate"].as_u64()));
    // Masks and prompts: local wins by id.
    for (store, field) in [("mask-store", "masks"), ("prompt-store", "prompts")] {
        let mut merged = remote[store][field].as_object().cloned().unwrap_or_default();
        merged.extend(local[store][field].as_object().cloned().unwrap_or_default());
        local[store][field] = Value::Object(merged);
    }
    // Settings: remote wins key by key (the `mergeWithUpdate` bug, §5.1).
    for store in ["app-config", "access-control"] {
        deep_merge(&mut local[store], &remote[store]);
    }
}

/// `merge(target, source)` of `app/utils/merge.ts`.
fn deep_merge(target: &mut Value, source: &Value) {
    let entries: Vec<(String, &Value)> = match source {
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v)).collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        _ => return,
    };
    for (key, value) in entries {
        let slot = match target {
            Value::Object(map) => map.entry(key).or_insert(Value::Null),
            Value::Array(items) => {
                let i: usize = key.parse().expect("index");
                if items.len() <= i {
                    items.resize(i + 1, Value::Null);
                }
                &mut items[i]
            }
            _ => return,
        };
        if value.is_object() || value.is_array() {
            if !(slot.is_object() || slot.is_array()) {
                *slot = if value.is_array() { json!([]) } else { json!({}) };
            }
            deep_merge(slot, value);
        } else {
            *slot = value.clone();
        }
    }
}

// ---------------------------------------------------------------------------------------
// States.

fn message(id: &str, role: &str, content: &str, minute: u32) -> Value {
    json!({"id": id, "role": role, "content": content, "date": format!("2024/05/13 15:{minute:02}:00"),
           "streaming": false, "model": "gpt-4o-mini"})
}

fn session(id: &str, last_update: u64, messages: Vec<Value>) -> Value {
    json!({"id": id, "topic": format!("Topic {id}"), "memoryPrompt": "", "lastUpdate": last_update,
           "lastSummarizeIndex": 0, "stat": {"tokenCount": 0, "wordCount": 0, "charCount": 0},
           "mask": {"id": 100000, "avatar": "gpt-bot", "name": "New Conversation", "context": [],
                    "modelConfig": {"model": "gpt-4o-mini", "temperature": 0.5, "max_tokens": 4000}},
           "messages": messages})
}

fn nextchat_state(sessions: Vec<Value>) -> Value {
    json!({
        "chat-next-web-store": {"sessions": sessions, "currentSessionIndex": 0, "lastInput": "",
                                "lastUpdateTime": 0, "_hasHydrated": true},
        "access-control": {"accessCode": "", "useCustomConfig": false, "provider": "OpenAI",
                           "openaiUrl": "https://api.openai.com", "openaiApiKey": "", "googleApiKey": "",
                           "lastUpdateTime": 0, "_hasHydrated": true},
        "app-config": {"lastUpdate": 1715612600000_u64, "submitKey": "Enter", "avatar": "1f603",
                       "fontSize": 14, "theme": "auto", "tightBorder": true, "sendPreviewBubble": true,
                       "customModels": "", "models": [{"name": "gpt-4o-mini", "available": true}],
                       "modelConfig": {"model": "gpt-4o-mini", "temperature": 0.5, "max_tokens": 4000},
                       "realtimeConfig": {"enable": false, "apiKey": ""},
                       "lastUpdateTime": 0, "_hasHydrated": true},
        "mask-store": {"masks": {}, "language": "en", "lastUpdateTime": 0, "_hasHydrated": true},
        "prompt-store": {"counter": 0, "prompts": {}, "lastUpdateTime": 0, "_hasHydrated": true},
    })
}

/// Message contents of a state, by message id.
fn contents(state: &Value) -> Map<String, Value> {
    state["chat-next-web-store"]["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .flat_map(|s| s["messages"].as_array().expect("messages").clone())
        .map(|m| (m["id"].as_str().expect("id").to_owned(), m["content"].clone()))
        .collect()
}

fn session_ids(state: &Value) -> Vec<String> {
    let mut ids: Vec<String> = state["chat-next-web-store"]["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids
}

// ---------------------------------------------------------------------------------------
// Accounts.

async fn app_password(api: &Api, session: &Session) -> String {
    let (status, body) = api
        .post("/v1/app-passwords", session.token(), json!({"label": "NextChat"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["password"].as_str().expect("password").to_owned()
}

/// The code of an error the UpStash door answered: plain text `<code>: <message>`, never
/// JSON (NextChat would read a JSON error as an empty remote and report success).
async fn upstash_error_code(response: reqwest::Response) -> String {
    let text = response.text().await.expect("body");
    assert!(
        serde_json::from_str::<Value>(&text).is_err(),
        "a JSON error from the UpStash door: {text}"
    );
    text.split_once(':')
        .map_or(text.clone(), |(code, _)| code.to_owned())
}

async fn put_settings(api: &Api, session: &Session, body: Value) -> (StatusCode, Value) {
    api.send(Method::PUT, "/v1/nextchat/settings", session.token(), Some(body))
        .await
}

/// The server's own view of the state: what a fresh device would download.
async fn server_state(api: &Api, session: &Session) -> Value {
    let (status, body) = api.get("/v1/export?format=nextchat", session.token()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

both_backends!(
    check_then_first_upload_into_an_empty_account,
    a_second_device_merges_and_both_end_up_with_everything,
    download_download_upload_upload_loses_nothing,
    an_edit_wins_over_stale_copies_and_a_partial_reply_never_replaces_a_finished_one,
    a_session_deleted_through_nextsync_stays_deleted,
    a_multi_megabyte_upstash_state_survives_the_lossy_chunker,
    an_upstash_commit_that_does_not_parse_changes_nothing,
    staged_upstash_chunks_never_reach_the_disk_in_plaintext,
    a_wrong_endpoint_or_token_shows_sync_fail_never_success,
    every_route_is_served_under_the_public_urls_path,
    empty_new_conversations_and_repeated_models_are_not_synced,
    slow_uploads_do_not_stall_other_accounts_and_oversized_ones_are_refused_unread,
    upstash_staging_is_capped_per_account_and_expires,
    both_gets_of_one_sync_see_the_same_state,
    the_plain_webdav_target_takes_chunked_uploads_and_creates_its_folder,
    bad_uploads_are_refused_whole,
    settings_and_secrets_sync_only_when_the_account_opts_in,
    snapshots_are_kept_and_restore_brings_back_deletions,
    export_and_import_move_a_whole_account,
);

async fn check_then_first_upload_into_an_empty_account(db: TestDb) {
    let (_server, api) = start(&db).await;
    let ann = api.register("ann@example.com").await;
    let password = app_password(&api, &ann).await;
    let laptop_state = nextchat_state(vec![session(
        "s1",
        1715612600000,
        vec![
            message("m1", "user", "Hello there", 1),
            message("m2", "assistant", "General Kenobi", 2),
        ],
    )]);
    let mut laptop = Device::webdav(&api, "ann@example.com", &password, laptop_state.clone());

    let (ok, status) = laptop.check().await;
    assert!(ok && status == StatusCode::CREATED, "first check: {status}");
    let (ok, status) = laptop.check().await;
    assert!(
        ok && status == StatusCode::METHOD_NOT_ALLOWED,
        "second check: {status}"
    );
    // Older clients (v2.12.1–v2.14.0) send a real MKCOL.
    let status = laptop
        .request(
            Method::from_bytes(b"MKCOL").expect("method"),
            laptop.dav_url("chatgpt-next-web", ""),
            None,
        )
        .await
        .status();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // Empty: 404 with an empty body, which NextChat reads as "remote empty".
    let response = laptop
        .request(
            Method::GET,
            laptop.dav_url("chatgpt-next-web/backup.json", ""),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(response.bytes().await.expect("body").is_empty());

    laptop.sync().await;
    let downloaded: Value = serde_json::from_str(&laptop.get().await).expect("json");
    for store in [
        "chat-next-web-store",
        "access-control",
        "app-config",
        "mask-store",
        "prompt-store",
    ] {
        assert!(downloaded.get(store).is_some(), "{store} missing");
    }
    assert_eq!(contents(&downloaded), contents(&laptop_state));
    let sent = &laptop_state["chat-next-web-store"]["sessions"][0];
    let got = &downloaded["chat-next-web-store"]["sessions"][0];
    assert_eq!(got, sent, "a session comes back as it went up");

    // The mapping is visible to every other client of the account.
    let (status, record) = api.get("/v1/records/messages/m2", ann.token()).await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["fields"]["session_id"], "s1");
    assert_eq!(record["fields"]["position"], 1);
    assert_eq!(record["fields"]["content"], "General Kenobi");
    let (_, session_record) = api.get("/v1/records/sessions/s1", ann.token()).await;
    assert!(session_record["fields"].get("messages").is_none());
    assert_eq!(session_record["fields"]["topic"], "Topic s1");
}

async fn a_second_device_merges_and_both_end_up_with_everything(db: TestDb) {
    let (_server, api) = start(&db).await;
    let ann = api.register("ann@example.com").await;
    let (laptop_pw, phone_pw) = (app_password(&api, &ann).await, app_password(&api, &ann).await);
    let mut laptop = Device::webdav(
        &api,
        "ann@example.com",
        &laptop_pw,
        nextchat_state(vec![session(
            "s1",
            10,
            vec![message("a", "user", "from the laptop", 1)],
        )]),
    );
    let mut phone = Device::webdav(
        &api,
        "ann@example.com",
        &phone_pw,
        nextchat_state(vec![session(
            "s2",
            20,
            vec![message("b", "user", "from the phone", 2)],
        )]),
    );
    phone.local["prompt-store"]["prompts"] =
        json!({"p1": {"id": "p1", "isUser": true, "title": "T", "content": "C", "createdAt": 1}});
    laptop.sync().await;
    phone.sync().await;
    laptop.sync().await;
    for device in [&laptop, &phone] {
        assert_eq!(session_ids(&device.local), ["s1", "s2"]);
        assert_eq!(device.local["prompt-store"]["prompts"]["p1"]["title"], "T");
    }
    assert_eq!(session_ids(&server_state(&api, &ann).await), ["s1", "s2"]);
}

async fn download_download_upload_upload_loses_nothing(db: TestDb) {
    let (_server, api) = start(&db).await;
    let ann = api.register("ann@example.com").await;
    let (laptop_pw, phone_pw) = (app_password(&api, &ann).await, app_password(&api, &ann).await);
    let base = vec![message("m0", "user", "shared start", 0)];
    let mut laptop = Device::webdav(
        &api,
        "ann@example.com",
        &laptop_pw,
        nextchat_state(vec![session("s1", 10, base.clone())]),
    );
    laptop.sync().await;
    let mut phone = Device::upstash(&api, &phone_pw, nextchat_state(vec![]));
    phone.sync().await;
    assert_eq!(session_ids(&phone.local), ["s1"]);

    // Both devices add to the same conversation, then sync at the same time: both download
    // before either uploads. A plain WebDAV or Redis target keeps only the last upload.
    let push = |device: &mut Device, id: &str, text: &str, minute| {
        let sessions = device.local["chat-next-web-store"]["sessions"]
            .as_array_mut()
            .expect("sessions");
        sessions[0]["messages"]
            .as_array_mut()
            .expect("messages")
            .push(message(id, "user", text, minute));
    };
    push(&mut laptop, "from-laptop", "written on the laptop", 5);
    push(&mut phone, "from-phone", "written on the phone", 6);
    laptop.local["chat-next-web-store"]["sessions"]
        .as_array_mut()
        .expect("sessions")
        .push(session("s-laptop", 30, vec![message("x", "user", "new chat", 7)]));
    assert!(laptop.download().await);
    assert!(phone.download().await);
    assert!(laptop.set(laptop.local.to_string()).await[0].is_success());
    assert!(
        phone
            .set(phone.local.to_string())
            .await
            .iter()
            .all(|s| s.is_success())
    );

    let merged = server_state(&api, &ann).await;
    let texts = contents(&merged);
    for id in ["m0", "from-laptop", "from-phone", "x"] {
        assert!(texts.contains_key(id), "{id} was lost: {texts:?}");
    }
    assert_eq!(session_ids(&merged), ["s-laptop", "s1"]);
}

async fn an_edit_wins_over_stale_copies_and_a_partial_reply_never_replaces_a_finished_one(db: TestDb) {
    let (_server, api) = start(&db).await;
    let ann = api.register("ann@example.com").await;
    let (laptop_pw, phone_pw) = (app_password(&api, &ann).await, app_password(&api, &ann).await);
    let reply = message("r", "assistant", "the whole, finished answer", 2);
    let mut laptop = Device::webdav(
        &api,
        "ann@example.com",
        &laptop_pw,
        nextchat_state(vec![session(
            "s1",
            10,
            vec![message("q", "user", "the first wording", 1), reply.clone()],
        )]),
    );
    laptop.sync().await;
    let mut phone = Device::webdav(&api, "ann@example.com", &phone_pw, nextchat_state(vec![]));
    phone.sync().await;

    // The laptop edits its question; the phone keeps its copy (local wins in NextChat's
    // merge) and re-uploads it on every sync.
    laptop.local["chat-next-web-store"]["sessions"][0]["messages"][0]["content"] =
        json!("the edited wording");
    laptop.sync().await;
    phone.sync().await;
    phone.sync().await;
    assert_eq!(
        contents(&server_state(&api, &ann).await)["q"],
        "the edited wording"
    );

    // A device that uploaded mid-stream holds a partial reply; it never replaces the finished one.
    let mut streaming = reply;
    streaming["content"] = json!("the whole, fin");
    streaming["streaming"] = json!(true);
    let tablet_pw = app_password(&api, &ann).await;
    let tablet = Device::webdav(
        &api,
        "ann@example.com",
        &tablet_pw,
        nextchat_state(vec![session("s1", 10, vec![streaming])]),
    );
    // Upload without downloading first, as a device does whose GET failed as "empty".
    assert!(tablet.set(tablet.local.to_string()).await[0].is_success());
    assert_eq!(
        contents(&server_state(&api, &ann).await)["r"],
        "the whole, finished answer"
    );
}

async fn a_session_deleted_through_nextsync_stays_deleted(db: TestDb) {
    let (_server, api) = start(&db).await;
    let ann = api.register("ann@example.com").await;
    let password = app_password(&api, &ann).await;
    let mut laptop = Device::webdav(
        &api,
        "ann@example.com",
        &password,
        nextchat_state(vec![
            session("keep", 10, vec![message("k", "user", "keep me", 1)]),
            session("gone", 20, vec![message("g", "user", "delete me", 2)]),
        ]),
    );
    laptop.sync().await;
    let (status, body) = api.delete("/v1/records/sessions/gone", ann.token(), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The laptop still has it and keeps uploading it.
    laptop.sync().await;
    laptop.sync().await;
    let state = server_state(&api, &ann).await;
    assert_eq!(session_ids(&state), ["keep"]);
    assert!(
        !contents(&state).contains_key("g"),
        "a deleted session's messages stay hidden"
    );
    let mut fresh = Device::webdav(&api, "ann@example.com", &password, nextchat_state(vec![]));
    fresh.sync().await;
    assert_eq!(session_ids(&fresh.local), ["keep"]);
}

async fn a_multi_megabyte_upstash_state_survives_the_lossy_chunker(db: TestDb) {
    let (_server, api) = start(&db).await;
    let ann = api.register("ann@example.com").await;
    let password = app_password(&api, &ann).await;
    // ~3 MB of prose with spaces everywhere (and some UTF-8), spread over 60 sessions.
    let words = [
        "lorem",
        "ipsum",
        "dolor",
        "sit",
        "amet,",
        "naïve",
        "café",
        "日本語",
        "—",
        "end.",
    ];
    let sessions: Vec<Value> = (0..60)
        .map(|s| {
            let messages = (0..10)
                .map(|m| {
                    let text: Vec<&str> = (0..800).map(|i| words[(i * 7 + m + s) % words.len()]).collect();
                    message(
                        &format!("s{s}m{m}"),
                        "assistant",
                        &format!("{} ", text.join(" ")),
                        m as u32,
                    )
                })
                .collect();
            session(&format!("s{s}"), s as u64, messages)
        })
        .collect();
    let original = nextchat_state(sessions);
    let text = original.to_string();
    assert!(text.len() > 2_500_000, "{} bytes", text.len());
    let parts = lossy_chunks(&text, CHUNK_BYTES);
    assert!(parts.len() >= 3);
    assert_ne!(parts.concat(), text, "the chunker really loses spaces");

    let mut phone = Device::upstash(&api, &password, original.clone());
    let (ok, status) = phone.check().await;
    assert!(ok, "check: {status}");
    phone.sync().await;
    // One virtual chunk: the count is "1" and chunk 0 is the whole state.
    let body: Value = phone
        .request(
            Method::GET,
            phone.upstash_url("get", "chatgpt-next-web-chunk-count"),
            None,
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body, json!({"result": "1"}));
    let downloaded: Value = serde_json::from_str(&phone.get().await).expect("json");
    let by_id = |state: &Value| {
        let mut sessions = state["chat-next-web-store"]["sessions"]
            .as_array()
            .expect("sessions")
            .clone();
        sessions.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        sessions
    };
    assert_eq!(
        by_id(&downloaded),
        by_id(&original),
        "every message, every space, byte for byte"
    );
    // A second device syncing through Upstash receives it intact too.
    let mut tablet = Device::upstash(&api, &password, nextchat_state(vec![]));
    tablet.sync().await;
    assert_eq!(contents(&tablet.local), contents(&original));
}

async fn an_upstash_commit_that_does_not_parse_changes_nothing(db: TestDb) {
    let (_server, api) = start(&db).await;
    let ann = api.register("ann@example.com").await;
    let password = app_password(&api, &ann).await;
    let mut phone = Device::upstash(
        &api,
        &password,
        nextchat_state(vec![session("s1", 1, vec![message("a", "user", "safe", 1)])]),
    );
    phone.sync().await;
    let before = server_state(&api, &ann).await;
    let set = |key: &str, body: &str| {
        phone.request(Method::POST, phone.upstash_url("set", key), Some(body.to_owned()))
    };
    // A torn upload: a new first chunk, an old count.
    assert_eq!(
        set("torn-chunk-0", r#"{"chat-next-web-store":{"sessions":["#)
            .await
            .status(),
        StatusCode::OK
    );
    let response = set("torn-chunk-count", "1").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(upstash_error_code(response).await, "invalid_nextchat_state");
    // A count naming a chunk that never came.
    let response = set("torn-chunk-count", "2").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(upstash_error_code(response).await, "missing_chunk");
    // JSON, but not a NextChat state.
    assert_eq!(
        set("other-chunk-0", r#"{"error":true}"#).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        set("other-chunk-count", "1").await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(server_state(&api, &ann).await, before);
    // Reads still see the last good state.
    let downloaded: Value = serde_json::from_str(&phone.get().await).expect("json");
    assert_eq!(contents(&downloaded)["a"], "safe");
}

/// An API key travels inside UpStash chunks as raw JSON. Neither a finished sync, nor one
/// that never sent its count, nor the secrets opt-in leaves it readable anywhere in the
/// database's files (deleted rows and the WAL included).
async fn staged_upstash_chunks_never_reach_the_disk_in_plaintext(db: TestDb) {
    let (server, api) = start(&db).await;
    let ann = api.register("ann@example.com").await;
    let password = app_password(&api, &ann).await;
    let marker = format!("sk-plaintext-marker-{}", uuid::Uuid::new_v4().simple());
    let mut local = nextchat_state(vec![session("s1", 1, vec![message("a", "user", "hi", 1)])]);
    local["access-control"]["openaiApiKey"] = json!(marker);

    // A finished sync, first without and then with the secrets opt-in.
    let mut phone = Device::upstash(&api, &password, local.clone());
    phone.sync().await;
    let (status, body) = put_settings(&api, &ann, json!({"sync_secrets": true})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    phone.sync().await;
    // An upload that stops before its count: its chunk stays staged.
    let abandoned = serde_json::to_string(&local).expect("json");
    let url = phone.upstash_url("set", "abandoned-chunk-0");
    let response = phone.request(Method::POST, url, Some(abandoned)).await;
    assert_eq!(response.status(), StatusCode::OK);

    // The key did arrive (sealed): a fresh device gets it back.
    let mut tablet = Device::upstash(&api, &password, nextchat_state(vec![]));
    tablet.sync().await;
    assert_eq!(tablet.local["access-control"]["openaiApiKey"], json!(marker));
    drop(server);
    let found = db.files_containing(marker.as_bytes()).await;
    assert!(found.is_empty(), "the API key is readable in {found:?}");
}

/// NextChat shows "Sync Success" after any GET that answers 404 or a JSON body without its
/// stores (UpStash), having uploaded into nothing. A mistyped endpoint or a wrong token must
/// make it show "Sync Fail" instead, and store nothing.
async fn a_wrong_endpoint_or_token_shows_sync_fail_never_success(db: TestDb) {
    let (_server, api) = start(&db).await;
    let ann = api.register("ann@example.com").await;
    let password = app_password(&api, &ann).await;
    let local = nextchat_state(vec![session("s1", 1, vec![message("a", "user", "hi", 1)])]);
    let misrouted = format!("{}/nextsync", api.base_url);
    let mut devices = vec![
        ("WebDAV, wrong proxy path", {
            let mut device = Device::webdav(&api, "ann@example.com", &password, local.clone());
            device.proxy = misrouted.clone();
            device
        }),
        ("UpStash, wrong proxy path", {
            let mut device = Device::upstash(&api, &password, local.clone());
            device.proxy = misrouted.clone();
            device
        }),
        (
            "UpStash, wrong token",
            Device::upstash(&api, "nsa_not-a-real-app-password", local.clone()),
        ),
        (
            "UpStash, a revoked-looking token of the right shape",
            Device::upstash(
                &api,
                &format!("{}x", &password[..password.len() - 1]),
                local.clone(),
            ),
        ),
        (
            "WebDAV, wrong password",
            Device::webdav(&api, "ann@example.com", "nsa_wrong", local.clone()),
        ),
    ];
    for (what, device) in &mut devices {
        let (ok, status) = device.check().await;
        assert!(!ok, "{what}: Check Connection passed ({status})");
        let outcome = device.try_sync().await;
        assert!(
            outcome.is_err(),
            "{what}: NextChat would show Sync Success: {outcome:?}"
        );
    }
    // The plain target behind a NextChat deployment, with a wrong WebDAV Endpoint: NextChat's
    // proxy passes our answer on unchanged.
    let response = api
        .http
        .get(format!("{misrouted}/dav/chatgpt-next-web/backup.json"))
        .basic_auth("ann@example.com", Some(&password))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let text = response.text().await.expect("body");
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
    assert!(
        text.contains("Proxy Endpoint"),
        "the answer says what to fix: {text}"
    );
    // Other unknown paths keep the API's 404 in the error shape.
    let (status, body) = api.get("/v1/no-such-thing", None).await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    assert!(
        session_ids(&server_state(&api, &ann).await).is_empty(),
        "nothing was stored"
    );
}

/// Every NextChat installation starts with an empty "New Conversation" and, through a
/// NextChat bug, appends its ~164 built-in models to `app-config.models` on every page load.
/// Neither should travel to the other devices.
async fn empty_new_conversations_and_repeated_models_are_not_synced(db: TestDb) {
    let (_server, api) = start(&db).await;
    let ann = api.register("ann@example.com").await;
    let (status, body) = put_settings(&api, &ann, json!({"sync_settings": true})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let password = app_password(&api, &ann).await;
    let fresh = |topic: &str, id: &str| {
        let mut state = nextchat_state(vec![session(id, 9, vec![])]);
        let session = &mut state["chat-next-web-store"]["sessions"][0];
        session["topic"] = json!(topic);
        session["mask"]["name"] = json!(topic);
        let model = json!({"name": "gpt-4o-mini", "available": true, "provider": {"id": "openai"}});
        state["app-config"]["models"] = json!([model, model, model]);
        state
    };
    let mut laptop = Device::webdav(
        &api,
        "ann@example.com",
        &password,
        fresh("New Conversation", "laptop-new"),
    );
    laptop.local["chat-next-web-store"]["sessions"]
        .as_array_mut()
        .expect("sessions")
        .push(session("real", 5, vec![message("a", "user", "hello", 1)]));
    laptop.sync().await;
    let mut phone = Device::upstash(&api, &password, fresh("新的聊天", "phone-new"));
    phone.sync().await;
    let state = server_state(&api, &ann).await;
    assert_eq!(session_ids(&state), ["real"]);
    assert_eq!(state["app-config"]["models"].as_array().expect("models").len(), 1);
    // The phone got the laptop's real conversation, and keeps its own empty one locally.
    assert_eq!(session_ids(&phone.local), ["phone-new", "real"]);
}

/// An upload takes its share of the upload memory only once its body is in: clients that
/// trickle bytes in (or stall) hold nothing that another account's sync waits for. A body
/// that announces more than the limit is refused before it is sent.
async fn slow_uploads_do_not_stall_other_accounts_and_oversized_ones_are_refused_unread(db: TestDb) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server, api) = start(&db).await;
    let bob = api.register("bob@example.com").await;
    let bob_password = app_password(&api, &bob).await;
    let basic = STANDARD.encode(format!("bob@example.com:{bob_password}"));
    // Three uploads that announce 1 MB and stall after 10 bytes.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        let head = format!(
            "PUT /dav/chatgpt-next-web/backup.json HTTP/1.1\r\nhost: x\r\nauthorization: Basic {basic}\r\n\
             content-length: 1000000\r\n\r\n{{\"chat-ne"
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        stalled.push(stream);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // Another account syncs meanwhile, at once.
    let ann = api.register("ann@example.com").await;
    let password = app_password(&api, &ann).await;
    let mut laptop = Device::webdav(
        &api,
        "ann@example.com",
        &password,
        nextchat_state(vec![session("s1", 1, vec![message("a", "user", "hi", 1)])]),
    );
    let synced = tokio::time::timeout(std::time::Duration::from_secs(5), laptop.sync()).await;
    assert!(synced.is_ok(), "a sync waited for stalled uploads");

    // Announcing more than the limit: refused before any body byte is sent.
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let head = format!(
        "PUT /dav/chatgpt-next-web/backup.json HTTP/1.1\r\nhost: x\r\nauthorization: Basic {basic}\r\n\
         content-length: {}\r\n\r\n",
        server.state.config.nextchat_max_upload_bytes + 1
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("an answer without sending the body")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    drop(stalled);
}

/// A reverse proxy that serves nextsync under `/nextsync` may pass the prefix on: every
/// route answers under the public URL's path as well as at the root.
async fn every_route_is_served_under_the_public_urls_path(db: TestDb) {
    let mut config = db.config();
    config.public_url = "https://sync.example.org/nextsync/".into();
    let server = nextsync_testkit::TestServer::start(config).await;
    let root = Api::new(&server);
    let prefixed = Api {
        http: root.http.clone(),
        base_url: format!("{}/nextsync", server.base_url),
    };
    let ann = prefixed.register("ann@example.com").await;
    let password = app_password(&prefixed, &ann).await;
    let (status, me) = root.get("/v1/me", ann.token()).await;
    assert_eq!(
        (status, me["email"].as_str()),
        (StatusCode::OK, Some("ann@example.com"))
    );

    let mut laptop = Device::webdav(
        &prefixed,
        "ann@example.com",
        &password,
        nextchat_state(vec![session(
            "s1",
            1,
            vec![message("a", "user", "from the laptop", 1)],
        )]),
    );
    laptop.sync().await;
    let mut phone = Device::upstash(&prefixed, &password, nextchat_state(vec![]));
    phone.sync().await;
    assert_eq!(contents(&phone.local)["a"], "from the laptop");
    // The prefix is stripped only as a whole path segment.
    let (status, _) = root.get("/nextsyncx/healthz", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = root.get("/nextsync/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
}

async fn upstash_staging_is_capped_per_account_and_expires(db: TestDb) {
    let mut config = db.config();
    config.nextchat_max_upload_bytes = 4096;
    let server = nextsync_testkit::TestServer::start(config).await;
    let api = Api::new(&server);
    let ann = api.register("ann@example.com").await;
    let password = app_password(&api, &ann).await;
    let phone = Device::upstash(&api, &password, nextchat_state(vec![]));
    let set =
        |key: &str, body: String| phone.request(Method::POST, phone.upstash_url("set", key), Some(body));

    // Two names together may not stage more than one upload's worth.
    assert_eq!(set("a-chunk-0", "x".repeat(3000)).await.status(), StatusCode::OK);
    let response = set("b-chunk-0", "y".repeat(3000)).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(upstash_error_code(response).await, "payload_too_large");
    // Chunk 0 starts a new upload of its name, so a retried upload is not refused.
    assert_eq!(set("a-chunk-0", "x".repeat(3000)).await.status(), StatusCode::OK);
    assert_eq!(set("a-chunk-1", "x".repeat(1000)).await.status(), StatusCode::OK);
    assert_eq!(
        set("a-chunk-2", "x".repeat(1000)).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // Expiry (what the housekeeping task runs every minute) drops what never committed.
    let expired = server
        .state
        .store
        .expire_staging(nextsync_core::time::Timestamp::now().plus_secs(1))
        .await
        .expect("expire");
    assert_eq!(expired, 2);
    let response = set("a-chunk-count", "1".to_owned()).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(upstash_error_code(response).await, "missing_chunk");
    // With nothing staged, the whole budget is free again.
    assert_eq!(set("b-chunk-0", "y".repeat(4000)).await.status(), StatusCode::OK);
    // A NUL in a key (PostgreSQL's text refuses it) is refused alike on both backends.
    let response = set("nul%00name-chunk-0", "z".to_owned()).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(upstash_error_code(response).await, "invalid_key");
}

async fn both_gets_of_one_sync_see_the_same_state(db: TestDb) {
    let (_server, api) = start(&db).await;
    let ann = api.register("ann@example.com").await;
    let (laptop_pw, phone_pw) = (app_password(&api, &ann).await, app_password(&api, &ann).await);
    let mut laptop = Device::webdav(
        &api,
        "ann@example.com",
        &laptop_pw,
        nextchat_state(vec![session("s1", 1, vec![message("a", "user", "first", 1)])]),
    );
    laptop.sync().await;
    let first = laptop.get().await;
    // Another device uploads between the laptop's two GETs.
    let mut phone = Device::webdav(
        &api,
        "ann@example.com",
        &phone_pw,
        nextchat_state(vec![session("s2", 2, vec![message("b", "user", "second", 2)])]),
    );
    phone.sync().await;
    let second = laptop.get().await;
    assert_eq!(first, second, "one sync, one state");
    // The laptop's own upload ends its sync; its next one sees the phone's session.
    assert!(laptop.set(first).await[0].is_success());
    laptop.sync().await;
    assert_eq!(session_ids(&laptop.local), ["s1", "s2"]);
}

async fn the_plain_webdav_target_takes_chunked_uploads_and_creates_its_folder(db: TestDb) {
    let (_server, api) = start(&db).await;
    let ann = api.register("ann@example.com").await;
    let password = app_password(&api, &ann).await;
    let device = Device::webdav(&api, "ann@example.com", &password, nextchat_state(vec![]));
    let url = |path: &str| format!("{}/dav/{path}", api.base_url);
    // What NextChat's own proxy forwards: only `authorization`, the body streamed
    // (Transfer-Encoding: chunked, no Content-Length), no Content-Type; no MKCOL first.
    let state = nextchat_state(vec![session(
        "s1",
        1,
        vec![message("a", "user", "via a proxy", 1)],
    )]);
    let text = state.to_string();
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        text.as_bytes().chunks(1000).map(|c| Ok(c.to_vec())).collect();
    let response = api
        .http
        .put(url("chatgpt-next-web/backup.json"))
        .header("authorization", device.authorization())
        .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
        .send()
        .await
        .expect("put");
    assert!(response.status().is_success(), "{}", response.status());
    let mkcol = Method::from_bytes(b"MKCOL").expect("method");
    let response = device.request(mkcol.clone(), url("chatgpt-next-web"), None).await;
    assert_eq!(
        response.status(),
        StatusCode::METHOD_NOT_ALLOWED,
        "the PUT created the folder"
    );
    let response = device.request(mkcol, url("chatgpt-next-web/"), None).await;
    assert_eq!(
        response.status(),
        StatusCode::METHOD_NOT_ALLOWED,
        "a trailing slash is the same folder"
    );
    let response = device
        .request(Method::GET, url("chatgpt-next-web/backup.json"), None)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers().get("content-encoding").is_none(),
        "never compressed"
    );
    let got: Value = response.json().await.expect("json");
    assert_eq!(contents(&got)["a"], "via a proxy");

    // Bad credentials: 401 with a body and no login prompt, never a 404 or an empty body;
    // JSON on the WebDAV doors (NextChat's merge then throws), plain text on the UpStash
    // door (NextChat would read a JSON error as an empty remote).
    for authorization in [
        format!("Basic {}", STANDARD.encode(b"ann@example.com:nsa_wrong")),
        // ISO-8859-1 bytes (what btoa makes of "é"), not UTF-8.
        format!("Basic {}", STANDARD.encode(b"ann@example.com:caf\xe9")),
        format!("Basic {}", STANDARD.encode(format!("bob@example.com:{password}"))),
        "Bearer nsa_not-a-token".to_owned(),
    ] {
        for (method, path) in [
            (Method::GET, "/dav/chatgpt-next-web/backup.json".to_owned()),
            (
                Method::GET,
                format!("/api/webdav/chatgpt-next-web?endpoint={DAV_ENDPOINT}&proxy_method=MKCOL"),
            ),
            (
                Method::GET,
                "//api/upstash/get/chatgpt-next-web-chunk-count/".to_owned(),
            ),
        ] {
            let response = api
                .http
                .request(method, format!("{}{path}", api.base_url))
                .header("authorization", &authorization)
                .header("origin", "https://app.nextchat.dev")
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
            assert!(response.headers().get("www-authenticate").is_none(), "{path}");
            assert_eq!(
                response.headers()["access-control-allow-origin"],
                "*",
                "errors carry CORS headers"
            );
            let code = if path.contains("/api/upstash/") {
                upstash_error_code(response).await
            } else {
                let body: Value = response.json().await.expect("a JSON body");
                error_code(&body).to_owned()
            };
            assert_eq!(code, "invalid_app_password");
        }
    }

    // Preflights: every NextChat request carries Authorization, so every one is preflighted.
    for (path, method) in [
        (
            format!("/api/webdav/chatgpt-next-web/backup.json?endpoint={DAV_ENDPOINT}"),
            "PUT",
        ),
        ("//api/upstash/set/chatgpt-next-web-chunk-0/".to_owned(), "POST"),
        ("/dav/chatgpt-next-web".to_owned(), "MKCOL"),
    ] {
        let response = api
            .http
            .request(Method::OPTIONS, format!("{}{path}", api.base_url))
            .header("origin", "tauri://localhost")
            .header("access-control-request-method", method)
            .header("access-control-request-headers", "authorization,content-type")
            .send()
            .await
            .expect("preflight");
        assert!(response.status().is_success(), "{path}: {}", response.status());
        let headers = response.headers();
        assert_eq!(headers["access-control-allow-origin"], "*");
        let allowed = headers["access-control-allow-headers"].to_str().expect("ascii");
        assert!(
            allowed.contains("authorization") && allowed.contains("content-type"),
            "{allowed}"
        );
        let methods = headers["access-control-allow-methods"].to_str().expect("ascii");
        assert!(methods.contains(method), "{methods}");
        assert!(headers.contains_key("access-control-max-age"));
    }
    // NextChat's own route answers a bare OPTIONS with 200.
    let response = api
        .http
        .request(Method::OPTIONS, url("chatgpt-next-web/backup.json"))
        .send()
        .await
        .expect("options");
    assert_eq!(response.status(), StatusCode::OK);
}

async fn bad_uploads_are_refused_whole(db: TestDb) {
    let mut config = db.config();
    config.nextchat_max_upload_bytes = 64 * 1024;
    let server = nextsync_testkit::TestServer::start(config).await;
    let api = Api::new(&server);
    let ann = api.register("ann@example.com").await;
    let password = app_password(&api, &ann).await;
    let mut laptop = Device::webdav(
        &api,
        "ann@example.com",
        &password,
        nextchat_state(vec![session("s1", 1, vec![message("a", "user", "kept", 1)])]),
    );
    laptop.sync().await;
    let before = server_state(&api, &ann).await;
    let put = |body: String| {
        laptop.request(
            Method::PUT,
            laptop.dav_url("chatgpt-next-web/backup.json", ""),
            Some(body),
        )
    };
    let mut poisoned = nextchat_state(vec![session("s2", 2, vec![message("b", "user", "x", 1)])]);
    poisoned["chat-next-web-store"]["sessions"][0]["id"] = json!({"not": "an id"});
    let big = nextchat_state(vec![session(
        "s3",
        3,
        vec![message("c", "user", &"x".repeat(100 * 1024), 1)],
    )]);
    for (body, status, code) in [
        (
            "<html>error code: 520</html>".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_nextchat_state",
        ),
        (String::new(), StatusCode::BAD_REQUEST, "invalid_nextchat_state"),
        (
            r#"{"error":true,"msg":"Invalid endpoint"}"#.to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_nextchat_state",
        ),
        (
            poisoned.to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_nextchat_state",
        ),
        (
            big.to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
    ] {
        let response = put(body).await;
        assert_eq!(response.status(), status);
        assert_eq!(error_code(&response.json().await.expect("json")), code);
    }
    assert_eq!(server_state(&api, &ann).await, before, "nothing half-written");
    let (_, snapshots) = api.get("/v1/nextchat/snapshots", ann.token()).await;
    assert_eq!(snapshots["snapshots"].as_array().expect("list").len(), 1);

    // `__proto__` and friends are dropped on the way in, so never served back.
    let mut polluting: Value =
        serde_json::from_str(r#"{"__proto__":{"isAdmin":true},"constructor":{"prototype":{"x":1}}}"#)
            .expect("json");
    let mut state = nextchat_state(vec![session("s4", 4, vec![message("d", "user", "hi", 1)])]);
    polluting["theme"] = json!("dark");
    state["app-config"] = polluting.clone();
    state["access-control"] = polluting.clone();
    state["chat-next-web-store"]["sessions"][0]["messages"][0]["__proto__"] = json!({"polluted": true});
    state["mask-store"]["masks"] = json!({"m1": {"id": "m1", "name": "M", "__proto__": {"p": 1}}});
    let (status, _) = put_settings(&api, &ann, json!({"sync_settings": true})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(put(state.to_string()).await.status().is_success());
    let downloaded = laptop.get().await;
    for key in ["__proto__", "constructor", "prototype", "isAdmin", "polluted"] {
        assert!(!downloaded.contains(key), "{key} served back");
    }
    let downloaded: Value = serde_json::from_str(&downloaded).expect("json");
    assert_eq!(downloaded["app-config"]["theme"], "dark");
}

async fn settings_and_secrets_sync_only_when_the_account_opts_in(db: TestDb) {
    const KEY: &str = "sk-proj-PLAINTEXT-canary-4f9c2b7e1d";
    let (_server, api) = start(&db).await;
    let ann = api.register("ann@example.com").await;
    let password = app_password(&api, &ann).await;
    let mut state = nextchat_state(vec![session("s1", 1, vec![message("a", "user", "hi", 1)])]);
    state["access-control"]["openaiApiKey"] = json!(KEY);
    state["app-config"]["theme"] = json!("dark");
    state["app-config"]["realtimeConfig"]["apiKey"] = json!(format!("{KEY}-realtime"));
    let mut laptop = Device::webdav(&api, "ann@example.com", &password, state);

    // Off by default: settings are not taken, and downloads carry {} so nothing is clobbered.
    let (_, settings) = api.get("/v1/nextchat/settings", ann.token()).await;
    assert_eq!(settings, json!({"sync_settings": false, "sync_secrets": false}));
    laptop.sync().await;
    let downloaded = laptop.get().await;
    let parsed: Value = serde_json::from_str(&downloaded).expect("json");
    assert_eq!(parsed["app-config"], json!({}));
    assert_eq!(parsed["access-control"], json!({}));

    // Settings on, secrets off: the theme travels, the keys never.
    let (status, settings) = put_settings(&api, &ann, json!({"sync_settings": true})).await;
    assert_eq!(status, StatusCode::OK, "{settings}");
    laptop.sync().await;
    let mut phone = Device::webdav(&api, "ann@example.com", &password, nextchat_state(vec![]));
    phone.local["app-config"]["theme"] = json!("light");
    phone.sync().await;
    assert_eq!(phone.local["app-config"]["theme"], "dark", "settings now travel");
    assert_eq!(phone.local["access-control"]["openaiApiKey"], "", "keys do not");
    assert!(!phone.get().await.contains(KEY));

    // Secrets on: sealed at rest, served back to the account's devices, never exported.
    let (status, _) = put_settings(&api, &ann, json!({"sync_secrets": true})).await;
    assert_eq!(status, StatusCode::OK);
    laptop.sync().await;
    let mut tablet = Device::webdav(&api, "ann@example.com", &password, nextchat_state(vec![]));
    tablet.sync().await;
    assert_eq!(tablet.local["access-control"]["openaiApiKey"], KEY);
    assert_eq!(
        tablet.local["app-config"]["realtimeConfig"]["apiKey"],
        format!("{KEY}-realtime")
    );
    assert!(
        !server_state(&api, &ann).await.to_string().contains(KEY),
        "exports hold no secret"
    );
    let (_, pulled) = api.get("/v1/sync/pull?limit=1000", ann.token()).await;
    assert!(
        !pulled.to_string().contains(KEY),
        "the record feed holds no secret"
    );
    if db.database_url().is_none() {
        assert_not_on_disk(&db, KEY);
    }

    // Secrets off again: the kept ones are gone.
    let (status, _) = put_settings(&api, &ann, json!({"sync_secrets": false})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!phone.get().await.contains(KEY));
    let (status, body) = put_settings(&api, &ann, json!({"sync_everything": true})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

/// Greps every file of the data dir (database, WAL, keys, outbox) for `needle`.
fn assert_not_on_disk(db: &TestDb, needle: &str) {
    let mut stack = vec![db.data_dir()];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("data dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).expect("read");
            files += 1;
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{} holds the key in plain text",
                path.display()
            );
        }
    }
    assert!(files >= 2, "the data dir holds the database");
}

async fn snapshots_are_kept_and_restore_brings_back_deletions(db: TestDb) {
    let (_server, api) = start(&db).await;
    let ann = api.register("ann@example.com").await;
    let password = app_password(&api, &ann).await;
    let mut laptop = Device::webdav(
        &api,
        "ann@example.com",
        &password,
        nextchat_state(vec![session("s1", 1, vec![message("a", "user", "hi", 1)])]),
    );
    laptop.sync().await;
    laptop.sync().await;
    let (_, list) = api.get("/v1/nextchat/snapshots", ann.token()).await;
    let snapshots = list["snapshots"].as_array().expect("snapshots");
    assert_eq!(
        snapshots.len(),
        1,
        "an identical upload is not kept twice: {list}"
    );
    assert_eq!(snapshots[0]["source"], "webdav");
    assert_eq!(snapshots[0]["sessions"], 1);
    assert_eq!(snapshots[0]["messages"], 1);
    let id = snapshots[0]["snapshot_id"].as_str().expect("id").to_owned();

    for n in 2..25 {
        laptop.local["chat-next-web-store"]["sessions"][0]["messages"]
            .as_array_mut()
            .expect("messages")
            .push(message(&format!("m{n}"), "user", "more", n));
        laptop.sync().await;
    }
    let (_, list) = api.get("/v1/nextchat/snapshots", ann.token()).await;
    let snapshots = list["snapshots"].as_array().expect("snapshots");
    assert_eq!(snapshots.len(), 20, "the last 20 are kept");
    let newest = snapshots[0]["snapshot_id"].as_str().expect("id").to_owned();
    assert_eq!(snapshots[0]["messages"], 24);

    let (status, body) = api.delete("/v1/records/sessions/s1", ann.token(), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(session_ids(&server_state(&api, &ann).await).is_empty());
    let (status, summary) = api
        .post(
            &format!("/v1/nextchat/snapshots/{newest}/restore"),
            ann.token(),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    let restored = server_state(&api, &ann).await;
    assert_eq!(session_ids(&restored), ["s1"]);
    assert_eq!(contents(&restored).len(), 24);
    let (status, body) = api
        .post(
            &format!("/v1/nextchat/snapshots/{id}/restore"),
            ann.token(),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "pruned: {body}");
    let bob = api.register("bob@example.com").await;
    let (status, _) = api
        .post(
            &format!("/v1/nextchat/snapshots/{newest}/restore"),
            bob.token(),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another account's snapshot");
}

async fn export_and_import_move_a_whole_account(db: TestDb) {
    let (_server, api) = start(&db).await;
    let ann = api.register("ann@example.com").await;
    let password = app_password(&api, &ann).await;
    let mut state = nextchat_state(vec![
        session("s1", 1, vec![message("a", "user", "one", 1)]),
        session("s2", 2, vec![message("b", "user", "two", 2)]),
    ]);
    state["mask-store"]["masks"] = json!({"mask-1": {"id": "mask-1", "name": "Writer", "context": []}});
    let mut laptop = Device::webdav(&api, "ann@example.com", &password, state);
    laptop.sync().await;
    let exported = server_state(&api, &ann).await;

    let bob = api.register("bob@example.com").await;
    let (status, summary) = api
        .post("/v1/import?format=nextchat", bob.token(), exported.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["created"], 5, "two sessions, two messages, a mask");
    assert_eq!(server_state(&api, &bob).await, exported);
    let (status, again) = api.post("/v1/import", bob.token(), exported).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["created"], 0);
    let (status, body) = api.get("/v1/export?format=csv", bob.token()).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "unsupported_format")
    );
    let (status, body) = api
        .post("/v1/import", bob.token(), json!({"chat-next-web-store": {}}))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_nextchat_state")
    );
    // An empty account still exports a file NextChat can import.
    let carl = api.register("carl@example.com").await;
    let empty = server_state(&api, &carl).await;
    assert_eq!(empty["chat-next-web-store"]["sessions"], json!([]));
    assert_eq!(empty["mask-store"]["masks"], json!({}));
}
