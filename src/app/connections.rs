//! The connections one listener holds, and which of them are closed without being
//! asked: a connection that has not sent its first request within the header-read
//! timeout (sending nothing, only the HTTP/2 preface, or part of a head), an HTTP/1
//! head begun and not finished in it, a connection idle between requests past the idle
//! timeout, and, at a cap, the oldest connection that holds no request.
//!
//! # Caps shed, they do not refuse
//!
//! At `AXNT_MAX_CONNECTIONS` (or a client's `AXNT_MAX_CONNECTIONS_PER_CLIENT`) a new
//! connection is let in and the oldest connection that holds no request is closed in
//! its place: first one that has not sent a request yet, then one idle between
//! requests. Refusing the new connection instead would hand the listener to whoever
//! opened idle sockets first; shedding means a client that sends a request always gets
//! in, and an idle socket lives only until someone needs its slot. Only when every
//! connection has a request in progress does the listener wait for one to finish
//! (new connections then wait in the kernel's accept queue); a client at its own cap
//! whose every connection has a request in progress is let in all the same (the
//! per-client cap is against sockets held idle; a busy caller loses no request to it).
//!
//! Only a connection quiet for [`SHED_GRACE`] is shed: a client that has just
//! connected, or just been answered on a kept-alive connection, is about to send on it,
//! and closing it then would fail that request ("connection closed before message
//! completed"). A socket held idle is quiet for far longer.
//!
//! Trusted proxies are exempt from the per-client cap: a load balancer carries every
//! user. An IPv6 client is counted by its /64 ([`ClientKey`]).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::{ServerSettings, TrustedProxies};
use crate::http::client::ClientKey;

/// How long a connection must have held no request (since it opened, or since its last
/// answer) before a cap may shed it.
pub(super) const SHED_GRACE: Duration = Duration::from_secs(1);

/// Why the server closed a connection: [`HTTP_CONNECTIONS_CLOSED_TOTAL`](crate::series::HTTP_CONNECTIONS_CLOSED_TOTAL)'s `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub(super) enum CloseReason {
    /// No first request within the header-read timeout of opening.
    FirstRequestTimeout,
    /// An HTTP/1 head begun on a kept-alive connection and not finished in time.
    HeadTimeout,
    /// Idle between requests past the idle timeout.
    IdleTimeout,
    /// Closed to let in a newer connection from the same client, at its cap.
    ShedClientCap,
    /// Closed to let in a newer connection, at the listener's cap.
    ShedCap,
    /// A new connection closed at once: every connection had a request in progress
    /// when it came (the listener waits for that before accepting, so this is rare).
    RefusedCap,
}

/// The timeouts and caps, from the settings.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimits {
    pub(super) header_read_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) max: usize,
    pub(super) per_client: usize,
    pub(super) trusted_proxies: TrustedProxies,
}

impl From<&ServerSettings> for ConnectionLimits {
    fn from(s: &ServerSettings) -> Self {
        Self {
            header_read_timeout: s.header_read_timeout,
            idle_timeout: s.idle_timeout,
            max: s.max_connections,
            per_client: s.max_connections_per_client,
            trusted_proxies: s.trusted_proxies.clone(),
        }
    }
}

/// What a connection's task does next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Close it, for this reason.
    Close(CloseReason),
    /// Look again at this instant (or when woken).
    At(Instant),
    /// A request is in progress: look again when woken.
    Busy,
}

/// One connection, as its task, its socket, its requests and the registry see it.
pub(super) struct Connection {
    id: u64,
    opened: Instant,
    /// `None` for a trusted proxy, which no per-client cap applies to.
    client: Option<ClientKey>,
    state: Mutex<State>,
    /// Wakes the connection's task when its state changed.
    pub(super) changed: Notify,
    /// The registry's: a connection that frees or goes idle may make room.
    room: Arc<Notify>,
}

#[derive(Debug)]
struct State {
    in_flight: usize,
    requests: u64,
    http2: bool,
    /// When the last request finished (or the connection opened).
    idle_since: Instant,
    /// When the first byte of the next HTTP/1 head arrived, while idle.
    head_started: Option<Instant>,
    /// Set by the registry: close once no request is in progress.
    shed: Option<CloseReason>,
}

impl Connection {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain counters: still usable.
        self.state.lock()
    }

    /// A request's head arrived: the connection is busy until the guard is dropped
    /// (with the request's answer, once it is written).
    pub(super) fn request_started(self: &Arc<Self>, http2: bool) -> InFlight {
        let mut state = self.state();
        state.in_flight += 1;
        state.requests += 1;
        state.http2 |= http2;
        state.head_started = None;
        drop(state);
        InFlight(Arc::clone(self))
    }

    /// Bytes arrived. On an idle HTTP/1 connection they begin the next head, which
    /// must then be whole within the header-read timeout.
    pub(super) fn bytes_read(&self) {
        let mut state = self.state();
        if state.in_flight == 0
            && state.requests > 0
            && !state.http2
            && state.head_started.is_none()
        {
            state.head_started = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    /// Whether it has sent a request.
    pub(super) fn served(&self) -> bool {
        self.state().requests > 0
    }

    /// What the connection's task does next, at `now`.
    pub(super) fn next(&self, limits: &ConnectionLimits, now: Instant) -> Next {
        let state = self.state();
        if state.in_flight > 0 {
            return Next::Busy;
        }
        if let Some(reason) = state.shed {
            return Next::Close(reason);
        }
        let (at, reason) = if state.requests == 0 {
            (
                self.opened + limits.header_read_timeout,
                CloseReason::FirstRequestTimeout,
            )
        } else {
            let idle = (
                state.idle_since + limits.idle_timeout,
                CloseReason::IdleTimeout,
            );
            match state.head_started {
                Some(started) => {
                    let head = (
                        started + limits.header_read_timeout,
                        CloseReason::HeadTimeout,
                    );
                    if head.0 < idle.0 { head } else { idle }
                }
                None => idle,
            }
        };
        if at <= now {
            Next::Close(reason)
        } else {
            Next::At(at)
        }
    }

    /// 0: has not sent a request (shed first), 1: idle between requests; `None`: a
    /// request is in progress, a head is arriving, or it has been quiet for less than
    /// [`SHED_GRACE`] (never shed).
    fn shed_rank(&self) -> Option<u8> {
        let state = self.state();
        self.sheddable(&state)
            .then_some(u8::from(state.requests > 0))
    }

    fn sheddable(&self, state: &State) -> bool {
        let quiet_since = if state.requests == 0 {
            self.opened
        } else {
            state.idle_since
        };
        state.in_flight == 0
            && state.shed.is_none()
            && (state.requests == 0 || state.head_started.is_none())
            && quiet_since.elapsed() >= SHED_GRACE
    }

    /// Marks it to be closed, unless a request began since it was picked.
    fn try_shed(&self, reason: CloseReason) -> bool {
        let mut state = self.state();
        if !self.sheddable(&state) {
            return false;
        }
        state.shed = Some(reason);
        drop(state);
        self.changed.notify_one();
        true
    }
}

/// A request in progress on a connection; dropped with its answer.
pub(super) struct InFlight(Arc<Connection>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let conn = &self.0;
        let mut state = conn.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
            drop(state);
            conn.changed.notify_one();
            conn.room.notify_one();
        }
    }
}

/// The connections of one listener.
pub(super) struct Connections {
    limits: ConnectionLimits,
    open: Mutex<Open>,
    room: Arc<Notify>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Open {
    /// By id, which is also the order they opened in.
    all: BTreeMap<u64, Arc<Connection>>,
    per_client: HashMap<ClientKey, usize>,
}

impl Open {
    fn forget(&mut self, conn: &Connection) -> bool {
        if self.all.remove(&conn.id).is_none() {
            return false;
        }
        if let Some(client) = conn.client
            && let Some(count) = self.per_client.get_mut(&client)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_client.remove(&client);
            }
        }
        true
    }

    /// The oldest connection that holds no request (one that sent none first), of
    /// `client` when given.
    fn oldest_idle(&self, client: Option<ClientKey>) -> Option<Arc<Connection>> {
        let mut idle_between = None;
        for conn in self.all.values() {
            if client.is_some() && conn.client != client {
                continue;
            }
            match conn.shed_rank() {
                Some(0) => return Some(Arc::clone(conn)),
                Some(_) if idle_between.is_none() => idle_between = Some(Arc::clone(conn)),
                _ => {}
            }
        }
        idle_between
    }

    /// Closes the oldest idle connection (of `client` when given) for `reason`.
    fn shed(&mut self, client: Option<ClientKey>, reason: CloseReason) -> bool {
        // A request may begin on the one picked before it is marked: pick again.
        while let Some(conn) = self.oldest_idle(client) {
            if conn.try_shed(reason) {
                self.forget(&conn);
                return true;
            }
        }
        false
    }
}

impl Connections {
    pub(super) fn new(limits: ConnectionLimits) -> Self {
        Self {
            limits,
            open: Mutex::new(Open::default()),
            room: Arc::new(Notify::new()),
            next_id: AtomicU64::new(0),
        }
    }

    pub(super) fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    fn open(&self) -> MutexGuard<'_, Open> {
        self.open.lock()
    }

    /// Resolves once a new connection could be let in: below the cap, or with a
    /// connection to shed (one may become sheddable as it stays quiet: looked at again
    /// every quarter of [`SHED_GRACE`]).
    pub(super) async fn room(&self) {
        loop {
            let notified = self.room.notified();
            {
                let open = self.open();
                if open.all.len() < self.limits.max || open.oldest_idle(None).is_some() {
                    return;
                }
            }
            let _ = tokio::time::timeout(SHED_GRACE / 4, notified).await;
        }
    }

    /// Lets in a connection from `peer`, shedding another at a cap; `Err` when it
    /// cannot be let in (it is then closed at once). A client at its own cap sheds its
    /// oldest connection holding no request; one whose every connection has a request
    /// in progress is let in all the same: the per-client cap is against sockets held
    /// idle, and a busy client's requests are bounded by the request timeout and the
    /// listener's cap, never cut.
    pub(super) fn admit(&self, peer: IpAddr) -> Result<Arc<Connection>, CloseReason> {
        let client = (!self.limits.trusted_proxies.contains(peer)).then(|| ClientKey::from(peer));
        let mut open = self.open();
        if let Some(key) = client
            && open.per_client.get(&key).copied().unwrap_or(0)
                >= self.limits.per_client.min(self.limits.max)
        {
            open.shed(Some(key), CloseReason::ShedClientCap);
        }
        if open.all.len() >= self.limits.max && !open.shed(None, CloseReason::ShedCap) {
            return Err(CloseReason::RefusedCap);
        }
        let now = Instant::now();
        let conn = Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            opened: now,
            client,
            state: Mutex::new(State {
                in_flight: 0,
                requests: 0,
                http2: false,
                idle_since: now,
                head_started: None,
                shed: None,
            }),
            changed: Notify::new(),
            room: Arc::clone(&self.room),
        });
        open.all.insert(conn.id, Arc::clone(&conn));
        if let Some(key) = client {
            *open.per_client.entry(key).or_insert(0) += 1;
        }
        Ok(conn)
    }

    /// The connection closed (or was shed before).
    pub(super) fn release(&self, conn: &Connection) {
        if self.open().forget(conn) {
            self.room.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_client: usize, trusted: &str) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max,
            per_client,
            trusted_proxies: trusted.parse().expect("proxies"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn shed_reason(conn: &Connection) -> Option<CloseReason> {
        conn.state().shed
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_oldest_connection_without_a_request_makes_room() {
        let connections = Connections::new(limits(3, 3, ""));
        let served = connections.admit(ip("192.0.2.1")).expect("in");
        drop(served.request_started(false)); // served one, now idle between requests
        let silent = connections.admit(ip("192.0.2.2")).expect("in");
        let busy = connections.admit(ip("192.0.2.3")).expect("in");
        let _request = busy.request_started(false);

        // Full, and nobody quiet long enough: a new connection is not let in yet (its
        // peers are about to send on theirs).
        assert_eq!(
            connections.admit(ip("192.0.2.7")).err(),
            Some(CloseReason::RefusedCap)
        );
        assert_eq!(shed_reason(&silent), None);
        tokio::time::advance(SHED_GRACE).await;

        // Full: the one that never sent a request goes first, though younger.
        let newer = connections.admit(ip("192.0.2.4")).expect("in");
        assert_eq!(shed_reason(&silent), Some(CloseReason::ShedCap));
        assert_eq!(shed_reason(&served), None);
        let _newer_request = newer.request_started(false);
        // Then the one idle between requests; never a busy one.
        tokio::time::advance(SHED_GRACE).await;
        let newest = connections.admit(ip("192.0.2.5")).expect("in");
        assert_eq!(shed_reason(&served), Some(CloseReason::ShedCap));
        let _newest_request = newest.request_started(false);
        assert_eq!(
            connections.admit(ip("192.0.2.6")).err(),
            Some(CloseReason::RefusedCap),
            "every connection has a request in progress"
        );
        assert_eq!(shed_reason(&busy), None);
    }

    #[tokio::test(start_paused = true)]
    async fn one_client_sheds_its_own_connections_and_proxies_are_not_capped() {
        let connections = Connections::new(limits(100, 2, "10.0.0.0/8"));
        let first = connections.admit(ip("2001:db8:1:2::1")).expect("in");
        let second = connections.admit(ip("2001:db8:1:2::2")).expect("in");
        let other = connections.admit(ip("192.0.2.9")).expect("in");
        tokio::time::advance(SHED_GRACE).await;
        // A third from the same /64 sheds that client's oldest, nobody else's.
        let third = connections.admit(ip("2001:db8:1:2::3")).expect("in");
        assert_eq!(shed_reason(&first), Some(CloseReason::ShedClientCap));
        assert_eq!(shed_reason(&second), None);
        assert_eq!(shed_reason(&other), None);
        // With both busy, its next one is let in: a busy client loses no request.
        let _second_request = second.request_started(false);
        let _third_request = third.request_started(false);
        let fourth = connections.admit(ip("2001:db8:1:2::4")).expect("in");
        assert_eq!(shed_reason(&second), None);
        assert_eq!(shed_reason(&third), None);
        // …and once it has been quiet a while, it is the one a fifth sheds.
        tokio::time::advance(SHED_GRACE).await;
        let fifth = connections.admit(ip("2001:db8:1:2::5")).expect("in");
        assert_eq!(shed_reason(&fourth), Some(CloseReason::ShedClientCap));
        drop(fifth);
        // Another /64 is another client.
        assert!(connections.admit(ip("2001:db8:1:3::1")).is_ok());
        // A trusted proxy holds as many as the listener allows.
        for _ in 0..10 {
            assert!(connections.admit(ip("::ffff:10.0.0.5")).is_ok());
        }
    }

    #[tokio::test]
    async fn deadlines_follow_the_connection_state() {
        let limits = limits(10, 10, "");
        let connections = Connections::new(limits.clone());
        let conn = connections.admit(ip("192.0.2.1")).expect("in");
        let opened = conn.opened;
        assert_eq!(
            conn.next(&limits, opened),
            Next::At(opened + limits.header_read_timeout)
        );
        assert_eq!(
            conn.next(&limits, opened + limits.header_read_timeout),
            Next::Close(CloseReason::FirstRequestTimeout)
        );
        let request = conn.request_started(false);
        assert_eq!(
            conn.next(&limits, opened + Duration::from_secs(3600)),
            Next::Busy
        );
        drop(request);
        let idle_since = conn.state().idle_since;
        assert_eq!(
            conn.next(&limits, idle_since),
            Next::At(idle_since + limits.idle_timeout)
        );
        // The next head's first byte: it must be whole within the header-read timeout.
        conn.bytes_read();
        let started = conn.state().head_started.expect("head started");
        assert_eq!(
            conn.next(&limits, started + limits.header_read_timeout),
            Next::Close(CloseReason::HeadTimeout)
        );
        // HTTP/2 frames between requests (pings, window updates) begin no head.
        let h2 = connections.admit(ip("192.0.2.2")).expect("in");
        drop(h2.request_started(true));
        h2.bytes_read();
        assert!(h2.state().head_started.is_none());
    }

    #[tokio::test]
    async fn a_released_connection_frees_its_slot() {
        let connections = Connections::new(limits(1, 1, ""));
        let conn = connections.admit(ip("192.0.2.1")).expect("in");
        let _request = conn.request_started(false);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), connections.room())
                .await
                .is_err(),
            "no room while the only connection is busy"
        );
        connections.release(&conn);
        tokio::time::timeout(Duration::from_secs(1), connections.room())
            .await
            .expect("room once it closed");
    }
}
