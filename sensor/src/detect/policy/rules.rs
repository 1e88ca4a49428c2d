//! The `[rules.*]` sections of a policy file: one table per rule, each with its switch, its
//! severity and its own knobs, and the `[lineage]` bounds. The file as a whole, its errors and
//! its patterns are in the parent module.
use serde::Deserialize;

use super::*;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rules {
    pub build_from_unexpected_client: ClientRule,
    pub build_via_tcp_api: TcpApiRule,
    pub build_outbound_not_allowed: OutboundRule,
    pub deploy_soon_after_build: DeployRule,
    pub build_push_deploy_chain: ChainRule,
    pub build_suspicious_instruction: InstructionRule,
    pub build_downloaded_executable: DownloadRule,
    pub build_from_container: ContainerClientRule,
    pub container_start_from_container: ContainerClientRule,
    pub container_from_unexplained_image: UnexplainedImageRule,
}

/// Rule `build_suspicious_instruction`: patterns over a build's Dockerfile instructions.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstructionRule {
    pub enabled: bool,
    pub severity: Severity,
    pub patterns: Vec<InstructionPattern>,
}

/// One pattern: a regular expression over the arguments of the named instructions.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstructionPattern {
    pub name: String,
    /// Instruction keywords it applies to (`RUN`, `ADD`, ...); empty: all.
    #[serde(default)]
    pub instructions: Vec<String>,
    /// Regular expression (Rust `regex` syntax) searched in the instruction's arguments.
    #[serde(rename = "match")]
    pub pattern: InstructionRegex,
}

/// A compiled pattern; an invalid one is an error in the policy file, with its line.
#[derive(Clone, Debug)]
pub struct InstructionRegex(pub regex::Regex);

impl<'de> Deserialize<'de> for InstructionRegex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        regex::Regex::new(&s).map(InstructionRegex).map_err(|e| {
            // regex's own message spans lines (the pattern, a caret, the error): keep the
            // error's line, so that the policy error stays one line.
            let msg = e.to_string();
            let why = msg
                .lines()
                .last()
                .unwrap_or("")
                .trim_start_matches("error: ");
            serde::de::Error::custom(format!("invalid regular expression {s:?}: {why}"))
        })
    }
}

impl InstructionPattern {
    fn new(name: &str, instructions: &[&str], pattern: &str) -> Self {
        InstructionPattern {
            name: name.into(),
            instructions: instructions.iter().map(|s| s.to_string()).collect(),
            // The defaults are constants checked by a unit test.
            pattern: InstructionRegex(regex::Regex::new(pattern).expect("default pattern")),
        }
    }

    /// Whether the pattern applies to `instruction` and matches `args`.
    pub fn matches(&self, instruction: &str, args: &str) -> bool {
        (self.instructions.is_empty()
            || self
                .instructions
                .iter()
                .any(|i| i.eq_ignore_ascii_case(instruction)))
            && self.pattern.0.is_match(args)
    }
}

impl Default for InstructionRule {
    fn default() -> Self {
        InstructionRule {
            enabled: true,
            severity: Severity::High,
            patterns: vec![
                // A download from a literal IP address: no DNS name, no registry, no mirror.
                InstructionPattern::new(
                    "download_from_ip_address",
                    &["RUN", "ADD"],
                    r"(?i)\b(https?|ftp)://\d{1,3}(\.\d{1,3}){3}\b",
                ),
                // A script fetched and run in one go, never written where a scan could see it.
                InstructionPattern::new(
                    "download_piped_to_shell",
                    &["RUN"],
                    r"(?i)\b(curl|wget)\b[^|;&]*\|\s*(sudo\s+)?(ba|da|z|k)?sh\b",
                ),
                // ADD of a remote URL: the daemon itself fetches it, outside any RUN step.
                InstructionPattern::new(
                    "add_from_url",
                    &["ADD"],
                    r"(?i)^(--\S+\s+)*(https?|ftp)://",
                ),
            ],
        }
    }
}

/// A container started from an image made on this host that no build record explains.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnexplainedImageRule {
    pub enabled: bool,
    pub severity: Severity,
}

impl Default for UnexplainedImageRule {
    fn default() -> Self {
        UnexplainedImageRule {
            enabled: true,
            severity: Severity::Medium,
        }
    }
}

/// A step wrote an executable it fetched from outside the allowed registries and mirrors.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadRule {
    pub enabled: bool,
    /// For sources classed `unknown`.
    pub severity: Severity,
    /// For sources classed `denied`.
    pub severity_denied: Severity,
    /// Fire on `unknown` sources too (not only `denied`).
    pub include_unknown: bool,
    /// Also fire for executables written by a step that connected outside policy when no
    /// downloader's command line names the file (the source is then the step's connections).
    pub include_uncertain: bool,
}

impl Default for DownloadRule {
    fn default() -> Self {
        DownloadRule {
            enabled: true,
            severity: Severity::High,
            severity_denied: Severity::Critical,
            include_unknown: true,
            include_uncertain: true,
        }
    }
}

/// A rule on an API client that runs inside a container.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerClientRule {
    pub enabled: bool,
    pub severity: Severity,
}

impl Default for ContainerClientRule {
    fn default() -> Self {
        ContainerClientRule {
            enabled: true,
            severity: Severity::High,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientRule {
    pub enabled: bool,
    pub severity: Severity,
}

impl Default for ClientRule {
    fn default() -> Self {
        ClientRule {
            enabled: true,
            severity: Severity::Medium,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpApiRule {
    pub enabled: bool,
    pub severity: Severity,
    /// TCP clients that are not "remote": addresses or CIDRs (loopback is never remote).
    pub allowed_addresses: Vec<AddrPattern>,
}

impl Default for TcpApiRule {
    fn default() -> Self {
        TcpApiRule {
            enabled: true,
            severity: Severity::High,
            allowed_addresses: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundRule {
    pub enabled: bool,
    /// For destinations classed `unknown`.
    pub severity: Severity,
    /// For destinations classed `denied`.
    pub severity_denied: Severity,
    /// Fire on `unknown` destinations too (not only `denied`).
    pub include_unknown: bool,
}

impl Default for OutboundRule {
    fn default() -> Self {
        OutboundRule {
            enabled: true,
            severity: Severity::Medium,
            severity_denied: Severity::High,
            include_unknown: true,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeployRule {
    pub enabled: bool,
    /// A start at most this many seconds after the image was built fires.
    pub window_secs: u64,
    pub severity: Severity,
    /// When the build also had an outbound connection that was not `allowed`.
    pub severity_with_outbound: Severity,
}

impl Default for DeployRule {
    fn default() -> Self {
        DeployRule {
            enabled: true,
            window_secs: 600,
            severity: Severity::Medium,
            severity_with_outbound: Severity::High,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChainRule {
    pub enabled: bool,
    /// The start must come at most this many seconds after the push.
    pub window_secs: u64,
    pub severity: Severity,
}

impl Default for ChainRule {
    fn default() -> Self {
        ChainRule {
            enabled: true,
            window_secs: 7 * 24 * 3600,
            severity: Severity::High,
        }
    }
}

/// Bounds of the persisted image lineage store.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LineagePolicy {
    /// Images kept at most (the oldest builds go first).
    pub max_images: usize,
    /// Images built longer ago than this are forgotten.
    pub retention_days: u64,
}

impl Default for LineagePolicy {
    fn default() -> Self {
        LineagePolicy {
            max_images: 10_000,
            retention_days: 30,
        }
    }
}
