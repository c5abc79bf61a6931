//! The LISTEN connection: wakes the sync loop as soon as any proxy commits a
//! change. It is only a shortcut: the loop also reads the row on its own
//! clock, so a lost connection or notice delays a change by at most that
//! period.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc, watch};
use tokio_postgres::{AsyncMessage, NoTls};

use super::store::{CHANNEL, CONNECT_TIMEOUT};

/// Between two attempts to connect while the server is down.
const RETRY: Duration = Duration::from_secs(1);

/// Listens until `shutdown` changes, connecting again after every failure.
pub async fn run(
    config: tokio_postgres::Config,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        match listen(&config, &wake, &mut shutdown).await {
            Ok(()) => return,
            Err(why) => {
                tracing::debug!(%why, "the routing store's notices are off; reading it on a clock")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One connection: `Ok` at shutdown, the reason it ended otherwise.
async fn listen(
    config: &tokio_postgres::Config,
    wake: &Notify,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let (client, mut connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls))
        .await
        .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let (tx, mut notices) = mpsc::unbounded_channel();
    // The connection delivers notices only while it is polled.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if tx.send(()).is_err() {
                        return "stopped".to_owned();
                    }
                }
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
        "the server closed the connection".to_owned()
    });
    let listening = tokio::time::timeout(
        CONNECT_TIMEOUT,
        client.batch_execute(&format!("LISTEN {CHANNEL}")),
    )
    .await;
    if !matches!(listening, Ok(Ok(()))) {
        driver.abort();
        return Err("LISTEN failed".into());
    }
    // A change committed before LISTEN took effect is read now.
    wake.notify_one();
    loop {
        tokio::select! {
            notice = notices.recv() => match notice {
                Some(()) => wake.notify_one(),
                None => break,
            },
            _ = shutdown.changed() => {
                driver.abort();
                return Ok(());
            }
        }
    }
    drop(client);
    Err(driver.await.unwrap_or_else(|e| e.to_string()))
}
