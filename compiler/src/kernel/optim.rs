//! Optimizer updates as kernels: sgd, momentum (optionally Nesterov) and
//! Adam/AdamW, with gradient clipping by value or by global norm and L1/L2
//! penalties. Hyperparameters that change during training (learning rate,
//! Adam's bias corrections, the clipping scale) live in a small `hyper`
//! buffer the trainer writes before each step, so one compiled program
//! serves the whole run.
//!
//! The gradient an update applies is, in this order: the data gradient
//! plus the L1/L2 penalty gradients (the full gradient of the loss the
//! trainer logs), scaled by the global-norm clip computed from that full
//! gradient, then clamped element-wise by `clip_value` — as Keras does
//! with penalties written as regularizers.
//!
//! Constants derived from hyper-parameters (`1 − β`, `2λ`) are computed in
//! f64 and rounded to f32 once.

use super::ir::*;
use crate::train::Optimizer;

/// Slots of the `hyper` buffer.
pub mod slot {
    /// Learning rate of this step (after the schedule).
    pub const LR: usize = 0;
    /// `1 / (1 − β1^t)` (Adam).
    pub const BC1: usize = 1;
    /// `1 / (1 − β2^t)` (Adam).
    pub const BC2: usize = 2;
    /// Gradient scale from global-norm clipping (1 when not clipping);
    /// written by the gradient-statistics kernel.
    pub const CLIP: usize = 3;
    /// Written by the step: the squared global norm of the full gradient
    /// (penalties included). Non-finite when any gradient element is, so
    /// the trainer checks this one value for divergence.
    pub const NORM2: usize = 4;
    /// Written by the step: the L1/L2 penalty `λ₁Σ|w| + λ₂Σw²` at the
    /// weights the loss was computed with (0 without penalties).
    pub const PENALTY: usize = 5;
    /// Number of slots.
    pub const COUNT: usize = 6;
}

/// One trainable parameter and the buffers its update uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSlot {
    /// Parameter name.
    pub name: String,
    /// The parameter's buffer.
    pub param: BufId,
    /// Its gradient's buffer.
    pub grad: BufId,
    /// First state buffer (momentum velocity or Adam's m), if the optimizer has one.
    pub state1: Option<BufId>,
    /// Second state buffer (Adam's v).
    pub state2: Option<BufId>,
    /// Elements.
    pub len: usize,
    /// Whether L1/L2 penalties apply (weights, not biases).
    pub penalized: bool,
}

/// Penalties and clipping applied to gradients before the update.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GradientPolicy {
    /// `λ` of `λ·Σ|w|`.
    pub l1: f64,
    /// `λ` of `λ·Σw²`.
    pub l2: f64,
    /// Clip each element to `[−v, v]`.
    pub clip_value: Option<f64>,
    /// Scale the gradients to at most this global L2 norm (slot `CLIP`).
    pub clip_norm: Option<f64>,
}

/// An f32 constant from an f64 value, rounded once.
fn c(x: f64) -> Expr {
    Expr::Const(x as f32)
}

fn at(v: Var) -> Index {
    Index::var(v, 1)
}

fn hyper(h: BufId, s: usize) -> Expr {
    Expr::load(h, Index::constant(s as i64))
}

/// The full gradient of element `ix`: the data gradient plus the penalties'.
fn full_gradient(p: &ParamSlot, policy: &GradientPolicy, ix: Index) -> Expr {
    let w = Expr::load(p.param, ix.clone());
    let mut g = Expr::load(p.grad, ix);
    if p.penalized && policy.l2 > 0.0 {
        g = g.bin(BinOp::Add, c(2.0 * policy.l2).bin(BinOp::Mul, w.clone()));
    }
    if p.penalized && policy.l1 > 0.0 {
        // λ·sign(w), with sign(0) = 0.
        let sign = w.clone().select(
            Cmp::Gt,
            Expr::Const(0.0),
            Expr::Const(1.0),
            w.select(
                Cmp::Lt,
                Expr::Const(0.0),
                Expr::Const(-1.0),
                Expr::Const(0.0),
            ),
        );
        g = g.bin(BinOp::Add, c(policy.l1).bin(BinOp::Mul, sign));
    }
    g
}

/// The gradient the update applies to element `i`: the full gradient,
/// scaled by the global-norm clip, then clamped by value.
fn gradient(p: &ParamSlot, h: BufId, policy: &GradientPolicy, i: Var) -> Expr {
    let mut g = full_gradient(p, policy, at(i));
    if policy.clip_norm.is_some() {
        g = g.bin(BinOp::Mul, hyper(h, slot::CLIP));
    }
    if let Some(v) = policy.clip_value {
        g = g.bin(BinOp::Min, c(v)).bin(BinOp::Max, c(-v));
    }
    g
}

/// The update kernel of one parameter.
pub fn update_kernel(
    opt: &Optimizer,
    p: &ParamSlot,
    h: BufId,
    policy: &GradientPolicy,
) -> LoopKernel {
    let i: Var = 0;
    let g = gradient(p, h, policy, i);
    let w = || Expr::load(p.param, at(i));
    let lr = || hyper(h, slot::LR);
    let store = |buf, value| Stmt::Store {
        buf,
        index: at(i),
        value,
    };
    let body = match *opt {
        Optimizer::Sgd { .. } => vec![store(p.param, w().bin(BinOp::Sub, lr().bin(BinOp::Mul, g)))],
        Optimizer::Momentum {
            momentum, nesterov, ..
        } => {
            // PyTorch's form: v ← μv + g; w ← w − lr·v (Nesterov: w ← w − lr·(g + μv)).
            let v = p.state1.unwrap_or(p.grad);
            let mu = || c(momentum);
            let mut body = vec![
                Stmt::Set {
                    scalar: 0,
                    value: g,
                },
                Stmt::Set {
                    scalar: 1,
                    value: mu()
                        .bin(BinOp::Mul, Expr::load(v, at(i)))
                        .bin(BinOp::Add, Expr::Get(0)),
                },
                store(v, Expr::Get(1)),
            ];
            let step = if nesterov {
                Expr::Get(0).bin(BinOp::Add, mu().bin(BinOp::Mul, Expr::Get(1)))
            } else {
                Expr::Get(1)
            };
            body.push(store(
                p.param,
                w().bin(BinOp::Sub, lr().bin(BinOp::Mul, step)),
            ));
            body
        }
        Optimizer::Adam {
            beta1,
            beta2,
            epsilon,
            weight_decay,
            ..
        } => {
            let (m, v) = (p.state1.unwrap_or(p.grad), p.state2.unwrap_or(p.grad));
            // `1 − β` from the f64 β: in f32, 1 − 0.999f32 is 0.0009999871.
            let m_new = c(beta1)
                .bin(BinOp::Mul, Expr::load(m, at(i)))
                .bin(BinOp::Add, c(1.0 - beta1).bin(BinOp::Mul, Expr::Get(0)));
            let v_new = c(beta2).bin(BinOp::Mul, Expr::load(v, at(i))).bin(
                BinOp::Add,
                c(1.0 - beta2).bin(BinOp::Mul, Expr::Get(0).bin(BinOp::Mul, Expr::Get(0))),
            );
            // w ← w − lr·(m̂/(√v̂ + ε) + wd·w)   (AdamW's decay is decoupled)
            let mhat = Expr::Get(1).bin(BinOp::Mul, hyper(h, slot::BC1));
            let vhat = Expr::Get(2).bin(BinOp::Mul, hyper(h, slot::BC2));
            let mut step = mhat.bin(BinOp::Div, vhat.un(UnOp::Sqrt).bin(BinOp::Add, c(epsilon)));
            if weight_decay > 0.0 && p.penalized {
                step = step.bin(BinOp::Add, c(weight_decay).bin(BinOp::Mul, w()));
            }
            vec![
                Stmt::Set {
                    scalar: 0,
                    value: g,
                },
                Stmt::Set {
                    scalar: 1,
                    value: m_new,
                },
                Stmt::Set {
                    scalar: 2,
                    value: v_new,
                },
                store(m, Expr::Get(1)),
                store(v, Expr::Get(2)),
                store(p.param, w().bin(BinOp::Sub, lr().bin(BinOp::Mul, step))),
            ]
        }
    };
    LoopKernel {
        vars: 1,
        scalars: 3,
        body: vec![Stmt::Loop {
            var: i,
            extent: p.len,
            body,
        }],
    }
}

/// How many state buffers an optimizer keeps per parameter.
pub fn state_buffers(opt: &Optimizer) -> usize {
    match opt {
        Optimizer::Sgd { .. } => 0,
        Optimizer::Momentum { .. } => 1,
        Optimizer::Adam { .. } => 2,
    }
}

/// Independent partial sums per reduction in [`gradient_stats_kernel`]:
/// one running sum is a chain of dependent additions, about four cycles
/// per element on a CPU; eight chains overlap.
const LANES: usize = 8;

/// Elements of one partial sum of a large gradient
/// ([`gradient_stats_partial`]): 4,096 steps of [`LANES`] elements.
pub const STATS_CHUNK: usize = 4096 * LANES;

/// Whole [`STATS_CHUNK`]s of `p` summed by a partial kernel of their own;
/// 0 for gradients small enough to sum in [`gradient_stats_kernel`] alone.
pub fn stats_chunks(p: &ParamSlot) -> usize {
    if p.len >= 2 * STATS_CHUNK {
        p.len / STATS_CHUNK
    } else {
        0
    }
}

/// Accumulates the full gradient's element `ix` of `p` into lane `lane`
/// (scalar `lane`: sum of squares; scalar `LANES + lane`: penalty).
fn accumulate(p: &ParamSlot, policy: &GradientPolicy, ix: Index, lane: usize) -> Vec<Stmt> {
    let g = full_gradient(p, policy, ix.clone());
    let mut out = vec![Stmt::Set {
        scalar: lane,
        value: Expr::Get(lane).bin(BinOp::Add, g.clone().bin(BinOp::Mul, g)),
    }];
    let w = || Expr::load(p.param, ix.clone());
    let mut penalty: Option<Expr> = None;
    if p.penalized && policy.l1 > 0.0 {
        let abs = w().bin(BinOp::Max, w().un(UnOp::Neg));
        penalty = Some(c(policy.l1).bin(BinOp::Mul, abs));
    }
    if p.penalized && policy.l2 > 0.0 {
        let sq = c(policy.l2).bin(BinOp::Mul, w().bin(BinOp::Mul, w()));
        penalty = Some(match penalty {
            Some(e) => e.bin(BinOp::Add, sq),
            None => sq,
        });
    }
    if let Some(e) = penalty {
        out.push(Stmt::Set {
            scalar: LANES + lane,
            value: Expr::Get(LANES + lane).bin(BinOp::Add, e),
        });
    }
    out
}

/// `Get(first) + … + Get(first + LANES − 1)`.
fn lanes_total(first: usize) -> Expr {
    (first + 1..first + LANES).fold(Expr::Get(first), |e, s| e.bin(BinOp::Add, Expr::Get(s)))
}

fn zero_lanes() -> Vec<Stmt> {
    (0..2 * LANES)
        .map(|scalar| Stmt::Set {
            scalar,
            value: Expr::Const(0.0),
        })
        .collect()
}

/// Floats of one chunk's entry in a [`gradient_stats_partial`] buffer:
/// the lanes' sums of squares, then the lanes' penalties.
pub const PARTIAL_STRIDE: usize = 2 * LANES;

/// The partial sums of a large gradient ([`stats_chunks`] > 0): for each
/// whole [`STATS_CHUNK`] `i` and lane `l`, `partial[PARTIAL_STRIDE·i + l]`
/// is the sum of squares of the chunk's full-gradient elements `l, l +
/// LANES, …` (in order) and `partial[PARTIAL_STRIDE·i + LANES + l]` their
/// penalty. Chunks and lanes are independent, so every backend spreads
/// them over its threads (one serial pass over VGG-16's 138 million
/// gradients was one GPU block's 67,569-step loop), and the loop over
/// lanes vectorizes (one vector add per lanes' step, where eight scalar
/// chains cost eight); [`gradient_stats_kernel`] adds each chunk's lanes
/// in lane order, then the chunks in order.
pub fn gradient_stats_partial(
    p: &ParamSlot,
    partial: BufId,
    policy: &GradientPolicy,
) -> LoopKernel {
    let (vc, vl, vi) = (0, 1, 2);
    let lane_at = |off: usize| Index::new([(vc, PARTIAL_STRIDE as i64), (vl, 1)], off as i64);
    let ix = Index::new([(vc, STATS_CHUNK as i64), (vi, LANES as i64), (vl, 1)], 0);
    let lane_body = vec![
        Stmt::Set {
            scalar: 0,
            value: Expr::Const(0.0),
        },
        Stmt::Set {
            scalar: LANES,
            value: Expr::Const(0.0),
        },
        Stmt::Loop {
            var: vi,
            extent: STATS_CHUNK / LANES,
            body: accumulate(p, policy, ix, 0),
        },
        Stmt::Store {
            buf: partial,
            index: lane_at(0),
            value: Expr::Get(0),
        },
        Stmt::Store {
            buf: partial,
            index: lane_at(LANES),
            value: Expr::Get(LANES),
        },
    ];
    let body = vec![Stmt::Loop {
        var: vl,
        extent: LANES,
        body: lane_body,
    }];
    LoopKernel {
        vars: 3,
        scalars: 2 * LANES,
        body: vec![Stmt::Loop {
            var: vc,
            extent: stats_chunks(p),
            body,
        }],
    }
}

/// One pass over every gradient: writes the squared global norm of the
/// full gradient to `hyper[NORM2]`, the penalty to `hyper[PENALTY]`, and
/// with `clip_norm` the scale `min(1, max_norm / ‖g‖)` to `hyper[CLIP]`.
/// It runs before any update, so it sees the weights the loss saw.
/// Scalars `0..LANES` hold partial sums of squares, `LANES..2·LANES`
/// partial penalties. `partials[i]` is the buffer of
/// [`gradient_stats_partial`] for `params[i]` when it has chunks: their
/// sums are added first, then the elements after the last whole chunk.
pub fn gradient_stats_kernel(
    params: &[ParamSlot],
    partials: &[Option<BufId>],
    h: BufId,
    policy: &GradientPolicy,
) -> LoopKernel {
    let mut body = zero_lanes();
    for (p, partial) in params
        .iter()
        .zip(partials.iter().chain(std::iter::repeat(&None)))
    {
        let mut done = 0;
        if let Some(buf) = *partial {
            let chunks = stats_chunks(p);
            body.push(Stmt::Loop {
                var: 0,
                extent: chunks,
                body: [0, LANES]
                    .into_iter()
                    .map(|scalar| {
                        // The chunk's lanes in lane order.
                        let lane = |l: usize| {
                            Expr::load(
                                buf,
                                Index::new([(0, PARTIAL_STRIDE as i64)], (scalar + l) as i64),
                            )
                        };
                        let total = (1..LANES).fold(lane(0), |e, l| e.bin(BinOp::Add, lane(l)));
                        Stmt::Set {
                            scalar,
                            value: Expr::Get(scalar).bin(BinOp::Add, total),
                        }
                    })
                    .collect(),
            });
            done = chunks * STATS_CHUNK;
        }
        let whole = (p.len - done) / LANES;
        if whole > 0 {
            body.push(Stmt::Loop {
                var: 0,
                extent: whole,
                body: (0..LANES)
                    .flat_map(|lane| {
                        let ix = Index::var(0, LANES as i64).shift((done + lane) as i64);
                        accumulate(p, policy, ix, lane)
                    })
                    .collect(),
            });
        }
        let tail = done + whole * LANES;
        if p.len > tail {
            body.push(Stmt::Loop {
                var: 0,
                extent: p.len - tail,
                body: accumulate(p, policy, at(0).shift(tail as i64), 0),
            });
        }
    }
    let store = |s: usize, value| Stmt::Store {
        buf: h,
        index: Index::constant(s as i64),
        value,
    };
    body.push(store(slot::NORM2, lanes_total(0)));
    body.push(store(slot::PENALTY, lanes_total(LANES)));
    if let Some(max_norm) = policy.clip_norm {
        body.push(store(
            slot::CLIP,
            c(max_norm)
                .bin(
                    BinOp::Div,
                    lanes_total(0)
                        .un(UnOp::Sqrt)
                        .bin(BinOp::Add, Expr::Const(1e-12)),
                )
                .bin(BinOp::Min, Expr::Const(1.0)),
        ));
    }
    LoopKernel {
        vars: 1,
        scalars: 2 * LANES,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::interp;

    /// A program of temporaries of `lens` running `kernels` in order.
    fn program(lens: &[usize], kernels: Vec<LoopKernel>) -> Program {
        Program {
            name: "t".into(),
            batch: 1,
            buffers: lens
                .iter()
                .map(|len| Buffer {
                    name: "b".into(),
                    len: *len,
                    kind: BufKind::Temp,
                })
                .collect(),
            kernels: kernels
                .into_iter()
                .map(|k| Kernel {
                    name: "k".into(),
                    body: KernelBody::Loop(k),
                })
                .collect(),
            inputs: vec![],
            params: vec![],
            outputs: vec![],
        }
    }

    /// Runs one update on `w`, `g` with the given hyper slots; returns
    /// (w, state1, state2).
    fn step(
        opt: Optimizer,
        w: &[f32],
        g: &[f32],
        state: [&[f32]; 2],
        hyper_vals: [f32; 4],
        policy: GradientPolicy,
    ) -> Vec<Vec<f32>> {
        let n = w.len();
        let p = ParamSlot {
            name: "w".into(),
            param: 0,
            grad: 1,
            state1: Some(2),
            state2: Some(3),
            len: n,
            penalized: true,
        };
        let k = update_kernel(&opt, &p, 4, &policy);
        let prog = program(&[n, n, n, n, slot::COUNT], vec![k]);
        let mut bufs = vec![
            w.to_vec(),
            g.to_vec(),
            state[0].to_vec(),
            state[1].to_vec(),
            {
                let mut h = hyper_vals.to_vec();
                h.resize(slot::COUNT, 0.0);
                h
            },
        ];
        interp::run_program(&prog, &mut bufs).unwrap();
        bufs
    }

    fn close(a: &[f32], b: &[f32]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn sgd_step_by_hand() {
        let b = step(
            Optimizer::Sgd { lr: 0.1 },
            &[1.0, -2.0],
            &[0.5, 0.25],
            [&[0.0; 2], &[0.0; 2]],
            [0.1, 1.0, 1.0, 1.0],
            GradientPolicy::default(),
        );
        close(&b[0], &[0.95, -2.025]);
    }

    #[test]
    fn momentum_and_nesterov_steps_by_hand() {
        // v = 0.9·1 + 0.5 = 1.4; w = 1 − 0.1·1.4 = 0.86
        let b = step(
            Optimizer::Momentum {
                lr: 0.1,
                momentum: 0.9,
                nesterov: false,
            },
            &[1.0],
            &[0.5],
            [&[1.0], &[0.0]],
            [0.1, 1.0, 1.0, 1.0],
            GradientPolicy::default(),
        );
        close(&b[0], &[0.86]);
        close(&b[2], &[1.4]);
        // Nesterov: w = 1 − 0.1·(0.5 + 0.9·1.4) = 0.824
        let b = step(
            Optimizer::Momentum {
                lr: 0.1,
                momentum: 0.9,
                nesterov: true,
            },
            &[1.0],
            &[0.5],
            [&[1.0], &[0.0]],
            [0.1, 1.0, 1.0, 1.0],
            GradientPolicy::default(),
        );
        close(&b[0], &[0.824]);
    }

    #[test]
    fn adam_first_step_by_hand() {
        // t = 1: m = 0.1·g, v = 0.001·g², m̂ = g, v̂ = g², step = g/(|g| + ε) ≈ sign(g)
        let (b1, b2) = (0.9f32, 0.999f32);
        let hyper_vals = [0.01, 1.0 / (1.0 - b1), 1.0 / (1.0 - b2), 1.0];
        let b = step(
            Optimizer::Adam {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-7,
                weight_decay: 0.0,
            },
            &[1.0, 1.0],
            &[0.5, -2.0],
            [&[0.0; 2], &[0.0; 2]],
            hyper_vals,
            GradientPolicy::default(),
        );
        let expect = |g: f32| 1.0 - 0.01 * g / (g.abs() + 1e-7);
        close(&b[0], &[expect(0.5), expect(-2.0)]);
        close(&b[2], &[0.05, -0.2]);
        close(&b[3], &[0.001 * 0.25, 0.001 * 4.0]);
    }

    #[test]
    fn penalties_and_value_clipping() {
        // g' = clip(g + 2·0.5·w + 0.1·sign(w), ±1) = clip(0.2 + 1.0 + 0.1) = 1.0
        let policy = GradientPolicy {
            l1: 0.1,
            l2: 0.5,
            clip_value: Some(1.0),
            clip_norm: None,
        };
        let b = step(
            Optimizer::Sgd { lr: 1.0 },
            &[1.0],
            &[0.2],
            [&[0.0], &[0.0]],
            [1.0, 1.0, 1.0, 1.0],
            policy,
        );
        close(&b[0], &[0.0]);
    }

    #[test]
    fn gradient_stats_sum_the_full_gradient_over_lanes_and_tail() {
        // 11 elements: one pass of 8 lanes and a tail of 3. w = 1, g = k/2.
        // Full gradient g + 2·0.5·w + 0.25·sign(w) = k/2 + 1.25.
        let n = 11;
        let p = ParamSlot {
            name: "w".into(),
            param: 0,
            grad: 1,
            state1: None,
            state2: None,
            len: n,
            penalized: true,
        };
        let policy = GradientPolicy {
            l1: 0.25,
            l2: 0.5,
            clip_value: None,
            clip_norm: Some(2.0),
        };
        let k = gradient_stats_kernel(std::slice::from_ref(&p), &[None], 2, &policy);
        let prog = program(&[n, n, slot::COUNT], vec![k]);
        let g: Vec<f32> = (0..n).map(|k| k as f32 / 2.0).collect();
        let mut bufs = vec![vec![1.0; n], g.clone(), vec![0.0; slot::COUNT]];
        interp::run_program(&prog, &mut bufs).unwrap();
        let norm2: f32 = g.iter().map(|g| (g + 1.25) * (g + 1.25)).sum();
        let h = &bufs[2];
        assert!((h[slot::NORM2] - norm2).abs() < 1e-3, "{h:?} vs {norm2}");
        // λ₁Σ|w| + λ₂Σw² = 11·(0.25 + 0.5)
        assert_eq!(h[slot::PENALTY], 8.25);
        assert!((h[slot::CLIP] - 2.0 / norm2.sqrt()).abs() < 1e-6, "{h:?}");
    }

    #[test]
    fn large_gradients_sum_in_chunks_then_in_order() {
        // Two whole chunks and a tail of 13 (8 lanes and 5 single).
        let n = 2 * STATS_CHUNK + 13;
        let p = ParamSlot {
            name: "w".into(),
            param: 0,
            grad: 1,
            state1: None,
            state2: None,
            len: n,
            penalized: true,
        };
        assert_eq!(stats_chunks(&p), 2);
        let policy = GradientPolicy {
            l1: 0.0,
            l2: 0.5,
            clip_value: None,
            clip_norm: None,
        };
        let partial = gradient_stats_partial(&p, 3, &policy);
        let stats = gradient_stats_kernel(std::slice::from_ref(&p), &[Some(3)], 2, &policy);
        let prog = program(
            &[n, n, slot::COUNT, 2 * PARTIAL_STRIDE],
            vec![partial, stats],
        );
        // Small integers and halves: every sum is exact in f32.
        let w: Vec<f32> = (0..n).map(|k| (k % 4) as f32).collect();
        let g: Vec<f32> = (0..n).map(|k| (k % 3) as f32 - 1.0).collect();
        let mut bufs = vec![
            w.clone(),
            g.clone(),
            vec![0.0; slot::COUNT],
            vec![0.0; 2 * PARTIAL_STRIDE],
        ];
        interp::run_program(&prog, &mut bufs).unwrap();
        // Full gradient g + 2·0.5·w; penalty 0.5·w².
        let full = |k: usize| f64::from(g[k]) + f64::from(w[k]);
        let norm2: f64 = (0..n).map(|k| full(k) * full(k)).sum();
        let penalty: f64 = (0..n).map(|k| 0.5 * f64::from(w[k]).powi(2)).sum();
        let chunk0: f64 = (0..STATS_CHUNK).map(|k| full(k) * full(k)).sum();
        let lanes0: f64 = bufs[3][..LANES].iter().map(|&x| f64::from(x)).sum();
        assert_eq!(lanes0, chunk0);
        // Lane 0 of chunk 0: elements 0, 8, 16, …
        let lane0: f64 = (0..STATS_CHUNK)
            .step_by(LANES)
            .map(|k| full(k) * full(k))
            .sum();
        assert_eq!(f64::from(bufs[3][0]), lane0);
        assert_eq!(f64::from(bufs[2][slot::NORM2]), norm2);
        assert_eq!(f64::from(bufs[2][slot::PENALTY]), penalty);
    }
}
