//! The templates of one shard in PostgreSQL, as the derived indexes load
//! them: owners and positions listed, templates read by id or streamed in
//! pages of [`PAGE`] by template id.

use super::PgRecords;
use crate::{
    biometric::{Modality, StoredTemplate},
    shard::Shard,
    store::{StoreError, TemplateSource},
};

/// Rows a streamed read fetches at once.
const PAGE: i64 = 4096;

/// The templates of the subjects of `shard`.
#[derive(Debug, Clone)]
pub struct PgSource {
    records: PgRecords,
    shard: Shard,
}

/// The clause that keeps a shard's rows: `$1` the count, `$2` the index.
const IN_SHARD: &str = "shard_key % $1 = $2";

/// The columns [`PgRecords::open_row`] reads after the template id and owner.
const TEMPLATE_COLUMNS: &str =
    "template_id, subject_id, encounter_id, modality, finger_position, model_id, quality, sealed";

impl PgSource {
    /// The source of `shard`'s templates.
    pub fn new(records: PgRecords, shard: Shard) -> Self {
        Self { records, shard }
    }

    /// `(count, index)` for [`IN_SHARD`]; `(1, -1)` matches no row (no shard).
    fn shard_params(&self) -> (i64, i64) {
        match self.shard.count {
            0 => (1, -1),
            n => (i64::from(n), i64::from(self.shard.index)),
        }
    }
}

impl TemplateSource for PgSource {
    fn template_owners(&self, modality: Modality, model_id: &str) -> Result<Vec<(i64, String)>, StoreError> {
        let (n, i) = self.shard_params();
        let code = modality.code() as i16;
        let rows = self.records.query_blocking(
            &format!(
                "SELECT template_id, subject_id FROM templates
                 WHERE {IN_SHARD} AND modality = $3 AND model_id = $4 ORDER BY template_id"
            ),
            &[&n, &i, &code, &model_id],
        )?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn template_positions(&self, modality: Modality) -> Result<Vec<(i64, String, u8)>, StoreError> {
        let (n, i) = self.shard_params();
        let code = modality.code() as i16;
        let rows = self.records.query_blocking(
            &format!(
                "SELECT template_id, subject_id, finger_position FROM templates
                 WHERE {IN_SHARD} AND modality = $3 ORDER BY template_id"
            ),
            &[&n, &i, &code],
        )?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), u8::try_from(r.get::<_, i16>(2)).unwrap_or(0))).collect())
    }

    fn templates_with_ids(&self, ids: &[i64]) -> Result<Vec<StoredTemplate>, StoreError> {
        let (n, i) = self.shard_params();
        let sql = format!(
            "SELECT {TEMPLATE_COLUMNS} FROM templates WHERE {IN_SHARD} AND template_id = ANY($3) ORDER BY template_id"
        );
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(PAGE as usize) {
            for r in &self.records.query_blocking(&sql, &[&n, &i, &chunk])? {
                out.push(self.records.open_row(r.get(0), r.get(1), r, 2)?);
            }
        }
        Ok(out)
    }

    fn each_template(
        &self,
        modality: Modality,
        sink: &mut dyn FnMut(StoredTemplate) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let (n, i) = self.shard_params();
        let code = modality.code() as i16;
        let sql = format!(
            "SELECT {TEMPLATE_COLUMNS} FROM templates
             WHERE {IN_SHARD} AND modality = $3 AND template_id > $4 ORDER BY template_id LIMIT $5"
        );
        let mut after = 0i64;
        loop {
            let rows = self.records.query_blocking(&sql, &[&n, &i, &code, &after, &PAGE])?;
            let Some(last) = rows.last() else { return Ok(()) };
            after = last.get(0);
            for r in &rows {
                sink(self.records.open_row(r.get(0), r.get(1), r, 2)?)?;
            }
        }
    }
}
