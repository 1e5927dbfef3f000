//! Lowering of the pooling family: max and average pooling over windows,
//! and global pooling as one window covering the whole image, each one
//! loop nest over the output; backward, each output gradient goes back
//! onto its window (all of it onto the first maximum, or an equal share
//! onto every element inside the input). The 1-D poolings are the same
//! kernels on a sequence read as a height-1 image (`image_shape`).

use super::*;
use crate::op::PoolKind;

impl Lowering<'_> {
    /// `maxpool2d` / `avgpool2d`.
    pub(super) fn lower_pool2d(
        &mut self,
        cx: NodeCx,
        kind: PoolKind,
        size: (usize, usize),
        stride: (usize, usize),
        padding: Padding,
    ) -> Result<BufId, LowerError> {
        let NodeCx {
            id,
            name,
            ins,
            ib,
            out_len,
        } = cx;
        let x = self.image_shape(ins[0])?;
        let o = self.image_shape(id)?;
        let out = self.temp(name.clone(), out_len);
        let k = pool(kind, &x, &o, size, stride, padding, ib[0], out);
        self.looped(name, k);
        Ok(out)
    }

    /// `global_maxpool2d` / `global_avgpool2d` (and `global_maxpool1d` /
    /// `global_avgpool1d`, over a height-1 image).
    pub(super) fn lower_global_pool2d(
        &mut self,
        cx: NodeCx,
        kind: PoolKind,
    ) -> Result<BufId, LowerError> {
        let NodeCx {
            name,
            ins,
            ib,
            out_len,
            ..
        } = cx;
        // One [H, W] window; [N, C] is laid out as [N, 1, 1, C].
        let x = self.image_shape(ins[0])?;
        let o = [x[0], 1, 1, x[3]];
        let out = self.temp(name.clone(), out_len);
        let whole = (x[1], x[2]);
        let k = pool(kind, &x, &o, whole, whole, Padding::Valid, ib[0], out);
        self.looped(name, k);
        Ok(out)
    }

    /// `GradOp::PoolGrad`: the input's gradient from the input and `dy`.
    pub(super) fn lower_pool_grad(
        &mut self,
        cx: NodeCx,
        kind: PoolKind,
        (size, stride, padding): ((usize, usize), (usize, usize), Padding),
        relu_mask: bool,
    ) -> Result<BufId, LowerError> {
        let NodeCx {
            id,
            name,
            ins,
            ib,
            out_len,
        } = cx;
        let x = self.image_shape(ins[0])?;
        let dy = self.image_shape(ins[1])?;
        let out = self.temp(name.clone(), out_len);
        let windows = pool_windows(&x, &dy, size, stride, padding);
        // Zero first unless every input element lies in exactly one
        // window and so is stored below.
        if windows != Windows::Tile {
            self.zero(format!("{name}.zero"), out, out_len);
        }
        let mut k = pool_grad(
            kind,
            &x,
            &dy,
            (size, stride, padding),
            windows,
            relu_mask,
            [ib[0], ib[1], out],
        );
        // A bias gradient of this gradient (the conv before a relu and a
        // max pooling) sums the windows' masked gradients, which the same
        // pass stores (a quarter of the gradient's size at 2×2), instead
        // of the whole gradient.
        let bias = (kind == PoolKind::Max && relu_mask && windows == Windows::Tile)
            .then(|| self.bias_grad_of(id))
            .flatten();
        let taken = bias.map(|(bias_id, bias_name)| {
            let rows = dy[0] * dy[1] * dy[2];
            let (c, dy_len) = (dy[3], dy.iter().product());
            let buf = self.temp(format!("{bias_name}.taken"), dy_len);
            store_taken(&mut k, buf, &dy);
            (bias_id, bias_name, buf, rows, c)
        });
        self.looped(name, k);
        if let Some((bias_id, bias_name, buf, rows, c)) = taken {
            let db = self.column_sums(bias_name, buf, rows, c);
            self.sums.insert(bias_id, db);
        }
        Ok(out)
    }

    /// The `GradOp::BiasGrad` node reading the gradient `id`, if there is
    /// one, and its name.
    fn bias_grad_of(&self, id: NodeId) -> Option<(NodeId, String)> {
        use petgraph::visit::EdgeRef;
        self.g
            .g
            .edges_directed(id, petgraph::Direction::Outgoing)
            .map(|e| e.target())
            .find(|&t| matches!(self.g.node(t).op, Op::Grad(GradOp::BiasGrad)))
            .map(|t| (t, self.g.node(t).name.clone()))
    }
}

/// Makes the max-pooling gradient kernel `k` (of [`pool_grad`], with a
/// relu mask and tiling windows) also store each window's masked
/// gradient (scalar 1 once set, before the routing) into `taken`
/// (`dy`'s shape). Each goes to exactly one element of the stored
/// gradient (the relu mask makes it zero unless the window's maximum is
/// above zero, so an element equals that maximum), so the column sums of
/// `taken` are those of the gradient. The store keeps the loop nest
/// perfect: every backend still runs its iterations in parallel.
fn store_taken(k: &mut LoopKernel, taken: BufId, dy: &[usize]) {
    let mut inner = &mut k.body;
    for _ in 0..4 {
        let Some(Stmt::Loop { body, .. }) = inner.first_mut() else {
            unreachable!("pool_grad nests n, oh, ow, c");
        };
        inner = body;
    }
    // route_back (max): set 0 (max), the window's max, set 1 (the masked
    // gradient), the routing loop.
    debug_assert!(matches!(inner.get(2), Some(Stmt::Set { scalar: 1, .. })));
    let at = linear(&[0, 1, 2, 3], &[dy[0], dy[1], dy[2], dy[3]]);
    inner.insert(3, Stmt::store(taken, at, Expr::Get(1)));
}

#[allow(clippy::too_many_arguments)]
fn pool(
    kind: PoolKind,
    x: &[usize],
    o: &[usize],
    size: (usize, usize),
    stride: (usize, usize),
    padding: Padding,
    xb: BufId,
    out: BufId,
) -> LoopKernel {
    let [n, h, w, c] = [x[0], x[1], x[2], x[3]];
    let (oh, ow) = (o[1], o[2]);
    let ((pt, _), (pl, _)) = pads(h, w, size, stride, padding);
    // vars: 0 n, 1 oh, 2 ow, 3 c, 4 kh, 5 kw; scalars: 0 acc, 1 count
    let mut k = nest(&[n, oh, ow, c], 2, |v| {
        let (guards, at) = window_at(
            [n, h, w, c],
            stride,
            (pt, pl),
            WindowVars {
                n: v[0],
                oh: v[1],
                ow: v[2],
                kh: 4,
                kw: 5,
                c: v[3],
            },
        );
        let x = Expr::load(xb, at);
        let (init, update) = match kind {
            PoolKind::Max => (f32::NEG_INFINITY, Expr::Get(0).bin(BinOp::Max, x)),
            PoolKind::Avg => (0.0, Expr::Get(0).add(x)),
        };
        let mut inner = vec![Stmt::Set {
            scalar: 0,
            value: update,
        }];
        if kind == PoolKind::Avg {
            inner.push(Stmt::Set {
                scalar: 1,
                value: Expr::Get(1) + Expr::Const(1.0),
            });
        }
        let window = vec![Stmt::Loop {
            var: 4,
            extent: size.0,
            body: vec![Stmt::Loop {
                var: 5,
                extent: size.1,
                body: vec![Stmt::IfInBounds {
                    conds: guards,
                    body: inner,
                }],
            }],
        }];
        let result = match kind {
            PoolKind::Max => Expr::Get(0),
            // Padding is excluded from the mean, as in Keras/TensorFlow.
            PoolKind::Avg => Expr::Get(0).bin(BinOp::Div, Expr::Get(1)),
        };
        let mut body = vec![Stmt::Set {
            scalar: 0,
            value: Expr::Const(init),
        }];
        if kind == PoolKind::Avg {
            body.push(Stmt::Set {
                scalar: 1,
                value: Expr::Const(0.0),
            });
        }
        body.extend(window);
        body.push(Stmt::Store {
            buf: out,
            index: linear(v, &[n, oh, ow, c]),
            value: result,
        });
        body
    });
    k.vars = 6;
    k
}

/// How a pooling layer's windows cover its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Windows {
    /// Windows may overlap: gradients are added up.
    Overlap,
    /// No two windows share an element, but some elements are in none.
    Disjoint,
    /// Every element is in exactly one window (e.g. 2×2, stride 2 on an
    /// even size, no padding): the gradient is stored, no zeroing needed.
    Tile,
}

fn pool_windows(
    x: &[usize],
    dy: &[usize],
    size: (usize, usize),
    stride: (usize, usize),
    padding: Padding,
) -> Windows {
    let ((pt, pb), (pl, pr)) = pads(x[1], x[2], size, stride, padding);
    if stride.0 < size.0 || stride.1 < size.1 {
        Windows::Overlap
    } else if stride == size
        && pt + pb + pl + pr == 0
        && dy[1] * size.0 == x[1]
        && dy[2] * size.1 == x[2]
    {
        Windows::Tile
    } else {
        Windows::Disjoint
    }
}

/// Adds each output gradient back onto its window: all of it onto the
/// first maximum (max pooling), or an equal share onto every element
/// inside the input (average pooling, padding excluded as forward). When
/// windows do not overlap each element gets one value, which is stored
/// rather than added (no read of `out`). With `relu_mask` (x is a relu's
/// output), elements where `x ≤ 0` get zero: the relu's gradient in the same
/// pass.
fn pool_grad(
    kind: PoolKind,
    x: &[usize],
    dy: &[usize],
    (size, stride, padding): ((usize, usize), (usize, usize), Padding),
    windows: Windows,
    relu_mask: bool,
    [xb, dyb, out]: [BufId; 3],
) -> LoopKernel {
    let [n, h, w, c] = [x[0], x[1], x[2], x[3]];
    let (oh, ow) = (dy[1], dy[2]);
    let ((pt, pb), (pl, pr)) = pads(h, w, size, stride, padding);
    let padded = pt + pb + pl + pr > 0;
    // vars: 0 n, 1 oh, 2 ow, 3 c, 4 kh, 5 kw; scalars: 0 max or count,
    // 1 gradient not yet taken, 2 the element
    let mut k = nest(&[n, oh, ow, c], 3, |v| {
        let (guards, at) = window_at(
            [n, h, w, c],
            stride,
            (pt, pl),
            WindowVars {
                n: v[0],
                oh: v[1],
                ow: v[2],
                kh: 4,
                kw: 5,
                c: v[3],
            },
        );
        let g = Expr::load(dyb, linear(v, &[n, oh, ow, c]));
        let window = |body: Vec<Stmt>| Stmt::Loop {
            var: 4,
            extent: size.0,
            body: vec![Stmt::Loop {
                var: 5,
                extent: size.1,
                body: guarded(padded, &guards, body),
            }],
        };
        let xe = Expr::load(xb, at.clone());
        // Max pooling masks the window's gradient once, by its maximum
        // (the one element that receives it); average pooling each element.
        let mask_each = relu_mask && kind == PoolKind::Avg;
        let add = |value: Expr| {
            let value = if windows == Windows::Overlap {
                Expr::load(out, at.clone()).add(value)
            } else {
                value
            };
            Stmt::Store {
                buf: out,
                index: at.clone(),
                value: if mask_each {
                    xe.clone()
                        .select(Cmp::Gt, Expr::Const(0.0), value, Expr::Const(0.0))
                } else {
                    value
                },
            }
        };
        route_back(kind, (&xe, &g), relu_mask, window, |then, _| then, add)
    });
    k.vars = 6;
    k
}

impl Lowering<'_> {
    /// `Op::MaskedPool`: `[N, T, C]` and its mask `[N, T]` → `[N, C]`,
    /// the maximum or mean over the real steps (zero when there is none).
    pub(super) fn lower_masked_pool(
        &mut self,
        cx: NodeCx,
        kind: PoolKind,
    ) -> Result<BufId, LowerError> {
        let NodeCx {
            name,
            ins,
            ib,
            out_len,
            ..
        } = cx;
        let x = self.full_shape(ins[0])?;
        let (n, t, c) = (x[0], x[1], x[2]);
        let (xb, mb) = (ib[0], ib[1]);
        let out = self.temp(name.clone(), out_len);
        // vars: 0 n, 1 c, 2 t; scalars: 0 max or sum, 1 count
        let mut k = nest(&[n, c], 2, |v| {
            let real = if_real(mb, Index::new([(v[0], t as i64), (2, 1)], 0));
            let xe = Expr::load(
                xb,
                Index::new([(v[0], (t * c) as i64), (2, c as i64), (v[1], 1)], 0),
            );
            let (init, update) = match kind {
                PoolKind::Max => (f32::NEG_INFINITY, Expr::Get(0).bin(BinOp::Max, xe)),
                PoolKind::Avg => (0.0, Expr::Get(0).add(xe)),
            };
            let result = match kind {
                PoolKind::Max => Expr::Get(0),
                PoolKind::Avg => Expr::Get(0).bin(BinOp::Div, Expr::Get(1)),
            };
            vec![
                Stmt::Set {
                    scalar: 0,
                    value: Expr::Const(init),
                },
                Stmt::Set {
                    scalar: 1,
                    value: Expr::Const(0.0),
                },
                Stmt::Loop {
                    var: 2,
                    extent: t,
                    body: vec![
                        Stmt::Set {
                            scalar: 0,
                            value: real(update, Expr::Get(0)),
                        },
                        Stmt::Set {
                            scalar: 1,
                            value: Expr::Get(1).add(real(Expr::Const(1.0), Expr::Const(0.0))),
                        },
                    ],
                },
                Stmt::Store {
                    buf: out,
                    index: linear(v, &[n, c]),
                    value: Expr::Get(1).select(Cmp::Gt, Expr::Const(0.5), result, Expr::Const(0.0)),
                },
            ]
        });
        k.vars = 3;
        self.looped(name, k);
        Ok(out)
    }

    /// `GradOp::MaskedPoolGrad`: `dy` `[N, C]` onto the first maximum
    /// among the real steps, or an equal share onto each of them; zero at
    /// padding. Every element of `dx` is stored once, so no zeroing pass.
    pub(super) fn lower_masked_pool_grad(
        &mut self,
        cx: NodeCx,
        kind: PoolKind,
    ) -> Result<BufId, LowerError> {
        let NodeCx {
            name,
            ins,
            ib,
            out_len,
            ..
        } = cx;
        let x = self.full_shape(ins[0])?;
        let (n, t, c) = (x[0], x[1], x[2]);
        let (xb, mb, dyb) = (ib[0], ib[1], ib[2]);
        let out = self.temp(name.clone(), out_len);
        // vars: 0 n, 1 c, 2 t; scalars: 0 max or count, 1 gradient not
        // yet taken, 2 the element
        let mut k = nest(&[n, c], 3, |v| {
            let real = if_real(mb, Index::new([(v[0], t as i64), (2, 1)], 0));
            let at = Index::new([(v[0], (t * c) as i64), (2, c as i64), (v[1], 1)], 0);
            let xe = Expr::load(xb, at.clone());
            let g = Expr::load(dyb, linear(v, &[n, c]));
            let over_t = |body: Vec<Stmt>| Stmt::Loop {
                var: 2,
                extent: t,
                body,
            };
            let store = |value: Expr| Stmt::Store {
                buf: out,
                index: at.clone(),
                value,
            };
            route_back(kind, (&xe, &g), false, over_t, real, store)
        });
        k.vars = 3;
        self.looped(name, k);
        Ok(out)
    }
}

/// The statements that route the output gradient `g` back over one window
/// (or a masked sequence's steps), with scalars 0 (the maximum, or the
/// count), 1 (the gradient the first maximum has not yet taken: `g`,
/// then 0 from that element on) and 2 (the element, read once: the store
/// between its two uses would make the code read it again): all of `g` onto the first element equal
/// to the maximum, or an equal share onto every element. With `positive`
/// (max pooling over a relu's output), `g` goes back only when the maximum
/// is above zero: exactly when the element that takes it is, since it
/// equals the maximum, so one test per window masks the relu's gradient
/// too. `over` wraps statements in the loops over the window;
/// `only(e, other)` is `e` for an element that takes part (inside the
/// input, a real step) and `other` otherwise; `put(v)` stores `v` as the
/// current element's gradient.
fn route_back(
    kind: PoolKind,
    (xe, g): (&Expr, &Expr),
    positive: bool,
    over: impl Fn(Vec<Stmt>) -> Stmt,
    only: impl Fn(Expr, Expr) -> Expr,
    put: impl Fn(Expr) -> Stmt,
) -> Vec<Stmt> {
    let zero = || Expr::Const(0.0);
    let set = |scalar, value| Stmt::Set { scalar, value };
    match kind {
        PoolKind::Max => {
            let is_max =
                |then: Expr, other: Expr| Expr::Get(2).select(Cmp::Ge, Expr::Get(0), then, other);
            let taken = if positive {
                Expr::Get(0).select(Cmp::Gt, zero(), g.clone(), zero())
            } else {
                g.clone()
            };
            vec![
                set(0, Expr::Const(f32::NEG_INFINITY)),
                over(vec![set(
                    0,
                    only(Expr::Get(0).bin(BinOp::Max, xe.clone()), Expr::Get(0)),
                )]),
                set(1, taken),
                over(vec![
                    set(2, xe.clone()),
                    put(only(is_max(Expr::Get(1), zero()), zero())),
                    set(1, only(is_max(zero(), Expr::Get(1)), Expr::Get(1))),
                ]),
            ]
        }
        PoolKind::Avg => vec![
            set(0, zero()),
            over(vec![set(
                0,
                Expr::Get(0).add(only(Expr::Const(1.0), zero())),
            )]),
            over(vec![put(only(
                g.clone().bin(BinOp::Div, Expr::Get(0)),
                zero(),
            ))]),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::interp;

    /// The 2×2 max pooling gradient of a [1, 2, 4, C] input (two windows,
    /// every channel alike), by the interpreter: all of a
    /// window's gradient onto its first maximum (ties broken by window
    /// order, NaN never a maximum), and with `relu_mask` nothing from a
    /// window whose maximum is not above zero.
    /// (The same kernels run on the JIT in the filetest
    /// `tests/kernels/max_pool_grad.kir`; a test here may not reach into
    /// `codegen`, which depends on this module.)
    fn max_grad(relu_mask: bool, c: usize) -> Vec<f32> {
        // Rows of the input: window 0 holds 3, 0 / 3, NaN (a tie at 3);
        // window 1 holds -1, -0.5 / -0.5, -2 (a tie at -0.5, below zero).
        let rows = [3.0, 0.0, -1.0, -0.5, 3.0, f32::NAN, -0.5, -2.0];
        let x: Vec<f32> = rows
            .iter()
            .flat_map(|&v| std::iter::repeat_n(v, c))
            .collect();
        let dy: Vec<f32> = [5.0, 7.0]
            .iter()
            .flat_map(|&v| std::iter::repeat_n(v, c))
            .collect();
        let (xs, dys) = ([1, 2, 4, c], [1, 1, 2, c]);
        let spec = ((2, 2), (2, 2), Padding::Valid);
        let windows = pool_windows(&xs, &dys, (2, 2), (2, 2), Padding::Valid);
        assert_eq!(windows, Windows::Tile);
        let k = pool_grad(
            PoolKind::Max,
            &xs,
            &dys,
            spec,
            windows,
            relu_mask,
            [0, 1, 2],
        );
        let buf = |name: &str, len| Buffer {
            name: name.into(),
            len,
            kind: BufKind::Temp,
        };
        let p = Program {
            name: "pool".into(),
            batch: 1,
            buffers: vec![buf("x", 8 * c), buf("dy", 2 * c), buf("dx", 8 * c)],
            kernels: vec![Kernel {
                name: "grad".into(),
                body: KernelBody::Loop(k),
            }],
            inputs: vec![],
            params: vec![],
            outputs: vec![],
        };
        let mut bufs = vec![x, dy, vec![f32::NAN; 8 * c]];
        interp::run_program(&p, &mut bufs).unwrap();
        bufs.swap_remove(2)
    }

    #[test]
    fn max_pool_gradient_goes_to_the_first_maximum() {
        // One channel (scalar code) and eight (f32x4 lanes).
        for c in [1, 8] {
            let expand = |rows: [f32; 8]| -> Vec<f32> {
                rows.iter()
                    .flat_map(|&v| std::iter::repeat_n(v, c))
                    .collect()
            };
            let plain = expand([5.0, 0.0, 0.0, 7.0, 0.0, 0.0, 0.0, 0.0]);
            let masked = expand([5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
            for (relu_mask, want) in [(false, plain), (true, masked)] {
                let got = max_grad(relu_mask, c);
                assert_eq!(got, want, "relu_mask {relu_mask}, {c} channels");
            }
        }
    }
}
