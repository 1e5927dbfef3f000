//! Graph → e-graph (one entry per graph node) and e-graph → graph (the
//! cheapest node of each needed class, shared classes shared).

use super::extract::DagExtractor;
use super::lang::{ent_of, make_node, node_op, Entry, TensorAnalysis, TensorGraph, TensorLang};
use crate::graph::{Graph, Node, NodeId};
use crate::op::{CellKind, Op};
use egg::{Id, Language};
use std::collections::{HashMap, HashSet};

/// The e-graph of `g`, and the class of every graph node.
pub fn to_egraph(g: &Graph, inference: bool) -> Result<(TensorGraph, HashMap<NodeId, Id>), String> {
    let mut analysis = TensorAnalysis::default();
    analysis.inference = inference;
    let mut eg = TensorGraph::new(analysis);
    let order = g.topo_order().ok_or("the graph has a cycle")?;
    let none = eg.add(TensorLang::Nothing);
    let mut class: HashMap<NodeId, Id> = HashMap::new();
    for id in order {
        let n = g.node(id);
        let entry = |op: Op| Entry {
            op,
            name: n.name.clone(),
            layer: n.layer.clone(),
            span: n.span,
            shape: match n.op {
                Op::Input { .. } | Op::Param { .. } | Op::Grad(_) => n.shape.clone(),
                _ => None,
            },
        };
        if let Op::Input { .. } | Op::Param { .. } = n.op {
            let k = eg.analysis.intern(entry(n.op.clone()));
            class.insert(id, eg.add(TensorLang::Ent(k)));
            continue;
        }
        let ins: Vec<Id> = g.inputs_of(id).iter().map(|i| class[i]).collect();
        let e = {
            let k = eg.analysis.intern(entry(n.op.clone()));
            eg.add(TensorLang::Ent(k))
        };
        // Operand lists padded with `none` where the language has fixed arity.
        let padded = |want: usize| -> Vec<Id> {
            let mut v = vec![e];
            v.extend(ins.iter().copied());
            v.resize(want, none);
            v
        };
        let children = match &n.op {
            Op::Conv2d { activation, .. } | Op::Dense { activation, .. } => {
                let mut v = padded(4);
                if let Some(a) = activation {
                    let act = eg.analysis.intern(entry(Op::Activation(*a)));
                    v.push(eg.add(TensorLang::Ent(act)));
                }
                v
            }
            Op::BatchNorm { .. } => padded(6),
            Op::MaskStep { .. } => padded(4),
            Op::Recurrent {
                cell,
                bias,
                initial_state,
                masked,
                ..
            } => {
                // [e, x, w, u, b, rb, h0, mask] with absent ones as `none`.
                let mut it = ins.iter().copied();
                let mut v = vec![e];
                v.extend(it.by_ref().take(3));
                let rb = *bias && *cell == CellKind::Gru;
                for present in [*bias, rb, *initial_state, *masked] {
                    v.push(if present { it.next() } else { None }.unwrap_or(none));
                }
                v
            }
            Op::Cell {
                recurrent_bias,
                has_state,
                ..
            } => {
                // [e, x_t, u, rb, state] with absent ones as `none`.
                let mut it = ins.iter().copied();
                let xt = it.next().unwrap_or(none);
                let u = it.next().unwrap_or(none);
                let rb = if *recurrent_bias { it.next() } else { None };
                let st = if *has_state { it.next() } else { None };
                vec![e, xt, u, rb.unwrap_or(none), st.unwrap_or(none)]
            }
            _ => padded(1 + ins.len()),
        };
        let node = make_node(&n.op, children);
        if matches!(node, TensorLang::Nothing) {
            return Err(format!("cannot convert node `{}`", n.name));
        }
        class.insert(id, eg.add(node));
    }
    eg.rebuild();
    Ok((eg, class))
}

/// Builds the graph of the cheapest forms of the classes of `g`'s outputs;
/// inputs keep their order, every node its name, layer and span.
pub fn extract(g: &Graph, eg: &TensorGraph, class: &HashMap<NodeId, Id>) -> Result<Graph, String> {
    let ex = DagExtractor::new(eg);
    let mut out = Graph::new(g.name.clone());
    let mut made: HashMap<Id, NodeId> = HashMap::new();
    // Inputs first, in declaration order, whether or not they are still used.
    for i in &g.inputs {
        let id = eg.find(class[i]);
        let nid = build(eg, &ex, id, &mut out, &mut made)?;
        out.inputs.push(nid);
    }
    for (name, o) in &g.outputs {
        let id = eg.find(class[o]);
        let nid = build(eg, &ex, id, &mut out, &mut made)?;
        out.outputs.push((name.clone(), nid));
    }
    Ok(out)
}

/// One step of [`build`]'s walk: visit a class, or create its node once
/// its operands exist.
enum Step {
    Enter(Id),
    Exit(Id, TensorLang),
}

/// Creates the graph node of class `root` and every node it needs, in the
/// order a depth-first walk from `root` meets them (operands before their
/// users). The walk keeps its own stack: a graph is as deep as the model's
/// longest pipeline, and recursion would overflow the thread's stack.
fn build(
    eg: &TensorGraph,
    ex: &DagExtractor,
    root: Id,
    out: &mut Graph,
    made: &mut HashMap<Id, NodeId>,
) -> Result<NodeId, String> {
    let mut stack = vec![Step::Enter(root)];
    // Classes whose node waits for its operands: the path from `root`.
    let mut pending: HashSet<Id> = HashSet::new();
    while let Some(step) = stack.pop() {
        match step {
            Step::Enter(id) => {
                let id = eg.find(id);
                if made.contains_key(&id) {
                    continue;
                }
                if !pending.insert(id) {
                    return Err("the chosen forms form a cycle".into());
                }
                let best = ex
                    .node(eg, id)
                    .ok_or("a needed e-class has no acyclic form")?
                    .clone();
                match &best {
                    TensorLang::Ent(k) => {
                        let e = eg.analysis.entry(*k);
                        let nid = out.add(Node {
                            op: e.op.clone(),
                            name: e.name.clone(),
                            layer: e.layer.clone(),
                            span: e.span,
                            shape: eg[id].data.clone(),
                        });
                        made.insert(id, nid);
                        pending.remove(&id);
                    }
                    TensorLang::Nothing => return Err("an absent operand was extracted".into()),
                    n => {
                        let (op, ins) = node_op(eg, n).ok_or("an op node has no entry")?;
                        // A cell's previous state first, so steps are numbered in time order.
                        let mut visit: Vec<usize> = (0..ins.len()).collect();
                        if let Op::Cell {
                            has_state: true, ..
                        } = op
                        {
                            visit.rotate_right(1);
                        }
                        stack.push(Step::Exit(id, best.clone()));
                        stack.extend(visit.iter().rev().map(|&i| Step::Enter(ins[i])));
                    }
                }
            }
            Step::Exit(id, best) => {
                let (op, ins) = node_op(eg, &best).ok_or("an op node has no entry")?;
                let e = ent_of(eg, best.children()[0]).ok_or("an op node has no entry")?;
                let e = eg.analysis.entry(e);
                let operands = ins
                    .iter()
                    .map(|i| made.get(&eg.find(*i)).copied())
                    .collect::<Option<Vec<NodeId>>>()
                    .ok_or("an operand was not extracted")?;
                let nid = out.add(Node {
                    op,
                    name: e.name.clone(),
                    layer: e.layer.clone(),
                    span: e.span,
                    shape: eg[id].data.clone(),
                });
                for (slot, o) in operands.into_iter().enumerate() {
                    out.connect(o, nid, slot);
                }
                made.insert(id, nid);
                pending.remove(&id);
            }
        }
    }
    made.get(&eg.find(root))
        .copied()
        .ok_or_else(|| "the output was not extracted".into())
}
