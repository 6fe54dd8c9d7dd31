//! The store's unit tests.

use super::*;
use crate::biometric::TemplateData;

fn template(v: f32) -> NewTemplate {
    NewTemplate {
        modality: Modality::Face,
        finger_position: 0,
        model_id: "m".into(),
        quality: 0.9,
        data: TemplateData::Embedding(vec![v; 4]),
    }
}

#[test]
fn enroll_read_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Store::open(dir.path(), "").expect("open");
    let a = Actor::system("test");
    let e = s.enroll("alice", false, &[template(1.0)], &["watch".to_owned()], &a, None).expect("enroll");
    assert_eq!(e.template_ids.len(), 1);
    assert!(matches!(s.enroll("alice", false, &[template(2.0)], &[], &a, None), Err(StoreError::SubjectExists(_))));
    s.enroll("alice", true, &[template(3.0)], &[], &a, None).expect("second encounter");
    assert!(matches!(s.enroll("carol", true, &[template(3.0)], &[], &a, None), Err(StoreError::SubjectNotFound(_))));
    let ts = s.subject_templates("alice").expect("templates");
    assert_eq!(ts.len(), 2);
    assert_eq!(ts[1].template.data, TemplateData::Embedding(vec![3.0; 4]));
    assert_eq!(s.subject("alice").expect("subject").encounters.len(), 2);
    assert_eq!(s.subject("alice").expect("subject").watchlists, vec!["watch".to_owned()]);
    assert_eq!(s.watchlist_members("watch").expect("members"), vec!["alice".to_owned()]);
    assert_eq!(s.delete_subject("alice", &a).expect("delete").len(), 2);
    assert!(matches!(s.subject("alice"), Err(StoreError::SubjectNotFound(_))));
    assert!(s.watchlist_members("watch").expect("members").is_empty(), "deletion leaves no membership");
    assert_eq!(s.stats().expect("stats").subjects, 0);
    assert_eq!(s.verify_audit(None, false).expect("audit").entries, 3);
}

#[test]
fn listing_a_modality_reads_the_index_without_sorting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(dir.path(), "").expect("open");
    let sql = format!("EXPLAIN QUERY PLAN {}", templates_sql("modality = ?1", "modality, model_id, template_id"));
    let mut st = s.conn.prepare(&sql).expect("plan");
    let plan: Vec<String> =
        st.query_map([1], |r| r.get::<_, String>(3)).expect("plan").collect::<Result<_, _>>().expect("rows");
    assert!(plan.iter().any(|p| p.contains("templates_model")), "{plan:?}");
    assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "the listing sorts every row: {plan:?}");
}

#[test]
fn a_store_with_gallery_members_keeps_its_watchlists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Store::open(dir.path(), "").expect("open");
    let a = Actor::system("test");
    s.enroll("alice", false, &[template(1.0)], &["watch".to_owned()], &a, None).expect("enroll");
    // The layout before watchlists had their own name.
    s.conn
        .execute_batch(
            "ALTER TABLE watchlist_members RENAME COLUMN watchlist TO gallery;
             ALTER TABLE watchlist_members RENAME TO gallery_members;
             DROP INDEX watchlist_members_subject;
             CREATE INDEX gallery_members_subject ON gallery_members(subject_id);",
        )
        .expect("old layout");
    drop(s);
    let s = Store::open(dir.path(), "").expect("reopen");
    assert_eq!(s.watchlist_members("watch").expect("members"), ["alice"]);
    assert_eq!(s.subject("alice").expect("subject").watchlists, ["watch"]);
}

#[test]
fn durable_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(dir.path(), "").expect("open");
    let mode: String = s.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).expect("pragma");
    let sync: i64 = s.conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).expect("pragma");
    assert_eq!((mode.as_str(), sync), ("wal", 2), "an acknowledged enroll must survive a power loss");
}

#[test]
fn one_process_per_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = Store::open(dir.path(), "").expect("open");
    assert!(matches!(Store::open(dir.path(), ""), Err(StoreError::DataDir { .. })));
    drop(first);
    Store::open(dir.path(), "").expect("reopen after release");
}

#[test]
fn missing_key_file_is_not_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Store::open(dir.path(), "").expect("open"));
    std::fs::remove_file(dir.path().join("template.key")).expect("rm");
    assert!(matches!(Store::open(dir.path(), ""), Err(StoreError::Key(_))));
}

#[test]
fn two_rows_of_one_subject_swapped_do_not_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Store::open(dir.path(), "").expect("open");
    let a = Actor::system("test");
    s.enroll("ana", false, &[template(1.0)], &[], &a, None).expect("enroll");
    s.enroll("ana", true, &[template(2.0)], &[], &a, None).expect("second encounter");
    s.conn
        .execute_batch(
            "CREATE TEMP TABLE s AS SELECT template_id, sealed FROM templates;
             UPDATE templates SET sealed = (SELECT sealed FROM s WHERE s.template_id != templates.template_id);",
        )
        .expect("swap");
    assert!(matches!(s.subject_templates("ana"), Err(StoreError::TemplateSeal(_))));
}

#[test]
fn wrong_key_does_not_decrypt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Store::open(dir.path(), &"11".repeat(32)).expect("open");
    s.enroll("bob", false, &[template(1.0)], &[], &Actor::system("test"), None).expect("enroll");
    drop(s);
    let s = Store::open(dir.path(), &"22".repeat(32)).expect("open");
    assert!(matches!(s.subject_templates("bob"), Err(StoreError::TemplateSeal(_))));
}

#[test]
fn pooled_readers_see_commits_and_never_hold_up_the_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Store::open(dir.path(), "").expect("open");
    let a = Actor::system("test");
    s.enroll("alice", false, &[template(1.0)], &[], &a, None).expect("enroll");
    let reads = s.read_pool();
    let r = reads.get().expect("reader");
    assert_eq!(r.subject_templates("alice").expect("read")[0].template.data, TemplateData::Embedding(vec![1.0; 4]));
    // A reader inside a long read (an open statement) does not stop a
    // commit, and keeps its own consistent view until the read ends.
    let mut st = r.conn.prepare("SELECT subject_id FROM subjects").expect("prepare");
    let mut rows = st.query([]).expect("query");
    assert!(rows.next().expect("row").is_some());
    s.enroll("bob", false, &[template(2.0)], &[], &a, None).expect("enroll beside an open read");
    drop(rows);
    drop(st);
    assert_eq!(r.stats().expect("stats").subjects, 2, "the next read sees the commit");
    assert!(r.conn.execute("DELETE FROM subjects", []).is_err(), "a reader cannot write");
    drop(r);
    assert_eq!(reads.idle(), 1, "the reader went back to the pool");
    let (r1, r2) = (reads.get().expect("one"), reads.get().expect("two"));
    assert_eq!((r1.stats().expect("1").subjects, r2.stats().expect("2").subjects), (2, 2));
}
