//! PostgreSQL as the system of record: the versioned schema is applied once
//! when several nodes start together, a database a newer cotejo wrote is
//! refused, the audit table refuses edits, deletions and truncation, and
//! the audit chain holds across concurrent appenders.

use cotejo::store::{
    Actor, AuditRecord, StoreError, now_ms,
    postgres::{MIGRATIONS, append_audit, open, verify_audit},
};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_chain_holds_across_concurrent_appenders_and_shows_an_edit() {
    let pg = TempPostgres::start();
    let pool = open(&pg.url, 4).await.expect("open");
    // Four appenders at once, as four nodes would be, 10 entries each.
    let appenders: Vec<_> = (0..4)
        .map(|node| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    let mut c = pool.get().await.expect("connection");
                    let tx = c.transaction().await.expect("transaction");
                    let actor = Actor {
                        caller: format!("node-{node}"),
                        role: "enroll".into(),
                        method: "Enroll".into(),
                        request_id: format!("{node}-{i}"),
                    };
                    let r = AuditRecord {
                        actor,
                        subjects: vec![format!("s-{node}-{i}")],
                        outcome: "OK".into(),
                        detail: String::new(),
                    };
                    append_audit(&tx, now_ms(), &r).await.expect("append");
                    tx.commit().await.expect("commit");
                }
            })
        })
        .collect();
    for a in appenders {
        a.await.expect("join");
    }
    let mut c = pool.get().await.expect("connection");
    let check = verify_audit(&mut c).await.expect("an intact chain");
    assert_eq!((check.entries, check.head_seq), (40, 40));

    // A superuser who disables the triggers and edits an entry is caught.
    c.batch_execute(
        "ALTER TABLE audit DISABLE TRIGGER audit_no_change;
         UPDATE audit SET detail = 'edited' WHERE seq = 17;
         ALTER TABLE audit ENABLE TRIGGER audit_no_change;",
    )
    .await
    .expect("tamper");
    match verify_audit(&mut c).await {
        Err(StoreError::AuditBroken { seq, .. }) => assert_eq!(seq, 17),
        other => panic!("the edit went unseen: {other:?}"),
    }
}
