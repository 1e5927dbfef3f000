//! The cost model: memory traffic. A kernel costs the elements it reads
//! plus the elements it writes (per example; parameters counted once),
//! plus a fixed [`KERNEL`] overhead, so fusing two passes into one is
//! always cheaper. Aliases (flatten, reshape, inference dropout, time
//! slices read in place) cost [`ALIAS`]: almost free, but removing one
//! still lowers the cost.

use super::lang::{node_op, TensorGraph, TensorLang};
use crate::graph::Graph;
use crate::op::{CellKind, Op, Padding};
use crate::shape::Shape;
use egg::{CostFunction, Id, Language};

/// Fixed cost of launching one kernel, in element-equivalents.
pub const KERNEL: f64 = 64.0;

/// Cost of an alias (no kernel, no traffic).
pub const ALIAS: f64 = 1.0;

/// A whole recurrent layer is opaque to autodiff and fusion; it is costed
/// at this multiple of its traffic, so the unrolled cells (the same
/// traffic) are preferred whenever unrolling applies.
pub const OPAQUE: f64 = 2.0;

fn numel(s: Option<&Shape>) -> f64 {
    s.map_or(0.0, |s| s.numel() as f64)
}

/// The cost of one node computing `op` from operands of shapes `ins`
/// (slot order) into `out`.
pub fn op_cost(op: &Op, ins: &[Option<&Shape>], out: Option<&Shape>) -> f64 {
    let read: f64 = ins.iter().map(|s| numel(*s)).sum();
    let write = numel(out);
    let x = ins.first().copied().flatten();
    match op {
        Op::Input | Op::Param { .. } => 0.0,
        Op::Flatten | Op::Reshape { .. } | Op::Dropout { .. } | Op::TimeSlice { .. } => ALIAS,
        // Read in place by stacks; else a small copy.
        Op::Slice { .. } => ALIAS,
        Op::Conv2d { padding, .. } => {
            let pad = match padding {
                Padding::Valid | Padding::Explicit(0, 0) => 0.0,
                // Zero the padded copy, then copy the input in.
                _ => 3.0 * numel(x) + 2.0 * KERNEL,
            };
            read + write + pad + KERNEL
        }
        Op::Activation(crate::op::Activation::Softmax) => 2.0 * read + 3.0 * write + KERNEL,
        Op::Concat { .. } => read + write + KERNEL * ins.len() as f64,
        Op::Recurrent { cell, units, .. } => {
            let x = x.map_or((0, 0), |s| (s.0[0], s.0[1]));
            let (t, f) = (x.0 as f64, x.1 as f64);
            let u = *units as f64;
            let g = cell.gates() as f64 * u;
            let state = if *cell == CellKind::Lstm { 2.0 * u } else { u };
            let proj = t * f + f * g + g + t * g + KERNEL;
            let step = (u + u * g + g + g + KERNEL) + (g + g + state + state + KERNEL);
            OPAQUE * (proj + t * step + write)
        }
        Op::Cell {
            cell,
            units,
            has_state,
            recurrent_bias,
        } => {
            let u = *units as f64;
            let g = cell.gates() as f64 * u;
            let state = numel(out);
            let rb = if *recurrent_bias { g } else { 0.0 };
            let hu = if *has_state {
                // h·U (+ b_r) into a [G] temporary, read back by the gate kernel.
                u + u * g + rb + g + KERNEL + g
            } else {
                rb
            };
            let prev = if *has_state { state } else { 0.0 };
            g + hu + prev + state + KERNEL
        }
        // One kernel reading every operand and writing the result: conv2d
        // and dense (fused activation included), pooling, elementwise ops,
        // maps, batchnorm, stacks.
        _ => read + write + KERNEL,
    }
}

/// A node's own [`op_cost`] plus its children's (egg's tree cost); the
/// optimizer's extraction ([`super::extract`]) takes only the own part
/// and counts shared classes once.
pub struct TrafficCost<'a> {
    /// The e-graph whose shapes the costs read.
    pub egraph: &'a TensorGraph,
}

impl CostFunction<TensorLang> for TrafficCost<'_> {
    type Cost = f64;

    fn cost<C>(&mut self, enode: &TensorLang, mut costs: C) -> f64
    where
        C: FnMut(Id) -> f64,
    {
        let own = match node_op(self.egraph, enode) {
            None => 0.0,
            Some((op, ins)) => {
                let shapes: Vec<Option<&Shape>> =
                    ins.iter().map(|i| self.egraph[*i].data.as_ref()).collect();
                let out = crate::infer::op_shape(&op, &shapes);
                op_cost(&op, &shapes, out.as_ref())
            }
        };
        enode.fold(own, |acc, c| acc + costs(c))
    }
}

/// The cost of a whole graph: every node's [`op_cost`] once (a DAG cost;
/// what `--explain` reports before and after).
pub fn graph_cost(g: &Graph) -> f64 {
    g.g.node_indices()
        .map(|id| {
            let n = g.node(id);
            let ins: Vec<Option<&Shape>> = g
                .inputs_of(id)
                .iter()
                .map(|i| g.node(*i).shape.as_ref())
                .collect();
            op_cost(&n.op, &ins, n.shape.as_ref())
        })
        .sum()
}
