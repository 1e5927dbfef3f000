//! A contraction with few output tiles and a long reduction — a weight
//! gradient `Xᵀ·dY` summed over a whole batch of positions, a recurrent
//! cell's product at a small batch — planned as one block per output
//! element instead of one per 16×16 tile: the block's threads split the
//! reduction and combine it with a tree. The course CNN's `conv1` weight
//! gradient (9×32 outputs, K = 43,264) runs on 288 blocks of 170 steps per
//! thread instead of 2 blocks of 43,264.
//!
//! The contraction is rewritten as the equivalent loop kernel, so the
//! block planner, the PTX printer of block kernels and the geometry
//! interpreter run it unchanged; `launch` decides which contractions
//! (`launch::prefers_blocks`).

use crate::kernel::ir::*;

/// `c` as a loop kernel computing the same values:
///
/// ```text
/// for m2, m1, m0, n { s = 0; for k { s += A[m, k]·B[k, n] }; C[m, n] (+)= ε(s + bias[n]) }
/// ```
///
/// with digits of extent 1 left out (a loop of one iteration would be
/// the one a block splits).
pub fn as_loops(c: &Contraction) -> LoopKernel {
    // Variables: row digits 0..3, column 3, reduction digits 4..7.
    let (vn, acc) = (3, 0);
    let m_terms = |strides: [i64; 3]| {
        (0..3)
            .filter(|d| c.m_dims[*d] > 1)
            .map(move |d| (d, strides[d]))
            .collect::<Vec<_>>()
    };
    let [_, d1, d2] = c.m_dims;
    let [_, k2n, k3n] = c.k_dims;
    let ldc = c.ldc as i64;
    let c_at = Index::new(
        m_terms([(d1 * d2) as i64 * ldc, d2 as i64 * ldc, ldc])
            .into_iter()
            .chain([(vn, 1)]),
        c.c.1 as i64,
    );
    let k_a = c.k_strides.map(|s| s as i64);
    let (bk, bn) = c.b_strides();
    let k_b = [(k2n * k3n * bk) as i64, (k3n * bk) as i64, bk as i64];
    let ks: Vec<usize> = (0..3).filter(|d| c.k_dims[*d] > 1).collect();
    let a_at = Index::new(
        m_terms(c.m_strides.map(|s| s as i64))
            .into_iter()
            .chain(ks.iter().map(|d| (4 + d, k_a[*d]))),
        c.a.1 as i64,
    );
    let b_at = Index::new(
        ks.iter().map(|d| (4 + d, k_b[*d])).chain([(vn, bn as i64)]),
        c.b.1 as i64,
    );
    let product = Expr::load(c.a.0, a_at) * Expr::load(c.b.0, b_at);
    let mut step = vec![Stmt::Set {
        scalar: acc,
        value: Expr::Get(acc) + product,
    }];
    for d in ks.iter().rev() {
        step = vec![Stmt::repeat(4 + d, c.k_dims[*d], step)];
    }
    let mut sum = Expr::Get(acc);
    if let Some((bias, off)) = c.bias {
        sum = sum + Expr::load(bias, Index::new([(vn, 1)], off as i64));
    }
    let mut value = c.epilogue.apply(sum);
    if c.accumulate {
        value = Expr::load(c.c.0, c_at.clone()) + value;
    }
    let mut body = vec![Stmt::Set {
        scalar: acc,
        value: Expr::Const(0.0),
    }];
    body.extend(step);
    body.push(Stmt::store(c.c.0, c_at, value));
    let mut body = vec![Stmt::repeat(vn, c.n, body)];
    for d in (0..3).rev().filter(|d| c.m_dims[*d] > 1) {
        body = vec![Stmt::repeat(d, c.m_dims[d], body)];
    }
    LoopKernel {
        vars: 7,
        scalars: 1,
        body,
    }
}
