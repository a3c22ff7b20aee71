//! Conformance with ONNX's own backend test data (the onnx==1.23.2 wheel, fetched by
//! `scripts/fetch-testdata`): the pytorch-converted tests of dconv's operator set under every
//! policy, and the nine `light` models; and the node tests `scripts/make-node-tests` writes;
//! compared like numpy.testing.assert_allclose with rtol 1e-3 and atol 1e-7.

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

fn selected(name: &str) -> bool {
    PYTORCH_TESTS.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == *p,
    })
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

/// Runs the test in `dir` (model.onnx, test_data_set_*/input_K.pb and output_K.pb) under
/// `policy`. The first `fed` of the model's inputs are fed at run time; the others (a node
/// test's weights, which dconv needs as constants) become initializers, from each data set.
fn run_test_dir(dir: &Path, policy: Policy, fed: usize) -> Result<(), String> {
    let path = dir.join("model.onnx");
    let model = Model::load(&path).map_err(|e| e.to_string())?;
    let names: Vec<String> = model.inputs().iter().map(|i| i.name.clone()).collect();
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    sets.sort();
    if sets.is_empty() {
        return Err("no test_data_set_*".into());
    }
    for set in sets {
        let bound = (names.len() > fed)
            .then(|| with_inputs_bound(&path, &set, &names, fed))
            .transpose()?;
        let model = bound.as_ref().unwrap_or(&model);
        let session = Session::new(
            model,
            SessionOptions {
                threads: 2,
                policy,
                ..Default::default()
            },
        )
        .map_err(|e| e.to_string())?;
        let inputs: Vec<(&str, Tensor)> = names
            .iter()
            .take(fed)
            .enumerate()
            .map(|(i, name)| {
                let t = read_tensor_file(&set.join(format!("input_{i}.pb")))
                    .map_err(|e| e.to_string())?;
                Ok((name.as_str(), t))
            })
            .collect::<Result<_, String>>()?;
        let outputs = session.run(&inputs).map_err(|e| e.to_string())?;
        for (i, (name, actual)) in outputs.iter().enumerate() {
            let expected =
                read_tensor_file(&set.join(format!("output_{i}.pb"))).map_err(|e| e.to_string())?;
            compare(name, actual, &expected)?;
        }
    }
    Ok(())
}

/// The model at `path` with its inputs `names[fed..]` made initializers holding the data set
/// `set`'s values of them.
fn with_inputs_bound(
    path: &Path,
    set: &Path,
    names: &[String],
    fed: usize,
) -> Result<Model, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let mut proto = ModelProto::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
    let graph = proto.graph.as_mut().ok_or("no graph")?;
    for (i, name) in names.iter().enumerate().skip(fed) {
        let file = std::fs::read(set.join(format!("input_{i}.pb"))).map_err(|e| e.to_string())?;
        let mut tensor = TensorProto::decode(file.as_slice()).map_err(|e| e.to_string())?;
        tensor.name = Some(name.clone());
        graph.initializer.push(tensor);
    }
    Model::from_bytes(&proto.encode_to_vec(), path.parent()).map_err(|e| e.to_string())
}

#[test]
fn pytorch_converted_tests_pass_under_every_policy() {
    let root = data_dir().join("pytorch-converted");
    let mut tests: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("readable test data")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(selected))
        .collect();
    tests.sort();
    assert!(
        tests.len() >= 40,
        "expected the operator set's tests, found {}",
        tests.len()
    );
    let mut failures = Vec::new();
    for test in &tests {
        for policy in Policy::ALL {
            if let Err(e) = run_test_dir(test, policy, usize::MAX) {
                failures.push(format!(
                    "{} [{policy}]: {e}",
                    test.file_name().unwrap().to_string_lossy()
                ));
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

#[test]
fn light_models_give_their_expected_outputs() {
    let failures: Vec<String> = LIGHT_MODELS
        .iter()
        .flat_map(|name| run_light_model(name, &Policy::ALL))
        .collect();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
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

/// ONNX's node tests of ConvTranspose (`scripts/make-node-tests`), weights bound as
/// initializers: all pass but the 3-D one, which dconv refuses.
const CONVTRANSPOSE_NODE_TESTS: [&str; 11] = [
    "test_convtranspose",
    "test_convtranspose_1d",
    "test_convtranspose_3d",
    "test_convtranspose_autopad_same",
    "test_convtranspose_dilations",
    "test_convtranspose_group_2",
    "test_convtranspose_group_2_image_3",
    "test_convtranspose_kernel_shape",
    "test_convtranspose_output_shape",
    "test_convtranspose_pad",
    "test_convtranspose_pads",
];

#[test]
fn convtranspose_node_tests_pass_under_every_policy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/onnx-1.23.2/node");
    let mut failures = Vec::new();
    for name in CONVTRANSPOSE_NODE_TESTS {
        let dir = root.join(name);
        assert!(
            dir.join("model.onnx").is_file(),
            "ONNX node test {} is missing: run scripts/make-node-tests first",
            dir.display()
        );
        for policy in Policy::ALL {
            match (run_test_dir(&dir, policy, 1), name) {
                (Err(e), "test_convtranspose_3d")
                    if e.contains("unsupported: ConvTranspose on a rank-5 input") => {}
                (Ok(()), "test_convtranspose_3d") => failures.push(format!("{name}: not refused")),
                (Ok(()), _) => {}
                (Err(e), _) => failures.push(format!("{name} [{policy}]: {e}")),
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
