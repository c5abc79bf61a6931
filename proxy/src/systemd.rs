//! What systemd hears from the proxy (`sd_notify`): that it is ready, and
//! which process is the service's main one after a takeover
//! (`Type=notify`, `NotifyAccess=all` in `config/proxy.service`). Silent
//! when `NOTIFY_SOCKET` is not set. Systemd's sockets (`LISTEN_FDS`) come in
//! through `sockets`.

use std::os::unix::net::UnixDatagram;

/// Tells systemd that this process serves and is the service's main
/// process (after a takeover, the old one exits next).
pub fn notify_serving() {
    notify(&format!("MAINPID={}\nREADY=1\n", std::process::id()));
}

/// Tells systemd that the proxy stops (drains).
pub fn notify_stopping() {
    notify("STOPPING=1\n");
}

fn notify(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            // An abstract socket: Linux only, as the proxy is.
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(message.as_bytes(), &addr)
            }
            None => socket.send_to(message.as_bytes(), &path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}
