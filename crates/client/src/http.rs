//! The `/v1` HTTP API as the client calls it: typed requests, and every failure turned into
//! an [`Error`] that says whether to retry ([`Error::is_transient`]).

use crate::error::Error;
use nextsync_core::api::{BucketDigests, BucketRecords, DigestResponse};
use nextsync_core::api::{
    ConflictList, ErrorBody, LoginRequest, MergeSummary, PullResponse, PushRequest, PushResponse,
    RecentResponse, RecordView, RefreshRequest, ResolveRequest, Secret, TokenResponse,
};
use nextsync_core::api::{
    DeviceKind, MutationIn, RestoreRequest, RestoreResponse, TrashPage, TrashPurged, TrashRestored,
};
use nextsync_core::ids::Seq;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Longest an ordinary request may take; a long-poll adds its wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Http {
    client: reqwest::Client,
    /// Without a trailing slash; may carry a path (a server under a sub-path).
    base: String,
}

impl Http {
    pub fn new(server: &str) -> Result<Self, Error> {
        let base = server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Protocol(format!(
                "{server:?} is not a server URL (http:// or https://)"
            )));
        }
        // TLS needs a process-wide crypto provider; use ring unless the application chose one.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("nextsync-client/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| Error::Protocol(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self { client, base })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The live feed's URL (`ws://` or `wss://`).
    pub fn socket_url(&self) -> String {
        let rest = self
            .base
            .strip_prefix("https://")
            .map(|r| format!("wss://{r}"))
            .or_else(|| self.base.strip_prefix("http://").map(|r| format!("ws://{r}")))
            .unwrap_or_default();
        format!("{rest}/v1/sync/ws")
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: Option<&Secret>,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, Error> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .timeout(timeout);
        if let Some(token) = token {
            request = request.bearer_auth(token.expose());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        answer(request, path).await
    }

    pub async fn login(
        &self,
        email: &str,
        password: Secret,
        device_name: &str,
    ) -> Result<TokenResponse, Error> {
        let body = LoginRequest {
            email: email.to_owned(),
            password,
            device_name: Some(device_name.to_owned()),
            device_kind: DeviceKind::Cli,
            refresh_cookie: false,
        };
        self.call(Method::POST, "/v1/auth/login", None, Some(&body), REQUEST_TIMEOUT)
            .await
    }

    pub async fn refresh(&self, refresh_token: Secret) -> Result<TokenResponse, Error> {
        let body = RefreshRequest {
            refresh_token: Some(refresh_token),
        };
        self.call(
            Method::POST,
            "/v1/auth/refresh",
            None,
            Some(&body),
            REQUEST_TIMEOUT,
        )
        .await
    }

    pub async fn logout(&self, token: &Secret) -> Result<(), Error> {
        self.call::<(), serde_json::Value>(
            Method::POST,
            "/v1/auth/logout",
            Some(token),
            None,
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }

    pub async fn push(&self, token: &Secret, mutations: Vec<MutationIn>) -> Result<PushResponse, Error> {
        let body = PushRequest { mutations };
        self.call(
            Method::POST,
            "/v1/sync/push",
            Some(token),
            Some(&body),
            REQUEST_TIMEOUT,
        )
        .await
    }

    /// One page of the feed after `since`; with `wait`, a long-poll of at most that long.
    pub async fn pull(
        &self,
        token: &Secret,
        since: Option<&str>,
        limit: u32,
        wait: Option<Duration>,
    ) -> Result<PullResponse, Error> {
        let mut path = format!("/v1/sync/pull?limit={limit}");
        if let Some(since) = since {
            path.push_str("&since=");
            path.push_str(since); // base64url: nothing to escape
        }
        let mut timeout = REQUEST_TIMEOUT;
        if let Some(wait) = wait {
            path.push_str(&format!("&wait={}", wait.as_secs()));
            timeout += wait;
        }
        self.call::<(), _>(Method::GET, &path, Some(token), None, timeout)
            .await
    }

    /// The newest live records of `collection` with their children (`GET /v1/sync/recent`).
    pub async fn recent(
        &self,
        token: &Secret,
        collection: &str,
        limit: u32,
        children: Option<(&str, &str)>,
    ) -> Result<RecentResponse, Error> {
        let mut path = format!(
            "/v1/sync/recent?collection={}&limit={limit}",
            encode_segment(collection)
        );
        if let Some((children, link)) = children {
            path.push_str(&format!(
                "&children={}&link={}",
                encode_segment(children),
                encode_segment(link)
            ));
        }
        self.call::<(), _>(Method::GET, &path, Some(token), None, REQUEST_TIMEOUT)
            .await
    }

    /// Uploads a NextChat backup file for the server to merge (`POST /v1/import`), calling
    /// `sent` with the bytes sent so far as the body goes out.
    pub async fn import(
        &self,
        token: &Secret,
        body: bytes::Bytes,
        sent: std::sync::Arc<dyn Fn(u64) + Send + Sync>,
    ) -> Result<MergeSummary, Error> {
        const CHUNK: usize = 256 * 1024;
        let total = body.len();
        let chunks: Vec<bytes::Bytes> = (0..total)
            .step_by(CHUNK)
            .map(|at| body.slice(at..total.min(at + CHUNK)))
            .collect();
        let mut done = 0u64;
        let stream = futures::stream::iter(chunks.into_iter().map(move |chunk| {
            done += chunk.len() as u64;
            sent(done);
            Ok::<_, std::io::Error>(chunk)
        }));
        let request = self
            .client
            .post(format!("{}/v1/import?format=nextchat", self.base))
            .bearer_auth(token.expose())
            .header("content-type", "application/json")
            .header("content-length", total)
            .body(reqwest::Body::wrap_stream(stream))
            .timeout(REQUEST_TIMEOUT * 10);
        answer(request, "/v1/import").await
    }

    pub async fn record(&self, token: &Secret, collection: &str, id: &str) -> Result<RecordView, Error> {
        let path = format!(
            "/v1/records/{}/{}",
            encode_segment(collection),
            encode_segment(id)
        );
        self.call::<(), _>(Method::GET, &path, Some(token), None, REQUEST_TIMEOUT)
            .await
    }

    pub async fn conflicts(&self, token: &Secret) -> Result<ConflictList, Error> {
        self.call::<(), _>(Method::GET, "/v1/conflicts", Some(token), None, REQUEST_TIMEOUT)
            .await
    }

    pub async fn resolve(
        &self,
        token: &Secret,
        conflict_id: &str,
        body: &ResolveRequest,
    ) -> Result<(), Error> {
        let path = format!("/v1/conflicts/{}/resolve", encode_segment(conflict_id));
        self.call::<_, serde_json::Value>(Method::POST, &path, Some(token), Some(body), REQUEST_TIMEOUT)
            .await
            .map(drop)
    }
}

impl Http {
    // ---- sync health ----

    pub async fn digest(&self, token: &Secret) -> Result<DigestResponse, Error> {
        self.call::<(), _>(Method::GET, "/v1/sync/digest", Some(token), None, REQUEST_TIMEOUT)
            .await
    }

    pub async fn bucket_digests(
        &self,
        token: &Secret,
        collection: &str,
        buckets: u32,
    ) -> Result<BucketDigests, Error> {
        let path = format!("/v1/sync/digest/{}?buckets={buckets}", encode_segment(collection));
        self.call::<(), _>(Method::GET, &path, Some(token), None, REQUEST_TIMEOUT)
            .await
    }

    pub async fn bucket_records(
        &self,
        token: &Secret,
        collection: &str,
        buckets: u32,
        wanted: &[u32],
    ) -> Result<BucketRecords, Error> {
        let list: Vec<String> = wanted.iter().map(u32::to_string).collect();
        let path = format!(
            "/v1/sync/digest/{}/records?buckets={buckets}&bucket={}",
            encode_segment(collection),
            list.join(",")
        );
        self.call::<(), _>(Method::GET, &path, Some(token), None, REQUEST_TIMEOUT)
            .await
    }

    // ---- the trash and point-in-time restore ----

    pub async fn trash(
        &self,
        token: &Secret,
        collection: Option<&str>,
        before: Option<Seq>,
    ) -> Result<TrashPage, Error> {
        let mut path = String::from("/v1/trash?limit=500");
        if let Some(collection) = collection {
            path.push_str(&format!("&collection={}", encode_segment(collection)));
        }
        if let Some(before) = before {
            path.push_str(&format!("&before={before}"));
        }
        self.call::<(), _>(Method::GET, &path, Some(token), None, REQUEST_TIMEOUT)
            .await
    }

    pub async fn restore_from_trash(
        &self,
        token: &Secret,
        collection: &str,
        id: &str,
        together: bool,
    ) -> Result<TrashRestored, Error> {
        let path = format!(
            "/v1/trash/{}/{}/restore?together={together}",
            encode_segment(collection),
            encode_segment(id)
        );
        self.call::<(), _>(Method::POST, &path, Some(token), None, REQUEST_TIMEOUT)
            .await
    }

    /// Purges one record (`Some((collection, id))`) or the whole trash (of `collection`).
    pub async fn purge_trash(
        &self,
        token: &Secret,
        record: Option<(&str, &str)>,
        collection: Option<&str>,
    ) -> Result<TrashPurged, Error> {
        let path = match (record, collection) {
            (Some((collection, id)), _) => {
                format!("/v1/trash/{}/{}", encode_segment(collection), encode_segment(id))
            }
            (None, Some(collection)) => format!("/v1/trash?collection={}", encode_segment(collection)),
            (None, None) => "/v1/trash".to_owned(),
        };
        self.call::<(), _>(Method::DELETE, &path, Some(token), None, REQUEST_TIMEOUT)
            .await
    }

    pub async fn restore_to(&self, token: &Secret, body: &RestoreRequest) -> Result<RestoreResponse, Error> {
        // A large account's restore writes many records: give it the import's time.
        self.call(
            Method::POST,
            "/v1/restore",
            Some(token),
            Some(body),
            REQUEST_TIMEOUT * 10,
        )
        .await
    }
}

/// Sends `request`; a success is its JSON body (an empty one reads as `null`), anything
/// else an [`Error`].
async fn answer<T: DeserializeOwned>(request: reqwest::RequestBuilder, path: &str) -> Result<T, Error> {
    let response = request
        .send()
        .await
        .map_err(|e| Error::Unreachable(describe(&e)))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| Error::Unreachable(describe(&e)))?;
    if status.is_success() {
        let body: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        return serde_json::from_slice(body).map_err(|e| Error::Protocol(format!("{path}: {e}")));
    }
    Err(server_error(status, &bytes))
}

/// The server's error shape, or a description of whatever answered instead (a proxy's page).
pub(crate) fn server_error(status: StatusCode, body: &[u8]) -> Error {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(body) => Error::Server {
            status: status.as_u16(),
            code: body.error.code,
            message: body.error.message,
        },
        Err(_) if status.is_server_error() || status == StatusCode::NOT_FOUND => Error::Unreachable(format!(
            "HTTP {status} without nextsync's error shape (a proxy, or not a nextsync server)"
        )),
        Err(_) => Error::Protocol(format!("HTTP {status} without nextsync's error shape")),
    }
}

fn describe(e: &reqwest::Error) -> String {
    // reqwest's own message is terse ("error sending request"); its sources say why.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Percent-encodes a path segment (record ids may hold anything printable).
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_urls_follow_the_scheme_and_keep_a_sub_path() {
        let http = Http::new("https://example.org/sync/").expect("url");
        assert_eq!(http.socket_url(), "wss://example.org/sync/v1/sync/ws");
        let http = Http::new("http://127.0.0.1:8080").expect("url");
        assert_eq!(http.socket_url(), "ws://127.0.0.1:8080/v1/sync/ws");
        assert!(Http::new("ftp://x").is_err());
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(encode_segment("a b/c?é"), "a%20b%2Fc%3F%C3%A9");
    }

    #[test]
    fn a_proxy_page_is_unreachable_and_an_error_shape_is_the_servers() {
        let e = server_error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert!(e.is_transient());
        let e = server_error(
            StatusCode::BAD_REQUEST,
            br#"{"error":{"code":"invalid_hlc","message":"no"}}"#,
        );
        assert_eq!(e.code(), Some("invalid_hlc"));
        assert!(!e.is_transient());
    }
}
