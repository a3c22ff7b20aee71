//! Runs the built `dconv` binary: `analyze` reports every method per layer with the
//! auto-vs-best check, tells its progress layer by layer, and draws its chart; a bad
//! `--profile` is the caller's error (exit 2).

use std::path::PathBuf;
use std::process::{Command, Output};

fn dconv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dconv"))
        .args(args)
        .output()
        .expect("the dconv binary runs")
}

fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()))
}

/// The library's tiny example model (Conv + Relu) and a matching input, as files.
fn example_files() -> (PathBuf, PathBuf) {
    let model = tmp("example.onnx");
    std::fs::write(&model, dconv::runtime::example_model()).unwrap();
    let input = tmp("example-input.npy");
    dconv::io::npy::write_npy(&input, &[1, 1, 4, 4], &[1.0; 16]).unwrap();
    (model, input)
}

#[test]
fn analyze_prints_every_method_and_the_auto_check_and_draws_the_chart() {
    let (model, input) = example_files();
    let svg = tmp("analyze.svg");
    let out = dconv(&[
        "analyze",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--runs",
        "2",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for column in [
        "dense",
        "im2csr",
        "im2csoa",
        "sparse-weight",
        "auto vs best",
    ] {
        assert!(stdout.contains(column), "no '{column}' in\n{stdout}");
    }
    assert!(stdout.contains("of 1 layers"), "{stdout}");
    // Progress on stderr, a line per layer as it is timed.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[1/1] Conv_0 ("), "{stderr}");
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(
        chart.starts_with("<svg") && chart.contains("im2csoa"),
        "{chart}"
    );
}

#[test]
fn a_bad_profile_is_the_callers_error() {
    let (model, input) = example_files();
    let profile = tmp("bad-profile.json");
    std::fs::write(&profile, r#"{"threads": 1, "methods": {}}"#).unwrap();
    let out = dconv(&[
        "analyze",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--profile",
        profile.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid cost profile"), "{stderr}");
    assert!(stderr.contains("is missing"), "{stderr}");
}
