//! The audit events in PostgreSQL, over one connection that is made again
//! when it breaks.

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls, Row};

/// The schema this build reads and writes: the number of the last migration
/// it needs. `/readyz` fails until the database has it.
pub const SCHEMA_VERSION: i32 = 2;

/// What a client sends to store an event.
#[derive(Debug, Deserialize)]
pub struct NewEvent {
    pub notification_id: String,
    #[serde(default = "sent")]
    pub event_type: String,
    pub payload: serde_json::Value,
}

fn sent() -> String {
    "notification.sent".to_owned()
}

/// A stored event.
#[derive(Debug, Serialize)]
pub struct Event {
    pub id: i64,
    pub notification_id: String,
    pub event_type: String,
    pub payload: serde_json::Value,
    pub stored_at: String,
}

const COLUMNS: &str = "id, notification_id, event_type, payload, stored_at::text";

impl Event {
    fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get(0)?,
            notification_id: row.try_get(1)?,
            event_type: row.try_get(2)?,
            payload: row.try_get(3)?,
            stored_at: row.try_get(4)?,
        })
    }
}

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("connecting to PostgreSQL")]
    Connect(#[source] tokio_postgres::Error),
    #[error("{what}")]
    Query {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("the database has schema version {found}, this build needs {SCHEMA_VERSION}: run the migrations")]
    Schema { found: i32 },
}

/// PostgreSQL, connected on first use.
pub struct Store {
    url: String,
    client: Mutex<Option<std::sync::Arc<Client>>>,
}

impl Store {
    pub fn new(url: &str) -> Self {
        Self { url: url.to_owned(), client: Mutex::new(None) }
    }

    /// The connection, made again if it closed.
    async fn client(&self) -> Result<std::sync::Arc<Client>, StoreError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls).await.map_err(StoreError::Connect)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                eprintln!("datastorage: PostgreSQL connection closed: {error}");
            }
        });
        let client = std::sync::Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// The database answers and has the schema this build needs.
    pub async fn ready(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[])
            .await
            .map_err(|source| StoreError::Query { what: "reading the schema version", source })?;
        let found: i32 =
            row.try_get(0).map_err(|source| StoreError::Query { what: "reading the schema version", source })?;
        if found < SCHEMA_VERSION {
            return Err(StoreError::Schema { found });
        }
        Ok(())
    }

    /// Stores the event; `None` when one with its notification id is there already.
    pub async fn insert(&self, event: &NewEvent) -> Result<Option<Event>, StoreError> {
        let what = "inserting an audit event";
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "INSERT INTO audit_events (notification_id, event_type, payload) VALUES ($1, $2, $3)
                     ON CONFLICT (notification_id) DO NOTHING RETURNING {COLUMNS}"
                ),
                &[&event.notification_id, &event.event_type, &event.payload],
            )
            .await
            .map_err(|source| StoreError::Query { what, source })?;
        row.map(|r| Event::from_row(&r)).transpose().map_err(|source| StoreError::Query { what, source })
    }

    /// The event of a notification.
    pub async fn get(&self, notification_id: &str) -> Result<Option<Event>, StoreError> {
        let what = "reading an audit event";
        let client = self.client().await?;
        let row = client
            .query_opt(&format!("SELECT {COLUMNS} FROM audit_events WHERE notification_id = $1"), &[&notification_id])
            .await
            .map_err(|source| StoreError::Query { what, source })?;
        row.map(|r| Event::from_row(&r)).transpose().map_err(|source| StoreError::Query { what, source })
    }
}
