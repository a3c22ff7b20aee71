//! `dconv::prune` on pytorch-converted models from ONNX's test data: each pruned layer has
//! the asked fraction of zeros, the pruned model still loads, and every policy gives the
//! reference convolution's output on it.

use dconv::conv::Method;
use dconv::onnx::read_tensor_file;
use dconv::prune::{prune_model, PruneOptions, Target};
use dconv::{Error, Model, Policy, Session, SessionOptions, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn test_case(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/onnx-1.23.2/pytorch-converted")
        .join(name);
    assert!(
        dir.is_dir(),
        "{} is missing: run scripts/fetch-testdata first",
        dir.display()
    );
    dir
}

fn prune(case: &Path, target: Target) -> dconv::Result<(Vec<u8>, Vec<dconv::prune::PrunedLayer>)> {
    prune_in_blocks(case, target, None)
}

fn prune_in_blocks(
    case: &Path,
    target: Target,
    block: Option<usize>,
) -> dconv::Result<(Vec<u8>, Vec<dconv::prune::PrunedLayer>)> {
    let bytes = std::fs::read(case.join("model.onnx")).unwrap();
    let options = PruneOptions {
        target,
        skip_first: false,
        include_gemm: true,
        block,
    };
    prune_model(&bytes, Some(case), &options)
}

fn run(model: &Model, policy: Policy, input: &Tensor) -> Vec<f32> {
    let session = Session::new(
        model,
        SessionOptions {
            threads: 1,
            policy,
            ..Default::default()
        },
    )
    .unwrap();
    let name = model.inputs()[0].name.clone();
    let outputs = session.run(&[(name.as_str(), input.clone())]).unwrap();
    outputs[0].1.to_f32_vec()
}

#[test]
fn pruned_layers_reach_the_asked_sparsity_and_every_policy_agrees() {
    for (case, sparsity) in [
        ("test_Conv2d", 0.7),
        ("test_Conv2d_groups", 0.5),
        ("test_Linear", 0.6),
    ] {
        let dir = test_case(case);
        let (bytes, layers) = prune(&dir, Target::Uniform(sparsity)).unwrap();
        assert_eq!(layers.len(), 1, "{case}");
        let model = Model::from_bytes(&bytes, None).unwrap();
        for layer in &layers {
            let weights = model_weight(&bytes, &layer.initializer);
            let zeros = weights.iter().filter(|&&w| w == 0.0).count();
            assert_eq!(
                zeros,
                (sparsity * weights.len() as f64).round() as usize,
                "{case}"
            );
            assert_eq!(layer.weights, weights.len());
            assert!((layer.sparsity_after - sparsity).abs() < 0.5 / weights.len() as f64 + 1e-9);
        }

        assert_every_policy_agrees(case, &dir, &model);
    }
}

/// Every policy computes what the reference does on the case's input.
fn assert_every_policy_agrees(case: &str, dir: &Path, model: &Model) {
    let input = read_tensor_file(&dir.join("test_data_set_0/input_0.pb")).unwrap();
    let expected = run(model, Policy::Force(Method::Reference), &input);
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    let policies = [Policy::Auto]
        .into_iter()
        .chain(Method::ALL.map(Policy::Force));
    for policy in policies {
        let actual = run(model, policy, &input);
        let worst = actual
            .iter()
            .zip(&expected)
            .fold(0f32, |m, (a, e)| m.max((a - e).abs()));
        assert!(
            worst <= 1e-4 * scale + 1e-5,
            "{case} under {policy:?}: max error {worst}"
        );
    }
}

/// With a block size, a Conv's weights go in whole blocks of consecutive output channels of
/// one group at one (input channel, tap): every block is all zero or as it was, the asked
/// fraction of the blocks is zero, and every policy still agrees.
#[test]
fn block_pruning_zeros_whole_blocks_of_output_channels() {
    for (case, groups, block, sparsity) in [
        ("test_Conv2d", 1, 4, 0.6),
        ("test_Conv2d", 1, 3, 0.5),
        // Two groups of 3 filters: blocks of 2 are filters 0-1, 2, 3-4 and 5.
        ("test_Conv2d_groups", 2, 2, 0.7),
    ] {
        let dir = test_case(case);
        let original = std::fs::read(dir.join("model.onnx")).unwrap();
        let (bytes, layers) =
            prune_in_blocks(&dir, Target::Uniform(sparsity), Some(block)).unwrap();
        let layer = &layers[0];
        let (before, after) = (
            model_weight(&original, &layer.initializer),
            model_weight(&bytes, &layer.initializer),
        );
        let filters = initializer(&bytes, &layer.initializer).dims[0] as usize;
        let (k_len, per_group) = (after.len() / filters, filters / groups);
        let firsts = (0..filters)
            .step_by(per_group)
            .flat_map(|g| (g..g + per_group).step_by(block));
        let (mut blocks, mut zero_blocks) = (0, 0);
        for first in firsts {
            let end = (first + block).min(first - first % per_group + per_group);
            for k in 0..k_len {
                let members: Vec<usize> = (first..end).map(|m| m * k_len + k).collect();
                let zero = members.iter().all(|&i| after[i] == 0.0);
                let kept = members.iter().all(|&i| after[i] == before[i]);
                assert!(zero || kept, "{case}: block ({first}, {k}) partly zeroed");
                blocks += 1;
                zero_blocks += usize::from(zero);
            }
        }
        assert_eq!(
            zero_blocks,
            (sparsity * blocks as f64).round() as usize,
            "{case}, blocks of {block}"
        );
        assert_every_policy_agrees(case, &dir, &Model::from_bytes(&bytes, None).unwrap());
    }
}

#[test]
fn a_block_of_zero_channels_is_refused() {
    let result = prune_in_blocks(&test_case("test_Conv2d"), Target::Uniform(0.5), Some(0));
    assert!(matches!(result, Err(Error::InvalidArgument(m)) if m.contains("block")));
}

/// The float weights of initializer `name` in a serialized model.
fn model_weight(bytes: &[u8], name: &str) -> Vec<f32> {
    dconv::onnx::decode_tensor(&initializer(bytes, name), None)
        .unwrap()
        .to_f32_vec()
}

/// Initializer `name` of a serialized model.
fn initializer(bytes: &[u8], name: &str) -> dconv::onnx::proto::TensorProto {
    use prost::Message;
    let proto = dconv::onnx::proto::ModelProto::decode(bytes).unwrap();
    proto
        .graph
        .unwrap()
        .initializer
        .into_iter()
        .find(|t| t.name() == name)
        .unwrap()
}

#[test]
fn per_layer_targets_name_nodes_or_weights_and_unknown_names_are_refused() {
    let dir = test_case("test_Conv2d");
    let bytes = std::fs::read(dir.join("model.onnx")).unwrap();
    let proto =
        <dconv::onnx::proto::ModelProto as prost::Message>::decode(bytes.as_slice()).unwrap();
    let conv = &proto.graph.unwrap().node[0];
    let weight = conv.input[1].clone();

    let (_, layers) = prune(&dir, Target::PerLayer(HashMap::from([(weight, 0.25)]))).unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0].output, conv.output[0]);
    assert!((layers[0].sparsity_after - 0.25).abs() < 0.01);

    let unknown = prune(
        &dir,
        Target::PerLayer(HashMap::from([("conv9".into(), 0.5)])),
    );
    assert!(matches!(unknown, Err(Error::InvalidArgument(m)) if m.contains("'conv9'")));
}

#[test]
fn the_vgg16_profile_refuses_a_model_without_13_convs() {
    let result = prune(&test_case("test_Conv2d"), Target::DeepCompressionVgg16);
    assert!(matches!(result, Err(Error::InvalidArgument(m)) if m.contains("has 1")));
}

#[test]
fn a_sparsity_outside_0_to_1_is_refused() {
    let result = prune(&test_case("test_Conv2d"), Target::Uniform(1.5));
    assert!(matches!(result, Err(Error::InvalidArgument(_))));
}

#[test]
fn the_vgg16_profile_gives_each_conv_its_deep_compression_density() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let path = dir.join("vgg16.onnx");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-models",
        path.display()
    );
    let bytes = std::fs::read(&path).unwrap();
    let options = PruneOptions {
        target: Target::DeepCompressionVgg16,
        skip_first: false,
        include_gemm: false,
        block: None,
    };
    let (pruned, layers) = prune_model(&bytes, Some(&dir), &options).unwrap();
    assert_eq!(layers.len(), 13);
    for (layer, keep) in layers.iter().zip(dconv::prune::DEEP_COMPRESSION_VGG16_KEEP) {
        assert_eq!(layer.op, "Conv");
        assert!(
            (layer.sparsity_after - (1.0 - keep)).abs() < 1e-3,
            "{}: {} zeros, expected {}",
            layer.node,
            layer.sparsity_after,
            1.0 - keep
        );
    }
    // Only values of conv weights changed, so the re-encoded model keeps its size.
    assert_eq!(pruned.len(), bytes.len());
    Model::from_bytes(&pruned, None).unwrap();
}
