//! The read tables (in a schema: `read_model` for the live ones, another
//! for a rebuild or a verifying replay): loading the views a batch of events touches, resolving
//! the projection's needs against stored and in-memory observations, and
//! storing views, documents and the checkpoint in the batch's transaction.

use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::Value;
use shared::domain::DomainEvent;
use shared::envelope::StoredEvent;
use shared::projection::{Latest, Need, ObservationView, Owner, StudyView, SubjectView, Views};
use sqlx::PgConnection;
use uuid::Uuid;

/// The checkpoint of the read tables in `schema`: the position of the last
/// event they reflect.
pub async fn checkpoint<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    schema: &str,
) -> anyhow::Result<i64> {
    sqlx::query_scalar(&format!("SELECT position FROM {schema}.checkpoint"))
        .fetch_one(executor)
        .await
        .with_context(|| format!("reading the checkpoint of {schema}"))
}

/// The ids of the views `events` touch, as far as the events name them: an
/// observation event's subject is known from the event only when it
/// records the observation (otherwise from the stored observation).
#[derive(Debug, Default)]
pub struct Touched {
    pub observations: HashSet<Uuid>,
    pub subjects: HashSet<Uuid>,
    pub studies: HashSet<Uuid>,
}

impl Touched {
    pub fn by(events: &[StoredEvent]) -> Self {
        let mut touched = Self::default();
        for e in events {
            touched.studies.insert(e.study_id);
            match e.aggregate_type.as_str() {
                "observation" => {
                    touched.observations.insert(e.aggregate_id);
                    if let Ok(DomainEvent::ObservationRecorded(r)) = e.domain_event() {
                        touched.subjects.insert(r.subject_id);
                    }
                }
                "subject" => {
                    touched.subjects.insert(e.aggregate_id);
                }
                _ => {}
            }
        }
        touched
    }
}

/// The checkpoint and every view `touched` names, in one statement: the
/// observations, the subjects named or those of the observations, the
/// studies; but for the views in `held` (taken from a [`ViewCache`]),
/// which are not read.
pub async fn load(
    conn: &mut PgConnection,
    schema: &str,
    touched: &Touched,
    held: Views,
) -> anyhow::Result<(i64, Views)> {
    let mut views = held;
    let observation_ids: Vec<Uuid> = touched.observations.iter().copied().collect();
    let held_subjects: Vec<Uuid> = views.subjects.keys().copied().collect();
    let subject_ids = not_held(&touched.subjects, &views.subjects);
    let study_ids = not_held(&touched.studies, &views.studies);
    type Row = (
        i16,
        Option<Vec<u8>>,
        Option<sqlx::types::Json<Vec<String>>>,
        Option<i64>,
    );
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT 3::int2, NULL::bytea, NULL::json, position FROM {schema}.checkpoint \
         UNION ALL \
         SELECT 0::int2, body, authors, NULL FROM {schema}.observations WHERE id = ANY($1) \
         UNION ALL \
         SELECT 1::int2, state, NULL, NULL FROM {schema}.subjects \
          WHERE id = ANY($2) \
             OR (id IN (SELECT subject_id FROM {schema}.observations WHERE id = ANY($1)) \
                 AND NOT (id = ANY($4))) \
         UNION ALL \
         SELECT 2::int2, state, NULL, NULL FROM {schema}.studies WHERE id = ANY($3)"
    ))
    .bind(&observation_ids)
    .bind(&subject_ids)
    .bind(&study_ids)
    .bind(&held_subjects)
    .fetch_all(&mut *conn)
    .await
    .context("loading the views")?;
    let mut checkpoint = None;
    for (kind, bytes, authors, position) in rows {
        match (kind, bytes, authors, position) {
            (3, _, _, Some(position)) => checkpoint = Some(position),
            (0, Some(bytes), Some(authors), _) => {
                let view = ObservationView::from_document(&bytes, authors.0)
                    .context("decoding an observation document")?;
                views.observations.insert(view.state.id, view);
            }
            (1, Some(bytes), _, _) => {
                let view: SubjectView =
                    serde_json::from_slice(&bytes).context("decoding a subject view")?;
                views.subjects.insert(view.state.id, view);
            }
            (2, Some(bytes), _, _) => {
                let view: StudyView =
                    serde_json::from_slice(&bytes).context("decoding a study view")?;
                views.studies.insert(view.state.id, view);
            }
            _ => anyhow::bail!("a read-table row of an unexpected shape"),
        }
    }
    let checkpoint =
        checkpoint.with_context(|| format!("{schema}.checkpoint holds no position"))?;
    Ok((checkpoint, views))
}

/// The study and subject views of one schema's read tables as they stood at
/// a checkpoint, kept between batches by the schema's writer so that a
/// batch need not read and decode them again (a study's view, with its
/// statistics, is the largest row a batch reads). The read models are a
/// function of the log, so views held at checkpoint C are the stored ones
/// whenever the stored checkpoint is still C: a batch takes what it touches
/// from here, and if the checkpoint it then reads is another (someone else
/// wrote, or a commit's outcome was lost), it drops everything and reads
/// the views from the tables. Only what a committed batch stored is kept,
/// at that batch's checkpoint.
#[derive(Debug, Default)]
pub struct ViewCache {
    /// Where the views are current; `None` when nothing is held.
    checkpoint: Option<i64>,
    studies: HashMap<Uuid, StudyView>,
    subjects: HashMap<Uuid, SubjectView>,
}

/// Most views a [`ViewCache`] holds (studies and subjects together): a
/// subject's view is a few KB, so this is some tens of MB at most.
pub const VIEW_CACHE_MAX: usize = 8_192;

impl ViewCache {
    /// Takes out the views held of `touched`, current at `checkpoint`
    /// if the stored checkpoint is still that.
    pub fn take(&mut self, touched: &Touched) -> (Option<i64>, Views) {
        let views = Views {
            studies: take_held(&touched.studies, &mut self.studies),
            subjects: take_held(&touched.subjects, &mut self.subjects),
            observations: HashMap::new(),
        };
        let held = views.studies.len() + views.subjects.len();
        metrics::counter!("projector_view_cache_hits_total").increment(held as u64);
        metrics::counter!("projector_view_cache_misses_total").increment(
            (touched.studies.len() + touched.subjects.len()).saturating_sub(held) as u64,
        );
        (self.checkpoint, views)
    }

    /// Forgets every view (the stored checkpoint is not the one they were
    /// current at).
    pub fn clear(&mut self) {
        self.checkpoint = None;
        self.studies.clear();
        self.subjects.clear();
    }

    /// Keeps the study and subject views a batch stored, which committed at
    /// `checkpoint`; the other views held stay current (the batch did not
    /// change them).
    pub fn keep(&mut self, checkpoint: i64, views: Views) {
        if self.studies.len() + self.subjects.len() + views.studies.len() + views.subjects.len()
            > VIEW_CACHE_MAX
        {
            // Full: start again from the views in use now.
            self.studies.clear();
            self.subjects.clear();
        }
        self.checkpoint = Some(checkpoint);
        self.studies.extend(views.studies);
        self.subjects.extend(views.subjects);
        metrics::gauge!("projector_view_cache_views")
            .set((self.studies.len() + self.subjects.len()) as f64);
    }
}

/// The ids of `ids` that `held` has no view of.
fn not_held<V>(ids: &HashSet<Uuid>, held: &HashMap<Uuid, V>) -> Vec<Uuid> {
    ids.iter()
        .filter(|id| !held.contains_key(id))
        .copied()
        .collect()
}

/// Takes the views of `ids` out of `held`.
fn take_held<V>(ids: &HashSet<Uuid>, held: &mut HashMap<Uuid, V>) -> HashMap<Uuid, V> {
    ids.iter()
        .filter_map(|id| held.remove(id).map(|v| (*id, v)))
        .collect()
}

/// Resolves needs from the stored observations, overridden by the ones this
/// batch holds in memory (which are newer).
pub async fn resolve(
    conn: &mut PgConnection,
    schema: &str,
    views: &mut Views,
    needs: Vec<Need>,
) -> anyhow::Result<()> {
    let needs: BTreeSet<Need> = needs.into_iter().collect();
    let in_memory: Vec<Uuid> = views.observations.keys().copied().collect();
    for need in needs {
        match &need {
            Need::StudySubjects { study_id, position } => {
                load_subjects(conn, schema, views, *study_id, *position).await?;
            }
            Need::Latest {
                subject_id,
                variable,
            } => {
                let stored = stored_latest(conn, schema, *subject_id, variable, &in_memory).await?;
                let latest = stored
                    .into_iter()
                    .chain(views.latest_held(*subject_id, variable))
                    .max_by_key(Latest::order);
                views.set_latest(*subject_id, variable, latest);
            }
            Need::StudyExtremes { .. } | Need::SubjectExtremes { .. } => {
                let Some((owner, variable)) = need.extremes() else {
                    continue;
                };
                let mut values = stored_values(conn, schema, owner, variable, &in_memory).await?;
                values.extend(views.live_values(owner, variable));
                views.set_extremes(owner, variable, &values);
            }
        }
    }
    Ok(())
}

/// The values of a stored observation, read from its document (only when a
/// minimum, maximum or latest value must be found again).
const DOCUMENT_VALUES: &str = "(convert_from(body, 'UTF8')::json -> 'values')";

/// The values of `variable` in the stored live observations of `owner`,
/// but for those held in memory.
async fn stored_values(
    conn: &mut PgConnection,
    schema: &str,
    owner: Owner,
    variable: &str,
    in_memory: &[Uuid],
) -> anyhow::Result<Vec<Value>> {
    let rows: Vec<(Value,)> = sqlx::query_as(&format!(
        "SELECT v FROM (SELECT {DOCUMENT_VALUES} -> $2 AS v FROM {schema}.observations \
                        WHERE {} = $1 AND live AND NOT (id = ANY($3))) AS o \
         WHERE v IS NOT NULL",
        owner.column()
    ))
    .bind(owner.id())
    .bind(variable)
    .bind(in_memory)
    .fetch_all(&mut *conn)
    .await
    .context("reading current values")?;
    Ok(rows.into_iter().map(|(v,)| v).collect())
}

/// The latest non-null stored value of `variable` of a subject, but for
/// observations held in memory.
async fn stored_latest(
    conn: &mut PgConnection,
    schema: &str,
    subject_id: Uuid,
    variable: &str,
    in_memory: &[Uuid],
) -> anyhow::Result<Option<Latest>> {
    let stored: Option<(Uuid, DateTime<Utc>, Value)> = sqlx::query_as(&format!(
        "SELECT id, observed_at, v FROM (SELECT id, observed_at, {DOCUMENT_VALUES} -> $2 AS v \
                                         FROM {schema}.observations \
                                         WHERE subject_id = $1 AND live AND NOT (id = ANY($3))) AS o \
         WHERE json_typeof(v) <> 'null' \
         ORDER BY observed_at DESC, id DESC LIMIT 1"
    ))
    .bind(subject_id)
    .bind(variable)
    .bind(in_memory)
    .fetch_optional(&mut *conn)
    .await
    .context("finding a subject's latest value")?;
    Ok(stored.map(|(observation_id, observed_at, value)| Latest {
        value,
        observed_at,
        observation_id,
    }))
}

/// Loads the subjects of a study not held yet, giving them `position`.
async fn load_subjects(
    conn: &mut PgConnection,
    schema: &str,
    views: &mut Views,
    study_id: Uuid,
    position: i64,
) -> anyhow::Result<()> {
    let held: Vec<Uuid> = views.subjects.keys().copied().collect();
    let rows: Vec<(Vec<u8>,)> = sqlx::query_as(&format!(
        "SELECT state FROM {schema}.subjects WHERE study_id = $1 AND NOT (id = ANY($2))"
    ))
    .bind(study_id)
    .bind(&held)
    .fetch_all(&mut *conn)
    .await
    .context("loading a study's subjects")?;
    for (state,) in rows {
        let mut view: SubjectView =
            serde_json::from_slice(&state).context("decoding a subject view")?;
        view.position = position;
        views.subjects.insert(view.state.id, view);
    }
    Ok(())
}

/// A ready-to-send document and the position of the last event in it.
#[derive(Debug, Clone)]
pub struct Doc {
    pub kind: &'static str,
    pub id: Uuid,
    /// The study the document belongs to (its own id for a study).
    pub study_id: Uuid,
    /// For a study, its code (the query API looks studies up by code).
    pub code: Option<String>,
    pub position: i64,
    pub body: Vec<u8>,
}

/// Stores the views and their documents, and moves the checkpoint, in one
/// statement; answers the documents written.
pub async fn store(
    conn: &mut PgConnection,
    schema: &str,
    views: &Views,
    checkpoint: i64,
) -> anyhow::Result<Vec<Doc>> {
    let studies = study_rows(views)?;
    let subjects = subject_rows(views)?;
    let observations = observation_rows(views)?;
    sqlx::query(&format!(
        "WITH studies AS ( \
           INSERT INTO {schema}.studies (id, code, state, body, position) \
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::bytea[], $5::int8[]) \
           ON CONFLICT (id) DO UPDATE \
             SET state = EXCLUDED.state, body = EXCLUDED.body, position = EXCLUDED.position), \
         subjects AS ( \
           INSERT INTO {schema}.subjects (id, study_id, label, state, body, position) \
           SELECT * FROM unnest($6::uuid[], $7::uuid[], $8::text[], $9::bytea[], $10::bytea[], $11::int8[]) \
           ON CONFLICT (id) DO UPDATE \
             SET state = EXCLUDED.state, body = EXCLUDED.body, position = EXCLUDED.position), \
         observations AS ( \
           INSERT INTO {schema}.observations \
             (id, study_id, subject_id, observed_at, live, authors, body, position) \
           SELECT * FROM unnest($12::uuid[], $13::uuid[], $14::uuid[], $15::timestamptz[], \
                                $16::bool[], $17::text[]::json[], $18::bytea[], $19::int8[]) \
           ON CONFLICT (id) DO UPDATE SET live = EXCLUDED.live, \
             authors = EXCLUDED.authors, body = EXCLUDED.body, position = EXCLUDED.position) \
         UPDATE {schema}.checkpoint SET position = $20"
    ))
    .bind(column(&studies.docs, |d| d.id))
    .bind(&studies.codes)
    .bind(&studies.states)
    .bind(column(&studies.docs, |d| &d.body))
    .bind(column(&studies.docs, |d| d.position))
    .bind(column(&subjects.docs, |d| d.id))
    .bind(column(&subjects.docs, |d| d.study_id))
    .bind(&subjects.labels)
    .bind(&subjects.states)
    .bind(column(&subjects.docs, |d| &d.body))
    .bind(column(&subjects.docs, |d| d.position))
    .bind(&observations.ids)
    .bind(&observations.study_ids)
    .bind(&observations.subject_ids)
    .bind(&observations.observed_at)
    .bind(&observations.live)
    .bind(&observations.authors)
    .bind(&observations.bodies)
    .bind(&observations.positions)
    .bind(checkpoint)
    .execute(&mut *conn)
    .await
    .context("storing the views and the checkpoint")?;
    let mut docs = studies.docs;
    docs.extend(subjects.docs);
    docs.extend(observations.into_docs());
    Ok(docs)
}

/// The study rows of a batch: documents, codes and states.
struct StudyRows {
    docs: Vec<Doc>,
    codes: Vec<String>,
    states: Vec<Vec<u8>>,
}

fn study_rows(views: &Views) -> anyhow::Result<StudyRows> {
    let mut rows = StudyRows {
        docs: Vec::new(),
        codes: Vec::new(),
        states: Vec::new(),
    };
    for s in views.studies.values() {
        rows.states.push(serde_json::to_vec(s)?);
        rows.codes.push(s.state.code.as_str().to_owned());
        rows.docs.push(Doc {
            kind: "study",
            id: s.state.id,
            study_id: s.state.id,
            code: Some(s.state.code.as_str().to_owned()),
            position: s.position,
            body: s.document().to_string().into_bytes(),
        });
    }
    Ok(rows)
}

/// The subject rows of a batch: documents, sort labels and states.
struct SubjectRows {
    docs: Vec<Doc>,
    labels: Vec<String>,
    states: Vec<Vec<u8>>,
}

fn subject_rows(views: &Views) -> anyhow::Result<SubjectRows> {
    let mut rows = SubjectRows {
        docs: Vec::new(),
        labels: Vec::new(),
        states: Vec::new(),
    };
    for s in views.subjects.values() {
        let variables = views
            .studies
            .get(&s.state.study_id)
            .map(|st| st.state.variables.as_slice())
            .unwrap_or_default();
        rows.labels.push(sort_key_text(&s.state.label));
        rows.states.push(serde_json::to_vec(s)?);
        rows.docs.push(Doc {
            kind: "subject",
            id: s.state.id,
            study_id: s.state.study_id,
            code: None,
            position: s.position,
            body: s.document(variables).to_string().into_bytes(),
        });
    }
    Ok(rows)
}

fn observation_rows(views: &Views) -> anyhow::Result<ObservationRows> {
    let mut rows = ObservationRows::default();
    for o in views.observations.values() {
        rows.ids.push(o.state.id);
        rows.study_ids.push(o.state.study_id);
        rows.subject_ids.push(o.state.subject_id);
        rows.observed_at.push(o.state.observed_at);
        rows.live.push(o.state.is_live());
        rows.authors.push(serde_json::to_string(&o.state.authors)?);
        rows.bodies.push(o.document());
        rows.positions.push(o.position);
    }
    Ok(rows)
}

impl ObservationRows {
    fn into_docs(self) -> Vec<Doc> {
        let ObservationRows {
            ids,
            study_ids,
            positions,
            bodies,
            ..
        } = self;
        zip4(ids, study_ids, positions, bodies)
            .map(|(id, study_id, position, body)| Doc {
                kind: "observation",
                id,
                study_id,
                code: None,
                position,
                body,
            })
            .collect()
    }
}

/// One column of the documents, as the array bound to a statement.
fn column<'a, T>(docs: &'a [Doc], f: impl Fn(&'a Doc) -> T) -> Vec<T> {
    docs.iter().map(f).collect()
}

fn zip4<A, B, C, D>(
    a: Vec<A>,
    b: Vec<B>,
    c: Vec<C>,
    d: Vec<D>,
) -> impl Iterator<Item = (A, B, C, D)> {
    a.into_iter()
        .zip(b)
        .zip(c)
        .zip(d)
        .map(|(((a, b), c), d)| (a, b, c, d))
}

/// A text as a `text` column can hold it, for columns that only order rows
/// (the label a page of subjects is sorted by): PostgreSQL's `text` refuses
/// NUL, which the log may hold in events written before text was checked at
/// the edge. The document itself (`body`, bytes) keeps the text exactly.
pub fn sort_key_text(raw: &str) -> String {
    raw.replace('\0', "\u{FFFD}")
}

/// `(kind, id, study id, code, position, body)` of a stored document.
type DocRow = (String, Uuid, Uuid, Option<String>, i64, Vec<u8>);

/// The documents changed by the events in positions `(after, upto]`, as
/// the read tables hold them now (at least that new), for refilling Redis.
/// The log says what changed (see [`changed_by`]), so the read tables need
/// no index on the position their hot rows change with every event.
pub async fn changed_by_events(
    pool: &sqlx::PgPool,
    schema: &str,
    after: i64,
    upto: i64,
) -> anyhow::Result<Vec<Doc>> {
    let rows: Vec<DocRow> = sqlx::query_as(&changed_by(schema))
        .bind(after)
        .bind(upto)
        .fetch_all(pool)
        .await
        .context("reading changed documents")?;
    Ok(rows
        .into_iter()
        .map(|(kind, id, study_id, code, position, body)| Doc {
            kind: match kind.as_str() {
                "study" => "study",
                "subject" => "subject",
                _ => "observation",
            },
            id,
            study_id,
            code,
            position,
            body,
        })
        .collect())
}

/// The statement of [`changed_by_events`]: an event changes its own
/// aggregate's document and its study's; an observation event its subject's;
/// a study event (which may add variables every subject document lists)
/// every subject of the study.
fn changed_by(schema: &str) -> String {
    format!(
        "WITH e AS (SELECT aggregate_type, aggregate_id, study_id FROM events \
                    WHERE position > $1 AND position <= $2), \
              o AS (SELECT id, study_id, subject_id, position, body FROM {schema}.observations \
                    WHERE id IN (SELECT aggregate_id FROM e WHERE aggregate_type = 'observation')) \
         SELECT 'study', id, id, code, position, body FROM {schema}.studies \
          WHERE id IN (SELECT study_id FROM e) \
         UNION ALL SELECT 'subject', id, study_id, NULL, position, body FROM {schema}.subjects \
          WHERE id IN (SELECT aggregate_id FROM e WHERE aggregate_type = 'subject' \
                       UNION SELECT subject_id FROM o) \
         UNION ALL SELECT 'subject', id, study_id, NULL, position, body FROM {schema}.subjects \
          WHERE study_id IN (SELECT aggregate_id FROM e WHERE aggregate_type = 'study') \
         UNION ALL SELECT 'observation', id, study_id, NULL, position, body FROM o"
    )
}

#[derive(Default)]
struct ObservationRows {
    ids: Vec<Uuid>,
    study_ids: Vec<Uuid>,
    subject_ids: Vec<Uuid>,
    observed_at: Vec<DateTime<Utc>>,
    live: Vec<bool>,
    authors: Vec<String>,
    bodies: Vec<Vec<u8>>,
    positions: Vec<i64>,
}
