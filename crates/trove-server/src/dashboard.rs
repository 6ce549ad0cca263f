//! The dashboard the control plane serves at `/`: the files esbuild builds
//! from the repository's `dashboard/` folder (its TypeScript and the
//! TypeScript SDK's), committed in `src/dashboard/` and embedded here, so
//! `cargo build` needs no Node and the page needs no network
//! (decision 0045). `cargo xtask test` rebuilds them and fails if the
//! committed ones differ.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The page: it loads `/dashboard/app.js` and `/dashboard/app.css`.
const INDEX_HTML: &str = include_str!("dashboard/index.html");
/// Every file under `/dashboard/`, by name, with its media type.
const FILES: [(&str, &str, &str); 2] = [
    ("app.js", "text/javascript; charset=utf-8", include_str!("dashboard/app.js")),
    ("app.css", "text/css; charset=utf-8", include_str!("dashboard/app.css")),
];

fn with_type(media: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let headers = r.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    // The files change with the binary only.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `GET /`: the page; its views are in the fragment (`/#/hunts/7`).
pub(crate) async fn index() -> Response {
    with_type("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /dashboard/{file}`.
pub(crate) async fn file(name: Result<Path<String>, axum::extract::rejection::PathRejection>) -> Response {
    let found = name.ok().and_then(|Path(name)| FILES.iter().find(|(n, _, _)| *n == name));
    match found {
        Some(&(_, media, body)) => with_type(media, body),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": "not_found", "message": "no such dashboard file"})),
        )
            .into_response(),
    }
}
