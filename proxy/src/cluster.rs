//! Several proxies of one service, one routing truth: the routing state lives
//! in PostgreSQL as one row with a generation (`store`). A change sent to any
//! proxy runs its gate there, then commits with a compare-and-set on the
//! generation it started from: a change that lost the race is refused (409,
//! naming the winner) and changes nothing. Every proxy reads each committed
//! generation (woken by `listen`, else on its own clock) and serves it; a
//! heartbeat records which generation each one serves. While the database is
//! unreachable, every proxy serves the state it has and refuses changes
//! (503). `change` names what a commit did; `counts` shares each proxy's
//! per-slot counts, so the guard judges every proxy's users.

mod change;
mod counts;
mod listen;
mod store;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::config::ClusterCfg;
use crate::control::controller::{ControlError, Controller};
use crate::control::state::PersistedState;
use crate::error::ProxyError;
use crate::http::traffic::{MAX_WINDOW_SECS, Traffic};
use store::{Peer, Store, Unreachable};

/// How often the row is read when no notice came: the bound on how late a
/// proxy serves a change when notices are lost.
const POLL: Duration = Duration::from_millis(400);
/// How often a proxy records the generation it serves.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// A committed change not yet applied by the controller: holds the cluster's
/// turn until dropped. `None` without a cluster.
#[must_use = "dropping it lets another generation be applied before this change is"]
pub struct Applying {
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Applying {
    /// Without a cluster: nothing to hold.
    pub fn alone() -> Applying {
        Applying { _turn: None }
    }
}

/// Which generation a commit expects the row to be at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// The one served when the operator's change took its turn (`pin`): a
    /// change committed meanwhile, by any proxy, makes it lose.
    Pinned,
    /// The one served now: the guard's verdicts, judged on what is served.
    Served,
}

/// This proxy's link to the shared routing state.
pub struct Cluster {
    store: Store,
    /// The LISTEN connection's settings.
    listen: tokio_postgres::Config,
    /// This proxy in the heartbeat table and in what it commits; set to the
    /// public listener's address once bound, unless configured.
    name: Mutex<String>,
    configured_name: bool,
    /// The generation the router serves; 0 while it serves the state
    /// file's copy. Written by `commit` and `sync`, under `turn`.
    served: AtomicU64,
    /// The generation the operator's change in progress started from.
    pinned: AtomicU64,
    /// The state at `served` and the name of the change that made it: what
    /// the next commit is described against.
    last: Mutex<Option<(PersistedState, String)>>,
    /// One commit or one read-and-apply at a time, so a proxy never applies
    /// its own commit as another's, nor an older generation over a newer. A
    /// commit holds it until the controller has applied the change
    /// ([`Applying`]): a newer generation read meanwhile would otherwise be
    /// served first and the older change applied over it.
    turn: Arc<tokio::sync::Mutex<()>>,
    reachable: AtomicBool,
    migrated: AtomicBool,
    /// Every proxy's last heartbeat, as the last beat read it.
    peers: Mutex<Vec<Peer>>,
    /// The other proxies' per-slot counts of the guard's longest window, as
    /// the last beat read them.
    remote: Mutex<Vec<counts::Second>>,
    /// Reads the row now: a notice came, or a commit lost.
    wake: Arc<Notify>,
}

/// The cluster part of `GET /status`.
#[derive(Debug, Serialize)]
pub struct ClusterView {
    pub name: String,
    /// The routing generation this proxy serves (0: the state file's copy,
    /// the store not read yet).
    pub generation: u64,
    pub store_reachable: bool,
    /// Each known proxy's last heartbeat.
    pub proxies: Vec<Peer>,
}

impl Cluster {
    /// No I/O yet: `startup` reads the store.
    pub fn new(cfg: &ClusterCfg, default_name: String) -> Result<Arc<Cluster>, ProxyError> {
        let store = Store::new(cfg.store.clone())
            .map_err(|e| ProxyError::Cluster(format!("cluster.store: {e}")))?;
        let mut listen = cfg.store.clone();
        listen.connect_timeout(store::CONNECT_TIMEOUT);
        Ok(Arc::new(Cluster {
            store,
            listen,
            configured_name: cfg.name.is_some(),
            name: Mutex::new(cfg.name.clone().unwrap_or(default_name)),
            served: AtomicU64::new(0),
            pinned: AtomicU64::new(0),
            last: Mutex::new(None),
            turn: Arc::new(tokio::sync::Mutex::new(())),
            reachable: AtomicBool::new(true),
            migrated: AtomicBool::new(false),
            peers: Mutex::new(Vec::new()),
            remote: Mutex::new(Vec::new()),
            wake: Arc::new(Notify::new()),
        }))
    }

    /// Names this proxy by its bound public address, unless configured.
    pub fn bound(&self, public: std::net::SocketAddr) {
        if !self.configured_name {
            *self.name.lock().expect("name lock is never poisoned") = public.to_string();
        }
    }

    fn name(&self) -> String {
        self.name
            .lock()
            .expect("name lock is never poisoned")
            .clone()
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }

    /// The state to start from: the store's (seeded with `local` when it
    /// has none), or `local` (the state file, a cache) when the store cannot
    /// be read now.
    pub async fn startup(&self, local: PersistedState) -> PersistedState {
        let _turn = self.turn.lock().await;
        let row = async {
            self.migrate().await?;
            match self.store.read().await? {
                Some(row) => Ok(row),
                None => self.store.seed(&to_json(&local), &self.name()).await,
            }
        };
        let row = match row.await {
            Ok(row) => row,
            Err(Unreachable(why)) => {
                self.reachable.store(false, Ordering::SeqCst);
                tracing::warn!(%why, "the routing store is unreachable at start: serving the state file's copy; changes answer 503 until it is back");
                return local;
            }
        };
        match serde_json::from_str::<PersistedState>(&row.state) {
            Ok(state) => {
                self.served.store(row.generation, Ordering::SeqCst);
                tracing::info!(generation = row.generation, by = %row.by, change = %row.change, "serving routing generation {} from the routing store", row.generation);
                *self.last.lock().expect("last lock is never poisoned") =
                    Some((state.clone(), row.change));
                state
            }
            Err(e) => {
                tracing::error!(generation = row.generation, error = %e, "the routing store holds a state this build cannot read: serving the state file's copy");
                local
            }
        }
    }

    /// Records the generation an operator's change starts from; called once
    /// it holds the controller's turn.
    pub fn pin(&self) {
        self.pinned.store(self.served(), Ordering::SeqCst);
    }

    /// Commits `state` if the row is still at the generation `base` names;
    /// the turn is held until the returned [`Applying`] is dropped, once the
    /// change is applied (no other commit of this proxy may come before).
    pub async fn commit(
        &self,
        state: &PersistedState,
        base: Base,
    ) -> Result<Applying, ControlError> {
        let turn = Arc::clone(&self.turn).lock_owned().await;
        let served = self.served();
        let expected = match base {
            Base::Pinned => self.pinned.load(Ordering::SeqCst),
            Base::Served => served,
        };
        let change = match &*self.last.lock().expect("last lock is never poisoned") {
            // What a change writes once applied, when the guard's part did
            // not move: the store holds it already.
            Some((before, _)) if expected == served && before == state => {
                return Ok(Applying { _turn: Some(turn) });
            }
            Some((before, last)) => change::describe(before, state, last),
            None => "a change from a proxy that started on its state file".into(),
        };
        let by = self.name();
        match self
            .store
            .compare_and_set(expected, &to_json(state), &change, &by)
            .await
        {
            Ok(Ok(generation)) => {
                self.set_reachable(true, "");
                self.served.store(generation, Ordering::SeqCst);
                if base == Base::Pinned {
                    self.pinned.store(generation, Ordering::SeqCst);
                }
                *self.last.lock().expect("last lock is never poisoned") =
                    Some((state.clone(), change.clone()));
                tracing::info!(generation, %change, "serving routing generation {generation}, committed here");
                Ok(Applying { _turn: Some(turn) })
            }
            Ok(Err(winner)) => {
                self.set_reachable(true, "");
                // This proxy's view is older: read the row now.
                self.wake.notify_one();
                Err(ControlError::Conflict(format!(
                    "another change was committed first (generation {}, by proxy {}): {}; nothing changed; read GET /status and send this change again if it still applies",
                    winner.generation, winner.by, winner.change
                )))
            }
            Err(Unreachable(why)) => {
                self.set_reachable(false, &why);
                Err(ControlError::Unavailable(
                    "the routing store (PostgreSQL) is unreachable, so nothing changed; every proxy keeps serving the routing it has; send the change again once the store is back".into(),
                ))
            }
        }
    }

    /// Reads committed generations and serves them, and beats, until
    /// `shutdown` changes.
    pub async fn run(
        self: Arc<Self>,
        controller: Arc<Controller>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let listener = tokio::spawn(listen::run(
            self.listen.clone(),
            Arc::clone(&self.wake),
            shutdown.clone(),
        ));
        let mut last_beat: Option<Instant> = None;
        loop {
            self.sync(&controller).await;
            if last_beat.is_none_or(|at| at.elapsed() >= HEARTBEAT) {
                self.beat().await;
                self.exchange_counts(controller.traffic()).await;
                last_beat = Some(Instant::now());
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
        let _ = listener.await;
    }

    /// Serves the row's generation if it is not the one served.
    async fn sync(&self, controller: &Controller) {
        let _turn = self.turn.lock().await;
        let row = async {
            self.migrate().await?;
            match self.store.read().await? {
                Some(row) => Ok(row),
                // This proxy started on its state file and is the first to
                // reach the store.
                None => {
                    let state = controller.routing_state();
                    self.store.seed(&to_json(&state), &self.name()).await
                }
            }
        };
        let row = match row.await {
            Ok(row) => row,
            Err(Unreachable(why)) => {
                self.set_reachable(false, &why);
                return;
            }
        };
        self.set_reachable(true, "");
        if row.generation == self.served() {
            return;
        }
        let state = match serde_json::from_str::<PersistedState>(&row.state) {
            Ok(state) => state,
            Err(e) => {
                tracing::error!(generation = row.generation, error = %e, "the routing store holds a state this build cannot read: serving the one it has");
                return;
            }
        };
        // The generation is recorded with the routing it names, before the
        // state file's write: `GET /status` never shows the new routing
        // with the old generation.
        controller.adopt(&state);
        self.served.store(row.generation, Ordering::SeqCst);
        tracing::info!(generation = row.generation, by = %row.by, change = %row.change, "serving routing generation {}", row.generation);
        controller.cache_state(&state).await;
        *self.last.lock().expect("last lock is never poisoned") = Some((state, row.change));
    }

    async fn beat(&self) {
        match self.store.beat(&self.name(), self.served()).await {
            Ok(peers) => *self.peers.lock().expect("peers lock is never poisoned") = peers,
            Err(Unreachable(why)) => self.set_reachable(false, &why),
        }
    }

    /// Publishes this proxy's last seconds and reads the others'. Unreachable:
    /// the guard judges on this proxy's users alone.
    async fn exchange_counts(&self, traffic: &Traffic) {
        let now = counts::unix_now();
        let oldest = now - i64::try_from(MAX_WINDOW_SECS).unwrap_or(0) - 1;
        let mine = counts::local_seconds(traffic, now);
        let theirs = match self
            .store
            .exchange_counts(&self.name(), &mine, oldest)
            .await
        {
            Ok(theirs) => theirs,
            Err(Unreachable(why)) => {
                self.set_reachable(false, &why);
                Vec::new()
            }
        };
        *self.remote.lock().expect("remote lock is never poisoned") = theirs;
    }

    /// Runs `judge` on this proxy's windows plus every other proxy's counts.
    pub fn judge<T>(&self, local: &Traffic, judge: impl FnOnce(&counts::Combined<'_>) -> T) -> T {
        let remote = self
            .remote
            .lock()
            .expect("remote lock is never poisoned")
            .clone();
        judge(&counts::Combined {
            local,
            remote: &remote,
            now: counts::unix_now(),
        })
    }

    async fn migrate(&self) -> Result<(), Unreachable> {
        if !self.migrated.load(Ordering::SeqCst) {
            self.store.migrate().await?;
            self.migrated.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Logs only the flips.
    fn set_reachable(&self, reachable: bool, why: &str) {
        if self.reachable.swap(reachable, Ordering::SeqCst) != reachable {
            if reachable {
                tracing::info!(
                    generation = self.served(),
                    "the routing store is reachable again"
                );
            } else {
                tracing::warn!(%why, generation = self.served(), "the routing store is unreachable: serving this generation as it stands; changes answer 503");
            }
        }
    }

    pub fn view(&self) -> ClusterView {
        ClusterView {
            name: self.name(),
            generation: self.served(),
            store_reachable: self.reachable.load(Ordering::SeqCst),
            proxies: self
                .peers
                .lock()
                .expect("peers lock is never poisoned")
                .clone(),
        }
    }
}

fn to_json(state: &PersistedState) -> String {
    serde_json::to_string(state).expect("a routing state serializes")
}
