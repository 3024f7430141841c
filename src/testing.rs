//! Helpers for tests that need a real database: a uniquely named
//! PostgreSQL database per test (created and dropped), and temp SQLite files.
//!
//! Public so that integration tests and the contract suite share one way of
//! doing it; not part of the product's API.

use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};

/// The server tests use: `DATABASE_URL`, or the local default.
pub fn postgres_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A throw-away PostgreSQL database with a unique name.
pub struct TempDatabase {
    /// URL of the new database.
    pub url: String,
    admin_url: String,
    name: String,
}

impl TempDatabase {
    /// Creates `journey_test_<random>` on the server of [`postgres_url`].
    pub async fn create() -> Result<Self, sqlx::Error> {
        let admin_url = postgres_url();
        let name = format!("journey_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin_url).await?;
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await?;
        conn.close().await?;
        let mut url =
            url::Url::parse(&admin_url).map_err(|e| sqlx::Error::Configuration(e.into()))?;
        url.set_path(&name);
        Ok(Self {
            url: url.to_string(),
            admin_url,
            name,
        })
    }

    /// Drops the database, disconnecting whoever is still connected.
    pub async fn drop_database(self) {
        let result = async {
            let mut conn = PgConnection::connect(&self.admin_url).await?;
            conn.execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
                .await?;
            conn.close().await
        };
        match tokio::time::timeout(Duration::from_secs(30), result).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("warning: timed out dropping test database {}", self.name),
        }
    }
}

/// A `sqlite://` URL for a new file in a fresh temporary directory; keep the
/// returned guard alive for as long as the file is used.
pub fn temp_sqlite() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("journey.db").display());
    (dir, url)
}
