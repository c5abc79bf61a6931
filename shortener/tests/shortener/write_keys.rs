//! The write key: a create carrying an `x-request-id` that is already stored for the same URL
//! answers the stored link, through either release, even when both copies arrive at once (the
//! proxy resends a create to the other slot when the first died before answering).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::json;
use tokio::task::JoinSet;

use crate::support::*;

on_each_engine!(
    a_create_retried_through_the_other_release_is_stored_once,
    creates_with_one_key_racing_on_two_releases_store_one_link,
    a_key_sent_again_with_another_url_is_another_link,
);

/// Keys raced in the concurrent test, each sent to both releases at once.
const RACED_KEYS: usize = 20;

async fn a_create_retried_through_the_other_release_is_stored_once(engine: Engine) {
    let db = TestDb::new(engine).await;
    let v1 = spawn_app_on(&db, &["--release", "v1"]).await;
    let v2 = spawn_app_on(&db, &["--release", "v2"]).await;
    let url = "https://example.com/retried";
    let create = |app: &TestApp| {
        app.post_json("/api/links", &json!({ "url": url }))
            .header("x-request-id", "req-1")
    };

    let first = send(create(&v1)).await;
    let retry = send(create(&v2)).await;
    let form_retry = send(
        v2.post_form("/your-url", &[("url", url)])
            .header("x-request-id", "req-1"),
    )
    .await;

    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(form_retry.status(), StatusCode::OK);
    let (first, retry) = (json_of(first).await, json_of(retry).await);
    assert_eq!(retry["code"], first["code"]);
    assert_eq!(retry["created_at"], first["created_at"]);
    let code = first["code"].as_str().expect("a code");
    assert!(text_of(form_retry).await.contains(&format!("/{code}")));
    let links = json_of(send(v1.get("/api/links")).await).await;
    assert_eq!(links["links"].as_array().map(Vec::len), Some(1), "{links}");
    assert_eq!(links["links"][0]["release"], "v1", "the first create's row");
}

async fn creates_with_one_key_racing_on_two_releases_store_one_link(engine: Engine) {
    let db = TestDb::new(engine).await;
    let v1 = Arc::new(spawn_app_on(&db, &["--release", "v1"]).await);
    let v2 = Arc::new(spawn_app_on(&db, &["--release", "v2"]).await);

    let mut creates = JoinSet::new();
    for i in 0..RACED_KEYS {
        for app in [&v1, &v2] {
            let app = Arc::clone(app);
            creates.spawn(async move {
                let body = json!({ "url": format!("https://example.com/race/{i}") });
                let res = send(
                    app.post_json("/api/links", &body)
                        .header("x-request-id", format!("race-{i}")),
                )
                .await;
                assert_eq!(res.status(), StatusCode::CREATED, "race-{i}");
                let code = json_of(res).await["code"]
                    .as_str()
                    .expect("a code")
                    .to_owned();
                (i, code)
            });
        }
    }
    let mut codes: HashMap<usize, HashSet<String>> = HashMap::new();
    while let Some(created) = creates.join_next().await {
        let (i, code) = created.expect("a create task");
        codes.entry(i).or_default().insert(code);
    }

    for (i, codes) in &codes {
        assert_eq!(codes.len(), 1, "race-{i} stored under {codes:?}");
    }
    let links = json_of(send(v1.get("/api/links?limit=500")).await).await;
    assert_eq!(
        links["links"].as_array().map(Vec::len),
        Some(RACED_KEYS),
        "one link per key"
    );
}

async fn a_key_sent_again_with_another_url_is_another_link(engine: Engine) {
    let app = spawn_app(engine).await;

    let a = create_with_key(&app, "https://example.com/a", None).await;
    let b = create_with_key(&app, "https://example.com/b", None).await;
    let b_again = create_with_key(&app, "https://example.com/b", None).await;
    let named = create_with_key(&app, "https://example.com/b", Some("named")).await;

    assert_ne!(a, b, "another URL under the same key is another create");
    assert_eq!(b_again, b, "the key now names the second link");
    assert_eq!(
        named, "named",
        "a code asked for that is not the stored one"
    );
    let links = json_of(send(app.get("/api/links")).await).await;
    assert_eq!(links["links"].as_array().map(Vec::len), Some(3), "{links}");
}

/// Creates a link with the key `reused`, asserting the 201, and answers its code.
async fn create_with_key(app: &TestApp, url: &str, code: Option<&str>) -> String {
    let body = json!({ "url": url, "code": code });
    let res = send(
        app.post_json("/api/links", &body)
            .header("x-request-id", "reused"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED, "{url} {code:?}");
    json_of(res).await["code"]
        .as_str()
        .expect("a code")
        .to_owned()
}
