//! Hostile input, bounded and reproducible (issue 14): seeded random requests over every
//! door of a running server (push, pull, records, conflicts, trash, restore, digests, the
//! NextChat doors, sign-in) and random frames on its WebSocket. Valid requests are bent:
//! a value swapped for a hostile one, a key dropped, bytes that are not UTF-8 or not JSON,
//! wrong types, sizes and encodings.
//!
//! What must hold: no answer of 500 or more and no socket closed as `internal` (1011); a
//! refused write writes nothing (the account's feed head does not move); and, as a positive
//! control that the head check can fail, a valid push now and then does move it.
//! `crates/server/tests/hostile.rs` runs a fixed seed; `nextsync-bench fuzz` runs long ones
//! against the release binary and watches its memory.

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// splitmix64: small, seedable, and the same sequence on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// The account the requests act as.
#[derive(Debug, Clone)]
pub struct Target {
    pub base_url: String,
    pub email: String,
    pub access_token: String,
    pub app_password: String,
}

/// What a run saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub requests: u64,
    pub frames: u64,
    pub by_status: BTreeMap<u16, u64>,
    /// Valid pushes sent as a control, and how many moved the head as they must.
    pub controls: (u64, u64),
    pub failures: Vec<String>,
}

fn stamp(rng: &mut Rng) -> String {
    let ms = nextsync_core::time::Timestamp::now().as_millis();
    format!("{ms:015}-{:05}-fuzz", rng.below(99_999))
}

/// A value meant to break a parser or a limit.
fn hostile(rng: &mut Rng) -> Value {
    match rng.below(16) {
        0 => Value::Null,
        1 => json!(-1),
        2 => json!(u64::MAX),
        3 => json!(1.5e308),
        4 => json!(""),
        5 => json!("a\u{0}b"),
        6 => json!("\u{202e}\u{feff}\u{1f600}".repeat(rng.below(50) as usize)),
        7 => json!("x".repeat(rng.below(70_000) as usize)),
        8 => {
            let mut deep = json!(1);
            for _ in 0..rng.below(300) {
                deep = json!([deep]);
            }
            deep
        }
        9 => json!({"nested": {"a": [1, {"b": null}]}}),
        10 => json!([]),
        11 => json!(true),
        12 => json!("99999999999999999999-99999-node"),
        13 => json!("000000000000001-00000-"),
        14 => json!("../../etc/passwd"),
        _ => json!({"$type": "upsert", "op": "delete"}),
    }
}

/// Replaces, drops or adds one member somewhere in `value`.
fn bend(rng: &mut Rng, value: &mut Value) {
    match value {
        Value::Object(map) if !map.is_empty() && rng.chance(70) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = rng.pick(&keys).clone();
            match rng.below(4) {
                0 => {
                    map.remove(&key);
                }
                1 => {
                    let inner = map.get_mut(&key).expect("key");
                    bend(rng, inner);
                }
                _ => {
                    map.insert(key, hostile(rng));
                }
            }
        }
        Value::Array(items) if !items.is_empty() && rng.chance(70) => {
            let i = rng.below(items.len() as u64) as usize;
            bend(rng, &mut items[i]);
        }
        Value::Object(map) => {
            map.insert("unexpected".into(), hostile(rng));
        }
        other => *other = hostile(rng),
    }
}

fn valid_push(rng: &mut Rng, n: u64) -> Value {
    let mutations: Vec<Value> = (0..=rng.below(3))
        .map(|i| {
            let op = if rng.chance(20) { "delete" } else { "upsert" };
            let mut m = json!({"mutation_id": format!("fuzz-{n}-{i}-{}", rng.next_u64()), "collection": *rng.pick(&["messages", "sessions", "prompts"]),
                "id": format!("r{}", rng.below(20)), "op": op, "hlc": stamp(rng)});
            if op == "upsert" {
                m["fields"] = json!({"content": format!("text {n}"), "n": n});
            }
            if rng.chance(30) {
                m["base_seq"] = json!(rng.below(50));
            }
            m
        })
        .collect();
    json!({ "mutations": mutations })
}

/// A path segment that may not be one.
fn segment(rng: &mut Rng) -> String {
    match rng.below(8) {
        0 => "%00".into(),
        1 => "%FF%FE".into(),
        2 => "..".into(),
        3 => "a".repeat(rng.below(3000) as usize + 1),
        4 => "%E2%80%AE%F0%9F%98%80".into(),
        5 => "messages".into(),
        6 => format!("r{}", rng.below(20)),
        _ => "with%20space".into(),
    }
}

fn query_value(rng: &mut Rng) -> String {
    match rng.below(8) {
        0 => "-1".into(),
        1 => "99999999999999999999".into(),
        2 => "abc".into(),
        3 => "%00".into(),
        4 => String::new(),
        5 => "1.5".into(),
        6 => base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("epoch:{}", rng.next_u64())),
        _ => rng.below(100).to_string(),
    }
}

/// One request: (method, path and query, body, content type, what it may write).
struct Planned {
    method: reqwest::Method,
    path: String,
    body: Option<Vec<u8>>,
    content_type: Option<&'static str>,
    auth: Auth,
    writes: bool,
    /// A valid push sent as the control: it must answer 200 and move the head.
    control: bool,
}

#[derive(Clone, Copy)]
enum Auth {
    Bearer,
    AppPassword,
    Basic,
    None,
}

fn plan(rng: &mut Rng, n: u64) -> Planned {
    use reqwest::Method;
    let json_body = |v: &Value| Some(serde_json::to_vec(v).expect("json"));
    let mut planned = Planned {
        method: Method::GET,
        path: String::new(),
        body: None,
        content_type: Some("application/json"),
        auth: Auth::Bearer,
        writes: false,
        control: false,
    };
    match rng.below(12) {
        0 | 1 => {
            let mut body = valid_push(rng, n);
            let control = rng.chance(15);
            if !control {
                for _ in 0..=rng.below(2) {
                    bend(rng, &mut body);
                }
            }
            planned.method = Method::POST;
            planned.path = "/v1/sync/push".into();
            planned.body = json_body(&body);
            planned.writes = true;
            planned.control = control;
        }
        2 => {
            // Bytes that are not what they claim.
            planned.method = Method::POST;
            planned.path = (*rng.pick(&[
                "/v1/sync/push",
                "/v1/restore",
                "/v1/auth/login",
                "/v1/conflicts/x/resolve",
            ]))
            .into();
            planned.body = Some(match rng.below(5) {
                0 => vec![0xff, 0xfe, b'{', 0x80],
                1 => b"{\"mutations\": [".to_vec(),
                2 => Vec::new(),
                3 => b"null".to_vec(),
                _ => b"{\"mutations\": []}".to_vec(),
            });
            planned.content_type = *rng.pick(&[
                Some("application/json"),
                Some("text/plain"),
                None,
                Some("application/json; charset=latin1"),
            ]);
            planned.writes = true;
        }
        3 => {
            planned.path = format!(
                "/v1/sync/pull?since={}&limit={}&wait={}",
                query_value(rng),
                query_value(rng),
                if rng.chance(10) {
                    "1".to_owned()
                } else {
                    query_value(rng).replace('9', "")
                }
            );
            if planned.path.contains("wait=") && !planned.path.ends_with("wait=1") {
                // Long-polls that could hold the run for a minute: asked with no wait.
                planned.path = planned.path.split("&wait=").next().unwrap_or_default().to_owned();
            }
        }
        4 => {
            let path = format!("/v1/records/{}/{}", segment(rng), segment(rng));
            planned.method = rng.pick(&[Method::GET, Method::PUT, Method::DELETE]).clone();
            planned.writes = planned.method != Method::GET;
            if planned.method == Method::PUT {
                let mut body = json!({"fields": {"content": "x"}});
                if rng.chance(70) {
                    bend(rng, &mut body);
                }
                planned.body = json_body(&body);
            }
            planned.path = path;
        }
        5 => {
            planned.method = Method::POST;
            planned.path = format!("/v1/conflicts/{}/resolve", segment(rng));
            let mut body = json!({"choose": "kept"});
            bend(rng, &mut body);
            planned.body = json_body(&body);
            planned.writes = true;
        }
        6 => {
            planned.writes = true;
            match rng.below(4) {
                0 => {
                    planned.path = format!(
                        "/v1/trash?collection={}&before={}&limit={}",
                        segment(rng),
                        query_value(rng),
                        query_value(rng)
                    );
                    planned.writes = false;
                }
                1 => {
                    planned.method = Method::POST;
                    planned.path = format!(
                        "/v1/trash/{}/{}/restore?together={}",
                        segment(rng),
                        segment(rng),
                        query_value(rng)
                    );
                }
                2 => {
                    planned.method = Method::DELETE;
                    planned.path = format!("/v1/trash/{}/{}", segment(rng), segment(rng));
                }
                _ => {
                    planned.method = Method::POST;
                    planned.path = "/v1/restore".into();
                    let mut body = json!({"at": "2026-01-01T00:00:00Z", "dry_run": true});
                    bend(rng, &mut body);
                    if !rng.chance(20) {
                        body["dry_run"] = json!(true);
                    }
                    planned.body = json_body(&body);
                }
            }
        }
        7 => {
            planned.path = match rng.below(3) {
                0 => "/v1/sync/digest".into(),
                1 => format!("/v1/sync/digest/{}?buckets={}", segment(rng), query_value(rng)),
                _ => format!(
                    "/v1/sync/digest/{}/records?buckets={}&bucket={},{}",
                    segment(rng),
                    query_value(rng),
                    query_value(rng),
                    query_value(rng)
                ),
            };
        }
        8 | 9 => {
            // NextChat's doors with the app password: a bent state, or bytes.
            let mut state = json!({
                "chat-next-web-store": {"sessions": [{"id": "s1", "topic": "t", "messages": [{"id": "m1", "role": "user", "content": "hi"}]}]},
                "mask-store": {"masks": {}}, "prompt-store": {"prompts": {}},
                "app-config": {}, "access-control": {}
            });
            for _ in 0..=rng.below(3) {
                bend(rng, &mut state);
            }
            let body = if rng.chance(10) {
                vec![0xff, 0x00, 0x7b]
            } else {
                serde_json::to_vec(&state).expect("json")
            };
            let upstash_key = segment(rng);
            let (method, path, auth) = match rng.below(4) {
                0 => (
                    Method::PUT,
                    "/dav/chatgpt-next-web/backup.json".to_owned(),
                    Auth::Basic,
                ),
                1 => (
                    Method::GET,
                    "/dav/chatgpt-next-web/backup.json".to_owned(),
                    Auth::Basic,
                ),
                2 => (
                    Method::POST,
                    format!("/api/upstash/set/{upstash_key}"),
                    Auth::AppPassword,
                ),
                _ => (
                    Method::POST,
                    format!("/api/upstash/get/{upstash_key}"),
                    Auth::AppPassword,
                ),
            };
            planned.writes = method != Method::GET;
            planned.method = method;
            planned.path = path;
            planned.auth = auth;
            planned.body = Some(body);
            planned.content_type = *rng.pick(&[Some("application/json"), None, Some("text/plain")]);
        }
        10 => {
            planned.method = Method::POST;
            planned.path =
                (*rng.pick(&["/v1/auth/login", "/v1/auth/refresh", "/v1/auth/forgot-password"])).into();
            let mut body = json!({"email": "ann@example.org", "password": "nope", "refresh_token": "nsr_x"});
            bend(rng, &mut body);
            planned.body = json_body(&body);
            planned.auth = Auth::None;
        }
        _ => {
            // A known path with the wrong method, a stray path, or a bad token.
            planned.method = rng
                .pick(&[Method::PATCH, Method::DELETE, Method::PUT, Method::GET])
                .clone();
            planned.path = (*rng.pick(&[
                "/v1/sync/push",
                "/v1/me",
                "/v1/nope",
                "/api/webdav/x",
                "/v1/sync/digest/%ZZ",
            ]))
            .into();
            planned.auth = *rng.pick(&[Auth::Bearer, Auth::None]);
            planned.writes = true;
        }
    }
    planned
}

async fn head(http: &reqwest::Client, target: &Target) -> Result<String, String> {
    let response = http
        .get(format!("{}/v1/sync/digest", target.base_url))
        .bearer_auth(&target.access_token)
        .send()
        .await
        .map_err(|e| format!("digest read: {e}"))?;
    let body: Value = response.json().await.map_err(|e| format!("digest read: {e}"))?;
    body["cursor"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("digest read answered {body}"))
}

/// Sends `requests` seeded hostile requests and `frames` socket frames; see the module doc.
pub async fn run(http: &reqwest::Client, target: &Target, seed: u64, requests: u64, frames: u64) -> Outcome {
    let mut rng = Rng::new(seed);
    let mut outcome = Outcome::default();
    for n in 0..requests {
        let planned = plan(&mut rng, n);
        let before = if planned.writes {
            match head(http, target).await {
                Ok(h) => Some(h),
                Err(e) => {
                    outcome.failures.push(format!("request {n}: {e}"));
                    continue;
                }
            }
        } else {
            None
        };
        let mut request = http
            .request(
                planned.method.clone(),
                format!("{}{}", target.base_url, planned.path),
            )
            .timeout(Duration::from_secs(30));
        request = match planned.auth {
            Auth::Bearer => request.bearer_auth(&target.access_token),
            Auth::AppPassword => request.bearer_auth(&target.app_password),
            Auth::Basic => request.basic_auth(&target.email, Some(&target.app_password)),
            Auth::None => request,
        };
        if let Some(kind) = planned.content_type {
            request = request.header("content-type", kind);
        }
        if let Some(body) = planned.body.clone() {
            request = request.body(body);
        }
        let status = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let _ = response.bytes().await;
                status
            }
            Err(e) => {
                outcome.failures.push(format!(
                    "request {n} {} {}: no answer: {e}",
                    planned.method, planned.path
                ));
                continue;
            }
        };
        outcome.requests += 1;
        *outcome.by_status.entry(status).or_default() += 1;
        let what = format!(
            "request {n} (seed {seed}) {} {}",
            planned.method,
            short(&planned.path)
        );
        if status >= 500 {
            outcome.failures.push(format!("{what} answered {status}"));
        }
        if let Some(before) = before {
            let after = match head(http, target).await {
                Ok(h) => h,
                Err(e) => {
                    outcome.failures.push(format!("{what}: {e}"));
                    continue;
                }
            };
            if planned.control {
                outcome.controls.0 += 1;
                if status == 200 && after != before {
                    outcome.controls.1 += 1;
                } else {
                    outcome.failures.push(format!(
                        "{what}: a valid push answered {status}, head moved: {}",
                        after != before
                    ));
                }
            } else if (400..500).contains(&status) && after != before {
                outcome
                    .failures
                    .push(format!("{what} was refused ({status}) but wrote"));
            }
        }
    }
    for n in 0..frames {
        if let Err(e) = socket_round(target, &mut rng, &mut outcome).await {
            outcome
                .failures
                .push(format!("socket round {n} (seed {seed}): {e}"));
        }
    }
    outcome
}

fn short(path: &str) -> String {
    if path.len() > 80 {
        format!(
            "{}…",
            &path[..path.char_indices().nth(80).map_or(path.len(), |(i, _)| i)]
        )
    } else {
        path.to_owned()
    }
}

/// One socket: hello, then up to 20 bent frames; the server answers or closes, never with
/// 1011 (internal).
async fn socket_round(target: &Target, rng: &mut Rng, outcome: &mut Outcome) -> Result<(), String> {
    let url = format!("{}/v1/sync/ws", target.base_url.replacen("http", "ws", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let hello = json!({"type": "hello", "access_token": target.access_token});
    socket
        .send(Message::text(hello.to_string()))
        .await
        .map_err(|e| format!("hello: {e}"))?;
    for _ in 0..20 {
        let mut frame = match rng.below(6) {
            0 => json!({"type": "push", "mutations": valid_push(rng, 0)["mutations"].clone()}),
            1 => json!({"type": "draft", "collection": "messages", "id": "d1", "fields": {"content": "x"}}),
            2 => json!({"type": "auth", "access_token": "nope"}),
            3 => json!({"type": "ping"}),
            4 => json!({"type": "hello", "cursor": "x"}),
            _ => json!({"type": "nonsense"}),
        };
        bend(rng, &mut frame);
        let message = match rng.below(10) {
            0 => Message::binary(vec![0xff, 0x00]),
            1 => Message::text("{not json"),
            _ => Message::text(frame.to_string()),
        };
        outcome.frames += 1;
        if socket.send(message).await.is_err() {
            break;
        }
        // Read what came back until quiet; a close ends the round.
        loop {
            match tokio::time::timeout(Duration::from_millis(30), socket.next()).await {
                Err(_) => break,
                Ok(None) => return Ok(()),
                Ok(Some(Err(_))) => return Ok(()),
                Ok(Some(Ok(Message::Close(Some(close))))) => {
                    if u16::from(close.code) == 1011 {
                        return Err(format!("closed as internal: {}", close.reason));
                    }
                    return Ok(());
                }
                Ok(Some(Ok(Message::Text(text)))) => {
                    let frame: Value =
                        serde_json::from_str(text.as_str()).map_err(|e| format!("non-JSON frame: {e}"))?;
                    if frame["code"] == "internal" {
                        return Err(format!("internal error frame: {frame}"));
                    }
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }
    let _ = socket.close(None).await;
    Ok(())
}

/// Registers an account and makes it an app password, for [`run`].
pub async fn target(api: &crate::Api, email: &str) -> Target {
    let session = api.register(email).await;
    let (status, body) = api
        .post(
            "/v1/app-passwords",
            session.token(),
            json!({"label": "fuzz", "password": crate::PASSWORD}),
        )
        .await;
    assert!(status.is_success(), "app password: {body}");
    Target {
        base_url: api.base_url.clone(),
        email: email.to_owned(),
        access_token: session.access,
        app_password: body["password"].as_str().expect("password").to_owned(),
    }
}

/// A summary line: requests, frames and statuses seen.
pub fn summary(outcome: &Outcome) -> String {
    let statuses: Vec<String> = outcome
        .by_status
        .iter()
        .map(|(s, n)| format!("{s}×{n}"))
        .collect();
    format!(
        "{} requests ({}), {} socket frames, {}/{} control pushes moved the head",
        outcome.requests,
        statuses.join(" "),
        outcome.frames,
        outcome.controls.1,
        outcome.controls.0
    )
}
