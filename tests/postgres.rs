//! PostgreSQL as the system of record: the versioned schema is applied once
//! when several nodes start together, a database a newer cotejo wrote is
//! refused, the audit table refuses edits, deletions and truncation, and
//! the audit chain holds across concurrent appenders; a job block held by a
//! connection that died is claimed again.

use std::path::Path;

use cotejo::{
    biometric::{Modality, NewTemplate, TemplateData},
    store::{
        Actor, AuditRecord, BlockBounds, JobState, JobStore, PairComponent, Records, RequestKey, StoreError, now_ms,
        postgres::{MIGRATIONS, PgRecords, append_audit, open, verify_audit},
    },
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

fn face(v: f32) -> NewTemplate {
    NewTemplate {
        modality: Modality::Face,
        finger_position: 0,
        model_id: "m".into(),
        quality: 0.9,
        data: TemplateData::Embedding(vec![v; 4]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_are_sealed_read_back_deleted_and_followed_in_postgres() {
    let pg = TempPostgres::start();
    let records = PgRecords::open(&pg.url, Path::new(""), &"11".repeat(32), 2).await.expect("open");
    let stranger = PgRecords::open(&pg.url, Path::new(""), &"22".repeat(32), 1).await.expect("open");
    // The store interface blocks: called off the runtime, as the engine does.
    tokio::task::spawn_blocking(move || sealed_read_back_deleted_and_followed(&records, &stranger))
        .await
        .expect("join");
}

fn sealed_read_back_deleted_and_followed(records: &PgRecords, stranger: &PgRecords) {
    let a = Actor::system("test");
    let watch = vec!["transit".to_owned()];
    records.enroll("alice", false, &[face(1.0)], &watch, &a, None).expect("enroll");
    let key = RequestKey { request_id: "r-bob", samples: "[]" };
    let bob = records.enroll("bob", false, &[face(3.0)], &[], &a, Some(key)).expect("enroll");
    // A retried request id gets the first answer and writes nothing.
    let retry = records.enroll("bob", false, &[face(3.0)], &[], &a, Some(key)).expect("retry");
    assert_eq!(retry.replay.map(|r| (r.subject_id, r.encounter_id)), Some(("bob".to_owned(), bob.encounter_id)));
    assert_eq!(records.enroll_request("r-bob").expect("replay").map(|r| r.encounter_id), Some(bob.encounter_id));
    let again = records.enroll("alice", false, &[face(4.0)], &[], &a, None);
    assert!(matches!(again, Err(StoreError::SubjectExists(_))), "{again:?}");
    let nobody = records.enroll("carol", true, &[face(4.0)], &[], &a, None);
    assert!(matches!(nobody, Err(StoreError::SubjectNotFound(_))), "{nobody:?}");
    records.enroll("alice", true, &[face(2.0)], &[], &a, None).expect("a second encounter");
    assert_eq!(records.watchlist_members("transit").expect("members"), ["alice"]);
    let alice = records.subject_templates("alice").expect("read");
    let data: Vec<_> = alice.iter().map(|t| t.template.data.clone()).collect();
    assert_eq!(data, [TemplateData::Embedding(vec![1.0; 4]), TemplateData::Embedding(vec![2.0; 4])]);
    let listed = records.list_subjects("", 10, "").expect("list");
    let counts: Vec<_> = listed.iter().map(|s| (s.subject_id.as_str(), s.encounters, s.templates)).collect();
    assert_eq!(counts, [("alice", 2, 2), ("bob", 1, 1)]);
    assert_eq!(records.subject("alice").expect("subject").watchlists, ["transit"]);
    assert_eq!(records.stats().expect("stats").subjects, 2);

    // Sealed: the rows do not hold the plaintext, and another key opens nothing.
    let plain: Vec<u8> = [1.0f32; 2].iter().flat_map(|v| v.to_le_bytes()).collect();
    let rows = records
        .block(async {
            let c = records.pool().get().await.map_err(|e| StoreError::Postgres(e.to_string()))?;
            c.query("SELECT sealed FROM templates", &[]).await.map_err(|e| StoreError::Postgres(e.to_string()))
        })
        .expect("rows");
    for row in rows {
        let sealed: Vec<u8> = row.get(0);
        assert!(!sealed.windows(plain.len()).any(|w| w == plain.as_slice()), "a template is stored in the clear");
    }
    assert!(matches!(stranger.subject_templates("alice"), Err(StoreError::TemplateSeal(_))));

    let removed = records.delete_unless_seen("alice", i64::MAX, &a).expect("delete").expect("deleted");
    assert_eq!(removed.template_ids.len(), 2);
    assert!(matches!(records.subject_templates("alice"), Err(StoreError::SubjectNotFound(_))));
    assert!(matches!(records.delete_unless_seen("alice", i64::MAX, &a), Err(StoreError::SubjectNotFound(_))));
    // Kept when seen since the cutoff.
    assert!(records.delete_unless_seen("bob", 0, &a).expect("kept").is_none());
    // What shard nodes follow, in order, with the templates each change
    // added or removed; the refused enroll left nothing.
    let changes = records.block(records.changes_after(0, 100)).expect("changes");
    let seen: Vec<(&str, bool, usize, i64)> =
        changes.iter().map(|c| (c.subject_id.as_str(), c.deleted, c.template_ids.len(), c.subjects_delta)).collect();
    assert_eq!(seen, [("alice", false, 1, 1), ("bob", false, 1, 1), ("alice", false, 1, 0), ("alice", true, 2, -1)]);
    assert!(changes.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(changes[3].seq, removed.seq);
    assert_eq!(records.verify_audit(None, false).expect("intact").entries, 4);
    assert_eq!(records.audit_entries(1, 10).expect("entries").len(), 4);
    assert!(records.watchlist_members("transit").expect("members").is_empty(), "deletion leaves no membership");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_held_by_a_dead_connection_is_claimed_again() {
    let pg = TempPostgres::start();
    let a = PgRecords::open(&pg.url, Path::new(""), &"11".repeat(32), 2).await.expect("open");
    let b = PgRecords::open(&pg.url, Path::new(""), &"11".repeat(32), 2).await.expect("open");
    let admin = open(&pg.url, 1).await.expect("pool");
    // Pairs are kept only between subjects that exist.
    admin
        .get()
        .await
        .expect("connection")
        .batch_execute("INSERT INTO subjects (subject_id, created_ms) VALUES ('x', 0), ('y', 0), ('z', 0)")
        .await
        .expect("subjects");
    tokio::task::spawn_blocking(move || {
        let job = a.create_job("dedup", "{}").expect("job").job_id;
        let plan: Vec<BlockBounds> = (0..3).map(|i| BlockBounds { faces: true, lo: i * 10, hi: i * 10 + 10 }).collect();
        assert_eq!(a.begin_job(job, plan.clone()).expect("plan"), plan);
        // The second worker finds the stored plan, not its own.
        assert_eq!(b.begin_job(job, vec![]).expect("plan"), plan);
        let held = a.claim_block(job).expect("claim").expect("a block");
        assert_eq!(held.block(), 0);
        // Claimed blocks are skipped, not waited for.
        let next = b.claim_block(job).expect("claim").expect("a block");
        assert_eq!(next.block(), 1);
        next.finish(&[pair("x", "y", 0.5), pair("x", "y", 0.7)]).expect("commit");
        // The first worker's connection dies while it holds block 0.
        a.block(async {
            let c = admin.get().await.map_err(|e| StoreError::Postgres(e.to_string()))?;
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE state = 'idle in transaction'", &[])
                .await
                .map_err(|e| StoreError::Postgres(e.to_string()))
        })
        .expect("terminate");
        assert!(!b.finish_job(job).expect("finish"), "two blocks are not done");
        let mut redone = Vec::new();
        for _ in 0..10 {
            match b.claim_block(job).expect("claim") {
                Some(c) => {
                    redone.push(c.block());
                    c.finish(&[pair("x", "y", 0.6)]).expect("commit");
                }
                None if redone.len() < 2 => std::thread::sleep(std::time::Duration::from_millis(50)),
                None => break,
            }
        }
        redone.sort_unstable();
        assert_eq!(redone, [0, 2], "the dead worker's block is claimed again");
        assert!(held.finish(&[pair("x", "z", 0.9)]).is_err(), "a dead claim cannot commit");
        assert!(b.finish_job(job).expect("finish"));
        let j = b.job(job).expect("read").expect("job");
        assert_eq!((j.done, j.total, j.state), (3, 3, JobState::Done));
        // Each pair once, with its best score; nothing from the dead claim.
        assert_eq!(b.job_pairs_after(job, None, 10).expect("pairs"), [pair("x", "y", 0.7)]);
        // A subject deleted since the job loaded its templates is not paired again.
        let job2 = b.create_job("dedup", "{}").expect("job").job_id;
        b.begin_job(job2, vec![BlockBounds { faces: true, lo: 0, hi: i64::MAX }]).expect("plan");
        let claim = b.claim_block(job2).expect("claim").expect("a block");
        b.block(async {
            let c = admin.get().await.map_err(|e| StoreError::Postgres(e.to_string()))?;
            c.execute("DELETE FROM subjects WHERE subject_id = 'z'", &[])
                .await
                .map_err(|e| StoreError::Postgres(e.to_string()))
        })
        .expect("delete z");
        claim.finish(&[pair("x", "z", 0.9), pair("x", "y", 0.8)]).expect("commit");
        assert_eq!(b.job_pairs_after(job2, None, 10).expect("pairs"), [pair("x", "y", 0.8)]);
    })
    .await
    .expect("join");
}

fn pair(a: &str, b: &str, raw: f64) -> PairComponent {
    PairComponent { a: a.into(), b: b.into(), component: "face".into(), raw }
}
