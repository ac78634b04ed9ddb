//! Tenants, API keys and the audit log.

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{Store, new_id, now_ms};
use crate::core::{Role, TenantSlug};

/// A tenant as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Tenant {
    pub id: String,
    pub slug: String,
    pub name: String,
}

/// An API key as listed (`switchboard key list`): never its secret part.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyView {
    pub id: String,
    pub role: String,
    /// The key's first characters, to recognise it.
    pub prefix: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// What `tenant create` hands back. The keys are shown once and never stored in the clear.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CreatedTenant {
    pub tenant_id: String,
    pub slug: String,
    pub admin_key: String,
    pub widget_key: String,
}

/// The caller behind an API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant_id: String,
    pub key_id: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("a tenant with slug {0:?} already exists")]
    SlugTaken(String),
    #[error("there is no tenant `{0}` (`switchboard tenant list` shows them)")]
    UnknownTenant(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A fresh API key: `sb_` (or `sbw_` for public widget keys) and 40 random alphanumerics (~238 bits).
pub(crate) fn generate_key(role: Role) -> String {
    let body: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    match role {
        Role::Widget => format!("sbw_{body}"),
        _ => format!("sb_{body}"),
    }
}

/// SHA-256 hex of a key, as stored.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl Store {
    /// Creates a tenant with its implicit `api` channel, a first admin key and a widget key.
    pub async fn create_tenant(
        &self,
        slug: &TenantSlug,
        name: &str,
    ) -> Result<CreatedTenant, TenantError> {
        let now = now_ms();
        let tenant_id = new_id();
        let admin_key = generate_key(Role::Admin);
        let widget_key = generate_key(Role::Widget);
        let mut w = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO tenant (id, slug, name, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (slug) DO NOTHING",
        )
        .bind(&tenant_id)
        .bind(slug.as_str())
        .bind(name)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(TenantError::SlugTaken(slug.as_str().to_owned()));
        }
        sqlx::query(
            "INSERT INTO channel (id, tenant_id, kind, config, created_at, updated_at)
             VALUES ($1, $2, 'api', '{}', $3, $3)",
        )
        .bind(new_id())
        .bind(&tenant_id)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
        for (key, role) in [(&admin_key, Role::Admin), (&widget_key, Role::Widget)] {
            insert_key(&mut w.tx, &tenant_id, key, role, now).await?;
        }
        record_event(
            &mut w.tx,
            Some(&tenant_id),
            "tenant.created",
            Some(slug.as_str()),
            "{}",
        )
        .await?;
        w.commit().await?;
        Ok(CreatedTenant {
            tenant_id,
            slug: slug.as_str().to_owned(),
            admin_key,
            widget_key,
        })
    }

    /// Creates another API key for a tenant; the key is returned once.
    pub async fn create_key(&self, slug: &TenantSlug, role: Role) -> Result<String, TenantError> {
        let tenant = self
            .tenant_by_slug(slug.as_str())
            .await?
            .ok_or_else(|| TenantError::UnknownTenant(slug.as_str().to_owned()))?;
        let key = generate_key(role);
        let now = now_ms();
        let mut w = self.begin_write().await?;
        insert_key(&mut w.tx, &tenant.id, &key, role, now).await?;
        record_event(
            &mut w.tx,
            Some(&tenant.id),
            "key.created",
            Some(role.as_str()),
            "{}",
        )
        .await?;
        w.commit().await?;
        Ok(key)
    }

    pub async fn tenant_by_slug(&self, slug: &str) -> Result<Option<Tenant>, sqlx::Error> {
        let row = sqlx::query("SELECT id, slug, name FROM tenant WHERE slug = $1")
            .bind(slug)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(Tenant {
                id: r.try_get("id")?,
                slug: r.try_get("slug")?,
                name: r.try_get("name")?,
            })
        })
        .transpose()
    }

    /// Every tenant, oldest first.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, sqlx::Error> {
        sqlx::query("SELECT id, slug, name FROM tenant ORDER BY created_at, slug")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(Tenant {
                    id: r.try_get("id")?,
                    slug: r.try_get("slug")?,
                    name: r.try_get("name")?,
                })
            })
            .collect()
    }

    /// A tenant's keys (never their secret part): id, role, the first characters, when made,
    /// when revoked.
    pub async fn list_keys(&self, tenant_id: &str) -> Result<Vec<KeyView>, sqlx::Error> {
        sqlx::query(
            "SELECT id, role, prefix, created_at, revoked_at FROM api_key
             WHERE tenant_id = $1 ORDER BY created_at, id",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(KeyView {
                id: r.try_get("id")?,
                role: r.try_get("role")?,
                prefix: r.try_get("prefix")?,
                created_at: r.try_get("created_at")?,
                revoked_at: r.try_get("revoked_at")?,
            })
        })
        .collect()
    }

    /// Revokes a tenant's key by its id; `false` if the tenant has no such live key. Processes
    /// that cached it stop accepting it within the key cache's lifetime.
    pub async fn revoke_key(&self, tenant_id: &str, key_id: &str) -> Result<bool, sqlx::Error> {
        let mut w = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE api_key SET revoked_at = $1 WHERE tenant_id = $2 AND id = $3 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(tenant_id)
        .bind(key_id)
        .execute(&mut *w.tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        record_event(
            &mut w.tx,
            Some(tenant_id),
            "key.revoked",
            Some(key_id),
            "{}",
        )
        .await?;
        w.commit().await?;
        let revoked = key_id.to_owned();
        self.keys.remove_where(|p| p.key_id == revoked);
        Ok(true)
    }

    pub async fn tenant_count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query("SELECT COUNT(*) AS n FROM tenant")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")
    }

    /// The live key with this hash, if any. Known keys are cached briefly (see `store::cache`);
    /// unknown ones always ask the database.
    pub async fn authenticate(&self, key: &str) -> Result<Option<Principal>, sqlx::Error> {
        let hash = hash_key(key);
        if let Some(principal) = self.keys.get(&hash) {
            return Ok(Some(principal));
        }
        let row = sqlx::query(
            "SELECT id, tenant_id, role FROM api_key WHERE key_hash = $1 AND revoked_at IS NULL",
        )
        .bind(&hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let role: String = row.try_get("role")?;
        let Some(role) = Role::parse(&role) else {
            return Ok(None);
        };
        let principal = Principal {
            tenant_id: row.try_get("tenant_id")?,
            key_id: row.try_get("id")?,
            role,
        };
        self.keys.insert(hash, principal.clone());
        Ok(Some(principal))
    }
}

pub(crate) async fn insert_key(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    tenant_id: &str,
    key: &str,
    role: Role,
    now: i64,
) -> Result<(), sqlx::Error> {
    // Widget keys are public (embedded in pages): their clear text is kept to show again.
    let public = (role == Role::Widget).then_some(key);
    sqlx::query(
        "INSERT INTO api_key (id, tenant_id, role, key_hash, prefix, created_at, public_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(new_id())
    .bind(tenant_id)
    .bind(role.as_str())
    .bind(hash_key(key))
    .bind(key.chars().take(8).collect::<String>())
    .bind(now)
    .bind(public)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Appends to the audit log inside the caller's transaction.
pub async fn record_event(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    tenant_id: Option<&str>,
    kind: &str,
    subject: Option<&str>,
    detail_json: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO event (tenant_id, kind, subject, detail, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(tenant_id)
    .bind(kind)
    .bind(subject)
    .bind(detail_json)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
