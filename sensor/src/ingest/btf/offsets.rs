//! Where each `KernelOffsets` field is in the kernel's structs, resolved from the BTF.

use sensor_common::{KernelOffsets, OFFSET_MISSING};

use super::{Btf, BtfError};

/// A kernel field whose offset could not be resolved; its offset is [`OFFSET_MISSING`].
#[derive(Clone, Debug)]
pub struct MissingField {
    /// The `KernelOffsets` field name.
    pub field: &'static str,
    pub reason: String,
}

/// Setter of one `KernelOffsets` field.
type FieldRef = fn(&mut KernelOffsets) -> &mut u32;

/// One row of [`FIELDS`]: `KernelOffsets` field, struct, path in the struct.
macro_rules! field {
    ($field:ident, $struct_name:literal, $path:expr) => {
        (stringify!($field), $struct_name, $path, |o| &mut o.$field)
    };
    ($field:ident[$i:literal], $struct_name:literal, $path:expr) => {
        (
            concat!(stringify!($field), "[", $i, "]"),
            $struct_name,
            $path,
            |o| &mut o.$field[$i],
        )
    };
}

/// Every `KernelOffsets` field and where it is in the kernel's structs.
pub(super) const FIELDS: &[(&str, &str, &str, FieldRef)] = &[
    field!(task_tgid, "task_struct", "tgid"),
    field!(task_real_parent, "task_struct", "real_parent"),
    field!(task_mm, "task_struct", "mm"),
    field!(task_exit_code, "task_struct", "exit_code"),
    field!(task_files, "task_struct", "files"),
    field!(task_start_boottime, "task_struct", "start_boottime"),
    field!(task_signal, "task_struct", "signal"),
    field!(signal_live, "signal_struct", "live"),
    field!(mm_arg_start, "mm_struct", "arg_start"),
    field!(mm_arg_end, "mm_struct", "arg_end"),
    field!(files_fdt, "files_struct", "fdt"),
    field!(fdt_max_fds, "fdtable", "max_fds"),
    field!(fdt_fd, "fdtable", "fd"),
    field!(file_private_data, "file", "private_data"),
    field!(socket_sk, "socket", "sk"),
    field!(sk_family, "sock", "__sk_common.skc_family"),
    field!(sk_daddr, "sock", "__sk_common.skc_daddr"),
    field!(sk_rcv_saddr, "sock", "__sk_common.skc_rcv_saddr"),
    field!(sk_dport, "sock", "__sk_common.skc_dport"),
    field!(sk_num, "sock", "__sk_common.skc_num"),
    field!(sk_v6_daddr, "sock", "__sk_common.skc_v6_daddr"),
    field!(sk_v6_rcv_saddr, "sock", "__sk_common.skc_v6_rcv_saddr"),
    field!(sk_peer_pid, "sock", "sk_peer_pid"),
    field!(sk_peer_cred, "sock", "sk_peer_cred"),
    // The pid in the task's own (first-level) namespace: `numbers` is a flexible array.
    field!(pid_first_nr, "pid", "numbers[0].nr"),
    // kuid_t is `struct { uid_t val; }`: its offset is the value's.
    field!(cred_uid, "cred", "uid"),
    field!(sk_protocol, "sock", "sk_protocol"),
    field!(mm_exe_file, "mm_struct", "exe_file"),
    field!(file_path_dentry, "file", "f_path.dentry"),
    field!(file_path_mnt, "file", "f_path.mnt"),
    field!(dentry_parent, "dentry", "d_parent"),
    field!(dentry_name, "dentry", "d_name.name"),
    field!(vfsmount_root, "vfsmount", "mnt_root"),
    field!(mount_mnt, "mount", "mnt"),
    field!(mount_parent, "mount", "mnt_parent"),
    field!(mount_mountpoint, "mount", "mnt_mountpoint"),
    field!(task_cgroups, "task_struct", "cgroups"),
    field!(css_cgroup, "cgroup_subsys_state", "cgroup"),
    field!(cgroup_kn, "cgroup", "kn"),
    field!(kn_name, "kernfs_node", "name"),
    // Renamed `__parent` in 6.15 (RCU-protected); `parent` before.
    field!(kn_parent, "kernfs_node", "__parent|parent"),
    field!(regs_arg[0], "pt_regs", REGS_ARGS[0]),
    field!(regs_arg[1], "pt_regs", REGS_ARGS[1]),
    field!(regs_arg[2], "pt_regs", REGS_ARGS[2]),
    field!(regs_arg[3], "pt_regs", REGS_ARGS[3]),
    field!(regs_arg[4], "pt_regs", REGS_ARGS[4]),
    field!(regs_arg[5], "pt_regs", REGS_ARGS[5]),
    field!(regs_nr, "pt_regs", REGS_NR),
    field!(unix_peer, "unix_sock", "peer"),
    field!(unix_addr, "unix_sock", "addr"),
    field!(unix_addr_len, "unix_address", "len"),
    field!(unix_addr_name, "unix_address", "name"),
    field!(sk_net, "sock", "__sk_common.skc_net.net"),
];

/// Where the syscall number is in `struct pt_regs`.
#[cfg(target_arch = "x86_64")]
const REGS_NR: &str = "orig_ax";
#[cfg(target_arch = "aarch64")]
const REGS_NR: &str = "syscallno";

/// Where the six syscall arguments are in `struct pt_regs` on this architecture.
#[cfg(target_arch = "x86_64")]
const REGS_ARGS: [&str; 6] = ["di", "si", "dx", "r10", "r8", "r9"];
#[cfg(target_arch = "aarch64")]
const REGS_ARGS: [&str; 6] = [
    "regs[0]", "regs[1]", "regs[2]", "regs[3]", "regs[4]", "regs[5]",
];

pub(super) fn all_missing() -> KernelOffsets {
    let m = OFFSET_MISSING;
    KernelOffsets {
        task_tgid: m,
        task_real_parent: m,
        task_mm: m,
        task_exit_code: m,
        task_files: m,
        task_start_boottime: m,
        task_signal: m,
        signal_live: m,
        mm_arg_start: m,
        mm_arg_end: m,
        files_fdt: m,
        fdt_max_fds: m,
        fdt_fd: m,
        file_private_data: m,
        socket_sk: m,
        sk_family: m,
        sk_daddr: m,
        sk_rcv_saddr: m,
        sk_dport: m,
        sk_num: m,
        sk_v6_daddr: m,
        sk_v6_rcv_saddr: m,
        sk_peer_pid: m,
        sk_peer_cred: m,
        pid_first_nr: m,
        cred_uid: m,
        sk_protocol: m,
        regs_arg: [m; 6],
        mm_exe_file: m,
        file_path_dentry: m,
        file_path_mnt: m,
        dentry_parent: m,
        dentry_name: m,
        vfsmount_root: m,
        mount_mnt: m,
        mount_parent: m,
        mount_mountpoint: m,
        task_cgroups: m,
        css_set_cgroup: m,
        css_set_is_css: 0,
        css_cgroup: m,
        cgroup_kn: m,
        kn_name: m,
        kn_parent: m,
        regs_nr: m,
        unix_peer: m,
        unix_addr: m,
        unix_addr_len: m,
        unix_addr_name: m,
        sk_net: m,
    }
}

/// Resolves every [`KernelOffsets`] field from `btf`. Fields not found are set to
/// [`OFFSET_MISSING`] and listed with the reason; the probes that need them count
/// `OffsetsMissing` instead of reading garbage.
pub fn resolve_offsets(btf: &Btf) -> (KernelOffsets, Vec<MissingField>) {
    let mut offsets = all_missing();
    let mut missing = Vec::new();
    for &(field, struct_name, paths, slot) in FIELDS {
        // `a|b`: the first path this kernel has (a field renamed between versions).
        let mut first_err = None;
        for path in paths.split('|') {
            match btf.member_offset(struct_name, path) {
                Ok(off) => {
                    *slot(&mut offsets) = off;
                    first_err = None;
                    break;
                }
                Err(e) => {
                    first_err.get_or_insert(format!("{struct_name}.{path}: {e}"));
                }
            }
        }
        if let Some(reason) = first_err {
            missing.push(MissingField { field, reason });
        }
    }
    // The task's cgroup: the memory controller's (where runtimes put each container on cgroup
    // v1 and v2 alike), else the v2 hierarchy's.
    let cgroup = btf
        .enum_value("cgroup_subsys_id", "memory_cgrp_id")
        .and_then(|k| {
            let k = u32::try_from(k).map_err(|_| BtfError::BadType("memory_cgrp_id".into()))?;
            btf.member_offset("css_set", &format!("subsys[{k}]"))
        })
        .map(|off| (off, 1))
        .or_else(|_| btf.member_offset("css_set", "dfl_cgrp").map(|off| (off, 0)));
    match cgroup {
        Ok((off, is_css)) => {
            offsets.css_set_cgroup = off;
            offsets.css_set_is_css = is_css;
        }
        Err(e) => missing.push(MissingField {
            field: "css_set_cgroup",
            reason: format!("css_set.subsys[memory_cgrp_id] or dfl_cgrp: {e}"),
        }),
    }
    (offsets, missing)
}
