//! Verification error rates from genuine and impostor score lists.

/// Error rates of one score distribution pair.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verification {
    /// Genuine comparisons.
    pub genuine: usize,
    /// Impostor comparisons.
    pub impostor: usize,
    /// Equal error rate.
    pub eer: f64,
    /// Threshold at the EER.
    pub eer_threshold: f64,
    /// (target FMR, threshold, FNMR at that threshold).
    pub at_fmr: Vec<(f64, f64, f64)>,
}

/// EER and FNMR at the given FMRs. A comparison matches when its score is
/// `>= threshold`; the threshold for a target FMR is the smallest one whose
/// observed FMR does not exceed the target.
pub fn verification(genuine: &[f32], impostor: &[f32], fmrs: &[f64]) -> Verification {
    let mut g: Vec<f32> = genuine.to_vec();
    let mut i: Vec<f32> = impostor.to_vec();
    g.sort_by(f32::total_cmp);
    i.sort_by(f32::total_cmp);
    let fmr_at = |t: f32| (i.len() - i.partition_point(|&s| s < t)) as f64 / i.len().max(1) as f64;
    let fnmr_at = |t: f32| g.partition_point(|&s| s < t) as f64 / g.len().max(1) as f64;
    // Sweep every observed score as a threshold; the EER is where the two
    // rates cross (mean of the two at the closest point).
    let mut best = (f64::INFINITY, 0.0, 0.0f32);
    for &t in g.iter().chain(i.iter()) {
        let (a, b) = (fmr_at(t), fnmr_at(t));
        if (a - b).abs() < best.0 {
            best = ((a - b).abs(), (a + b) / 2.0, t);
        }
    }
    let at_fmr = fmrs
        .iter()
        .map(|&target| {
            // Number of impostor scores allowed at or above the threshold.
            let allowed = (target * i.len() as f64).floor() as usize;
            let t = if allowed >= i.len() {
                f32::NEG_INFINITY
            } else {
                // Just above the (allowed+1)-th highest impostor score.
                i[i.len() - 1 - allowed].next_up()
            };
            (target, f64::from(t), fnmr_at(t))
        })
        .collect();
    Verification { genuine: g.len(), impostor: i.len(), eer: best.1, eer_threshold: f64::from(best.2), at_fmr }
}

/// Median and 99th percentile of a sample, in its unit.
pub fn median_p99(values: &mut [f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separated_scores_have_zero_eer() {
        let v = verification(&[0.8, 0.9, 0.95], &[0.1, 0.2, 0.3], &[0.01]);
        assert!(v.eer < 1e-9);
        let (_, t, fnmr) = v.at_fmr[0];
        assert!(t > 0.3 && t < 0.31);
        assert!(fnmr < 1e-9);
    }

    #[test]
    fn overlapping_scores() {
        let g: Vec<f32> = (0..100).map(|i| i as f32 / 100.0 + 0.5).collect();
        let i: Vec<f32> = (0..100).map(|i| i as f32 / 100.0).collect();
        let v = verification(&g, &i, &[0.1]);
        assert!((v.eer - 0.25).abs() < 0.02, "{}", v.eer);
        assert!(v.at_fmr[0].2 > 0.3);
    }
}
