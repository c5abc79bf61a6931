//! Where the listening sockets come from: the process this one takes over
//! from (the very sockets, by name), systemd (`LISTEN_FDS`, by address), or
//! a fresh bind.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use tokio::net::TcpListener;

use crate::Listeners;
use crate::config::Config;
use crate::error::ProxyError;

/// Listening sockets handed to this process, not yet claimed.
#[derive(Default)]
pub struct Inherited {
    /// From the predecessor, by the name it gave them.
    named: Vec<(String, std::net::TcpListener)>,
    /// From systemd, by the address they are bound to.
    systemd: Vec<std::net::TcpListener>,
}

impl Inherited {
    /// Systemd's sockets (taken from `LISTEN_FDS` before any thread started).
    pub fn from_systemd(systemd: Vec<std::net::TcpListener>) -> Inherited {
        Inherited {
            named: Vec::new(),
            systemd,
        }
    }

    /// Adds the predecessor's sockets.
    pub fn with_named(mut self, named: Vec<(String, OwnedFd)>) -> Inherited {
        self.named
            .extend(named.into_iter().map(|(name, fd)| (name, fd.into())));
        self
    }

    /// The socket for `name`, configured at `addr`: the predecessor's of
    /// that name if it is bound where the config says (port 0 takes any
    /// port), else systemd's bound at exactly `addr`, else a fresh bind.
    async fn claim(
        &mut self,
        name: &'static str,
        what: &'static str,
        addr: SocketAddr,
    ) -> Result<TcpListener, ProxyError> {
        let bind_error = |source| ProxyError::Bind { what, addr, source };
        let fits = |l: &std::net::TcpListener, any_port: bool| {
            l.local_addr().is_ok_and(|local| {
                local.ip() == addr.ip()
                    && (local.port() == addr.port() || (any_port && addr.port() == 0))
            })
        };
        let inherited = match self
            .named
            .iter()
            .position(|(n, l)| n == name && fits(l, true))
        {
            Some(at) => Some(self.named.remove(at).1),
            None => self
                .systemd
                .iter()
                .position(|l| fits(l, false))
                .map(|at| self.systemd.remove(at)),
        };
        match inherited {
            Some(listener) => {
                listener.set_nonblocking(true).map_err(bind_error)?;
                tracing::info!(listener = name, addr = %listener.local_addr().map_err(bind_error)?, "listening on an inherited socket");
                TcpListener::from_std(listener).map_err(bind_error)
            }
            None => TcpListener::bind(addr).await.map_err(bind_error),
        }
    }

    /// The listeners of `config`. Sockets inherited but not claimed
    /// (a listener moved to another address) are closed here; the
    /// predecessor drains what they accepted.
    pub async fn listeners(mut self, config: &Config) -> Result<Listeners, ProxyError> {
        let public = self
            .claim("public", "public listener", config.public)
            .await?;
        let public_tls = match config.public_tls {
            Some(addr) => Some(self.claim("public_tls", "TLS listener", addr).await?),
            None => None,
        };
        let admin = self.claim("admin", "admin listener", config.admin).await?;
        let status = self
            .claim("status", "status listener", config.status)
            .await?;
        for (name, _) in &self.named {
            tracing::info!(
                listener = %name,
                "the configuration moved this listener: the old socket is left to drain"
            );
        }
        Ok(Listeners {
            public,
            public_tls,
            admin,
            status,
        })
    }
}
