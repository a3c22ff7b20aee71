//! Plain Rust loops compiled for a wider instruction set than the build's baseline.
//!
//! The crate is built for baseline x86-64 (SSE2), where the compiler vectorises a loop four
//! floats wide. [`vectorized`] runs a closure inside a function compiled with the target
//! features of an [`Isa`], so that the closure's loops, once inlined there, are vectorised 8
//! or 16 floats wide. Inlining is the catch: mark the closure `#[inline(always)]` and keep
//! its loops in `#[inline(always)]` functions or plain `for` loops. Whatever the compiler
//! leaves out of line (a large closure, an iterator's `fold`) is compiled for the baseline
//! and runs at SSE width; check with `perf annotate` that the loop uses the wide registers.
//! It suits memory-bound loops whose plain Rust form already vectorises (a matrix-vector
//! product); compute-bound kernels that need fused multiply-adds and registers held across
//! a loop use intrinsics instead.

use super::Isa;

/// Runs `f`, compiled for `isa` when this CPU supports it (else for the baseline). The
/// result is exactly that of `f()`: the compiler neither reorders nor fuses float operations.
/// Matches `isa` on every call: a closure cannot become a fn pointer (see [`vectorized_fn!`]).
#[inline(always)]
pub(crate) fn vectorized<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX-512F (checked by the guard); `f` is safe code.
        Isa::Avx512 if isa.is_supported() => unsafe { x86::avx512(f) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX2 and FMA (checked by the guard); `f` is safe code.
        Isa::Avx2 if isa.is_supported() => unsafe { x86::avx2(f) },
        _ => f(),
    }
}

/// [`vectorized`] for a fixed function, chosen once: evaluates to a fn pointer of type
/// `fn($ty, ...) -> $ret` that runs `$f` compiled for the target features of `$isa` when this
/// CPU has them, else to `$f` itself. `$f` must be `#[inline(always)]`, as the closures of
/// [`vectorized`] are.
macro_rules! vectorized_fn {
    ($isa:expr, $f:path, fn($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?) => {{
        vectorized_fn!(@variant avx512, "avx512f", $f, ($($arg: $ty),*) $(-> $ret)?);
        vectorized_fn!(@variant avx2, "avx2,fma", $f, ($($arg: $ty),*) $(-> $ret)?);
        let isa: $crate::kernels::Isa = $isa;
        let chosen: fn($($ty),*) $(-> $ret)? = match isa {
            #[cfg(target_arch = "x86_64")]
            $crate::kernels::Isa::Avx512 if isa.is_supported() => avx512,
            #[cfg(target_arch = "x86_64")]
            $crate::kernels::Isa::Avx2 if isa.is_supported() => avx2,
            _ => $f,
        };
        chosen
    }};
    // `$name`: `$f` compiled with `$feature`, behind a safe fn that only the match above
    // hands out, once it has found the feature.
    (@variant $name:ident, $feature:literal, $f:path, ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        #[cfg(target_arch = "x86_64")]
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[target_feature(enable = $feature)]
            fn compiled($($arg: $ty),*) $(-> $ret)? {
                $f($($arg),*)
            }
            // SAFETY: this fn is reachable only through the fn pointer that the match of
            // `vectorized_fn!` returns after `is_supported` found the feature on this CPU.
            unsafe { compiled($($arg),*) }
        }
    };
}
pub(crate) use vectorized_fn;

#[cfg(target_arch = "x86_64")]
mod x86 {
    #[target_feature(enable = "avx512f")]
    pub(super) fn avx512<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn avx2<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(always)]
    fn sum_of_squares(x: &[f32]) -> f32 {
        x.iter().map(|v| v * v).sum()
    }

    /// A fixed function chosen once computes what it does unchosen, on every ISA (those this
    /// CPU lacks fall back to the baseline).
    #[test]
    fn every_isa_of_a_fixed_function_computes_the_same() {
        let x: Vec<f32> = (0..1000).map(|i| (i % 13) as f32 - 6.0).collect();
        for isa in Isa::ALL {
            let chosen = vectorized_fn!(isa, sum_of_squares, fn(x: &[f32]) -> f32);
            assert_eq!(chosen(&x), sum_of_squares(&x), "{isa}");
        }
    }

    #[test]
    fn every_isa_computes_the_same() {
        let x: Vec<f32> = (0..1000).map(|i| (i % 17) as f32 - 8.0).collect();
        let want: f32 = x.iter().map(|v| v * v).sum();
        for isa in Isa::ALL {
            let got = vectorized(isa, || x.iter().map(|v| v * v).sum::<f32>());
            assert_eq!(got, want, "{isa}");
        }
    }
}
