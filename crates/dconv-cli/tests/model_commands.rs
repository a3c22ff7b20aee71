//! Runs the built `dconv` binary on models: `prune` writes a model that loads and reaches
//! its sparsity and, with `--report`, what that costs on an input, `bench` writes the
//! promised JSON, `run --image` feeds a photograph exactly as the prepared .npy of it and
//! prints the top classes; bad arguments exit with code 2.

use dconv::io::npy::write_npy;
use dconv::onnx::read_tensor_file;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn dconv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dconv"))
        .args(args)
        .output()
        .expect("the dconv binary runs")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn temp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{name}", std::process::id()))
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "dconv failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn prune_then_bench_writes_the_json_report() {
    let case = repo().join("data/onnx-1.23.2/pytorch-converted/test_Conv2d");
    assert!(case.is_dir(), "run scripts/fetch-testdata first");
    let pruned = temp("conv2d-pruned.onnx");
    let table = stdout(&dconv(&[
        "prune",
        case.join("model.onnx").to_str().unwrap(),
        "-o",
        pruned.to_str().unwrap(),
        "--sparsity",
        "0.75",
    ]));
    assert!(table.contains("-> ") && table.contains("75.0 %"), "{table}");

    let input = read_tensor_file(&case.join("test_data_set_0/input_0.pb")).unwrap();
    let npy = temp("conv2d-input.npy");
    write_npy(&npy, input.shape(), &input.to_f32_vec()).unwrap();
    let json = temp("conv2d-bench.json");
    stdout(&dconv(&[
        "bench",
        pruned.to_str().unwrap(),
        "--input",
        npy.to_str().unwrap(),
        "--threads",
        "1",
        "--policy",
        "im2csoa",
        "--runs",
        "3",
        "--warmup",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let keys: Vec<&str> = report
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for key in [
        "model",
        "threads",
        "policy",
        "median_ms",
        "min_ms",
        "outside_steps_ms",
        "runs",
        "layers",
        "peak_rss_mb",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    assert_eq!(report["runs"], 3);
    assert_eq!(report["policy"], "im2csoa");
    let field = |key: &str| report[key].as_f64().unwrap();
    assert!(field("min_ms") <= field("median_ms"));
    assert!((0.0..=field("median_ms")).contains(&field("outside_steps_ms")));
    let conv = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["op"] == "Conv")
        .expect("a Conv row");
    assert_eq!(conv["algorithm"], "im2csoa");
    assert!((conv["weight_sparsity"].as_f64().unwrap() - 0.75).abs() < 0.01);
    assert!(conv["macs"].as_u64().unwrap() > 0);
    for f in [&pruned, &npy, &json] {
        std::fs::remove_file(f).ok();
    }
}

#[test]
fn run_on_a_photograph_matches_its_prepared_input_and_prints_top_classes() {
    let model = repo().join("models/vgg16.onnx");
    let photo = repo().join("../shared/images/astronaut.png");
    let prepared = repo().join("models/photos/astronaut.input.npy");
    assert!(
        model.is_file() && prepared.is_file(),
        "run scripts/fetch-models and scripts/make-test-models first"
    );
    let model = model.to_str().unwrap();
    let from_image = stdout(&dconv(&[
        "run",
        model,
        "--image",
        photo.to_str().unwrap(),
        "--size",
        "240x240",
        "--layout",
        "nhwc",
        "--scale",
        "0.00392156862745098",
    ]));
    let from_npy = stdout(&dconv(&[
        "run",
        model,
        "--input",
        prepared.to_str().unwrap(),
    ]));
    assert!(
        from_image.starts_with("top classes of 'dense_3'"),
        "{from_image}"
    );
    // The VGG-16 classifier has 4 classes, so at most 4 are listed.
    assert_eq!(
        from_image.lines().filter(|l| l.contains("class ")).count(),
        4
    );
    assert_eq!(from_image, from_npy);
}

#[test]
fn prune_in_blocks_takes_a_block_size_and_refuses_zero() {
    let case = repo().join("data/onnx-1.23.2/pytorch-converted/test_Conv2d/model.onnx");
    assert!(case.is_file(), "run scripts/fetch-testdata first");
    let pruned = temp("conv2d-blocks.onnx");
    let (case, pruned) = (case.to_str().unwrap(), pruned.to_str().unwrap());
    let run = |block| {
        dconv(&[
            "prune",
            case,
            "-o",
            pruned,
            "--sparsity",
            "0.5",
            "--block",
            block,
        ])
    };
    let table = stdout(&run("2"));
    assert!(table.contains("-> "), "{table}");
    let out = run("0");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("block"));
}

/// A fresh folder holding the example model (one Conv, `Conv_0`, output `c`, then Relu,
/// output `y`) as `model.onnx` and an input of mixed signs as `x.npy`.
fn example_dir(name: &str) -> PathBuf {
    let dir = temp(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.onnx"), dconv::runtime::example_model()).unwrap();
    let x: Vec<f32> = (0..16).map(|i| (i % 5) as f32 - 1.5).collect();
    write_npy(&dir.join("x.npy"), &[1, 1, 4, 4], &x).unwrap();
    dir
}

/// `dconv prune` on the example model with `--report x.npy`.
fn prune_with_report(dir: &Path, sparsity: &str, report: &Path) -> Output {
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    dconv(&[
        "prune",
        &path("model.onnx"),
        "-o",
        &path("pruned.onnx"),
        "--sparsity",
        sparsity,
        "--report",
        report.to_str().unwrap(),
    ])
}

/// The report's rows (after its header) as (first column, error in %), and its top-class line.
fn report_rows(stdout: &str) -> (Vec<(String, f64)>, String) {
    let mut lines = stdout
        .lines()
        .skip_while(|l| !l.contains("relative L2 error"))
        .skip(2);
    let rows = lines
        .by_ref()
        .take_while(|l| !l.starts_with("top class"))
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            let error = cells[cells.len() - 2].parse().expect("an error in %");
            (cells[0].to_string(), error)
        })
        .collect();
    let top = stdout
        .lines()
        .find(|l| l.starts_with("top class"))
        .unwrap_or_default();
    (rows, top.to_string())
}

#[test]
fn prune_report_gives_each_pruned_layer_and_the_output_its_error() {
    let dir = example_dir("report");
    let (rows, top) = report_rows(&stdout(&prune_with_report(&dir, "0.5", &dir.join("x.npy"))));
    let names: Vec<&str> = rows.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["Conv_0", "output"], "{rows:?}");
    assert!(rows.iter().all(|(_, e)| *e > 0.0), "{rows:?}");
    assert!(
        top.starts_with("top class of 'y': dense ") && top.contains(", pruned "),
        "{top}"
    );

    let (rows, top) = report_rows(&stdout(&prune_with_report(&dir, "0", &dir.join("x.npy"))));
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|(_, e)| *e == 0.0), "{rows:?}");
    assert!(top.ends_with(": agrees"), "{top}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_bad_report_input_is_a_usage_error_and_writes_nothing() {
    let dir = example_dir("bad-report");
    write_npy(&dir.join("wide.npy"), &[1, 1, 4, 5], &[1.0; 20]).unwrap();
    for (input, says) in [
        ("missing.npy", "missing.npy: cannot open"),
        (
            "photo.png",
            "photo.png: a photograph needs --size and --layout",
        ),
        ("wide.npy", "has shape [1, 1, 4, 5]"),
    ] {
        let out = prune_with_report(&dir, "0.5", &dir.join(input));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{input}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{input}: {stderr}");
        assert!(stderr.contains(says), "{input}: {stderr}");
        assert!(!dir.join("pruned.onnx").exists(), "{input}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn an_image_without_its_size_is_a_usage_error() {
    let out = dconv(&["run", "m.onnx", "--image", "x.png", "--layout", "nhwc"]);
    assert_eq!(out.status.code(), Some(2));
    let out = dconv(&["prune", "m.onnx", "-o", "y.onnx"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Under a tight `--max-memory`, `auto` runs the 90 %-pruned VGG-16 on its lean plan (one
/// method per convolution, the one with the smallest packed weights) and names on stderr
/// the layers that lost methods; every larger budget runs too, and one below the lean
/// plan's needs is refused as bad input. The cost profile is pinned to one compiled-in
/// profile: the methods `auto` may pick, and so the lean plan, are then those of every
/// instruction set (the portable profile, say, keeps dense on layers where AVX-512's keeps
/// sparse-weight, and a lean plan of dense weights needs more).
#[test]
fn a_tight_budget_runs_the_pruned_model_leaner_and_says_so() {
    let model = repo().join("models/vgg16-pruned90.onnx");
    let input = repo().join("models/photos/astronaut.input.npy");
    assert!(
        model.is_file() && input.is_file(),
        "run scripts/fetch-models and scripts/make-test-models first"
    );
    let profile = repo().join("crates/dconv/src/conv/select/profiles/avx512.json");
    let (model, input) = (model.to_str().unwrap(), input.to_str().unwrap());
    let run = |budget: &str| {
        let out = dconv(&[
            "run",
            model,
            "--input",
            input,
            "--threads",
            "1",
            "--max-memory",
            budget,
            "--profile",
            profile.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stderr)
    };
    let (code, lean) = run("55M");
    assert_eq!(code, Some(0), "{lean}");
    assert!(lean.contains("sparse-weight alone, of"), "{lean}");
    for budget in ["60M", "70M", "90M"] {
        let (code, stderr) = run(budget);
        assert_eq!(code, Some(0), "{budget}: {stderr}");
    }
    let (code, roomy) = run("16G");
    assert_eq!(code, Some(0), "{roomy}");
    assert!(!roomy.contains("memory budget"), "{roomy}");
    let (code, refused) = run("30M");
    assert_eq!(code, Some(2), "{refused}");
    assert!(refused.contains("over the memory budget"), "{refused}");
}
