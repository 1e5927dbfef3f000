//! Lowering of the convolution family. Forward, `conv2d` is one
//! contraction over the (zero-padded, when the padding asks for it) NHWC
//! input, with bias and activation fused in its epilogue. Backward, both
//! gradients are contractions too: `dW` over the input's patches written
//! transposed (im2col), `dx` as `dy · Wᵀ` added back onto the windows'
//! input positions (col2im). The bias gradient is the shared column sum
//! (`GradOp::BiasGrad`, see `dense.rs`). `conv1d` is the same on a sequence
//! `[N, T, C]` read as the height-1 image `[N, 1, T, C]` (`image_shape`).

use super::*;

impl Lowering<'_> {
    /// `conv2d`: one contraction, with bias and activation in its epilogue.
    pub(super) fn lower_conv2d(
        &mut self,
        cx: NodeCx,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: Padding,
        filters: usize,
        activation: Option<Activation>,
    ) -> Result<BufId, LowerError> {
        let NodeCx {
            id,
            name,
            ins,
            ib,
            out_len,
        } = cx;
        let x = self.image_shape(ins[0])?;
        let out = self.temp(name.clone(), out_len);
        let (xb, hp, wp) = self.pad(&name, ib[0], &x, kernel, stride, padding);
        let [n, _, _, c] = [x[0], x[1], x[2], x[3]];
        let o = self.image_shape(id)?;
        self.kernel(
            name,
            KernelBody::Contraction(Contraction {
                m_dims: [n, o[1], o[2]],
                m_strides: [hp * wp * c, stride.0 * wp * c, stride.1 * c],
                n: filters,
                k_dims: [kernel.0, kernel.1, c],
                k_strides: [wp * c, c, 1],
                a: (xb, 0),
                b: (ib[1], 0),
                ldb: filters,
                b_transposed: false,
                c: (out, 0),
                ldc: filters,
                bias: ib.get(2).map(|b| (*b, 0)),
                epilogue: epilogue(activation),
                accumulate: false,
            }),
        );
        Ok(out)
    }

    /// Zero-pads an NHWC input for a window op; returns the (possibly
    /// unchanged) buffer and the padded height and width.
    fn pad(
        &mut self,
        name: &str,
        xb: BufId,
        x: &[usize],
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: Padding,
    ) -> (BufId, usize, usize) {
        let [n, h, w, c] = [x[0], x[1], x[2], x[3]];
        let ((pt, pb), (pl, pr)) = pads(h, w, kernel, stride, padding);
        if pt + pb + pl + pr == 0 {
            return (xb, h, w);
        }
        let (hp, wp) = (h + pt + pb, w + pl + pr);
        let len = n * hp * wp * c;
        let xp = self.temp(format!("{name}.padded"), len);
        let zero = nest(&[len], 0, |v| {
            vec![Stmt::Store {
                buf: xp,
                index: Index::var(v[0], 1),
                value: Expr::Const(0.0),
            }]
        });
        self.looped(format!("{name}.zero"), zero);
        let copy = nest(&[n, h, w, c], 0, |v| {
            vec![Stmt::Store {
                buf: xp,
                index: linear(v, &[n, hp, wp, c]).shift(((pt * wp + pl) * c) as i64),
                value: Expr::load(xb, linear(v, &[n, h, w, c])),
            }]
        });
        self.looped(format!("{name}.pad"), copy);
        (xp, hp, wp)
    }

    /// `GradOp::ConvDw`: the weights' gradient from the input and `dy`.
    pub(super) fn lower_conv_dw(
        &mut self,
        cx: NodeCx,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: Padding,
    ) -> Result<BufId, LowerError> {
        let NodeCx { name, ins, ib, .. } = cx;
        let x = self.image_shape(ins[0])?;
        let dy = self.image_shape(ins[1])?;
        let geo = ConvGrad::new(&x, &dy, kernel, stride, padding);
        Ok(self.conv_dw(&name, &geo, ib[0], ib[1]))
    }

    /// `GradOp::ConvDx`: the input's gradient from `dy` and the weights.
    pub(super) fn lower_conv_dx(
        &mut self,
        cx: NodeCx,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: Padding,
    ) -> Result<BufId, LowerError> {
        let NodeCx {
            id, name, ins, ib, ..
        } = cx;
        let out_shape = self.image_shape(id)?;
        let dy = self.image_shape(ins[0])?;
        let geo = ConvGrad::new(&out_shape, &dy, kernel, stride, padding);
        Ok(self.conv_dx(&name, &geo, ib[0], ib[1]))
    }

    /// `dW = Σ patchesᵀ · dy`: the patches are written transposed
    /// (`[KH·KW·C, N·OH·OW]`, zero where the window hangs over the padding)
    /// so the sum is one contraction.
    fn conv_dw(&mut self, name: &str, geo: &ConvGrad, xb: BufId, dyb: BufId) -> BufId {
        let ConvGrad {
            x: [n, h, w, c],
            dy: [oh, ow, f],
            kernel,
            stride,
            origin,
            padded,
        } = *geo;
        let rows = kernel.0 * kernel.1 * c;
        let cols = n * oh * ow;
        let pt_buf = self.temp(format!("{name}.patchesT"), rows * cols);
        // Without padding every window lies inside the input, so the
        // gather below writes every element and zeroing first is wasted.
        if padded {
            self.zero(format!("{name}.zero"), pt_buf, rows * cols);
        }
        // vars: kh kw c n oh ow
        let dims = [kernel.0, kernel.1, c, n, oh, ow];
        let k = nest(&dims, 0, |v| {
            let (guards, src) = window_at(
                [n, h, w, c],
                stride,
                origin,
                WindowVars {
                    n: v[3],
                    oh: v[4],
                    ow: v[5],
                    kh: v[0],
                    kw: v[1],
                    c: v[2],
                },
            );
            guarded(
                padded,
                &guards,
                vec![Stmt::Store {
                    buf: pt_buf,
                    index: linear(v, &dims),
                    value: Expr::load(xb, src),
                }],
            )
        });
        self.looped(format!("{name}.im2colT"), k);
        let out = self.temp(name.to_string(), rows * f);
        self.kernel(
            name.to_string(),
            KernelBody::Contraction(dense(rows, cols, f, pt_buf, dyb, None, out)),
        );
        out
    }

    /// `dx`: `G = dy · W_rᵀ` (`[N·OH·OW, KH·KW·C]`, one contraction), then
    /// each row of `G` is added back onto the input positions its window
    /// covered (col2im).
    fn conv_dx(&mut self, name: &str, geo: &ConvGrad, dyb: BufId, wb: BufId) -> BufId {
        let ConvGrad {
            x: [n, h, w, c],
            dy: [oh, ow, f],
            kernel,
            stride,
            origin,
            padded: _,
        } = *geo;
        let kk = kernel.0 * kernel.1 * c;
        let g = self.temp(format!("{name}.cols"), n * oh * ow * kk);
        // W_r `[KH·KW·C, F]` read transposed: no transpose kernel.
        self.kernel(
            format!("{name}.cols"),
            KernelBody::Contraction(dense_bt(n * oh * ow, f, kk, dyb, wb, g)),
        );
        let out = self.temp(name.to_string(), n * h * w * c);
        let (sh, sw) = stride;
        // One kernel per pair of residues of the input position modulo
        // the stride (one kernel at stride 1): within one, the window
        // offsets that reach a position step by the stride, so the gather
        // is affine.
        for rh in 0..sh.min(h) {
            for rw in 0..sw.min(w) {
                let along_h = Col2imAxis::new(rh, origin.0, sh, kernel.0, h, oh);
                let along_w = Col2imAxis::new(rw, origin.1, sw, kernel.1, w, ow);
                let k = col2im_gather([n, h, w, c], [oh, ow], kernel, along_h, along_w, g, out);
                let tag = if (sh, sw) == (1, 1) {
                    String::new()
                } else {
                    format!(".r{rh}_{rw}")
                };
                self.looped(format!("{name}.col2im{tag}"), k);
            }
        }
        out
    }
}

/// One axis of the col2im gather over the input positions `p = s·q + r`
/// of one residue `r` modulo the stride `s`: the window offsets that
/// reach such a position are `k = base + s·j` for `j < taps`, from output
/// position `o = q + lead − j` (when `0 <= o < outputs`).
#[derive(Clone, Copy)]
struct Col2imAxis {
    /// The residue `r`.
    residue: usize,
    /// Positions of this residue (`q` runs over `0..count`).
    count: usize,
    /// First window offset reaching them.
    base: usize,
    /// How many offsets do (0 when the window is shorter than `base`).
    taps: usize,
    /// `(r + pad − base) / s`.
    lead: i64,
    /// The stride.
    stride: usize,
    /// Output positions along the axis.
    outputs: usize,
}

impl Col2imAxis {
    fn new(
        residue: usize,
        pad: usize,
        stride: usize,
        window: usize,
        inputs: usize,
        outputs: usize,
    ) -> Self {
        // p + pad = s·o + k, so k ≡ (r + pad) mod s.
        let base = (residue + pad) % stride;
        Col2imAxis {
            residue,
            count: (inputs - residue).div_ceil(stride),
            base,
            taps: window.saturating_sub(base).div_ceil(stride),
            lead: ((residue + pad - base) / stride) as i64,
            stride,
            outputs,
        }
    }
}

/// The col2im of the convolution input gradient as a gather: each input
/// position `(n, h, w)` of one residue class sums the rows of
/// `G = dy · Wᵀ` (`[N, OH, OW, KH, KW, C]`) whose windows cover it. No two
/// iterations of the position loops write one element, so they are all
/// parallel (a scatter over overlapping windows is parallel over images
/// only: one thread per image on a GPU).
fn col2im_gather(
    [n, h, w, c]: [usize; 4],
    [oh, ow]: [usize; 2],
    (kh, kw): (usize, usize),
    ah: Col2imAxis,
    aw: Col2imAxis,
    g: BufId,
    out: BufId,
) -> LoopKernel {
    // Variables: image, row and column quotient, tap along each axis, channel.
    let (vn, vqh, vqw, vjh, vjw, vc) = (0, 1, 2, 3, 4, 5);
    let dst = Index::new(
        [
            (vn, (h * w * c) as i64),
            (vqh, (ah.stride * w * c) as i64),
            (vqw, (aw.stride * c) as i64),
            (vc, 1),
        ],
        (ah.residue * w * c + aw.residue * c) as i64,
    );
    let kk = (kh * kw * c) as i64;
    let (row, col) = (ow as i64 * kk, kk);
    let src = Index::new(
        [
            (vn, oh as i64 * row),
            (vqh, row),
            (vjh, -row + (ah.stride * kw * c) as i64),
            (vqw, col),
            (vjw, -col + (aw.stride * c) as i64),
            (vc, 1),
        ],
        ah.lead * row + aw.lead * col + (ah.base * kw * c + aw.base * c) as i64,
    );
    // Channels innermost of the position loops: the CPU runs them in
    // vector lanes (the tap loops inside run for all lanes at once) and a
    // GPU gives each (image, position, channel) its own thread.
    let mut per_channel = vec![Stmt::Store {
        buf: out,
        index: dst.clone(),
        value: Expr::Const(0.0),
    }];
    if ah.taps > 0 && aw.taps > 0 {
        let guard = Stmt::IfInBounds {
            conds: vec![
                (Index::new([(vqh, 1), (vjh, -1)], ah.lead), ah.outputs),
                (Index::new([(vqw, 1), (vjw, -1)], aw.lead), aw.outputs),
            ],
            body: vec![Stmt::Store {
                buf: out,
                index: dst.clone(),
                value: Expr::load(out, dst).add(Expr::load(g, src)),
            }],
        };
        per_channel.push(Stmt::Loop {
            var: vjh,
            extent: ah.taps,
            body: vec![Stmt::Loop {
                var: vjw,
                extent: aw.taps,
                body: vec![guard],
            }],
        });
    }
    let body = [(vc, c), (vqw, aw.count), (vqh, ah.count), (vn, n)]
        .into_iter()
        .fold(per_channel, |body, (var, extent)| {
            vec![Stmt::Loop { var, extent, body }]
        });
    LoopKernel {
        vars: 6,
        scalars: 0,
        body,
    }
}

/// The geometry both convolution gradients work in: input `[N, H, W, C]`,
/// output gradient `[N, OH, OW, F]`, the window, and where window (0, 0)
/// of output (0, 0) starts (minus the top/left padding).
#[derive(Clone, Copy)]
struct ConvGrad {
    x: [usize; 4],
    dy: [usize; 3],
    kernel: (usize, usize),
    stride: (usize, usize),
    /// Top and left padding.
    origin: (usize, usize),
    /// Whether some window hangs over the input's edge.
    padded: bool,
}

impl ConvGrad {
    fn new(
        x: &[usize],
        dy: &[usize],
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: Padding,
    ) -> Self {
        let ((pt, pb), (pl, pr)) = pads(x[1], x[2], kernel, stride, padding);
        ConvGrad {
            x: [x[0], x[1], x[2], x[3]],
            dy: [dy[1], dy[2], dy[3]],
            kernel,
            stride,
            origin: (pt, pl),
            padded: pt + pb + pl + pr > 0,
        }
    }
}
