//! The `netc` command line: argument parsing, progress output and exit
//! codes. Everything else lives in the library crates.

mod generating;
mod gpu_bench;
mod render;
mod report;
mod running;
mod runs;
mod training;

use clap::{Parser, Subcommand, ValueEnum};
use netc_compiler::autodiff::TrainingGraph;
use netc_compiler::codegen::cpu::KernelPath;
use netc_compiler::codegen::ptx::{program_ptx_with, Precision, PtxOptions};
use netc_compiler::kernel::ir::Program;
use netc_compiler::kernel::print::program_text;
use netc_compiler::opt::{explain::explain, OptOptions};
use netc_compiler::pipeline::{
    check_source, lower_training, Compilation, CompileOptions, Forward, OptLevel,
};
use netc_compiler::train::TrainConfig;
use netc_compiler::{graph_text, summary, Checked, Graph};
use netc_lang::SourceFile;
use std::path::PathBuf;
use std::process::ExitCode;

/// netc — a compiler for neural-network descriptions.
///
/// Write a CNN or a recurrent model in a `.net` file; netc checks every
/// shape before anything runs and shows the model's structure.
#[derive(Parser)]
#[command(name = "netc", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Optimization level: `-O0` skips the optimizer (egg rewrites:
    /// fusion, batchnorm folding, recurrent unrolling); `-O1`, the
    /// default, runs it before lowering. Training unrolls recurrent
    /// layers even at `-O0` (backpropagation through time needs it).
    #[arg(
        short = 'O',
        long = "opt-level",
        global = true,
        default_value_t = 1,
        value_parser = clap::value_parser!(u8).range(0..=1)
    )]
    opt_level: u8,
    /// Most seconds the optimizer may spend on a model's forward graph;
    /// past it the optimizer keeps what it has found and says what it
    /// left unoptimized.
    #[arg(long, global = true, default_value_t = 1.0, value_parser = positive_seconds)]
    opt_time_limit: f64,
    /// Which code generator builds the CPU kernels of `train`, `eval`,
    /// `predict`, `generate`, `run` and `bench`: `auto` (run-time assembled
    /// AVX-512 contractions when the CPU has AVX-512F, else AVX2 ones, and
    /// AVX2 loops where they gain, when the CPU has AVX2 + FMA; else
    /// Cranelift), `avx2` (as `auto`, but AVX2 contractions on an AVX-512
    /// CPU too) or `cranelift`. Defaults to the
    /// `NETC_KERNELS` environment variable, then `auto`.
    #[arg(long, global = true, value_enum)]
    kernels: Option<KernelsArg>,
    /// With `--device cuda` (`train`, `run`, `bench`; also `compile
    /// --emit ptx`): large contractions on the tensor cores in TF32 —
    /// operands rounded to a 10-bit mantissa, products summed in f32
    /// (see docs/numerics.md). Default: f32 throughout.
    #[arg(long, global = true)]
    tf32: bool,
    /// The length a variable-length input (`[*, F]`, `tokens[*]`) is
    /// compiled for by `compile`, `bench` and `run` (`run` takes it from
    /// its input file when not given); `train`, `eval` and `predict` take
    /// it from the data.
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(1..=4096))]
    steps: Option<u64>,
    /// Image folders: leave out a file that does not decode (with a
    /// warning naming it) instead of stopping with an error.
    #[arg(long, global = true)]
    skip_bad_images: bool,
    /// Image folders: the directory that keeps decoded images between runs
    /// (default: `netc/images` under `$XDG_CACHE_HOME`, else `~/.cache`).
    /// A folder whose files changed is decoded again.
    #[arg(long, global = true, value_name = "DIR")]
    image_cache: Option<PathBuf>,
    /// Image folders: decode every image on every run and keep nothing.
    #[arg(long, global = true, conflicts_with = "image_cache")]
    no_image_cache: bool,
}

/// The user's image decode cache: `$XDG_CACHE_HOME/netc/images`, else
/// `$HOME/.cache/netc/images` (none without either).
fn default_image_cache() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let base = var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache")))?;
    Some(base.join("netc").join("images"))
}

/// `g`, or for a variable-length model `g` instantiated at `steps`.
fn at_steps(g: &Graph, steps: Option<usize>) -> Result<std::borrow::Cow<'_, Graph>, String> {
    use netc_compiler::masking;
    if !masking::is_variable(g) {
        return Ok(std::borrow::Cow::Borrowed(g));
    }
    let steps = steps.ok_or_else(|| {
        format!(
            "model `{}` has a variable-length input (`*` steps); give the length to compile \
             for with --steps N",
            g.name
        )
    })?;
    masking::instantiate(g, steps)
        .map(std::borrow::Cow::Owned)
        .map_err(|e| format!("model `{}`: {e}", g.name))
}

/// `--optimizer`'s values: the train section's optimizers, and `nesterov`.
fn optimizer_names() -> clap::builder::PossibleValuesParser {
    let mut names = netc_compiler::train::OPTIMIZERS.to_vec();
    names.insert(2, "nesterov");
    clap::builder::PossibleValuesParser::new(names)
}

/// A finite, positive number of seconds (at most a day).
fn positive_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 && v <= 86_400.0 {
        Ok(v)
    } else {
        Err(format!("{s} is not a number of seconds in (0, 86400]"))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Parse and shape-check a .net file; exit non-zero on any error.
    Check {
        /// The .net file.
        file: PathBuf,
        /// Treat warnings as errors.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Print a table of layers, output shapes and parameter counts.
    Summary {
        /// The .net file.
        file: PathBuf,
        /// Which model, when the file has several (default: all).
        #[arg(long)]
        model: Option<String>,
        /// With `cuda`: also print the GPU memory a training step and a
        /// forward pass need (the memory plan's arena, parameters,
        /// optimizer state, inputs), computed without a GPU.
        #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
        device: DeviceArg,
        /// The batch of `--device cuda`'s sizes (default: the train
        /// section's, else 64).
        #[arg(long)]
        batch: Option<usize>,
    },
    /// Print the dataflow graph.
    Graph {
        /// The .net file.
        file: PathBuf,
        /// Output format: readable text or Graphviz dot.
        #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
        format: GraphFormat,
        /// Which model, when the file has several (default: all).
        #[arg(long)]
        model: Option<String>,
    },
    /// Train a model on a data set (the file's `train` section; flags override it).
    Train {
        /// The .net file.
        file: PathBuf,
        /// Data: an IDX directory, a UCR `.ts` or `.ts.gz` file, a `.csv`, `x.npy,y.npy`,
        /// or a text file read as the train section's `text` and `format` say.
        #[arg(long)]
        data: Option<String>,
        /// Override the number of epochs.
        #[arg(long)]
        epochs: Option<usize>,
        /// Override the batch size.
        #[arg(long)]
        batch: Option<usize>,
        /// Override the learning rate.
        #[arg(long)]
        lr: Option<f64>,
        /// Override the optimizer: NAME with its default settings, as
        /// `optimizer: NAME` in the train section gives it (the section's
        /// settings are kept when it names the same optimizer); `nesterov`
        /// is `momentum(nesterov: true)`. --lr then sets its learning rate.
        #[arg(long, value_name = "NAME", value_parser = optimizer_names())]
        optimizer: Option<String>,
        /// Override the loss.
        #[arg(long, value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(netc_compiler::train::LOSSES))]
        loss: Option<String>,
        /// Override the seed (initialization, shuffling, dropout).
        #[arg(long)]
        seed: Option<u64>,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Save weights and optimizer state here after every epoch and on
        /// Ctrl-C (one file, replaced atomically).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Continue from the checkpoint in --checkpoint, exactly where it stopped.
        #[arg(long, requires = "checkpoint")]
        resume: bool,
        /// Start a new run even if --checkpoint holds one (deleting it), and
        /// replace a plot that --log would write beside the log.
        #[arg(long, conflicts_with = "resume")]
        overwrite: bool,
        /// Start from these weights (all or some tensors; transfer learning).
        #[arg(long)]
        init_from: Option<PathBuf>,
        /// Write the final weights here instead of to a run directory.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Keep the run in a new directory ROOT/<model>/<n>/ (default ROOT:
        /// `runs`): weights, a copy of the model, metrics and run.json.
        /// Used unless -o or --no-save is given.
        #[arg(long, value_name = "ROOT", conflicts_with = "output")]
        runs_dir: Option<PathBuf>,
        /// Keep no run directory: only what --log, --plot and --checkpoint
        /// ask for is written.
        #[arg(long, conflicts_with_all = ["output", "runs_dir"])]
        no_save: bool,
        /// Write per-epoch metrics to this CSV file (default: the run
        /// directory's metrics.csv; with --checkpoint: DIR/metrics.csv,
        /// appended to on --resume).
        #[arg(long)]
        log: Option<PathBuf>,
        /// Where to run: `cpu` (Cranelift kernels) or `cuda` (generated PTX
        /// on GPU 0).
        #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
        device: DeviceArg,
        /// Draw the loss and accuracy curves to this PNG after every epoch
        /// (default: the metrics log's name with `.png`).
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Which model, when the file has several.
        #[arg(long)]
        model: Option<String>,
    },
    /// Evaluate trained weights on a data set: loss, accuracy, confusion matrix.
    Eval {
        /// The .net file, or a run directory of `netc train` (its model,
        /// weights, loss and data).
        file: PathBuf,
        /// Weights (safetensors), or a run directory (its weights); needed
        /// when FILE is a .net file.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Data (as for `train`; the test split is used when there is one).
        /// Default: the run's data, else the train section's (its `test`
        /// file for text).
        #[arg(long)]
        data: Option<String>,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Which model, when the file has several.
        #[arg(long)]
        model: Option<String>,
    },
    /// Write the model's outputs (class probabilities) for .npy or IDX input.
    Predict {
        /// The .net file, or a run directory of `netc train`.
        file: PathBuf,
        /// Weights (safetensors), or a run directory (its weights); needed
        /// when FILE is a .net file.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Input: a `.npy` array or a data set path.
        #[arg(long)]
        input: String,
        /// Where to write the predictions (.npy).
        #[arg(short, long)]
        output: PathBuf,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Which model, when the file has several.
        #[arg(long)]
        model: Option<String>,
    },
    /// Complete a prompt with a language model trained on text: the prompt
    /// is read once and each sample continues one token at a time, the
    /// recurrent state carried between steps, until `<eos>` or --max-len.
    Generate {
        /// The .net file, or a run directory of `netc train`.
        file: PathBuf,
        /// Weights (safetensors) with the vocabulary they were trained
        /// with, or a run directory (its weights); needed when FILE is a
        /// .net file.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// The text to continue.
        #[arg(long, default_value = "")]
        prompt: String,
        /// New tokens at most per sample.
        #[arg(long, default_value_t = 40)]
        max_len: usize,
        /// Below 1 favours likely tokens, above 1 flattens; 0 is greedy.
        #[arg(long, default_value_t = 1.0)]
        temperature: f32,
        /// Draw only among the k most likely tokens.
        #[arg(long)]
        top_k: Option<usize>,
        /// How many completions.
        #[arg(long, default_value_t = 5)]
        samples: usize,
        /// Seed of the draws (the same seed gives the same completions).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Which model, when the file has several.
        #[arg(long)]
        model: Option<String>,
    },
    /// Write deterministic initial weights (Glorot/He) as safetensors.
    Init {
        /// The .net file.
        file: PathBuf,
        /// Where to write the weights.
        #[arg(short, long)]
        output: PathBuf,
        /// Seed of the initialization.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Which model, when the file has several.
        #[arg(long)]
        model: Option<String>,
    },
    /// Run a model on .npy inputs with compiled kernels (CPU or GPU).
    Run {
        /// The .net file.
        file: PathBuf,
        /// Weights (safetensors, as written by `netc init` or `netc train`).
        #[arg(long)]
        weights: PathBuf,
        /// Input array: `x.npy` for a one-input model, else `NAME=x.npy`
        /// (repeatable). Shape `[batch, ...]`, or one example without batch.
        #[arg(long, required = true)]
        input: Vec<String>,
        /// Write the output here (.npy) instead of printing a summary.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Where to run: `cpu` (Cranelift kernels) or `cuda` (generated PTX
        /// on GPU 0).
        #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
        device: DeviceArg,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Which model, when the file has several.
        #[arg(long)]
        model: Option<String>,
    },
    /// Write a model's inference graph with its weights as an ONNX file
    /// (opset 17; batch axis `N`, a variable-length time axis `T`, token
    /// inputs as int64 ids) for other runtimes such as onnxruntime.
    Export {
        /// The .net file, or a run directory of `netc train`.
        file: PathBuf,
        /// Weights (safetensors, as written by `netc init` or `netc
        /// train`), or a run directory (its weights); needed when FILE is a
        /// .net file.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Where to write the model (.onnx).
        #[arg(short, long)]
        output: PathBuf,
        /// Which model, when the file has several.
        #[arg(long)]
        model: Option<String>,
    },
    /// Time every kernel of a model's forward pass against the machine's
    /// measured FMA ceiling.
    Bench {
        /// The .net file.
        file: PathBuf,
        /// Batch size.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Timed repetitions.
        #[arg(long, default_value_t = 20)]
        iters: usize,
        /// Run the model both optimized and unoptimized (`-O0`) in this
        /// process and print each kernel and the time ratio.
        #[arg(long)]
        compare_opt: bool,
        /// Write one JSON object per kernel and a summary object, a line
        /// each, instead of the table.
        #[arg(long, conflicts_with = "compare_opt")]
        json: bool,
        /// Time the training step of the model's train section (its
        /// optimizer and loss, at --batch) instead of the forward pass.
        #[arg(long, conflicts_with = "compare_opt")]
        train: bool,
        /// Where to run: `cpu` (Cranelift kernels) or `cuda` (generated PTX
        /// on GPU 0).
        #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
        device: DeviceArg,
        /// Which model, when the file has several.
        #[arg(long)]
        model: Option<String>,
    },
    /// Compile a model and write an intermediate representation.
    Compile {
        /// The .net file.
        file: PathBuf,
        /// Which representation to write (default: kernels, or nothing
        /// with --explain).
        #[arg(long, value_enum)]
        emit: Option<Emit>,
        /// Print what the optimizer did: each rule that fired and how
        /// often, runner limits and stop reason, node counts and cost
        /// before and after.
        #[arg(long)]
        explain: bool,
        /// Batch size the kernels are specialized for.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Write to this file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Which model, when the file has several (default: all).
        #[arg(long)]
        model: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Emit {
    /// The dataflow graph with shapes, as written.
    Graph,
    /// The dataflow graph after the optimizer (as written with -O0).
    GraphOpt,
    /// The kernel IR: buffers and loop/contraction kernels.
    Kernels,
    /// Cranelift IR of every kernel.
    Clif,
    /// The training graph (forward with recurrent layers unrolled, loss,
    /// gradients) for the model's `train` section.
    Grad,
    /// PTX (sm_80) of every forward kernel, with each launch's geometry.
    Ptx,
    /// The kernel IR of the training step (forward, gradients, optimizer
    /// updates) of models with a train section.
    KernelsTrain,
    /// PTX of the training step (forward, gradients, optimizer updates) of
    /// models with a train section.
    PtxTrain,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    /// The host CPU.
    Cpu,
    /// An NVIDIA GPU through CUDA.
    Cuda,
}

impl From<DeviceArg> for netc_runtime::Device {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Cpu => netc_runtime::Device::Cpu,
            DeviceArg::Cuda => netc_runtime::Device::Cuda,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum KernelsArg {
    /// The best native kernels the CPU has (AVX-512 or AVX2), else
    /// Cranelift.
    Auto,
    /// Native kernels of at most AVX2 (256-bit), also on an AVX-512 CPU.
    Avx2,
    /// Always Cranelift's portable kernels.
    Cranelift,
}

/// The CPU code generator: `--kernels`, else `NETC_KERNELS`, else
/// `auto`. The environment is read here, at the edge, and nowhere in the
/// libraries.
fn kernel_path(flag: Option<KernelsArg>) -> Result<KernelPath, Failure> {
    let arg = match flag {
        Some(a) => a,
        None => match std::env::var("NETC_KERNELS") {
            Ok(v) => KernelsArg::from_str(&v, true).map_err(|_| {
                Failure::from(format!(
                    "NETC_KERNELS={v} is not a kernel path (auto, avx2 or cranelift)"
                ))
            })?,
            Err(_) => KernelsArg::Auto,
        },
    };
    Ok(match arg {
        KernelsArg::Auto => KernelPath::Auto,
        KernelsArg::Avx2 => KernelPath::Avx2,
        KernelsArg::Cranelift => KernelPath::Cranelift,
    })
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    /// One line per node with operands, attributes and shapes.
    Text,
    /// Graphviz (`netc graph f.net --format dot | dot -Tsvg > f.svg`).
    Dot,
}

/// Why a command failed: diagnostics already shown, or a message to print.
enum Failure {
    /// The file had errors, already rendered with their source excerpts.
    Reported,
    /// One line for `error: ...`.
    Message(String),
}

impl From<String> for Failure {
    fn from(msg: String) -> Self {
        Failure::Message(msg)
    }
}

impl From<&str> for Failure {
    fn from(msg: &str) -> Self {
        Failure::Message(msg.to_string())
    }
}

fn main() -> ExitCode {
    // A closed pipe (`netc summary m.net | head`) ends netc quietly, as it
    // does any Unix tool, instead of a panic in `print!`.
    #[cfg(unix)]
    // SAFETY: restoring a signal's default disposition at startup, before
    // any thread exists, touches no Rust state.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(Failure::Reported) => ExitCode::FAILURE,
        Err(Failure::Message(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Reads, parses and checks a file, printing its diagnostics; the one
/// preamble of every command.
fn load(path: &PathBuf, deny_warnings: bool) -> Result<Checked, Failure> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let name = path.display().to_string();
    let text = match netc_lang::decode(&bytes) {
        Ok(t) => t.to_string(),
        Err(d) => {
            let file = SourceFile::new(name, String::from_utf8_lossy(&bytes).into_owned());
            render::render_to_stderr(&file, &d.0);
            return Err(Failure::Reported);
        }
    };
    let file = SourceFile::new(name, text);
    let checked = match check_source(&file.text) {
        Ok(checked) => checked,
        Err(diagnostics) => {
            render::render_to_stderr(&file, &diagnostics);
            return Err(Failure::Reported);
        }
    };
    render::render_to_stderr(&file, &checked.diagnostics);
    if checked.has_errors() || (deny_warnings && !checked.diagnostics.is_empty()) {
        return Err(Failure::Reported);
    }
    Ok(checked)
}

fn selected<'a>(checked: &'a Checked, model: &Option<String>) -> Result<Vec<&'a Graph>, String> {
    match model {
        None => Ok(checked.graphs.iter().collect()),
        Some(m) => checked.graph(m).map(|g| vec![g]).ok_or_else(|| {
            let names: Vec<&str> = checked.graphs.iter().map(|g| g.name.as_str()).collect();
            format!("no model `{m}` in this file (models: {})", names.join(", "))
        }),
    }
}

fn one_graph<'a>(checked: &'a Checked, model: &Option<String>) -> Result<&'a Graph, String> {
    let gs = selected(checked, model)?;
    match gs.as_slice() {
        [g] => Ok(g),
        _ => Err(format!(
            "this file has {} models; choose one with --model",
            gs.len()
        )),
    }
}

/// The training graph of `g` for its `train` section, as `netc train`
/// builds it, with that section.
fn training_of<'c>(
    checked: &'c Checked,
    g: &Graph,
    file: &std::path::Path,
    options: &CompileOptions,
) -> Result<(TrainingGraph, &'c TrainConfig), String> {
    let cfg = checked.train_for(&g.name).ok_or_else(|| {
        format!(
            "`{}` has no `train {}` section; training needs its loss",
            file.display(),
            g.name
        )
    })?;
    let tg = Compilation::new(g, options.clone())
        .training_graph(&cfg.objective())
        .map_err(|e| format!("model `{}`: {e}", g.name))?;
    Ok((tg, cfg))
}

/// The forward graph of `g` as the driver compiles it, with the
/// optimizer's fallback and warnings shown.
fn forward(g: &Graph, options: &CompileOptions) -> Result<Forward, String> {
    let f = Compilation::new(g, options.clone())
        .forward()
        .map_err(|e| e.to_string())?;
    if let Some(r) = &f.report {
        if let Some(why) = &r.fallback {
            eprintln!(
                "warning: model `{}`: the optimizer was not applied ({why}); the model runs unoptimized",
                g.name
            );
        }
        for w in &r.warnings {
            eprintln!("warning: model `{}`: optimizer: {w}", g.name);
        }
    }
    Ok(f)
}

/// `forward` lowered for `batch`.
fn program(g: &Graph, options: &CompileOptions, batch: usize) -> Result<Program, String> {
    forward(g, options)?.lower(batch).map_err(|e| e.to_string())
}

fn threads_or_all(t: Option<usize>) -> usize {
    t.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

/// The memory plan's peak for one example, as the summary reports it.
fn memory_line(g: &Graph) -> String {
    if netc_compiler::masking::is_variable(g) {
        return "Peak memory per example: grows with the sequence length (`*` steps)\n".into();
    }
    match Compilation::new(g, CompileOptions::at(OptLevel::O0)).program(1) {
        Ok(p) => {
            let m = netc_compiler::kernel::plan::plan(&p);
            let mb = |elems: usize| elems as f64 * 4.0 / (1024.0 * 1024.0);
            format!(
                "Peak memory per example: {:.2} MB (activations {:.2} MB after reuse, {:.2} MB without)\n",
                m.peak_bytes(&p) as f64 / (1024.0 * 1024.0),
                mb(m.arena_len),
                mb(m.unshared_len)
            )
        }
        Err(e) => format!("Peak memory: unavailable ({e})\n"),
    }
}

fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let options = CompileOptions {
        level: if cli.opt_level == 0 {
            OptLevel::O0
        } else {
            OptLevel::O1
        },
        forward: OptOptions {
            time_limit: std::time::Duration::from_secs_f64(cli.opt_time_limit),
            ..OptOptions::default()
        },
    };
    let steps = cli.steps.map(|s| s as usize);
    let load_options = netc_runtime::data::LoadOptions {
        bad_images: if cli.skip_bad_images {
            netc_runtime::data::BadImages::Skip
        } else {
            netc_runtime::data::BadImages::Fail
        },
        image_cache: if cli.no_image_cache {
            None
        } else {
            cli.image_cache.clone().or_else(default_image_cache)
        },
    };
    let kernels = kernel_path(cli.kernels)?;
    let ptx = PtxOptions {
        precision: if cli.tf32 {
            Precision::Tf32
        } else {
            Precision::F32
        },
    };
    if cli.tf32 && !tf32_applies(&cli.command) {
        return Err("--tf32 applies to the GPU only: use it with --device cuda (or compile --emit ptx/ptx-train)".into());
    }
    match cli.command {
        Command::Check {
            file,
            deny_warnings,
        } => cmd_check(&file, deny_warnings),
        Command::Summary {
            file,
            model,
            device,
            batch,
        } => cmd_summary(&file, &model, device, batch, &options),
        Command::Train {
            file,
            data,
            epochs,
            batch,
            lr,
            optimizer,
            loss,
            seed,
            threads,
            checkpoint,
            resume,
            init_from,
            output,
            runs_dir,
            no_save,
            log,
            device,
            plot,
            overwrite,
            model,
        } => {
            // A run directory unless the weights go elsewhere (-o) or
            // nowhere (--no-save).
            let runs_root = (output.is_none() && !no_save)
                .then(|| runs_dir.unwrap_or_else(|| PathBuf::from(runs::DEFAULT_ROOT)));
            let args = training::TrainArgs {
                data,
                epochs,
                batch,
                lr,
                optimizer,
                loss,
                seed,
                threads: threads_or_all(threads),
                checkpoint,
                resume,
                init_from,
                output,
                runs_root,
                log,
                level: options.level,
                device: device.into(),
                kernels,
                ptx,
                plot,
                overwrite,
                load: load_options,
            };
            cmd_train(&file, &model, &args)
        }
        Command::Eval {
            file,
            weights,
            data,
            threads,
            model,
        } => {
            let inputs = Inputs::resolve(&file, weights.as_deref())?;
            cmd_eval(
                &inputs,
                &model,
                data.as_deref(),
                (threads_or_all(threads), kernels),
                load_options,
            )
        }
        Command::Predict {
            file,
            weights,
            input,
            output,
            threads,
            model,
        } => {
            let inputs = Inputs::resolve(&file, weights.as_deref())?;
            let io = (input.as_str(), output.as_path());
            cmd_predict(
                &inputs,
                &model,
                io,
                (threads_or_all(threads), kernels),
                load_options,
            )
        }
        Command::Init {
            file,
            output,
            seed,
            model,
        } => cmd_init(&file, &model, &output, seed),
        Command::Generate {
            file,
            weights,
            prompt,
            max_len,
            temperature,
            top_k,
            samples,
            seed,
            threads,
            model,
        } => {
            let inputs = Inputs::resolve(&file, weights.as_deref())?;
            let checked = load(&inputs.net, false)?;
            let g = one_graph(&checked, &inputs.model(&model))?;
            let req = generating::Request {
                prompt: &prompt,
                max_len,
                sampling: netc_runtime::generate::Sampling { temperature, top_k },
                samples,
                seed,
                threads: threads_or_all(threads),
                kernels,
            };
            for c in generating::generate(g, &inputs.weights, &req)? {
                // A completion cut by --max-len is marked, so a reader
                // can tell it from one the model ended.
                println!("{}{}", c.text, if c.ended { "" } else { " …" });
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            file,
            weights,
            input,
            output,
            threads,
            device,
            model,
        } => {
            let checked = load(&file, false)?;
            let g = one_graph(&checked, &model)?;
            let g = at_steps(g, steps.or_else(|| running::input_steps(g, &input)))?;
            let f = forward(&g, &options)?;
            let (threads, device) = (threads_or_all(threads), device.into());
            print!(
                "{}",
                running::run(
                    &f,
                    &weights,
                    &input,
                    output.as_deref(),
                    threads,
                    device,
                    (kernels, ptx),
                )?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Export {
            file,
            weights,
            output,
            model,
        } => {
            let inputs = Inputs::resolve(&file, weights.as_deref())?;
            let checked = load(&inputs.net, false)?;
            let g = one_graph(&checked, &inputs.model(&model))?;
            let w = netc_runtime::Weights::load(&inputs.weights).map_err(|e| e.to_string())?;
            let m = netc_runtime::onnx::write(g, &w, &output).map_err(|e| e.to_string())?;
            let graph = m.graph.unwrap_or_default();
            println!(
                "wrote model `{}` to {} (ONNX opset {}: {} nodes, {} initializers)",
                g.name,
                output.display(),
                netc_runtime::onnx::OPSET,
                graph.node.len(),
                graph.initializer.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            file,
            batch,
            threads,
            iters,
            compare_opt,
            json,
            train,
            device,
            model,
        } => {
            let checked = load(&file, false)?;
            let g = at_steps(one_graph(&checked, &model)?, steps)?;
            let train = match train {
                false => None,
                true => Some(checked.train_for(&g.name).ok_or_else(|| {
                    format!(
                        "--train: model `{}` has no train section in {}",
                        g.name,
                        file.display()
                    )
                })?),
            };
            let bench = Bench {
                batch,
                threads: threads_or_all(threads),
                iters: iters.max(1),
                compare_opt,
                json,
                train,
                device,
                kernels,
                ptx,
            };
            print!("{}", bench_report(&g, &options, &bench)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Compile {
            file,
            emit,
            explain,
            batch,
            output,
            model,
        } => {
            let emit = match (emit, explain) {
                (Some(e), _) => Some(e),
                (None, false) => Some(Emit::Kernels),
                (None, true) => None,
            };
            let compile = Compile {
                emit,
                explain,
                batch,
                output,
                steps,
                ptx,
            };
            cmd_compile(&file, &model, &compile, &options)
        }
        Command::Graph {
            file,
            format,
            model,
        } => cmd_graph(&file, &model, format),
    }
}

/// What `eval`, `predict` and `generate` read: a `.net` file and weights,
/// either given as such or taken from a run directory of `netc train`.
struct Inputs {
    /// The `.net` file (a run directory's `model.net`).
    net: PathBuf,
    /// The weights file.
    weights: PathBuf,
    /// The run the weights come from, if they come from a run directory.
    run: Option<runs::Run>,
}

impl Inputs {
    /// `file` is a `.net` file or a run directory; `weights` a weights
    /// file, a run directory, or (with a run directory as `file`) absent.
    /// The run whose weights are used supplies the defaults (model name,
    /// loss, data).
    fn resolve(file: &std::path::Path, weights: Option<&std::path::Path>) -> Result<Self, String> {
        let file_run = if file.is_dir() {
            Some(runs::Run::open(file)?)
        } else {
            None
        };
        let net = match &file_run {
            Some(r) => r.model_file()?,
            None => file.to_path_buf(),
        };
        let (weights, run) = match weights {
            Some(w) if w.is_dir() => {
                let r = runs::Run::open(w)?;
                (r.weights_file()?, Some(r))
            }
            Some(w) => (w.to_path_buf(), None),
            None => match file_run {
                Some(r) => (r.weights_file()?, Some(r)),
                None if !file.exists() => {
                    return Err(format!(
                        "`{}` does not exist (expected a .net file or a run directory of `netc train`)",
                        file.display()
                    ))
                }
                None => {
                    return Err(format!(
                        "no weights: pass --weights FILE with the .net file `{}`, or give a run directory of `netc train` instead of it",
                        file.display()
                    ))
                }
            },
        };
        Ok(Inputs { net, weights, run })
    }

    /// `--model`, else the model the run trained.
    fn model(&self, model: &Option<String>) -> Option<String> {
        model
            .clone()
            .or_else(|| self.run.as_ref().and_then(|r| r.model.clone()))
    }
}

/// `netc eval`. The loss and the default data come from the run the
/// weights belong to, else from the model's train section.
fn cmd_eval(
    inputs: &Inputs,
    model: &Option<String>,
    data: Option<&str>,
    (threads, kernels): (usize, KernelPath),
    load_options: netc_runtime::data::LoadOptions,
) -> Result<ExitCode, Failure> {
    let checked = load(&inputs.net, false)?;
    let g = one_graph(&checked, &inputs.model(model))?;
    let section = checked.train_for(&g.name);
    let run = inputs.run.as_ref();
    let loss = run
        .and_then(|r| r.loss)
        .or(section.map(|t| t.loss))
        .unwrap_or(netc_compiler::train::Loss::CrossEntropy);
    let data = match data {
        Some(d) => d.to_string(),
        None => match (run.and_then(|r| r.eval_data.clone()), section) {
            (Some(d), _) => d,
            // A text data set's test file is what training evaluated last.
            (None, Some(t)) => match t.test.as_ref().or(t.data.as_ref()) {
                Some(d) => training::resolve_data(d, &inputs.net),
                None => return Err(no_eval_data(&inputs.net).into()),
            },
            (None, None) => return Err(no_eval_data(&inputs.net).into()),
        },
    };
    print!(
        "{}",
        training::run_eval(
            g,
            loss,
            &inputs.weights,
            &data,
            threads,
            kernels,
            load_options
        )?
    );
    Ok(ExitCode::SUCCESS)
}

/// The error of `eval` without data.
fn no_eval_data(net: &std::path::Path) -> String {
    format!(
        "no data: pass --data PATH (the train section of `{}` names none)",
        net.display()
    )
}

/// `netc predict`; `io` is the input and where the predictions go.
fn cmd_predict(
    inputs: &Inputs,
    model: &Option<String>,
    io: (&str, &std::path::Path),
    (threads, kernels): (usize, KernelPath),
    load_options: netc_runtime::data::LoadOptions,
) -> Result<ExitCode, Failure> {
    let checked = load(&inputs.net, false)?;
    let g = one_graph(&checked, &inputs.model(model))?;
    let (input, output) = io;
    println!(
        "{}",
        training::run_predict(
            g,
            &inputs.weights,
            input,
            output,
            threads,
            kernels,
            load_options
        )?
    );
    Ok(ExitCode::SUCCESS)
}

/// `netc init`.
fn cmd_init(
    file: &PathBuf,
    model: &Option<String>,
    output: &std::path::Path,
    seed: u64,
) -> Result<ExitCode, Failure> {
    let checked = load(file, false)?;
    println!(
        "{}",
        running::init(one_graph(&checked, model)?, output, seed)?
    );
    Ok(ExitCode::SUCCESS)
}

/// `netc train`.
fn cmd_train(
    file: &PathBuf,
    model: &Option<String>,
    args: &training::TrainArgs,
) -> Result<ExitCode, Failure> {
    let checked = load(file, false)?;
    let g = one_graph(&checked, model)?;
    let cfg = checked
        .train_for(&g.name)
        .cloned()
        .ok_or_else(|| format!("`{}` has no `train {}` section", file.display(), g.name))?;
    Ok(training::run_train(g, &cfg, file, args)?)
}

/// `netc compile`'s settings.
struct Compile {
    /// What to write; `None` with `--explain` alone.
    emit: Option<Emit>,
    explain: bool,
    batch: usize,
    output: Option<PathBuf>,
    /// `--steps`: the length of a variable-length input.
    steps: Option<usize>,
    /// `--tf32`: how `--emit ptx`/`ptx-train` generate the PTX.
    ptx: PtxOptions,
}

/// `netc compile`.
fn cmd_compile(
    file: &PathBuf,
    model: &Option<String>,
    c: &Compile,
    options: &CompileOptions,
) -> Result<ExitCode, Failure> {
    let checked = load(file, false)?;
    let mut text = String::new();
    for g in selected(&checked, model)? {
        let g = &*at_steps(g, c.steps)?;
        let f = forward(g, options)?;
        if c.explain {
            print!("{}", explanation(g, &f));
        }
        if let Some(emit) = c.emit {
            text.push_str(&emitted(emit, &checked, g, &f, file, options, c)?);
        }
    }
    match &c.output {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `netc graph`.
fn cmd_graph(
    file: &PathBuf,
    model: &Option<String>,
    format: GraphFormat,
) -> Result<ExitCode, Failure> {
    let checked = load(file, false)?;
    for g in selected(&checked, model)? {
        match format {
            GraphFormat::Text => print!("{}", graph_text::graph_text(g)),
            GraphFormat::Dot => print!("{}", graph_text::graph_dot(g)),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `netc check`.
fn cmd_check(file: &PathBuf, deny_warnings: bool) -> Result<ExitCode, Failure> {
    let checked = load(file, deny_warnings)?;
    for g in &checked.graphs {
        let c = summary::param_counts(g, &[]);
        println!(
            "ok: model `{}` — {} layers, {} parameters",
            g.name,
            g.layer_order().len(),
            c.total
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `netc summary`.
fn cmd_summary(
    file: &PathBuf,
    model: &Option<String>,
    device: DeviceArg,
    batch: Option<usize>,
    options: &CompileOptions,
) -> Result<ExitCode, Failure> {
    let checked = load(file, false)?;
    for g in selected(&checked, model)? {
        let cfg = checked.train_for(&g.name);
        let frozen = cfg.map(|t| t.freeze.clone()).unwrap_or_default();
        print!("{}", summary::summary(g, &frozen));
        print!("{}", memory_line(g));
        if let DeviceArg::Cuda = device {
            let batch = batch.or(cfg.map(|c| c.batch)).unwrap_or(64).max(1);
            print!("{}", device_memory_lines(g, cfg, batch, options)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `summary --device cuda`: the device footprint of the training step (when
/// the model has a train section) and of a forward pass at `batch`.
fn device_memory_lines(
    g: &Graph,
    cfg: Option<&TrainConfig>,
    batch: usize,
    options: &CompileOptions,
) -> Result<String, String> {
    use netc_runtime::cuda::footprint::{per_buffer_bytes, Footprint};
    if netc_compiler::masking::is_variable(g) {
        return Ok(
            "Device memory: grows with the sequence length (`*` steps); see `train --device cuda`\n"
                .into(),
        );
    }
    let mut out = String::new();
    let line = |what: &str, p: &Program, f: Footprint| {
        format!(
            "Device memory for {what} at batch {batch}: {f}; one allocation per buffer: {}\n",
            netc_runtime::memory::bytes(per_buffer_bytes(p))
        )
    };
    if let Some(cfg) = cfg {
        let tg = Compilation::new(g, options.clone())
            .training_graph(&cfg.objective())
            .map_err(|e| e.to_string())?;
        let tp = lower_training(&tg, cfg, batch).map_err(|e| e.to_string())?;
        out.push_str(&line(
            "a training step",
            &tp.program,
            Footprint::training(&tp, cfg.loss),
        ));
    }
    let p = program(g, options, batch)?;
    out.push_str(&line("a forward pass", &p, Footprint::of(&p)));
    Ok(out)
}

/// `netc bench`'s settings.
struct Bench<'c> {
    batch: usize,
    threads: usize,
    iters: usize,
    compare_opt: bool,
    json: bool,
    /// `--train`: the train section whose step is timed.
    train: Option<&'c TrainConfig>,
    device: DeviceArg,
    kernels: KernelPath,
    /// `--tf32`: how the GPU's PTX is generated.
    ptx: PtxOptions,
}

/// Whether `--tf32` means something for `command`: a run on the GPU, or
/// PTX being written.
fn tf32_applies(command: &Command) -> bool {
    match command {
        Command::Train { device, .. }
        | Command::Run { device, .. }
        | Command::Bench { device, .. } => {
            matches!(device, DeviceArg::Cuda)
        }
        Command::Compile { emit, .. } => matches!(emit, Some(Emit::Ptx | Emit::PtxTrain)),
        _ => false,
    }
}

/// `netc bench`: the report to print.
fn bench_report(g: &Graph, options: &CompileOptions, b: &Bench) -> Result<String, String> {
    if let Some(cfg) = b.train {
        if let DeviceArg::Cuda = b.device {
            return Err("--train is not supported with --device cuda yet".into());
        }
        let tg = Compilation::new(g, options.clone())
            .training_graph(&cfg.objective())
            .map_err(|e| e.to_string())?;
        let tp = lower_training(&tg, cfg, b.batch).map_err(|e| e.to_string())?;
        return running::bench(g, tp.program, b.threads, b.kernels, b.iters, 0, b.json);
    }
    if let DeviceArg::Cuda = b.device {
        if b.compare_opt {
            return Err("--compare-opt is not supported with --device cuda yet".into());
        }
        let p = program(g, options, b.batch)?;
        return gpu_bench::bench_cuda(g, p, b.iters, &b.ptx, 0, &|batch| {
            program(g, options, batch).ok()
        });
    }
    if b.compare_opt {
        let base = program(g, &CompileOptions::at(OptLevel::O0), b.batch)?;
        let optimized = CompileOptions {
            level: OptLevel::O1,
            ..options.clone()
        };
        let fast = program(g, &optimized, b.batch)?;
        return running::bench_compare(g, base, fast, b.threads, b.kernels, b.iters, 0);
    }
    let p = program(g, options, b.batch)?;
    running::bench(g, p, b.threads, b.kernels, b.iters, 0, b.json)
}

/// `netc compile --explain`: what the optimizer did to `g`.
fn explanation(g: &Graph, f: &Forward) -> String {
    match &f.report {
        Some(r) => explain(&g.name, r, true),
        None => format!("optimizer report for model `{}`\n  not run (-O0)\n", g.name),
    }
}

/// `netc compile --emit`: the representation `emit` of `g`, whose forward
/// graph is `f`.
fn emitted(
    emit: Emit,
    checked: &Checked,
    g: &Graph,
    f: &Forward,
    file: &std::path::Path,
    options: &CompileOptions,
    c: &Compile,
) -> Result<String, String> {
    let (batch, ptx) = (c.batch, &c.ptx);
    let text = |e: &dyn std::fmt::Display| e.to_string();
    Ok(match emit {
        Emit::Graph => graph_text::graph_text(g),
        Emit::GraphOpt => graph_text::graph_text(&f.graph),
        Emit::Kernels => program_text(&f.lower(batch).map_err(|e| text(&e))?),
        Emit::Clif => netc_runtime::exec::program_clif(&f.lower(batch).map_err(|e| text(&e))?)
            .map_err(|e| text(&e))?,
        Emit::Grad => graph_text::graph_text(&training_of(checked, g, file, options)?.0.graph),
        Emit::Ptx => {
            program_ptx_with(&f.lower(batch).map_err(|e| text(&e))?, ptx)
                .map_err(|e| text(&e))?
                .text
        }
        Emit::KernelsTrain | Emit::PtxTrain => {
            let (tg, cfg) = training_of(checked, g, file, options)?;
            let tp = lower_training(&tg, cfg, batch).map_err(|e| text(&e))?;
            if matches!(emit, Emit::KernelsTrain) {
                program_text(&tp.program)
            } else {
                program_ptx_with(&tp.program, ptx)
                    .map_err(|e| text(&e))?
                    .text
            }
        }
    })
}
