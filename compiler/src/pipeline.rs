//! The back-end driver: every way a checked model becomes kernel IR goes
//! through here, so the CLI, the runtime's training loop, the benchmarks
//! and the tests compile a model the same way.
//!
//! ```text
//! check ─▶ optimize ─▶ lower                          (inference: Compilation::forward, ::program)
//!      └─▶ optimize ─▶ differentiate ─▶ optimize ─▶ lower   (training: ::training_graph, lower_training)
//! ```
//!
//! [`check_source`] is the first stage; a [`Compilation`] holds one of the
//! checked graphs with its [`CompileOptions`] and runs the rest.
//!
//! Recurrent layers are always unrolled before lowering and before
//! autodiff, even at [`OptLevel::O0`]: the kernel lowering and the
//! gradient rules exist for the unrolled cells only. At `-O0` the
//! unrolling pass is the optimizer's pass before autodiff
//! ([`OptOptions::before_autodiff`]: unrolling and alias cleanup, no fusion,
//! no inference rewrites), run only when the graph has a recurrent layer;
//! everything else is skipped.
//!
//! This module depends on `autodiff`, `opt` and `kernel`; none of them
//! depends on it.

use crate::autodiff::{differentiate, AutodiffError, TrainingGraph};
use crate::check::{check, Checked};
use crate::graph::{Graph, NodeId};
use crate::kernel::ir::Program;
use crate::kernel::lower::{lower, LowerError};
use crate::kernel::training::{training_program, TrainingProgram};
use crate::op::Op;
use crate::opt::{optimize, OptOptions, OptReport};
use crate::train::{Objective, TrainConfig};
use netc_lang::Diagnostic;
use thiserror::Error;

/// Why a model could not be compiled.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PipelineError {
    /// Lowering to kernel IR failed.
    #[error(transparent)]
    Lower(#[from] LowerError),
    /// Building the training graph failed.
    #[error(transparent)]
    Autodiff(#[from] AutodiffError),
    /// The optimizer could not unroll the recurrent layers of the forward
    /// graph, which lowering needs.
    #[error("could not unroll the recurrent layers: {0}")]
    Unroll(String),
    /// The optimizer could not unroll the recurrent layers before autodiff.
    #[error("could not unroll the recurrent layers for training: {0}")]
    TrainingUnroll(String),
    /// A model with an input of any length was not given one
    /// (`masking::instantiate`): compiled at its placeholder length it
    /// would silently run one unmasked step.
    #[error("model `{0}` has an input of any length (`*` steps); give it a length first")]
    NoLength(String),
}

/// Whether the graph optimizer runs (the CLI's `-O`). Not to be confused
/// with Cranelift's `codegen::cpu::OptLevel`, which is per kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OptLevel {
    /// No optimizer beyond unrolling recurrent layers.
    O0,
    /// The optimizer on the forward graph and, for training, before and
    /// after autodiff.
    #[default]
    O1,
}

/// How a [`Compilation`] compiles.
#[derive(Clone, Debug, PartialEq)]
pub struct CompileOptions {
    /// Whether the optimizer runs.
    pub level: OptLevel,
    /// The optimizer's limits on the forward graph at [`OptLevel::O1`],
    /// and for unrolling its recurrent layers at every level. The
    /// training passes keep their own defaults.
    pub forward: OptOptions,
}

impl Default for CompileOptions {
    /// `-O1` with the optimizer's default limits.
    fn default() -> Self {
        CompileOptions {
            level: OptLevel::O1,
            forward: OptOptions::default(),
        }
    }
}

impl CompileOptions {
    /// Default limits at `level`.
    pub fn at(level: OptLevel) -> Self {
        CompileOptions {
            level,
            ..CompileOptions::default()
        }
    }
}

/// Parses and checks `text`, the first stage of every compilation. `Err`
/// holds the parse errors; a parsed file always yields a [`Checked`],
/// whose diagnostics say whether its graphs may be compiled.
pub fn check_source(text: &str) -> Result<Checked, Vec<Diagnostic>> {
    let ast = netc_lang::parse(text).map_err(|d| d.0)?;
    Ok(check(&ast))
}

/// One checked model and how to compile it: the compilation context every
/// back-end stage runs in.
#[derive(Clone, Debug)]
pub struct Compilation<'g> {
    model: &'g Graph,
    options: CompileOptions,
}

/// The forward graph as lowered, with what the optimizer reported.
#[derive(Clone, Debug)]
pub struct Forward {
    /// The graph: optimized at `-O1`, recurrent layers unrolled always.
    pub graph: Graph,
    /// The optimizer's report at `-O1`; `None` at `-O0`.
    pub report: Option<OptReport>,
}

impl Forward {
    /// Lowers the forward graph for `batch`.
    pub fn lower(&self, batch: usize) -> Result<Program, PipelineError> {
        Ok(lower(&self.graph, batch)?)
    }
}

impl<'g> Compilation<'g> {
    /// A compilation of `model`, a graph of a [`Checked`] without errors.
    pub fn new(model: &'g Graph, options: CompileOptions) -> Self {
        Compilation { model, options }
    }

    /// The model as written.
    pub fn model(&self) -> &'g Graph {
        self.model
    }

    /// `Err` for a variable-length model not instantiated at a length.
    fn has_length(&self) -> Result<(), PipelineError> {
        if crate::masking::unfixed_steps(self.model).iter().any(|&u| u) {
            return Err(PipelineError::NoLength(self.model.name.clone()));
        }
        Ok(())
    }

    /// The options this compilation runs with.
    pub fn options(&self) -> &CompileOptions {
        &self.options
    }

    /// The forward graph to lower: optimized at `-O1`; recurrent layers
    /// unrolled at every level (also when the optimizer fell back to the
    /// graph as written).
    pub fn forward(&self) -> Result<Forward, PipelineError> {
        self.has_length()?;
        let (graph, report) = match self.options.level {
            OptLevel::O0 => (self.model.clone(), None),
            OptLevel::O1 => {
                let (g, r) = optimize(self.model, &self.options.forward);
                (g, Some(r))
            }
        };
        let graph = if recurrent_layer(&graph).is_some() {
            // Unrolling runs under the same limits as the forward
            // optimizer (`--opt-time-limit` included), rewrites off.
            let limits = OptOptions {
                inference: false,
                fusion: false,
                ..self.options.forward.clone()
            };
            unroll(&graph, &limits).map_err(PipelineError::Unroll)?.0
        } else {
            graph
        };
        Ok(Forward { graph, report })
    }

    /// [`forward`](Self::forward) lowered for `batch`.
    pub fn program(&self, batch: usize) -> Result<Program, PipelineError> {
        self.forward()?.lower(batch)
    }

    /// The training graph for `objective`: [`training_forward`], then
    /// autodiff, then (at `-O1`) [`optimize_training`].
    pub fn training_graph(&self, objective: &Objective) -> Result<TrainingGraph, PipelineError> {
        self.has_length()?;
        let (forward, _) = training_forward(self.model, self.options.level)?;
        let frozen = objective.frozen_nodes(&forward);
        let tg = differentiate(&forward, objective.loss, objective.targets, &frozen)?;
        Ok(match self.options.level {
            OptLevel::O0 => tg,
            OptLevel::O1 => optimize_training(tg).0,
        })
    }

    /// The training step of `cfg` for `batch`: the training graph of its
    /// objective, lowered, with its optimizer's update kernels.
    pub fn training_program(
        &self,
        cfg: &TrainConfig,
        batch: usize,
    ) -> Result<TrainingProgram, PipelineError> {
        lower_training(&self.training_graph(&cfg.objective())?, cfg, batch)
    }
}

/// Lowers a training graph for `batch` and appends the updates of `cfg`'s
/// optimizer (for callers that build the graph once and lower it later).
pub fn lower_training(
    tg: &TrainingGraph,
    cfg: &TrainConfig,
    batch: usize,
) -> Result<TrainingProgram, PipelineError> {
    Ok(training_program(tg, cfg, batch)?)
}

fn recurrent_layer(g: &Graph) -> Option<NodeId> {
    g.g.node_indices()
        .find(|n| matches!(g.node(*n).op, Op::Recurrent { .. }))
}

/// E-nodes one unrolled step adds, at most: entries and nodes of its time
/// slice, cell, state slice and mask steps.
const NODES_PER_STEP: usize = 16;

/// The optimizer's pass before autodiff over `g`; `Err` says why a
/// recurrent layer is left. The e-node limit grows with the steps to
/// unroll, so a long sequence through many layers (which checks fine) is
/// not cut off by a limit sized for fusion.
fn unroll(g: &Graph, limits: &OptOptions) -> Result<(Graph, OptReport), String> {
    let steps: usize =
        g.g.node_indices()
            .filter(|n| matches!(g.node(*n).op, Op::Recurrent { .. }))
            .filter_map(|n| {
                let x = *g.inputs_of(n).first()?;
                g.node(x).shape.as_ref()?.0.first().copied()
            })
            .sum();
    let need = g.g.node_count() * 4 + steps * NODES_PER_STEP;
    let limits = OptOptions {
        node_limit: limits.node_limit.max(need),
        ..limits.clone()
    };
    let (out, report) = optimize(g, &limits);
    if let Some(n) = recurrent_layer(&out) {
        return Err(report.fallback.clone().unwrap_or_else(|| {
            format!(
                "`{}` was not unrolled (stopped by {})",
                out.node(n).name,
                report.stop_reason
            )
        }));
    }
    Ok((out, report))
}

/// The forward graph autodiff runs over: `g` with its recurrent layers
/// unrolled (and, at `-O1`, the other training-safe rewrites). The report
/// is `None` when the optimizer did not run.
pub fn training_forward(
    g: &Graph,
    level: OptLevel,
) -> Result<(Graph, Option<OptReport>), PipelineError> {
    if level == OptLevel::O0 && recurrent_layer(g).is_none() {
        return Ok((g.clone(), None));
    }
    let (out, report) =
        unroll(g, &OptOptions::before_autodiff()).map_err(PipelineError::TrainingUnroll)?;
    Ok((out, Some(report)))
}

/// Runs the optimizer over a training graph (fusion on, inference
/// rewrites off) and finds the trainer's nodes again in the result. On
/// any problem the input is returned unchanged and the report says why.
pub fn optimize_training(tg: TrainingGraph) -> (TrainingGraph, OptReport) {
    let mut g = tg.graph.clone();
    // The prediction is read by the trainer: keep it an output while optimizing.
    g.outputs.push((PREDICTION.into(), tg.prediction));
    let opts = OptOptions {
        inference: false,
        ..OptOptions::default()
    };
    let (mut out, mut report) = optimize(&g, &opts);
    if report.fallback.is_some() {
        return (tg, report);
    }
    match relocate(&tg, &mut out) {
        Some(found) => (found, report),
        None => {
            report.fallback = Some("a node the trainer reads was lost by the optimizer".into());
            (tg, report)
        }
    }
}

const PREDICTION: &str = "prediction";

/// `tg`'s nodes in `out`, the optimized form of `tg.graph` plus the
/// prediction output: outputs by name, inputs and parameters by name.
fn relocate(tg: &TrainingGraph, out: &mut Graph) -> Option<TrainingGraph> {
    let pos = out.outputs.iter().position(|(n, _)| n == PREDICTION)?;
    let prediction = out.outputs.remove(pos).1;
    let output = |out: &Graph, name: &str| {
        out.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| *id)
    };
    let leaf = |out: &Graph, name: &str| -> Option<NodeId> {
        out.g.node_indices().find(|n| {
            let node = out.node(*n);
            node.name == name && matches!(node.op, Op::Input { .. } | Op::Param { .. })
        })
    };
    let name_of = |id: NodeId| tg.graph.node(id).name.clone();
    let loss = output(out, &name_of(tg.loss)).or_else(|| output(out, "loss"))?;
    let target = leaf(out, &name_of(tg.target))?;
    let mut grads = Vec::new();
    for (name, _, _) in &tg.grads {
        grads.push((
            name.clone(),
            leaf(out, name)?,
            output(out, &format!("grad:{name}"))?,
        ));
    }
    let mut masks = Vec::new();
    for (m, rate) in &tg.masks {
        masks.push((leaf(out, &name_of(*m))?, *rate));
    }
    Some(TrainingGraph {
        graph: out.clone(),
        prediction,
        target,
        loss,
        grads,
        masks,
    })
}
