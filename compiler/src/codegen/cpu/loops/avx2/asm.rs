//! The assembler state of a native loop kernel: register pools, the
//! constant pool, the opmasks of `zmm` compares, and width-generic
//! instruction helpers (the same operation on `zmm` or `ymm` registers
//! for vector steps, or on `xmm` registers, whose lane 0 is the element,
//! for the scalar tail). `zmm` instructions go through `evex`, the others
//! through dynasm-rs.

// `dynasm!` converts every dynamic register expression with `.into()`,
// which is the identity for the `u8` register numbers used here.
#![allow(clippy::useless_conversion)]

use dynasmrt::{dynasm, x64::Assembler, DynamicLabel, DynasmApi, DynasmLabelApi};

use crate::codegen::cpu::evex::{self, Rm};

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
/// allocated; `zmm` compares take the memory operand directly).
const CMP_TMP: u8 = 15;

/// Why an emission attempt stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fail {
    /// Out of vector or general registers: retry with fewer vectors a step.
    Registers,
    /// Outside the class of kernels this emitter handles.
    Unsupported,
}

/// Vector width of an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum W {
    /// `zmm`: sixteen lanes (EVEX, see [`evex`]).
    Z,
    /// `ymm`: eight lanes.
    Y,
    /// `xmm`, lane 0 meaningful (scalar tail iterations).
    X,
}

impl W {
    /// Lanes of a vector (one for the scalar tail).
    pub(super) fn lanes(self) -> usize {
        match self {
            W::Z => 16,
            W::Y => 8,
            W::X => 1,
        }
    }

    /// Bytes of a register.
    pub(super) fn bytes(self) -> i32 {
        match self {
            W::Z => 64,
            W::Y => 32,
            W::X => 16,
        }
    }
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
    /// Bits of each pooled constant (`wide` bytes each, in order).
    consts: Vec<u32>,
    pub(super) pool: DynamicLabel,
    /// Bytes of a pool entry: 64 where `zmm` code reads them, else 32.
    wide: i32,
    /// `kmask[k]`: the vector register whose mask (a lane's sign bit,
    /// all-ones or zero) opmask `k` holds, if any.
    kmask: [Option<u8>; 8],
    /// Registers whose mask lives only in an opmask so far (see
    /// [`Asm::cmp`]).
    pending: [bool; 16],
    /// The opmask the next `zmm` compare writes (round-robin over k1–k7).
    next_k: u8,
}

impl Asm {
    /// `zmm`: whether the code has `zmm` steps (their pool entries are 64
    /// bytes).
    pub(super) fn new(zmm: bool) -> Result<Self, Fail> {
        let mut ops = Assembler::new().map_err(|_| Fail::Unsupported)?;
        let pool = ops.new_dynamic_label();
        Ok(Asm {
            ops,
            free_v: (0..CMP_TMP).rev().collect(),
            free_g: GPRS.iter().rev().copied().collect(),
            consts: Vec::new(),
            pool,
            wide: if zmm { 64 } else { 32 },
            kmask: [None; 8],
            pending: [false; 16],
            next_k: 1,
        })
    }

    pub(super) fn vreg(&mut self) -> Result<u8, Fail> {
        self.free_v.pop().ok_or(Fail::Registers)
    }

    /// How many vector registers are free.
    pub(super) fn free_count(&self) -> usize {
        self.free_v.len()
    }

    pub(super) fn free(&mut self, r: u8) {
        debug_assert!(!self.free_v.contains(&r));
        self.wrote(r);
        self.free_v.push(r);
    }

    pub(super) fn gpr(&mut self) -> Result<u8, Fail> {
        self.free_g.pop().ok_or(Fail::Registers)
    }

    pub(super) fn free_gpr(&mut self, r: u8) {
        self.free_g.push(r);
    }

    /// `x` in every lane of a pooled constant (32 or 64 bytes).
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
        Src::M(POOL, self.wide * i as i32)
    }

    /// Appends the constant pool (after the code).
    pub(super) fn emit_pool(&mut self) {
        let pool = self.pool;
        if self.wide == 64 {
            dynasm!(self.ops ; .arch x64 ; .align 64 ; =>pool);
        } else {
            dynasm!(self.ops ; .arch x64 ; .align 32 ; =>pool);
        }
        let lanes = self.wide as usize / 4;
        let bytes: Vec<u8> = self
            .consts
            .iter()
            .flat_map(|c| std::iter::repeat_n(c.to_le_bytes(), lanes).flatten())
            .collect();
        self.ops.extend(bytes);
    }

    /// `d = a op s` for a three-operand VEX instruction.
    pub(super) fn op3(&mut self, w: W, op: Op3, d: u8, a: u8, s: Src) {
        self.read(a);
        self.read_src(s);
        self.wrote(d);
        if w == W::Z {
            let op = match op {
                Op3::Add => evex::VADDPS,
                Op3::Sub => evex::VSUBPS,
                Op3::Mul => evex::VMULPS,
                Op3::Div => evex::VDIVPS,
                Op3::Max => evex::VMAXPS,
                Op3::Min => evex::VMINPS,
                Op3::And => evex::VPANDD,
                Op3::Or => evex::VPORD,
                Op3::Xor => evex::VPXORD,
                Op3::AddI => evex::VPADDD,
                Op3::SubI => evex::VPSUBD,
            };
            evex::op3(&mut self.ops, op, d, a, rm(s));
            return;
        }
        macro_rules! go {
            ($($name:ident => $ins:ident),*) => {
                match (op, w, s) {
                    (_, W::Z, _) => unreachable!(),
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
    ///
    /// On `zmm` the compare writes an opmask, and `d` gets the mask as a
    /// vector (`vpmovm2d`: the all-ones or zero lanes the VEX compare
    /// gives) only when something other than a blend reads it: the blends
    /// use the opmask directly.
    pub(super) fn cmp(&mut self, w: W, pred: u8, d: u8, a: u8, s: Src) {
        self.read(a);
        self.read_src(s);
        if w == W::Z {
            let k = self.take_k();
            evex::vcmpps(&mut self.ops, k, a, rm(s), pred);
            self.wrote(d);
            self.kmask[k as usize] = Some(d);
            self.pending[d as usize] = true;
            return;
        }
        self.wrote(d);
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
        self.read(a);
        self.read_src(s);
        if w == W::Z {
            // `vblendmps` takes its second source where the opmask is set,
            // as `vblendvps` where the mask lane's sign bit is.
            let k = match self.kmask.iter().position(|&r| r == Some(mask)) {
                Some(k) => k as u8,
                None => {
                    let k = self.take_k();
                    evex::vpmovd2m(&mut self.ops, k, mask);
                    self.kmask[k as usize] = Some(mask);
                    k
                }
            };
            evex::vblendmps(&mut self.ops, d, k, a, rm(s));
            self.wrote(d);
            return;
        }
        self.read(mask);
        self.wrote(d);
        match (w, s) {
            (W::Z, _) => unreachable!(),
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
        self.read_src(s);
        self.wrote(d);
        match (w, s) {
            (W::Z, Src::R(b)) => evex::vmovaps(&mut self.ops, d, b),
            (W::Z, Src::M(g, o)) => evex::vmovups_load(&mut self.ops, d, Rm::at(g, o)),
            (W::Y, Src::R(b)) => dynasm!(self.ops ; .arch x64 ; vmovaps Ry(d), Ry(b)),
            (W::Y, Src::M(g, o)) => dynasm!(self.ops ; .arch x64 ; vmovups Ry(d), [Rq(g) + o]),
            (W::X, Src::R(b)) => dynasm!(self.ops ; .arch x64 ; vmovaps Rx(d), Rx(b)),
            (W::X, Src::M(g, o)) => dynasm!(self.ops ; .arch x64 ; vmovups Rx(d), [Rq(g) + o]),
        }
    }

    /// `d = sqrt(s)`.
    pub(super) fn sqrt(&mut self, w: W, d: u8, s: Src) {
        self.read_src(s);
        self.wrote(d);
        match (w, s) {
            (W::Z, s) => evex::vsqrtps(&mut self.ops, d, rm(s)),
            (W::Y, Src::R(b)) => dynasm!(self.ops ; .arch x64 ; vsqrtps Ry(d), Ry(b)),
            (W::Y, Src::M(g, o)) => dynasm!(self.ops ; .arch x64 ; vsqrtps Ry(d), [Rq(g) + o]),
            (W::X, Src::R(b)) => dynasm!(self.ops ; .arch x64 ; vsqrtps Rx(d), Rx(b)),
            (W::X, Src::M(g, o)) => dynasm!(self.ops ; .arch x64 ; vsqrtps Rx(d), [Rq(g) + o]),
        }
    }

    /// `d = s >> n` (arithmetic, per i32 lane).
    pub(super) fn sra(&mut self, w: W, d: u8, s: u8, n: i8) {
        self.read(s);
        self.wrote(d);
        match w {
            W::Z => evex::vpsrad(&mut self.ops, d, s, n as u8),
            W::Y => dynasm!(self.ops ; .arch x64 ; vpsrad Ry(d), Ry(s), n),
            W::X => dynasm!(self.ops ; .arch x64 ; vpsrad Rx(d), Rx(s), n),
        }
    }

    /// `d = s << n` (per i32 lane).
    pub(super) fn shl(&mut self, w: W, d: u8, s: u8, n: i8) {
        self.read(s);
        self.wrote(d);
        match w {
            W::Z => evex::vpslld(&mut self.ops, d, s, n as u8),
            W::Y => dynasm!(self.ops ; .arch x64 ; vpslld Ry(d), Ry(s), n),
            W::X => dynasm!(self.ops ; .arch x64 ; vpslld Rx(d), Rx(s), n),
        }
    }

    /// Loads the element(s) at `[g + o]`: a vector (`Z`, `Y`) or one float
    /// into lane 0 (`X`, the other lanes cleared).
    pub(super) fn load(&mut self, w: W, d: u8, g: u8, o: i32) {
        self.wrote(d);
        match w {
            W::Z => evex::vmovups_load(&mut self.ops, d, Rm::at(g, o)),
            W::Y => dynasm!(self.ops ; .arch x64 ; vmovups Ry(d), [Rq(g) + o]),
            W::X => dynasm!(self.ops ; .arch x64 ; vmovss Rx(d), [Rq(g) + o]),
        }
    }

    /// Stores a vector (`Z`, `Y`) or lane 0 (`X`) at `[g + o]`.
    pub(super) fn store(&mut self, w: W, g: u8, o: i32, s: u8) {
        self.read(s);
        match w {
            W::Z => evex::vmovups_store(&mut self.ops, Rm::at(g, o), s),
            W::Y => dynasm!(self.ops ; .arch x64 ; vmovups [Rq(g) + o], Ry(s)),
            W::X => dynasm!(self.ops ; .arch x64 ; vmovss [Rq(g) + o], Rx(s)),
        }
    }

    /// Stores the whole register at `[g + o]` (64, 32 or 16 bytes).
    pub(super) fn mov_to(&mut self, w: W, g: u8, o: i32, s: u8) {
        self.read(s);
        match w {
            W::Z => evex::vmovups_store(&mut self.ops, Rm::at(g, o), s),
            W::Y => dynasm!(self.ops ; .arch x64 ; vmovups [Rq(g) + o], Ry(s)),
            W::X => dynasm!(self.ops ; .arch x64 ; vmovups [Rq(g) + o], Rx(s)),
        }
    }

    /// The float at `[g + o]` in every lane.
    pub(super) fn broadcast(&mut self, w: W, d: u8, g: u8, o: i32) {
        self.wrote(d);
        match w {
            W::Z => evex::vbroadcastss(&mut self.ops, d, Rm::at(g, o)),
            W::Y => broadcast_ymm(&mut self.ops, d, g, o),
            W::X => dynasm!(self.ops ; .arch x64 ; vbroadcastss Rx(d), [Rq(g) + o]),
        }
    }
}

impl Asm {
    /// Before an instruction reads `r`: a mask still only in its opmask
    /// gets its vector.
    fn read(&mut self, r: u8) {
        if self.pending[r as usize] {
            let k = self.kmask.iter().position(|&m| m == Some(r));
            let k = k.expect("a pending mask has its opmask") as u8;
            evex::vpmovm2d(&mut self.ops, r, k);
            self.pending[r as usize] = false;
        }
    }

    fn read_src(&mut self, s: Src) {
        if let Src::R(r) = s {
            self.read(r);
        }
    }

    /// After an instruction writes `r` (or `r` is freed): no opmask holds
    /// its value any more.
    fn wrote(&mut self, r: u8) {
        self.pending[r as usize] = false;
        for m in &mut self.kmask {
            if *m == Some(r) {
                *m = None;
            }
        }
    }

    /// An opmask to overwrite, its register's mask first given its vector
    /// if it has none yet.
    fn take_k(&mut self) -> u8 {
        let k = self.next_k;
        self.next_k = if k == 7 { 1 } else { k + 1 };
        if let Some(r) = self.kmask[k as usize].take() {
            if self.pending[r as usize] {
                evex::vpmovm2d(&mut self.ops, r, k);
                self.pending[r as usize] = false;
            }
        }
        k
    }
}

/// An EVEX r/m operand.
fn rm(s: Src) -> Rm {
    match s {
        Src::R(r) => Rm::Reg(r),
        Src::M(g, o) => Rm::at(g, o),
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
