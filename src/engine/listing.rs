//! Listings a page at a time: subjects in id order, jobs newest first. A
//! page token is opaque to callers: it names the listing, its filter and
//! where the next page starts, so a token used with another filter, or
//! edited, is refused rather than silently answered from elsewhere.

use super::{Engine, EngineError, JobStatus, read, validate_name};
use crate::store::SubjectSummary;

/// Subjects per page when the caller does not say.
const DEFAULT_SUBJECTS: usize = 100;
/// Most subjects per page.
const MAX_SUBJECTS: usize = 1000;
/// Jobs per page when the caller does not say.
const DEFAULT_JOBS: usize = 20;
/// Most jobs per page.
const MAX_JOBS: usize = 100;

/// One page of a listing and the token of the next (empty after the last).
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items, in the listing's order.
    pub items: Vec<T>,
    /// Where the next page starts; empty on the last page.
    pub next_page_token: String,
}

/// A page request as the caller sent it.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    /// Most items (0: the listing's default).
    pub page_size: u32,
    /// The previous page's token (empty: the first page).
    pub page_token: String,
}

/// The page size to use: the default for 0, refused past the most.
fn page_size(asked: u32, default: usize, most: usize) -> Result<usize, EngineError> {
    match asked as usize {
        0 => Ok(default),
        n if n > most => Err(EngineError::invalid("INVALID_PAGE_SIZE", "page_size", format!("at most {most}"))),
        n => Ok(n),
    }
}

/// A token for `listing` with `filter`, resuming after `position`.
fn encode(listing: &str, filter: &str, position: &str) -> String {
    hex::encode(format!("{listing}\0{filter}\0{position}"))
}

/// The position a token resumes after; empty for the first page. A token
/// of another listing or filter, or not one of ours, is INVALID_PAGE_TOKEN.
fn decode(token: &str, listing: &str, filter: &str) -> Result<String, EngineError> {
    if token.is_empty() {
        return Ok(String::new());
    }
    let refuse = |why: &str| EngineError::invalid("INVALID_PAGE_TOKEN", "page_token", why.to_owned());
    let bytes = hex::decode(token).map_err(|_| refuse("not a page token of this listing"))?;
    let text = String::from_utf8(bytes).map_err(|_| refuse("not a page token of this listing"))?;
    let mut parts = text.splitn(3, '\0');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(l), Some(f), Some(position)) if l == listing && !position.is_empty() => {
            if f == filter {
                Ok(position.to_owned())
            } else {
                Err(refuse("the token was made for another filter; send the same filter as the first page"))
            }
        }
        _ => Err(refuse("not a page token of this listing")),
    }
}

impl Engine {
    /// Enrolled subjects in id order (members of `watchlist` only, unless empty).
    pub async fn list_subjects(
        &self,
        page: PageRequest,
        watchlist: String,
    ) -> Result<Page<SubjectSummary>, EngineError> {
        let size = page_size(page.page_size, DEFAULT_SUBJECTS, MAX_SUBJECTS)?;
        if !watchlist.is_empty() {
            validate_name(&watchlist)
                .map_err(|reason| EngineError::invalid("INVALID_WATCHLIST_NAME", "watchlist", reason))?;
        }
        let after = decode(&page.page_token, "subjects", &watchlist)?;
        let filter = watchlist.clone();
        let mut items = read(&self.records, move |r| r.list_subjects(&after, size + 1, &filter)).await?;
        let next_page_token = if items.len() > size {
            items.truncate(size);
            items.last().map_or_else(String::new, |s| encode("subjects", &watchlist, &s.subject_id))
        } else {
            String::new()
        };
        Ok(Page { items, next_page_token })
    }

    /// Jobs, newest first.
    pub async fn list_jobs(&self, page: PageRequest) -> Result<Page<JobStatus>, EngineError> {
        let size = page_size(page.page_size, DEFAULT_JOBS, MAX_JOBS)?;
        let before = match decode(&page.page_token, "jobs", "")? {
            p if p.is_empty() => i64::MAX,
            p => p.parse().map_err(|_| {
                EngineError::invalid("INVALID_PAGE_TOKEN", "page_token", "not a page token of this listing")
            })?,
        };
        let mut records = self.with_jobs(move |j| j.list_jobs(before, size + 1)).await?;
        let next_page_token = if records.len() > size {
            records.truncate(size);
            records.last().map_or_else(String::new, |j| encode("jobs", "", &j.job_id.to_string()))
        } else {
            String::new()
        };
        let mut items = Vec::with_capacity(records.len());
        for r in records {
            items.push(self.job_status(r).await?);
        }
        Ok(Page { items, next_page_token })
    }
}

#[cfg(test)]
mod tests {
    use super::{decode, encode};

    #[test]
    fn a_token_resumes_only_its_own_listing_and_filter() {
        let t = encode("subjects", "watch", "alice");
        assert_eq!(decode(&t, "subjects", "watch").expect("same filter"), "alice");
        assert_eq!(decode("", "subjects", "watch").expect("first page"), "");
        let reason = |r: Result<String, super::EngineError>| match r {
            Err(super::EngineError::InvalidArgument { code, .. }) => code,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(reason(decode(&t, "subjects", "other")), "INVALID_PAGE_TOKEN");
        assert_eq!(reason(decode(&t, "jobs", "")), "INVALID_PAGE_TOKEN");
        assert_eq!(reason(decode("zz", "subjects", "watch")), "INVALID_PAGE_TOKEN");
        assert_eq!(reason(decode(&hex::encode("subjects\0watch\0"), "subjects", "watch")), "INVALID_PAGE_TOKEN");
    }
}
