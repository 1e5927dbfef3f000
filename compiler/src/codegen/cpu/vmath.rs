//! f32x4 elementwise math shared by the contraction epilogues and the
//! vectorized loop kernels: `max`/`min` with `f32::max`/`f32::min` NaN
//! rules, and inline `exp`, `tanh` and `sigmoid`.
//!
//! The transcendental functions are Cephes' single-precision polynomials
//! (within about 2 ulp of libm over the whole range) built from plain
//! multiplies and adds: no `fma`, which Cranelift would turn into a libcall
//! on hosts without FMA, and no calls at all, so a kernel evaluates four
//! lanes in a few dozen instructions instead of four calls into libm.
//! Loop kernels evaluate these functions through the same code for their
//! scalar tails (one lane of a splat), so every element gets the same bits
//! whichever path or thread computed it.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;

/// `x` in all four lanes.
pub(crate) fn splat_f(b: &mut FunctionBuilder, x: f32) -> Value {
    let c = b.ins().f32const(x);
    b.ins().splat(types::F32X4, c)
}

/// Per lane `x < y ? if_lt : otherwise` (`bitselect` over an `fcmp` mask;
/// the shapes of [`max`]/[`min`] are the ones the x64 backend turns into a
/// single `maxps`/`minps`).
pub(crate) fn select_lt(
    b: &mut FunctionBuilder,
    x: Value,
    y: Value,
    if_lt: Value,
    otherwise: Value,
) -> Value {
    select(b, FloatCC::LessThan, x, y, if_lt, otherwise)
}

/// Per lane `x cc y ? then : otherwise`.
pub(crate) fn select(
    b: &mut FunctionBuilder,
    cc: FloatCC,
    x: Value,
    y: Value,
    then: Value,
    otherwise: Value,
) -> Value {
    let c = b.ins().fcmp(cc, x, y);
    let c = b.ins().bitcast(types::F32X4, MemFlagsData::new(), c);
    b.ins().bitselect(c, then, otherwise)
}

/// `y < x ? x : y`: `f32::max` when `y` is not NaN (a NaN `x` gives `y`).
pub(crate) fn max(b: &mut FunctionBuilder, x: Value, y: Value) -> Value {
    select_lt(b, y, x, x, y)
}

/// `x < y ? x : y`: `f32::min` when `y` is not NaN.
pub(crate) fn min(b: &mut FunctionBuilder, x: Value, y: Value) -> Value {
    select_lt(b, x, y, x, y)
}

/// `c[0]·x^(n-1) + ... + c[n-1]` by Horner's rule (multiply, then add:
/// no `fma`, see the module docs).
fn horner(b: &mut FunctionBuilder, x: Value, c: &[f32]) -> Value {
    let mut acc = splat_f(b, c[0]);
    for &c in &c[1..] {
        let c = splat_f(b, c);
        let ax = b.ins().fmul(acc, x);
        acc = b.ins().fadd(ax, c);
    }
    acc
}

/// Largest `x` with a finite `e^x` (`ln(f32::MAX)`).
const EXP_HI: f32 = 88.722_83;
/// Below this `e^x` rounds to 0 (it is under half the smallest denormal).
const EXP_LO: f32 = -103.972_08;

/// `e^x` per lane: Cephes `expf`, `2^n · e^r` with `|r| ≤ ln2/2` and a
/// degree-6 polynomial. `+inf` above `ln(f32::MAX)`, denormals down to
/// where the result rounds to 0, NaN for NaN.
pub(crate) fn exp(b: &mut FunctionBuilder, x: Value) -> Value {
    let lo = splat_f(b, EXP_LO);
    let hi = splat_f(b, EXP_HI);
    // NaN lanes become `lo` here and are restored at the end.
    let xc = max(b, x, lo);
    let xc = min(b, xc, hi);
    let log2e = splat_f(b, std::f32::consts::LOG2_E);
    let t = b.ins().fmul(xc, log2e);
    let n = b.ins().nearest(t);
    // r = x - n·ln2 in two steps (ln2 = C1 + C2, C1 exact in few bits).
    let c1 = splat_f(b, 0.693_359_4);
    let c2 = splat_f(b, -2.121_944_4e-4);
    let nc1 = b.ins().fmul(n, c1);
    let r = b.ins().fsub(xc, nc1);
    let nc2 = b.ins().fmul(n, c2);
    let r = b.ins().fsub(r, nc2);
    let poly = horner(
        b,
        r,
        &[
            1.987_569_1e-4,
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            5e-1,
        ],
    );
    let r2 = b.ins().fmul(r, r);
    let pr2 = b.ins().fmul(poly, r2);
    let y = b.ins().fadd(pr2, r);
    let one = splat_f(b, 1.0);
    let y = b.ins().fadd(y, one);
    // Scale by 2^n as 2^(n/2) · 2^(n - n/2): both factors are normal floats
    // for every n in [-150, 128], and the product rounds once, so results
    // near f32::MAX stay finite and tiny ones come out as correct denormals.
    let ni = b.ins().fcvt_to_sint_sat(types::I32X4, n);
    let half = b.ins().sshr_imm_s(ni, 1);
    let rest = b.ins().isub(ni, half);
    let mut y = y;
    for e in [half, rest] {
        let bias = b.ins().iconst(types::I32, 127);
        let bias = b.ins().splat(types::I32X4, bias);
        let e = b.ins().iadd(e, bias);
        let e = b.ins().ishl_imm_s(e, 23);
        let scale = b.ins().bitcast(types::F32X4, MemFlagsData::new(), e);
        y = b.ins().fmul(y, scale);
    }
    let zero = splat_f(b, 0.0);
    let y = select_lt(b, x, lo, zero, y);
    let inf = splat_f(b, f32::INFINITY);
    let y = select_lt(b, hi, x, inf, y);
    select(b, FloatCC::Unordered, x, x, x, y)
}

/// `1 / (1 + e^-x)` per lane: never NaN for non-NaN `x` (`e^-x = inf`
/// gives 0).
pub(crate) fn sigmoid(b: &mut FunctionBuilder, x: Value) -> Value {
    let neg = b.ins().fneg(x);
    let e = exp(b, neg);
    let one = splat_f(b, 1.0);
    let den = b.ins().fadd(one, e);
    b.ins().fdiv(one, den)
}

/// Cephes `tanhf` per lane: odd polynomial for `|x| < 0.625`, where
/// `1 - 2/(e^2x+1)` would cancel, and the `exp` form (sign restored)
/// elsewhere. NaN for NaN.
pub(crate) fn tanh(b: &mut FunctionBuilder, x: Value) -> Value {
    let z = b.ins().fmul(x, x);
    let poly = horner(
        b,
        z,
        &[
            -5.704_988_7e-3,
            2.063_909e-2,
            -5.373_971_6e-2,
            1.333_144_2e-1,
            -3.333_328e-1,
        ],
    );
    let pz = b.ins().fmul(poly, z);
    let pzx = b.ins().fmul(pz, x);
    let small = b.ins().fadd(pzx, x);

    let ax = b.ins().fabs(x);
    let nine = splat_f(b, 9.0);
    // tanh(9) rounds to 1 in f32; the clamp keeps e^2x finite.
    let axc = min(b, ax, nine);
    let two_x = b.ins().fadd(axc, axc);
    let e = exp(b, two_x);
    let one = splat_f(b, 1.0);
    let two = splat_f(b, 2.0);
    let den = b.ins().fadd(e, one);
    let q = b.ins().fdiv(two, den);
    let large = b.ins().fsub(one, q);
    // Copy the sign of x onto the (positive) large-|x| result.
    let xi = b.ins().bitcast(types::I32X4, MemFlagsData::new(), x);
    let sign_mask = b.ins().iconst(types::I32, 0x8000_0000);
    let sign_mask = b.ins().splat(types::I32X4, sign_mask);
    let sign = b.ins().band(xi, sign_mask);
    let li = b.ins().bitcast(types::I32X4, MemFlagsData::new(), large);
    let li = b.ins().bor(li, sign);
    let large = b.ins().bitcast(types::F32X4, MemFlagsData::new(), li);

    let cut = splat_f(b, 0.625);
    let y = select_lt(b, ax, cut, small, large);
    select(b, FloatCC::Unordered, x, x, x, y)
}
