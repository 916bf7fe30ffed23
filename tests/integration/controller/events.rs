//! The controller's Events on the real API server: a repeat grows one Event's series, and an
//! Event that is gone is created again.

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::events::EventType;
use serde_json::json;
use sitecache::controller::status::events::{Note, Recorder};

use super::harness::{Harness, Options, warm};

#[tokio::test]
async fn a_repeat_grows_one_events_series_and_a_deleted_event_is_created_again() {
    let h = Harness::start(Options::default()).await;
    let sc = h
        .create("shop", json!({"site": "shop", "warm": warm("", 2)}))
        .await;
    let recorder = Recorder::new(h.client.clone(), "sitecache-test", None);
    let probe = |note| Note {
        type_: EventType::Warning,
        reason: "Probed",
        action: "Probe",
        note,
    };
    let events: Api<Event> = Api::namespaced(h.client.clone(), &h.ns);
    let probed = || async {
        let mut listed: Vec<Event> = events
            .list(&ListParams::default())
            .await
            .expect("list Events")
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("Probed"))
            .collect();
        listed.sort_by_key(|e| e.metadata.name.clone());
        listed
    };
    let count = |e: &Event| e.series.as_ref().map_or(1, |s| s.count);

    for _ in 0..3 {
        recorder
            .publish(&sc, &probe("once"))
            .await
            .expect("publish");
    }
    let listed = probed().await;
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(count(&listed[0]), 3);
    assert_eq!(listed[0].note.as_deref(), Some("once"));
    assert_eq!(listed[0].type_.as_deref(), Some("Warning"));
    assert_eq!(
        listed[0].regarding.as_ref().and_then(|r| r.uid.clone()),
        sc.metadata.uid
    );

    // Another note is another Event.
    recorder
        .publish(&sc, &probe("twice"))
        .await
        .expect("publish");
    assert_eq!(probed().await.len(), 2);

    // The first is deleted (or expired by the API server): its next repeat creates it again
    // instead of failing on the PATCH.
    let first = listed[0].metadata.name.clone().unwrap();
    events
        .delete(&first, &DeleteParams::default())
        .await
        .expect("delete the Event");
    recorder
        .publish(&sc, &probe("once"))
        .await
        .expect("publish");
    recorder
        .publish(&sc, &probe("once"))
        .await
        .expect("publish");
    let listed = probed().await;
    let once: Vec<_> = listed
        .iter()
        .filter(|e| e.note.as_deref() == Some("once"))
        .collect();
    assert_eq!(once.len(), 1, "{listed:#?}");
    assert_ne!(once[0].metadata.name.as_deref(), Some(first.as_str()));
    assert_eq!(count(once[0]), 2);
    h.shutdown().await;
}
