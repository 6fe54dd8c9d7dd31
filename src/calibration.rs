//! Calibrated scores: the map from a matcher's raw score to
//! `-10 log10(FMR)` (decibels of false-match rate), measured from impostor
//! comparisons on labelled data, and the fusion of independent calibrated
//! scores.
//!
//! A calibration file (JSON, beside the model manifest) holds the empirical
//! impostor tail as a table of (raw score, FMR) points and, beyond the
//! highest impostor score seen, an exponential fit of the tail: log10 FMR
//! linear in the raw score. Scores beyond the measured range therefore rest
//! on an extrapolation, and the file says from how many comparisons it came.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Calibrated scores are capped here (FMR 1e-15): nothing measured supports more.
pub const MAX_DB: f64 = 150.0;
/// The strictest per-comparison FMR a threshold can be set at: [`MAX_DB`]'s
/// (a stricter threshold lies above every score, fused ones too).
pub const MIN_FMR: f64 = 1e-15;

/// Exponential tail beyond the table: `log10 FMR = intercept + slope * raw`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tail {
    /// Raw score where the fit takes over (the last table point).
    pub from_raw: f64,
    /// Fit intercept.
    pub intercept: f64,
    /// Fit slope (negative).
    pub slope: f64,
}

/// A measured map from raw score to calibrated score for one matcher.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Calibration {
    /// Model (matcher) id the scores come from, as templates record it.
    pub model_id: String,
    /// "face" or "finger".
    pub modality: String,
    /// What the raw score is.
    pub raw_score: String,
    /// The labelled data and protocol it came from.
    pub source: String,
    /// Impostor comparisons measured.
    pub impostor_comparisons: u64,
    /// Genuine comparisons measured (for the record).
    pub genuine_comparisons: u64,
    /// (raw score, FMR at or above it), raw ascending, FMR descending.
    pub table: Vec<[f64; 2]>,
    /// Extrapolation beyond the table.
    pub tail: Tail,
}

/// Why a calibration cannot be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    /// Not enough impostor scores.
    #[error("need at least 1,000 impostor scores, got {0}")]
    TooFewImpostors(usize),
    /// The file is missing or malformed.
    #[error("calibration {path}: {message}")]
    File { path: String, message: String },
}

impl Calibration {
    /// Measures the map from impostor scores (any order; non-finite ones are dropped).
    pub fn from_scores(
        model_id: &str,
        modality: &str,
        raw_score: &str,
        source: &str,
        impostors: &[f64],
        genuine: usize,
    ) -> Result<Self, CalibrationError> {
        let mut s: Vec<f64> = impostors.iter().copied().filter(|v| v.is_finite()).collect();
        if s.len() < 1000 {
            return Err(CalibrationError::TooFewImpostors(s.len()));
        }
        s.sort_by(|a, b| b.total_cmp(a)); // descending
        let m = s.len() as f64;
        // FMR levels log-spaced from 1 down to 10/M (ten events: below that
        // the empirical rate is noise), 20 per decade.
        let mut table: Vec<[f64; 2]> = Vec::new();
        let lowest = (10.0 / m).log10();
        let mut e = 0.0f64;
        while e >= lowest {
            let fmr = 10f64.powf(e);
            let rank = ((fmr * m).round() as usize).clamp(1, s.len());
            let raw = s[rank - 1];
            // FMR at raw: fraction of impostors at or above it (ties included).
            let at_or_above = s.partition_point(|v| *v >= raw) as f64 / m;
            if table.last().is_none_or(|l: &[f64; 2]| raw > l[0]) {
                table.push([raw, at_or_above]);
            }
            e -= 0.05;
        }
        table.sort_by(|a, b| a[0].total_cmp(&b[0]));
        table.dedup_by(|b, a| b[0] == a[0]);
        // Tail: least squares of log10 FMR on raw over the top 1% (at least
        // 100) of the impostor scores, each at its empirical rank.
        let top = (s.len() / 100).max(100).min(s.len());
        let pts: Vec<(f64, f64)> = (0..top).map(|i| (s[i], ((i + 1) as f64 / m).log10())).collect();
        let n = pts.len() as f64;
        let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
        let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        // A degenerate tail (all equal) gets a steep slope: nothing above it was seen.
        let slope = if sxx > 0.0 { (sxy / sxx).min(-1e-6) } else { -1e6 };
        let last = *table.last().ok_or(CalibrationError::TooFewImpostors(0))?;
        // Anchor the fit at the last table point so the map stays continuous.
        let intercept = last[1].log10() - slope * last[0];
        Ok(Self {
            model_id: model_id.to_owned(),
            modality: modality.to_owned(),
            raw_score: raw_score.to_owned(),
            source: source.to_owned(),
            impostor_comparisons: s.len() as u64,
            genuine_comparisons: genuine as u64,
            table,
            tail: Tail { from_raw: last[0], intercept, slope },
        })
    }

    /// Reads a calibration file.
    pub fn load(path: &Path) -> Result<Self, CalibrationError> {
        let err = |message: String| CalibrationError::File { path: path.display().to_string(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let c: Self = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let ordered = c.table.windows(2).all(|w| w[0][0] < w[1][0] && w[0][1] >= w[1][1]);
        if c.table.is_empty() || !ordered || c.tail.slope >= 0.0 || c.table.iter().any(|p| p[1].is_nan() || p[1] <= 0.0)
        {
            return Err(err("table not monotone or tail not decreasing".into()));
        }
        Ok(c)
    }

    /// Writes the calibration as pretty JSON.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text + "\n")
    }

    /// The file name a calibration of `model_id` has in a directory.
    pub fn file_name(model_id: &str) -> PathBuf {
        let slug: String =
            model_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
        PathBuf::from(format!("{slug}.json"))
    }

    /// The FMR at a raw score: the fraction of impostors expected at or above it.
    pub fn fmr(&self, raw: f64) -> f64 {
        let first = self.table[0];
        if !raw.is_finite() || raw <= first[0] {
            return if raw.is_nan() { 1.0 } else { first[1].max(self.floor()) };
        }
        if raw >= self.tail.from_raw {
            return 10f64.powf(self.tail.intercept + self.tail.slope * raw).max(self.floor());
        }
        let i = self.table.partition_point(|p| p[0] <= raw);
        let (a, b) = (self.table[i - 1], self.table[i]);
        let t = (raw - a[0]) / (b[0] - a[0]);
        10f64.powf(a[1].log10() + t * (b[1].log10() - a[1].log10()))
    }

    /// The calibrated score `-10 log10(FMR)` of a raw score.
    pub fn db(&self, raw: f64) -> f64 {
        -10.0 * self.fmr(raw).log10()
    }

    /// The raw score whose FMR is `fmr` (the threshold for a target FMR).
    pub fn raw_for_fmr(&self, fmr: f64) -> f64 {
        let fmr = fmr.clamp(self.floor(), 1.0);
        let last = self.table[self.table.len() - 1];
        if fmr < last[1] {
            return (fmr.log10() - self.tail.intercept) / self.tail.slope;
        }
        let i = self.table.partition_point(|p| p[1] > fmr).min(self.table.len() - 1);
        if i == 0 {
            return self.table[0][0];
        }
        let (a, b) = (self.table[i - 1], self.table[i]);
        let t = (fmr.log10() - a[1].log10()) / (b[1].log10() - a[1].log10());
        a[0] + t * (b[0] - a[0])
    }

    /// Whether a raw score lies beyond the measured impostor range.
    pub fn extrapolated(&self, raw: f64) -> bool {
        raw > self.tail.from_raw
    }

    fn floor(&self) -> f64 {
        10f64.powf(-MAX_DB / 10.0)
    }
}

/// Fuses independent calibrated scores (dB of FMR): the FMR of the product of
/// their FMRs under independence (Fisher's method), in dB. One score passes
/// through unchanged; every further score adds evidence but less than its
/// own dB, since a random impostor also gets several tries.
pub fn fuse_db(scores: &[f64]) -> f64 {
    match scores {
        [] => 0.0,
        [one] => *one,
        many => {
            // ln of the product of FMRs.
            let ln_t: f64 = many.iter().map(|d| -d / 10.0 * std::f64::consts::LN_10).sum();
            // P(prod U_i <= t) = t * sum_{j<k} (-ln t)^j / j!
            let x = -ln_t;
            let (mut term, mut sum) = (1.0f64, 1.0f64);
            for j in 1..many.len() {
                term *= x / j as f64;
                sum += term;
            }
            let ln_p = ln_t + sum.ln();
            (-10.0 * ln_p / std::f64::consts::LN_10).clamp(0.0, MAX_DB)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform_impostors(n: usize) -> Vec<f64> {
        (0..n).map(|i| (i as f64 + 0.5) / n as f64).collect()
    }

    #[test]
    fn uniform_scores_calibrate_to_their_tail_mass() {
        let c = Calibration::from_scores("m", "face", "u", "test", &uniform_impostors(100_000), 0).expect("cal");
        for (raw, fmr) in [(0.5, 0.5), (0.9, 0.1), (0.99, 0.01), (0.999, 0.001)] {
            let got = c.fmr(raw);
            assert!((got / fmr - 1.0).abs() < 0.05, "raw {raw}: fmr {got}, expected {fmr}");
            assert!((c.raw_for_fmr(fmr) - raw).abs() < 0.002, "inverse at {fmr}: {}", c.raw_for_fmr(fmr));
        }
        assert!(c.db(0.9999) > c.db(0.999) && c.db(1.5) > c.db(0.9999), "monotone into the tail");
        assert!(c.extrapolated(0.99995) && !c.extrapolated(0.9));
        assert!(c.db(1e9) <= MAX_DB && c.db(-3.0) >= 0.0 && c.db(f64::NAN) == 0.0);
    }

    #[test]
    fn round_trips_through_json() {
        let c = Calibration::from_scores("m", "finger", "u", "test", &uniform_impostors(5000), 7).expect("cal");
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join(Calibration::file_name("a@b+c"));
        c.save(&p).expect("save");
        assert_eq!(Calibration::load(&p).expect("load"), c);
        assert!(p.ends_with("a_b_c.json"));
        assert!(Calibration::from_scores("m", "f", "u", "t", &[0.1; 10], 0).is_err());
    }

    #[test]
    fn fusion_is_fishers_method() {
        assert_eq!(fuse_db(&[30.0]), 30.0);
        // Two FMRs of 1e-3: t = 1e-6, P = t (1 - ln t) = 1e-6 * 14.8155
        let two = fuse_db(&[30.0, 30.0]);
        assert!((two - (-10.0 * (1e-6f64 * (1.0 + 1e6f64.ln())).log10())).abs() < 1e-9, "{two}");
        assert!(two > 30.0 && two < 60.0);
        // Adding a non-informative score (0 dB) does not raise the evidence.
        assert!(fuse_db(&[30.0, 0.0]) < 30.0);
    }
}
