//! The one error type for rules files under `projections/`: it always names
//! the file, the key and what is wrong, so an analyst can fix a threshold
//! without reading Rust.

use thiserror::Error;

/// A rules file that cannot be used, with the file, key and problem.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{file}: {key}: {problem}")]
pub struct RulesError {
    /// The file the rules came from (as given by the caller).
    pub file: String,
    /// The dotted key at fault, e.g. `tiers.gold_min_spend_minor`.
    pub key: String,
    /// Why the value is refused.
    pub problem: String,
}

impl RulesError {
    /// Builds an error for `key` in `file`.
    pub fn new(file: &str, key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// Turns a TOML parse/shape error into a rules error; the key is taken
    /// from the offending line (`key = value`) when there is one, and the
    /// problem names the line number.
    pub fn from_toml(file: &str, text: &str, err: &toml::de::Error) -> Self {
        let (line_no, key) = match err.span() {
            Some(span) => {
                let start = span.start.min(text.len());
                let line_no = text[..start].matches('\n').count() + 1;
                let line = text.lines().nth(line_no - 1).unwrap_or("");
                let key = match line.split_once('=') {
                    Some((k, _)) => k.trim().to_owned(),
                    None => line.trim().to_owned(),
                };
                (Some(line_no), key)
            }
            None => (None, String::new()),
        };
        let message = err.message().trim().to_owned();
        let problem = match line_no {
            Some(n) => format!("{message} (line {n})"),
            None => message,
        };
        Self::new(
            file,
            if key.is_empty() {
                "(document)".into()
            } else {
                key
            },
            problem,
        )
    }
}

/// Reads and parses a rules file, mapping I/O failures to a [`RulesError`].
pub fn read_rules_file(path: &std::path::Path) -> Result<String, RulesError> {
    std::fs::read_to_string(path).map_err(|e| {
        RulesError::new(
            &path.display().to_string(),
            "(file)",
            format!("cannot read: {e}"),
        )
    })
}

/// A rules file under `projections/`: its name, shipped text and checks.
/// Reading, parsing and validating are written once here for every file.
pub trait RulesFile: serde::de::DeserializeOwned {
    /// File name inside a rules directory, e.g. `loyalty.toml`.
    const FILE_NAME: &'static str;
    /// Path of the shipped defaults, as errors name it.
    const SHIPPED_PATH: &'static str;
    /// Text of the shipped defaults, embedded in the binary.
    const SHIPPED_TOML: &'static str;

    /// Checks values and their relations; `file` names the source in errors.
    fn check(&self, file: &str) -> Result<(), RulesError>;

    /// The shipped defaults.
    fn shipped() -> Self {
        Self::from_toml_str(Self::SHIPPED_PATH, Self::SHIPPED_TOML)
            .unwrap_or_else(|e| panic!("the shipped rules are invalid: {e}"))
    }

    /// Loads `DIR/<FILE_NAME>` (the layout `journey rebuild --rules DIR` uses).
    fn load_dir(dir: &std::path::Path) -> Result<Self, RulesError> {
        Self::load(&dir.join(Self::FILE_NAME))
    }

    /// Reads and validates a rules file from disk.
    fn load(path: &std::path::Path) -> Result<Self, RulesError> {
        let text = read_rules_file(path)?;
        Self::from_toml_str(&path.display().to_string(), &text)
    }

    /// Parses and validates rules text; `file` names the source in errors.
    fn from_toml_str(file: &str, text: &str) -> Result<Self, RulesError> {
        let rules: Self =
            toml::from_str(text).map_err(|e| RulesError::from_toml(file, text, &e))?;
        rules.check(file)?;
        Ok(rules)
    }
}
