//! Fuzz target: arbitrary bytes as an ONNX model must load, plan and run on a small input,
//! or fail with an error — never panic, hang or allocate past the memory budget.
#![no_main]

use dconv::onnx::Dim;
use dconv::{Model, Policy, Session, SessionOptions, Tensor};

/// Inputs larger than this are not fed: the target is about the model, not big tensors.
const MAX_INPUT_ELEMENTS: usize = 4096;
/// The plan budget: anything a model asks for beyond it must be refused, not allocated.
const MAX_MEMORY: usize = 64 << 20;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let Ok(model) = Model::from_bytes(bytes, None) else {
        return;
    };
    let mut inputs = Vec::new();
    for input in model.inputs() {
        let shape: Vec<usize> = match &input.shape {
            Some(dims) => dims
                .iter()
                .map(|d| match d {
                    Dim::Fixed(v) => *v,
                    Dim::Dynamic(_) => 1,
                })
                .collect(),
            None => vec![1, 1, 4, 4],
        };
        let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let Some(count) = count.filter(|&c| c <= MAX_INPUT_ELEMENTS) else {
            return;
        };
        let data = (0..count).map(|i| (i % 7) as f32 - 3.0).collect();
        inputs.push((input.name.clone(), Tensor::from_f32(shape, data).unwrap()));
    }
    let options = SessionOptions {
        threads: 0,
        policy: Policy::Auto,
        max_memory: Some(MAX_MEMORY),
        ..Default::default()
    };
    let Ok(session) = Session::new(&model, options) else {
        return;
    };
    let named: Vec<(&str, Tensor)> = inputs
        .iter()
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    let _ = session.run(&named);
});
