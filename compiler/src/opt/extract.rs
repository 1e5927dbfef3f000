//! Extraction with a DAG cost: the cost of choosing a node for a class is
//! the sum of the own costs of every distinct class it needs, counting a
//! shared class once. (egg's tree-cost `Extractor` counts a class once
//! per use, which is quadratic in the length of an unrolled recurrence
//! and would make unrolling look more expensive than it is.)
//!
//! Greedy, like egg's: each class keeps its cheapest node given its
//! children's current choices, iterated to a fixed point. A node whose
//! needed classes include its own class (a cycle) is never chosen.
//!
//! The needed-class sets are persistent maps (`imbl::OrdMap`): a chain of
//! n ops has sets of sizes 1..n, and copying each would cost O(n²) time
//! and memory; sharing structure makes extending a child's set O(log n),
//! and the cost is kept alongside the set instead of re-summed. A union
//! visits only where two sets differ (see `missing_from`).

use super::cost::TrafficCost;
use super::lang::{TensorGraph, TensorLang};
use egg::{CostFunction, Id, Language};
use imbl::ordmap::DiffItem;
use imbl::OrdMap;
use std::collections::HashMap;

/// The chosen node of each class with its DAG cost.
pub struct DagExtractor {
    best: HashMap<Id, Choice>,
}

struct Choice {
    cost: f64,
    node: TensorLang,
    /// Every class the choice needs (itself included) with its own cost.
    needs: OrdMap<Id, f64>,
}

impl DagExtractor {
    /// Chooses a node for every class that has an acyclic choice.
    pub fn new(eg: &TensorGraph) -> Self {
        let mut tc = TrafficCost { egraph: eg };
        let mut best: HashMap<Id, Choice> = HashMap::new();
        let mut classes: Vec<Id> = eg.classes().map(|c| c.id).collect();
        classes.sort();
        // Own costs do not change between passes.
        let own: HashMap<(Id, usize), f64> = classes
            .iter()
            .flat_map(|id| {
                eg[*id]
                    .nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| ((*id, i), tc.cost(n, |_| 0.0)))
                    .collect::<Vec<_>>()
            })
            .collect();
        // When each class's choice last changed, and when each node was
        // last costed: a node none of whose children changed since is not
        // costed again (costing clones sets as large as the graph is deep).
        let mut stamp = 0usize;
        let mut chosen_at: HashMap<Id, usize> = HashMap::new();
        let mut costed_at: HashMap<(Id, usize), usize> = HashMap::new();
        loop {
            let mut changed = false;
            for id in &classes {
                for (i, node) in eg[*id].nodes.iter().enumerate() {
                    let kids: Vec<Id> = node.children().iter().map(|c| eg.find(*c)).collect();
                    if let Some(&at) = costed_at.get(&(*id, i)) {
                        if kids
                            .iter()
                            .all(|c| chosen_at.get(c).is_some_and(|&t| t <= at))
                        {
                            continue;
                        }
                    }
                    let Some(sets) = kids
                        .iter()
                        .map(|c| best.get(c).map(|b| (b.needs.clone(), b.cost)))
                        .collect::<Option<Vec<_>>>()
                    else {
                        continue;
                    };
                    costed_at.insert((*id, i), stamp);
                    if sets.iter().any(|(s, _)| s.contains_key(id)) {
                        continue;
                    }
                    // Union of the children's needs, starting from the largest.
                    let mut sets = sets;
                    sets.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
                    let (mut needs, mut cost) = sets.first().cloned().unwrap_or_default();
                    for (s, _) in sets.iter().skip(1) {
                        for (k, v) in missing_from(&needs, s) {
                            cost += v - needs.insert(k, v).unwrap_or(0.0);
                        }
                    }
                    // A leaf (an entry, an input, a parameter) costs nothing
                    // and closes no cycle; leaving it out halves the sets.
                    if !node.is_leaf() {
                        let c = own[&(*id, i)];
                        cost += c - needs.insert(*id, c).unwrap_or(0.0);
                    }
                    let better = best.get(id).is_none_or(|b| cost < b.cost * (1.0 - 1e-12));
                    if better {
                        stamp += 1;
                        chosen_at.insert(*id, stamp);
                        best.insert(
                            *id,
                            Choice {
                                cost,
                                node: node.clone(),
                                needs,
                            },
                        );
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        DagExtractor { best }
    }

    /// The chosen node of class `id`.
    pub fn node(&self, eg: &TensorGraph, id: Id) -> Option<&TensorLang> {
        self.best.get(&eg.find(id)).map(|c| &c.node)
    }

    /// The DAG cost of class `id`'s choice.
    pub fn cost(&self, eg: &TensorGraph, id: Id) -> Option<f64> {
        self.best.get(&eg.find(id)).map(|c| c.cost)
    }
}

/// The entries of `s` that `needs` lacks or holds with another value.
///
/// Children's sets are mostly versions of one another (a chain's sets
/// extend each other; a branch's share the prefix before it), and imbl's
/// `diff` skips the subtrees two versions share, so a union costs what
/// differs rather than what the smaller set holds. A set much smaller than
/// `needs` is looked up entry by entry instead: `diff` also walks what only
/// `needs` holds. (Inserting an entry already present would still copy the
/// path to it, hence the filtering either way.)
fn missing_from(needs: &OrdMap<Id, f64>, s: &OrdMap<Id, f64>) -> Vec<(Id, f64)> {
    if s.ptr_eq(needs) {
        Vec::new()
    } else if s.len() * 16 < needs.len() {
        s.iter()
            .filter(|(k, v)| needs.get(*k) != Some(*v))
            .map(|(k, v)| (*k, *v))
            .collect()
    } else {
        needs
            .diff(s)
            .filter_map(|d| match d {
                DiffItem::Add(k, v) | DiffItem::Update { new: (k, v), .. } => Some((*k, *v)),
                DiffItem::Remove(..) => None,
            })
            .collect()
    }
}
