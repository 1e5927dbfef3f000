//! Graph → kernel IR for one batch size. Every forward op becomes one or
//! more kernels: matrix-shaped work (conv2d, dense, the recurrent matrix
//! products) as contractions, everything else as loop nests. Recurrent
//! layers must be unrolled into cells first (see `crate::pipeline`). Flatten,
//! reshape and inference-time dropout are free: their output aliases
//! their input's buffer.
//!
//! The lowering is split by op family, the same families as the op
//! registry (`crate::ops`): `lower/<family>.rs` holds the forward and the
//! backward kernels of its ops (`conv`, `pool`, `dense`, `embedding`, `recurrent`,
//! `norm`, `activation`, `reshape`, `merge`, and `loss` for the losses
//! and their gradients). This file holds the walker ([`lower`] visits the
//! nodes in topological order), what several families share (buffers,
//! row views, loop nests, window geometry, the plain matrix product and
//! its transposed-operand forms, zeroing) and the dispatch: one exhaustive
//! `match` on [`Op`] and one on [`GradOp`], each arm calling its family's
//! `lower_*` function.

mod activation;
mod conv;
mod dense;
mod embedding;
mod loss;
mod merge;
mod norm;
mod pool;
mod recurrent;
mod reshape;
mod split_k;
use super::ir::*;
use crate::graph::{Graph, NodeId};
use crate::op::{Activation, GradOp, Op, Padding};
use crate::shape::same_out;
use recurrent::{ProductKey, StepKey};
use std::collections::{HashMap, HashSet};
// `Expr` implements these; the method form reads better in long chains.
use std::ops::{Add, Mul};
use thiserror::Error;

/// Why a graph could not be lowered.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LowerError {
    /// Shape inference did not succeed for a node (check first).
    #[error("node `{0}` has no inferred shape; the model must check without errors first")]
    NoShape(String),
    /// The batch size is zero or absurdly large.
    #[error("the batch size must be between 1 and {}", crate::shape::MAX_DIM)]
    BadBatch,
    /// The graph has a cycle.
    #[error("the graph has a cycle")]
    Cycle,
    /// A whole recurrent layer: only its unrolled cells have kernels
    /// (`pipeline::Compilation` unrolls before lowering).
    #[error("recurrent layer `{0}` must be unrolled over time before it can be lowered")]
    NotUnrolled(String),
}

/// Lowers a checked graph for batch size `batch`.
pub fn lower(g: &Graph, batch: usize) -> Result<Program, LowerError> {
    if batch == 0 || batch > crate::shape::MAX_DIM {
        return Err(LowerError::BadBatch);
    }
    let mut l = Lowering {
        g,
        n: batch,
        p: Program {
            name: g.name.clone(),
            batch,
            buffers: vec![],
            kernels: vec![],
            inputs: vec![],
            params: vec![],
            outputs: vec![],
        },
        value: HashMap::new(),
        views: HashMap::new(),
        batched: crate::infer::batched(g),
        products: HashMap::new(),
        gates: HashMap::new(),
        tanh_c: HashMap::new(),
        arenas: HashMap::new(),
        merged: HashMap::new(),
        time_major: HashMap::new(),
        fused_grads: HashMap::new(),
        summed: HashSet::new(),
        sums: HashMap::new(),
        state_grads: HashMap::new(),
        stacks: HashMap::new(),
    };
    for id in g.topo_order().ok_or(LowerError::Cycle)? {
        l.node(id)?;
    }
    for (name, id) in &g.outputs {
        let buf = l.value[id];
        let shape = l.full_shape(*id)?;
        l.p.outputs.push(Binding {
            name: name.clone(),
            buf,
            shape,
            vocab: None,
        });
    }
    Ok(l.p)
}

struct Lowering<'g> {
    g: &'g Graph,
    n: usize,
    p: Program,
    /// The buffer holding each node's value.
    value: HashMap<NodeId, BufId>,
    /// Nodes read in place (time steps, state slices): no kernel of their own.
    views: HashMap<NodeId, View>,
    /// Whether each node has the batch axis (folded weights do not).
    batched: Vec<bool>,
    /// `h·U (+ b_r)` products already computed, by (state, U, recurrent
    /// bias): a training step's cell gradients reuse the forward step's
    /// product instead of recomputing it (buffers are written once, so the
    /// value is still there; the memory plan keeps it alive).
    products: HashMap<ProductKey, BufId>,
    /// Each unrolled step's activated gates `[N, G·U]` (an RNN's: its new
    /// state), by the step's operands: a cell gradient reads them instead of
    /// recomputing the gates' transcendentals.
    gates: HashMap<StepKey, View>,
    /// Each unrolled LSTM step's `tanh c` `[N, U]`, by the step's operands,
    /// for the same reason.
    tanh_c: HashMap<StepKey, BufId>,
    /// `add` nodes whose terms are all weight-gradient products (a weight
    /// used at every time step), by their buffer, once the first term has
    /// been written into it (see `lower_dense_dw`); bias gradients summed
    /// by the kernel that wrote their `dy` (see `lower_pool_grad`).
    sums: HashMap<NodeId, BufId>,
    /// State gradients (`CellGrad` with respect to the state) written by
    /// others: their direct part by the step's gate-gradient kernel, their
    /// `dz·Uᵀ` part by that product itself (see [`StateGrad`]).
    state_grads: HashMap<NodeId, StateGrad>,
    /// `stack` nodes whose inputs their producers write in place (see
    /// `stack_slot`), by the stack's buffer.
    stacks: HashMap<NodeId, BufId>,
    /// State arenas of unrolled recurrent layers, by buffer (see [`Arena`]).
    arenas: HashMap<BufId, Arena>,
    /// Sums of weight-gradient products computed as one contraction over
    /// a state arena (see `sum_over_arena`), emitted at the `add`.
    merged: HashMap<NodeId, Contraction>,
    /// Sums in `sums` whose first term has been written.
    summed: HashSet<NodeId>,
    /// Stacks stored time major, by buffer (see [`TimeMajor`]).
    time_major: HashMap<BufId, TimeMajor>,
    /// Weight and bias gradients computed together by one kernel (see
    /// `stack_grads`), by node.
    fused_grads: HashMap<NodeId, BufId>,
}

/// One buffer holding every state of an unrolled recurrent layer, time
/// major: slot `t` is step `t`'s new state `[N, S]`. With the steps' gate
/// gradients stacked time major too (see `stack_slot`), the recurrent
/// weight's gradient `Σ_t h_{t-1}ᵀ·dz_t` reads every `h` and every `dz`
/// of the sequence as one strided operand each: one contraction with the
/// reduction over time and batch instead of one short product per step
/// (see `sum_over_arena`).
#[derive(Clone, Copy, Debug)]
struct Arena {
    /// Elements of one slot, `N·S`.
    slot_len: usize,
    /// Slots: one per step.
    slots: usize,
}

/// A stack of every step's gate gradients `[N, T, F]` stored time major,
/// `[T, N, F]`, by its buffer: its consumers (weight gradients, which read
/// the layer's input in the same order, and bias gradients, sums over all
/// rows) accept either order, and time major lets the recurrent weight's
/// gradient read the steps `1..T` as one run of rows.
#[derive(Clone, Copy, Debug)]
struct TimeMajor {
    steps: usize,
    /// Elements of one step, `N·F`.
    step_len: usize,
}

/// A state gradient (`CellGrad` with respect to the state) that has no
/// kernel of its own: `dstate₋₁ = dz·Uᵀ + direct`, where the step's
/// gate-gradient kernel, which has every operand of `direct` in registers
/// already (an LSTM's `f ∘ dc` into `c`, a GRU's `z ∘ dh`), stores it into
/// the state gradient's buffer, and the product `dz·Uᵀ` is written into
/// the same buffer (over the `h` part, or added to a GRU's `z ∘ dh`).
/// That saves a pass that would re-read the gates and recompute an LSTM's
/// `tanh c` for each step.
#[derive(Clone, Copy, Debug)]
struct StateGrad {
    /// The state gradient's buffer `[N, S]`.
    buf: BufId,
    /// Its row length `S` (the product's `ldc`).
    row: usize,
    /// Whether the product adds to what the gate kernel stored (GRU).
    accumulate: bool,
    /// The `dz·Uᵀ` product (`GradOp::DenseDx`) node.
    product: NodeId,
}

/// Rows of another buffer read in place: row `n`, element `j` of the view
/// is `buf[offset + n·row_stride + j]`.
#[derive(Clone, Copy, Debug)]
struct View {
    buf: BufId,
    offset: usize,
    row_stride: usize,
}

/// Builds a loop nest over `dims`, handing the body builder one variable per dim.
fn nest(dims: &[usize], scalars: usize, body: impl FnOnce(&[Var]) -> Vec<Stmt>) -> LoopKernel {
    let vars: Vec<Var> = (0..dims.len()).collect();
    let mut stmts = body(&vars);
    for (v, d) in vars.iter().zip(dims).rev() {
        stmts = vec![Stmt::Loop {
            var: *v,
            extent: *d,
            body: stmts,
        }];
    }
    LoopKernel {
        vars: dims.len(),
        scalars,
        body: stmts,
    }
}

/// `then` where the sequence mask `mask[index]` marks a real step, else
/// `other`: the test every masking kernel makes (mask values are exactly
/// 0 or 1, so a select keeps the chosen value exact).
fn if_real(mask: BufId, index: Index) -> impl Fn(Expr, Expr) -> Expr {
    move |then, other| {
        Expr::load(mask, index.clone()).select(Cmp::Gt, Expr::Const(0.5), then, other)
    }
}

/// Row-major linear index of `vars` over `dims`.
fn linear(vars: &[Var], dims: &[usize]) -> Index {
    let mut stride = 1i64;
    let mut terms = Vec::new();
    for (v, d) in vars.iter().zip(dims).rev() {
        terms.push((*v, stride));
        stride *= *d as i64;
    }
    terms.reverse();
    Index::new(terms, 0)
}

/// The node being lowered, as its family's `lower_*` function gets it.
struct NodeCx {
    id: NodeId,
    name: String,
    /// Its operands, in slot order.
    ins: Vec<NodeId>,
    /// The operands' buffers.
    ib: Vec<BufId>,
    /// Elements of its value (batch included).
    out_len: usize,
}

impl Lowering<'_> {
    fn shape(&self, id: NodeId) -> Result<Vec<usize>, LowerError> {
        let n = self.g.node(id);
        n.shape
            .as_ref()
            .map(|s| s.0.clone())
            .ok_or_else(|| LowerError::NoShape(n.name.clone()))
    }

    fn full_shape(&self, id: NodeId) -> Result<Vec<usize>, LowerError> {
        if !self.batched[id.index()] {
            return self.shape(id);
        }
        let mut s = vec![self.n];
        s.extend(self.shape(id)?);
        Ok(s)
    }

    /// Node `id`'s full shape as the NHWC image a window op (convolution,
    /// pooling, their gradients) works on: a batched sequence
    /// `[N, T, F]` (the 1-D layers) is the height-1 image `[N, 1, T, F]`,
    /// which has the same layout.
    fn image_shape(&self, id: NodeId) -> Result<Vec<usize>, LowerError> {
        let mut s = self.full_shape(id)?;
        if s.len() == 3 {
            s.insert(1, 1);
        }
        Ok(s)
    }

    /// Node `id`'s value as rows of a buffer (a registered view, or its
    /// own buffer with one row per example).
    fn view_of(&self, id: NodeId) -> Result<View, LowerError> {
        if let Some(v) = self.views.get(&id) {
            return Ok(*v);
        }
        Ok(View {
            buf: self.value[&id],
            offset: 0,
            row_stride: self.shape(id)?.iter().product(),
        })
    }

    /// The state gradient that product node `id` writes into, if any.
    fn state_grad_of_product(&self, id: NodeId) -> Option<StateGrad> {
        self.state_grads
            .values()
            .find(|sg| sg.product == id)
            .copied()
    }

    /// Where gate-gradient node `id` writes its value when a `stack` of
    /// every step's gate gradients (a backward pass's input to the input
    /// weight and bias gradients) can be assembled in place: every input
    /// of that stack is a gate gradient read only by the stack and by
    /// products that take strided operands (`dz·Uᵀ`'s A, `hᵀ·dz`'s B).
    /// Registers `id`'s value as a view of its slot, so the stack needs no
    /// copy kernel.
    fn stack_slot(&mut self, id: NodeId) -> Option<View> {
        use petgraph::visit::EdgeRef;
        let in_place = |n: NodeId| {
            if !matches!(
                self.g.node(n).op,
                Op::Grad(GradOp::CellGrad { wrt, .. }) if wrt != crate::op::CellWrt::State
            ) || self.g.outputs.iter().any(|(_, o)| *o == n)
            {
                return None;
            }
            let mut stack = None;
            for e in self.g.g.edges_directed(n, petgraph::Direction::Outgoing) {
                match (&self.g.node(e.target()).op, *e.weight()) {
                    (Op::Stack, slot) if stack.is_none() => stack = Some((e.target(), slot)),
                    (Op::Grad(GradOp::DenseDx), 0) | (Op::Grad(GradOp::DenseDw), 1) => {}
                    _ => return None,
                }
            }
            stack
        };
        let (stack, slot) = in_place(id)?;
        if !self
            .g
            .inputs_of(stack)
            .into_iter()
            .all(|i| in_place(i).is_some_and(|(s, _)| s == stack))
        {
            return None;
        }
        let o = self.full_shape(stack).ok()?;
        let (n, t, f) = (o[0], o[1], o[2]);
        let buf = match self.stacks.get(&stack) {
            Some(&b) => b,
            None => {
                let b = self.temp(self.g.node(stack).name.clone(), o.iter().product());
                self.stacks.insert(stack, b);
                let time_major_ok = !self.g.outputs.iter().any(|(_, o)| *o == stack)
                    && self
                        .g
                        .g
                        .edges_directed(stack, petgraph::Direction::Outgoing)
                        .all(|e| match (&self.g.node(e.target()).op, *e.weight()) {
                            // xᵀ·dy must read x `[N, T, F']` in the same order.
                            (Op::Grad(GradOp::DenseDw), 1) => self
                                .g
                                .inputs_of(e.target())
                                .first()
                                .and_then(|x| self.full_shape(*x).ok())
                                .is_some_and(|x| x.len() == 3 && x[0] == n && x[1] == t),
                            (Op::Grad(GradOp::BiasGrad), 0) => true,
                            _ => false,
                        });
                if time_major_ok {
                    self.time_major.insert(
                        b,
                        TimeMajor {
                            steps: t,
                            step_len: n * f,
                        },
                    );
                }
                b
            }
        };
        let v = match self.time_major.get(&buf) {
            Some(tm) => View {
                buf,
                offset: slot * tm.step_len,
                row_stride: f,
            },
            None => View {
                buf,
                offset: slot * f,
                row_stride: t * f,
            },
        };
        self.views.insert(id, v);
        Some(v)
    }

    /// The vocabulary a token input's ids must lie in: the smallest
    /// `vocab` of the embeddings (and their gradients) that read it.
    fn vocab_of(&self, id: NodeId) -> Option<usize> {
        self.g
            .users_of(id)
            .into_iter()
            .filter_map(|u| match self.g.node(u).op {
                Op::Embedding { vocab, .. } | Op::Grad(GradOp::EmbeddingDw { vocab, .. }) => {
                    Some(vocab)
                }
                _ => None,
            })
            .min()
    }

    /// Whether every consumer of `id` reads it through a view (cells read
    /// their time step in place, stacks read every input in place, a
    /// weight gradient `xᵀ·dy` reads its `x` rows in place).
    fn only_viewed(&self, id: NodeId) -> bool {
        if self.g.outputs.iter().any(|(_, o)| *o == id) {
            return false;
        }
        self.g
            .g
            .edges_directed(id, petgraph::Direction::Outgoing)
            .all(|e| {
                use petgraph::visit::EdgeRef;
                match self.g.node(e.target()).op {
                    Op::Stack => true,
                    Op::Cell { .. }
                    | Op::Grad(crate::op::GradOp::CellGrad { .. })
                    | Op::Grad(crate::op::GradOp::DenseDw) => *e.weight() == 0,
                    _ => false,
                }
            })
    }

    fn buffer(&mut self, name: String, len: usize, kind: BufKind) -> BufId {
        self.p.buffers.push(Buffer { name, len, kind });
        self.p.buffers.len() - 1
    }

    fn temp(&mut self, name: String, len: usize) -> BufId {
        self.buffer(name, len, BufKind::Temp)
    }

    fn kernel(&mut self, name: String, body: KernelBody) {
        match body {
            KernelBody::Contraction(c) if split_k::too_long(&c) => self.split_k(name, c),
            body => self.p.kernels.push(Kernel { name, body }),
        }
    }

    fn looped(&mut self, name: String, k: LoopKernel) {
        self.kernel(name, KernelBody::Loop(k));
    }

    fn node(&mut self, id: NodeId) -> Result<(), LowerError> {
        let node = self.g.node(id);
        let ins: Vec<NodeId> = self.g.inputs_of(id);
        let ib: Vec<BufId> = ins.iter().map(|i| self.value[i]).collect();
        let out_len = self.full_shape(id)?.iter().product();
        let cx = NodeCx {
            id,
            name: node.name.clone(),
            ins,
            ib,
            out_len,
        };
        let buf = match &node.op {
            Op::Input { tokens, .. } => {
                let shape = self.full_shape(id)?;
                let name = cx.name;
                let b = self.buffer(name.clone(), out_len, BufKind::Input(name.clone()));
                let vocab = tokens.then(|| self.vocab_of(id)).flatten();
                self.p.inputs.push(Binding {
                    name,
                    buf: b,
                    shape,
                    vocab,
                });
                b
            }
            Op::Param { .. } => {
                let shape = self.shape(id)?;
                let len = shape.iter().product();
                let name = cx.name;
                let b = self.buffer(name.clone(), len, BufKind::Param(name.clone()));
                self.p.params.push(Binding {
                    name,
                    buf: b,
                    shape,
                    vocab: None,
                });
                b
            }
            Op::Flatten | Op::Reshape { .. } | Op::Dropout { .. } => cx.ib[0],
            Op::Conv2d {
                kernel,
                stride,
                padding,
                filters,
                activation,
                ..
            } => self.lower_conv2d(cx, *kernel, *stride, *padding, *filters, *activation)?,
            Op::Dense { units, activation } => self.lower_dense(cx, *units, *activation)?,
            Op::Embedding {
                vocab,
                dim,
                padding,
            } => self.lower_embedding(cx, *vocab, *dim, *padding)?,
            Op::Map { expr } => self.lower_map(cx, expr)?,
            Op::TimeSlice { step } => self.lower_time_slice(cx, *step)?,
            Op::Slice { start, len } => self.lower_slice(cx, *start, *len)?,
            Op::Grad(g) => self.grad(cx, g)?,
            Op::Stack => self.lower_stack(cx)?,
            Op::Repeat { times } => self.lower_repeat(cx, *times)?,
            Op::Cell {
                cell,
                units,
                has_state,
                recurrent_bias,
            } => self.lower_cell(cx, *cell, *units, *has_state, *recurrent_bias)?,
            Op::Pool2d {
                kind,
                size,
                stride,
                padding,
                ..
            } => self.lower_pool2d(cx, *kind, *size, *stride, *padding)?,
            Op::GlobalPool2d { kind, .. } => self.lower_global_pool2d(cx, *kind)?,
            Op::MaskedPool { kind } => self.lower_masked_pool(cx, *kind)?,
            Op::MaskStep { step, .. } => self.lower_mask_step(cx, *step, true)?,
            Op::Activation(Activation::Softmax) => self.lower_softmax(cx)?,
            Op::Activation(a) => self.lower_activation(cx, *a),
            Op::BatchNorm { epsilon, .. } => self.lower_batchnorm(cx, *epsilon)?,
            Op::Add => match self.sums.get(&id) {
                // Every term was accumulated into the sum's buffer, or the
                // whole sum is one contraction over the states' arena.
                Some(&buf) => {
                    if let Some(c) = self.merged.remove(&id) {
                        self.kernel(cx.name, KernelBody::Contraction(c));
                    }
                    buf
                }
                None => self.lower_elementwise(cx, BinOp::Add, false),
            },
            Op::Mul => self.lower_elementwise(cx, BinOp::Mul, false),
            Op::Average => self.lower_elementwise(cx, BinOp::Add, true),
            Op::Concat { axis } => self.lower_concat(cx, *axis)?,
            Op::Recurrent { .. } => {
                return Err(LowerError::NotUnrolled(self.g.node(id).name.clone()));
            }
        };
        self.value.insert(id, buf);
        Ok(())
    }

    /// Lowers one autodiff op; returns its output buffer.
    fn grad(&mut self, cx: NodeCx, op: &GradOp) -> Result<BufId, LowerError> {
        Ok(match op {
            GradOp::Loss(loss) => self.lower_loss(cx, *loss)?,
            GradOp::LossGrad { loss, through } => self.lower_loss_grad(cx, *loss, *through)?,
            GradOp::ActGrad(a) => self.lower_act_grad(cx, *a)?,
            GradOp::DenseDx => self.lower_dense_dx(cx)?,
            GradOp::DenseDw => self.lower_dense_dw(cx)?,
            GradOp::BiasGrad => match self.sums.get(&cx.id) {
                // Summed by the kernel that wrote the gradient.
                Some(&buf) => buf,
                None => self.lower_bias_grad(cx)?,
            },
            GradOp::EmbeddingDw { vocab, padding } => {
                self.lower_embedding_dw(cx, *vocab, *padding)?
            }
            GradOp::ConvDw {
                kernel,
                stride,
                padding,
            } => self.lower_conv_dw(cx, *kernel, *stride, *padding)?,
            GradOp::ConvDx {
                kernel,
                stride,
                padding,
            } => self.lower_conv_dx(cx, *kernel, *stride, *padding)?,
            GradOp::PoolGrad {
                kind,
                size,
                stride,
                padding,
                relu_mask,
            } => self.lower_pool_grad(cx, *kind, (*size, *stride, *padding), *relu_mask)?,
            GradOp::DropoutMask { rate } => self.lower_dropout_mask(cx, *rate),
            GradOp::MulGrad => self.lower_product(cx, None),
            GradOp::Scale(s) => self.lower_product(cx, Some(*s)),
            GradOp::CellGrad {
                cell,
                units,
                has_state,
                recurrent_bias,
                wrt,
            } => self.lower_cell_grad(cx, *cell, *units, *has_state, *recurrent_bias, *wrt)?,
            GradOp::BatchMean => self.lower_batch_mean(cx)?,
            GradOp::BatchVar => self.lower_batch_var(cx)?,
            GradOp::BatchNormDgamma { epsilon } => self.lower_batchnorm_dgamma(cx, *epsilon)?,
            GradOp::BatchNormDx {
                epsilon,
                batch_stats,
            } => self.lower_batchnorm_dx(cx, *epsilon, *batch_stats)?,
            GradOp::MovingAverage { momentum } => self.lower_moving_average(cx, *momentum),
            GradOp::TimeScatter { step, steps } => self.lower_time_scatter(cx, *step, *steps)?,
            GradOp::SliceGrad { start, len, total } => {
                self.lower_slice_grad(cx, (*start, *len, *total))
            }
            GradOp::Slice { axis, start, len } => {
                self.lower_concat_grad(cx, *axis, *start, *len)?
            }
            GradOp::MaskStepPrev { step } => self.lower_mask_step(cx, *step, false)?,
            GradOp::MaskedPoolGrad { kind } => self.lower_masked_pool_grad(cx, *kind)?,
        })
    }

    /// `out[j] = Σ_rows x[row, j]` (a bias gradient: `dy` summed over
    /// every axis but the last), rows outer: contiguous passes over x.
    /// (Columns outer would stream all of x once per channel, e.g. 32
    /// passes over 5.5 MB for the course CNN.) Large sums run as
    /// `COLUMN_SUM_BLOCKS` partial sums over equal blocks of rows, one kernel
    /// whose blocks the backends may run in parallel, then a kernel adding
    /// the partials and any leftover rows; the block count does not depend
    /// on the thread count, so neither do the results.
    fn column_sums(&mut self, name: String, dy: BufId, rows: usize, c: usize) -> BufId {
        let out = self.temp(name.clone(), c);
        let blocks = if rows >= COLUMN_SUM_BLOCKS * COLUMN_SUM_MIN_ROWS {
            COLUMN_SUM_BLOCKS
        } else {
            0
        };
        let per = rows.checked_div(blocks).unwrap_or(0);
        let partial = (blocks > 0).then(|| {
            let partial = self.temp(format!("{name}.partial"), blocks * c);
            let (vb, vr, vj) = (0, 1, 2);
            let row = Index::new([(vb, c as i64), (vj, 1)], 0);
            let dy_at = Index::new([(vb, (per * c) as i64), (vr, c as i64), (vj, 1)], 0);
            let sum = Expr::load(partial, row.clone()).add(Expr::load(dy, dy_at));
            let k = LoopKernel::outer_loop(
                3,
                0,
                vb,
                blocks,
                vec![
                    Stmt::repeat(
                        vj,
                        c,
                        vec![Stmt::store(partial, row.clone(), Expr::Const(0.0))],
                    ),
                    Stmt::repeat(
                        vr,
                        per,
                        vec![Stmt::repeat(vj, c, vec![Stmt::store(partial, row, sum)])],
                    ),
                ],
            );
            self.looped(format!("{name}.partial"), k);
            partial
        });
        // out[j] = Σ_b partial[b, j] + Σ leftover rows dy[r, j]
        let (vj, vb, vr) = (0, 1, 2);
        let add = |buf, index| Stmt::Set {
            scalar: 0,
            value: Expr::Get(0).add(Expr::load(buf, index)),
        };
        let mut body = vec![Stmt::Set {
            scalar: 0,
            value: Expr::Const(0.0),
        }];
        if let Some(partial) = partial {
            let at = Index::new([(vb, c as i64), (vj, 1)], 0);
            body.push(Stmt::repeat(vb, blocks, vec![add(partial, at)]));
        }
        let done = blocks * per;
        if rows > done {
            let at = Index::new([(vr, c as i64), (vj, 1)], (done * c) as i64);
            body.push(Stmt::repeat(vr, rows - done, vec![add(dy, at)]));
        }
        body.push(Stmt::store(out, Index::var(vj, 1), Expr::Get(0)));
        let k = LoopKernel::outer_loop(3, 1, vj, c, body);
        self.looped(name, k);
        out
    }

    fn zero(&mut self, name: String, buf: BufId, len: usize) {
        let k = nest(&[len], 0, |v| {
            vec![Stmt::Store {
                buf,
                index: Index::var(v[0], 1),
                value: Expr::Const(0.0),
            }]
        });
        self.looped(name, k);
    }
}

/// Partial sums of a large column sum (see `Lowering::column_sums`).
const COLUMN_SUM_BLOCKS: usize = 8;
/// Fewest rows per partial sum worth a kernel of its own.
const COLUMN_SUM_MIN_ROWS: usize = 64;

/// Padding (top, bottom), (left, right) of a window op.
fn pads(
    h: usize,
    w: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: Padding,
) -> ((usize, usize), (usize, usize)) {
    match padding {
        Padding::Valid => ((0, 0), (0, 0)),
        Padding::Explicit(ph, pw) => ((ph, ph), (pw, pw)),
        Padding::Same => {
            let (_, t, b) = same_out(h, kernel.0, stride.0);
            let (_, l, r) = same_out(w, kernel.1, stride.1);
            ((t, b), (l, r))
        }
    }
}

/// `out[rows, units] = x[rows, f] · w[f, units] + bias`.
fn dense(
    rows: usize,
    f: usize,
    units: usize,
    x: BufId,
    w: BufId,
    bias: Option<BufId>,
    out: BufId,
) -> Contraction {
    Contraction {
        m_dims: [1, 1, rows],
        m_strides: [0, 0, f],
        n: units,
        k_dims: [1, 1, f],
        k_strides: [0, 0, 1],
        a: (x, 0),
        b: (w, 0),
        ldb: units,
        b_transposed: false,
        c: (out, 0),
        ldc: units,
        bias: bias.map(|b| (b, 0)),
        epilogue: Epilogue::None,
        accumulate: false,
    }
}

/// `a[rows, k] · bᵀ` for a `b` stored `[n, k]` (a weight read as `Wᵀ` by
/// an input gradient): [`dense`] with B read transposed, so no transpose
/// kernel runs first.
fn dense_bt(rows: usize, k: usize, n: usize, a: BufId, b: BufId, out: BufId) -> Contraction {
    Contraction {
        ldb: k,
        b_transposed: true,
        ..dense(rows, k, n, a, b, None, out)
    }
}

/// `aᵀ · b` for an `a` stored `[k, m]` and `b` `[k, n]` (a weight
/// gradient `xᵀ · dy`): [`dense`] with A read transposed, row `i` starting
/// at element `i` and the reduction stepping by `m`.
fn dense_at(m: usize, k: usize, n: usize, a: BufId, b: BufId, out: BufId) -> Contraction {
    Contraction {
        m_strides: [0, 0, 1],
        k_strides: [0, 0, m],
        ..dense(m, k, n, a, b, None, out)
    }
}

/// Loop variables of one window position over an NHWC input.
struct WindowVars {
    n: Var,
    oh: Var,
    ow: Var,
    kh: Var,
    kw: Var,
    c: Var,
}

/// For a window op over input `[n, h, w, c]` zero-padded by `pt` rows and
/// `pl` columns: the guards keeping the window's input row and column
/// inside the unpadded input, and the input element's index.
fn window_at(
    x: [usize; 4],
    stride: (usize, usize),
    (pt, pl): (usize, usize),
    v: WindowVars,
) -> (Vec<(Index, usize)>, Index) {
    let [_, h, w, c] = x;
    let ih = Index::new([(v.oh, stride.0 as i64), (v.kh, 1)], -(pt as i64));
    let iw = Index::new([(v.ow, stride.1 as i64), (v.kw, 1)], -(pl as i64));
    let at = Index::new(
        [
            (v.n, (h * w * c) as i64),
            (v.oh, (stride.0 * w * c) as i64),
            (v.kh, (w * c) as i64),
            (v.ow, (stride.1 * c) as i64),
            (v.kw, c as i64),
            (v.c, 1),
        ],
        -((pt * w * c + pl * c) as i64),
    );
    (vec![(ih, h), (iw, w)], at)
}

/// `body` under the bounds check `guards`, or alone when there is no
/// padding: then every window lies inside the input (output sizes are
/// floored), and the check would cost a compare per element for nothing.
fn guarded(padded: bool, guards: &[(Index, usize)], body: Vec<Stmt>) -> Vec<Stmt> {
    if padded {
        vec![Stmt::IfInBounds {
            conds: guards.to_vec(),
            body,
        }]
    } else {
        body
    }
}

/// The contraction epilogue of a fused activation.
fn epilogue(a: Option<Activation>) -> Epilogue {
    match a {
        None | Some(Activation::Softmax) => Epilogue::None,
        Some(Activation::Relu) => Epilogue::Relu,
        Some(Activation::LeakyRelu(alpha)) => Epilogue::LeakyRelu(alpha),
        Some(Activation::Sigmoid) => Epilogue::Sigmoid,
        Some(Activation::Tanh) => Epilogue::Tanh,
    }
}
