//! Reading subjects: one subject's encounters, watchlist members, and the
//! listing of subjects a page at a time.

use rusqlite::{Connection, OptionalExtension, params};

use super::{EncounterRecord, Reader, StoreError, SubjectRecord, SubjectSummary};
use crate::biometric::Modality;

impl Reader {
    /// A subject's encounters and template summaries.
    pub fn subject(&self, subject_id: &str) -> Result<SubjectRecord, StoreError> {
        let created_ms: i64 = self
            .conn
            .query_row("SELECT created_ms FROM subjects WHERE subject_id = ?1", [subject_id], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::SubjectNotFound(subject_id.to_owned()))?;
        let mut st = self.conn.prepare(
            "SELECT e.encounter_id, e.created_ms, t.modality, t.finger_position, t.model_id, t.quality
             FROM encounters e LEFT JOIN templates t ON t.encounter_id = e.encounter_id
             WHERE e.subject_id = ?1 ORDER BY e.encounter_id, t.template_id",
        )?;
        let mut encounters: Vec<EncounterRecord> = Vec::new();
        let mut rows = st.query([subject_id])?;
        while let Some(r) = rows.next()? {
            let encounter_id: i64 = r.get(0)?;
            if encounters.last().is_none_or(|e| e.encounter_id != encounter_id) {
                encounters.push(EncounterRecord { encounter_id, created_ms: r.get(1)?, templates: Vec::new() });
            }
            if let Some(code) = r.get::<_, Option<i64>>(2)? {
                let modality =
                    Modality::from_code(code).ok_or_else(|| StoreError::Corrupt(format!("modality {code}")))?;
                let t = (modality, r.get(3)?, r.get(4)?, r.get::<_, f64>(5)? as f32);
                if let Some(e) = encounters.last_mut() {
                    e.templates.push(t);
                }
            }
        }
        let watchlists = subject_watchlists(&self.conn, subject_id)?;
        Ok(SubjectRecord { subject_id: subject_id.to_owned(), created_ms, encounters, watchlists })
    }

    /// Subjects past their watchlists' retention at `now_ms`, with the
    /// cutoff each was judged by: members of at least one watchlist in
    /// `retention_days` and of none outside it, whose latest encounter is
    /// older than the longest retention among their watchlists. Subjects in
    /// no watchlist are never expired.
    pub fn expired_subjects(
        &self,
        retention_days: &std::collections::BTreeMap<String, u32>,
        now_ms: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT m.subject_id, m.watchlist,
                    (SELECT MAX(e.created_ms) FROM encounters e WHERE e.subject_id = m.subject_id)
             FROM watchlist_members m ORDER BY m.subject_id",
        )?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, Option<i64>>(2)?.unwrap_or(0))))?;
        let rows = rows.collect::<Result<Vec<_>, _>>()?;
        Ok(expired(rows, retention_days, now_ms))
    }

    /// The members of a watchlist (empty when nobody is in it).
    pub fn watchlist_members(&self, watchlist: &str) -> Result<Vec<String>, StoreError> {
        let mut st =
            self.conn.prepare("SELECT subject_id FROM watchlist_members WHERE watchlist = ?1 ORDER BY subject_id")?;
        let members = st.query_map([watchlist], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
        Ok(members)
    }

    /// Up to `limit` subjects after `after` in subject id order (members of
    /// `watchlist` only, when not empty), with their counts.
    pub fn list_subjects(&self, after: &str, limit: usize, watchlist: &str) -> Result<Vec<SubjectSummary>, StoreError> {
        let filter = if watchlist.is_empty() {
            ""
        } else {
            "AND s.subject_id IN (SELECT subject_id FROM watchlist_members WHERE watchlist = ?3)"
        };
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT s.subject_id, s.created_ms,
                    (SELECT COUNT(*) FROM encounters e WHERE e.subject_id = s.subject_id),
                    (SELECT COUNT(*) FROM templates t WHERE t.subject_id = s.subject_id)
             FROM subjects s WHERE s.subject_id > ?1 {filter} ORDER BY s.subject_id LIMIT ?2"
        ))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let read = |r: &rusqlite::Row<'_>| {
            Ok(SubjectSummary {
                subject_id: r.get(0)?,
                created_ms: r.get(1)?,
                encounters: r.get::<_, i64>(2)? as u64,
                templates: r.get::<_, i64>(3)? as u64,
                watchlists: Vec::new(),
            })
        };
        let mut out = if watchlist.is_empty() {
            st.query_map(params![after, limit], read)?.collect::<Result<Vec<_>, _>>()?
        } else {
            st.query_map(params![after, limit, watchlist], read)?.collect::<Result<Vec<_>, _>>()?
        };
        for s in &mut out {
            s.watchlists = subject_watchlists(&self.conn, &s.subject_id)?;
        }
        Ok(out)
    }
}

/// The watchlists `subject_id` belongs to, by name.
fn subject_watchlists(conn: &Connection, subject_id: &str) -> Result<Vec<String>, StoreError> {
    let mut st =
        conn.prepare_cached("SELECT watchlist FROM watchlist_members WHERE subject_id = ?1 ORDER BY watchlist")?;
    let names = st.query_map([subject_id], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
    Ok(names)
}

/// The subjects past retention among memberships (subject, watchlist,
/// latest encounter) in subject order: members of at least one watchlist
/// in `retention_days` and of none outside it, whose latest encounter is
/// older than the longest retention among their watchlists, each with the
/// cutoff it was judged by.
pub(super) fn expired(
    rows: impl IntoIterator<Item = (String, String, i64)>,
    retention_days: &std::collections::BTreeMap<String, u32>,
    now_ms: i64,
) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    // (subject, latest encounter, longest retention; None once a membership keeps it)
    let mut current: Option<(String, i64, Option<u32>)> = None;
    let settle = |c: Option<(String, i64, Option<u32>)>, out: &mut Vec<(String, i64)>| {
        if let Some((subject, latest, Some(days))) = c {
            let cutoff = now_ms.saturating_sub(i64::from(days).saturating_mul(86_400_000));
            if latest < cutoff {
                out.push((subject, cutoff));
            }
        }
    };
    for (subject, watchlist, latest) in rows {
        if current.as_ref().is_none_or(|c| c.0 != subject) {
            settle(current.take(), &mut out);
            current = Some((subject, latest, Some(0)));
        }
        if let Some(c) = current.as_mut() {
            c.2 = match (c.2, retention_days.get(&watchlist)) {
                (Some(longest), Some(days)) => Some(longest.max(*days)),
                _ => None,
            };
        }
    }
    settle(current.take(), &mut out);
    out
}
