//! The event store's own guarantees, checked in the database.

use shared::envelope::{StoredEvent, GENESIS_HASH};
use shared::store::EventStore;

use crate::env::Env;

#[tokio::test]
async fn the_database_refuses_to_update_delete_or_truncate_events() {
    let env = Env::start().await;
    env.recorded().await;
    let pool = env.db.pool().await;
    for sql in [
        "UPDATE events SET actor = 'mallory' WHERE position = 1",
        "DELETE FROM events WHERE position = 1",
        "TRUNCATE events",
    ] {
        let error = sqlx::query(sql).execute(&pool).await.expect_err(sql);
        assert!(error.to_string().contains("append-only"), "{sql}: {error}");
    }
    let actor: String = sqlx::query_scalar("SELECT actor FROM events WHERE position = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(actor, "alice");
}

/// Recomputes the chain over the whole log.
pub fn assert_chain(events: &[StoredEvent]) {
    let mut prev = GENESIS_HASH;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.position, i as i64 + 1, "positions are 1..N");
        assert_eq!(e.prevhash, prev, "prevhash at {}", e.position);
        assert_eq!(e.compute_hash(), e.hash, "hash at {}", e.position);
        prev = e.hash;
    }
}

#[tokio::test]
async fn events_carry_a_verifiable_hash_chain_and_their_metadata() {
    let env = Env::start().await;
    let (_, _, observation) = env.recorded().await;
    let correction =
        serde_json::json!({"values": {"body_mass_g": 3800}, "reason": "scale recalibrated"});
    let answer = env
        .api
        .post_with(
            &format!("/v1/observations/{observation}/corrections"),
            &env.writer2,
            &correction,
            &[("x-correlation-id", "import-2024-03")],
        )
        .await;
    assert_eq!(answer.status, 200);
    let events = EventStore::read_after(&env.db.pool().await, 0, 100)
        .await
        .unwrap();
    assert_eq!(events.len(), 4);
    assert_chain(&events);
    let last = &events[3];
    assert_eq!(last.event_type, "research.observation.corrected.v1");
    assert_eq!(last.actor, "bob");
    assert_eq!(last.reason.as_deref(), Some("scale recalibrated"));
    assert_eq!(last.correlation_id, "import-2024-03");
    assert_eq!(last.stream_version, 2);
    assert_eq!(last.aggregate_id, observation);
    assert_eq!(answer.json()["position"], 4);
}
