//! The web app's refresh token, kept where page script cannot read it: an `HttpOnly`,
//! `SameSite=Strict` cookie scoped to `/v1/auth` (`Secure` when the server is reached over
//! HTTPS). A client asks for it with `"refresh_cookie": true` at sign-in; refresh and
//! logout then work from the cookie, and their JSON answers carry no refresh token.
//!
//! Cross-site forgery: a `SameSite=Strict` cookie is not sent on requests from other sites,
//! and the server's CORS answers never allow credentials. Belt and braces, a request that
//! uses the cookie must come from this server's own origin (its `Origin` header names the
//! `Host` it was sent to, or the public URL).

use crate::config::Config;
use crate::error::ApiError;
use axum::http::header::{COOKIE, HOST, ORIGIN};
use axum::http::{HeaderMap, HeaderValue};
use nextsync_core::secret::Secret;

/// The cookie's name. A wire contract of the web app.
pub const COOKIE_NAME: &str = "nextsync_refresh";
const COOKIE_PATH: &str = "/v1/auth";

/// `Set-Cookie` holding `token`, living as long as a refresh token does.
pub fn set(config: &Config, token: &Secret) -> Result<HeaderValue, ApiError> {
    let max_age = config.refresh_token_ttl.as_secs();
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={}; Path={}{COOKIE_PATH}; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        token.expose(),
        config.path_prefix(),
        secure(config)
    ))
    .map_err(ApiError::internal)
}

/// `Set-Cookie` that removes the cookie.
pub fn clear(config: &Config) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}=; Path={}{COOKIE_PATH}; Max-Age=0; HttpOnly; SameSite=Strict{}",
        config.path_prefix(),
        secure(config)
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("nextsync_refresh=; Max-Age=0"))
}

fn secure(config: &Config) -> &'static str {
    if config.tls.is_some() || config.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

/// The refresh token from the cookie, for a request from this server's own origin; `None`
/// when there is no cookie.
pub fn presented(headers: &HeaderMap, config: &Config) -> Result<Option<Secret>, ApiError> {
    let Some(token) = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_owned())
        .filter(|value| !value.is_empty())
    else {
        return Ok(None);
    };
    if !same_origin(headers, config) {
        return Err(ApiError::forbidden(
            "cross_origin",
            "the sign-in cookie is only accepted from this server's own pages",
        ));
    }
    Ok(Some(Secret::new(token)))
}

/// The request's `Origin` is the server itself: the host it was sent to, or the public URL.
fn same_origin(headers: &HeaderMap, config: &Config) -> bool {
    let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let authority = |url: &str| {
        url.split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or("").to_ascii_lowercase())
    };
    let Some(origin_authority) = authority(origin) else {
        return false;
    };
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    host.as_deref() == Some(origin_authority.as_str())
        || authority(&config.public_url).as_deref() == Some(origin_authority.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    #[test]
    fn the_cookie_counts_only_from_the_servers_own_origin() {
        let config = Config::with_data_dir("/tmp/x".into());
        let cookie = "theme=dark; nextsync_refresh=nsr_abc";
        let ok = headers(&[
            ("cookie", cookie),
            ("host", "sync.example.org"),
            ("origin", "https://sync.example.org"),
        ]);
        assert_eq!(
            presented(&ok, &config)
                .expect("accepted")
                .map(|t| t.expose().to_owned()),
            Some("nsr_abc".to_owned())
        );
        for bad in [
            headers(&[
                ("cookie", cookie),
                ("host", "sync.example.org"),
                ("origin", "https://evil.example"),
            ]),
            headers(&[("cookie", cookie), ("host", "sync.example.org")]),
            headers(&[
                ("cookie", cookie),
                ("host", "sync.example.org"),
                ("origin", "null"),
            ]),
        ] {
            assert!(presented(&bad, &config).is_err(), "{bad:?}");
        }
        assert!(
            presented(&headers(&[("host", "x")]), &config)
                .expect("no cookie")
                .is_none()
        );
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_over_https() {
        let mut config = Config::with_data_dir("/tmp/x".into());
        let set = set(&config, &Secret::new("nsr_abc")).expect("header");
        let set = set.to_str().expect("ascii");
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/v1/auth"));
        assert!(!set.contains("Secure"), "plain HTTP on loopback: {set}");
        config.public_url = "https://sync.example.org/nextsync".into();
        let set = super::set(&config, &Secret::new("nsr_abc")).expect("header");
        let set = set.to_str().expect("ascii");
        assert!(
            set.contains("; Secure") && set.contains("Path=/nextsync/v1/auth"),
            "{set}"
        );
    }
}
