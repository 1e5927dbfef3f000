//! The cost model: memory traffic. A kernel costs the elements it reads
//! plus the elements it writes (per example; parameters counted once),
//! plus a fixed [`KERNEL`] overhead, so fusing two passes into one is
//! always cheaper. Aliases (flatten, reshape, inference dropout, time
//! slices read in place) cost [`ALIAS`]: almost free, but removing one
//! still lowers the cost.

use super::lang::{node_op, TensorGraph, TensorLang};
use crate::graph::Graph;
use crate::shape::Shape;
use egg::{CostFunction, Id, Language};

pub use crate::ops::{cost as op_cost, ALIAS, KERNEL};

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
                let out = crate::ops::op_shape(&op, &shapes);
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
