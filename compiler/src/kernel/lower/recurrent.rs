//! Lowering of the recurrent family: one unrolled cell step (`Op::Cell`)
//! and its gradient (`GradOp::CellGrad`). Whole recurrent layers have no
//! kernels; they must be unrolled into cells first.
//!
//! A step is `h·U (+ recurrent bias)` as one contraction for all gates
//! (skipped on the first step, where h = 0), then the gate math in one
//! loop kernel that keeps the activated gates in a buffer of their own.
//! The input projection `x·W + b` of every step is one dense layer over
//! the whole sequence (see `crate::opt::unroll`); a step reads its time
//! step in place. Time slices, state slices and their gradients are the
//! reshape family's (`reshape.rs`).
//!
//! A cell-gradient kernel reads the forward step's `h·U` product (the
//! lowering computes each product once, see `state_product`) and its
//! activated gates (kept in a buffer of their own, and an LSTM's `tanh c`
//! in another), so a step's gradient costs no matrix work and no
//! transcendental. Lowered without its forward step, it recomputes them.
//! Formulas: `docs/numerics.md`; with `z` the pre-activations,
//!
//! ```text
//! rnn:  dz = dh ∘ (1 − h²)
//! lstm: dc = dc_in + dh ∘ o ∘ (1 − tanh²c)
//!       dz_i = dc ∘ c̃ ∘ i(1−i)   dz_f = dc ∘ c₋₁ ∘ f(1−f)
//!       dz_c = dc ∘ i ∘ (1−c̃²)   dz_o = dh ∘ tanh c ∘ o(1−o)
//!       dc₋₁ = dc ∘ f
//! gru:  da = dh ∘ (1−z) ∘ (1−h̃²)         (a: h̃'s pre-activation)
//!       dz_z = dh ∘ (h₋₁ − h̃) ∘ z(1−z)   dz_r = da ∘ (h₋₁U_h + b̄_h) ∘ r(1−r)
//!       input block h: da; recurrent block h: da ∘ r;  dh₋₁ ⊇ dh ∘ z
//! ```

use super::*;
use crate::op::{CellKind, CellWrt};

/// What identifies one unrolled step's values: its input projection
/// (buffer, offset, row stride), recurrent weight and bias, and previous
/// state.
pub(super) type StepKey = (
    BufId,
    usize,
    usize,
    BufId,
    Option<BufId>,
    Option<(BufId, usize)>,
);

/// What identifies a step's `h·U (+ b_r)` product: the state it reads
/// (buffer, offset), the recurrent weight and bias.
pub(super) type ProductKey = ((BufId, usize), BufId, Option<BufId>);

/// Operands of one unrolled cell step.
struct StepCell {
    cell: CellKind,
    n: usize,
    u: usize,
    /// The step's input projection `[N, G·U]` (read in place).
    xt: View,
    uw: BufId,
    rb: Option<BufId>,
    /// The previous state `[N, S]` (rows of its own buffer or of the
    /// layer's state arena, see `Arena`); zero when absent.
    state: Option<View>,
}

impl StepCell {
    fn key(&self) -> StepKey {
        (
            self.xt.buf,
            self.xt.offset,
            self.xt.row_stride,
            self.uw,
            self.rb,
            self.state.map(|v| (v.buf, v.offset)),
        )
    }
}

/// Operands of a cell-gradient kernel.
struct CellGradArgs {
    /// The forward step.
    step: StepCell,
    /// `d(new state)` `[N, S]`.
    ds: BufId,
    /// `dz_rec · Uᵀ` `[N, U]` (only for [`CellWrt::State`]).
    dh_rec: Option<BufId>,
    /// Which gradient.
    wrt: CellWrt,
    /// Where the state gradient's direct part also goes (a gate-gradient
    /// kernel standing in for its step's state gradient, see `StateGrad`).
    state_out: Option<BufId>,
    /// Where a gate gradient goes when its stack is assembled in place
    /// (see `stack_slot` in `lower.rs`); else a buffer of its own.
    slot: Option<View>,
}

/// Element `(vn, vu + off)` of rows `v`.
fn row_at(v: View, vn: Var, vu: Var, off: usize) -> Index {
    Index::new(
        [(vn, v.row_stride as i64), (vu, 1)],
        (v.offset + off) as i64,
    )
}

fn one_minus(e: Expr) -> Expr {
    Expr::Const(1.0).bin(BinOp::Sub, e)
}

/// `s·(1 − s)`: the logistic's derivative from its value.
fn dsig(s: Expr) -> Expr {
    s.clone().mul(one_minus(s))
}

/// `1 − t²`: tanh's derivative from its value.
fn dtanh(t: Expr) -> Expr {
    one_minus(t.clone().mul(t))
}

impl Lowering<'_> {
    /// `Op::Cell`: one unrolled step.
    pub(super) fn lower_cell(
        &mut self,
        cx: NodeCx,
        cell: CellKind,
        units: usize,
        has_state: bool,
        recurrent_bias: bool,
    ) -> Result<BufId, LowerError> {
        let NodeCx {
            id, name, ins, ib, ..
        } = cx;
        let xt = self.view_of(ins[0])?;
        let state = match has_state {
            true => Some(self.view_of(ins[ins.len() - 1])?),
            false => None,
        };
        let c = StepCell {
            cell,
            n: self.n,
            u: units,
            xt,
            uw: ib[1],
            rb: recurrent_bias.then(|| ib[2]),
            state,
        };
        let out = self.arena_slot(id, &name, &c);
        if let Some(v) = out {
            self.views.insert(id, v);
        }
        let gates = self.gate_slot(id, cell, units);
        Ok(self.cell_step(&name, &c, out, gates))
    }

    /// Where dense node `id`, the input projection `x·W + b` of an LSTM
    /// layer's every step, writes its value when each step's activated
    /// gates go to a slot of one time-major stack (see `gate_slot`): into
    /// that stack, step by step, so that each cell reads its `x_t·W + b`
    /// from the slot it then overwrites with its gates (and the gradient
    /// with `dz`). The forward pass then keeps no `[N, T, G·U]` buffer of
    /// its own either. Returns the stack and its number of steps; `None`
    /// unless every user of `id` is a time slice whose only readers are
    /// its step's cell and that step's cell gradients (which read the
    /// saved gates, never `x_t`), every step has a gate slot at its own
    /// time in one stack, and `id` reads a buffer of its own.
    pub(super) fn projection_stack(&mut self, id: NodeId, units: usize) -> Option<(BufId, usize)> {
        let x = *self.g.inputs_of(id).first()?;
        let shape = self.full_shape(id).ok()?;
        if self.views.contains_key(&x)
            || shape.len() != 3
            || self.g.outputs.iter().any(|(_, o)| *o == id)
        {
            return None;
        }
        let (n, t) = (shape[0], shape[1]);
        let mut cells = vec![None; t];
        for ts in self.g.users_of(id) {
            let Op::TimeSlice { step } = self.g.node(ts).op else {
                return None;
            };
            let mut cell = None;
            for u in self.g.users_of(ts) {
                let ins = self.g.inputs_of(u);
                match self.g.node(u).op {
                    Op::Cell {
                        cell: CellKind::Lstm,
                        units: cu,
                        ..
                    } if cu * CellKind::Lstm.gates() == units
                        && cell.is_none()
                        && ins.first() == Some(&ts) =>
                    {
                        cell = Some(u)
                    }
                    Op::Grad(GradOp::CellGrad {
                        cell: CellKind::Lstm,
                        ..
                    }) if ins.first() == Some(&ts) && !ins[1..].contains(&ts) => {}
                    _ => return None,
                }
            }
            let slot = cells.get_mut(step)?;
            if slot.is_some() {
                return None;
            }
            *slot = Some(cell?);
        }
        let mut stack = None;
        for (step, cell) in cells.into_iter().enumerate() {
            let v = self.gate_slot(cell?, CellKind::Lstm, units / CellKind::Lstm.gates())?;
            let tm = self.time_major.get(&v.buf)?;
            let at_its_time = v.offset == step * n * units && v.row_stride == units;
            if tm.step_len != n * units || !at_its_time || stack.is_some_and(|b| b != v.buf) {
                return None;
            }
            stack = Some(v.buf);
        }
        Some((stack?, t))
    }

    /// Where LSTM step `id` keeps its activated gates: the slot of its gate
    /// gradient in that gradient's in-place stack (see `stack_slot`), when
    /// the gate-gradient kernel is their only reader (the step's state
    /// gradient is fused into it, see `fuse_state_grad`). That kernel reads
    /// a slot's four gates before it writes the four `dz` over them,
    /// element by element, so the backward pass keeps one `[T, N, G·U]`
    /// buffer instead of two: the step's working set shrinks by a quarter
    /// and the gate gradients write lines they have just read instead of
    /// fetching fresh ones. `None` (gates in a buffer of their own)
    /// otherwise, and for GRUs, whose gates two gradient kernels read.
    fn gate_slot(&mut self, id: NodeId, cell: CellKind, units: usize) -> Option<View> {
        if cell != CellKind::Lstm {
            return None;
        }
        let step = self.g.inputs_of(id);
        let readers: Vec<(NodeId, CellWrt)> = self
            .g
            .users_of(*step.first()?)
            .into_iter()
            .filter_map(|u| match self.g.node(u).op {
                Op::Grad(GradOp::CellGrad { wrt, .. }) => {
                    let ins = self.g.inputs_of(u);
                    (ins.len() > step.len() && ins[..step.len()] == step[..]).then_some((u, wrt))
                }
                _ => None,
            })
            .collect();
        let mut gate_grads = readers.iter().filter(|(_, w)| *w != CellWrt::State);
        let (gg, _) = *gate_grads.next()?;
        if gate_grads.next().is_some() {
            return None;
        }
        let fused = self.fusable_state_grad(gg, &self.g.inputs_of(gg), cell, units);
        let only_reader = readers
            .iter()
            .all(|&(r, w)| r == gg || (w == CellWrt::State && fused.is_some_and(|(_, s)| s == r)));
        if !only_reader {
            return None;
        }
        let v = self.stack_slot(gg)?;
        // Named for both values it holds, in the order it holds them.
        let layer = self
            .g
            .node(id)
            .name
            .rsplit_once('.')
            .map(|(l, _)| l.to_string());
        let stack = &mut self.p.buffers[v.buf].name;
        if let Some(layer) = layer.filter(|_| stack.starts_with("grad:")) {
            *stack = format!("{layer}.gates|{stack}");
        }
        Some(v)
    }

    /// `GradOp::CellGrad`: one step's gradient.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lower_cell_grad(
        &mut self,
        cx: NodeCx,
        cell: CellKind,
        units: usize,
        has_state: bool,
        recurrent_bias: bool,
        wrt: CellWrt,
    ) -> Result<BufId, LowerError> {
        let NodeCx {
            id, name, ins, ib, ..
        } = cx;
        let n = self.n;
        if let Some(sg) = self.state_grads.get(&id) {
            return Ok(sg.buf);
        }
        // Operands: x_t, U, [b_r], [state], d(new state), [dh_rec].
        let rbi = recurrent_bias.then_some(2);
        let si = has_state.then_some(2 + usize::from(recurrent_bias));
        let di = 2 + usize::from(recurrent_bias) + usize::from(has_state);
        let state_out = (wrt != CellWrt::State)
            .then(|| self.fuse_state_grad(id, &ins[..=di], cell, units))
            .flatten();
        let slot = (wrt != CellWrt::State)
            .then(|| self.stack_slot(id))
            .flatten();
        let args = CellGradArgs {
            step: StepCell {
                cell,
                n,
                u: units,
                xt: self.view_of(ins[0])?,
                uw: ib[1],
                rb: rbi.map(|i| ib[i]),
                state: match si {
                    Some(i) => Some(self.view_of(ins[i])?),
                    None => None,
                },
            },
            ds: ib[di],
            dh_rec: ib.get(di + 1).copied(),
            wrt,
            state_out,
            slot,
        };
        Ok(self.cell_grad(&name, &args))
    }

    /// When gate-gradient node `id` (operands `step`: x_t, U, [b_r],
    /// [state], d(new state)) feeds a product `dz·Uᵀ` whose only consumer
    /// is the same step's state gradient, registers that state gradient
    /// as a `StateGrad` and returns its buffer, which `id`'s kernel then
    /// writes the direct part into.
    fn fuse_state_grad(
        &mut self,
        id: NodeId,
        step: &[NodeId],
        cell: CellKind,
        units: usize,
    ) -> Option<BufId> {
        let (product, s) = self.fusable_state_grad(id, step, cell, units)?;
        let row = if cell == CellKind::Lstm {
            2 * units
        } else {
            units
        };
        let buf = self.temp(self.g.node(s).name.clone(), self.n * row);
        self.state_grads.insert(
            s,
            StateGrad {
                buf,
                row,
                accumulate: cell == CellKind::Gru,
                product,
            },
        );
        Some(buf)
    }

    /// The product `dz·Uᵀ` and state-gradient node that
    /// [`fuse_state_grad`](Self::fuse_state_grad) fuses into gate-gradient
    /// node `id`, if it can.
    fn fusable_state_grad(
        &self,
        id: NodeId,
        step: &[NodeId],
        cell: CellKind,
        units: usize,
    ) -> Option<(NodeId, NodeId)> {
        let sole_user = |n: NodeId| {
            let users = self.g.users_of(n);
            let edges = self
                .g
                .g
                .edges_directed(n, petgraph::Direction::Outgoing)
                .count();
            let output = self.g.outputs.iter().any(|(_, o)| *o == n);
            (users.len() == 1 && edges == 1 && !output).then(|| users[0])
        };
        let product = self.g.users_of(id).into_iter().find(|&p| {
            matches!(self.g.node(p).op, Op::Grad(GradOp::DenseDx))
                && self.g.inputs_of(p).first() == Some(&id)
        })?;
        let s = sole_user(product)?;
        let Op::Grad(GradOp::CellGrad {
            cell: c2,
            units: u2,
            wrt: CellWrt::State,
            ..
        }) = self.g.node(s).op
        else {
            return None;
        };
        let s_ins = self.g.inputs_of(s);
        if c2 != cell || u2 != units || s_ins.len() != step.len() + 1 {
            return None;
        }
        if s_ins[..step.len()] != *step || s_ins[step.len()] != product {
            return None;
        }
        Some((product, s))
    }

    /// Where step `id`'s new state goes when its layer keeps its states in
    /// an arena (see [`Arena`]): the first step (no state operand) opens
    /// one when every step's state is read only by the next step, the
    /// cell gradients and row slices (all read views); a later step takes
    /// the slot after its state's.
    fn arena_slot(&mut self, id: NodeId, name: &str, c: &StepCell) -> Option<View> {
        let s_len = if c.cell == CellKind::Lstm {
            2 * c.u
        } else {
            c.u
        };
        let slot_len = c.n * s_len;
        let (buf, slot) = match c.state {
            None => {
                let steps = self.arena_chain(id)?;
                let layer = name.rsplit_once('.').map_or(name, |(l, _)| l);
                let buf = self.temp(format!("{layer}.states"), steps * slot_len);
                self.arenas.insert(
                    buf,
                    Arena {
                        slot_len,
                        slots: steps,
                    },
                );
                (buf, 0)
            }
            Some(v) => {
                let a = self.arenas.get(&v.buf)?;
                let slot = v.offset / a.slot_len + 1;
                (v.offset % a.slot_len == 0 && slot < a.slots).then_some((v.buf, slot))?
            }
        };
        Some(View {
            buf,
            offset: slot * slot_len,
            row_stride: s_len,
        })
    }

    /// How many steps of the chain of cells starting at `first` (each
    /// step's state the next one's state operand, all with `first`'s
    /// recurrent weight) keep their states in an arena: all, when every
    /// state is read only by the next step, by cell gradients (as their
    /// state operand), and by slices, stacks and weight gradients (as
    /// `x`), which all read it through its view; all but the last when
    /// only the last state has other readers.
    fn arena_chain(&self, first: NodeId) -> Option<usize> {
        use petgraph::visit::EdgeRef;
        let weight = *self.g.inputs_of(first).get(1)?;
        let (mut cur, mut steps) = (first, 1);
        loop {
            let mut viewed = !self.g.outputs.iter().any(|(_, o)| *o == cur);
            let mut next = None;
            for e in self.g.g.edges_directed(cur, petgraph::Direction::Outgoing) {
                let t = e.target();
                let ins = self.g.inputs_of(t);
                let slot = *e.weight();
                match self.g.node(t).op {
                    Op::Cell {
                        has_state: true, ..
                    } if next.is_none() && ins.get(1) == Some(&weight) && slot + 1 == ins.len() => {
                        next = Some(t)
                    }
                    Op::Grad(GradOp::CellGrad {
                        has_state: true,
                        recurrent_bias,
                        ..
                    }) if slot == 2 + usize::from(recurrent_bias) => {}
                    // Read through the state's view: a slice of its
                    // columns, a stack of the steps (an RNN's states are
                    // its outputs), an RNN's `hᵀ·dz`.
                    Op::Slice { .. } | Op::Stack => {}
                    Op::Grad(GradOp::DenseDw) if slot == 0 => {}
                    _ => viewed = false,
                }
            }
            match (next, viewed) {
                (Some(n), true) => {
                    cur = n;
                    steps += 1;
                }
                (None, true) => return Some(steps),
                // The last state read otherwise (an RNN's output by the
                // next layer) goes in a buffer of its own.
                (None, false) if steps > 1 => return Some(steps - 1),
                _ => return None,
            }
        }
    }

    /// `h·U (+ recurrent bias)` of step `c` for all gates, as one
    /// contraction into `<name>.hu`; `None` on the first step (h = 0).
    fn state_product(&mut self, name: &str, c: &StepCell) -> Option<BufId> {
        let (n, u) = (c.n, c.u);
        let gu = c.cell.gates() * u;
        let state = c.state?;
        let key = ((state.buf, state.offset), c.uw, c.rb);
        if let Some(hu) = self.products.get(&key) {
            return Some(*hu);
        }
        let hu = self.temp(format!("{name}.hu"), n * gu);
        self.kernel(
            format!("{name}.hu"),
            KernelBody::Contraction(Contraction {
                m_dims: [1, 1, n],
                m_strides: [0, 0, state.row_stride],
                n: gu,
                k_dims: [1, 1, u],
                k_strides: [0, 0, 1],
                a: (state.buf, state.offset),
                b: (c.uw, 0),
                ldb: gu,
                b_transposed: false,
                c: (hu, 0),
                ldc: gu,
                bias: c.rb.map(|b| (b, 0)),
                epilogue: Epilogue::None,
                accumulate: false,
            }),
        );
        self.products.insert(key, hu);
        Some(hu)
    }

    /// One recurrent step: `h·U (+ recurrent bias)` as one contraction for
    /// all gates (skipped on the first step, where h = 0), then the gate
    /// math in one loop kernel.
    /// `out`: where the new state goes (a slot of the layer's state arena),
    /// else a buffer of its own.
    /// `gates`: where the activated gates go (see `gate_slot`), else a
    /// buffer of their own.
    fn cell_step(
        &mut self,
        name: &str,
        c: &StepCell,
        out: Option<View>,
        gates: Option<View>,
    ) -> BufId {
        let (n, u) = (c.n, c.u);
        let gu = c.cell.gates() * u;
        let s_len = if c.cell == CellKind::Lstm { 2 * u } else { u };
        let out = out.unwrap_or_else(|| View {
            buf: self.temp(name.to_string(), n * s_len),
            offset: 0,
            row_stride: s_len,
        });
        let hu = self.state_product(name, c);
        // Activated gates go to their slot of the gate gradients' stack
        // (see `gate_slot`) or a [N, G·U] buffer of their own, never over
        // h·U (it stays intact for the gradient, see `state_product`).
        // One loop per gate,
        // each with one transcendental call, keeps the calls of neighbouring
        // elements independent (a single loop with all five calls is about
        // twice as slow), and it is still one kernel.
        let gz = if c.cell == CellKind::Rnn {
            out
        } else if let Some(v) = gates {
            v
        } else {
            View {
                buf: self.temp(format!("{name}.gates"), n * gu),
                offset: 0,
                row_stride: gu,
            }
        };
        self.gates.insert(c.key(), gz);
        // An LSTM keeps `tanh c` for its gradient, which would otherwise
        // recompute it (a buffer of its own: the gates kernel's last loop
        // reads the gates, and a loop that reads and writes one buffer at
        // different places cannot be shared by a GPU block's threads).
        let tanh_c = (c.cell == CellKind::Lstm).then(|| {
            let b = self.temp(format!("{name}.tanh_c"), n * u);
            self.tanh_c.insert(c.key(), b);
            b
        });
        let (xt, rb, state) = (c.xt, c.rb, c.state);
        let (vn, vu) = (0, 1);
        let x_at = |g: usize| {
            Expr::load(
                xt.buf,
                Index::new(
                    [(vn, xt.row_stride as i64), (vu, 1)],
                    (xt.offset + g * u) as i64,
                ),
            )
        };
        let g_at = |g: usize| {
            Index::new(
                [(vn, gz.row_stride as i64), (vu, 1)],
                (gz.offset + g * u) as i64,
            )
        };
        // h₋₁·U + b_r for gate g (just b_r, or 0, on the first step).
        let h_at = |g: usize| match (hu, rb) {
            (Some(hu), _) => Expr::load(hu, Index::new([(vn, gu as i64), (vu, 1)], (g * u) as i64)),
            (None, Some(rb)) => Expr::load(rb, Index::var(vu, 1).shift((g * u) as i64)),
            (None, None) => Expr::Const(0.0),
        };
        let z = |g: usize| x_at(g).add(h_at(g));
        let gate = |g: usize| Expr::load(gz.buf, g_at(g));
        let prev = |off: usize| match state {
            Some(sv) => Expr::load(sv.buf, row_at(sv, vn, vu, off)),
            None => Expr::Const(0.0),
        };
        let h_out = row_at(out, vn, vu, 0);
        let per_unit = |body: Vec<Stmt>| Stmt::Loop {
            var: vu,
            extent: u,
            body,
        };
        let set_gate = |g: usize, value: Expr| {
            per_unit(vec![Stmt::Store {
                buf: gz.buf,
                index: g_at(g),
                value,
            }])
        };
        let body = match c.cell {
            CellKind::Rnn => vec![per_unit(vec![Stmt::Store {
                buf: out.buf,
                index: h_out,
                value: z(0).un(UnOp::Tanh),
            }])],
            CellKind::Lstm => vec![
                set_gate(0, z(0).un(UnOp::Sigmoid)), // i
                set_gate(1, z(1).un(UnOp::Sigmoid)), // f
                set_gate(2, z(2).un(UnOp::Tanh)),    // candidate
                set_gate(3, z(3).un(UnOp::Sigmoid)), // o
                per_unit(vec![
                    // c = f·c₋₁ + i·c̃; h = o·tanh(c)
                    Stmt::Set {
                        scalar: 0,
                        value: gate(1).mul(prev(u)).add(gate(0).mul(gate(2))),
                    },
                    Stmt::Store {
                        buf: out.buf,
                        index: h_out.clone().shift(u as i64),
                        value: Expr::Get(0),
                    },
                    Stmt::Set {
                        scalar: 1,
                        value: Expr::Get(0).un(UnOp::Tanh),
                    },
                    Stmt::Store {
                        buf: tanh_c.expect("an LSTM step keeps tanh c"),
                        index: Index::new([(vn, u as i64), (vu, 1)], 0),
                        value: Expr::Get(1),
                    },
                    Stmt::Store {
                        buf: out.buf,
                        index: h_out,
                        value: gate(3).mul(Expr::Get(1)),
                    },
                ]),
            ],
            CellKind::Gru => vec![
                set_gate(0, z(0).un(UnOp::Sigmoid)), // z
                set_gate(1, z(1).un(UnOp::Sigmoid)), // r
                // Keras reset_after: h̃ = tanh(x·W_h + b_h + r ∘ (h·U_h + b_rh)).
                set_gate(2, x_at(2).add(gate(1).mul(h_at(2))).un(UnOp::Tanh)),
                // h = z·h₋₁ + (1 − z)·h̃
                per_unit(vec![Stmt::Store {
                    buf: out.buf,
                    index: h_out,
                    value: gate(0)
                        .mul(prev(0))
                        .add(Expr::Const(1.0).bin(BinOp::Sub, gate(0)).mul(gate(2))),
                }]),
            ],
        };
        let k = LoopKernel::outer_loop(2, 2, vn, n, body);
        self.looped(name.to_string(), k);
        out.buf
    }

    /// One cell step's gradient (see the module docs).
    fn cell_grad(&mut self, name: &str, a: &CellGradArgs) -> BufId {
        let c = &a.step;
        let (n, u) = (c.n, c.u);
        let gu = c.cell.gates() * u;
        let s_len = if c.cell == CellKind::Lstm { 2 * u } else { u };
        let out_len = match a.wrt {
            CellWrt::State => n * s_len,
            _ => n * gu,
        };
        let (out, gate_row, gate_off) = match a.slot {
            Some(v) => (v.buf, v.row_stride, v.offset),
            None => (self.temp(name.to_string(), out_len), gu, 0),
        };
        // h₋₁·U + b_r: the forward step's product.
        let hu = self.state_product(name, c);
        // The forward step's activated gates, when it was lowered into this
        // program (always, in a training step).
        let saved = self.gates.get(&c.key()).copied();
        let saved_tanh_c = self.tanh_c.get(&c.key()).copied();
        let (xt, rb, state, ds, dh_rec, wrt, cell) =
            (c.xt, c.rb, c.state, a.ds, a.dh_rec, a.wrt, c.cell);
        let k = nest(&[n, u], 8, |v| {
            let (vn, vu) = (v[0], v[1]);
            let x_at = |g: usize| {
                Expr::load(
                    xt.buf,
                    Index::new(
                        [(vn, xt.row_stride as i64), (vu, 1)],
                        (xt.offset + g * u) as i64,
                    ),
                )
            };
            let h_at = |g: usize| match (hu, rb) {
                (Some(hu), _) => {
                    Expr::load(hu, Index::new([(vn, gu as i64), (vu, 1)], (g * u) as i64))
                }
                (None, Some(rb)) => Expr::load(rb, Index::var(vu, 1).shift((g * u) as i64)),
                (None, None) => Expr::Const(0.0),
            };
            let z = |g: usize| x_at(g).add(h_at(g));
            // Gate g's activation: saved by the forward step, else recomputed.
            let act = |g: usize, f: UnOp, pre: Expr| match saved {
                Some(v) => Expr::load(v.buf, row_at(v, vn, vu, g * u)),
                None => pre.un(f),
            };
            let prev = |off: usize| match state {
                Some(sv) => Expr::load(sv.buf, row_at(sv, vn, vu, off)),
                None => Expr::Const(0.0),
            };
            let d_in =
                |off: usize| Expr::load(ds, Index::new([(vn, s_len as i64), (vu, 1)], off as i64));
            let dh_r = || match dh_rec {
                Some(b) => Expr::load(b, Index::new([(vn, u as i64), (vu, 1)], 0)),
                None => Expr::Const(0.0),
            };
            let g = Expr::Get;
            let set = |scalar: usize, value: Expr| Stmt::Set { scalar, value };
            let store_gate = |gate: usize, value: Expr| Stmt::Store {
                buf: out,
                index: Index::new(
                    [(vn, gate_row as i64), (vu, 1)],
                    (gate_off + gate * u) as i64,
                ),
                value,
            };
            let store_state = |off: usize, value: Expr| Stmt::Store {
                buf: out,
                index: Index::new([(vn, s_len as i64), (vu, 1)], off as i64),
                value,
            };
            match cell {
                CellKind::Rnn => {
                    // h = tanh(z); dz = dh(1 − h²).
                    let mut b = vec![set(0, act(0, UnOp::Tanh, z(0)))];
                    b.push(match wrt {
                        CellWrt::State => store_state(0, dh_r()),
                        _ => store_gate(0, d_in(0).mul(dtanh(g(0)))),
                    });
                    b
                }
                CellKind::Lstm => {
                    let mut b = vec![
                        set(0, act(0, UnOp::Sigmoid, z(0))), // i
                        set(1, act(1, UnOp::Sigmoid, z(1))), // f
                        set(2, act(2, UnOp::Tanh, z(2))),    // c̃
                        set(3, act(3, UnOp::Sigmoid, z(3))), // o
                        set(4, prev(u)),                     // c₋₁
                        // tanh c
                        set(
                            5,
                            match saved_tanh_c {
                                Some(b) => Expr::load(b, Index::new([(vn, u as i64), (vu, 1)], 0)),
                                None => g(1).mul(g(4)).add(g(0).mul(g(2))).un(UnOp::Tanh),
                            },
                        ),
                        set(6, d_in(0)), // dh
                        // dc = dc_in + dh·o·(1 − tanh²c)
                        set(7, d_in(u).add(g(6).mul(g(3)).mul(dtanh(g(5))))),
                    ];
                    match wrt {
                        CellWrt::State => {
                            b.push(store_state(0, dh_r()));
                            b.push(store_state(u, g(7).mul(g(1))));
                        }
                        _ => {
                            if let Some(sb) = a.state_out {
                                // dc₋₁ = f·dc; the product writes dh₋₁.
                                b.push(Stmt::Store {
                                    buf: sb,
                                    index: Index::new([(vn, s_len as i64), (vu, 1)], u as i64),
                                    value: g(7).mul(g(1)),
                                });
                            }
                            b.push(store_gate(0, g(7).mul(g(2)).mul(dsig(g(0)))));
                            b.push(store_gate(1, g(7).mul(g(4)).mul(dsig(g(1)))));
                            b.push(store_gate(2, g(7).mul(g(0)).mul(dtanh(g(2)))));
                            b.push(store_gate(3, g(6).mul(g(5)).mul(dsig(g(3)))));
                        }
                    }
                    b
                }
                CellKind::Gru => {
                    let mut b = vec![
                        set(0, act(0, UnOp::Sigmoid, z(0))),                     // z
                        set(1, act(1, UnOp::Sigmoid, z(1))),                     // r
                        set(2, h_at(2)),                                         // h₋₁·U_h + b̄_h
                        set(3, act(2, UnOp::Tanh, x_at(2).add(g(1).mul(g(2))))), // h̃
                        set(4, prev(0)),                                         // h₋₁
                        set(5, d_in(0)),                                         // dh
                        // da = dh·(1 − z)·(1 − h̃²)
                        set(6, g(5).mul(one_minus(g(0))).mul(dtanh(g(3)))),
                    ];
                    match wrt {
                        CellWrt::State => {
                            b.push(store_state(0, dh_r().add(g(5).mul(g(0)))));
                        }
                        _ => {
                            if let Some(sb) = a.state_out {
                                // dh₋₁ = dz·Uᵀ + z·dh: the product adds its part.
                                b.push(Stmt::Store {
                                    buf: sb,
                                    index: Index::new([(vn, s_len as i64), (vu, 1)], 0),
                                    value: g(5).mul(g(0)),
                                });
                            }
                            b.push(store_gate(
                                0,
                                g(5).mul(g(4).bin(BinOp::Sub, g(3))).mul(dsig(g(0))),
                            ));
                            b.push(store_gate(1, g(6).mul(g(2)).mul(dsig(g(1)))));
                            let h = if wrt == CellWrt::Recurrent {
                                g(6).mul(g(1))
                            } else {
                                g(6)
                            };
                            b.push(store_gate(2, h));
                        }
                    }
                    b
                }
            }
        });
        self.looped(name.to_string(), k);
        out
    }
}

impl Lowering<'_> {
    /// `Op::MaskStep` (`prev` present) and, through `keep_new: false`,
    /// `GradOp::MaskStepPrev`: per example, one operand or the other (or
    /// zero) by the mask at `step`. A select, not `m·a + (1−m)·b`, so
    /// the value kept is exact and a non-finite value not kept stays out.
    pub(super) fn lower_mask_step(
        &mut self,
        cx: NodeCx,
        step: usize,
        keep_new: bool,
    ) -> Result<BufId, LowerError> {
        let NodeCx {
            name,
            ins,
            ib,
            out_len,
            ..
        } = cx;
        let steps = self.full_shape(ins[0])?[1];
        let (n, s) = (self.n, out_len / self.n.max(1));
        let out = self.temp(name.clone(), out_len);
        let k = nest(&[n, s], 0, |v| {
            let at = linear(v, &[n, s]);
            let pick = if_real(ib[0], Index::new([(v[0], steps as i64)], step as i64));
            let value = Expr::load(ib[1], at.clone());
            let other = ib
                .get(2)
                .map_or(Expr::Const(0.0), |b| Expr::load(*b, at.clone()));
            let value = if keep_new {
                pick(value, other)
            } else {
                pick(Expr::Const(0.0), value)
            };
            vec![Stmt::Store {
                buf: out,
                index: at,
                value,
            }]
        });
        self.looped(name, k);
        Ok(out)
    }
}
