//! The assembler state of an AVX2 loop kernel: register pools, the
//! constant pool, and width-generic instruction helpers (the same
//! operation on `ymm` registers for vector steps or on `xmm` registers,
//! whose lane 0 is the element, for the scalar tail).

// `dynasm!` converts every dynamic register expression with `.into()`,
// which is the identity for the `u8` register numbers used here.
#![allow(clippy::useless_conversion)]

use dynasmrt::{dynasm, x64::Assembler, DynamicLabel, DynasmApi, DynasmLabelApi};

/// `rdi`: the buffer-pointer table, for the whole call.
pub(super) const TABLE: u8 = 7;
/// `rdx`: the end of the outermost loop's range.
pub(super) const END: u8 = 2;
/// `rbx`: the constant pool.
pub(super) const POOL: u8 = 3;
/// `rax`: scratch for address arithmetic and loop tests.
pub(super) const SCRATCH: u8 = 0;
/// `rsp`: the frame (scalar register slots, `begin`).
pub(super) const RSP: u8 = 4;
/// General registers for loop counters and row pointers (`rsi`, which
/// holds `begin` on entry, is saved to the frame first).
const GPRS: [u8; 11] = [6, 15, 14, 13, 12, 5, 11, 10, 9, 8, 1];

/// The `ymm` register [`Asm::cmp`] loads a memory operand into (never
/// allocated).
const CMP_TMP: u8 = 15;

/// Why an emission attempt stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fail {
    /// Out of `ymm` or general registers: retry with fewer vectors a step.
    Registers,
    /// Outside the class of kernels this emitter handles.
    Unsupported,
}

/// Vector width of an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum W {
    /// `ymm`: eight lanes.
    Y,
    /// `xmm`, lane 0 meaningful (scalar tail iterations).
    X,
}

/// A source operand: a vector register or `[gpr + disp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Src {
    R(u8),
    M(u8, i32),
}

pub(super) struct Asm {
    pub(super) ops: Assembler,
    free_v: Vec<u8>,
    free_g: Vec<u8>,
    /// Bits of each pooled constant (32 bytes each, in order).
    consts: Vec<u32>,
    pub(super) pool: DynamicLabel,
}

impl Asm {
    pub(super) fn new() -> Result<Self, Fail> {
        let mut ops = Assembler::new().map_err(|_| Fail::Unsupported)?;
        let pool = ops.new_dynamic_label();
        Ok(Asm {
            ops,
            free_v: (0..CMP_TMP).rev().collect(),
            free_g: GPRS.iter().rev().copied().collect(),
            consts: Vec::new(),
            pool,
        })
    }

    pub(super) fn vreg(&mut self) -> Result<u8, Fail> {
        self.free_v.pop().ok_or(Fail::Registers)
    }

    /// How many `ymm` registers are free.
    pub(super) fn free_count(&self) -> usize {
        self.free_v.len()
    }

    pub(super) fn free(&mut self, r: u8) {
        debug_assert!(!self.free_v.contains(&r));
        self.free_v.push(r);
    }

    pub(super) fn gpr(&mut self) -> Result<u8, Fail> {
        self.free_g.pop().ok_or(Fail::Registers)
    }

    pub(super) fn free_gpr(&mut self, r: u8) {
        self.free_g.push(r);
    }

    /// `x` in every lane of a pooled 32-byte constant.
    pub(super) fn constant(&mut self, x: f32) -> Src {
        self.bits(x.to_bits())
    }

    pub(super) fn bits(&mut self, bits: u32) -> Src {
        let i = match self.consts.iter().position(|&c| c == bits) {
            Some(i) => i,
            None => {
                self.consts.push(bits);
                self.consts.len() - 1
            }
        };
        Src::M(POOL, 32 * i as i32)
    }

    /// Appends the constant pool (after the code).
    pub(super) fn emit_pool(&mut self) {
        let pool = self.pool;
        dynasm!(self.ops ; .arch x64 ; .align 32 ; =>pool);
        let bytes: Vec<u8> = self
            .consts
            .iter()
            .flat_map(|c| std::iter::repeat_n(c.to_le_bytes(), 8).flatten())
            .collect();
        self.ops.extend(bytes);
    }

    /// `d = a op s` for a three-operand VEX instruction.
    pub(super) fn op3(&mut self, w: W, op: Op3, d: u8, a: u8, s: Src) {
        macro_rules! go {
            ($($name:ident => $ins:ident),*) => {
                match (op, w, s) {
                    $(
                    (Op3::$name, W::Y, Src::R(b)) => dynasm!(self.ops ; .arch x64 ; $ins Ry(d), Ry(a), Ry(b)),
                    (Op3::$name, W::Y, Src::M(g, o)) => dynasm!(self.ops ; .arch x64 ; $ins Ry(d), Ry(a), [Rq(g) + o]),
                    (Op3::$name, W::X, Src::R(b)) => dynasm!(self.ops ; .arch x64 ; $ins Rx(d), Rx(a), Rx(b)),
                    (Op3::$name, W::X, Src::M(g, o)) => dynasm!(self.ops ; .arch x64 ; $ins Rx(d), Rx(a), [Rq(g) + o]),
                    )*
                }
            };
        }
        go!(Add => vaddps, Sub => vsubps, Mul => vmulps, Div => vdivps,
            Max => vmaxps, Min => vminps, And => vandps, Or => vorps, Xor => vxorps,
            AddI => vpaddd, SubI => vpsubd)
    }

    /// `d = a cmp s` as a lane mask (`vcmpps` predicate `pred`).
    pub(super) fn cmp(&mut self, w: W, pred: u8, d: u8, a: u8, s: Src) {
        let b = match s {
            Src::R(b) => b,
            Src::M(..) => {
                self.mov(w, CMP_TMP, s);
                CMP_TMP
            }
        };
        vcmpps(&mut self.ops, w, pred, d, a, b);
    }

    /// `d = mask ? s : a` per lane.
    pub(super) fn blend(&mut self, w: W, d: u8, a: u8, s: Src, mask: u8) {
        match (w, s) {
            (W::Y, Src::R(b)) => {
                dynasm!(self.ops ; .arch x64 ; vblendvps Ry(d), Ry(a), Ry(b), Ry(mask))
            }
            (W::Y, Src::M(g, o)) => {
                dynasm!(self.ops ; .arch x64 ; vblendvps Ry(d), Ry(a), [Rq(g) + o], Ry(mask))
            }
            (W::X, Src::R(b)) => {
                dynasm!(self.ops ; .arch x64 ; vblendvps Rx(d), Rx(a), Rx(b), Rx(mask))
            }
            (W::X, Src::M(g, o)) => {
                dynasm!(self.ops ; .arch x64 ; vblendvps Rx(d), Rx(a), [Rq(g) + o], Rx(mask))
            }
        }
    }

    /// `d = s` (a register copy, or a full-width load of a pool constant or
    /// frame slot).
    pub(super) fn mov(&mut self, w: W, d: u8, s: Src) {
        match (w, s) {
            (W::Y, Src::R(b)) => dynasm!(self.ops ; .arch x64 ; vmovaps Ry(d), Ry(b)),
            (W::Y, Src::M(g, o)) => dynasm!(self.ops ; .arch x64 ; vmovups Ry(d), [Rq(g) + o]),
            (W::X, Src::R(b)) => dynasm!(self.ops ; .arch x64 ; vmovaps Rx(d), Rx(b)),
            (W::X, Src::M(g, o)) => dynasm!(self.ops ; .arch x64 ; vmovups Rx(d), [Rq(g) + o]),
        }
    }

    /// `d = sqrt(s)`.
    pub(super) fn sqrt(&mut self, w: W, d: u8, s: Src) {
        match (w, s) {
            (W::Y, Src::R(b)) => dynasm!(self.ops ; .arch x64 ; vsqrtps Ry(d), Ry(b)),
            (W::Y, Src::M(g, o)) => dynasm!(self.ops ; .arch x64 ; vsqrtps Ry(d), [Rq(g) + o]),
            (W::X, Src::R(b)) => dynasm!(self.ops ; .arch x64 ; vsqrtps Rx(d), Rx(b)),
            (W::X, Src::M(g, o)) => dynasm!(self.ops ; .arch x64 ; vsqrtps Rx(d), [Rq(g) + o]),
        }
    }

    /// `d = s >> n` (arithmetic, per i32 lane).
    pub(super) fn sra(&mut self, w: W, d: u8, s: u8, n: i8) {
        match w {
            W::Y => dynasm!(self.ops ; .arch x64 ; vpsrad Ry(d), Ry(s), n),
            W::X => dynasm!(self.ops ; .arch x64 ; vpsrad Rx(d), Rx(s), n),
        }
    }

    /// `d = s << n` (per i32 lane).
    pub(super) fn shl(&mut self, w: W, d: u8, s: u8, n: i8) {
        match w {
            W::Y => dynasm!(self.ops ; .arch x64 ; vpslld Ry(d), Ry(s), n),
            W::X => dynasm!(self.ops ; .arch x64 ; vpslld Rx(d), Rx(s), n),
        }
    }

    /// Loads the element(s) at `[g + o]`: eight floats (`Y`) or one into
    /// lane 0 (`X`, the other lanes cleared).
    pub(super) fn load(&mut self, w: W, d: u8, g: u8, o: i32) {
        match w {
            W::Y => dynasm!(self.ops ; .arch x64 ; vmovups Ry(d), [Rq(g) + o]),
            W::X => dynasm!(self.ops ; .arch x64 ; vmovss Rx(d), [Rq(g) + o]),
        }
    }

    /// Stores eight floats (`Y`) or lane 0 (`X`) at `[g + o]`.
    pub(super) fn store(&mut self, w: W, g: u8, o: i32, s: u8) {
        match w {
            W::Y => dynasm!(self.ops ; .arch x64 ; vmovups [Rq(g) + o], Ry(s)),
            W::X => dynasm!(self.ops ; .arch x64 ; vmovss [Rq(g) + o], Rx(s)),
        }
    }

    /// Stores the whole register at `[g + o]` (32 or 16 bytes).
    pub(super) fn mov_to(&mut self, w: W, g: u8, o: i32, s: u8) {
        match w {
            W::Y => dynasm!(self.ops ; .arch x64 ; vmovups [Rq(g) + o], Ry(s)),
            W::X => dynasm!(self.ops ; .arch x64 ; vmovups [Rq(g) + o], Rx(s)),
        }
    }

    /// The float at `[g + o]` in every lane.
    pub(super) fn broadcast(&mut self, w: W, d: u8, g: u8, o: i32) {
        match w {
            W::Y => broadcast_ymm(&mut self.ops, d, g, o),
            W::X => dynasm!(self.ops ; .arch x64 ; vbroadcastss Rx(d), [Rq(g) + o]),
        }
    }
}

/// Three-operand instructions of [`Asm::op3`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op3 {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    And,
    Or,
    Xor,
    AddI,
    SubI,
}

/// `vcmpps` predicates.
pub(super) const LT_OS: u8 = 0x01;
pub(super) const UNORD_Q: u8 = 0x03;
pub(super) const GE_OS: u8 = 0x0D;
pub(super) const GT_OS: u8 = 0x0E;

/// `vbroadcastss ymm(dst), dword [base + disp32]`, encoded by hand:
/// dynasm-rs 5.1 emits the memory form with VEX.L = 0 (an xmm broadcast)
/// even for a `ymm` destination (see the contraction kernels' twin).
fn broadcast_ymm(ops: &mut Assembler, dst: u8, base: u8, disp: i32) {
    debug_assert!(dst < 16 && base < 16);
    let inv = |r: u8| (!(r >> 3) & 1) << 7;
    ops.extend([
        0xC4,
        // R, X (no index), B inverted; opcode map 0F38.
        inv(dst) | 0x40 | (inv(base) >> 2) | 0x02,
        // W0, vvvv = 1111 (unused), L = 1, pp = 66.
        0x7D,
        0x18,
        // mod = 10 (disp32), reg = dst, rm = 100 (SIB follows).
        0x84 | ((dst & 7) << 3),
        // No index (100), base.
        0x20 | (base & 7),
    ]);
    ops.extend(disp.to_le_bytes());
}

/// `vcmpps d, a, b, pred` (registers only), encoded by hand: dynasm-rs
/// 5.1 swaps the two sources of `vcmpps` and drops a memory operand.
fn vcmpps(ops: &mut Assembler, w: W, pred: u8, d: u8, a: u8, b: u8) {
    debug_assert!(d < 16 && a < 16 && b < 16);
    let inv = |r: u8| (!(r >> 3) & 1) << 7;
    let l = if w == W::Y { 0x04 } else { 0x00 };
    ops.extend([
        0xC4,
        // R, X (unused), B inverted; opcode map 0F.
        inv(d) | 0x40 | (inv(b) >> 2) | 0x01,
        // W0, vvvv = ~a, L, pp = none.
        ((!a & 0x0F) << 3) | l,
        0xC2,
        0xC0 | ((d & 7) << 3) | (b & 7),
        pred,
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ymm_broadcast_is_encoded_with_vex_l() {
        let mut ops = Assembler::new().expect("assembler");
        broadcast_ymm(&mut ops, 9, 13, 8);
        broadcast_ymm(&mut ops, 2, 4, -4);
        let code = ops.finalize().expect("finalize");
        #[rustfmt::skip]
        let want: [u8; 20] = [
            // vbroadcastss ymm9, [r13 + 8]
            0xC4, 0x42, 0x7D, 0x18, 0x8C, 0x25, 8, 0, 0, 0,
            // vbroadcastss ymm2, [rsp - 4]
            0xC4, 0xE2, 0x7D, 0x18, 0x94, 0x24, 0xFC, 0xFF, 0xFF, 0xFF,
        ];
        assert_eq!(&code[..], &want[..]);
    }

    #[test]
    fn vcmpps_is_encoded_with_sources_in_order() {
        let mut ops = Assembler::new().expect("assembler");
        vcmpps(&mut ops, W::Y, LT_OS, 3, 0, 15);
        vcmpps(&mut ops, W::X, UNORD_Q, 9, 12, 2);
        let code = ops.finalize().expect("finalize");
        #[rustfmt::skip]
        let want: [u8; 12] = [
            // vcmpltps ymm3, ymm0, ymm15
            0xC4, 0xC1, 0x7C, 0xC2, 0xDF, 0x01,
            // vcmpunordps xmm9, xmm12, xmm2
            0xC4, 0x61, 0x18, 0xC2, 0xCA, 0x03,
        ];
        assert_eq!(&code[..], &want[..]);
    }
}
