//! The Dockerfile of each build, from the bytes the daemon writes when it receives it (kernel
//! `file_content` records: dockerd writing a BuildKit context snapshot, the legacy builder's
//! context extraction), not from the progress stream it shows its client: comments, ENV, LABEL
//! and ARG lines are there too, and quiet builds have it as well.
//!
//! Attribution: a build file written by a daemon (or a process it forked) while exactly one of
//! its builds is open belongs to that build; with several open, the build whose `dockerfile`
//! parameter names the file; otherwise it is counted (`dockerfile_unattributed`), never
//! guessed. Only the first write of each file is kept (BuildKit and the legacy builder write a
//! Dockerfile in one write; 16 KiB at most are captured, `truncated` says when more was
//! written).
use std::collections::{BTreeMap, HashMap};

use crate::engine::Engine;
use crate::output::record::{Body, BuildDockerfile, DockerfileInstruction, FileContent, Record};

/// Open builds beyond this are forgotten oldest first (the build engine bounds its own).
const MAX_OPEN: usize = 64;
/// Text kept per Dockerfile (the kernel captures 8 chunks of 2 KiB per write).
const MAX_TEXT: usize = 16 * 1024;

struct OpenBuild {
    build_id: String,
    /// File name of the `dockerfile` parameter (`Dockerfile` when not given).
    dockerfile: String,
    found: bool,
}

/// One write being assembled from its chunks (consecutive in the stream).
struct Pending {
    path: String,
    text: String,
    write_len: u64,
    got: u64,
    truncated: bool,
    record_ids: Vec<u64>,
}

pub struct DockerfileEngine {
    open: Vec<OpenBuild>,
    /// By (pid, fd): the write being assembled; `None` once the file's first write was taken.
    writes: HashMap<(u32, i32), Option<Pending>>,
    show_build_args: bool,
    unattributed: u64,
}

impl DockerfileEngine {
    pub fn new(show_build_args: bool) -> Self {
        DockerfileEngine {
            open: Vec::new(),
            writes: HashMap::new(),
            show_build_args,
            unattributed: 0,
        }
    }

    fn on_content(&mut self, rec: &Record, c: &FileContent, out: &mut Vec<Body>) {
        // Only what a runtime (the daemon) or a process in its tree wrote.
        if c.process.role != "runtime" && c.process.role != "descendant" {
            return;
        }
        let key = (c.process.pid, c.fd);
        if self.writes.len() > 4096 {
            self.writes.clear();
        }
        let slot = self.writes.entry(key).or_insert_with(|| {
            Some(Pending {
                path: c.path.clone().unwrap_or_default(),
                text: String::new(),
                write_len: c.write_len,
                got: 0,
                truncated: false,
                record_ids: Vec::new(),
            })
        });
        let Some(p) = slot else {
            return; // a later write of a file whose first write was taken
        };
        if c.offset == 0 && p.got > 0 {
            // A second write before the first was complete: keep what we have.
            let done = slot.take();
            if let Some(p) = done {
                self.attribute(p, out);
            }
            return;
        }
        if p.text.len() + c.data.len() <= MAX_TEXT {
            p.text.push_str(&c.data);
        } else {
            p.truncated = true;
        }
        p.truncated |= c.truncated;
        p.got = c.offset + c.data.len() as u64;
        p.record_ids.push(rec.id);
        if c.offset + (sensor_common::FILE_CONTENT_CAP as u64) >= p.write_len
            || p.got >= p.write_len
        {
            if c.write_len > (MAX_TEXT as u64) {
                p.truncated = true;
            }
            if let Some(p) = slot.take() {
                self.attribute(p, out);
            }
        }
    }

    fn attribute(&mut self, p: Pending, out: &mut Vec<Body>) {
        let name = p.path.rsplit('/').next().unwrap_or(&p.path).to_string();
        let candidates: Vec<usize> = (0..self.open.len())
            .filter(|&i| !self.open[i].found)
            .collect();
        let pick = match candidates.len() {
            0 => None,
            1 => Some(candidates[0]),
            _ => {
                let named: Vec<usize> = candidates
                    .iter()
                    .copied()
                    .filter(|&i| self.open[i].dockerfile == name)
                    .collect();
                (named.len() == 1).then(|| named[0])
            }
        };
        let Some(i) = pick else {
            self.unattributed += 1;
            return;
        };
        self.open[i].found = true;
        // Of the text as received (before redaction): what a pipeline compares with its own.
        let sha256 = (!p.truncated).then(|| {
            use sha2::Digest as _;
            format!("{:x}", sha2::Sha256::digest(p.text.as_bytes()))
        });
        let text = if self.show_build_args {
            p.text
        } else {
            redact_arg_defaults(&p.text)
        };
        out.push(Body::BuildDockerfile(BuildDockerfile {
            build_id: self.open[i].build_id.clone(),
            path: p.path,
            sha256,
            size: p.write_len,
            truncated: p.truncated,
            instructions: parse_instructions(&text),
            text,
            record_ids: p.record_ids,
        }));
    }
}

impl Engine for DockerfileEngine {
    fn observe(&mut self, rec: &Record, out: &mut Vec<Body>) {
        match &rec.body {
            Body::BuildStarted(b) => {
                if self.open.len() >= MAX_OPEN {
                    self.open.remove(0);
                }
                let dockerfile = b
                    .params
                    .dockerfile
                    .as_deref()
                    .map(|d| d.rsplit('/').next().unwrap_or(d).to_string())
                    .unwrap_or_else(|| "Dockerfile".into());
                self.open.push(OpenBuild {
                    build_id: b.build_id.clone(),
                    dockerfile,
                    found: false,
                });
            }
            Body::BuildFinished(b) => self.open.retain(|o| o.build_id != b.build_id),
            Body::FileContent(c) => self.on_content(rec, c, out),
            _ => {}
        }
    }

    fn drops(&self, drops: &mut BTreeMap<String, u64>) {
        drops.insert("dockerfile_unattributed".into(), self.unattributed);
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
    fn arg_defaults_are_redacted_and_nothing_else() {
        let text = "FROM b\nARG TOKEN=s3cret\n  arg X=1\nARG NODEFAULT\nENV ARG=keep\n";
        assert_eq!(
            redact_arg_defaults(text),
            "FROM b\nARG TOKEN=<redacted>\n  arg X=<redacted>\nARG NODEFAULT\nENV ARG=keep\n"
        );
    }
}
