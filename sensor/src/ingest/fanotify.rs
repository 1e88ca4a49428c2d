//! File events without a syscall hook (`sensor run --file-events=fanotify`): the kernel's
//! fanotify reports, per filesystem, each file closed after it was opened for writing
//! (`FAN_CLOSE_WRITE`) and each name a file was renamed to (`FAN_MOVED_TO`), with the
//! writer's pid. Processes the sensor does not track pay only for their own writes' closes
//! (fsnotify queues one small event, merged with an identical queued one); their reads and
//! read-only opens cost nothing, and no program runs on their syscalls.
//!
//! Two groups:
//! - fd mode, `FAN_CLOSE_WRITE`: each event carries an fd of the file, opened by the kernel in
//!   the sensor. A tracked writer's file gives `file_write` (op `close_write`, the path the fd
//!   links to); a build file's bytes (up to 16 KiB) are read from that fd into the same
//!   `file_content` the kernel capture produces, so the Dockerfile engine sees no difference.
//!   A runtime's download of a remote context (`remote_context`: a file `context` alone in its
//!   directory) gives the build files inside the tarball, each as `<tarball>!/<member>`.
//!   The fd is always closed, also for untracked writers.
//! - FID mode (`FAN_REPORT_DFID_NAME`), `FAN_MOVED_TO`: the new name's directory as a file
//!   handle plus the name; the directory is opened with `open_by_handle_at` against a
//!   directory of that filesystem and joined with the name (op `rename`).
//!
//! Marks are `FAN_MARK_FILESYSTEM` on the filesystems holding the runtimes' data and temp
//! directories and the root (one per fsid). Writes inside containers (overlayfs) reach the
//! backing filesystem's mark: overlayfs writes its upper file there (checked on Linux 6.18);
//! the close event's path is then the file's path inside the container's root (the upper
//! directory is a private mount: `/usr/local/bin/x`), a rename's the host path of the upper
//! directory.
use std::{
    collections::{BTreeMap, HashMap},
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use sensor_common::{FILE_CONTENT_CAP, FILE_CONTENT_CHUNKS};
use thiserror::Error;

use super::remote_context;
use crate::output::record::{Body, FileContent, FileWrite, ProcessRef};

/// Directories whose filesystems are marked: the runtimes' data (dockerd, containerd,
/// containers-storage for buildah/podman), temp dirs (the legacy builder's context) and the root.
pub const WATCHED_DIRS: &[&str] = &[
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/containers",
    "/tmp",
    "/var/tmp",
    "/",
];

/// Bytes of a build file read at its close: what the kernel capture takes of one write
/// (8 chunks of 2 KiB).
pub const CONTENT_CAP: usize = FILE_CONTENT_CAP * FILE_CONTENT_CHUNKS;

/// One read of a group: small enough that the fds of one buffer (one per event in fd mode,
/// 24 bytes each) stay far below the open-file limit.
const READ_BUF: usize = 8192;
/// Bytes of `struct fanotify_event_metadata`.
const METADATA_LEN: usize = 24;

#[derive(Debug, Error)]
pub enum FanotifyError {
    #[error("fanotify_init: {0} (needs CAP_SYS_ADMIN and a kernel with CONFIG_FANOTIFY)")]
    Init(#[source] io::Error),
    #[error("no filesystem could be marked for file events: {0}")]
    NoMark(String),
}

/// A file event, its pid not yet looked up (its fd, if any, closes when it is dropped).
pub struct RawEvent {
    pub pid: u32,
    fd: Option<OwnedFd>,
    dir: Option<DirName>,
}

/// `FAN_EVENT_INFO_TYPE_DFID_NAME`: the directory's handle and the entry's name.
#[derive(Debug, PartialEq)]
pub struct DirName {
    pub fsid: [i32; 2],
    pub handle_type: i32,
    pub handle: Vec<u8>,
    pub name: Vec<u8>,
}

/// One event record as the kernel lays it out, before its fd is owned.
#[derive(Debug, PartialEq)]
pub struct Parsed {
    pub pid: u32,
    pub mask: u64,
    pub fd: i32,
    pub dir: Option<DirName>,
}

/// Reasons a file event was lost, as `sensor_stats.drops` names them.
pub mod loss {
    /// The kernel's queue was full (`FAN_Q_OVERFLOW`): events were dropped before the read.
    pub const QUEUE_OVERFLOW: &str = "fanotify_queue_overflow";
    /// read(2) of a group failed (not EAGAIN).
    pub const READ_FAILED: &str = "fanotify_read_failed";
    /// A record in the buffer was malformed (its fd, if any, was still closed).
    pub const BAD_RECORD: &str = "fanotify_bad_record";
    /// A tracked writer's file whose path could not be read.
    pub const PATH_FAILED: &str = "fanotify_path_failed";
    /// A tracked writer's build file whose bytes could not be read.
    pub const CONTENT_FAILED: &str = "fanotify_content_failed";
    /// A rename whose directory handle could not be opened (no mount fd for its fsid, or
    /// open_by_handle_at failed).
    pub const HANDLE_FAILED: &str = "fanotify_handle_failed";
    pub const ALL: &[&str] = &[
        QUEUE_OVERFLOW,
        READ_FAILED,
        BAD_RECORD,
        PATH_FAILED,
        CONTENT_FAILED,
        HANDLE_FAILED,
    ];
}

/// Splits a buffer read from a group into its event records, and whether it was all whole
/// records (the kernel writes whole records only: `false` means a malformed one, where the
/// parse stopped).
pub fn parse_events(buf: &[u8]) -> (Vec<Parsed>, bool) {
    let mut out = Vec::new();
    let mut off = 0;
    while off + METADATA_LEN <= buf.len() {
        let b = &buf[off..];
        let event_len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let version = b[4];
        let metadata_len = u16::from_ne_bytes([b[6], b[7]]) as usize;
        if event_len < METADATA_LEN
            || event_len > b.len()
            || metadata_len < METADATA_LEN
            || metadata_len > event_len
            || version != libc::FANOTIFY_METADATA_VERSION
        {
            return (out, false);
        }
        let mask = u64::from_ne_bytes(b[8..16].try_into().unwrap_or_default());
        let fd = i32::from_ne_bytes([b[16], b[17], b[18], b[19]]);
        let pid = i32::from_ne_bytes([b[20], b[21], b[22], b[23]]);
        out.push(Parsed {
            pid: pid.max(0) as u32,
            mask,
            fd,
            dir: parse_dir_name(&b[metadata_len..event_len]),
        });
        off += event_len;
    }
    (out, off == buf.len())
}

/// The first `DFID_NAME` info record of an event's info area, if well-formed.
fn parse_dir_name(mut info: &[u8]) -> Option<DirName> {
    while info.len() >= 4 {
        let info_type = info[0];
        let len = u16::from_ne_bytes([info[2], info[3]]) as usize;
        if len < 4 || len > info.len() {
            return None;
        }
        let rec = &info[..len];
        info = &info[len..];
        if info_type != libc::FAN_EVENT_INFO_TYPE_DFID_NAME {
            continue;
        }
        // header (4), fsid (8), struct file_handle { u32 handle_bytes; i32 handle_type; ... }
        if rec.len() < 20 {
            return None;
        }
        let fsid = [
            i32::from_ne_bytes(rec[4..8].try_into().ok()?),
            i32::from_ne_bytes(rec[8..12].try_into().ok()?),
        ];
        let handle_bytes = u32::from_ne_bytes(rec[12..16].try_into().ok()?) as usize;
        let handle_type = i32::from_ne_bytes(rec[16..20].try_into().ok()?);
        let rest = rec.get(20..)?;
        let handle = rest.get(..handle_bytes)?.to_vec();
        let name_area = &rest[handle_bytes..];
        let end = name_area.iter().position(|c| *c == 0)?;
        return Some(DirName {
            fsid,
            handle_type,
            handle,
            name: name_area[..end].to_vec(),
        });
    }
    None
}

/// The path `/proc/self/fd/N` links to, without the ` (deleted)` the kernel appends to a file
/// removed meanwhile (the name it had is still the name it was written under).
pub fn link_path(link: &std::path::Path) -> Option<String> {
    let p = std::fs::read_link(link).ok()?;
    let s = p.to_string_lossy();
    Some(s.strip_suffix(" (deleted)").unwrap_or(&s).to_string())
}

/// `dir` joined with an entry name.
pub fn join(dir: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// A file event of a tracked process, as records.
pub enum FileEvent {
    /// `file_write` and, for a build file, its `file_content` chunks.
    Write(FileWrite, Vec<FileContent>),
}

fn fsid_of(fd: RawFd) -> io::Result<[i32; 2]> {
    // SAFETY: an all-zero statfs is valid; fstatfs fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; st is a valid out pointer.
    if unsafe { libc::fstatfs(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fsid_t is two c_ints on Linux (glibc and musl), private in libc's definition.
    Ok(unsafe { std::mem::transmute::<libc::fsid_t, [i32; 2]>(st.f_fsid) })
}

/// A directory opened for reading: open_by_handle_at refuses an `O_PATH` mount fd (EBADF).
fn open_dir(path: &str) -> io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: c is a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn init(flags: libc::c_uint) -> io::Result<OwnedFd> {
    let event_flags = (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as libc::c_uint;
    // SAFETY: no pointers; the result is checked.
    let fd = unsafe {
        libc::fanotify_init(
            flags | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK | libc::FAN_CLASS_NOTIF,
            event_flags,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn mark_filesystem(group: &OwnedFd, mask: u64, path: &str) -> io::Result<()> {
    let c = CString::new(path).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: group is a fanotify fd, c a NUL-terminated path.
    let r = unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
            mask,
            libc::AT_FDCWD,
            c.as_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The open-file limit raised to its hard limit: each event of a read buffer holds an fd.
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out pointer; setrlimit with the values just read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// The fanotify groups and what they mark.
pub struct FileEventSource {
    close_group: OwnedFd,
    rename_group: Option<OwnedFd>,
    /// A directory on each filesystem the rename group marks (open_by_handle_at's mount fd).
    mount_fds: HashMap<[i32; 2], OwnedFd>,
    /// The directories marked, one per filesystem.
    pub marked: Vec<String>,
    /// Every directory of the list that exists here (on one of the marked filesystems).
    pub covered: Vec<String>,
    /// Why renames are not reported, when they are not.
    pub renames_unavailable: Option<String>,
    drops: BTreeMap<&'static str, u64>,
    /// Events read, by kind (`fanotify_close_write`, `fanotify_moved_to`), tracked or not.
    pub events: BTreeMap<&'static str, u64>,
}

impl FileEventSource {
    /// Creates the groups and marks the filesystems of `WATCHED_DIRS` (those that exist) under
    /// `host_root` (`/`, or where the host's directories are mounted in the sensor's container).
    pub fn open(host_root: &std::path::Path) -> Result<Self, FanotifyError> {
        let dirs: Vec<String> = WATCHED_DIRS
            .iter()
            .map(|d| {
                host_root
                    .join(d.trim_start_matches('/'))
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        raise_nofile();
        let close_group = init(0).map_err(FanotifyError::Init)?;
        let (mut rename_group, mut renames_unavailable) = match init(libc::FAN_REPORT_DFID_NAME) {
            Ok(g) => (Some(g), None),
            Err(e) => (
                None,
                Some(format!("fanotify_init(FAN_REPORT_DFID_NAME): {e}")),
            ),
        };
        let mut marked = Vec::new();
        let mut covered = Vec::new();
        let mut mount_fds = HashMap::new();
        let mut seen = Vec::new();
        let mut errors = Vec::new();
        for dir in &dirs {
            let dir = dir.as_str();
            let Ok(dfd) = open_dir(dir) else {
                continue; // not on this host
            };
            let Ok(fsid) = fsid_of(dfd.as_raw_fd()) else {
                continue;
            };
            if seen.contains(&fsid) {
                covered.push(dir.to_string());
                continue;
            }
            seen.push(fsid);
            if let Err(e) = mark_filesystem(&close_group, libc::FAN_CLOSE_WRITE, dir) {
                errors.push(format!("{dir}: {e}"));
                continue;
            }
            marked.push(dir.to_string());
            covered.push(dir.to_string());
            if let Some(g) = &rename_group {
                match mark_filesystem(g, libc::FAN_MOVED_TO, dir) {
                    Ok(()) => {
                        mount_fds.insert(fsid, dfd);
                    }
                    Err(e) => {
                        tracing::warn!("renames on the filesystem of {dir} are not reported: {e}");
                    }
                }
            }
        }
        if marked.is_empty() {
            return Err(FanotifyError::NoMark(errors.join("; ")));
        }
        if rename_group.is_some() && mount_fds.is_empty() {
            rename_group = None;
            renames_unavailable = Some("no filesystem accepted a FAN_MOVED_TO mark".into());
        }
        let drops = loss::ALL.iter().map(|r| (*r, 0)).collect();
        Ok(Self {
            close_group,
            rename_group,
            mount_fds,
            marked,
            covered,
            renames_unavailable,
            drops,
            events: BTreeMap::new(),
        })
    }

    pub fn close_fd(&self) -> RawFd {
        self.close_group.as_raw_fd()
    }

    pub fn rename_fd(&self) -> Option<RawFd> {
        self.rename_group.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Loss counters, for `sensor_stats.drops`.
    pub fn drops(&self, into: &mut BTreeMap<String, u64>) {
        into.extend(self.drops.iter().map(|(k, v)| (k.to_string(), *v)));
    }

    fn count(&mut self, reason: &'static str) {
        *self.drops.entry(reason).or_default() += 1;
    }

    /// One read of the close group (`rename: false`) or the rename group: the events, their
    /// fds owned (closed when dropped). `None` when nothing is queued.
    pub fn read(&mut self, rename: bool) -> Option<Vec<RawEvent>> {
        let fd = if rename {
            self.rename_group.as_ref()?.as_raw_fd()
        } else {
            self.close_group.as_raw_fd()
        };
        let mut buf = vec![0u8; READ_BUF];
        // SAFETY: buf is valid for READ_BUF bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                self.count(loss::READ_FAILED);
                tracing::debug!("fanotify read: {e}");
            }
            return None;
        }
        if n == 0 {
            return None;
        }
        let (parsed, whole) = parse_events(&buf[..n as usize]);
        if !whole {
            self.count(loss::BAD_RECORD);
        }
        let mut out = Vec::with_capacity(parsed.len());
        for p in parsed {
            // SAFETY: the kernel installed this fd in the sensor for this event; it is owned
            // (and closed) here and nowhere else.
            let fd = (p.fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(p.fd) });
            if p.mask & libc::FAN_Q_OVERFLOW != 0 {
                self.count(loss::QUEUE_OVERFLOW);
                continue;
            }
            let kind = if rename {
                "fanotify_moved_to"
            } else {
                "fanotify_close_write"
            };
            *self.events.entry(kind).or_default() += 1;
            out.push(RawEvent {
                pid: p.pid,
                fd,
                dir: p.dir,
            });
        }
        Some(out)
    }

    /// The records of an event whose process is tracked (`process`); the event's fd is closed
    /// on return.
    pub fn resolve(&mut self, ev: RawEvent, process: ProcessRef) -> Option<FileEvent> {
        if let Some(dir) = &ev.dir {
            let path = self.resolve_dir_name(dir)?;
            return Some(FileEvent::Write(
                file_write(process, "rename", path),
                Vec::new(),
            ));
        }
        let fd = ev.fd?;
        let path = self.fd_path(&fd)?;
        let content = if crate::process::enrich::is_build_file(&path) {
            match read_content(&fd) {
                Ok((bytes, size)) => content_chunks(&process, &path, &bytes, size),
                Err(e) => {
                    tracing::debug!("reading {path}: {e}");
                    self.count(loss::CONTENT_FAILED);
                    Vec::new()
                }
            }
        } else if process.role == "runtime" && remote_context::is_download(&path) {
            self.remote_context_files(&fd, &process, &path)
        } else {
            Vec::new()
        };
        Some(FileEvent::Write(
            file_write(process, "close_write", path),
            content,
        ))
    }

    /// The build files inside a remote context the daemon downloaded (`remote_context`), each
    /// as the chunks of a file of its own at `<tarball>!/<member>`.
    fn remote_context_files(
        &mut self,
        fd: &OwnedFd,
        process: &ProcessRef,
        path: &str,
    ) -> Vec<FileContent> {
        let file = match fd.try_clone() {
            Ok(f) => std::fs::File::from(f),
            Err(e) => {
                tracing::debug!("reading {path}: {e}");
                self.count(loss::CONTENT_FAILED);
                return Vec::new();
            }
        };
        match remote_context::build_files(std::io::BufReader::new(file), CONTENT_CAP) {
            Ok(members) => members
                .iter()
                .flat_map(|m| {
                    let p = remote_context::member_path(path, &m.name);
                    content_chunks(process, &p, &m.bytes, m.size)
                })
                .collect(),
            Err(e) => {
                tracing::debug!("reading the tarball {path}: {e}");
                self.count(loss::CONTENT_FAILED);
                Vec::new()
            }
        }
    }

    /// Where an fd of the sensor's points (counted when unreadable).
    fn fd_path(&mut self, fd: &OwnedFd) -> Option<String> {
        let link = std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let path = link_path(&link);
        if path.is_none() {
            self.count(loss::PATH_FAILED);
        }
        path
    }

    fn resolve_dir_name(&mut self, d: &DirName) -> Option<String> {
        let Some(mount) = self.mount_fds.get(&d.fsid) else {
            self.count(loss::HANDLE_FAILED);
            return None;
        };
        // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }, in u32s
        // for its alignment.
        let mut h = vec![0u32; 2 + d.handle.len().div_ceil(4)];
        h[0] = d.handle.len() as u32;
        h[1] = d.handle_type as u32;
        // SAFETY: h holds 8 + handle.len() bytes at least; the copy stays within it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                d.handle.as_ptr(),
                h.as_mut_ptr().add(2).cast::<u8>(),
                d.handle.len(),
            );
        }
        // SAFETY: h is a well-formed struct file_handle; mount is an open fd.
        let fd = unsafe {
            libc::open_by_handle_at(
                mount.as_raw_fd(),
                h.as_mut_ptr().cast::<libc::file_handle>(),
                libc::O_PATH | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            tracing::debug!("open_by_handle_at: {}", io::Error::last_os_error());
            self.count(loss::HANDLE_FAILED);
            return None;
        }
        // SAFETY: just opened, owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let dir = self.fd_path(&fd)?;
        Some(join(&dir, &d.name))
    }
}

/// `file_write` for a file event. `flags` is null: the fd fanotify hands the sensor is its own
/// read-only open, not the writer's (whose flags are not reported).
fn file_write(process: ProcessRef, op: &str, path: String) -> FileWrite {
    FileWrite {
        process,
        op: op.into(),
        path_truncated: false,
        path,
        flags: None,
    }
}

/// The first `CONTENT_CAP` bytes of a file and its size.
fn read_content(fd: &OwnedFd) -> io::Result<(Vec<u8>, u64)> {
    // SAFETY: an all-zero stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; st is a valid out pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; CONTENT_CAP];
    let mut got = 0usize;
    while got < buf.len() {
        // SAFETY: the range [got, len) of buf is valid for writing.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
                got as libc::off_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            break;
        }
        got += n as usize;
    }
    buf.truncate(got);
    Ok((buf, (st.st_size as u64).max(got as u64)))
}

/// A build file's bytes as the kernel capture's `file_content` chunks of one write: offsets
/// of `FILE_CONTENT_CAP`, `write_len` the file's size. `fd` is -1: the writer's descriptor
/// is not known here (the Dockerfile engine takes each chunk run at offset 0 from fd -1 as a
/// new file).
pub fn content_chunks(
    process: &ProcessRef,
    path: &str,
    bytes: &[u8],
    size: u64,
) -> Vec<FileContent> {
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .chunks(FILE_CONTENT_CAP)
        .enumerate()
        .map(|(i, c)| FileContent {
            process: process.clone(),
            path: Some(path.to_string()),
            fd: -1,
            offset: (i * FILE_CONTENT_CAP) as u64,
            write_len: size,
            data: String::from_utf8_lossy(c).into_owned(),
            truncated: false,
        })
        .collect()
}

impl FileEvent {
    pub fn into_bodies(self) -> Vec<Body> {
        match self {
            FileEvent::Write(w, content) => std::iter::once(Body::FileWrite(w))
                .chain(content.into_iter().map(Body::FileContent))
                .collect(),
        }
    }
}

/// `sensor check`: whether fanotify works here, in one line.
pub fn check_line() -> (bool, String) {
    match FileEventSource::open(&crate::process::proc::host_root()) {
        Ok(s) => (
            true,
            format!(
                "works: FAN_CLOSE_WRITE marks on {} filesystem(s), holding {}; renames {} (`--file-events=fanotify`)",
                s.marked.len(),
                s.covered.join(", "),
                match &s.renames_unavailable {
                    None => "reported (FAN_REPORT_DFID_NAME)".to_string(),
                    Some(why) => format!("not reported: {why}"),
                }
            ),
        ),
        Err(e) => (
            false,
            format!("{e}; `--file-events=fanotify` cannot run, `syscall` or `off` can"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file name of its own under the temp dir, for this test process.
    fn scratch(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("sensor-fanotify-{}-{name}", std::process::id()))
    }

    fn metadata(mask: u64, fd: i32, pid: i32, info: &[u8]) -> Vec<u8> {
        let len = (METADATA_LEN + info.len()) as u32;
        let mut b = Vec::new();
        b.extend_from_slice(&len.to_ne_bytes());
        b.push(libc::FANOTIFY_METADATA_VERSION);
        b.push(0);
        b.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
        b.extend_from_slice(&mask.to_ne_bytes());
        b.extend_from_slice(&fd.to_ne_bytes());
        b.extend_from_slice(&pid.to_ne_bytes());
        b.extend_from_slice(info);
        b
    }

    fn dfid_name(fsid: [i32; 2], handle: &[u8], name: &str) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&fsid[0].to_ne_bytes());
        body.extend_from_slice(&fsid[1].to_ne_bytes());
        body.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        body.extend_from_slice(&1i32.to_ne_bytes());
        body.extend_from_slice(handle);
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        // The kernel pads info records to 4 bytes.
        while (body.len() + 4) % 4 != 0 {
            body.push(0);
        }
        let mut rec = vec![libc::FAN_EVENT_INFO_TYPE_DFID_NAME, 0];
        rec.extend_from_slice(&((body.len() + 4) as u16).to_ne_bytes());
        rec.extend_from_slice(&body);
        rec
    }

    #[test]
    fn parses_fd_mode_records_and_overflow() {
        let mut buf = metadata(libc::FAN_CLOSE_WRITE, 7, 1234, &[]);
        buf.extend(metadata(libc::FAN_Q_OVERFLOW, libc::FAN_NOFD, 0, &[]));
        let (evs, whole) = parse_events(&buf);
        assert!(whole);
        assert_eq!(
            evs,
            [
                Parsed {
                    pid: 1234,
                    mask: libc::FAN_CLOSE_WRITE,
                    fd: 7,
                    dir: None
                },
                Parsed {
                    pid: 0,
                    mask: libc::FAN_Q_OVERFLOW,
                    fd: -1,
                    dir: None
                }
            ]
        );
    }

    #[test]
    fn parses_dir_handle_and_name() {
        let info = dfid_name([5, -6], &[1, 2, 3, 4, 5, 6, 7, 8], "Dockerfile");
        let buf = metadata(libc::FAN_MOVED_TO, libc::FAN_NOFD, 42, &info);
        let (evs, whole) = parse_events(&buf);
        assert!(whole);
        let d = evs[0].dir.as_ref().unwrap();
        assert_eq!(d.fsid, [5, -6]);
        assert_eq!(d.handle, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(d.handle_type, 1);
        assert_eq!(d.name, b"Dockerfile");
        assert_eq!(evs[0].pid, 42);
    }

    #[test]
    fn a_cut_or_bad_record_stops_the_parse_and_says_so() {
        let mut buf = metadata(libc::FAN_CLOSE_WRITE, 7, 1, &[]);
        let second = metadata(libc::FAN_CLOSE_WRITE, 8, 2, &[]);
        buf.extend_from_slice(&second[..10]);
        let (evs, whole) = parse_events(&buf);
        assert_eq!(evs.len(), 1);
        assert!(!whole);
        // A length that points past the buffer, and a wrong version.
        let mut bad = metadata(libc::FAN_CLOSE_WRITE, 7, 1, &[]);
        bad[0] = 200;
        assert_eq!(parse_events(&bad), (Vec::new(), false));
        let mut bad = metadata(libc::FAN_CLOSE_WRITE, 7, 1, &[]);
        bad[4] = 2;
        assert_eq!(parse_events(&bad).0, Vec::new());
        // An info record whose name is not terminated is no name.
        let mut info = dfid_name([1, 2], &[9; 8], "x");
        let n = info.len();
        info[n - 4..].copy_from_slice(b"abcd");
        let buf = metadata(libc::FAN_MOVED_TO, -1, 3, &info);
        assert_eq!(parse_events(&buf).0[0].dir, None);
    }

    #[test]
    fn paths_and_chunks() {
        assert_eq!(join("/a/b", b"c"), "/a/b/c");
        assert_eq!(join("/", b"c"), "/c");
        let f = scratch("gone");
        std::fs::write(&f, "x").unwrap();
        let file = std::fs::File::open(&f).unwrap();
        std::fs::remove_file(&f).unwrap();
        let link = format!("/proc/self/fd/{}", file.as_raw_fd());
        assert_eq!(
            link_path(std::path::Path::new(&link)).as_deref(),
            f.to_str()
        );
        let p = ProcessRef {
            pid: 9,
            role: "runtime".into(),
            ..Default::default()
        };
        let bytes = vec![b'a'; FILE_CONTENT_CAP + 10];
        let c = content_chunks(&p, "/x/Dockerfile", &bytes, bytes.len() as u64);
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].offset, c[1].offset), (0, FILE_CONTENT_CAP as u64));
        assert_eq!(c[1].data.len(), 10);
        assert!(
            c.iter()
                .all(|c| c.fd == -1 && c.write_len == bytes.len() as u64)
        );
        assert!(content_chunks(&p, "/x/Dockerfile", &[], 0).is_empty());
    }

    #[test]
    fn content_is_read_from_the_start_and_bounded() {
        let f = scratch("Dockerfile");
        std::fs::write(&f, vec![b'z'; CONTENT_CAP + 100]).unwrap();
        let fd: OwnedFd = std::fs::File::open(&f).unwrap().into();
        let (bytes, size) = read_content(&fd).unwrap();
        std::fs::remove_file(&f).unwrap();
        assert_eq!(bytes.len(), CONTENT_CAP);
        assert_eq!(size, (CONTENT_CAP + 100) as u64);
    }
}
