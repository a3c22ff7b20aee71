//! The regression corpus of malformed models and tensors: each case is built in code from the
//! example model (no binary blobs), and each test asserts the kind of error, never a panic.
//! Cases found by fuzzing (scripts/fuzz) are added here too.

use dconv::conv::{Conv, ConvSpec, Method};
use dconv::onnx::proto::{
    tensor_proto::{DataLocation, DataType},
    tensor_shape_proto, type_proto, AttributeProto, ModelProto, NodeProto, StringStringEntryProto,
    TensorProto,
};
use dconv::runtime::example_model;
use dconv::{Error, Model, Policy, Session, SessionOptions, Tensor};
use prost::Message;
use std::path::Path;

fn example() -> ModelProto {
    ModelProto::decode(example_model().as_slice()).unwrap()
}

fn load(proto: &ModelProto) -> Result<Model, Error> {
    Model::from_bytes(&proto.encode_to_vec(), None)
}

/// Loads `proto` and runs it on the example's 1x1x4x4 input under `options`.
fn load_and_run(proto: &ModelProto, options: SessionOptions) -> Result<(), Error> {
    let model = load(proto)?;
    let session = Session::new(&model, options)?;
    let x = Tensor::from_f32(vec![1, 1, 4, 4], vec![1.0; 16])?;
    session.run(&[("x", x)]).map(drop)
}

fn ints(name: &str, values: Vec<i64>) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ints: values,
        r#type: Some(7),
        ..Default::default()
    }
}

/// The example with the Conv node's attribute `name` set to `values`.
fn conv_with(name: &str, values: Vec<i64>) -> ModelProto {
    let mut proto = example();
    let conv = &mut proto.graph.as_mut().unwrap().node[0];
    conv.attribute.retain(|a| a.name() != name);
    conv.attribute.push(ints(name, values));
    proto
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Asserts `e` is a bad-input error about node `name` whose cause matches `cause`.
fn assert_in_node(e: Error, name: &str, cause: fn(&Error) -> bool) {
    assert!(e.is_bad_input(), "{e}");
    match &e {
        Error::Node { node, source, .. } => {
            assert_eq!(node, name, "{e}");
            assert!(cause(source), "{e}");
        }
        other => panic!("expected an error in node {name}, got {other}"),
    }
}

fn invalid_model(e: &Error) -> bool {
    matches!(e, Error::InvalidModel(_))
}

fn invalid_or_spec(e: &Error) -> bool {
    matches!(e, Error::InvalidModel(_) | Error::InvalidSpec(_))
}

#[test]
fn a_cycle_is_refused_naming_the_node() {
    let mut proto = example();
    let graph = proto.graph.as_mut().unwrap();
    graph.node[0].input[0] = "y".into();
    let e = load(&proto).unwrap_err();
    assert!(e.to_string().contains("cycle"), "{e}");
    assert_in_node(e, "Conv_0", invalid_model);
}

#[test]
fn a_dangling_input_is_refused_naming_the_node() {
    let mut proto = example();
    proto.graph.as_mut().unwrap().node[1].input[0] = "nowhere".into();
    let e = load(&proto).unwrap_err();
    assert!(e.to_string().contains("'nowhere'"), "{e}");
    assert_in_node(e, "Relu_0", invalid_model);
}

#[test]
fn a_duplicate_output_is_refused_naming_the_node() {
    let mut proto = example();
    let graph = proto.graph.as_mut().unwrap();
    graph.node.push(node("Relu", "again", &["c"], &["y"]));
    assert_in_node(load(&proto).unwrap_err(), "again", invalid_model);
    // An output that overwrites an initializer is a duplicate too.
    let mut proto = example();
    proto.graph.as_mut().unwrap().node[1].output[0] = "w".into();
    assert_in_node(load(&proto).unwrap_err(), "Relu_0", invalid_model);
}

#[test]
fn wrong_arity_is_refused_naming_the_node() {
    let mut proto = example();
    proto.graph.as_mut().unwrap().node[0].input.truncate(1);
    assert_in_node(load(&proto).unwrap_err(), "Conv_0", invalid_model);
    let mut proto = example();
    proto.graph.as_mut().unwrap().node[1].input = vec!["c".into(), "w".into()];
    assert_in_node(load(&proto).unwrap_err(), "Relu_0", invalid_model);
}

#[test]
fn zero_or_negative_strides_are_refused() {
    for strides in [vec![0, 1], vec![1, -2]] {
        let e = load_and_run(&conv_with("strides", strides), SessionOptions::default());
        assert_in_node(e.unwrap_err(), "Conv_0", invalid_or_spec);
    }
    // SAME padding divides by the stride: a zero there must not panic either.
    let mut proto = conv_with("strides", vec![0, 0]);
    let conv = &mut proto.graph.as_mut().unwrap().node[0];
    conv.attribute.retain(|a| a.name() != "pads");
    conv.attribute.push(AttributeProto {
        name: Some("auto_pad".into()),
        s: Some(b"SAME_UPPER".to_vec()),
        r#type: Some(3),
        ..Default::default()
    });
    let e = load_and_run(&proto, SessionOptions::default()).unwrap_err();
    assert_in_node(e, "Conv_0", invalid_or_spec);
}

#[test]
fn negative_pads_are_refused() {
    let e = load_and_run(
        &conv_with("pads", vec![1, -1, 1, 1]),
        SessionOptions::default(),
    );
    assert_in_node(e.unwrap_err(), "Conv_0", invalid_model);
}

#[test]
fn zero_or_negative_dilations_are_refused() {
    for dilations in [vec![0, 1], vec![-1, 1]] {
        let e = load_and_run(
            &conv_with("dilations", dilations),
            SessionOptions::default(),
        );
        assert_in_node(e.unwrap_err(), "Conv_0", invalid_or_spec);
    }
}

#[test]
fn groups_that_do_not_divide_the_channels_are_refused() {
    for group in [0, 2, -1] {
        let mut proto = example();
        let conv = &mut proto.graph.as_mut().unwrap().node[0];
        conv.attribute.push(AttributeProto {
            name: Some("group".into()),
            i: Some(group),
            r#type: Some(2),
            ..Default::default()
        });
        let e = load_and_run(&proto, SessionOptions::default()).unwrap_err();
        assert_in_node(e, "Conv_0", invalid_or_spec);
    }
}

#[test]
fn a_kernel_larger_than_the_padded_input_is_refused() {
    let proto = conv_with("pads", vec![0, 0, 0, 0]);
    let proto = {
        let mut p = proto;
        p.graph.as_mut().unwrap().node[0]
            .attribute
            .push(ints("dilations", vec![3, 3]));
        p
    };
    let e = load_and_run(&proto, SessionOptions::default()).unwrap_err();
    assert!(e.to_string().contains("larger"), "{e}");
    assert_in_node(e, "Conv_0", invalid_or_spec);
}

#[test]
fn an_unknown_domain_is_refused_naming_the_node() {
    let mut proto = example();
    proto.graph.as_mut().unwrap().node[1].domain = Some("com.example".into());
    let e = load(&proto).unwrap_err();
    assert_in_node(e, "Relu_0", |e| matches!(e, Error::Unsupported(_)));
}

#[test]
fn an_unknown_opset_is_refused() {
    for version in [5, 23, i64::MAX] {
        let mut proto = example();
        proto.opset_import[0].version = Some(version);
        let e = load(&proto).unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e}");
    }
}

#[test]
fn a_tensor_of_too_high_a_rank_is_refused() {
    let mut proto = example();
    let w = &mut proto.graph.as_mut().unwrap().initializer[0];
    w.dims = vec![1; 20];
    w.float_data.truncate(1);
    let e = load(&proto).unwrap_err();
    assert!(
        matches!(e, Error::InvalidModel(_)) && e.to_string().contains("rank"),
        "{e}"
    );
}

#[test]
fn typed_data_shorter_than_the_shape_is_refused() {
    let mut proto = example();
    proto.graph.as_mut().unwrap().initializer[0]
        .float_data
        .truncate(17);
    let e = load(&proto).unwrap_err();
    assert!(
        matches!(e, Error::InvalidModel(_)) && e.to_string().contains("'w'"),
        "{e}"
    );
}

#[test]
fn an_oversized_attribute_is_refused() {
    let e = load(&conv_with("pads", vec![0; 100_000])).unwrap_err();
    assert_in_node(e, "Conv_0", invalid_model);
}

/// A ConstantOfShape whose shape asks for terabytes is refused before allocating, with or
/// without a memory budget.
#[test]
fn a_constant_of_shape_bomb_is_refused_before_allocating() {
    let mut proto = example();
    let graph = proto.graph.as_mut().unwrap();
    graph.initializer.push(TensorProto {
        name: Some("huge".into()),
        dims: vec![3],
        data_type: Some(DataType::Int64 as i32),
        int64_data: vec![1 << 20, 1 << 20, 1 << 10],
        ..Default::default()
    });
    graph
        .node
        .insert(0, node("ConstantOfShape", "bomb", &["huge"], &["zeros"]));
    graph.output.push(Default::default());
    graph.output[1].name = Some("zeros".into());
    let e = load_and_run(&proto, SessionOptions::default()).unwrap_err();
    assert_in_node(e, "bomb", |e| matches!(e, Error::OverBudget { .. }));
}

/// A padding of a million pixels is a few bytes of protobuf and terabytes of output: refused
/// before anything is allocated, with no budget given.
#[test]
fn a_huge_padding_is_refused_without_a_budget() {
    let proto = conv_with("pads", vec![1 << 20; 4]);
    let e = load_and_run(&proto, SessionOptions::default()).unwrap_err();
    assert!(e.is_bad_input(), "{e}");
    assert!(format!("{e}").contains("memory"), "{e}");
}

#[test]
fn a_plan_over_the_memory_budget_is_refused() {
    let options = |max_memory| SessionOptions {
        max_memory: Some(max_memory),
        ..Default::default()
    };
    // The Conv's 128-byte output alone is over a 100-byte budget.
    let e = load_and_run(&example(), options(100)).unwrap_err();
    assert!(e.to_string().contains("100 bytes"), "{e}");
    assert_in_node(e, "Conv_0", |e| matches!(e, Error::OverBudget { .. }));
    // Input (64 bytes), output (128 bytes) and, on one thread, the workspace (bands of
    // padded input and sums, 336 bytes) fit one by one, not together (under the dense
    // method, whose packed weights are smaller than the panels `auto` may prepare).
    let dense = |budget| SessionOptions {
        policy: Policy::Force(Method::Dense),
        threads: 1,
        ..options(budget)
    };
    let e = load_and_run(&example(), dense(400)).unwrap_err();
    assert!(
        e.is_bad_input() && matches!(e, Error::OverBudget { .. }),
        "{e}"
    );
    // The workspace alone over the budget is refused in its node.
    let e = load_and_run(&example(), dense(300)).unwrap_err();
    assert!(e.to_string().contains("workspace"), "{e}");
    assert_in_node(e, "Conv_0", |e| matches!(e, Error::OverBudget { .. }));
    load_and_run(&example(), options(1 << 20)).unwrap();
}

/// A 200 x 200 kernel is 320 kB of weights, and its lowered matrix, as CSR, up to 13 GB of
/// scratch: a method that would need more scratch than the budget (the lowered CSR
/// baseline) is refused before it runs (not left to fail allocating), and `auto` plans
/// without it. im2CSR holds one chunk of the lowered columns at a time, and fits. How large
/// a chunk is depends on the instruction set's panel width and the L2's size, so the budget
/// is set from the bounds the runtime itself checks.
#[test]
fn a_method_whose_scratch_is_over_the_budget_is_refused_or_avoided() {
    let (k, side) = (200, 400);
    let out = side - k + 1;
    let mut proto = conv_with("pads", vec![0; 4]);
    let graph = proto.graph.as_mut().unwrap();
    graph.initializer[0].dims = vec![2, 1, k, k];
    graph.initializer[0].float_data = vec![0.01; 2 * (k * k) as usize];
    for (info, dims) in [
        (&mut graph.input[0], [1, 1, side, side]),
        (&mut graph.output[0], [1, 2, out, out]),
    ] {
        let Some(type_proto::Value::TensorType(tensor)) = &mut info.r#type.as_mut().unwrap().value
        else {
            unreachable!("the example's values are tensors")
        };
        for (dim, &d) in tensor.shape.as_mut().unwrap().dim.iter_mut().zip(&dims) {
            dim.value = Some(tensor_shape_proto::dimension::Value::DimValue(d));
        }
    }
    let model = load(&proto).unwrap();
    // Mostly zeros, as im2CSR's inputs are: it then runs in a second.
    let ones = (0..160_000)
        .map(|i| f32::from(u8::from(i % 16 == 0)))
        .collect();
    let x = Tensor::from_f32(vec![1, 1, side as usize, side as usize], ones);
    let (k, out_side) = (k as usize, out as usize);
    let spec = ConvSpec::new(1, side as usize, side as usize, 2, [k, k]);
    let weights = vec![0.01; 2 * k * k];
    // On rayon's global pool, which the sessions below run on.
    let scratch = |method| {
        Conv::prepare(&spec, &weights, None, method)
            .unwrap()
            .scratch_bytes()
    };
    // Room for im2CSR's scratch, with its packed weights and the tensors (under 100 MB),
    // and not for the lowered CSR's.
    let budget = scratch(Method::Im2Csr) + (100 << 20);
    assert!(
        budget < scratch(Method::LoweredCsr),
        "{budget} bytes would fit the lowered CSR"
    );
    let run = |policy| {
        let options = SessionOptions {
            max_memory: Some(budget),
            policy,
            ..Default::default()
        };
        Session::new(&model, options)?.run(&[("x", x.clone().unwrap())])
    };
    let e = run(Policy::Force(Method::LoweredCsr)).unwrap_err();
    assert!(e.to_string().contains("workspace"), "{e}");
    assert_in_node(e, "Conv_0", |e| matches!(e, Error::OverBudget { .. }));
    for policy in [Policy::Force(Method::Im2Csr), Policy::Auto] {
        let y = run(policy).unwrap();
        assert_eq!(y[0].1.shape(), [1, 2, out_side, out_side]);
    }
}

/// Pads near 2^62 overflow the padded shape: an error, not a wrapped size.
#[test]
fn pads_that_overflow_the_shape_are_refused() {
    let mut proto = example();
    let graph = proto.graph.as_mut().unwrap();
    graph.node[1] = node("Pad", "Pad_1", &["c", "p"], &["y"]);
    let huge = 1i64 << 62;
    graph.initializer.push(TensorProto {
        name: Some("p".into()),
        dims: vec![8],
        data_type: Some(DataType::Int64 as i32),
        int64_data: vec![0, 0, huge, 0, 0, 0, huge, 0],
        ..Default::default()
    });
    let e = load_and_run(&proto, SessionOptions::default()).unwrap_err();
    assert_in_node(e, "Pad_1", invalid_model);
}

/// A method's packed weights count too: im2csr pads the example's 2 filters to a panel of
/// 128 lanes, 4.6 kB for 72 bytes of weights, over a 2 kB budget that dense fits in.
#[test]
fn prepared_weights_count_against_the_budget() {
    let options = |method| SessionOptions {
        max_memory: Some(2048),
        policy: Policy::Force(method),
        ..Default::default()
    };
    let e = load_and_run(&example(), options(Method::Im2Csr)).unwrap_err();
    assert_in_node(e, "Conv_0", |e| matches!(e, Error::OverBudget { .. }));
    load_and_run(&example(), options(Method::Dense)).unwrap();
}

/// Found by reading the Slice arithmetic: steps near i64::MIN/MAX overflowed.
#[test]
fn slice_steps_at_the_ends_of_i64_do_not_overflow() {
    for step in [i64::MAX, i64::MIN, i64::MIN + 1] {
        let mut proto = example();
        let graph = proto.graph.as_mut().unwrap();
        let constant = |name: &str, v: i64| TensorProto {
            name: Some(name.into()),
            dims: vec![1],
            data_type: Some(DataType::Int64 as i32),
            int64_data: vec![v],
            ..Default::default()
        };
        graph.initializer.extend([
            constant("starts", -1),
            constant("ends", i64::MIN),
            constant("axes", 3),
            constant("steps", step),
        ]);
        graph.node[1].output[0] = "r".into();
        graph.node.push(node(
            "Slice",
            "slice",
            &["r", "starts", "ends", "axes", "steps"],
            &["y"],
        ));
        graph.output[0].r#type = None;
        load_and_run(&proto, SessionOptions::default()).unwrap();
    }
}

#[test]
fn external_data_through_a_symlink_out_of_the_folder_is_refused() {
    let root = std::env::temp_dir().join(format!("dconv-symlink-{}", std::process::id()));
    let (inside, outside) = (root.join("model"), root.join("secret"));
    std::fs::create_dir_all(&inside).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let weights: Vec<u8> = [1.0f32; 18].iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(outside.join("w.bin"), &weights).unwrap();
    std::fs::write(inside.join("own.bin"), &weights).unwrap();
    std::os::unix::fs::symlink(outside.join("w.bin"), inside.join("link.bin")).unwrap();
    std::os::unix::fs::symlink(&outside, inside.join("dir")).unwrap();
    let with_location = |location: &str| {
        let mut proto = example();
        let w = &mut proto.graph.as_mut().unwrap().initializer[0];
        w.float_data.clear();
        w.data_location = Some(DataLocation::External as i32);
        w.external_data = vec![StringStringEntryProto {
            key: Some("location".into()),
            value: Some(location.into()),
        }];
        Model::from_bytes(&proto.encode_to_vec(), Some(&inside))
    };
    assert!(with_location("own.bin").is_ok());
    for escape in ["link.bin", "dir/w.bin"] {
        let e = with_location(escape).unwrap_err();
        assert!(matches!(e, Error::InvalidModel(_)), "{escape}: {e}");
        assert!(e.to_string().contains("folder"), "{e}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

fn npy(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut header = dict.as_bytes().to_vec();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header);
    bytes.extend(data);
    bytes
}

#[test]
fn malformed_npy_tensors_are_input_errors() {
    use dconv::io::npy::decode_npy;
    let dict =
        |shape: &str| format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    assert_eq!(decode_npy(&npy(&dict("(2,)"), &[0; 8])).unwrap().0, vec![2]);
    let cases: Vec<Vec<u8>> = vec![
        b"not an npy file".to_vec(),
        npy(&dict("(2,)"), &[0; 7]),
        npy(&dict("(1099511627776, 1099511627776)"), &[0; 8]),
        npy(&dict("(-1,)"), &[]),
        npy(
            "{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }",
            &[0; 8],
        ),
        npy(&dict("(2,"), &[0; 8]),
    ];
    for bytes in cases {
        let e = decode_npy(&bytes).unwrap_err();
        assert!(matches!(e, Error::Input { .. }) && e.is_bad_input(), "{e}");
    }
}

#[test]
fn an_input_of_the_wrong_shape_is_a_shape_mismatch() {
    let model = load(&example()).unwrap();
    let session = Session::new(&model, SessionOptions::default()).unwrap();
    let x = Tensor::from_f32(vec![1, 2, 4, 4], vec![0.0; 32]).unwrap();
    let e = session.run(&[("x", x)]).unwrap_err();
    assert!(
        matches!(e, Error::ShapeMismatch { .. }) && e.is_bad_input(),
        "{e}"
    );
}

#[test]
fn a_missing_model_file_is_an_io_error() {
    let e = Model::load(Path::new("/nonexistent/model.onnx")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
}
