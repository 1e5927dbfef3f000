//! The bounds proof and the parallel-safety check of a loop kernel: every
//! affine index bounded by interval arithmetic over the loop extents (and
//! refined inside `IfInBounds` guards), and whether the outermost loop's
//! iterations touch disjoint memory (see the module docs of `loops`).

use std::fmt::Write as _;

use super::vectorize::no_carried_scalars;
use super::CodegenError;
use crate::kernel::ir::{BufId, Expr, Index, LoopKernel, Row, Stmt};

/// Formats an index as `offset + c·v` terms, e.g. `13*v0 + v1 - 2`.
fn show_index(idx: &Index) -> String {
    let mut s = String::new();
    for &(v, c) in &idx.terms {
        let sep = if s.is_empty() {
            if c < 0 {
                "-"
            } else {
                ""
            }
        } else if c < 0 {
            " - "
        } else {
            " + "
        };
        s.push_str(sep);
        match c.unsigned_abs() {
            1 => write!(s, "v{v}"),
            a => write!(s, "{a}*v{v}"),
        }
        .expect("writing to a String cannot fail");
    }
    if s.is_empty() {
        return idx.offset.to_string();
    }
    if idx.offset != 0 {
        let sign = if idx.offset < 0 { '-' } else { '+' };
        write!(s, " {sign} {}", idx.offset.unsigned_abs())
            .expect("writing to a String cannot fail");
    }
    s
}

/// Largest magnitude an index may reach: leaves room for the ×4 byte
/// scaling and pointer addition in 64-bit arithmetic.
const INDEX_LIMIT: i128 = 1 << 60;

/// An affine form over loop variables with dense coefficients.
#[derive(Clone, Debug)]
struct Lin {
    coefs: Vec<i128>,
    offset: i128,
}

/// What the analysis found out about a kernel.
pub(super) struct Plan {
    /// `(variable, extent)` of the outermost loop when the body is a single
    /// loop.
    pub(super) outer: Option<(usize, usize)>,
    /// Whether that loop's iterations may run concurrently.
    pub(super) parallel: bool,
    /// Which buffers the kernel touches.
    pub(super) used: Vec<bool>,
}

/// One access inside the outermost loop, for the parallel-safety check.
struct Access {
    buf: BufId,
    store: bool,
    /// Coefficient of the outermost loop variable.
    coef: i128,
    /// Range of the rest of the index (data-dependent rows included).
    lo: i128,
    hi: i128,
    /// The row stride of a data-dependent row access, else 0.
    row_stride: i128,
    /// The affine index without the outermost variable's term.
    rest: Lin,
    /// The largest value of each loop variable where the access is.
    var_max: Vec<Option<i128>>,
}

struct Analyzer<'a> {
    lens: &'a [usize],
    vars: usize,
    scalars: usize,
    /// Largest value of each bound loop variable (`None`: not bound).
    var_max: Vec<Option<i128>>,
    /// Guarded indices in scope and their largest allowed value.
    guards: Vec<(Lin, i128)>,
    /// The outermost loop's variable when it is a candidate for splitting.
    outer: Option<usize>,
    accesses: Vec<Access>,
    used: Vec<bool>,
}

pub(super) fn analyze(k: &LoopKernel, lens: &[usize]) -> Result<Plan, CodegenError> {
    let outer = match k.body.as_slice() {
        [Stmt::Loop { var, extent, .. }] => Some((*var, *extent)),
        _ => None,
    };
    let mut a = Analyzer {
        lens,
        vars: k.vars,
        scalars: k.scalars,
        var_max: vec![None; k.vars],
        guards: vec![],
        outer: outer.map(|(v, _)| v),
        accesses: vec![],
        used: vec![false; lens.len()],
    };
    a.stmts(&k.body, true)?;
    let parallel = outer.is_some_and(|(_, extent)| a.bands_disjoint(extent)) && {
        let mut assigned = vec![false; k.scalars];
        no_carried_scalars(&k.body[0], &mut assigned)
    };
    Ok(Plan {
        outer,
        parallel,
        used: a.used,
    })
}

impl Analyzer<'_> {
    fn stmts(&mut self, body: &[Stmt], live: bool) -> Result<(), CodegenError> {
        body.iter().try_for_each(|s| self.stmt(s, live))
    }

    fn stmt(&mut self, s: &Stmt, live: bool) -> Result<(), CodegenError> {
        match s {
            Stmt::Loop { var, extent, body } => {
                let var = *var;
                if var >= self.vars {
                    return Err(CodegenError::UnknownVar {
                        var,
                        declared: self.vars,
                    });
                }
                if self.var_max[var].is_some() {
                    return Err(CodegenError::ReboundVar { var });
                }
                let extent_i = i128::try_from(*extent).unwrap_or(i128::MAX);
                if extent_i > INDEX_LIMIT {
                    return Err(CodegenError::IndexOverflow {
                        index: format!("extent {extent} of v{var}"),
                    });
                }
                self.var_max[var] = Some((extent_i - 1).max(0));
                let r = self.stmts(body, live && *extent > 0);
                self.var_max[var] = None;
                r
            }
            Stmt::Store { buf, index, value } => {
                self.expr(value, live)?;
                self.access(*buf, index, true, live)
            }
            Stmt::ScatterAdd {
                buf,
                row,
                index,
                value,
            } => {
                self.expr(&row.value, live)?;
                self.expr(value, live)?;
                self.row_access(*buf, row, index, true, live)
            }
            Stmt::Set { scalar, value } => {
                self.scalar(*scalar)?;
                self.expr(value, live)
            }
            Stmt::IfInBounds { conds, body } => {
                let mut guards = Vec::with_capacity(conds.len());
                for (idx, bound) in conds {
                    let lin = self.lin(idx)?;
                    if live {
                        self.check_magnitude(&lin, idx)?;
                    }
                    let max = i128::try_from(*bound).unwrap_or(i128::MAX) - 1;
                    guards.push((lin, max));
                }
                let body_live = live && conds.iter().all(|(_, b)| *b > 0);
                let depth = self.guards.len();
                self.guards.extend(guards);
                let r = self.stmts(body, body_live);
                self.guards.truncate(depth);
                r
            }
        }
    }

    fn expr(&mut self, e: &Expr, live: bool) -> Result<(), CodegenError> {
        match e {
            Expr::Const(_) => Ok(()),
            Expr::Load(buf, idx) => self.access(*buf, idx, false, live),
            Expr::Gather { buf, row, index } => {
                self.expr(&row.value, live)?;
                self.row_access(*buf, row, index, false, live)
            }
            Expr::Get(s) => self.scalar(*s),
            // A loop variable read as a value must exist and be bound.
            Expr::Iter(v) => self.lin(&Index::var(*v, 1)).map(|_| ()),
            Expr::Un(_, x) => self.expr(x, live),
            Expr::Bin(_, a, b) => {
                self.expr(a, live)?;
                self.expr(b, live)
            }
            Expr::Select(a, _, b, t, f) => {
                self.expr(a, live)?;
                self.expr(b, live)?;
                self.expr(t, live)?;
                self.expr(f, live)
            }
        }
    }

    fn scalar(&self, scalar: usize) -> Result<(), CodegenError> {
        if scalar < self.scalars {
            Ok(())
        } else {
            Err(CodegenError::UnknownScalar {
                scalar,
                declared: self.scalars,
            })
        }
    }

    /// Converts an index, checking that its variables exist and are bound.
    fn lin(&self, idx: &Index) -> Result<Lin, CodegenError> {
        let mut coefs = vec![0i128; self.vars];
        for &(var, c) in &idx.terms {
            if var >= self.vars {
                return Err(CodegenError::UnknownVar {
                    var,
                    declared: self.vars,
                });
            }
            if self.var_max[var].is_none() {
                return Err(CodegenError::UnboundVar { var });
            }
            coefs[var] += i128::from(c);
        }
        Ok(Lin {
            coefs,
            offset: i128::from(idx.offset),
        })
    }

    /// Every partial sum of the index's evaluation stays within
    /// [`INDEX_LIMIT`].
    fn check_magnitude(&self, lin: &Lin, idx: &Index) -> Result<(), CodegenError> {
        let mut total = lin.offset.abs();
        for &(var, c) in &idx.terms {
            let max = self.var_max[var].unwrap_or(0);
            total = total.saturating_add(i128::from(c).abs().saturating_mul(max));
        }
        if total > INDEX_LIMIT {
            return Err(CodegenError::IndexOverflow {
                index: show_index(idx),
            });
        }
        Ok(())
    }

    fn access(
        &mut self,
        buf: BufId,
        idx: &Index,
        store: bool,
        live: bool,
    ) -> Result<(), CodegenError> {
        self.access_rows(buf, idx, 0, 0, store, live)
    }

    /// An access `buf[row·stride + idx]` with a data-dependent `row` in
    /// `0..rows`: the generated code checks the row at run time (an id out
    /// of range reads 0 or writes nothing), so the proof covers the affine
    /// part for every row in range.
    fn row_access(
        &mut self,
        buf: BufId,
        row: &Row,
        idx: &Index,
        store: bool,
        live: bool,
    ) -> Result<(), CodegenError> {
        if row.rows == 0 {
            // No id is in range: the access never happens.
            return self.access_rows(buf, idx, 0, 0, store, false);
        }
        let stride = i128::try_from(row.stride).unwrap_or(i128::MAX);
        let span = i128::try_from(row.rows - 1)
            .unwrap_or(i128::MAX)
            .saturating_mul(stride);
        if span > INDEX_LIMIT {
            return Err(CodegenError::IndexOverflow {
                index: format!("row(.., {}) * {}", row.rows, row.stride),
            });
        }
        self.access_rows(buf, idx, span, stride, store, live)
    }

    /// [`Analyzer::access`] widened by `span` (rows of `stride` elements
    /// after the first) beyond the affine index.
    fn access_rows(
        &mut self,
        buf: BufId,
        idx: &Index,
        span: i128,
        stride: i128,
        store: bool,
        live: bool,
    ) -> Result<(), CodegenError> {
        let Some(&len) = self.lens.get(buf) else {
            return Err(CodegenError::UnknownBuffer {
                buf,
                count: self.lens.len(),
            });
        };
        self.used[buf] = true;
        let lin = self.lin(idx)?;
        if !live {
            return Ok(());
        }
        self.check_magnitude(&lin, idx)?;
        let (min, max) = self.range(&lin);
        let max = max.saturating_add(span);
        if max > INDEX_LIMIT {
            return Err(CodegenError::IndexOverflow {
                index: show_index(idx),
            });
        }
        if min < 0 || max >= len as i128 {
            return Err(CodegenError::OutOfBounds {
                access: if store { "store" } else { "load" },
                buf,
                index: show_index(idx),
                min,
                max,
                len,
            });
        }
        if let Some(o) = self.outer {
            let mut rest = lin;
            let coef = std::mem::take(&mut rest.coefs[o]);
            let (lo, hi) = self.range(&rest);
            self.accesses.push(Access {
                buf,
                store,
                coef,
                lo,
                hi: hi.saturating_add(span),
                row_stride: stride,
                rest,
                var_max: self.var_max.clone(),
            });
        }
        Ok(())
    }

    /// Range of `lin` over the bound variables, ignoring guards.
    fn plain_range(&self, lin: &Lin) -> Option<(i128, i128)> {
        let (mut lo, mut hi) = (lin.offset, lin.offset);
        for (v, &c) in lin.coefs.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let t = c.checked_mul(self.var_max[v]?)?;
            if t < 0 {
                lo = lo.checked_add(t)?;
            } else {
                hi = hi.checked_add(t)?;
            }
        }
        Some((lo, hi))
    }

    /// Range of `lin` as `Σ a_g·guard_g + rest`, each guarded index within
    /// its guard's bounds.
    fn guarded_range(&self, lin: &Lin) -> Option<(i128, i128)> {
        let mut rest = lin.clone();
        let (mut lo, mut hi) = (0i128, 0i128);
        for (g, gmax) in self.guards.iter().rev() {
            let Some(a) = elimination_factor(&rest, g) else {
                continue;
            };
            for (r, &gc) in rest.coefs.iter_mut().zip(&g.coefs) {
                *r = r.checked_sub(a.checked_mul(gc)?)?;
            }
            rest.offset = rest.offset.checked_sub(a.checked_mul(g.offset)?)?;
            let t = a.checked_mul(*gmax)?;
            if t < 0 {
                lo = lo.checked_add(t)?;
            } else {
                hi = hi.checked_add(t)?;
            }
        }
        let (rlo, rhi) = self.plain_range(&rest)?;
        Some((lo.checked_add(rlo)?, hi.checked_add(rhi)?))
    }

    /// The tightest proven range of `lin` in the current scope.
    fn range(&self, lin: &Lin) -> (i128, i128) {
        let plain = self.plain_range(lin).unwrap_or((i128::MIN, i128::MAX));
        match self.guarded_range(lin) {
            Some((lo, hi)) if !self.guards.is_empty() => (plain.0.max(lo), plain.1.min(hi)),
            _ => plain,
        }
    }

    /// Each buffer written inside the outermost loop is accessed, in
    /// iteration `i`, only within `coef·i + [lo, hi]` with one common
    /// `coef` and `hi - lo < |coef|`: iterations touch disjoint memory.
    /// Loads whose addresses over the whole loop miss those of every
    /// store to their buffer do not count (a recurrent step reads the
    /// previous state from the slot before the one it writes).
    fn bands_disjoint(&self, extent: usize) -> bool {
        let whole = |a: &Access| {
            let last = a.coef * (extent as i128 - 1).max(0);
            (
                a.lo.saturating_add(last.min(0)),
                a.hi.saturating_add(last.max(0)),
            )
        };
        let reaches_a_store = |a: &Access| {
            let (lo, hi) = whole(a);
            a.store
                || a.row_stride != 0
                || self.accesses.iter().any(|s| {
                    let (slo, shi) = whole(s);
                    s.store && s.buf == a.buf && (s.row_stride != 0 || (lo <= shi && slo <= hi))
                })
        };
        let written: Vec<BufId> = self
            .accesses
            .iter()
            .filter(|a| a.store)
            .map(|a| a.buf)
            .collect();
        written.iter().all(|&buf| {
            if self.residues_disjoint(buf, extent) {
                return true;
            }
            let mut accs = self
                .accesses
                .iter()
                .filter(|a| a.buf == buf && reaches_a_store(a));
            let Some(first) = accs.next() else {
                return true;
            };
            let (coef, mut lo, mut hi) = (first.coef, first.lo, first.hi);
            for a in accs {
                if a.coef != coef {
                    return false;
                }
                lo = lo.min(a.lo);
                hi = hi.max(a.hi);
            }
            coef != 0 && hi.saturating_sub(lo) < coef.abs()
        })
    }

    /// A buffer accessed through data-dependent rows of stride `m` (an
    /// embedding gradient, one block of columns per outer iteration):
    /// modulo `m` the rows vanish, and every access of iteration `o` lies
    /// in the window `coef·o + [lo, hi]` (the offset and the terms that are
    /// not multiples of `m`, over their loops' ranges). Iterations are
    /// disjoint, whatever rows the data picks, when all accesses share one
    /// `coef`, a window is narrower than `|coef|`, and the windows of all
    /// iterations together span less than `m`, so none wraps onto another.
    fn residues_disjoint(&self, buf: BufId, extent: usize) -> bool {
        let accs: Vec<&Access> = self.accesses.iter().filter(|a| a.buf == buf).collect();
        let Some(m) = accs.iter().map(|a| a.row_stride).find(|s| *s > 0) else {
            return false;
        };
        let coef = accs[0].coef;
        let (mut lo, mut hi) = (i128::MAX, i128::MIN);
        for a in &accs {
            if a.coef != coef || (a.row_stride != 0 && a.row_stride != m) {
                return false;
            }
            let Some((l, h)) = residue_window(a, m) else {
                return false;
            };
            lo = lo.min(l);
            hi = hi.max(h);
        }
        let reach = coef
            .checked_abs()
            .and_then(|c| c.checked_mul(i128::try_from(extent).ok()?.saturating_sub(1)))
            .and_then(|r| r.checked_add(hi - lo));
        coef != 0 && hi - lo < coef.abs() && reach.is_some_and(|x| x < m)
    }
}

/// The range `[lo, hi]` of `a`'s index modulo `m` without the outer
/// variable: its offset's residue plus the terms whose coefficients are
/// not multiples of `m`, over their variables' ranges; `None` when such a
/// variable is unbounded or the sum overflows.
fn residue_window(a: &Access, m: i128) -> Option<(i128, i128)> {
    let base = a.rest.offset.rem_euclid(m);
    let (mut lo, mut hi) = (base, base);
    for (v, &c) in a.rest.coefs.iter().enumerate() {
        if c % m == 0 {
            continue;
        }
        let t = c.checked_mul((*a.var_max.get(v)?)?)?;
        if t < 0 {
            lo = lo.checked_add(t)?;
        } else {
            hi = hi.checked_add(t)?;
        }
    }
    Some((lo, hi))
}

/// The multiple `a ≠ 0` of guard `g` whose subtraction from `r` removes
/// `g`'s first variable from `r`, if there is one. Any multiple is sound
/// (`r = a·g + (r − a·g)` whatever `a` is, and the caller intersects the
/// result with the unguarded range); this one is exact when `r` holds `g`
/// whole, and still tight when `r` adds more of `g`'s other variables, as
/// a gather through a strided window does (`o = q + lead − j` guarded,
/// `k = base + s·j` alongside).
fn elimination_factor(r: &Lin, g: &Lin) -> Option<i128> {
    let (pivot, &gc) = g.coefs.iter().enumerate().find(|(_, c)| **c != 0)?;
    let rc = r.coefs[pivot];
    if rc == 0 || rc % gc != 0 {
        return None;
    }
    Some(rc / gc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::ir::BinOp;

    fn lk(vars: usize, scalars: usize, body: Vec<Stmt>) -> LoopKernel {
        LoopKernel {
            vars,
            scalars,
            body,
        }
    }

    fn lp(var: usize, extent: usize, body: Vec<Stmt>) -> Stmt {
        Stmt::Loop { var, extent, body }
    }

    fn store(buf: BufId, index: Index, value: Expr) -> Stmt {
        Stmt::Store { buf, index, value }
    }

    #[test]
    fn shows_indices() {
        assert_eq!(
            show_index(&Index::new([(0, 13), (1, 1)], -2)),
            "13*v0 + v1 - 2"
        );
        assert_eq!(show_index(&Index::new([(2, -1)], 5)), "-v2 + 5");
        assert_eq!(show_index(&Index::constant(7)), "7");
    }

    #[test]
    fn plain_ranges_are_exact() {
        // out[3*i - j + 2] for i < 4, j < 3: [0, 11].
        let k = lk(
            2,
            0,
            vec![lp(
                0,
                4,
                vec![lp(
                    1,
                    3,
                    vec![store(0, Index::new([(0, 3), (1, -1)], 2), Expr::Const(0.0))],
                )],
            )],
        );
        assert!(analyze(&k, &[12]).is_ok());
        let err = analyze(&k, &[11]).err().expect("must fail");
        assert!(
            matches!(
                err,
                CodegenError::OutOfBounds {
                    min: 0,
                    max: 11,
                    len: 11,
                    ..
                }
            ),
            "{err}"
        );
        let k2 = lk(
            2,
            0,
            vec![lp(
                0,
                4,
                vec![lp(
                    1,
                    3,
                    vec![store(0, Index::new([(0, 3), (1, -1)], 1), Expr::Const(0.0))],
                )],
            )],
        );
        let err = analyze(&k2, &[100]).err().expect("must fail");
        assert!(
            matches!(err, CodegenError::OutOfBounds { min: -1, .. }),
            "{err}"
        );
    }

    #[test]
    fn guards_bound_linear_combinations() {
        // 2-D padded window: in[(oh + kh - 1) * 5 + (ow + kw - 1)], guarded
        // on both coordinates, over a 5x5 input.
        let row = Index::new([(0, 1), (2, 1)], -1);
        let col = Index::new([(1, 1), (3, 1)], -1);
        let load = Index::new([(0, 5), (2, 5), (1, 1), (3, 1)], -6);
        let body = vec![Stmt::IfInBounds {
            conds: vec![(row, 5), (col, 5)],
            body: vec![store(
                1,
                Index::new([(0, 5), (1, 1)], 0),
                Expr::load(0, load),
            )],
        }];
        let k = lk(
            4,
            0,
            vec![lp(
                0,
                5,
                vec![lp(1, 5, vec![lp(2, 3, vec![lp(3, 3, body)])])],
            )],
        );
        assert!(analyze(&k, &[25, 25]).is_ok());
        // One element short is caught.
        assert!(analyze(&k, &[24, 25]).is_err());
        // Without the guard the same kernel is rejected.
        let unguarded = lk(
            4,
            0,
            vec![lp(
                0,
                5,
                vec![lp(
                    1,
                    5,
                    vec![lp(
                        2,
                        3,
                        vec![lp(
                            3,
                            3,
                            vec![store(
                                1,
                                Index::new([(0, 5), (1, 1)], 0),
                                Expr::load(0, Index::new([(0, 5), (2, 5), (1, 1), (3, 1)], -6)),
                            )],
                        )],
                    )],
                )],
            )],
        );
        assert!(matches!(
            analyze(&unguarded, &[25, 25]),
            Err(CodegenError::OutOfBounds { min: -6, .. })
        ));
    }

    #[test]
    fn structural_errors() {
        let unbound = lk(1, 0, vec![store(0, Index::var(0, 1), Expr::Const(1.0))]);
        assert!(matches!(
            analyze(&unbound, &[4]),
            Err(CodegenError::UnboundVar { var: 0 })
        ));
        let rebound = lk(1, 0, vec![lp(0, 2, vec![lp(0, 2, vec![])])]);
        assert!(matches!(
            analyze(&rebound, &[]),
            Err(CodegenError::ReboundVar { var: 0 })
        ));
        let bad_buf = lk(0, 0, vec![store(3, Index::constant(0), Expr::Const(1.0))]);
        assert!(matches!(
            analyze(&bad_buf, &[4]),
            Err(CodegenError::UnknownBuffer { buf: 3, count: 1 })
        ));
        let bad_scalar = lk(0, 1, vec![store(0, Index::constant(0), Expr::Get(1))]);
        assert!(matches!(
            analyze(&bad_scalar, &[4]),
            Err(CodegenError::UnknownScalar { scalar: 1, .. })
        ));
        let huge = lk(
            1,
            0,
            vec![lp(
                0,
                2,
                vec![store(0, Index::var(0, i64::MAX / 2), Expr::Const(1.0))],
            )],
        );
        assert!(matches!(
            analyze(&huge, &[4]),
            Err(CodegenError::IndexOverflow { .. })
        ));
    }

    #[test]
    fn dead_code_is_not_bounds_checked() {
        let k = lk(
            1,
            0,
            vec![lp(
                0,
                0,
                vec![store(0, Index::var(0, 1).shift(100), Expr::Const(1.0))],
            )],
        );
        assert!(analyze(&k, &[1]).is_ok());
    }

    #[test]
    fn parallel_safety() {
        // Row-wise reduction into a scalar: parallel.
        let rows = lk(
            2,
            1,
            vec![lp(
                0,
                4,
                vec![
                    Stmt::Set {
                        scalar: 0,
                        value: Expr::Const(0.0),
                    },
                    lp(
                        1,
                        3,
                        vec![Stmt::Set {
                            scalar: 0,
                            value: Expr::Get(0)
                                .bin(BinOp::Add, Expr::load(0, Index::new([(0, 3), (1, 1)], 0))),
                        }],
                    ),
                    store(1, Index::var(0, 1), Expr::Get(0)),
                ],
            )],
        );
        assert!(analyze(&rows, &[12, 4]).unwrap().parallel);
        // A scalar carried across outer iterations: not parallel.
        let carried = lk(
            1,
            1,
            vec![lp(
                0,
                4,
                vec![
                    Stmt::Set {
                        scalar: 0,
                        value: Expr::Get(0).bin(BinOp::Add, Expr::load(0, Index::var(0, 1))),
                    },
                    store(1, Index::var(0, 1), Expr::Get(0)),
                ],
            )],
        );
        assert!(!analyze(&carried, &[4, 4]).unwrap().parallel);
        // Every iteration writes the same element: not parallel.
        let shared = lk(
            1,
            0,
            vec![lp(
                0,
                4,
                vec![store(0, Index::constant(0), Expr::Const(1.0))],
            )],
        );
        assert!(!analyze(&shared, &[1]).unwrap().parallel);
        // Iteration i reads what iteration i+1 writes: not parallel.
        let shifted = lk(
            1,
            0,
            vec![lp(
                0,
                4,
                vec![store(
                    0,
                    Index::var(0, 1),
                    Expr::load(0, Index::var(0, 1).shift(1)),
                )],
            )],
        );
        assert!(!analyze(&shifted, &[5]).unwrap().parallel);
        // Row i of one slot read, row i of the next slot written (a
        // recurrent step in its state arena): parallel.
        let slots = |read_at: i64| {
            lk(
                1,
                0,
                vec![lp(
                    0,
                    4,
                    vec![store(
                        0,
                        Index::new([(0, 2)], 8),
                        Expr::load(0, Index::new([(0, 2)], read_at)),
                    )],
                )],
            )
        };
        assert!(analyze(&slots(0), &[16]).unwrap().parallel);
        // The same with the read slot overlapping the written one: not.
        assert!(!analyze(&slots(2), &[16]).unwrap().parallel);
    }
}
