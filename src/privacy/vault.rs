//! The vault: per-customer keys in the `customer_keys` table (same SQLite
//! file or PostgreSQL database as the events), and sealing / revealing of
//! profiles with them.
//!
//! Keys are created on first need, looked up on every call (no cache, so an
//! erasure in one process takes effect in every other at once), and never
//! logged: [`super::seal::CustomerKey`] redacts itself.

use std::fmt;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

use super::seal::{self, CustomerKey, ERASED};
use super::PrivacyError;
use crate::domain::events::{DomainEvent, Profile};
use crate::domain::{CustomerId, EventMetadata, NewEvent, RecordedEvent, StreamId};

/// Where the keys live.
#[derive(Clone)]
enum KeyTable {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Seals and reveals personal data with per-customer keys, and destroys
/// keys on erasure. Cheap to clone (it holds a connection pool).
#[derive(Clone)]
pub struct Vault {
    keys: KeyTable,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match self.keys {
            KeyTable::Sqlite(_) => "sqlite",
            KeyTable::Postgres(_) => "postgres",
        };
        write!(f, "Vault({backend})")
    }
}

/// A profile as readers see it: decrypted, or `[erased]` after an erasure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RevealedProfile {
    /// Full name.
    pub name: Option<String>,
    /// E-mail address.
    pub email: Option<String>,
    /// Phone number.
    pub phone: Option<String>,
    /// Postal address.
    pub address: Option<String>,
    /// True when the customer's key was destroyed: every sealed field then
    /// reads as [`ERASED`].
    pub erased: bool,
}

/// The state of one customer's key.
enum KeyState {
    Present(CustomerKey),
    Erased,
    Absent,
}

/// What destroying a key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KeyDestruction {
    /// A key existed and was deleted.
    pub key_deleted: bool,
    /// The customer was already marked erased.
    pub already_erased: bool,
    /// SQLite: the WAL was checkpointed and truncated, so no copy of the
    /// deleted key survives in it. Always true on PostgreSQL (VACUUMed).
    pub purged: bool,
}

fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

impl Vault {
    /// Opens the key table of the store a URL names (`sqlite://…` or
    /// `postgres://…`), migrating it if needed. Use the same URL as the
    /// store; on SQLite the keys live in the same file.
    pub async fn open(url: &str) -> Result<Self, PrivacyError> {
        if url.starts_with("sqlite:") {
            let options = crate::store::sqlite::writable_options(url)?
                .busy_timeout(Duration::from_secs(10))
                // Deleted keys are overwritten with zeros, not just unlinked.
                .pragma("secure_delete", "ON");
            let pool = crate::store::pool_options::<sqlx::Sqlite>()
                .max_connections(1)
                .connect_with(options)
                .await?;
            crate::store::sqlite::migrate(&pool).await?;
            Ok(Self::from_sqlite_pool(pool))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = crate::store::pool_options::<sqlx::Postgres>()
                .max_connections(4)
                .connect(url)
                .await?;
            crate::store::postgres::MIGRATOR.run(&pool).await?;
            Ok(Self::from_postgres_pool(pool))
        } else {
            Err(PrivacyError::UnsupportedUrl(url.to_owned()))
        }
    }

    /// Opens the key table for a command that only reads keys (revealing
    /// sealed fields): on SQLite the file is never created or written, as
    /// [`crate::store::open_read_only`] does.
    pub async fn open_read_only(url: &str) -> Result<Self, PrivacyError> {
        if url.starts_with("sqlite:") {
            crate::store::sqlite::open_read_only_with(url, 1, Self::from_sqlite_pool, || {
                Self::open(url)
            })
            .await
        } else {
            Self::open(url).await
        }
    }

    /// [`Vault::open_read_only`] for backends that have a key table; `None`
    /// for others.
    pub async fn open_read_only_if_supported(url: &str) -> Result<Option<Self>, PrivacyError> {
        match Self::open_read_only(url).await {
            Ok(vault) => Ok(Some(vault)),
            Err(PrivacyError::UnsupportedUrl(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// [`Vault::open`] for backends that have a key table (SQLite,
    /// PostgreSQL); `None` for others (EventStoreDB), whose writers must
    /// then refuse personal data.
    pub async fn open_if_supported(url: &str) -> Result<Option<Self>, PrivacyError> {
        match Self::open(url).await {
            Ok(vault) => Ok(Some(vault)),
            Err(PrivacyError::UnsupportedUrl(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Uses an existing, migrated SQLite pool. Its connections should have
    /// `PRAGMA secure_delete=ON`; [`Vault::destroy_key`] sets it as well.
    pub fn from_sqlite_pool(pool: SqlitePool) -> Self {
        Self {
            keys: KeyTable::Sqlite(pool),
        }
    }

    /// Uses an existing, migrated PostgreSQL pool (e.g. the store's).
    pub fn from_postgres_pool(pool: PgPool) -> Self {
        Self {
            keys: KeyTable::Postgres(pool),
        }
    }

    async fn key_state(&self, customer: &CustomerId) -> Result<KeyState, PrivacyError> {
        let id = customer.as_str();
        let (key, erased): (Option<Vec<u8>>, bool) = match &self.keys {
            KeyTable::Sqlite(pool) => {
                let key = sqlx::query_scalar("SELECT key FROM customer_keys WHERE customer_id = ?")
                    .bind(id)
                    .fetch_optional(pool)
                    .await?;
                let erased: Option<i64> =
                    sqlx::query_scalar("SELECT 1 FROM erased_customers WHERE customer_id = ?")
                        .bind(id)
                        .fetch_optional(pool)
                        .await?;
                (key, erased.is_some())
            }
            KeyTable::Postgres(pool) => {
                let key =
                    sqlx::query_scalar("SELECT key FROM customer_keys WHERE customer_id = $1")
                        .bind(id)
                        .fetch_optional(pool)
                        .await?;
                let erased: Option<i32> =
                    sqlx::query_scalar("SELECT 1 FROM erased_customers WHERE customer_id = $1")
                        .bind(id)
                        .fetch_optional(pool)
                        .await?;
                (key, erased.is_some())
            }
        };
        Ok(match (key, erased) {
            (_, true) => KeyState::Erased,
            (Some(bytes), false) => match CustomerKey::from_bytes(&bytes) {
                Some(k) => KeyState::Present(k),
                None => return Err(PrivacyError::KeyMissing(customer.to_string())),
            },
            (None, false) => KeyState::Absent,
        })
    }

    /// The customer's key, created on first need; refused after erasure.
    async fn key_for_sealing(&self, customer: &CustomerId) -> Result<CustomerKey, PrivacyError> {
        match self.key_state(customer).await? {
            KeyState::Present(k) => return Ok(k),
            KeyState::Erased => return Err(PrivacyError::Erased(customer.to_string())),
            KeyState::Absent => {}
        }
        let fresh = CustomerKey::generate();
        let id = customer.as_str();
        // Insert unless someone else did first or the customer was erased
        // meanwhile; then read whatever is stored.
        match &self.keys {
            KeyTable::Sqlite(pool) => {
                sqlx::query(
                    "INSERT INTO customer_keys (customer_id, key, created_at) \
                     SELECT ?1, ?2, ?3 WHERE NOT EXISTS \
                     (SELECT 1 FROM erased_customers WHERE customer_id = ?1) \
                     ON CONFLICT (customer_id) DO NOTHING",
                )
                .bind(id)
                .bind(fresh.as_bytes().as_slice())
                .bind(now_micros())
                .execute(pool)
                .await?;
            }
            KeyTable::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO customer_keys (customer_id, key, created_at) \
                     SELECT $1, $2, now() WHERE NOT EXISTS \
                     (SELECT 1 FROM erased_customers WHERE customer_id = $1) \
                     ON CONFLICT (customer_id) DO NOTHING",
                )
                .bind(id)
                .bind(fresh.as_bytes().as_slice())
                .execute(pool)
                .await?;
            }
        }
        match self.key_state(customer).await? {
            KeyState::Present(k) => Ok(k),
            KeyState::Erased => Err(PrivacyError::Erased(customer.to_string())),
            KeyState::Absent => Err(PrivacyError::KeyMissing(customer.to_string())),
        }
    }

    /// Encrypts every plaintext field of `profile` in place with the
    /// customer's key (creating it on first need). Already-sealed fields
    /// must open with that key. An empty profile needs no key.
    pub async fn seal_profile(
        &self,
        customer: &CustomerId,
        profile: &mut Profile,
    ) -> Result<(), PrivacyError> {
        if profile.is_empty() {
            return Ok(());
        }
        let key = self.key_for_sealing(customer).await?;
        for (field, slot) in fields_mut(profile) {
            let Some(value) = slot.as_mut() else { continue };
            if seal::is_sealed(value) {
                if seal::open(&key, customer.as_str(), field, value).is_none() {
                    return Err(PrivacyError::Undecryptable {
                        customer: customer.to_string(),
                        field,
                    });
                }
            } else {
                *value = seal::seal(&key, customer.as_str(), field, value);
            }
        }
        Ok(())
    }

    /// Decrypts a stored profile. After erasure every sealed field reads as
    /// [`ERASED`] and `erased` is set; a field that does not open is an error.
    pub async fn reveal_profile(
        &self,
        customer: &CustomerId,
        profile: &Profile,
    ) -> Result<RevealedProfile, PrivacyError> {
        // Without sealed fields there is nothing to open: skip the key
        // lookup (erasure itself is recorded in the customer's events).
        let any_sealed = [
            &profile.name,
            &profile.email,
            &profile.phone,
            &profile.address,
        ]
        .into_iter()
        .any(|v| v.as_deref().is_some_and(seal::is_sealed));
        let state = if any_sealed {
            self.key_state(customer).await?
        } else {
            KeyState::Absent
        };
        let mut out = RevealedProfile {
            erased: matches!(state, KeyState::Erased),
            ..Default::default()
        };
        let mut source = profile.clone();
        for ((field, value), target) in fields_mut(&mut source).into_iter().zip([
            &mut out.name,
            &mut out.email,
            &mut out.phone,
            &mut out.address,
        ]) {
            let Some(value) = value.take() else { continue };
            if !seal::is_sealed(&value) {
                *target = Some(value);
                continue;
            }
            *target = Some(match &state {
                KeyState::Present(key) => seal::open(key, customer.as_str(), field, &value)
                    .ok_or_else(|| PrivacyError::Undecryptable {
                        customer: customer.to_string(),
                        field,
                    })?,
                KeyState::Erased => ERASED.to_owned(),
                KeyState::Absent => return Err(PrivacyError::KeyMissing(customer.to_string())),
            });
        }
        Ok(out)
    }

    /// Seals the profile inside a domain event, if it carries one.
    pub async fn seal_event(
        &self,
        customer: &CustomerId,
        event: &mut DomainEvent,
    ) -> Result<(), PrivacyError> {
        match event {
            DomainEvent::CustomerRegistered(e) => self.seal_profile(customer, &mut e.profile).await,
            DomainEvent::ProfileChanged(e) => self.seal_profile(customer, &mut e.profile).await,
            _ => Ok(()),
        }
    }

    /// Re-wraps an envelope whose payload carries plaintext personal fields
    /// with those fields sealed (same id, time and metadata). Importers call
    /// this before appending; other events pass through untouched.
    pub async fn seal_new_event(
        &self,
        stream: &StreamId,
        event: NewEvent,
    ) -> Result<NewEvent, PrivacyError> {
        if !carries_profile(event.event_type()) {
            return Ok(event);
        }
        let mut domain = DomainEvent::decode(
            event.event_type(),
            event.schema_version(),
            event.payload_json(),
        )?;
        if profile_of(&domain).is_none_or(|p| !has_plaintext(p)) {
            return Ok(event);
        }
        let customer = stream
            .customer_id()
            .ok_or_else(|| PrivacyError::NotCustomerStream(stream.to_string()))?;
        self.seal_event(&customer, &mut domain).await?;
        let metadata: EventMetadata = serde_json::from_str(event.metadata_json())
            .expect("metadata of a NewEvent is its own canonical serialization");
        Ok(NewEvent::from_domain(
            event.event_id(),
            event.occurred_at(),
            &metadata,
            &domain,
        )?)
    }

    /// The payload of a stored event as JSON, with its profile (if any)
    /// replaced by the revealed one — for display (`journey events --reveal`).
    pub async fn reveal_payload(
        &self,
        event: &RecordedEvent,
    ) -> Result<serde_json::Value, PrivacyError> {
        let mut payload: serde_json::Value =
            serde_json::from_str(&event.payload_json).map_err(|e| {
                PrivacyError::Decode(crate::domain::DecodeError::Payload {
                    event_type: event.event_type.clone(),
                    schema_version: event.schema_version,
                    source: e,
                })
            })?;
        if !carries_profile(&event.event_type) {
            return Ok(payload);
        }
        let domain = event.decode()?;
        let (Some(profile), Some(customer)) = (profile_of(&domain), event.stream_id.customer_id())
        else {
            return Ok(payload);
        };
        let revealed = self.reveal_profile(&customer, profile).await?;
        payload["profile"] = serde_json::to_value(revealed).expect("profile serializes");
        Ok(payload)
    }

    /// Whether the customer's personal data has been erased.
    pub async fn is_erased(&self, customer: &CustomerId) -> Result<bool, PrivacyError> {
        Ok(matches!(self.key_state(customer).await?, KeyState::Erased))
    }

    /// Destroys the customer's key and marks them erased, so that no copy
    /// of the key remains readable in the database files: on SQLite the
    /// row is deleted with `secure_delete` (overwritten with zeros) and the
    /// WAL is checkpointed and truncated; on PostgreSQL the table is
    /// VACUUMed (base backups and archived WAL are outside our reach).
    pub async fn destroy_key(&self, customer: &CustomerId) -> Result<KeyDestruction, PrivacyError> {
        let id = customer.as_str();
        match &self.keys {
            KeyTable::Sqlite(pool) => {
                let mut conn = pool.acquire().await?;
                sqlx::query("PRAGMA secure_delete = ON")
                    .execute(&mut *conn)
                    .await?;
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                let deleted = sqlx::query("DELETE FROM customer_keys WHERE customer_id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let marked = sqlx::query(
                    "INSERT INTO erased_customers (customer_id, erased_at) VALUES (?, ?) \
                     ON CONFLICT (customer_id) DO NOTHING",
                )
                .bind(id)
                .bind(now_micros())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                drop(conn);
                let purged = self.checkpoint().await?;
                Ok(KeyDestruction {
                    key_deleted: deleted > 0,
                    already_erased: marked == 0,
                    purged,
                })
            }
            KeyTable::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let deleted = sqlx::query("DELETE FROM customer_keys WHERE customer_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let marked = sqlx::query(
                    "INSERT INTO erased_customers (customer_id, erased_at) VALUES ($1, now()) \
                     ON CONFLICT (customer_id) DO NOTHING",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                sqlx::query("VACUUM customer_keys").execute(pool).await?;
                Ok(KeyDestruction {
                    key_deleted: deleted > 0,
                    already_erased: marked == 0,
                    purged: true,
                })
            }
        }
    }

    /// SQLite: copies the WAL into the database file and truncates it to
    /// zero bytes, retrying while readers hold old snapshots. Returns
    /// whether it completed. A no-op (true) on PostgreSQL.
    pub async fn checkpoint(&self) -> Result<bool, PrivacyError> {
        let KeyTable::Sqlite(pool) = &self.keys else {
            return Ok(true);
        };
        for attempt in 0..50 {
            let (busy, _log, _done): (i64, i64, i64) =
                sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                    .fetch_one(pool)
                    .await?;
            if busy == 0 {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(20 * (attempt + 1).min(10))).await;
        }
        Ok(false)
    }
}

/// The profile fields by name, mutably, in a fixed order.
fn fields_mut(profile: &mut Profile) -> [(&'static str, &mut Option<String>); 4] {
    [
        ("name", &mut profile.name),
        ("email", &mut profile.email),
        ("phone", &mut profile.phone),
        ("address", &mut profile.address),
    ]
}

/// Whether events of this type can carry personal fields.
pub fn carries_profile(event_type: &str) -> bool {
    matches!(event_type, "CustomerRegistered" | "ProfileChanged")
}

fn profile_of(event: &DomainEvent) -> Option<&Profile> {
    match event {
        DomainEvent::CustomerRegistered(e) => Some(&e.profile),
        DomainEvent::ProfileChanged(e) => Some(&e.profile),
        _ => None,
    }
}

fn has_plaintext(profile: &Profile) -> bool {
    [
        &profile.name,
        &profile.email,
        &profile.phone,
        &profile.address,
    ]
    .into_iter()
    .flatten()
    .any(|v| !seal::is_sealed(v))
}

/// Whether an envelope would store personal fields in plaintext; writers
/// without a vault refuse such events.
pub fn has_plaintext_personal_data(event: &NewEvent) -> bool {
    if !carries_profile(event.event_type()) {
        return false;
    }
    match DomainEvent::decode(
        event.event_type(),
        event.schema_version(),
        event.payload_json(),
    ) {
        Ok(domain) => profile_of(&domain).is_some_and(has_plaintext),
        Err(_) => false,
    }
}
