//! What a build step is, from its exec (runtime processes are recognised in
//! crate::process::runtime_exec, for every engine).
use crate::output::record::ProcessExec;
use crate::process::runtime_exec::program;

/// The shell command of a `sh -c CMD` argv (what a shell-form RUN runs), or the argv joined.
pub fn step_command(argv: &[String]) -> String {
    argv.join(" ")
}

/// Whether an exec is a shell-form RUN (`/bin/sh -c ...`), as builder tools run them.
pub fn is_shell_step(exec: &ProcessExec) -> bool {
    let prog = program(exec);
    matches!(prog.as_str(), "sh" | "bash" | "ash" | "dash")
        && exec.argv.get(1).map(String::as_str) == Some("-c")
}

/// The RUN text a step's argv carries: what follows `-c` of a shell, or the argv joined.
pub fn run_text(argv: &[String]) -> String {
    match argv.iter().position(|a| a == "-c") {
        Some(i) if i + 1 < argv.len() => argv[i + 1..].join(" "),
        _ => argv.join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::record::ProcessRef;

    #[test]
    fn shell_steps_and_run_text() {
        let e = ProcessExec {
            process: ProcessRef {
                comm: "sh".into(),
                ..Default::default()
            },
            filename: "/bin/sh".into(),
            argv: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            argv_truncated: false,
            start_time_ns: 1,
        };
        assert!(is_shell_step(&e));
        assert_eq!(run_text(&e.argv), "echo hi");
    }
}
