//! Lowering of the layout family. Flatten and reshape are free: their
//! output aliases their input's buffer (see the dispatch in `lower.rs`).
//! Of the ops unrolling makes, a time step of a sequence (`time_slice`)
//! and a slice of the last axis (`slice`) are views, read in place when
//! every consumer can (cells read their time step, stacks every input)
//! and copied otherwise; `stack` gathers the steps back into a sequence.
//! `repeat` copies a vector to every step of a new time axis (its
//! gradient is a sum of time steps, made of `time_slice` and `add`).
//! Backward, a time step's gradient goes into a zero sequence at its step
//! (`GradOp::TimeScatter`, made by autodiff when it cannot stack every
//! step's gradient) and a slice's is padded back with zeros
//! (`GradOp::SliceGrad`).

use super::*;

impl Lowering<'_> {
    /// `time_slice`: step `step` of `[N, T, F]`.
    pub(super) fn lower_time_slice(
        &mut self,
        cx: NodeCx,
        step: usize,
    ) -> Result<BufId, LowerError> {
        let NodeCx {
            id, name, ins, ib, ..
        } = cx;
        let x = self.full_shape(ins[0])?;
        let (n, t, f) = (x[0], x[1], x[2]);
        let v = match self.time_major.get(&ib[0]) {
            Some(tm) => View {
                buf: ib[0],
                offset: step * tm.step_len,
                row_stride: f,
            },
            None => View {
                buf: ib[0],
                offset: step * f,
                row_stride: t * f,
            },
        };
        self.view_or_copy(id, &name, v, n, f)
    }

    /// `slice`: columns `start..start + len` of the last axis.
    pub(super) fn lower_slice(
        &mut self,
        cx: NodeCx,
        start: usize,
        len: usize,
    ) -> Result<BufId, LowerError> {
        let NodeCx {
            id,
            name,
            ins,
            ib,
            out_len,
        } = cx;
        let x = self.full_shape(ins[0])?;
        let d = *x.last().unwrap_or(&1);
        let rows = x.iter().product::<usize>() / d.max(1);
        if x.len() == 2 {
            // The rows may be a view themselves (a state in its arena).
            let rows_of = self.view_of(ins[0])?;
            let v = View {
                offset: rows_of.offset + start,
                ..rows_of
            };
            self.view_or_copy(id, &name, v, rows, len)
        } else {
            let out = self.temp(name.clone(), out_len);
            let k = nest(&[rows, len], 0, |v| {
                vec![Stmt::Store {
                    buf: out,
                    index: linear(v, &[rows, len]),
                    value: Expr::load(
                        ib[0],
                        Index::new([(v[0], d as i64), (v[1], 1)], start as i64),
                    ),
                }]
            });
            self.looped(name, k);
            Ok(out)
        }
    }

    /// `stack`: one `[N, F]` step per input into `[N, T, F]`.
    pub(super) fn lower_stack(&mut self, cx: NodeCx) -> Result<BufId, LowerError> {
        let NodeCx {
            id,
            name,
            ins,
            out_len,
            ..
        } = cx;
        if let Some(&buf) = self.stacks.get(&id) {
            // Every step was written into its slot by its producer.
            return Ok(buf);
        }
        let o = self.full_shape(id)?;
        let (n, t, f) = (o[0], o[1], o[2]);
        let out = self.temp(name.clone(), out_len);
        let views = ins
            .iter()
            .map(|i| self.view_of(*i))
            .collect::<Result<Vec<_>, _>>()?;
        let k = nest(&[n, f], 0, |v| {
            views
                .iter()
                .enumerate()
                .map(|(step, w)| Stmt::Store {
                    buf: out,
                    index: Index::new([(v[0], (t * f) as i64), (v[1], 1)], (step * f) as i64),
                    value: Expr::load(
                        w.buf,
                        Index::new([(v[0], w.row_stride as i64), (v[1], 1)], w.offset as i64),
                    ),
                })
                .collect()
        });
        self.looped(name, k);
        Ok(out)
    }

    /// `repeat`: `[N, F]` copied to every step of `[N, times, F]`.
    pub(super) fn lower_repeat(&mut self, cx: NodeCx, times: usize) -> Result<BufId, LowerError> {
        let NodeCx {
            id,
            name,
            ib,
            out_len,
            ..
        } = cx;
        let o = self.full_shape(id)?;
        let (n, f) = (o[0], o[2]);
        let out = self.temp(name.clone(), out_len);
        let k = nest(&[n, times, f], 0, |v| {
            vec![Stmt::Store {
                buf: out,
                index: linear(v, &[n, times, f]),
                value: Expr::load(ib[0], Index::new([(v[0], f as i64), (v[2], 1)], 0)),
            }]
        });
        self.looped(name, k);
        Ok(out)
    }

    /// `GradOp::TimeScatter`.
    pub(super) fn lower_time_scatter(
        &mut self,
        cx: NodeCx,
        step: usize,
        steps: usize,
    ) -> Result<BufId, LowerError> {
        let NodeCx { id, name, ib, .. } = cx;
        let out_shape = self.full_shape(id)?;
        let f = *out_shape.last().unwrap_or(&1);
        Ok(self.time_scatter(&name, ib[0], step, steps, f))
    }

    /// `GradOp::SliceGrad`.
    pub(super) fn lower_slice_grad(
        &mut self,
        cx: NodeCx,
        (start, len, total): (usize, usize, usize),
    ) -> BufId {
        let NodeCx {
            name, ib, out_len, ..
        } = cx;
        let rows = out_len / total.max(1);
        self.slice_grad(&name, ib[0], rows, (start, len, total))
    }

    /// A view when every consumer reads in place, else a copy kernel of
    /// `rows × len` elements.
    fn view_or_copy(
        &mut self,
        id: NodeId,
        name: &str,
        v: View,
        rows: usize,
        len: usize,
    ) -> Result<BufId, LowerError> {
        if self.only_viewed(id) {
            self.views.insert(id, v);
            return Ok(v.buf);
        }
        let out = self.temp(name.to_string(), rows * len);
        let k = nest(&[rows, len], 0, |w| {
            vec![Stmt::Store {
                buf: out,
                index: linear(w, &[rows, len]),
                value: Expr::load(
                    v.buf,
                    Index::new([(w[0], v.row_stride as i64), (w[1], 1)], v.offset as i64),
                ),
            }]
        });
        self.looped(name.to_string(), k);
        Ok(out)
    }

    /// `dy` `[N, F]` at step `step` of a `[N, steps, F]` zero tensor.
    fn time_scatter(
        &mut self,
        name: &str,
        dy: BufId,
        step: usize,
        steps: usize,
        f: usize,
    ) -> BufId {
        let n = self.n;
        let out = self.temp(name.to_string(), n * steps * f);
        self.zero(format!("{name}.zero"), out, n * steps * f);
        let k = nest(&[n, f], 0, |v| {
            vec![Stmt::Store {
                buf: out,
                index: Index::new([(v[0], (steps * f) as i64), (v[1], 1)], (step * f) as i64),
                value: Expr::load(dy, linear(v, &[n, f])),
            }]
        });
        self.looped(name.to_string(), k);
        out
    }

    /// `dy` `[rows, len]` at column `start` of a `[rows, total]` zero tensor.
    fn slice_grad(
        &mut self,
        name: &str,
        dy: BufId,
        rows: usize,
        (start, len, total): (usize, usize, usize),
    ) -> BufId {
        let out = self.temp(name.to_string(), rows * total);
        self.zero(format!("{name}.zero"), out, rows * total);
        let k = nest(&[rows, len], 0, |v| {
            vec![Stmt::Store {
                buf: out,
                index: Index::new([(v[0], total as i64), (v[1], 1)], start as i64),
                value: Expr::load(dy, linear(v, &[rows, len])),
            }]
        });
        self.looped(name.to_string(), k);
        out
    }
}
