//! Lowering of the merge family: `add` (and the `mul` and `average` that
//! bidirectional merges make) as one elementwise loop over equal shapes,
//! `concat` as one copy kernel per input into its place on the axis.
//! Backward, an input of `mul` gets `dy` times the other inputs
//! (`GradOp::MulGrad`), of `average` `dy` scaled (`GradOp::Scale`), and of
//! `concat` its part of `dy` (`GradOp::Slice`); `add` passes `dy` through.

use super::*;

impl Lowering<'_> {
    /// `add`, `mul` or `average`: the inputs combined by `op`, divided by
    /// their count when `avg`.
    pub(super) fn lower_elementwise(&mut self, cx: NodeCx, op: BinOp, avg: bool) -> BufId {
        let NodeCx {
            name, ib, out_len, ..
        } = cx;
        let out = self.temp(name.clone(), out_len);
        let count = ib.len() as f32;
        let k = nest(&[out_len], 0, |v| {
            let at = Index::var(v[0], 1);
            let mut e = Expr::load(ib[0], at.clone());
            for b in &ib[1..] {
                e = e.bin(op, Expr::load(*b, at.clone()));
            }
            if avg {
                e = e.bin(BinOp::Div, Expr::Const(count));
            }
            vec![Stmt::Store {
                buf: out,
                index: at,
                value: e,
            }]
        });
        self.looped(name, k);
        out
    }

    /// `concat` on `axis` (batch excluded; negative counts from the end).
    pub(super) fn lower_concat(&mut self, cx: NodeCx, axis: i64) -> Result<BufId, LowerError> {
        let NodeCx {
            id,
            name,
            ins,
            ib,
            out_len,
        } = cx;
        let o = self.full_shape(id)?;
        let rank = o.len() as i64 - 1;
        let ax = (if axis < 0 { axis + rank } else { axis }) as usize + 1;
        let out = self.temp(name.clone(), out_len);
        let outer: usize = o[..ax].iter().product();
        let inner: usize = o[ax + 1..].iter().product();
        let mut off = 0;
        for (i, src) in ins.iter().enumerate() {
            let d = self.full_shape(*src)?[ax];
            let k = nest(&[outer, d, inner], 0, |v| {
                vec![Stmt::Store {
                    buf: out,
                    index: linear(v, &[outer, o[ax], inner]).shift((off * inner) as i64),
                    value: Expr::load(ib[i], linear(v, &[outer, d, inner])),
                }]
            });
            self.looped(format!("{name}.part{i}"), k);
            off += d;
        }
        Ok(out)
    }

    /// `GradOp::MulGrad` (the product of the inputs) and `GradOp::Scale`
    /// (with `factor`, of its one input).
    pub(super) fn lower_product(&mut self, cx: NodeCx, factor: Option<f32>) -> BufId {
        let NodeCx {
            name, ib, out_len, ..
        } = cx;
        let out = self.temp(name.clone(), out_len);
        let k = nest(&[out_len], 0, |v| {
            let at = Index::var(v[0], 1);
            let mut e = Expr::load(ib[0], at.clone());
            for b in &ib[1..] {
                e = e.mul(Expr::load(*b, at.clone()));
            }
            if let Some(s) = factor {
                e = e.mul(Expr::Const(s));
            }
            vec![Stmt::Store {
                buf: out,
                index: at,
                value: e,
            }]
        });
        self.looped(name, k);
        out
    }

    /// `GradOp::Slice`: `len` indices from `start` on `axis` of `dy`.
    pub(super) fn lower_concat_grad(
        &mut self,
        cx: NodeCx,
        axis: usize,
        start: usize,
        len: usize,
    ) -> Result<BufId, LowerError> {
        let NodeCx {
            name,
            ins,
            ib,
            out_len,
            ..
        } = cx;
        let dy = self.full_shape(ins[0])?;
        let ax = axis + 1;
        let outer: usize = dy[..ax].iter().product();
        let inner: usize = dy[ax + 1..].iter().product();
        let out = self.temp(name.clone(), out_len);
        let (src, full, start, len) = (ib[0], dy[ax], start, len);
        let k = nest(&[outer, len, inner], 0, |v| {
            vec![Stmt::Store {
                buf: out,
                index: linear(v, &[outer, len, inner]),
                value: Expr::load(
                    src,
                    linear(v, &[outer, full, inner]).shift((start * inner) as i64),
                ),
            }]
        });
        self.looped(name, k);
        Ok(out)
    }
}
