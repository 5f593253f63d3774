//! Welch's t-test (two samples, unequal variances), as REQ-OBS-001 asks for
//! significance: `scipy.stats.ttest_ind(new, base, equal_var=False)`.
//!
//! The p-value needs Student's t distribution, whose tail is a regularized
//! incomplete beta function: `P(|T| > t) = I_{df/(df+t²)}(df/2, 1/2)`.
//! `I_x(a, b)` is evaluated with its continued fraction (modified Lentz,
//! Numerical Recipes §6.4) and `ln Γ` with Lanczos' approximation; both are
//! checked against scipy's values recorded in `testdata/welch_scipy.json`.

/// Mean and unbiased (n − 1) variance of a sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Moments {
    pub n: usize,
    pub mean: f64,
    pub variance: f64,
}

impl Moments {
    pub fn of(values: &[f64]) -> Moments {
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        let variance = if n > 1 {
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        Moments { n, mean, variance }
    }
}

/// The outcome of a two-sided Welch t-test of `new` against `base`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TTest {
    /// Positive when `new`'s mean is higher.
    pub t: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
    /// Two-sided p-value.
    pub p: f64,
}

/// Welch's t-test; `None` with fewer than two values on a side (no variance).
///
/// When both samples have zero variance the statistic is undefined (scipy
/// returns NaN): identical means then give p = 1, different means p = 0 (every
/// run gave the same value on each side, so the difference is certain).
pub fn welch(base: &[f64], new: &[f64]) -> Option<TTest> {
    if base.len() < 2 || new.len() < 2 {
        return None;
    }
    let (b, n) = (Moments::of(base), Moments::of(new));
    let (vb, vn) = (b.variance / b.n as f64, n.variance / n.n as f64);
    let diff = n.mean - b.mean;
    let se2 = vb + vn;
    if se2 == 0.0 {
        let (t, p) = if diff == 0.0 { (0.0, 1.0) } else { (diff.signum() * f64::INFINITY, 0.0) };
        return Some(TTest { t, df: (b.n + n.n - 2) as f64, p });
    }
    let t = diff / se2.sqrt();
    let df = se2 * se2 / (vb * vb / (b.n - 1) as f64 + vn * vn / (n.n - 1) as f64);
    Some(TTest { t, df, p: two_sided_p(t, df) })
}

/// `P(|T| ≥ |t|)` for Student's t with `df` degrees of freedom (df > 0).
pub fn two_sided_p(t: f64, df: f64) -> f64 {
    if t.is_infinite() {
        return 0.0;
    }
    let x = df / (df + t * t);
    regularized_incomplete_beta(x, df / 2.0, 0.5).clamp(0.0, 1.0)
}

/// `P(T > t)`, Student's t survival function.
pub fn t_sf(t: f64, df: f64) -> f64 {
    let half = two_sided_p(t, df) / 2.0;
    if t >= 0.0 { half } else { 1.0 - half }
}

/// `I_x(a, b)`, the regularized incomplete beta function, for a, b > 0.
pub fn regularized_incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    // x^a (1−x)^b / (a B(a, b)), in logs against overflow.
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    // The continued fraction converges quickly for x < (a+1)/(a+b+2); on
    // the other side use I_x(a, b) = 1 − I_{1−x}(b, a).
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_continued_fraction(x, a, b) / a
    } else {
        1.0 - ln_front.exp() * beta_continued_fraction(1.0 - x, b, a) / b
    }
}

/// The continued fraction of `I_x(a, b)` by the modified Lentz method.
fn beta_continued_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const EPS: f64 = 1e-15;
    let guard = |v: f64| if v.abs() < TINY { TINY } else { v };
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 / guard(1.0 - qab * x / qap);
    let mut h = d;
    for m in 1..=10_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        // Even step.
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 / guard(1.0 + aa * d);
        c = guard(1.0 + aa / c);
        h *= d * c;
        // Odd step.
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 / guard(1.0 + aa * d);
        c = guard(1.0 + aa / c);
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < EPS {
            break;
        }
    }
    h
}

/// `ln Γ(x)` for x > 0: Lanczos (g = 7, 9 coefficients), ~15 digits.
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEF: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1−x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = COEF[0];
    for (i, c) in COEF.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> serde_json::Value {
        serde_json::from_str(include_str!("testdata/welch_scipy.json")).unwrap()
    }

    fn floats(v: &serde_json::Value) -> Vec<f64> {
        v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    }

    fn close(got: f64, want: f64, rel: f64) -> bool {
        (got - want).abs() <= rel * want.abs().max(1e-300)
    }

    #[test]
    fn welch_matches_scipy_ttest_ind_unequal_var() {
        let r = reference();
        let cases = r["welch"].as_array().unwrap();
        assert!(cases.len() >= 10);
        for c in cases {
            let (base, new) = (floats(&c["base"]), floats(&c["new"]));
            let got = welch(&base, &new).unwrap();
            let (t, df, p) =
                (c["t"].as_f64().unwrap(), c["df"].as_f64().unwrap(), c["p"].as_f64().unwrap());
            assert!(close(got.t, t, 1e-9), "t {} vs scipy {t} for {c}", got.t);
            assert!(close(got.df, df, 1e-9), "df {} vs scipy {df} for {c}", got.df);
            // 1e-7 relative: scipy's own incomplete beta (Boost) is ~1e-15.
            assert!(close(got.p, p, 1e-7), "p {} vs scipy {p} for {c}", got.p);
        }
    }

    #[test]
    fn t_survival_matches_scipy_for_whole_and_fractional_df() {
        for c in reference()["t_sf"].as_array().unwrap() {
            let (t, df, sf) =
                (c["t"].as_f64().unwrap(), c["df"].as_f64().unwrap(), c["sf"].as_f64().unwrap());
            let got = t_sf(t, df);
            assert!(close(got, sf, 1e-7), "sf({t}, {df}) = {got}, scipy {sf}");
            assert!(close(t_sf(-t, df), 1.0 - sf, 1e-7), "symmetry at {t}, {df}");
        }
    }

    #[test]
    fn ln_gamma_of_known_values() {
        // Γ(1) = Γ(2) = 1, Γ(5) = 24, Γ(1/2) = √π.
        assert!(ln_gamma(1.0).abs() < 1e-14 && ln_gamma(2.0).abs() < 1e-14);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-13);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-14);
        assert!((ln_gamma(0.1) - 2.252_712_651_734_206).abs() < 1e-12);
    }

    #[test]
    fn incomplete_beta_edges_and_symmetry() {
        assert_eq!(regularized_incomplete_beta(0.0, 2.0, 3.0), 0.0);
        assert_eq!(regularized_incomplete_beta(1.0, 2.0, 3.0), 1.0);
        // I_x(1, 1) = x; I_x(a, b) = 1 − I_{1−x}(b, a).
        assert!((regularized_incomplete_beta(0.3, 1.0, 1.0) - 0.3).abs() < 1e-14);
        let (l, r) = (
            regularized_incomplete_beta(0.2, 2.5, 4.0),
            regularized_incomplete_beta(0.8, 4.0, 2.5),
        );
        assert!((l + r - 1.0).abs() < 1e-14);
    }

    #[test]
    fn degenerate_samples() {
        assert!(welch(&[1.0], &[1.0, 2.0]).is_none(), "one value has no variance");
        let same = welch(&[5.0, 5.0, 5.0], &[5.0, 5.0, 5.0]).unwrap();
        assert_eq!(same.p, 1.0);
        let apart = welch(&[5.0, 5.0, 5.0], &[6.0, 6.0, 6.0]).unwrap();
        assert_eq!(apart.p, 0.0);
        assert!(apart.t > 0.0);
        let m = Moments::of(&[2.0, 4.0, 6.0]);
        assert_eq!((m.n, m.mean, m.variance), (3, 4.0, 4.0));
    }
}
