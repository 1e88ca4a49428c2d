//! The Linux capabilities the sensor needs, checked before anything is loaded so that a missing
//! one is one clear line rather than an EPERM from deep inside the loader. Found by experiment
//! on Linux 6.18 (docs/operations.md, "Capabilities"):
//!
//! - CAP_BPF: create maps and load programs;
//! - CAP_PERFMON: tracing programs (tracepoints, pointer reads) and perf-event attach;
//! - CAP_SYS_PTRACE: read `/proc/PID/exe` of processes more privileged than the sensor
//!   (dockerd, containerd): without it records miss `exe` and runtimes found by path;
//! - CAP_DAC_READ_SEARCH: only when not uid 0, to read tracefs (mode 0700, owned by root);
//! - CAP_SYS_ADMIN: only to mount tracefs when it is not mounted (or instead of BPF+PERFMON).
//!
//! Not needed on this kernel: CAP_SYS_RESOURCE (BPF memory is charged to the memory cgroup
//! since 5.11, no RLIMIT_MEMLOCK), CAP_NET_ADMIN, CAP_DAC_OVERRIDE.
use std::path::Path;

pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// A tracepoint id file that every attach reads.
const TRACEFS_PROBE: &str = "/sys/kernel/tracing/events/sched/sched_process_exec/id";

#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error(
        "missing capabilities {0}: run as root, or grant CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE \
         (plus CAP_DAC_READ_SEARCH when not uid 0); see docs/operations.md"
    )]
    Missing(String),
    #[error(
        "tracefs is not mounted at /sys/kernel/tracing and mounting it needs CAP_SYS_ADMIN: \
         mount it first (`mount -t tracefs nodev /sys/kernel/tracing`) or grant CAP_SYS_ADMIN"
    )]
    TracefsNotMounted,
    #[error(
        "cannot read tracefs ({TRACEFS_PROBE}: {0}): it is readable by root only; run as uid 0 \
         or grant CAP_DAC_READ_SEARCH"
    )]
    TracefsUnreadable(std::io::Error),
}

/// The effective capability set of this process (0 when /proc cannot tell).
pub fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub fn has(set: u64, cap: u32) -> bool {
    set & (1u64 << cap) != 0
}

/// The required capabilities this process lacks (CAP_SYS_ADMIN stands in for BPF and PERFMON).
pub fn missing_required(set: u64) -> Vec<&'static str> {
    let admin = has(set, CAP_SYS_ADMIN);
    let mut out = Vec::new();
    if !has(set, CAP_BPF) && !admin {
        out.push("CAP_BPF");
    }
    if !has(set, CAP_PERFMON) && !admin {
        out.push("CAP_PERFMON");
    }
    out
}

/// Checks what loading needs; returns warnings for what only degrades the records.
pub fn preflight() -> Result<Vec<String>, CapsError> {
    let set = effective();
    let missing = missing_required(set);
    if !missing.is_empty() {
        return Err(CapsError::Missing(missing.join(", ")));
    }
    let mut warnings = Vec::new();
    if !has(set, CAP_SYS_PTRACE) {
        warnings.push(
            "no CAP_SYS_PTRACE: executables (/proc/PID/exe) of more privileged processes such as \
             dockerd cannot be read, records will miss `exe`"
                .to_string(),
        );
    }
    Ok(warnings)
}

/// After the mount attempt: can the tracepoint ids be read?
pub fn check_tracefs() -> Result<(), CapsError> {
    if !Path::new("/sys/kernel/tracing").exists() {
        return Err(CapsError::TracefsNotMounted);
    }
    match std::fs::read_to_string(TRACEFS_PROBE) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(CapsError::TracefsUnreadable(e))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mounted =
                std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| m.contains(" tracefs "));
            if mounted {
                // Mounted, and the event is missing: let the loader say which probe failed.
                Ok(())
            } else if has(effective(), CAP_SYS_ADMIN) {
                Ok(())
            } else {
                Err(CapsError::TracefsNotMounted)
            }
        }
        Err(e) => Err(CapsError::TracefsUnreadable(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_set() {
        assert_eq!(missing_required(0), vec!["CAP_BPF", "CAP_PERFMON"]);
        assert!(missing_required(1 << CAP_SYS_ADMIN).is_empty());
        assert!(missing_required((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
        assert_eq!(missing_required(1 << CAP_BPF), vec!["CAP_PERFMON"]);
    }
}
