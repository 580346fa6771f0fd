//! The two real data sets in `data/`, mapped onto studies, subjects and
//! observations (the mapping is described in `data/README.md`). Every value
//! is a real measurement; `NA` becomes `null` (measured as missing).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde_json::{json, Map, Value};

/// A study to register, with its subjects and their observations.
#[derive(Debug, Clone)]
pub struct StudyData {
    pub code: String,
    pub title: String,
    pub principal_investigator: String,
    pub description: String,
    pub variables: Value,
    pub subjects: Vec<SubjectData>,
}

#[derive(Debug, Clone)]
pub struct SubjectData {
    pub label: String,
    pub attributes: Map<String, Value>,
    pub observations: Vec<ObservationData>,
}

#[derive(Debug, Clone)]
pub struct ObservationData {
    pub observed_at: String,
    pub values: BTreeMap<String, Value>,
    pub comment: Option<String>,
}

impl StudyData {
    /// The body of `POST /v1/studies`.
    pub fn register_body(&self) -> Value {
        json!({
            "code": self.code,
            "title": self.title,
            "principal_investigator": self.principal_investigator,
            "description": self.description,
            "variables": self.variables,
        })
    }

    /// The batch commands registering every subject (with the given ids)
    /// of the study `study_id` and recording up to `per_subject` of each
    /// one's observations, in the order of the file.
    pub fn batch_commands(
        &self,
        study_id: &str,
        subject_ids: &[uuid::Uuid],
        per_subject: usize,
    ) -> Vec<Value> {
        let mut commands: Vec<Value> = self
            .subjects
            .iter()
            .zip(subject_ids)
            .map(|(s, id)| {
                json!({"type": "RegisterSubject", "target": study_id, "subject_id": id,
                       "label": s.label, "attributes": s.attributes})
            })
            .collect();
        for (subject, id) in self.subjects.iter().zip(subject_ids) {
            for o in subject.observations.iter().take(per_subject) {
                let mut item = o.record_body();
                item["type"] = json!("RecordObservation");
                item["target"] = json!(id);
                commands.push(item);
            }
        }
        commands
    }

    pub fn observation_count(&self) -> usize {
        self.subjects.iter().map(|s| s.observations.len()).sum()
    }
}

impl ObservationData {
    /// The body of `POST /v1/subjects/{id}/observations`.
    pub fn record_body(&self) -> Value {
        let mut body = json!({ "observed_at": self.observed_at, "values": self.values });
        if let Some(comment) = &self.comment {
            body["comment"] = json!(comment);
        }
        body
    }
}

fn na(raw: &str) -> bool {
    raw.is_empty() || raw == "NA"
}

fn number(raw: &str) -> anyhow::Result<Value> {
    if na(raw) {
        return Ok(Value::Null);
    }
    let n: f64 = raw
        .parse()
        .with_context(|| format!("{raw:?} is not a number"))?;
    Ok(json!(n))
}

fn integer(raw: &str) -> anyhow::Result<Value> {
    if na(raw) {
        return Ok(Value::Null);
    }
    let n: i64 = raw
        .parse()
        .with_context(|| format!("{raw:?} is not an integer"))?;
    Ok(json!(n))
}

fn text(raw: &str) -> Value {
    if na(raw) {
        Value::Null
    } else {
        json!(raw)
    }
}

/// The columns of a CSV file, by name.
struct Columns(Vec<String>);

impl Columns {
    /// The header, which must name every column in `wanted`.
    fn of(headers: &csv::StringRecord, wanted: &[&str]) -> anyhow::Result<Self> {
        let names: Vec<String> = headers.iter().map(str::to_owned).collect();
        if let Some(missing) = wanted.iter().find(|w| !names.iter().any(|n| n == *w)) {
            anyhow::bail!("no column {missing:?}");
        }
        Ok(Self(names))
    }

    fn row<'a>(&'a self, record: &'a csv::StringRecord) -> Row<'a> {
        Row {
            columns: self,
            record,
        }
    }
}

/// One record, its fields found by column name.
struct Row<'a> {
    columns: &'a Columns,
    record: &'a csv::StringRecord,
}

impl<'a> Row<'a> {
    /// The field in the column `name` (one the header names).
    fn field(&self, name: &str) -> &'a str {
        self.columns
            .0
            .iter()
            .position(|n| n == name)
            .and_then(|i| self.record.get(i))
            .unwrap_or("")
    }
}

const PENGUIN_COLUMNS: [&str; 17] = [
    "studyName",
    "Sample Number",
    "Species",
    "Region",
    "Island",
    "Stage",
    "Individual ID",
    "Clutch Completion",
    "Date Egg",
    "Culmen Length (mm)",
    "Culmen Depth (mm)",
    "Flipper Length (mm)",
    "Body Mass (g)",
    "Sex",
    "Delta 15 N (o/oo)",
    "Delta 13 C (o/oo)",
    "Comments",
];

/// Palmer penguins: one study per field season (`studyName`), one subject
/// per individual, one observation per row.
pub fn penguins(path: &Path) -> anyhow::Result<Vec<StudyData>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
    let columns = Columns::of(reader.headers()?, &PENGUIN_COLUMNS)?;
    let mut studies: Vec<StudyData> = Vec::new();
    for (line, record) in reader.records().enumerate() {
        let r = record.with_context(|| format!("reading row {}", line + 2))?;
        let row = columns.row(&r);
        let field = |name: &str| row.field(name);
        let code = field("studyName");
        if !studies.iter().any(|s| s.code == code) {
            studies.push(penguin_season(code));
        }
        let study = studies
            .iter_mut()
            .find(|s| s.code == code)
            .expect("inserted above");
        let observation = penguin_observation(&row)?;
        let label = field("Individual ID").to_owned();
        match study.subjects.iter_mut().find(|s| s.label == label) {
            Some(subject) => subject.observations.push(observation),
            None => {
                let mut attributes = Map::new();
                attributes.insert("species".into(), json!(field("Species")));
                attributes.insert("island".into(), json!(field("Island")));
                attributes.insert("region".into(), json!(field("Region")));
                attributes.insert("stage".into(), json!(field("Stage")));
                attributes.insert("sample_number".into(), integer(field("Sample Number"))?);
                study.subjects.push(SubjectData {
                    label,
                    attributes,
                    observations: vec![observation],
                });
            }
        }
    }
    Ok(studies)
}

/// The study of one field season, such as `PAL0708`.
fn penguin_season(code: &str) -> StudyData {
    let season = code.strip_prefix("PAL").unwrap_or(code);
    StudyData {
        code: code.to_owned(),
        title: format!(
            "Palmer Station Adélie, Chinstrap and Gentoo penguins, season 20{}-{}",
            season.get(..2).unwrap_or(""),
            season.get(2..).unwrap_or("")
        ),
        principal_investigator: "Kristen B. Gorman".to_owned(),
        description:
            "Nesting penguins measured near Palmer Station, Antarctica (Palmer Station LTER, \
                      EDI knb-lter-pal.219/220/221; Gorman, Williams and Fraser 2014)"
                .to_owned(),
        variables: json!([
            {"name": "culmen_length_mm", "kind": "numeric", "unit": "mm", "min": 0},
            {"name": "culmen_depth_mm", "kind": "numeric", "unit": "mm", "min": 0},
            {"name": "flipper_length_mm", "kind": "integer", "unit": "mm", "min": 0},
            {"name": "body_mass_g", "kind": "integer", "unit": "g", "min": 0},
            {"name": "sex", "kind": "categorical", "categories": ["MALE", "FEMALE"]},
            {"name": "delta_15n", "kind": "numeric", "unit": "per mille"},
            {"name": "delta_13c", "kind": "numeric", "unit": "per mille"},
            {"name": "clutch_completion", "kind": "boolean"},
            {"name": "egg_date", "kind": "date"}
        ]),
        subjects: Vec::new(),
    }
}

/// One penguin row as an observation.
fn penguin_observation(row: &Row<'_>) -> anyhow::Result<ObservationData> {
    let field = |name: &str| row.field(name);
    let mut values = BTreeMap::new();
    values.insert(
        "culmen_length_mm".to_owned(),
        number(field("Culmen Length (mm)"))?,
    );
    values.insert(
        "culmen_depth_mm".to_owned(),
        number(field("Culmen Depth (mm)"))?,
    );
    values.insert(
        "flipper_length_mm".to_owned(),
        integer(field("Flipper Length (mm)"))?,
    );
    values.insert("body_mass_g".to_owned(), integer(field("Body Mass (g)"))?);
    values.insert("sex".to_owned(), text(field("Sex")));
    values.insert("delta_15n".to_owned(), number(field("Delta 15 N (o/oo)"))?);
    values.insert("delta_13c".to_owned(), number(field("Delta 13 C (o/oo)"))?);
    let clutch = match field("Clutch Completion") {
        "Yes" => json!(true),
        "No" => json!(false),
        _ => Value::Null,
    };
    values.insert("clutch_completion".to_owned(), clutch);
    let egg = field("Date Egg");
    values.insert("egg_date".to_owned(), text(egg));
    let comments = field("Comments");
    Ok(ObservationData {
        observed_at: format!("{egg}T00:00:00Z"),
        values,
        comment: (!na(comments)).then(|| comments.to_owned()),
    })
}

/// NYC airport weather 2013 as study `code`: one subject per station, one
/// observation per hourly row.
pub fn weather(path: &Path, code: &str) -> anyhow::Result<StudyData> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
    let measures = [
        ("temp", "temp_f", "degF"),
        ("dewp", "dewpoint_f", "degF"),
        ("humid", "humidity_pct", "%"),
        ("wind_dir", "wind_dir_deg", "deg"),
        ("wind_speed", "wind_speed_mph", "mph"),
        ("wind_gust", "wind_gust_mph", "mph"),
        ("precip", "precip_in", "in"),
        ("pressure", "pressure_mbar", "mbar"),
        ("visib", "visibility_mi", "mi"),
    ];
    let wanted: Vec<&str> = ["origin", "time_hour"]
        .into_iter()
        .chain(measures.iter().map(|(c, _, _)| *c))
        .collect();
    let columns = Columns::of(reader.headers()?, &wanted)?;
    let variables: Vec<Value> = measures
        .iter()
        .map(|(_, name, unit)| json!({"name": name, "kind": "numeric", "unit": unit}))
        .collect();
    let mut study = StudyData {
        code: code.to_owned(),
        title: "Hourly surface weather at the New York City airports, 2013".to_owned(),
        principal_investigator: "NOAA Integrated Surface Database".to_owned(),
        description: "ASOS observations at EWR, JFK and LGA (NOAA ISD via nycflights13)".to_owned(),
        variables: Value::Array(variables),
        subjects: Vec::new(),
    };
    for (line, record) in reader.records().enumerate() {
        let r = record.with_context(|| format!("reading row {}", line + 2))?;
        let row = columns.row(&r);
        let mut values = BTreeMap::new();
        for (column, name, _) in &measures {
            values.insert((*name).to_owned(), number(row.field(column))?);
        }
        let observation = ObservationData {
            observed_at: row.field("time_hour").to_owned(),
            values,
            comment: None,
        };
        let label = row.field("origin");
        match study.subjects.iter_mut().find(|s| s.label == label) {
            Some(s) => s.observations.push(observation),
            None => {
                let mut attributes = Map::new();
                attributes.insert("station".into(), json!(label));
                study.subjects.push(SubjectData {
                    label: label.to_owned(),
                    attributes,
                    observations: vec![observation],
                });
            }
        }
    }
    Ok(study)
}

/// The repository's `data/` directory, wherever the binary runs from.
pub fn data_dir() -> std::path::PathBuf {
    std::env::var_os("RESEARCH_DATA_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../data"),
        std::path::PathBuf::from,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penguins_map_to_three_seasons_of_real_rows() {
        let studies = penguins(&data_dir().join("penguins_raw.csv")).unwrap();
        let codes: Vec<&str> = studies.iter().map(|s| s.code.as_str()).collect();
        assert_eq!(codes, ["PAL0708", "PAL0809", "PAL0910"]);
        assert_eq!(
            studies
                .iter()
                .map(StudyData::observation_count)
                .sum::<usize>(),
            344
        );
        let first = &studies[0].subjects[0].observations[0];
        assert_eq!(first.values["culmen_length_mm"], json!(39.1));
        assert_eq!(first.values["delta_15n"], Value::Null);
    }

    #[test]
    fn weather_maps_to_three_stations() {
        let study = weather(&data_dir().join("nyc_weather_2013.csv"), "NYC-ASOS-2013").unwrap();
        assert_eq!(study.subjects.len(), 3);
        assert_eq!(study.observation_count(), 26_115);
    }
}
