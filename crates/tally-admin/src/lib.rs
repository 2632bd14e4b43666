//! Tally's admin module: API keys and the identity they prove.
//!
//! A key is `tly_<id>_<secret>`: the id finds the row, the secret proves
//! possession. Only a SHA-256 of the whole key is stored; secrets are 256
//! random bits, so a fast hash is enough (a slow password hash protects
//! low-entropy secrets, which these are not). The plain key is returned
//! once, at creation.

pub mod audit;

use chrono::Utc;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tally_core::{Identity, Role};
use tally_db::Pool;

/// Errors of key management.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The database failed.
    #[error("api keys: {0}")]
    Db(#[from] sqlx::Error),
    /// A role that needs a scope got none, or the reverse.
    #[error("{0}")]
    InvalidRole(String),
    /// No such key.
    #[error("no API key with id '{0}'")]
    NotFound(String),
}

/// A key's public description (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKeyInfo {
    /// The key id (the part after `tly_` and before the secret).
    pub key_id: String,
    /// What the key may do.
    pub role: Role,
    /// A note for people.
    pub label: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Revocation time, if revoked.
    pub revoked_at: Option<String>,
    /// When the key last authenticated a request (to the minute).
    pub last_used_at: Option<String>,
}

/// A newly created key: the only time its plain text exists.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// The description.
    pub info: ApiKeyInfo,
    /// The full key to hand to the user.
    pub secret: String,
}

fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn role_columns(role: &Role) -> (&'static str, Option<&str>) {
    match role {
        Role::Admin => ("admin", None),
        Role::AccountReader { account_id } => ("account_reader", Some(account_id)),
        Role::ProjectReader { project_id } => ("project_reader", Some(project_id)),
    }
}

fn role_from_columns(role: &str, scope: Option<String>) -> Option<Role> {
    match (role, scope) {
        ("admin", None) => Some(Role::Admin),
        ("account_reader", Some(account_id)) => Some(Role::AccountReader { account_id }),
        ("project_reader", Some(project_id)) => Some(Role::ProjectReader { project_id }),
        _ => None,
    }
}

fn rfc3339(us: Option<i64>) -> Option<String> {
    us.and_then(chrono::DateTime::from_timestamp_micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// The API key registry in the billing database.
#[derive(Debug, Clone)]
pub struct ApiKeys {
    pool: Pool,
}

type KeyRow = (
    String,
    String,
    Option<String>,
    String,
    i64,
    Option<i64>,
    Option<i64>,
);

impl ApiKeys {
    /// The registry of a database.
    pub fn new(pool: Pool) -> ApiKeys {
        ApiKeys { pool }
    }

    /// The database the registry (and the audit log) lives in.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Creates a key with `role`. Returns the only copy of its secret.
    pub async fn create(&self, role: Role, label: &str) -> Result<NewApiKey, KeyError> {
        if let Role::AccountReader { account_id } = &role
            && account_id.is_empty()
        {
            return Err(KeyError::InvalidRole(
                "an account_reader key needs --account ID".into(),
            ));
        }
        if let Role::ProjectReader { project_id } = &role
            && project_id.is_empty()
        {
            return Err(KeyError::InvalidRole(
                "a project_reader key needs --project ID".into(),
            ));
        }
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let key_id = hex::encode(&raw[..6]);
        rand::rng().fill_bytes(&mut raw);
        let secret = format!("tly_{key_id}_{}", hex::encode(raw));
        let (role_name, scope) = role_columns(&role);
        let now = Utc::now().timestamp_micros();
        sqlx::query(
            "INSERT INTO api_keys (key_id, secret_sha256, role, scope_id, label, created_at_us) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&key_id)
        .bind(digest(&secret))
        .bind(role_name)
        .bind(scope)
        .bind(label)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(NewApiKey {
            info: ApiKeyInfo {
                key_id,
                role,
                label: label.to_string(),
                created_at: rfc3339(Some(now)).unwrap_or_default(),
                revoked_at: None,
                last_used_at: None,
            },
            secret,
        })
    }

    /// The identity a presented key proves, or `None` for an unknown or
    /// revoked key. Records the use at most once a minute per key.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<Identity>, KeyError> {
        let row: Option<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT key_id, role, scope_id FROM api_keys WHERE secret_sha256 = $1 AND revoked_at_us IS NULL",
        )
        .bind(digest(presented))
        .fetch_optional(&self.pool)
        .await?;
        let Some((key_id, role, scope)) = row else {
            return Ok(None);
        };
        let Some(role) = role_from_columns(&role, scope) else {
            return Ok(None);
        };
        let now = Utc::now().timestamp_micros();
        sqlx::query(
            "UPDATE api_keys SET last_used_us = $1 WHERE key_id = $2 AND (last_used_us IS NULL OR last_used_us < $3)",
        )
        .bind(now)
        .bind(&key_id)
        .bind(now - 60_000_000)
        .execute(&self.pool)
        .await?;
        Ok(Some(Identity {
            principal: format!("key:{key_id}"),
            role,
        }))
    }

    /// All keys, newest first.
    pub async fn list(&self) -> Result<Vec<ApiKeyInfo>, KeyError> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT key_id, role, scope_id, label, created_at_us, revoked_at_us, last_used_us FROM api_keys ORDER BY created_at_us DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(key_id, role, scope, label, created, revoked, used)| {
                Some(ApiKeyInfo {
                    key_id,
                    role: role_from_columns(&role, scope)?,
                    label,
                    created_at: rfc3339(Some(created)).unwrap_or_default(),
                    revoked_at: rfc3339(revoked),
                    last_used_at: rfc3339(used),
                })
            })
            .collect())
    }

    /// Revokes a key; later requests with it get 401.
    pub async fn revoke(&self, key_id: &str) -> Result<(), KeyError> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at_us = $1 WHERE key_id = $2 AND revoked_at_us IS NULL",
        )
        .bind(Utc::now().timestamp_micros())
        .bind(key_id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(KeyError::NotFound(key_id.to_string()));
        }
        Ok(())
    }

    /// Whether any key was ever created (first start detection).
    pub async fn any(&self) -> Result<bool, KeyError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys")
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_db::Database;

    async fn keys() -> (tempfile::TempDir, ApiKeys) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&Database::sqlite_url_in(dir.path()))
            .await
            .unwrap();
        (dir, ApiKeys::new(db.pool))
    }

    #[tokio::test]
    async fn created_key_authenticates_until_revoked() {
        let (_d, keys) = keys().await;
        assert!(!keys.any().await.unwrap());
        let k = keys.create(Role::Admin, "ops").await.unwrap();
        assert!(k.secret.starts_with(&format!("tly_{}_", k.info.key_id)));
        let id = keys.authenticate(&k.secret).await.unwrap().unwrap();
        assert_eq!(id.role, Role::Admin);
        assert!(keys.authenticate("tly_nope").await.unwrap().is_none());
        let listed = keys.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].last_used_at.is_some());
        keys.revoke(&k.info.key_id).await.unwrap();
        assert!(keys.authenticate(&k.secret).await.unwrap().is_none());
        assert!(matches!(
            keys.revoke(&k.info.key_id).await,
            Err(KeyError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn secrets_are_not_stored() {
        let (_d, keys) = keys().await;
        let k = keys.create(Role::Admin, "").await.unwrap();
        let stored: String = sqlx::query_scalar("SELECT secret_sha256 FROM api_keys")
            .fetch_one(&keys.pool)
            .await
            .unwrap();
        assert!(!stored.contains(&k.secret));
        assert_eq!(stored, digest(&k.secret));
    }

    #[tokio::test]
    async fn scoped_roles_keep_their_scope() {
        let (_d, keys) = keys().await;
        let role = Role::ProjectReader {
            project_id: "p1".into(),
        };
        let k = keys.create(role.clone(), "").await.unwrap();
        assert_eq!(
            keys.authenticate(&k.secret).await.unwrap().unwrap().role,
            role
        );
        let err = keys
            .create(
                Role::ProjectReader {
                    project_id: String::new(),
                },
                "",
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--project"));
    }
}
