//! The JSON Schema of the records (`schema/records.schema.json`), derived with `schemars` from
//! the same serde types that write them, so it cannot drift from the output.
//!
//! Regenerate after changing a record type:
//! `SENSOR_UPDATE_SCHEMA=1 cargo test -p sensor --bin sensor schema::` (or `sensor schema`).
use crate::output::record::{Record, SCHEMA_VERSION};

/// The schema as pretty JSON with a trailing newline.
pub fn records_schema_json() -> String {
    let mut schema = schemars::schema_for!(Record);
    schema.insert(
        "$id".into(),
        serde_json::Value::String(format!(
            "https://github.com/sensor/sensor/schema/records.v{SCHEMA_VERSION}.json"
        )),
    );
    schema.insert("title".into(), "sensor NDJSON record".into());
    schema.insert(
        "x-schema-version".into(),
        serde_json::Value::Number(SCHEMA_VERSION.into()),
    );
    // Every record of this contract carries exactly this version.
    if let Some(v) = schema
        .get_mut("properties")
        .and_then(|p| p.get_mut("schema_version"))
        .and_then(|v| v.as_object_mut())
    {
        v.insert(
            "const".into(),
            serde_json::Value::Number(SCHEMA_VERSION.into()),
        );
    }
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Path of the checked-in schema, relative to the workspace root.
    const SCHEMA_PATH: &str = "schema/records.schema.json";

    #[test]
    fn checked_in_schema_matches_record_types() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(SCHEMA_PATH);
        let fresh = records_schema_json();
        if std::env::var_os("SENSOR_UPDATE_SCHEMA").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &fresh).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == fresh,
            "{} is out of date with the record types: regenerate it with \
             `SENSOR_UPDATE_SCHEMA=1 cargo test -p sensor --bin sensor schema::` and commit it",
            path.display()
        );
        let v: serde_json::Value = serde_json::from_str(&fresh).unwrap();
        assert_eq!(v["x-schema-version"], SCHEMA_VERSION);
    }
}
