//! A slot's pool: the upstreams (members) its release runs on, the health
//! verdict on each, and the choice of the member that takes a request:
//! power of two choices on the fewest requests in flight, among the healthy
//! members. A pool is part of the routing snapshot and never changes: a
//! verdict that flips makes a new pool around the same members.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{SlotTls, Timeouts};
use crate::control::probe::Endpoint;
use crate::http::upstream::{Connector, Upstream};
use crate::slot::Slot;

/// The most members a slot may have: the health verdicts and the members a
/// request has tried are bit sets in one `u64`.
pub const MAX_MEMBERS: usize = 64;

/// Members a request has been sent to, by index in its pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tried(u64);

impl Tried {
    pub fn with(self, member: usize) -> Tried {
        Tried(self.0 | (1 << member))
    }
}

pub struct Pool {
    /// Never empty, at most `MAX_MEMBERS`; the order of the configuration.
    members: Box<[Arc<Upstream>]>,
    /// Bit `i`: the health checker's verdict on `members[i]`. Written only
    /// by making a new pool (`with_health`).
    healthy: u64,
}

impl Pool {
    /// A pool of new upstreams at `addrs`, every member down until checked.
    /// Every member is reached as the slot's `tls` says, each with a
    /// connector of its own: with no `server_name`, a member's certificate
    /// must name that member's IP.
    pub fn new(
        slot: Slot,
        addrs: &[SocketAddr],
        timeouts: &Timeouts,
        tls: Option<&SlotTls>,
    ) -> Pool {
        Pool::of(
            addrs
                .iter()
                .take(MAX_MEMBERS)
                .map(|addr| Upstream::new(slot, *addr, timeouts, Connector::new(tls, *addr)))
                .collect(),
        )
    }

    /// Where a probe or a health check reaches each member, in order.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.members.iter().map(|m| Endpoint::of(m)).collect()
    }

    /// A pool of these members, every one down until checked.
    pub fn of(members: Vec<Arc<Upstream>>) -> Pool {
        assert!(
            (1..=MAX_MEMBERS).contains(&members.len()),
            "a pool has 1 to {MAX_MEMBERS} members (the configuration checks it)"
        );
        Pool {
            members: members.into_boxed_slice(),
            healthy: 0,
        }
    }

    pub fn members(&self) -> &[Arc<Upstream>] {
        &self.members
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.addr).collect()
    }

    /// The first member, for what names a slot by one address.
    pub fn first(&self) -> &Arc<Upstream> {
        &self.members[0]
    }

    /// The index of the member at `addr`.
    pub fn position(&self, addr: SocketAddr) -> Option<usize> {
        self.members.iter().position(|m| m.addr == addr)
    }

    /// The index of `upstream` among the members (the same `Arc`).
    pub fn index_of(&self, upstream: &Arc<Upstream>) -> Option<usize> {
        self.members.iter().position(|m| Arc::ptr_eq(m, upstream))
    }

    /// At least one member is up: the slot may take users.
    pub fn is_healthy(&self) -> bool {
        self.healthy != 0
    }

    pub fn member_healthy(&self, member: usize) -> bool {
        self.healthy & (1 << member) != 0
    }

    /// The same members with `member`'s verdict set to `up`.
    pub fn with_health(&self, member: usize, up: bool) -> Pool {
        let bit = 1u64 << member;
        Pool {
            members: self.members.clone(),
            healthy: if up {
                self.healthy | bit
            } else {
                self.healthy & !bit
            },
        }
    }

    /// The same members, every one up (each just passed the gate).
    pub fn all_healthy(&self) -> Pool {
        Pool {
            members: self.members.clone(),
            healthy: self.every(),
        }
    }

    /// The member that takes a new request: among the healthy members (all
    /// of them when none is), two drawn at random and the one with fewer
    /// requests in flight. A pool of one costs no draw.
    pub fn pick(&self) -> &Arc<Upstream> {
        if self.members.len() == 1 {
            return &self.members[0];
        }
        let candidates = if self.healthy == 0 {
            self.every()
        } else {
            self.healthy
        };
        let at = self.choose(candidates).unwrap_or(0);
        &self.members[at]
    }

    /// Another healthy member for a request that failed on those `tried`,
    /// chosen as `pick` chooses; none when every healthy member was tried.
    pub fn pick_untried(&self, tried: Tried) -> Option<(usize, &Arc<Upstream>)> {
        let at = self.choose(self.healthy & !tried.0)?;
        Some((at, &self.members[at]))
    }

    /// Every member's bit.
    fn every(&self) -> u64 {
        u64::MAX >> (MAX_MEMBERS - self.members.len())
    }

    /// Power of two choices among the members in `candidates`.
    fn choose(&self, candidates: u64) -> Option<usize> {
        let n = candidates.count_ones();
        match n {
            0 => None,
            1 => Some(candidates.trailing_zeros() as usize),
            _ => {
                let a = rand::random_range(0..n);
                // A second draw among the others, so the two differ.
                let b = (a + rand::random_range(1..n)) % n;
                let (a, b) = (nth_bit(candidates, a), nth_bit(candidates, b));
                let fewer = if self.members[b].in_flight() < self.members[a].in_flight() {
                    b
                } else {
                    a
                };
                Some(fewer)
            }
        }
    }
}

/// The index of the `n`th set bit of `bits` (from the lowest).
fn nth_bit(mut bits: u64, n: u32) -> usize {
    for _ in 0..n {
        bits &= bits - 1;
    }
    bits.trailing_zeros() as usize
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn timeouts() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(1),
            response_header: Duration::from_secs(1),
            upstream_idle: Duration::from_secs(1),
            upstream_read: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(1),
        }
    }

    fn pool(n: u16) -> Pool {
        let addrs: Vec<SocketAddr> = (1..=n)
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
            .collect();
        Pool::new(Slot::Blue, &addrs, &timeouts(), None)
    }

    fn up(pool: Pool) -> Pool {
        pool.all_healthy()
    }

    /// How many of 1,000 picks went to each member.
    fn spread(pool: &Pool) -> Vec<usize> {
        let mut counts = vec![0; pool.members().len()];
        for _ in 0..1000 {
            let picked = pool.pick();
            counts[pool.index_of(picked).expect("a member")] += 1;
        }
        counts
    }

    #[test]
    fn one_member_is_picked_up_or_down() {
        let down = pool(1);
        assert!(!down.is_healthy());
        assert_eq!(down.pick().addr.port(), 1);
        assert_eq!(up(pool(1)).pick().addr.port(), 1);
    }

    #[test]
    fn equal_members_all_take_requests() {
        let counts = spread(&up(pool(3)));
        assert!(counts.iter().all(|c| *c > 200), "{counts:?}");
    }

    #[test]
    fn a_down_member_takes_nothing_while_another_is_up() {
        let pool = up(pool(3)).with_health(1, false);
        let counts = spread(&pool);
        assert_eq!(counts[1], 0, "{counts:?}");
        assert!(counts[0] > 0 && counts[2] > 0, "{counts:?}");
        let only = pool.with_health(0, false);
        assert_eq!(spread(&only), vec![0, 0, 1000]);
    }

    #[test]
    fn with_every_member_down_the_pick_still_spreads() {
        let pool = pool(3);
        assert!(!pool.is_healthy());
        let counts = spread(&pool);
        assert!(counts.iter().all(|c| *c > 0), "{counts:?}");
    }

    #[test]
    fn the_member_with_the_most_in_flight_loses_every_draw() {
        let pool = up(pool(3));
        let busy: Vec<_> = (0..5).map(|_| pool.members()[2].start_request()).collect();
        let one = pool.members()[0].start_request();
        let counts = spread(&pool);
        // Every pair holds member 0 or 1, and each beats member 2.
        assert_eq!(counts[2], 0, "{counts:?}");
        // Member 1 (none in flight) beats member 0 (one) whenever drawn.
        assert!(counts[1] > counts[0], "{counts:?}");
        drop((busy, one));
    }

    #[test]
    fn a_retry_goes_to_an_untried_healthy_member_until_there_is_none() {
        let pool = up(pool(3)).with_health(2, false);
        let tried = Tried::default().with(0);
        for _ in 0..100 {
            let (at, member) = pool.pick_untried(tried).expect("member 1 is left");
            assert_eq!((at, member.addr.port()), (1, 2));
        }
        assert!(pool.pick_untried(tried.with(1)).is_none());
    }

    #[test]
    fn a_verdict_flips_one_member_and_the_slot_is_up_while_any_is() {
        let pool = up(pool(2)).with_health(0, false);
        assert!(pool.is_healthy() && !pool.member_healthy(0) && pool.member_healthy(1));
        let pool = pool.with_health(1, false);
        assert!(!pool.is_healthy());
        assert!(pool.with_health(0, true).is_healthy());
    }

    #[test]
    fn the_nth_bit_counts_set_bits_only() {
        assert_eq!(nth_bit(0b1011_0100, 0), 2);
        assert_eq!(nth_bit(0b1011_0100, 1), 4);
        assert_eq!(nth_bit(0b1011_0100, 3), 7);
        assert_eq!(pool(64).every(), u64::MAX);
        assert_eq!(pool(3).every(), 0b111);
    }
}
