//! The thirteen convolutions of VGG-16 at 224 x 224, one thread, at the input sparsities
//! measured on real photographs (ReLU-clustered zeros), for the dense baseline and the two
//! Direct Conversion methods.
//!
//! Weights: `dense` and `im2csr` get dense weights (im2CSR is the method for sparse
//! activations and dense weights; the dense GEMM does the same work whatever the weights
//! hold). `im2csoa` and `sparse-weight` get weights with 70 % zeros, a usual level for
//! unstructured magnitude pruning, since they exist for sparse weights. The benchmark id
//! says which: `im2csoa/w70`.
//!
//! The throughput criterion reports is in dense-equivalent FLOP/s: 2 x the dense
//! multiply-adds per second, comparable across methods.
//!
//! `DCONV_BENCH_METHODS=dense,im2csr` (comma-separated method names) picks other methods;
//! a criterion filter picks layers: `cargo bench --bench vgg16_layers -- conv5`.

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use dconv::conv::{Conv, Method, Workspace};
use dconv::models::vgg16::CONV_LAYERS;
use dconv::synth::{self, Rng, ZeroPattern};
use std::hint::black_box;
use std::time::{Duration, Instant};

const DEFAULT_METHODS: [Method; 3] = [Method::Dense, Method::Im2Csr, Method::Im2Csoa];

/// Fraction of zero weights each method is benchmarked with (see the module comment).
fn weight_sparsity(method: Method) -> f64 {
    match method {
        Method::Im2Csoa | Method::SparseWeight => 0.7,
        Method::Reference | Method::Dense | Method::LoweredCsr | Method::Im2Csr => 0.0,
    }
}

fn methods() -> Vec<Method> {
    match std::env::var("DCONV_BENCH_METHODS") {
        Ok(list) => list
            .split(',')
            .map(|name| {
                name.trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("DCONV_BENCH_METHODS: {e}"))
            })
            .collect(),
        Err(_) => DEFAULT_METHODS.to_vec(),
    }
}

fn vgg16_layers(c: &mut Criterion) {
    let single_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    let methods = methods();
    for (index, layer) in CONV_LAYERS.iter().enumerate() {
        let spec = layer.spec;
        let mut rng = Rng::new(index as u64);
        let input = synth::activations(
            [spec.batch, spec.height, spec.width, spec.channels],
            layer.input_sparsity,
            ZeroPattern::Relu,
            &mut rng,
        );
        let weight_len = spec.weight_len().expect("a valid layer");
        let mut output = vec![0.0f32; spec.output_len().expect("a valid layer")];
        let mut workspace = Workspace::default();

        let mut group = c.benchmark_group(format!("vgg16/{}", layer.name));
        // Runs take milliseconds: the same iteration count in every sample, as criterion
        // advises for long benchmarks.
        group.sampling_mode(SamplingMode::Flat);
        group.throughput(Throughput::Elements(
            2 * spec.macs().expect("a valid layer"),
        ));
        for &method in &methods {
            let sparsity = weight_sparsity(method);
            let weights = synth::random_sparse(weight_len, sparsity, &mut rng);
            let conv = Conv::prepare(&spec, &weights, None, method)
                .unwrap_or_else(|e| panic!("{method} on {}: {e}", layer.name));
            let id = BenchmarkId::new(method.name(), format!("w{:.0}", sparsity * 100.0));
            group.bench_function(id, |b| {
                b.iter_custom(|iterations| {
                    single_thread.install(|| {
                        let start = Instant::now();
                        for _ in 0..iterations {
                            conv.run(black_box(&input), &mut output, &mut workspace)
                                .expect("buffers sized from the spec");
                        }
                        black_box(&output);
                        start.elapsed()
                    })
                })
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    // Ten samples over two seconds per method and layer: the whole bench takes minutes.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = vgg16_layers
}
criterion_main!(benches);
