//! The fleet's reader threads: one current-thread runtime each over its
//! share of the subscriber sockets; a subscriber connects, subscribes, and
//! scans what it reads in place, timing each APPLIED entry against the
//! send log; the per-thread counters the bench reads.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use tokio::net::{TcpSocket, TcpStream};
use trove_proto::frame::{self, Frame, Kind, entry_kind};

use super::super::{Clock, Latencies, lock};
use super::send_log::{Cause, Logged, SendLog};
use super::ws::{scan_ws, ws_handshake, ws_setup, ws_text};
use super::{
    CARRY_KEEP, CONNECTING_MAX, FLUSH_EVERY, PING_EVERY, READ_CHUNK, SETUP_TIMEOUT, SIZES, SLOW_RCVBUF, SLOW_TICK,
    ThreadPlan,
};

/// Counters of one thread's fast or slow subscribers (one writer).
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) entries: AtomicU64,
    pub(super) bytes: AtomicU64,
    pub(super) gaps: AtomicU64,
    pub(super) gap_entries: AtomicU64,
    /// APPLIED entries not timed: after a GAP, once desynced, or read
    /// before their matched intended time (`reordered`).
    pub(super) untimed: AtomicU64,
    /// APPLIED entries whose log slot was overwritten, timed as a lower
    /// bound (from a later entry's intended time).
    pub(super) lower_bound: AtomicU64,
    /// APPLIED entries read before the intended time they were matched
    /// with: the stream is out of the pacer's order (a BUSY resend).
    pub(super) reordered: AtomicU64,
    /// Streams that stopped lining up with the log (more entries than
    /// events sent, a hole in the numbering without a GAP, or a refused
    /// batch).
    pub(super) desynced: AtomicU64,
}

/// A subscriber's counts: what one scan of read bytes found, or the
/// totals of [`Counters`] at a moment.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Count {
    pub(super) entries: u64,
    pub(super) bytes: u64,
    pub(super) gaps: u64,
    pub(super) gap_entries: u64,
    pub(super) untimed: u64,
    pub(super) lower_bound: u64,
    pub(super) reordered: u64,
    pub(super) desynced: u64,
}

impl Counters {
    pub(super) fn read(&self) -> Count {
        Count {
            entries: self.entries.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            gaps: self.gaps.load(Relaxed),
            gap_entries: self.gap_entries.load(Relaxed),
            untimed: self.untimed.load(Relaxed),
            lower_bound: self.lower_bound.load(Relaxed),
            reordered: self.reordered.load(Relaxed),
            desynced: self.desynced.load(Relaxed),
        }
    }

    pub(super) fn add(&self, t: &Count) {
        self.entries.fetch_add(t.entries, Relaxed);
        self.bytes.fetch_add(t.bytes, Relaxed);
        if t.gaps + t.untimed + t.lower_bound + t.desynced > 0 {
            self.gaps.fetch_add(t.gaps, Relaxed);
            self.gap_entries.fetch_add(t.gap_entries, Relaxed);
            self.untimed.fetch_add(t.untimed, Relaxed);
            self.lower_bound.fetch_add(t.lower_bound, Relaxed);
            self.reordered.fetch_add(t.reordered, Relaxed);
            self.desynced.fetch_add(t.desynced, Relaxed);
        }
    }
}

impl Count {
    pub(super) fn since(self, o: Count) -> Count {
        Count {
            entries: self.entries - o.entries,
            bytes: self.bytes - o.bytes,
            gaps: self.gaps - o.gaps,
            gap_entries: self.gap_entries - o.gap_entries,
            untimed: self.untimed - o.untimed,
            lower_bound: self.lower_bound - o.lower_bound,
            reordered: self.reordered - o.reordered,
            desynced: self.desynced - o.desynced,
        }
    }

    pub(super) fn plus(self, o: Count) -> Count {
        Count {
            entries: self.entries + o.entries,
            bytes: self.bytes + o.bytes,
            gaps: self.gaps + o.gaps,
            gap_entries: self.gap_entries + o.gap_entries,
            untimed: self.untimed + o.untimed,
            lower_bound: self.lower_bound + o.lower_bound,
            reordered: self.reordered + o.reordered,
            desynced: self.desynced + o.desynced,
        }
    }
}

/// A fleet thread's figures, shared with the bench.
#[derive(Debug, Default)]
pub(super) struct ThreadShared {
    /// The thread's Linux id, for its CPU time; 0 until it runs.
    pub(super) tid: AtomicU64,
    pub(super) fast: Counters,
    pub(super) slow: Counters,
    pub(super) latencies: Mutex<Latencies>,
    pub(super) flushes: AtomicU64,
}

/// A subscriber's progress, for `pending`: one cache line each, as its
/// thread stores `applied` on every read and neighbours belong to other
/// threads.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(super) struct SubShared {
    /// APPLIED entries seen.
    pub(super) applied: AtomicU64,
    /// Still timing its hunt.
    pub(super) synced: AtomicBool,
}

/// CPU time of thread `tid` of this process (0: unknown): run time from
/// schedstat, nanoseconds.
pub(super) fn thread_cpu(tid: u64) -> Duration {
    if tid == 0 {
        return Duration::ZERO;
    }
    let path = format!("/proc/self/task/{tid}/schedstat");
    let ns = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse::<u64>().ok()))
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// This thread's Linux id, from /proc/thread-self.
pub(super) fn own_tid() -> u64 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// A thread's state shared by its subscriber tasks (one thread: no lock).
pub(super) struct Local {
    /// The read buffer: a carried partial frame, then what is read.
    pub(super) buf: Vec<u8>,
    pub(super) latencies: Latencies,
    /// Every live connection, to ping (and whether it speaks WebSocket);
    /// a subscriber's task owns its stream, so one that ended is gone.
    pub(super) streams: Vec<(Weak<TcpStream>, bool)>,
}

pub(super) fn fleet_thread(plan: ThreadPlan) {
    plan.shared.tid.store(own_tid(), Relaxed);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            let _ = plan.ready.send(Err(format!("fan-out runtime: {e}")));
            return;
        }
    };
    let local = Rc::new(RefCell::new(Local { buf: Vec::new(), latencies: Latencies::default(), streams: Vec::new() }));
    let set = tokio::task::LocalSet::new();
    let ThreadPlan {
        subs,
        ws,
        deflate,
        slow_bytes_per_s,
        read_interval,
        token,
        broadcasts_only,
        log,
        shared,
        subs_shared,
        clock,
        stop,
        ready,
        error,
    } = plan;
    set.block_on(&runtime, async move {
        let gate = Rc::new(tokio::sync::Semaphore::new(CONNECTING_MAX));
        for (i, hunt, slow, addr) in subs {
            let sub = Sub {
                index: i,
                hunt,
                slow,
                ws,
                applied: 0,
                next_seq: 0,
                synced: true,
                news: broadcasts_only,
                cause: 0,
                carry: Vec::new(),
                frame_max: frame::FRAME_BODY_MAX_DEFAULT as usize,
            };
            let ctx = Ctx {
                log: log.clone(),
                shared: shared.clone(),
                subs: subs_shared.clone(),
                local: local.clone(),
                clock,
                slow_bytes_per_s,
                read_interval,
                token: token.clone(),
                broadcasts_only,
                deflate,
            };
            let (gate, ready, error, stop) = (gate.clone(), ready.clone(), error.clone(), stop.clone());
            let watch_error = error.clone();
            let task = tokio::task::spawn_local(async move {
                let permit = gate.acquire().await;
                let conn = tokio::time::timeout(SETUP_TIMEOUT, connect(addr, sub, &ctx)).await;
                drop(permit);
                let (stream, sub) = match conn {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                    Err(_) => {
                        let _ = ready.send(Err(format!("subscriber {i}: no SUBSCRIBED within {SETUP_TIMEOUT:?}")));
                        return;
                    }
                };
                let stream = Rc::new(stream);
                ctx.local.borrow_mut().streams.push((Rc::downgrade(&stream), sub.ws));
                let _ = ready.send(Ok(()));
                drop(ready);
                if let Err(e) = read_loop(&stream, sub, &ctx).await
                    && !stop.load(Relaxed)
                {
                    lock(&error).get_or_insert(e);
                }
            });
            // A task that panicked (a bug: hostile input is an error) is
            // not lost silently.
            tokio::task::spawn_local(async move {
                if let Err(e) = task.await
                    && e.is_panic()
                {
                    lock(&watch_error).get_or_insert_with(|| format!("subscriber {i}: its task panicked"));
                }
            });
        }
        drop(ready);
        // Flushes the thread's latencies; ends the thread when told to stop.
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        let mut next_ping = Instant::now() + PING_EVERY;
        let (ping_tcp, ping_ws) = {
            let mut out = Vec::new();
            frame::encode_u64_frame(&mut out, Kind::Ping, 0);
            (out, ws_text(br#"{"type":"ping","nonce":0}"#))
        };
        loop {
            tick.tick().await;
            if Instant::now() >= next_ping {
                // Tiny frames into sockets that send nothing else: a full
                // send buffer (never seen) would skip a ping, or cut one.
                local.borrow_mut().streams.retain(|(s, ws)| {
                    let Some(s) = s.upgrade() else { return false };
                    let ping = if *ws { &ping_ws } else { &ping_tcp };
                    if matches!(s.try_write(ping), Ok(n) if n < ping.len()) {
                        lock(&error).get_or_insert_with(|| "a ping was cut short".into());
                    }
                    true
                });
                next_ping = Instant::now() + PING_EVERY;
            }
            {
                let mut l = local.borrow_mut();
                let mut shared_l = lock(&shared.latencies);
                for (step, h, n) in l.latencies.steps.drain(..) {
                    match shared_l.steps.iter_mut().find(|s| s.0 == step) {
                        Some(s) => {
                            s.1.add(&h).ok();
                            s.2 += n;
                        }
                        None => shared_l.steps.push((step, h, n)),
                    }
                }
            }
            shared.flushes.fetch_add(1, Release);
            if stop.load(Relaxed) {
                break;
            }
        }
    });
    // The tasks (and their sockets) go while the runtime is still there.
    drop(set);
    runtime.shutdown_timeout(Duration::from_millis(100));
}

/// What every task of a thread shares.
pub(super) struct Ctx {
    pub(super) log: Arc<SendLog>,
    pub(super) shared: Arc<ThreadShared>,
    pub(super) subs: Arc<Vec<SubShared>>,
    pub(super) local: Rc<RefCell<Local>>,
    pub(super) clock: Clock,
    pub(super) slow_bytes_per_s: u32,
    pub(super) read_interval: Duration,
    pub(super) token: Option<trove_client::Token>,
    /// Subscribe to the hunt's broadcasts alone (their entries are counted,
    /// not timed: only APPLIED entries match the send log).
    pub(super) broadcasts_only: bool,
    /// WebSocket subscribers ask for compressed updates in a `hello`.
    pub(super) deflate: bool,
}

/// One subscriber's stream state.
#[derive(Debug)]
pub(super) struct Sub {
    pub(super) index: usize,
    pub(super) hunt: u32,
    pub(super) slow: bool,
    pub(super) ws: bool,
    /// APPLIED entries seen since SUBSCRIBED: the index of the next in the log.
    pub(super) applied: u64,
    /// The number the next entry must carry.
    pub(super) next_seq: u64,
    /// Timing its hunt (false after a GAP, or once the stream and the log
    /// no longer line up).
    pub(super) synced: bool,
    /// A broadcasts-only stream: its `treasure_found` entries are timed
    /// from their digs ([`news`]).
    pub(super) news: bool,
    /// The log index the next broadcast's cause is at or after.
    pub(super) cause: u64,
    /// The unfinished frame (or WebSocket frame) after the last read.
    pub(super) carry: Vec<u8>,
    pub(super) frame_max: usize,
}

pub(super) async fn connect(addr: SocketAddr, mut sub: Sub, ctx: &Ctx) -> Result<(TcpStream, Sub), String> {
    let (index, hunt) = (sub.index, sub.hunt);
    let who = move |e: String| format!("subscriber {index} (hunt {hunt}): {e}");
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
    let socket = socket.map_err(|e| who(e.to_string()))?;
    if sub.slow {
        socket.set_recv_buffer_size(SLOW_RCVBUF).map_err(|e| who(e.to_string()))?;
    }
    let mut stream = socket.connect(addr).await.map_err(|e| who(format!("connecting to {addr}: {e}")))?;
    stream.set_nodelay(true).ok();
    let hunt = sub.hunt;
    if sub.ws {
        ws_handshake(&mut stream, addr, ctx.token.as_ref()).await.map_err(&who)?;
        if ctx.deflate {
            write_all(&stream, &ws_text(br#"{"type":"hello","compression":"deflate"}"#)).await.map_err(&who)?;
        }
        let only = if ctx.broadcasts_only { r#","broadcasts_only":true"# } else { "" };
        write_all(&stream, &ws_text(format!(r#"{{"type":"subscribe","hunt":{hunt}{only}}}"#).as_bytes()))
            .await
            .map_err(&who)?;
    } else {
        let mut out = Vec::new();
        let hello = match &ctx.token {
            Some(t) => frame::Hello::v2(0, 0, t.0),
            None => frame::Hello::v1(0, 0),
        };
        frame::encode_hello(&mut out, &hello);
        frame::encode_subscribe(&mut out, hunt, ctx.broadcasts_only);
        write_all(&stream, &out).await.map_err(&who)?;
    }
    // Up to SUBSCRIBED, read without the thread's buffer.
    let mut buf = Vec::new();
    let mut head_read = false;
    loop {
        stream.readable().await.map_err(|e| who(e.to_string()))?;
        let mut chunk = [0u8; 4096];
        match stream.try_read(&mut chunk) {
            Ok(0) => return Err(who("the server closed the connection before SUBSCRIBED".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(who(e.to_string())),
        }
        if buf.len() > 1 << 20 {
            return Err(who("more than 1 MiB before SUBSCRIBED".into()));
        }
        let mut at = 0;
        let subscribed =
            if sub.ws { ws_setup(&buf, &mut at, &mut sub, &mut head_read) } else { tcp_setup(&buf, &mut at, &mut sub) };
        let subscribed = subscribed.map_err(&who)?;
        buf.drain(..at);
        if subscribed {
            ctx.subs[sub.index].synced.store(true, Relaxed);
            sub.carry = buf;
            return Ok((stream, sub));
        }
    }
}

/// Reads WELCOME then SUBSCRIBED from `buf[*at..]`: true once subscribed.
pub(super) fn tcp_setup(buf: &[u8], at: &mut usize, sub: &mut Sub) -> Result<bool, String> {
    while let Some((header, total)) =
        frame::split(&buf[*at..], frame::FRAME_BODY_MAX_LIMIT).map_err(|e| e.to_string())?
    {
        let body = &buf[*at + frame::HEADER_LEN..*at + total];
        let f = frame::decode(header, body, SIZES).map_err(|e| e.to_string())?;
        *at += total;
        match f {
            // The server's word, within the protocol's limit.
            Frame::Welcome(w) => sub.frame_max = w.frame_body_max.min(frame::FRAME_BODY_MAX_LIMIT) as usize,
            Frame::Subscribed { hunt, next_seq } if hunt == sub.hunt => {
                sub.next_seq = next_seq;
                return Ok(true);
            }
            Frame::Error { code, message } => return Err(format!("server error {code}: {message}")),
            other => return Err(format!("unexpected {:?} before SUBSCRIBED", kind_of(&other))),
        }
    }
    Ok(false)
}

pub(super) fn kind_of(f: &Frame<'_>) -> &'static str {
    match f {
        Frame::Update { .. } => "UPDATE",
        Frame::Gap { .. } => "GAP",
        Frame::Pong { .. } => "PONG",
        _ => "frame",
    }
}

pub(super) async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> Result<(), String> {
    while !bytes.is_empty() {
        stream.writable().await.map_err(|e| e.to_string())?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// Reads until the connection ends (the fleet's thread drops the task
/// when it stops).
pub(super) async fn read_loop(stream: &TcpStream, mut sub: Sub, ctx: &Ctx) -> Result<(), String> {
    let (index, hunt) = (sub.index, sub.hunt);
    let who = move |e: String| format!("subscriber {index} (hunt {hunt}): {e}");
    // What came with SUBSCRIBED is scanned first.
    let mut first = !sub.carry.is_empty();
    // Reads at most once an interval.
    let paced = !sub.slow && !ctx.read_interval.is_zero();
    loop {
        if sub.slow {
            tokio::time::sleep(SLOW_TICK).await;
        } else if !first {
            stream.readable().await.map_err(|e| who(e.to_string()))?;
        }
        let n = read_once(stream, &mut sub, ctx, std::mem::take(&mut first)).map_err(&who)?;
        if paced && n > 0 {
            tokio::time::sleep(ctx.read_interval).await;
        }
    }
}

/// One read (none when `carried_only`: what is carried is scanned) and
/// its scan, in the thread's buffer; returns the bytes read (0 when the
/// socket had none after all).
pub(super) fn read_once(stream: &TcpStream, sub: &mut Sub, ctx: &Ctx, carried_only: bool) -> Result<usize, String> {
    // A slow reader's budget per tick, at least one byte.
    let slow_budget = (u64::from(ctx.slow_bytes_per_s) * SLOW_TICK.as_millis() as u64 / 1000).max(1) as usize;
    let mut local = ctx.local.borrow_mut();
    let Local { buf, latencies, .. } = &mut *local;
    let mut carry = std::mem::take(&mut sub.carry);
    let carried = carry.len();
    let room = if sub.slow { slow_budget } else { READ_CHUNK };
    // A large frame under way is read on into its own carry, so that
    // what came before is not copied again on every read (quadratic in
    // the frame's size); otherwise the carry is copied into the thread's
    // buffer, and what is read goes after it.
    let direct = carried >= CARRY_KEEP;
    if !direct {
        if buf.len() < carried + room {
            buf.resize(carried + room, 0);
        }
        buf[..carried].copy_from_slice(&carry);
    }
    let work: &mut Vec<u8> = if direct { &mut carry } else { buf };
    if work.len() < carried + room {
        work.resize(carried + room, 0);
    }
    let n = if carried_only {
        0
    } else {
        match stream.try_read(&mut work[carried..carried + room]) {
            Ok(0) => return Err("the server closed the connection".into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                carry.truncate(carried);
                sub.carry = carry;
                return Ok(0);
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let now_us = ctx.clock.now_ns() / 1000;
    let mut tally = Count { bytes: n as u64, ..Count::default() };
    let lat = if sub.slow { None } else { Some(latencies) };
    let mut scan = Scan { log: &ctx.log, now_us, lat, tally: &mut tally };
    let used = if sub.ws {
        scan_ws(&work[..carried + n], sub, &mut scan)
    } else {
        scan_tcp(&work[..carried + n], sub, &mut scan)
    }?;
    if direct {
        carry.truncate(carried + n);
        carry.drain(..used);
    } else {
        carry.clear();
        carry.extend_from_slice(&buf[used..carried + n]);
    }
    if carry.capacity() > CARRY_KEEP && carry.len() < CARRY_KEEP / 4 {
        // A large frame went by: do not keep its room per subscriber.
        carry.shrink_to(CARRY_KEEP / 4);
    }
    sub.carry = carry;
    drop(local);
    let c = if sub.slow { &ctx.shared.slow } else { &ctx.shared.fast };
    c.add(&tally);
    let s = &ctx.subs[sub.index];
    s.applied.store(sub.applied, Relaxed);
    if !sub.synced {
        s.synced.store(false, Relaxed);
    }
    Ok(n)
}

/// What a scan of read bytes times its APPLIED entries against and
/// counts into: the send log, the time of the read, the thread's
/// latencies (none for a slow subscriber), the read's tally.
pub(super) struct Scan<'a> {
    pub(super) log: &'a SendLog,
    pub(super) now_us: u64,
    pub(super) lat: Option<&'a mut Latencies>,
    pub(super) tally: &'a mut Count,
}

/// Times the APPLIED entry just seen (the `sub.applied`-th).
#[inline]
pub(super) fn applied(sub: &mut Sub, scan: &mut Scan<'_>) {
    let Scan { log, now_us, lat, tally } = scan;
    let (log, now_us) = (*log, *now_us);
    let k = sub.applied;
    sub.applied += 1;
    if !sub.synced {
        tally.untimed += 1;
        return;
    }
    let Some(lat) = lat else { return };
    let Some(ring) = log.ring(sub.hunt) else { return };
    if ring.desynced.load(Relaxed) {
        // A refused batch: logged events that were never applied.
        sub.synced = false;
        tally.desynced += 1;
        tally.untimed += 1;
        return;
    }
    match ring.get(k) {
        Logged::At(us, _) if now_us < us => {
            // Read before its matched send: out of the pacer's order.
            tally.reordered += 1;
            tally.untimed += 1;
        }
        Logged::At(us, step) => lat.record(step, now_us - us, 1),
        Logged::Overwritten => match ring.held_after_overwritten() {
            // The reader is more than a ring behind: at least this late.
            Some((us, step)) => {
                lat.record(step, now_us.saturating_sub(us), 1);
                tally.lower_bound += 1;
            }
            None => tally.untimed += 1,
        },
        Logged::Ahead => {
            // More updates than events sent: the stream no longer lines up.
            sub.synced = false;
            tally.desynced += 1;
            tally.untimed += 1;
        }
    }
}

/// The player of a BROADCAST entry's payload that is a `treasure_found`.
fn treasure_found_player(payload: &[u8]) -> Option<u32> {
    if payload.first() != Some(&trove_proto::hunt::broadcast_kind::TREASURE_FOUND) {
        return None;
    }
    // Kind and padding, round, then the player.
    Some(u32::from_le_bytes(payload.get(8..12)?.try_into().expect("4 bytes")))
}

/// Times a BROADCAST entry of a broadcasts-only stream, as [`applied`]
/// times an APPLIED one: a `treasure_found` of `player` from the intended
/// send time of its dig ([`super::send_log::Ring::find_dig`]; at least
/// the latency from the last candidate when the player dug more than once
/// since the hunt's broadcast before). Other broadcasts do not name their
/// cause: untimed. A GAP does not stop this timing (the cause of a later
/// broadcast is still after the last one's).
#[inline]
pub(super) fn news(sub: &mut Sub, player: Option<u32>, scan: &mut Scan<'_>) {
    let Scan { log, now_us, lat, tally } = scan;
    let Some(lat) = lat else { return };
    let (Some(player), Some(ring)) = (player, log.ring(sub.hunt)) else {
        tally.untimed += 1;
        return;
    };
    match ring.find_dig(sub.cause, player) {
        Cause::Exact(k, _, us) | Cause::AtLeast(k, _, us) if *now_us < us => {
            // Read before the dig's intended time: out of the pacer's order.
            sub.cause = k + 1;
            tally.reordered += 1;
            tally.untimed += 1;
        }
        Cause::Exact(k, step, us) => {
            sub.cause = k + 1;
            lat.record(step, *now_us - us, 1);
        }
        Cause::AtLeast(k, step, us) => {
            sub.cause = k + 1;
            lat.record(step, *now_us - us, 1);
            tally.lower_bound += 1;
        }
        Cause::None => tally.untimed += 1,
    }
}

/// Scans the whole frames at the front of `buf`; returns the bytes they
/// take (the rest is an unfinished frame).
pub(super) fn scan_tcp(buf: &[u8], sub: &mut Sub, scan: &mut Scan<'_>) -> Result<usize, String> {
    let mut at = 0;
    while let Some((header, total)) = frame::split(&buf[at..], sub.frame_max as u32).map_err(|e| e.to_string())? {
        let body = &buf[at + frame::HEADER_LEN..at + total];
        at += total;
        match header.kind {
            Kind::Update => {
                if header.flags != 0 || body.len() < frame::UPDATE_HEAD_LEN {
                    return Err("malformed UPDATE".into());
                }
                let hunt = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
                let count = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
                let first_seq = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
                if hunt != sub.hunt {
                    return Err(format!("an UPDATE of hunt {hunt}, not subscribed"));
                }
                if first_seq != sub.next_seq && sub.synced {
                    // A hole without a GAP: stop timing, go on counting.
                    sub.synced = false;
                    scan.tally.desynced += 1;
                }
                sub.next_seq = first_seq.checked_add(u64::from(count)).ok_or("an UPDATE past sequence 2^64")?;
                let mut seen = 0u32;
                for e in frame::entries(&body[frame::UPDATE_HEAD_LEN..]) {
                    let (kind, payload) = e.map_err(|e| format!("UPDATE: {e}"))?;
                    seen += 1;
                    if kind == entry_kind::APPLIED {
                        applied(sub, scan);
                    } else if sub.news {
                        news(sub, treasure_found_player(payload), scan);
                    }
                }
                if seen != count {
                    return Err(format!("an UPDATE of {count} entries holds {seen}"));
                }
                scan.tally.entries += u64::from(count);
            }
            _ => match frame::decode(header, body, SIZES).map_err(|e| e.to_string())? {
                Frame::Gap { first_missed, missed, .. } => gap(sub, first_missed, missed, scan.tally),
                Frame::Pong { .. } | Frame::Subscribed { .. } => {}
                Frame::Error { code, message } => return Err(format!("server error {code}: {message}")),
                other => return Err(format!("unexpected {} frame", kind_of(&other))),
            },
        }
    }
    Ok(at)
}

pub(super) fn gap(sub: &mut Sub, first_missed: u64, missed: u64, tally: &mut Count) {
    tally.gaps += 1;
    tally.gap_entries += missed;
    // The log's index no longer follows the stream.
    sub.synced = false;
    sub.next_seq = first_missed.saturating_add(missed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::fanout::WS_MESSAGE_MAX;
    use crate::load::histogram;

    fn sub() -> Sub {
        Sub {
            index: 0,
            hunt: 3,
            slow: false,
            ws: false,
            applied: 0,
            next_seq: 10,
            synced: true,
            news: false,
            cause: 0,
            carry: Vec::new(),
            frame_max: 1 << 20,
        }
    }

    #[test]
    fn tcp_frames_are_counted_timed_and_cut_at_a_partial_frame() {
        let log = SendLog::new(4, &[3]);
        for k in 0..3 {
            log.record(3, 1_000_000 + k * 1000, 2);
        }
        let mut out = Vec::new();
        let s = frame::begin_update(&mut out, 3, 10);
        for kind in [entry_kind::APPLIED, entry_kind::BROADCAST, entry_kind::APPLIED] {
            frame::push_entry(&mut out, kind, |o| o.extend_from_slice(&[0u8; 56]));
        }
        frame::end_update(&mut out, s, 3);
        let whole = out.len();
        frame::encode_gap(&mut out, 3, 13, 5);
        let s = frame::begin_update(&mut out, 3, 18);
        frame::push_entry(&mut out, entry_kind::APPLIED, |o| o.extend_from_slice(&[0u8; 56]));
        frame::end_update(&mut out, s, 1);
        let (mut sub, mut lat, mut t) = (sub(), Latencies::default(), Count::default());
        // A partial frame is left for the next read.
        let used = scan_tcp(
            &out[..whole - 1],
            &mut sub,
            &mut Scan { log: &log, now_us: 3000, lat: Some(&mut lat), tally: &mut t },
        )
        .unwrap();
        assert_eq!((used, t.entries), (0, 0));
        let used = scan_tcp(&out, &mut sub, &mut Scan { log: &log, now_us: 3000, lat: Some(&mut lat), tally: &mut t })
            .unwrap();
        assert_eq!(used, out.len());
        assert_eq!((t.entries, t.gaps, t.gap_entries, t.untimed, t.desynced), (4, 1, 5, 1, 0));
        let mut h = histogram();
        assert_eq!(lat.merge_into(2, &mut h), 2);
        // 3000 us less 1000 and 1001 (at the histogram's resolution).
        assert!(h.equivalent(h.min(), 1999) && h.equivalent(h.max(), 2000), "{} {}", h.min(), h.max());
        assert!(!sub.synced && sub.applied == 3 && sub.next_seq == 19);
    }
    fn update_frame(out: &mut Vec<u8>, hunt: u32, first_seq: u64, applied: u32) {
        let s = frame::begin_update(out, hunt, first_seq);
        for _ in 0..applied {
            frame::push_entry(out, entry_kind::APPLIED, |o| o.extend_from_slice(&[0u8; 56]));
        }
        frame::end_update(out, s, applied);
    }

    #[test]
    fn broadcasts_only_treasures_are_timed_from_their_digs() {
        use trove_hunt::{HuntBroadcast, HuntEvent, Top10, TreasureHunt};
        use trove_proto::wire::WireGame;
        use trove_server::json::JsonGame;
        let log = SendLog::new(4, &[3]).with_digs();
        // Log 0: player 5 digs at 1 ms; 1: 5 moves; 2: 6 digs at 3 ms;
        // 3 and 4: 7 digs at 4 and 5 ms.
        let events = [
            HuntEvent::dig(3, 5),
            HuntEvent::move_by(3, 5, 1, 0),
            HuntEvent::dig(3, 6),
            HuntEvent::dig(3, 7),
            HuntEvent::dig(3, 7),
        ];
        for (k, e) in events.iter().enumerate() {
            log.record_event(e, (k as u64 + 1) * 1_000_000, 2);
        }
        let found = |player| HuntBroadcast::TreasureFound {
            round: 1,
            player,
            x: 0,
            y: 0,
            value: 1,
            score: 1,
            treasures_left: 1,
        };
        let news = [
            found(6),
            HuntBroadcast::LeaderboardChanged { round: 1, top: Top10::default() },
            found(7),
            // Dug at 0, before the cause of the broadcast before: not it.
            found(5),
        ];
        let mut out = Vec::new();
        let s = frame::begin_update(&mut out, 3, 10);
        for b in &news {
            frame::push_entry(&mut out, entry_kind::BROADCAST, |o| TreasureHunt::encode_broadcast(b, o));
        }
        frame::end_update(&mut out, s, news.len() as u32);
        let (mut watcher, mut lat, mut t) = (Sub { news: true, ..sub() }, Latencies::default(), Count::default());
        scan_tcp(&out, &mut watcher, &mut Scan { log: &log, now_us: 10_000, lat: Some(&mut lat), tally: &mut t })
            .unwrap();
        // 6's exactly (10 - 3 ms), 7's at least from its last dig (10 - 5).
        assert_eq!((t.entries, t.untimed, t.lower_bound, t.reordered), (4, 2, 1, 0));
        let mut h = histogram();
        assert_eq!(lat.merge_into(2, &mut h), 2);
        assert!(h.equivalent(h.min(), 5000) && h.equivalent(h.max(), 7000), "{} {}", h.min(), h.max());
        assert_eq!(watcher.cause, 4, "after the first candidate of the last timed one");
        // The same stream over WebSocket.
        let entries: Vec<_> = news
            .iter()
            .map(|b| serde_json::json!({"kind": "broadcast", "body": TreasureHunt::broadcast_to_json(b)}))
            .collect();
        let m = serde_json::json!({"type": "update", "hunt": 3, "first_seq": 10, "entries": entries}).to_string();
        let mut buf = vec![0x81, 126];
        buf.extend_from_slice(&(m.len() as u16).to_be_bytes());
        buf.extend_from_slice(m.as_bytes());
        let (mut watcher, mut lat, mut t) = (Sub { news: true, ..sub() }, Latencies::default(), Count::default());
        scan_ws(&buf, &mut watcher, &mut Scan { log: &log, now_us: 10_000, lat: Some(&mut lat), tally: &mut t })
            .unwrap();
        assert_eq!((t.entries, t.untimed, t.lower_bound), (4, 2, 1));
        assert_eq!(lat.merge_into(2, &mut histogram()), 2);
        // A full stream's broadcasts are timed by their APPLIED entries.
        let (mut full, mut lat, mut t) = (sub(), Latencies::default(), Count::default());
        scan_tcp(&out, &mut full, &mut Scan { log: &log, now_us: 10_000, lat: Some(&mut lat), tally: &mut t }).unwrap();
        assert_eq!((t.untimed, lat.merge_into(2, &mut histogram())), (0, 0));
    }

    #[test]
    fn an_overwritten_entry_is_timed_as_a_lower_bound() {
        let log = SendLog::new(4, &[3]);
        let size = log.ring(3).unwrap().mask + 1;
        // Entries 0..size+2 sent 1 ms apart from 1 s; the subscriber reads
        // the first three when 0..2 are overwritten.
        for k in 0..size + 2 {
            log.record(3, (1_000 + k) * 1_000_000, 4);
        }
        let mut out = Vec::new();
        update_frame(&mut out, 3, 10, 3);
        let (mut sub, mut lat, mut t) = (sub(), Latencies::default(), Count::default());
        let now_us = (1_000 + size + 10) * 1000;
        scan_tcp(&out, &mut sub, &mut Scan { log: &log, now_us, lat: Some(&mut lat), tally: &mut t }).unwrap();
        // 0 and 1 overwritten: at least now less the oldest held (entry 2).
        assert_eq!((t.lower_bound, t.untimed, t.desynced), (2, 0, 0));
        let mut h = histogram();
        assert_eq!(lat.merge_into(4, &mut h), 3);
        assert!(h.equivalent(h.min(), (size + 8) * 1000), "{} {}", h.min(), size + 8);
        assert!(h.equivalent(h.max(), (size + 8) * 1000), "{}", h.max());
    }

    #[test]
    fn an_entry_read_before_its_send_is_counted_as_reordered() {
        let log = SendLog::new(4, &[3]);
        log.record(3, 5_000_000, 0);
        log.record(3, 9_000_000, 0);
        let mut out = Vec::new();
        update_frame(&mut out, 3, 10, 2);
        let (mut sub, mut lat, mut t) = (sub(), Latencies::default(), Count::default());
        // Read at 6 ms: the second was matched with 9 ms.
        scan_tcp(&out, &mut sub, &mut Scan { log: &log, now_us: 6_000, lat: Some(&mut lat), tally: &mut t }).unwrap();
        assert_eq!((t.reordered, t.untimed), (1, 1));
        assert_eq!(lat.merge_into(0, &mut histogram()), 1);
    }

    #[test]
    fn a_refused_batch_stops_timing_its_connections_hunts() {
        let log = SendLog::new(6, &[1, 2, 4]);
        for h in [1, 2, 4] {
            log.record(h, 1_000_000, 0);
        }
        // Connection 1 of 3 sends hunts 1 and 4.
        log.refused(1, 3);
        assert!(log.desynced(1) && log.desynced(4) && !log.desynced(2));
        let mut out = Vec::new();
        update_frame(&mut out, 4, 10, 1);
        let (mut sub, mut lat, mut t) = (Sub { hunt: 4, ..sub() }, Latencies::default(), Count::default());
        scan_tcp(&out, &mut sub, &mut Scan { log: &log, now_us: 2_000, lat: Some(&mut lat), tally: &mut t }).unwrap();
        assert_eq!((t.desynced, t.untimed), (1, 1));
        assert!(!sub.synced && lat.merge_into(0, &mut histogram()) == 0);
    }

    #[test]
    fn hostile_sequence_numbers_and_frame_sizes_are_errors() {
        let log = SendLog::new(4, &[3]);
        let mut out = Vec::new();
        update_frame(&mut out, 3, u64::MAX, 2);
        let (mut hostile, mut t) = (Sub { next_seq: u64::MAX, ..sub() }, Count::default());
        let e = scan_tcp(&out, &mut hostile, &mut Scan { log: &log, now_us: 1, lat: None, tally: &mut t }).unwrap_err();
        assert!(e.contains("2^64"), "{e}");
        let m = format!(r#"{{"entries":[{{"kind":"applied"}}],"first_seq":{},"hunt":3,"type":"update"}}"#, u64::MAX);
        let mut buf = vec![0x81, 126];
        buf.extend_from_slice(&(m.len() as u16).to_be_bytes());
        buf.extend_from_slice(m.as_bytes());
        let e = scan_ws(&buf, &mut hostile, &mut Scan { log: &log, now_us: 1, lat: None, tally: &mut t }).unwrap_err();
        assert!(e.contains("2^64"), "{e}");
        // A WELCOME's frame size is taken up to the protocol's limit.
        let mut w = Vec::new();
        frame::encode_welcome(
            &mut w,
            &frame::Welcome {
                version: frame::VERSION,
                flags: 0,
                producer_id: 1,
                frame_body_max: u32::MAX,
                batch_events_max: 1,
                record_size: 32,
                outcome_size: 16,
            },
        );
        let mut fresh = sub();
        tcp_setup(&w, &mut 0, &mut fresh).unwrap();
        assert_eq!(fresh.frame_max, frame::FRAME_BODY_MAX_LIMIT as usize);
    }

    #[test]
    fn a_frame_larger_than_a_read_is_read_on_into_its_carry() {
        // One UPDATE of 6,000 APPLIED entries (about 400 KiB, over
        // READ_CHUNK), then a small one, through a loopback socket.
        const N: u32 = 6000;
        let log = Arc::new(SendLog::new(4, &[3]));
        for k in 0..u64::from(N) + 1 {
            log.record(3, k, 0);
        }
        let mut out = Vec::new();
        update_frame(&mut out, 3, 10, N);
        update_frame(&mut out, 3, 10 + u64::from(N), 1);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let (mut s, _) = listener.accept().unwrap();
            for piece in out.chunks(100 << 10) {
                s.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            // Held open until the reader is done.
            std::thread::sleep(Duration::from_secs(1));
        });
        let shared = Arc::new(ThreadShared::default());
        let ctx = Ctx {
            log,
            shared: shared.clone(),
            subs: Arc::new(vec![SubShared::default()]),
            local: Rc::new(RefCell::new(Local {
                buf: Vec::new(),
                latencies: Latencies::default(),
                streams: Vec::new(),
            })),
            clock: Clock { epoch: Instant::now() },
            slow_bytes_per_s: 1,
            read_interval: Duration::ZERO,
            token: None,
            broadcasts_only: false,
            deflate: false,
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (sub, reads) = runtime.block_on(async {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut sub, mut reads) = (sub(), 0);
            let deadline = Instant::now() + Duration::from_secs(60);
            while sub.applied < u64::from(N) + 1 && Instant::now() < deadline {
                stream.readable().await.unwrap();
                if read_once(&stream, &mut sub, &ctx, false).unwrap() > 0 {
                    reads += 1;
                }
            }
            (sub, reads)
        });
        writer.join().unwrap();
        let c = shared.fast.read();
        assert_eq!((c.entries, c.untimed, c.desynced, sub.applied), (u64::from(N) + 1, 0, 0, u64::from(N) + 1));
        assert!(sub.carry.is_empty() && sub.next_seq == 11 + u64::from(N) && reads > 1, "{reads}");
        assert!(sub.carry.capacity() <= CARRY_KEEP, "{}", sub.carry.capacity());
        assert_eq!(ctx.local.borrow().latencies.steps[0].2, u64::from(N) + 1);
    }

    #[test]
    fn ws_updates_are_counted_by_entry_kind() {
        let log = SendLog::new(4, &[3]);
        log.record(3, 1_000_000, 1);
        let update = serde_json::json!({"type": "update", "hunt": 3, "first_seq": 10, "entries": [
            {"kind": "applied", "time_us": 1, "event": {"action": "dig"}, "outcome": {"outcome": "dig_nothing"}},
            {"kind": "broadcast", "body": {"broadcast": "treasure_found"}}]})
        .to_string();
        let gap = serde_json::json!({"type": "gap", "hunt": 3, "first_missed": 12, "missed": 4}).to_string();
        // As text, and the update compressed as the server sends it.
        for compressed in [false, true] {
            let mut buf = Vec::new();
            let packed = trove_server::ws::deflate_raw(update.as_bytes());
            for (op, m) in [
                (if compressed { 2 } else { 1 }, if compressed { &packed } else { update.as_bytes() }),
                (1, gap.as_bytes()),
            ] {
                buf.extend_from_slice(&server_frame(op, m));
            }
            let (mut sub, mut lat, mut t) = (sub(), Latencies::default(), Count::default());
            let used =
                scan_ws(&buf, &mut sub, &mut Scan { log: &log, now_us: 1500, lat: Some(&mut lat), tally: &mut t })
                    .unwrap();
            assert_eq!(used, buf.len());
            assert_eq!((t.entries, t.gaps, t.gap_entries, t.desynced), (2, 1, 4, 0));
            assert_eq!((sub.applied, sub.next_seq, sub.synced), (1, 16, false));
            let mut h = histogram();
            assert_eq!(lat.merge_into(1, &mut h), 1);
            assert!(h.equivalent(h.max(), 500), "{}", h.max());
        }
    }

    /// An unmasked, unfragmented server frame.
    fn server_frame(op: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | op];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n <= 0xFFFF => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn hostile_compressed_messages_are_errors() {
        let log = SendLog::new(4, &[3]);
        let update = r#"{"entries":[{"kind":"applied"}],"first_seq":1,"hunt":3,"type":"update"}"#;
        let packed = trove_server::ws::deflate_raw(update.as_bytes());
        // More than WS_MESSAGE_MAX once inflated, from some 80 KiB.
        let bomb = trove_server::ws::deflate_raw(&vec![b'0'; WS_MESSAGE_MAX + (16 << 20)]);
        let mut trailing = packed.clone();
        trailing.push(0);
        let cases: [(&[u8], &str); 5] = [
            (&packed[..packed.len() - 2], "cut short"),
            (b"\xff\xff\xff\xff", "does not inflate"),
            (&bomb, "inflates past"),
            (&trailing, "after"),
            (&trove_server::ws::deflate_raw(br#"{"type":"pong"}"#), "not an update"),
        ];
        for (payload, why) in cases {
            let (mut s, mut t) = (sub(), Count::default());
            let e = scan_ws(
                &server_frame(2, payload),
                &mut s,
                &mut Scan { log: &log, now_us: 1, lat: None, tally: &mut t },
            )
            .unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
    }
}
