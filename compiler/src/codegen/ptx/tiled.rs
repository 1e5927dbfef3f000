//! PTX entries of contraction kernels: shared-memory tiled matrix products
//! with the bias and epilogue fused into the store (see
//! [`Shape::Tiled`](super::launch::Shape::Tiled) for the decomposition).
//!
//! A thread's A row offset (the digits of its row over `m_dims`) is
//! computed once; the digits of its reduction index `k0 + tx` over
//! `k_dims` and their A offset are advanced by a tile per step by adding
//! and carrying, so the K loop divides nothing (see the `asm` module on
//! index arithmetic).

use super::asm::{f32_hex, param_list, Asm};
use super::launch::{digits, k_extents, KernelPlan, TILE};
use crate::kernel::ir::*;
use std::fmt::Write;

/// Names of the two shared tiles of an entry.
pub(crate) fn tiles(entry: &str) -> (String, String) {
    (format!("{entry}_As"), format!("{entry}_Bs"))
}

/// `dst = Σ digit_i · stride_i` where the digits of `x` are taken over
/// `dims` (last fastest): the A offset of a row or of a reduction index.
/// Returns the digit registers.
pub(crate) fn digits_offset(
    a: &mut Asm,
    dst: &str,
    x: &str,
    dims: [usize; 3],
    strides: [usize; 3],
) -> Vec<String> {
    let w = a.w();
    let regs: Vec<String> = (0..3).map(|_| a.ix()).collect();
    a.digits(&regs, x, &dims.map(|d| d as u64));
    a.ins(format!("mul.lo.s{w} {dst}, {}, {}", regs[0], strides[0]));
    a.ins(format!(
        "mad.lo.s{w} {dst}, {}, {}, {dst}",
        regs[1], strides[1]
    ));
    a.ins(format!(
        "mad.lo.s{w} {dst}, {}, {}, {dst}",
        regs[2], strides[2]
    ));
    regs
}

/// Guarded global load: `dst = ok ? buf[base + ix] : 0`.
fn guarded_load(a: &mut Asm, dst: &str, ok: &str, buf: BufId, ix: &str) {
    let skip = a.label("tile");
    a.ins(format!("mov.f32 {dst}, {}", f32_hex(0.0)));
    a.ins(format!("@!{ok} bra {skip}"));
    let addr = a.address(buf, ix);
    a.ins(format!("ld.global.f32 {dst}, [{addr}]"));
    a.ins(format!("{skip}:"));
}

/// Emits the entry of a tiled contraction.
pub(crate) fn tiled_entry(out: &mut String, plan: &KernelPlan, c: &Contraction) {
    let (at, bt) = tiles(&plan.entry);
    let t2 = TILE * TILE;
    let _ = writeln!(out, ".shared .align 4 .f32 {at}[{t2}];");
    let _ = writeln!(out, ".shared .align 4 .f32 {bt}[{t2}];\n");
    let _ = writeln!(out, "// kernel {}", plan.kernel);
    let _ = writeln!(
        out,
        ".visible .entry {}(\n{}\n)\n.maxntid {TILE}, {TILE}, 1\n{{",
        plan.entry,
        param_list(&plan.entry, plan.params.len())
    );
    let mut a = Asm::new(plan.index32);
    let w = a.w();
    a.load_params(&plan.entry, &plan.params);
    let (m_total, n_total, k_total) = (c.m() as u64, c.n as u64, c.k() as u64);

    // Thread (tx, ty) of block (bx, by): row m = bx·T + ty, column n = by·T + tx.
    let regs: Vec<String> = (0..4).map(|_| a.r()).collect();
    for (r, sreg) in regs
        .iter()
        .zip(["%tid.x", "%tid.y", "%ctaid.x", "%ctaid.y"])
    {
        a.ins(format!("mov.u32 {r}, {sreg}"));
    }
    let (tx, ty) = (a.ix_from_u32(&regs[0]), a.ix_from_u32(&regs[1]));
    let (m, n) = (a.ix(), a.ix());
    if a.wide {
        a.ins(format!("mul.wide.u32 {m}, {}, {TILE}", regs[2]));
        a.ins(format!("add.s64 {m}, {m}, {ty}"));
        a.ins(format!("mul.wide.u32 {n}, {}, {TILE}", regs[3]));
        a.ins(format!("add.s64 {n}, {n}, {tx}"));
    } else {
        a.ins(format!("mad.lo.u32 {m}, {}, {TILE}, {ty}", regs[2]));
        a.ins(format!("mad.lo.u32 {n}, {}, {TILE}, {tx}", regs[3]));
    }
    let (m_ok, n_ok) = (a.p(), a.p());
    a.ins(format!("setp.lt.u{w} {m_ok}, {m}, {m_total}"));
    a.ins(format!("setp.lt.u{w} {n_ok}, {n}, {n_total}"));
    // A's row offset, computed once per thread.
    let row = a.ix();
    digits_offset(&mut a, &row, &m, c.m_dims, c.m_strides);
    a.ins(format!("add.s{w} {row}, {row}, {}", c.a.1));
    // The A offset of reduction index k0 + tx and its digits, advanced by
    // a tile each step.
    let ks = c.k_strides;
    let acol = a.ix();
    let kd = digits_offset(&mut a, &acol, &tx, c.k_dims, ks);
    let kext = k_extents(c);
    let kstep: Vec<String> = digits(&kext, u64::from(TILE))
        .iter()
        .map(u64::to_string)
        .collect();
    let kstrides = ks.map(|s| s as i64);
    let kstep_offset: i64 = digits(&kext, u64::from(TILE))
        .iter()
        .zip(kstrides)
        .map(|(d, s)| *d as i64 * s)
        .sum();
    // Shared addresses: own slot ty·T + tx, row ty of As, column tx of Bs.
    let (as_base, bs_base, own, as_row, bs_col) = (a.rd(), a.rd(), a.rd(), a.rd(), a.rd());
    a.ins(format!("mov.u64 {as_base}, {at}"));
    a.ins(format!("mov.u64 {bs_base}, {bt}"));
    let own32 = a.r();
    a.ins(format!(
        "mad.lo.u32 {own32}, {}, {TILE}, {}",
        regs[1], regs[0]
    ));
    a.ins(format!("mul.wide.u32 {own}, {own32}, 4"));
    a.ins(format!("mul.wide.u32 {as_row}, {}, {}", regs[1], TILE * 4));
    a.ins(format!("add.s64 {as_row}, {as_row}, {as_base}"));
    a.ins(format!("mul.wide.u32 {bs_col}, {}, 4", regs[0]));
    a.ins(format!("add.s64 {bs_col}, {bs_col}, {bs_base}"));
    // This thread's slots in the two tiles.
    let (sa, sb) = (a.rd(), a.rd());
    a.ins(format!("add.s64 {sa}, {as_base}, {own}"));
    a.ins(format!("add.s64 {sb}, {bs_base}, {own}"));
    // B's index of (k0 + ty, n), advanced by T reduction steps a step.
    let (bk, bn) = c.b_strides();
    let bix = a.ix();
    if bn == 1 {
        a.ins(format!("mad.lo.s{w} {bix}, {ty}, {bk}, {n}"));
    } else {
        a.ins(format!("mul.lo.s{w} {bix}, {n}, {bn}"));
        a.ins(format!("mad.lo.s{w} {bix}, {ty}, {bk}, {bix}"));
    }
    a.ins(format!("add.s{w} {bix}, {bix}, {}", c.b.1));

    let acc = a.f();
    a.ins(format!("mov.f32 {acc}, {}", f32_hex(0.0)));
    let k0 = a.ix();
    a.counted_loop_no_unroll(&k0, "0", &TILE.to_string(), k_total, |a| {
        // Stage As[ty][tx] = A(m, k0 + tx).
        let (ka, aix, v, p) = (a.ix(), a.ix(), a.f(), a.p());
        a.ins(format!("add.s{w} {ka}, {k0}, {tx}"));
        a.ins(format!("setp.lt.and.u{w} {p}, {ka}, {k_total}, {m_ok}"));
        a.ins(format!("add.s{w} {aix}, {acol}, {row}"));
        guarded_load(a, &v, &p, c.a.0, &aix);
        a.ins(format!("st.shared.f32 [{sa}], {v}"));
        // Stage Bs[ty][tx] = B(k0 + ty, n).
        let (kb, wv, q) = (a.ix(), a.f(), a.p());
        a.ins(format!("add.s{w} {kb}, {k0}, {ty}"));
        a.ins(format!("setp.lt.and.u{w} {q}, {kb}, {k_total}, {n_ok}"));
        guarded_load(a, &wv, &q, c.b.0, &bix);
        a.ins(format!("st.shared.f32 [{sb}], {wv}"));
        a.ins("bar.sync 0");
        // acc += Σ_kk As[ty][kk] · Bs[kk][tx]
        for kk in 0..TILE {
            let (x, y) = (a.f(), a.f());
            a.ins(format!("ld.shared.f32 {x}, [{as_row}+{}]", kk * 4));
            a.ins(format!("ld.shared.f32 {y}, [{bs_col}+{}]", kk * TILE * 4));
            a.ins(format!("fma.rn.f32 {acc}, {x}, {y}, {acc}"));
        }
        a.ins("bar.sync 0");
        // The next step's indices, by adding and carrying.
        if kstep_offset != 0 {
            a.ins(format!("add.s{w} {acol}, {acol}, {kstep_offset}"));
        }
        a.advance(&kd, &kext, &kstep, Some((&acol, &kstrides)));
        a.ins(format!(
            "add.s{w} {bix}, {bix}, {}",
            u64::from(TILE) * bk as u64
        ));
    });

    let (done, ok) = (a.label("store"), a.p());
    a.ins(format!("and.pred {ok}, {m_ok}, {n_ok}"));
    a.ins(format!("@!{ok} bra {done}"));
    let mut v = acc;
    if let Some((bias, off)) = c.bias {
        let bix = a.ix();
        a.ins(format!("add.s{w} {bix}, {n}, {off}"));
        let addr = a.address(bias, &bix);
        let b = a.f();
        a.ins(format!("ld.global.f32 {b}, [{addr}]"));
        let s = a.f();
        a.ins(format!("add.rn.f32 {s}, {v}, {b}"));
        v = s;
    }
    v = epilogue(&mut a, c.epilogue, &v);
    let cix = a.ix();
    a.ins(format!("mad.lo.s{w} {cix}, {m}, {}, {n}", c.ldc));
    a.ins(format!("add.s{w} {cix}, {cix}, {}", c.c.1));
    let addr = a.address(c.c.0, &cix);
    if c.accumulate {
        let (old, s) = (a.f(), a.f());
        a.ins(format!("ld.global.f32 {old}, [{addr}]"));
        a.ins(format!("add.rn.f32 {s}, {old}, {v}"));
        v = s;
    }
    a.ins(format!("st.global.f32 [{addr}], {v}"));
    a.ins(format!("{done}:"));
    a.ins("ret");
    out.push_str(&a.finish());
    out.push_str("}\n\n");
}

/// `x` through the fused epilogue `e` (a fresh register, or `x` itself).
pub(crate) fn epilogue(a: &mut Asm, e: Epilogue, x: &str) -> String {
    match e {
        Epilogue::None => x.to_string(),
        Epilogue::Relu => a.unary(UnOp::Relu, x),
        Epilogue::Sigmoid => a.unary(UnOp::Sigmoid, x),
        Epilogue::Tanh => a.unary(UnOp::Tanh, x),
        Epilogue::LeakyRelu(alpha) => {
            let (s, p, r) = (a.f(), a.p(), a.f());
            a.ins(format!("mul.rn.f32 {s}, {x}, {}", f32_hex(alpha)));
            a.ins(format!("setp.gt.f32 {p}, {x}, {}", f32_hex(0.0)));
            a.ins(format!("selp.f32 {r}, {x}, {s}, {p}"));
            r
        }
    }
}
