//! The activations a kernel applies to its sums as it stores them, in one form that a few
//! vector instructions compute: `y = g(x) · clamp(α·x + β, lo, hi)`, with `g(x) = x` for
//! a gated curve and 1 otherwise. ReLU is `clamp(x, 0, ∞)`, ReLU6 `clamp(x, 0, 6)`,
//! HardSigmoid `clamp(α·x + β, 0, 1)` and HardSwish `x · clamp(x/6 + 1/2, 0, 1)`.

/// One activation as a gated clamp (see the module notes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Curve {
    pub alpha: f32,
    pub beta: f32,
    pub lo: f32,
    pub hi: f32,
    /// Whether the clamp multiplies `x` (HardSwish) rather than being the result.
    pub gated: bool,
}

impl Curve {
    /// `clamp(x, lo, hi)`.
    pub const fn clamp(lo: f32, hi: f32) -> Curve {
        Curve {
            alpha: 1.0,
            beta: 0.0,
            lo,
            hi,
            gated: false,
        }
    }

    /// Whether `α·x + β` is `x`: ReLU and ReLU6, whose kernels skip the multiply-add.
    #[inline(always)]
    pub fn is_plain_clamp(&self) -> bool {
        !self.gated && self.alpha == 1.0 && self.beta == 0.0
    }

    #[inline(always)]
    pub fn apply(&self, x: f32) -> f32 {
        let t = (self.alpha * x + self.beta).max(self.lo).min(self.hi);
        if self.gated {
            x * t
        } else {
            t
        }
    }
}

/// [`Curve::apply`] on one vector, in the intrinsics of the SIMD kernel that expands it
/// (inside a function compiled with their target feature): `$fma(a, b, c)` is `a·b + c`.
#[cfg(target_arch = "x86_64")]
macro_rules! apply_curve {
    ($curve:expr, $x:expr, $splat:ident, $max:ident, $min:ident, $mul:ident, $fma:ident) => {{
        let (curve, x): (Curve, _) = ($curve, $x);
        let affine = if curve.is_plain_clamp() {
            x
        } else {
            $fma($splat(curve.alpha), x, $splat(curve.beta))
        };
        let t = $min($max(affine, $splat(curve.lo)), $splat(curve.hi));
        if curve.gated {
            $mul(x, t)
        } else {
            t
        }
    }};
}
#[cfg(target_arch = "x86_64")]
pub(crate) use apply_curve;
