//! The JSON API: create, read, delete, list.

use reqwest::StatusCode;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::support::*;

on_each_engine!(
    create_answers_201_with_every_field,
    create_without_a_code_generates_seven_base62_characters,
    create_with_a_taken_code_is_409,
    get_shows_the_link_with_clicks_and_release,
    get_of_an_unknown_code_is_a_404_json,
    delete_answers_204_and_the_link_is_gone,
    list_paginates_in_code_order,
    list_defaults_to_50_per_page,
    list_refuses_bad_limits_and_cursors,
    unknown_api_routes_and_methods_answer_json,
);

async fn create_answers_201_with_every_field(engine: Engine) {
    let app = spawn_app(engine).await;
    let before = OffsetDateTime::now_utc().unix_timestamp();

    let res = send(app.post_json(
        "/api/links",
        &json!({ "url": "https://example.com/a", "code": "api-1" }),
    ))
    .await;

    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(header(&res, "location"), "/api/links/api-1");
    let body = json_of(res).await;
    let fields = body.as_object().expect("an object");
    assert_eq!(fields.len(), 4, "{body}");
    assert_eq!(body["code"], "api-1");
    assert_eq!(body["short_url"], format!("http://{}/api-1", app.addr));
    assert_eq!(body["url"], "https://example.com/a");
    let created = OffsetDateTime::parse(body["created_at"].as_str().expect("a string"), &Rfc3339)
        .expect("RFC 3339");
    assert_eq!(created.offset(), time::UtcOffset::UTC);
    assert!(created.unix_timestamp() >= before - 1);
}

async fn create_without_a_code_generates_seven_base62_characters(engine: Engine) {
    let app = spawn_app(engine).await;

    for body in [
        json!({ "url": "https://example.com/" }),
        json!({ "url": "https://example.com/", "code": null }),
        json!({ "url": "https://example.com/", "code": "" }),
    ] {
        let res = send(app.post_json("/api/links", &body)).await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let code = json_of(res).await["code"]
            .as_str()
            .expect("a code")
            .to_owned();
        assert_eq!(code.len(), 7);
        assert!(code.chars().all(|c| c.is_ascii_alphanumeric()), "{code}");
    }
}

async fn create_with_a_taken_code_is_409(engine: Engine) {
    let app = spawn_app(engine).await;
    app.create("https://example.com/1", Some("dup")).await;

    let res = send(app.post_json(
        "/api/links",
        &json!({ "url": "https://example.com/2", "code": "dup" }),
    ))
    .await;

    assert!(error_of(res, StatusCode::CONFLICT).await.contains("dup"));
}

async fn get_shows_the_link_with_clicks_and_release(engine: Engine) {
    let app = spawn_app_with(engine, &["--release", "v3"]).await;
    let created = app.create("https://example.com/x", Some("seen")).await;
    send(app.get("/seen")).await;

    let res = send(app.get("/api/links/seen")).await;

    assert_eq!(res.status(), StatusCode::OK);
    let body = json_of(res).await;
    assert_eq!(body.as_object().expect("an object").len(), 6, "{body}");
    assert_eq!(body["code"], "seen");
    assert_eq!(body["short_url"], created["short_url"]);
    assert_eq!(body["url"], "https://example.com/x");
    assert_eq!(body["created_at"], created["created_at"]);
    assert_eq!(body["clicks"], 1);
    assert_eq!(body["release"], "v3");
}

async fn get_of_an_unknown_code_is_a_404_json(engine: Engine) {
    let app = spawn_app(engine).await;

    for path in ["/api/links/missing", "/api/links/not.a.code"] {
        let message = error_of(send(app.get(path)).await, StatusCode::NOT_FOUND).await;
        assert!(message.contains("no link"), "{message}");
    }
}

async fn delete_answers_204_and_the_link_is_gone(engine: Engine) {
    let app = spawn_app(engine).await;
    app.create("https://example.com/", Some("bye")).await;

    let res = send(app.delete("/api/links/bye")).await;

    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(text_of(res).await.is_empty());
    assert_eq!(
        send(app.get("/api/links/bye")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(send(app.get("/bye")).await.status(), StatusCode::NOT_FOUND);
    error_of(
        send(app.delete("/api/links/bye")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

async fn list_paginates_in_code_order(engine: Engine) {
    let app = spawn_app(engine).await;
    let mut expected: Vec<String> = (0..23).rev().map(|i| format!("l{i:02}")).collect();
    for code in &expected {
        app.create(&format!("https://example.com/{code}"), Some(code))
            .await;
    }
    expected.sort();

    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut after = String::new();
    for _ in 0..10 {
        let res = send(app.get(&format!("/api/links?limit=10&after={after}"))).await;
        assert_eq!(res.status(), StatusCode::OK);
        let page = json_of(res).await;
        let links = page["links"].as_array().expect("a links array");
        pages.push(links.len());
        for link in links {
            seen.push(link["code"].as_str().expect("a code").to_owned());
            assert_eq!(link["clicks"], 0);
            assert_eq!(link["release"], "v1");
        }
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }

    assert_eq!(pages, [10, 10, 3]);
    assert_eq!(seen, expected);
}

async fn list_defaults_to_50_per_page(engine: Engine) {
    let app = spawn_app(engine).await;
    for i in 0..51 {
        app.create(&format!("https://example.com/{i}"), None).await;
    }

    let first = json_of(send(app.get("/api/links")).await).await;
    let next = first["next"].as_str().expect("a next cursor");
    let second = json_of(send(app.get(&format!("/api/links?after={next}"))).await).await;

    assert_eq!(first["links"].as_array().map(Vec::len), Some(50));
    assert_eq!(second["links"].as_array().map(Vec::len), Some(1));
    assert!(second["next"].is_null());
}

async fn list_refuses_bad_limits_and_cursors(engine: Engine) {
    let app = spawn_app(engine).await;

    for query in ["limit=0", "limit=501", "limit=-1", "limit=ten", "limit=1.5"] {
        let res = send(app.get(&format!("/api/links?{query}"))).await;
        let message = error_of(res, StatusCode::BAD_REQUEST).await;
        assert!(message.contains("limit"), "{query}: {message}");
    }
    let res = send(app.get("/api/links?after=a%20b")).await;
    assert!(
        error_of(res, StatusCode::BAD_REQUEST)
            .await
            .contains("after")
    );
    assert_eq!(
        send(app.get("/api/links?limit=500")).await.status(),
        StatusCode::OK
    );
}

async fn unknown_api_routes_and_methods_answer_json(engine: Engine) {
    let app = spawn_app(engine).await;

    error_of(send(app.get("/api/nothing")).await, StatusCode::NOT_FOUND).await;
    let res = send(app.http().put(app.url("/api/links"))).await;
    assert!(
        error_of(res, StatusCode::METHOD_NOT_ALLOWED)
            .await
            .contains("PUT")
    );
}
