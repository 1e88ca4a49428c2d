//! Builds run by a builder tool's own process (buildah, podman, buildctl): the build is the
//! tool's command line, its steps the shells it starts, its end the tool's exit.
use super::session::{BuildSession, Outcome};
use super::{BuildTracker, Member, command_file, dockerfile, params};
use crate::output::record::{ApiClient, Body, ProcessExec, Record};

pub(super) fn open_cli_build(
    t: &mut BuildTracker,
    rec: &Record,
    e: &ProcessExec,
    builder: &'static str,
    args: &[String],
    out: &mut Vec<Body>,
) {
    let pid = e.process.pid;
    let id = format!("b-{}-{}-{}", rec.ts.unix_nanos(), pid, builder);
    // buildctl talks to a buildkitd whose pid is learnt from its first step; the others run the
    // build themselves.
    let daemon = if builder == "buildctl" { 0 } else { pid };
    let mut s = BuildSession::new(id, builder, rec.ts, daemon);
    s.client = ApiClient {
        transport: "local".into(),
        pid: Some(pid),
        uid: Some(e.process.uid),
        exe: e.process.exe.clone().or_else(|| Some(e.filename.clone())),
        argv: if t.cfg.show_build_args {
            e.argv.clone()
        } else {
            crate::process::redact::redact_argv(&e.argv)
        },
        ..Default::default()
    };
    s.params = params::parse_cli_args(args, t.cfg.show_build_args);
    s.add_record(rec.id);
    s.add_pid(pid);
    s.tool_pid = Some(pid);
    // buildah and podman read their Dockerfile in place: take it from the file the command
    // names, now, while the process (and its cwd and root) is there.
    let read = matches!(builder, "buildah" | "podman") && t.cfg.read_command_files;
    let dockerfile = read
        .then(|| command_file::read(pid, e.process.uid, e.process.gid, args))
        .flatten()
        .map(|a| dockerfile::record(&s.build_id, a, "build_command", t.cfg.show_build_args));
    s.dockerfile = dockerfile.as_ref().map(dockerfile::text_of);
    let key = t.open(s, rec.ts, out);
    out.extend(dockerfile.map(Body::BuildDockerfile));
    // The tool's exit ends the build (for buildctl too, whose steps run in buildkitd).
    t.add_member(pid, Member { key, step: None });
}

pub(super) fn outcome_of_exit(builder: &str, code: Option<i32>, signal: Option<i32>) -> Outcome {
    match (code, signal) {
        (_, Some(sig)) => Outcome::Cancelled(format!("{builder} was killed by signal {sig}")),
        (Some(0), None) => Outcome::Succeeded,
        (Some(c), None) => Outcome::Failed(format!("{builder} exited with code {c}")),
        (None, None) => Outcome::Failed(format!("{builder} ended without an exit status")),
    }
}
