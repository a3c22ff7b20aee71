//! The data caches of this CPU, detected once, which every blocking budget of the methods is
//! a share of (the L1 slab of panel rows, the L2 chunk, the bands of padded input...).
//!
//! The shares were tuned on a core with a 48 KB L1d and a 2 MB L2, where they give the
//! budgets the methods were measured with; on a core with other caches they scale with them.

use crate::error::{Error, Result};
use std::fmt;
use std::sync::OnceLock;

/// The per-core data cache sizes the methods block for, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSizes {
    /// The level-1 data cache of one core.
    pub l1d: usize,
    /// The level-2 cache, the share of one core where several share it.
    pub l2: usize,
}

impl CacheSizes {
    /// The caches the shares were tuned on.
    pub const TUNED_ON: CacheSizes = CacheSizes {
        l1d: 48 << 10,
        l2: 2 << 20,
    };

    /// Where detection finds nothing believable: the caches of a common x86-64 or ARM core.
    pub const FALLBACK: CacheSizes = CacheSizes {
        l1d: 32 << 10,
        l2: 1 << 20,
    };

    /// The sizes of this CPU, detected once (sysfs on Linux, else CPUID leaf 4 on Intel
    /// and 0x80000005/6 on AMD, through the `gemm` crate's detection), with
    /// [`FALLBACK`](Self::FALLBACK) for a level it does not find or finds out of all
    /// reason. `DCONV_CACHE=l1d=32K,l2=1M` sets them instead, to try another machine's
    /// blocking; a malformed value is ignored, as an unknown `DCONV_ISA` is.
    pub fn detect() -> CacheSizes {
        static DETECTED: OnceLock<CacheSizes> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            std::env::var("DCONV_CACHE")
                .ok()
                .and_then(|text| CacheSizes::parse(&text).ok())
                .unwrap_or_else(CacheSizes::of_machine)
        })
    }

    fn of_machine() -> CacheSizes {
        let info = &*gemm_common::cache::CACHE_INFO;
        let within = |bytes: usize, range: std::ops::RangeInclusive<usize>, fallback| {
            if range.contains(&bytes) {
                bytes
            } else {
                fallback
            }
        };
        CacheSizes {
            l1d: within(info[0].cache_bytes, 4 << 10..=1 << 20, Self::FALLBACK.l1d),
            l2: within(info[1].cache_bytes, 64 << 10..=64 << 20, Self::FALLBACK.l2),
        }
    }

    /// Parses `l1d=SIZE,l2=SIZE` (sizes as `dconv::limits::parse_bytes` reads them:
    /// `48K`, `2M`, `2097152`); both are required.
    pub fn parse(text: &str) -> Result<CacheSizes> {
        let bad = |msg: String| Error::InvalidArgument(format!("cache sizes '{text}': {msg}"));
        let (mut l1d, mut l2) = (None, None);
        for part in text.split(',') {
            let (name, size) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("'{part}' is not NAME=SIZE")))?;
            let bytes = crate::limits::parse_bytes(size.trim())?;
            if bytes == 0 {
                return Err(bad(format!("{name} is 0")));
            }
            match name.trim() {
                "l1d" => l1d = Some(bytes),
                "l2" => l2 = Some(bytes),
                other => return Err(bad(format!("unknown cache '{other}' (expected l1d, l2)"))),
            }
        }
        match (l1d, l2) {
            (Some(l1d), Some(l2)) => Ok(CacheSizes { l1d, l2 }),
            _ => Err(bad("give both l1d and l2".into())),
        }
    }

    /// `num / den` of the L1 data cache.
    pub fn l1d_share(&self, num: usize, den: usize) -> usize {
        self.l1d / den * num
    }

    /// `num / den` of the L2 cache.
    pub fn l2_share(&self, num: usize, den: usize) -> usize {
        self.l2 / den * num
    }
}

impl fmt::Display for CacheSizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L1d {} KB, L2 {} KB", self.l1d >> 10, self.l2 >> 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_shares_scale_with_them() {
        let c = CacheSizes::parse("l1d=48K,l2=2M").unwrap();
        assert_eq!(c, CacheSizes::TUNED_ON);
        assert_eq!(c.l1d_share(2, 3), 32 << 10);
        assert_eq!(c.l2_share(7, 8), 7 << 18);
        assert_eq!(c.to_string(), "L1d 48 KB, L2 2048 KB");
        for bad in [
            "l1d=48K",
            "l1d=48K,l2=0",
            "l1d=48K,l3=2M",
            "l1d=lots,l2=1M",
            "l2",
        ] {
            assert!(CacheSizes::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_detected_sizes_are_believable() {
        let c = CacheSizes::detect();
        assert!((4 << 10..=1 << 20).contains(&c.l1d), "{c}");
        assert!(c.l2 >= 64 << 10, "{c}");
    }
}
