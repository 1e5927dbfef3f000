//! A planner rewrite for GPU launches: a sum the CPU form accumulates in
//! memory, row by row,
//!
//! ```text
//! for j { A[j] = init }
//! for r { for j { A[j] = A[j] op e(r, j) } }
//! ```
//!
//! (rows outer: contiguous passes over the rows, what a CPU core wants),
//! becomes one register per column,
//!
//! ```text
//! for j { s = init; for r { s = s op e(r, j) }; A[j] = s }
//! ```
//!
//! so the columns are parallel loops and the rows split over a block's
//! threads with a tree reduction. Without it the bias gradient's partial
//! sums run one thread per partial: a 25.7-million-step loop for VGG-16's
//! first convolution at batch 64. Sums run in another order, as every
//! block reduction does.

use crate::kernel::ir::*;

/// Whether `e` reads buffer `buf` anywhere.
fn reads_buf(e: &Expr, buf: BufId) -> bool {
    match e {
        Expr::Const(_) | Expr::Get(_) | Expr::Iter(_) => false,
        Expr::Load(b, _) => *b == buf,
        Expr::Un(_, a) => reads_buf(a, buf),
        Expr::Bin(_, a, b) => reads_buf(a, buf) || reads_buf(b, buf),
        Expr::Select(a, _, b, t, o) => [a, b, t, o].iter().any(|x| reads_buf(x, buf)),
        Expr::Gather { buf: b, row, .. } => *b == buf || reads_buf(&row.value, buf),
    }
}

/// Whether `e` reads a scalar register.
fn reads_scalar(e: &Expr) -> bool {
    match e {
        Expr::Get(_) => true,
        Expr::Const(_) | Expr::Load(..) | Expr::Iter(_) => false,
        Expr::Un(_, a) => reads_scalar(a),
        Expr::Bin(_, a, b) => reads_scalar(a) || reads_scalar(b),
        Expr::Select(a, _, b, t, o) => [a, b, t, o].iter().any(|x| reads_scalar(x)),
        Expr::Gather { row, .. } => reads_scalar(&row.value),
    }
}

/// `inner` with its memory accumulation turned into a register one
/// (register `scalar`, which the caller allocates), or `None` when it is
/// not exactly the form in the module docs.
pub(super) fn columns_outer(inner: &[Stmt], scalar: Scalar) -> Option<Vec<Stmt>> {
    let [Stmt::Loop {
        var: j,
        extent: cols,
        body: init_body,
    }, Stmt::Loop {
        var: r,
        extent: rows,
        body: row_body,
    }] = inner
    else {
        return None;
    };
    let [Stmt::Store {
        buf: a,
        index: at,
        value: init @ Expr::Const(_),
    }] = init_body.as_slice()
    else {
        return None;
    };
    let [Stmt::Loop {
        var: j2,
        extent: cols2,
        body: col_body,
    }] = row_body.as_slice()
    else {
        return None;
    };
    let [Stmt::Store {
        buf: a2,
        index: at2,
        value: Expr::Bin(op @ (BinOp::Add | BinOp::Max | BinOp::Min), x, y),
    }] = col_body.as_slice()
    else {
        return None;
    };
    let mine = |e: &Expr| matches!(e, Expr::Load(b, ix) if b == a && ix == at);
    let term = match (x.as_ref(), y.as_ref()) {
        (acc, e) | (e, acc) if mine(acc) => e,
        _ => return None,
    };
    let same_target = j2 == j && cols2 == cols && a2 == a && at2 == at;
    let row_free = at.terms.iter().all(|(v, c)| v != r || *c == 0);
    if !same_target || !row_free || reads_buf(term, *a) || reads_scalar(term) {
        return None;
    }
    Some(vec![Stmt::Loop {
        var: *j,
        extent: *cols,
        body: vec![
            Stmt::Set {
                scalar,
                value: init.clone(),
            },
            Stmt::Loop {
                var: *r,
                extent: *rows,
                body: vec![Stmt::Set {
                    scalar,
                    value: Expr::Bin(*op, Box::new(Expr::Get(scalar)), Box::new(term.clone())),
                }],
            },
            Stmt::Store {
                buf: *a,
                index: at.clone(),
                value: Expr::Get(scalar),
            },
        ],
    }])
}
