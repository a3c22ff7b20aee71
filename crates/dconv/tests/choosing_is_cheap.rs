//! `auto` picks a method for every convolution of every run, so the pick must cost next to
//! nothing: no allocation, and a tiny fraction of even a small layer's time.

use dconv::conv::select::{CostProfile, LayerCosts, WeightZeros, MODELED};
use dconv::conv::ConvSpec;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

struct CountingAllocator;

thread_local! {
    /// Allocations made by this thread: the choosing runs on the test's thread, and the test
    /// harness's own threads may allocate meanwhile (a CI run once counted four of theirs).
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[test]
fn choosing_allocates_nothing_and_takes_well_under_a_microsecond() {
    let spec = ConvSpec::new(512, 15, 15, 512, [3, 3]).with_padding([1, 1, 1, 1]);
    let weights = WeightZeros::unstructured(0.5);
    let costs = LayerCosts::new(&CostProfile::default(), &spec, weights, &MODELED);
    let calls = 100_000;
    let before = allocations();
    let start = Instant::now();
    let mut picked = 0usize;
    for i in 0..calls {
        let sparsity = (i % 101) as f64 / 100.0;
        picked += costs.cheapest(std::hint::black_box(sparsity)) as usize;
    }
    let per_call = start.elapsed() / calls;
    assert_eq!(allocations(), before, "choosing allocated");
    std::hint::black_box(picked);
    // The smallest VGG-16 layer takes ~1 ms; 1 % of it is 10 µs. Allow for a loaded machine.
    assert!(per_call.as_nanos() < 1_000, "{per_call:?} per choice");
}
