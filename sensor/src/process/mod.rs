//! Who did it: the process table that turns kernel events into records (`enrich`), /proc
//! (`proc`), the runtimes recognised from their exec (`runtime_exec`), the container and pod a
//! process or API client belongs to (`host`, `client_origin`), and build-arg values taken out
//! of every record before anything sees it (`redact`).
pub mod client_origin;
pub mod enrich;
pub mod host;
pub mod proc;
pub mod redact;
pub mod runtime_exec;
