//! Daemon configuration (`/etc/egress-enforcer/config.yaml`, DESIGN §6).
//!
//! Every key is optional. Unknown keys are rejected (a typo must not silently weaken policy),
//! and errors name the file and, where the YAML parser knows it, the line.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/egress-enforcer/config.yaml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    pub mode: Mode,
    /// cgroup v2 directories, relative to the cgroup2 mount.
    pub cgroups: Vec<String>,
    pub bpffs: PathBuf,
    pub allow: Allow,
    pub maps: MapSizes,
    pub log: Log,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Allow {
    pub loopback: bool,
    pub cidrs: Vec<String>,
}

/// Capacity of the kernel maps. Fixed when the maps are first created and pinned: a daemon
/// restarted with other sizes refuses to reuse maps of the wrong size rather than truncate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MapSizes {
    pub exact_rules: u32,
    pub prefix_rules: u32,
    /// Bytes; a power of two, at least one page.
    pub event_buffer: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Log {
    pub format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::Enforce,
            cgroups: vec!["egress-enforcer".to_owned()],
            bpffs: PathBuf::from("/sys/fs/bpf"),
            allow: Allow::default(),
            maps: MapSizes::default(),
            log: Log::default(),
        }
    }
}

impl Default for Allow {
    fn default() -> Self {
        Self {
            loopback: true,
            cidrs: Vec::new(),
        }
    }
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            exact_rules: 65_536,
            prefix_rules: 16_384,
            event_buffer: 256 * 1024,
        }
    }
}

impl Config {
    /// Reads `path`; a missing file at the default location means "all defaults", a missing
    /// file that was asked for explicitly is an error.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let (path, explicit) = match path {
            Some(p) => (p, true),
            None => (Path::new(DEFAULT_PATH), false),
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading config {}", path.display())),
        }
    }

    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Self> {
        let config: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| {
                let at = e
                    .location()
                    .map(|l| format!(":{}:{}", l.line(), l.column()))
                    .unwrap_or_default();
                anyhow::anyhow!("{}{at}: {e}", path.display())
            })?
        };
        config
            .validate()
            .with_context(|| format!("{}: invalid config", path.display()))?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.cgroups.is_empty() {
            bail!("cgroups: at least one cgroup is needed");
        }
        for c in &self.cgroups {
            cgroup_relative(c).with_context(|| format!("cgroups: {c:?}"))?;
        }
        if !self.bpffs.is_absolute() {
            bail!(
                "bpffs: must be an absolute path, got {}",
                self.bpffs.display()
            );
        }
        for cidr in &self.allow.cidrs {
            crate::policy::allow_spec::parse_cidr(cidr)
                .with_context(|| format!("allow.cidrs: {cidr:?}"))?;
        }
        let m = &self.maps;
        if m.exact_rules == 0 || m.prefix_rules == 0 {
            bail!("maps: exactRules and prefixRules must be at least 1");
        }
        if !m.event_buffer.is_power_of_two() || m.event_buffer < 4096 {
            bail!("maps.eventBuffer: must be a power of two of at least 4096 bytes");
        }
        Ok(())
    }

    /// `allow.cidrs` as parsed networks (validated in `parse`).
    pub fn allowed_cidrs(&self) -> Vec<crate::policy::allow_spec::Net> {
        self.allow
            .cidrs
            .iter()
            .filter_map(|c| crate::policy::allow_spec::parse_cidr(c).ok())
            .collect()
    }
}

/// Normalises a configured cgroup to a path relative to the cgroup2 mount ("" = the root).
/// Rejects `..` so a config cannot point outside the hierarchy.
pub fn cgroup_relative(dir: &str) -> anyhow::Result<String> {
    let mut parts = Vec::new();
    for c in Path::new(dir).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => parts.push(p.to_str().context("not UTF-8")?.to_owned()),
            Component::ParentDir | Component::Prefix(_) => bail!("must not contain '..'"),
        }
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Config> {
        Config::parse(text, Path::new("c.yaml"))
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn keys_are_camel_case() {
        let c = parse(
            "mode: audit\ncgroups: [a/b, c]\nbpffs: /x\nallow: {loopback: false, cidrs: [10.0.0.0/8]}\nmaps: {exactRules: 10}\nlog: {format: json}\n",
        )
        .unwrap();
        assert_eq!(c.mode, Mode::Audit);
        assert_eq!(c.cgroups, ["a/b", "c"]);
        assert!(!c.allow.loopback);
        assert_eq!(c.maps.exact_rules, 10);
        assert_eq!(c.maps.prefix_rules, MapSizes::default().prefix_rules);
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let err = parse("mode: enforce\nmod: audit\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.yaml:2:"), "{err}");
        assert!(err.contains("mod"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(parse("mode: permissive").is_err());
        assert!(parse("cgroups: []").is_err());
        assert!(parse("cgroups: [../escape]").is_err());
        assert!(parse("bpffs: relative").is_err());
        assert!(parse("allow: {cidrs: [10.0.0.0/33]}").is_err());
        assert!(parse("maps: {eventBuffer: 5000}").is_err());
    }

    #[test]
    fn the_shipped_example_is_the_defaults() {
        let text = include_str!("../../config/config.yaml");
        assert_eq!(parse(text).unwrap(), Config::default());
    }

    #[test]
    fn missing_default_file_is_defaults_but_explicit_missing_file_is_an_error() {
        assert!(Config::load(Some(Path::new("/nonexistent/ee.yaml"))).is_err());
    }
}
