//! What attention's outputs and gradients would be if nothing cancelled: each sum taken over
//! its terms' magnitudes. A rounded computation errs in proportion to these, not to the
//! result, which may cancel to a small fraction of them (an average of values of both
//! signs); the cross-backend checks hold attention to them as they hold products to the
//! norms over their operands' magnitudes.

/// Attention's operands, `[batch × seq, heads × head_dim]` row-major, and its mask
/// (`[batch, seq]`, 1 for a key that is attended).
pub struct AttentionOperands<'a> {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub mask: &'a [u32],
    pub q: &'a [f64],
    pub k: &'a [f64],
    pub v: &'a [f64],
    /// The gradient arriving at the output.
    pub dy: &'a [f64],
    /// The factor on q · k.
    pub scale: f64,
    /// The dropout probability on the attention probabilities (0 without dropout).
    pub dropout: f64,
    /// MPNet's relative position bias, `[2·seq − 1, heads]`: row `seq − 1 + j − i` is added
    /// to the logit of query i and key j.
    pub position_bias: Option<&'a [f64]>,
}

/// The magnitude bounds of the output and of the three gradients, in the operands' layout,
/// and the log-sum-exp's scale (`[batch, heads, seq]`).
pub struct AttentionMagnitudes {
    pub out: Vec<f64>,
    /// |lse| plus the probability-weighted magnitude of the logits (Σ_j P_ij · (scale ·
    /// Σ_d |q_id k_jd| + |bias_ij|)), by which rounding q, k and the bias moves it: the lse of
    /// a single key is its logit, which cancels to near 0 as a dot product of both signs does.
    pub lse: Vec<f64>,
    pub dq: Vec<f64>,
    pub dk: Vec<f64>,
    pub dv: Vec<f64>,
    /// The position bias's gradient, `[2·seq − 1, heads]` (zeros without a bias): each
    /// diagonal's Σ dS_ij over its magnitudes.
    pub d_position_bias: Vec<f64>,
}

/// With P the probabilities (a row with no key attended has none: its context is 0) and
/// dP_ij = dy_i · v_j, the backward pass's dS_ij = P_ij (dP_ij − Σ_l P_il dP_il) is bounded by
/// P_ij (|dy_i|·|v_j| + Σ_l P_il |dy_i|·|v_l|). Dropout keeps a probability or zeroes it and
/// divides the kept ones by 1 − p, so dividing every bound by 1 − p covers any mask. A
/// position bias's gradient sums dS_ij along each diagonal j − i over the batch: its bound is
/// the sum of those dS bounds.
pub fn attention_magnitudes(o: &AttentionOperands) -> AttentionMagnitudes {
    let (seq, hd) = (o.seq, o.head_dim);
    let width = o.heads * hd;
    let size = o.batch * seq * width;
    let keep = 1.0 / (1.0 - o.dropout);
    let mut m = AttentionMagnitudes {
        out: vec![0.0; size],
        lse: vec![0.0; o.batch * o.heads * seq],
        dq: vec![0.0; size],
        dk: vec![0.0; size],
        dv: vec![0.0; size],
        d_position_bias: vec![0.0; (2 * seq - 1) * o.heads],
    };
    let bias_row = |i: usize, j: usize| (seq - 1 + j - i) * o.heads;
    let at = |b: usize, t: usize, h: usize| (b * seq + t) * width + h * hd;
    let abs_dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| (a * b).abs()).sum::<f64>();
    for b in 0..o.batch {
        for h in 0..o.heads {
            for i in 0..seq {
                let qi = &o.q[at(b, i, h)..at(b, i, h) + hd];
                let dyi = &o.dy[at(b, i, h)..at(b, i, h) + hd];
                let attended: Vec<usize> = (0..seq).filter(|&j| o.mask[b * seq + j] != 0).collect();
                let bias = |j: usize| o.position_bias.map_or(0.0, |t| t[bias_row(i, j) + h]);
                let logits: Vec<f64> = attended
                    .iter()
                    .map(|&j| o.scale * dot(qi, &o.k[at(b, j, h)..at(b, j, h) + hd]) + bias(j))
                    .collect();
                let top = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = logits.iter().map(|l| (l - top).exp()).collect();
                let total: f64 = weights.iter().sum();
                let p: Vec<f64> = weights.iter().map(|w| w / total).collect();
                let dp: Vec<f64> = attended
                    .iter()
                    .map(|&j| abs_dot(dyi, &o.v[at(b, j, h)..at(b, j, h) + hd]))
                    .collect();
                let d: f64 = p.iter().zip(&dp).map(|(p, dp)| p * dp).sum();
                if !attended.is_empty() {
                    let logit_sizes: f64 = attended
                        .iter()
                        .zip(&p)
                        .map(|(&j, p)| {
                            p * (o.scale * abs_dot(qi, &o.k[at(b, j, h)..at(b, j, h) + hd])
                                + bias(j).abs())
                        })
                        .sum();
                    m.lse[(b * o.heads + h) * seq + i] = (top + total.ln()).abs() + logit_sizes;
                }
                for (n, &j) in attended.iter().enumerate() {
                    let ds = p[n] * (dp[n] + d) * keep;
                    if o.position_bias.is_some() {
                        m.d_position_bias[bias_row(i, j) + h] += ds;
                    }
                    for c in 0..hd {
                        let (row_i, row_j) = (at(b, i, h) + c, at(b, j, h) + c);
                        m.out[row_i] += p[n] * keep * o.v[row_j].abs();
                        m.dv[row_j] += p[n] * keep * o.dy[row_i].abs();
                        m.dq[row_i] += o.scale * ds * o.k[row_j].abs();
                        m.dk[row_j] += o.scale * ds * o.q[row_i].abs();
                    }
                }
            }
        }
    }
    m
}

fn dot(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}
