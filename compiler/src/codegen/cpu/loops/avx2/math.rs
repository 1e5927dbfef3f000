//! `exp`, `tanh` and `sigmoid` on `zmm`, `ymm` (or `xmm`) registers: the steps of
//! `codegen::cpu::vmath`, operation for operation and with the same
//! constants (no FMA), so every lane gets the bits the f32x4 code gives.
//! Each step is emitted for all vectors of a step before the next, as
//! there. Operations whose operands are independent may run in another
//! order than in `vmath` (`tanh` computes its large-|x| branch first, to
//! need fewer registers); each lane's value is the same.

use super::asm::{Asm, Fail, Op3, Src, GT_OS, LT_OS, UNORD_Q, W};
use crate::codegen::cpu::vmath::{
    ExpInput, EXP_C1, EXP_C2, EXP_HI, EXP_LO, EXP_POLY, ROUND_BITS, ROUND_MAGIC, TANH_POLY,
};

/// Per-vector `op(regs[j], s)` into `regs[j]`.
fn each(a: &mut Asm, w: W, op: Op3, regs: &[u8], s: Src) {
    for &r in regs {
        a.op3(w, op, r, r, s);
    }
}

fn alloc(a: &mut Asm, n: usize) -> Result<Vec<u8>, Fail> {
    (0..n).map(|_| a.vreg()).collect()
}

fn free(a: &mut Asm, regs: &[u8]) {
    regs.iter().for_each(|&r| a.free(r));
}

/// `c[0]·x^(n-1) + ... + c[n-1]` by Horner's rule into new registers.
fn horner(a: &mut Asm, w: W, xs: &[u8], c: &[f32]) -> Result<Vec<u8>, Fail> {
    let acc = alloc(a, xs.len())?;
    let c0 = a.constant(c[0]);
    for (&d, &x) in acc.iter().zip(xs) {
        // c0 · x (a product of one non-NaN constant: order-free).
        a.op3(w, Op3::Mul, d, x, c0);
    }
    for (i, &ci) in c[1..].iter().enumerate() {
        let ci = a.constant(ci);
        if i > 0 {
            for (&d, &x) in acc.iter().zip(xs) {
                a.op3(w, Op3::Mul, d, d, Src::R(x));
            }
        }
        each(a, w, Op3::Add, &acc, ci);
    }
    Ok(acc)
}

/// `e^x` of every register of `xs` (kept) into new registers, leaving out
/// the steps `input` makes redundant (as `vmath::exp_from` does).
pub(super) fn exp(a: &mut Asm, w: W, xs: &[u8], input: ExpInput) -> Result<Vec<u8>, Fail> {
    let g = xs.len();
    let lo = a.constant(EXP_LO);
    let hi = a.constant(EXP_HI);
    // xc = min(max(x, lo), hi); NaN lanes become `lo` (restored at the end).
    let r = alloc(a, g)?;
    if input == ExpInput::InRange {
        for (&d, &x) in r.iter().zip(xs) {
            a.mov(w, d, Src::R(x));
        }
    } else {
        for (&d, &x) in r.iter().zip(xs) {
            a.op3(w, Op3::Max, d, x, lo);
        }
        each(a, w, Op3::Min, &r, hi);
    }
    // tm = xc·log2e + magic; n = tm − magic.
    let tm = alloc(a, g)?;
    let log2e = a.constant(std::f32::consts::LOG2_E);
    let magic = a.constant(ROUND_MAGIC);
    for (&d, &x) in tm.iter().zip(&r) {
        a.op3(w, Op3::Mul, d, x, log2e);
    }
    each(a, w, Op3::Add, &tm, magic);
    let n = alloc(a, g)?;
    for (&d, &t) in n.iter().zip(&tm) {
        a.op3(w, Op3::Sub, d, t, magic);
    }
    // r = xc − n·C1 − n·C2.
    let c1 = a.constant(EXP_C1);
    let c2 = a.constant(EXP_C2);
    let t = alloc(a, g)?;
    for (&d, &m) in t.iter().zip(&n) {
        a.op3(w, Op3::Mul, d, m, c1);
    }
    for (&d, &m) in r.iter().zip(&t) {
        a.op3(w, Op3::Sub, d, d, Src::R(m));
    }
    free(a, &t);
    each(a, w, Op3::Mul, &n, c2);
    for (&d, &m) in r.iter().zip(&n) {
        a.op3(w, Op3::Sub, d, d, Src::R(m));
    }
    free(a, &n);
    let y = horner(a, w, &r, &EXP_POLY)?;
    // y = poly·r² + r + 1.
    let r2 = alloc(a, g)?;
    for (&d, &x) in r2.iter().zip(&r) {
        a.op3(w, Op3::Mul, d, x, Src::R(x));
    }
    for (&d, &m) in y.iter().zip(&r2) {
        a.op3(w, Op3::Mul, d, d, Src::R(m));
    }
    free(a, &r2);
    for (&d, &m) in y.iter().zip(&r) {
        a.op3(w, Op3::Add, d, d, Src::R(m));
    }
    free(a, &r);
    let one = a.constant(1.0);
    each(a, w, Op3::Add, &y, one);
    // n = bits(tm) − ROUND_BITS; y ·= 2^(n>>1) · 2^(n − n>>1).
    let round = a.bits(ROUND_BITS);
    each(a, w, Op3::SubI, &tm, round);
    let half = alloc(a, g)?;
    for (&d, &m) in half.iter().zip(&tm) {
        a.sra(w, d, m, 1);
    }
    for (&d, &h) in tm.iter().zip(&half) {
        a.op3(w, Op3::SubI, d, d, Src::R(h));
    }
    let bias = a.bits(127);
    for e in [&half, &tm] {
        each(a, w, Op3::AddI, e, bias);
        for &r in e.iter() {
            a.shl(w, r, r, 23);
        }
        for (&d, &s) in y.iter().zip(e.iter()) {
            a.op3(w, Op3::Mul, d, d, Src::R(s));
        }
    }
    free(a, &tm);
    if input == ExpInput::InRange {
        free(a, &half);
        return Ok(y);
    }
    // x < lo → 0; hi < x → inf; NaN → x.
    let m = half;
    let inf = a.constant(f32::INFINITY);
    if input == ExpInput::Any {
        let zero = a.constant(0.0);
        for ((&d, &x), &k) in y.iter().zip(xs).zip(&m) {
            a.cmp(w, LT_OS, k, x, lo);
            a.blend(w, d, d, zero, k);
        }
    }
    for ((&d, &x), &k) in y.iter().zip(xs).zip(&m) {
        a.cmp(w, GT_OS, k, x, hi);
        a.blend(w, d, d, inf, k);
    }
    for ((&d, &x), &k) in y.iter().zip(xs).zip(&m) {
        a.cmp(w, UNORD_Q, k, x, Src::R(x));
        a.blend(w, d, d, Src::R(x), k);
    }
    free(a, &m);
    Ok(y)
}

/// `1 / (1 + e^-x)` of every register of `xs` (consumed) into new
/// registers.
pub(super) fn sigmoid(a: &mut Asm, w: W, xs: Vec<u8>) -> Result<Vec<u8>, Fail> {
    let sign = a.constant(-0.0);
    each(a, w, Op3::Xor, &xs, sign);
    let e = exp(a, w, &xs, ExpInput::Logistic)?;
    free(a, &xs);
    let one = a.constant(1.0);
    each(a, w, Op3::Add, &e, one);
    let q = alloc(a, e.len())?;
    for (&d, &den) in q.iter().zip(&e) {
        a.mov(w, d, one);
        a.op3(w, Op3::Div, d, d, Src::R(den));
    }
    free(a, &e);
    Ok(q)
}

/// Cephes `tanhf` of every register of `xs` (consumed) into new registers.
pub(super) fn tanh(a: &mut Asm, w: W, xs: Vec<u8>) -> Result<Vec<u8>, Fail> {
    let g = xs.len();
    let abs = a.bits(0x7FFF_FFFF);
    let nine = a.constant(9.0);
    // Large |x|: 1 − 2/(e^(2·min(|x|, 9)) + 1), with the sign of x.
    let two_x = alloc(a, g)?;
    for (&d, &x) in two_x.iter().zip(&xs) {
        a.op3(w, Op3::And, d, x, abs);
    }
    each(a, w, Op3::Min, &two_x, nine);
    for &d in &two_x {
        a.op3(w, Op3::Add, d, d, Src::R(d));
    }
    let large = exp(a, w, &two_x, ExpInput::InRange)?;
    free(a, &two_x);
    let one = a.constant(1.0);
    let two = a.constant(2.0);
    each(a, w, Op3::Add, &large, one);
    let q = alloc(a, g)?;
    for (&d, &den) in q.iter().zip(&large) {
        a.mov(w, d, two);
        a.op3(w, Op3::Div, d, d, Src::R(den));
    }
    for (&d, &s) in large.iter().zip(&q) {
        a.mov(w, d, one);
        a.op3(w, Op3::Sub, d, d, Src::R(s));
    }
    let sign = a.bits(0x8000_0000);
    for ((&d, &x), &t) in large.iter().zip(&xs).zip(&q) {
        a.op3(w, Op3::And, t, x, sign);
        a.op3(w, Op3::Or, d, d, Src::R(t));
    }
    // Small |x|: x + x·(z·poly(z)), z = x².
    let z = q;
    for (&d, &x) in z.iter().zip(&xs) {
        a.op3(w, Op3::Mul, d, x, Src::R(x));
    }
    let small = horner(a, w, &z, &TANH_POLY)?;
    for (&d, &s) in small.iter().zip(&z) {
        a.op3(w, Op3::Mul, d, d, Src::R(s));
    }
    for (&d, &x) in small.iter().zip(&xs) {
        a.op3(w, Op3::Mul, d, d, Src::R(x));
        a.op3(w, Op3::Add, d, d, Src::R(x));
    }
    // |x| < 0.625 → small; NaN → x.
    let m = z;
    let cut = a.constant(0.625);
    for (((&d, &x), &k), &s) in large.iter().zip(&xs).zip(&m).zip(&small) {
        a.op3(w, Op3::And, k, x, abs);
        a.cmp(w, LT_OS, k, k, cut);
        a.blend(w, d, d, Src::R(s), k);
    }
    free(a, &small);
    for ((&d, &x), &k) in large.iter().zip(&xs).zip(&m) {
        a.cmp(w, UNORD_Q, k, x, Src::R(x));
        a.blend(w, d, d, Src::R(x), k);
    }
    free(a, &m);
    free(a, &xs);
    Ok(large)
}
