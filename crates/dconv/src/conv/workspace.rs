//! The scratch the methods run in, and how much of it they fill.
//!
//! Two kinds: plain floats (a block of lowered rows, a padded image, input planes), which
//! any method borrows for one run from a single shared buffer, and the scratch a method's
//! format keeps in a type of its own (sparse rows, pixel lists, per-tile cursors), held
//! once per type. A new method declares its scratch types in its own file; nothing here
//! names them.

use crate::sparse::Csoa;
use std::any::{Any, TypeId};
use std::mem::size_of;

/// Scratch a method keeps in its own type between runs: made empty on first use, grown by
/// the method, never shrunk.
pub(crate) trait Scratch: Default + Send + 'static {
    /// Bytes it holds (lengths, not what the allocator reserved beyond).
    fn bytes(&self) -> usize;
}

/// Scratch buffers the methods need while they run, owned by the caller and reused across
/// runs and layers: they grow to the largest need and are never shrunk, so nothing is
/// allocated once every layer has run.
#[derive(Default)]
pub struct Workspace {
    /// Floats any method borrows for one run: shared by all, so its length is the largest
    /// single layer's need.
    floats: Vec<f32>,
    /// One value of each scratch type a method has asked for.
    kept: Vec<(TypeId, Box<dyn Held>)>,
}

/// A [`Scratch`] behind a box: its size, and the way back to its type.
trait Held: Send {
    fn bytes(&self) -> usize;
    fn as_any(&mut self) -> &mut dyn Any;
}

impl<T: Scratch> Held for T {
    fn bytes(&self) -> usize {
        Scratch::bytes(self)
    }
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

impl Workspace {
    /// Bytes the buffers hold (their lengths, not what the allocator reserved beyond).
    pub fn bytes(&self) -> usize {
        let kept = self.kept.iter().map(|(_, held)| held.bytes());
        kept.fold(self.floats.len() * size_of::<f32>(), usize::saturating_add)
    }

    /// The first `len` shared floats, grown with zeros where the buffer is shorter; what a
    /// previous run left in them is still there.
    pub(crate) fn floats(&mut self, len: usize) -> &mut [f32] {
        if self.floats.len() < len {
            self.floats.resize(len, 0.0);
        }
        &mut self.floats[..len]
    }

    /// The first `len` shared floats and the scratch of type `T`, together.
    pub(crate) fn floats_and_kept<T: Scratch>(&mut self, len: usize) -> (&mut [f32], &mut T) {
        let i = self.index_of::<T>();
        self.floats(len);
        (&mut self.floats[..len], downcast(&mut self.kept[i].1))
    }

    /// The scratch of type `T`.
    pub(crate) fn kept<T: Scratch>(&mut self) -> &mut T {
        let i = self.index_of::<T>();
        downcast(&mut self.kept[i].1)
    }

    /// The scratch of two distinct types `A` and `B`, together.
    pub(crate) fn kept_pair<A: Scratch, B: Scratch>(&mut self) -> (&mut A, &mut B) {
        let (a, b) = (self.index_of::<A>(), self.index_of::<B>());
        assert_ne!(a, b, "two borrows of one scratch type");
        let (low, high) = self.kept.split_at_mut(a.max(b));
        let (first, second) = (&mut low[a.min(b)].1, &mut high[0].1);
        if a < b {
            (downcast(first), downcast(second))
        } else {
            (downcast(second), downcast(first))
        }
    }

    /// Where the scratch of type `T` is, made empty first if no method has asked for it.
    fn index_of<T: Scratch>(&mut self) -> usize {
        let id = TypeId::of::<T>();
        match self.kept.iter().position(|(t, _)| *t == id) {
            Some(i) => i,
            None => {
                self.kept.push((id, Box::new(T::default())));
                self.kept.len() - 1
            }
        }
    }
}

fn downcast<T: Scratch>(held: &mut Box<dyn Held>) -> &mut T {
    held.as_any()
        .downcast_mut()
        .expect("scratch is filed under its own type")
}

/// What a layer's run fills of a [`Workspace`], whatever the input (saturating).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScratchBytes {
    /// Of the shared floats.
    pub floats: usize,
    /// Of the method's own scratch types.
    pub kept: usize,
}

impl ScratchBytes {
    /// Shared floats only.
    pub(crate) fn floats(len: usize) -> Self {
        ScratchBytes {
            floats: len.saturating_mul(size_of::<f32>()),
            kept: 0,
        }
    }

    pub fn total(self) -> usize {
        self.floats.saturating_add(self.kept)
    }
}

impl Scratch for Csoa {
    fn bytes(&self) -> usize {
        Csoa::bytes(self)
    }
}

/// One scratch per tile of output rows: the structs and what each holds.
impl<T: Scratch> Scratch for Vec<T> {
    fn bytes(&self) -> usize {
        let held = self.iter().map(Scratch::bytes);
        held.fold(
            std::mem::size_of_val(self.as_slice()),
            usize::saturating_add,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Counts(Vec<u32>);

    impl Scratch for Counts {
        fn bytes(&self) -> usize {
            self.0.len() * size_of::<u32>()
        }
    }

    /// Each type is held once and found again by any borrow; the floats are shared and
    /// grow to the largest length asked for.
    #[test]
    fn scratch_is_kept_per_type_and_floats_are_shared() {
        let mut ws = Workspace::default();
        let (floats, counts) = ws.floats_and_kept::<Counts>(10);
        counts.0.extend([1, 2, 3]);
        floats[9] = 7.0;
        assert_eq!(ws.floats(4).len(), 4);
        let (floats, counts) = ws.floats_and_kept::<Counts>(10);
        assert_eq!((floats[9], counts.0.len()), (7.0, 3));
        let (tiles, counts) = ws.kept_pair::<Vec<Counts>, Counts>();
        tiles.push(Counts(vec![4]));
        counts.0.push(5);
        let (counts, tiles) = ws.kept_pair::<Counts, Vec<Counts>>();
        assert_eq!((counts.0.len(), tiles.len()), (4, 1));
        let tile_bytes = size_of::<Counts>() + size_of::<u32>();
        assert_eq!(ws.bytes(), 10 * 4 + 4 * 4 + tile_bytes);
    }
}
