//! Generated hostile requests against both APIs on the running pipeline:
//! bodies, headers, paths, query strings and tokens built from control
//! characters, invalid UTF-8, huge and deeply nested values, forged ids and
//! cursors, and valid requests with one part broken. Whatever comes, no
//! answer is a 5xx, every error is an RFC 9457 problem of its own status,
//! and a refused request leaves the event store as it was. At the end the
//! pipeline still flows.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};
use shared::auth::{mint, Claims, Role};
use tests::SECRET;
use uuid::Uuid;

use crate::hostile::Pipeline;

/// Text a client may send: printable, control characters, NULs, long runs.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,20}",
        any::<String>(),
        "[\\x00-\\x1f\\x7f-\\x9f]{1,4}",
        (0usize..3, 200usize..20_000).prop_map(|(c, n)| ["x", "é", "\0"][c].repeat(n)),
        Just("\u{202e}\u{feff}\u{fffd}\u{10ffff}".to_owned()),
    ]
}

/// Any JSON value, with hostile strings, numbers at the edges and nesting.
fn hostile_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        prop_oneof![Just(1e308), Just(-0.0), Just(5e-324), any::<f64>()]
            .prop_filter_map("finite", |f: f64| serde_json::Number::from_f64(f)
                .map(Value::Number)),
        hostile_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((hostile_text(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A path segment: a known id, an unknown one, or bytes percent-encoded.
fn segment(known: Vec<String>) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(known),
        1 => Just(Uuid::now_v7().to_string()),
        2 => prop::collection::vec(any::<u8>(), 0..40)
            .prop_map(|bytes| bytes.iter().map(|b| format!("%{b:02X}")).collect()),
        1 => Just("..".to_owned()),
        1 => "[a-zA-Z0-9._-]{0,300}",
    ]
}

fn query_string() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec!["limit", "cursor", "after", "as_of", "from", "to", "x"]);
    let value = prop_oneof![
        "-?[0-9]{1,25}",
        prop::collection::vec(any::<u8>(), 0..60).prop_map(|bytes| bytes
            .iter()
            .map(|b| format!("%{b:02X}"))
            .collect::<String>()),
        "[A-Za-z0-9_-]{0,200}",
        Just("2007-11-11T00:00:00Z".to_owned()),
        Just("-5000-01-01T00:00:00Z".to_owned()),
    ];
    prop::collection::vec((key, value), 0..4).prop_map(|pairs| {
        if pairs.is_empty() {
            String::new()
        } else {
            let joined: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("?{}", joined.join("&"))
        }
    })
}

/// A token: valid, or signed with hostile claims, or not a token at all.
fn authorization(study: Uuid) -> impl Strategy<Value = Option<String>> {
    let roles = prop::sample::subsequence(
        vec!["writer", "reviewer", "reader", "auditor", "admin", "root"],
        0..4,
    );
    let signed = (
        hostile_text(),
        roles,
        prop_oneof![Just(3600i64), Just(-3600), Just(i64::MAX / 2)],
        prop::option::of(prop_oneof![Just(-60i64), Just(3600)]),
        prop::option::of(prop_oneof![
            Just(vec![study]),
            Just(vec![Uuid::now_v7()]),
            Just(vec![])
        ]),
    )
        .prop_map(|(sub, roles, ttl, nbf, studies)| {
            let now = chrono::Utc::now().timestamp();
            let claims = Claims {
                sub,
                roles: roles.into_iter().map(str::to_owned).collect(),
                exp: now.saturating_add(ttl),
                nbf: nbf.map(|n| now + n),
                studies,
                iss: None,
                aud: None,
            };
            Some(format!("Bearer {}", mint(SECRET.as_bytes(), &claims)))
        });
    prop_oneof![
        4 => signed,
        1 => Just(None),
        1 => "[ -~]{0,300}".prop_map(Some),
        1 => "Bearer [A-Za-z0-9._-]{0,400}".prop_map(Some),
    ]
}

/// Header values a client library can send: visible ASCII and obs-text.
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[ -~]{0,200}".prop_map(String::into_bytes),
        prop::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff], 0..100),
        "-?[0-9]{1,30}".prop_map(String::into_bytes),
        Just(b"\"3\"".to_vec()),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(&'static str, Vec<u8>)>> {
    let name = prop::sample::select(vec![
        "consistency-token",
        "if-match",
        "if-none-match",
        "idempotency-key",
        "accept-encoding",
        "content-type",
        "x-request-id",
        "x-correlation-id",
        "content-length-ish",
    ]);
    prop::collection::vec((name, header_value()), 0..4)
}

/// A valid body of some command with one part replaced by hostile JSON, or
/// hostile JSON, or bytes.
fn body(subject: Uuid, observation: Uuid) -> impl Strategy<Value = Vec<u8>> {
    let bases = vec![
        json!({"reason": "r"}),
        json!({"label": "L", "attributes": {"sex": "FEMALE"}}),
        json!({"observed_at": "2007-11-11T00:00:00Z", "values": {"body_mass_g": 3750}, "comment": "c"}),
        json!({"values": {"body_mass_g": 3800}, "reason": "r"}),
        json!({"meaning": "reviewed"}),
        json!({"code": "C-1", "title": "t", "principal_investigator": "p",
               "variables": [{"name": "v", "kind": "categorical", "categories": ["a"]}]}),
        json!({"commands": [
            {"type": "RecordObservation", "target": subject, "observed_at": "2007-11-11T00:00:00Z",
             "values": {"body_mass_g": 3750}},
            {"type": "RetractObservation", "target": observation, "reason": "r"}]}),
    ];
    let mutated = (
        prop::sample::select(bases),
        prop::sample::select(vec![
            "reason",
            "label",
            "attributes",
            "values",
            "comment",
            "meaning",
            "code",
            "title",
            "variables",
            "commands",
            "observed_at",
            "actor",
        ]),
        hostile_json(),
    )
        .prop_map(|(mut base, field, value)| {
            if let Some(commands) = base.get_mut("commands").and_then(Value::as_array_mut) {
                commands[0][field] = value;
            } else {
                base[field] = value;
            }
            serde_json::to_vec(&base).unwrap()
        });
    prop_oneof![
        6 => mutated,
        2 => hostile_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..300),
        1 => (1usize..200).prop_map(|depth| "[".repeat(depth * 10).into_bytes()),
    ]
}

#[derive(Debug, Clone)]
struct Request {
    command_api: bool,
    method: reqwest::Method,
    path: String,
    authorization: Option<String>,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
}

fn request(p: &Pipeline, observation: Uuid) -> impl Strategy<Value = Request> {
    let known = vec![
        p.study.to_string(),
        p.subject.to_string(),
        observation.to_string(),
        tests::penguins()[0].code.clone(),
    ];
    let templates = vec![
        (true, "/v1/studies"),
        (true, "/v1/studies/{}/amendments"),
        (true, "/v1/studies/{}/closure"),
        (true, "/v1/studies/{}/subjects"),
        (true, "/v1/subjects/{}/withdrawal"),
        (true, "/v1/subjects/{}/observations"),
        (true, "/v1/observations/{}/corrections"),
        (true, "/v1/observations/{}/retraction"),
        (true, "/v1/observations/{}/signatures"),
        (true, "/v1/commands"),
        (true, "/{}"),
        (false, "/v1/studies"),
        (false, "/v1/studies/{}"),
        (false, "/v1/studies/by-code/{}"),
        (false, "/v1/studies/{}/subjects"),
        (false, "/v1/studies/{}/observations.ndjson"),
        (false, "/v1/subjects/{}"),
        (false, "/v1/subjects/{}/observations"),
        (false, "/v1/observations/{}"),
        (false, "/v1/audit/events"),
        (false, "/v1/audit/streams/{}/events"),
        (false, "/v1/audit/observations/{}"),
        (false, "/v1/audit/head"),
        (false, "/v1/audit/verify"),
        (false, "/{}"),
    ];
    let method = prop_oneof![
        6 => Just(reqwest::Method::POST),
        6 => Just(reqwest::Method::GET),
        1 => Just(reqwest::Method::PUT),
        1 => Just(reqwest::Method::DELETE),
        1 => Just(reqwest::Method::HEAD),
        1 => Just(reqwest::Method::OPTIONS),
    ];
    (
        prop::sample::select(templates),
        segment(known),
        query_string(),
        method,
        authorization(p.study),
        headers(),
        body(p.subject, observation),
    )
        .prop_map(
            |((command_api, template), segment, query, method, authorization, headers, body)| {
                Request {
                    command_api,
                    method,
                    path: format!("{}{query}", template.replace("{}", &segment)),
                    authorization,
                    headers,
                    body,
                }
            },
        )
}

async fn check(p: &Pipeline, http: &reqwest::Client, r: Request) -> Result<(), TestCaseError> {
    let before = p.events().await;
    let url = if r.command_api {
        p.env.api.url(&r.path)
    } else {
        p.query.url(&r.path)
    };
    let mut request = http.request(r.method.clone(), &url).body(r.body.clone());
    if let Some(authorization) = &r.authorization {
        request = request.header("authorization", authorization.as_str());
    }
    for (name, value) in &r.headers {
        if let Ok(value) = reqwest::header::HeaderValue::from_bytes(value) {
            request = request.header(*name, value);
        }
    }
    let Ok(request) = request.build() else {
        // Not sendable by an HTTP client (a URL it will not parse).
        return Ok(());
    };
    let response = http
        .execute(request)
        .await
        .map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let retry_after = response.headers().contains_key("retry-after");
    let bytes = response.bytes().await.unwrap_or_default();
    // The one 5xx the contract gives a client: a `Consistency-Token` for a
    // position the read models have not reached, with `Retry-After`.
    let waited = !r.command_api
        && r.headers.iter().any(|(name, value)| {
            *name == "consistency-token"
                && std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .is_some_and(|p| p >= 0)
        });
    if status == 503 && waited {
        prop_assert!(retry_after, "a 503 for a token says when to retry");
        return Ok(());
    }
    prop_assert!(
        status < 500,
        "{status} for {} {}: {}",
        r.method,
        r.path.chars().take(200).collect::<String>(),
        String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
    );
    if status >= 400 {
        prop_assert_eq!(&content_type, "application/problem+json", "{}", status);
        if r.method != reqwest::Method::HEAD {
            let problem: Value = serde_json::from_slice(&bytes)
                .map_err(|e| TestCaseError::fail(format!("not a problem body: {e}")))?;
            prop_assert_eq!(problem["status"].as_u64(), Some(u64::from(status)));
            prop_assert!(problem["type"].is_string() && problem["title"].is_string());
        }
        prop_assert_eq!(p.events().await, before, "a refused request wrote events");
    }
    Ok(())
}

#[test]
fn generated_hostile_requests_get_problems_and_change_nothing() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // A token for a position not reached is answered after the wait: keep
    // it short, many generated requests carry one.
    let p = runtime.block_on(Pipeline::start_waiting(std::time::Duration::from_millis(
        100,
    )));
    let observation = runtime.block_on(p.env.observation(p.subject));
    let http = reqwest::Client::new();
    let cases = std::env::var("HOSTILE_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&request(&p, observation), |r| {
        runtime.block_on(check(&p, &http, r))
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    // Valid tokens of every role still work, and the pipeline still flows.
    let reader = tests::token("rex", &[Role::Reader]);
    let read = runtime.block_on(p.query.get(&format!("/v1/studies/{}", p.study), &reader));
    assert_eq!(read.status, 200);
    runtime.block_on(p.flows());
}

/// A character the service accepts in a name: anything but a control
/// character, astral planes, bidi overrides, non-characters included.
fn name_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => any::<char>().prop_filter("not a control character", |c| !c.is_control()),
        1 => prop::sample::select(vec!['\u{202e}', '\u{feff}', '\u{fffe}', '\u{10ffff}', '🐧', 'é', '"', '\\', '|']),
    ]
}

/// A name: 1 to 256 characters, often exactly 256.
fn accepted_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(name_char(), 1..40).prop_map(|c| c.into_iter().collect()),
        name_char().prop_map(|c| c.to_string().repeat(256)),
    ]
}

/// Free text: names' characters plus tab and line ends, up to 16 KiB.
fn accepted_free_text() -> impl Strategy<Value = String> {
    let c = prop_oneof![
        8 => name_char(),
        1 => prop::sample::select(vec!['\t', '\n', '\r']),
    ];
    prop_oneof![
        prop::collection::vec(c, 1..200).prop_map(|c| c.into_iter().collect()),
        (name_char(), Just(())).prop_map(|(c, ())| {
            let mut s = String::new();
            while s.len() + c.len_utf8() <= 16 * 1024 {
                s.push(c);
            }
            s
        }),
    ]
}

#[derive(Debug, Clone)]
struct Texts {
    title: String,
    description: String,
    investigator: String,
    unit: String,
    categories: (String, String),
    label: String,
    attribute: (String, String),
    value: String,
    comment: String,
    reason: String,
}

fn texts() -> impl Strategy<Value = Texts> {
    (
        (accepted_free_text(), accepted_free_text(), accepted_name()),
        (accepted_name(), accepted_name(), accepted_name()),
        (accepted_name(), accepted_name(), accepted_name()),
        (
            accepted_free_text(),
            accepted_free_text(),
            accepted_free_text(),
        ),
    )
        .prop_filter("two distinct categories", |(_, (_, a, b), _, _)| a != b)
        .prop_filter(
            "a title and a label with something to say",
            |((t, _, _), _, (l, _, _), _)| !t.trim().is_empty() && !l.trim().is_empty(),
        )
        .prop_filter("an investigator", |((_, _, i), _, _, _)| {
            !i.trim().is_empty()
        })
        .prop_filter("a reason", |(_, _, _, (_, _, r))| !r.trim().is_empty())
        .prop_map(
            |(
                (title, description, investigator),
                (unit, a, b),
                (label, key, value),
                (text, comment, reason),
            )| {
                Texts {
                    title,
                    description,
                    investigator,
                    unit,
                    categories: (a, b),
                    label,
                    attribute: (key, value),
                    value: text,
                    comment,
                    reason,
                }
            },
        )
}

/// Registers a study, a subject, an observation and its correction with
/// `t`, then reads each document back with the last position's token:
/// every text comes back exactly, and the last event is in JetStream.
async fn round_trip(p: &Pipeline, n: usize, t: Texts) -> Result<(), TestCaseError> {
    let api = &p.env.api;
    let writer = &p.env.writer;
    let study = api
        .post(
            "/v1/studies",
            writer,
            &json!({"code": format!("ALPHABET-{n}"), "title": t.title, "description": t.description,
                    "principal_investigator": t.investigator,
                    "variables": [
                        {"name": "note", "kind": "text"},
                        {"name": "mass", "kind": "numeric", "unit": t.unit},
                        {"name": "kind", "kind": "categorical", "categories": [t.categories.0, t.categories.1]}]}),
        )
        .await;
    prop_assert_eq!(
        study.status,
        201,
        "{}",
        String::from_utf8_lossy(&study.bytes)
    );
    let study = study.id();
    let subject = api
        .post(
            &format!("/v1/studies/{study}/subjects"),
            writer,
            &json!({"label": t.label, "attributes": {t.attribute.0.clone(): t.attribute.1}}),
        )
        .await;
    prop_assert_eq!(
        subject.status,
        201,
        "{}",
        String::from_utf8_lossy(&subject.bytes)
    );
    let subject = subject.id();
    let observation = api
        .post(
            &format!("/v1/subjects/{subject}/observations"),
            writer,
            &json!({"observed_at": "2013-01-01T00:00:00Z", "comment": t.comment,
                    "values": {"note": "first", "mass": 1.5, "kind": t.categories.1}}),
        )
        .await;
    prop_assert_eq!(observation.status, 201);
    let observation = observation.id();
    let corrected = api
        .post(
            &format!("/v1/observations/{observation}/corrections"),
            &p.env.writer2,
            &json!({"values": {"note": t.value}, "reason": t.reason}),
        )
        .await;
    prop_assert_eq!(
        corrected.status,
        200,
        "{}",
        String::from_utf8_lossy(&corrected.bytes)
    );
    let position: i64 = corrected.json()["position"].as_i64().unwrap();
    let reader = &p.env.reader;
    let doc = p
        .read_at(&format!("/v1/studies/{study}"), reader, position)
        .await
        .json();
    prop_assert_eq!(&doc["title"], &json!(t.title));
    prop_assert_eq!(&doc["description"], &json!(t.description));
    prop_assert_eq!(&doc["principal_investigator"], &json!(t.investigator));
    prop_assert_eq!(&doc["variables"][1]["unit"], &json!(t.unit));
    prop_assert_eq!(
        &doc["variables"][2]["categories"],
        &json!([t.categories.0, t.categories.1])
    );
    let doc = p
        .read_at(&format!("/v1/subjects/{subject}"), reader, position)
        .await
        .json();
    prop_assert_eq!(&doc["label"], &json!(t.label));
    prop_assert_eq!(&doc["attributes"][&t.attribute.0], &json!(t.attribute.1));
    let doc = p
        .read_at(&format!("/v1/observations/{observation}"), reader, position)
        .await
        .json();
    prop_assert_eq!(&doc["values"]["note"], &json!(t.value));
    prop_assert_eq!(&doc["comment"], &json!(t.comment));
    prop_assert_eq!(&doc["last_change_reason"], &json!(t.reason));
    let js = p.env.stream.jetstream().await;
    let name = p.env.stream.name.clone();
    tests::wait_until(std::time::Duration::from_secs(20), "JetStream", || async {
        let messages = tests::read_stream(&js, &name).await.ok()?;
        messages
            .iter()
            .any(|(p, _, _)| *p == position)
            .then_some(())
    })
    .await;
    Ok(())
}

#[test]
fn the_whole_accepted_alphabet_at_its_bounds_flows_to_every_reader() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let p = runtime.block_on(Pipeline::start());
    // The largest study the bounds allow that still fits one message.
    let categories: Vec<String> = (0..8).map(|c| format!("{c}{}", "é".repeat(255))).collect();
    let variables: Vec<Value> = (0..100)
        .map(|v| {
            json!({"name": format!("v{v}"), "kind": "categorical", "unit": "µ".repeat(256),
                        "categories": categories})
        })
        .collect();
    let large = runtime.block_on(p.env.api.post(
        "/v1/studies",
        &p.env.writer,
        &json!({"code": "LARGEST", "title": "t".repeat(16 * 1024), "principal_investigator": "p",
                "description": "d".repeat(16 * 1024), "variables": variables}),
    ));
    assert_eq!(
        large.status,
        201,
        "{}",
        String::from_utf8_lossy(&large.bytes)
    );
    let position = large.json()["position"].as_i64().unwrap();
    let read = runtime.block_on(p.read_at(
        &format!("/v1/studies/{}", large.id()),
        &p.env.reader,
        position,
    ));
    assert_eq!(read.json()["variables"].as_array().unwrap().len(), 100);
    let cases = std::env::var("ALPHABET_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(24);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let outcome = runner.run(&texts(), |t| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        runtime.block_on(round_trip(&p, n, t))
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    runtime.block_on(p.flows());
}
