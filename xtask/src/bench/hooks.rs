//! `cargo xtask bench --hook-stats`: what each of the sensor's kernel programs costs per run,
//! from the kernel's own BPF run-time statistics, storm by storm. The statistics are on only
//! while this bench holds the fd of BPF_ENABLE_STATS (closing it turns them off again), and in
//! a sensor run of their own after the timed ones: each program run then also pays two clock
//! reads, which the timed runs must not.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cmd;

/// `BPF_ENABLE_STATS` of `enum bpf_cmd` and `BPF_STATS_RUN_TIME` of `enum bpf_stats_type`
/// (linux/bpf.h; stable kernel ABI since 5.8).
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// The kernel's BPF run-time statistics, on while this lives.
pub struct BpfStats {
    /// Held, never read: closing it turns the statistics off.
    _fd: OwnedFd,
}

impl BpfStats {
    pub fn enable() -> Result<Self> {
        // `union bpf_attr` for BPF_ENABLE_STATS is `struct { __u32 type; }`; the kernel
        // accepts an attr of just the size it reads.
        let attr: u32 = BPF_STATS_RUN_TIME;
        // SAFETY: bpf(2) reads `size` bytes of a live u32; the fd it returns is ours.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                &attr as *const u32,
                std::mem::size_of::<u32>() as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("bpf(BPF_ENABLE_STATS)");
        }
        let fd = i32::try_from(fd).context("bpf(BPF_ENABLE_STATS) returned no fd")?;
        // SAFETY: a fresh descriptor nothing else owns.
        Ok(Self {
            _fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }
}

/// Run count and total run time of one program, as the kernel counts them.
#[derive(Clone, Copy, Default)]
pub struct ProgramStats {
    pub runs: u64,
    pub run_ns: u64,
}

/// The programs a process holds, by program id, from /proc/PID/fdinfo: the fdinfo of a
/// program's fd shows `prog_id`, `run_cnt` and `run_time_ns` (a link's shows only `prog_id`).
pub fn program_stats(pid: u32) -> Result<BTreeMap<u32, ProgramStats>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut found = BTreeMap::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        // Descriptors come and go while we read: skip the ones that went.
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(runs), Some(run_ns)) =
            (field("prog_id:"), field("run_cnt:"), field("run_time_ns:"))
            && let Ok(id) = u32::try_from(id)
        {
            found.insert(id, ProgramStats { runs, run_ns });
        }
    }
    if found.is_empty() {
        bail!("no BPF program fds in {dir}");
    }
    Ok(found)
}

/// Program names by id (`bpftool prog show id N`, which spells out names the kernel cuts
/// at 15 characters from the program's BTF); the id itself where bpftool cannot tell.
pub fn program_names<'a>(ids: impl Iterator<Item = &'a u32>) -> BTreeMap<u32, String> {
    ids.map(|&id| {
        let name = cmd::quiet_output(Command::new("bpftool").args([
            "prog",
            "show",
            "id",
            &id.to_string(),
            "--json",
        ]))
        .and_then(|out| serde_json::from_str::<Value>(&out).ok())
        .and_then(|v| v.get("name")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("program {id}"));
        (id, name)
    })
    .collect()
}

/// What one program did during one storm.
pub struct HookCost {
    /// Index into `Measurements::cases`.
    pub case: usize,
    pub hook: String,
    pub runs: u64,
    pub run_ns: u64,
}

/// Per program, the runs and run time between two readings (programs that did not run are
/// left out).
pub fn deltas(
    case: usize,
    before: &BTreeMap<u32, ProgramStats>,
    after: &BTreeMap<u32, ProgramStats>,
    names: &BTreeMap<u32, String>,
) -> Vec<HookCost> {
    after
        .iter()
        .filter_map(|(id, a)| {
            let b = before.get(id).copied().unwrap_or_default();
            let runs = a.runs.saturating_sub(b.runs);
            (runs > 0).then(|| HookCost {
                case,
                hook: names
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| format!("program {id}")),
                runs,
                run_ns: a.run_ns.saturating_sub(b.run_ns),
            })
        })
        .collect()
}
