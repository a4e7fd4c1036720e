//! The server's edges: TLS, rate limits, account enumeration, error shapes for every kind of
//! bad request, compression, metrics, OpenAPI, and the app-password extractor.

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use nextsync_server::auth::AppPasswordUser;
use nextsync_server::config::{RateLimits, TlsFiles};
use nextsync_testkit::{Api, PASSWORD, TestDb, TestServer, error_code, fixture};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tower::ServiceExt;

#[tokio::test]
async fn tls_serves_with_a_certificate() {
    let db = TestDb::sqlite();
    let mut config = db.config();
    config.tls = Some(TlsFiles {
        cert: fixture("server.pem"),
        key: fixture("server.key"),
    });
    let server = TestServer::start(config).await;
    assert!(server.base_url.starts_with("https://"));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(fixture("ca.pem")).expect("ca")).expect("pem");
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("client");
    let response = client
        .get(server.url("/healthz"))
        .send()
        .await
        .expect("https request");
    assert_eq!(response.status(), StatusCode::OK);
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", server.addr))
        .send()
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != StatusCode::OK));
    server.stop().await.expect("graceful TLS shutdown");
}

#[tokio::test]
async fn an_address_over_its_burst_is_told_when_to_retry() {
    let db = TestDb::sqlite();
    let mut config = db.config();
    config.rate_limits = RateLimits {
        ip_per_minute: 1,
        ip_burst: 3,
        ..RateLimits::default()
    };
    let server = TestServer::start(config).await;
    let api = Api::new(&server);
    for _ in 0..3 {
        let (status, _) = api
            .post(
                "/v1/auth/login",
                None,
                json!({"email": "a@example.org", "password": PASSWORD}),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let response = api
        .http
        .post(server.url("/v1/auth/password/forgot"))
        .json(&json!({"email": "a@example.org"}))
        .send()
        .await
        .expect("send");
    assert_eq!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the four endpoints share the address budget"
    );
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.expect("json");
    assert_eq!(error_code(&body), "rate_limited");
}

#[tokio::test]
async fn an_account_is_locked_after_ten_failed_logins_even_for_the_right_password() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    let api = Api::new(&server);
    api.register("ann@example.org").await;
    // Successful logins do not count.
    for _ in 0..12 {
        api.login("ann@example.org", PASSWORD).await;
    }
    for _ in 0..10 {
        let (status, _) = api
            .post(
                "/v1/auth/login",
                None,
                json!({"email": "ann@example.org", "password": "guess guess guess"}),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, body) = api
        .post(
            "/v1/auth/login",
            None,
            json!({"email": "ANN@example.org", "password": PASSWORD}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    api.register("bob@example.org").await;
    api.login("bob@example.org", PASSWORD).await;
}

/// Median wall time of `n` login attempts.
async fn median_login(api: &Api, email: &str, n: usize) -> Duration {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let (status, _) = api
            .post(
                "/v1/auth/login",
                None,
                json!({"email": email, "password": "wrong horse battery"}),
            )
            .await;
        times.push(start.elapsed());
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    times.sort();
    times[n / 2]
}

#[tokio::test]
async fn wrong_password_and_unknown_email_are_indistinguishable() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    let api = Api::new(&server);
    api.register("ann@example.org").await;

    let fetch = |email: &'static str| {
        let api = api.clone();
        async move {
            let response = api
                .http
                .post(format!("{}/v1/auth/login", api.base_url))
                .json(&json!({"email": email, "password": "wrong horse battery"}))
                .send()
                .await
                .expect("send");
            let mut headers: Vec<(String, String)> = response
                .headers()
                .iter()
                .filter(|(name, _)| !matches!(name.as_str(), "date" | "x-request-id"))
                .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or_default().to_owned()))
                .collect();
            headers.sort();
            (response.status(), headers, response.bytes().await.expect("body"))
        }
    };
    assert_eq!(fetch("ann@example.org").await, fetch("nobody@example.org").await);

    // Both paths do a full Argon2 verification. Without the dummy hash, an unknown email would
    // answer ~20× faster; the bound is loose so a noisy machine cannot fail it.
    let known = median_login(&api, "ann@example.org", 5).await;
    let unknown = median_login(&api, "nobody@example.org", 5).await;
    let ratio = unknown.as_secs_f64() / known.as_secs_f64();
    assert!(
        (0.4..2.5).contains(&ratio),
        "known {known:?}, unknown {unknown:?}"
    );
}

#[tokio::test]
async fn every_bad_request_gets_the_error_shape() {
    let db = TestDb::sqlite();
    let mut config = db.config();
    config.max_body_bytes = 4096;
    let server = TestServer::start(config).await;
    let api = Api::new(&server);

    let (status, body) = api.get("/v1/nope", None).await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = api
        .send(reqwest::Method::PUT, "/v1/auth/login", None, Some(json!({})))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    let big = "x".repeat(10_000);
    let (status, body) = api
        .post(
            "/v1/auth/register",
            None,
            json!({"email": "a@example.org", "password": big}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let response = api
        .http
        .post(server.url("/v1/auth/login"))
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Answers made outside the handlers' own code have the shape too.
    let session = api.register("ann@example.org").await;
    let (status, body) = api.get("/v1/sync/pull?limit=many", session.token()).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_query")
    );
    let (status, body) = api.get("/v1/records/notes/%FF%FE", session.token()).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_path")
    );
    let response = api
        .http
        .post(server.url("/v1/sync/push"))
        .bearer_auth(&session.access)
        .header("content-type", "application/json")
        .header("content-encoding", "br")
        .body("not brotli")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(error_code(&body), "unsupported_encoding");
}

/// Sends `requests` back to back on one connection and reads until the server closes it or
/// `answers` status lines came; returns the raw text read.
async fn pipeline(server: &TestServer, requests: &[u8], answers: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    stream.write_all(requests).await.expect("write");
    let mut read = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&read);
        if text.matches("HTTP/1.1 ").count() >= answers && text.ends_with('}') {
            break;
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => read.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&read).into_owned()
}

/// An answer given without reading the request's body (a 401 before the JSON is parsed, a
/// GET that ignores a body) keeps the connection usable for the next pipelined request; a
/// large unread body is announced with `Connection: close`.
#[tokio::test]
async fn unread_request_bodies_do_not_break_the_next_request() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    let body = r#"{"mutations":[]}"#;
    let requests = format!(
        "POST /v1/sync/push HTTP/1.1\r\nhost: x\r\nauthorization: Bearer nope\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}\
         GET /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
         GET /v1/nope HTTP/1.1\r\nhost: x\r\n\r\n",
        body.len()
    );
    let text = pipeline(&server, requests.as_bytes(), 3).await;
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["401", "200", "404"], "{text}");

    let big = "x".repeat(200 * 1024);
    let requests = format!(
        "POST /v1/sync/push HTTP/1.1\r\nhost: x\r\nauthorization: Bearer nope\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{big}",
        big.len()
    );
    let text = pipeline(&server, requests.as_bytes(), 1)
        .await
        .to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 401"), "{text}");
    assert!(text.contains("connection: close"), "{text}");

    // A large body that is read (a real push) keeps the connection.
    let api = Api::new(&server);
    let session = api.register("ann@example.org").await;
    let ms = nextsync_core::time::Timestamp::now().as_millis();
    let push = json!({"mutations": [{"mutation_id": "m1", "collection": "notes", "id": "n1", "op": "upsert",
        "fields": {"text": big}, "hlc": format!("{ms:015}-00000-laptop")}]});
    let response = api
        .http
        .post(server.url("/v1/sync/push"))
        .bearer_auth(&session.access)
        .json(&push)
        .send()
        .await
        .expect("push");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers().get("connection").is_none(),
        "{:?}",
        response.headers()
    );
}

/// A client that announces a small body and never sends it gets a 408 and the connection
/// back, instead of holding it forever (small bodies are read before the request timeout's
/// layer).
#[tokio::test]
async fn a_body_that_never_arrives_times_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::sqlite();
    let mut config = db.config();
    config.body_read_timeout = Duration::from_millis(500);
    let server = TestServer::start(config).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    stream
        .write_all(b"POST /v1/auth/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"email\"")
        .await
        .expect("write");
    let mut answer = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
}

#[tokio::test]
async fn bodies_travel_compressed_both_ways() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    let body = serde_json::to_vec(&json!({"email": "ann@example.org", "password": PASSWORD})).expect("json");
    let gzipped = gzip_stored(&body);
    let response = nextsync_testkit::client()
        .post(server.url("/v1/auth/register"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gzipped)
        .send()
        .await
        .expect("send");
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{:?}",
        response.text().await
    );

    let raw = reqwest::Client::builder()
        .no_gzip()
        .no_zstd()
        .build()
        .expect("client");
    let response = raw
        .get(server.url("/v1/openapi.json"))
        .header("accept-encoding", "zstd")
        .send()
        .await
        .expect("send");
    assert_eq!(response.headers()["content-encoding"], "zstd");
}

/// A gzip member of `data` (stored blocks: valid gzip without needing a compressor here).
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    for (i, chunk) in data.chunks(65_535).enumerate() {
        let last = (i + 1) * 65_535 >= data.len();
        out.push(u8::from(last));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test]
async fn metrics_count_requests_logins_and_active_devices() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    let api = Api::new(&server);
    api.register("ann@example.org").await;
    api.login("ann@example.org", PASSWORD).await;
    api.post(
        "/v1/auth/login",
        None,
        json!({"email": "ann@example.org", "password": "wrong wrong wrong"}),
    )
    .await;
    let text = api
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    for needle in [
        "nextsync_logins_total{result=\"ok\"}",
        "nextsync_logins_total{result=\"failed\"}",
        "nextsync_http_requests_total{route=\"/v1/auth/login\",method=\"POST\",status=\"401\"}",
        "nextsync_http_request_duration_seconds_bucket{route=\"/v1/auth/register\",le=\"0.5\"}",
        "nextsync_active_devices ",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
}

#[tokio::test]
async fn the_openapi_document_lists_every_v1_endpoint() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    let (status, doc) = Api::new(&server).get("/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_object().expect("paths");
    // Every `/v1` route the server registers, read from its source, so a new endpoint cannot
    // be left out of the document (or out of this list) unnoticed.
    let routes = v1_routes_in_source();
    assert!(routes.len() >= 25, "the route scan found only {routes:?}");
    for (path, method) in &routes {
        if UNDOCUMENTED.contains(&path.as_str()) {
            continue;
        }
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is served but missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"].get("TokenResponse").is_some());
}

/// Served under `/v1` but described elsewhere: the WebSocket feed (ARCHITECTURE.md) and the
/// document itself.
const UNDOCUMENTED: [&str; 2] = ["/v1/sync/ws", "/v1/openapi.json"];

/// `(path, method)` of every `.route("/v1/…", get(…).post(…))` in the server's source.
fn v1_routes_in_source() -> Vec<(String, String)> {
    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("source dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    rust_files(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut routes = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read source");
        let mut rest = text.as_str();
        while let Some(at) = rest.find(".route(") {
            let call = &rest[at + ".route(".len()..];
            // The route call's arguments, up to its closing parenthesis.
            let mut depth = 1;
            let end = call
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(call.len(), |(i, _)| i);
            let args = &call[..end];
            rest = &call[end..];
            let Some(path) = args
                .trim_start()
                .strip_prefix('"')
                .and_then(|p| p.split('"').next())
            else {
                continue;
            };
            if !path.starts_with("/v1/") {
                continue;
            }
            let handlers = &args[args.find(',').map_or(args.len(), |i| i + 1)..];
            for method in ["get", "post", "put", "delete", "patch"] {
                let called = handlers.match_indices(&format!("{method}(")).any(|(i, _)| {
                    let before = handlers.as_bytes().get(i.wrapping_sub(1)).copied();
                    before.is_none_or(|b| !b.is_ascii_alphanumeric() && b != b'_')
                });
                if called {
                    routes.push((path.to_owned(), method.to_owned()));
                }
            }
        }
    }
    routes.sort();
    routes.dedup();
    routes
}

/// The extractor the NextChat doors build on, exercised in-process on a route of its own.
#[tokio::test]
async fn app_passwords_authenticate_as_basic_or_bearer_and_nothing_else() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    let api = Api::new(&server);
    let ann = api.register("ann@example.org").await;
    api.register("bob@example.org").await;
    let (_, created) = api
        .post("/v1/app-passwords", ann.token(), json!({"label": "NextChat"}))
        .await;
    let password = created["password"].as_str().expect("password").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();

    let app = Router::new()
        .route(
            "/whoami",
            get(|who: AppPasswordUser| async move { who.user.to_string() }),
        )
        .with_state(server.state.clone());
    let call = |authorization: Option<String>| {
        let app = app.clone();
        async move {
            let mut request = axum::http::Request::get("/whoami");
            if let Some(value) = authorization {
                request = request.header("authorization", value);
            }
            let response = app
                .oneshot(request.body(Body::empty()).expect("request"))
                .await
                .expect("call");
            let status = response.status();
            let has_challenge = response.headers().contains_key("www-authenticate");
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("body");
            (status, has_challenge, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let basic = |user: &str, pass: &str| format!("Basic {}", STANDARD.encode(format!("{user}:{pass}")));

    assert_eq!(
        call(Some(basic("Ann@Example.org", &password))).await,
        (StatusCode::OK, false, ann.user_id.clone())
    );
    assert_eq!(
        call(Some(format!("Bearer {password}"))).await,
        (StatusCode::OK, false, ann.user_id.clone())
    );

    for (name, header) in [
        ("another user's email", Some(basic("bob@example.org", &password))),
        ("the account password", Some(basic("ann@example.org", PASSWORD))),
        ("an access token", Some(format!("Bearer {}", ann.access))),
        ("a tampered password", Some(format!("Bearer {}x", password))),
        ("no header", None),
    ] {
        let (status, challenge, body) = call(header).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}");
        assert!(!challenge, "{name}: no WWW-Authenticate");
        let body: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{name}: JSON body"));
        assert_eq!(error_code(&body), "invalid_app_password", "{name}");
    }
    // ISO-8859-1 credentials decode byte for byte (é is 0xE9, not UTF-8).
    let latin1 = format!(
        "Basic {}",
        STANDARD.encode([b"ann@example.org:".as_slice(), password.as_bytes(), b"\xe9"].concat())
    );
    assert_eq!(call(Some(latin1)).await.0, StatusCode::UNAUTHORIZED);

    api.delete(&format!("/v1/app-passwords/{id}"), ann.token(), None)
        .await;
    assert_eq!(
        call(Some(format!("Bearer {password}"))).await.0,
        StatusCode::UNAUTHORIZED,
        "deleted"
    );
}

/// Sends a failing login claiming `forwarded` as the client address.
async fn login_from(api: &Api, forwarded: &str) -> StatusCode {
    api.http
        .post(format!("{}/v1/auth/login", api.base_url))
        .header("x-forwarded-for", forwarded)
        .json(&json!({"email": "a@example.org", "password": PASSWORD}))
        .send()
        .await
        .expect("send")
        .status()
}

#[tokio::test]
async fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
    let db = TestDb::sqlite();
    let mut config = db.config();
    config.rate_limits = RateLimits {
        ip_per_minute: 1,
        ip_burst: 1,
        ..RateLimits::default()
    };
    let direct = TestServer::start(config.clone()).await;
    let api = Api::new(&direct);
    assert_eq!(login_from(&api, "10.0.0.1").await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        login_from(&api, "10.0.0.2").await,
        StatusCode::TOO_MANY_REQUESTS,
        "a client cannot pick its own address"
    );

    config.trust_proxy_headers = true;
    let db = TestDb::sqlite();
    config.data_dir = db.data_dir();
    let proxied = TestServer::start(config).await;
    let api = Api::new(&proxied);
    assert_eq!(login_from(&api, "10.0.0.1").await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        login_from(&api, "10.0.0.2").await,
        StatusCode::UNAUTHORIZED,
        "another client behind the proxy"
    );
    // The proxy appends what it saw; whatever the client put first does not matter.
    assert_eq!(
        login_from(&api, "1.2.3.4, 10.0.0.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
}
