//! Who may do what: tokens, roles, hunt ranges and per-token quotas
//! (docs/decisions/0041-tokens-and-roles.md).
//!
//! - The auth file (`trove serve --auth FILE`, TOML) lists tokens by
//!   name, each with a [`Role`], optional hunt ranges and quotas, and the
//!   SHA-256 of the token, never the token. [`AuthTable::parse`] reads it
//!   as hostile input: bounded size and entries, typed errors that name
//!   the line and the field.
//! - [`Auth`] is the live state the endpoints share: the table (replaced
//!   whole by [`Auth::reload`] on SIGHUP), which token each producer id
//!   belongs to, the per-token quotas, and the refusal counters.
//! - A presented token is hashed and compared with every entry's hash in
//!   constant time ([`ct_eq`], no early exit), so neither the comparison
//!   nor the lookup tells an attacker how close a guess came.
//!
//! Tokens are 32 random bytes from the OS; people and HTTP headers carry
//! them as 64 lowercase hex characters, TCP's HELLO version 2 as the raw
//! 32 bytes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use ring::digest;
use ring::rand::SecureRandom;

/// Bytes in a token (and in its SHA-256).
pub const TOKEN_LEN: usize = 32;
/// Largest auth file read; a longer one is refused before it is parsed.
pub const AUTH_FILE_BYTES_MAX: u64 = 1 << 20;
/// Most tokens in one auth file.
pub const TOKENS_MAX: usize = 4096;
/// Most hunt ranges one token may list.
pub const HUNT_RANGES_MAX: usize = 1024;
/// Longest token name, in bytes.
pub const TOKEN_NAME_BYTES_MAX: usize = 64;
/// Producer ids bound to a token (all tokens together). Past it, a new id
/// evicts the least recently used binding no open connection holds (see
/// [`Auth::bind_producer`]); only when every binding is held is a new id
/// refused `forbidden`.
pub const PRODUCER_BINDINGS_MAX: usize = 1 << 18;
/// Producer ids one token may keep bound, evicted the same way: one token
/// cannot fill the table for the others.
pub const PRODUCER_IDS_PER_TOKEN_MAX: usize = 1 << 16;
/// Longest BUSY retry hint a rate quota gives.
pub const QUOTA_RETRY_MS_MAX: u32 = 10_000;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Sends events (within its hunt ranges, if it has any).
    Producer,
    /// Subscribes and reads (within its hunt ranges, if it has any).
    Spectator,
    /// Everything: events, subscriptions, control-plane reads and writes.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Producer, Role::Spectator, Role::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Role::Producer => "producer",
            Role::Spectator => "spectator",
            Role::Admin => "admin",
        }
    }

    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// May send EVENTS.
    pub fn produces(self) -> bool {
        matches!(self, Role::Producer | Role::Admin)
    }

    /// May subscribe and read the control plane.
    pub fn reads(self) -> bool {
        matches!(self, Role::Spectator | Role::Admin)
    }

    /// May write through the control plane.
    pub fn writes(self) -> bool {
        self == Role::Admin
    }
}

/// Inclusive hunt ranges, sorted and merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HuntRanges(Vec<(u32, u32)>);

impl HuntRanges {
    /// Reads `"1-100"` or `"200"` items; `Err` names the item.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for item in items {
            if ranges.len() >= HUNT_RANGES_MAX {
                return Err(format!("more than {HUNT_RANGES_MAX} ranges"));
            }
            let number = |s: &str| {
                s.trim().parse::<u32>().map_err(|_| format!("`{item}` is not a hunt id or a range like \"1-100\""))
            };
            let (from, to) = match item.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None => {
                    let n = number(item)?;
                    (n, n)
                }
            };
            if from > to {
                return Err(format!("range `{item}` ends before it starts"));
            }
            ranges.push((from, to));
        }
        if ranges.is_empty() {
            return Err("an empty list allows no hunt; leave `hunts` out to allow every hunt".into());
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (from, to) in ranges {
            match merged.last_mut() {
                Some(last) if from <= last.1.saturating_add(1) => last.1 = last.1.max(to),
                _ => merged.push((from, to)),
            }
        }
        Ok(HuntRanges(merged))
    }

    pub fn contains(&self, hunt: u32) -> bool {
        // Sorted and disjoint: the last range starting at or before `hunt`.
        let at = self.0.partition_point(|&(from, _)| from <= hunt);
        at > 0 && hunt <= self.0[at - 1].1
    }

    /// As the auth file writes them: `["1-100", "200"]`.
    pub fn items(&self) -> Vec<String> {
        self.0.iter().map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect()
    }
}

/// An authenticated token: who it is and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// `None`: every hunt.
    pub hunts: Option<HuntRanges>,
    /// Events per second this token may send (all its connections
    /// together); `None`: the server's default.
    pub events_per_second: Option<u32>,
    /// Connections this token may hold open at once; `None`: the server's
    /// default.
    pub connections_max: Option<u32>,
}

impl Principal {
    /// May this token touch `hunt` (send events for it, subscribe to it)?
    pub fn allows_hunt(&self, hunt: u32) -> bool {
        self.hunts.as_ref().is_none_or(|h| h.contains(hunt))
    }

    /// Of the hunts `subscribed`, those this token may no longer watch
    /// (after a reload changed its role or ranges).
    pub fn revoked(&self, subscribed: &[u32]) -> Vec<u32> {
        subscribed.iter().copied().filter(|&h| !self.role.reads() || !self.allows_hunt(h)).collect()
    }
}

/// Why the auth file was not read; every variant names where.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("auth file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("auth file is {len} bytes, above the limit of {AUTH_FILE_BYTES_MAX}")]
    TooLarge { len: u64 },
    /// Not TOML, or not the auth file's shape (toml's message names the
    /// line, the column and the key).
    #[error("auth file: {0}")]
    Syntax(String),
    #[error("auth file has more than {TOKENS_MAX} tokens")]
    TooManyTokens,
    /// A field of one token is wrong.
    #[error("auth file line {line}, token `{name}`, field `{field}`: {reason}")]
    Field { line: usize, name: String, field: &'static str, reason: String },
}

/// One token as the file writes it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    name: toml::Spanned<String>,
    role: toml::Spanned<String>,
    #[serde(default)]
    hunts: Option<toml::Spanned<Vec<String>>>,
    sha256: toml::Spanned<String>,
    #[serde(default)]
    events_per_second: Option<toml::Spanned<u32>>,
    #[serde(default)]
    connections_max: Option<toml::Spanned<u32>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    token: Vec<FileEntry>,
}

/// The tokens of one auth file, by hash.
#[derive(Debug, Default)]
pub struct AuthTable {
    entries: Vec<([u8; TOKEN_LEN], Arc<Principal>)>,
}

impl AuthTable {
    /// Reads and parses `path` (at most [`AUTH_FILE_BYTES_MAX`] bytes).
    pub fn load(path: &Path) -> Result<Self, AuthFileError> {
        use std::io::Read;
        let read = |source| AuthFileError::Read { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(read)?;
        let len = file.metadata().map_err(read)?.len();
        if len > AUTH_FILE_BYTES_MAX {
            return Err(AuthFileError::TooLarge { len });
        }
        let mut text = String::new();
        // `take`: a file that grows after the check is still cut at the limit.
        file.take(AUTH_FILE_BYTES_MAX + 1).read_to_string(&mut text).map_err(read)?;
        if text.len() as u64 > AUTH_FILE_BYTES_MAX {
            return Err(AuthFileError::TooLarge { len: text.len() as u64 });
        }
        Self::parse(&text)
    }

    /// Parses the text of an auth file.
    pub fn parse(text: &str) -> Result<Self, AuthFileError> {
        if text.len() as u64 > AUTH_FILE_BYTES_MAX {
            return Err(AuthFileError::TooLarge { len: text.len() as u64 });
        }
        // Counted before the parse allocates per entry: a file of
        // thousands of tiny `[[token]]` tables is refused cheaply.
        if text.matches("[[token]]").count() > TOKENS_MAX {
            return Err(AuthFileError::TooManyTokens);
        }
        let file: File = toml::from_str(text).map_err(|e| AuthFileError::Syntax(e.to_string()))?;
        if file.token.len() > TOKENS_MAX {
            return Err(AuthFileError::TooManyTokens);
        }
        let line = |span: std::ops::Range<usize>| text[..span.start.min(text.len())].matches('\n').count() + 1;
        let mut entries: Vec<([u8; TOKEN_LEN], Arc<Principal>)> = Vec::with_capacity(file.token.len());
        for e in file.token {
            let name = e.name.get_ref().clone();
            let field = |span, field, reason: String| AuthFileError::Field {
                line: line(span),
                name: name.clone(),
                field,
                reason,
            };
            if name.is_empty() || name.len() > TOKEN_NAME_BYTES_MAX {
                return Err(field(e.name.span(), "name", format!("must be 1..={TOKEN_NAME_BYTES_MAX} bytes")));
            }
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
                return Err(field(
                    e.name.span(),
                    "name",
                    "may hold ASCII letters, digits, '-', '_' and '.' only".into(),
                ));
            }
            if entries.iter().any(|(_, p)| p.name == name) {
                return Err(field(e.name.span(), "name", "is used by another token".into()));
            }
            let Some(role) = Role::from_name(e.role.get_ref()) else {
                return Err(field(e.role.span(), "role", "must be producer, spectator or admin".into()));
            };
            let hunts = match &e.hunts {
                None => None,
                Some(_) if role == Role::Admin => {
                    let span = e.hunts.as_ref().map(toml::Spanned::span).unwrap_or_default();
                    return Err(field(span, "hunts", "an admin covers every hunt; leave `hunts` out".into()));
                }
                Some(h) => Some(
                    HuntRanges::parse(h.get_ref().iter().map(String::as_str))
                        .map_err(|r| field(h.span(), "hunts", r))?,
                ),
            };
            let hash = parse_hex(e.sha256.get_ref())
                .ok_or_else(|| field(e.sha256.span(), "sha256", "must be 64 hex characters".into()))?;
            if entries.iter().any(|(h, _)| *h == hash) {
                return Err(field(e.sha256.span(), "sha256", "is another token's hash".into()));
            }
            let positive = |v: &Option<toml::Spanned<u32>>, name| match v {
                Some(s) if *s.get_ref() == 0 => Err(field(s.span(), name, "must be at least 1".into())),
                Some(s) => Ok(Some(*s.get_ref())),
                None => Ok(None),
            };
            let events_per_second = positive(&e.events_per_second, "events_per_second")?;
            let connections_max = positive(&e.connections_max, "connections_max")?;
            entries.push((hash, Arc::new(Principal { name, role, hunts, events_per_second, connections_max })));
        }
        Ok(AuthTable { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal whose token hashes to `hash`. Compares with every
    /// entry in constant time, whatever matches.
    fn find(&self, hash: &[u8; TOKEN_LEN]) -> Option<Arc<Principal>> {
        let mut found = None;
        for (h, p) in &self.entries {
            if ct_eq(h, hash) {
                found = Some(p.clone());
            }
        }
        found
    }
}

/// Equal in time that depends on the length alone.
pub fn ct_eq(a: &[u8; TOKEN_LEN], b: &[u8; TOKEN_LEN]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // Keeps the compiler from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// SHA-256 of a token's 32 bytes: what the auth file stores.
pub fn hash_token(token: &[u8; TOKEN_LEN]) -> [u8; TOKEN_LEN] {
    let d = digest::digest(&digest::SHA256, token);
    let mut out = [0u8; TOKEN_LEN];
    out.copy_from_slice(d.as_ref());
    out
}

/// A new token: 32 bytes from the OS's generator.
pub fn new_token() -> Result<[u8; TOKEN_LEN], AuthFileError> {
    let mut token = [0u8; TOKEN_LEN];
    ring::rand::SystemRandom::new().fill(&mut token).map_err(|_| AuthFileError::Read {
        path: PathBuf::from("(the OS random source)"),
        source: std::io::Error::other("the OS random source failed"),
    })?;
    Ok(token)
}

/// The credentials of an `Authorization` header value with the `Bearer`
/// scheme, the scheme's case ignored (RFC 9110: schemes are
/// case-insensitive); `None` for another scheme.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credentials.trim())
}

/// Lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// 64 hex characters (either case) to 32 bytes; `None` for anything else.
pub fn parse_hex(s: &str) -> Option<[u8; TOKEN_LEN]> {
    let s = s.as_bytes();
    if s.len() != TOKEN_LEN * 2 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; TOKEN_LEN];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// One `[[token]]` entry for `trove auth add`, with the new token's hash.
pub fn file_entry(name: &str, role: Role, hunts: Option<&HuntRanges>, hash: &[u8; TOKEN_LEN]) -> String {
    let mut s = format!("\n[[token]]\nname = \"{name}\"\nrole = \"{}\"\n", role.name());
    if let Some(h) = hunts {
        let items: Vec<String> = h.items().iter().map(|i| format!("\"{i}\"")).collect();
        s.push_str(&format!("hunts = [{}]\n", items.join(", ")));
    }
    s.push_str(&format!("sha256 = \"{}\"\n", to_hex(hash)));
    s
}

/// Why a request was refused, for `trove_auth_refusals_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// Auth is on and no token came (a version 1 HELLO, no header, a
    /// WebSocket request before its hello).
    MissingToken,
    /// A token no entry matches (or not 64 hex characters).
    WrongToken,
    /// The connection's token was removed by a reload.
    RemovedToken,
    /// The token's role does not allow the request.
    Role,
    /// An event or subscription outside the token's hunt ranges.
    Hunt,
    /// The producer id belongs to another token, or no more ids can be
    /// bound.
    ProducerId,
    /// The token holds its most connections.
    Connections,
    /// The token sent past its events per second (answered BUSY).
    Rate,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 8] = [
        RefusalReason::MissingToken,
        RefusalReason::WrongToken,
        RefusalReason::RemovedToken,
        RefusalReason::Role,
        RefusalReason::Hunt,
        RefusalReason::ProducerId,
        RefusalReason::Connections,
        RefusalReason::Rate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RefusalReason::MissingToken => "missing_token",
            RefusalReason::WrongToken => "wrong_token",
            RefusalReason::RemovedToken => "removed_token",
            RefusalReason::Role => "role",
            RefusalReason::Hunt => "hunt",
            RefusalReason::ProducerId => "producer_id",
            RefusalReason::Connections => "connections",
            RefusalReason::Rate => "rate",
        }
    }

    /// `unauthorized` (no valid token) or `forbidden` (a valid token that
    /// may not do this). Rate refusals are BUSY, not errors.
    pub fn unauthorized(self) -> bool {
        matches!(self, RefusalReason::MissingToken | RefusalReason::WrongToken | RefusalReason::RemovedToken)
    }
}

/// A refusal: its reason (counted) and what the client is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub reason: RefusalReason,
    pub message: String,
}

impl Refused {
    fn new(reason: RefusalReason, message: String) -> Self {
        Refused { reason, message }
    }

    /// The protocol's code for it.
    pub fn code(&self) -> trove_proto::ErrorCode {
        if self.reason.unauthorized() {
            trove_proto::ErrorCode::Unauthorized
        } else if self.reason == RefusalReason::Connections {
            trove_proto::ErrorCode::TooManyConnections
        } else {
            trove_proto::ErrorCode::Forbidden
        }
    }
}

/// The server's defaults for tokens whose entry sets no quota.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaDefaults {
    /// `None`: no rate limit.
    pub events_per_second: Option<u32>,
    /// `None`: no per-token connection limit (the server's
    /// `connections_max` still applies).
    pub connections_max: Option<u32>,
}

/// A token bucket: `rate` events per second, at most one second's worth
/// saved. A batch is admitted while the bucket is not in debt, and takes
/// its whole count (which may put the bucket in debt): a batch larger
/// than a second's worth still goes through, then waits it off.
#[derive(Debug)]
struct Bucket {
    /// Events available; negative while in debt.
    level: f64,
    at: Instant,
}

#[derive(Debug, Default)]
struct TokenState {
    connections: u32,
    bucket: Option<Bucket>,
}

/// Which token each producer id belongs to, bounded: bindings no open
/// connection holds are kept in least-recently-used order, and the oldest
/// is evicted when a new id needs room.
#[derive(Debug, Default)]
struct Bindings {
    by_id: HashMap<u64, Binding>,
    /// Unheld bindings, by the tick they were last released at.
    idle: BTreeMap<u64, u64>,
    /// Per token name: its bindings and its unheld ones, oldest first.
    per_token: HashMap<Arc<str>, TokenBindings>,
    /// Bumped by every bind and release: orders `idle`, and tells a
    /// binding apart from a later one of the same id.
    tick: u64,
}

#[derive(Debug)]
struct Binding {
    owner: Arc<str>,
    /// Connections holding it (a [`ProducerBinding`] each).
    held: u32,
    /// Its key in `idle` while `held == 0`.
    idle_since: u64,
    /// The tick it was made at.
    serial: u64,
}

#[derive(Debug, Default)]
struct TokenBindings {
    count: usize,
    idle: BTreeMap<u64, u64>,
}

impl Bindings {
    /// Removes `id`'s binding (held or not).
    fn remove(&mut self, id: u64) {
        let Some(b) = self.by_id.remove(&id) else { return };
        if b.held == 0 {
            self.idle.remove(&b.idle_since);
        }
        if let Some(t) = self.per_token.get_mut(&b.owner) {
            if b.held == 0 {
                t.idle.remove(&b.idle_since);
            }
            t.count -= 1;
            if t.count == 0 {
                self.per_token.remove(&b.owner);
            }
        }
    }

    fn check(&self) {
        debug_assert_eq!(self.by_id.len(), self.per_token.values().map(|t| t.count).sum::<usize>());
        debug_assert_eq!(self.idle.len(), self.per_token.values().map(|t| t.idle.len()).sum::<usize>());
    }
}

/// Held while a connection uses a producer id bound to its token: a held
/// binding is never evicted. Dropping it makes the binding evictable
/// (least recently used first).
#[derive(Debug)]
pub struct ProducerBinding {
    auth: Arc<Auth>,
    id: u64,
    serial: u64,
}

impl Drop for ProducerBinding {
    fn drop(&mut self) {
        let mut bindings = self.auth.bindings.lock().unwrap_or_else(|e| e.into_inner());
        let bindings = &mut *bindings;
        bindings.tick += 1;
        let tick = bindings.tick;
        // A binding removed by a reload (or another made since) is not ours.
        let Some(b) = bindings.by_id.get_mut(&self.id).filter(|b| b.serial == self.serial) else { return };
        assert!(b.held > 0, "a held binding counts its holders");
        b.held -= 1;
        if b.held == 0 {
            b.idle_since = tick;
            bindings.idle.insert(tick, self.id);
            if let Some(t) = bindings.per_token.get_mut(&b.owner) {
                t.idle.insert(tick, self.id);
            }
        }
        bindings.check();
    }
}

/// The live authentication state the endpoints share.
#[derive(Debug)]
pub struct Auth {
    /// The file `reload` reads again; `None` for a table given directly.
    path: Option<PathBuf>,
    table: RwLock<Arc<AuthTable>>,
    /// Bumped by every reload: a connection compares it with the one its
    /// token was checked under, and checks again only when it moved.
    generation: AtomicU64,
    defaults: QuotaDefaults,
    /// Producer id to the name of the token that first used it.
    bindings: Mutex<Bindings>,
    /// [`PRODUCER_BINDINGS_MAX`] and [`PRODUCER_IDS_PER_TOKEN_MAX`] unless
    /// set lower ([`Auth::with_binding_limits`], for tests).
    bindings_max: usize,
    bindings_per_token_max: usize,
    /// Sends the generation after every reload: each connection waits on
    /// it and checks its token again at once, not at its next request.
    changes: tokio::sync::watch::Sender<u64>,
    /// Per token name: open connections, its bucket.
    tokens: Mutex<HashMap<Arc<str>, TokenState>>,
    /// By [`RefusalReason::ALL`].
    refusals: [AtomicU64; RefusalReason::ALL.len()],
    /// Reloads that failed (the old table kept).
    pub reload_failures: AtomicU64,
    /// Principals checked since start (a cheap sign of use, for tests).
    pub checks: AtomicUsize,
}

/// A connection's authentication: the token it presented (as its hash)
/// and what it was found to be, under which table generation.
#[derive(Clone, Debug)]
pub struct Session {
    pub principal: Arc<Principal>,
    hash: [u8; TOKEN_LEN],
    generation: u64,
}

impl Session {
    /// Is `token` (64 hex characters) the token this session presented?
    /// Compared in constant time.
    pub fn presented(&self, token: &str) -> bool {
        parse_hex(token.trim()).is_some_and(|t| ct_eq(&hash_token(&t), &self.hash))
    }
}

/// Held while a connection of a token is open: its slot in the token's
/// connection quota.
#[derive(Debug)]
pub struct ConnectionGrant {
    auth: Arc<Auth>,
    name: Arc<str>,
}

impl Drop for ConnectionGrant {
    fn drop(&mut self) {
        let mut tokens = self.auth.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tokens.get_mut(&self.name) {
            t.connections = t.connections.saturating_sub(1);
        }
    }
}

impl Auth {
    /// Loads `path`.
    pub fn from_file(path: &Path, defaults: QuotaDefaults) -> Result<Self, AuthFileError> {
        let table = AuthTable::load(path)?;
        Ok(Self::new(Some(path.to_path_buf()), table, defaults))
    }

    /// From a table parsed already (tests, embedders).
    pub fn from_table(table: AuthTable, defaults: QuotaDefaults) -> Self {
        Self::new(None, table, defaults)
    }

    fn new(path: Option<PathBuf>, table: AuthTable, defaults: QuotaDefaults) -> Self {
        Self {
            path,
            table: RwLock::new(Arc::new(table)),
            generation: AtomicU64::new(0),
            defaults,
            bindings: Mutex::new(Bindings::default()),
            bindings_max: PRODUCER_BINDINGS_MAX,
            bindings_per_token_max: PRODUCER_IDS_PER_TOKEN_MAX,
            changes: tokio::sync::watch::Sender::new(0),
            tokens: Mutex::new(HashMap::new()),
            refusals: Default::default(),
            reload_failures: AtomicU64::new(0),
            checks: AtomicUsize::new(0),
        }
    }

    /// Lower binding limits (tests: eviction without 2^18 ids).
    pub fn with_binding_limits(mut self, all: usize, per_token: usize) -> Self {
        assert!(all >= 1 && per_token >= 1 && all <= PRODUCER_BINDINGS_MAX && per_token <= PRODUCER_IDS_PER_TOKEN_MAX);
        self.bindings_max = all;
        self.bindings_per_token_max = per_token;
        self
    }

    /// Changes whenever a reload replaced the table: a connection waits on
    /// it (`changed()`) and then checks its session ([`Auth::recheck`]).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Producer ids bound now (held or not).
    pub fn producer_bindings(&self) -> usize {
        self.bindings.lock().unwrap_or_else(|e| e.into_inner()).by_id.len()
    }

    fn table(&self) -> Arc<AuthTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the file again and replaces the table whole; on an error the
    /// old table stays. Returns the number of tokens.
    pub fn reload(&self) -> Result<usize, AuthFileError> {
        let Some(path) = &self.path else { return Ok(self.table().len()) };
        match AuthTable::load(path) {
            Ok(table) => Ok(self.replace(table)),
            Err(e) => {
                self.reload_failures.fetch_add(1, Relaxed);
                Err(e)
            }
        }
    }

    /// Replaces the table, drops the producer-id bindings of tokens no
    /// longer in it, and wakes every connection to check its token again
    /// ([`Auth::changes`]).
    pub fn replace(&self, table: AuthTable) -> usize {
        let n = table.len();
        let names: std::collections::HashSet<&str> = table.entries.iter().map(|(_, p)| p.name.as_str()).collect();
        {
            let mut bindings = self.bindings.lock().unwrap_or_else(|e| e.into_inner());
            let gone: Vec<u64> =
                bindings.by_id.iter().filter(|(_, b)| !names.contains(&*b.owner)).map(|(&id, _)| id).collect();
            for id in gone {
                bindings.remove(id);
            }
            bindings.check();
        }
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        let generation = self.generation.fetch_add(1, Relaxed) + 1;
        self.changes.send_replace(generation);
        n
    }

    /// Counts a refusal and returns it.
    pub fn refuse(&self, reason: RefusalReason, message: impl Into<String>) -> Refused {
        self.refusals[reason as usize].fetch_add(1, Relaxed);
        Refused::new(reason, message.into())
    }

    /// Refusals so far, by reason (for /metrics).
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        RefusalReason::ALL.iter().map(|r| (r.name(), self.refusals[*r as usize].load(Relaxed))).collect()
    }

    /// Authenticates a token's 32 bytes.
    pub fn authenticate(&self, token: Option<&[u8; TOKEN_LEN]>) -> Result<Session, Refused> {
        let Some(token) = token else {
            return Err(self.refuse(RefusalReason::MissingToken, "authentication is on: present a token"));
        };
        self.checks.fetch_add(1, Relaxed);
        let hash = hash_token(token);
        let generation = self.generation.load(Relaxed);
        match self.table().find(&hash) {
            Some(principal) => Ok(Session { principal, hash, generation }),
            None => Err(self.refuse(RefusalReason::WrongToken, "the token is not known to this server")),
        }
    }

    /// Authenticates a token as text (64 hex characters).
    pub fn authenticate_text(&self, token: Option<&str>) -> Result<Session, Refused> {
        match token {
            None => self.authenticate(None),
            Some(t) => match parse_hex(t.trim()) {
                Some(bytes) => self.authenticate(Some(&bytes)),
                None => Err(self.refuse(RefusalReason::WrongToken, "a token is 64 hex characters")),
            },
        }
    }

    /// Checks a session again if the table was reloaded since: a token
    /// removed is refused (the caller closes), a token whose entry changed
    /// takes its new role and ranges. One atomic load when nothing moved.
    pub fn recheck(&self, session: &mut Session) -> Result<(), Refused> {
        self.recheck_moved(session).map(drop)
    }

    /// As [`Auth::recheck`]; `Ok(true)` when the session was checked
    /// against a new table (its role or ranges may have changed: the
    /// caller drops what they no longer allow).
    pub fn recheck_moved(&self, session: &mut Session) -> Result<bool, Refused> {
        let generation = self.generation.load(Relaxed);
        if generation == session.generation {
            return Ok(false);
        }
        match self.table().find(&session.hash) {
            Some(p) if p.name == session.principal.name => {
                session.principal = p;
                session.generation = generation;
                Ok(true)
            }
            _ => Err(self.refuse(
                RefusalReason::RemovedToken,
                format!("token `{}` was removed from the auth file", session.principal.name),
            )),
        }
    }

    /// Takes a connection slot of the session's token.
    pub fn connect(self: &Arc<Self>, session: &Session) -> Result<ConnectionGrant, Refused> {
        let p = &session.principal;
        let max = p.connections_max.or(self.defaults.connections_max);
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let name: Arc<str> =
            tokens.get_key_value(p.name.as_str()).map_or_else(|| Arc::from(p.name.as_str()), |(k, _)| k.clone());
        let state = tokens.entry(name.clone()).or_default();
        if max.is_some_and(|m| state.connections >= m) {
            drop(tokens);
            return Err(self.refuse(
                RefusalReason::Connections,
                format!("token `{}` holds its most connections ({})", p.name, max.unwrap_or(0)),
            ));
        }
        state.connections += 1;
        Ok(ConnectionGrant { auth: self.clone(), name })
    }

    /// Binds `producer_id` to the session's token (or finds it bound to
    /// it already), or refuses it when another token bound it first. The
    /// binding is held while the returned guard lives and never evicted
    /// then. Bindings no connection holds are evicted least recently used
    /// first when a new id needs room (past [`PRODUCER_IDS_PER_TOKEN_MAX`]
    /// for the token, the token's own; past [`PRODUCER_BINDINGS_MAX`], any
    /// token's): an evicted id may be bound again by whichever token
    /// presents it first, as after a restart. Refused only when every
    /// binding in the way is held by an open connection.
    pub fn bind_producer(self: &Arc<Self>, session: &Session, producer_id: u64) -> Result<ProducerBinding, Refused> {
        let name = session.principal.name.as_str();
        let mut guard = self.bindings.lock().unwrap_or_else(|e| e.into_inner());
        let bindings = &mut *guard;
        bindings.tick += 1;
        if let Some(b) = bindings.by_id.get_mut(&producer_id) {
            if &*b.owner != name {
                drop(guard);
                return Err(self
                    .refuse(RefusalReason::ProducerId, format!("producer id {producer_id} belongs to another token")));
            }
            if b.held == 0 {
                bindings.idle.remove(&b.idle_since);
                if let Some(t) = bindings.per_token.get_mut(&b.owner) {
                    t.idle.remove(&b.idle_since);
                }
            }
            b.held += 1;
            let serial = b.serial;
            bindings.check();
            return Ok(ProducerBinding { auth: self.clone(), id: producer_id, serial });
        }
        let full = |this: &Self| {
            this.refuse(
                RefusalReason::ProducerId,
                format!(
                    "no more producer ids can be bound: the token's {} or all {} bindings are held by open \
                     connections",
                    this.bindings_per_token_max, this.bindings_max
                ),
            )
        };
        let count = bindings.per_token.get(name).map_or(0, |t| t.count);
        if count >= self.bindings_per_token_max {
            match bindings.per_token.get(name).and_then(|t| t.idle.first_key_value()).map(|(_, &id)| id) {
                Some(oldest) => bindings.remove(oldest),
                None => {
                    drop(guard);
                    return Err(full(self));
                }
            }
        }
        if bindings.by_id.len() >= self.bindings_max {
            match bindings.idle.first_key_value().map(|(_, &id)| id) {
                Some(oldest) => bindings.remove(oldest),
                None => {
                    drop(guard);
                    return Err(full(self));
                }
            }
        }
        let key: Arc<str> = match bindings.per_token.get_key_value(name) {
            Some((k, _)) => k.clone(),
            None => Arc::from(name),
        };
        bindings.per_token.entry(key.clone()).or_default().count += 1;
        let serial = bindings.tick;
        bindings.by_id.insert(producer_id, Binding { owner: key, held: 1, idle_since: 0, serial });
        assert!(bindings.by_id.len() <= self.bindings_max, "bounded by the eviction above");
        bindings.check();
        Ok(ProducerBinding { auth: self.clone(), id: producer_id, serial })
    }

    /// Checks that the session may send `count` events for `hunts` (every
    /// event's hunt, in order): its role, its hunt ranges, then its rate.
    /// `Ok(None)`: admitted. `Ok(Some(ms))`: over its rate; answer BUSY
    /// with this hint (nothing taken from the bucket).
    pub fn admit_events(
        &self,
        session: &mut Session,
        hunts: impl IntoIterator<Item = u32>,
        deletes: bool,
        count: u32,
        now: Instant,
    ) -> Result<Option<u32>, Refused> {
        self.recheck(session)?;
        let p = session.principal.clone();
        if !p.role.produces() {
            return Err(self.refuse(
                RefusalReason::Role,
                format!("token `{}` is a {}: it may not send events", p.name, p.role.name()),
            ));
        }
        // Deleting a hunt is an admin's, on every endpoint (as `DELETE
        // /hunts/{id}` is on the control plane).
        if deletes && !p.role.writes() {
            return Err(self.refuse(
                RefusalReason::Role,
                format!(
                    "token `{}` is a {}: only an admin may delete a hunt; nothing of the batch applied",
                    p.name,
                    p.role.name()
                ),
            ));
        }
        if let Some(ranges) = &p.hunts
            && let Some(hunt) = hunts.into_iter().find(|&h| !ranges.contains(h))
        {
            return Err(self.refuse(
                RefusalReason::Hunt,
                format!("token `{}` may not send events for hunt {hunt}; nothing of the batch applied", p.name),
            ));
        }
        let Some(rate) = p.events_per_second.or(self.defaults.events_per_second) else { return Ok(None) };
        let rate = f64::from(rate);
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let state = match tokens.get_mut(p.name.as_str()) {
            Some(s) => s,
            None => tokens.entry(Arc::from(p.name.as_str())).or_default(),
        };
        let bucket = state.bucket.get_or_insert(Bucket { level: rate, at: now });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.level = (bucket.level + elapsed * rate).min(rate);
        bucket.at = bucket.at.max(now);
        if bucket.level < 0.0 {
            let ms = ((-bucket.level / rate) * 1000.0).ceil().clamp(1.0, f64::from(QUOTA_RETRY_MS_MAX)) as u32;
            drop(tokens);
            self.refusals[RefusalReason::Rate as usize].fetch_add(1, Relaxed);
            return Ok(Some(ms));
        }
        bucket.level -= f64::from(count);
        Ok(None)
    }

    /// Checks that the session may subscribe to `hunt`.
    pub fn admit_subscribe(&self, session: &mut Session, hunt: u32) -> Result<(), Refused> {
        self.recheck(session)?;
        let p = &session.principal;
        if !p.role.reads() {
            let message = format!("token `{}` is a {}: it may not subscribe", p.name, p.role.name());
            return Err(self.refuse(RefusalReason::Role, message));
        }
        if !p.allows_hunt(hunt) {
            let message = format!("token `{}` may not subscribe to hunt {hunt}", p.name);
            return Err(self.refuse(RefusalReason::Hunt, message));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, role: &str, extra: &str, token: u8) -> String {
        format!(
            "[[token]]\nname = \"{name}\"\nrole = \"{role}\"\n{extra}sha256 = \"{}\"\n",
            to_hex(&hash_token(&[token; TOKEN_LEN]))
        )
    }

    #[test]
    fn ranges_merge_and_contain() {
        let r = HuntRanges::parse(["200", "1-100", "50-150", "151"]).unwrap();
        assert_eq!(r.items(), ["1-151", "200"]);
        for (h, inside) in [(0, false), (1, true), (151, true), (152, false), (199, false), (200, true), (201, false)] {
            assert_eq!(r.contains(h), inside, "{h}");
        }
        assert!(HuntRanges::parse(["5-1"]).is_err());
        assert!(HuntRanges::parse(["x"]).is_err());
        assert!(HuntRanges::parse(["4294967296"]).is_err());
        assert!(HuntRanges::parse(std::iter::empty()).is_err());
        assert!(HuntRanges::parse(["0-4294967295"]).unwrap().contains(u32::MAX));
    }

    #[test]
    fn a_file_reads_and_tokens_are_found_by_their_hash_only() {
        let text = entry("game", "producer", "hunts = [\"1-100\", \"200\"]\nevents_per_second = 50\n", 1)
            + &entry("watch", "spectator", "", 2)
            + &entry("ops", "admin", "", 3);
        let t = AuthTable::parse(&text).unwrap();
        assert_eq!(t.len(), 3);
        let auth = Auth::from_table(t, QuotaDefaults::default());
        let s = auth.authenticate(Some(&[1; TOKEN_LEN])).unwrap();
        assert_eq!((s.principal.name.as_str(), s.principal.role), ("game", Role::Producer));
        assert!(s.principal.allows_hunt(200) && !s.principal.allows_hunt(101));
        assert_eq!(s.principal.events_per_second, Some(50));
        assert_eq!(auth.authenticate(Some(&[4; TOKEN_LEN])).unwrap_err().reason, RefusalReason::WrongToken);
        assert_eq!(auth.authenticate(None).unwrap_err().reason, RefusalReason::MissingToken);
        let hex = to_hex(&[3; TOKEN_LEN]);
        assert_eq!(auth.authenticate_text(Some(&hex)).unwrap().principal.role, Role::Admin);
        assert_eq!(auth.authenticate_text(Some("short")).unwrap_err().reason, RefusalReason::WrongToken);
    }

    #[test]
    fn bad_files_name_the_line_and_the_field() {
        let cases = [
            (entry("a", "owner", "", 1), "line 3, token `a`, field `role`"),
            (entry("a", "producer", "hunts = [\"9-1\"]\n", 1), "line 4, token `a`, field `hunts`"),
            (entry("a", "admin", "hunts = [\"1\"]\n", 1), "field `hunts`"),
            (entry("a", "producer", "", 1) + &entry("a", "producer", "", 2), "line 6, token `a`, field `name`"),
            (entry("a", "producer", "", 1) + &entry("b", "producer", "", 1), "field `sha256`"),
            (entry("a b", "producer", "", 1), "field `name`"),
            (entry("a", "producer", "connections_max = 0\n", 1), "field `connections_max`"),
            (
                "[[token]]\nname = \"a\"\nrole = \"admin\"\nsha256 = \"00\"\n".into(),
                "line 4, token `a`, field `sha256`",
            ),
            ("[[token]]\nname = \"a\"\nrole = \"admin\"\ntoken = \"x\"\n".into(), "unknown field `token`"),
            ("[[token]\n".into(), "auth file:"),
        ];
        for (text, expected) in cases {
            let e = AuthTable::parse(&text).unwrap_err().to_string();
            assert!(e.contains(expected), "{e:?} should contain {expected:?}");
        }
        let many = entry("a", "admin", "", 1).repeat(TOKENS_MAX + 1);
        assert!(matches!(AuthTable::parse(&many), Err(AuthFileError::TooManyTokens)));
        let huge = "#".repeat(AUTH_FILE_BYTES_MAX as usize + 1);
        assert!(matches!(AuthTable::parse(&huge), Err(AuthFileError::TooLarge { .. })));
    }

    #[test]
    fn a_producer_id_belongs_to_the_first_token() {
        let text = entry("a", "producer", "", 1) + &entry("b", "producer", "", 2);
        let auth = Arc::new(Auth::from_table(AuthTable::parse(&text).unwrap(), QuotaDefaults::default()));
        let a = auth.authenticate(Some(&[1; TOKEN_LEN])).unwrap();
        let b = auth.authenticate(Some(&[2; TOKEN_LEN])).unwrap();
        drop(auth.bind_producer(&a, 7).unwrap());
        drop(auth.bind_producer(&a, 7).unwrap());
        assert_eq!(auth.bind_producer(&b, 7).unwrap_err().reason, RefusalReason::ProducerId);
        auth.bind_producer(&b, 8).unwrap();
    }

    #[test]
    fn cycling_more_ids_than_the_bound_never_locks_a_token_out() {
        let text = entry("a", "producer", "", 1) + &entry("b", "producer", "", 2);
        let auth = Arc::new(Auth::from_table(AuthTable::parse(&text).unwrap(), QuotaDefaults::default()));
        let a = auth.authenticate(Some(&[1; TOKEN_LEN])).unwrap();
        let b = auth.authenticate(Some(&[2; TOKEN_LEN])).unwrap();
        // `a` holds id 1 all along: never evicted, never another's.
        let held = auth.bind_producer(&a, 1).unwrap();
        // Every connection a new id, as HELLO 0 and SDK starts do: past
        // the per-token bound, the oldest unheld ones make room.
        for id in 2..(PRODUCER_IDS_PER_TOKEN_MAX as u64 + 1000) {
            drop(auth.bind_producer(&a, id).unwrap());
        }
        assert_eq!(auth.producer_bindings(), PRODUCER_IDS_PER_TOKEN_MAX);
        assert_eq!(auth.bind_producer(&b, 1).unwrap_err().reason, RefusalReason::ProducerId);
        // The most recent stay bound to `a`; the oldest were evicted, and
        // the first presenter takes them again.
        assert_eq!(
            auth.bind_producer(&b, PRODUCER_IDS_PER_TOKEN_MAX as u64).unwrap_err().reason,
            RefusalReason::ProducerId
        );
        drop(auth.bind_producer(&b, 2).unwrap());
        // `b` is not locked out by `a`'s ids.
        drop(auth.bind_producer(&b, 1 << 40).unwrap());
        drop(held);

        // The overall bound, small: the same, across tokens.
        let auth = Arc::new(
            Auth::from_table(AuthTable::parse(&text).unwrap(), QuotaDefaults::default()).with_binding_limits(8, 6),
        );
        let held: Vec<_> = (0..4).map(|id| auth.bind_producer(&a, id).unwrap()).collect();
        for id in 100..1000 {
            drop(auth.bind_producer(if id % 2 == 0 { &a } else { &b }, id).unwrap());
            assert!(auth.producer_bindings() <= 8);
        }
        for id in 0..4 {
            assert_eq!(auth.bind_producer(&b, id).unwrap_err().reason, RefusalReason::ProducerId, "{id} held by a");
        }
        // Every binding held: only then is a new id refused.
        let mut more: Vec<_> = (10..12).map(|id| auth.bind_producer(&a, id).unwrap()).collect();
        assert_eq!(auth.bind_producer(&a, 12).unwrap_err().reason, RefusalReason::ProducerId);
        more.extend((20..22).map(|id| auth.bind_producer(&b, id).unwrap()));
        assert_eq!(auth.bind_producer(&b, 22).unwrap_err().reason, RefusalReason::ProducerId);
        drop(more);
        drop(auth.bind_producer(&b, 22).unwrap());
        drop(held);
    }

    #[test]
    fn a_reload_drops_the_bindings_of_removed_tokens_and_wakes_connections() {
        let text = entry("a", "producer", "", 1) + &entry("b", "producer", "", 2);
        let auth = Arc::new(Auth::from_table(AuthTable::parse(&text).unwrap(), QuotaDefaults::default()));
        let a = auth.authenticate(Some(&[1; TOKEN_LEN])).unwrap();
        let b = auth.authenticate(Some(&[2; TOKEN_LEN])).unwrap();
        let held = auth.bind_producer(&a, 7).unwrap();
        drop(auth.bind_producer(&a, 8).unwrap());
        drop(auth.bind_producer(&b, 9).unwrap());
        let changes = auth.changes();
        assert!(!changes.has_changed().unwrap());
        auth.replace(AuthTable::parse(&entry("b", "producer", "", 2)).unwrap());
        assert!(changes.has_changed().unwrap());
        assert_eq!(auth.producer_bindings(), 1);
        // The removed token's ids, held or not, are free again.
        drop(auth.bind_producer(&b, 7).unwrap());
        drop(auth.bind_producer(&b, 8).unwrap());
        // Its old guard does not touch the new binding.
        drop(held);
        assert_eq!(auth.producer_bindings(), 3);
    }

    #[test]
    fn a_removed_token_is_refused_at_its_next_check() {
        let auth = Auth::from_table(AuthTable::parse(&entry("a", "admin", "", 1)).unwrap(), QuotaDefaults::default());
        let mut s = auth.authenticate(Some(&[1; TOKEN_LEN])).unwrap();
        auth.admit_subscribe(&mut s, 1).unwrap();
        auth.replace(AuthTable::parse(&entry("a", "spectator", "hunts = [\"2\"]\n", 1)).unwrap());
        // Same token, new entry: its new ranges apply.
        assert_eq!(auth.admit_subscribe(&mut s, 1).unwrap_err().reason, RefusalReason::Hunt);
        auth.admit_subscribe(&mut s, 2).unwrap();
        auth.replace(AuthTable::parse(&entry("b", "admin", "", 2)).unwrap());
        assert_eq!(auth.admit_subscribe(&mut s, 2).unwrap_err().reason, RefusalReason::RemovedToken);
    }

    #[test]
    fn the_rate_quota_answers_a_retry_hint_and_refills() {
        let text = entry("a", "producer", "events_per_second = 100\nconnections_max = 1\n", 1);
        let auth = Arc::new(Auth::from_table(AuthTable::parse(&text).unwrap(), QuotaDefaults::default()));
        let mut s = auth.authenticate(Some(&[1; TOKEN_LEN])).unwrap();
        let t0 = Instant::now();
        // A full second's worth, then a batch that puts it in debt.
        assert_eq!(auth.admit_events(&mut s, [1], false, 100, t0).unwrap(), None);
        assert_eq!(auth.admit_events(&mut s, [1], false, 50, t0).unwrap(), None);
        let hint = auth.admit_events(&mut s, [1], false, 1, t0).unwrap().expect("in debt: BUSY");
        assert_eq!(hint, 500);
        assert_eq!(auth.admit_events(&mut s, [1], false, 1, t0 + std::time::Duration::from_millis(600)).unwrap(), None);
        // Connections per token.
        let g = auth.connect(&s).unwrap();
        assert_eq!(auth.connect(&s).unwrap_err().reason, RefusalReason::Connections);
        drop(g);
        auth.connect(&s).unwrap();
    }

    #[test]
    fn an_entry_written_by_auth_add_reads_back() {
        let token = new_token().unwrap();
        let hunts = HuntRanges::parse(["3-9"]).unwrap();
        let text = file_entry("eu-1", Role::Producer, Some(&hunts), &hash_token(&token));
        let auth = Auth::from_table(AuthTable::parse(&text).unwrap(), QuotaDefaults::default());
        let s = auth.authenticate_text(Some(&to_hex(&token))).unwrap();
        assert_eq!(s.principal.hunts, Some(hunts));
        assert_eq!(parse_hex(&to_hex(&token).to_uppercase()), Some(token));
    }
}
