//! The top-10 of a round, maintained incrementally.

/// One leaderboard line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub player: u32,
    pub score: u32,
}

impl Entry {
    /// Rank order: higher score first, then lower player id.
    #[inline]
    fn ranks_before(self, other: Entry) -> bool {
        self.score > other.score || (self.score == other.score && self.player < other.player)
    }
}

/// The best ten players of a round by (score desc, player id asc), among
/// players with a positive score.
///
/// Scores only rise within a round, so an offer is exact with no view of the
/// other players: a player outside the board whose score rises can only
/// displace the last entry, and every player outside ranks below it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Top10 {
    len: u8,
    entries: [Entry; Top10::CAPACITY],
}

impl Top10 {
    pub const CAPACITY: usize = 10;

    pub fn entries(&self) -> &[Entry] {
        &self.entries[..usize::from(self.len)]
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Records that `player` now has `score` (never lower than before within
    /// the round). Returns whether the board changed.
    pub fn offer(&mut self, player: u32, score: u32) -> bool {
        let new = Entry { player, score };
        let len = usize::from(self.len);
        let mut at = match self.entries[..len].iter().position(|e| e.player == player) {
            Some(i) => {
                debug_assert!(score >= self.entries[i].score, "scores only rise within a round");
                if self.entries[i].score == score {
                    return false;
                }
                self.entries[i] = new;
                i
            }
            None if len < Self::CAPACITY => {
                self.entries[len] = new;
                self.len += 1;
                len
            }
            None => {
                if !new.ranks_before(self.entries[len - 1]) {
                    return false;
                }
                self.entries[len - 1] = new;
                len - 1
            }
        };
        while at > 0 && self.entries[at].ranks_before(self.entries[at - 1]) {
            self.entries.swap(at, at - 1);
            at -= 1;
        }
        true
    }

    /// The board computed from scratch, for checks.
    pub fn from_scores(scores: impl IntoIterator<Item = Entry>) -> Self {
        let mut all: Vec<Entry> = scores.into_iter().filter(|e| e.score > 0).collect();
        all.sort_unstable_by(|a, b| b.score.cmp(&a.score).then(a.player.cmp(&b.player)));
        all.truncate(Self::CAPACITY);
        let mut top = Self::default();
        top.entries[..all.len()].copy_from_slice(&all);
        top.len = all.len() as u8;
        top
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ties_break_by_player_id() {
        let mut t = Top10::default();
        assert!(t.offer(5, 10));
        assert!(t.offer(3, 10));
        assert_eq!(t.entries()[0].player, 3);
        assert!(!t.offer(3, 10));
    }

    proptest! {
        /// The incremental board always equals the board recomputed from
        /// every score, whatever the order of increments.
        #[test]
        fn incremental_equals_recomputed(incs in proptest::collection::vec((0u32..40, 1u32..50), 0..300)) {
            let mut scores = [0u32; 40];
            let mut top = Top10::default();
            for (player, inc) in incs {
                scores[player as usize] += inc;
                top.offer(player, scores[player as usize]);
                let brute = Top10::from_scores(
                    scores.iter().enumerate().map(|(p, &s)| Entry { player: p as u32, score: s }),
                );
                prop_assert_eq!(top, brute);
            }
        }
    }
}
