//! `portcullis store copy`: moves an installation from one database to another (SQLite to
//! PostgreSQL when it grows to several nodes, or back), every row with its id.
//!
//! Both stores are first brought to this build's schema by opening them, so their tables and
//! columns are the same; the copy reads the column list of each table from the target's
//! catalogue rather than from a second description of the schema in code. It refuses a target
//! that holds any account, and a source with a table it does not know (a newer build's).

use sqlx::any::AnyRow;
use sqlx::{AnyPool, AssertSqlSafe, Row};

use super::dialect::{self, Dialect};
use super::{SqlStore, StoreError};

/// Every table of the schema, parents before children (foreign keys).
const TABLES: &[&str] = &[
    "accounts",
    "app_passwords",
    "changes",
    "change_counter",
    "web_sessions",
    "recovery_codes",
    "profiles",
    "one_time_codes",
    "domains",
    "domain_admins",
    "domain_tokens",
    "audit_log",
    "tickets",
    "bans",
    "tls_ticket_keys",
];

/// Tables whose `id` the database assigns (identity columns on PostgreSQL).
const WITH_IDS: &[&str] = &[
    "accounts",
    "app_passwords",
    "changes",
    "web_sessions",
    "recovery_codes",
    "one_time_codes",
    "domains",
    "domain_tokens",
    "audit_log",
    "tls_ticket_keys",
];

/// What was copied: rows per table.
pub type CopyReport = Vec<(&'static str, u64)>;

/// Copies every row of `from` into `to`, in one transaction on the target.
pub async fn copy(from: &SqlStore, to: &SqlStore) -> Result<CopyReport, StoreError> {
    let known: std::collections::HashSet<&str> = TABLES.iter().copied().collect();
    for table in tables(&from.pool, from.dialect).await? {
        if table != "schema_migrations" && !known.contains(table.as_str()) {
            return Err(StoreError::Corrupt(format!(
                "the source has a table this build does not know: {table}"
            )));
        }
    }
    let accounts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts")
        .fetch_one(&to.pool)
        .await?;
    if accounts > 0 {
        return Err(StoreError::Corrupt(format!(
            "the target already holds {accounts} accounts; copy only into an empty store"
        )));
    }
    let mut report = Vec::new();
    // One snapshot of the source: its rows agree with each other.
    let mut source = from.pool.begin().await?;
    let mut target = to.begin_write().await?;
    for &table in TABLES {
        let columns = columns(&to.pool, to.dialect, table).await?;
        if columns.is_empty() {
            return Err(StoreError::Corrupt(format!(
                "the target has no table {table}"
            )));
        }
        let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
        let select = format!("SELECT {} FROM {table}", names.join(", "));
        let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
        let insert = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            names.join(", "),
            placeholders.join(", ")
        );
        // The migration seeded the counter row; the source's replaces it.
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(&mut *target)
            .await?;
        let rows: Vec<AnyRow> = sqlx::query(AssertSqlSafe(select))
            .fetch_all(&mut *source)
            .await?;
        for row in &rows {
            let mut query = sqlx::query(AssertSqlSafe(insert.clone()));
            for (i, (_, integer)) in columns.iter().enumerate() {
                query = if *integer {
                    query.bind(row.try_get::<Option<i64>, _>(i)?)
                } else {
                    query.bind(row.try_get::<Option<String>, _>(i)?)
                };
            }
            query.execute(&mut *target).await?;
        }
        report.push((table, rows.len() as u64));
    }
    if to.dialect == Dialect::Postgres {
        // Identity columns continue after the copied ids.
        for &table in WITH_IDS {
            sqlx::query(AssertSqlSafe(format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM {table}"
            )))
            .execute(&mut *target)
            .await?;
        }
    }
    target.commit().await?;
    source.commit().await?;
    Ok(report)
}

/// The tables of the store.
async fn tables(pool: &AnyPool, dialect: Dialect) -> Result<Vec<String>, StoreError> {
    let sql = match dialect {
        Dialect::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        }
        Dialect::Postgres => {
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
        }
    };
    Ok(sqlx::query_scalar(sql).fetch_all(pool).await?)
}

/// A table's columns in order, each with whether it holds integers (else text).
async fn columns(
    pool: &AnyPool,
    dialect: Dialect,
    table: &str,
) -> Result<Vec<(String, bool)>, StoreError> {
    let sql = match dialect {
        Dialect::Sqlite => "SELECT name, type FROM pragma_table_info($1) ORDER BY cid",
        Dialect::Postgres => {
            "SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position"
        }
    };
    let rows = sqlx::query(sql).bind(table).fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            let name: String = row.try_get(0)?;
            let kind: String = row.try_get(1)?;
            Ok((name, kind.to_ascii_uppercase().contains("INT")))
        })
        .collect()
}

/// The schema version a store is at (the newest applied migration).
pub async fn version(store: &SqlStore) -> Result<i64, StoreError> {
    let version: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
        .fetch_one(&store.pool)
        .await?;
    Ok(version.unwrap_or(0))
}

/// Whether this build's migrations are all applied to `store`.
pub async fn up_to_date(store: &SqlStore) -> Result<bool, StoreError> {
    Ok(version(store).await? == dialect::schema_version())
}
