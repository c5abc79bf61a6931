//! Cookie-less users loading the proxy from several tasks, every answer kept with its time and
//! release, for tests that count what users saw around a decision of the guard.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use reqwest::StatusCode;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::client::{Created, REQUEST_TIMEOUT, http_client, release_of, unique};

/// One user request and what came back.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the answer (or the error) came back.
    pub at: Instant,
    /// Its `x-release`, `"(none)"` when there was no answer from a shortener.
    pub release: String,
    /// The expected answer: a 302 to the link's URL, or a 201 for a create.
    pub ok: bool,
    /// The request and, when it failed, what came back instead.
    pub what: String,
}

/// Running senders; [`UserLoad::stop`] collects their samples (dropping aborts them).
#[derive(Debug)]
pub struct UserLoad {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<Vec<Sample>>>,
}

impl UserLoad {
    /// Starts `tasks` senders against `base` (`http://127.0.0.1:PORT`). Each sends, without a
    /// cookie, in turn `GET /{code}` of one of `links` and `POST /api/links`, until stopped or
    /// after `max_per_task` requests.
    ///
    /// # Panics
    /// When `links` is empty.
    pub fn start(base: &str, links: &[Created], tasks: usize, max_per_task: usize) -> UserLoad {
        assert!(!links.is_empty(), "the users need links to follow");
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let links: Arc<[Created]> = links.into();
        let tasks = (0..tasks)
            .map(|task| {
                tokio::spawn(send(
                    task,
                    base.to_owned(),
                    Arc::clone(&links),
                    Arc::clone(&stop),
                    Arc::clone(&sent),
                    max_per_task,
                ))
            })
            .collect();
        UserLoad { stop, sent, tasks }
    }

    /// Requests answered (or failed) so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the senders after their current request; every sample, oldest first.
    ///
    /// # Panics
    /// When a sender panicked.
    pub async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.finish().await
    }

    /// Waits until every sender has sent its `max_per_task` requests; every sample, oldest
    /// first.
    ///
    /// # Panics
    /// When a sender panicked.
    pub async fn finish(mut self) -> Vec<Sample> {
        let mut samples = Vec::new();
        for task in self.tasks.drain(..) {
            samples.extend(task.await.expect("a load sender panicked"));
        }
        samples.sort_by_key(|s| s.at);
        samples
    }
}

impl Drop for UserLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn send(
    task: usize,
    base: String,
    links: Arc<[Created]>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    max_requests: usize,
) -> Vec<Sample> {
    // No cookie store: every request is a user without a bucket.
    let client = http_client(REQUEST_TIMEOUT);
    let mut samples = Vec::new();
    for n in 0..max_requests {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let sample = if n % 2 == 0 {
            let link = &links[(task + n / 2) % links.len()];
            follow(&client, &base, link).await
        } else {
            create(&client, &base).await
        };
        sent.fetch_add(1, Ordering::Relaxed);
        samples.push(sample);
    }
    samples
}

async fn follow(client: &reqwest::Client, base: &str, link: &Created) -> Sample {
    let what = format!("GET /{}", link.code);
    match client.get(format!("{base}/{}", link.code)).send().await {
        Ok(response) => {
            let release = release_of(&response);
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let ok = response.status() == StatusCode::FOUND
                && location.as_deref() == Some(link.url.as_str());
            let what = if ok {
                what
            } else {
                format!("{what}: {} location {location:?}", response.status())
            };
            Sample {
                at: Instant::now(),
                release,
                ok,
                what,
            }
        }
        Err(e) => failed(what, &e),
    }
}

async fn create(client: &reqwest::Client, base: &str) -> Sample {
    let what = "POST /api/links".to_owned();
    let url = format!("https://e2e.example/{}", unique("load"));
    match client
        .post(format!("{base}/api/links"))
        .json(&json!({ "url": url }))
        .send()
        .await
    {
        Ok(response) => {
            let release = release_of(&response);
            let status = response.status();
            let ok = status == StatusCode::CREATED;
            Sample {
                at: Instant::now(),
                release,
                ok,
                what: if ok {
                    what
                } else {
                    format!("{what}: {status}")
                },
            }
        }
        Err(e) => failed(what, &e),
    }
}

fn failed(what: String, e: &reqwest::Error) -> Sample {
    Sample {
        at: Instant::now(),
        release: "(none)".to_owned(),
        ok: false,
        what: format!("{what}: {e:?}"),
    }
}
