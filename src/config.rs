//! Configuration: defaults, then a TOML file, then environment variables,
//! then command-line flags — each later source overriding the earlier.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// The embedded store used when nothing else is configured.
pub const DEFAULT_STORE: &str = "sqlite://journey.db";
/// Where the rules files live by default.
pub const DEFAULT_RULES_DIR: &str = "projections";

/// Why configuration could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// An environment variable has a bad value.
    #[error("environment variable {name}: {problem}")]
    Env {
        /// Variable.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// The file is not valid TOML for [`Config`].
    #[error("config file {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Parser message, naming the key and line.
        message: String,
    },
}

/// Settings shared by every command.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Store URL (`sqlite://…`, `postgres://…`, `esdb://…`).
    pub store: String,
    /// Directory of the rules files (`projections/`).
    pub rules_dir: PathBuf,
    /// Settings of `journey serve`.
    pub server: ServerConfig,
    /// Settings of the projection runner.
    pub projections: ProjectionsConfig,
    /// Settings of the pipeline endpoints.
    pub ingest: IngestConfig,
}

/// Settings of the pipeline endpoints (`[ingest]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// The Segment mapping file (`JOURNEY_SEGMENT_MAPPING`); when absent,
    /// `<rules_dir>/ingest/segment.toml` if it exists, else the built-in
    /// one.
    pub segment_mapping: Option<PathBuf>,
    /// Stripped from CloudEvents `type` (`JOURNEY_CLOUDEVENTS_TYPE_PREFIX`),
    /// e.g. `com.example.journey.`.
    pub cloudevents_type_prefix: Option<String>,
}

/// Settings of the projection runner (`[projections]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectionsConfig {
    /// Memory for customer states the live runner keeps, MiB
    /// (`JOURNEY_STATE_CACHE_MB`). States not cached are read back from the
    /// database when a customer's events arrive.
    pub state_cache_mb: usize,
    /// Read-model versions kept: the active one and the ones before it
    /// (`JOURNEY_KEEP_VERSIONS`); older ones are dropped after a switch.
    pub keep_versions: usize,
    /// Pins "now" (RFC 3339) for reproducible runs over historical data
    /// (`JOURNEY_NOW`); the wall clock when absent.
    pub now: Option<String>,
}

impl Default for ProjectionsConfig {
    fn default() -> Self {
        Self {
            state_cache_mb: 64,
            keep_versions: 2,
            now: None,
        }
    }
}

/// Settings of the HTTP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Listen address.
    pub addr: String,
    /// API keys and their roles.
    pub api_keys: Vec<ApiKeyConfig>,
}

/// One bearer API key and the role it grants.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// A name for logs and audit metadata (never the key itself).
    pub name: String,
    /// The secret bearer token.
    pub key: String,
    /// `app`, `analyst`, `auditor` or `admin`.
    pub role: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            store: DEFAULT_STORE.to_owned(),
            rules_dir: PathBuf::from(DEFAULT_RULES_DIR),
            server: ServerConfig::default(),
            projections: ProjectionsConfig::default(),
            ingest: IngestConfig::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".to_owned(),
            api_keys: Vec::new(),
        }
    }
}

impl Config {
    /// Loads `path` if given (it must exist), else `./journey.toml` if it
    /// exists, then applies `JOURNEY_STORE`, `JOURNEY_RULES` and
    /// `JOURNEY_ADDR` from the environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(p) => Self::from_file(p)?,
            None if Path::new("journey.toml").exists() => {
                Self::from_file(Path::new("journey.toml"))?
            }
            None => Self::default(),
        };
        if let Ok(store) = std::env::var("JOURNEY_STORE") {
            config.store = store;
        }
        if let Ok(rules) = std::env::var("JOURNEY_RULES") {
            config.rules_dir = PathBuf::from(rules);
        }
        if let Ok(addr) = std::env::var("JOURNEY_ADDR") {
            config.server.addr = addr;
        }
        if let Ok(path) = std::env::var("JOURNEY_SEGMENT_MAPPING") {
            config.ingest.segment_mapping = Some(PathBuf::from(path));
        }
        if let Ok(prefix) = std::env::var("JOURNEY_CLOUDEVENTS_TYPE_PREFIX") {
            config.ingest.cloudevents_type_prefix = Some(prefix);
        }
        let number = |name: &str| -> Result<Option<usize>, ConfigError> {
            match std::env::var(name) {
                Ok(text) => text.trim().parse().map(Some).map_err(|_| ConfigError::Env {
                    name: name.to_owned(),
                    problem: format!("must be a whole number, got {text:?}"),
                }),
                Err(_) => Ok(None),
            }
        };
        if let Some(mb) = number("JOURNEY_STATE_CACHE_MB")? {
            config.projections.state_cache_mb = mb;
        }
        if let Some(keep) = number("JOURNEY_KEEP_VERSIONS")? {
            config.projections.keep_versions = keep;
        }
        if let Ok(now) = std::env::var("JOURNEY_NOW") {
            config.projections.now = Some(now);
        }
        Ok(config)
    }

    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}
