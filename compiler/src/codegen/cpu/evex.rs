//! A minimal EVEX encoder for the AVX-512 instructions of the `zmm`
//! contraction kernels (`contraction::avx512`) and of the `zmm` steps of
//! the loop kernels (`loops::avx2`: arithmetic, bitwise and shift forms,
//! `vcmpps` into an opmask, `vblendmps`, and `vpmovm2d`/`vpmovd2m` between
//! opmasks and the lane masks of the VEX code, which are AVX-512DQ).
//!
//! dynasm-rs 5.1 has no EVEX support (no `zmm` registers, no opmasks, no
//! embedded broadcast), and the kernels need only a few dozen instruction
//! forms, all 512-bit with `EVEX.W0`, so they are encoded here by hand and appended to the same
//! `dynasmrt` assembler (`ops.extend(bytes)`): labels, jumps and the
//! general-purpose code stay with dynasm, and the code buffer stays W^X.
//!
//! Every memory operand uses the `mod = 10` (disp32) form, so the EVEX
//! compressed `disp8 * N` displacement never arises: one encoding for
//! every displacement, at the price of a few bytes of code. Each form is
//! checked byte for byte against GNU `as` (`{disp32}` prefix) in the
//! tests below.

use dynasmrt::x64::Assembler;

/// The r/m operand of an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rm {
    /// A vector register (`zmm0`–`zmm31`), or a general-purpose one where
    /// the instruction takes one.
    Reg(u8),
    /// `[base + index + disp]` (`index` scaled by 1; no `rsp` index).
    Mem {
        base: u8,
        index: Option<u8>,
        disp: i32,
    },
}

impl Rm {
    /// `[base + disp]`.
    pub(crate) fn at(base: u8, disp: i32) -> Rm {
        Rm::Mem {
            base,
            index: None,
            disp,
        }
    }

    /// `[base + index + disp]`.
    pub(crate) fn at_index(base: u8, index: u8, disp: i32) -> Rm {
        Rm::Mem {
            base,
            index: Some(index),
            disp,
        }
    }
}

/// Opcode maps (EVEX.mm).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Map {
    M0F = 1,
    M0F38 = 2,
}

/// Mandatory prefixes (EVEX.pp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pp {
    None = 0,
    P66 = 1,
    F3 = 2,
}

/// One 512-bit EVEX instruction: `opcode` in `map` with `reg` in
/// ModRM.reg, `vvvv` the second source (0 where unused: encoded as
/// 1111, as the unused field must be), `rm` the last operand and opmask
/// `mask` (0: none) merging. (No embedded broadcast: the kernels measured
/// `vfmadd231ps zmm, zmm, m32{1to16}` slower than `vbroadcastss` + two
/// register FMAs; see `contraction::avx512`.)
#[allow(clippy::too_many_arguments)]
fn evex(ops: &mut Assembler, map: Map, pp: Pp, opcode: u8, reg: u8, vvvv: u8, rm: Rm, mask: u8) {
    debug_assert!(reg < 32 && vvvv < 32 && mask < 8);
    // Register extension bits are stored inverted.
    let inv = |r: u8, bit: u8| u8::from((r >> bit) & 1 == 0);
    let (x, b, modrm_rm, tail): (u8, u8, u8, Vec<u8>) = match rm {
        Rm::Reg(r) => {
            debug_assert!(r < 32);
            (inv(r, 4), inv(r, 3), 0xC0 | (r & 7), Vec::new())
        }
        Rm::Mem { base, index, disp } => {
            debug_assert!(base < 16);
            let mut tail = Vec::with_capacity(5);
            let x = match index {
                Some(i) => {
                    // `rsp` cannot be an index (100 means none).
                    debug_assert!(i < 16 && i != 4);
                    tail.push(((i & 7) << 3) | (base & 7));
                    inv(i, 3)
                }
                // rsp / r12 as a base need a SIB byte (no index).
                None if base & 7 == 4 => {
                    tail.push(0x24);
                    1
                }
                None => 1,
            };
            tail.extend(disp.to_le_bytes());
            let rm = if tail.len() == 5 {
                0x84
            } else {
                0x80 | (base & 7)
            };
            (x, inv(base, 3), rm, tail)
        }
    };
    let p0 = (inv(reg, 3) << 7) | (x << 6) | (b << 5) | (inv(reg, 4) << 4) | map as u8;
    let p1 = ((!vvvv & 0xF) << 3) | 0x04 | pp as u8;
    // z = 0 (merge), L'L = 10 (512 bits).
    let p2 = 0x40 | (inv(vvvv, 4) << 3) | mask;
    ops.extend([0x62, p0, p1, p2, opcode, modrm_rm | ((reg & 7) << 3)]);
    ops.extend(tail);
}

/// `vmovups zmm(dst), zmmword [mem]`.
pub(crate) fn vmovups_load(ops: &mut Assembler, dst: u8, mem: Rm) {
    debug_assert!(matches!(mem, Rm::Mem { .. }));
    evex(ops, Map::M0F, Pp::None, 0x10, dst, 0, mem, 0);
}

/// `vmovups zmmword [mem], zmm(src)`.
pub(crate) fn vmovups_store(ops: &mut Assembler, mem: Rm, src: u8) {
    debug_assert!(matches!(mem, Rm::Mem { .. }));
    evex(ops, Map::M0F, Pp::None, 0x11, src, 0, mem, 0);
}

/// `vbroadcastss zmm(dst), dword [mem]`.
pub(crate) fn vbroadcastss(ops: &mut Assembler, dst: u8, mem: Rm) {
    debug_assert!(matches!(mem, Rm::Mem { .. }));
    evex(ops, Map::M0F38, Pp::P66, 0x18, dst, 0, mem, 0);
}

/// `vfmadd231ps zmm(acc), zmm(a), rm` (`acc += a * rm`).
pub(crate) fn vfmadd231ps(ops: &mut Assembler, acc: u8, a: u8, rm: Rm) {
    evex(ops, Map::M0F38, Pp::P66, 0xB8, acc, a, rm, 0);
}

/// `vaddps zmm(dst), zmm(a), rm`.
pub(crate) fn vaddps(ops: &mut Assembler, dst: u8, a: u8, rm: Rm) {
    evex(ops, Map::M0F, Pp::None, 0x58, dst, a, rm, 0);
}

/// `vmaxps zmm(dst), zmm(a), rm` (the second operand where either is NaN).
pub(crate) fn vmaxps(ops: &mut Assembler, dst: u8, a: u8, rm: Rm) {
    evex(ops, Map::M0F, Pp::None, 0x5F, dst, a, rm, 0);
}

/// `vmulps zmm(dst){k(mask)}, zmm(a), rm`: lanes outside the mask keep
/// `dst`.
pub(crate) fn vmulps_masked(ops: &mut Assembler, dst: u8, mask: u8, a: u8, rm: Rm) {
    debug_assert!((1..8).contains(&mask));
    evex(ops, Map::M0F, Pp::None, 0x59, dst, a, rm, mask);
}

/// `vpxord zmm(dst), zmm(a), zmm(b)` (AVX-512F, unlike `vxorps zmm`,
/// which is AVX-512DQ).
pub(crate) fn vpxord(ops: &mut Assembler, dst: u8, a: u8, b: u8) {
    op3(ops, VPXORD, dst, a, Rm::Reg(b));
}

/// `vpcmpgtd k(mask), zmm(a), zmm(b)`: the lanes whose `a > b` as signed
/// 32-bit integers.
pub(crate) fn vpcmpgtd(ops: &mut Assembler, mask: u8, a: u8, b: u8) {
    debug_assert!(mask < 8);
    evex(ops, Map::M0F, Pp::P66, 0x66, mask, a, Rm::Reg(b), 0);
}

/// `vpbroadcastd zmm(dst), r32(gpr)`.
pub(crate) fn vpbroadcastd_gpr(ops: &mut Assembler, dst: u8, gpr: u8) {
    debug_assert!(gpr < 16);
    // A general-purpose rm has no fourth bit: EVEX.X stays 1 (inverted 0).
    evex(ops, Map::M0F38, Pp::P66, 0x7C, dst, 0, Rm::Reg(gpr), 0);
}

/// A 512-bit instruction of the form `op zmm(dst), zmm(a), rm` (register
/// or memory `rm`), for [`op3`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Op3(Map, Pp, u8);

pub(crate) const VADDPS: Op3 = Op3(Map::M0F, Pp::None, 0x58);
pub(crate) const VSUBPS: Op3 = Op3(Map::M0F, Pp::None, 0x5C);
pub(crate) const VMULPS: Op3 = Op3(Map::M0F, Pp::None, 0x59);
pub(crate) const VDIVPS: Op3 = Op3(Map::M0F, Pp::None, 0x5E);
pub(crate) const VMAXPS: Op3 = Op3(Map::M0F, Pp::None, 0x5F);
pub(crate) const VMINPS: Op3 = Op3(Map::M0F, Pp::None, 0x5D);
/// The bitwise operations are the AVX-512F integer forms (`vandps zmm` and
/// its kin are AVX-512DQ); on bits they are the same operation.
pub(crate) const VPANDD: Op3 = Op3(Map::M0F, Pp::P66, 0xDB);
pub(crate) const VPORD: Op3 = Op3(Map::M0F, Pp::P66, 0xEB);
pub(crate) const VPXORD: Op3 = Op3(Map::M0F, Pp::P66, 0xEF);
pub(crate) const VPADDD: Op3 = Op3(Map::M0F, Pp::P66, 0xFE);
pub(crate) const VPSUBD: Op3 = Op3(Map::M0F, Pp::P66, 0xFA);

/// `op zmm(dst), zmm(a), rm`.
pub(crate) fn op3(ops: &mut Assembler, op: Op3, dst: u8, a: u8, rm: Rm) {
    let Op3(map, pp, opcode) = op;
    evex(ops, map, pp, opcode, dst, a, rm, 0);
}

/// `vmovaps zmm(dst), zmm(src)`.
pub(crate) fn vmovaps(ops: &mut Assembler, dst: u8, src: u8) {
    evex(ops, Map::M0F, Pp::None, 0x28, dst, 0, Rm::Reg(src), 0);
}

/// `vsqrtps zmm(dst), rm`.
pub(crate) fn vsqrtps(ops: &mut Assembler, dst: u8, rm: Rm) {
    evex(ops, Map::M0F, Pp::None, 0x51, dst, 0, rm, 0);
}

/// `vpsrad zmm(dst), zmm(src), n` (arithmetic, per i32 lane).
pub(crate) fn vpsrad(ops: &mut Assembler, dst: u8, src: u8, n: u8) {
    // Opcode extension /4 in ModRM.reg; the destination goes in vvvv.
    evex(ops, Map::M0F, Pp::P66, 0x72, 4, dst, Rm::Reg(src), 0);
    ops.extend([n]);
}

/// `vpslld zmm(dst), zmm(src), n`.
pub(crate) fn vpslld(ops: &mut Assembler, dst: u8, src: u8, n: u8) {
    evex(ops, Map::M0F, Pp::P66, 0x72, 6, dst, Rm::Reg(src), 0);
    ops.extend([n]);
}

/// `vcmpps k(mask), zmm(a), rm, pred`: the lanes where `a pred rm` holds.
pub(crate) fn vcmpps(ops: &mut Assembler, mask: u8, a: u8, rm: Rm, pred: u8) {
    debug_assert!(mask < 8);
    evex(ops, Map::M0F, Pp::None, 0xC2, mask, a, rm, 0);
    ops.extend([pred]);
}

/// `vpmovm2d zmm(dst), k(mask)` (AVX-512DQ): all ones in the mask's lanes,
/// zero elsewhere.
pub(crate) fn vpmovm2d(ops: &mut Assembler, dst: u8, mask: u8) {
    debug_assert!(mask < 8);
    evex(ops, Map::M0F38, Pp::F3, 0x38, dst, 0, Rm::Reg(mask), 0);
}

/// `vpmovd2m k(mask), zmm(src)` (AVX-512DQ): the lanes whose sign bit is
/// set.
pub(crate) fn vpmovd2m(ops: &mut Assembler, mask: u8, src: u8) {
    debug_assert!(mask < 8);
    evex(ops, Map::M0F38, Pp::F3, 0x39, mask, 0, Rm::Reg(src), 0);
}

/// `vblendmps zmm(dst){k(mask)}, zmm(a), rm`: `rm` in the mask's lanes,
/// `a` elsewhere.
pub(crate) fn vblendmps(ops: &mut Assembler, dst: u8, mask: u8, a: u8, rm: Rm) {
    debug_assert!((1..8).contains(&mask));
    evex(ops, Map::M0F38, Pp::P66, 0x65, dst, a, rm, mask);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts each case's bytes are GNU `as`'s (the case names the
    /// instruction as written for `as`).
    fn same_bytes(cases: Vec<(&str, Vec<u8>, Vec<u8>)>) {
        for (asm, got, want) in cases {
            assert_eq!(got, want, "{asm}");
        }
    }

    fn bytes(f: impl FnOnce(&mut Assembler)) -> Vec<u8> {
        let mut ops = Assembler::new().expect("assembler");
        f(&mut ops);
        ops.finalize().expect("finalize").to_vec()
    }

    // Expected bytes from GNU as (`as --64 -msyntax=intel -mnaked-reg`,
    // `{disp32}` on the memory forms) on the development machine.
    /// Each encoding, byte for byte, as GNU `as` assembles it.
    #[test]
    fn encodings_match_gnu_as() {
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
            ("vmovups zmm0, zmmword ptr [rdi+0]", bytes(|ops| vmovups_load(ops, 0, Rm::at(7, 0))), vec![0x62, 0xF1, 0x7C, 0x48, 0x10, 0x87, 0x00, 0x00, 0x00, 0x00]),
            ("vmovups zmm12, zmmword ptr [rsi+64]", bytes(|ops| vmovups_load(ops, 12, Rm::at(6, 64))), vec![0x62, 0x71, 0x7C, 0x48, 0x10, 0xA6, 0x40, 0x00, 0x00, 0x00]),
            ("vmovups zmm13, zmmword ptr [rsi+1048576]", bytes(|ops| vmovups_load(ops, 13, Rm::at(6, 1048576))), vec![0x62, 0x71, 0x7C, 0x48, 0x10, 0xAE, 0x00, 0x00, 0x10, 0x00]),
            ("vmovups zmm31, zmmword ptr [rsp-128]", bytes(|ops| vmovups_load(ops, 31, Rm::at(4, -128))), vec![0x62, 0x61, 0x7C, 0x48, 0x10, 0xBC, 0x24, 0x80, 0xFF, 0xFF, 0xFF]),
            ("vmovups zmm16, zmmword ptr [rbp+8]", bytes(|ops| vmovups_load(ops, 16, Rm::at(5, 8))), vec![0x62, 0xE1, 0x7C, 0x48, 0x10, 0x85, 0x08, 0x00, 0x00, 0x00]),
            ("vmovups zmm7, zmmword ptr [r13+0]", bytes(|ops| vmovups_load(ops, 7, Rm::at(13, 0))), vec![0x62, 0xD1, 0x7C, 0x48, 0x10, 0xBD, 0x00, 0x00, 0x00, 0x00]),
            ("vmovups zmm24, zmmword ptr [r12+4096]", bytes(|ops| vmovups_load(ops, 24, Rm::at(12, 4096))), vec![0x62, 0x41, 0x7C, 0x48, 0x10, 0x84, 0x24, 0x00, 0x10, 0x00, 0x00]),
            ("vmovups zmm3, zmmword ptr [r9+r14-4]", bytes(|ops| vmovups_load(ops, 3, Rm::at_index(9, 14, -4))), vec![0x62, 0x91, 0x7C, 0x48, 0x10, 0x9C, 0x31, 0xFC, 0xFF, 0xFF, 0xFF]),
            ("vmovups zmm29, zmmword ptr [r8+r15+256]", bytes(|ops| vmovups_load(ops, 29, Rm::at_index(8, 15, 256))), vec![0x62, 0x01, 0x7C, 0x48, 0x10, 0xAC, 0x38, 0x00, 0x01, 0x00, 0x00]),
            ("vmovups zmmword ptr [rdx+0], zmm0", bytes(|ops| vmovups_store(ops, Rm::at(2, 0), 0)), vec![0x62, 0xF1, 0x7C, 0x48, 0x11, 0x82, 0x00, 0x00, 0x00, 0x00]),
            ("vmovups zmmword ptr [rdx+64], zmm11", bytes(|ops| vmovups_store(ops, Rm::at(2, 64), 11)), vec![0x62, 0x71, 0x7C, 0x48, 0x11, 0x9A, 0x40, 0x00, 0x00, 0x00]),
            ("vmovups zmmword ptr [rsp+320], zmm5", bytes(|ops| vmovups_store(ops, Rm::at(4, 320), 5)), vec![0x62, 0xF1, 0x7C, 0x48, 0x11, 0xAC, 0x24, 0x40, 0x01, 0x00, 0x00]),
            ("vmovups zmmword ptr [r13-64], zmm20", bytes(|ops| vmovups_store(ops, Rm::at(13, -64), 20)), vec![0x62, 0xC1, 0x7C, 0x48, 0x11, 0xA5, 0xC0, 0xFF, 0xFF, 0xFF]),
            ("vmovups zmmword ptr [r12+0], zmm15", bytes(|ops| vmovups_store(ops, Rm::at(12, 0), 15)), vec![0x62, 0x51, 0x7C, 0x48, 0x11, 0xBC, 0x24, 0x00, 0x00, 0x00, 0x00]),
            ("vmovups zmmword ptr [rbx+r14+8], zmm1", bytes(|ops| vmovups_store(ops, Rm::at_index(3, 14, 8), 1)), vec![0x62, 0xB1, 0x7C, 0x48, 0x11, 0x8C, 0x33, 0x08, 0x00, 0x00, 0x00]),
            ("vbroadcastss zmm14, dword ptr [r9+r14+0]", bytes(|ops| vbroadcastss(ops, 14, Rm::at_index(9, 14, 0))), vec![0x62, 0x12, 0x7D, 0x48, 0x18, 0xB4, 0x31, 0x00, 0x00, 0x00, 0x00]),
            ("vbroadcastss zmm15, dword ptr [rbx+r14+4]", bytes(|ops| vbroadcastss(ops, 15, Rm::at_index(3, 14, 4))), vec![0x62, 0x32, 0x7D, 0x48, 0x18, 0xBC, 0x33, 0x04, 0x00, 0x00, 0x00]),
            ("vbroadcastss zmm2, dword ptr [r13+r14-8]", bytes(|ops| vbroadcastss(ops, 2, Rm::at_index(13, 14, -8))), vec![0x62, 0x92, 0x7D, 0x48, 0x18, 0x94, 0x35, 0xF8, 0xFF, 0xFF, 0xFF]),
            ("vbroadcastss zmm30, dword ptr [r10+r14+12]", bytes(|ops| vbroadcastss(ops, 30, Rm::at_index(10, 14, 12))), vec![0x62, 0x02, 0x7D, 0x48, 0x18, 0xB4, 0x32, 0x0C, 0x00, 0x00, 0x00]),
            ("vbroadcastss zmm17, dword ptr [r11+r14+1024]", bytes(|ops| vbroadcastss(ops, 17, Rm::at_index(11, 14, 1024))), vec![0x62, 0x82, 0x7D, 0x48, 0x18, 0x8C, 0x33, 0x00, 0x04, 0x00, 0x00]),
            ("vbroadcastss zmm14, dword ptr [r12+r14+0]", bytes(|ops| vbroadcastss(ops, 14, Rm::at_index(12, 14, 0))), vec![0x62, 0x12, 0x7D, 0x48, 0x18, 0xB4, 0x34, 0x00, 0x00, 0x00, 0x00]),
            ("vbroadcastss zmm15, dword ptr [rbp+4]", bytes(|ops| vbroadcastss(ops, 15, Rm::at(5, 4))), vec![0x62, 0x72, 0x7D, 0x48, 0x18, 0xBD, 0x04, 0x00, 0x00, 0x00]),
            ("vbroadcastss zmm22, dword ptr [rsp+8]", bytes(|ops| vbroadcastss(ops, 22, Rm::at(4, 8))), vec![0x62, 0xE2, 0x7D, 0x48, 0x18, 0xB4, 0x24, 0x08, 0x00, 0x00, 0x00]),
            ("vfmadd231ps zmm0, zmm12, zmm14", bytes(|ops| vfmadd231ps(ops, 0, 12, Rm::Reg(14))), vec![0x62, 0xD2, 0x1D, 0x48, 0xB8, 0xC6]),
            ("vfmadd231ps zmm11, zmm13, zmm15", bytes(|ops| vfmadd231ps(ops, 11, 13, Rm::Reg(15))), vec![0x62, 0x52, 0x15, 0x48, 0xB8, 0xDF]),
            ("vfmadd231ps zmm3, zmm12, zmm31", bytes(|ops| vfmadd231ps(ops, 3, 12, Rm::Reg(31))), vec![0x62, 0x92, 0x1D, 0x48, 0xB8, 0xDF]),
            ("vfmadd231ps zmm16, zmm28, zmm9", bytes(|ops| vfmadd231ps(ops, 16, 28, Rm::Reg(9))), vec![0x62, 0xC2, 0x1D, 0x40, 0xB8, 0xC1]),
            ("vfmadd231ps zmm31, zmm30, zmm29", bytes(|ops| vfmadd231ps(ops, 31, 30, Rm::Reg(29))), vec![0x62, 0x02, 0x0D, 0x40, 0xB8, 0xFD]),
            ("vfmadd231ps zmm7, zmm20, zmm0", bytes(|ops| vfmadd231ps(ops, 7, 20, Rm::Reg(0))), vec![0x62, 0xF2, 0x5D, 0x40, 0xB8, 0xF8]),
            ("vfmadd231ps zmm4, zmm12, zmmword ptr [rsi+128]", bytes(|ops| vfmadd231ps(ops, 4, 12, Rm::at(6, 128))), vec![0x62, 0xF2, 0x1D, 0x48, 0xB8, 0xA6, 0x80, 0x00, 0x00, 0x00]),
            ("vaddps zmm0, zmm0, zmm12", bytes(|ops| vaddps(ops, 0, 0, Rm::Reg(12))), vec![0x62, 0xD1, 0x7C, 0x48, 0x58, 0xC4]),
            ("vaddps zmm11, zmm11, zmm13", bytes(|ops| vaddps(ops, 11, 11, Rm::Reg(13))), vec![0x62, 0x51, 0x24, 0x48, 0x58, 0xDD]),
            ("vaddps zmm5, zmm5, zmmword ptr [rsp+64]", bytes(|ops| vaddps(ops, 5, 5, Rm::at(4, 64))), vec![0x62, 0xF1, 0x54, 0x48, 0x58, 0xAC, 0x24, 0x40, 0x00, 0x00, 0x00]),
            ("vaddps zmm9, zmm9, zmmword ptr [rdx+64]", bytes(|ops| vaddps(ops, 9, 9, Rm::at(2, 64))), vec![0x62, 0x71, 0x34, 0x48, 0x58, 0x8A, 0x40, 0x00, 0x00, 0x00]),
            ("vaddps zmm23, zmm17, zmm30", bytes(|ops| vaddps(ops, 23, 17, Rm::Reg(30))), vec![0x62, 0x81, 0x74, 0x40, 0x58, 0xFE]),
            ("vaddps zmm2, zmm2, zmmword ptr [r14+0]", bytes(|ops| vaddps(ops, 2, 2, Rm::at(14, 0))), vec![0x62, 0xD1, 0x6C, 0x48, 0x58, 0x96, 0x00, 0x00, 0x00, 0x00]),
            ("vmaxps zmm0, zmm0, zmm15", bytes(|ops| vmaxps(ops, 0, 0, Rm::Reg(15))), vec![0x62, 0xD1, 0x7C, 0x48, 0x5F, 0xC7]),
            ("vmaxps zmm11, zmm11, zmm15", bytes(|ops| vmaxps(ops, 11, 11, Rm::Reg(15))), vec![0x62, 0x51, 0x24, 0x48, 0x5F, 0xDF]),
            ("vmaxps zmm20, zmm20, zmm31", bytes(|ops| vmaxps(ops, 20, 20, Rm::Reg(31))), vec![0x62, 0x81, 0x5C, 0x40, 0x5F, 0xE7]),
            ("vmulps zmm3{k1}, zmm3, zmm14", bytes(|ops| vmulps_masked(ops, 3, 1, 3, Rm::Reg(14))), vec![0x62, 0xD1, 0x64, 0x49, 0x59, 0xDE]),
            ("vmulps zmm11{k1}, zmm11, zmm14", bytes(|ops| vmulps_masked(ops, 11, 1, 11, Rm::Reg(14))), vec![0x62, 0x51, 0x24, 0x49, 0x59, 0xDE]),
            ("vmulps zmm19{k2}, zmm19, zmm30", bytes(|ops| vmulps_masked(ops, 19, 2, 19, Rm::Reg(30))), vec![0x62, 0x81, 0x64, 0x42, 0x59, 0xDE]),
            ("vpxord zmm0, zmm0, zmm0", bytes(|ops| vpxord(ops, 0, 0, 0)), vec![0x62, 0xF1, 0x7D, 0x48, 0xEF, 0xC0]),
            ("vpxord zmm11, zmm11, zmm11", bytes(|ops| vpxord(ops, 11, 11, 11)), vec![0x62, 0x51, 0x25, 0x48, 0xEF, 0xDB]),
            ("vpxord zmm15, zmm15, zmm15", bytes(|ops| vpxord(ops, 15, 15, 15)), vec![0x62, 0x51, 0x05, 0x48, 0xEF, 0xFF]),
            ("vpxord zmm16, zmm16, zmm16", bytes(|ops| vpxord(ops, 16, 16, 16)), vec![0x62, 0xA1, 0x7D, 0x40, 0xEF, 0xC0]),
            ("vpxord zmm31, zmm31, zmm31", bytes(|ops| vpxord(ops, 31, 31, 31)), vec![0x62, 0x01, 0x05, 0x40, 0xEF, 0xFF]),
            ("vpxord zmm5, zmm12, zmm27", bytes(|ops| vpxord(ops, 5, 12, 27)), vec![0x62, 0x91, 0x1D, 0x48, 0xEF, 0xEB]),
            ("vpcmpgtd k1, zmm15, zmm3", bytes(|ops| vpcmpgtd(ops, 1, 15, 3)), vec![0x62, 0xF1, 0x05, 0x48, 0x66, 0xCB]),
            ("vpcmpgtd k1, zmm15, zmm11", bytes(|ops| vpcmpgtd(ops, 1, 15, 11)), vec![0x62, 0xD1, 0x05, 0x48, 0x66, 0xCB]),
            ("vpcmpgtd k2, zmm31, zmm16", bytes(|ops| vpcmpgtd(ops, 2, 31, 16)), vec![0x62, 0xB1, 0x05, 0x40, 0x66, 0xD0]),
            ("vpcmpgtd k7, zmm8, zmm0", bytes(|ops| vpcmpgtd(ops, 7, 8, 0)), vec![0x62, 0xF1, 0x3D, 0x48, 0x66, 0xF8]),
            ("vpbroadcastd zmm14, eax", bytes(|ops| vpbroadcastd_gpr(ops, 14, 0)), vec![0x62, 0x72, 0x7D, 0x48, 0x7C, 0xF0]),
            ("vpbroadcastd zmm30, eax", bytes(|ops| vpbroadcastd_gpr(ops, 30, 0)), vec![0x62, 0x62, 0x7D, 0x48, 0x7C, 0xF0]),
            ("vpbroadcastd zmm3, r9d", bytes(|ops| vpbroadcastd_gpr(ops, 3, 9)), vec![0x62, 0xD2, 0x7D, 0x48, 0x7C, 0xD9]),
        ];
        same_bytes(cases);
    }

    /// The forms of the `zmm` loop kernels (`loops::avx2`), likewise.
    #[test]
    fn loop_forms_match_gnu_as() {
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
            ("vaddps zmm0, zmm0, zmm12", bytes(|ops| op3(ops, VADDPS, 0, 0, Rm::Reg(12))), vec![0x62, 0xD1, 0x7C, 0x48, 0x58, 0xC4]),
            ("vaddps zmm7, zmm0, zmmword ptr [rbx+64]", bytes(|ops| op3(ops, VADDPS, 7, 0, Rm::at(3, 64))), vec![0x62, 0xF1, 0x7C, 0x48, 0x58, 0xBB, 0x40, 0x00, 0x00, 0x00]),
            ("vsubps zmm11, zmm3, zmm15", bytes(|ops| op3(ops, VSUBPS, 11, 3, Rm::Reg(15))), vec![0x62, 0x51, 0x64, 0x48, 0x5C, 0xDF]),
            ("vsubps zmm2, zmm3, zmmword ptr [rsp+128]", bytes(|ops| op3(ops, VSUBPS, 2, 3, Rm::at(4, 128))), vec![0x62, 0xF1, 0x64, 0x48, 0x5C, 0x94, 0x24, 0x80, 0x00, 0x00, 0x00]),
            ("vmulps zmm9, zmm14, zmm2", bytes(|ops| op3(ops, VMULPS, 9, 14, Rm::Reg(2))), vec![0x62, 0x71, 0x0C, 0x48, 0x59, 0xCA]),
            ("vmulps zmm0, zmm14, zmmword ptr [r13-64]", bytes(|ops| op3(ops, VMULPS, 0, 14, Rm::at(13, -64))), vec![0x62, 0xD1, 0x0C, 0x48, 0x59, 0x85, 0xC0, 0xFF, 0xFF, 0xFF]),
            ("vdivps zmm5, zmm8, zmm8", bytes(|ops| op3(ops, VDIVPS, 5, 8, Rm::Reg(8))), vec![0x62, 0xD1, 0x3C, 0x48, 0x5E, 0xE8]),
            ("vdivps zmm12, zmm8, zmmword ptr [r12+0]", bytes(|ops| op3(ops, VDIVPS, 12, 8, Rm::at(12, 0))), vec![0x62, 0x51, 0x3C, 0x48, 0x5E, 0xA4, 0x24, 0x00, 0x00, 0x00, 0x00]),
            ("vmaxps zmm0, zmm0, zmm12", bytes(|ops| op3(ops, VMAXPS, 0, 0, Rm::Reg(12))), vec![0x62, 0xD1, 0x7C, 0x48, 0x5F, 0xC4]),
            ("vmaxps zmm7, zmm0, zmmword ptr [rsi+4]", bytes(|ops| op3(ops, VMAXPS, 7, 0, Rm::at(6, 4))), vec![0x62, 0xF1, 0x7C, 0x48, 0x5F, 0xBE, 0x04, 0x00, 0x00, 0x00]),
            ("vminps zmm11, zmm3, zmm15", bytes(|ops| op3(ops, VMINPS, 11, 3, Rm::Reg(15))), vec![0x62, 0x51, 0x64, 0x48, 0x5D, 0xDF]),
            ("vminps zmm2, zmm3, zmmword ptr [rbx+64]", bytes(|ops| op3(ops, VMINPS, 2, 3, Rm::at(3, 64))), vec![0x62, 0xF1, 0x64, 0x48, 0x5D, 0x93, 0x40, 0x00, 0x00, 0x00]),
            ("vpandd zmm9, zmm14, zmm2", bytes(|ops| op3(ops, VPANDD, 9, 14, Rm::Reg(2))), vec![0x62, 0x71, 0x0D, 0x48, 0xDB, 0xCA]),
            ("vpandd zmm0, zmm14, zmmword ptr [rsp+128]", bytes(|ops| op3(ops, VPANDD, 0, 14, Rm::at(4, 128))), vec![0x62, 0xF1, 0x0D, 0x48, 0xDB, 0x84, 0x24, 0x80, 0x00, 0x00, 0x00]),
            ("vpord zmm5, zmm8, zmm8", bytes(|ops| op3(ops, VPORD, 5, 8, Rm::Reg(8))), vec![0x62, 0xD1, 0x3D, 0x48, 0xEB, 0xE8]),
            ("vpord zmm12, zmm8, zmmword ptr [r13-64]", bytes(|ops| op3(ops, VPORD, 12, 8, Rm::at(13, -64))), vec![0x62, 0x51, 0x3D, 0x48, 0xEB, 0xA5, 0xC0, 0xFF, 0xFF, 0xFF]),
            ("vpxord zmm0, zmm0, zmm12", bytes(|ops| op3(ops, VPXORD, 0, 0, Rm::Reg(12))), vec![0x62, 0xD1, 0x7D, 0x48, 0xEF, 0xC4]),
            ("vpxord zmm7, zmm0, zmmword ptr [r12+0]", bytes(|ops| op3(ops, VPXORD, 7, 0, Rm::at(12, 0))), vec![0x62, 0xD1, 0x7D, 0x48, 0xEF, 0xBC, 0x24, 0x00, 0x00, 0x00, 0x00]),
            ("vpaddd zmm11, zmm3, zmm15", bytes(|ops| op3(ops, VPADDD, 11, 3, Rm::Reg(15))), vec![0x62, 0x51, 0x65, 0x48, 0xFE, 0xDF]),
            ("vpaddd zmm2, zmm3, zmmword ptr [rsi+4]", bytes(|ops| op3(ops, VPADDD, 2, 3, Rm::at(6, 4))), vec![0x62, 0xF1, 0x65, 0x48, 0xFE, 0x96, 0x04, 0x00, 0x00, 0x00]),
            ("vpsubd zmm9, zmm14, zmm2", bytes(|ops| op3(ops, VPSUBD, 9, 14, Rm::Reg(2))), vec![0x62, 0x71, 0x0D, 0x48, 0xFA, 0xCA]),
            ("vpsubd zmm0, zmm14, zmmword ptr [rbx+64]", bytes(|ops| op3(ops, VPSUBD, 0, 14, Rm::at(3, 64))), vec![0x62, 0xF1, 0x0D, 0x48, 0xFA, 0x83, 0x40, 0x00, 0x00, 0x00]),
            ("vmovaps zmm0, zmm1", bytes(|ops| vmovaps(ops, 0, 1)), vec![0x62, 0xF1, 0x7C, 0x48, 0x28, 0xC1]),
            ("vmovaps zmm9, zmm2", bytes(|ops| vmovaps(ops, 9, 2)), vec![0x62, 0x71, 0x7C, 0x48, 0x28, 0xCA]),
            ("vmovaps zmm3, zmm14", bytes(|ops| vmovaps(ops, 3, 14)), vec![0x62, 0xD1, 0x7C, 0x48, 0x28, 0xDE]),
            ("vmovaps zmm15, zmm15", bytes(|ops| vmovaps(ops, 15, 15)), vec![0x62, 0x51, 0x7C, 0x48, 0x28, 0xFF]),
            ("vsqrtps zmm0, zmm1", bytes(|ops| vsqrtps(ops, 0, Rm::Reg(1))), vec![0x62, 0xF1, 0x7C, 0x48, 0x51, 0xC1]),
            ("vsqrtps zmm9, zmm9", bytes(|ops| vsqrtps(ops, 9, Rm::Reg(9))), vec![0x62, 0x51, 0x7C, 0x48, 0x51, 0xC9]),
            ("vsqrtps zmm3, zmm14", bytes(|ops| vsqrtps(ops, 3, Rm::Reg(14))), vec![0x62, 0xD1, 0x7C, 0x48, 0x51, 0xDE]),
            ("vsqrtps zmm12, zmmword ptr [rbx+192]", bytes(|ops| vsqrtps(ops, 12, Rm::at(3, 192))), vec![0x62, 0x71, 0x7C, 0x48, 0x51, 0xA3, 0xC0, 0x00, 0x00, 0x00]),
            ("vpsrad zmm0, zmm1, 1", bytes(|ops| vpsrad(ops, 0, 1, 1)), vec![0x62, 0xF1, 0x7D, 0x48, 0x72, 0xE1, 0x01]),
            ("vpsrad zmm9, zmm9, 1", bytes(|ops| vpsrad(ops, 9, 9, 1)), vec![0x62, 0xD1, 0x35, 0x48, 0x72, 0xE1, 0x01]),
            ("vpsrad zmm3, zmm14, 31", bytes(|ops| vpsrad(ops, 3, 14, 31)), vec![0x62, 0xD1, 0x65, 0x48, 0x72, 0xE6, 0x1F]),
            ("vpslld zmm0, zmm1, 23", bytes(|ops| vpslld(ops, 0, 1, 23)), vec![0x62, 0xF1, 0x7D, 0x48, 0x72, 0xF1, 0x17]),
            ("vpslld zmm9, zmm9, 23", bytes(|ops| vpslld(ops, 9, 9, 23)), vec![0x62, 0xD1, 0x35, 0x48, 0x72, 0xF1, 0x17]),
            ("vpslld zmm13, zmm4, 3", bytes(|ops| vpslld(ops, 13, 4, 3)), vec![0x62, 0xF1, 0x15, 0x48, 0x72, 0xF4, 0x03]),
            ("vcmpps k1, zmm0, zmm12, 1", bytes(|ops| vcmpps(ops, 1, 0, Rm::Reg(12), 1)), vec![0x62, 0xD1, 0x7C, 0x48, 0xC2, 0xCC, 0x01]),
            ("vcmpps k2, zmm9, zmm9, 3", bytes(|ops| vcmpps(ops, 2, 9, Rm::Reg(9), 3)), vec![0x62, 0xD1, 0x34, 0x48, 0xC2, 0xD1, 0x03]),
            ("vcmpps k1, zmm14, zmm3, 13", bytes(|ops| vcmpps(ops, 1, 14, Rm::Reg(3), 13)), vec![0x62, 0xF1, 0x0C, 0x48, 0xC2, 0xCB, 0x0D]),
            ("vcmpps k7, zmm5, zmm10, 14", bytes(|ops| vcmpps(ops, 7, 5, Rm::Reg(10), 14)), vec![0x62, 0xD1, 0x54, 0x48, 0xC2, 0xFA, 0x0E]),
            ("vcmpps k1, zmm3, zmmword ptr [rbx+64], 1", bytes(|ops| vcmpps(ops, 1, 3, Rm::at(3, 64), 1)), vec![0x62, 0xF1, 0x64, 0x48, 0xC2, 0x8B, 0x40, 0x00, 0x00, 0x00, 0x01]),
            ("vcmpps k2, zmm12, zmmword ptr [rsp+256], 14", bytes(|ops| vcmpps(ops, 2, 12, Rm::at(4, 256), 14)), vec![0x62, 0xF1, 0x1C, 0x48, 0xC2, 0x94, 0x24, 0x00, 0x01, 0x00, 0x00, 0x0E]),
            ("vcmpps k1, zmm8, zmmword ptr [r12-4], 3", bytes(|ops| vcmpps(ops, 1, 8, Rm::at(12, -4), 3)), vec![0x62, 0xD1, 0x3C, 0x48, 0xC2, 0x8C, 0x24, 0xFC, 0xFF, 0xFF, 0xFF, 0x03]),
            ("vpmovm2d zmm0, k1", bytes(|ops| vpmovm2d(ops, 0, 1)), vec![0x62, 0xF2, 0x7E, 0x48, 0x38, 0xC1]),
            ("vpmovm2d zmm9, k2", bytes(|ops| vpmovm2d(ops, 9, 2)), vec![0x62, 0x72, 0x7E, 0x48, 0x38, 0xCA]),
            ("vpmovm2d zmm15, k7", bytes(|ops| vpmovm2d(ops, 15, 7)), vec![0x62, 0x72, 0x7E, 0x48, 0x38, 0xFF]),
            ("vpmovd2m k1, zmm0", bytes(|ops| vpmovd2m(ops, 1, 0)), vec![0x62, 0xF2, 0x7E, 0x48, 0x39, 0xC8]),
            ("vpmovd2m k2, zmm9", bytes(|ops| vpmovd2m(ops, 2, 9)), vec![0x62, 0xD2, 0x7E, 0x48, 0x39, 0xD1]),
            ("vpmovd2m k7, zmm15", bytes(|ops| vpmovd2m(ops, 7, 15)), vec![0x62, 0xD2, 0x7E, 0x48, 0x39, 0xFF]),
            ("vblendmps zmm0{k1}, zmm0, zmm12", bytes(|ops| vblendmps(ops, 0, 1, 0, Rm::Reg(12))), vec![0x62, 0xD2, 0x7D, 0x49, 0x65, 0xC4]),
            ("vblendmps zmm9{k1}, zmm9, zmm3", bytes(|ops| vblendmps(ops, 9, 1, 9, Rm::Reg(3))), vec![0x62, 0x72, 0x35, 0x49, 0x65, 0xCB]),
            ("vblendmps zmm13{k2}, zmm4, zmm14", bytes(|ops| vblendmps(ops, 13, 2, 4, Rm::Reg(14))), vec![0x62, 0x52, 0x5D, 0x4A, 0x65, 0xEE]),
            ("vblendmps zmm2{k1}, zmm2, zmmword ptr [rbx+128]", bytes(|ops| vblendmps(ops, 2, 1, 2, Rm::at(3, 128))), vec![0x62, 0xF2, 0x6D, 0x49, 0x65, 0x93, 0x80, 0x00, 0x00, 0x00]),
            ("vblendmps zmm11{k1}, zmm11, zmmword ptr [rsp+64]", bytes(|ops| vblendmps(ops, 11, 1, 11, Rm::at(4, 64))), vec![0x62, 0x72, 0x25, 0x49, 0x65, 0x9C, 0x24, 0x40, 0x00, 0x00, 0x00]),
            ("vblendmps zmm5{k3}, zmm6, zmmword ptr [r13-32]", bytes(|ops| vblendmps(ops, 5, 3, 6, Rm::at(13, -32))), vec![0x62, 0xD2, 0x4D, 0x4B, 0x65, 0xAD, 0xE0, 0xFF, 0xFF, 0xFF]),

        ];
        same_bytes(cases);
    }

    /// The loop forms with registers 16–31 (the `zmm` steps of four
    /// vectors allocate them): the fourth register bits (EVEX.R', V', X as
    /// the fifth bit of a register r/m) likewise against GNU `as`.
    #[test]
    fn high_registers_match_gnu_as() {
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
            ("vaddps zmm16, zmm17, zmm31", bytes(|ops| op3(ops, VADDPS, 16, 17, Rm::Reg(31))), vec![0x62, 0x81, 0x74, 0x40, 0x58, 0xC7]),
            ("vmulps zmm31, zmm0, zmm20", bytes(|ops| op3(ops, VMULPS, 31, 0, Rm::Reg(20))), vec![0x62, 0x21, 0x7C, 0x48, 0x59, 0xFC]),
            ("vdivps zmm3, zmm24, zmm9", bytes(|ops| op3(ops, VDIVPS, 3, 24, Rm::Reg(9))), vec![0x62, 0xD1, 0x3C, 0x40, 0x5E, 0xD9]),
            ("vsubps zmm21, zmm30, zmmword ptr [rbx+64]", bytes(|ops| op3(ops, VSUBPS, 21, 30, Rm::at(3, 64))), vec![0x62, 0xE1, 0x0C, 0x40, 0x5C, 0xAB, 0x40, 0x00, 0x00, 0x00]),
            ("vpandd zmm28, zmm15, zmm16", bytes(|ops| op3(ops, VPANDD, 28, 15, Rm::Reg(16))), vec![0x62, 0x21, 0x05, 0x48, 0xDB, 0xE0]),
            ("vpaddd zmm8, zmm23, zmmword ptr [r13-64]", bytes(|ops| op3(ops, VPADDD, 8, 23, Rm::at(13, -64))), vec![0x62, 0x51, 0x45, 0x40, 0xFE, 0x85, 0xC0, 0xFF, 0xFF, 0xFF]),
            ("vmovaps zmm16, zmm31", bytes(|ops| vmovaps(ops, 16, 31)), vec![0x62, 0x81, 0x7C, 0x48, 0x28, 0xC7]),
            ("vmovaps zmm5, zmm27", bytes(|ops| vmovaps(ops, 5, 27)), vec![0x62, 0x91, 0x7C, 0x48, 0x28, 0xEB]),
            ("vsqrtps zmm18, zmm25", bytes(|ops| vsqrtps(ops, 18, Rm::Reg(25))), vec![0x62, 0x81, 0x7C, 0x48, 0x51, 0xD1]),
            ("vsqrtps zmm29, zmmword ptr [rsp+128]", bytes(|ops| vsqrtps(ops, 29, Rm::at(4, 128))), vec![0x62, 0x61, 0x7C, 0x48, 0x51, 0xAC, 0x24, 0x80, 0x00, 0x00, 0x00]),
            ("vpsrad zmm17, zmm26, 1", bytes(|ops| vpsrad(ops, 17, 26, 1)), vec![0x62, 0x91, 0x75, 0x40, 0x72, 0xE2, 0x01]),
            ("vpslld zmm30, zmm19, 23", bytes(|ops| vpslld(ops, 30, 19, 23)), vec![0x62, 0xB1, 0x0D, 0x40, 0x72, 0xF3, 0x17]),
            ("vpslld zmm2, zmm16, 23", bytes(|ops| vpslld(ops, 2, 16, 23)), vec![0x62, 0xB1, 0x6D, 0x48, 0x72, 0xF0, 0x17]),
            ("vcmpps k1, zmm16, zmm31, 1", bytes(|ops| vcmpps(ops, 1, 16, Rm::Reg(31), 1)), vec![0x62, 0x91, 0x7C, 0x40, 0xC2, 0xCF, 0x01]),
            ("vcmpps k3, zmm23, zmmword ptr [rbx+64], 14", bytes(|ops| vcmpps(ops, 3, 23, Rm::at(3, 64), 14)), vec![0x62, 0xF1, 0x44, 0x40, 0xC2, 0x9B, 0x40, 0x00, 0x00, 0x00, 0x0E]),
            ("vcmpps k2, zmm4, zmm20, 3", bytes(|ops| vcmpps(ops, 2, 4, Rm::Reg(20), 3)), vec![0x62, 0xB1, 0x5C, 0x48, 0xC2, 0xD4, 0x03]),
            ("vpmovm2d zmm16, k1", bytes(|ops| vpmovm2d(ops, 16, 1)), vec![0x62, 0xE2, 0x7E, 0x48, 0x38, 0xC1]),
            ("vpmovm2d zmm31, k7", bytes(|ops| vpmovm2d(ops, 31, 7)), vec![0x62, 0x62, 0x7E, 0x48, 0x38, 0xFF]),
            ("vpmovd2m k2, zmm16", bytes(|ops| vpmovd2m(ops, 2, 16)), vec![0x62, 0xB2, 0x7E, 0x48, 0x39, 0xD0]),
            ("vpmovd2m k7, zmm31", bytes(|ops| vpmovd2m(ops, 7, 31)), vec![0x62, 0x92, 0x7E, 0x48, 0x39, 0xFF]),
            ("vblendmps zmm16{k1}, zmm17, zmm31", bytes(|ops| vblendmps(ops, 16, 1, 17, Rm::Reg(31))), vec![0x62, 0x82, 0x75, 0x41, 0x65, 0xC7]),
            ("vblendmps zmm22{k3}, zmm22, zmmword ptr [rsp+64]", bytes(|ops| vblendmps(ops, 22, 3, 22, Rm::at(4, 64))), vec![0x62, 0xE2, 0x4D, 0x43, 0x65, 0xB4, 0x24, 0x40, 0x00, 0x00, 0x00]),
            ("vblendmps zmm4{k1}, zmm24, zmm12", bytes(|ops| vblendmps(ops, 4, 1, 24, Rm::Reg(12))), vec![0x62, 0xD2, 0x3D, 0x41, 0x65, 0xE4]),
            ("vmovups zmm16, zmmword ptr [r13+64]", bytes(|ops| vmovups_load(ops, 16, Rm::at(13, 64))), vec![0x62, 0xC1, 0x7C, 0x48, 0x10, 0x85, 0x40, 0x00, 0x00, 0x00]),
            ("vmovups zmmword ptr [rsp+0], zmm31", bytes(|ops| vmovups_store(ops, Rm::at(4, 0), 31)), vec![0x62, 0x61, 0x7C, 0x48, 0x11, 0xBC, 0x24, 0x00, 0x00, 0x00, 0x00]),
            ("vbroadcastss zmm27, dword ptr [r12+8]", bytes(|ops| vbroadcastss(ops, 27, Rm::at(12, 8))), vec![0x62, 0x42, 0x7D, 0x48, 0x18, 0x9C, 0x24, 0x08, 0x00, 0x00, 0x00]),
        ];
        same_bytes(cases);
    }
}
