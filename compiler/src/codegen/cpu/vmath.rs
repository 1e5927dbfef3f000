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
//!
//! `exp_n`, `sigmoid_n` and `tanh_n` take several vectors and emit each
//! step of the computation for all of them before the next: the same
//! operations per lane, as independent chains the core can overlap (a
//! single chain leaves most of its FP pipes idle).
//!
//! `exp` handles any input (clamps, then fixes up underflow, overflow and
//! NaN lanes), but `sigmoid` and `tanh` tell it what their argument can
//! be ([`ExpInput`]) so that it leaves out the steps that cannot change a
//! result there: same bits, fewer instructions (an LSTM cell evaluates
//! five of these per element).

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;

/// `x` in all four lanes.
pub(crate) fn splat_f(b: &mut FunctionBuilder, x: f32) -> Value {
    let c = b.ins().f32const(x);
    b.ins().splat(types::F32X4, c)
}

/// The i32 `x` in all four lanes, loaded like an f32 constant (one
/// broadcast from the constant pool, not an immediate moved through a
/// general register).
fn splat_i(b: &mut FunctionBuilder, x: u32) -> Value {
    let c = splat_f(b, f32::from_bits(x));
    b.ins().bitcast(types::I32X4, MemFlagsData::new(), c)
}

/// `-x` per lane of every vector of `xs`: the sign bit flipped, as `fneg`
/// does, by one `xorps` each with a shared mask (`fneg` materializes its
/// mask for every vector).
pub(crate) fn neg_n(b: &mut FunctionBuilder, xs: &[Value]) -> Vec<Value> {
    let sign = splat_f(b, -0.0);
    map(b, xs, |b, x| b.ins().bxor(x, sign))
}

/// `|x|` per lane of every vector of `xs`: the sign bit cleared, as `fabs`
/// does, with a shared mask.
fn abs_n(b: &mut FunctionBuilder, xs: &[Value]) -> Vec<Value> {
    let sign = splat_f(b, -0.0);
    map(b, xs, |b, x| b.ins().band_not(x, sign))
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

/// `f` of every vector of `xs`, in order.
fn map(
    b: &mut FunctionBuilder,
    xs: &[Value],
    mut f: impl FnMut(&mut FunctionBuilder, Value) -> Value,
) -> Vec<Value> {
    xs.iter().map(|&x| f(b, x)).collect()
}

/// `f` of every pair of vectors of `xs` and `ys`, in order.
fn zip(
    b: &mut FunctionBuilder,
    xs: &[Value],
    ys: &[Value],
    mut f: impl FnMut(&mut FunctionBuilder, Value, Value) -> Value,
) -> Vec<Value> {
    xs.iter().zip(ys).map(|(&x, &y)| f(b, x, y)).collect()
}

/// `c[0]·x^(n-1) + ... + c[n-1]` by Horner's rule (multiply, then add:
/// no `fma`, see the module docs), each step for every vector of `xs`.
fn horner(b: &mut FunctionBuilder, xs: &[Value], c: &[f32]) -> Vec<Value> {
    let c0 = splat_f(b, c[0]);
    let mut acc = vec![c0; xs.len()];
    for &c in &c[1..] {
        let c = splat_f(b, c);
        let ax = zip(b, &acc, xs, |b, a, x| b.ins().fmul(a, x));
        acc = map(b, &ax, |b, a| b.ins().fadd(a, c));
    }
    acc
}

/// Largest `x` with a finite `e^x` (`ln(f32::MAX)`).
pub(crate) const EXP_HI: f32 = 88.722_83;
/// Below this `e^x` rounds to 0 (it is under half the smallest denormal).
pub(crate) const EXP_LO: f32 = -103.972_08;

/// `1.5 · 2^23`: adding it to an f32 of magnitude below `2^22` rounds to
/// the nearest integer (ties to even, as `nearest`) and leaves that
/// integer in the low bits of the sum, offset by [`ROUND_BITS`].
pub(crate) const ROUND_MAGIC: f32 = 12_582_912.0;
/// The bits of [`ROUND_MAGIC`].
pub(crate) const ROUND_BITS: u32 = 0x4B40_0000;

/// `ln 2 = EXP_C1 + EXP_C2`, `EXP_C1` exact in few bits (Cephes).
pub(crate) const EXP_C1: f32 = 0.693_359_4;
/// See [`EXP_C1`].
pub(crate) const EXP_C2: f32 = -2.121_944_4e-4;
/// `exp`'s polynomial in `r` (Horner order, highest degree first).
pub(crate) const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5e-1,
];
/// `tanh`'s odd polynomial in `z = x²` for small `|x|` (Horner order).
pub(crate) const TANH_POLY: [f32; 5] = [
    -5.704_988_7e-3,
    2.063_909e-2,
    -5.373_971_6e-2,
    1.333_144_2e-1,
    -3.333_328e-1,
];

/// `e^x` per lane of every vector of `xs`: Cephes `expf`, `2^n · e^r` with
/// `|r| ≤ ln2/2` and a degree-6 polynomial. `+inf` above `ln(f32::MAX)`,
/// denormals down to where the result rounds to 0, NaN for NaN. Each step
/// of the computation is emitted for all vectors before the next, so their
/// (independent) dependency chains overlap in the core.
pub(crate) fn exp_n(b: &mut FunctionBuilder, xs: &[Value]) -> Vec<Value> {
    exp_from(b, xs, ExpInput::Any)
}

/// What a caller of `exp` knows about its argument: which of the range
/// clamps and edge fixups can change a result. Leaving out one that
/// cannot keeps every result's bits and saves its instructions (the
/// course LSTM's cells evaluate five transcendentals per element). Both
/// kernel generators take the same steps for each, so they agree bit for
/// bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExpInput {
    /// Anything, NaN included.
    Any,
    /// The argument of the logistic `1 / (1 + e^-x)`: an `e^-x` below
    /// `EXP_LO` (a denormal or 0) leaves `1 + e^-x` exactly 1 either way,
    /// so only the clamp, `+inf` above `EXP_HI` and NaN need handling.
    Logistic,
    /// Finite and within `[EXP_LO, EXP_HI]` (tanh's `2·min(|x|, 9)`,
    /// where `min` turns NaN into 9): no clamp and no fixup changes it.
    InRange,
}

/// `e^x` per lane as [`exp_n`], with the steps `input` makes redundant
/// left out.
pub(crate) fn exp_from(b: &mut FunctionBuilder, xs: &[Value], input: ExpInput) -> Vec<Value> {
    let lo = splat_f(b, EXP_LO);
    let hi = splat_f(b, EXP_HI);
    // NaN lanes become `lo` here and are restored at the end.
    let xc = match input {
        ExpInput::InRange => xs.to_vec(),
        _ => {
            let xc = map(b, xs, |b, x| max(b, x, lo));
            map(b, &xc, |b, x| min(b, x, hi))
        }
    };
    let log2e = splat_f(b, std::f32::consts::LOG2_E);
    let t = map(b, &xc, |b, x| b.ins().fmul(x, log2e));
    // n = nearest(t) (|t| ≤ 150), as the magic sum `t + 1.5·2^23`, whose
    // bits hold n + ROUND_BITS. (The sign of a zero n may differ from
    // `nearest`'s; no result does: n·C only meets a nonzero r, and for
    // x = ±0 both roundings give r = +0 after the second step.)
    let magic = splat_f(b, ROUND_MAGIC);
    let tm = map(b, &t, |b, t| b.ins().fadd(t, magic));
    let n = map(b, &tm, |b, t| b.ins().fsub(t, magic));
    // r = x - n·ln2 in two steps (ln2 = C1 + C2, C1 exact in few bits).
    let c1 = splat_f(b, EXP_C1);
    let c2 = splat_f(b, EXP_C2);
    let nc1 = map(b, &n, |b, n| b.ins().fmul(n, c1));
    let r = zip(b, &xc, &nc1, |b, x, m| b.ins().fsub(x, m));
    let nc2 = map(b, &n, |b, n| b.ins().fmul(n, c2));
    let r = zip(b, &r, &nc2, |b, r, m| b.ins().fsub(r, m));
    let poly = horner(b, &r, &EXP_POLY);
    let r2 = map(b, &r, |b, r| b.ins().fmul(r, r));
    let pr2 = zip(b, &poly, &r2, |b, p, r2| b.ins().fmul(p, r2));
    let y = zip(b, &pr2, &r, |b, p, r| b.ins().fadd(p, r));
    let one = splat_f(b, 1.0);
    let mut y = map(b, &y, |b, y| b.ins().fadd(y, one));
    // Scale by 2^n as 2^(n/2) · 2^(n - n/2): both factors are normal floats
    // for every n in [-150, 128], and the product rounds once, so results
    // near f32::MAX stay finite and tiny ones come out as correct denormals.
    let round_bits = splat_i(b, ROUND_BITS);
    let ni = map(b, &tm, |b, t| {
        let bits = b.ins().bitcast(types::I32X4, MemFlagsData::new(), t);
        b.ins().isub(bits, round_bits)
    });
    let half = map(b, &ni, |b, n| b.ins().sshr_imm_s(n, 1));
    let rest = zip(b, &ni, &half, |b, n, h| b.ins().isub(n, h));
    let bias = splat_i(b, 127);
    for e in [half, rest] {
        let scale = map(b, &e, |b, e| {
            let e = b.ins().iadd(e, bias);
            let e = b.ins().ishl_imm_s(e, 23);
            b.ins().bitcast(types::F32X4, MemFlagsData::new(), e)
        });
        y = zip(b, &y, &scale, |b, y, s| b.ins().fmul(y, s));
    }
    if input == ExpInput::InRange {
        return y;
    }
    let y = match input {
        ExpInput::Any => {
            let zero = splat_f(b, 0.0);
            zip(b, xs, &y, |b, x, y| select_lt(b, x, lo, zero, y))
        }
        _ => y,
    };
    let inf = splat_f(b, f32::INFINITY);
    let y = zip(b, xs, &y, |b, x, y| select_lt(b, hi, x, inf, y));
    zip(b, xs, &y, |b, x, y| {
        select(b, FloatCC::Unordered, x, x, x, y)
    })
}

/// `1 / (1 + e^-x)` per lane: never NaN for non-NaN `x` (`e^-x = inf`
/// gives 0).
pub(crate) fn sigmoid(b: &mut FunctionBuilder, x: Value) -> Value {
    sigmoid_n(b, &[x])[0]
}

/// [`sigmoid`] of every vector of `xs`, interleaved as in [`exp_n`].
pub(crate) fn sigmoid_n(b: &mut FunctionBuilder, xs: &[Value]) -> Vec<Value> {
    let neg = neg_n(b, xs);
    let e = exp_from(b, &neg, ExpInput::Logistic);
    let one = splat_f(b, 1.0);
    let den = map(b, &e, |b, e| b.ins().fadd(one, e));
    map(b, &den, |b, d| b.ins().fdiv(one, d))
}

/// Cephes `tanhf` per lane: odd polynomial for `|x| < 0.625`, where
/// `1 - 2/(e^2x+1)` would cancel, and the `exp` form (sign restored)
/// elsewhere. NaN for NaN.
pub(crate) fn tanh(b: &mut FunctionBuilder, x: Value) -> Value {
    tanh_n(b, &[x])[0]
}

/// [`tanh`] of every vector of `xs`, interleaved as in [`exp_n`].
pub(crate) fn tanh_n(b: &mut FunctionBuilder, xs: &[Value]) -> Vec<Value> {
    let z = map(b, xs, |b, x| b.ins().fmul(x, x));
    let poly = horner(b, &z, &TANH_POLY);
    let pz = zip(b, &poly, &z, |b, p, z| b.ins().fmul(p, z));
    let pzx = zip(b, &pz, xs, |b, p, x| b.ins().fmul(p, x));
    let small = zip(b, &pzx, xs, |b, p, x| b.ins().fadd(p, x));

    let ax = abs_n(b, xs);
    let nine = splat_f(b, 9.0);
    // tanh(9) rounds to 1 in f32; the clamp keeps e^2x finite.
    let axc = map(b, &ax, |b, a| min(b, a, nine));
    let two_x = map(b, &axc, |b, a| b.ins().fadd(a, a));
    let e = exp_from(b, &two_x, ExpInput::InRange);
    let one = splat_f(b, 1.0);
    let two = splat_f(b, 2.0);
    let den = map(b, &e, |b, e| b.ins().fadd(e, one));
    let q = map(b, &den, |b, d| b.ins().fdiv(two, d));
    let large = map(b, &q, |b, q| b.ins().fsub(one, q));
    // Copy the sign of x onto the (positive) large-|x| result.
    let sign_mask = splat_i(b, 0x8000_0000);
    let large = zip(b, xs, &large, |b, x, l| {
        let xi = b.ins().bitcast(types::I32X4, MemFlagsData::new(), x);
        let sign = b.ins().band(xi, sign_mask);
        let li = b.ins().bitcast(types::I32X4, MemFlagsData::new(), l);
        let li = b.ins().bor(li, sign);
        b.ins().bitcast(types::F32X4, MemFlagsData::new(), li)
    });

    let cut = splat_f(b, 0.625);
    let y: Vec<Value> = (0..xs.len())
        .map(|i| select_lt(b, ax[i], cut, small[i], large[i]))
        .collect();
    zip(b, xs, &y, |b, x, y| {
        select(b, FloatCC::Unordered, x, x, x, y)
    })
}
