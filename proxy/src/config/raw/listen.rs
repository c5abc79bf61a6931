//! `[listen]`: the addresses of the public, admin and status listeners.

use std::net::SocketAddr;

use serde::Deserialize;

use super::problems::Problems;
use crate::config::defaults as d;

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawListen {
    public: Option<String>,
    pub(super) public_tls: Option<String>,
    admin: Option<String>,
    status: Option<String>,
}

/// The validated `[listen]`, spread over `Config`'s top-level fields.
pub(super) struct Listen {
    pub(super) public: SocketAddr,
    pub(super) admin: SocketAddr,
    pub(super) status: SocketAddr,
}

impl RawListen {
    pub(super) fn validate(self, p: &mut Problems) -> Listen {
        let public = p.addr("listen.public", self.public.as_deref(), d::PUBLIC);
        let admin = p.addr("listen.admin", self.admin.as_deref(), d::ADMIN);
        let status = p.addr("listen.status", self.status.as_deref(), d::STATUS);
        if public == admin && public.port() != 0 {
            p.push("listen.admin", "must differ from listen.public");
        }
        Listen {
            public,
            admin,
            status,
        }
    }
}
