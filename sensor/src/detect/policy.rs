//! The detection policy: who may build, where builds may connect, windows and severities.
//!
//! Read from a TOML file (`--policy FILE`, documented by `deploy/policy.example.toml` and
//! `docs/detections.md`). A policy is read whole or not at all: any unknown key, wrong type or
//! bad pattern is one [`PolicyError`] naming the file, line, column and field, and the caller
//! keeps what it had (the sensor refuses to start; a SIGHUP reload keeps the old policy).
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::output::record::ApiClient;

/// Policy class of an outbound destination, as written in `outbound[].policy`.
pub const ALLOWED: &str = "allowed";
pub const UNKNOWN: &str = "unknown";
pub const DENIED: &str = "denied";

/// Classifies a build's outbound destination (address, port, DNS name when seen) as
/// [`ALLOWED`], [`UNKNOWN`] or [`DENIED`]. Given to the build-session engine.
pub type OutboundClassifier = Arc<dyn Fn(&str, u16, Option<&str>) -> String + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Parse or validation error, located in the file.
    #[error("policy {path}: line {line}, column {column}{field}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        field: String,
        message: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// The whole policy file. Every section is optional; what is left out takes the defaults below.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Who is expected to ask for builds (rule `build_from_unexpected_client`).
    pub builders: Builders,
    /// Where build steps and the daemon (for a build) may connect.
    pub outbound: OutboundPolicy,
    pub rules: Rules,
    pub lineage: LineagePolicy,
}

/// The allow-list of builders. A client matches when any one list matches; all lists empty
/// means "no allow-list", and the rule stays quiet.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Builders {
    /// User names of local clients (as resolved from their uid).
    pub users: Vec<String>,
    /// Uids of local clients.
    pub uids: Vec<u32>,
    /// Executables: the client's own or any ancestor's (e.g. a CI agent running `docker`).
    pub exes: Vec<String>,
    /// Source addresses or CIDR blocks of TCP clients.
    pub addresses: Vec<AddrPattern>,
}

impl Builders {
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
            && self.uids.is_empty()
            && self.exes.is_empty()
            && self.addresses.is_empty()
    }

    /// Which entry of the allow-list the client matches, if any.
    pub fn matches(&self, c: &ApiClient) -> Option<String> {
        if let Some(user) = &c.user
            && self.users.iter().any(|u| u == user)
        {
            return Some(format!("user {user}"));
        }
        if let Some(uid) = c.uid
            && self.uids.contains(&uid)
        {
            return Some(format!("uid {uid}"));
        }
        let exes = c
            .exe
            .iter()
            .chain(c.ancestors.iter().filter_map(|a| a.exe.as_ref()));
        for exe in exes {
            if self.exes.iter().any(|e| e == exe) {
                return Some(format!("exe {exe}"));
            }
        }
        if let Some(addr) = c.addr.as_deref().and_then(parse_ip) {
            for p in &self.addresses {
                if p.matches_ip(addr, c.port) {
                    return Some(format!("address {p}"));
                }
            }
        }
        None
    }
}

/// Destinations, each `host`, `*.domain`, `IP`, `CIDR`, optionally with `:port`
/// (`[v6]:port` for IPv6). `denied` wins over `allowed`; anything else is `unknown`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundPolicy {
    pub allowed: Vec<AddrPattern>,
    pub denied: Vec<AddrPattern>,
}

impl Default for OutboundPolicy {
    fn default() -> Self {
        // Docker Hub's registry, auth and blob CDN: what a `FROM` of a Hub image talks to.
        let allowed = [
            "registry-1.docker.io",
            "auth.docker.io",
            "*.docker.io",
            "production.cloudflare.docker.com",
        ]
        .iter()
        .filter_map(|s| AddrPattern::from_str(s).ok())
        .collect();
        OutboundPolicy {
            allowed,
            denied: Vec::new(),
        }
    }
}

impl OutboundPolicy {
    /// `allowed`, `unknown` or `denied` for one destination.
    pub fn classify(&self, addr: &str, port: u16, dns_name: Option<&str>) -> &'static str {
        // A unix socket path (local IPC such as nscd or libnetwork) is not a network destination.
        if addr.starts_with('/') || addr.starts_with('@') {
            return ALLOWED;
        }
        let ip = parse_ip(addr);
        let hit = |p: &AddrPattern| {
            ip.is_some_and(|ip| p.matches_ip(ip, Some(port)))
                || dns_name.is_some_and(|n| p.matches_name(n, port))
        };
        if self.denied.iter().any(hit) {
            DENIED
        } else if self.allowed.iter().any(hit) {
            ALLOWED
        } else {
            UNKNOWN
        }
    }
}

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

impl Policy {
    /// Reads and validates a policy file: all of it or an error.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Policy::parse(&text, path)
    }

    /// Parses policy text; `path` is only used in the error.
    pub fn parse(text: &str, path: &Path) -> Result<Policy, PolicyError> {
        let policy: Policy = toml::from_str(text).map_err(|e| located(text, path, &e))?;
        policy
            .validate()
            .map_err(|(field, message)| PolicyError::Invalid {
                path: path.to_path_buf(),
                line: find_key_line(text, &field).unwrap_or(0),
                column: 1,
                field: format!(" (`{field}`)"),
                message,
            })?;
        Ok(policy)
    }

    /// Checks that need more than one value.
    fn validate(&self) -> Result<(), (String, String)> {
        let r = &self.rules;
        if r.deploy_soon_after_build.window_secs == 0 {
            return Err((
                "window_secs".into(),
                "rules.deploy_soon_after_build.window_secs must be > 0".into(),
            ));
        }
        if r.build_push_deploy_chain.window_secs == 0 {
            return Err((
                "window_secs".into(),
                "rules.build_push_deploy_chain.window_secs must be > 0".into(),
            ));
        }
        if self.lineage.max_images == 0 {
            return Err(("max_images".into(), "lineage.max_images must be > 0".into()));
        }
        if self.lineage.retention_days == 0 {
            return Err((
                "retention_days".into(),
                "lineage.retention_days must be > 0".into(),
            ));
        }
        Ok(())
    }
}

/// Turns a toml error into one line: where, which field (the source line), what.
fn located(text: &str, path: &Path, e: &toml::de::Error) -> PolicyError {
    let (line, column, src) = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
            let column = before[line_start..].chars().count() + 1;
            let src = text[line_start..]
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            (line, column, src)
        }
        None => (0, 0, String::new()),
    };
    PolicyError::Invalid {
        path: path.to_path_buf(),
        line,
        column,
        field: if src.is_empty() {
            String::new()
        } else {
            format!(" (`{src}`)")
        },
        message: e.message().trim().to_string(),
    }
}

/// The line (from 1) where `key = ` is first set, for errors found after parsing.
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = s.parse().ok()?;
    // `::ffff:a.b.c.d` compares as the IPv4 address it carries.
    Some(match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    })
}

/// One destination or source pattern from the policy.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct AddrPattern {
    host: HostPattern,
    port: Option<u16>,
    text: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    Net {
        addr: IpAddr,
        prefix: u8,
    },
    /// Lowercase name; `*.x` matches x's subdomains (not x itself).
    Name(String),
}

impl fmt::Display for AddrPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl TryFrom<String> for AddrPattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        AddrPattern::from_str(&s)
    }
}

impl FromStr for AddrPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let text = s.trim().to_string();
        if text.is_empty() {
            return Err("empty address pattern".into());
        }
        let bad_port = |p: &str| format!("`{text}`: bad port `{p}`");
        // Split an optional port: `[v6]:p`, `v4:p`, `name:p`; a bare IPv6 has several colons.
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (h, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("`{text}`: missing `]`"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p.parse::<u16>().map_err(|_| bad_port(p))?),
                None if after.is_empty() => None,
                None => return Err(format!("`{text}`: unexpected `{after}` after `]`")),
            };
            (h.to_string(), port)
        } else if text.matches(':').count() == 1 {
            let (h, p) = text.split_once(':').unwrap_or((&text, ""));
            (
                h.to_string(),
                Some(p.parse::<u16>().map_err(|_| bad_port(p))?),
            )
        } else {
            (text.clone(), None)
        };
        let host = if let Some((a, bits)) = host.split_once('/') {
            let addr =
                parse_ip(a).ok_or_else(|| format!("`{text}`: `{a}` is not an IP address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = bits
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("`{text}`: prefix length must be 0..={max}"))?;
            HostPattern::Net { addr, prefix }
        } else if let Some(addr) = parse_ip(&host) {
            HostPattern::Net {
                addr,
                prefix: if addr.is_ipv4() { 32 } else { 128 },
            }
        } else {
            let name = host.to_ascii_lowercase();
            let bare = name.strip_prefix("*.").unwrap_or(&name);
            let ok = !bare.is_empty()
                && bare.split('.').all(|l| {
                    !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !ok {
                return Err(format!(
                    "`{text}` is not a host name, `*.domain`, IP address or CIDR"
                ));
            }
            HostPattern::Name(name)
        };
        Ok(AddrPattern { host, port, text })
    }
}

impl AddrPattern {
    fn port_ok(&self, port: Option<u16>) -> bool {
        match (self.port, port) {
            (None, _) => true,
            (Some(want), Some(got)) => want == got,
            (Some(_), None) => false,
        }
    }

    pub fn matches_ip(&self, ip: IpAddr, port: Option<u16>) -> bool {
        let HostPattern::Net { addr, prefix } = self.host else {
            return false;
        };
        self.port_ok(port) && in_net(ip, addr, prefix)
    }

    pub fn matches_name(&self, name: &str, port: u16) -> bool {
        let HostPattern::Name(pat) = &self.host else {
            return false;
        };
        if !self.port_ok(Some(port)) {
            return false;
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match pat.strip_prefix("*.") {
            Some(domain) => name
                .strip_suffix(domain)
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
            None => name == *pat,
        }
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

pub fn is_loopback(addr: &str) -> bool {
    parse_ip(addr).is_some_and(|ip| ip.is_loopback())
}

/// The current policy, swapped whole on reload (SIGHUP). Cheap to clone; readers take a
/// snapshot with [`PolicyHandle::current`].
#[derive(Clone)]
pub struct PolicyHandle {
    inner: Arc<RwLock<Arc<Policy>>>,
}

impl PolicyHandle {
    pub fn new(policy: Policy) -> Self {
        PolicyHandle {
            inner: Arc::new(RwLock::new(Arc::new(policy))),
        }
    }

    /// Loads `path`, or the built-in defaults when `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, PolicyError> {
        Ok(PolicyHandle::new(match path {
            Some(p) => Policy::load(p)?,
            None => Policy::default(),
        }))
    }

    pub fn current(&self) -> Arc<Policy> {
        // A poisoned lock still holds a whole policy: swaps are a single assignment.
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads `path`; on any error the old policy stays in force and the error is returned.
    pub fn reload(&self, path: &Path) -> Result<(), PolicyError> {
        let fresh = Arc::new(Policy::load(path)?);
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// The classifier for build outbound connections; follows reloads.
    pub fn classifier(&self) -> OutboundClassifier {
        let h = self.clone();
        Arc::new(move |addr, port, name| {
            h.current().outbound.classify(addr, port, name).to_string()
        })
    }
}

/// `sensor config check FILE`: `Ok(summary)` or the one-line error.
pub fn check_file(path: &Path) -> Result<String, PolicyError> {
    let p = Policy::load(path)?;
    Ok(format!(
        "policy {} is valid: {} builder entries, {} allowed and {} denied destinations",
        path.display(),
        p.builders.users.len()
            + p.builders.uids.len()
            + p.builders.exes.len()
            + p.builders.addresses.len(),
        p.outbound.allowed.len(),
        p.outbound.denied.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::record::Ancestor;

    fn parse(s: &str) -> Result<Policy, PolicyError> {
        Policy::parse(s, Path::new("p.toml"))
    }

    #[test]
    fn example_policy_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policy.example.toml");
        let p = Policy::load(&path).unwrap();
        assert!(!p.builders.is_empty());
        assert!(check_file(&path).is_ok());
    }

    #[test]
    fn empty_policy_has_defaults() {
        let p = parse("").unwrap();
        assert!(p.builders.is_empty());
        assert_eq!(p.rules.deploy_soon_after_build.window_secs, 600);
        assert_eq!(
            p.outbound
                .classify("1.2.3.4", 443, Some("registry-1.docker.io")),
            ALLOWED
        );
        assert_eq!(p.outbound.classify("1.2.3.4", 443, None), UNKNOWN);
    }

    #[test]
    fn unknown_field_gives_line_and_field() {
        let e = parse("[rules.deploy_soon_after_build]\nwindow_secs = 60\nwindow_sec = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("window_sec"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn wrong_type_and_bad_pattern_and_bad_severity_are_located() {
        let e = parse("[rules.deploy_soon_after_build]\nwindow_secs = \"ten\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("window_secs"), "{e}");
        let e = parse("[outbound]\nallowed = [\n  \"ok.example\",\n  \"10.0.0.0/40\",\n]\n")
            .unwrap_err()
            .to_string();
        // toml locates an element's error at its array: the field and the bad entry are named.
        assert!(
            e.contains("line 2") && e.contains("allowed") && e.contains("10.0.0.0/40"),
            "{e}"
        );
        let e = parse("[rules.build_via_tcp_api]\nseverity = \"urgent\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("severity"), "{e}");
        let e = parse("[lineage]\nmax_images = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("max_images"), "{e}");
        let e = parse("[builders\nusers = []").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn classify_patterns() {
        let p = parse(
            "[outbound]\nallowed = [\"mirror.corp\", \"*.docker.io\", \"10.1.0.0/16\", \"192.0.2.7:5000\", \"[2001:db8::1]:443\"]\ndenied = [\"10.1.9.0/24\"]\n",
        )
        .unwrap();
        let o = &p.outbound;
        assert_eq!(o.classify("10.1.2.3", 80, None), ALLOWED);
        assert_eq!(o.classify("::ffff:10.1.2.3", 80, None), ALLOWED);
        assert_eq!(o.classify("10.1.9.3", 80, None), DENIED);
        assert_eq!(o.classify("192.0.2.7", 5000, None), ALLOWED);
        assert_eq!(o.classify("192.0.2.7", 80, None), UNKNOWN);
        assert_eq!(o.classify("2001:db8::1", 443, None), ALLOWED);
        assert_eq!(
            o.classify("8.8.8.8", 443, Some("Registry-1.Docker.IO.")),
            ALLOWED
        );
        assert_eq!(o.classify("8.8.8.8", 443, Some("docker.io")), UNKNOWN);
        assert_eq!(o.classify("8.8.8.8", 443, Some("mirror.corp")), ALLOWED);
        assert_eq!(
            o.classify("8.8.8.8", 443, Some("evil.mirror.corp")),
            UNKNOWN
        );
        assert_eq!(o.classify("/var/run/nscd/socket", 0, None), ALLOWED);
    }

    #[test]
    fn builders_allow_list() {
        let p =
            parse("[builders]\nusers = [\"ci\"]\nexes = [\"/usr/bin/gitlab-runner\"]\naddresses = [\"10.0.0.0/8\"]\n")
                .unwrap();
        let b = &p.builders;
        let mut c = ApiClient {
            transport: "unix".into(),
            uid: Some(1000),
            user: Some("bob".into()),
            exe: Some("/usr/bin/docker".into()),
            ..Default::default()
        };
        assert_eq!(b.matches(&c), None);
        c.ancestors.push(Ancestor {
            pid: 9,
            comm: "gitlab-runner".into(),
            exe: Some("/usr/bin/gitlab-runner".into()),
            uid: Some(0),
        });
        assert!(b.matches(&c).unwrap().contains("gitlab-runner"));
        let tcp = ApiClient {
            transport: "tcp".into(),
            addr: Some("10.2.3.4".into()),
            port: Some(5555),
            ..Default::default()
        };
        assert!(b.matches(&tcp).is_some());
        let far = ApiClient {
            addr: Some("192.0.2.1".into()),
            ..tcp
        };
        assert!(b.matches(&far).is_none());
    }

    #[test]
    fn reload_keeps_old_policy_on_error() {
        let dir = std::env::temp_dir().join(format!("sensor-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("p.toml");
        std::fs::write(&f, "[rules.deploy_soon_after_build]\nwindow_secs = 42\n").unwrap();
        let h = PolicyHandle::load(Some(&f)).unwrap();
        let classify = h.classifier();
        assert_eq!(h.current().rules.deploy_soon_after_build.window_secs, 42);
        std::fs::write(
            &f,
            "[rules.deploy_soon_after_build]\nwindow_secs = 43\nbogus = 1\n",
        )
        .unwrap();
        assert!(h.reload(&f).is_err());
        assert_eq!(h.current().rules.deploy_soon_after_build.window_secs, 42);
        std::fs::write(&f, "[outbound]\nallowed = [\"10.9.9.9\"]\n").unwrap();
        assert_eq!(classify("10.9.9.9", 80, None), UNKNOWN);
        h.reload(&f).unwrap();
        assert_eq!(classify("10.9.9.9", 80, None), ALLOWED);
        assert_eq!(h.current().rules.deploy_soon_after_build.window_secs, 600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
