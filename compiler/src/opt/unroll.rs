//! Backpropagation-through-time unrolling: a recurrent layer over `T`
//! steps (`T` from the input's inferred shape) becomes
//!
//! ```text
//! xw  = dense(x, W, b)                 # [T, G·U]: the input projection of
//!                                      # every gate and step in one product
//! s_t = cell(time_slice_t(xw), U, b_r, s_{t−1})   # t in time order
//! out = stack(h_0 … h_{T−1})  or  h_last  or  s_last (`return_state`)
//! ```
//!
//! `s_{−1}` is the layer's initial state operand when it has one (the
//! first cell then has a previous state), else the first cell starts
//! from zeros.
//!
//! A masked layer (a variable-length sequence, Keras's masking semantics)
//! keeps its state through padded steps and outputs zeros there:
//!
//! ```text
//! s_t = mask_step_t(mask, cell(…, s_{t−1}), s_{t−1})   # s_{t−1} where mask[t] = 0
//! h_t = mask_step_t(mask, h(s_t))                      # 0 where mask[t] = 0 (sequences)
//! ```
//!
//! With padding at the end, a forward layer's last state is the state
//! after the sequence's own last step, and a reverse layer starts from
//! zeros at that step: each sequence is reversed within its own length.
//!
//! The cells share the parameters `U` and `b_r`, so reverse-mode autodiff
//! over the unrolled graph is exactly backpropagation through time. Each
//! cell computes all gates with one product `h·U` (the four LSTM gate
//! products fused into one, as the weights are stored side by side) and
//! one gate kernel. An LSTM state is `h ++ c` (`[2U]`); `h` is a slice.

use super::lang::{
    add_entry, ent_of, is_none, Entry, Rule, TensorAnalysis, TensorGraph, TensorLang,
};
use crate::op::{CellKind, Op};
use egg::{Applier, Id, PatternAst, Rewrite, Subst, Symbol, Var};

/// Unrolls the recurrent layers of one cell kind.
struct Unroll {
    cell: CellKind,
}

impl Applier<TensorLang, TensorAnalysis> for Unroll {
    fn apply_one(
        &self,
        eg: &mut TensorGraph,
        eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<TensorLang>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let get = |v: &str| v.parse::<Var>().ok().and_then(|v| subst.get(v).copied());
        let (Some(e), Some(x), Some(w), Some(u), Some(b), Some(rb), Some(h0), Some(mask)) = (
            get("?e"),
            get("?x"),
            get("?w"),
            get("?u"),
            get("?b"),
            get("?rb"),
            get("?h0"),
            get("?m"),
        ) else {
            return vec![];
        };
        let Some(k) = ent_of(eg, e) else {
            return vec![];
        };
        if eg.analysis.unrolled.contains(&k.0) {
            return vec![];
        }
        let layer = eg.analysis.entry(k).clone();
        let Op::Recurrent {
            cell,
            units,
            return_sequences,
            reverse,
            return_state,
            ..
        } = layer.op
        else {
            return vec![];
        };
        if cell != self.cell {
            return vec![];
        }
        // The sequence length comes from shape inference.
        let Some(t) = eg[x]
            .data
            .as_ref()
            .filter(|s| s.rank() == 2)
            .map(|s| s.0[0])
        else {
            return vec![];
        };
        if t == 0 {
            return vec![];
        }
        eg.analysis.unrolled.insert(k.0);
        let named = |name: String, op: Op| Entry {
            op,
            name,
            layer: layer.layer.clone(),
            span: layer.span,
            shape: None,
        };
        let name = &layer.name;
        let gu = cell.gates() * units;
        let pe = add_entry(
            eg,
            named(
                format!("{name}.input"),
                Op::Dense {
                    units: gu,
                    activation: None,
                },
            ),
        );
        let proj = eg.add(TensorLang::Dense([pe, x, w, b]));
        let none = eg.add(TensorLang::Nothing);
        let rb = if is_none(eg, rb) { none } else { rb };
        let mut state = if is_none(eg, h0) { none } else { h0 };
        let mask = (!is_none(eg, mask)).then_some(mask);
        // `mask_step` of `new` at `step` over `prev` (zeros when `none`).
        let hold = |eg: &mut TensorGraph, name: String, step: usize, new: Id, prev: Id| {
            let me = add_entry(
                eg,
                named(
                    name,
                    Op::MaskStep {
                        step,
                        has_prev: prev != none,
                    },
                ),
            );
            eg.add(TensorLang::MaskStep([me, mask.unwrap_or(none), new, prev]))
        };
        let mut hs = vec![none; t];
        for s in 0..t {
            let step = if reverse { t - 1 - s } else { s };
            let te = add_entry(eg, named(format!("{name}.x{step}"), Op::TimeSlice { step }));
            let xt = eg.add(TensorLang::TimeSlice([te, proj]));
            let ce = add_entry(
                eg,
                named(
                    format!("{name}.t{step}"),
                    Op::Cell {
                        cell,
                        units,
                        has_state: state != none,
                        recurrent_bias: rb != none,
                    },
                ),
            );
            let next = eg.add(TensorLang::Cell([ce, xt, u, rb, state]));
            state = match mask {
                Some(_) => hold(eg, format!("{name}.s{step}"), step, next, state),
                None => next,
            };
            hs[step] = if cell == CellKind::Lstm {
                // The last step's h is the layer's output when it returns one step.
                let last = !return_sequences && s + 1 == t;
                let hname = if last {
                    name.clone()
                } else {
                    format!("{name}.h{step}")
                };
                let he = add_entry(
                    eg,
                    named(
                        hname,
                        Op::Slice {
                            start: 0,
                            len: units,
                        },
                    ),
                );
                eg.add(TensorLang::Slice([he, state]))
            } else {
                state
            };
            if mask.is_some() && return_sequences {
                hs[step] = hold(eg, format!("{name}.o{step}"), step, hs[step], none);
            }
        }
        let out = if return_state {
            state
        } else if return_sequences {
            let se = add_entry(eg, named(name.clone(), Op::Stack));
            let mut ch = vec![se];
            ch.extend(hs);
            eg.add(TensorLang::Stack(ch.into()))
        } else {
            hs[if reverse { 0 } else { t - 1 }]
        };
        if eg.union(eclass, out) {
            vec![eclass]
        } else {
            vec![]
        }
    }
}

/// `bptt-unroll-rnn`, `bptt-unroll-lstm`, `bptt-unroll-gru`.
pub fn rules() -> Vec<Rule> {
    [CellKind::Rnn, CellKind::Lstm, CellKind::Gru]
        .into_iter()
        .map(|cell| {
            let lhs: egg::Pattern<TensorLang> = "(recurrent ?e ?x ?w ?u ?b ?rb ?h0 ?m)"
                .parse()
                .unwrap_or_else(|e| panic!("unroll pattern: {e}"));
            Rewrite::new(format!("bptt-unroll-{}", cell.name()), lhs, Unroll { cell })
                .unwrap_or_else(|e| panic!("unroll rule: {e}"))
        })
        .collect()
}
