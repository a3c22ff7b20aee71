//! The real VGG-16 (and a copy with 90 % of the weights of every convolution but the first
//! pruned) on each photograph gives ONNX Runtime's logits, the input of the final Softmax,
//! under every policy: max |dconv - ORT| <= 1e-4 max |ORT| + 1e-5.
//!
//! The models, the fed inputs and ORT's logits are made by scripts/fetch-models and
//! scripts/make-test-models (scripts/test runs both); this test fails if they are missing.

mod common;

use dconv::conv::Method;
use dconv::io::npy::read_npy;
use dconv::{Model, Policy, Session, SessionOptions, Tensor};
use std::path::{Path, PathBuf};

fn models_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models");
    assert!(
        dir.join("photos").is_dir(),
        "{} is missing: run scripts/fetch-models and scripts/make-test-models (scripts/test does)",
        dir.display()
    );
    dir
}

/// The photographs the references were made for: `(name, input .npy)`.
fn photographs(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut photos: Vec<_> = std::fs::read_dir(dir.join("photos"))
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            let name = path
                .file_name()?
                .to_str()?
                .strip_suffix(".input.npy")?
                .to_string();
            Some((name, path))
        })
        .collect();
    photos.sort();
    assert!(
        photos.len() >= 3,
        "expected a reference input per photograph in ../shared/images"
    );
    photos
}

fn logits(session: &Session, input: &Path) -> Vec<f32> {
    let (shape, data) = read_npy(input).unwrap();
    let outputs = session
        .run(&[("input", Tensor::from_f32(shape, data).unwrap())])
        .unwrap();
    let (_, logits) = outputs
        .iter()
        .find(|(name, _)| name == "logits")
        .expect("a 'logits' output");
    logits.to_f32_vec()
}

/// `model_name` under each of `policies` on the first `photos` photographs.
fn check(model_name: &str, policies: &[Policy], photos: usize) {
    let dir = models_dir();
    let model = Model::load(dir.join(format!("{model_name}-logits.onnx"))).unwrap();
    for policy in policies {
        let session = Session::new(
            &model,
            SessionOptions {
                threads: 2,
                policy: *policy,
                ..Default::default()
            },
        )
        .unwrap();
        for (photo, input) in photographs(&dir).into_iter().take(photos) {
            let (_, want) =
                read_npy(&dir.join(format!("photos/{photo}.{model_name}.logits.npy"))).unwrap();
            let got = logits(&session, &input);
            assert_eq!(got.len(), want.len());
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst <= 1e-4 * scale + 1e-5,
                "{model_name} on {photo} under {policy}: max |dconv - ORT| = {worst} > 1e-4 x {scale} + 1e-5\n\
                 dconv {got:?}\nORT   {want:?}"
            );
        }
    }
}

#[test]
fn dense_vgg16_matches_onnxruntime_under_every_policy() {
    check("vgg16", &common::fast_policies(), usize::MAX);
}

#[test]
fn pruned_vgg16_matches_onnxruntime_under_every_policy() {
    check("vgg16-pruned90", &common::fast_policies(), usize::MAX);
}

/// Apart, and on one photograph, because the naive loops take a minute per run of VGG-16 and
/// do not depend on the instruction set: CI runs this test once, not in every ISA's pass.
#[test]
fn vgg16_matches_onnxruntime_under_the_reference_policy() {
    check("vgg16", &[Policy::Force(Method::Reference)], 1);
    check("vgg16-pruned90", &[Policy::Force(Method::Reference)], 1);
}
