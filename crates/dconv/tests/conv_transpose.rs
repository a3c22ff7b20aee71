//! ConvTranspose through a Session on models built here: random specs against the ONNX
//! definition written out naively, fusion, layouts between Convs, malformed attributes;
//! and weights given as Constant nodes rather than initializers, for every operator with
//! weights.

use dconv::onnx::proto::{
    attribute_proto::AttributeType, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, ValueInfoProto,
};
use dconv::synth::Rng;
use dconv::{Error, Model, Policy, Session, SessionOptions, Tensor};
use proptest::prelude::*;
use prost::Message;

mod common;
use common::{floats, int, ints, node, string};

/// A graph input or output, its shape left to the tensors given.
fn info(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        ..Default::default()
    }
}

/// A model of `nodes` from input `x` to the outputs `outputs`, opset 22.
fn model(
    nodes: Vec<NodeProto>,
    initializer: Vec<TensorProto>,
    outputs: &[&str],
) -> Result<Model, Error> {
    let graph = GraphProto {
        name: Some("test".into()),
        node: nodes,
        initializer,
        input: vec![info("x")],
        output: outputs.iter().map(|name| info(name)).collect(),
        ..Default::default()
    };
    let proto = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(22),
        }],
        graph: Some(graph),
        ..Default::default()
    };
    Model::from_bytes(&proto.encode_to_vec(), None)
}

/// Runs `model` on `x` under `policy` with `threads`; the outputs and the ops of the steps.
fn run(
    model: &Model,
    x: &Tensor,
    policy: Policy,
    threads: usize,
) -> Result<(Vec<Tensor>, Vec<String>), Error> {
    let options = SessionOptions {
        threads,
        policy,
        ..Default::default()
    };
    let session = Session::new(model, options)?;
    let (outputs, profile) = session.run_profiled(&[("x", x.clone())])?;
    let ops = profile.steps.into_iter().map(|s| s.op).collect();
    Ok((outputs.into_iter().map(|(_, t)| t).collect(), ops))
}

fn random(len: usize, rng: &mut Rng) -> Vec<f32> {
    (0..len).map(|_| rng.unit() as f32 * 2.0 - 1.0).collect()
}

/// How a case states its padding.
#[derive(Debug, Clone, Copy)]
enum Padding {
    /// `pads` (begin, end per axis).
    Pads,
    /// `output_shape`, the full output plus a delta per axis.
    OutputShape,
    SameUpper,
    SameLower,
    Valid,
}

/// One axis: kernel, stride, dilation, pad begin and end, output padding, input size, and
/// the output shape's difference from the full output.
#[derive(Debug, Clone, Copy)]
struct Axis {
    kernel: usize,
    stride: usize,
    dilation: usize,
    pads: (usize, usize),
    output_padding: usize,
    size: usize,
    delta: i64,
}

impl Axis {
    /// The axis of a 1-D case's height.
    const UNIT: Axis = Axis {
        kernel: 1,
        stride: 1,
        dilation: 1,
        pads: (0, 0),
        output_padding: 0,
        size: 1,
        delta: 0,
    };

    /// `stride * (size - 1) + output_padding + dilation * (kernel - 1) + 1`.
    fn full(&self) -> i64 {
        (self.stride * (self.size - 1)
            + self.output_padding
            + self.dilation * (self.kernel - 1)
            + 1) as i64
    }

    /// The begin pad and the output size, by ONNX's definition.
    fn resolve(&self, padding: Padding) -> (i64, usize) {
        let full = self.full();
        let split = |out: i64, upper: bool| {
            let total = full - out;
            let half = total.div_euclid(2);
            (if upper { half } else { total - half }, out as usize)
        };
        match padding {
            Padding::Pads => {
                let (b, e) = self.pads;
                (b as i64, (full - b as i64 - e as i64) as usize)
            }
            Padding::OutputShape => split((full + self.delta).max(1), false),
            Padding::SameUpper => split((self.size * self.stride) as i64, true),
            Padding::SameLower => split((self.size * self.stride) as i64, false),
            Padding::Valid => (0, full as usize),
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    axes: Vec<Axis>,
    padding: Padding,
    groups: usize,
    channels_per_group: usize,
    filters_per_group: usize,
    batch: usize,
    bias: bool,
    relu: bool,
    kernel_shape: bool,
    threads: usize,
    seed: u64,
}

fn axis() -> impl Strategy<Value = Axis> {
    (1usize..=5, 1usize..=3, 1usize..=2, 0usize..=3, 0usize..=3)
        .prop_flat_map(|(kernel, stride, dilation, begin, end)| {
            (
                Just((kernel, stride, dilation, begin, end)),
                0..stride.max(dilation),
                1usize..=5,
                -3i64..=3,
            )
        })
        .prop_map(
            |((kernel, stride, dilation, begin, end), output_padding, size, delta)| {
                let mut axis = Axis {
                    kernel,
                    stride,
                    dilation,
                    pads: (0, 0),
                    output_padding,
                    size,
                    delta,
                };
                // Pads that leave at least one output.
                let full = axis.full() as usize;
                let begin = begin.min(full - 1);
                axis.pads = (begin, end.min(full - 1 - begin));
                axis
            },
        )
}

fn case() -> impl Strategy<Value = Case> {
    let padding = prop_oneof![
        Just(Padding::Pads),
        Just(Padding::OutputShape),
        Just(Padding::SameUpper),
        Just(Padding::SameLower),
        Just(Padding::Valid),
    ];
    (
        (axis(), axis(), any::<bool>(), padding),
        (1usize..=3, 1usize..=3, 1usize..=3, 1usize..=2),
        (any::<bool>(), any::<bool>(), any::<bool>()),
        (prop_oneof![Just(1usize), Just(3)], any::<u64>()),
    )
        .prop_map(
            |(
                (height, width, one_d, padding),
                (groups, cg, mg, batch),
                (bias, relu, kernel_shape),
                (threads, seed),
            )| Case {
                axes: if one_d {
                    vec![width]
                } else {
                    vec![height, width]
                },
                padding,
                groups,
                channels_per_group: cg,
                filters_per_group: mg,
                batch,
                bias,
                relu,
                kernel_shape,
                threads,
                seed,
            },
        )
}

impl Case {
    fn channels(&self) -> usize {
        self.groups * self.channels_per_group
    }
    fn filters(&self) -> usize {
        self.groups * self.filters_per_group
    }
    fn input_shape(&self) -> Vec<usize> {
        let mut shape = vec![self.batch, self.channels()];
        shape.extend(self.axes.iter().map(|a| a.size));
        shape
    }
    fn weight_shape(&self) -> Vec<usize> {
        let mut shape = vec![self.channels(), self.filters_per_group];
        shape.extend(self.axes.iter().map(|a| a.kernel));
        shape
    }

    /// The ConvTranspose node (and a Relu after it, fused by the planner) writing `y`.
    fn nodes(&self) -> Vec<NodeProto> {
        let each = |f: fn(&Axis) -> usize| self.axes.iter().map(|a| f(a) as i64).collect();
        let each: Vec<Vec<i64>> = vec![
            each(|a| a.stride),
            each(|a| a.dilation),
            each(|a| a.output_padding),
            each(|a| a.kernel),
        ];
        let mut attributes = vec![
            ints("strides", &each[0]),
            ints("dilations", &each[1]),
            ints("output_padding", &each[2]),
            int("group", self.groups as i64),
        ];
        if self.kernel_shape {
            attributes.push(ints("kernel_shape", &each[3]));
        }
        match self.padding {
            Padding::Pads => {
                let mut pads: Vec<i64> = self.axes.iter().map(|a| a.pads.0 as i64).collect();
                pads.extend(self.axes.iter().map(|a| a.pads.1 as i64));
                attributes.push(ints("pads", &pads));
            }
            Padding::OutputShape => {
                let shape: Vec<i64> = self
                    .axes
                    .iter()
                    .map(|a| a.resolve(self.padding).1 as i64)
                    .collect();
                attributes.push(ints("output_shape", &shape));
            }
            Padding::SameUpper => attributes.push(string("auto_pad", "SAME_UPPER")),
            Padding::SameLower => attributes.push(string("auto_pad", "SAME_LOWER")),
            Padding::Valid => attributes.push(string("auto_pad", "VALID")),
        }
        let inputs: &[&str] = if self.bias {
            &["x", "w", "b"]
        } else {
            &["x", "w"]
        };
        if self.relu {
            vec![
                node("ConvTranspose", inputs, "t", attributes),
                node("Relu", &["t"], "y", vec![]),
            ]
        } else {
            vec![node("ConvTranspose", inputs, "y", attributes)]
        }
    }

    /// The ONNX definition: `y[n, g*Mg + j, oy, ox] += x[n, g*Cg + c, iy, ix] *
    /// w[g*Cg + c, j, r, s]` at `oy = iy * stride - pad_begin + r * dilation` (likewise `ox`).
    fn reference(&self, x: &[f32], w: &[f32], bias: &[f32]) -> (Vec<usize>, Vec<f32>) {
        let mut axes = self.axes.clone();
        if axes.len() == 1 {
            axes.insert(0, Axis::UNIT);
        }
        let [(top, oh), (left, ow)] = [0, 1].map(|a| axes[a].resolve(self.padding));
        let (h, wd) = (axes[0].size, axes[1].size);
        let (kh, kw) = (axes[0].kernel, axes[1].kernel);
        let (cg, mg, m_len) = (
            self.channels_per_group,
            self.filters_per_group,
            self.filters(),
        );
        let mut y = vec![0.0f32; self.batch * m_len * oh * ow];
        for (i, v) in y.iter_mut().enumerate() {
            *v = bias[(i / (oh * ow)) % m_len];
        }
        for n in 0..self.batch {
            for c in 0..self.channels() {
                let g = c / cg;
                for (iy, ix, j, r, s) in itertools(h, wd, mg, kh, kw) {
                    let oy = (iy * axes[0].stride + r * axes[0].dilation) as i64 - top;
                    let ox = (ix * axes[1].stride + s * axes[1].dilation) as i64 - left;
                    if !(0..oh as i64).contains(&oy) || !(0..ow as i64).contains(&ox) {
                        continue;
                    }
                    let xv = x[((n * self.channels() + c) * h + iy) * wd + ix];
                    let wv = w[((c * mg + j) * kh + r) * kw + s];
                    let m = g * mg + j;
                    y[((n * m_len + m) * oh + oy as usize) * ow + ox as usize] += xv * wv;
                }
            }
        }
        if self.relu {
            y.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        let mut shape = vec![self.batch, m_len];
        if self.axes.len() == 2 {
            shape.push(oh);
        }
        shape.push(ow);
        (shape, y)
    }
}

/// Every `(iy, ix, j, r, s)` of the given ranges.
fn itertools(
    h: usize,
    w: usize,
    mg: usize,
    kh: usize,
    kw: usize,
) -> impl Iterator<Item = (usize, usize, usize, usize, usize)> {
    (0..h).flat_map(move |iy| {
        (0..w).flat_map(move |ix| {
            (0..mg).flat_map(move |j| {
                (0..kh).flat_map(move |r| (0..kw).map(move |s| (iy, ix, j, r, s)))
            })
        })
    })
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(case.seed);
    let (xs, ws) = (case.input_shape(), case.weight_shape());
    let x = random(xs.iter().product(), &mut rng);
    let w = random(ws.iter().product(), &mut rng);
    let b = random(case.filters(), &mut rng);
    let mut initializers = vec![floats("w", &ws, &w)];
    if case.bias {
        initializers.push(floats("b", &[case.filters()], &b));
    }
    let zeros = vec![0.0; case.filters()];
    let (shape, want) = case.reference(&x, &w, if case.bias { &b } else { &zeros });
    let model = model(case.nodes(), initializers, &["y"]).unwrap();
    let input = Tensor::from_f32(xs, x).unwrap();
    let (outputs, ops) = run(&model, &input, Policy::Auto, case.threads).unwrap();
    prop_assert!(!ops.iter().any(|op| op == "Relu"), "{ops:?}");
    prop_assert_eq!(outputs[0].shape(), shape.as_slice());
    let got = outputs[0].to_f32_vec();
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
        prop_assert!((g - e).abs() <= 1e-5 * scale, "at {i}: {g} vs {e}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]
    #[test]
    fn conv_transpose_matches_the_onnx_definition(case in case()) {
        check(&case)?;
    }
}

/// A 2-D ConvTranspose of 2 -> 4 channels, 3x3 stride 2, on a 1x2x3x4 input, with `attrs`
/// replacing the node's attributes of the same name and weights of `w_shape`.
fn malformed(attrs: Vec<AttributeProto>, w_shape: &[usize]) -> Result<(), Error> {
    let mut attributes = vec![ints("strides", &[2, 2])];
    attributes.retain(|a| !attrs.iter().any(|b| b.name == a.name));
    attributes.extend(attrs);
    let w = vec![0.5; w_shape.iter().product()];
    let nodes = vec![node("ConvTranspose", &["x", "w"], "y", attributes)];
    let model = model(nodes, vec![floats("w", w_shape, &w)], &["y"])?;
    let x = Tensor::from_f32(vec![1, 2, 3, 4], vec![1.0; 24])?;
    run(&model, &x, Policy::Auto, 1).map(drop)
}

#[test]
fn malformed_attributes_are_clear_errors() {
    let w = [2, 4, 3, 3];
    assert!(malformed(vec![], &w).is_ok());
    let cases: Vec<(Vec<AttributeProto>, &[usize], &str)> = vec![
        (vec![ints("output_padding", &[2, 0])], &w, "output_padding"),
        (vec![ints("output_padding", &[0])], &w, "output_padding"),
        (vec![ints("pads", &[1, -1, 0, 0])], &w, "negative"),
        (vec![ints("pads", &[1, 1])], &w, "pads"),
        (vec![ints("pads", &[9, 0, 0, 0])], &w, "no output"),
        (vec![ints("output_shape", &[7])], &w, "output_shape"),
        (vec![ints("output_shape", &[1, 2, 3])], &w, "output_shape"),
        (vec![ints("output_shape", &[7, -7])], &w, "negative"),
        (vec![ints("output_shape", &[0, 7])], &w, "no output"),
        (vec![ints("strides", &[0, 2])], &w, "zero"),
        (vec![ints("dilations", &[1])], &w, "dilations"),
        (vec![ints("kernel_shape", &[3, 2])], &w, "kernel_shape"),
        (vec![int("group", 0)], &w, "group"),
        (vec![int("group", 3)], &w, "groups"),
        (vec![string("auto_pad", "SOMETIMES")], &w, "auto_pad"),
        (vec![], &[3, 4, 3, 3], "weights"),
        (vec![], &[2, 4, 3], "weights"),
        // Sizes from the file: refused against the memory budget, never allocated.
        (vec![ints("strides", &[1 << 20, 1 << 20])], &w, "budget"),
        (vec![ints("strides", &[1 << 40, 1 << 40])], &w, "overflow"),
        (vec![ints("dilations", &[1 << 40, 1])], &w, "budget"),
        (
            vec![ints("output_shape", &[1 << 20, 1 << 20])],
            &w,
            "budget",
        ),
        (vec![ints("strides", &[i64::MAX, 1])], &w, ""),
        (vec![ints("pads", &[i64::MAX, 0, 0, 0])], &w, ""),
    ];
    for (attrs, w_shape, says) in cases {
        let what = format!("{attrs:?} {w_shape:?}");
        let e = malformed(attrs, w_shape).expect_err(&what);
        assert!(e.is_bad_input(), "{what}: {e}");
        assert!(e.to_string().contains(says), "{what}: {e}");
    }
}

#[test]
fn a_bias_of_the_wrong_length_and_a_3d_input_are_refused() {
    let nodes = vec![node("ConvTranspose", &["x", "w", "b"], "y", vec![])];
    let inits = vec![
        floats("w", &[2, 4, 3, 3], &[0.5; 72]),
        floats("b", &[3], &[0.0; 3]),
    ];
    let bad_bias = model(nodes, inits, &["y"]).unwrap();
    let x = Tensor::from_f32(vec![1, 2, 3, 4], vec![1.0; 24]).unwrap();
    let e = run(&bad_bias, &x, Policy::Auto, 1).unwrap_err();
    assert!(e.to_string().contains("bias"), "{e}");

    let nodes = vec![node("ConvTranspose", &["x", "w"], "y", vec![])];
    let inits = vec![floats("w", &[1, 1, 2, 2, 2], &[0.5; 8])];
    let three_d = model(nodes, inits, &["y"]).unwrap();
    let x = Tensor::from_f32(vec![1, 1, 2, 2, 2], vec![1.0; 8]).unwrap();
    let e = run(&three_d, &x, Policy::Auto, 1).unwrap_err();
    assert!(
        matches!(&e, Error::Node { source, .. } if matches!(**source, Error::Unsupported(_))),
        "{e}"
    );
}

/// Conv (3 -> 4) + Relu, ConvTranspose (4 -> 3, 4x4 stride 2) + BatchNormalization + Relu,
/// Conv (3 -> 2): with `expose`, the ConvTranspose's own output is a graph output too,
/// which keeps the BatchNormalization and Relu apart.
fn decoder(expose: bool) -> Model {
    let mut rng = Rng::new(7);
    let mut r = |len| random(len, &mut rng);
    let nodes = vec![
        node(
            "Conv",
            &["x", "w1"],
            "c1",
            vec![ints("pads", &[1, 1, 1, 1])],
        ),
        node("Relu", &["c1"], "r1", vec![]),
        node(
            "ConvTranspose",
            &["r1", "w2", "b2"],
            "t",
            vec![ints("strides", &[2, 2]), ints("pads", &[1, 1, 1, 1])],
        ),
        node(
            "BatchNormalization",
            &["t", "gamma", "beta", "mean", "var"],
            "n",
            vec![],
        ),
        node("Relu", &["n"], "r2", vec![]),
        node("Conv", &["r2", "w3"], "y", vec![]),
    ];
    let var: Vec<f32> = r(3).iter().map(|v| v.abs() + 0.5).collect();
    let inits = vec![
        floats("w1", &[4, 3, 3, 3], &r(108)),
        floats("w2", &[4, 3, 4, 4], &r(192)),
        floats("b2", &[3], &r(3)),
        floats("gamma", &[3], &r(3)),
        floats("beta", &[3], &r(3)),
        floats("mean", &[3], &r(3)),
        floats("var", &[3], &var),
        floats("w3", &[2, 3, 1, 1], &r(6)),
    ];
    let outputs: &[&str] = if expose { &["y", "t"] } else { &["y"] };
    model(nodes, inits, outputs).unwrap()
}

#[test]
fn between_convs_it_needs_no_layout_steps_and_folds_what_follows() {
    let mut rng = Rng::new(3);
    let x = Tensor::from_f32(vec![1, 3, 5, 6], random(90, &mut rng)).unwrap();
    for policy in Policy::ALL {
        let (fused, ops) = run(&decoder(false), &x, policy, 2).unwrap();
        // Into channels-last at the input, out of it at the output, nothing between.
        assert_eq!(
            ops,
            ["Layout", "Conv", "ConvTranspose", "Conv", "Layout"],
            "{policy}"
        );
        let (apart, ops) = run(&decoder(true), &x, policy, 2).unwrap();
        // Apart, the BatchNormalization runs (with the Relu, as one pass of its own).
        let apart_bn = |op: &String| op == "BatchNormalization" || op == "ChannelAffine";
        assert!(ops.iter().any(apart_bn), "{ops:?}");
        assert_eq!(fused[0].shape(), [1, 2, 10, 12]);
        for (a, b) in fused[0].to_f32_vec().iter().zip(apart[0].to_f32_vec()) {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{policy}: {a} vs {b}"
            );
        }
    }
}

/// Each operator with weights, the weights `w` (and bias `b`) as initializers or as the
/// values of Constant nodes.
#[test]
fn weights_from_constant_nodes_equal_initializers() {
    let mut rng = Rng::new(11);
    let mut r = |len| random(len, &mut rng);
    let x = Tensor::from_f32(vec![2, 4, 5, 5], r(200)).unwrap();
    let conv_w = floats("w", &[6, 4, 3, 3], &r(216));
    let transpose_w = floats("w", &[4, 3, 3, 3], &r(108));
    let bias = floats("b", &[6], &r(6));
    let cases = [
        ("Conv", vec![ints("pads", &[1, 1, 1, 1])], conv_w),
        ("ConvTranspose", vec![ints("strides", &[2, 2])], transpose_w),
    ];
    let mut checked = 0;
    for (op, attributes, w) in cases {
        let mut b = bias.clone();
        b.dims = vec![if op == "Conv" { 6 } else { 3 }];
        b.float_data.truncate(b.dims[0] as usize);
        let layer = node(op, &["x", "w", "b"], "y", attributes);
        let graphs = weight_graphs(vec![layer], vec![w, b]);
        checked += assert_same(graphs, &x);
    }
    // Gemm and MatMul on the flattened input (2 x 100).
    let gemm_w = floats("w", &[7, 100], &r(700));
    let gemm_b = floats("b", &[7], &r(7));
    let matmul_w = floats("w", &[100, 7], &r(700));
    let flatten = node("Flatten", &["x"], "f", vec![]);
    let gemm = node("Gemm", &["f", "w", "b"], "y", vec![int("transB", 1)]);
    let matmul = node("MatMul", &["f", "w"], "y", vec![]);
    checked += assert_same(
        weight_graphs(vec![flatten.clone(), gemm], vec![gemm_w, gemm_b]),
        &x,
    );
    checked += assert_same(weight_graphs(vec![flatten, matmul], vec![matmul_w]), &x);
    assert_eq!(checked, 4 * Policy::ALL.len());
}

/// The model of `nodes` with `weights` as initializers, and with them as Constant nodes.
fn weight_graphs(nodes: Vec<NodeProto>, weights: Vec<TensorProto>) -> [Model; 2] {
    let constants = weights.iter().map(|t| {
        let value = AttributeProto {
            name: Some("value".into()),
            t: Some(t.clone()),
            r#type: Some(AttributeType::Tensor as i32),
            ..Default::default()
        };
        node("Constant", &[], t.name(), vec![value])
    });
    let with_constants: Vec<NodeProto> = constants.chain(nodes.iter().cloned()).collect();
    [
        model(nodes, weights, &["y"]).unwrap(),
        model(with_constants, vec![], &["y"]).unwrap(),
    ]
}

/// Asserts both models give the same output under every policy; returns the runs compared.
fn assert_same([initializers, constants]: [Model; 2], x: &Tensor) -> usize {
    Policy::ALL
        .iter()
        .map(|&policy| {
            let (a, _) = run(&initializers, x, policy, 2).unwrap();
            let (b, _) = run(&constants, x, policy, 2).unwrap();
            assert_eq!(a[0].shape(), b[0].shape(), "{policy}");
            assert_eq!(a[0].to_f32_vec(), b[0].to_f32_vec(), "{policy}");
        })
        .count()
}
