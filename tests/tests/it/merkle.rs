//! The Merkle tree of a real log kept in PostgreSQL tiles: extended in
//! batches, it has the roots and proofs of the same tree built in memory
//! from the events' hashes, and a rebuild from the events writes the same
//! tiles.

use std::collections::BTreeMap;

use serde_json::json;
use shared::merkle::{leaf_hash, verify_consistency, verify_inclusion, Hash, InMemory};
use shared::merkle_store::{extend, prove_consistency, prove_inclusion, root_at, size};
use sqlx::PgPool;
use tests::DbRole;
use uuid::Uuid;

use crate::env::Env;

/// The three penguin seasons through the batch endpoint: about 690 events,
/// past two full tiles of leaves; answers the studies.
pub async fn penguin_log(env: &Env) -> Vec<Uuid> {
    let mut studies = Vec::new();
    for study in tests::penguins() {
        let study_id = env.register(&study).await;
        studies.push(study_id);
        let subjects: Vec<Uuid> = study.subjects.iter().map(|_| Uuid::now_v7()).collect();
        let commands = study.batch_commands(&study_id.to_string(), &subjects, 1);
        let answer = env
            .api
            .post(
                "/v1/commands",
                &env.writer,
                &json!({ "commands": commands }),
            )
            .await;
        assert_eq!(answer.status, 200);
    }
    studies
}

/// Deletes the stored tree and builds it again from the events alone, as
/// the owner; answers its size.
pub async fn rebuild(owner: &PgPool) -> u64 {
    sqlx::raw_sql("DELETE FROM merkle_tiles; UPDATE merkle_tree SET size = 0")
        .execute(owner)
        .await
        .unwrap();
    extend(owner, 1_000_000).await.unwrap()
}

async fn leaves(pool: &PgPool) -> Vec<Hash> {
    let hashes: Vec<Vec<u8>> = sqlx::query_scalar("SELECT hash FROM events ORDER BY position")
        .fetch_all(pool)
        .await
        .unwrap();
    hashes.iter().map(|h| leaf_hash(h)).collect()
}

async fn all_tiles(pool: &PgPool) -> BTreeMap<(i16, i64), Vec<u8>> {
    let rows: Vec<(i16, i64, Vec<u8>)> =
        sqlx::query_as("SELECT level, n, hashes FROM merkle_tiles")
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter().map(|(l, n, h)| ((l, n), h)).collect()
}

#[tokio::test]
async fn the_stored_tree_equals_the_tree_of_the_events_and_rebuilds_the_same() {
    let env = Env::start().await;
    penguin_log(&env).await;
    let owner = env.db.pool().await;
    let leaves = leaves(&owner).await;
    let head = leaves.len() as u64;
    assert!(head > 512, "{head} events");
    let writer = env.db.pool_as(DbRole::Command).await;
    let mut grown = 0;
    while grown < head {
        grown = extend(&writer, 97).await.unwrap();
    }
    assert_eq!(
        extend(&writer, 97).await.unwrap(),
        head,
        "nothing more to add"
    );
    let reader = env.db.pool_as(DbRole::Query).await;
    let mut conn = reader.acquire().await.unwrap();
    assert_eq!(size(&mut conn).await.unwrap(), head);
    let mut memory = InMemory::new(&leaves);
    for n in [1, 2, 255, 256, 257, 511, 512, 513, head - 1, head] {
        let root = root_at(&mut conn, n).await.unwrap();
        assert_eq!(
            root,
            shared::merkle::root(&mut memory, n).unwrap(),
            "root of {n}"
        );
        for index in [0, n / 3, n - 1] {
            let proof = prove_inclusion(&mut conn, index, n).await.unwrap();
            verify_inclusion(index, n, &leaves[index as usize], &proof, &root).unwrap();
        }
        let old = n.div_ceil(2);
        let proof = prove_consistency(&mut conn, old, n).await.unwrap();
        let old_root = shared::merkle::root(&mut memory, old).unwrap();
        verify_consistency(old, n, &old_root, &root, &proof).unwrap();
    }
    drop(conn);
    // A rebuild from the events alone, in one batch, writes the same tiles.
    let incremental = all_tiles(&owner).await;
    assert_eq!(rebuild(&owner).await, head);
    assert_eq!(all_tiles(&owner).await, incremental);
}

#[tokio::test]
async fn only_the_command_api_role_extends_the_tree() {
    let env = Env::start().await;
    env.recorded().await;
    let query = env.db.pool_as(DbRole::Query).await;
    assert!(
        extend(&query, 10).await.is_err(),
        "the query API reads only"
    );
    let command = env.db.pool_as(DbRole::Command).await;
    assert_eq!(extend(&command, 10).await.unwrap(), 3);
}

/// The hex hashes of a proof document.
fn proof_hashes(proof: &serde_json::Value) -> Vec<Hash> {
    proof["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| shared::envelope::parse_hash(h.as_str().unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn the_command_api_signs_checkpoints_of_the_tree_and_publishes_them() {
    use shared::checkpoint::Checkpoint;

    let Env {
        db,
        stream,
        signer,
        api,
        ..
    } = Env::signing(42).await;
    let verifier = signer.unwrap().verifier();
    let writer = tests::token("alice", &[shared::auth::Role::Writer]);
    let study = tests::penguins()[0].register_body();
    assert_eq!(api.post("/v1/studies", &writer, &study).await.status, 201);
    let owner = db.pool().await;
    let head: i64 = sqlx::query_scalar("SELECT max(position) FROM events")
        .fetch_one(&owner)
        .await
        .unwrap();
    // A checkpoint of the whole log appears, signed by the configured key,
    // with the root of the tree of the events' hashes.
    let note: String = tests::wait_until(
        std::time::Duration::from_secs(20),
        "a checkpoint of the head",
        || async {
            sqlx::query_scalar("SELECT note FROM checkpoints WHERE size = $1 LIMIT 1")
                .bind(head)
                .fetch_optional(&owner)
                .await
                .ok()?
        },
    )
    .await;
    let checkpoint = Checkpoint::verify(&note, &verifier, "research-records.test/log").unwrap();
    let leaves = leaves(&owner).await;
    assert_eq!(checkpoint.size, head as u64);
    assert_eq!(
        checkpoint.root,
        shared::merkle::root(&mut InMemory::new(&leaves), head as u64).unwrap()
    );
    // The same note is in JetStream, outside the database.
    let js = stream.jetstream().await;
    let name = format!("{}_CHECKPOINTS", stream.name);
    let published = tests::wait_until(
        std::time::Duration::from_secs(20),
        "the checkpoint in JetStream",
        || async {
            let mut s = js.get_stream(&name).await.ok()?;
            let last_sequence = s.info().await.ok()?.state.last_sequence;
            let last = s.get_raw_message(last_sequence).await.ok()?;
            String::from_utf8(last.payload.to_vec()).ok()
        },
    )
    .await;
    assert!(Checkpoint::verify(&published, &verifier, "research-records.test/log").is_ok());
    let ready = api
        .http
        .get(api.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(ready["checkpointer"]["ok"], true, "{ready}");
    api.shutdown().await;
}

#[tokio::test]
async fn checkpoints_and_proofs_are_served_to_auditors_and_verify() {
    use shared::auth::Role;
    use shared::checkpoint::{Checkpoint, NoteVerifier};
    use shared::merkle::ProofError;

    let signing = Env::signing(7).await;
    let (db, api) = (&signing.db, &signing.api);
    let writer = tests::token("alice", &[Role::Writer]);
    let first = api
        .post(
            "/v1/studies",
            &writer,
            &tests::penguins()[0].register_body(),
        )
        .await;
    let study: Uuid = first.id();
    let second = api
        .post(
            "/v1/studies",
            &writer,
            &tests::penguins()[1].register_body(),
        )
        .await;
    let other_position = second.json()["position"].as_i64().unwrap();
    let owner = db.pool().await;
    let head: i64 = sqlx::query_scalar("SELECT max(position) FROM events")
        .fetch_one(&owner)
        .await
        .unwrap();
    let query = signing.query().await;
    let auditor = tests::token("audrey", &[Role::Auditor]);
    let note = tests::wait_until(
        std::time::Duration::from_secs(20),
        "a checkpoint of the head",
        || async {
            let answer = query.get("/v1/audit/checkpoint", &auditor).await;
            let note = String::from_utf8(answer.bytes).ok()?;
            note.contains(&format!("\n{head}\n")).then_some(note)
        },
    )
    .await;
    // An auditor verifies the checkpoint with the key it was given…
    let key_text = String::from_utf8(query.get("/v1/audit/log-key", &auditor).await.bytes).unwrap();
    let verifier = NoteVerifier::parse(&key_text).unwrap();
    let checkpoint = Checkpoint::verify(&note, &verifier, "research-records.test/log").unwrap();
    // …then every event's inclusion and the tree's growth against it.
    let leaves = leaves(&owner).await;
    for position in 1..=head {
        let answer = query
            .get(
                &format!("/v1/audit/proof/inclusion?position={position}&tree_size={head}"),
                &auditor,
            )
            .await;
        assert_eq!(answer.status, 200);
        let proof = answer.json();
        let hashes = proof_hashes(&proof);
        let leaf = shared::envelope::parse_hash(proof["leaf_hash"].as_str().unwrap()).unwrap();
        assert_eq!(leaf, leaves[position as usize - 1]);
        verify_inclusion(
            position as u64 - 1,
            head as u64,
            &leaf,
            &hashes,
            &checkpoint.root,
        )
        .unwrap();
        assert_eq!(
            verify_inclusion(
                position as u64 - 1,
                head as u64,
                &leaf_hash(b"forged"),
                &hashes,
                &checkpoint.root
            ),
            Err(ProofError::RootMismatch)
        );
    }
    let answer = query
        .get(
            &format!("/v1/audit/proof/consistency?from=1&to={head}"),
            &auditor,
        )
        .await;
    let hashes = proof_hashes(&answer.json());
    verify_consistency(1, head as u64, &leaves[0], &checkpoint.root, &hashes).unwrap();
    // Sizes beyond the newest checkpoint, positions out of range, and
    // another study's events for a limited auditor.
    query
        .get(
            &format!(
                "/v1/audit/proof/inclusion?position=1&tree_size={}",
                head + 1
            ),
            &auditor,
        )
        .await
        .problem(404);
    query
        .get("/v1/audit/proof/inclusion?position=0&tree_size=1", &auditor)
        .await
        .problem(400);
    query
        .get("/v1/audit/proof/inclusion?position=3&tree_size=2", &auditor)
        .await
        .problem(400);
    query
        .get("/v1/audit/proof/consistency?from=2&to=1", &auditor)
        .await
        .problem(400);
    let limited = tests::token_for_studies("audra", &[Role::Auditor], &[study]);
    query
        .get(
            &format!("/v1/audit/proof/inclusion?position={other_position}&tree_size={head}"),
            &limited,
        )
        .await
        .problem(404);
    assert_eq!(
        query
            .get(
                &format!("/v1/audit/proof/inclusion?position=1&tree_size={head}"),
                &limited
            )
            .await
            .status,
        200
    );
    query
        .get("/v1/audit/checkpoint", &writer)
        .await
        .problem(403);
    signing.api.shutdown().await;
}

#[tokio::test]
async fn a_receipt_proves_an_observations_history_offline() {
    use shared::auth::Role;
    use shared::checkpoint::{Checkpoint, NoteVerifier};
    use shared::envelope::StoredEvent;

    let signing = Env::signing(11).await;
    let api = &signing.api;
    let trusted = signing.verifier();
    let alice = tests::token("alice", &[Role::Writer]);
    let bob = tests::token("bob", &[Role::Writer]);
    let penguins = &tests::penguins()[0];
    let study = api
        .post("/v1/studies", &alice, &penguins.register_body())
        .await
        .id();
    let subject = api
        .post(
            &format!("/v1/studies/{study}/subjects"),
            &alice,
            &json!({"label": "N1A1"}),
        )
        .await
        .id();
    let observation = api
        .post(
            &format!("/v1/subjects/{subject}/observations"),
            &alice,
            &penguins.subjects[0].observations[0].record_body(),
        )
        .await
        .id();
    let corrected = api
        .post(
            &format!("/v1/observations/{observation}/corrections"),
            &bob,
            &json!({"values": {"body_mass_g": 3800}, "reason": "scale recalibrated"}),
        )
        .await;
    assert_eq!(corrected.status, 200);
    let head = corrected.json()["position"].as_i64().unwrap();
    let query = signing.query().await;
    let auditor = tests::token("audrey", &[Role::Auditor]);
    let path = format!("/v1/audit/observations/{observation}/receipt");
    let receipt = tests::wait_until(
        std::time::Duration::from_secs(20),
        "a receipt at the head",
        || async {
            let answer = query.get(&path, &auditor).await;
            let receipt = answer.json();
            (receipt["events"].as_array()?.len() == 2).then_some(receipt)
        },
    )
    .await;
    // Offline, with nothing but the receipt and a key trusted beforehand.
    assert_eq!(receipt["log_key"], trusted.to_text());
    let checkpoint = Checkpoint::verify(
        receipt["checkpoint"].as_str().unwrap(),
        &NoteVerifier::parse(&trusted.to_text()).unwrap(),
        "research-records.test/log",
    )
    .unwrap();
    assert!(checkpoint.size as i64 >= head);
    let events = receipt["events"].as_array().unwrap();
    let proofs = receipt["proofs"].as_array().unwrap();
    assert_eq!(events.len(), proofs.len());
    for (event, proof) in events.iter().zip(proofs) {
        let stored = StoredEvent::from_cloud_event(&event.to_string()).unwrap();
        assert_eq!(stored.compute_hash(), stored.hash, "the event's own hash");
        assert_eq!(stored.aggregate_id, observation);
        let leaf = leaf_hash(&stored.hash);
        assert_eq!(proof["leaf_hash"], hex::encode(leaf));
        let hashes = proof_hashes(proof);
        verify_inclusion(
            stored.position as u64 - 1,
            checkpoint.size,
            &leaf,
            &hashes,
            &checkpoint.root,
        )
        .unwrap();
    }
    // Another study's observation is, to a limited auditor, unknown.
    let limited = tests::token_for_studies("audra", &[Role::Auditor], &[Uuid::now_v7()]);
    let hidden = query.get(&path, &limited).await.problem(404);
    let missing = query
        .get(
            &format!("/v1/audit/observations/{}/receipt", Uuid::now_v7()),
            &limited,
        )
        .await
        .problem(404);
    assert_eq!(hidden["title"], missing["title"]);
    signing.api.shutdown().await;
}
