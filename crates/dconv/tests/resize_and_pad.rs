//! Resize equals a reference written from ONNX's formulas on random shapes, scales, sizes and
//! modes, on a plain input and after a Conv (channels-last inside); Pad gives the same after a
//! Conv as on a plain input; malformed Resize, Upsample and Pad nodes are refused with errors
//! that say what is wrong, never a panic.

use dconv::onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    ValueInfoProto,
};
use dconv::synth::Rng;
use dconv::{Error, Model, Session, SessionOptions, Tensor};
use proptest::prelude::*;
use prost::Message;

mod common;
use common::{float, floats, int64s, node, string};

/// A 1-D float initializer.
fn vector(name: &str, values: Vec<f32>) -> TensorProto {
    floats(name, &[values.len()], &values)
}

const TRANSFORMS: [&str; 6] = [
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_crop_and_resize",
];
const ROUNDINGS: [&str; 4] = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"];
const SCALES: [f32; 10] = [0.25, 0.5, 0.6, 0.75, 1.0, 1.3, 1.5, 2.0, 2.3, 3.0];

/// One random Resize: of an `[N, C, spatial...]` input, by `scales` or to `sizes` (one per
/// spatial axis), at opset 19, or at opset 10 when `legacy` (scales alone, asymmetric).
#[derive(Debug, Clone)]
struct Case {
    shape: Vec<usize>,
    linear: bool,
    rounding: &'static str,
    transform: &'static str,
    scales: Vec<f32>,
    sizes: Option<Vec<usize>>,
    /// Start and end of the crop along each spatial axis.
    roi: Vec<[f32; 2]>,
    extrapolation: f32,
    legacy: bool,
    /// Resize the output of an identity 1x1 Conv, which dconv stores channels-last.
    after_conv: bool,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    let spatial = 1usize..=2;
    (
        (1usize..=2, 1usize..=5, spatial),
        (any::<bool>(), 0..ROUNDINGS.len(), 0..TRANSFORMS.len()),
        proptest::collection::vec(
            (
                1usize..=7,
                0..SCALES.len(),
                1usize..=12,
                -0.3f32..0.8,
                0.1f32..0.7,
            ),
            2,
        ),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<u64>()),
        -2.0f32..2.0,
    )
        .prop_map(
            |((n, c, dims), (linear, r, t), axes, (sized, legacy, after_conv, seed), e)| {
                let axes = &axes[..dims];
                let mut shape = vec![n, c];
                shape.extend(axes.iter().map(|a| a.0));
                Case {
                    shape,
                    linear,
                    rounding: ROUNDINGS[r],
                    transform: if legacy { "asymmetric" } else { TRANSFORMS[t] },
                    scales: axes.iter().map(|a| SCALES[a.1]).collect(),
                    sizes: (sized && !legacy).then(|| axes.iter().map(|a| a.2).collect()),
                    roi: axes.iter().map(|a| [a.3, a.3 + a.4]).collect(),
                    extrapolation: e,
                    legacy,
                    after_conv,
                    seed,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    #[test]
    fn resize_matches_the_formulas(case in case()) {
        check(&case);
    }
}

fn check(case: &Case) {
    let mut rng = Rng::new(case.seed);
    let len: usize = case.shape.iter().product();
    let x: Vec<f32> = (0..len)
        .map(|_| {
            if rng.next_u64().is_multiple_of(4) {
                0.0
            } else {
                rng.nonzero_value()
            }
        })
        .collect();
    let (shape, want) = reference(case, &x);
    let model = Model::from_bytes(&resize_model(case).encode_to_vec(), None).unwrap();
    let session = Session::new(&model, SessionOptions::default()).unwrap();
    let input = Tensor::from_f32(case.shape.clone(), x).unwrap();
    let (_, got) = session.run(&[("x", input)]).unwrap().remove(0);
    assert_eq!(got.shape(), shape.as_slice(), "{case:?}");
    for (i, (g, w)) in got.to_f32_vec().iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
            "element {i}: {g} vs {w} in {case:?}"
        );
    }
}

/// One spatial axis as ONNX's formulas read it.
struct Axis {
    input: usize,
    output: usize,
    scale: f64,
    /// `length_resized` before rounding: `input * scale`, or the size stretched to.
    resized: f64,
    roi: [f64; 2],
}

impl Axis {
    /// `x_original` of output coordinate `o`, as the operator's documentation writes it.
    fn original(&self, transform: &str, o: usize) -> f64 {
        let (x, scale, n, resized) = (o as f64, self.scale, self.input as f64, self.resized);
        match transform {
            "half_pixel" => (x + 0.5) / scale - 0.5,
            "half_pixel_symmetric" => {
                let adjustment = self.output as f64 / resized;
                let center = n / 2.0;
                let offset = center * (1.0 - adjustment);
                offset + (x + 0.5) / scale - 0.5
            }
            "pytorch_half_pixel" if resized > 1.0 => (x + 0.5) / scale - 0.5,
            "pytorch_half_pixel" => 0.0,
            "align_corners" if resized > 1.0 => x * (n - 1.0) / (resized - 1.0),
            "align_corners" => 0.0,
            "asymmetric" => x / scale,
            "tf_crop_and_resize" => {
                let [start, end] = self.roi;
                if resized > 1.0 {
                    start * (n - 1.0) + x * (end - start) * (n - 1.0) / (resized - 1.0)
                } else {
                    0.5 * (start + end) * (n - 1.0)
                }
            }
            other => panic!("{other}"),
        }
    }
}

/// The input coordinates and weights one output coordinate reads along an axis, or None for
/// the extrapolation value.
type Reads = Option<Vec<(usize, f64)>>;

/// The output shape and values of `case` on `x`, element by element.
fn reference(case: &Case, x: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let spatial = &case.shape[2..];
    let axes: Vec<Axis> = (0..spatial.len())
        .map(|i| {
            let input = spatial[i];
            let roi = case.roi[i].map(f64::from);
            match &case.sizes {
                Some(sizes) => Axis {
                    input,
                    output: sizes[i],
                    scale: sizes[i] as f64 / input as f64,
                    resized: sizes[i] as f64,
                    roi,
                },
                None => {
                    let resized = input as f64 * case.scales[i] as f64;
                    Axis {
                        input,
                        output: resized.floor() as usize,
                        scale: case.scales[i] as f64,
                        resized,
                        roi,
                    }
                }
            }
        })
        .collect();
    let reads: Vec<Vec<Reads>> = axes
        .iter()
        .map(|a| {
            (0..a.output)
                .map(|o| {
                    let x = a.original(case.transform, o);
                    let last = a.input as f64 - 1.0;
                    if case.transform == "tf_crop_and_resize" && (x < 0.0 || x > last) {
                        return None;
                    }
                    let at = |v: f64| v.max(0.0).min(last) as usize;
                    if case.linear {
                        let lo = x.floor();
                        return Some(vec![(at(lo), 1.0 - (x - lo)), (at(lo + 1.0), x - lo)]);
                    }
                    let nearest = match (case.legacy, case.rounding) {
                        (true, _) if a.scale < 1.0 => x.ceil(),
                        (true, _) => x.floor(),
                        (false, "round_prefer_floor") if x - x.floor() == 0.5 => x.floor(),
                        (false, "round_prefer_floor") => x.round(),
                        (false, "round_prefer_ceil") if x - x.floor() == 0.5 => x.ceil(),
                        (false, "round_prefer_ceil") => x.round(),
                        (false, "floor") => x.floor(),
                        (false, _) => x.ceil(),
                    };
                    Some(vec![(at(nearest), 1.0)])
                })
                .collect()
        })
        .collect();
    let mut shape = case.shape[..2].to_vec();
    shape.extend(axes.iter().map(|a| a.output));
    let (h, w) = match spatial {
        [h, w] => (*h, *w),
        _ => (1, spatial[0]),
    };
    let rows = match reads.as_slice() {
        [rows, _] => rows.clone(),
        _ => vec![Some(vec![(0, 1.0)])],
    };
    let cols = reads.last().unwrap();
    let mut out = Vec::new();
    for image in x.chunks(h * w) {
        for row in &rows {
            for col in cols {
                let (Some(row), Some(col)) = (row, col) else {
                    out.push(case.extrapolation);
                    continue;
                };
                let mut sum = 0.0f64;
                for &(y, wy) in row {
                    for &(x, wx) in col {
                        sum += wy * wx * image[y * w + x] as f64;
                    }
                }
                out.push(sum as f32);
            }
        }
    }
    (shape, out)
}

/// A model of opset `opset` from input `x` to output `y`.
fn model(opset: i64, nodes: Vec<NodeProto>, initializer: Vec<TensorProto>) -> ModelProto {
    let info = |name: &str| ValueInfoProto {
        name: Some(name.into()),
        ..Default::default()
    };
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(GraphProto {
            name: Some("resize".into()),
            node: nodes,
            initializer,
            input: vec![info("x")],
            output: vec![info("y")],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Adds a 1x1 Conv that passes `x` (`channels` channels, rank `rank`) through unchanged, into
/// the channels-last layout; returns its output.
fn identity_conv(
    channels: usize,
    rank: usize,
    nodes: &mut Vec<NodeProto>,
    initializer: &mut Vec<TensorProto>,
) -> &'static str {
    let mut dims = vec![channels as i64; 2];
    dims.resize(rank, 1);
    let identity: Vec<f32> = (0..channels * channels)
        .map(|i| if i % (channels + 1) == 0 { 1.0 } else { 0.0 })
        .collect();
    initializer.push(TensorProto {
        dims,
        ..floats("w", &[], &identity)
    });
    nodes.push(node("Conv", &["x", "w"], "c", vec![]));
    "c"
}

fn resize_model(case: &Case) -> ModelProto {
    let rank = case.shape.len();
    let c = case.shape[1];
    let mut initializer = Vec::new();
    let mut nodes = Vec::new();
    let data = if case.after_conv {
        identity_conv(c, rank, &mut nodes, &mut initializer)
    } else {
        "x"
    };
    let whole = |spatial: &[f32], fill: f32| {
        let mut v = vec![fill; 2];
        v.extend(spatial);
        v
    };
    initializer.push(vector("scales", whole(&case.scales, 1.0)));
    let mode = string("mode", if case.linear { "linear" } else { "nearest" });
    if case.legacy {
        nodes.push(node("Resize", &[data, "scales"], "y", vec![mode]));
        return model(10, nodes, initializer);
    }
    let starts: Vec<f32> = case.roi.iter().map(|r| r[0]).collect();
    let ends: Vec<f32> = case.roi.iter().map(|r| r[1]).collect();
    let mut roi = whole(&starts, 0.0);
    roi.extend(whole(&ends, 1.0));
    initializer.push(vector("roi", roi));
    let inputs = match &case.sizes {
        Some(sizes) => {
            let mut all: Vec<i64> = case.shape[..2].iter().map(|&d| d as i64).collect();
            all.extend(sizes.iter().map(|&s| s as i64));
            initializer.push(int64s("sizes", &all));
            [data, "roi", "", "sizes"]
        }
        None => [data, "roi", "scales", ""],
    };
    let attributes = vec![
        mode,
        string("coordinate_transformation_mode", case.transform),
        string("nearest_mode", case.rounding),
        float("extrapolation_value", case.extrapolation),
    ];
    nodes.push(node("Resize", &inputs, "y", attributes));
    model(19, nodes, initializer)
}

#[test]
fn pad_after_a_conv_equals_pad_of_its_input() {
    let shape = vec![2, 3, 4, 5];
    let values: Vec<f32> = (0..120).map(|i| (i % 17) as f32 - 8.0).collect();
    // Mode, pads, and the axes they pad (all when none are given).
    let cases: [(&str, &[i64], &[i64]); 6] = [
        ("constant", &[0, 1, 2, 3, 0, 2, 1, 0], &[]),
        ("edge", &[0, 0, 1, 2, 0, 0, 3, 1], &[]),
        ("reflect", &[0, 0, 1, 3, 0, 0, 2, 4], &[]),
        ("reflect", &[7, 9, 6, 11], &[2, 3]),
        ("wrap", &[0, 0, 5, 12, 0, 0, 9, 2], &[]),
        ("edge", &[1, 2], &[-1]),
    ];
    for (mode, pads, axes) in cases {
        let run = |after_conv: bool| {
            let (mut nodes, mut initializer) = (Vec::new(), vec![int64s("pads", pads)]);
            let data = if after_conv {
                identity_conv(3, 4, &mut nodes, &mut initializer)
            } else {
                "x"
            };
            let mut inputs = vec![data, "pads"];
            if !axes.is_empty() {
                initializer.push(int64s("axes", axes));
                inputs.extend(["", "axes"]);
            }
            nodes.push(node("Pad", &inputs, "y", vec![string("mode", mode)]));
            let proto = model(19, nodes, initializer);
            let model = Model::from_bytes(&proto.encode_to_vec(), None).unwrap();
            let session = Session::new(&model, SessionOptions::default()).unwrap();
            let x = Tensor::from_f32(shape.clone(), values.clone()).unwrap();
            session.run(&[("x", x)]).unwrap().remove(0).1
        };
        let (plain, channels_last) = (run(false), run(true));
        assert_eq!(plain, channels_last, "{mode} by {pads:?} on {axes:?}");
        assert!(plain.len() > 120, "{mode} by {pads:?}");
    }
}

/// The error of running `op` on inputs `inputs` (`x`, 1x1x4x4, and initializers) at `opset`:
/// a node's error, of the given kind, whose message names each of `mentions`.
fn assert_refused(
    (opset, op, inputs): (i64, &str, &[&str]),
    initializer: Vec<TensorProto>,
    attributes: Vec<AttributeProto>,
    kind: fn(&Error) -> bool,
    mentions: &[&str],
) {
    let proto = model(opset, vec![node(op, inputs, "y", attributes)], initializer);
    let x = Tensor::from_f32(vec![1, 1, 4, 4], vec![1.0; 16]).unwrap();
    let e = Model::from_bytes(&proto.encode_to_vec(), None)
        .and_then(|m| Session::new(&m, SessionOptions::default())?.run(&[("x", x)]))
        .unwrap_err();
    let Error::Node { source, .. } = &e else {
        panic!("not a node's error: {e}");
    };
    let message = e.to_string();
    assert!(kind(source), "{message}");
    for m in mentions {
        assert!(message.contains(m), "'{m}' is not in: {message}");
    }
}

fn invalid(e: &Error) -> bool {
    matches!(e, Error::InvalidModel(_))
}

fn unsupported(e: &Error) -> bool {
    matches!(e, Error::Unsupported(_))
}

fn too_large(e: &Error) -> bool {
    matches!(e, Error::InvalidModel(_) | Error::OverBudget { .. })
}

#[test]
fn malformed_resize_nodes_are_refused_saying_what_is_wrong() {
    let resize = (19, "Resize", &["x", "", "scales"][..]);
    let scales = |v: &[f32]| vec![vector("scales", v.to_vec())];
    let doubled = || scales(&[1.0, 1.0, 2.0, 2.0]);
    for (attribute, value) in [
        ("mode", "bicubic"),
        ("coordinate_transformation_mode", "sideways"),
        ("nearest_mode", "round_half_even"),
        ("keep_aspect_ratio_policy", "fit"),
    ] {
        let attributes = vec![string(attribute, value)];
        assert_refused(resize, doubled(), attributes, invalid, &[attribute, value]);
    }
    assert_refused(
        resize,
        scales(&[1.0, 2.0, 2.0]),
        vec![],
        invalid,
        &["3 scales"],
    );
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert_refused(
            resize,
            scales(&[1.0, 1.0, bad, 2.0]),
            vec![],
            invalid,
            &["scale"],
        );
    }
    let sizes = |v: Vec<i64>| int64s("sizes", &v);
    let both = (19, "Resize", &["x", "", "scales", "sizes"][..]);
    let both_given = vec![doubled().remove(0), sizes(vec![1, 1, 8, 8])];
    assert_refused(
        both,
        both_given,
        vec![],
        invalid,
        &["both scales and sizes"],
    );
    assert_refused(
        (19, "Resize", &["x"]),
        vec![],
        vec![],
        invalid,
        &["scales or sizes"],
    );
    let sized = (19, "Resize", &["x", "", "", "sizes"][..]);
    assert_refused(
        sized,
        vec![sizes(vec![1, 1, -8, 8])],
        vec![],
        invalid,
        &["negative"],
    );
    let axes = AttributeProto {
        name: Some("axes".into()),
        ints: vec![2, -2],
        r#type: Some(7),
        ..Default::default()
    };
    let two = vec![sizes(vec![8, 8])];
    assert_refused(sized, two, vec![axes], invalid, &["repeat"]);
    let crop = || {
        vec![string(
            "coordinate_transformation_mode",
            "tf_crop_and_resize",
        )]
    };
    assert_refused(resize, doubled(), crop(), invalid, &["roi"]);
    let cropped = (19, "Resize", &["x", "roi", "scales"][..]);
    let short_roi = vec![vector("roi", vec![0.0; 3]), doubled().remove(0)];
    assert_refused(cropped, short_roi, crop(), invalid, &["roi has 3 values"]);
    // What dconv does not do, it says.
    let cubic = vec![string("mode", "cubic")];
    assert_refused(resize, doubled(), cubic, unsupported, &["cubic"]);
    let antialias = vec![AttributeProto {
        name: Some("antialias".into()),
        i: Some(1),
        r#type: Some(2),
        ..Default::default()
    }];
    assert_refused(resize, doubled(), antialias, unsupported, &["antialias"]);
    let channels = scales(&[1.0, 2.0, 1.0, 1.0]);
    assert_refused(resize, channels, vec![], unsupported, &["axis 1"]);
    // Sizes from the file are checked before anything is allocated for them.
    assert_refused(
        resize,
        scales(&[1.0, 1.0, 1e30, 1e30]),
        vec![],
        too_large,
        &[],
    );
    let huge = vec![sizes(vec![1, 1, 1 << 40, 1 << 40])];
    assert_refused(sized, huge, vec![], too_large, &[]);
    let tall = vec![sizes(vec![1, 1, 1 << 40, 1])];
    assert_refused(sized, tall, vec![], too_large, &[]);
}

#[test]
fn resize_inputs_computed_at_run_time_are_refused() {
    let mut proto = model(
        19,
        vec![node("Resize", &["x", "", "s"], "y", vec![])],
        vec![],
    );
    let graph = proto.graph.as_mut().unwrap();
    graph.input.push(ValueInfoProto {
        name: Some("s".into()),
        ..Default::default()
    });
    let model = Model::from_bytes(&proto.encode_to_vec(), None).unwrap();
    let session = Session::new(&model, SessionOptions::default()).unwrap();
    let x = Tensor::from_f32(vec![1, 1, 4, 4], vec![1.0; 16]).unwrap();
    let s = Tensor::from_f32(vec![4], vec![1.0, 1.0, 2.0, 2.0]).unwrap();
    let e = session.run(&[("x", x), ("s", s)]).unwrap_err().to_string();
    assert!(e.contains("unsupported") && e.contains("scales"), "{e}");
}

#[test]
fn malformed_upsample_and_pad_nodes_are_refused_saying_what_is_wrong() {
    let upsample = (9, "Upsample", &["x", "scales"][..]);
    let three = vec![vector("scales", vec![1.0, 2.0, 2.0])];
    assert_refused(upsample, three, vec![], invalid, &["3 scales"]);
    let no_scales = (7, "Upsample", &["x"][..]);
    assert_refused(no_scales, vec![], vec![], invalid, &["without scales"]);
    let pad = |opset| (opset, "Pad", &["x", "pads"][..]);
    let pads = |v: Vec<i64>| vec![int64s("pads", &v)];
    let mirror = vec![string("mode", "mirror")];
    assert_refused(
        pad(19),
        pads(vec![0; 8]),
        mirror,
        invalid,
        &["mode", "mirror"],
    );
    let wrap = || vec![string("mode", "wrap")];
    assert_refused(pad(18), pads(vec![0; 8]), wrap(), invalid, &["'wrap'"]);
    let around = pads(vec![0, 0, 0, 1 << 20, 0, 0, 0, 0]);
    assert_refused(pad(19), around, wrap(), unsupported, &["repeats"]);
    let with_axes = (19, "Pad", &["x", "pads", "", "axes"][..]);
    let repeated = vec![int64s("pads", &[1; 4]), int64s("axes", &[3, -1])];
    assert_refused(with_axes, repeated, vec![], invalid, &["repeat"]);
    let reflect = vec![string("mode", "reflect")];
    assert_refused(
        pad(19),
        pads(vec![0, 0, 1, 1]),
        reflect,
        invalid,
        &["two per axis"],
    );
}
