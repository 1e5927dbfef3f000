//! A training step as one kernel program: the lowered training graph
//! (forward, loss, gradients) followed by the gradient statistics (global
//! norm, penalty, clip scale), one update kernel per trainable parameter,
//! and the store of batchnorm's new running statistics.

use super::ir::*;
use super::lower::{lower, LowerError};
use super::optim::{
    gradient_stats_kernel, gradient_stats_partial, slot, state_buffers, stats_chunks,
    update_kernel, GradientPolicy, ParamSlot, PARTIAL_STRIDE,
};
use crate::autodiff::TrainingGraph;
use crate::op::{Op, ParamRole};
use crate::train::TrainConfig;

/// A compiled-to-IR training step and the buffers the trainer uses.
#[derive(Clone, Debug)]
pub struct TrainingProgram {
    /// Forward, backward and update kernels.
    pub program: Program,
    /// The `hyper` input (learning rate, bias corrections, clip scale).
    pub hyper: BufId,
    /// Per-example loss `[N]`.
    pub loss: BufId,
    /// The model's prediction `[N, ...]`.
    pub prediction: BufId,
    /// Dropout mask inputs and their rates.
    pub masks: Vec<(String, f32)>,
    /// Every trained parameter.
    pub params: Vec<ParamSlot>,
}

/// Lowers `tg` for `batch` and appends the optimizer of `cfg`.
pub fn training_program(
    tg: &TrainingGraph,
    cfg: &TrainConfig,
    batch: usize,
) -> Result<TrainingProgram, LowerError> {
    let mut g = tg.graph.clone();
    g.outputs.push(("prediction".into(), tg.prediction));
    let mut p = lower(&g, batch)?;
    let out = |p: &Program, name: &str| p.outputs.iter().find(|o| o.name == name).map(|o| o.buf);
    let loss = out(&p, "loss").ok_or(LowerError::Cycle)?;
    let prediction = out(&p, "prediction").ok_or(LowerError::Cycle)?;
    let hyper = p.buffers.len();
    p.buffers.push(Buffer {
        name: "hyper".into(),
        len: slot::COUNT,
        kind: BufKind::Input("hyper".into()),
    });
    p.inputs.push(Binding {
        name: "hyper".into(),
        buf: hyper,
        shape: vec![slot::COUNT],
        vocab: None,
    });
    let states = state_buffers(&cfg.optimizer);
    let mut params = Vec::new();
    for (name, pnode, _) in &tg.grads {
        let (Some(pb), Some(gb)) = (
            p.params.iter().find(|b| &b.name == name).map(|b| b.buf),
            out(&p, &format!("grad:{name}")),
        ) else {
            continue;
        };
        let len = p.buffers[pb].len;
        let mut state = |tag: &str| {
            p.buffers.push(Buffer {
                name: format!("{tag}:{name}"),
                len,
                kind: BufKind::State(format!("{tag}:{name}")),
            });
            p.buffers.len() - 1
        };
        let state1 = (states >= 1).then(|| state("m"));
        let state2 = (states >= 2).then(|| state("v"));
        let penalized = matches!(
            g.node(*pnode).op,
            Op::Param {
                role: ParamRole::Weight
            }
        );
        params.push(ParamSlot {
            name: name.clone(),
            param: pb,
            grad: gb,
            state1,
            state2,
            len,
            penalized,
        });
    }
    let policy = GradientPolicy {
        l1: cfg.l1,
        l2: cfg.l2,
        clip_value: cfg.clip_value,
        clip_norm: cfg.clip_norm,
    };
    // Always: the trainer checks the norm for divergence every step.
    // Large gradients first sum in chunks, in parallel.
    let mut partials = Vec::with_capacity(params.len());
    for s in &params {
        let chunks = stats_chunks(s);
        partials.push((chunks > 0).then(|| {
            p.buffers.push(Buffer {
                name: format!("gradient_stats:{}", s.name),
                len: PARTIAL_STRIDE * chunks,
                kind: BufKind::Temp,
            });
            let buf = p.buffers.len() - 1;
            p.kernels.push(Kernel {
                name: format!("gradient_stats:{}", s.name),
                body: KernelBody::Loop(gradient_stats_partial(s, buf, &policy)),
            });
            buf
        }));
    }
    p.kernels.push(Kernel {
        name: "gradient_stats".into(),
        body: KernelBody::Loop(gradient_stats_kernel(&params, &partials, hyper, &policy)),
    });
    for s in &params {
        p.kernels.push(Kernel {
            name: format!("update:{}", s.name),
            body: KernelBody::Loop(update_kernel(&cfg.optimizer, s, hyper, &policy)),
        });
    }
    // Batchnorm running statistics: the step's new values (outputs
    // `running:<param>`) stored back into the parameters.
    let running: Vec<(BufId, BufId)> = p
        .outputs
        .iter()
        .filter_map(|o| {
            let name = o.name.strip_prefix("running:")?;
            let pb = p.params.iter().find(|b| b.name == name)?;
            Some((o.buf, pb.buf))
        })
        .collect();
    for (from, to) in running {
        let len = p.buffers[to].len;
        p.kernels.push(Kernel {
            name: format!("store:{}", p.buffers[to].name),
            body: KernelBody::Loop(LoopKernel {
                vars: 1,
                scalars: 0,
                body: vec![Stmt::Loop {
                    var: 0,
                    extent: len,
                    body: vec![Stmt::Store {
                        buf: to,
                        index: Index::var(0, 1),
                        value: Expr::load(from, Index::var(0, 1)),
                    }],
                }],
            }),
        });
    }
    let masks = tg
        .masks
        .iter()
        .map(|(m, rate)| (g.node(*m).name.clone(), *rate))
        .collect();
    Ok(TrainingProgram {
        program: p,
        hyper,
        loss,
        prediction,
        masks,
        params,
    })
}
