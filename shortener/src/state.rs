//! `AppState`: what every handler shares.

use std::sync::Arc;

use crate::cli::Args;
use crate::error::StoreError;
use crate::fault::{Fault, Faults};
use crate::public_host::HostName;
use crate::release::Release;
use crate::store::Store;

/// Shared by all requests; cheap to clone. Built once at startup, never changed afterwards.
#[derive(Clone)]
pub struct AppState {
    /// The database, shared with the other slot's process (and, on PostgreSQL, other hosts).
    pub(crate) store: Store,
    /// The `--release` label: answered in `x-release` and `/healthz`, written into new rows.
    pub(crate) release: Release,
    /// The `--public-host` aliases: hosts a link may not point at, besides the request's own.
    pub(crate) public_hosts: Arc<[HostName]>,
    /// The `--fault`s; its request counter is the only thing in the state that changes.
    pub(crate) faults: Arc<Faults>,
}

impl AppState {
    pub fn new(
        store: Store,
        release: Release,
        public_hosts: Vec<HostName>,
        faults: &[Fault],
    ) -> Self {
        Self {
            store,
            release,
            public_hosts: public_hosts.into(),
            faults: Arc::new(Faults::new(faults)),
        }
    }

    /// Opens the store named by the arguments and builds the state around it.
    pub async fn open(args: &Args) -> Result<Self, StoreError> {
        let store = Store::open(&args.db).await?;
        Ok(Self::new(
            store,
            args.release.clone(),
            args.public_hosts.clone(),
            &args.faults,
        ))
    }
}
