//! Hostile headers and hostile callers: a bad `Host` is refused, a client's forwarding claims
//! are not trusted unless configured, hop-by-hop names cannot strip what the proxy sets, and
//! the admin API is neither reachable through the public listener nor usable without its
//! token. (`headers` covers the ordinary hop-by-hop list and the trusted `X-Forwarded-For`.)

use std::time::Duration;

use e2e::client::{raw_exchange, status_and_json};
use e2e::recorder::{Received, RecorderStack};
use e2e::{eventually, http_client};
use reqwest::{Method, StatusCode};

const TIMEOUT: Duration = Duration::from_secs(10);

async fn stack(extra_toml: &str) -> RecorderStack {
    RecorderStack::start(|proxy| proxy.extra_toml(extra_toml)).await
}

/// Sends a raw request that must be answered 200 and returns what the upstream received.
async fn forwarded(stack: &RecorderStack, request: &str) -> Received {
    let before = stack.recorder.user_requests().len();
    let response = raw_exchange(stack.proxy.public_addr(), request)
        .await
        .unwrap_or_else(|e| panic!("no answer through the proxy: {e}"));
    assert_eq!(
        response.status,
        200,
        "the proxy answered {}: {}",
        response.status,
        String::from_utf8_lossy(&response.body)
    );
    assert!(
        eventually(
            || async { stack.recorder.user_requests().len() > before },
            TIMEOUT
        )
        .await,
        "the upstream never received the request"
    );
    stack.recorder.user_requests()[before].clone()
}

/// Asserts that every answer was a 400, and that the upstream received no
/// request but the `forwarded` targets.
fn assert_refused(
    stack: &RecorderStack,
    answers: &[(&str, Result<u16, String>)],
    forwarded: &[&str],
) {
    let wrong: Vec<_> = answers
        .iter()
        .filter(|(_, answer)| *answer != Ok(400))
        .collect();
    assert!(wrong.is_empty(), "not answered 400: {wrong:?}");
    let leaked: Vec<_> = stack
        .recorder
        .user_requests()
        .iter()
        .map(|r| r.target().to_owned())
        .filter(|target| !forwarded.contains(&target.as_str()))
        .collect();
    assert!(
        leaked.is_empty(),
        "refused requests reached the upstream: {leaked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_duplicate_or_malformed_host_is_refused_and_not_forwarded() {
    // Arrange
    let stack = stack("").await;
    let cases = [
        ("missing", String::new()),
        (
            "duplicate",
            "Host: shop.example\r\nHost: shop.example\r\n".to_owned(),
        ),
        (
            "conflicting",
            "Host: shop.example\r\nHost: evil.example\r\n".to_owned(),
        ),
        ("empty", "Host: \r\n".to_owned()),
        ("space-inside", "Host: shop example\r\n".to_owned()),
        ("userinfo", "Host: user@evil.example\r\n".to_owned()),
        ("path", "Host: shop.example/admin\r\n".to_owned()),
        ("two-ports", "Host: shop.example:80:81\r\n".to_owned()),
        ("unclosed-bracket", "Host: [::1\r\n".to_owned()),
        (
            "port-not-a-number",
            "Host: shop.example:http\r\n".to_owned(),
        ),
        ("port-too-large", "Host: shop.example:99999\r\n".to_owned()),
        ("port-empty", "Host: shop.example:\r\n".to_owned()),
    ];

    // Act
    let mut answers = Vec::new();
    for (name, host_lines) in &cases {
        let request = format!("GET /host-{name} HTTP/1.1\r\n{host_lines}Connection: close\r\n\r\n");
        let answer = raw_exchange(stack.proxy.public_addr(), &request).await;
        answers.push((*name, answer.map(|r| r.status)));
    }
    // A good request after them, so that anything forwarded before it has arrived.
    let good = forwarded(
        &stack,
        "GET /host-good HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    )
    .await;

    // Assert
    assert_refused(&stack, &answers, &["/host-good"]);
    assert_eq!(good.header_all("host"), ["shop.example"], "{good:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_names_the_host_over_the_host_header() {
    // Arrange
    let stack = stack("").await;
    let refused = [
        (
            "HTTP/1.1 without Host",
            "GET http://shop.example/abs-no-host HTTP/1.1\r\nConnection: close\r\n\r\n",
        ),
        (
            "userinfo",
            "GET http://user@evil.example/abs-userinfo HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "a bad Host beside it",
            "GET http://shop.example/abs-bad-host HTTP/1.1\r\nHost: shop example\r\nConnection: close\r\n\r\n",
        ),
    ];

    // Act
    let over_host = forwarded(
        &stack,
        "GET http://shop.example:8080/abs?q=1 HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    let http10 = forwarded(
        &stack,
        "GET http://shop.example/abs-http10 HTTP/1.0\r\n\r\n",
    )
    .await;
    let mut answers = Vec::new();
    for (name, request) in refused {
        let answer = raw_exchange(stack.proxy.public_addr(), request).await;
        answers.push((name, answer.map(|r| r.status)));
    }
    let good = forwarded(
        &stack,
        "GET /abs-good HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    )
    .await;

    // Assert
    assert_eq!(over_host.target(), "/abs?q=1", "{over_host:#?}");
    assert_eq!(
        over_host.header_all("host"),
        ["shop.example:8080"],
        "{over_host:#?}"
    );
    assert_eq!(
        over_host.header_all("x-forwarded-host"),
        ["shop.example:8080"],
        "{over_host:#?}"
    );
    assert_eq!(http10.header_all("host"), ["shop.example"], "{http10:#?}");
    assert_refused(&stack, &answers, &["/abs?q=1", "/abs-http10", "/abs-good"]);
    assert_eq!(good.header_all("host"), ["shop.example"], "{good:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_strip_what_the_proxy_sets_or_the_body_framing() {
    // Arrange: a client names, as hop-by-hop, headers the proxy and the upstream depend on.
    let stack = stack("").await;
    let request = "POST /named HTTP/1.1\r\n\
        Host: shop.example\r\n\
        Connection: close, host, content-length, x-forwarded-for, x-forwarded-host, x-request-id\r\n\
        Content-Length: 5\r\n\
        X-Forwarded-For: 203.0.113.7\r\n\
        X-Request-Id: client-id-1\r\n\
        \r\n\
        hello";

    // Act
    let received = forwarded(&stack, request).await;

    // Assert
    assert_eq!(received.body, b"hello", "{received:#?}");
    assert_eq!(
        received.header_all("host"),
        ["shop.example"],
        "{received:#?}"
    );
    assert_eq!(
        received.header_all("x-forwarded-for"),
        ["127.0.0.1"],
        "{received:#?}"
    );
    assert_eq!(
        received.header_all("x-forwarded-host"),
        ["shop.example"],
        "{received:#?}"
    );
    assert_eq!(
        received.header_all("x-request-id").len(),
        1,
        "{received:#?}"
    );
    assert!(
        received.header_all("connection").is_empty(),
        "{received:#?}"
    );
    assert!(
        received.header_all("content-length") == ["5"]
            || received.header_all("transfer-encoding") == ["chunked"],
        "the body lost its framing: {received:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_trusted_hops_a_clients_forwarding_claims_are_replaced() {
    // Arrange
    let stack = stack("[forwarding]\ntrusted_hops = []").await;
    let request = "GET /claims HTTP/1.1\r\n\
        Host: shop.example\r\n\
        Connection: close\r\n\
        X-Forwarded-For: 203.0.113.7\r\n\
        X-Forwarded-For: 198.51.100.1\r\n\
        X-Forwarded-Host: evil.example\r\n\
        X-Forwarded-Proto: https\r\n\
        Forwarded: for=203.0.113.7;proto=https;host=evil.example\r\n\
        \r\n";

    // Act
    let received = forwarded(&stack, request).await;

    // Assert
    assert_eq!(
        received.header_all("x-forwarded-for"),
        ["127.0.0.1"],
        "an untrusted client's X-Forwarded-For was kept: {received:#?}"
    );
    assert_eq!(
        received.header_all("x-forwarded-host"),
        ["shop.example"],
        "{received:#?}"
    );
    assert_eq!(
        received.header_all("x-forwarded-proto"),
        ["http"],
        "{received:#?}"
    );
    assert!(
        received.header_all("forwarded").is_empty(),
        "a client's Forwarded reached the upstream: {received:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_a_trusted_hop_every_forwarded_for_line_is_kept_and_forwarded_is_dropped() {
    // Arrange: the default trusts loopback, where the test runs.
    let stack = stack("").await;
    let request = "GET /chain HTTP/1.1\r\n\
        Host: shop.example\r\n\
        Connection: close\r\n\
        X-Forwarded-For: 203.0.113.7\r\n\
        X-Forwarded-For: 198.51.100.1, 10.0.0.2\r\n\
        Forwarded: for=203.0.113.7\r\n\
        \r\n";

    // Act
    let received = forwarded(&stack, request).await;

    // Assert
    assert_eq!(
        received.header_all("x-forwarded-for"),
        ["203.0.113.7, 198.51.100.1, 10.0.0.2, 127.0.0.1"],
        "{received:#?}"
    );
    assert!(received.header_all("forwarded").is_empty(), "{received:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_not_reachable_through_the_public_listener() {
    // Arrange
    let stack = stack("").await;
    let client = http_client(TIMEOUT);

    // Act
    let status = client
        .get(stack.proxy.public_url("/status"))
        .bearer_auth(stack.proxy.token())
        .send()
        .await
        .expect("the public listener answers");
    let (status_code, status_body) = status_and_json(status).await;
    let switch = client
        .post(stack.proxy.public_url("/switch"))
        .bearer_auth(stack.proxy.token())
        .json(&serde_json::json!({ "to": "green" }))
        .send()
        .await
        .expect("the public listener answers");
    let (switch_code, switch_body) = status_and_json(switch).await;

    // Assert
    for (code, body) in [(status_code, &status_body), (switch_code, &switch_body)] {
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(
            body, "recorded",
            "the admin API answered on the public port: {body}"
        );
    }
    let targets: Vec<String> = stack
        .recorder
        .user_requests()
        .iter()
        .map(|r| r.target().to_owned())
        .collect();
    assert_eq!(targets, ["/status", "/switch"], "both went to the upstream");
    assert_eq!(stack.proxy.active().await, "blue");
}

/// Every admin route with the method it answers to.
const ADMIN_ROUTES: &[(&str, &str)] = &[
    ("GET", "/status"),
    ("POST", "/switch"),
    ("POST", "/rollback"),
    ("PUT", "/slots/green"),
    ("POST", "/canary"),
    ("POST", "/promote"),
    ("POST", "/abort"),
    ("POST", "/reload"),
    ("GET", "/metrics"),
    ("GET", "/events"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_endpoint_refuses_a_request_without_the_token() {
    // Arrange
    let stack = stack("").await;
    let token = stack.proxy.token().to_owned();
    let credentials: [(&str, Option<String>); 4] = [
        ("none", None),
        ("basic", Some(format!("Basic {token}"))),
        ("bare token", Some(token.clone())),
        ("bearer, empty", Some("Bearer ".to_owned())),
    ];
    let mut routes = ADMIN_ROUTES.to_vec();
    // The method-not-allowed and not-found answers are behind the token too.
    routes.extend([("GET", "/switch"), ("GET", "/no-such-endpoint")]);

    // Act
    let mut wrong = Vec::new();
    for (method, path) in &routes {
        for (what, authorization) in &credentials {
            let method: Method = method.parse().expect("a constant method");
            let mut request = stack
                .proxy
                .admin_request(method.clone(), path)
                .header("content-type", "application/json")
                .body(r#"{"to":"green","slot":"green","percent":50,"addr":"127.0.0.1:1"}"#);
            if let Some(authorization) = authorization {
                request = request.header("authorization", authorization);
            }
            let response = request.send().await.expect("the admin listener answers");
            let challenge = response.headers().get("www-authenticate").cloned();
            let (code, body) = status_and_json(response).await;
            if code != StatusCode::UNAUTHORIZED || challenge.is_none() || !body["error"].is_string()
            {
                wrong.push(format!(
                    "{method} {path} with {what}: {code} {challenge:?} {body}"
                ));
            }
        }
    }

    // Assert
    assert!(
        wrong.is_empty(),
        "answered without a valid token: {wrong:#?}"
    );
    let status = stack.proxy.status().await;
    assert_eq!(status["active"], "blue", "{status}");
    assert!(status["canary"].is_null(), "{status}");
    assert_eq!(
        status["slots"]["green"]["addr"],
        stack.recorder.addr().to_string(),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_admin_endpoints_refuse_get() {
    // Arrange
    let stack = stack("").await;
    // GET /switch is covered by `admin`.
    let mutating = [
        "/rollback",
        "/slots/green",
        "/canary",
        "/promote",
        "/abort",
        "/reload",
    ];

    // Act
    let mut answers = Vec::new();
    for path in mutating {
        let (code, body) = stack.proxy.admin(Method::GET, path, None).await;
        answers.push((path, code, body));
    }

    // Assert
    let wrong: Vec<_> = answers
        .iter()
        .filter(|(_, code, _)| *code != StatusCode::METHOD_NOT_ALLOWED)
        .collect();
    assert!(
        wrong.is_empty(),
        "mutating endpoints answered GET: {wrong:#?}"
    );
    let status = stack.proxy.status().await;
    assert_eq!(status["active"], "blue", "{status}");
}
