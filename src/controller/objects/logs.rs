//! The snapshot Jobs' logs under `P/logs/`: written when a Job is handled, kept for the retained
//! generations and the newest [`OTHERS_KEPT`] others (failed, rejected or expired ones), so that
//! a SiteCache that fails for weeks keeps a bounded number.

use std::collections::BTreeSet;

use super::Prefix;
use crate::storage::joblog::JobLog;
use crate::storage::{self, StorageError};

/// Logs kept of generations that are not retained.
pub const OTHERS_KEPT: usize = 10;

impl Prefix<'_> {
    /// Writes `log`, then deletes the logs no longer kept (`retained`: the generations retention
    /// keeps). Returns how many were deleted.
    pub async fn keep_log(
        &self,
        log: &JobLog,
        retained: &BTreeSet<u64>,
    ) -> Result<usize, StorageError> {
        let key = self.location.log_key(log.generation);
        storage::put_json(self.client, self.bucket(), &key, log, false).await?;
        let have: BTreeSet<u64> = self
            .list(&self.location.logs_prefix())
            .await?
            .iter()
            .filter_map(|(k, _)| self.location.generation_of_log_key(k))
            .collect();
        let victims = log_victims(&have, retained, OTHERS_KEPT);
        for &n in &victims {
            storage::delete(self.client, self.bucket(), &self.location.log_key(n)).await?;
        }
        Ok(victims.len())
    }

    /// The logs of generation `n`, if kept.
    pub async fn log(&self, n: u64) -> Result<Option<JobLog>, StorageError> {
        storage::get_json(self.client, self.bucket(), &self.location.log_key(n)).await
    }
}

/// The logs to delete among `have`: all but those of `retained` generations and the newest
/// `others` of the rest.
pub fn log_victims(have: &BTreeSet<u64>, retained: &BTreeSet<u64>, others: usize) -> Vec<u64> {
    let mut victims: Vec<u64> = have
        .iter()
        .rev()
        .filter(|n| !retained.contains(n))
        .skip(others)
        .copied()
        .collect();
    victims.sort_unstable();
    victims
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_retained_and_the_newest_others() {
        let have: BTreeSet<u64> = (1..=20).collect();
        let retained: BTreeSet<u64> = [2, 19, 20].into();
        // Others, newest first: 18, 17, 16, 15 kept; 14 down to 1 (but 2) go.
        let mut want: Vec<u64> = (1..=14).filter(|&n| n != 2).collect();
        want.sort_unstable();
        assert_eq!(log_victims(&have, &retained, 4), want);
        assert!(log_victims(&have, &retained, 100).is_empty());
        assert_eq!(log_victims(&have, &BTreeSet::new(), 0).len(), 20);
    }
}
