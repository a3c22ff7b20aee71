//! Runs the built `dconv` binary: `bench-conv` writes the promised JSON, and bad arguments
//! exit with code 2 and one line on stderr.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

fn dconv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dconv"))
        .args(args)
        .output()
        .expect("the dconv binary runs")
}

/// Runs `dconv bench-conv ARGS --json FILE`, checks that it succeeded and returns its
/// stdout and the JSON it wrote.
fn bench_json(name: &str, args: &[&str]) -> (String, Value) {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}.json", std::process::id()));
    let mut all = vec!["bench-conv"];
    all.extend(args);
    all.extend(["--json", path.to_str().unwrap()]);
    let out = dconv(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&path).expect("the JSON file was written");
    std::fs::remove_file(&path).ok();
    let report = serde_json::from_str(&text).expect("valid JSON");
    (String::from_utf8_lossy(&out.stdout).into_owned(), report)
}

#[test]
fn bench_conv_writes_the_json_report() {
    let (stdout, report) = bench_json(
        "explicit-shape",
        &[
            "--channels",
            "6",
            "--height",
            "9",
            "--width",
            "7",
            "--filters",
            "5",
            "--kernel",
            "3",
            "--stride",
            "2",
            "--pad",
            "1",
            "--input-sparsity",
            "0.6",
            "--weight-sparsity",
            "0.5",
            "--zeros",
            "relu",
            "--algorithms",
            "reference",
            "--runs",
            "3",
            "--warmup",
            "1",
        ],
    );
    assert!(stdout.contains("reference"));

    let spec = &report["spec"];
    assert_eq!(spec["channels"], 6);
    assert_eq!(spec["height"], 9);
    assert_eq!(spec["width"], 7);
    assert_eq!(spec["filters"], 5);
    assert_eq!(spec["kernel"], serde_json::json!([3, 3]));
    assert_eq!(spec["stride"], serde_json::json!([2, 2]));
    assert_eq!(spec["dilation"], serde_json::json!([1, 1]));
    assert_eq!(spec["padding"], serde_json::json!([1, 1, 1, 1]));
    assert_eq!(spec["groups"], 1);
    assert_eq!(spec["batch"], 1);
    // (9 + 2 - 3) / 2 + 1 = 5 and (7 + 2 - 3) / 2 + 1 = 4
    assert_eq!(spec["out_height"], 5);
    assert_eq!(spec["out_width"], 4);
    assert_eq!(spec["macs"], 5 * 4 * 5 * 6 * 9);
    assert_eq!(report["input_sparsity"], 0.6);
    assert_eq!(report["weight_sparsity"], 0.5);
    assert_eq!(report["weight_block"], Value::Null);
    assert_eq!(report["weight_zero_blocks"], Value::Null);
    assert_eq!(report["zeros"], "relu");
    assert_eq!(report["residual"], false);
    assert_eq!(report["threads"], 1);
    assert_eq!(report["runs"], 3);
    assert!(report["isa"].as_str().is_some_and(|isa| !isa.is_empty()));

    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    let r = &results[0];
    assert_eq!(r["algorithm"], "reference");
    let field = |name: &str| r[name].as_f64().unwrap_or_else(|| panic!("{name} in {r}"));
    assert!(field("median_ms") > 0.0);
    assert!(field("min_ms") <= field("median_ms"));
    assert!(field("convert_ms") >= 0.0);
    assert!(field("multiply_ms") >= 0.0);
    assert!(field("gflops_dense_equivalent") > 0.0);
    // The reference skips no zeros: its effective rate is its dense-equivalent rate.
    assert_eq!(field("gflops_effective"), field("gflops_dense_equivalent"));
}

/// With --residual every method adds the same residual: their outputs agree with dense's
/// (else bench-conv fails), and the report says so.
#[test]
fn a_residual_is_added_by_every_method() {
    let (stdout, report) = bench_json(
        "residual",
        &[
            "--channels",
            "8",
            "--height",
            "7",
            "--width",
            "6",
            "--filters",
            "12",
            "--kernel",
            "3",
            "--pad",
            "1",
            "--input-sparsity",
            "0.5",
            "--residual",
            "--runs",
            "1",
            "--warmup",
            "0",
        ],
    );
    assert!(stdout.contains("a residual added"), "{stdout}");
    assert_eq!(report["residual"], true);
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 5, "every method but the reference");
}

#[test]
fn weight_blocks_are_reported() {
    // 6 filters in 2 groups, blocks of 2: per (group, input channel, tap) blocks of 2 and 1,
    // 2 x 2 x 9 x 2 = 72 blocks of which 18 are zero.
    let (stdout, report) = bench_json(
        "weight-block",
        &[
            "--channels",
            "4",
            "--height",
            "6",
            "--width",
            "6",
            "--filters",
            "6",
            "--groups",
            "2",
            "--kernel",
            "3",
            "--input-sparsity",
            "0.5",
            "--weight-sparsity",
            "0.25",
            "--weight-block",
            "2",
            "--algorithms",
            "dense,sparse-weight",
            "--runs",
            "1",
            "--warmup",
            "0",
        ],
    );
    assert!(
        stdout.contains("in blocks of 2 output channels"),
        "{stdout}"
    );
    assert_eq!(report["weight_sparsity"], 0.25);
    assert_eq!(report["weight_block"], 2);
    assert_eq!(report["weight_zero_blocks"], 0.25);
}

#[test]
fn layer_shortcut_gives_the_shape_and_flags_override_it() {
    let (_, report) = bench_json(
        "layer",
        &[
            "--layer",
            "vgg16.conv5_3",
            "--channels",
            "4",
            "--filters",
            "3",
            "--algorithms",
            "reference",
            "--runs",
            "1",
            "--threads",
            "2",
        ],
    );
    assert_eq!(report["spec"]["channels"], 4);
    assert_eq!(report["spec"]["filters"], 3);
    assert_eq!(report["spec"]["height"], 14);
    assert_eq!(report["spec"]["padding"], serde_json::json!([1, 1, 1, 1]));
    assert_eq!(report["input_sparsity"], 0.85);
    assert_eq!(report["threads"], 2);
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    let shape = [
        "bench-conv",
        "--channels",
        "4",
        "--height",
        "5",
        "--width",
        "5",
        "--filters",
        "2",
        "--kernel",
        "3",
        "--algorithms",
        "reference",
    ];
    let cases: [&[&str]; 9] = [
        &["--input-sparsity", "1.5"],
        &["--input-sparsity", "0.5", "--weight-sparsity", "-0.1"],
        &["--input-sparsity", "0.5", "--runs", "0"],
        &["--input-sparsity", "0.5", "--algorithms", "fastest"],
        &["--input-sparsity", "0.5", "--zeros", "stripes"],
        &["--input-sparsity", "0.5", "--groups", "3"],
        &["--input-sparsity", "0.5", "--weight-block", "0"],
        &["--input-sparsity", "0.5", "--no-such-flag"],
        &[],
    ];
    for extra in cases {
        let args: Vec<&str> = shape.iter().chain(extra).copied().collect();
        let out = dconv(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{extra:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{extra:?}: {stderr}");
    }
}
