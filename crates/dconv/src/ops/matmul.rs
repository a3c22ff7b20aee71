//! Gemm and MatMul. A product with few rows of A (a fully connected layer at batch 1) is a
//! matrix-vector product that reads B once: it streams B through the vectorised
//! [`gemv`](crate::kernels::gemv) kernels, split by columns over the threads. Larger products
//! go to the dense GEMM, with A and B in whatever orientation they are stored. alpha, beta
//! and C are applied to each row of the output afterwards, so nothing is allocated.

use super::Ctx;
use crate::error::{Error, Result};
use crate::kernels::gemm::gemm_f32_strided;
use crate::kernels::gemv::Gemv;
use crate::kernels::Isa;
use crate::plan::builder::{Builder, Value};
use crate::plan::kernel::Kernel;
use crate::plan::layout::Layout;
use rayon::prelude::*;

/// Rows of A from which a product goes to the GEMM: below, B is read once per row by the
/// matrix-vector kernel, which beats packing it for the GEMM.
const GEMM_MIN_ROWS: usize = 4;

/// Output columns per rayon task of a matrix-vector product: a multiple of every vector
/// width, and enough of B per task to amortize it.
const COLUMNS_PER_TASK: usize = 16;

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
    gemv: Gemv,
}

impl Kernel for MatMulKernel {
    fn run(&self, inputs: &[&[f32]], output: &mut [f32]) -> Option<f64> {
        let (a, b) = (inputs[0], inputs[1]);
        let (m, k, n) = (self.m, self.k, self.n);
        if output.is_empty() {
            return None;
        }
        let [ab, ar, ac] = self.a_strides;
        // B's (row, column) strides as a k x n matrix.
        let b_strides = if self.b_trans { (1, k) } else { (n, 1) };
        let threads = rayon::current_num_threads();
        for (p, out) in output.chunks_exact_mut(m * n).enumerate() {
            let ap = &a[p * ab..];
            let bm = &b[p * self.b_batch..];
            // The dot-product kernel needs the rows of A contiguous.
            if m >= GEMM_MIN_ROWS || (self.b_trans && ac != 1 && k > 1) {
                gemm_f32_strided((m, n, k), out, n, ap, (ar, ac), bm, b_strides, threads);
            } else {
                for (i, row) in out.chunks_exact_mut(n).enumerate() {
                    let a_row = ap.get(i * ar..).unwrap_or_default();
                    let per_task = n.div_ceil(threads).next_multiple_of(COLUMNS_PER_TASK);
                    row.par_chunks_mut(per_task)
                        .enumerate()
                        .for_each(|(t, cols)| {
                            let j0 = t * per_task;
                            if self.b_trans {
                                self.gemv.nk(&a_row[..k], &bm[j0 * k..], k, cols);
                            } else {
                                self.gemv.kn(a_row, ac, k, &bm[j0..], n, cols);
                            }
                        });
                }
            }
            self.finish(out, inputs.get(2).copied());
        }
        None
    }
}

impl MatMulKernel {
    /// `out = alpha * out + beta * C` over one product's `m x n` output.
    fn finish(&self, out: &mut [f32], c: Option<&[f32]>) {
        let c = self.c_strides.zip(c);
        if self.alpha == 1.0 && c.is_none() {
            return;
        }
        for (i, row) in out.chunks_exact_mut(self.n).enumerate() {
            match c {
                None => row.iter_mut().for_each(|o| *o *= self.alpha),
                Some(([cr, 1], c)) => {
                    let c_row = &c[i * cr..i * cr + self.n];
                    for (o, &cv) in row.iter_mut().zip(c_row) {
                        *o = self.alpha * *o + self.beta * cv;
                    }
                }
                Some(([cr, cc], c)) => {
                    for (j, o) in row.iter_mut().enumerate() {
                        *o = self.alpha * *o + self.beta * c[i * cr + j * cc];
                    }
                }
            }
        }
    }
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
        gemv: Gemv::for_isa(Isa::detect()),
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
        gemv: Gemv::for_isa(Isa::detect()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::Rng;

    /// A random `m x k` by `k x n` product (`batch` of them), in the orientation and with the
    /// C broadcast the case asks for, checked against the definition on every ISA.
    #[allow(clippy::too_many_arguments)]
    fn check(
        rng: &mut Rng,
        batch: usize,
        (m, k, n): (usize, usize, usize),
        trans_a: bool,
        trans_b: bool,
        shared_b: bool,
        c_shape: Option<[usize; 2]>,
        (alpha, beta): (f32, f32),
    ) {
        let value = |rng: &mut Rng| {
            if rng.next_u64().is_multiple_of(4) {
                0.0
            } else {
                rng.nonzero_value()
            }
        };
        let a: Vec<f32> = (0..batch * m * k).map(|_| value(rng)).collect();
        let b_count = if shared_b { 1 } else { batch };
        let b: Vec<f32> = (0..b_count * k * n).map(|_| value(rng)).collect();
        let c: Vec<f32> = c_shape.map_or(Vec::new(), |[cm, cn]| {
            (0..cm * cn).map(|_| value(rng)).collect()
        });
        let a_at = |p: usize, i: usize, kk: usize| {
            a[p * m * k + if trans_a { kk * m + i } else { i * k + kk }]
        };
        let b_at = |p: usize, kk: usize, j: usize| {
            let p = if shared_b { 0 } else { p };
            b[p * k * n + if trans_b { j * k + kk } else { kk * n + j }]
        };
        let mut want = Vec::new();
        for p in 0..batch {
            for i in 0..m {
                for j in 0..n {
                    let dot: f32 = (0..k).map(|kk| a_at(p, i, kk) * b_at(p, kk, j)).sum();
                    let cv = c_shape.map_or(0.0, |[cm, cn]| {
                        c[if cm == 1 { 0 } else { i * cn } + if cn == 1 { 0 } else { j }]
                    });
                    want.push(alpha * dot + beta * cv);
                }
            }
        }
        for isa in Isa::supported() {
            let kernel = MatMulKernel {
                m,
                k,
                n,
                a_strides: if trans_a {
                    [m * k, 1, m]
                } else {
                    [m * k, k, 1]
                },
                b_batch: if shared_b { 0 } else { k * n },
                b_trans: trans_b,
                alpha,
                beta,
                c_strides: c_shape
                    .map(|[cm, cn]| [if cm == 1 { 0 } else { cn }, if cn == 1 { 0 } else { 1 }]),
                gemv: Gemv::for_isa(isa),
            };
            let mut got = vec![f32::NAN; want.len()];
            let mut inputs = vec![a.as_slice(), b.as_slice()];
            if c_shape.is_some() {
                inputs.push(&c);
            }
            kernel.run(&inputs, &mut got);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                    "{isa} batch {batch} {m}x{k}x{n} trans {trans_a}/{trans_b} C {c_shape:?}: \
                     {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn matches_the_definition_on_random_shapes() {
        let mut rng = Rng::new(21);
        let pick = |rng: &mut Rng, hi: u64| (rng.next_u64() % hi) as usize;
        for case in 0..300 {
            let m = [1, 1, 2, 3, 4, 5, 9][pick(&mut rng, 7)];
            let k = pick(&mut rng, 70);
            let n = 1 + pick(&mut rng, 80);
            let batch = 1 + pick(&mut rng, 3);
            let (trans_a, trans_b) = (pick(&mut rng, 2) == 1, pick(&mut rng, 2) == 1);
            let shared_b = pick(&mut rng, 2) == 1;
            let c_shape = match pick(&mut rng, 5) {
                0 => None,
                1 => Some([m, n]),
                2 => Some([1, n]),
                3 => Some([m, 1]),
                _ => Some([1, 1]),
            };
            let alpha_beta = if case % 3 == 0 {
                (1.0, 1.0)
            } else {
                (0.5 + pick(&mut rng, 4) as f32 * 0.25, -1.5)
            };
            check(
                &mut rng,
                batch,
                (m, k, n),
                trans_a,
                trans_b,
                shared_b,
                c_shape,
                alpha_beta,
            );
        }
    }

    #[test]
    fn a_fully_connected_layer() {
        // The shape of VGG-16's first dense layer: 25088 inputs, most of them ReLU zeros.
        let mut rng = Rng::new(4);
        check(
            &mut rng,
            1,
            (1, 3000, 64),
            false,
            false,
            true,
            None,
            (1.0, 1.0),
        );
        check(
            &mut rng,
            1,
            (1, 3000, 70),
            false,
            true,
            true,
            Some([1, 70]),
            (1.0, 1.0),
        );
    }
}
