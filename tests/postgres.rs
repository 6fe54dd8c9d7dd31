//! PostgreSQL as the system of record: the versioned schema is applied once
//! when several nodes start together, a database a newer cotejo wrote is
//! refused, and the audit table refuses edits, deletions and truncation.

use cotejo::store::postgres::{MIGRATIONS, open};

use crate::common::postgres::TempPostgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_is_migrated_once_by_nodes_starting_together() {
    let pg = TempPostgres::start();
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = pg.url.clone();
            tokio::spawn(async move { open(&url, 2).await.map(|_| ()) })
        })
        .collect();
    for s in starts {
        s.await.expect("join").expect("a node opens the store");
    }
    let pool = open(&pg.url, 2).await.expect("open again");
    let c = pool.get().await.expect("connection");
    let versions: Vec<i32> = c
        .query("SELECT version FROM schema_migrations ORDER BY version", &[])
        .await
        .expect("versions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.0).collect();
    assert_eq!(versions, all, "each version applied once");
    for table in ["subjects", "encounters", "templates", "watchlist_members", "changes", "audit", "jobs", "job_blocks"]
    {
        let found: Option<String> =
            c.query_one("SELECT to_regclass($1)::text", &[&table]).await.expect("regclass").get(0);
        assert_eq!(found.as_deref(), Some(table));
    }

    // The audit log is append-only in the database itself.
    c.execute(
        "INSERT INTO audit VALUES (1, 0, 2, 'Enroll', 'desk', 'enroll', 'r1', '[\"s\"]', 'OK', '', '\\x00')",
        &[],
    )
    .await
    .expect("append");
    for edit in ["UPDATE audit SET detail = 'x'", "DELETE FROM audit", "TRUNCATE audit"] {
        let e = c.execute(edit, &[]).await.expect_err(edit);
        let message = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
        assert_eq!(message, "audit log is append-only", "{edit}");
    }

    // A database a newer cotejo migrated further is refused, not used.
    c.execute("INSERT INTO schema_migrations VALUES (9999, 0)", &[]).await.expect("newer");
    let e = open(&pg.url, 1).await.expect_err("a newer schema");
    assert!(e.to_string().contains("newer cotejo"), "{e}");
}
