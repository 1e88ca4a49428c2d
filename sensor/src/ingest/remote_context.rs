//! The build files inside a remote context's tarball, as the daemon downloaded it.
//!
//! A BuildKit build of `POST /build?remote=URL&version=2` (and `docker build URL` with
//! BuildKit, which sends the same) has dockerd's HTTP source write the response body to a
//! snapshot of its own, as a file named `context` (the Dockerfile frontend's
//! `llb.HTTP(url, llb.Filename("context"))`), then unpack it with a file operation. That
//! unpack is cached by the tarball's digest: when the same bytes were unpacked before (by any
//! build, from any URL), no process writes the Dockerfile again and the frontend reads it
//! from the cached snapshot (a read, which the socket hooks do not see). The tarball itself
//! is written each time it is downloaded, so the Dockerfile is taken from it, at its close
//! (`FAN_CLOSE_WRITE`), as the member of that name.
//!
//! Plain and gzip tarballs are read (what `docker build URL` contexts usually are); bzip2 and
//! xz ones, which BuildKit also unpacks, are not (no member is returned).
use std::io::{self, Read, Seek, SeekFrom};

use thiserror::Error;

/// The name the HTTP source gives the downloaded context.
pub const CONTEXT_FILE: &str = "context";
/// Build files returned per tarball (a context with more Dockerfiles than this is unusual).
pub const MAX_MEMBERS: usize = 16;
/// Tar entries looked at: a context with more files is read no further.
pub const MAX_ENTRIES: usize = 20_000;
/// Decompressed bytes read of a gzip tarball (its members' data cannot be skipped by seeking;
/// it is read in the sensor's event loop, so the cap bounds the stall).
pub const MAX_GZIP_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum RemoteContextError {
    #[error("reading the tarball: {0}")]
    Io(#[from] io::Error),
}

/// A build file found in a tarball: its member name, its first `cap` bytes and its size.
#[derive(Debug, PartialEq)]
pub struct Member {
    pub name: String,
    pub bytes: Vec<u8>,
    pub size: u64,
}

/// Whether a file a runtime closed after writing is a BuildKit HTTP source's download: named
/// `context`, alone in its directory (the source's snapshot holds that one file). A build
/// context's own file of that name sits among the others.
pub fn is_download(path: &str) -> bool {
    let Some((dir, name)) = path.rsplit_once('/') else {
        return false;
    };
    if name != CONTEXT_FILE || dir.is_empty() {
        return false;
    }
    std::fs::read_dir(dir).is_ok_and(|entries| entries.take(2).count() == 1)
}

/// The build files (`is_build_file` names) in a tarball, plain or gzip; nothing for another
/// format (the tarball is not one, or bzip2/xz).
pub fn build_files<R: Read + Seek>(
    mut file: R,
    cap: usize,
) -> Result<Vec<Member>, RemoteContextError> {
    let mut magic = [0u8; 512];
    let n = read_up_to(&mut file, &mut magic)?;
    file.seek(SeekFrom::Start(0))?;
    if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        let gz = flate2::read::GzDecoder::new(file).take(MAX_GZIP_BYTES);
        return members(tar::Archive::new(gz).entries()?, cap);
    }
    if n >= 262 && &magic[257..262] == b"ustar" {
        // Plain tar: the data of members not taken is seeked over, not read.
        return members(tar::Archive::new(file).entries_with_seek()?, cap);
    }
    Ok(Vec::new())
}

fn members<R: Read>(
    entries: tar::Entries<'_, R>,
    cap: usize,
) -> Result<Vec<Member>, RemoteContextError> {
    let mut out = Vec::new();
    for entry in entries.take(MAX_ENTRIES) {
        let entry = match entry {
            Ok(e) => e,
            // A tarball cut short (or past MAX_GZIP_BYTES): what was found so far.
            Err(_) if !out.is_empty() => break,
            Err(e) => return Err(e.into()),
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path()?.to_string_lossy().into_owned();
        if !crate::process::enrich::is_build_file(&name) {
            continue;
        }
        let size = entry.size();
        let mut bytes = Vec::with_capacity(cap.min(size as usize));
        entry.take(cap as u64).read_to_end(&mut bytes)?;
        out.push(Member { name, bytes, size });
        if out.len() >= MAX_MEMBERS {
            break;
        }
    }
    Ok(out)
}

fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A member's path as recorded: the tarball's path, `!/`, the member's name in it (`./` and
/// a leading `/` taken off).
pub fn member_path(tarball: &str, member: &str) -> String {
    format!("{tarball}!/{}", normalize(member))
}

/// The tarball and member of a path made by `member_path`.
pub fn split_member_path(path: &str) -> Option<(&str, &str)> {
    path.split_once("!/")
}

/// A path inside a build context, as the `dockerfile` parameter or a tar member names it.
pub fn normalize(p: &str) -> &str {
    let mut p = p;
    loop {
        if let Some(rest) = p.strip_prefix("./") {
            p = rest;
        } else if let Some(rest) = p.strip_prefix('/') {
            p = rest;
        } else {
            return p;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write as _};

    fn tarball(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn build_files_of_plain_and_gzip_tarballs() {
        let big = vec![b'x'; 100_000];
        let t = tarball(&[
            ("src/main.c", &big),
            ("./sub/remote.Dockerfile", b"FROM a\n"),
            ("README", b"hi"),
            ("Dockerfile", b"FROM b\nRUN x\n"),
        ]);
        let want = vec![
            Member {
                // (tar::Builder writes it without the `./`)
                name: "sub/remote.Dockerfile".into(),
                bytes: b"FROM a\n".to_vec(),
                size: 7,
            },
            Member {
                name: "Dockerfile".into(),
                bytes: b"FROM b\nRUN".to_vec(),
                size: 13,
            },
        ];
        assert_eq!(build_files(Cursor::new(&t), 10).unwrap(), want);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&t).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(build_files(Cursor::new(&gz), 10).unwrap(), want);
    }

    #[test]
    fn other_bytes_are_no_tarball() {
        assert!(
            build_files(Cursor::new(b"FROM a\n".to_vec()), 10)
                .unwrap()
                .is_empty()
        );
        assert!(build_files(Cursor::new(Vec::new()), 10).unwrap().is_empty());
        // bzip2 magic: not read.
        assert!(
            build_files(Cursor::new(b"BZh91AY&SY".to_vec()), 10)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_cut_tarball_gives_what_precedes_the_cut() {
        let t = tarball(&[("Dockerfile", b"FROM a\n"), ("x", &[0u8; 4096])]);
        let got = build_files(Cursor::new(&t[..1024]), 64).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].bytes, b"FROM a\n");
        // Cut inside the first member: nothing found, and no panic.
        let t = tarball(&[("x", &[0u8; 4096]), ("Dockerfile", b"FROM a\n")]);
        assert!(build_files(Cursor::new(&t[..700]), 64).map_or(true, |m| m.is_empty()));
    }

    #[test]
    fn member_paths() {
        let p = member_path(
            "/var/lib/docker/overlay2/x/diff/context",
            "./sub/a.Dockerfile",
        );
        assert_eq!(
            p,
            "/var/lib/docker/overlay2/x/diff/context!/sub/a.Dockerfile"
        );
        assert_eq!(
            split_member_path(&p),
            Some((
                "/var/lib/docker/overlay2/x/diff/context",
                "sub/a.Dockerfile"
            ))
        );
        assert_eq!(normalize("/./Dockerfile"), "Dockerfile");
    }

    #[test]
    fn a_download_is_alone_in_its_directory() {
        let dir = std::env::temp_dir().join(format!("sensor-rc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("context");
        std::fs::write(&f, b"x").unwrap();
        assert!(is_download(f.to_str().unwrap()));
        std::fs::write(dir.join("other"), b"y").unwrap();
        assert!(!is_download(f.to_str().unwrap()));
        assert!(!is_download(dir.join("other").to_str().unwrap()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
