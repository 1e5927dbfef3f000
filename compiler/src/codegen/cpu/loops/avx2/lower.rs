//! The loop nest of a native loop kernel: scalar counter loops,
//! vectorized loops (steps of `g` `zmm` or `ymm` vectors, then single
//! vectors, a `ymm` one after `zmm` ones, then a scalar tail), the row
//! pointers of their accesses, and their statements.

// `dynasm!` converts every dynamic register expression with `.into()`,
// which is the identity for the `u8` register numbers used here.
#![allow(clippy::useless_conversion)]

use dynasmrt::{dynasm, DynasmApi, DynasmLabelApi};

use super::asm::{Asm, Fail, END, RSP, SCRATCH, TABLE, W};
use super::need::need;
use crate::codegen::cpu::loops::vectorize::vectorizable;
use crate::kernel::ir::{BufId, Expr, Index, Stmt, UnOp, Var};

/// Frame bytes before the scalar register slots (`begin` at `[rsp]`, the
/// caller's `rsp` at `[rsp + 8]`).
const SLOTS: i32 = 64;

/// A row pointer: buffer, index terms without the vectorized variable,
/// and whether the access moves with it (else it is a broadcast).
type Key = (BufId, Vec<(Var, i64)>, bool);

/// Where a loop's iterations start and end.
#[derive(Clone, Copy)]
pub(super) enum Range {
    /// `0..n`.
    Const(usize),
    /// `begin..end` of the call (the outermost loop).
    Call,
}

pub(super) struct Emitter {
    pub(super) a: Asm,
    /// The most vectors a step runs.
    max_group: usize,
    /// Whether vectorized loops run `zmm` steps where they can.
    zmm: bool,
    /// General register of each bound loop variable.
    vars: Vec<Option<u8>>,
    /// Inside a vectorized loop: its variable and row pointers.
    lane: Option<(Var, Vec<(Key, u8)>)>,
    /// Whether a loop was vectorized where AVX2 code gains (see the
    /// module docs).
    pub(super) worth: bool,
    /// Inside a vectorized body: the registers holding each scalar
    /// register's vectors, for those kept in registers (the others are in
    /// their frame slots).
    pub(super) homes: Vec<Option<Vec<u8>>>,
    /// Whether scalar registers may stay in vector registers at all.
    pub(super) use_homes: bool,
}

impl Emitter {
    pub(super) fn new(
        vars: usize,
        scalars: usize,
        max_group: usize,
        zmm: bool,
    ) -> Result<Self, Fail> {
        Ok(Emitter {
            a: Asm::new(zmm)?,
            max_group,
            zmm,
            vars: vec![None; vars],
            lane: None,
            worth: false,
            homes: vec![None; scalars],
            use_homes: true,
        })
    }

    /// Frame bytes for `scalars` registers: `begin`, then one slot of
    /// `max_group` vectors per register.
    pub(super) fn frame(&self, scalars: usize) -> i32 {
        self.slot(scalars)
    }

    /// Frame offset of scalar register `s`'s lanes (room for `max_group`
    /// of the widest vectors).
    pub(super) fn slot(&self, s: usize) -> i32 {
        let widest = if self.zmm { W::Z } else { W::Y };
        SLOTS + (s * self.max_group) as i32 * widest.bytes()
    }

    /// A statement outside any vectorized loop: only loops, each either
    /// vectorized or holding loops only.
    pub(super) fn stmt(&mut self, s: &Stmt, scalars: usize, range: Range) -> Result<(), Fail> {
        let Stmt::Loop { var, extent, body } = s else {
            return Err(Fail::Unsupported);
        };
        if *extent == 0 {
            return Ok(());
        }
        if i32::try_from(*extent).is_err() {
            return Err(Fail::Unsupported);
        }
        if let Some((w, g)) = self.lane_group(*var, *extent, body, scalars) {
            self.worth |= (*extent >= 16 && body.iter().any(has_chains))
                || (*extent >= 64 && matches!(range, Range::Call))
                || (self.zmm && *extent >= 128);
            return self.vloop(*var, range, body, w, g);
        }
        if !body.iter().all(|s| matches!(s, Stmt::Loop { .. })) {
            return Err(Fail::Unsupported);
        }
        let r = self.a.gpr()?;
        self.vars[*var] = Some(r);
        let (top, done) = (
            self.a.ops.new_dynamic_label(),
            self.a.ops.new_dynamic_label(),
        );
        match range {
            Range::Const(_) => dynasm!(self.a.ops ; .arch x64 ; xor Rd(r), Rd(r)),
            Range::Call => dynasm!(self.a.ops
                ; .arch x64
                ; mov Rq(r), QWORD [rsp]
                ; cmp Rq(r), Rq(END)
                ; jge =>done
            ),
        }
        dynasm!(self.a.ops ; .arch x64 ; =>top);
        for s in body {
            let Stmt::Loop { extent, .. } = s else {
                unreachable!()
            };
            self.stmt(s, scalars, Range::Const(*extent))?;
        }
        dynasm!(self.a.ops ; .arch x64 ; add Rq(r), 1);
        match range {
            Range::Const(n) => dynasm!(self.a.ops ; .arch x64 ; cmp Rq(r), n as i32),
            Range::Call => dynasm!(self.a.ops ; .arch x64 ; cmp Rq(r), Rq(END)),
        }
        dynasm!(self.a.ops ; .arch x64 ; jl =>top ; =>done);
        self.vars[*var] = None;
        self.a.free_gpr(r);
        Ok(())
    }

    /// The width and number of vectors a step of the loop runs, if it is
    /// vectorized: a body of statements only (no nested loops) that
    /// `vectorize` accepts for `g` vectors' lanes (`zmm` ones first, where
    /// enabled).
    fn lane_group(
        &self,
        var: Var,
        extent: usize,
        body: &[Stmt],
        scalars: usize,
    ) -> Option<(W, usize)> {
        if !body
            .iter()
            .all(|s| matches!(s, Stmt::Set { .. } | Stmt::Store { .. }))
        {
            return None;
        }
        let widths: &[W] = if self.zmm { &[W::Z, W::Y] } else { &[W::Y] };
        for &w in widths {
            let mut g = self.max_group;
            while g >= 1 {
                if vectorizable(var, extent, body, scalars, g * w.lanes()) {
                    return Some((w, g));
                }
                g /= 2;
            }
        }
        None
    }

    /// `for var in range { body }` vectorized: steps of `g` vectors of
    /// width `w` while they fit, then single vectors (then a `ymm` one
    /// after `zmm` ones), then single iterations.
    fn vloop(&mut self, var: Var, range: Range, body: &[Stmt], w: W, g: usize) -> Result<(), Fail> {
        let cnt = self.a.gpr()?;
        match range {
            Range::Const(_) => dynasm!(self.a.ops ; .arch x64 ; xor Rd(cnt), Rd(cnt)),
            Range::Call => dynasm!(self.a.ops ; .arch x64 ; mov Rq(cnt), QWORD [rsp]),
        }
        let mut keys: Vec<Key> = Vec::new();
        for s in body {
            match s {
                Stmt::Set { value, .. } => collect(value, var, &mut keys)?,
                Stmt::Store { buf, index, value } => {
                    collect(value, var, &mut keys)?;
                    push_key(key(*buf, index, var)?, &mut keys);
                }
                _ => return Err(Fail::Unsupported),
            }
        }
        let mut ptrs = Vec::with_capacity(keys.len());
        for k in keys {
            let p = self.a.gpr()?;
            let (buf, rest, lane) = &k;
            let at = i32::try_from(8 * buf).map_err(|_| Fail::Unsupported)?;
            dynasm!(self.a.ops ; .arch x64 ; mov Rq(p), QWORD [Rq(TABLE) + at]);
            for &(v, c) in rest {
                let r = self.vars[v].ok_or(Fail::Unsupported)?;
                let c4 = c
                    .checked_mul(4)
                    .and_then(|c| i32::try_from(c).ok())
                    .ok_or(Fail::Unsupported)?;
                dynasm!(self.a.ops
                    ; .arch x64
                    ; imul Rq(SCRATCH), Rq(r), c4
                    ; add Rq(p), Rq(SCRATCH)
                );
            }
            if *lane && matches!(range, Range::Call) {
                dynasm!(self.a.ops ; .arch x64 ; lea Rq(p), [Rq(p) + Rq(cnt) * 4]);
            }
            ptrs.push((k, p));
        }
        let lane_ptrs: Vec<u8> = ptrs.iter().filter(|(k, _)| k.2).map(|&(_, p)| p).collect();
        self.lane = Some((var, ptrs));
        let mut phases = vec![(g * w.lanes(), w, g)];
        if g > 1 {
            phases.push((w.lanes(), w, 1));
        }
        if w == W::Z {
            phases.push((W::Y.lanes(), W::Y, 1));
        }
        phases.push((1, W::X, 1));
        // Iterations left when a phase starts (from 0): those the previous
        // phase's steps did not cover.
        let mut left = match range {
            Range::Const(n) => n,
            Range::Call => usize::MAX,
        };
        for (lanes, w, gg) in phases {
            if matches!(range, Range::Const(_)) {
                if left < lanes {
                    continue;
                }
                left %= lanes;
            }
            let (top, check) = (
                self.a.ops.new_dynamic_label(),
                self.a.ops.new_dynamic_label(),
            );
            dynasm!(self.a.ops ; .arch x64 ; jmp =>check ; =>top);
            // A register keeps its value in vector registers while enough
            // stay free for the hungriest statement (plus one per vector:
            // a register operand on the left is copied first), until its
            // last read.
            let reserve = gg * (body.iter().map(stmt_need).max().unwrap_or(0) + 1) + 1;
            let last_read = last_reads(body, self.homes.len());
            for (i, s) in body.iter().enumerate() {
                self.lane_stmt(s, w, gg, reserve, &last_read)?;
                for (r, last) in last_read.iter().enumerate() {
                    if last.is_none_or(|l| l <= i) {
                        self.drop_home(r);
                    }
                }
            }
            for r in 0..self.homes.len() {
                self.drop_home(r);
            }
            let (bytes, lanes) = (4 * lanes as i32, lanes as i32);
            for &p in &lane_ptrs {
                dynasm!(self.a.ops ; .arch x64 ; add Rq(p), bytes);
            }
            dynasm!(self.a.ops
                ; .arch x64
                ; add Rq(cnt), lanes
                ; =>check
                ; lea Rq(SCRATCH), [Rq(cnt) + lanes]
            );
            match range {
                Range::Const(n) => dynasm!(self.a.ops ; .arch x64 ; cmp Rq(SCRATCH), n as i32),
                Range::Call => dynasm!(self.a.ops ; .arch x64 ; cmp Rq(SCRATCH), Rq(END)),
            }
            dynasm!(self.a.ops ; .arch x64 ; jle =>top);
        }
        let (_, ptrs) = self.lane.take().expect("set above");
        for (_, p) in ptrs {
            self.a.free_gpr(p);
        }
        self.a.free_gpr(cnt);
        Ok(())
    }

    /// Frees the registers holding scalar register `r`, if any.
    fn drop_home(&mut self, r: usize) {
        if let Some(regs) = self.homes[r].take() {
            regs.into_iter().for_each(|x| self.a.free(x));
        }
    }

    /// A statement of a vectorized loop's body for one step. A register
    /// set here stays in vector registers when `reserve` others remain free
    /// and it is read later (`last_read`).
    fn lane_stmt(
        &mut self,
        s: &Stmt,
        w: W,
        g: usize,
        reserve: usize,
        last_read: &[Option<usize>],
    ) -> Result<(), Fail> {
        match s {
            Stmt::Set { scalar, value } => {
                // (A register's value counts as used more than once: the
                // Cranelift loop also reads its last lane after the loop.)
                let v = self.expr(value, w, g, false)?;
                let regs = self.owned_regs(v, w)?;
                self.drop_home(*scalar);
                if self.use_homes && last_read[*scalar].is_some() && self.a.free_count() >= reserve
                {
                    self.homes[*scalar] = Some(regs);
                    return Ok(());
                }
                let slot = self.slot(*scalar);
                for (j, &r) in regs.iter().enumerate() {
                    // The whole register (also in the tail), so the reads
                    // of the slot are forwarded from this store.
                    self.a.mov_to(w, RSP, slot + w.bytes() * j as i32, r);
                    self.a.free(r);
                }
            }
            Stmt::Store { buf, index, value } => {
                let v = self.expr(value, w, g, true)?;
                let regs = self.owned_regs(v, w)?;
                let (p, disp, lane) = self.access(*buf, index)?;
                debug_assert!(lane, "vectorize rejects stores that do not move");
                for (j, &r) in regs.iter().enumerate() {
                    self.a.store(w, p, disp + w.bytes() * j as i32, r);
                    self.a.free(r);
                }
            }
            _ => return Err(Fail::Unsupported),
        }
        Ok(())
    }

    /// The row pointer, byte displacement (of the step's first vector) and
    /// lane-ness of an access in the current vectorized loop.
    pub(super) fn access(&self, buf: BufId, idx: &Index) -> Result<(u8, i32, bool), Fail> {
        let (var, ptrs) = self.lane.as_ref().ok_or(Fail::Unsupported)?;
        let k = key(buf, idx, *var)?;
        let p = ptrs
            .iter()
            .find(|(q, _)| *q == k)
            .map(|&(_, p)| p)
            .ok_or(Fail::Unsupported)?;
        Ok((p, displacement(idx)?, k.2))
    }
}

/// `4·offset`, with room for the vectors of a step.
fn displacement(idx: &Index) -> Result<i32, Fail> {
    idx.offset
        .checked_mul(4)
        .and_then(|d| i32::try_from(d).ok())
        .filter(|d| d.checked_add(1024).is_some() && d.checked_sub(1024).is_some())
        .ok_or(Fail::Unsupported)
}

/// The row pointer an access of `buf` at `idx` uses in a loop vectorized
/// over `var`.
fn key(buf: BufId, idx: &Index, var: Var) -> Result<Key, Fail> {
    let mut terms: Vec<(Var, i64)> = Vec::new();
    for &(v, c) in &idx.terms {
        match terms.iter_mut().find(|(w, _)| *w == v) {
            Some((_, d)) => *d = d.checked_add(c).ok_or(Fail::Unsupported)?,
            None => terms.push((v, c)),
        }
    }
    terms.retain(|(_, c)| *c != 0);
    terms.sort_unstable();
    let lane = match terms.iter().position(|t| t.0 == var) {
        Some(p) => terms.remove(p).1,
        None => 0,
    };
    match lane {
        0 | 1 => Ok((buf, terms, lane == 1)),
        _ => Err(Fail::Unsupported),
    }
}

/// The registers (per vector) a statement's value needs.
fn stmt_need(s: &Stmt) -> usize {
    match s {
        Stmt::Set { value, .. } | Stmt::Store { value, .. } => need(value),
        _ => 0,
    }
}

/// For each scalar register, the index of the last statement of `body`
/// that reads it.
fn last_reads(body: &[Stmt], scalars: usize) -> Vec<Option<usize>> {
    fn reads(e: &Expr, i: usize, last: &mut [Option<usize>]) {
        match e {
            Expr::Get(s) => last[*s] = Some(i),
            Expr::Const(_) | Expr::Load(..) | Expr::Iter(_) => {}
            Expr::Gather { row, .. } => reads(&row.value, i, last),
            Expr::Un(_, x) => reads(x, i, last),
            Expr::Bin(_, a, b) => {
                reads(a, i, last);
                reads(b, i, last);
            }
            Expr::Select(a, _, b, t, f) => [a, b, t, f].iter().for_each(|x| reads(x, i, last)),
        }
    }
    let mut last = vec![None; scalars];
    for (i, s) in body.iter().enumerate() {
        if let Stmt::Set { value, .. } | Stmt::Store { value, .. } = s {
            reads(value, i, &mut last);
        }
    }
    last
}

/// Whether `s` evaluates `exp`, `tanh` or `sigmoid`.
fn has_chains(s: &Stmt) -> bool {
    fn expr(e: &Expr) -> bool {
        match e {
            Expr::Const(_) | Expr::Load(..) | Expr::Iter(_) | Expr::Get(_) => false,
            Expr::Gather { row, .. } => expr(&row.value),
            Expr::Un(op, x) => matches!(op, UnOp::Exp | UnOp::Tanh | UnOp::Sigmoid) || expr(x),
            Expr::Bin(_, a, b) => expr(a) || expr(b),
            Expr::Select(a, _, b, t, f) => [a, b, t, f].iter().any(|x| expr(x)),
        }
    }
    match s {
        Stmt::Set { value, .. } | Stmt::Store { value, .. } => expr(value),
        _ => false,
    }
}

fn push_key(k: Key, keys: &mut Vec<Key>) {
    if !keys.contains(&k) {
        keys.push(k);
    }
}

/// The row pointers of the loads in `e`.
fn collect(e: &Expr, var: Var, keys: &mut Vec<Key>) -> Result<(), Fail> {
    match e {
        Expr::Const(_) | Expr::Get(_) => Ok(()),
        Expr::Load(buf, idx) => {
            displacement(idx)?;
            push_key(key(*buf, idx, var)?, keys);
            Ok(())
        }
        Expr::Iter(_) | Expr::Gather { .. } => Err(Fail::Unsupported),
        Expr::Un(_, x) => collect(x, var, keys),
        Expr::Bin(_, a, b) => {
            collect(a, var, keys)?;
            collect(b, var, keys)
        }
        Expr::Select(a, _, b, t, f) => [a, b, t, f].iter().try_for_each(|x| collect(x, var, keys)),
    }
}
