//! The snapshot slots: at most `--max-concurrent-snapshots` Jobs run at once, and due SiteCaches
//! wait for one in a queue ordered by priority (on-demand requests first) and due time (earliest
//! first). A freed slot goes to the head of the queue, which is woken (one SiteCache per slot)
//! and holds a reservation until it starts its Job or gives the slot up; nobody polls. Pure: the
//! context feeds it the running count from the Job watch and delivers the wake-ups.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;

use crate::api::SiteCache;

/// How long a woken SiteCache holds its slot before it goes to the next (it was deleted, or is
/// no longer due, and did not say so).
pub const RESERVATION_TTL: Duration = Duration::from_secs(60);

/// How long a Job the controller created counts against the limit before the watch shows it.
pub const PENDING_GRACE: Duration = Duration::from_secs(120);

/// A Job, by namespace and name.
pub type JobKey = (String, String);

/// Where a waiting SiteCache stands: smaller goes first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    /// 0 for an on-demand request, 1 for everything else.
    pub priority: u8,
    /// Since when the snapshot is due.
    pub due: Timestamp,
}

/// The answer to a SiteCache that asks for a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ask {
    /// Start the Job now (then call [`SlotQueue::started`]).
    Start,
    /// Every slot is taken or promised to SiteCaches ahead: wait to be woken.
    Wait,
}

#[derive(Default)]
pub struct SlotQueue {
    /// Jobs created but perhaps not yet seen by the watch, with when they were created.
    pending: HashMap<JobKey, Instant>,
    /// SiteCaches woken for a freed slot, and when.
    reserved: HashMap<ObjectRef<SiteCache>, Instant>,
    /// The waiting SiteCaches, in order (namespace and name break ties).
    order: BTreeSet<(Place, Option<String>, String)>,
    places: HashMap<ObjectRef<SiteCache>, Place>,
}

impl SlotQueue {
    pub fn waiting(&self) -> usize {
        self.places.len()
    }

    /// Takes the watch's view of the snapshot Jobs (each with whether it runs) and returns how
    /// many run. A Job the watch shows is no longer pending; one it has not shown within
    /// [`PENDING_GRACE`] of its creation is forgotten.
    pub fn observe(&mut self, jobs: impl IntoIterator<Item = (JobKey, bool)>) -> usize {
        let mut running = 0;
        for (key, runs) in jobs {
            self.pending.remove(&key);
            running += usize::from(runs);
        }
        self.pending.retain(|_, at| at.elapsed() < PENDING_GRACE);
        running
    }

    /// Jobs counted against the limit: `running` as the watch shows them, and those created but
    /// not seen yet.
    pub fn taken(&self, running: usize) -> usize {
        running + self.pending.len()
    }

    /// SiteCache `who`, due since `place`, asks for a slot while `running` Jobs count against
    /// `limit`. Returns the answer and the SiteCaches ahead of it that get a freed slot now (to
    /// wake).
    pub fn ask(
        &mut self,
        who: &ObjectRef<SiteCache>,
        place: Place,
        running: usize,
        limit: usize,
    ) -> (Ask, Vec<ObjectRef<SiteCache>>) {
        if self.reserved.remove(who).is_some() {
            return (Ask::Start, Vec::new());
        }
        match self.places.get(who) {
            // A place once taken is kept (a request moves it ahead, never back).
            Some(old) if *old <= place => {}
            Some(old) => {
                let old = old.clone();
                self.order.remove(&entry(old, who));
                self.enqueue(who, place);
            }
            None => self.enqueue(who, place),
        }
        let mut woken = self.assign(running, limit);
        if let Some(i) = woken.iter().position(|w| w == who) {
            woken.swap_remove(i);
            self.reserved.remove(who);
            return (Ask::Start, woken);
        }
        (Ask::Wait, woken)
    }

    fn enqueue(&mut self, who: &ObjectRef<SiteCache>, place: Place) {
        self.order.insert(entry(place.clone(), who));
        self.places.insert(who.clone(), place);
    }

    /// The Job `job` of a SiteCache that was told to start has been created.
    pub fn started(&mut self, job: JobKey) {
        self.pending.insert(job, Instant::now());
    }

    /// Job `job` was not created after all: its slot is free again.
    pub fn release(&mut self, job: &JobKey) {
        self.pending.remove(job);
    }

    /// `who` no longer waits (it started, is no longer due, is suspended, refused or deleted):
    /// its place and any slot promised to it are given up.
    pub fn leave(&mut self, who: &ObjectRef<SiteCache>) {
        if let Some(place) = self.places.remove(who) {
            self.order.remove(&entry(place, who));
        }
        self.reserved.remove(who);
    }

    /// Gives the slots that are free (not running, pending or promised) to the heads of the
    /// queue, one each, and returns them to wake. Reservations older than [`RESERVATION_TTL`]
    /// are dropped first.
    pub fn assign(&mut self, running: usize, limit: usize) -> Vec<ObjectRef<SiteCache>> {
        self.reserved.retain(|_, at| at.elapsed() < RESERVATION_TTL);
        let mut woken = Vec::new();
        while running + self.pending.len() + self.reserved.len() < limit {
            let Some((_, namespace, name)) = self.order.pop_first() else {
                break;
            };
            let mut who = ObjectRef::new(&name);
            who.namespace = namespace;
            self.places.remove(&who);
            self.reserved.insert(who.clone(), Instant::now());
            woken.push(who);
        }
        woken
    }
}

fn entry(place: Place, who: &ObjectRef<SiteCache>) -> (Place, Option<String>, String) {
    (place, who.namespace.clone(), who.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sc(name: &str) -> ObjectRef<SiteCache> {
        ObjectRef::new(name).within("web")
    }

    fn at(second: i64) -> Place {
        Place {
            priority: 1,
            due: Timestamp::from_second(second).unwrap(),
        }
    }

    fn job(name: &str) -> JobKey {
        ("web".into(), name.into())
    }

    #[test]
    fn a_free_slot_is_taken_at_once_when_nobody_waits() {
        let mut q = SlotQueue::default();
        assert_eq!(q.ask(&sc("a"), at(10), 0, 2), (Ask::Start, vec![]));
        q.started(job("a-g1"));
        assert_eq!(q.ask(&sc("b"), at(20), 0, 2), (Ask::Start, vec![]));
        q.started(job("b-g1"));
        assert_eq!(q.ask(&sc("c"), at(5), 0, 2).0, Ask::Wait);
        assert_eq!(q.waiting(), 1);
    }

    #[test]
    fn freed_slots_go_one_each_to_the_earliest_due_requests_first() {
        let mut q = SlotQueue::default();
        // Two running, four waiting.
        for (name, due) in [("late", 40), ("early", 10), ("middle", 20)] {
            assert_eq!(q.ask(&sc(name), at(due), 2, 2).0, Ask::Wait);
        }
        let request = Place {
            priority: 0,
            due: Timestamp::from_second(50).unwrap(),
        };
        assert_eq!(q.ask(&sc("asked"), request, 2, 2).0, Ask::Wait);
        // No slot frees: nobody is woken.
        assert_eq!(q.assign(2, 2), Vec::<ObjectRef<SiteCache>>::new());
        // One Job ends: one SiteCache is woken, the on-demand request.
        assert_eq!(q.assign(1, 2), vec![sc("asked")]);
        // Its slot is promised: a newcomer due earlier than everyone waits.
        assert_eq!(q.ask(&sc("new"), at(1), 1, 2).0, Ask::Wait);
        assert_eq!(q.ask(&sc("asked"), at(50), 1, 2), (Ask::Start, vec![]));
        q.started(job("asked-g1"));
        // Two more end (the pending Job now shows as running): the next two by due time.
        assert_eq!(q.assign(0, 2), vec![sc("new")]);
        let mut woken = q.assign(0, 3);
        woken.sort_by_key(|r| r.name.clone());
        assert_eq!(woken, vec![sc("early")]);
        assert_eq!(q.waiting(), 2);
    }

    #[test]
    fn a_place_is_kept_and_only_moves_ahead() {
        let mut q = SlotQueue::default();
        q.ask(&sc("a"), at(10), 1, 1);
        q.ask(&sc("b"), at(20), 1, 1);
        // "a" asks again later with a later due time: it keeps its place.
        q.ask(&sc("a"), at(30), 1, 1);
        assert_eq!(q.assign(0, 1), vec![sc("a")]);
    }

    #[test]
    fn leaving_gives_up_the_place_and_the_promised_slot() {
        let mut q = SlotQueue::default();
        q.ask(&sc("a"), at(10), 1, 1);
        q.ask(&sc("b"), at(20), 1, 1);
        assert_eq!(q.assign(0, 1), vec![sc("a")]);
        // "a" is no longer due: its slot goes to "b".
        q.leave(&sc("a"));
        assert_eq!(q.assign(0, 1), vec![sc("b")]);
        q.leave(&sc("b"));
        assert_eq!(q.waiting(), 0);
        assert_eq!(q.assign(0, 1), Vec::<ObjectRef<SiteCache>>::new());
    }

    #[test]
    fn pending_jobs_count_until_the_watch_shows_them() {
        let mut q = SlotQueue::default();
        q.ask(&sc("a"), at(10), 0, 1);
        q.started(job("a-g1"));
        let running = q.observe([]);
        assert_eq!(q.taken(running), 1);
        assert_eq!(q.ask(&sc("b"), at(20), running, 1).0, Ask::Wait);
        // The watch shows it running: counted once, not twice.
        let running = q.observe([(job("a-g1"), true)]);
        assert_eq!((running, q.taken(running)), (1, 1));
        // It finished: the slot goes to "b".
        let running = q.observe([(job("a-g1"), false)]);
        assert_eq!(q.assign(running, 1), vec![sc("b")]);
    }
}
