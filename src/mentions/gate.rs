//! The sentence gate: a logistic model on a sentence's pooled embedding that answers "does
//! this line name any span?", and the ROC AUC it is reported with.

/// Logistic regression of `ys` on `xs` (full-batch Adam, 800 steps, small L2): the
/// sentence gate's weights and bias.
pub(super) fn fit_gate(xs: &[&[f32]], ys: &[bool], dim: usize) -> (Vec<f32>, f32) {
    let n = xs.len().max(1) as f32;
    let pos = ys.iter().filter(|&&y| y).count() as f32;
    let prior = ((pos + 1.0) / (n - pos + 1.0)).ln();
    let mut w = vec![0f32; dim + 1];
    w[dim] = prior;
    let (mut m, mut v) = (vec![0f32; dim + 1], vec![0f32; dim + 1]);
    let (lr, b1, b2, l2) = (0.05f32, 0.9f32, 0.999f32, 1e-4f32);
    for step in 1..=800 {
        let mut g = vec![0f32; dim + 1];
        for (x, &y) in xs.iter().zip(ys) {
            if x.len() != dim {
                continue;
            }
            let z: f32 = w[..dim].iter().zip(*x).map(|(a, b)| a * b).sum::<f32>() + w[dim];
            let err = 1.0 / (1.0 + (-z).exp()) - y as u8 as f32;
            g[..dim]
                .iter_mut()
                .zip(*x)
                .for_each(|(gi, xi)| *gi += err * xi);
            g[dim] += err;
        }
        for i in 0..=dim {
            let gi = g[i] / n + if i < dim { l2 * w[i] } else { 0.0 };
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            let mh = m[i] / (1.0 - b1.powi(step));
            let vh = v[i] / (1.0 - b2.powi(step));
            w[i] -= lr * mh / (vh.sqrt() + 1e-8);
        }
    }
    let b = w.pop().unwrap_or(0.0);
    (w, b)
}

/// Area under the ROC curve of `(score, positive)` pairs (ties count half).
pub(super) fn auc(pairs: &[(f32, bool)]) -> f64 {
    let mut v = pairs.to_vec();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut n_pos) = (0f64, 0f64);
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let mid = (i + j + 1) as f64 / 2.0;
        for p in &v[i..j] {
            if p.1 {
                rank_sum += mid;
                n_pos += 1.0;
            }
        }
        i = j;
    }
    let n_neg = v.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return 0.5;
    }
    (rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_separates_and_auc_ranks() {
        let xs: Vec<Vec<f32>> = (0..40)
            .map(|i| vec![if i % 2 == 0 { 1.0 } else { -1.0 }, 0.5])
            .collect();
        let refs: Vec<&[f32]> = xs.iter().map(|x| &x[..]).collect();
        let ys: Vec<bool> = (0..40).map(|i| i % 2 == 0).collect();
        let (w, b) = fit_gate(&refs, &ys, 2);
        let p = |x: &[f32]| 1.0 / (1.0 + (-(w[0] * x[0] + w[1] * x[1] + b)).exp());
        assert!(p(&[1.0, 0.5]) > 0.9 && p(&[-1.0, 0.5]) < 0.1);
        assert_eq!(auc(&[(0.9, true), (0.1, false)]), 1.0);
        assert_eq!(auc(&[(0.1, true), (0.9, false)]), 0.0);
        assert_eq!(auc(&[(0.5, true), (0.5, false)]), 0.5);
    }
}
