//! The fixture most tests start from: a database, a stream, a command API,
//! tokens for each role, and helpers that register real penguin records.

use serde_json::{json, Value};
use shared::auth::Role;
use shared::checkpoint::NoteSigner;
use tests::{command_config, token, Answer, CommandApi, TestDb, TestStream};
use uuid::Uuid;

pub struct Env {
    pub db: TestDb,
    pub stream: TestStream,
    pub api: CommandApi,
    pub writer: String,
    pub writer2: String,
    pub reviewer: String,
    pub reader: String,
    /// The key that signs checkpoints, when the command API is given one.
    pub signer: Option<NoteSigner>,
}

/// The origin of the test logs' checkpoints.
pub const ORIGIN: &str = "research-records.test/log";

impl Env {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// A command API that also keeps the Merkle tree and signs checkpoints
    /// with a key made from `seed`.
    pub async fn signing(seed: u8) -> Self {
        Self::start_with(Some(NoteSigner::new(ORIGIN, [seed; 32]).unwrap())).await
    }

    async fn start_with(signer: Option<NoteSigner>) -> Self {
        let db = TestDb::create().await;
        let stream = TestStream::new();
        let mut config = command_config(&db, &stream);
        if let Some(signer) = &signer {
            config.log_signing_key = signer.to_private_text();
        }
        let api = CommandApi::spawn(&config).await;
        Self {
            signer,
            db,
            stream,
            api,
            writer: token("alice", &[Role::Writer]),
            writer2: token("bob", &[Role::Writer]),
            reviewer: token("rita", &[Role::Reviewer]),
            reader: token("rex", &[Role::Reader]),
        }
    }

    /// The checkpoints' verifier key.
    pub fn verifier(&self) -> shared::checkpoint::NoteVerifier {
        self.signer.as_ref().expect("a signing Env").verifier()
    }

    /// A query API on this database (read as the query role), serving the
    /// verifier key of the checkpoints when they are signed.
    pub async fn query(&self) -> tests::QueryApi {
        let mut config = tests::query_config(&self.db.url_as(tests::DbRole::Query), "", "");
        if let Some(signer) = &self.signer {
            config.log_verifier_key = signer.verifier().to_text();
        }
        tests::QueryApi::spawn(&config).await
    }

    /// Registers the first penguin season; answers its id.
    pub async fn study(&self) -> Uuid {
        self.register(&tests::penguins()[0]).await
    }

    /// Registers `study` (without its subjects); answers its id.
    pub async fn register(&self, study: &benches::datasets::StudyData) -> Uuid {
        let answer = self
            .api
            .post("/v1/studies", &self.writer, &study.register_body())
            .await;
        assert_eq!(
            answer.status,
            201,
            "{}",
            String::from_utf8_lossy(&answer.bytes)
        );
        answer.id()
    }

    pub async fn subject(&self, study: Uuid) -> Uuid {
        let subject = &tests::penguins()[0].subjects[0];
        let body = json!({"label": subject.label, "attributes": subject.attributes});
        let answer = self
            .api
            .post(
                &format!("/v1/studies/{study}/subjects"),
                &self.writer,
                &body,
            )
            .await;
        assert_eq!(
            answer.status,
            201,
            "{}",
            String::from_utf8_lossy(&answer.bytes)
        );
        answer.id()
    }

    /// Records the first real penguin row for `subject`, as alice.
    pub async fn observation(&self, subject: Uuid) -> Uuid {
        let answer = self.record(subject, &first_row()).await;
        assert_eq!(
            answer.status,
            201,
            "{}",
            String::from_utf8_lossy(&answer.bytes)
        );
        answer.id()
    }

    pub async fn record(&self, subject: Uuid, body: &Value) -> Answer {
        self.api
            .post(
                &format!("/v1/subjects/{subject}/observations"),
                &self.writer,
                body,
            )
            .await
    }

    /// A study, a subject and an observation of real values.
    pub async fn recorded(&self) -> (Uuid, Uuid, Uuid) {
        let study = self.study().await;
        let subject = self.subject(study).await;
        let observation = self.observation(subject).await;
        (study, subject, observation)
    }
}

/// The body recording the first penguin row (N1A1, 2007-11-11).
pub fn first_row() -> Value {
    tests::penguins()[0].subjects[0].observations[0].record_body()
}
