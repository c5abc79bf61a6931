//! The routes of the original Flask application: `/`, `POST /your-url`, `/{code}`.

use reqwest::StatusCode;

use crate::support::*;

on_each_engine!(
    the_home_page_is_the_form,
    posting_the_form_shows_the_full_short_link,
    posting_the_form_without_a_code_generates_one,
    a_taken_code_answers_the_form_again_with_409,
    invalid_input_answers_the_form_again_with_400,
    a_short_link_redirects_with_302_and_counts_the_click,
    an_unknown_code_is_a_404_page,
    getting_the_form_target_goes_home,
);

async fn the_home_page_is_the_form(engine: Engine) {
    let app = spawn_app(engine).await;

    let res = send(app.get("/")).await;

    assert_eq!(res.status(), StatusCode::OK);
    assert!(header(&res, "content-type").starts_with("text/html"));
    let body = text_of(res).await;
    for needle in [
        r#"action="/your-url""#,
        r#"method="post""#,
        r#"name="url""#,
        r#"name="code""#,
    ] {
        assert!(body.contains(needle), "missing {needle} in {body}");
    }
}

async fn posting_the_form_shows_the_full_short_link(engine: Engine) {
    let app = spawn_app(engine).await;

    let res = send(app.post_form(
        "/your-url",
        &[("url", "https://example.com/flask"), ("code", "flask")],
    ))
    .await;

    assert_eq!(res.status(), StatusCode::OK);
    assert!(header(&res, "content-type").starts_with("text/html"));
    let body = text_of(res).await;
    assert!(
        body.contains(&format!("http://{}/flask", app.addr)),
        "{body}"
    );
    assert!(body.contains("https://example.com/flask"));
}

async fn posting_the_form_without_a_code_generates_one(engine: Engine) {
    let app = spawn_app(engine).await;

    let missing = send(app.post_form("/your-url", &[("url", "https://example.com/1")])).await;
    let empty = send(app.post_form(
        "/your-url",
        &[("url", "https://example.com/2"), ("code", "")],
    ))
    .await;

    assert_eq!(missing.status(), StatusCode::OK);
    assert_eq!(empty.status(), StatusCode::OK);
    let pages = [text_of(missing).await, text_of(empty).await].concat();
    let list = json_of(send(app.get("/api/links")).await).await;
    let links = list["links"].as_array().expect("a links array");
    assert_eq!(links.len(), 2);
    for link in links {
        let code = link["code"].as_str().expect("a code");
        assert_eq!(code.len(), 7);
        assert!(pages.contains(&format!("http://{}/{code}", app.addr)));
    }
}

async fn a_taken_code_answers_the_form_again_with_409(engine: Engine) {
    let app = spawn_app(engine).await;
    app.create("https://example.com/first", Some("taken")).await;

    let res = send(app.post_form(
        "/your-url",
        &[("url", "https://example.com/second"), ("code", "taken")],
    ))
    .await;

    assert_eq!(res.status(), StatusCode::CONFLICT);
    let body = text_of(res).await;
    assert!(
        body.contains(r#"action="/your-url""#),
        "the form again: {body}"
    );
    assert!(body.contains("already taken"), "{body}");
    assert!(
        body.contains("https://example.com/second"),
        "the input is kept"
    );
}

async fn invalid_input_answers_the_form_again_with_400(engine: Engine) {
    let app = spawn_app(engine).await;

    let bad_url = send(app.post_form("/your-url", &[("url", "javascript:alert(1)")])).await;
    let bad_code = send(app.post_form(
        "/your-url",
        &[("url", "https://example.com/"), ("code", "no spaces")],
    ))
    .await;

    for (res, message) in [(bad_url, "not allowed"), (bad_code, "code contains")] {
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert!(header(&res, "content-type").starts_with("text/html"));
        let body = text_of(res).await;
        assert!(
            body.contains(r#"action="/your-url""#),
            "the form again: {body}"
        );
        assert!(body.contains(message), "{body}");
    }
}

async fn a_short_link_redirects_with_302_and_counts_the_click(engine: Engine) {
    let app = spawn_app(engine).await;
    app.create("https://example.com/target?q=1", Some("go"))
        .await;

    for _ in 0..2 {
        let res = send(app.get("/go")).await;
        assert_eq!(res.status(), StatusCode::FOUND);
        assert_eq!(header(&res, "location"), "https://example.com/target?q=1");
    }

    let link = json_of(send(app.get("/api/links/go")).await).await;
    assert_eq!(link["clicks"], 2);
}

async fn an_unknown_code_is_a_404_page(engine: Engine) {
    let app = spawn_app(engine).await;

    for path in ["/nope", "/not.a.code", "/api", "/a/b/c"] {
        let res = send(app.get(path)).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(
            header(&res, "content-type").starts_with("text/html"),
            "{path}"
        );
        assert!(text_of(res).await.contains("<html"), "{path}");
    }
}

async fn getting_the_form_target_goes_home(engine: Engine) {
    let app = spawn_app(engine).await;

    let res = send(app.get("/your-url")).await;

    assert!(res.status().is_redirection());
    assert_eq!(header(&res, "location"), "/");
}
