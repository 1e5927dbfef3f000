//! Lowering of the dense family: `x · W + b` on the last axis as one
//! contraction (bias and activation in its epilogue); backward,
//! `dx = dy · Wᵀ` and `dW = xᵀ · dy`, contractions that read the operand
//! laid out the other way transposed (no transpose kernel). The bias gradient (`GradOp::BiasGrad`)
//! lives here too: it is the column sum of `dy` that every layer with a
//! bias per output channel uses (dense, conv2d, batchnorm's β, the
//! recurrent biases).

use super::*;

/// The most input features of a weight gradient computed with its bias
/// gradient in one loop kernel (see `stack_grads`).
const FUSED_FEATURES: usize = 2;

impl Lowering<'_> {
    /// `dense`: one contraction, with bias and activation in its epilogue.
    pub(super) fn lower_dense(
        &mut self,
        cx: NodeCx,
        units: usize,
        activation: Option<Activation>,
    ) -> Result<BufId, LowerError> {
        let NodeCx {
            id,
            name,
            ins,
            ib,
            out_len,
        } = cx;
        let x = self.full_shape(ins[0])?;
        let f = *x.last().unwrap_or(&1);
        let rows = x.iter().product::<usize>() / f.max(1);
        if activation.is_none() {
            if let Some((stack, t)) = self.projection_stack(id, units) {
                let mut c = dense(rows, f, units, ib[0], ib[1], ib.get(2).copied(), stack);
                c.m_dims = [1, t, rows / t.max(1)];
                c.m_strides = [0, f, t * f];
                let held = &mut self.p.buffers[stack].name;
                *held = format!("{name}|{held}");
                self.kernel(name, KernelBody::Contraction(c));
                return Ok(stack);
            }
        }
        let out = self.temp(name.clone(), out_len);
        let mut c = dense(rows, f, units, ib[0], ib[1], ib.get(2).copied(), out);
        c.epilogue = epilogue(activation);
        self.kernel(name, KernelBody::Contraction(c));
        Ok(out)
    }

    /// `GradOp::DenseDx`.
    pub(super) fn lower_dense_dx(&mut self, cx: NodeCx) -> Result<BufId, LowerError> {
        let NodeCx {
            id,
            name,
            ins,
            ib,
            out_len,
            ..
        } = cx;
        // dx[M, F] = dy[M, U] · Wᵀ
        let w = self.shape(ins[1])?;
        let (f, u) = (w[0], w[1]);
        let rows = out_len / f;
        // A recurrent step's `dz·Uᵀ` goes straight into the state gradient
        // it is part of (see `StateGrad` in `lower.rs`).
        let sg = self.state_grad_of_product(id);
        let out = match sg {
            Some(sg) => sg.buf,
            None => self.temp(name.clone(), out_len),
        };
        let mut c = dense_bt(rows, u, f, ib[0], ib[1], out);
        if let Some(sg) = sg {
            c.ldc = sg.row;
            c.accumulate = sg.accumulate;
        }
        // dy read in place (a gate gradient inside its stack).
        if let Some(v) = self.views.get(&ins[0]) {
            c.a = (v.buf, v.offset);
            c.m_strides = [0, 0, v.row_stride];
        }
        self.kernel(name, KernelBody::Contraction(c));
        Ok(out)
    }

    /// `GradOp::DenseDw`. `x` is read in place when it is a view (a
    /// recurrent step's `h` inside its state). A weight used at every
    /// time step gets one such product per step, summed by an `add`; when
    /// every term of that sum is a product like this one, each writes
    /// straight into the sum's buffer, the first overwriting and the rest
    /// accumulating (in lowering order), so there is neither a buffer per
    /// step nor a pass adding them (see [`Lowering::sum_of_products`]).
    pub(super) fn lower_dense_dw(&mut self, cx: NodeCx) -> Result<BufId, LowerError> {
        let NodeCx {
            id, name, ins, ib, ..
        } = cx;
        if let Some(buf) = self
            .stack_grads(ins[1])?
            .and_then(|_| self.fused_grads.get(&id))
        {
            return Ok(*buf);
        }
        let out_shape = self.full_shape(id)?;
        // dW[F, U] = xᵀ[F, M] · dy[M, U]
        let x = self.full_shape(ins[0])?;
        let f = *x.last().unwrap_or(&1);
        let rows: usize = x.iter().product::<usize>() / f;
        let u = out_shape[out_shape.len() - 1];
        let sum = self.sum_of_products(id);
        if let Some(sum) = sum {
            if !self.sums.contains_key(&sum) {
                let buf = self.temp(self.g.node(sum).name.clone(), f * u);
                self.sums.insert(sum, buf);
                if let Some(c) = self.sum_over_arena(sum, buf) {
                    self.merged.insert(sum, c);
                }
            }
            if self.merged.contains_key(&sum) {
                // The sum's one contraction runs at the `add`.
                return Ok(self.sums[&sum]);
            }
        }
        let (out, accumulate) = match sum {
            Some(sum) => (self.sums[&sum], !self.summed.insert(sum)),
            None => (self.temp(name.clone(), f * u), false),
        };
        let mut c = dense_at(f, rows, u, ib[0], ib[1], out);
        if let Some(v) = self.views.get(&ins[0]) {
            c.a = (v.buf, v.offset);
            c.k_strides = [0, 0, v.row_stride];
        }
        // dy a time-major stack: x `[N, T, F]` read in the same row order
        // (`stack_slot` checked the shape).
        let dy_is_stack = matches!(self.g.node(ins[1]).op, Op::Stack);
        if let (Some(tm), true) = (self.time_major.get(&ib[1]).copied(), dy_is_stack) {
            let xv = self.view_of(ins[0])?;
            c.a = (xv.buf, xv.offset);
            c.k_dims = [1, tm.steps, rows / tm.steps.max(1)];
            c.k_strides = [0, f, xv.row_stride];
        }
        // dy read in place (a gate gradient inside its stack).
        if let Some(v) = self.views.get(&ins[1]) {
            c.b = (v.buf, v.offset);
            c.ldb = v.row_stride;
        }
        c.accumulate = accumulate;
        self.kernel(name, KernelBody::Contraction(c));
        Ok(out)
    }

    /// The whole sum `Σ_t h_{t-1}ᵀ·dz_t` of a recurrent weight's gradient
    /// as one contraction into `out`, when its terms read every step's `h`
    /// in its layer's state arena (see `Arena`) and every step's `dz` in
    /// place in one time-major stack (see `TimeMajor`), and cover every
    /// step but the first: the sum is `Hᵀ·DZ` over the rows `(t, n)`, `H`
    /// the arena's slots `0..T−1` (rows of stride `S`) and `DZ` the
    /// stack's steps `1..T`. One product with a reduction of `(T−1)·N`
    /// instead of `T − 1` products of `N` each.
    fn sum_over_arena(&mut self, sum: NodeId, out: BufId) -> Option<Contraction> {
        let terms = self.g.inputs_of(sum);
        let mut arena = None;
        let mut stack = None;
        let mut steps = Vec::new();
        for &t in &terms {
            let ins = self.g.inputs_of(t);
            let h = self.rows_in_arena(*ins.first()?)?;
            let a = *self.arenas.get(&h.buf)?;
            let dz = self.stack_slot(*ins.get(1)?)?;
            let tm = *self.time_major.get(&dz.buf)?;
            let s = a.slot_len / self.n.max(1);
            if h.row_stride != s || h.offset % a.slot_len != 0 {
                return None;
            }
            if arena.get_or_insert((h.buf, a)).0 != h.buf
                || *stack.get_or_insert((dz.buf, dz.row_stride)) != (dz.buf, dz.row_stride)
            {
                return None;
            }
            let (slot, step) = (h.offset / a.slot_len, dz.offset / tm.step_len.max(1));
            if slot + 1 != step || dz.offset % tm.step_len.max(1) != 0 {
                return None;
            }
            steps.push(step);
        }
        let ((abuf, a), (sbuf, f)) = (arena?, stack?);
        let tm = self.time_major[&sbuf];
        steps.sort_unstable();
        if a.slots + 1 < tm.steps
            || tm.step_len != self.n * f
            || steps != (1..tm.steps).collect::<Vec<_>>()
        {
            return None;
        }
        let (n, s) = (self.n, a.slot_len / self.n.max(1));
        let u = self
            .full_shape(self.g.inputs_of(terms[0])[0])
            .ok()?
            .last()
            .copied()?;
        Some(Contraction {
            m_dims: [1, 1, u],
            m_strides: [0, 0, 1],
            n: f,
            k_dims: [1, 1, (tm.steps - 1) * n],
            k_strides: [0, 0, s],
            a: (abuf, 0),
            b: (sbuf, tm.step_len),
            ldb: f,
            b_transposed: false,
            c: (out, 0),
            ldc: f,
            bias: None,
            epilogue: Epilogue::None,
            accumulate: false,
        })
    }

    /// When `dy` is a time-major stack of gate gradients read by exactly one
    /// weight gradient `xᵀ·dy` with few input features (at most
    /// [`FUSED_FEATURES`], a univariate series' 1) and one bias gradient:
    /// both as one loop kernel, one pass over the stack computing every
    /// column's `Σ x·dz` and `Σ dz` (a contraction of one or two rows waits
    /// on its additions, and the bias's own pass re-read the stack:
    /// 34 + 22 µs for the course LSTM's 320×512). Registers both outputs
    /// in `fused_grads` and returns `Some(())` once that is done.
    fn stack_grads(&mut self, dy: NodeId) -> Result<Option<()>, LowerError> {
        use petgraph::visit::EdgeRef;
        if !matches!(self.g.node(dy).op, Op::Stack) {
            return Ok(None);
        }
        let Some(&sbuf) = self.stacks.get(&dy) else {
            return Ok(None);
        };
        let Some(tm) = self.time_major.get(&sbuf).copied() else {
            return Ok(None);
        };
        let (mut dw, mut db) = (None, None);
        for e in self.g.g.edges_directed(dy, petgraph::Direction::Outgoing) {
            match (&self.g.node(e.target()).op, *e.weight()) {
                (Op::Grad(GradOp::DenseDw), 1) if dw.is_none() => dw = Some(e.target()),
                (Op::Grad(GradOp::BiasGrad), 0) if db.is_none() => db = Some(e.target()),
                _ => return Ok(None),
            }
        }
        let (Some(dw), Some(db)) = (dw, db) else {
            return Ok(None);
        };
        if self.fused_grads.contains_key(&dw) {
            return Ok(Some(()));
        }
        let x = self.g.inputs_of(dw)[0];
        let xs = self.full_shape(x)?;
        let fx = *xs.last().unwrap_or(&0);
        if fx > FUSED_FEATURES || self.sum_of_products(dw).is_some() {
            return Ok(None);
        }
        let xv = self.view_of(x)?;
        let (n, steps) = (self.n, tm.steps);
        let f = tm.step_len / n.max(1);
        let wbuf = self.temp(self.g.node(dw).name.clone(), fx * f);
        let bbuf = self.temp(self.g.node(db).name.clone(), f);
        // One running sum per quantity: four vectors of them stay in
        // registers (independent chains per row would spill).
        let (vj, vt, vn) = (0, 1, 2);
        let dz = || {
            Expr::load(
                sbuf,
                Index::new([(vt, tm.step_len as i64), (vn, f as i64), (vj, 1)], 0),
            )
        };
        let x_at = |i: usize| {
            Expr::load(
                xv.buf,
                Index::new(
                    [(vn, xv.row_stride as i64), (vt, fx as i64)],
                    (xv.offset + i) as i64,
                ),
            )
        };
        let mut body: Vec<Stmt> = (0..=fx)
            .map(|s| Stmt::Set {
                scalar: s,
                value: Expr::Const(0.0),
            })
            .collect();
        let mut sums: Vec<Stmt> = (0..fx)
            .map(|i| Stmt::Set {
                scalar: i,
                value: Expr::Get(i).add(x_at(i).mul(dz())),
            })
            .collect();
        sums.push(Stmt::Set {
            scalar: fx,
            value: Expr::Get(fx).add(dz()),
        });
        body.push(Stmt::repeat(vt, steps, vec![Stmt::repeat(vn, n, sums)]));
        for i in 0..fx {
            body.push(Stmt::store(
                wbuf,
                Index::var(vj, 1).shift((i * f) as i64),
                Expr::Get(i),
            ));
        }
        body.push(Stmt::store(bbuf, Index::var(vj, 1), Expr::Get(fx)));
        let k = LoopKernel::outer_loop(3, fx + 1, vj, f, body);
        self.looped(self.g.node(dw).name.clone(), k);
        self.fused_grads.insert(dw, wbuf);
        self.fused_grads.insert(db, bbuf);
        Ok(Some(()))
    }

    /// Node `id`'s rows in a state arena: a step's state, or a slice of
    /// one's columns (lowered or not yet: the slice will be that view).
    fn rows_in_arena(&self, id: NodeId) -> Option<View> {
        let v = match (self.views.get(&id), &self.g.node(id).op) {
            (Some(v), _) => *v,
            (None, Op::Slice { start, .. }) => {
                let of = self.rows_in_arena(*self.g.inputs_of(id).first()?)?;
                View {
                    offset: of.offset + start,
                    ..of
                }
            }
            _ => return None,
        };
        self.arenas.contains_key(&v.buf).then_some(v)
    }

    /// The `add` that weight-gradient product `id` is a term of, when `id`
    /// has no other consumer, is not an output, and every term of that
    /// `add` is such a product: the sum can then be accumulated in place.
    fn sum_of_products(&self, id: NodeId) -> Option<NodeId> {
        let sole_user = |n: NodeId| {
            let users = self.g.users_of(n);
            let outputs = self.g.outputs.iter().any(|(_, o)| *o == n);
            let edges = self
                .g
                .g
                .edges_directed(n, petgraph::Direction::Outgoing)
                .count();
            (users.len() == 1 && edges == 1 && !outputs).then(|| users[0])
        };
        let sum = sole_user(id)?;
        if !matches!(self.g.node(sum).op, Op::Add) {
            return None;
        }
        let terms = self.g.inputs_of(sum);
        (terms.len() >= 2
            && terms.iter().all(|&t| {
                matches!(self.g.node(t).op, Op::Grad(GradOp::DenseDw)) && sole_user(t) == Some(sum)
            }))
        .then_some(sum)
    }

    /// `GradOp::BiasGrad`: `dy` summed over every axis but the last.
    pub(super) fn lower_bias_grad(&mut self, cx: NodeCx) -> Result<BufId, LowerError> {
        let NodeCx {
            id, name, ins, ib, ..
        } = cx;
        if let Some(buf) = self
            .stack_grads(ins[0])?
            .and_then(|_| self.fused_grads.get(&id))
        {
            return Ok(*buf);
        }
        let dy = self.full_shape(ins[0])?;
        let c = *dy.last().unwrap_or(&1);
        let rows = dy.iter().product::<usize>() / c;
        Ok(self.column_sums(name, ib[0], rows, c))
    }
}
