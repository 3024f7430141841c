//! GraphiQL, served entirely by the binary: the page, React, GraphiQL's
//! bundle and stylesheet are embedded at compile time (MIT licensed, see
//! `assets/graphiql/LICENSES.txt`), so the explorer works offline and
//! behind firewalls.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>journey ledger · GraphiQL</title>
<link rel="stylesheet" href="/graphql/assets/graphiql.min.css">
<style>body { margin: 0; } #graphiql { height: 100vh; } #autorun-result:empty { display: none; }</style>
</head>
<body>
<pre id="autorun-result"></pre>
<div id="graphiql">Loading GraphiQL…</div>
<script src="/graphql/assets/react.production.min.js"></script>
<script src="/graphql/assets/react-dom.production.min.js"></script>
<script src="/graphql/assets/graphiql.min.js"></script>
<script src="/graphql/assets/journey-graphiql.js"></script>
</body>
</html>
"#;

/// `GET /graphql`: the GraphiQL page.
pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// The embedded files by name, with their content type.
fn asset(name: &str) -> Option<(&'static [u8], &'static str)> {
    const JS: &str = "text/javascript; charset=utf-8";
    Some(match name {
        "graphiql.min.js" => (
            include_bytes!("../../assets/graphiql/graphiql.min.js").as_slice(),
            JS,
        ),
        "graphiql.min.css" => (
            include_bytes!("../../assets/graphiql/graphiql.min.css").as_slice(),
            "text/css; charset=utf-8",
        ),
        "react.production.min.js" => (
            include_bytes!("../../assets/graphiql/react.production.min.js").as_slice(),
            JS,
        ),
        "react-dom.production.min.js" => (
            include_bytes!("../../assets/graphiql/react-dom.production.min.js").as_slice(),
            JS,
        ),
        "journey-graphiql.js" => (
            include_bytes!("../../assets/graphiql/journey-graphiql.js").as_slice(),
            JS,
        ),
        "LICENSES.txt" => (
            include_bytes!("../../assets/graphiql/LICENSES.txt").as_slice(),
            "text/plain; charset=utf-8",
        ),
        _ => return None,
    })
}

/// `GET /graphql/assets/{name}`: one embedded file.
pub async fn assets(Path(name): Path<String>) -> Response {
    match asset(&name) {
        Some((body, content_type)) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
