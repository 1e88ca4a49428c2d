//! Process lifecycle: exec (which also makes runtime roots), fork (descendants), exit.
use aya_ebpf::{
    EbpfContext as _,
    helpers::bpf_probe_read_kernel_str_bytes,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use sensor_common::{EventKind, ExecData, ExitData, ForkData, StatReason, exec_flags, track};

use crate::{
    helpers::{
        config, count, current_task, current_tgid, read_argv, read_at, reserve, tp_field, track,
        unpack,
    },
    maps::{RUNTIME_NAMES, TRACKED},
};

/// Flags a process keeps from its parent: only membership of the tree, not the parent's role.
const INHERITED: u32 = !(track::RUNTIME | track::API_SERVER | track::SEEDED | track::API_CLIENT);

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    if crate::helpers::idle() {
        return 0;
    }
    let _ = try_exec(&ctx);
    0
}

fn try_exec(ctx: &TracePointContext) -> Option<()> {
    let cfg = config()?;
    let tgid = current_tgid();
    if tgid == cfg.self_tgid {
        return None;
    }
    // SAFETY: values copied out at once.
    let tracked = unsafe { TRACKED.get(&tgid) }.copied();
    let comm = aya_ebpf::helpers::bpf_get_current_comm().ok()?;
    let named = unsafe { RUNTIME_NAMES.get(&comm) }.copied();
    if tracked.is_none() && named.is_none() {
        return None;
    }
    let (mut flags, depth) = match tracked {
        Some(t) => (t.flags, t.depth),
        None => (0, 0),
    };
    if let Some(n) = named {
        flags |= track::RUNTIME | n.flags;
        crate::helpers::runtime_epoch_bump();
    } else {
        // A runtime that exec'd into something else is no longer a runtime, but what it runs
        // now is still part of its tree.
        if flags & track::RUNTIME != 0 {
            flags |= track::DESCENDANT;
        }
        flags &= !(track::RUNTIME | track::API_SERVER);
    }
    if tracked.map(|t| t.flags) != Some(flags) {
        track(tgid, flags, depth);
    }

    // Every field is written below, or is a byte array the reader bounds by the lengths
    // written here.
    let mut r = reserve::<ExecData>(EventKind::Exec, flags)?;
    let d = &mut r.event().data;
    let o = &cfg.offsets;
    let task = current_task();
    d.ppid = read_at::<u64>(task, o.task_real_parent)
        .and_then(|p| read_at::<u32>(p, o.task_tgid))
        .unwrap_or(0);
    // Tracepoint record fields at the offsets of its format (stable since 3.x).
    d.old_pid = tp_field::<u32>(ctx, 16);
    d.start_time_ns = read_at::<u64>(task, o.task_start_boottime).unwrap_or(0);
    d.truncated = 0;
    d._pad = 0;

    let loc: u32 = tp_field::<u32>(ctx, 8);
    let src = (ctx.as_ptr() as u64 + (loc & 0xffff) as u64) as *const u8;
    d.filename_len = match unsafe { bpf_probe_read_kernel_str_bytes(src, &mut d.filename) } {
        Ok(s) => s.len() as u16,
        Err(_) => {
            count(StatReason::PathReadFailed);
            0
        }
    };
    if (loc >> 16) as usize > d.filename.len() {
        d.truncated |= exec_flags::FILENAME_TRUNCATED;
    }

    d.argv_len = 0;
    match unpack(read_argv(task, o, &mut d.argv)) {
        Some((n, complete)) => {
            d.argv_len = n;
            if !complete {
                d.truncated |= exec_flags::ARGV_TRUNCATED;
            }
        }
        None => {
            d.truncated |= exec_flags::ARGV_UNREADABLE;
            count(StatReason::ArgvReadFailed);
        }
    }
    r.submit();
    Some(())
}

#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> u32 {
    if crate::helpers::idle() {
        return 0;
    }
    let _ = try_fork(&ctx);
    0
}

fn try_fork(ctx: &BtfTracePointContext) -> Option<()> {
    let cfg = config()?;
    let parent_tgid = current_tgid();
    if parent_tgid == cfg.self_tgid {
        return None;
    }
    let parent = unsafe { TRACKED.get(&parent_tgid) }.copied()?;
    if parent.flags & (track::RUNTIME | track::DESCENDANT) == 0 {
        return None; // an API client's children are not part of a runtime tree
    }
    let child: u64 = ctx.arg(1);
    let o = &cfg.offsets;
    let child_tgid: u32 = read_at(child, o.task_tgid)?;
    if child_tgid == parent_tgid {
        return None; // a new thread, not a new process
    }
    let flags = (parent.flags & INHERITED) | track::DESCENDANT;
    track(child_tgid, flags, parent.depth.saturating_add(1));

    let mut r = reserve::<ForkData>(EventKind::Fork, parent.flags)?;
    let d = &mut r.event().data;
    d.parent_pid = parent_tgid;
    d.child_pid = child_tgid;
    d.child_start_time_ns = read_at::<u64>(child, o.task_start_boottime).unwrap_or(0);
    r.submit();
    Some(())
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    if crate::helpers::idle() {
        return 0;
    }
    let _ = try_exit();
    0
}

fn try_exit() -> Option<()> {
    let cfg = config()?;
    let tgid = current_tgid();
    let t = unsafe { TRACKED.get(&tgid) }.copied()?;
    let o = &cfg.offsets;
    let task = current_task();
    // Only the last thread of the group ends the process.
    let live: Option<i32> =
        read_at::<u64>(task, o.task_signal).and_then(|s| read_at(s, o.signal_live));
    let last = match live {
        Some(n) => n == 0,
        None => {
            let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
            pid_tgid as u32 == tgid
        }
    };
    if !last {
        return None;
    }
    let _ = TRACKED.remove(&tgid);
    crate::helpers::tracked_changed();
    let mut r = reserve::<ExitData>(EventKind::Exit, t.flags)?;
    let d = &mut r.event().data;
    d.exit_code = read_at::<u32>(task, o.task_exit_code).unwrap_or(0);
    d._pad = 0;
    d.start_time_ns = read_at::<u64>(task, o.task_start_boottime).unwrap_or(0);
    r.submit();
    Some(())
}
