//! PTX entries of loop kernels: one thread per parallel iteration
//! ([`Shape::Threads`](super::launch::Shape::Threads)) or one block per
//! parallel iteration with shared phases and block reductions
//! ([`Shape::Blocks`](super::launch::Shape::Blocks)).

use super::asm::{f32_hex, param_list, Asm};
use super::launch::{KernelPlan, ParVar, Phase, BLOCK};
use crate::kernel::ir::*;
use std::fmt::Write;

/// The identity of a reduction operator (the start of each thread's
/// partial result).
pub fn identity(op: BinOp) -> f32 {
    match op {
        BinOp::Max => f32::NEG_INFINITY,
        BinOp::Min => f32::INFINITY,
        _ => 0.0,
    }
}

fn header(out: &mut String, plan: &KernelPlan) {
    let _ = writeln!(out, "// kernel {}", plan.kernel);
    let _ = writeln!(
        out,
        ".visible .entry {}(\n{}\n)",
        plan.entry,
        param_list(&plan.entry, plan.params.len())
    );
    let _ = writeln!(
        out,
        ".maxntid {}, {}, {}\n{{",
        plan.block[0], plan.block[1], plan.block[2]
    );
}

/// Parallel loop variables from a thread's (or block's) first number
/// `start` and its stride `step` (both index registers): the variables
/// are the digits of `start` over the loops' extents, computed once per
/// thread; the stride's digits too; each step of the grid-stride loop
/// then adds them with carries ([`Asm::advance`]), dividing nothing.
/// Returns what to pass to [`step_par_vars`].
fn set_par_vars(a: &mut Asm, par: &[ParVar], start: &str, step: &str) -> (Vec<String>, Vec<u64>) {
    let extents: Vec<u64> = par.iter().map(|pv| pv.extent as u64).collect();
    let vars: Vec<String> = par.iter().map(|pv| a.vars[&pv.var].clone()).collect();
    a.digits(&vars, start, &extents);
    let steps: Vec<String> = par.iter().map(|_| a.ix()).collect();
    a.digits(&steps, step, &extents);
    (steps, extents)
}

/// Advances the parallel variables by the stride (see [`set_par_vars`]).
fn step_par_vars(a: &mut Asm, par: &[ParVar], steps: &[String], extents: &[u64]) {
    if par.is_empty() {
        return;
    }
    let vars: Vec<String> = par.iter().map(|pv| a.vars[&pv.var].clone()).collect();
    a.advance(&vars, extents, steps, None);
}

/// The entry of a [`Shape::Threads`](super::launch::Shape::Threads) plan:
/// `t = ctaid·ntid + tid`, striding by `nctaid·ntid` while `t < total`.
pub(crate) fn threads_entry(
    out: &mut String,
    plan: &KernelPlan,
    l: &LoopKernel,
    par: &[ParVar],
    total: u64,
    body: &[Stmt],
) {
    header(out, plan);
    let mut a = Asm::new(plan.index32);
    a.load_params(&plan.entry, &plan.params);
    a.declare_loop_state(l.vars, l.scalars);
    let (cta, ntid, tid, ncta) = (a.r(), a.r(), a.r(), a.r());
    a.ins(format!("mov.u32 {cta}, %ctaid.x"));
    a.ins(format!("mov.u32 {ntid}, %ntid.x"));
    a.ins(format!("mov.u32 {tid}, %tid.x"));
    a.ins(format!("mov.u32 {ncta}, %nctaid.x"));
    let (start, step, t) = (a.ix(), a.ix(), a.ix());
    if a.wide {
        let tid64 = a.rd();
        a.ins(format!("mul.wide.u32 {start}, {cta}, {ntid}"));
        a.ins(format!("cvt.u64.u32 {tid64}, {tid}"));
        a.ins(format!("add.s64 {start}, {start}, {tid64}"));
        a.ins(format!("mul.wide.u32 {step}, {ncta}, {ntid}"));
    } else {
        // Below MAX_GRID·BLOCK = 2^28: no overflow.
        a.ins(format!("mad.lo.u32 {start}, {cta}, {ntid}, {tid}"));
        a.ins(format!("mul.lo.u32 {step}, {ncta}, {ntid}"));
    }
    let (steps, extents) = set_par_vars(&mut a, par, &start, &step);
    a.counted_loop_no_unroll(&t, &start, &step, total, |a| {
        a.stmts(body);
        step_par_vars(a, par, &steps, &extents);
    });
    a.ins("ret");
    out.push_str(&a.finish());
    out.push_str("}\n\n");
}

/// The shared array a block reduces through (one f32 per thread).
pub(crate) fn reduce_buffer(entry: &str) -> String {
    format!("{entry}_red")
}

/// The entry of a [`Shape::Blocks`](super::launch::Shape::Blocks) plan:
/// row `r = ctaid, ctaid + nctaid, ...` while `r < total`; each phase is
/// followed by `bar.sync` so the next one sees its stores.
pub(crate) fn blocks_entry(
    out: &mut String,
    plan: &KernelPlan,
    vars: usize,
    scalars: usize,
    (par, total): (&[ParVar], u64),
    phases: &[Phase],
) {
    let _ = writeln!(
        out,
        ".shared .align 4 .f32 {}[{BLOCK}];\n",
        reduce_buffer(&plan.entry)
    );
    header(out, plan);
    let mut a = Asm::new(plan.index32);
    a.load_params(&plan.entry, &plan.params);
    a.declare_loop_state(vars, scalars);
    let (cta, ncta, tid) = (a.r(), a.r(), a.r());
    a.ins(format!("mov.u32 {cta}, %ctaid.x"));
    a.ins(format!("mov.u32 {ncta}, %nctaid.x"));
    a.ins(format!("mov.u32 {tid}, %tid.x"));
    let (start, step, t) = (
        a.ix_from_u32(&cta),
        a.ix_from_u32(&ncta),
        a.ix_from_u32(&tid),
    );
    let (row, red, slot) = (a.ix(), a.rd(), a.rd());
    a.ins(format!("mov.u64 {red}, {}", reduce_buffer(&plan.entry)));
    a.ins(format!("mul.wide.u32 {slot}, {tid}, 4"));
    a.ins(format!("add.s64 {slot}, {slot}, {red}"));
    let (steps, extents) = set_par_vars(&mut a, par, &start, &step);
    a.counted_loop_no_unroll(&row, &start, &step, total, |a| {
        for ph in phases {
            phase(a, ph, &t, &red, &slot);
        }
        step_par_vars(a, par, &steps, &extents);
    });
    a.ins("ret");
    out.push_str(&a.finish());
    out.push_str("}\n\n");
}

fn phase(a: &mut Asm, ph: &Phase, tid: &str, red: &str, slot: &str) {
    match ph {
        Phase::Uniform(body) => a.stmts(body),
        Phase::Single(body) => {
            let (p, skip) = (a.p(), a.label("single"));
            let w = a.w();
            a.ins(format!("setp.ne.u{w} {p}, {tid}, 0"));
            a.ins(format!("@{p} bra {skip}"));
            a.stmts(body);
            a.ins(format!("{skip}:"));
            a.ins("bar.sync 0");
        }
        Phase::Split {
            var,
            extent,
            body,
            reductions,
        } => {
            let mut saved = Vec::new();
            for (s, op) in reductions {
                let (reg, keep) = (a.scalars[s].clone(), a.f());
                a.ins(format!("mov.f32 {keep}, {reg}"));
                a.ins(format!("mov.f32 {reg}, {}", f32_hex(identity(*op))));
                saved.push(keep);
            }
            let v = a.vars[var].clone();
            a.counted_loop(&v, tid, &BLOCK.to_string(), *extent as u64, |a| {
                a.stmts(body)
            });
            for ((s, op), keep) in reductions.iter().zip(saved) {
                let reg = a.scalars[s].clone();
                block_reduce(a, *op, &reg, tid, red, slot);
                a.binary(&reg, *op, &keep, &reg);
            }
            a.ins("bar.sync 0");
        }
    }
}

/// Tree reduction of `reg` over the block through shared memory; every
/// thread ends with the block's result in `reg`.
fn block_reduce(a: &mut Asm, op: BinOp, reg: &str, tid: &str, red: &str, slot: &str) {
    a.ins(format!("st.shared.f32 [{slot}], {reg}"));
    a.ins("bar.sync 0");
    let mut half = BLOCK / 2;
    while half > 0 {
        let (p, skip) = (a.p(), a.label("tree"));
        let w = a.w();
        a.ins(format!("setp.ge.u{w} {p}, {tid}, {half}"));
        a.ins(format!("@{p} bra {skip}"));
        let (x, y) = (a.f(), a.f());
        a.ins(format!("ld.shared.f32 {x}, [{slot}]"));
        a.ins(format!("ld.shared.f32 {y}, [{slot}+{}]", half * 4));
        a.binary(&x, op, &x, &y);
        a.ins(format!("st.shared.f32 [{slot}], {x}"));
        a.ins(format!("{skip}:"));
        a.ins("bar.sync 0");
        half /= 2;
    }
    a.ins(format!("ld.shared.f32 {reg}, [{red}]"));
    // The next reduction overwrites the slots: everyone must have read.
    a.ins("bar.sync 0");
}
