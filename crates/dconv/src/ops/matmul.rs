//! Gemm and MatMul: row-parallel products whose inner loops run over contiguous rows
//! (an axpy per non-zero of A when B is `[K][N]`, a dot product when B is `[N][K]` as the
//! weights of a fully connected layer are), so that neither needs B transposed.

use super::{Ctx, Kernel};
use crate::error::{Error, Result};
use crate::runtime::builder::{Builder, Value};
use crate::runtime::layout::Layout;
use rayon::prelude::*;

/// `out[b] = alpha * A[b] x B[b] + beta * C` for the products (rows of all of them in turn) of `m x k` by `k x n`.
struct MatMulKernel {
    m: usize,
    k: usize,
    n: usize,
    /// Strides of A: between products, rows and columns.
    a_strides: [usize; 3],
    /// Elements between B matrices (0 when shared by every product).
    b_batch: usize,
    /// B is stored `[N][K]`.
    b_trans: bool,
    alpha: f32,
    beta: f32,
    /// Strides of C along output rows and columns (0 where broadcast).
    c_strides: Option<[usize; 2]>,
}

impl Kernel for MatMulKernel {
    fn run(&self, inputs: &[&[f32]], output: &mut [f32]) -> Option<f64> {
        let (a, b) = (inputs[0], inputs[1]);
        let (k_len, n_len) = (self.k, self.n);
        output
            .par_chunks_mut(n_len)
            .enumerate()
            .for_each(|(row, out)| {
                let (p, i) = (row / self.m, row % self.m);
                let [ab, ar, ac] = self.a_strides;
                let a_row: Vec<f32> = (0..k_len).map(|k| a[p * ab + i * ar + k * ac]).collect();
                let bm = &b[p * self.b_batch..][..k_len * n_len];
                if self.b_trans {
                    for (j, o) in out.iter_mut().enumerate() {
                        *o = dot(&a_row, &bm[j * k_len..(j + 1) * k_len]);
                    }
                } else {
                    out.fill(0.0);
                    for (k, &av) in a_row.iter().enumerate() {
                        if av != 0.0 {
                            let b_row = &bm[k * n_len..(k + 1) * n_len];
                            out.iter_mut().zip(b_row).for_each(|(o, &bv)| *o += av * bv);
                        }
                    }
                }
                let c = self.c_strides.map(|s| (inputs[2], s));
                for (j, o) in out.iter_mut().enumerate() {
                    *o *= self.alpha;
                    if let Some((c, [cr, cc])) = c {
                        *o += self.beta * c[i * cr + j * cc];
                    }
                }
            });
        None
    }
}

/// A dot product in eight independent lanes, so that it vectorises.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

pub(crate) fn plan_gemm(b: &mut Builder, ctx: &Ctx, inputs: &[Option<Value>]) -> Result<Value> {
    let get = |i: usize| inputs.get(i).and_then(Option::as_ref);
    let (a, bm) = match (get(0), get(1)) {
        (Some(a), Some(bm)) => (b.plain(a)?, b.plain(bm)?),
        _ => return Err(Error::InvalidModel("Gemm needs A and B".into())),
    };
    let (sa, sb) = (a.shape().to_vec(), bm.shape().to_vec());
    if sa.len() != 2 || sb.len() != 2 {
        return Err(Error::InvalidModel(format!(
            "Gemm of {sa:?} and {sb:?} (both must be 2-D)"
        )));
    }
    let trans_a = ctx.attrs.int("transA", 0) == 1;
    let trans_b = ctx.attrs.int("transB", 0) == 1;
    let (m, k) = if trans_a {
        (sa[1], sa[0])
    } else {
        (sa[0], sa[1])
    };
    let (kb, n) = if trans_b {
        (sb[1], sb[0])
    } else {
        (sb[0], sb[1])
    };
    if k != kb {
        return Err(Error::InvalidModel(format!(
            "Gemm of {sa:?} and {sb:?}: inner sizes differ"
        )));
    }
    let a_strides = if trans_a { [0, 1, m] } else { [0, k, 1] };
    let c = get(2);
    let c_strides = match c {
        None => None,
        Some(c) => {
            let s = c.shape();
            let dim = |i: usize| {
                if s.len() + i >= 2 {
                    s[s.len() + i - 2]
                } else {
                    1
                }
            };
            let (cm, cn) = (dim(0), dim(1));
            if !(cm == m || cm == 1) || !(cn == n || cn == 1) || s.len() > 2 {
                return Err(Error::InvalidModel(format!(
                    "Gemm C {s:?} does not broadcast to [{m}, {n}]"
                )));
            }
            Some([if cm == 1 { 0 } else { cn }, if cn == 1 { 0 } else { 1 }])
        }
    };
    let kernel = MatMulKernel {
        m,
        k,
        n,
        a_strides,
        b_batch: 0,
        b_trans: trans_b,
        alpha: ctx.attrs.float("alpha", 1.0),
        beta: ctx.attrs.float("beta", 1.0),
        c_strides,
    };
    let c = c.map(|c| b.plain(c)).transpose()?;
    let mut operands = vec![&a, &bm];
    operands.extend(c.as_ref());
    b.emit(&operands, vec![m, n], Layout::Plain, Box::new(kernel))
}

pub(crate) fn plan_matmul(b: &mut Builder, a: &Value, bm: &Value) -> Result<Value> {
    let (a, bm) = (b.plain(a)?, b.plain(bm)?);
    let (sa, sb) = (a.shape().to_vec(), bm.shape().to_vec());
    let mismatch = || Error::Unsupported(format!("MatMul of {sa:?} and {sb:?}"));
    if sa.is_empty() || sb.is_empty() {
        return Err(mismatch());
    }
    // 1-D operands are a row (A) or a column (B) that the output then drops.
    let a2 = if sa.len() == 1 {
        vec![1, sa[0]]
    } else {
        sa.clone()
    };
    let b2 = if sb.len() == 1 {
        vec![sb[0], 1]
    } else {
        sb.clone()
    };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (kb, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    let a_batch = &a2[..a2.len() - 2];
    let b_batch = &b2[..b2.len() - 2];
    if k != kb || !(b_batch.is_empty() || b_batch == a_batch) {
        return Err(mismatch());
    }
    let kernel = MatMulKernel {
        m,
        k,
        n,
        a_strides: [m * k, k, 1],
        b_batch: if b_batch.is_empty() { 0 } else { k * n },
        b_trans: false,
        alpha: 1.0,
        beta: 0.0,
        c_strides: None,
    };
    let mut shape = a_batch.to_vec();
    if sa.len() > 1 {
        shape.push(m);
    }
    if sb.len() > 1 {
        shape.push(n);
    }
    b.emit(&[&a, &bm], shape, Layout::Plain, Box::new(kernel))
}
