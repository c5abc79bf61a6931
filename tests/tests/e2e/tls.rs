//! HTTPS: the proxy terminates TLS (HTTP/1.1 and HTTP/2 to the shortener, short links in
//! https), chooses the certificate by SNI, swaps it on reload without touching open
//! connections, refuses a broken one (reload and check-config), redirects plain requests,
//! cuts off handshakes that do not finish, sends webhooks over https, and hands the TLS
//! listener to the process that takes over. Certificates are made at test time by a test CA.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use e2e::binary::binary;
use e2e::tls::{
    HttpsConn, HttpsReceiver, Issued, Pki, TlsProxy, Trust, certificate_tables, served, tls_connect,
};
use e2e::{EchoUpstream, Proxy, Shortener, TestStack, eventually};
use hmac::{Hmac, Mac as _};
use http::Method;
use serde_json::{Value, json};
use sha2::Sha256;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// How long a test waits for a notice, an event or a closed connection.
const WAIT: Duration = Duration::from_secs(15);

fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("e2e-tls-")
        .tempdir()
        .expect("a temp dir can be created")
}

/// A proxy with a TLS listener serving `certs` (the first is the default), both slots on an
/// echo upstream; `extra` is more TOML.
async fn echo_proxy(dir: &Path, certs: &[&Issued], extra: &str) -> (TlsProxy, EchoUpstream) {
    let echo = EchoUpstream::start().await;
    let builder = Proxy::builder()
        .blue(echo.addr())
        .green(echo.addr())
        .extra_toml(extra)
        .extra_toml(&certificate_tables(certs));
    (TlsProxy::start(&builder, dir).await, echo)
}

#[tokio::test]
async fn http1_and_http2_over_tls_reach_the_shortener_and_its_links_are_https() {
    // Arrange
    let dir = temp_dir();
    let pki = Pki::new(dir.path());
    let cert = pki.issue("shop", &["shop.test"]);
    let db = dir.path().join("links.db");
    let blue = Shortener::builder()
        .release("v1")
        .db(&db)
        .start(dir.path())
        .await;
    let green = Shortener::builder()
        .release("v2")
        .db(&db)
        .start(dir.path())
        .await;
    let builder = Proxy::builder()
        .blue(blue.addr())
        .green(green.addr())
        .extra_toml("[tls]\nhsts_max_age = 600\n")
        .extra_toml(&certificate_tables(&[&cert]));
    let proxy = TlsProxy::start(&builder, dir.path()).await;
    let trust = Trust::Ca(pki.ca_der());

    for h2 in [false, true] {
        // Act
        let mut conn = HttpsConn::open(proxy.public_tls, "shop.test", &trust, h2)
            .await
            .unwrap_or_else(|e| panic!("h2={h2}: {e}\n{}", proxy.log_tail()));
        let created = conn
            .send(
                Method::POST,
                "/api/links",
                Some(&json!({ "url": "https://example.com/tls" })),
            )
            .await
            .expect("the create answers");
        let body = created.json();
        let code = body["code"].as_str().expect("a code").to_owned();
        let followed = conn
            .send(Method::GET, &format!("/{code}"), None)
            .await
            .expect("the redirect answers");

        // Assert
        let want_alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
        assert_eq!(conn.alpn.as_deref(), Some(want_alpn), "h2={h2}");
        assert_eq!(created.status, 201, "h2={h2}: {body}");
        let short_url = body["short_url"].as_str().expect("a short_url");
        assert_eq!(
            short_url,
            format!("https://shop.test:{}/{code}", proxy.public_tls.port()),
            "h2={h2}: X-Forwarded-Proto is https"
        );
        assert_eq!(followed.status, 302, "h2={h2}");
        assert_eq!(followed.header("location"), Some("https://example.com/tls"));
        assert_eq!(
            created.header("strict-transport-security"),
            Some("max-age=600")
        );
        assert_eq!(conn.served, cert.der);
    }
    let plain = e2e::http_client(WAIT)
        .post(format!("http://{}/api/links", proxy.public))
        .json(&json!({ "url": "https://example.com/plain" }))
        .send()
        .await
        .expect("the plain listener answers");
    assert!(
        plain.headers().get("strict-transport-security").is_none(),
        "no HSTS in plain text"
    );
    let body: Value = plain.json().await.expect("JSON");
    assert!(
        body["short_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://")),
        "{body}"
    );
}

#[tokio::test]
async fn the_certificate_is_chosen_by_sni_and_the_first_is_the_default() {
    // Arrange
    let dir = temp_dir();
    let pki = Pki::new(dir.path());
    let a = pki.issue("a", &["a.test"]);
    let b = pki.issue("b", &["b.test", "*.b.test"]);
    let (proxy, _echo) = echo_proxy(dir.path(), &[&a, &b], "").await;
    let trusted = Trust::Ca(pki.ca_der());
    let addr = proxy.public_tls;

    // Act
    let by_name = |name: &'static str, trust: Trust| async move {
        let stream = tls_connect(addr, name, &trust, &[b"http/1.1"])
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        served(&stream)
    };
    let for_a = by_name("a.test", trusted.clone()).await;
    let for_b = by_name("b.test", trusted.clone()).await;
    let for_wildcard = by_name("shop.b.test", trusted.clone()).await;
    let for_unknown = by_name("unknown.test", Trust::Anything).await;
    // An address is sent without SNI.
    let without_sni = by_name("127.0.0.1", Trust::Anything).await;

    // Assert
    assert_eq!(for_a, a.der);
    assert_eq!(for_b, b.der);
    assert_eq!(for_wildcard, b.der);
    assert_eq!(
        for_unknown, a.der,
        "an unknown name gets the first certificate"
    );
    assert_eq!(without_sni, a.der, "no SNI gets the first certificate");
}

#[tokio::test]
async fn a_reload_serves_the_new_certificate_to_new_handshakes_and_keeps_open_connections() {
    // Arrange
    let dir = temp_dir();
    let pki = Pki::new(dir.path());
    let old = pki.issue("shop", &["shop.test"]);
    let (proxy, _echo) = echo_proxy(dir.path(), &[&old], "").await;
    let trust = Trust::Ca(pki.ca_der());
    let mut kept = HttpsConn::open(proxy.public_tls, "shop.test", &trust, false)
        .await
        .expect("a connection");
    let first = kept
        .send(Method::GET, "/before", None)
        .await
        .expect("an answer");
    assert_eq!(first.status, 200);

    // Act: a renewed certificate in the same files, then a reload.
    let new = pki.issue("shop", &["shop.test"]);
    let (code, body) = proxy.admin(Method::POST, "/reload").await;

    // Assert
    assert_eq!(code, 200, "{body}");
    let fresh = HttpsConn::open(proxy.public_tls, "shop.test", &trust, false)
        .await
        .expect("a new connection");
    assert_eq!(
        fresh.served, new.der,
        "a new handshake gets the new certificate"
    );
    assert_ne!(new.der, old.der);
    let again = kept
        .send(Method::GET, "/after", None)
        .await
        .expect("the open connection still answers");
    assert_eq!(again.status, 200);
    assert_eq!(kept.served, old.der);
    assert_eq!(
        body["tls"]["certificates"][0]["names"],
        json!(["shop.test"]),
        "{body}"
    );
}

/// Runs `proxy check-config FILE` in `cwd`.
async fn check_config(file: &Path, cwd: &Path) -> (bool, String) {
    let run = tokio::process::Command::new(binary("proxy"))
        .arg("check-config")
        .arg(file)
        .current_dir(cwd)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WAIT, run)
        .await
        .expect("check-config finishes")
        .expect("check-config runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn a_broken_certificate_is_refused_by_reload_and_check_config_and_the_old_one_serves_on() {
    // Arrange
    let dir = temp_dir();
    let pki = Pki::new(dir.path());
    let good = pki.issue("shop", &["shop.test"]);
    let (proxy, _echo) = echo_proxy(dir.path(), &[&good], "").await;
    let trust = Trust::Ca(pki.ca_der());
    let (valid, text) = check_config(&proxy.config, dir.path()).await;
    assert!(valid, "{text}");
    // Another certificate's key in the key file: the pair does not match.
    let other = pki.issue("other", &["shop.test"]);
    std::fs::copy(&other.key, &good.key).expect("the key file is replaced");

    // Act
    let (code, body) = proxy.admin(Method::POST, "/reload").await;
    let (valid, text) = check_config(&proxy.config, dir.path()).await;

    // Assert
    assert_eq!(code, 400, "{body}");
    let problem = &body["problems"][0];
    assert_eq!(problem["key"], "tls.certificate[0].key", "{body}");
    let message = problem["message"].as_str().expect("a message");
    assert!(
        message.contains(&good.key.display().to_string()) && message.contains("does not belong"),
        "the file and the reason: {message}"
    );
    assert!(!valid, "check-config passed a mismatched key: {text}");
    assert!(
        text.contains("tls.certificate[0].key") && text.contains(&good.key.display().to_string()),
        "{text}"
    );
    let conn = HttpsConn::open(proxy.public_tls, "shop.test", &trust, false)
        .await
        .expect("the old certificate still serves");
    assert_eq!(conn.served, good.der);

    // An unreadable certificate is refused the same way.
    std::fs::remove_file(&good.cert).expect("the certificate is removed");
    let (code, body) = proxy.admin(Method::POST, "/reload").await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        body["problems"][0]["key"], "tls.certificate[0].cert",
        "{body}"
    );
    assert!(
        body["problems"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot read")),
        "{body}"
    );
}

/// A plain GET of `path` with `Host: shop.test`, from `from`, optionally with the preview
/// header; returns the status, the location and the HSTS header.
async fn plain_get(
    proxy: SocketAddr,
    from: &str,
    preview: bool,
) -> (u16, Option<String>, Option<String>) {
    let mut client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(WAIT)
        .local_address(from.parse::<std::net::IpAddr>().expect("an address"));
    if preview {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-bluegreen-preview", "anything".parse().expect("a value"));
        client = client.default_headers(headers);
    }
    let response = client
        .build()
        .expect("a client")
        .get(format!("http://{proxy}/some/path?q=1"))
        .header("host", format!("shop.test:{}", proxy.port()))
        .send()
        .await
        .expect("the plain listener answers");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    (
        response.status().as_u16(),
        header("location"),
        header("strict-transport-security"),
    )
}

#[tokio::test]
async fn plain_requests_are_redirected_to_https_but_previews_and_trusted_hops() {
    // Arrange: 127.0.0.2 is a trusted hop (a load balancer), 127.0.0.1 a user.
    let dir = temp_dir();
    let pki = Pki::new(dir.path());
    let cert = pki.issue("shop", &["shop.test"]);
    let extra = "[tls]\nredirect_http = true\nhsts_max_age = 600\n\n[forwarding]\ntrusted_hops = [\"127.0.0.2\"]\n";
    let (proxy, _echo) = echo_proxy(dir.path(), &[&cert], extra).await;

    // Act
    let user = plain_get(proxy.public, "127.0.0.1", false).await;
    let preview = plain_get(proxy.public, "127.0.0.1", true).await;
    let balancer = plain_get(proxy.public, "127.0.0.2", false).await;
    let mut over_tls = HttpsConn::open(
        proxy.public_tls,
        "shop.test",
        &Trust::Ca(pki.ca_der()),
        false,
    )
    .await
    .expect("a TLS connection");
    let secure = over_tls
        .send(Method::GET, "/some/path?q=1", None)
        .await
        .expect("an answer");

    // Assert
    let location = format!(
        "https://shop.test:{}/some/path?q=1",
        proxy.public_tls.port()
    );
    assert_eq!(user, (308, Some(location), None));
    assert_eq!(preview.0, 200, "a preview is served in plain text");
    assert_eq!(balancer.0, 200, "a trusted hop is served in plain text");
    assert_eq!(secure.status, 200);
    assert_eq!(
        secure.header("strict-transport-security"),
        Some("max-age=600")
    );
}

/// The count of `tls_handshake_failures` with this reason in the metrics text.
fn handshake_failures(metrics: &str, reason: &str) -> u64 {
    let label = format!("reason=\"{reason}\"");
    metrics
        .lines()
        .find(|line| line.starts_with("bluegreen_tls_handshake_failures") && line.contains(&label))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no tls_handshake_failures for {reason} in:\n{metrics}"))
}

/// Reads until the server closes; how long that took from `since`.
async fn until_closed(stream: &mut TcpStream, since: tokio::time::Instant) -> Duration {
    let mut buf = [0u8; 1024];
    let closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(WAIT, closed)
        .await
        .expect("the proxy closes the connection");
    since.elapsed()
}

#[tokio::test]
async fn a_client_that_opens_tls_and_sends_nothing_is_cut_off_at_the_handshake_timeout() {
    // Arrange: a handshake timeout far below the header timeout (10 s).
    let dir = temp_dir();
    let pki = Pki::new(dir.path());
    let cert = pki.issue("shop", &["shop.test"]);
    let extra = "[limits]\ntls_handshake_timeout_ms = 600\n";
    let (proxy, _echo) = echo_proxy(dir.path(), &[&cert], extra).await;

    // Act: one sends nothing at all, one the first bytes of a TLS record and no more.
    let started = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(proxy.public_tls).await.expect("connect");
    let mut half_open = TcpStream::connect(proxy.public_tls).await.expect("connect");
    half_open
        .write_all(&[0x16, 0x03, 0x01, 0x01, 0x00])
        .await
        .expect("write");
    let silent_for = until_closed(&mut silent, started).await;
    let half_open_for = until_closed(&mut half_open, started).await;

    // Assert
    for waited in [silent_for, half_open_for] {
        assert!(
            waited >= Duration::from_millis(600) && waited < Duration::from_secs(5),
            "closed after {waited:?}"
        );
    }
    let counted = eventually(
        || async { handshake_failures(&proxy.metrics().await, "timeout") == 2 },
        WAIT,
    )
    .await;
    assert!(counted, "{}", proxy.metrics().await);
    let ok = HttpsConn::open(
        proxy.public_tls,
        "shop.test",
        &Trust::Ca(pki.ca_der()),
        false,
    )
    .await;
    assert!(ok.is_ok(), "the listener still serves: {:?}", ok.err());
}

#[tokio::test]
async fn plain_http_on_the_tls_port_is_answered_400_and_counted() {
    // Arrange
    let dir = temp_dir();
    let pki = Pki::new(dir.path());
    let cert = pki.issue("shop", &["shop.test"]);
    let (proxy, _echo) = echo_proxy(dir.path(), &[&cert], "").await;

    // Act
    let mut stream = TcpStream::connect(proxy.public_tls).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("the proxy answers and closes")
        .expect("a clean close");

    drop(stream);

    // Assert
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(
        answer.contains("plain HTTP sent to the HTTPS port"),
        "{answer}"
    );
    // Counted once the proxy has read what the client sent, to its close.
    let counted = eventually(
        || async { handshake_failures(&proxy.metrics().await, "not_tls") == 1 },
        WAIT,
    )
    .await;
    assert!(counted, "{}", proxy.metrics().await);
}

#[tokio::test]
async fn a_certificate_close_to_its_end_is_a_warning_in_the_status_and_an_event() {
    // Arrange
    let dir = temp_dir();
    let pki = Pki::new(dir.path());
    let soon = time::OffsetDateTime::now_utc() + Duration::from_secs(7 * 86_400);
    let cert = pki.issue_until("shop", &["shop.test"], Some(soon));
    let (proxy, _echo) = echo_proxy(dir.path(), &[&cert], "").await;

    // Act
    let (code, status) = proxy.admin(Method::GET, "/status").await;

    // Assert
    assert_eq!(code, 200, "{status}");
    let warnings = status["tls"]["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{status}");
    assert!(
        warnings[0]
            .as_str()
            .is_some_and(|w| w.contains("shop.test") && w.contains("expires in")),
        "{status}"
    );
    let evented = eventually(
        || async {
            let (_, events) = proxy.admin(Method::GET, "/events?since=0").await;
            events["events"]
                .as_array()
                .is_some_and(|all| all.iter().any(|e| e["kind"] == "certificate_expiring"))
        },
        WAIT,
    )
    .await;
    assert!(
        evented,
        "no certificate_expiring event:\n{}",
        proxy.log_tail()
    );
}

const SECRET: &str = "e2e-https-webhook-secret";

fn signature_of(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn an_https_webhook_gets_signed_notices_and_an_untrusted_one_gets_none() {
    // Arrange: one receiver; the first webhook trusts the test CA, the second only the
    // system's roots, which do not know it.
    let certs = temp_dir();
    let pki = Pki::new(certs.path());
    let receiver_cert = pki.issue("receiver", &["127.0.0.1"]);
    let receiver = HttpsReceiver::start(pki.server_config(&receiver_cert)).await;
    let url = format!("https://{}/hooks/incidents", receiver.addr);
    let notify = format!(
        "[notify]\nbackoff_ms = 50\nmax_attempts = 2\n\n\
         [[notify.webhook]]\nurl = {url:?}\nsecret = {SECRET:?}\nca = {ca:?}\n\n\
         [[notify.webhook]]\nurl = \"{url}?untrusted\"\nsecret = {SECRET:?}\n",
        ca = pki.ca_file().display().to_string(),
    );
    let stack = TestStack::builder()
        .green(Shortener::builder().release("v2").fault("create-500"))
        .gate(1, 10_000)
        .proxy(|p| p.extra_toml(&notify))
        .start()
        .await;

    // Act: a refused release is a prevented incident, noticed to every webhook.
    let (code, refusal) = stack.proxy.switch("green").await;

    // Assert
    assert_eq!(code, 409, "{refusal}");
    let arrived = eventually(|| async { !receiver.received().is_empty() }, WAIT).await;
    assert!(arrived, "no notice over https:\n{}", stack.proxy.log_tail());
    let failed = eventually(
        || async {
            let (_, events) = stack
                .proxy
                .admin(Method::GET, "/events?since=0", None)
                .await;
            events["events"]
                .as_array()
                .is_some_and(|all| all.iter().any(|e| e["kind"] == "notice_failed"))
        },
        WAIT,
    )
    .await;
    assert!(
        failed,
        "the untrusted webhook was not refused:\n{}",
        stack.proxy.log_tail()
    );
    let received = receiver.received();
    assert_eq!(
        received.len(),
        1,
        "only the trusted webhook got it: {received:?}"
    );
    let notice = &received[0];
    assert_eq!(
        notice
            .headers
            .get("x-bluegreen-signature")
            .and_then(|v| v.to_str().ok()),
        Some(signature_of(&notice.body).as_str())
    );
    let body: Value = serde_json::from_slice(&notice.body).expect("a JSON notice");
    assert_eq!(body["event"], "prevented_incident", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_takeover_hands_the_tls_listener_over_and_https_users_see_no_error() {
    // Arrange: users each opening a new HTTPS connection per request, HTTP/1.1 and HTTP/2,
    // so every takeover meets handshakes in flight and connections in the accept queue.
    const TAKEOVERS: usize = 3;
    let dir = temp_dir();
    let pki = Pki::new(dir.path());
    let cert = pki.issue("shop", &["shop.test"]);
    let (mut proxy, _echo) = echo_proxy(dir.path(), &[&cert], "").await;
    let trust = Trust::Ca(pki.ca_der());
    let users = HttpsUsers::start(proxy.public_tls, &trust);
    assert!(
        users.wait_for_more(10).await,
        "no HTTPS request got through: {}",
        proxy.log_tail()
    );

    // Act
    for n in 0..TAKEOVERS {
        let old = proxy.take_over().await;
        assert!(
            old.success(),
            "takeover #{n}: the old proxy exited with {old}"
        );
        assert!(
            users.wait_for_more(10).await,
            "the HTTPS users stalled after takeover #{n}: {}",
            proxy.log_tail()
        );
    }
    let seen = users.stop().await;

    // Assert
    assert!(
        seen.errors.is_empty(),
        "{} of {} HTTPS requests failed across the takeovers: {:#?}",
        seen.errors.len(),
        seen.requests,
        &seen.errors[..seen.errors.len().min(20)]
    );
    let mut conn = HttpsConn::open(proxy.public_tls, "shop.test", &trust, true)
        .await
        .expect("the new process answers over TLS");
    let answer = conn
        .send(Method::GET, "/after", None)
        .await
        .expect("an answer");
    assert_eq!(answer.status, 200);
    assert_eq!(conn.served, cert.der, "the same certificate");
}

/// HTTPS requests, each on a connection of its own (HTTP/1.1 and HTTP/2 in turn), sent one
/// after the other until stopped.
struct HttpsUsers {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    task: JoinHandle<HttpsSeen>,
}

#[derive(Debug, Default)]
struct HttpsSeen {
    requests: u64,
    errors: Vec<String>,
}

impl HttpsUsers {
    fn start(addr: SocketAddr, trust: &Trust) -> HttpsUsers {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (trust, flag, count) = (trust.clone(), Arc::clone(&stop), Arc::clone(&sent));
        let task = tokio::spawn(async move {
            let mut seen = HttpsSeen::default();
            while !flag.load(Ordering::Relaxed) {
                let h2 = seen.requests % 2 == 1;
                let outcome = match HttpsConn::open(addr, "shop.test", &trust, h2).await {
                    Ok(mut conn) => conn.send(Method::GET, "/", None).await,
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(answer) if answer.status == 200 => {}
                    Ok(answer) => seen.errors.push(format!("h2={h2}: {}", answer.status)),
                    Err(e) => seen.errors.push(format!("h2={h2}: {e}")),
                }
                seen.requests += 1;
                count.fetch_add(1, Ordering::Relaxed);
            }
            seen
        });
        HttpsUsers { stop, sent, task }
    }

    async fn wait_for_more(&self, more: u64) -> bool {
        let target = self.sent.load(Ordering::Relaxed) + more;
        eventually(
            || async { self.sent.load(Ordering::Relaxed) >= target },
            WAIT,
        )
        .await
    }

    async fn stop(self) -> HttpsSeen {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the HTTPS users panicked")
    }
}
