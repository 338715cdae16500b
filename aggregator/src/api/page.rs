//! The web page: three static assets compiled into the binary (`include_str!`), no JavaScript
//! build step and nothing fetched from elsewhere. The page reads the JSON API; its filters live
//! in the URL's query string (so a link shares the view), and it refreshes itself every 10 s.
//! `Content-Security-Policy: default-src 'self'` keeps it to its own assets.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'";

fn html() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
}

/// `/`, `/incidents`, `/incidents/{id}`, `/silences` and the assets.
pub fn router() -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/incidents") }))
        .route("/incidents", get(|| async { html() }))
        .route("/incidents/{id}", get(|| async { html() }))
        .route("/silences", get(|| async { html() }))
        .route(
            "/assets/app.js",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                    ],
                    APP_JS,
                )
            }),
        )
        .route(
            "/assets/app.css",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/css; charset=utf-8"),
                        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                    ],
                    APP_CSS,
                )
            }),
        )
}
