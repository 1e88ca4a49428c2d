//! What leaves the sensor: the record types (`record`) and their JSON Schema (`schema`), the
//! sinks that write them (`sinks`), and the Prometheus endpoint (`metrics`).
pub mod metrics;
pub mod record;
pub mod schema;
pub mod sinks;
