//! The benchmark study: the NYC weather data set registered under a code of
//! its own through the command API, one subject per station, shared by the
//! load generators.

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::datasets;

/// A benchmark study's ids (in the data set's order of subjects).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BenchStudy {
    pub study_id: String,
    pub subjects: Vec<String>,
    /// Observations the write benchmarks recorded into it so far (where
    /// the next run's [`Feed`](crate::feed::Feed) starts).
    #[serde(default)]
    pub recorded: u64,
}

/// The weather data set (`data/nyc_weather_2013.csv`).
pub fn weather_data() -> anyhow::Result<datasets::StudyData> {
    datasets::weather(&datasets::data_dir().join("nyc_weather_2013.csv"), "bench")
}

/// The study named by `file`, or a new one (written to `file` when given).
pub async fn bench_study(
    client: &reqwest::Client,
    api: &str,
    token: &str,
    data: &datasets::StudyData,
    file: Option<&std::path::Path>,
) -> anyhow::Result<BenchStudy> {
    if let Some(file) = file.filter(|f| f.exists()) {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        return serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()));
    }
    let mut body = data.register_body();
    body["code"] = json!(format!("BENCH-{}", uuid::Uuid::now_v7().simple()));
    let registered: Value = post(client, api, token, "/v1/studies", &body).await?;
    let study_id = registered["id"].as_str().context("a study id")?.to_owned();
    let mut subjects = Vec::new();
    for subject in &data.subjects {
        let body = json!({"label": subject.label, "attributes": subject.attributes});
        let path = format!("/v1/studies/{study_id}/subjects");
        let r = post(client, api, token, &path, &body).await?;
        subjects.push(r["id"].as_str().context("a subject id")?.to_owned());
    }
    let study = BenchStudy {
        study_id,
        subjects,
        recorded: 0,
    };
    if let Some(file) = file {
        study.save(file)?;
    }
    Ok(study)
}

impl BenchStudy {
    /// Writes the study to `file`, for the next run.
    pub fn save(&self, file: &std::path::Path) -> anyhow::Result<()> {
        std::fs::write(file, serde_json::to_vec(self)?)
            .with_context(|| format!("writing {}", file.display()))
    }
}

/// POSTs `body` to `api` + `path`; a status other than 2xx is an error
/// naming it.
pub async fn post(
    client: &reqwest::Client,
    api: &str,
    token: &str,
    path: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let r = client
        .post(format!("{api}{path}"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await?;
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("POST {path}: {status} {body}");
    }
    Ok(body)
}
