//! `x-release` on every response, whatever answered it.

use reqwest::Method;
use serde_json::json;

use crate::support::*;

on_each_engine!(every_response_carries_x_release,);

async fn every_response_carries_x_release(engine: Engine) {
    let app = spawn_app_with(engine, &["--release", "v9-test"]).await;
    app.create("https://example.com/", Some("taken")).await;
    let form = |code: &'static str, url: &'static str| {
        app.post_form("/your-url", &[("url", url), ("code", code)])
    };

    let requests = [
        ("home", app.get("/")),
        ("form ok", form("f1", "https://example.com/")),
        ("form taken", form("taken", "https://example.com/")),
        ("form invalid", form("", "javascript:x")),
        ("form redirect", app.get("/your-url")),
        ("redirect", app.get("/taken")),
        ("404 page", app.get("/missing")),
        ("404 route", app.get("/a/b")),
        (
            "405",
            app.http().request(Method::PUT, app.url("/api/links")),
        ),
        (
            "201",
            app.post_json("/api/links", &json!({ "url": "https://example.com/" })),
        ),
        (
            "400 json",
            app.post_json("/api/links", &json!({ "url": 1 })),
        ),
        ("list", app.get("/api/links")),
        ("get", app.get("/api/links/taken")),
        ("404 json", app.get("/api/links/nope")),
        ("413", app.get("/").body(vec![b'x'; 20 * 1024])),
        ("healthz", app.get("/healthz")),
        ("head", app.http().head(app.url("/"))),
        ("204", app.delete("/api/links/taken")),
    ];
    for (what, request) in requests {
        let res = send(request).await;
        assert_eq!(
            header(&res, "x-release"),
            "v9-test",
            "{what}: {}",
            res.status()
        );
    }
}
