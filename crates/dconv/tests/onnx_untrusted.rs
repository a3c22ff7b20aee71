//! Malformed and unsupported models fail with errors that say what and where, never panics.

use dconv::onnx::proto::{tensor_proto::DataLocation, ModelProto, StringStringEntryProto};
use dconv::runtime::example_model;
use dconv::{Error, Model, Session, SessionOptions, Tensor};
use prost::Message;
use std::path::Path;

fn example() -> ModelProto {
    ModelProto::decode(example_model().as_slice()).unwrap()
}

fn load(proto: &ModelProto, base: Option<&Path>) -> Result<Model, Error> {
    Model::from_bytes(&proto.encode_to_vec(), base)
}

#[test]
fn every_truncation_of_a_model_is_an_error_or_a_model() {
    let bytes = example_model();
    for len in 0..bytes.len() {
        let _ = Model::from_bytes(&bytes[..len], None);
    }
    assert!(Model::from_bytes(&bytes[..bytes.len() / 2], None).is_err());
}

#[test]
fn sizes_are_checked_against_the_data_present() {
    let mut proto = example();
    let w = &mut proto.graph.as_mut().unwrap().initializer[0];
    w.dims = vec![1 << 40, 1 << 20];
    let e = load(&proto, None).unwrap_err().to_string();
    assert!(e.contains("'w'"), "{e}");
}

#[test]
fn external_data_stays_in_the_model_folder() {
    let dir = std::env::temp_dir().join(format!("dconv-external-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let weights: Vec<u8> = [1.0f32; 18].iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(dir.join("w.bin"), &weights).unwrap();
    let with_location = |location: &str, offset: &str| {
        let mut proto = example();
        let w = &mut proto.graph.as_mut().unwrap().initializer[0];
        w.float_data.clear();
        w.data_location = Some(DataLocation::External as i32);
        w.external_data = [("location", location), ("offset", offset)]
            .iter()
            .map(|(k, v)| StringStringEntryProto {
                key: Some(k.to_string()),
                value: Some(v.to_string()),
            })
            .collect();
        load(&proto, Some(&dir))
    };
    assert!(with_location("w.bin", "0").is_ok());
    for (location, offset) in [
        ("../w.bin", "0"),
        ("/etc/passwd", "0"),
        ("w.bin", "8"),
        ("missing.bin", "0"),
    ] {
        assert!(
            with_location(location, offset).is_err(),
            "{location} at {offset}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unsupported_operator_names_itself_and_its_node() {
    let mut proto = example();
    proto.graph.as_mut().unwrap().node[1].op_type = Some("Frobnicate".into());
    let model = load(&proto, None).unwrap();
    let session = Session::new(&model, SessionOptions::default()).unwrap();
    let x = Tensor::from_f32(vec![1, 1, 4, 4], vec![0.0; 16]).unwrap();
    let e = session.run(&[("x", x)]).unwrap_err().to_string();
    assert!(e.contains("Frobnicate") && e.contains("Relu_0"), "{e}");
}

#[test]
fn a_shape_mismatch_names_the_tensor_and_both_shapes() {
    let model = Model::from_bytes(&example_model(), None).unwrap();
    let session = Session::new(&model, SessionOptions::default()).unwrap();
    let x = Tensor::from_f32(vec![1, 1, 5, 4], vec![0.0; 20]).unwrap();
    let e = session.run(&[("x", x)]).unwrap_err();
    assert!(e.is_bad_input());
    let e = e.to_string();
    assert!(
        e.contains("'x'") && e.contains("[1, 1, 5, 4]") && e.contains("[1, 1, 4, 4]"),
        "{e}"
    );
}

/// Four threads run one session at once, each on its own inputs, and get exactly what
/// sequential runs of the same inputs give.
#[test]
fn four_threads_sharing_a_session_match_sequential_runs() {
    let model = Model::from_bytes(&example_model(), None).unwrap();
    let session = Session::new(&model, SessionOptions::default()).unwrap();
    let input = |t: usize, run: usize| {
        let data = (0..16)
            .map(|i| ((i * 7 + t * 13 + run * 5) % 11) as f32 - 5.0)
            .collect();
        Tensor::from_f32(vec![1, 1, 4, 4], data).unwrap()
    };
    let run = |x: Tensor| session.run(&[("x", x)]).unwrap().remove(0).1;
    let sequential: Vec<Vec<Tensor>> = (0..4)
        .map(|t| (0..10).map(|r| run(input(t, r))).collect())
        .collect();
    let distinct: std::collections::HashSet<String> = sequential
        .iter()
        .flatten()
        .map(|y| format!("{y:?}"))
        .collect();
    assert!(distinct.len() > 4, "the threads' inputs must differ");
    std::thread::scope(|s| {
        for (t, expected) in sequential.iter().enumerate() {
            let run = &run;
            s.spawn(move || {
                for (r, want) in expected.iter().enumerate() {
                    assert_eq!(&run(input(t, r)), want, "thread {t}, run {r}");
                }
            });
        }
    });
}

/// The example model as tf2onnx writes an NHWC model: Transpose to NCHW before the Conv and
/// back after it. The transposes are absorbed into the channels-last layout; results agree.
#[test]
fn nhwc_edges_of_a_tf2onnx_model_give_the_same_result() {
    use dconv::onnx::proto::{AttributeProto, NodeProto};
    let mut proto = example();
    let graph = proto.graph.as_mut().unwrap();
    let transpose = |input: &str, output: &str, perm: Vec<i64>| NodeProto {
        op_type: Some("Transpose".into()),
        name: Some(format!("t_{output}")),
        input: vec![input.into()],
        output: vec![output.into()],
        attribute: vec![AttributeProto {
            name: Some("perm".into()),
            ints: perm,
            r#type: Some(7),
            ..Default::default()
        }],
        ..Default::default()
    };
    graph.node[0].input[0] = "x_nchw".into();
    graph.node[1].output[0] = "y_nchw".into();
    graph
        .node
        .insert(0, transpose("x", "x_nchw", vec![0, 3, 1, 2]));
    graph.node.push(transpose("y_nchw", "y", vec![0, 2, 3, 1]));
    graph.input[0].r#type = None;
    graph.output[0].r#type = None;
    let nhwc = load(&proto, None).unwrap();
    let nchw = Model::from_bytes(&example_model(), None).unwrap();
    let data: Vec<f32> = (0..16).map(|i| i as f32 - 5.0).collect();
    let run = |model: &Model, shape: Vec<usize>| {
        let session = Session::new(model, SessionOptions::default()).unwrap();
        let x = Tensor::from_f32(shape, data.clone()).unwrap();
        session.run(&[("x", x)]).unwrap().remove(0).1
    };
    let (a, b) = (run(&nhwc, vec![1, 4, 4, 1]), run(&nchw, vec![1, 1, 4, 4]));
    assert_eq!(a.shape(), &[1, 4, 4, 2]);
    let a = a.as_f32().unwrap();
    let b = b.as_f32().unwrap();
    for p in 0..16 {
        for c in 0..2 {
            assert_eq!(a[p * 2 + c], b[c * 16 + p]);
        }
    }
}

/// Only the methods a policy may pick are prepared, once, at plan time: for `auto`, those
/// the cost profile finds cheapest at some input sparsity.
#[test]
fn a_plan_prepares_only_the_methods_its_policy_may_pick() {
    use dconv::conv::select::{CostProfile, WeightZeros};
    use dconv::conv::{ConvSpec, Method};
    use dconv::Policy;
    let model = Model::from_bytes(&example_model(), None).unwrap();
    let methods = |policy| {
        let session = Session::new(
            &model,
            SessionOptions {
                threads: 1,
                policy,
                ..Default::default()
            },
        )
        .unwrap();
        session.conv_methods(&[vec![1, 1, 4, 4]]).unwrap().remove(0)
    };
    let spec = ConvSpec::new(1, 4, 4, 2, [3, 3])
        .with_padding([1, 1, 1, 1])
        .with_bias(true);
    // The example's two filters: all ones, all minus ones.
    let weights: Vec<f32> = [1.0; 9].into_iter().chain([-1.0; 9]).collect();
    let zeros = WeightZeros::of(&spec, &weights);
    assert_eq!(
        methods(Policy::Auto),
        (
            "Conv_0".to_string(),
            CostProfile::default().winners(&spec, zeros)
        )
    );
    assert_eq!(
        methods(Policy::Force(Method::Im2Csoa)).1,
        vec![Method::Im2Csoa]
    );
}
