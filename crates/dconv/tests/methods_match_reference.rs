//! Every method equals the naive reference over random shapes, sparsities, instruction sets
//! and thread counts.

use dconv::conv::{Activation, Conv, ConvSpec, Method, Workspace};
use dconv::kernels::Isa;
use dconv::prune::WeightBlocks;
use dconv::synth::{self, Rng, ZeroPattern};
use proptest::prelude::*;
use std::sync::OnceLock;

const SPARSITIES: [f64; 5] = [0.0, 0.5, 0.9, 0.99, 1.0];
const THREADS: [usize; 3] = [1, 2, 4];

fn pool(threads: usize) -> &'static rayon::ThreadPool {
    static POOLS: OnceLock<Vec<rayon::ThreadPool>> = OnceLock::new();
    let pools = POOLS.get_or_init(|| {
        THREADS
            .iter()
            .map(|&t| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build()
                    .unwrap()
            })
            .collect()
    });
    &pools[THREADS.iter().position(|&t| t == threads).unwrap()]
}

/// One random case: a valid spec, its data, and how to run it.
#[derive(Debug, Clone)]
struct Case {
    spec: ConvSpec,
    input_sparsity: f64,
    weight_sparsity: f64,
    /// Weight zeros in whole blocks of this many output channels (at one input channel and
    /// tap), as `dconv prune --block` leaves them; else element by element.
    weight_block: Option<usize>,
    pattern: ZeroPattern,
    /// Whether a residual tensor is added before the activation.
    residual: bool,
    /// Floats between output pixels past the filters: as a layer writing its channels of a
    /// concatenation leaves room for the others' (no residual then).
    gap: usize,
    threads: usize,
    seed: u64,
}

fn activation() -> impl Strategy<Value = Activation> {
    prop_oneof![
        Just(Activation::None),
        Just(Activation::Relu),
        Just(Activation::Relu6),
        Just(Activation::HardSwish),
        (0.1f32..0.5, -0.5f32..1.0)
            .prop_map(|(alpha, beta)| Activation::HardSigmoid { alpha, beta }),
    ]
}

fn axis() -> impl Strategy<Value = (usize, usize, usize, usize, usize, usize)> {
    // kernel, stride, dilation, pad before, pad after, extra input beyond the minimum
    (
        1usize..=7,
        1usize..=3,
        1usize..=3,
        0usize..=3,
        0usize..=3,
        0usize..=6,
    )
}

fn case() -> impl Strategy<Value = Case> {
    let groups = prop_oneof![
        (1usize..=6, 1usize..=6).prop_map(|(cg, mg)| (1, cg, mg)),
        (1usize..=4, 1usize..=4).prop_map(|(cg, mg)| (2, cg, mg)),
        (1usize..=6, 1usize..=2).prop_map(|(c, mult)| (c, 1, mult)), // depthwise
    ];
    (
        axis(),
        axis(),
        groups,
        1usize..=3,
        any::<bool>(),
        activation(),
        (0..SPARSITIES.len(), 0..SPARSITIES.len(), any::<bool>()),
        (0..THREADS.len(), any::<u64>()),
        (
            any::<bool>(),
            prop::option::of(prop_oneof![2usize..=4, Just(16)]),
            any::<bool>(),
        ),
        prop_oneof![Just(0usize), 1usize..=9],
    )
        .prop_map(
            |(
                ay,
                ax,
                (g, cg, mg),
                batch,
                bias,
                act,
                (si, sw, relu),
                (ti, seed),
                (one_d, block, residual),
                gap,
            )| {
                let size =
                    |(k, _s, d, lo, hi, extra): (usize, usize, usize, usize, usize, usize)| {
                        let extent = d * (k - 1) + 1;
                        (extent.saturating_sub(lo + hi)).max(1) + extra
                    };
                let (ay, h) = if one_d {
                    ((1, 1, 1, 0, 0, 0), 1)
                } else {
                    (ay, size(ay))
                };
                let spec = ConvSpec::new(g * cg, h, size(ax), g * mg, [ay.0, ax.0])
                    .with_stride([ay.1, ax.1])
                    .with_dilation([ay.2, ax.2])
                    .with_padding([ay.3, ax.3, ay.4, ax.4])
                    .with_groups(g)
                    .with_batch(batch)
                    .with_bias(bias)
                    .with_activation(act);
                Case {
                    spec,
                    input_sparsity: SPARSITIES[si],
                    weight_sparsity: SPARSITIES[sw],
                    weight_block: block,
                    pattern: if relu {
                        ZeroPattern::Relu
                    } else {
                        ZeroPattern::Random
                    },
                    residual: residual && gap == 0,
                    gap,
                    threads: THREADS[ti],
                    seed,
                }
            },
        )
}

/// Cases of the dense method's direct path: one group, at most 4 input channels, and
/// filters enough for several blocks of 64 and a partial one (and, below 8 filters, the
/// GEMM path it falls back to).
fn few_channel_case() -> impl Strategy<Value = Case> {
    (case(), 1usize..=4, 1usize..=150).prop_map(|(mut case, c, m)| {
        case.spec = ConvSpec {
            channels: c,
            filters: m,
            groups: 1,
            ..case.spec
        };
        case
    })
}

/// Cases of the dense method's direct path for grouped layers (ShuffleNet's, ResNeXt's): 2-5
/// groups of 1-12 channels and 8-40 filters (whole vectors and a masked one), so that taps
/// per group fall on both sides of where the GEMM takes over; half of them 1x1 at stride 1
/// without padding, which read the input unpadded, in bands of pixels.
fn grouped_case() -> impl Strategy<Value = Case> {
    let shape = (2usize..=5, 1usize..=12, 8usize..=40, any::<bool>());
    (case(), shape).prop_map(|(mut case, (g, cg, mg, pointwise))| {
        let spec = ConvSpec {
            channels: g * cg,
            filters: g * mg,
            groups: g,
            ..case.spec
        };
        case.spec = if pointwise {
            ConvSpec {
                kernel: [1, 1],
                stride: [1, 1],
                dilation: [1, 1],
                padding: Default::default(),
                ..spec
            }
        } else {
            spec
        };
        case
    })
}

/// Cases of the dense method's direct path for 1x1 layers on small images (ResNet's 7 x 7
/// stage): one group, 5-80 channels, 8-150 filters (panels of 64 and a partial one), at most
/// 8 x 8 pixels, stride 1 without padding.
fn pointwise_case() -> impl Strategy<Value = Case> {
    let shape = (5usize..=80, 8usize..=150, 1usize..=8, 1usize..=8);
    (case(), shape).prop_map(|(mut case, (c, m, h, w))| {
        case.spec = ConvSpec {
            channels: c,
            filters: m,
            groups: 1,
            height: h,
            width: w,
            kernel: [1, 1],
            stride: [1, 1],
            dilation: [1, 1],
            padding: Default::default(),
            ..case.spec
        };
        case
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]
    #[test]
    fn dense_with_few_channels_matches_reference(case in few_channel_case()) {
        check_method(Method::Dense, &case);
    }

    #[test]
    fn dense_on_small_pointwise_layers_matches_reference(case in pointwise_case()) {
        check_method(Method::Dense, &case);
    }

    #[test]
    fn dense_with_groups_matches_reference(case in grouped_case()) {
        check_method(Method::Dense, &case);
    }
}

struct Data {
    input: Vec<f32>,
    weights: Vec<f32>,
    bias: Option<Vec<f32>>,
    residual: Option<Vec<f32>>,
}

fn data(case: &Case) -> Data {
    let s = &case.spec;
    let mut rng = Rng::new(case.seed);
    // Signed inputs too: a method must not assume activations are non-negative.
    let mut input = synth::activations(
        [s.batch, s.height, s.width, s.channels],
        case.input_sparsity,
        case.pattern,
        &mut rng,
    );
    for v in input.iter_mut().step_by(3) {
        *v = -*v;
    }
    let weight_len = s.weight_len().unwrap();
    let weights = match case.weight_block {
        Some(block) => {
            let blocks = WeightBlocks::new(s.filters, s.groups, weight_len / s.filters, block);
            synth::block_sparse_weights(&blocks.unwrap(), case.weight_sparsity, &mut rng)
        }
        None => synth::random_sparse(weight_len, case.weight_sparsity, &mut rng),
    };
    let bias = s
        .bias
        .then(|| synth::random_sparse(s.filters, 0.0, &mut rng));
    let residual = case
        .residual
        .then(|| synth::random_sparse(s.output_len().unwrap(), 0.0, &mut rng));
    Data {
        input,
        weights,
        bias,
        residual,
    }
}

fn run(conv: &Conv, input: &[f32], residual: Option<&[f32]>, threads: usize) -> Vec<f32> {
    run_with_gap(conv, input, residual, (threads, 0))
}

/// [`run`] into output pixels `gap` floats wider than the filters, which are then read back
/// into a tensor of its own; the floats between them must be left as they were.
fn run_with_gap(
    conv: &Conv,
    input: &[f32],
    residual: Option<&[f32]>,
    (threads, gap): (usize, usize),
) -> Vec<f32> {
    let filters = conv.spec().filters;
    let pixels = conv.spec().output_len().unwrap() / filters;
    let pitch = filters + gap;
    let mut out = vec![f32::NAN; (pixels * pitch).saturating_sub(gap)];
    let mut ws = Workspace::default();
    pool(threads).install(|| {
        // Twice into the same workspace: a reused workspace must not leak state.
        for _ in 0..2 {
            conv.run_into(input, residual, (&mut out, pitch), &mut ws)
                .unwrap();
        }
        // What a runtime budgets for the layer bounds what it filled.
        let (filled, bound) = (ws.bytes(), conv.scratch_bytes());
        assert!(
            filled <= bound,
            "{} filled {filled} bytes of workspace, over its bound of {bound}, for {:?}",
            conv.method(),
            conv.spec()
        );
    });
    let untouched = out
        .iter()
        .enumerate()
        .all(|(i, v)| i % pitch < filters || v.is_nan());
    assert!(
        untouched,
        "{} wrote between the pixels of a pitch of {pitch}",
        conv.method()
    );
    out.chunks(pitch)
        .flat_map(|p| &p[..filters])
        .copied()
        .collect()
}

fn assert_close(method: Method, isa: Isa, case: &Case, got: &[f32], want: &[f32]) {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let tol = 1e-4 * scale + 1e-5;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "{method} ({isa}) differs from reference at {i}: {g} vs {w} (tolerance {tol}) for {case:?}"
        );
    }
}

fn check_method(method: Method, case: &Case) {
    let d = data(case);
    let reference =
        Conv::prepare(&case.spec, &d.weights, d.bias.as_deref(), Method::Reference).unwrap();
    let residual = d.residual.as_deref();
    let want = run(&reference, &d.input, residual, 1);
    for isa in Isa::supported() {
        let conv =
            Conv::prepare_with_isa(&case.spec, &d.weights, d.bias.as_deref(), method, isa).unwrap();
        let got = run_with_gap(&conv, &d.input, residual, (case.threads, case.gap));
        assert_close(method, isa, case, &got, &want);
    }
}

/// Cases per method: 160, or PROPTEST_CASES (scripts/valgrind-kernels runs fewer).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(160)
}

macro_rules! method_matches_reference {
    ($($test:ident => $method:expr),* $(,)?) => {$(
        proptest! {
            #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]
            #[test]
            fn $test(case in case()) {
                check_method($method, &case);
            }
        }
    )*};
}

method_matches_reference! {
    dense_matches_reference => Method::Dense,
    lowered_csr_matches_reference => Method::LoweredCsr,
    im2csr_matches_reference => Method::Im2Csr,
    im2csoa_matches_reference => Method::Im2Csoa,
    sparse_weight_matches_reference => Method::SparseWeight,
}

/// A layer large enough that every method splits its work across threads; each thread
/// count must agree with the reference (and so with the others, up to rounding).
#[test]
fn thread_count_does_not_change_results() {
    for method in Method::ALL {
        for (spec, si, sw) in [
            (
                ConvSpec::new(48, 21, 19, 40, [3, 3])
                    .with_padding([1, 1, 1, 1])
                    .with_bias(true),
                0.7,
                0.6,
            ),
            (
                ConvSpec::new(32, 17, 17, 32, [3, 3])
                    .with_stride([2, 2])
                    .with_groups(2)
                    .with_batch(2),
                0.5,
                0.0,
            ),
        ] {
            let case = Case {
                spec: spec.with_activation(Activation::Relu),
                input_sparsity: si,
                weight_sparsity: sw,
                weight_block: None,
                pattern: ZeroPattern::Relu,
                residual: true,
                gap: 0,
                threads: 1,
                seed: 42,
            };
            for threads in THREADS {
                check_method(
                    method,
                    &Case {
                        threads,
                        ..case.clone()
                    },
                );
            }
        }
    }
}

/// An all-zero input gives exactly the bias, after the activation.
#[test]
fn zero_input_gives_exactly_the_bias() {
    let spec = ConvSpec::new(6, 9, 7, 10, [3, 3])
        .with_padding([1, 2, 0, 1])
        .with_bias(true);
    let bias: Vec<f32> = (0..10).map(|m| m as f32 * 1.7 - 7.3).collect();
    let weights = synth::random_sparse(spec.weight_len().unwrap(), 0.5, &mut Rng::new(3));
    let input = vec![0.0; spec.input_len().unwrap()];
    let hard_sigmoid = Activation::HardSigmoid {
        alpha: 0.2,
        beta: 0.5,
    };
    let activations = [
        Activation::None,
        Activation::Relu,
        Activation::Relu6,
        Activation::HardSwish,
        hard_sigmoid,
    ];
    for act in activations {
        let spec = spec.with_activation(act);
        for method in Method::ALL {
            for isa in Isa::supported() {
                let conv =
                    Conv::prepare_with_isa(&spec, &weights, Some(&bias), method, isa).unwrap();
                let out = run(&conv, &input, None, 2);
                for (i, v) in out.iter().enumerate() {
                    assert_eq!(
                        *v,
                        act.apply(bias[i % 10]),
                        "{method} ({isa}) at {i} with {act:?}"
                    );
                }
            }
        }
    }
}

/// Buffers of the wrong length and inconsistent bias are errors, never panics.
#[test]
fn wrong_buffers_are_errors() {
    let spec = ConvSpec::new(4, 6, 6, 8, [3, 3]);
    let weights = vec![1.0; spec.weight_len().unwrap()];
    for method in Method::ALL {
        assert!(Conv::prepare(&spec, &weights[1..], None, method).is_err());
        assert!(Conv::prepare(&spec, &weights, Some(&[0.0; 8]), method).is_err());
        assert!(Conv::prepare(&spec.with_bias(true), &weights, Some(&[0.0; 7]), method).is_err());
        assert!(Conv::prepare(&spec.with_stride([0, 1]), &weights, None, method).is_err());
        let conv = Conv::prepare(&spec, &weights, None, method).unwrap();
        let mut ws = Workspace::default();
        let input = vec![1.0; spec.input_len().unwrap()];
        let mut out = vec![0.0; spec.output_len().unwrap()];
        assert!(conv.run(&input[1..], &mut out, &mut ws).is_err());
        assert!(conv.run(&input, &mut out[1..], &mut ws).is_err());
        conv.run(&input, &mut out, &mut ws).unwrap();
        assert!(out.iter().all(|&v| v == 36.0), "{method}");
    }
}

/// Checks `method` on one fixed shape at each thread count of `threads`, with random
/// weights and inputs of the given sparsities and zero pattern.
fn check_shape(
    method: Method,
    spec: ConvSpec,
    zeros: (f64, f64, ZeroPattern),
    threads: &[usize],
    seed: u64,
) {
    check_shape_in_blocks(method, spec, zeros, None, threads, seed);
}

/// [`check_shape`] with the weight zeros in whole blocks of `weight_block` output channels,
/// if some.
fn check_shape_in_blocks(
    method: Method,
    spec: ConvSpec,
    (input_sparsity, weight_sparsity, pattern): (f64, f64, ZeroPattern),
    weight_block: Option<usize>,
    threads: &[usize],
    seed: u64,
) {
    for &threads in threads {
        // Bands split between threads also write into pixels wider than their filters.
        let case = Case {
            spec,
            input_sparsity,
            weight_sparsity,
            weight_block,
            pattern,
            residual: false,
            gap: if threads > 1 { 3 } else { 0 },
            threads,
            seed,
        };
        check_method(method, &case);
    }
}

/// Sparse-weight splits the input channels into blocks that fit L1 and the output rows into
/// bands whose planes fit L2; the random shapes above are too small to need several of
/// either. (A unit test in `conv::sparse_weight` checks that this shape needs both.)
#[test]
fn sparse_weight_with_many_channel_blocks_and_bands() {
    let spec = ConvSpec::new(96, 150, 37, 24, [3, 3])
        .with_stride([2, 1])
        .with_dilation([1, 2])
        .with_padding([1, 2, 0, 1])
        .with_groups(2)
        .with_batch(2)
        .with_bias(true)
        .with_activation(Activation::Relu);
    let zeros = (0.3, 0.8, ZeroPattern::Random);
    check_shape(Method::SparseWeight, spec, zeros, &THREADS, 5);
    // Filters that share their zeros in pairs keep one list per pair.
    check_shape_in_blocks(Method::SparseWeight, spec, zeros, Some(4), &THREADS, 6);
}

/// With fewer tile rows than threads, sparse-weight's threads share each band (the planes of
/// a band of tile rows), splitting its tiles' filters; a band of shared planes may take six
/// times the L2, so only a wide layer needs several. With a 1 or 2 MB L2 this one has 2 or
/// 3 tile rows in 2 or more bands on every ISA (a unit test in `conv::sparse_weight` checks
/// it).
#[test]
fn sparse_weight_with_shared_bands_on_four_threads() {
    let spec = ConvSpec::new(64, 18, 1500, 80, [3, 3])
        .with_padding([1, 1, 1, 1])
        .with_bias(true)
        .with_activation(Activation::Relu);
    let zeros = (0.3, 0.9, ZeroPattern::Random);
    check_shape(Method::SparseWeight, spec, zeros, &[4], 11);
    // Filters sharing their zeros in pairs take shorter tiles: 14 rows, 3000 wide, in 2 or
    // 3 tile rows and 2 or more bands. (Blocks of 2, 90 % zero: 57 % of the blocks of 16
    // are not zero, too many for the block form.)
    let spec = ConvSpec {
        height: 14,
        width: 3000,
        ..spec
    };
    check_shape_in_blocks(Method::SparseWeight, spec, zeros, Some(2), &[4], 12);
}

/// 80 filters in 2 groups (3 blocks of 16 per group, the last 8 wide) over 140 channels,
/// with stride, dilation, uneven padding and 2 images; 9 output columns, so that tiles of 6
/// pixels cross output rows.
fn three_blocks_per_group() -> ConvSpec {
    ConvSpec::new(140, 13, 17, 80, [3, 2])
        .with_stride([1, 2])
        .with_dilation([2, 1])
        .with_padding([2, 1, 1, 0])
        .with_groups(2)
        .with_batch(2)
        .with_bias(true)
        .with_activation(Activation::Relu)
}

/// Weights pruned in blocks of 16 output channels take sparse-weight's block form (at most
/// 40 % of the blocks non-zero): 3 blocks per group (the last 8 wide), with stride, dilation,
/// uneven padding, 2 groups and 2 images, on 1-4 threads; tiles of 6 pixels cross output
/// rows (9 columns) and bands. Then the same with every block zero and with a dense input;
/// and 64 channels 600 pixels wide (154 KB a padded row) over 12 rows, which with an L2 of up
/// to 2 MB takes 3 or more bands on one thread.
#[test]
fn sparse_weight_on_block_sparse_weights() {
    let spec = three_blocks_per_group();
    for (zeros, seed) in [
        ((0.5, 0.7, ZeroPattern::Relu), 31),
        ((0.5, 0.9, ZeroPattern::Random), 32),
        ((0.0, 1.0, ZeroPattern::Random), 33),
        ((0.0, 0.6, ZeroPattern::Random), 34),
    ] {
        check_shape_in_blocks(Method::SparseWeight, spec, zeros, Some(16), &THREADS, seed);
    }
    let spec = ConvSpec::new(64, 12, 600, 32, [3, 3])
        .with_padding([1, 1, 1, 1])
        .with_bias(true)
        .with_activation(Activation::Relu);
    let zeros = (0.3, 0.8, ZeroPattern::Relu);
    check_shape_in_blocks(Method::SparseWeight, spec, zeros, Some(16), &[1], 35);
}

/// Sparse-weight computes a last column of tiles holding at most half a vector folded (the
/// two halves of the tiles' rows side by side in each vector). This shape folds on every
/// ISA (a unit test in `conv::sparse_weight` checks it), and on 4 threads its single row of
/// tiles is split into filter chunks.
#[test]
fn sparse_weight_with_a_folded_last_column() {
    let spec = ConvSpec::new(40, 12, 18, 20, [3, 3])
        .with_padding([1, 1, 1, 1])
        .with_bias(true)
        .with_activation(Activation::Relu);
    let zeros = (0.3, 0.7, ZeroPattern::Random);
    check_shape(Method::SparseWeight, spec, zeros, &THREADS, 7);
    check_shape_in_blocks(Method::SparseWeight, spec, zeros, Some(2), &THREADS, 8);
}

/// The sparse-activation methods cut the weights into blocks of output channels (128 wide
/// on AVX-512, 64 elsewhere), the channels or lowered columns into chunks and slabs that
/// fit L1 and L2, and the output rows into tiles; the random shapes above fit one of each.
/// This one has three blocks per group on AVX-512 (the last 44 wide), im2CSOA chunks of
/// 64, 64 and 22 channels, with an L2 of up to 2 MB several L2 chunks of im2CSR's 1350
/// lowered columns, and 2 tiles on one thread.
#[test]
fn sparse_activation_methods_with_many_blocks_chunks_and_tiles() {
    let spec = ConvSpec::new(300, 17, 19, 600, [3, 3])
        .with_padding([1, 0, 1, 2])
        .with_groups(2)
        .with_bias(true)
        .with_activation(Activation::Relu);
    for method in [Method::LoweredCsr, Method::Im2Csr, Method::Im2Csoa] {
        let zeros = (0.8, 0.7, ZeroPattern::Random);
        check_shape(method, spec, zeros, &[1, 2], 13);
    }
}

/// im2CSOA takes its blocks of output channels outside its taps when one block's sums and
/// the entries fit L2 where all blocks' sums do not: with a 2 MB L2, this shape (2 blocks,
/// 2304 rows) does so on one thread and not on two, whose tasks hold a quarter of the rows (a unit test in
/// `conv::im2csoa` checks both).
#[test]
fn im2csoa_with_blocks_outside() {
    let spec = ConvSpec::new(16, 48, 48, 256, [3, 3])
        .with_padding([1, 1, 1, 1])
        .with_bias(true)
        .with_activation(Activation::Relu);
    let zeros = (0.8, 0.7, ZeroPattern::Random);
    check_shape(Method::Im2Csoa, spec, zeros, &[1, 2], 17);
}

/// Weights pruned in blocks of 16 output channels take im2CSOA's block form (at most half
/// the blocks non-zero): here 3 blocks per group (the last 8 wide) over 70 channels (two
/// mask words, the second partial), with stride, dilation, uneven padding, 2 groups and 2
/// images; tiles of 6 pixels cross output rows (9 columns) and the image's end. Then the
/// same with every block zero, with a dense input, and with weights pruned in blocks of 8.
#[test]
fn im2csoa_on_block_sparse_weights() {
    let spec = three_blocks_per_group();
    for (zeros, seed) in [
        ((0.8, 0.7, ZeroPattern::Relu), 21),
        ((0.5, 0.9, ZeroPattern::Random), 22),
        ((0.0, 1.0, ZeroPattern::Random), 23),
        ((0.0, 0.6, ZeroPattern::Random), 24),
    ] {
        check_shape_in_blocks(Method::Im2Csoa, spec, zeros, Some(16), &THREADS, seed);
    }
    // 76 % zero blocks of 8, 44 filters per group (the last block of 16 holds 12, and its
    // last block of 8 4): about 42 % of the blocks of 16 (each two of 8, or one and a half)
    // are not zero, within the form's bound, so it reads them as blocks of 16 with zeros.
    let spec = ConvSpec {
        filters: 88,
        ..spec
    };
    let zeros = (0.8, 0.76, ZeroPattern::Relu);
    check_shape_in_blocks(Method::Im2Csoa, spec, zeros, Some(8), &THREADS, 25);
}

/// Dense at stride 1 sums shifted GEMMs a band of output rows at a time (bands of input rows
/// and sums of half the L2); the random shapes above fit one band. With a 2 MB L2 this one
/// takes 4 bands of 26 rows, with groups, dilation and asymmetric padding.
#[test]
fn dense_stride_one_in_several_bands() {
    let spec = ConvSpec::new(64, 80, 98, 64, [3, 2])
        .with_dilation([2, 1])
        .with_padding([1, 3, 2, 1])
        .with_groups(2)
        .with_bias(true)
        .with_activation(Activation::Relu);
    check_shape(
        Method::Dense,
        spec,
        (0.5, 0.0, ZeroPattern::Relu),
        &[1, 2],
        9,
    );
}

/// Dense takes a path of its own for depthwise layers, channels in the vector lanes in blocks
/// of two vectors, the last block masked; the random shapes above have a few channels. These
/// have whole blocks and a masked one, a channel multiplier of 1 and of 2 (whose expanded
/// image repeats each input channel), stride, dilation and asymmetric padding.
#[test]
fn dense_depthwise_over_blocks_of_channels() {
    for (channels, multiplier) in [(150, 1), (70, 2)] {
        let spec = ConvSpec::new(channels, 13, 11, channels * multiplier, [3, 3])
            .with_stride([2, 1])
            .with_dilation([1, 2])
            .with_padding([1, 2, 0, 1])
            .with_groups(channels)
            .with_batch(2)
            .with_bias(true)
            .with_activation(Activation::Relu6);
        let zeros = (0.5, 0.3, ZeroPattern::Relu);
        check_shape(Method::Dense, spec, zeros, &[1, 2], 19);
    }
}

/// A method with a fused activation counts its output's zeros as it writes them (so the next
/// layer's input sparsity costs no extra pass), and the count is exact, with a residual added
/// before the activation too.
#[test]
fn fused_activation_counts_the_output_zeros() {
    let spec = ConvSpec::new(24, 11, 9, 40, [3, 3])
        .with_padding([1, 1, 1, 1])
        .with_groups(2)
        .with_batch(2)
        .with_activation(Activation::Relu);
    let mut rng = Rng::new(11);
    let input = synth::activations([2, 11, 9, 24], 0.6, ZeroPattern::Relu, &mut rng);
    let weights = synth::random_sparse(spec.weight_len().unwrap(), 0.5, &mut rng);
    let residual = synth::random_sparse(spec.output_len().unwrap(), 0.0, &mut rng);
    for method in Method::ALL {
        for (isa, residual) in Isa::supported()
            .into_iter()
            .flat_map(|i| [(i, None), (i, Some(&residual[..]))])
        {
            let conv = Conv::prepare_with_isa(&spec, &weights, None, method, isa).unwrap();
            let mut out = vec![f32::NAN; spec.output_len().unwrap()];
            let timing = pool(2).install(|| {
                conv.run_adding(&input, residual, &mut out, &mut Workspace::default())
                    .unwrap()
            });
            let zeros = out.iter().filter(|&&v| v == 0.0).count();
            assert!(
                zeros > 0 && zeros < out.len(),
                "{method}: a test that can fail needs both"
            );
            let adding = residual.is_some();
            assert_eq!(
                timing.output_zeros,
                Some(zeros),
                "{method} ({isa}, residual {adding})"
            );
        }
    }
}
