//! Which generations retention deletes (pure).

use std::collections::BTreeSet;

use super::Inventory;

/// Which generations retention deletes after promoting `current`: committed ones beyond the
/// `keep` newest at or below `current`, and uncommitted leftovers below `current`. Never
/// `current`, never one at or above `in_flight`, never one above `current` (not yet promoted).
pub fn retention_victims(
    inventory: &Inventory,
    current: u64,
    keep: u32,
    in_flight: Option<u64>,
) -> Vec<u64> {
    let kept: BTreeSet<u64> = inventory
        .committed
        .iter()
        .rev()
        .filter(|&&n| n <= current)
        .take(keep.max(1) as usize)
        .copied()
        .collect();
    inventory
        .all
        .iter()
        .copied()
        .filter(|&n| n < current && !kept.contains(&n))
        .filter(|&n| in_flight.is_none_or(|f| n < f))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(committed: &[u64], uncommitted: &[u64]) -> Inventory {
        let mut i = Inventory::default();
        i.committed.extend(committed);
        i.all.extend(committed);
        i.all.extend(uncommitted);
        i
    }

    #[test]
    fn retention_keeps_the_newest_and_never_current_or_in_flight() {
        let i = inv(&[1, 2, 3, 4, 5], &[]);
        assert_eq!(retention_victims(&i, 5, 2, None), [1, 2, 3]);
        assert_eq!(retention_victims(&i, 5, 1, None), [1, 2, 3, 4]);
        assert_eq!(retention_victims(&i, 5, 10, None), Vec::<u64>::new());
        // Promoted 4 while 5 is being written: 5 is untouched.
        assert_eq!(retention_victims(&i, 4, 1, Some(5)), [1, 2, 3]);
    }

    #[test]
    fn retention_sweeps_uncommitted_leftovers_below_current() {
        let i = inv(&[1, 3, 5], &[2, 4, 6]);
        assert_eq!(retention_victims(&i, 5, 2, Some(6)), [1, 2, 4]);
        assert_eq!(retention_victims(&i, 5, 3, None), [2, 4]);
    }
}
