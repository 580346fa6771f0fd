//! The offline verifier (`research-verify`) against real logs, untouched
//! and tampered with directly in SQL (triggers disabled, as a superuser or
//! the owner could): every alteration is caught at the right position.

use std::process::Command;

use serde_json::json;
use shared::store::EventStore;
use sqlx::PgPool;

use crate::env::Env;
use crate::publishing::binary;

/// A log of 7 events: study, subject, observation, correction, signature,
/// a second observation and its retraction.
pub async fn log(env: &Env) -> PgPool {
    let (_, subject, observation) = env.recorded().await;
    let path = format!("/v1/observations/{observation}/corrections");
    let correction = json!({"values": {"body_mass_g": 3800}, "reason": "scale recalibrated"});
    assert_eq!(
        env.api.post(&path, &env.writer2, &correction).await.status,
        200
    );
    let path = format!("/v1/observations/{observation}/signatures");
    assert_eq!(
        env.api
            .post(&path, &env.reviewer, &json!({"meaning": "reviewed"}))
            .await
            .status,
        200
    );
    let second = env.observation(subject).await;
    let path = format!("/v1/observations/{second}/retraction");
    assert_eq!(
        env.api
            .post(&path, &env.writer, &json!({"reason": "duplicate entry"}))
            .await
            .status,
        200
    );
    env.db.pool().await
}

async fn pin(pool: &PgPool) -> String {
    let (position, hash): (i64, Vec<u8>) =
        sqlx::query_as("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1")
            .fetch_one(pool)
            .await
            .unwrap();
    format!("{position}:{}", hex::encode(hash))
}

/// Runs the verifier on the database; answers (exit code, stdout).
fn verify(env: &Env, pin: Option<&str>) -> (i32, String) {
    let mut command = Command::new(binary("research-verify"));
    command.args([
        "--quiet",
        "--database-url",
        &env.db.url_as(tests::DbRole::Query),
    ]);
    if let Some(pin) = pin {
        command.args(["--pin", pin]);
    }
    let out = command.output().expect("running research-verify");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Runs SQL with the append-only guard switched off, as an attacker would.
pub async fn tamper(pool: &PgPool, sql: &str) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("ALTER TABLE events DISABLE TRIGGER USER")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::raw_sql(sql).execute(&mut *tx).await.unwrap();
    sqlx::query("ALTER TABLE events ENABLE TRIGGER USER")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn an_untouched_log_verifies_from_the_database_and_from_an_export() {
    let env = Env::start().await;
    let pool = log(&env).await;
    let head = pin(&pool).await;
    let (code, out) = verify(&env, Some(&head));
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.trim(), format!("verified 7 events; head {head}"));

    let events = EventStore::read_after(&pool, 0, 100).await.unwrap();
    let file = std::env::temp_dir().join(format!("export-{}.ndjson", env.db.name));
    let text: String = events.iter().map(|e| e.to_cloud_event() + "\n").collect();
    std::fs::write(&file, text).unwrap();
    let out = Command::new(binary("research-verify"))
        .args(["--quiet", "--pin", &head, "--file"])
        .arg(&file)
        .output()
        .unwrap();
    std::fs::remove_file(&file).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn a_changed_value_in_an_old_event_is_caught_at_its_position() {
    let env = Env::start().await;
    let pool = log(&env).await;
    tamper(
        &pool,
        "UPDATE events SET data = replace(data::text, '39.1', '39.7')::json WHERE position = 3",
    )
    .await;
    let (code, out) = verify(&env, None);
    assert_eq!(code, 1);
    assert!(
        out.starts_with("FAILED at position 3: the hash does not match"),
        "{out}"
    );
}

#[tokio::test]
async fn a_deleted_event_in_the_middle_is_caught() {
    let env = Env::start().await;
    let pool = log(&env).await;
    tamper(&pool, "DELETE FROM events WHERE position = 4").await;
    let (code, out) = verify(&env, None);
    assert_eq!(code, 1);
    assert!(out.starts_with("FAILED at position 4: missing"), "{out}");
}

#[tokio::test]
async fn swapped_positions_are_caught() {
    let env = Env::start().await;
    let pool = log(&env).await;
    tamper(
        &pool,
        "UPDATE events SET position = 1000004 WHERE position = 4; UPDATE events SET position = 4 WHERE position = 5; \
         UPDATE events SET position = 5 WHERE position = 1000004",
    )
    .await;
    let (code, out) = verify(&env, None);
    assert_eq!(code, 1);
    assert!(out.starts_with("FAILED at position 4"), "{out}");
}

#[tokio::test]
async fn a_deleted_newest_event_is_caught_against_a_pinned_head() {
    let env = Env::start().await;
    let pool = log(&env).await;
    let head = pin(&pool).await;
    tamper(&pool, "DELETE FROM events WHERE position = 7").await;
    // Without a pin the shorter log is self-consistent ...
    assert_eq!(verify(&env, None).0, 0);
    // ... the pin proves that something was removed.
    let (code, out) = verify(&env, Some(&head));
    assert_eq!(code, 1);
    assert!(
        out.starts_with("FAILED at position 7") && out.contains("removed"),
        "{out}"
    );
}

#[tokio::test]
async fn a_forged_event_with_a_recomputed_chain_is_caught_against_a_pinned_head() {
    let env = Env::start().await;
    let pool = log(&env).await;
    let head = pin(&pool).await;
    // The forger rewrites the newest event (the retraction's reason) and
    // recomputes its hash, so that the chain alone verifies.
    let mut events = EventStore::read_after(&pool, 0, 100).await.unwrap();
    let last = events.last_mut().unwrap();
    last.reason = Some("entered by mistake".into());
    last.hash = last.compute_hash();
    tamper(
        &pool,
        &format!(
            "UPDATE events SET reason = 'entered by mistake', hash = '\\x{}' WHERE position = 7",
            hex::encode(last.hash)
        ),
    )
    .await;
    assert_eq!(
        verify(&env, None).0,
        0,
        "the recomputed chain verifies on its own"
    );
    let (code, out) = verify(&env, Some(&head));
    assert_eq!(code, 1);
    assert!(
        out.starts_with("FAILED at position 7") && out.contains("pinned"),
        "{out}"
    );
}
