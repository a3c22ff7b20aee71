//! Conformance with ONNX's own backend test data (the onnx==1.23.2 wheel, fetched by
//! `scripts/fetch-testdata`, and the node tests `scripts/make-node-tests` generates from it):
//! the pytorch-converted and node tests of dconv's operator set under every policy, and the
//! nine `light` models, compared like numpy.testing.assert_allclose with rtol 1e-3 and
//! atol 1e-7.

mod common;

use dconv::conv::Method;
use dconv::onnx::proto::{
    tensor_shape_proto::dimension::Value as DimValue, type_proto, ModelProto, TensorProto,
};
use dconv::onnx::{read_tensor_file, Dim};
use dconv::{Model, Policy, Session, SessionOptions, Tensor};
use prost::Message;
use std::path::{Path, PathBuf};

const RTOL: f32 = 1e-3;
const ATOL: f32 = 1e-7;

/// The operator set's pytorch-converted tests: exact names, or prefixes ending in `*`.
const PYTORCH_TESTS: [&str; 14] = [
    "test_Conv1d*",
    "test_Conv2d*",
    "test_MaxPool1d*",
    "test_MaxPool2d*",
    "test_AvgPool1d*",
    "test_AvgPool2d*",
    "test_BatchNorm2d*",
    "test_ReLU",
    "test_LeakyReLU*",
    "test_PReLU_2d*",
    "test_Linear*",
    "test_Softmax",
    "test_Sigmoid",
    "test_ZeroPad2d",
];

const LIGHT_MODELS: [&str; 9] = [
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
];

fn data_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/onnx-1.23.2");
    assert!(
        dir.join("pytorch-converted").is_dir() && dir.join("light").is_dir(),
        "ONNX test data is missing at {}: run scripts/fetch-testdata first",
        dir.display()
    );
    dir
}

/// The tests in `root` whose names `patterns` select: exact names, or prefixes ending in `*`.
fn tests_in(root: &Path, patterns: &[&str]) -> Vec<PathBuf> {
    let selected = |name: &str| {
        patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == *p,
        })
    };
    let mut tests: Vec<PathBuf> = std::fs::read_dir(root)
        .expect("readable test data")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(selected))
        .collect();
    tests.sort();
    tests
}

fn test_name(test: &Path) -> String {
    test.file_name().unwrap().to_string_lossy().into_owned()
}

/// Runs each of `tests` under each policy; fails with a line per run that did not pass.
fn assert_pass(tests: &[PathBuf], run: impl Fn(&Path, Policy) -> Result<(), String>) {
    let mut failures = Vec::new();
    for test in tests {
        for policy in Policy::ALL {
            if let Err(e) = run(test, policy) {
                failures.push(format!("{} [{policy}]: {e}", test_name(test)));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Whether `actual` is within tolerance of `expected`; NaN on either side is not, as in numpy.
fn close(actual: f32, expected: f32) -> bool {
    (actual - expected).abs() <= ATOL + RTOL * expected.abs()
}

/// numpy.testing.assert_allclose: |actual - expected| <= atol + rtol * |expected|, shapes equal.
fn compare(what: &str, actual: &Tensor, expected: &Tensor) -> Result<(), String> {
    if actual.shape() != expected.shape() {
        return Err(format!(
            "{what}: shape {:?}, expected {:?}",
            actual.shape(),
            expected.shape()
        ));
    }
    let (a, e) = (actual.to_f32_vec(), expected.to_f32_vec());
    let bad = a
        .iter()
        .zip(&e)
        .enumerate()
        .filter(|(_, (x, y))| !close(**x, **y))
        .count();
    if bad == 0 {
        return Ok(());
    }
    let (i, (x, y)) = a
        .iter()
        .zip(&e)
        .enumerate()
        .max_by(|(_, (x, y)), (_, (p, q))| (*x - *y).abs().total_cmp(&(*p - *q).abs()))
        .expect("non-empty");
    Err(format!(
        "{what}: {bad} of {} elements differ; worst at {i}: {x} vs {y}",
        a.len()
    ))
}

/// The test's data sets, `test_data_set_*`, in order.
fn data_sets(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    sets.sort();
    if sets.is_empty() {
        return Err("no test_data_set_*".into());
    }
    Ok(sets)
}

/// Runs `model` on the inputs of data set `set` under `policy` and compares its outputs.
fn run_data_set(model: &Model, set: &Path, policy: Policy) -> Result<(), String> {
    let session = Session::new(
        model,
        SessionOptions {
            threads: 2,
            policy,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let inputs: Vec<(&str, Tensor)> = model
        .inputs()
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let t =
                read_tensor_file(&set.join(format!("input_{i}.pb"))).map_err(|e| e.to_string())?;
            // dconv computes in float; integer data (Pad's node tests use small integers,
            // exact in float) is fed as float and compared as float.
            let t =
                Tensor::from_f32(t.shape().to_vec(), t.to_f32_vec()).map_err(|e| e.to_string())?;
            Ok((input.name.as_str(), t))
        })
        .collect::<Result<_, String>>()?;
    let outputs = session.run(&inputs).map_err(|e| e.to_string())?;
    for (i, (name, actual)) in outputs.iter().enumerate() {
        let expected =
            read_tensor_file(&set.join(format!("output_{i}.pb"))).map_err(|e| e.to_string())?;
        compare(name, actual, &expected)?;
    }
    Ok(())
}

fn run_pytorch_test(dir: &Path, policy: Policy) -> Result<(), String> {
    let model = Model::load(dir.join("model.onnx")).map_err(|e| e.to_string())?;
    for set in data_sets(dir)? {
        run_data_set(&model, &set, policy)?;
    }
    Ok(())
}

#[test]
fn pytorch_converted_tests_pass_under_every_policy() {
    let tests = tests_in(&data_dir().join("pytorch-converted"), &PYTORCH_TESTS);
    assert!(
        tests.len() >= 40,
        "expected the operator set's tests, found {}",
        tests.len()
    );
    assert_pass(&tests, run_pytorch_test);
}

/// ONNX's node tests of Resize, Upsample, Pad and ConvTranspose. Each feeds every input at
/// run time; dconv needs all but the data as constants (weights, scales, pads), as exporters
/// write them, so each runs with its other inputs made initializers from the data set's
/// values.
const NODE_TESTS: [&str; 7] = [
    "test_resize_*",
    "test_convtranspose*",
    "test_upsample_nearest",
    "test_constant_pad*",
    "test_edge_pad",
    "test_reflect_pad",
    "test_wrap_pad",
];

/// Those of them dconv refuses on purpose (cubic interpolation, antialiasing, a 3-D
/// ConvTranspose): each must fail with an Unsupported error that names what it refuses.
fn refused(name: &str) -> Option<&'static str> {
    [
        ("cubic", "cubic"),
        ("antialias", "antialias"),
        ("_3d", "rank-5"),
    ]
    .into_iter()
    .find(|(part, _)| name.contains(part))
    .map(|(_, what)| what)
}

fn node_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/onnx-1.23.2/node");
    assert!(
        dir.is_dir(),
        "ONNX node test data is missing at {}: run scripts/make-node-tests first",
        dir.display()
    );
    dir
}

/// The node test's model with its inputs but the first made initializers from data set
/// `set`. The tests are written at ONNX's newest opset; one past dconv's runs at dconv's
/// newest, where the operators tested here are defined alike (Pad changed only its types
/// after opset 21).
fn node_model(dir: &Path, set: &Path) -> Result<Model, String> {
    let bytes = std::fs::read(dir.join("model.onnx")).map_err(|e| e.to_string())?;
    let mut proto = ModelProto::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
    for opset in &mut proto.opset_import {
        let newest = *dconv::onnx::OPSETS.end();
        opset.version = opset.version.map(|v| v.min(newest));
    }
    let graph = proto.graph.as_mut().ok_or("no graph")?;
    for (i, input) in graph.input.iter().enumerate().skip(1) {
        let file = set.join(format!("input_{i}.pb"));
        let data = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let mut tensor = TensorProto::decode(data.as_slice()).map_err(|e| e.to_string())?;
        tensor.name = input.name.clone();
        graph.initializer.push(tensor);
    }
    Model::from_bytes(&proto.encode_to_vec(), None).map_err(|e| e.to_string())
}

fn run_node_test(dir: &Path, policy: Policy) -> Result<(), String> {
    for set in data_sets(dir)? {
        let model = node_model(dir, &set)?;
        match (run_data_set(&model, &set, policy), refused(&test_name(dir))) {
            (Err(e), Some(what)) if e.contains("unsupported") && e.contains(what) => {}
            (Ok(()), Some(what)) => return Err(format!("ran, but {what} should be refused")),
            (Err(e), Some(what)) => return Err(format!("refused {what} with: {e}")),
            (result, None) => result?,
        }
    }
    Ok(())
}

#[test]
fn node_tests_pass_under_every_policy() {
    let tests = tests_in(&node_dir(), &NODE_TESTS);
    assert!(
        tests.len() >= 56,
        "expected the node tests of Resize, Upsample, Pad and ConvTranspose, found {}",
        tests.len()
    );
    assert_pass(&tests, run_node_test);
}

/// ONNX's backend runner's input for a light model: arange(n)/n in the declared shape, with
/// unknown dimensions as 1.
fn light_input(model: &Model) -> (String, Tensor) {
    let input = &model.inputs()[0];
    let shape: Vec<usize> = input
        .shape
        .as_ref()
        .expect("declared input shape")
        .iter()
        .map(|d| match d {
            Dim::Fixed(v) => *v,
            Dim::Dynamic(_) => 1,
        })
        .collect();
    let n: usize = shape.iter().product();
    let data = (0..n).map(|i| i as f32 / n as f32).collect();
    (input.name.clone(), Tensor::from_f32(shape, data).unwrap())
}

fn run_light_model(name: &str, policies: &[Policy]) -> Vec<String> {
    let dir = data_dir().join("light");
    let model = match Model::load(dir.join(format!("light_{name}.onnx"))) {
        Ok(m) => m,
        Err(e) => return vec![format!("{name}: {e}")],
    };
    let expected = read_tensor_file(&dir.join(format!("light_{name}_output_0.pb"))).unwrap();
    let (input_name, input) = light_input(&model);
    let mut failures = Vec::new();
    for &policy in policies {
        let session = Session::new(
            &model,
            SessionOptions {
                threads: 2,
                policy,
                ..Default::default()
            },
        )
        .unwrap();
        match session.run(&[(input_name.as_str(), input.clone())]) {
            Ok(out) => {
                if let Err(e) = compare(&out[0].0, &out[0].1, &expected) {
                    failures.push(format!("{name} [{policy}]: {e}"));
                }
            }
            Err(e) => failures.push(format!("{name} [{policy}]: {e}")),
        }
    }
    failures
}

/// Every light model under `policies`: the failures are collected, so that one message lists
/// them all.
fn assert_light_models(policies: &[Policy]) {
    let failures: Vec<String> = LIGHT_MODELS
        .iter()
        .flat_map(|name| run_light_model(name, policies))
        .collect();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn light_models_give_their_expected_outputs() {
    assert_light_models(&common::fast_policies());
}

/// Apart, because the naive loops take a minute over the light models and do not depend
/// on the instruction set: CI runs this test once, not in every ISA's pass.
#[test]
fn light_models_give_their_expected_outputs_under_the_reference_policy() {
    assert_light_models(&[Policy::Force(Method::Reference)]);
}

/// The model with its first input's batch dimension made symbolic.
fn with_dynamic_batch(path: &Path) -> Model {
    let mut proto = ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    for info in graph
        .input
        .iter_mut()
        .take(1)
        .chain(graph.output.iter_mut())
    {
        if let Some(type_proto::Value::TensorType(t)) =
            info.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            if let Some(dim) = t.shape.as_mut().and_then(|s| s.dim.first_mut()) {
                dim.value = Some(DimValue::DimParam("N".into()));
            }
        }
    }
    Model::from_bytes(&proto.encode_to_vec(), path.parent()).unwrap()
}

#[test]
fn a_batch_of_two_equals_two_runs_of_one() {
    let dir = data_dir().join("pytorch-converted/test_Conv2d_groups");
    let model = with_dynamic_batch(&dir.join("model.onnx"));
    let pair = read_tensor_file(&dir.join("test_data_set_0/input_0.pb")).unwrap();
    assert_eq!(pair.shape()[0], 2, "the test input is a batch of two");
    let data = pair.to_f32_vec();
    let mut shape = pair.shape().to_vec();
    shape[0] = 1;
    let half = data.len() / 2;
    let one = Tensor::from_f32(shape.clone(), data[..half].to_vec()).unwrap();
    let other = Tensor::from_f32(shape, data[half..].to_vec()).unwrap();
    let name = model.inputs()[0].name.clone();
    for policy in Policy::ALL {
        let session = Session::new(
            &model,
            SessionOptions {
                threads: 2,
                policy,
                ..Default::default()
            },
        )
        .unwrap();
        let single = |t: &Tensor| {
            session
                .run(&[(name.as_str(), t.clone())])
                .unwrap()
                .remove(0)
                .1
        };
        let (a, b) = (single(&one), single(&other));
        let mut both = one.to_f32_vec();
        both.extend(other.to_f32_vec());
        let mut shape = one.shape().to_vec();
        shape[0] = 2;
        let batch = session
            .run(&[(name.as_str(), Tensor::from_f32(shape, both).unwrap())])
            .unwrap()
            .remove(0)
            .1;
        let mut expected = a.to_f32_vec();
        expected.extend(b.to_f32_vec());
        assert_eq!(batch.to_f32_vec(), expected, "policy {policy}");
    }
}
