//! The `GET /findings` route, merged into the metrics server's router.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::access::Access;
use super::query::FindingsQuery;
use super::RecentFindings;

#[derive(Clone)]
struct FindingsState {
    access: Arc<Access>,
    recent: Arc<RecentFindings>,
}

/// The route, or `None` when the endpoint is off (it is then a 404 like any unknown path).
pub fn router(access: Access, recent: Arc<RecentFindings>) -> Option<Router> {
    if matches!(access, Access::Off(_)) {
        return None;
    }
    Some(
        Router::new()
            .route("/findings", get(findings))
            .with_state(FindingsState {
                access: Arc::new(access),
                recent,
            }),
    )
}

/// Findings are not to be kept by caches on the way.
const NO_STORE: (header::HeaderName, HeaderValue) =
    (header::CACHE_CONTROL, HeaderValue::from_static("no-store"));

async fn findings(
    State(s): State<FindingsState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    // Checked before the query is even parsed: a refusal depends on nothing else.
    if !s.access.allows(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [
                (
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"credwatch\""),
                ),
                NO_STORE,
            ],
        )
            .into_response();
    }
    let q = match FindingsQuery::parse(query.as_deref(), s.recent.capacity().max(1)) {
        Ok(q) => q,
        Err(e) => return json(StatusCode::BAD_REQUEST, &serde_json::json!({ "error": e })),
    };
    let snapshot = s.recent.newest_first();
    json(StatusCode::OK, &q.answer(snapshot.iter().map(|f| &**f)))
}

/// A JSON answer (axum's `Json` needs a feature this build does without).
fn json(status: StatusCode, body: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                NO_STORE,
            ],
            bytes,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
