//! Every input rule: refused URLs, codes and bodies answer a 4xx naming the problem, never a 500.

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

on_each_engine!(
    refused_schemes_and_tricks_are_400_naming_the_problem,
    the_form_refuses_the_same_urls,
    whitespace_is_trimmed_and_uppercase_http_is_normalized,
    a_url_may_have_2048_bytes_and_no_more,
    links_back_to_the_shortener_are_refused,
    bad_codes_are_400,
    reserved_words_are_400_in_any_case,
    bodies_over_16_kib_are_413,
    a_chunked_body_over_16_kib_is_413_too,
    a_body_of_exactly_16_kib_is_accepted,
    malformed_json_is_400_not_422,
    malformed_form_data_is_400_with_the_form,
);

/// 16 KiB, the body cap.
const MAX_BODY: usize = 16 * 1024;

async fn refused_url(app: &TestApp, url: &str) -> String {
    let res = send(app.post_json("/api/links", &json!({ "url": url }))).await;
    error_of(res, StatusCode::BAD_REQUEST).await
}

async fn refused_schemes_and_tricks_are_400_naming_the_problem(engine: Engine) {
    let app = spawn_app(engine).await;
    let cases = [
        ("javascript:alert(1)", "`javascript` is not allowed"),
        ("JavaScript:alert(1)", "`JavaScript` is not allowed"),
        ("JAVASCRIPT:alert(1)", "`JAVASCRIPT` is not allowed"),
        (
            "data:text/html,<script>alert(1)</script>",
            "`data` is not allowed",
        ),
        ("vbscript:msgbox(1)", "`vbscript` is not allowed"),
        ("file:///etc/passwd", "`file` is not allowed"),
        ("ftp://example.com/", "`ftp` is not allowed"),
        ("mailto:someone@example.com", "`mailto` is not allowed"),
        ("//example.com/x", "absolute"),
        ("/just/a/path", "absolute"),
        ("example.com/x", "absolute"),
        ("http:example.com", "absolute"),
        ("http:/example.com", "absolute"),
        ("http:///example.com", "host"),
        ("http://", "host"),
        ("http:/\\example.com", "backslash"),
        ("http:\\\\example.com", "backslash"),
        ("https://example.com\\@evil.example/", "backslash"),
        ("http://exa\tmple.com/", "control character"),
        ("http://example.com/a\nb", "control character"),
        ("http://example.com/a\r\nSet-Cookie:x", "control character"),
        ("http://example.com/\u{0}", "control character"),
        ("java\nscript:alert(1)", "control character"),
        ("", "required"),
        ("  \t ", "required"),
        ("http://exa mple.com/", "not valid"),
    ];
    for (url, needle) in cases {
        let message = refused_url(&app, url).await;
        assert!(message.contains(needle), "{url:?}: {message}");
    }
    let list = json_of(send(app.get("/api/links")).await).await;
    assert_eq!(list["links"], json!([]), "nothing was stored");
}

async fn the_form_refuses_the_same_urls(engine: Engine) {
    let app = spawn_app(engine).await;

    for url in [
        "javascript:alert(1)",
        "data:text/html,hi",
        "//example.com/",
        "http://a\tb.com/",
    ] {
        let res = send(app.post_form("/your-url", &[("url", url)])).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{url:?}");
        assert!(text_of(res).await.contains("url "), "{url:?}");
    }
}

async fn whitespace_is_trimmed_and_uppercase_http_is_normalized(engine: Engine) {
    let app = spawn_app(engine).await;

    let trimmed = app.create("  \thttps://example.com/x \n", None).await;
    let upper = app.create("HTTP://EXAMPLE.COM/Path", None).await;

    assert_eq!(trimmed["url"], "https://example.com/x");
    assert_eq!(upper["url"], "http://example.com/Path");
}

async fn a_url_may_have_2048_bytes_and_no_more(engine: Engine) {
    let app = spawn_app(engine).await;
    let prefix = "https://example.com/";
    let exact = format!("{prefix}{}", "a".repeat(2048 - prefix.len()));

    let created = app.create(&exact, None).await;
    let message = refused_url(&app, &format!("{exact}a")).await;

    assert_eq!(created["url"], exact);
    assert!(message.contains("2048"), "{message}");
}

async fn links_back_to_the_shortener_are_refused(engine: Engine) {
    let app = spawn_app_with(
        engine,
        &[
            "--public-host",
            "go.example",
            "--public-host",
            "Alias.Example.",
        ],
    )
    .await;
    let own = app.addr.ip().to_string();
    let cases: [(&str, Option<(&str, &str)>); 8] = [
        (&format!("http://{}/x", app.addr), None),
        (&format!("https://{own}:1/x"), None),
        ("http://sho.rt/x", Some(("host", "sho.rt"))),
        ("HTTP://SHO.RT./x", Some(("host", "Sho.Rt:8081"))),
        ("https://GO.example.:8443/x", None),
        ("https://alias.example/x", None),
        (
            "https://Public.Example/x",
            Some(("x-forwarded-host", "public.example")),
        ),
        (
            "https://second.example/x",
            Some(("x-forwarded-host", "first.example, second.example")),
        ),
    ];
    for (url, extra_header) in cases {
        let mut request = app.post_json("/api/links", &json!({ "url": url }));
        if let Some((name, value)) = extra_header {
            request = request.header(name, value);
        }
        let message = error_of(send(request).await, StatusCode::BAD_REQUEST).await;
        assert!(message.contains("points back"), "{url}: {message}");
    }

    let other = send(
        app.post_json("/api/links", &json!({ "url": "https://example.org/x" }))
            .header("x-forwarded-host", "public.example"),
    )
    .await;
    assert_eq!(other.status(), StatusCode::CREATED);
}

async fn bad_codes_are_400(engine: Engine) {
    let app = spawn_app(engine).await;
    let too_long = "x".repeat(65);

    for code in ["a b", "a/b", "ü", "a.b", "a%b", "<b>", too_long.as_str()] {
        let res = send(app.post_json(
            "/api/links",
            &json!({ "url": "https://example.com/", "code": code }),
        ))
        .await;
        let message = error_of(res, StatusCode::BAD_REQUEST).await;
        assert!(message.contains("code"), "{code}: {message}");
    }
    app.create("https://example.com/", Some(&"x".repeat(64)))
        .await;
    app.create("https://example.com/", Some("_-")).await;
}

async fn reserved_words_are_400_in_any_case(engine: Engine) {
    let app = spawn_app(engine).await;

    for code in [
        "api",
        "API",
        "healthz",
        "HealthZ",
        "your-url",
        "Your-URL",
        "static",
        "metrics",
        "admin",
        "favicon.ico",
        "robots.txt",
    ] {
        let res = send(app.post_json(
            "/api/links",
            &json!({ "url": "https://example.com/", "code": code }),
        ))
        .await;
        error_of(res, StatusCode::BAD_REQUEST).await;
    }
}

async fn bodies_over_16_kib_are_413(engine: Engine) {
    let app = spawn_app(engine).await;
    let big_url = format!("https://example.com/{}", "a".repeat(MAX_BODY));

    let json = send(app.post_json("/api/links", &json!({ "url": big_url }))).await;
    let form = send(app.post_form("/your-url", &[("url", big_url.as_str())])).await;
    let ignored_body = send(app.get("/").body("x".repeat(MAX_BODY + 1))).await;

    assert_eq!(header(&json, "x-release"), "v1");
    assert!(
        error_of(json, StatusCode::PAYLOAD_TOO_LARGE)
            .await
            .contains("16384")
    );
    assert_eq!(form.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(header(&form, "x-release"), "v1");
    assert_eq!(ignored_body.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

async fn a_chunked_body_over_16_kib_is_413_too(engine: Engine) {
    let app = spawn_app(engine).await;
    let body = format!(
        r#"{{"url":"https://example.com/{}"}}"#,
        "a".repeat(MAX_BODY + 1024)
    );
    let mut request = String::from(
        "POST /api/links HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for chunk in body.as_bytes().chunks(4096) {
        request.push_str(&format!("{:x}\r\n", chunk.len()));
        request.push_str(std::str::from_utf8(chunk).expect("ASCII body"));
        request.push_str("\r\n");
    }
    request.push_str("0\r\n\r\n");

    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = vec![0; 1024];
    let n = tokio::time::timeout(PATIENCE, stream.read(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read the answer");
    let answer = String::from_utf8_lossy(&answer[..n]).to_ascii_lowercase();

    assert!(answer.starts_with("http/1.1 413"), "{answer}");
    assert!(answer.contains("x-release: v1"), "{answer}");
}

async fn a_body_of_exactly_16_kib_is_accepted(engine: Engine) {
    let app = spawn_app(engine).await;
    let mut body = json!({ "url": "https://example.com/fits" }).to_string();
    body.push_str(&" ".repeat(MAX_BODY - body.len()));

    let res = send(
        app.http()
            .post(app.url("/api/links"))
            .header("content-type", "application/json")
            .body(body),
    )
    .await;

    assert_eq!(res.status(), StatusCode::CREATED);
}

async fn malformed_json_is_400_not_422(engine: Engine) {
    let app = spawn_app(engine).await;
    let post_raw = |body: &'static str, content_type: &'static str| {
        app.http()
            .post(app.url("/api/links"))
            .header("content-type", content_type)
            .body(body)
    };

    for (body, needle) in [
        ("{not json", "parse"),
        (r#"{"url": 5}"#, "url"),
        (r#"{"url": "https://example.com/", "code": 7}"#, "code"),
        ("{}", "url"),
        ("[]", "deserialize"),
        ("", "parse"),
    ] {
        let res = send(post_raw(body, "application/json")).await;
        let message = error_of(res, StatusCode::BAD_REQUEST).await;
        assert!(message.contains(needle), "{body}: {message}");
    }
    let wrong_type = send(post_raw(r#"{"url":"https://example.com/"}"#, "text/plain")).await;
    error_of(wrong_type, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
}

async fn malformed_form_data_is_400_with_the_form(engine: Engine) {
    let app = spawn_app(engine).await;
    let post_raw = |body: &'static str| {
        app.http()
            .post(app.url("/your-url"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    };

    for (body, needle) in [
        ("code=x", "missing field `url`"),
        ("url=a&url=b", "duplicate field"),
    ] {
        let res = send(post_raw(body)).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{body}");
        assert!(header(&res, "content-type").starts_with("text/html"));
        let page = text_of(res).await;
        assert!(page.contains(needle), "{body}: {page}");
        assert!(page.contains(r#"action="/your-url""#));
    }
}
