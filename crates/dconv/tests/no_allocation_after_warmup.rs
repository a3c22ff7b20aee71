//! Once a layer has run once, running it again allocates nothing: the workspace holds
//! every buffer. (The dense method is the exception: the `gemm` crate allocates its packing
//! buffers inside each call, beyond our reach.)

use dconv::conv::{Activation, Conv, ConvSpec, Method, Workspace};
use dconv::synth::{self, Rng, ZeroPattern};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct CountingAllocator;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's allocations count: the test's and its pool's threads, not the
    /// test harness's.
    static COUNTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn count() {
    if COUNTED.try_with(|c| c.get()).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[test]
fn a_second_run_allocates_nothing() {
    let spec = ConvSpec::new(32, 13, 11, 40, [3, 3])
        .with_padding([1, 1, 1, 1])
        .with_groups(2)
        .with_bias(true)
        .with_activation(Activation::Relu);
    let mut rng = Rng::new(5);
    let input = synth::activations([1, 13, 11, 32], 0.7, ZeroPattern::Relu, &mut rng);
    // Zeros element by element, and in whole blocks of 16 output channels (the block forms
    // of im2csoa and sparse-weight).
    let elements = synth::random_sparse(spec.weight_len().unwrap(), 0.6, &mut rng);
    let blocks = dconv::prune::WeightBlocks::new(40, 2, 16 * 9, 16).unwrap();
    let in_blocks = synth::block_sparse_weights(&blocks, 0.8, &mut rng);
    let bias = vec![0.1; 40];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .start_handler(|_| COUNTED.with(|c| c.set(true)))
        .build()
        .unwrap();
    // Every worker is up and idle before anything is counted.
    pool.broadcast(|_| ());
    COUNTED.with(|c| c.set(true));
    let methods = Method::ALL.into_iter().filter(|&m| m != Method::Dense);
    for (method, weights) in methods.flat_map(|m| [(m, &elements), (m, &in_blocks)]) {
        let conv = Conv::prepare(&spec, weights, Some(&bias), method).unwrap();
        let mut out = vec![0.0; spec.output_len().unwrap()];
        let mut ws = Workspace::default();
        pool.install(|| {
            conv.run(&input, &mut out, &mut ws).unwrap();
            let before = ALLOCATIONS.load(Ordering::SeqCst);
            conv.run(&input, &mut out, &mut ws).unwrap();
            let allocated = ALLOCATIONS.load(Ordering::SeqCst) - before;
            assert_eq!(
                allocated, 0,
                "{method} allocated {allocated} times in its second run"
            );
        });
    }
}
