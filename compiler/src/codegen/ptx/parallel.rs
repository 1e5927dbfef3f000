//! Which loops of a loop kernel may run on different GPU threads.
//!
//! The kernel IR only promises that the outermost loop of a single-loop
//! body has independent iterations. Everything else the GPU backend splits
//! across threads must be proven race-free here, conservatively: when a
//! check fails the loop simply stays sequential inside one thread.

use crate::kernel::ir::*;
use std::collections::{HashMap, HashSet};

/// Loop extents of the variables in scope, innermost binding wins.
pub(crate) type Extents = HashMap<Var, usize>;

/// Whether `ix` maps distinct values of its variables (within their
/// extents) to distinct addresses: a mixed-radix check on the merged terms,
/// sorted by magnitude, where each coefficient must exceed the largest
/// reach of all smaller ones.
pub(crate) fn injective(ix: &Index, ext: &Extents) -> bool {
    let mut merged: HashMap<Var, i64> = HashMap::new();
    for (v, c) in &ix.terms {
        *merged.entry(*v).or_default() += c;
    }
    let mut terms: Vec<(i64, usize)> = Vec::new();
    for (v, c) in merged {
        let e = ext.get(&v).copied().unwrap_or(usize::MAX);
        if e <= 1 {
            continue;
        }
        if c == 0 {
            return false;
        }
        terms.push((c.abs(), e));
    }
    terms.sort_unstable();
    let mut reach: i128 = 0;
    for (c, e) in terms {
        if i128::from(c) <= reach {
            return false;
        }
        reach += i128::from(c) * (e as i128 - 1);
    }
    true
}

fn uses_var(ix: &Index, v: Var) -> bool {
    ix.terms.iter().any(|(w, c)| *w == v && *c != 0)
}

/// Facts about the statements one thread runs for one parallel iteration.
#[derive(Default)]
struct Accesses {
    /// `(buffer, index, extents in scope)` of every store.
    stores: Vec<(BufId, Index, Extents)>,
    /// `(buffer, index, extents in scope)` of every load.
    loads: Vec<(BufId, Index, Extents)>,
    /// `(buffer, index, extents in scope, row stride)` of every
    /// data-dependent row store.
    row_stores: Vec<(BufId, Index, Extents, usize)>,
    /// Buffers read through data-dependent rows.
    row_loads: Vec<BufId>,
}

fn collect_expr(e: &Expr, ext: &Extents, acc: &mut Accesses) {
    match e {
        Expr::Load(b, ix) => acc.loads.push((*b, ix.clone(), ext.clone())),
        Expr::Gather { buf, row, .. } => {
            collect_expr(&row.value, ext, acc);
            acc.row_loads.push(*buf);
        }
        Expr::Un(_, x) => collect_expr(x, ext, acc),
        Expr::Bin(_, a, b) => {
            collect_expr(a, ext, acc);
            collect_expr(b, ext, acc);
        }
        Expr::Select(a, _, b, t, f) => {
            for x in [a, b, t, f] {
                collect_expr(x, ext, acc);
            }
        }
        Expr::Const(_) | Expr::Get(_) | Expr::Iter(_) => {}
    }
}

fn collect(body: &[Stmt], ext: &mut Extents, acc: &mut Accesses) {
    for s in body {
        match s {
            Stmt::Loop { var, extent, body } => {
                let saved = ext.insert(*var, *extent);
                collect(body, ext, acc);
                match saved {
                    Some(e) => ext.insert(*var, e),
                    None => ext.remove(var),
                };
            }
            Stmt::Store { buf, index, value } => {
                collect_expr(value, ext, acc);
                acc.stores.push((*buf, index.clone(), ext.clone()));
            }
            Stmt::ScatterAdd {
                buf,
                row,
                index,
                value,
            } => {
                collect_expr(&row.value, ext, acc);
                collect_expr(value, ext, acc);
                acc.row_stores
                    .push((*buf, index.clone(), ext.clone(), row.stride));
            }
            Stmt::Set { value, .. } => collect_expr(value, ext, acc),
            Stmt::IfInBounds { body, .. } => collect(body, ext, acc),
        }
    }
}

/// Whether iterations over `split` (variables with their extents, each
/// iteration running `body`) touch disjoint memory: every store's index
/// uses every split variable and is injective over all its variables, and
/// every load from a stored buffer reads an address the same iteration
/// stores (its index equals one of that buffer's store indices).
pub(crate) fn disjoint(split: &[(Var, usize)], body: &[Stmt], outer: &Extents) -> bool {
    let mut ext = outer.clone();
    ext.extend(split.iter().copied());
    let mut acc = Accesses::default();
    collect(body, &mut ext, &mut acc);
    let stored: HashSet<BufId> = acc.stores.iter().map(|s| s.0).collect();
    let row_stored: HashSet<BufId> = acc.row_stores.iter().map(|s| s.0).collect();
    let stores_ok = acc.stores.iter().all(|(_, ix, e)| {
        split.iter().all(|(v, n)| *n <= 1 || uses_var(ix, *v)) && injective(ix, e)
    });
    // A row store `buf[row·stride + ix]` may hit any row, so threads stay
    // apart only through the column: `ix` uses every split variable, is
    // injective and stays within one row (`0 <= ix < stride`). Nothing
    // else may touch a row-stored buffer in the split loop.
    let row_stores_ok = acc.row_stores.iter().all(|(b, ix, e, stride)| {
        split.iter().all(|(v, n)| *n <= 1 || uses_var(ix, *v))
            && injective(ix, e)
            && within_row(ix, e, *stride)
            && !stored.contains(b)
            && !acc.loads.iter().any(|(lb, _, _)| lb == b)
            && !acc.row_loads.contains(b)
    });
    // A load from a stored buffer reads what its own iteration stores, or
    // a range no store of the kernel reaches (a recurrent step reads the
    // previous state from the slot before the one it writes).
    let loads_ok = acc.loads.iter().all(|(b, ix, le)| {
        !stored.contains(b)
            || acc.stores.iter().any(|(sb, six, _)| sb == b && six == ix)
            || acc.stores.iter().filter(|(sb, _, _)| sb == b).all(|(_, six, se)| {
                matches!((span(ix, le), span(six, se)), (Some((llo, lhi)), Some((slo, shi))) if lhi < slo || shi < llo)
            })
    });
    let row_loads_ok = acc
        .row_loads
        .iter()
        .all(|b| !stored.contains(b) && !row_stored.contains(b));
    stores_ok && row_stores_ok && loads_ok && row_loads_ok
}

/// Whether `ix` stays in `0..stride` for every value of its variables.
fn within_row(ix: &Index, ext: &Extents, stride: usize) -> bool {
    span(ix, ext).is_some_and(|(lo, hi)| lo >= 0 && hi < stride as i128)
}

/// The least and greatest value of `ix` over its variables' extents, or
/// `None` when a variable has no extent in scope.
fn span(ix: &Index, ext: &Extents) -> Option<(i128, i128)> {
    let (mut lo, mut hi) = (i128::from(ix.offset), i128::from(ix.offset));
    for (v, c) in &ix.terms {
        let e = ext.get(v)?;
        let t = i128::from(*c) * (*e as i128 - 1).max(0);
        if t < 0 {
            lo += t;
        } else {
            hi += t;
        }
    }
    Some((lo, hi))
}

pub(crate) fn expr_reads(e: &Expr, out: &mut Vec<Scalar>) {
    match e {
        Expr::Get(s) => out.push(*s),
        Expr::Gather { row, .. } => expr_reads(&row.value, out),
        Expr::Un(_, x) => expr_reads(x, out),
        Expr::Bin(_, a, b) => {
            expr_reads(a, out);
            expr_reads(b, out);
        }
        Expr::Select(a, _, b, t, f) => {
            for x in [a, b, t, f] {
                expr_reads(x, out);
            }
        }
        Expr::Const(_) | Expr::Load(..) | Expr::Iter(_) => {}
    }
}

/// Whether every scalar `body` reads was set earlier in the same pass over
/// `body` (so no value flows from one iteration to the next). Sets inside
/// nested loops and guards count only within them: they may not run.
pub(crate) fn defines_before_use(body: &[Stmt], defined: &HashSet<Scalar>) -> bool {
    let mut defined = defined.clone();
    for s in body {
        let mut reads = Vec::new();
        match s {
            Stmt::Loop { body, .. } | Stmt::IfInBounds { body, .. } => {
                if !defines_before_use(body, &defined) {
                    return false;
                }
            }
            Stmt::Store { value, .. } => expr_reads(value, &mut reads),
            Stmt::ScatterAdd { row, value, .. } => {
                expr_reads(&row.value, &mut reads);
                expr_reads(value, &mut reads);
            }
            Stmt::Set { value, .. } => expr_reads(value, &mut reads),
        }
        if reads.iter().any(|r| !defined.contains(r)) {
            return false;
        }
        if let Stmt::Set { scalar, .. } = s {
            defined.insert(*scalar);
        }
    }
    true
}

/// Every scalar read anywhere in `body`.
pub(crate) fn scalars_read(body: &[Stmt]) -> Vec<Scalar> {
    let mut out = Vec::new();
    for s in body {
        match s {
            Stmt::Loop { body, .. } | Stmt::IfInBounds { body, .. } => {
                out.extend(scalars_read(body))
            }
            Stmt::Store { value, .. } | Stmt::Set { value, .. } => expr_reads(value, &mut out),
            Stmt::ScatterAdd { row, value, .. } => {
                expr_reads(&row.value, &mut out);
                expr_reads(value, &mut out);
            }
        }
    }
    out
}

/// Every scalar set anywhere in `body`.
pub(crate) fn scalars_set(body: &[Stmt]) -> Vec<Scalar> {
    let mut out = Vec::new();
    for s in body {
        match s {
            Stmt::Loop { body, .. } | Stmt::IfInBounds { body, .. } => {
                out.extend(scalars_set(body))
            }
            Stmt::Set { scalar, .. } => out.push(*scalar),
            Stmt::Store { .. } | Stmt::ScatterAdd { .. } => {}
        }
    }
    out
}

/// If `value` is `op(s, e)` or `op(e, s)` for a reduction operator and `e`
/// does not read `s`, returns `(op, e)`.
pub(crate) fn reduction_form(s: Scalar, value: &Expr) -> Option<(BinOp, &Expr)> {
    let Expr::Bin(op @ (BinOp::Add | BinOp::Max | BinOp::Min), a, b) = value else {
        return None;
    };
    let other = match (a.as_ref(), b.as_ref()) {
        (Expr::Get(x), e) | (e, Expr::Get(x)) if *x == s => e,
        _ => return None,
    };
    let mut reads = Vec::new();
    expr_reads(other, &mut reads);
    (!reads.contains(&s)).then_some((*op, other))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_radix_indices_are_injective_and_overlapping_ones_are_not() {
        let ext: Extents = [(0, 4), (1, 8)].into_iter().collect();
        assert!(injective(&Index::new([(0, 8), (1, 1)], 3), &ext));
        assert!(!injective(&Index::new([(0, 4), (1, 1)], 0), &ext));
        // Terms of one variable that cancel: every i0 maps to one address.
        let cancelled = Index {
            terms: vec![(0, 2), (0, -2)],
            offset: 0,
        };
        assert!(!injective(&cancelled, &ext));
    }

    #[test]
    fn a_scan_carries_a_scalar_across_iterations() {
        let body = vec![
            Stmt::Set {
                scalar: 0,
                value: Expr::Get(0) + Expr::Const(1.0),
            },
            Stmt::Store {
                buf: 0,
                index: Index::var(1, 1),
                value: Expr::Get(0),
            },
        ];
        assert!(!defines_before_use(&body, &HashSet::new()));
        assert!(reduction_form(0, &(Expr::Get(0) + Expr::Const(1.0))).is_some());
    }

    #[test]
    fn a_column_sum_cannot_split_its_row_loop() {
        // for c: for n: out[c] = out[c] + x[n, c]
        let body = vec![Stmt::Store {
            buf: 0,
            index: Index::var(0, 1),
            value: Expr::load(0, Index::var(0, 1)) + Expr::load(1, Index::new([(1, 4), (0, 1)], 0)),
        }];
        let outer: Extents = [(0, 4)].into_iter().collect();
        assert!(!disjoint(&[(1, 3)], &body, &outer));
        assert!(disjoint(&[(0, 4)], &body, &Extents::new()));
    }

    #[test]
    fn a_step_may_read_the_slot_before_the_one_it_writes() {
        // for i: s[8 + i] = s[i] (a recurrent step in its state arena)
        let body = |read_at: i64| {
            vec![Stmt::Store {
                buf: 0,
                index: Index::var(0, 1).shift(8),
                value: Expr::load(0, Index::var(0, 1).shift(read_at)),
            }]
        };
        assert!(disjoint(&[(0, 8)], &body(0), &Extents::new()));
        // Reading s[i + 1]: iteration 7 reads what iteration 0 writes.
        assert!(!disjoint(&[(0, 8)], &body(1), &Extents::new()));
    }
}
