//! The dataflow graph: tensor ops as petgraph nodes, edges carry the
//! consumer's input slot. Every node remembers its layer and source span.

use crate::op::Op;
use crate::shape::Shape;
use netc_lang::Span;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Index of a node in a [`Graph`].
pub type NodeId = NodeIndex<u32>;

/// One tensor operation.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// What it computes.
    pub op: Op,
    /// The node's own name: the layer name for layer ops, `<layer>.<param>`
    /// for parameters, the input's name for inputs.
    pub name: String,
    /// The layer this node belongs to (a parameter's owner).
    pub layer: String,
    /// Where the layer was written.
    pub span: Span,
    /// Per-example shape (batch excluded); `None` until shape inference
    /// succeeds for this node.
    pub shape: Option<Shape>,
}

/// A model's dataflow graph.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// The model's name.
    pub name: String,
    /// Nodes and edges; an edge's weight is the consumer's input slot.
    pub g: DiGraph<Node, usize>,
    /// Input nodes in declaration order.
    pub inputs: Vec<NodeId>,
    /// Declared outputs: binding name and producing node.
    pub outputs: Vec<(String, NodeId)>,
}

impl Graph {
    /// An empty graph for model `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Graph {
            name: name.into(),
            ..Graph::default()
        }
    }

    /// Adds a node.
    pub fn add(&mut self, node: Node) -> NodeId {
        self.g.add_node(node)
    }

    /// Connects `from` to input slot `slot` of `to`.
    pub fn connect(&mut self, from: NodeId, to: NodeId, slot: usize) {
        self.g.add_edge(from, to, slot);
    }

    /// The node at `id`.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id]
    }

    /// The inputs of `id`, ordered by slot.
    pub fn inputs_of(&self, id: NodeId) -> Vec<NodeId> {
        let mut ins: Vec<(usize, NodeId)> = self
            .g
            .edges_directed(id, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        ins.sort();
        ins.into_iter().map(|(_, n)| n).collect()
    }

    /// The consumers of `id`.
    pub fn users_of(&self, id: NodeId) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = self.g.neighbors_directed(id, Direction::Outgoing).collect();
        out.sort();
        out.dedup();
        out
    }

    /// All nodes in a deterministic topological order (Kahn's algorithm,
    /// lowest index first), or `None` if the graph has a cycle.
    pub fn topo_order(&self) -> Option<Vec<NodeId>> {
        let mut indeg: Vec<usize> = self
            .g
            .node_indices()
            .map(|n| self.g.edges_directed(n, Direction::Incoming).count())
            .collect();
        let mut ready: BinaryHeap<Reverse<NodeId>> = self
            .g
            .node_indices()
            .filter(|n| indeg[n.index()] == 0)
            .map(Reverse)
            .collect();
        let mut order = Vec::with_capacity(self.g.node_count());
        while let Some(Reverse(n)) = ready.pop() {
            order.push(n);
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let t = e.target();
                indeg[t.index()] -= 1;
                if indeg[t.index()] == 0 {
                    ready.push(Reverse(t));
                }
            }
        }
        (order.len() == self.g.node_count()).then_some(order)
    }

    /// Layer nodes (everything but parameters) in topological order.
    pub fn layer_order(&self) -> Vec<NodeId> {
        self.topo_order()
            .unwrap_or_default()
            .into_iter()
            .filter(|&n| !matches!(self.g[n].op, Op::Param { .. }))
            .collect()
    }

    /// Parameter nodes belonging to layer node `id` (its `Param` inputs).
    pub fn params_of(&self, id: NodeId) -> Vec<NodeId> {
        self.inputs_of(id)
            .into_iter()
            .filter(|&n| matches!(self.g[n].op, Op::Param { .. }))
            .collect()
    }
}
