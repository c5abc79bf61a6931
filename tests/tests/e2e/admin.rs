//! The admin API's refusals: authentication, the active slot, bad input, unknown routes.

use std::time::Duration;

use e2e::client::{create_link, follow, status_and_json};
use e2e::{Shortener, TestStack, http_client};
use reqwest::{Method, StatusCode};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_request_without_a_token_is_unauthorized() {
    // Arrange
    let stack = TestStack::start().await;

    // Act
    let response = stack
        .proxy
        .admin_request(Method::GET, "/status")
        .send()
        .await
        .expect("the admin listener answers");
    let (code, body) = status_and_json(response).await;

    // Assert
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"].is_string(),
        "a 401 carries a JSON error: {body}"
    );
}

#[tokio::test]
async fn a_request_with_a_wrong_token_is_unauthorized_and_changes_nothing() {
    // Arrange
    let stack = TestStack::start().await;
    let wrong = format!("{}x", stack.proxy.token());

    // Act
    let response = stack
        .proxy
        .admin_request(Method::POST, "/switch")
        .bearer_auth(wrong)
        .json(&json!({ "to": "green" }))
        .send()
        .await
        .expect("the admin listener answers");
    let (code, body) = status_and_json(response).await;

    // Assert
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"].is_string(),
        "a 401 carries a JSON error: {body}"
    );
    assert_eq!(stack.proxy.active().await, "blue");
}

#[tokio::test]
async fn the_active_slot_cannot_be_repointed() {
    // Arrange
    let stack = TestStack::start().await;
    let other = Shortener::builder()
        .release("v3")
        .start(stack.dir.path())
        .await;

    // Act
    let (code, body) = stack.proxy.put_slot("blue", other.addr()).await;

    // Assert
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    let status = stack.proxy.status().await;
    assert_eq!(
        status["slots"]["blue"]["addr"],
        stack.blue.addr().to_string(),
        "{status}"
    );
}

#[tokio::test]
async fn the_inactive_slot_can_be_repointed_and_then_switched_to() {
    // Arrange
    let stack = TestStack::start().await;
    let v3 = Shortener::builder()
        .release("v3")
        .db(stack.dir.path().join("links.db"))
        .start(stack.dir.path())
        .await;
    let client = http_client(TIMEOUT);

    // Act
    let (put_code, put_body) = stack.proxy.put_slot("green", v3.addr()).await;
    let (switch_code, switch_body) = stack.proxy.switch("green").await;
    let link = create_link(&client, &stack.base(), "https://e2e.example/v3").await;

    // Assert
    assert_eq!(put_code, StatusCode::OK, "{put_body}");
    assert_eq!(
        put_body["slots"]["green"]["addr"],
        v3.addr().to_string(),
        "{put_body}"
    );
    assert_eq!(switch_code, StatusCode::OK, "{switch_body}");
    let link = link.expect("a link is created through the proxy");
    assert_eq!(link.release, "v3");
}

#[tokio::test]
async fn an_unknown_slot_is_not_found() {
    // Arrange
    let stack = TestStack::start().await;

    // Act
    let (code, body) = stack.proxy.put_slot("purple", "127.0.0.1:1").await;

    // Assert
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn malformed_json_is_a_bad_request_and_changes_nothing() {
    // Arrange
    let stack = TestStack::start().await;

    // Act
    let response = stack
        .proxy
        .admin_request(Method::POST, "/switch")
        .bearer_auth(stack.proxy.token())
        .header("content-type", "application/json")
        .body(r#"{"to": "green""#)
        .send()
        .await
        .expect("the admin listener answers");
    let (code, body) = status_and_json(response).await;

    // Assert
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].is_string(),
        "a 400 carries a JSON error: {body}"
    );
    assert_eq!(stack.proxy.active().await, "blue");
}

#[tokio::test]
async fn an_unknown_path_is_not_found() {
    // Arrange
    let stack = TestStack::start().await;

    // Act
    let (code, body) = stack.proxy.admin(Method::GET, "/no-such-thing", None).await;

    // Assert
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn get_on_switch_is_not_allowed() {
    // Arrange
    let stack = TestStack::start().await;

    // Act
    let (code, body) = stack.proxy.admin(Method::GET, "/switch", None).await;

    // Assert
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert_eq!(stack.proxy.active().await, "blue");
}

#[tokio::test]
async fn status_describes_both_slots() {
    // Arrange
    let stack = TestStack::start().await;
    let client = http_client(TIMEOUT);
    let link = create_link(&client, &stack.base(), "https://e2e.example/status")
        .await
        .expect("a link is created through the proxy");
    follow(&client, &stack.base(), &link.code, &link.url)
        .await
        .expect("the link resolves through the proxy");

    // Act
    let status = stack.proxy.status().await;

    // Assert
    assert_eq!(status["active"], "blue", "{status}");
    assert!(
        status["last_switch"].is_null() || status["last_switch"].is_string(),
        "{status}"
    );
    for (slot, shortener) in [("blue", &stack.blue), ("green", &stack.green)] {
        let s = &status["slots"][slot];
        assert_eq!(s["addr"], shortener.addr().to_string(), "{status}");
        assert!(
            s["release"].is_null() || s["release"].is_string(),
            "{status}"
        );
        assert!(s["healthy"].is_boolean(), "{status}");
        assert!(s["in_flight"].is_u64(), "{status}");
        assert!(
            s["last_probe"].is_null() || s["last_probe"].is_object(),
            "{status}"
        );
    }
}
