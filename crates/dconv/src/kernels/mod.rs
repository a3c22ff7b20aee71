//! Microkernels: small loops named by what they compute, kept apart from the convolution
//! methods that call them. Each has a portable version and, where it pays, explicit SIMD
//! versions chosen at run time by [`Isa`].
//!
//! The one module where `unsafe` is allowed (the crate denies it elsewhere): intrinsics and
//! unchecked loads, each block with a `// SAFETY:` line.

#![allow(unsafe_code)]

pub mod aligned;
pub(crate) mod block_list_tile;
pub(crate) mod compact;
pub mod curve;
pub(crate) mod depthwise;
pub(crate) mod direct_conv;
pub(crate) mod gemm;
pub(crate) mod gemv;
pub(crate) mod masked_block_tile;
pub(crate) mod multiversion;
pub mod shifted_axpy;
pub(crate) mod sparse_row_panel;
pub(crate) mod transpose;

/// Defines, with `$kernel!`, a block kernel for every vector the block kernels take: the
/// module `x86` with `avx2_tile` (8 lanes), `avx2_narrow_tile` (AVX2's fused multiply-add on
/// 4 lanes, for blocks of 4) and `avx512_tile` (16), and the module `neon` with `neon_tile`
/// (4), each importing `$import`s from the caller's module. `$kernel!` takes the fn's name,
/// its target features, the vector type, its lanes, the most vectors a block may take (what
/// the registers hold: `TILE` sums of each, beside the block's weights and a broadcast) and
/// the intrinsics.
macro_rules! block_kernels_per_vector {
    ($kernel:ident, use super::{$($import:ident),*}) => {
        #[cfg(target_arch = "x86_64")]
        mod x86 {
            use super::{$($import),*};
            use std::arch::x86_64::*;

            $kernel!(avx2_tile, "avx2,fma,popcnt", __m256, 8, 2,
                zero: _mm256_setzero_ps(), load: _mm256_loadu_ps, store: _mm256_storeu_ps,
                splat: _mm256_set1_ps, fma: |a, x, w| _mm256_fmadd_ps(x, w, a));
            $kernel!(avx2_narrow_tile, "avx2,fma,popcnt", __m128, 4, 1,
                zero: _mm_setzero_ps(), load: _mm_loadu_ps, store: _mm_storeu_ps,
                splat: _mm_set1_ps, fma: |a, x, w| _mm_fmadd_ps(x, w, a));
            $kernel!(avx512_tile, "avx512f,popcnt", __m512, 16, 1,
                zero: _mm512_setzero_ps(), load: _mm512_loadu_ps, store: _mm512_storeu_ps,
                splat: _mm512_set1_ps, fma: |a, x, w| _mm512_fmadd_ps(x, w, a));
        }

        #[cfg(target_arch = "aarch64")]
        mod neon {
            use super::{$($import),*};
            use std::arch::aarch64::*;

            // A block of 16 is four vectors: 24 sums, four weights and a broadcast of the
            // 32 registers.
            $kernel!(neon_tile, "neon", float32x4_t, 4, 4,
                zero: vdupq_n_f32(0.0), load: vld1q_f32, store: vst1q_f32,
                splat: vdupq_n_f32, fma: |a, x, w| vfmaq_f32(a, x, w));
        }
    };
}
pub(crate) use block_kernels_per_vector;

use std::fmt;
use std::sync::OnceLock;

/// An instruction set the kernels can be compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust, left to the compiler: runs everywhere, and is tested like the others.
    Portable,
    /// x86-64 with AVX2 and FMA (256-bit vectors).
    Avx2,
    /// x86-64 with AVX-512F (512-bit vectors).
    Avx512,
    /// aarch64 with NEON (128-bit vectors).
    Neon,
}

impl Isa {
    pub const ALL: [Isa; 4] = [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Neon];

    /// The best instruction set of this CPU, detected once. `DCONV_ISA=portable|avx2|avx512|neon`
    /// forces a lower one (useful to compare paths); one the CPU lacks is ignored.
    pub fn detect() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let forced = std::env::var("DCONV_ISA")
                .ok()
                .and_then(|v| Isa::ALL.into_iter().find(|i| i.name() == v));
            match forced {
                Some(isa) if isa.is_supported() => isa,
                _ => Isa::ALL
                    .into_iter()
                    .rev()
                    .find(|i| i.is_supported())
                    .unwrap_or(Isa::Portable),
            }
        })
    }

    /// The instruction sets this CPU can run, portable first.
    pub fn supported() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_supported()).collect()
    }

    pub fn is_supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            // POPCNT counts the kernels' zeros from compare masks; every CPU with AVX2 has it.
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("popcnt")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("popcnt")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Hints that the cache line holding `data[0]` will be read soon, into L2 (a no-op where
/// there is no such hint).
#[inline(always)]
pub(crate) fn prefetch_l2(data: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is only a hint, never faults, and needs only SSE, which every
    // x86-64 has.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        _mm_prefetch::<_MM_HINT_T1>(data.as_ptr().cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

#[cfg(test)]
mod tests {
    use super::Isa;

    /// The kernels' tests compare every supported ISA with the portable code, which comes
    /// first; on AArch64, which always has NEON, the NEON kernels must be among them
    /// (`scripts/test-aarch64` runs the tests there under emulation).
    #[test]
    fn the_tested_isas_start_with_portable_and_include_neon_on_aarch64() {
        let supported = Isa::supported();
        assert_eq!(supported.first(), Some(&Isa::Portable));
        #[cfg(target_arch = "aarch64")]
        assert!(supported.contains(&Isa::Neon), "{supported:?}");
    }
}
