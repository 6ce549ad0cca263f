//! File descriptors: the open-file limit, raised to its hard ceiling at
//! start and checked against what the planes may hold, so that a flood on
//! one plane never takes the descriptors the other (or the journal) needs.
//!
//! Each plane caps its own connections (`ServerConfig::connections_max`,
//! `ControlConfig::connections_max`); the journal, the runtimes, the
//! listeners and the connections being refused take the reserve. When the
//! sum does not fit under the limit, `trove serve` refuses to start and
//! names the numbers (docs/decisions/0003-control-plane-limits.md).

use std::fmt;

/// Descriptors kept for everything that is not a connection: stdio, the
/// listeners, each runtime's epoll and wakers, `/proc` reads for
/// `/metrics`, and connections accepted past a cap only to be refused.
pub const FD_RESERVE_BASE: u64 = 64;
/// Per shard: its journal's open segment, the directory, a snapshot being
/// written and recovery's reads.
pub const FD_RESERVE_PER_SHARD: u64 = 8;

/// What the limit was checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft open-file limit, after raising it.
    pub limit: u64,
    pub data_connections_max: u64,
    pub control_connections_max: u64,
    pub reserve: u64,
}

impl FdBudget {
    pub fn needed(&self) -> u64 {
        self.data_connections_max.saturating_add(self.control_connections_max).saturating_add(self.reserve)
    }
}

/// Why the descriptors do not fit.
#[derive(Debug)]
pub enum FdError {
    /// `getrlimit` failed.
    Limit(std::io::Error),
    /// The limits add up past the open-file limit.
    TooFew(FdBudget),
}

impl fmt::Display for FdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdError::Limit(e) => write!(f, "reading the open-file limit (RLIMIT_NOFILE): {e}"),
            FdError::TooFew(b) => write!(
                f,
                "the open-file limit is {}, below the {} descriptors the settings need: connections_max {} + \
                 control_connections_max {} + {} reserved for the journal and runtimes; raise `ulimit -n` \
                 (its hard limit) or lower the connection limits",
                b.limit,
                b.needed(),
                b.data_connections_max,
                b.control_connections_max,
                b.reserve
            ),
        }
    }
}

impl std::error::Error for FdError {}

/// The check itself, without touching the process.
pub fn check_budget(
    limit: u64,
    data_connections_max: usize,
    control_connections_max: usize,
    shards: usize,
) -> Result<FdBudget, FdError> {
    let budget = FdBudget {
        limit,
        data_connections_max: data_connections_max as u64,
        control_connections_max: control_connections_max as u64,
        reserve: FD_RESERVE_BASE.saturating_add(FD_RESERVE_PER_SHARD.saturating_mul(shards as u64)),
    };
    if budget.needed() > limit { Err(FdError::TooFew(budget)) } else { Ok(budget) }
}

/// Raises the soft open-file limit to the hard one, then checks that the
/// connection caps (`control_connections_max` 0 when the control plane is
/// off) and the reserve fit under it.
pub fn reserve(
    data_connections_max: usize,
    control_connections_max: usize,
    shards: usize,
) -> Result<FdBudget, FdError> {
    let limit = raise_open_files_limit().map_err(FdError::Limit)?;
    check_budget(limit, data_connections_max, control_connections_max, shards)
}

/// Sets the soft RLIMIT_NOFILE to the hard one (the kernel's `nr_open`
/// when the hard one is unlimited); returns the soft limit now in force.
/// A refused raise keeps the old soft limit, which is then what counts.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let (soft, hard) = get_nofile()?;
    let ceiling = if hard == libc::RLIM_INFINITY { nr_open().unwrap_or(1 << 20) } else { hard };
    if soft >= ceiling {
        return Ok(soft);
    }
    match set_nofile(ceiling, hard) {
        Ok(()) => Ok(get_nofile()?.0),
        Err(_) => Ok(soft),
    }
}

fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open").ok()?.trim().parse().ok()
}

/// (soft, hard).
#[allow(unsafe_code)]
fn get_nofile() -> std::io::Result<(u64, u64)> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `r` is a valid, writable `rlimit` for the call's duration.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((r.rlim_cur, r.rlim_max))
}

#[allow(unsafe_code)]
fn set_nofile(soft: u64, hard: u64) -> std::io::Result<()> {
    let r = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: `r` is a valid `rlimit` read by the call; nothing is retained.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caps_and_the_reserve_must_fit_under_the_limit() {
        let b = check_budget(4096, 1024, 128, 2).expect("fits");
        assert_eq!(b.reserve, FD_RESERVE_BASE + 2 * FD_RESERVE_PER_SHARD);
        assert_eq!(b.needed(), 1024 + 128 + b.reserve);
        let exact = b.needed();
        assert!(check_budget(exact, 1024, 128, 2).is_ok());
        let e = check_budget(exact - 1, 1024, 128, 2).unwrap_err().to_string();
        for n in [exact - 1, exact, 1024, 128] {
            assert!(e.contains(&n.to_string()), "{e}");
        }
        assert!(check_budget(u64::MAX - 1, usize::MAX, usize::MAX, usize::MAX).is_err(), "no overflow");
    }

    #[test]
    fn raising_the_limit_never_lowers_it() {
        let (soft, hard) = get_nofile().unwrap();
        let now = raise_open_files_limit().unwrap();
        assert!(now >= soft && (hard == libc::RLIM_INFINITY || now <= hard), "{soft} {hard} -> {now}");
    }
}
