//! The launch-geometry interpreter: runs each kernel on the CPU the way
//! its [`KernelPlan`] runs it on a GPU — every block and thread of the
//! grid, each thread's index computation, grid- and block-stride loops,
//! shared-memory tiles and reduction trees between barriers — so indexing
//! and decomposition bugs show without a GPU.
//!
//! Threads run one after another, so a data race would not change the
//! result by itself; instead every global access is checked: two threads
//! touching the same element where at least one writes, without a barrier
//! between them in the same block, is a [`GeometryError::Race`]. Reads are
//! checked against the element's last reader only, which catches every
//! write-write and read-after-write race and most write-after-read ones.

use super::launch::{
    a_col_of, a_row, advance, digits, k_extents, KernelPlan, ParVar, Phase, Shape, BLOCK, TILE,
};
use super::loops::identity;
use super::PtxError;
use crate::kernel::interp::{binary, epilogue, unary};
use crate::kernel::ir::*;
use thiserror::Error;

mod register_tiled;

/// Why a program could not be run with its GPU launch geometry.
#[derive(Debug, Error, PartialEq)]
pub enum GeometryError {
    /// The program has no launch plan.
    #[error(transparent)]
    Plan(#[from] PtxError),
    /// A load or store outside its buffer.
    #[error("kernel `{kernel}`: index {index} is outside buffer `{buf}` of {len} elements")]
    OutOfBounds {
        /// The kernel.
        kernel: String,
        /// The buffer's name.
        buf: String,
        /// The offending index.
        index: i64,
        /// The buffer's length.
        len: usize,
    },
    /// Two threads access one element without ordering, one of them writing.
    #[error("kernel `{kernel}`: threads {first} and {second} race on `{buf}`[{index}]")]
    Race {
        /// The kernel.
        kernel: String,
        /// The buffer's name.
        buf: String,
        /// The element.
        index: usize,
        /// The earlier thread (global thread number).
        first: u64,
        /// The later one.
        second: u64,
    },
    /// The caller passed the wrong number or sizes of buffers.
    #[error("buffer {0} has the wrong length: {1} given, {2} expected")]
    BadBuffer(usize, usize, usize),
}

/// Runs every kernel of `p` with its launch plan over `bufs`.
pub fn run_program(p: &Program, bufs: &mut [Vec<f32>]) -> Result<(), GeometryError> {
    run_program_measured(p, bufs).map(|_| ())
}

/// What one kernel's run did: the threads it launched and the most loop
/// trips one of them ran one after another (every grid-, block- and
/// split-stride step and every inner loop iteration; a tiled product's K
/// loop once per tile step). Guards can only skip work, so this is at
/// most the plan's figure ([`super::work::kernel_work`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measured {
    /// Threads launched (blocks × threads per block).
    pub threads: u64,
    /// Longest per-thread sequence of loop trips.
    pub serial: u64,
}

/// [`run_program`], reporting each kernel's [`Measured`] figures.
pub fn run_program_measured(
    p: &Program,
    bufs: &mut [Vec<f32>],
) -> Result<Vec<Measured>, GeometryError> {
    for (i, b) in p.buffers.iter().enumerate() {
        let got = bufs.get(i).map_or(0, |v| v.len());
        if got != b.len {
            return Err(GeometryError::BadBuffer(i, got, b.len));
        }
    }
    let plans = super::launch::program_plan(p)?;
    let mut out = Vec::with_capacity(plans.len());
    for (k, plan) in p.kernels.iter().zip(&plans) {
        let serial = run_kernel(p, k, plan, bufs)?;
        let threads = plan
            .grid
            .iter()
            .chain(&plan.block)
            .map(|d| u64::from(*d))
            .product();
        out.push(Measured { threads, serial });
    }
    Ok(out)
}

/// A contraction's fused epilogue for output `(row, col)` holding the sum
/// `v`: bias, activation, `C +=`, and the store, each access by `w`.
fn store_output(
    m: &mut Mem,
    c: &Contraction,
    (row, col): (u64, u64),
    mut v: f32,
    w: &Who,
) -> Result<(), GeometryError> {
    if let Some((bias, off)) = c.bias {
        v += m.read(bias, (off as u64 + col) as i64, w)?;
    }
    v = epilogue(c.epilogue, v);
    let ix = (c.c.1 as u64 + row * c.ldc as u64 + col) as i64;
    if c.accumulate {
        v += m.read(c.c.0, ix, w)?;
    }
    m.write(c.c.0, ix, v, w)
}

/// Who performs an access: global thread number (block · threads per
/// block + thread), threads per block, and the barrier epoch.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Who {
    thread: u64,
    per_block: u64,
    epoch: u64,
}

impl Who {
    fn conflicts(&self, other: &Who) -> bool {
        self.thread != other.thread
            && (self.thread / self.per_block != other.thread / other.per_block
                || self.epoch == other.epoch)
    }
}

/// Last writer and last reader of each element of a buffer the kernel
/// writes.
struct Shadow {
    writer: Vec<Option<Who>>,
    reader: Vec<Option<Who>>,
}

struct Mem<'a> {
    p: &'a Program,
    kernel: &'a str,
    bufs: &'a mut [Vec<f32>],
    shadow: Vec<Option<Shadow>>,
}

impl Mem<'_> {
    fn slot(&self, buf: BufId, index: i64) -> Result<usize, GeometryError> {
        usize::try_from(index)
            .ok()
            .filter(|i| *i < self.bufs[buf].len())
            .ok_or_else(|| GeometryError::OutOfBounds {
                kernel: self.kernel.to_string(),
                buf: self.p.buffers[buf].name.clone(),
                index,
                len: self.p.buffers[buf].len,
            })
    }

    fn race(&self, buf: BufId, index: usize, a: &Who, b: &Who) -> GeometryError {
        GeometryError::Race {
            kernel: self.kernel.to_string(),
            buf: self.p.buffers[buf].name.clone(),
            index,
            first: a.thread,
            second: b.thread,
        }
    }

    fn read(&mut self, buf: BufId, index: i64, who: &Who) -> Result<f32, GeometryError> {
        let i = self.slot(buf, index)?;
        if let Some(sh) = &self.shadow[buf] {
            if let Some(w) = sh.writer[i].filter(|w| w.conflicts(who)) {
                return Err(self.race(buf, i, &w, who));
            }
        }
        if let Some(sh) = &mut self.shadow[buf] {
            sh.reader[i] = Some(*who);
        }
        Ok(self.bufs[buf][i])
    }

    fn write(&mut self, buf: BufId, index: i64, v: f32, who: &Who) -> Result<(), GeometryError> {
        let i = self.slot(buf, index)?;
        if let Some(sh) = &self.shadow[buf] {
            let prior = [sh.writer[i], sh.reader[i]];
            if let Some(o) = prior.into_iter().flatten().find(|o| o.conflicts(who)) {
                return Err(self.race(buf, i, &o, who));
            }
        }
        if let Some(sh) = &mut self.shadow[buf] {
            sh.writer[i] = Some(*who);
        }
        self.bufs[buf][i] = v;
        Ok(())
    }
}

/// One thread's registers, and how many loop trips it has run.
#[derive(Clone)]
struct Regs {
    vars: Vec<i64>,
    scalars: Vec<f32>,
    trips: u64,
}

fn stored(body: &[Stmt], out: &mut Vec<BufId>) {
    for s in body {
        match s {
            Stmt::Loop { body, .. } | Stmt::IfInBounds { body, .. } => stored(body, out),
            Stmt::Store { buf, .. } | Stmt::ScatterAdd { buf, .. } => out.push(*buf),
            Stmt::Set { .. } => {}
        }
    }
}

/// Runs one kernel with its launch plan; returns the most loop trips one
/// thread ran (see [`Measured`]).
pub fn run_kernel(
    p: &Program,
    k: &Kernel,
    plan: &KernelPlan,
    bufs: &mut [Vec<f32>],
) -> Result<u64, GeometryError> {
    let mut written = Vec::new();
    match &k.body {
        KernelBody::Contraction(c) => written.push(c.c.0),
        KernelBody::Loop(l) => stored(&l.body, &mut written),
    }
    let mut shadow: Vec<Option<Shadow>> = (0..bufs.len()).map(|_| None).collect();
    for b in written {
        let len = bufs[b].len();
        shadow[b] = Some(Shadow {
            writer: vec![None; len],
            reader: vec![None; len],
        });
    }
    let mut m = Mem {
        p,
        kernel: &k.name,
        bufs,
        shadow,
    };
    let grid = u64::from(plan.grid[0]) * u64::from(plan.grid[1]) * u64::from(plan.grid[2]);
    match (&k.body, &plan.shape) {
        (KernelBody::Loop(l), Shape::Threads { par, total, body }) => {
            threads(&mut m, l, plan, par, *total, body)
        }
        (
            _,
            Shape::Blocks {
                par,
                total,
                phases,
                vars,
                scalars,
            },
        ) => blocks(&mut m, (*vars, *scalars), grid, (par, *total), phases),
        (KernelBody::Contraction(c), Shape::Tiled(_)) => tiled(&mut m, plan, c),
        (KernelBody::Contraction(c), Shape::RegisterTiled(_, precision)) => {
            register_tiled::run(&mut m, plan, c, *precision, register_tiled::KERNEL)
        }
        _ => Err(GeometryError::Plan(PtxError::PlanMismatch(k.name.clone()))),
    }
}

/// The parallel variables' extents, outermost first.
fn par_extents(par: &[ParVar]) -> Vec<u64> {
    par.iter().map(|pv| pv.extent as u64).collect()
}

/// Sets the parallel variables from their digits (see
/// [`launch::advance`](super::launch::advance): the kernels decompose a
/// thread's first number once and then step, as this interpreter does).
fn set_par(regs: &mut Regs, par: &[ParVar], d: &[u64]) {
    for (pv, d) in par.iter().zip(d) {
        regs.vars[pv.var] = *d as i64;
    }
}

fn threads(
    m: &mut Mem,
    l: &LoopKernel,
    plan: &KernelPlan,
    par: &[ParVar],
    total: u64,
    body: &[Stmt],
) -> Result<u64, GeometryError> {
    let (ntid, ncta) = (u64::from(plan.block[0]), u64::from(plan.grid[0]));
    let mut regs = Regs {
        vars: vec![0; l.vars],
        scalars: vec![0.0; l.scalars],
        trips: 0,
    };
    let mut longest = 0;
    for cta in 0..ncta {
        for tid in 0..ntid {
            regs.trips = 0;
            let thread = cta * ntid + tid;
            let who = Who {
                thread,
                per_block: ntid,
                epoch: 0,
            };
            let ext = par_extents(par);
            let (mut d, step) = (digits(&ext, thread), digits(&ext, ncta * ntid));
            let mut t = thread;
            while t < total {
                set_par(&mut regs, par, &d);
                regs.trips += 1;
                stmts(m, body, &mut regs, &who)?;
                t += ncta * ntid;
                advance(&ext, &mut d, &step);
            }
            longest = longest.max(regs.trips);
        }
    }
    Ok(longest)
}

fn blocks(
    m: &mut Mem,
    (vars, scalars): (usize, usize),
    ncta: u64,
    (par, total): (&[ParVar], u64),
    phases: &[Phase],
) -> Result<u64, GeometryError> {
    let ntid = u64::from(BLOCK);
    let fresh = Regs {
        vars: vec![0; vars],
        scalars: vec![0.0; scalars],
        trips: 0,
    };
    let mut epoch = 0u64;
    let mut longest = 0;
    for cta in 0..ncta {
        let mut regs = vec![fresh.clone(); BLOCK as usize];
        let who = |tid: u64, epoch: u64| Who {
            thread: cta * ntid + tid,
            per_block: ntid,
            epoch,
        };
        let ext = par_extents(par);
        let (mut d, step) = (digits(&ext, cta), digits(&ext, ncta));
        let mut row = cta;
        while row < total {
            for r in regs.iter_mut() {
                set_par(r, par, &d);
                r.trips += 1;
            }
            for ph in phases {
                match ph {
                    Phase::Uniform(body) => {
                        for (tid, r) in regs.iter_mut().enumerate() {
                            stmts(m, body, r, &who(tid as u64, epoch))?;
                        }
                    }
                    Phase::Single(body) => {
                        stmts(m, body, &mut regs[0], &who(0, epoch))?;
                        epoch += 1;
                    }
                    Phase::Split {
                        var,
                        extent,
                        body,
                        reductions,
                    } => {
                        let mut kept = vec![Vec::new(); regs.len()];
                        for (tid, r) in regs.iter_mut().enumerate() {
                            for (s, op) in reductions {
                                kept[tid].push(r.scalars[*s]);
                                r.scalars[*s] = identity(*op);
                            }
                            let mut v = tid as i64;
                            while v < *extent as i64 {
                                r.vars[*var] = v;
                                r.trips += 1;
                                stmts(m, body, r, &who(tid as u64, epoch))?;
                                v += i64::from(BLOCK);
                            }
                            r.vars[*var] = v;
                        }
                        for (j, (s, op)) in reductions.iter().enumerate() {
                            // The shared-memory tree of `block_reduce`.
                            let mut red: Vec<f32> = regs.iter().map(|r| r.scalars[*s]).collect();
                            let mut half = BLOCK as usize / 2;
                            while half > 0 {
                                for tid in 0..half {
                                    red[tid] = binary(*op, red[tid], red[tid + half]);
                                }
                                half /= 2;
                            }
                            for (tid, r) in regs.iter_mut().enumerate() {
                                r.scalars[*s] = binary(*op, kept[tid][j], red[0]);
                            }
                        }
                        epoch += 1;
                    }
                }
            }
            row += ncta;
            advance(&ext, &mut d, &step);
        }
        longest = regs.iter().map(|r| r.trips).max().unwrap_or(0).max(longest);
    }
    Ok(longest)
}

fn tiled(m: &mut Mem, plan: &KernelPlan, c: &Contraction) -> Result<u64, GeometryError> {
    let t = u64::from(TILE);
    let (mt, nt, kt) = (c.m() as u64, c.n as u64, c.k() as u64);
    let per_block = t * t;
    let mut epoch = 0u64;
    let mut trips = 0;
    for bx in 0..u64::from(plan.grid[0]) {
        for by in 0..u64::from(plan.grid[1]) {
            let block = bx * u64::from(plan.grid[1]) + by;
            let who = |tx: u64, ty: u64, epoch: u64| Who {
                thread: block * per_block + ty * t + tx,
                per_block,
                epoch,
            };
            let mut acc = vec![0f32; (t * t) as usize];
            let (mut at, mut bt) = (vec![0f32; (t * t) as usize], vec![0f32; (t * t) as usize]);
            // The digits of each column's reduction index k0 + tx, stepped
            // by a tile as the kernel steps them.
            let kext = k_extents(c);
            let kstep = digits(&kext, t);
            let mut kd: Vec<Vec<u64>> = (0..t).map(|tx| digits(&kext, tx)).collect();
            let mut k0 = 0;
            trips = 0;
            while k0 < kt {
                trips += 1;
                for ty in 0..t {
                    for tx in 0..t {
                        let (row, col) = (bx * t + ty, by * t + tx);
                        let own = (ty * t + tx) as usize;
                        let ka = k0 + tx;
                        at[own] = if ka < kt && row < mt {
                            let ix = c.a.1 as u64 + a_row(c, row) + a_col_of(c, &kd[tx as usize]);
                            m.read(c.a.0, ix as i64, &who(tx, ty, epoch))?
                        } else {
                            0.0
                        };
                        let kb = k0 + ty;
                        bt[own] = if kb < kt && col < nt {
                            let (bk, bn) = c.b_strides();
                            let ix = c.b.1 as u64 + kb * bk as u64 + col * bn as u64;
                            m.read(c.b.0, ix as i64, &who(tx, ty, epoch))?
                        } else {
                            0.0
                        };
                    }
                }
                epoch += 1;
                for ty in 0..t as usize {
                    for tx in 0..t as usize {
                        let tu = t as usize;
                        for kk in 0..tu {
                            // The GPU fuses this into one `fma`; a plain
                            // multiply-add differs by at most an ulp.
                            acc[ty * tu + tx] += at[ty * tu + kk] * bt[kk * tu + tx];
                        }
                    }
                }
                epoch += 1;
                k0 += t;
                for d in kd.iter_mut() {
                    advance(&kext, d, &kstep);
                }
            }
            for ty in 0..t {
                for tx in 0..t {
                    let (row, col) = (bx * t + ty, by * t + tx);
                    if row >= mt || col >= nt {
                        continue;
                    }
                    let w = who(tx, ty, epoch);
                    store_output(m, c, (row, col), acc[(ty * t + tx) as usize], &w)?;
                }
            }
        }
    }
    Ok(trips)
}

fn stmts(m: &mut Mem, body: &[Stmt], r: &mut Regs, who: &Who) -> Result<(), GeometryError> {
    for s in body {
        match s {
            Stmt::Loop { var, extent, body } => {
                for i in 0..*extent {
                    r.vars[*var] = i as i64;
                    r.trips += 1;
                    stmts(m, body, r, who)?;
                }
            }
            Stmt::Store { buf, index, value } => {
                let v = expr(m, value, r, who)?;
                m.write(*buf, index.eval(&r.vars), v, who)?;
            }
            Stmt::Set { scalar, value } => {
                r.scalars[*scalar] = expr(m, value, r, who)?;
            }
            Stmt::ScatterAdd {
                buf,
                row,
                index,
                value,
            } => {
                let id = expr(m, &row.value, r, who)?;
                if let Some(k) = row.select(id) {
                    let at = k * row.stride as i64 + index.eval(&r.vars);
                    let v = expr(m, value, r, who)?;
                    let old = m.read(*buf, at, who)?;
                    m.write(*buf, at, old + v, who)?;
                }
            }
            Stmt::IfInBounds { conds, body } => {
                let inside = conds.iter().all(|(ix, bound)| {
                    let i = ix.eval(&r.vars);
                    i >= 0 && (i as usize) < *bound
                });
                if inside {
                    stmts(m, body, r, who)?;
                }
            }
        }
    }
    Ok(())
}

fn expr(m: &mut Mem, e: &Expr, r: &Regs, who: &Who) -> Result<f32, GeometryError> {
    Ok(match e {
        Expr::Const(c) => *c,
        Expr::Load(b, ix) => m.read(*b, ix.eval(&r.vars), who)?,
        Expr::Gather { buf, row, index } => {
            let id = expr(m, &row.value, r, who)?;
            match row.select(id) {
                Some(k) => m.read(*buf, k * row.stride as i64 + index.eval(&r.vars), who)?,
                None => 0.0,
            }
        }
        Expr::Get(s) => r.scalars[*s],
        Expr::Iter(v) => r.vars[*v] as f32,
        Expr::Un(op, x) => unary(*op, expr(m, x, r, who)?),
        Expr::Bin(op, a, b) => binary(*op, expr(m, a, r, who)?, expr(m, b, r, who)?),
        Expr::Select(a, cmp, b, t, f) => {
            let (a, b) = (expr(m, a, r, who)?, expr(m, b, r, who)?);
            let holds = match cmp {
                Cmp::Gt => a > b,
                Cmp::Ge => a >= b,
                Cmp::Lt => a < b,
            };
            if holds {
                expr(m, t, r, who)?
            } else {
                expr(m, f, r, who)?
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::ptx::launch::kernel_plan;

    fn program(body: Vec<Stmt>, lens: &[usize]) -> Program {
        Program {
            name: "t".into(),
            batch: 1,
            buffers: lens
                .iter()
                .map(|len| Buffer {
                    name: format!("b{len}"),
                    len: *len,
                    kind: BufKind::Temp,
                })
                .collect(),
            kernels: vec![Kernel {
                name: "k".into(),
                body: KernelBody::Loop(LoopKernel {
                    vars: 2,
                    scalars: 1,
                    body,
                }),
            }],
            inputs: vec![],
            params: vec![],
            outputs: vec![],
        }
    }

    /// `for c in 0..4 { for n in 0..300 { out[c] = out[c] + x[n, c] } }`
    fn column_sum() -> Program {
        let inner = Stmt::Store {
            buf: 0,
            index: Index::var(0, 1),
            value: Expr::load(0, Index::var(0, 1)) + Expr::load(1, Index::new([(1, 4), (0, 1)], 0)),
        };
        program(
            vec![Stmt::Loop {
                var: 0,
                extent: 4,
                body: vec![Stmt::Loop {
                    var: 1,
                    extent: 300,
                    body: vec![inner],
                }],
            }],
            &[4, 1200],
        )
    }

    #[test]
    fn a_column_sum_runs_one_thread_per_column_and_matches() {
        let p = column_sum();
        let plan = kernel_plan(&p, 0).unwrap();
        let Shape::Threads { par, total, .. } = &plan.shape else {
            panic!("{:?}", plan.shape)
        };
        assert_eq!((par.len(), *total), (1, 4));
        let mut bufs = vec![vec![0.0; 4], (0..1200).map(|i| i as f32).collect()];
        let mut want = bufs.clone();
        run_program(&p, &mut bufs).unwrap();
        crate::kernel::interp::run_program(&p, &mut want).unwrap();
        assert_eq!(bufs, want);
    }

    #[test]
    fn the_race_detector_catches_a_wrongly_split_reduction_loop() {
        let p = column_sum();
        let mut plan = kernel_plan(&p, 0).unwrap();
        // Pretend the row loop were independent too: threads then add
        // into the same `out[c]`.
        let KernelBody::Loop(l) = &p.kernels[0].body else {
            unreachable!()
        };
        let Stmt::Loop { body, .. } = &l.body[0] else {
            unreachable!()
        };
        let Stmt::Loop { body, .. } = &body[0] else {
            unreachable!()
        };
        plan.shape = Shape::Threads {
            par: vec![
                ParVar {
                    var: 0,
                    extent: 4,
                    div: 300,
                },
                ParVar {
                    var: 1,
                    extent: 300,
                    div: 1,
                },
            ],
            total: 1200,
            body: body.clone(),
        };
        plan.grid = [5, 1, 1];
        let mut bufs = vec![vec![0.0; 4], vec![1.0; 1200]];
        let err = run_kernel(&p, &p.kernels[0], &plan, &mut bufs).unwrap_err();
        assert!(matches!(err, GeometryError::Race { .. }), "{err}");
    }

    #[test]
    fn a_wide_row_max_becomes_a_block_reduction_and_matches() {
        // s0 = -inf; for i in 0..1000 { s0 = max(s0, x[i]) }; out[0] = s0
        let p = program(
            vec![
                Stmt::Set {
                    scalar: 0,
                    value: Expr::Const(f32::NEG_INFINITY),
                },
                Stmt::Loop {
                    var: 0,
                    extent: 1000,
                    body: vec![Stmt::Set {
                        scalar: 0,
                        value: Expr::Get(0).bin(BinOp::Max, Expr::load(1, Index::var(0, 1))),
                    }],
                },
                Stmt::Store {
                    buf: 0,
                    index: Index::constant(0),
                    value: Expr::Get(0),
                },
            ],
            &[1, 1000],
        );
        let plan = kernel_plan(&p, 0).unwrap();
        let Shape::Blocks { phases, .. } = &plan.shape else {
            panic!("{:?}", plan.shape)
        };
        assert!(matches!(
            &phases[1],
            Phase::Split { reductions, .. } if reductions == &vec![(0, BinOp::Max)]
        ));
        let x: Vec<f32> = (0..1000).map(|i| ((i * 37) % 1000) as f32).collect();
        let mut bufs = vec![vec![0.0], x];
        run_program(&p, &mut bufs).unwrap();
        assert_eq!(bufs[0][0], 999.0);
    }
}
