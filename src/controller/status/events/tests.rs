use super::*;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn shop(uid: &str) -> SiteCache {
    let spec = serde_json::from_value(serde_json::json!({
        "site": "shop",
        "warm": {"image": "shop:1", "command": ["deno", "cache", "main.ts"]},
    }))
    .expect("a spec");
    let mut sc = SiteCache::new("shop", spec);
    sc.metadata.namespace = Some("web".into());
    sc.metadata.uid = Some(uid.into());
    sc
}

fn note(text: &str) -> Note<'_> {
    Note {
        type_: EventType::Normal,
        reason: "Promoted",
        action: "Promote",
        note: text,
    }
}

#[test]
fn a_repeat_within_the_window_grows_the_first_events_series() {
    let mut s = Series::default();
    assert_eq!(s.observe(7, at(0)), Send::Create);
    assert_eq!(
        s.observe(7, at(60)),
        Send::Grow {
            first: at(0),
            count: 2
        }
    );
    // The window runs from the last occurrence, not the first.
    assert_eq!(
        s.observe(7, at(60 + 359)),
        Send::Grow {
            first: at(0),
            count: 3
        }
    );
}

#[test]
fn after_the_window_an_occurrence_is_a_new_event() {
    let mut s = Series::default();
    assert_eq!(s.observe(7, at(0)), Send::Create);
    assert_eq!(s.observe(7, at(360)), Send::Create);
    assert_eq!(
        s.observe(7, at(361)),
        Send::Grow {
            first: at(360),
            count: 2
        }
    );
}

#[test]
fn a_failed_send_starts_over_and_a_recreated_event_is_named_anew() {
    let mut s = Series::default();
    assert_eq!(s.observe(7, at(0)), Send::Create);
    s.forget(7);
    assert_eq!(s.observe(7, at(1)), Send::Create);
    // The Event was gone when its series grew: it is created again, and the next repeat grows
    // the new one.
    assert!(matches!(s.observe(7, at(2)), Send::Grow { .. }));
    s.restart(7, at(2));
    assert_eq!(
        s.observe(7, at(3)),
        Send::Grow {
            first: at(2),
            count: 2
        }
    );
}

#[test]
fn events_that_can_no_longer_grow_are_forgotten() {
    let mut s = Series::default();
    for k in 0..1000 {
        s.observe(k, at(0));
    }
    s.observe(5000, at(300));
    assert_eq!(s.seen.len(), 1001);
    // Swept at most every 30 s: the next sweep is due, and only the recent one stays.
    s.observe(5001, at(400));
    assert_eq!(s.seen.len(), 2);
    assert!(s.seen.capacity() < 1000, "the emptied table is given back");
}

#[test]
fn the_note_the_reason_and_the_object_make_an_event_distinct() {
    let s = Series::default();
    let a = shop("u1");
    let key = s.key(&a, &note("generation 2"));
    assert_eq!(key, s.key(&a, &note("generation 2")));
    assert_ne!(key, s.key(&a, &note("generation 3")));
    assert_ne!(key, s.key(&shop("u2"), &note("generation 2")));
    let warning = Note {
        type_: EventType::Warning,
        ..note("generation 2")
    };
    assert_ne!(key, s.key(&a, &warning));
    let other_reason = Note {
        reason: "Adopted",
        ..note("generation 2")
    };
    assert_ne!(key, s.key(&a, &other_reason));
}

#[test]
fn an_event_is_remembered_in_a_table_entry_of_48_bytes() {
    // What the fleet's memory bound counts on: a hash and three small fields, no strings.
    assert_eq!(std::mem::size_of::<(u64, Seen)>(), 48);
}
