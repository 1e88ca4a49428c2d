//! The Dockerfile of each build, from the bytes the daemon writes when it receives it (kernel
//! `file_content` records: dockerd writing a BuildKit context snapshot, the legacy builder's
//! context extraction; for a BuildKit `remote=` context, the member of that name in the tarball
//! dockerd downloads, read at its close: `ingest::remote_context`), not from the progress
//! stream it shows its client: comments, ENV, LABEL and ARG lines are there too, and quiet
//! builds have it as well. buildah and podman read
//! theirs in place (nothing writes it): it is read from the file their command line names
//! (`command_file`).
//!
//! The build engine attributes each assembled file (mod.rs, `on_build_file`): written by a
//! daemon (or a process it forked) while exactly one of that daemon's builds waiting for one
//! (no step run yet: a build reads its Dockerfile first) has a
//! `dockerfile` parameter of that name (`Dockerfile` when not given), it is that build's;
//! otherwise it is counted (`dockerfile_unattributed`), never guessed. Only the first write of each file is
//! kept (BuildKit and the legacy builder write a Dockerfile in one write; 16 KiB at most are
//! captured, `truncated` says when more was written).
use std::collections::HashMap;

use crate::output::record::{
    BuildDockerfile, DockerfileInstruction, DockerfileText, FileContent, Record,
};

/// Text kept per Dockerfile (the kernel captures 8 chunks of 2 KiB per write).
pub const MAX_TEXT: usize = 16 * 1024;

/// One write being assembled from its chunks (consecutive in the stream), or read whole.
pub struct Assembled {
    pub path: String,
    pub text: String,
    /// Bytes written (or the file's size, for a file read in place).
    pub size: u64,
    got: u64,
    pub truncated: bool,
    pub record_ids: Vec<u64>,
    /// The writing process and its parent (the daemon, or the untar process it forked).
    pub writer: (u32, u32),
}

impl Assembled {
    /// The base name, to match a build's `dockerfile` parameter.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// Assembles the build files runtimes write from their `file_content` chunks.
#[derive(Default)]
pub struct Assembler {
    /// By (pid, fd): the write being assembled; `None` once the file's first write was taken.
    writes: HashMap<(u32, i32), Option<Assembled>>,
}

impl Assembler {
    /// One chunk; returns the file once its first write is whole (or cut).
    pub fn push(&mut self, rec: &Record, c: &FileContent) -> Option<Assembled> {
        // Only what a runtime (the daemon) or a process in its tree wrote.
        if c.process.role != "runtime" && c.process.role != "descendant" {
            return None;
        }
        let key = (c.process.pid, c.fd);
        if self.writes.len() > 4096 {
            self.writes.clear();
        }
        // fd -1: a whole file read at its close (`--file-events=fanotify`), not a write(2) on a
        // descriptor: each run of chunks from offset 0 is a file of its own.
        if c.fd < 0 && c.offset == 0 {
            self.writes.remove(&key);
        }
        let slot = self.writes.entry(key).or_insert_with(|| {
            Some(Assembled {
                path: c.path.clone().unwrap_or_default(),
                text: String::new(),
                size: c.write_len,
                got: 0,
                truncated: false,
                record_ids: Vec::new(),
                writer: (c.process.pid, c.process.ppid),
            })
        });
        // A later write of a file whose first write was taken: nothing.
        let p = slot.as_mut()?;
        if c.offset == 0 && p.got > 0 {
            // A second write before the first was complete: keep what we have.
            return slot.take();
        }
        if p.text.len() + c.data.len() <= MAX_TEXT {
            p.text.push_str(&c.data);
        } else {
            p.truncated = true;
        }
        p.truncated |= c.truncated;
        p.got = c.offset + c.data.len() as u64;
        p.record_ids.push(rec.id);
        if c.offset + (sensor_common::FILE_CONTENT_CAP as u64) >= p.size || p.got >= p.size {
            if c.write_len > (MAX_TEXT as u64) {
                p.truncated = true;
            }
            return slot.take();
        }
        None
    }
}

/// A file read in place (buildah, podman): at most `MAX_TEXT` bytes of it, `size` its length.
pub fn read_whole(path: String, bytes: &[u8], size: u64) -> Assembled {
    let cut = bytes.len().min(MAX_TEXT);
    Assembled {
        path,
        text: String::from_utf8_lossy(&bytes[..cut]).into_owned(),
        size,
        got: cut as u64,
        truncated: size > cut as u64,
        record_ids: Vec::new(),
        writer: (0, 0),
    }
}

/// The `build_dockerfile` record of an attributed file.
pub fn record(
    build_id: &str,
    a: Assembled,
    source: &str,
    show_build_args: bool,
) -> BuildDockerfile {
    // Of the text as received (before redaction): what a pipeline compares with its own.
    let sha256 = (!a.truncated).then(|| {
        use sha2::Digest as _;
        format!("{:x}", sha2::Sha256::digest(a.text.as_bytes()))
    });
    let text = if show_build_args {
        a.text
    } else {
        redact_arg_defaults(&a.text)
    };
    BuildDockerfile {
        build_id: build_id.to_string(),
        path: a.path,
        source: source.to_string(),
        sha256,
        size: a.size,
        truncated: a.truncated,
        instructions: parse_instructions(&text),
        text,
        record_ids: a.record_ids,
    }
}

/// What `build_started` and `build_finished` carry of it.
pub fn text_of(d: &BuildDockerfile) -> DockerfileText {
    DockerfileText {
        path: d.path.clone(),
        source: d.source.clone(),
        text: d.text.clone(),
        sha256: d.sha256.clone(),
        truncated: d.truncated,
    }
}

/// `ARG name=value` defaults may carry secrets: `ARG name=<redacted>` unless
/// `--show-build-args` (as build-arg values are elsewhere).
pub fn redact_arg_defaults(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let is_arg = trimmed.len() > 4
            && trimmed[..3].eq_ignore_ascii_case("arg")
            && trimmed.as_bytes()[3].is_ascii_whitespace();
        match (is_arg, trimmed.find('=')) {
            (true, Some(eq)) => {
                let indent = &line[..line.len() - trimmed.len()];
                let nl = if line.ends_with('\n') { "\n" } else { "" };
                out.push_str(indent);
                out.push_str(&trimmed[..=eq]);
                out.push_str("<redacted>");
                out.push_str(nl);
            }
            _ => out.push_str(line),
        }
    }
    out
}

/// The instructions of a Dockerfile: comments and blank lines dropped, `\` continuations
/// joined, the keyword upper-cased. Hand-written: this is all the sensor needs of the syntax
/// (no crate for Dockerfile syntax is kept up to date with BuildKit's).
pub fn parse_instructions(text: &str) -> Vec<DockerfileInstruction> {
    let mut out = Vec::new();
    let mut cur: Option<(u32, String)> = None;
    for (n, raw) in text.lines().enumerate() {
        let line_no = n as u32 + 1;
        let line = raw.trim();
        if cur.is_none() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        let (start, mut acc) = cur.take().unwrap_or((line_no, String::new()));
        if line.starts_with('#') {
            cur = Some((start, acc)); // a comment inside a continuation
            continue;
        }
        let (body, more) = match line.strip_suffix('\\') {
            Some(b) => (b.trim_end(), true),
            None => (line, false),
        };
        if !acc.is_empty() && !body.is_empty() {
            acc.push(' ');
        }
        acc.push_str(body);
        if more {
            cur = Some((start, acc));
            continue;
        }
        push_instruction(&mut out, start, &acc);
    }
    if let Some((start, acc)) = cur {
        push_instruction(&mut out, start, &acc);
    }
    out
}

fn push_instruction(out: &mut Vec<DockerfileInstruction>, line: u32, text: &str) {
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    let (kw, args) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    out.push(DockerfileInstruction {
        line,
        instruction: kw.to_ascii_uppercase(),
        args: args.trim().to_string(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_skip_comments_and_join_continuations() {
        let text = "# syntax=docker/dockerfile:1\nFROM base:1\n\n# get it\nrun wget -O /x \\\n  http://10.0.0.1/p \\\n# inner\n  && chmod +x /x\nENV A=1\nLABEL x=y\nARG TOKEN=abc\n";
        let ins = parse_instructions(text);
        let kws: Vec<&str> = ins.iter().map(|i| i.instruction.as_str()).collect();
        assert_eq!(kws, ["FROM", "RUN", "ENV", "LABEL", "ARG"]);
        assert_eq!(ins[1].line, 5);
        assert_eq!(ins[1].args, "wget -O /x http://10.0.0.1/p && chmod +x /x");
        assert_eq!(ins[4].args, "TOKEN=abc");
    }

    #[test]
    fn whole_files_read_at_close_are_each_their_own_dockerfile() {
        use crate::output::record::{Body, ProcessRef, Timestamp};
        let mut files = Assembler::default();
        let rec = |id: u64, body: Body| Record {
            schema_version: 1,
            id,
            ts: Timestamp::now(),
            host: "h".into(),
            body,
        };
        let dockerd = ProcessRef {
            pid: 5,
            role: "runtime".into(),
            ..Default::default()
        };
        let mut got = Vec::new();
        for (n, text) in ["FROM a\n", "FROM b\n"].iter().enumerate() {
            let n = n as u64;
            // fanotify: the daemon's file, fd -1, same pid each time.
            for c in crate::ingest::fanotify::content_chunks(
                &dockerd,
                &format!("/var/lib/docker/overlay2/s{n}/diff/Dockerfile"),
                text.as_bytes(),
                text.len() as u64,
            ) {
                let r = rec(10 * n + 2, Body::FileContent(c.clone()));
                got.extend(files.push(&r, &c).map(|a| (a.path.clone(), a.text)));
            }
        }
        assert_eq!(
            got,
            [
                (
                    "/var/lib/docker/overlay2/s0/diff/Dockerfile".to_string(),
                    "FROM a\n".to_string()
                ),
                (
                    "/var/lib/docker/overlay2/s1/diff/Dockerfile".to_string(),
                    "FROM b\n".to_string()
                )
            ]
        );
    }

    #[test]
    fn arg_defaults_are_redacted_and_nothing_else() {
        let text = "FROM b\nARG TOKEN=s3cret\n  arg X=1\nARG NODEFAULT\nENV ARG=keep\n";
        assert_eq!(
            redact_arg_defaults(text),
            "FROM b\nARG TOKEN=<redacted>\n  arg X=<redacted>\nARG NODEFAULT\nENV ARG=keep\n"
        );
    }
}
