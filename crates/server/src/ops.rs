//! Operator endpoints: `/healthz` (the process answers), `/readyz` (the store answers too),
//! `/metrics` (Prometheus) and `/v1/openapi.json` (generated from the handlers' annotations);
//! and `/v1/server`, what a sign-in page needs to know (is registration open).

use crate::config::Registration;
use crate::error::ApiError;
use crate::extract::Json;
use crate::state::AppState;
use crate::{account, auth, health, history, metrics, nextchat, sync};
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use nextsync_core::api::ServerInfo;
use serde_json::{Value, json};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::render_metrics))
        .route("/v1/openapi.json", get(openapi_json))
        .route("/v1/server", get(server_info))
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the store answers. `fanout` says whether other instances' changes arrive live
/// (`live`), or only by re-reading the store every few seconds while Redis is away
/// (`degraded`): the instance keeps serving either way.
async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.store.ping().await?;
    let fanout = if state.bus.is_healthy() {
        "live"
    } else {
        "degraded"
    };
    Ok(Json(
        json!({ "status": "ready", "store": state.store.backend(), "fanout": fanout }),
    ))
}

#[utoipa::path(get, path = "/v1/server", tag = "ops",
    responses((status = 200, description = "public facts about this server", body = ServerInfo)))]
pub async fn server_info(State(state): State<AppState>) -> Json<ServerInfo> {
    Json(ServerInfo {
        registration: match state.config.registration {
            Registration::Open => "open",
            Registration::Closed => "closed",
        }
        .to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[derive(OpenApi)]
#[openapi(
    info(title = "nextsync", description = "Self-hosted cross-device sync for AI chat clients."),
    paths(
        server_info,
        auth::handlers::register,
        auth::handlers::login,
        auth::handlers::refresh,
        auth::handlers::logout,
        auth::handlers::forgot_password,
        auth::handlers::reset_password,
        auth::handlers::change_password,
        account::get_me,
        account::delete_me,
        account::list_devices,
        account::revoke_device,
        account::create_app_password,
        account::list_app_passwords,
        account::delete_app_password,
        sync::push_changes,
        sync::pull_changes,
        sync::recent_first,
        health::digests,
        health::bucket_digests,
        health::bucket_records,
        sync::list_conflicts,
        sync::resolve_conflict,
        sync::get_record,
        sync::put_record,
        sync::delete_record,
        history::list_trash,
        history::restore_from_trash,
        history::purge_one,
        history::purge_trash,
        history::restore_to_moment,
        nextchat::get_settings,
        nextchat::put_settings,
        nextchat::list_snapshots,
        nextchat::restore_snapshot,
        nextchat::export,
        nextchat::import,
    ),
    modifiers(&BearerJwt),
    tags(
        (name = "auth", description = "Accounts, sign-in, tokens and passwords"),
        (name = "account", description = "The signed-in user's account, devices and app passwords"),
        (name = "sync", description = "Push, pull and conflicts: the change feed of one account"),
        (name = "records", description = "Single records with optimistic locking (ETag / If-Match)"),
        (name = "trash", description = "The trash and point-in-time restore"),
        (name = "nextchat", description = "NextChat's doors: settings, kept uploads, export and import"),
    )
)]
#[derive(Debug)]
pub struct ApiDoc;

struct BearerJwt;

impl Modify for BearerJwt {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}
