//! Bearer API keys and roles.
//!
//! Keys come from `[[server.api_keys]]` in `journey.toml` and from
//! `JOURNEY_API_KEYS="name:role:key,..."`. Roles are ordered — each includes
//! the ones before it:
//! - `app`: query read models, record interactions, follow alerts/stages;
//! - `analyst`: plus cohorts (and rebuilds, when they exist);
//! - `auditor`: plus raw event history and the event subscription;
//! - `admin`: everything.
//!
//! Every root field carries a [`RoleGuard`]; a request without a valid key
//! gets `UNAUTHENTICATED`, a key with too small a role gets `FORBIDDEN`.

use std::fmt;
use std::str::FromStr;

use async_graphql::{Context, ErrorExtensions, Guard};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::config::ApiKeyConfig;

/// What a key may do; later variants include earlier ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Frontend applications.
    App,
    /// Analysts: cohorts and rebuilds.
    Analyst,
    /// Auditors: raw events and verification.
    Auditor,
    /// Operators: everything.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 4] = [Role::App, Role::Analyst, Role::Auditor, Role::Admin];

    /// The lower-case name used in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Role::App => "app",
            Role::Analyst => "analyst",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = AuthConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| AuthConfigError::UnknownRole(s.to_owned()))
    }
}

/// Why the key configuration is unusable.
#[derive(Debug, Error)]
pub enum AuthConfigError {
    /// A role name that is not one of the four.
    #[error("unknown role {0:?}: use app, analyst, auditor or admin")]
    UnknownRole(String),
    /// An entry of `JOURNEY_API_KEYS` is not `name:role:key`.
    #[error("JOURNEY_API_KEYS entry {index}: expected name:role:key")]
    BadEnvEntry {
        /// 1-based entry number (the key itself is never echoed).
        index: usize,
    },
    /// Keys must be long enough not to be guessed.
    #[error("API key {name:?} is shorter than 16 characters")]
    ShortKey {
        /// The key's name.
        name: String,
    },
}

/// An `Authorization` value that is not a configured bearer key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("invalid API key")]
pub struct InvalidKey;

/// The caller, once their key is recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's name (recorded as the actor of appended events).
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// The known keys, stored as SHA-256 digests so lookups take the same time
/// whatever the key's prefix.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    keys: Vec<([u8; 32], Caller)>,
}

impl ApiKeys {
    /// Keys from the config file entries.
    pub fn from_config(entries: &[ApiKeyConfig]) -> Result<Self, AuthConfigError> {
        let mut keys = Self::default();
        for entry in entries {
            keys.add(&entry.name, entry.role.parse()?, &entry.key)?;
        }
        Ok(keys)
    }

    /// Adds the keys of a `name:role:key,...` list (`JOURNEY_API_KEYS`).
    pub fn add_env_list(&mut self, list: &str) -> Result<(), AuthConfigError> {
        for (index, entry) in list.split(',').filter(|e| !e.trim().is_empty()).enumerate() {
            let mut parts = entry.trim().splitn(3, ':');
            let (Some(name), Some(role), Some(key)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(AuthConfigError::BadEnvEntry { index: index + 1 });
            };
            self.add(name, role.parse()?, key)?;
        }
        Ok(())
    }

    /// Adds one key.
    pub fn add(&mut self, name: &str, role: Role, key: &str) -> Result<(), AuthConfigError> {
        if key.len() < 16 {
            return Err(AuthConfigError::ShortKey { name: name.into() });
        }
        self.keys.push((
            Sha256::digest(key.as_bytes()).into(),
            Caller {
                name: name.to_owned(),
                role,
            },
        ));
        Ok(())
    }

    /// Whether no key is configured (then nobody can use the API).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The caller a bearer token belongs to.
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.keys
            .iter()
            .find(|(d, _)| constant_time_eq(d, &digest))
            .map(|(_, caller)| caller.clone())
    }

    /// Parses an `Authorization` header value: `Ok(None)` when absent,
    /// [`InvalidKey`] when present but not a known bearer key.
    pub fn from_header(&self, header: Option<&str>) -> Result<Option<Caller>, InvalidKey> {
        let Some(value) = header else {
            return Ok(None);
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(InvalidKey)?;
        self.authenticate(token.trim()).map(Some).ok_or(InvalidKey)
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh random key (for `serve --demo`): two v4 UUIDs, 244 random bits.
pub fn random_key() -> String {
    format!(
        "jl_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Refuses a field to callers below `min` role.
pub struct RoleGuard {
    min: Role,
}

impl RoleGuard {
    /// A guard requiring at least `min`.
    pub fn new(min: Role) -> Self {
        Self { min }
    }
}

impl Guard for RoleGuard {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        match ctx.data_opt::<Caller>() {
            None => Err(async_graphql::Error::new(
                "authentication required: send Authorization: Bearer <API key>",
            )
            .extend_with(|_, e| e.set("code", "UNAUTHENTICATED"))),
            Some(caller) if caller.role < self.min => Err(async_graphql::Error::new(format!(
                "role {} may not use this field; it needs {} or above",
                caller.role, self.min
            ))
            .extend_with(|_, e| {
                e.set("code", "FORBIDDEN");
                e.set("requiredRole", self.min.name());
            })),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lists_parse_and_keys_authenticate() {
        let mut keys = ApiKeys::default();
        keys.add_env_list("web:app:aaaaaaaaaaaaaaaa, ops:admin:bbbbbbbbbbbbbbbb")
            .unwrap();
        assert_eq!(
            keys.authenticate("bbbbbbbbbbbbbbbb").unwrap().role,
            Role::Admin
        );
        assert!(keys.authenticate("cccccccccccccccc").is_none());
        assert!(keys.from_header(Some("Basic x")).is_err());
        assert_eq!(keys.from_header(None), Ok(None));
        assert!(matches!(
            keys.add_env_list("x:root:cccccccccccccccc"),
            Err(AuthConfigError::UnknownRole(_))
        ));
        assert!(matches!(
            keys.add_env_list("x:app"),
            Err(AuthConfigError::BadEnvEntry { index: 1 })
        ));
        assert!(matches!(
            keys.add_env_list("x:app:short"),
            Err(AuthConfigError::ShortKey { .. })
        ));
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::App < Role::Analyst && Role::Analyst < Role::Auditor);
        assert!(Role::Auditor < Role::Admin);
    }
}
