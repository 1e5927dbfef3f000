//! Contractions with a very long reduction — a convolution's weight
//! gradient sums over every position of every image: `K = N·OH·OW`, 3.2
//! million for VGG-16's first layers at batch 64 — split into partial
//! products over consecutive ranges of `K`, each an ordinary contraction
//! writing its own slice of a `[S, M, N]` buffer, then one loop kernel that
//! adds the slices in order and applies the bias, the epilogue and the
//! accumulation. No thread of any backend then runs more than
//! [`MAX_K`] reduction steps one after another (a GPU thread of a tiled
//! product runs `K / 16` steps), and the sum is deterministic: the same
//! slices added in the same order on every backend and every run.

use super::*;

/// Longest reduction one contraction kernel runs: 4,096 steps of a GPU
/// tile of 16.
pub(super) const MAX_K: usize = 1 << 16;

/// Whether `c` reduces over more than [`MAX_K`] elements along a single
/// contiguous reduction digit (the form weight gradients and dense
/// products have; a split of several digits would need a carry).
pub(super) fn too_long(c: &Contraction) -> bool {
    c.k() > MAX_K && c.k_dims[0] == 1 && c.k_dims[1] == 1
}

impl Lowering<'_> {
    /// Pushes `c` as partial products over ranges of at most [`MAX_K`]
    /// reduction steps and the kernel that adds them.
    pub(super) fn split_k(&mut self, name: String, c: Contraction) {
        let k = c.k();
        let splits = k.div_ceil(MAX_K);
        let chunk = k.div_ceil(splits);
        let (m, n) = (c.m(), c.n);
        let partial = self.temp(format!("{name}.partials"), splits * m * n);
        for s in 0..splits {
            let start = s * chunk;
            let len = chunk.min(k - start);
            let part = Contraction {
                k_dims: [1, 1, len],
                a: (c.a.0, c.a.1 + start * c.k_strides[2]),
                b: (c.b.0, c.b.1 + start * c.b_strides().0),
                c: (partial, s * m * n),
                ldc: n,
                bias: None,
                epilogue: Epilogue::None,
                accumulate: false,
                ..c.clone()
            };
            self.p.kernels.push(Kernel {
                name: format!("{name}.k{s}"),
                body: KernelBody::Contraction(part),
            });
        }
        // out[i, j] (+)= ε(Σ_s partial[s, i, j] + bias[j]), slices in order.
        let (vi, vj, vs) = (0, 1, 2);
        let mut sum = Expr::Get(0);
        if let Some((bias, off)) = c.bias {
            sum = sum.add(Expr::load(bias, Index::new([(vj, 1)], off as i64)));
        }
        let at = Index::new([(vi, c.ldc as i64), (vj, 1)], c.c.1 as i64);
        let mut value = c.epilogue.apply(sum);
        if c.accumulate {
            value = Expr::load(c.c.0, at.clone()).add(value);
        }
        let body = vec![
            Stmt::Set {
                scalar: 0,
                value: Expr::Const(0.0),
            },
            Stmt::repeat(
                vs,
                splits,
                vec![Stmt::Set {
                    scalar: 0,
                    value: Expr::Get(0).add(Expr::load(
                        partial,
                        Index::new([(vs, (m * n) as i64), (vi, n as i64), (vj, 1)], 0),
                    )),
                }],
            ),
            Stmt::store(c.c.0, at, value),
        ];
        let k = LoopKernel {
            vars: 3,
            scalars: 1,
            body: vec![Stmt::repeat(vi, m, vec![Stmt::repeat(vj, n, body)])],
        };
        self.p.kernels.push(Kernel {
            name,
            body: KernelBody::Loop(k),
        });
    }
}
