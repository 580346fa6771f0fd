//! The log as a ledger an auditor checks without trusting the database:
//! tiles for standard tlog clients, `research-verify` with a key and a
//! remembered state against the rewrite attack (every event, the chain and
//! the tree recomputed by the database's owner), a checkpoint of another
//! key, a truncated log and a forked one; receipts verified offline, also
//! by the independent Python verifier; and a tree that survives a kill -9
//! of the process extending it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use shared::auth::Role;
use shared::checkpoint::{Checkpoint, NoteSigner};
use shared::envelope::StoredEvent;
use shared::merkle::{leaf_hash, root, Hash, InMemory, Tiles, Wanted, TILE_WIDTH};
use shared::store::EventStore;
use sqlx::PgPool;
use tests::{wait_until, DbRole};
use uuid::Uuid;

use crate::audit::tamper;
use crate::env::{Env, ORIGIN};
use crate::merkle::{penguin_log, rebuild};
use crate::publishing::binary;

/// Runs a program; answers (exit code, stdout).
fn run(program: &Path, args: &[&str], stdin: Option<&[u8]>) -> (i32, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            input.write_all(bytes).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{} {args:?}: {:?}\n{stdout}", program.display(), out.status);
    (out.status.code().unwrap_or(-1), stdout)
}

/// `research-verify` over the database with the trusted key.
fn verify_log(env: &Env, key: &str, extra: &[&str]) -> (i32, String) {
    let url = env.db.url_as(DbRole::Query);
    let mut args = vec!["--quiet", "--database-url", &url, "--key", key];
    args.extend_from_slice(extra);
    run(&binary("research-verify"), &args, None)
}

/// `research-verify receipt` and the Python verifier on one receipt: both
/// answer alike; answers the exit code and the Rust verifier's output.
fn verify_receipt(receipt: &[u8], key: &str) -> (i32, String) {
    let (code, out) = run(
        &binary("research-verify"),
        &["receipt", "-", "--key", key],
        Some(receipt),
    );
    let script = tests::repo_root().join("docs/verify_receipt.py");
    let script = script.to_str().expect("a UTF-8 path");
    let (py_code, py_out) = run(Path::new("python3"), &[script, key], Some(receipt));
    assert_eq!(
        (code == 0),
        (py_code == 0),
        "the verifiers disagree:\n{out}\n{py_out}"
    );
    (code, out)
}

/// A penguin study's subject.
async fn subject(env: &Env) -> Uuid {
    let study = env.study().await;
    env.subject(study).await
}

/// `n` observations of `subject` (real penguin rows), the first corrected;
/// answers the observations.
async fn records(env: &Env, subject: Uuid, n: usize) -> Vec<Uuid> {
    let mut observations = Vec::new();
    for _ in 0..n {
        observations.push(env.observation(subject).await);
    }
    let path = format!("/v1/observations/{}/corrections", observations[0]);
    let correction = json!({"values": {"body_mass_g": 3800}, "reason": "scale recalibrated"});
    assert_eq!(
        env.api.post(&path, &env.writer2, &correction).await.status,
        200
    );
    observations
}

async fn head(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until a checkpoint covers the whole log; answers its note.
async fn checkpointed(env: &Env) -> String {
    let pool = env.db.pool().await;
    let head = head(&pool).await;
    wait_until(
        Duration::from_secs(20),
        "a checkpoint of the whole log",
        || {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, String>(
                    "SELECT note FROM checkpoints WHERE size >= $1 ORDER BY size DESC LIMIT 1",
                )
                .bind(head)
                .fetch_optional(&pool)
                .await
                .ok()
                .flatten()
            }
        },
    )
    .await
}

fn temp(env: &Env, name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}-{name}", env.db.name))
}

fn remove(paths: &[PathBuf]) {
    for path in paths {
        let _ = std::fs::remove_file(path);
        let mut leaves = path.as_os_str().to_owned();
        leaves.push(".leaves");
        let _ = std::fs::remove_file(leaves);
    }
}

/// What the owner of the database can do: change the data of the event at
/// `position`, recompute the hash chain from there on, rebuild the Merkle
/// tree from the changed events. Only the signed checkpoints stay as they
/// were (no key signs for the attacker).
async fn rewrite(pool: &PgPool, position: i64, from: &str, to: &str) {
    let mut events = EventStore::read_after(pool, position - 1, 1_000_000)
        .await
        .unwrap();
    assert!(events[0].data.contains(from), "{}", events[0].data);
    events[0].data = events[0].data.replacen(from, to, 1);
    let mut prev = events[0].prevhash;
    let mut sql = String::new();
    for e in &mut events {
        e.prevhash = prev;
        e.hash = e.compute_hash();
        prev = e.hash;
        sql.push_str(&format!(
            "UPDATE events SET data = '{}'::json, prevhash = '\\x{}', hash = '\\x{}' WHERE position = {};\n",
            e.data.replace('\'', "''"),
            hex::encode(e.prevhash),
            hex::encode(e.hash),
            e.position
        ));
    }
    tamper(pool, &sql).await;
    rebuild(pool).await;
}

#[tokio::test]
async fn a_verifier_holding_an_earlier_checkpoint_catches_a_rewritten_past() {
    let env = Env::signing(21).await;
    let key = env.verifier().to_text();
    let subject = subject(&env).await;
    let observations = records(&env, subject, 6).await;
    let owner = env.db.pool().await;
    checkpointed(&env).await;

    // The auditor's first run: it verifies and remembers.
    let state = temp(&env, "state");
    let (code, out) = verify_log(&env, &key, &["--state", state.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("remembered in"), "{out}");

    // A receipt taken now verifies, in Rust and in Python.
    let query = env.query().await;
    let auditor = tests::token("audrey", &[Role::Auditor]);
    let receipt_path = format!("/v1/audit/observations/{}/receipt", observations[0]);
    let before = query.get(&receipt_path, &auditor).await;
    assert_eq!(before.status, 200);
    let (code, out) = verify_receipt(&before.bytes, &key);
    assert_eq!(code, 0, "{out}");

    // The log grows and is checkpointed again.
    records(&env, subject, 2).await;
    checkpointed(&env).await;

    // The rewrite: the first observation's flipper length, at position 3.
    let changed: i64 = sqlx::query_scalar(
        "SELECT position FROM events WHERE aggregate_id = $1 AND stream_version = 1",
    )
    .bind(observations[0])
    .fetch_one(&owner)
    .await
    .unwrap();
    rewrite(
        &owner,
        changed,
        "\"flipper_length_mm\":181",
        "\"flipper_length_mm\":191",
    )
    .await;

    // The service's own verification is fooled: the chain is consistent.
    let verified = query.get("/v1/audit/verify", &auditor).await.json();
    assert_eq!(verified["verified"], true, "{verified}");

    // The remembering verifier is not, and names the changed position;
    // its state stays as it was, nothing written aside left behind.
    let remembered = std::fs::read(&state).unwrap();
    let (code, out) = verify_log(&env, &key, &["--state", state.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("does not continue")
            && out.contains(&format!("FAILED at position {changed}:")),
        "{out}"
    );
    assert_eq!(std::fs::read(&state).unwrap(), remembered);
    for aside in [".new", ".leaves.new"] {
        let mut path = state.as_os_str().to_owned();
        path.push(aside);
        assert!(!PathBuf::from(&path).exists(), "{path:?} was left behind");
    }
    // Without a state, the stored signed checkpoints still catch it.
    let (code, out) = verify_log(&env, &key, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("do not have the root of the signed checkpoint"),
        "{out}"
    );

    // A receipt of the changed observation, served now, fails offline at
    // that position; the one taken before still verifies.
    let after = query.get(&receipt_path, &auditor).await;
    assert_eq!(after.status, 200);
    let (code, out) = verify_receipt(&after.bytes, &key);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("position {changed}:")), "{out}");
    assert_eq!(verify_receipt(&before.bytes, &key).0, 0);

    // The key never vouches for the rewritten past: the checkpointer
    // refuses to sign the grown tree and says so on /readyz.
    records(&env, subject, 1).await;
    let refused = wait_until(
        Duration::from_secs(20),
        "the checkpointer to refuse the rewritten tree",
        || async {
            let r = env.api.http.get(env.api.url("/readyz")).send().await.ok()?;
            let body: Value = r.json().await.ok()?;
            (body["checkpointer"]["ok"] == false).then_some(body)
        },
    )
    .await;
    assert!(
        refused["checkpointer"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("refusing to sign")),
        "{refused}"
    );
    remove(&[state]);
    env.api.shutdown().await;
}

#[tokio::test]
async fn another_key_a_truncated_log_and_a_fork_are_each_caught() {
    let env = Env::signing(22).await;
    let key = env.verifier().to_text();
    records(&env, subject(&env).await, 3).await;
    let note = checkpointed(&env).await;
    let owner = env.db.pool().await;
    assert_eq!(verify_log(&env, &key, &[]).0, 0);

    // Another key: the stored checkpoints, and a note given, do not verify.
    let other = NoteSigner::new(ORIGIN, [99; 32]).unwrap();
    let (code, out) = verify_log(&env, &other.verifier().to_text(), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is not signed by the key"), "{out}");
    let checkpoint = Checkpoint::from_text(note.split_once("\n\n").unwrap().0).unwrap();
    let forged = temp(&env, "forged");
    std::fs::write(&forged, checkpoint.sign(&other)).unwrap();
    let (code, out) = verify_log(&env, &key, &["--checkpoint", forged.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not verify with the key"), "{out}");

    // A verifier remembers the checkpoint; then the newest events go.
    let state = temp(&env, "state");
    let (code, out) = verify_log(&env, &key, &["--state", state.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let size = checkpoint.size as i64;
    tamper(
        &owner,
        &format!("DELETE FROM events WHERE position > {}", size - 2),
    )
    .await;
    let (code, out) = verify_log(&env, &key, &["--state", state.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("the log ends at position {}", size - 2))
            && out.contains("events were removed"),
        "{out}"
    );

    // A fork: the key signed two trees of one size (a signer that was
    // made to lie, or two logs under one key).
    let signer = env.signer.as_ref().unwrap();
    let mut fork = checkpoint.clone();
    fork.root = [7; 32];
    let forked = temp(&env, "fork");
    std::fs::write(&forked, fork.sign(signer)).unwrap();
    let (code, out) = verify_log(
        &env,
        &key,
        &[
            "--state",
            state.to_str().unwrap(),
            "--checkpoint",
            forked.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("the log forked"), "{out}");
    sqlx::query("INSERT INTO checkpoints (size, root, note, signed_at) VALUES ($1, $2, $3, now())")
        .bind(size)
        .bind(fork.root.as_slice())
        .bind(fork.sign(signer))
        .execute(&owner)
        .await
        .unwrap();
    let (code, out) = verify_log(&env, &key, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("the log forked"), "{out}");
    remove(&[state, forged, forked]);
    env.api.shutdown().await;
}

#[tokio::test]
async fn tiles_are_served_in_the_tlog_tiles_layout_and_give_the_signed_root() {
    let env = Env::signing(23).await;
    // Past two full tiles of leaves: the three penguin seasons.
    let studies = penguin_log(&env).await;
    let note = checkpointed(&env).await;
    let checkpoint = Checkpoint::verify(&note, &env.verifier(), ORIGIN).unwrap();
    assert!(checkpoint.size > TILE_WIDTH, "{}", checkpoint.size);
    let query = env.query().await;
    let auditor = tests::token("audrey", &[Role::Auditor]);
    let served = query.get("/v1/audit/log/checkpoint", &auditor).await;
    let served = String::from_utf8(served.bytes).unwrap();
    assert!(
        Checkpoint::verify(&served, &env.verifier(), ORIGIN)
            .unwrap()
            .size
            >= checkpoint.size
    );

    // A client fetches the tiles its proofs need at the checkpoint's size,
    // partial ones at the width that size gives them.
    let tile_url = |level: u8, n: u64| {
        let width = ((checkpoint.size >> (8 * u32::from(level))) - n * TILE_WIDTH).min(TILE_WIDTH);
        let mut elements = vec![format!("{:03}", n % 1000)];
        let mut rest = n / 1000;
        while rest > 0 {
            elements.push(format!("x{:03}", rest % 1000));
            rest /= 1000;
        }
        elements.reverse();
        let partial = if width < TILE_WIDTH {
            format!(".p/{width}")
        } else {
            String::new()
        };
        (
            format!("/v1/audit/log/tile/{level}/{}{partial}", elements.join("/")),
            width,
        )
    };
    let mut wanted = Wanted::default();
    let _ = root(&mut wanted, checkpoint.size);
    let _ = shared::merkle::inclusion_proof(&mut wanted, 5, checkpoint.size);
    let mut tiles = Tiles::default();
    for (level, n) in wanted.0 {
        let (url, width) = tile_url(level, n);
        let answer = query.get(&url, &auditor).await;
        assert_eq!(answer.status, 200, "{url}");
        assert_eq!(answer.bytes.len() as u64, width * 32, "{url}");
        let hashes: Vec<Hash> = answer
            .bytes
            .chunks_exact(32)
            .map(|c| c.try_into().unwrap())
            .collect();
        tiles.0.insert((level, n), hashes);
    }
    assert_eq!(root(&mut tiles, checkpoint.size).unwrap(), checkpoint.root);
    let owner = env.db.pool().await;
    let event_hashes: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT hash FROM events ORDER BY position")
            .fetch_all(&owner)
            .await
            .unwrap();
    let proof = shared::merkle::inclusion_proof(&mut tiles, 5, checkpoint.size).unwrap();
    shared::merkle::verify_inclusion(
        5,
        checkpoint.size,
        &leaf_hash(&event_hashes[5]),
        &proof,
        &checkpoint.root,
    )
    .unwrap();

    // The first entry bundle: each event's hash after its two-byte length.
    let bundle = query.get("/v1/audit/log/tile/entries/000", &auditor).await;
    assert_eq!(bundle.status, 200);
    let entries: Vec<&[u8]> = bundle.bytes.chunks_exact(34).collect();
    assert_eq!(entries.len() as u64, TILE_WIDTH);
    for (entry, hash) in entries.iter().zip(&event_hashes) {
        assert_eq!(&entry[..2], &[0, 32]);
        assert_eq!(&entry[2..], hash.as_slice());
    }
    // A tile the tree does not hold yet, a path that is not a tile, a
    // reader, and a limited auditor asking for entries.
    assert_eq!(
        query
            .get("/v1/audit/log/tile/0/x001/000", &auditor)
            .await
            .status,
        404
    );
    query
        .get("/v1/audit/log/tile/0/1", &auditor)
        .await
        .problem(404);
    let reader = tests::token("rex", &[Role::Reader]);
    query
        .get("/v1/audit/log/tile/0/000", &reader)
        .await
        .problem(403);
    let limited = tests::token_for_studies("audra", &[Role::Auditor], &studies[..1]);
    assert_eq!(
        query.get("/v1/audit/log/tile/0/000", &limited).await.status,
        200
    );
    query
        .get("/v1/audit/log/tile/entries/000", &limited)
        .await
        .problem(403);
    env.api.shutdown().await;
}

#[tokio::test]
async fn a_tree_extended_by_a_killed_command_api_equals_a_rebuild_after_restart() {
    use tokio::process::Command;

    // A log written without the tree, then a command API that builds the
    // tree two events a transaction, killed -9 half-way.
    let env = Env::start().await;
    records(&env, subject(&env).await, 150).await;
    let owner = env.db.pool().await;
    let head = head(&owner).await as u64;
    let signer = NoteSigner::new(ORIGIN, [24; 32]).unwrap();
    let spawn = || {
        Command::new(binary("command-api"))
            .env(
                "COMMAND_API_ADDR",
                format!("127.0.0.1:{}", tests::free_port()),
            )
            .env("COMMAND_API_DATABASE_URL", env.db.url_as(DbRole::Command))
            .env("NATS_URL", tests::nats_url())
            .env("NATS_STREAM", &env.stream.name)
            .env("NATS_SUBJECT_PREFIX", &env.stream.prefix)
            .env("JWT_SECRET", tests::SECRET)
            .env("LOG_SIGNING_KEY", signer.to_private_text())
            .env("LOG_ORIGIN", ORIGIN)
            .env("LOG_TREE_BATCH", "2")
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .expect("starting the command-api binary")
    };
    let tree_size = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT size FROM merkle_tree")
            .fetch_one(&pool)
            .await
            .unwrap() as u64
    };
    let mut first = spawn();
    wait_until(
        Duration::from_secs(30),
        "the tree to be a quarter built",
        || {
            let pool = owner.clone();
            async move { (tree_size(pool).await > head / 4).then_some(()) }
        },
    )
    .await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let at_kill = tree_size(owner.clone()).await;
    assert!(
        at_kill < head,
        "killed before the end ({at_kill} of {head})"
    );

    let mut second = spawn();
    wait_until(
        Duration::from_secs(60),
        "the tree to hold the whole log",
        || {
            let pool = owner.clone();
            async move { (tree_size(pool).await >= head).then_some(()) }
        },
    )
    .await;
    second.start_kill().unwrap();
    second.wait().await.unwrap();

    // The tiles equal a rebuild from the events alone.
    let tiles = |pool: PgPool| async move {
        sqlx::query_as::<_, (i16, i64, Vec<u8>)>(
            "SELECT level, n, hashes FROM merkle_tiles ORDER BY level, n",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let built = tiles(owner.clone()).await;
    assert_eq!(rebuild(&owner).await, head);
    assert_eq!(tiles(owner.clone()).await, built);
    // And its root is the tree of the events' hashes.
    let events = EventStore::read_after(&owner, 0, 1_000_000).await.unwrap();
    let leaves: Vec<Hash> = events
        .iter()
        .map(|e: &StoredEvent| leaf_hash(&e.hash))
        .collect();
    let mut conn = owner.acquire().await.unwrap();
    assert_eq!(
        shared::merkle_store::root_at(&mut conn, head)
            .await
            .unwrap(),
        root(&mut InMemory::new(&leaves), head).unwrap()
    );
    env.api.shutdown().await;
}
