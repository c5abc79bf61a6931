//! The short link names the address the user came through.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

on_each_engine!(
    the_host_header_gives_the_short_link_with_http,
    forwarded_host_and_proto_win_first_value_first,
    a_forwarded_port_is_kept_and_proto_alone_changes_the_scheme,
    garbage_forwarded_values_are_ignored,
);

async fn the_host_header_gives_the_short_link_with_http(engine: Engine) {
    let app = spawn_app(engine).await;

    let res = send(
        app.post_json(
            "/api/links",
            &json!({ "url": "https://example.com/", "code": "h" }),
        )
        .header("host", "Sho.RT:8081"),
    )
    .await;

    assert_eq!(json_of(res).await["short_url"], "http://sho.rt:8081/h");
}

async fn forwarded_host_and_proto_win_first_value_first(engine: Engine) {
    let app = spawn_app(engine).await;
    let forwarded = |request: reqwest::RequestBuilder| {
        request
            .header("x-forwarded-host", "go.example, proxy.internal:8080")
            .header("x-forwarded-proto", "https, http")
    };

    let created = send(forwarded(app.post_json(
        "/api/links",
        &json!({ "url": "https://example.com/", "code": "fw" }),
    )))
    .await;
    let shown = send(forwarded(app.get("/api/links/fw"))).await;
    let listed = send(forwarded(app.get("/api/links"))).await;
    let page = send(forwarded(app.post_form(
        "/your-url",
        &[("url", "https://example.com/"), ("code", "fw2")],
    )))
    .await;

    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(json_of(created).await["short_url"], "https://go.example/fw");
    assert_eq!(json_of(shown).await["short_url"], "https://go.example/fw");
    assert_eq!(
        json_of(listed).await["links"][0]["short_url"],
        "https://go.example/fw"
    );
    assert!(text_of(page).await.contains("https://go.example/fw2"));
}

async fn a_forwarded_port_is_kept_and_proto_alone_changes_the_scheme(engine: Engine) {
    let app = spawn_app(engine).await;

    let with_port = send(
        app.post_json(
            "/api/links",
            &json!({ "url": "https://example.com/", "code": "p" }),
        )
        .header("x-forwarded-host", "go.example:8443"),
    )
    .await;
    let proto_only = send(
        app.post_json(
            "/api/links",
            &json!({ "url": "https://example.com/", "code": "s" }),
        )
        .header("host", "sho.rt")
        .header("x-forwarded-proto", "HTTPS"),
    )
    .await;

    assert_eq!(
        json_of(with_port).await["short_url"],
        "http://go.example:8443/p"
    );
    assert_eq!(json_of(proto_only).await["short_url"], "https://sho.rt/s");
}

async fn garbage_forwarded_values_are_ignored(engine: Engine) {
    let app = spawn_app(engine).await;

    let res = send(
        app.post_json(
            "/api/links",
            &json!({ "url": "https://example.com/", "code": "g" }),
        )
        .header("host", "sho.rt")
        .header("x-forwarded-host", "<script>alert(1)</script>")
        .header("x-forwarded-proto", "javascript"),
    )
    .await;

    assert_eq!(json_of(res).await["short_url"], "http://sho.rt/g");
}
