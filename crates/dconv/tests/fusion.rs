//! A BatchNormalization (or a Mul and an Add by per-channel constants) and an activation
//! after a Conv fold into its one step (a ReLU, a Clip to [0, 6] whose bounds are inputs,
//! as opset 11 and later write ReLU6, a HardSigmoid, a HardSwish, or a HardSwish written
//! out as four nodes), an activation after a residual Add folds into the Add, and the fused
//! step computes what the separate steps do.

use dconv::onnx::proto::{tensor_proto::DataType, ModelProto, NodeProto, TensorProto};
use dconv::runtime::{example_model, Session, SessionOptions};
use dconv::{Model, Tensor};
use prost::Message;

mod common;
use common::int64s;

/// A float initializer: a scalar for one value, else 1-D.
fn floats(name: &str, values: Vec<f32>) -> TensorProto {
    let dims: &[usize] = if values.len() == 1 {
        &[]
    } else {
        &[values.len()]
    };
    common::floats(name, dims, &values)
}

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(format!("{op}_{output}")),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

/// The example's Conv (1 -> 2 channels, output `c`) followed by `after` (nodes from `c` to
/// `y`) with extra initializers; with the tensor `expose` also a graph output, which keeps
/// the steps that make and read it apart.
fn model(after: Vec<NodeProto>, initializers: Vec<TensorProto>, expose: Option<&str>) -> Model {
    let mut proto = ModelProto::decode(&example_model()[..]).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    graph.node.truncate(1);
    graph.node.extend(after);
    graph.initializer.extend(initializers);
    if let Some(name) = expose {
        let mut exposed = graph.output[0].clone();
        exposed.name = Some(name.into());
        graph.output.push(exposed);
    }
    Model::from_bytes(&proto.encode_to_vec(), None).unwrap()
}

/// The output `y` and the ops of the steps that ran.
fn run(model: &Model) -> (Vec<f32>, Vec<String>) {
    let session = Session::new(
        model,
        SessionOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let data: Vec<f32> = (0..16).map(|i| (i % 5) as f32 * 2.0 - 3.0).collect();
    let x = Tensor::from_f32(vec![1, 1, 4, 4], data).unwrap();
    let (outputs, profile) = session.run_profiled(&[("x", x)]).unwrap();
    let y = outputs
        .iter()
        .find(|(n, _)| n == "y")
        .unwrap()
        .1
        .to_f32_vec();
    let ops = profile.steps.iter().map(|s| s.op.clone()).collect();
    (y, ops)
}

fn assert_fuses(after: Vec<NodeProto>, initializers: Vec<TensorProto>, folded: &[&str]) {
    let (fused, fused_ops) = run(&model(after.clone(), initializers.clone(), None));
    let (apart, apart_ops) = run(&model(after, initializers, Some("c")));
    for op in folded {
        assert!(
            !fused_ops.iter().any(|o| o == op),
            "{op} ran: {fused_ops:?}"
        );
        // Apart from the Conv, a BatchNormalization and an activation still run as one
        // pass of their own.
        assert!(
            apart_ops.iter().any(|o| o == op || o == "ChannelAffine"),
            "{op} did not run: {apart_ops:?}"
        );
    }
    assert_eq!(fused_ops.iter().filter(|o| *o == "Conv").count(), 1);
    assert!(fused.contains(&0.0) && fused.iter().any(|&v| v > 0.0));
    assert_close(&fused, &apart, "fused");
}

/// `fused` equals `apart` up to rounding.
fn assert_close(fused: &[f32], apart: &[f32], what: &str) {
    assert_eq!(fused.len(), apart.len());
    for (i, (f, a)) in fused.iter().zip(apart).enumerate() {
        assert!(
            (f - a).abs() <= 1e-5 * a.abs().max(1.0),
            "{what} at {i}: {f} vs {a}"
        );
    }
}

#[test]
fn batch_norm_and_relu_fold_into_the_conv() {
    let bn = node("BatchNormalization", &["c", "s", "b", "m", "v"], "n");
    let stats = vec![
        floats("s", vec![0.5, 2.0]),
        floats("b", vec![0.25, -1.0]),
        floats("m", vec![1.0, -0.5]),
        floats("v", vec![4.0, 0.25]),
    ];
    assert_fuses(
        vec![bn, node("Relu", &["n"], "y")],
        stats,
        &["BatchNormalization", "Relu"],
    );
}

#[test]
fn clip_with_bounds_as_inputs_folds_into_the_conv() {
    let clip = node("Clip", &["c", "lo", "hi"], "y");
    let bounds = vec![floats("lo", vec![0.0]), floats("hi", vec![6.0])];
    assert_fuses(vec![clip], bounds, &["Clip"]);
}

/// Inception v2 writes its BatchNormalizations out as a Mul and an Add by constants, the
/// per-channel scale unsqueezed in a node after the Conv: both fold, with the ReLU.
#[test]
fn mul_and_add_by_channel_constants_fold_into_the_conv() {
    let axes = TensorProto {
        name: Some("axes".into()),
        dims: vec![2],
        data_type: Some(DataType::Int64 as i32),
        int64_data: vec![1, 2],
        ..Default::default()
    };
    let after = vec![
        node("Unsqueeze", &["k", "axes"], "k3"),
        node("Mul", &["c", "k3"], "p"),
        node("Add", &["t", "p"], "q"),
        node("Relu", &["q"], "y"),
    ];
    let constants = vec![floats("k", vec![0.5, -2.0]), floats("t", vec![0.75]), axes];
    assert_fuses(after, constants, &["Mul", "Add", "Relu"]);
}

/// HardSwish written out as Add(x, 3) -> Clip(0, 6) -> Mul(x, .) -> Div(., 6) (or a Mul by
/// 1/6), as PaddlePaddle exports MobileNetV3, with `six` the divisor's name and value.
fn hard_swish_written_out(last: &str, six: f32) -> (Vec<NodeProto>, Vec<TensorProto>) {
    let nodes = vec![
        node("Add", &["c", "three"], "a"),
        node("Clip", &["a", "lo", "hi"], "h"),
        node("Mul", &["c", "h"], "m"),
        node(last, &["m", "six"], "y"),
    ];
    let constants = vec![
        floats("three", vec![3.0]),
        floats("lo", vec![0.0]),
        floats("hi", vec![6.0]),
        floats("six", vec![six]),
    ];
    (nodes, constants)
}

#[test]
fn hard_sigmoid_and_hard_swish_fold_into_the_conv() {
    let mut hard_sigmoid = node("HardSigmoid", &["c"], "y");
    hard_sigmoid.attribute = vec![dconv::onnx::proto::AttributeProto {
        name: Some("alpha".into()),
        r#type: Some(dconv::onnx::proto::attribute_proto::AttributeType::Float as i32),
        f: Some(0.25),
        ..Default::default()
    }];
    assert_fuses(vec![hard_sigmoid], vec![], &["HardSigmoid"]);
    assert_fuses(vec![node("HardSwish", &["c"], "y")], vec![], &["HardSwish"]);
}

/// After a Conv, the four nodes fold into it; after a tensor the graph also outputs, they
/// run as one HardSwish step; with the Mul's output read by the graph too, apart.
#[test]
fn hard_swish_written_out_runs_as_one_step() {
    for (last, six) in [("Div", 6.0), ("Mul", 1.0 / 6.0)] {
        let (after, constants) = hard_swish_written_out(last, six);
        let (fused, fused_ops) = run(&model(after.clone(), constants.clone(), None));
        let (one_step, one_step_ops) = run(&model(after.clone(), constants.clone(), Some("c")));
        let (apart, apart_ops) = run(&model(after, constants, Some("m")));
        let has = |ops: &[String], op: &str| ops.iter().any(|o| o == op);
        assert!(
            !has(&fused_ops, "HardSwish") && !has(&fused_ops, "Clip"),
            "{fused_ops:?}"
        );
        assert!(
            !has(&fused_ops, "Add") && !has(&fused_ops, last),
            "{fused_ops:?}"
        );
        assert!(has(&one_step_ops, "HardSwish"), "{one_step_ops:?}");
        assert!(!has(&one_step_ops, "Clip"), "{one_step_ops:?}");
        assert!(has(&apart_ops, "Clip"), "{apart_ops:?}");
        assert!(!has(&apart_ops, "HardSwish"), "{apart_ops:?}");
        // Inputs at or below -3 (out: zero) and between -3 and 0 (out: negative) both occur.
        assert!(apart.contains(&0.0) && apart.iter().any(|&v| v < 0.0));
        assert_close(&fused, &apart, last);
        assert_close(&one_step, &apart, last);
    }
}

#[test]
fn other_bounds_or_divisors_are_not_taken_for_hard_swish() {
    let (after, mut constants) = hard_swish_written_out("Div", 6.0);
    constants[2] = floats("hi", vec![5.0]);
    let (_, ops) = run(&model(after, constants, None));
    assert!(!ops.contains(&"HardSwish".to_string()), "{ops:?}");
    let (after, constants) = hard_swish_written_out("Div", 3.0);
    let (_, ops) = run(&model(after, constants, None));
    assert!(!ops.contains(&"HardSwish".to_string()), "{ops:?}");
}

fn ints_attribute(name: &str, values: Vec<i64>) -> dconv::onnx::proto::AttributeProto {
    dconv::onnx::proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(dconv::onnx::proto::attribute_proto::AttributeType::Ints as i32),
        ints: values,
        ..Default::default()
    }
}

/// The Conv's two channels and twice them, as four distinct channels `e` (channels-last, as
/// a Conv leaves them), then ShuffleNet's channel shuffle written out: Reshape to `split`,
/// Transpose of axes 1 and 2, Reshape back to `[1, 4, 4, 4]`.
fn shuffled(split: Vec<i64>) -> (Vec<NodeProto>, Vec<TensorProto>) {
    let mut concat = node("Concat", &["c", "d"], "e");
    concat.attribute = vec![dconv::onnx::proto::AttributeProto {
        name: Some("axis".into()),
        r#type: Some(dconv::onnx::proto::attribute_proto::AttributeType::Int as i32),
        i: Some(1),
        ..Default::default()
    }];
    let mut transpose = node("Transpose", &["f"], "g");
    transpose.attribute = vec![ints_attribute("perm", vec![0, 2, 1, 3, 4])];
    let nodes = vec![
        node("Mul", &["c", "two"], "d"),
        concat,
        node("Reshape", &["e", "split"], "f"),
        transpose,
        node("Reshape", &["g", "merged"], "y"),
    ];
    let constants = vec![
        floats("two", vec![2.0]),
        int64s("split", &split),
        int64s("merged", &[1, 4, 4, 4]),
    ];
    (nodes, constants)
}

/// A channel shuffle runs as one copy in the channels-last layout (no Transpose, no layout
/// conversion to plain and back) and computes what the three nodes do: channel `i * 2 + j`
/// of 2 groups of 2 goes to `j * 2 + i`. Reshapes that split the rows instead are planned
/// one by one, and compute the same as they do apart.
#[test]
fn a_channel_shuffle_runs_as_one_copy() {
    let (after, constants) = shuffled(vec![1, 2, 2, 4, 4]);
    let (fused, fused_ops) = run(&model(after.clone(), constants.clone(), None));
    let (apart, apart_ops) = run(&model(after, constants, Some("g")));
    let has = |ops: &[String], op: &str| ops.iter().any(|o| o == op);
    assert!(has(&fused_ops, "ChannelShuffle"), "{fused_ops:?}");
    assert!(!has(&fused_ops, "Transpose"), "{fused_ops:?}");
    assert!(has(&apart_ops, "Transpose"), "{apart_ops:?}");
    assert_eq!(fused, apart);
    let plane = |ch: usize| &fused[ch * 16..(ch + 1) * 16];
    let doubled: Vec<f32> = plane(0).iter().map(|v| v * 2.0).collect();
    assert_eq!(plane(1), doubled.as_slice(), "channel 1 is twice channel 0");
    assert_ne!(plane(0), plane(2));

    let (after, constants) = shuffled(vec![1, 4, 2, 2, 4]);
    let (fused, fused_ops) = run(&model(after.clone(), constants.clone(), None));
    let (apart, _) = run(&model(after, constants, Some("g")));
    assert!(has(&fused_ops, "Transpose"), "{fused_ops:?}");
    assert_eq!(fused, apart);
}

/// DenseNet normalises each Concat before its Conv: a BatchNormalization that follows no
/// Conv, then a Mul and an Add by channel constants and a Relu, run as one pass
/// (channels-last, as the Conv and Concat leave it) and compute what they do apart.
#[test]
fn batch_norm_mul_add_and_relu_after_a_concat_run_as_one_pass() {
    let (mut after, mut constants) = shuffled(vec![1, 2, 2, 4, 4]);
    after.truncate(2);
    constants.truncate(1);
    after.extend([
        node("BatchNormalization", &["e", "s", "b", "m", "v"], "n"),
        node("Mul", &["n", "k"], "p"),
        node("Add", &["p", "t"], "q"),
        node("Relu", &["q"], "y"),
    ]);
    let channel = |name: &str, values: [f32; 4]| {
        let mut t = floats(name, values.to_vec());
        t.dims = vec![4, 1, 1];
        t
    };
    constants.extend([
        floats("s", vec![0.5, 2.0, 1.5, -1.0]),
        floats("b", vec![0.25, -1.0, 0.0, 2.0]),
        floats("m", vec![1.0, -0.5, 0.0, 3.0]),
        floats("v", vec![4.0, 0.25, 1.0, 2.0]),
        channel("k", [2.0, -1.0, 0.5, 3.0]),
        channel("t", [-0.5, 1.0, 0.0, -2.0]),
    ]);
    let (fused, fused_ops) = run(&model(after.clone(), constants.clone(), None));
    let (apart, apart_ops) = run(&model(after, constants, Some("n")));
    let has = |ops: &[String], op: &str| ops.iter().any(|o| o == op);
    assert!(has(&fused_ops, "ChannelAffine"), "{fused_ops:?}");
    for op in ["BatchNormalization", "Add", "Relu"] {
        assert!(has(&apart_ops, op), "{op} did not run: {apart_ops:?}");
        assert!(!has(&fused_ops, op), "{op} ran: {fused_ops:?}");
    }
    let muls = |ops: &[String]| ops.iter().filter(|o| *o == "Mul").count();
    assert_eq!(
        (muls(&fused_ops), muls(&apart_ops)),
        (1, 2),
        "the doubling, then k"
    );
    assert!(fused.contains(&0.0) && fused.iter().any(|&v| v > 0.0));
    assert_close(&fused, &apart, "one pass");
}

/// A residual Add, or a Sum of two, and the Relu after it run as one pass (ResNet's), which
/// also counts the zeros it makes; with the sum read by the graph too, apart.
#[test]
fn an_add_and_the_relu_after_it_run_as_one_pass() {
    for op in ["Add", "Sum"] {
        let after = vec![node(op, &["c", "c"], "s"), node("Relu", &["s"], "y")];
        let (fused, fused_ops) = run(&model(after.clone(), vec![], None));
        let (apart, apart_ops) = run(&model(after, vec![], Some("s")));
        assert!(!fused_ops.iter().any(|o| o == "Relu"), "{fused_ops:?}");
        assert!(fused_ops.iter().any(|o| o == op), "{fused_ops:?}");
        assert!(apart_ops.iter().any(|o| o == "Relu"), "{apart_ops:?}");
        assert!(fused.contains(&0.0) && fused.iter().any(|&v| v > 0.0));
        assert_close(&fused, &apart, op);
    }
}

/// A second Conv on the input `x` (1 -> 2 channels, 3x3, pad 1, other weights than the
/// example's), writing `d`; with its weights.
fn second_conv() -> (NodeProto, TensorProto) {
    let mut conv = node("Conv", &["x", "w3"], "d");
    conv.attribute = vec![ints_attribute("pads", vec![1, 1, 1, 1])];
    let weights: Vec<f32> = (0..18).map(|i| (i % 7) as f32 * 0.5 - 1.25).collect();
    (conv, common::floats("w3", &[2, 1, 3, 3], &weights))
}

/// A residual Add, or a Sum of two, after a Conv and the Relu after it run in the Conv's
/// epilogue (ResNet's last convolution of a block adds the block's input so): no step of
/// theirs runs. The later of the two Convs takes it, which reads the earlier's output.
/// With that Conv's output read by the graph too, they run apart.
#[test]
fn a_residual_add_and_its_relu_run_in_the_conv() {
    for op in ["Add", "Sum"] {
        let (conv, weights) = second_conv();
        let after = vec![conv, node(op, &["d", "c"], "s"), node("Relu", &["s"], "y")];
        let (fused, fused_ops) = run(&model(after.clone(), vec![weights.clone()], None));
        let (apart, apart_ops) = run(&model(after, vec![weights], Some("d")));
        for op in [op, "Relu"] {
            assert!(!fused_ops.iter().any(|o| o == op), "{fused_ops:?}");
        }
        assert_eq!(fused_ops.iter().filter(|o| *o == "Conv").count(), 2);
        assert!(apart_ops.iter().any(|o| o == op), "{apart_ops:?}");
        assert!(fused.contains(&0.0) && fused.iter().any(|&v| v > 0.0));
        assert_close(&fused, &apart, op);
    }
}

/// A residual that broadcasts over the Conv's output (here the one-channel input over two
/// channels) is added in a pass of its own, with the Relu, and computes what the nodes do.
#[test]
fn a_residual_that_broadcasts_is_added_apart() {
    let (conv, weights) = second_conv();
    let after = vec![
        conv,
        node("Add", &["d", "x"], "s"),
        node("Add", &["s", "c"], "t"),
        node("Relu", &["t"], "y"),
    ];
    let (fused, fused_ops) = run(&model(after.clone(), vec![weights.clone()], None));
    let (apart, _) = run(&model(after, vec![weights], Some("s")));
    assert_eq!(
        fused_ops.iter().filter(|o| *o == "Add").count(),
        2,
        "{fused_ops:?}"
    );
    assert!(!fused_ops.iter().any(|o| o == "Relu"), "{fused_ops:?}");
    assert!(fused.contains(&0.0) && fused.iter().any(|&v| v > 0.0));
    assert_close(&fused, &apart, "broadcast");
}

/// The Convs whose outputs a Concat alone reads write their channels of its output in place
/// (Inception's and SqueezeNet's branches): no Concat step runs. A Conv output the graph
/// also reads is copied into the Concat by a step of its own, the others still written in
/// place; with every part read elsewhere, the Concat copies them all. All three compute the
/// same through a 1x1 Conv that reads the concatenation, and that Conv learns its input's
/// zeros, which the two Relus fused into the first two counted, exactly.
#[test]
fn convolutions_write_their_channels_of_a_concat_in_place() {
    let (conv, weights) = second_conv();
    let mut concat = node("Concat", &["c2", "d2"], "e");
    concat.attribute = vec![common::int("axis", 1)];
    let mut last = node("Conv", &["e", "w4"], "y");
    last.attribute = vec![ints_attribute("kernel_shape", vec![1, 1])];
    let w4: Vec<f32> = (0..8).map(|i| (i % 5) as f32 * 0.5 - 0.75).collect();
    let after = vec![
        node("Relu", &["c"], "c2"),
        conv,
        node("Relu", &["d"], "d2"),
        concat,
        last,
    ];
    let initializers = vec![weights, common::floats("w4", &[2, 4, 1, 1], &w4)];
    // The output `y`, the concatenation `e`, the steps' ops, and the input sparsity the
    // last Conv ran with.
    let with_outputs = |names: &[&str]| {
        let mut proto = ModelProto::decode(&example_model()[..]).unwrap();
        let graph = proto.graph.as_mut().unwrap();
        graph.node.truncate(1);
        graph.node.extend(after.clone());
        graph.initializer.extend(initializers.clone());
        for name in names.iter().chain(&["e"]) {
            let mut exposed = graph.output[0].clone();
            exposed.name = Some(name.to_string());
            graph.output.push(exposed);
        }
        let model = Model::from_bytes(&proto.encode_to_vec(), None).unwrap();
        let options = SessionOptions {
            threads: 1,
            ..Default::default()
        };
        let session = Session::new(&model, options).unwrap();
        let data: Vec<f32> = (0..16).map(|i| (i % 5) as f32 * 2.0 - 3.0).collect();
        let x = Tensor::from_f32(vec![1, 1, 4, 4], data).unwrap();
        let (outputs, profile) = session.run_profiled(&[("x", x)]).unwrap();
        let output = |name: &str| {
            let found = outputs.iter().find(|(n, _)| n == name);
            found.unwrap().1.to_f32_vec()
        };
        let ops: Vec<String> = profile.steps.iter().map(|s| s.op.clone()).collect();
        let last = profile.steps.iter().rfind(|s| s.op == "Conv").unwrap();
        (output("y"), output("e"), ops, last.input_sparsity)
    };
    let (in_place, e, in_place_ops, sparsity) = with_outputs(&[]);
    let (mixed, _, mixed_ops, _) = with_outputs(&["d2"]);
    let (apart, _, apart_ops, _) = with_outputs(&["c2", "d2"]);
    assert!(
        !in_place_ops.iter().any(|o| o == "Concat"),
        "{in_place_ops:?}"
    );
    assert!(mixed_ops.iter().any(|o| o == "Concat"), "{mixed_ops:?}");
    assert!(apart_ops.iter().any(|o| o == "Concat"), "{apart_ops:?}");
    assert!(in_place.iter().any(|&v| v != 0.0));
    assert_close(&in_place, &apart, "in place");
    assert_close(&mixed, &apart, "mixed");
    let zeros = e.iter().filter(|&&v| v == 0.0).count();
    assert!(zeros > 0 && zeros < e.len(), "{e:?}");
    let want = zeros as f64 / e.len() as f64;
    assert!((sparsity - want).abs() < 1e-12, "{sparsity} vs {want}");
}
