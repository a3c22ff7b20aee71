//! `dconv`: the command-line tool of the dconv inference engine. One module per subcommand.

mod analyze;
mod bench;
mod bench_conv;
mod demo;
mod measure;
mod memory;
mod model_input;
mod progress;
mod prune;
mod run;
mod session_args;
mod tune;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "dconv", version, about, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Time the convolution methods on one layer shape with synthetic sparse data, check that
    /// they agree, and report milliseconds and GFLOP/s.
    BenchConv(Box<bench_conv::Args>),
    /// Run an ONNX model on a .npy input or a photograph; write its output as .npy and
    /// print a classifier's top classes.
    Run(run::Args),
    /// Time a model end to end and layer by layer on one input.
    Bench(bench::Args),
    /// VGG-16, dense and pruned to Deep Compression's densities, on a photograph under the
    /// dense and the auto policy: per-layer sparsity, methods, times, speedups and top classes.
    Demo(demo::Args),
    /// Prune an ONNX model's convolution weights by magnitude, uniformly or per layer; with
    /// --report, show how far that moves each layer's output on an input.
    Prune(prune::Args),
    /// Measure the cost model's coefficients on this machine and write them as a profile.
    Tune(tune::Args),
    /// Time every method on each convolution of a model, next to what `auto` picks.
    Analyze(analyze::Args),
}

/// Why a subcommand stopped; each kind has its own exit code.
#[derive(Debug)]
enum Failure {
    /// The request cannot be served as given (bad shape, unknown name, out-of-range value):
    /// exit code 2, like a command-line syntax error.
    Usage(String),
    /// The work itself went wrong (methods disagree, a file cannot be written): exit code 1.
    Run(String),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Run(_) => 1,
        }
    }
    /// The same failure, its message prefixed by the file it concerns.
    fn in_file(self, path: &std::path::Path) -> Failure {
        match self {
            Failure::Usage(m) => Failure::Usage(format!("{}: {m}", path.display())),
            Failure::Run(m) => Failure::Run(format!("{}: {m}", path.display())),
        }
    }
    fn message(&self) -> &str {
        match self {
            Failure::Usage(m) | Failure::Run(m) => m,
        }
    }
}

/// A library error: the caller's fault (exit 2) or dconv's (exit 1).
impl From<dconv::Error> for Failure {
    fn from(e: dconv::Error) -> Failure {
        if e.is_bad_input() {
            Failure::Usage(e.to_string())
        } else {
            Failure::Run(e.to_string())
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return report_parse_error(e),
    };
    let outcome = match cli.command {
        Command::BenchConv(args) => bench_conv::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Prune(args) => prune::run(&args),
        Command::Tune(args) => tune::run(&args),
        Command::Analyze(args) => analyze::run(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message());
            ExitCode::from(failure.exit_code())
        }
    }
}

/// Help and version go out as clap writes them; a usage error becomes one line on stderr
/// (clap's message without its usage block and tips) and exit code 2.
fn report_parse_error(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(2)
        }
        _ => {
            let rendered = e.render().to_string();
            let line: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty()
                        && !l.starts_with("tip:")
                        && !l.starts_with("For more information")
                })
                .collect();
            eprintln!("{}", line.join(" "));
            ExitCode::from(2)
        }
    }
}
