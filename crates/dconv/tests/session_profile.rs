//! `Session::run_profiled` gives the same outputs as `run`, and records each step with what
//! its convolution saw and chose.

use dconv::conv::Method;
use dconv::runtime::{example_model, Policy, Session, SessionOptions};
use dconv::{Model, Tensor};

#[test]
fn profile_names_the_conv_its_method_sparsities_and_macs() {
    let model = Model::from_bytes(&example_model(), None).unwrap();
    let options = SessionOptions {
        threads: 1,
        policy: Policy::Force(Method::Im2Csr),
        ..Default::default()
    };
    let session = Session::new(&model, options).unwrap();
    let mut data = vec![0.0f32; 16];
    data[..4].fill(1.0);
    let input = || Tensor::from_f32(vec![1, 1, 4, 4], data.clone()).unwrap();

    let plain = session.run(&[("x", input())]).unwrap();
    let started = std::time::Instant::now();
    let (profiled, profile) = session.run_profiled(&[("x", input())]).unwrap();
    let wall = started.elapsed();
    assert_eq!(plain, profiled);
    // The steps and the zero counting between them are disjoint parts of the run.
    assert!(profile.total() + profile.counting <= wall);

    let conv = profile
        .steps
        .iter()
        .find(|s| s.op == "Conv")
        .expect("a Conv step");
    assert_eq!(conv.method, Some(Method::Im2Csr));
    assert_eq!(conv.input_sparsity, 0.75);
    assert_eq!(conv.weight_sparsity, Some(0.0));
    // 4 x 4 outputs x 2 filters x 3 x 3 taps of 1 channel.
    assert_eq!(conv.macs, 16 * 2 * 9);
    assert!(profile.total() >= conv.time);
    assert!(profile
        .steps
        .iter()
        .filter(|s| s.op != "Conv")
        .all(|s| s.method.is_none() && s.weight_sparsity.is_none()));
}
