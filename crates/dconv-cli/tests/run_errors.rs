//! `dconv run` on bad models, tensors and options: one line first on stderr, exit code 2;
//! and a good run under a sufficient --max-memory succeeds.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn dconv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dconv"))
        .args(args)
        .output()
        .expect("the dconv binary runs")
}

/// A fresh folder holding the example model (`model.onnx`) and a fitting input (`x.npy`).
fn workdir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("run-errors-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.onnx"), dconv::runtime::example_model()).unwrap();
    dconv::io::npy::write_npy(&dir.join("x.npy"), &[1, 1, 4, 4], &[1.0; 16]).unwrap();
    dir
}

fn run(dir: &Path, model: &str, input: &str, extra: &[&str]) -> Output {
    let (model, input, output) = (dir.join(model), dir.join(input), dir.join("y.npy"));
    let mut args = vec![
        "run",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend(extra);
    dconv(&args)
}

fn assert_bad_input(out: &Output, mentions: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("error: ") && first.contains(mentions),
        "{stderr}"
    );
}

#[test]
fn bad_models_tensors_and_options_exit_2_with_one_line() {
    let dir = workdir("bad");
    std::fs::write(dir.join("garbage.onnx"), b"\x08\x07garbage").unwrap();
    std::fs::write(dir.join("garbage.npy"), b"\x93NUMPY garbage").unwrap();
    dconv::io::npy::write_npy(&dir.join("wrong.npy"), &[1, 2, 4, 4], &[0.0; 32]).unwrap();
    assert_bad_input(&run(&dir, "garbage.onnx", "x.npy", &[]), "invalid model");
    assert_bad_input(&run(&dir, "missing.onnx", "x.npy", &[]), "missing.onnx");
    assert_bad_input(&run(&dir, "model.onnx", "garbage.npy", &[]), "garbage.npy");
    assert_bad_input(&run(&dir, "model.onnx", "missing.npy", &[]), "missing.npy");
    assert_bad_input(&run(&dir, "model.onnx", "wrong.npy", &[]), "[1, 2, 4, 4]");
    assert_bad_input(
        &run(&dir, "model.onnx", "x.npy", &["--max-memory", "100"]),
        "memory budget",
    );
    let out = run(&dir, "model.onnx", "x.npy", &["--max-memory", "12Q"]);
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_run_within_the_memory_budget_succeeds() {
    let dir = workdir("good");
    let out = run(&dir, "model.onnx", "x.npy", &["--max-memory", "1M"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
