//! Kernel events to records: the process table that enriches them, and the conversion.
use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use sensor_common::{
    AF_INET, AF_INET6, AF_UNIX, ApiData, EventHeader, UnixConnectData, client_flags,
    connect_result, exec_flags, file_op, track,
};

use crate::{
    ingest::decode::KernelEvent,
    output::record::*,
    process::proc::{self, split_argv},
    proto::{dns, http},
};

/// What the sensor knows of a tracked process.
#[derive(Clone, Debug, Default)]
pub struct ProcEntry {
    pub ppid: u32,
    pub exe: Option<String>,
    pub container_id: Option<String>,
    pub start_ns: u64,
    /// What the kernel last reported of it (its exec, or its parent's at fork): the file
    /// events read outside the kernel (`ingest::fanotify`) carry only a pid.
    pub track_flags: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub cgroup_id: u64,
}

/// How long an exited process stays known to `ProcessTable::lookup`: fanotify reports a file
/// closed by a process that may have exited (and been removed) before the event was read.
const EXITED_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
/// Exited processes kept for `EXITED_GRACE` at most.
const EXITED_CAP: usize = 4096;

/// Processes in runtime trees, by pid. Bounded: beyond `cap` new entries are not kept (counted).
pub struct ProcessTable {
    procs: HashMap<u32, ProcEntry>,
    cap: usize,
    pub overflow: u64,
    /// Removed entries, newest last, for `lookup` (see `EXITED_GRACE`).
    exited: VecDeque<(u32, ProcEntry, std::time::Instant)>,
}

impl ProcessTable {
    pub fn new(cap: usize) -> Self {
        Self {
            procs: HashMap::new(),
            cap,
            overflow: 0,
            exited: VecDeque::new(),
        }
    }

    pub fn insert(&mut self, pid: u32, e: ProcEntry) {
        if self.procs.len() >= self.cap && !self.procs.contains_key(&pid) {
            self.overflow += 1;
            return;
        }
        self.procs.insert(pid, e);
    }

    pub fn get(&self, pid: u32) -> Option<&ProcEntry> {
        self.procs.get(&pid)
    }

    pub fn remove(&mut self, pid: u32) -> Option<ProcEntry> {
        let e = self.procs.remove(&pid)?;
        let now = std::time::Instant::now();
        while self.exited.len() >= EXITED_CAP
            || self
                .exited
                .front()
                .is_some_and(|(_, _, t)| now.duration_since(*t) > EXITED_GRACE)
        {
            self.exited.pop_front();
        }
        self.exited.push_back((pid, e.clone(), now));
        Some(e)
    }

    /// A live process, else one that exited within `EXITED_GRACE` (the latest of that pid).
    pub fn lookup(&self, pid: u32) -> Option<&ProcEntry> {
        self.procs.get(&pid).or_else(|| {
            let now = std::time::Instant::now();
            self.exited
                .iter()
                .rev()
                .take_while(|(_, _, t)| now.duration_since(*t) <= EXITED_GRACE)
                .find(|(p, _, _)| *p == pid)
                .map(|(_, e, _)| e)
        })
    }
}

/// An API client as the kernel described it when it connected to a runtime's socket: known
/// even when the client has exited before its request is read (a short-lived curl).
#[derive(Clone, Debug, Default)]
pub struct KernelClient {
    pub start_ns: u64,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub argv: Vec<String>,
    /// The cgroup path (memory controller, else v2), e.g. `/docker/<id>`.
    pub cgroup: Option<String>,
    pub cgroup_id: u64,
    /// Parent chain, read from /proc at the connect (when the parent most likely still lives).
    pub ancestors: Vec<Ancestor>,
}

/// Clients by pid, the latest connect of each; bounded, the oldest forgotten first.
#[derive(Default)]
pub struct ClientTable {
    by_pid: HashMap<u32, KernelClient>,
    order: VecDeque<u32>,
}

impl ClientTable {
    const CAP: usize = 4096;

    pub fn insert(&mut self, pid: u32, c: KernelClient) {
        if self.by_pid.insert(pid, c).is_none() {
            self.order.push_back(pid);
        }
        while self.order.len() > Self::CAP {
            if let Some(old) = self.order.pop_front() {
                self.by_pid.remove(&old);
            }
        }
    }

    pub fn get(&self, pid: u32) -> Option<&KernelClient> {
        self.by_pid.get(&pid)
    }
}

/// A path captured in the kernel as NUL-separated components, leaf first (see
/// `sensor_common::UnixConnectData::exe`), as `/a/b/c`.
pub fn join_components(buf: &[u8]) -> String {
    let parts: Vec<String> = buf
        .split(|b| *b == 0)
        .filter(|c| !c.is_empty())
        .map(lossy)
        .collect();
    let mut out = String::new();
    for p in parts.iter().rev() {
        out.push('/');
        out.push_str(p);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Whether a path names a build file, as the kernel program decides which files' writes to
/// capture (`probes/file.rs`): it ends in `Dockerfile`, `dockerfile` or `Containerfile`.
pub fn is_build_file(path: &str) -> bool {
    ["Dockerfile", "dockerfile", "Containerfile"]
        .iter()
        .any(|p| path.ends_with(p))
}

/// The first `len` bytes of a fixed kernel buffer; a length past the buffer (a malformed
/// record) is cut to the buffer.
pub(crate) fn captured(buf: &[u8], len: impl Into<usize>) -> &[u8] {
    &buf[..len.into().min(buf.len())]
}

pub fn comm_str(c: &[u8; 16]) -> String {
    let end = c.iter().position(|b| *b == 0).unwrap_or(c.len());
    lossy(&c[..end])
}

fn role(flags: u32) -> String {
    if flags & track::RUNTIME != 0 {
        "runtime"
    } else if flags & track::DESCENDANT != 0 {
        "descendant"
    } else if flags & track::API_CLIENT != 0 {
        "api_client"
    } else {
        "other"
    }
    .to_string()
}

pub fn ip_string(family: u16, a: &[u8; 16]) -> String {
    if family == AF_INET6 {
        let v6 = Ipv6Addr::from(*a);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4).to_string(),
            None => v6.to_string(),
        }
    } else {
        Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()
    }
}

fn family_name(f: u16) -> String {
    match f {
        AF_INET => "ipv4",
        AF_INET6 => "ipv6",
        AF_UNIX => "unix",
        _ => "unknown",
    }
    .to_string()
}

/// Converts kernel events to record bodies, keeping the process table current.
pub struct Enricher {
    pub table: ProcessTable,
    /// Container id by cgroup v2 id: one /proc read per cgroup instead of one per exec
    /// (bounded; cleared when full). Not used on cgroup v1, where every task reports id 1.
    cgroup_containers: HashMap<u64, Option<String>>,
    self_pid: u32,
    /// API clients described by the kernel at connect.
    pub clients: ClientTable,
    /// The build file each process last opened for writing (its content events carry only the
    /// fd). Bounded: cleared when full.
    build_files: HashMap<u32, String>,
    /// Replace build-arg values in command lines and `POST /build` queries by `<redacted>`
    /// (unless `--show-build-args`): raw records must not carry what the build records hide.
    pub redact_build_args: bool,
}

impl Enricher {
    pub fn new(cap: usize) -> Self {
        Self {
            table: ProcessTable::new(cap),
            cgroup_containers: HashMap::new(),
            clients: ClientTable::default(),
            build_files: HashMap::new(),
            self_pid: std::process::id(),
            redact_build_args: true,
        }
    }

    fn redact_argv(&self, argv: Vec<String>) -> Vec<String> {
        if !self.redact_build_args {
            return argv;
        }
        crate::process::redact::redact_exec_argv(&argv).unwrap_or(argv)
    }

    /// The container a process is in, from its cgroup (cached by cgroup v2 id).
    fn container_of_cgroup(&mut self, cgroup_id: u64, pid: u32) -> Option<String> {
        if cgroup_id <= 1 {
            return proc::container_id_of(pid);
        }
        if let Some(c) = self.cgroup_containers.get(&cgroup_id) {
            return c.clone();
        }
        let c = proc::container_id_of(pid);
        if self.cgroup_containers.len() >= 16384 {
            self.cgroup_containers.clear();
        }
        self.cgroup_containers.insert(cgroup_id, c.clone());
        c
    }

    fn process_ref(&self, h: &EventHeader) -> ProcessRef {
        let e = self.table.get(h.pid);
        // API clients are not in the table (not in a runtime tree): the kernel described them
        // at connect; /proc while they are alive otherwise.
        let client = (h.track_flags & track::API_CLIENT != 0)
            .then(|| self.clients.get(h.pid))
            .flatten();
        ProcessRef {
            pid: h.pid,
            tid: if h.tid != h.pid { h.tid } else { 0 },
            ppid: e.map(|e| e.ppid).unwrap_or_else(|| match client {
                Some(c) => c.ppid,
                None if h.track_flags & track::API_CLIENT != 0 => {
                    proc::read_proc(h.pid).map(|p| p.ppid).unwrap_or(0)
                }
                None => 0,
            }),
            uid: h.uid,
            gid: h.gid,
            comm: comm_str(&h.comm),
            exe: e
                .and_then(|e| e.exe.clone())
                .or_else(|| client.and_then(|c| c.exe.clone())),
            cgroup_id: h.cgroup_id,
            container_id: e.and_then(|e| e.container_id.clone()),
            pod: e
                .and_then(|e| e.container_id.as_deref())
                .and_then(proc::pod_of_container),
            role: role(h.track_flags),
        }
    }

    /// Record a process found in /proc at start, with the flags it was tracked with.
    pub fn seed(&mut self, p: &proc::ProcInfo, track_flags: u32) {
        self.table.insert(
            p.pid,
            ProcEntry {
                ppid: p.ppid,
                exe: p.exe.clone(),
                container_id: proc::container_id_of(p.pid),
                start_ns: 0,
                track_flags,
                uid: p.uid,
                gid: p.gid,
                comm: p.comm.clone(),
                cgroup_id: 0,
            },
        );
    }

    /// The process of a file event read outside the kernel (fanotify: a pid only), when it is
    /// tracked: in a runtime tree (also one that exited moments ago, see `EXITED_GRACE`), or
    /// an API client the kernel described at its connect. `None` for every other process.
    pub fn tracked_process(&self, pid: u32) -> Option<ProcessRef> {
        if let Some(e) = self.table.lookup(pid) {
            return Some(ProcessRef {
                pid,
                ppid: e.ppid,
                uid: e.uid,
                gid: e.gid,
                comm: e.comm.clone(),
                exe: e.exe.clone(),
                cgroup_id: e.cgroup_id,
                container_id: e.container_id.clone(),
                pod: e.container_id.as_deref().and_then(proc::pod_of_container),
                role: role(e.track_flags),
                ..Default::default()
            });
        }
        let c = self.clients.get(pid)?;
        Some(ProcessRef {
            pid,
            ppid: c.ppid,
            uid: c.uid,
            gid: 0,
            comm: c.comm.clone(),
            exe: c.exe.clone(),
            cgroup_id: c.cgroup_id,
            role: role(track::API_CLIENT),
            ..Default::default()
        })
    }

    /// The body for one kernel event; `None` when it produces no record (counted by the caller
    /// as filtered, e.g. a request from the sensor itself).
    pub fn convert(&mut self, ev: &KernelEvent) -> Option<Body> {
        match ev {
            KernelEvent::Exec(e) => {
                let d = &e.data;
                let filename = lossy(captured(&d.filename, d.filename_len));
                let argv = self.redact_argv(split_argv(captured(&d.argv, d.argv_len)));
                let pid = e.header.pid;
                // The cgroup is read now, while the process is alive (best effort).
                let container_id = self
                    .container_of_cgroup(e.header.cgroup_id, pid)
                    .or_else(|| self.table.get(d.ppid).and_then(|p| p.container_id.clone()));
                let exe = Some(filename.clone());
                if d.old_pid != pid && d.old_pid != 0 {
                    self.table.remove(d.old_pid);
                }
                self.table.insert(
                    pid,
                    ProcEntry {
                        ppid: d.ppid,
                        exe,
                        container_id,
                        start_ns: d.start_time_ns,
                        track_flags: e.header.track_flags,
                        uid: e.header.uid,
                        gid: e.header.gid,
                        comm: comm_str(&e.header.comm),
                        cgroup_id: e.header.cgroup_id,
                    },
                );
                Some(Body::ProcessExec(ProcessExec {
                    process: self.process_ref(&e.header),
                    filename,
                    argv,
                    argv_truncated: d.truncated
                        & (exec_flags::ARGV_TRUNCATED | exec_flags::ARGV_UNREADABLE)
                        != 0,
                    start_time_ns: d.start_time_ns,
                }))
            }
            KernelEvent::Fork(e) => {
                let d = &e.data;
                let parent = self.table.get(d.parent_pid).cloned().unwrap_or_default();
                self.table.insert(
                    d.child_pid,
                    ProcEntry {
                        ppid: d.parent_pid,
                        start_ns: d.child_start_time_ns,
                        // The kernel tracks only a runtime's or a descendant's children, as
                        // descendants (`probes/process.rs`); the rest is the parent's, as at fork.
                        track_flags: track::DESCENDANT,
                        uid: e.header.uid,
                        gid: e.header.gid,
                        comm: comm_str(&e.header.comm),
                        cgroup_id: e.header.cgroup_id,
                        ..parent
                    },
                );
                Some(Body::ProcessFork(ProcessFork {
                    process: self.process_ref(&e.header),
                    child_pid: d.child_pid,
                    child_start_time_ns: d.child_start_time_ns,
                }))
            }
            KernelEvent::Exit(e) => {
                let process = self.process_ref(&e.header);
                let entry = self.table.remove(e.header.pid);
                let code = e.data.exit_code;
                let (exit_code, signal) = if code & 0x7f == 0 {
                    (Some(((code >> 8) & 0xff) as i32), None)
                } else {
                    (None, Some((code & 0x7f) as i32))
                };
                let duration_ms = entry
                    .filter(|p| p.start_ns != 0 && e.header.ts_ns > p.start_ns)
                    .map(|p| (e.header.ts_ns - p.start_ns) / 1_000_000);
                Some(Body::ProcessExit(ProcessExit {
                    process,
                    exit_code,
                    signal,
                    duration_ms,
                }))
            }
            KernelEvent::TcpConnect(e) => {
                let d = &e.data;
                Some(Body::Connect(Connect {
                    process: self.process_ref(&e.header),
                    protocol: "tcp".into(),
                    family: family_name(d.family),
                    src_addr: Some(ip_string(d.family, &d.saddr)),
                    src_port: Some(d.sport),
                    dst_addr: Some(ip_string(d.family, &d.daddr)),
                    dst_port: Some(d.dport),
                    path: None,
                    result: if d.result == connect_result::ESTABLISHED {
                        "established"
                    } else {
                        "failed"
                    }
                    .into(),
                    latency_us: e.header.ts_ns.checked_sub(d.start_ns).map(|ns| ns / 1000),
                }))
            }
            KernelEvent::TcpAccept(e) => {
                let d = &e.data;
                Some(Body::Accept(Accept {
                    process: self.process_ref(&e.header),
                    family: family_name(d.family),
                    local_addr: ip_string(d.family, &d.saddr),
                    local_port: d.sport,
                    peer_addr: ip_string(d.family, &d.daddr),
                    peer_port: d.dport,
                }))
            }
            KernelEvent::UnixConnect(e) => {
                let d = &e.data;
                if d.client & client_flags::CAPTURED != 0 {
                    let c = self.kernel_client(&e.header, d);
                    self.clients.insert(e.header.pid, c);
                }
                let name = lossy(captured(&d.path, d.path_len));
                let path = if d.abstract_ns != 0 {
                    format!("@{name}")
                } else {
                    name
                };
                Some(Body::Connect(Connect {
                    process: self.process_ref(&e.header),
                    protocol: "unix".into(),
                    family: "unix".into(),
                    src_addr: None,
                    src_port: None,
                    dst_addr: None,
                    dst_port: None,
                    path: Some(path),
                    result: "attempted".into(),
                    latency_us: None,
                }))
            }
            KernelEvent::DnsSend(e) => {
                let d = &e.data;
                let q = dns::parse_query(captured(&d.payload, d.len));
                Some(Body::DnsQuery(DnsQuery {
                    process: self.process_ref(&e.header),
                    server_addr: ip_string(d.family, &d.daddr),
                    server_port: d.dport,
                    query_name: q.as_ref().map(|q| q.0.clone()),
                    query_type: q.map(|q| q.1),
                }))
            }
            KernelEvent::DnsResponse(e) => {
                let d = &e.data;
                let r = dns::parse_response(captured(&d.payload, d.len))?;
                Some(Body::DnsResponse(DnsResponse {
                    process: self.process_ref(&e.header),
                    server_addr: (d.family != 0).then(|| ip_string(d.family, &d.daddr)),
                    server_port: (d.family != 0).then_some(d.dport),
                    query_name: r.name,
                    query_type: r.qtype,
                    rcode: r.rcode,
                    addrs: r.addrs.iter().map(|a| a.to_string()).collect(),
                }))
            }
            KernelEvent::FileWrite(e) => {
                let d = &e.data;
                let path = lossy(captured(&d.path, d.path_len));
                if d.op == file_op::OPEN_WRITE && is_build_file(&path) {
                    if self.build_files.len() >= 4096 {
                        self.build_files.clear();
                    }
                    self.build_files.insert(e.header.pid, path);
                }
                Some(Body::FileWrite(FileWrite {
                    process: self.process_ref(&e.header),
                    op: if d.op == file_op::RENAME {
                        "rename"
                    } else {
                        "open_write"
                    }
                    .into(),
                    path: lossy(captured(&d.path, d.path_len)),
                    path_truncated: d.truncated != 0,
                    flags: Some(d.flags),
                }))
            }
            KernelEvent::FileContent(e) => {
                let d = &e.data;
                let offset = u64::from(d.chunk) * sensor_common::FILE_CONTENT_CAP as u64;
                let expected = u64::from(d.write_len)
                    .saturating_sub(offset)
                    .min(sensor_common::FILE_CONTENT_CAP as u64);
                Some(Body::FileContent(FileContent {
                    process: self.process_ref(&e.header),
                    path: self.build_files.get(&e.header.pid).cloned(),
                    fd: d.fd,
                    offset,
                    write_len: d.write_len.into(),
                    data: lossy(captured(&d.data, d.len)),
                    truncated: u64::from(d.len) < expected,
                }))
            }
            KernelEvent::ApiRequest(e) => self.api_request(&e.header, &e.data),
            KernelEvent::ApiResponse(e) => {
                let d = &e.data;
                Some(Body::ApiResponse(ApiResponse {
                    process: self.process_ref(&e.header),
                    fd: d.fd,
                    data: lossy(captured(&d.data, d.len)),
                    write_len: d.read_len as u64,
                    truncated: d.read_len as usize > d.len as usize,
                }))
            }
        }
    }

    /// The client identity the kernel captured at a connect to a runtime socket.
    fn kernel_client(&self, h: &EventHeader, d: &UnixConnectData) -> KernelClient {
        let exe = (d.client & client_flags::EXE_UNREADABLE == 0 && d.exe_len > 0).then(|| {
            let p = join_components(captured(&d.exe, d.exe_len));
            if d.client & client_flags::EXE_TRUNCATED != 0 {
                format!("...{p}")
            } else {
                p
            }
        });
        let cgroup = (d.cgroup_len > 0).then(|| join_components(captured(&d.cgroup, d.cgroup_len)));
        KernelClient {
            start_ns: d.start_time_ns,
            ppid: d.ppid,
            uid: h.uid,
            comm: comm_str(&h.comm),
            exe,
            argv: split_argv(captured(&d.argv, d.argv_len)),
            cgroup,
            cgroup_id: h.cgroup_id,
            ancestors: if d.ppid != 0 {
                proc::ancestors_from(d.ppid, 8)
            } else {
                Vec::new()
            },
        }
    }

    /// A local (unix socket) API client: what the kernel captured at its connect, else /proc
    /// while it is alive.
    fn api_client_local(&self, pid: u32, uid: u32) -> ApiClient {
        match self.clients.get(pid).filter(|_| pid != 0) {
            Some(c) => ApiClient {
                transport: "unix".into(),
                pid: Some(pid),
                uid: Some(if uid != u32::MAX { uid } else { c.uid }),
                user: proc::user_name(if uid != u32::MAX { uid } else { c.uid }),
                exe: c.exe.clone(),
                argv: c.argv.clone(),
                ancestors: c.ancestors.clone(),
                comm: Some(c.comm.clone()),
                start_time_ns: (c.start_ns != 0).then_some(c.start_ns),
                cgroup_id: (c.cgroup_id != 0).then_some(c.cgroup_id),
                cgroup: c.cgroup.clone(),
                ..Default::default()
            },
            None => api_client_local(pid, uid),
        }
    }

    fn api_request(&mut self, h: &EventHeader, d: &ApiData) -> Option<Body> {
        let data = captured(&d.data, d.len);
        // A request whose first byte an earlier one-byte read took (see ApiData::prefix).
        let joined;
        let buf = if d.prefix != 0 {
            joined = [&[d.prefix as u8][..], data].concat();
            &joined[..]
        } else {
            data
        };
        let head = http::parse_request(buf)?;
        let (api_version, endpoint) = http::split_api_version(&head.path);
        let client = match d.peer_family {
            AF_UNIX => {
                if d.peer_pid == self.self_pid {
                    return None; // the sensor's own queries to the daemon
                }
                self.api_client_local(d.peer_pid, d.peer_uid)
            }
            AF_INET | AF_INET6 => ApiClient {
                transport: "tcp".into(),
                addr: Some(ip_string(d.peer_family, &d.peer_addr)),
                port: Some(d.peer_port),
                listener: Some(format!(
                    "{}:{}",
                    ip_string(d.peer_family, &d.local_addr),
                    d.local_port
                )),
                ..Default::default()
            },
            _ => ApiClient {
                transport: "unknown".into(),
                ..Default::default()
            },
        };
        let mut client = client;
        client.argv = self.redact_argv(client.argv);
        let query = match head.query {
            Some(q) if self.redact_build_args => {
                Some(crate::process::redact::redact_buildargs_in(&q))
            }
            q => q,
        };
        Some(Body::ApiRequest(ApiRequest {
            process: self.process_ref(h),
            fd: d.fd,
            method: head.method,
            path: head.path,
            endpoint,
            api_version,
            query,
            user_agent: head.user_agent,
            content_type: head.content_type,
            content_length: head.content_length,
            header_names: head.header_names,
            truncated: head.truncated,
            client,
        }))
    }
}

/// A local (unix socket) API client, described from /proc while it is alive.
pub fn api_client_local(pid: u32, uid: u32) -> ApiClient {
    let info = if pid != 0 { proc::read_proc(pid) } else { None };
    let uid = if uid != u32::MAX {
        Some(uid)
    } else {
        info.as_ref().map(|p| p.uid)
    };
    ApiClient {
        transport: "unix".into(),
        pid: (pid != 0).then_some(pid),
        uid,
        user: uid.and_then(proc::user_name),
        exe: info.as_ref().and_then(|p| p.exe.clone()),
        argv: info.as_ref().map(|p| p.argv.clone()).unwrap_or_default(),
        ancestors: if pid != 0 {
            proc::ancestors(pid, 8)
        } else {
            Vec::new()
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_strings() {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[10, 231, 1, 2]);
        assert_eq!(ip_string(AF_INET, &a), "10.231.1.2");
        let v6: [u8; 16] = "::ffff:127.0.0.1".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(ip_string(AF_INET6, &v6), "127.0.0.1");
        let v6: [u8; 16] = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(ip_string(AF_INET6, &v6), "fd00::1");
    }

    #[test]
    fn table_is_bounded_and_counts_overflow() {
        let mut t = ProcessTable::new(2);
        for pid in 1..=3 {
            t.insert(pid, ProcEntry::default());
        }
        assert_eq!(t.procs.len(), 2);
        assert_eq!(t.overflow, 1);
        t.insert(
            1,
            ProcEntry {
                ppid: 9,
                ..Default::default()
            },
        );
        assert_eq!(t.get(1).unwrap().ppid, 9);
    }

    #[test]
    fn file_event_processes_are_known_through_fork_and_shortly_after_exit() {
        let mut e = Enricher::new(8);
        e.seed(
            &proc::ProcInfo {
                pid: 10,
                comm: "dockerd".into(),
                ..Default::default()
            },
            track::RUNTIME | track::SEEDED,
        );
        let mut fork =
            <sensor_common::Event<sensor_common::ForkData> as zerocopy::FromZeros>::new_zeroed();
        fork.header.pid = 10;
        fork.header.uid = 7;
        fork.header.comm[..7].copy_from_slice(b"dockerd");
        fork.data.parent_pid = 10;
        fork.data.child_pid = 11;
        e.convert(&KernelEvent::Fork(fork));
        assert_eq!(e.tracked_process(10).unwrap().role, "runtime");
        let child = e.tracked_process(11).unwrap();
        assert_eq!(
            (child.role.as_str(), child.ppid, child.uid),
            ("descendant", 10, 7)
        );
        assert_eq!(child.comm, "dockerd");
        let mut exit =
            <sensor_common::Event<sensor_common::ExitData> as zerocopy::FromZeros>::new_zeroed();
        exit.header.pid = 11;
        e.convert(&KernelEvent::Exit(exit));
        assert!(e.table.get(11).is_none());
        assert_eq!(e.tracked_process(11).unwrap().role, "descendant");
        assert!(e.tracked_process(12).is_none());
    }

    #[test]
    fn comm_with_bad_bytes() {
        let mut c = [0u8; 16];
        c[..3].copy_from_slice(b"a\xffb");
        assert_eq!(comm_str(&c), "a\u{FFFD}b");
    }

    #[test]
    fn request_split_by_a_one_byte_read_is_joined() {
        let mut ev = <sensor_common::Event<ApiData> as zerocopy::FromZeros>::new_zeroed();
        ev.header.kind = sensor_common::EventKind::ApiRequest as u32;
        ev.header.pid = 1;
        let rest = b"OST /v1.41/build?t=a%3A1 HTTP/1.1\r\nUser-Agent: x\r\n\r\n";
        ev.data.data[..rest.len()].copy_from_slice(rest);
        ev.data.len = rest.len() as u16;
        ev.data.read_len = rest.len() as u32;
        ev.data.prefix = b'P' as u32;
        let mut e = Enricher::new(8);
        match e.convert(&KernelEvent::ApiRequest(ev)) {
            Some(Body::ApiRequest(r)) => {
                assert_eq!(r.method, "POST");
                assert_eq!(r.endpoint, "/build");
            }
            other => panic!("{other:?}"),
        }
    }
}
