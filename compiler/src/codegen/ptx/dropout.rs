//! Dropout masks generated on the GPU: one PTX entry per mask input of a
//! training program, computing exactly [`crate::dropout::fill_mask`]
//! (SplitMix64 at a counter, see [`crate::dropout`]) so a GPU run draws
//! the CPU's masks and no mask is copied from the host.
//!
//! Entry `dropout_mask<m>(mask, keys)` writes element `i` of `mask` (one
//! thread per element) from the 64-bit key at `keys[m]`: the host writes
//! the step's keys ([`crate::dropout::mask_key`], one `u64` per mask)
//! before the launch, so the launch itself never changes between steps
//! (it can be replayed from a CUDA graph). The mask's length and drop
//! threshold are constants of the entry.

use super::module::{PTX_TARGET, PTX_VERSION};
use super::PtxError;
use crate::dropout::{drop_threshold, GAMMA, MIX1, MIX2};
use std::fmt::Write;

/// Threads per block of a mask entry.
pub const MASK_BLOCK: u32 = 256;

/// One mask entry of a [`DropoutModule`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskEntry {
    /// The PTX entry's name.
    pub entry: String,
    /// The mask's number (its key is `keys[mask]`).
    pub mask: u32,
    /// Elements of the mask.
    pub len: usize,
    /// Drop threshold ([`drop_threshold`] of the rate).
    pub threshold: u32,
    /// Blocks of [`MASK_BLOCK`] threads: one thread per element.
    pub grid: u32,
}

/// The mask entries of one training program as a PTX module.
#[derive(Clone, Debug)]
pub struct DropoutModule {
    /// The module's text.
    pub text: String,
    /// One entry per mask, in mask order.
    pub entries: Vec<MaskEntry>,
}

/// The PTX of masks of `(length, drop rate)`, numbered in order.
pub fn dropout_ptx(masks: &[(usize, f32)]) -> Result<DropoutModule, PtxError> {
    let mut text = String::new();
    let _ = writeln!(text, "// netc: dropout masks (SplitMix64 at a counter)");
    let _ = writeln!(
        text,
        ".version {PTX_VERSION}\n.target {PTX_TARGET}\n.address_size 64\n"
    );
    let mut entries = Vec::with_capacity(masks.len());
    for (m, &(len, rate)) in masks.iter().enumerate() {
        // Thread numbers are 32-bit (`mul.wide.u32` below).
        let grid = u32::try_from(len.div_ceil(MASK_BLOCK as usize).max(1))
            .map_err(|_| PtxError::TooLarge)?;
        let e = MaskEntry {
            entry: format!("dropout_mask{m}"),
            mask: m as u32,
            len,
            threshold: drop_threshold(rate),
            grid,
        };
        entry(&mut text, &e);
        entries.push(e);
    }
    Ok(DropoutModule { text, entries })
}

/// A 64-bit constant as PTX reads it (a signed decimal literal: the bit
/// pattern is what `mul.lo.u64` and `add.s64` use).
fn lit(x: u64) -> i64 {
    x as i64
}

fn entry(out: &mut String, e: &MaskEntry) {
    let name = &e.entry;
    let _ = writeln!(
        out,
        "// launch {name}: grid ({}, 1, 1), block ({MASK_BLOCK}, 1, 1), mask {} of {} elements\n\
         .visible .entry {name}(\n\t.param .u64 {name}_param_0,\n\t.param .u64 {name}_param_1\n)\n\
         .maxntid {MASK_BLOCK}, 1, 1\n{{",
        e.grid, e.mask, e.len
    );
    let body = [
        ".reg .pred %p<2>".to_string(),
        ".reg .b32 %r<4>".to_string(),
        ".reg .f32 %f<2>".to_string(),
        ".reg .b64 %rd<12>".to_string(),
        format!("ld.param.u64 %rd1, [{name}_param_0]"),
        "cvta.to.global.u64 %rd1, %rd1".to_string(),
        format!("ld.param.u64 %rd2, [{name}_param_1]"),
        "cvta.to.global.u64 %rd2, %rd2".to_string(),
        // i = ctaid·ntid + tid; threads past the mask's end do nothing.
        "mov.u32 %r1, %ctaid.x".to_string(),
        "mov.u32 %r2, %ntid.x".to_string(),
        "mov.u32 %r3, %tid.x".to_string(),
        "mul.wide.u32 %rd3, %r1, %r2".to_string(),
        "cvt.u64.u32 %rd4, %r3".to_string(),
        "add.s64 %rd3, %rd3, %rd4".to_string(),
        format!("setp.ge.u64 %p1, %rd3, {}", e.len),
        "@%p1 ret".to_string(),
        // z = key + (i + 1)·γ, then SplitMix64's finalizer.
        format!("ld.global.u64 %rd5, [%rd2+{}]", 8 * e.mask),
        "add.s64 %rd6, %rd3, 1".to_string(),
        format!("mul.lo.u64 %rd6, %rd6, {}", lit(GAMMA)),
        "add.s64 %rd6, %rd6, %rd5".to_string(),
        "shr.u64 %rd7, %rd6, 30".to_string(),
        "xor.b64 %rd6, %rd6, %rd7".to_string(),
        format!("mul.lo.u64 %rd6, %rd6, {}", lit(MIX1)),
        "shr.u64 %rd7, %rd6, 27".to_string(),
        "xor.b64 %rd6, %rd6, %rd7".to_string(),
        format!("mul.lo.u64 %rd6, %rd6, {}", lit(MIX2)),
        "shr.u64 %rd7, %rd6, 31".to_string(),
        "xor.b64 %rd6, %rd6, %rd7".to_string(),
        // Dropped when the top 24 bits are below the threshold.
        "shr.u64 %rd8, %rd6, 40".to_string(),
        format!("setp.lt.u64 %p1, %rd8, {}", e.threshold),
        "selp.f32 %f1, 0f00000000, 0f3F800000, %p1".to_string(),
        "shl.b64 %rd9, %rd3, 2".to_string(),
        "add.s64 %rd9, %rd1, %rd9".to_string(),
        "st.global.f32 [%rd9], %f1".to_string(),
        "ret".to_string(),
    ];
    for l in body {
        let _ = writeln!(out, "\t{l};");
    }
    let _ = writeln!(out, "}}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_mask_with_its_geometry() {
        let m = dropout_ptx(&[(1000, 0.5), (256, 0.1)]).unwrap();
        assert_eq!(m.entries.len(), 2);
        assert_eq!(m.entries[0].grid, 4);
        assert_eq!(m.entries[1].grid, 1);
        assert_eq!(m.entries[1].threshold, drop_threshold(0.1));
        assert!(m.text.contains(".visible .entry dropout_mask1("));
        assert!(!m.text.contains("div."), "no division in a mask kernel");
    }
}
