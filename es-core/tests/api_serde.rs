//! What a service's API shows: recorded events and command outcomes as JSON, payloads as
//! documents rather than strings; positions as text.

use es_core::conformance::repository::{Add, Counter, Open};
use es_core::{
    CommandContext, EventStore, LogScope, MemoryStore, Position, RecordedEvent, Repository,
};

#[tokio::test]
async fn recorded_events_and_outcomes_serialize_with_their_payloads_as_json() {
    let store = MemoryStore::new();
    let counters = Repository::<Counter, _>::new(store.clone());
    counters
        .create(
            "c",
            &Open(2),
            &CommandContext::new().with_correlation_id("req-17"),
        )
        .await
        .unwrap();
    let executed = counters
        .execute("c", &Add(5), &CommandContext::new())
        .await
        .unwrap();
    let outcome = serde_json::to_value(&executed).unwrap();
    assert_eq!(outcome["version"], 3);
    assert_eq!(outcome["first_version"], 2);
    assert_eq!(outcome["repeated"], false);
    assert_eq!(outcome["events"][0]["event_type"], "Tested");
    assert_eq!(
        outcome["events"][0]["payload"],
        serde_json::json!({ "n": 5 })
    );
    assert_eq!(
        outcome["events"][0]["event_id"],
        executed.event_ids[0].to_string()
    );

    let history = store
        .read_all(LogScope::AllTenants, Position::START, 10)
        .await
        .unwrap();
    let json = serde_json::to_value(&history).unwrap();
    assert_eq!(json[0]["payload"], serde_json::json!({ "n": 2 }));
    assert_eq!(json[0]["metadata"]["correlation_id"], "req-17");
    assert_eq!(json[0]["tenant"], "default");
    let text = serde_json::to_string(&history).unwrap();
    let back: Vec<RecordedEvent> = serde_json::from_str(&text).unwrap();
    assert_eq!(back, history, "the text round-trips exactly");
}

#[test]
fn positions_read_back_from_their_text() {
    let position = Position {
        transaction: 812,
        sequence: 40,
    };
    assert_eq!(position.to_string().parse::<Position>().unwrap(), position);
    for bad in ["", "812", "812/", "a/b", "-1/2", "1/2/3"] {
        let error = bad.parse::<Position>().unwrap_err();
        assert!(
            error.to_string().contains("transaction/sequence"),
            "{bad}: {error}"
        );
    }
}
