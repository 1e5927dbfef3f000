//! Recurrent layers (`rnn`, `lstm`, `gru`; stacked, bidirectional) over a
//! sequence `[T, F]`, and the single cell step that unrolling makes of them.
//!
//! Sequence to sequence: `return_state: true` makes a layer output its
//! final state (`h`, or `h ++ c` for an LSTM) and `initial_state: NAME`
//! starts a layer from such a state instead of zeros. The state is one
//! tensor, an extra last operand of the layer, so the layer stays one
//! value in the language and the unrolled cells simply begin with a
//! previous state; gradients reach the encoder through it like through
//! any other operand.

use super::KERNEL;
use super::{numel, operand, Backward, Call, GradError, Inferred, LayerKind, ShapeError, Src};
use crate::graph::NodeId;
use crate::op::{CellKind, CellWrt, GradOp, MergeMode, Op, ParamRole};
use crate::shape::{Shape, MAX_STEPS};

/// Arguments in positional order.
pub(super) const ARGS: &[&str] = &[
    "units",
    "return_sequences",
    "bidirectional",
    "merge",
    "layers",
    "bias",
    "return_state",
    "initial_state",
];

/// A whole recurrent layer is opaque to autodiff and fusion; it is costed
/// at this multiple of its traffic, so the unrolled cells (the same
/// traffic) are preferred whenever unrolling applies.
pub const OPAQUE: f64 = 2.0;

/// One `Op::Recurrent` per layer and direction, with a merge node per
/// bidirectional layer; stacked layers return sequences to the next.
pub(super) fn expand(c: &mut Call, kind: LayerKind, x: &Src) -> NodeId {
    let cell = match kind {
        LayerKind::Rnn => CellKind::Rnn,
        LayerKind::Lstm => CellKind::Lstm,
        _ => CellKind::Gru,
    };
    let units = c.a.count("units", None, 1, c.diags);
    let return_sequences = c.a.flag("return_sequences", false, c.diags);
    let bidirectional = c.a.flag("bidirectional", false, c.diags);
    let merge = match c
        .a
        .choice("merge", &["concat", "sum", "mul", "ave"], "concat", c.diags)
    {
        "sum" => MergeMode::Sum,
        "mul" => MergeMode::Mul,
        "ave" => MergeMode::Ave,
        _ => MergeMode::Concat,
    };
    let layers = c.a.count("layers", Some(1), 1, c.diags).min(64);
    let bias = c.a.flag("bias", true, c.diags);
    let return_state = c.a.flag("return_state", false, c.diags);
    let initial = initial_state_arg(c);
    if let Some(v) = c.a.raw("return_state").filter(|_| return_state) {
        if return_sequences || bidirectional {
            let why = "a layer returns its final state or a sequence, of one direction; \
                       drop `return_sequences` and `bidirectional`";
            c.a.bad_value("return_state", why.to_string(), v, c.diags);
        }
    }
    if let Some(v) = c.a.raw("initial_state").filter(|_| initial.is_some()) {
        if bidirectional || layers > 1 {
            let why = "only a single forward layer starts from a given state; \
                       drop `bidirectional` and `layers`, or chain the layers";
            c.a.bad_value("initial_state", why.to_string(), v, c.diags);
        }
    }
    let (name, span) = (c.name, c.span);
    let b = &mut *c.b;
    let mut cur = x.clone();
    let mut out = None;
    for l in 0..layers {
        let lname = if layers > 1 {
            format!("{name}.{l}")
        } else {
            name.to_string()
        };
        let rs = l + 1 < layers || return_sequences;
        let one = |b: &mut super::Builder, nname: &str, reverse: bool| {
            let n = b.unary(
                Op::Recurrent {
                    cell,
                    units,
                    return_sequences: rs,
                    reverse,
                    bias,
                    return_state: return_state && l + 1 == layers,
                    initial_state: initial.is_some() && l == 0,
                    // Set by `masking::instantiate` when the sequence has a mask.
                    masked: false,
                },
                nname,
                span,
                &cur,
            );
            b.param(nname, "weight", ParamRole::Weight, n, 1);
            b.param(nname, "recurrent_weight", ParamRole::Weight, n, 2);
            let mut slot = 3;
            if bias {
                b.param(nname, "bias", ParamRole::Bias, n, 3);
                slot += 1;
                if cell == CellKind::Gru {
                    b.param(nname, "recurrent_bias", ParamRole::Bias, n, 4);
                    slot += 1;
                }
            }
            if let Some(s) = initial.as_ref().filter(|_| l == 0) {
                b.feed(s, n, slot);
            }
            n
        };
        let n = if bidirectional {
            let f = one(b, &format!("{lname}.forward"), false);
            let r = one(b, &format!("{lname}.backward"), true);
            let op = match merge {
                MergeMode::Concat => Op::Concat { axis: -1 },
                MergeMode::Sum => Op::Add,
                MergeMode::Mul => Op::Mul,
                MergeMode::Ave => Op::Average,
            };
            let m = b.node(op, &lname, span);
            b.graph.connect(f, m, 0);
            b.graph.connect(r, m, 1);
            m
        } else {
            one(b, &lname, false)
        };
        cur = Src::Node(n);
        out = Some(n);
    }
    out.unwrap_or_else(|| b.node(Op::Flatten, name, span))
}

/// `initial_state: NAME`: the binding whose value is the first state.
fn initial_state_arg(c: &mut Call) -> Option<Src> {
    use netc_lang::ast::ValueKind;
    let v = c.a.raw("initial_state")?;
    match &v.kind {
        ValueKind::Ident(t) => Some(Src::Ref(t.clone(), v.span)),
        _ => {
            let want = "a tensor name (an encoder's `return_state: true` output)";
            c.a.reject("initial_state", want, v, c.diags);
            None
        }
    }
}

pub(super) fn infer(op: &Op, ins: &[Option<&Shape>]) -> Result<Inferred, ShapeError> {
    match op {
        Op::Recurrent {
            cell,
            units,
            return_sequences,
            return_state,
            initial_state,
            masked,
            ..
        } => {
            let x = operand(ins, 0)?;
            let mut r = layer(*cell, *units, *return_sequences, x)?;
            let state = cell.state_len(*units);
            if *masked && operand(ins, ins.len() - 1)?.0 != [x.0[0]] {
                return Err(ShapeError::Internal);
            }
            if *initial_state {
                // After the parameters (and before a mask); the rule's
                // parameter shapes are not its.
                let index = ins.len() - 1 - usize::from(*masked);
                if operand(ins, index)?.0 != [state] {
                    return Err(ShapeError::InitialState { index, want: state });
                }
            }
            if *return_state {
                r.out = Shape(vec![state]);
            }
            Ok(r)
        }
        Op::Cell {
            cell,
            units,
            has_state,
            recurrent_bias,
        } => step(*cell, *units, *has_state, *recurrent_bias, ins),
        Op::MaskStep { step, has_prev } => {
            let mask = operand(ins, 0)?;
            let new = operand(ins, 1)?;
            let fits = mask.rank() == 1
                && *step < mask.0[0]
                && ins.len() == 2 + usize::from(*has_prev)
                && (!*has_prev || operand(ins, 2)? == new);
            if !fits {
                return Err(ShapeError::Internal);
            }
            Ok(Inferred::plain(new.clone()))
        }
        _ => unreachable!("recurrent::infer on {}", op.name()),
    }
}

/// Output `[T, U]` or `[U]`; weight `[F, G·U]`, recurrent weight
/// `[U, G·U]`, biases `[G·U]` (G gates).
fn layer(
    cell: CellKind,
    units: usize,
    return_sequences: bool,
    x: &Shape,
) -> Result<Inferred, ShapeError> {
    if x.rank() != 2 {
        let hint = match x.rank() {
            1 => format!(
                "help: a sequence is [T, F]; for {} steps of one feature write `reshape([{}, 1])`",
                x.0[0], x.0[0]
            ),
            _ => "help: a sequence is [T, F] (time steps, features per step)".to_string(),
        };
        return Err(ShapeError::Rank {
            want: "a sequence [N, T, F]",
            hint,
        });
    }
    let (t, f) = (x.0[0], x.0[1]);
    if t > MAX_STEPS {
        return Err(ShapeError::TooManySteps { steps: t });
    }
    let g = cell.gates() * units;
    let out = if return_sequences {
        vec![t, units]
    } else {
        vec![units]
    };
    Ok(Inferred {
        out: Shape(out),
        params: vec![vec![f, g], vec![units, g], vec![g], vec![g]],
        warnings: vec![],
    })
}

/// A cell step: inputs `x_t·W + b` `[G·U]`, `U` `[U, G·U]`, the recurrent
/// bias `[G·U]` if any, the previous state if any; output the state `[U]`
/// (`[2U]` for an LSTM: `h ++ c`). The step's own parameters (`U`, the
/// recurrent bias) get their shapes here.
fn step(
    cell: CellKind,
    units: usize,
    has_state: bool,
    recurrent_bias: bool,
    ins: &[Option<&Shape>],
) -> Result<Inferred, ShapeError> {
    let g = cell.gates() * units;
    let state = cell.state_len(units);
    let mut params = vec![vec![units, g]];
    if recurrent_bias {
        params.push(vec![g]);
    }
    let want_in = 2 + usize::from(recurrent_bias) + usize::from(has_state);
    // A parameter slot not shaped yet takes the shape the step gives it.
    let slot = |i: usize| -> Option<Vec<usize>> {
        match ins.get(i).copied().flatten() {
            Some(s) => Some(s.0.clone()),
            None => params.get(i.checked_sub(1)?).cloned(),
        }
    };
    let fits = ins.len() == want_in
        && slot(0).is_some_and(|s| s == [g])
        && slot(1).is_some_and(|s| s == [units, g])
        && (!recurrent_bias || slot(2).is_some_and(|s| s == [g]))
        && (!has_state || slot(want_in - 1).is_some_and(|s| s == [state]));
    if !fits {
        return Err(ShapeError::Internal);
    }
    Ok(Inferred {
        out: Shape(vec![state]),
        params,
        warnings: vec![],
    })
}

pub(super) fn cost(op: &Op, ins: &[Option<&Shape>], out: Option<&Shape>) -> f64 {
    let write = numel(out);
    match op {
        Op::Recurrent { cell, units, .. } => {
            let x = ins
                .first()
                .copied()
                .flatten()
                .map_or((0, 0), |s| (s.0[0], s.0[1]));
            let (t, f) = (x.0 as f64, x.1 as f64);
            let u = *units as f64;
            let g = cell.gates() as f64 * u;
            let state = cell.state_len(*units) as f64;
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
            let state = write;
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
        _ => unreachable!("recurrent::cost on {}", op.name()),
    }
}

/// Backpropagation through one cell step: the gradient of its input
/// projection, of the shared recurrent weight and bias (one contribution
/// per step; the steps' contributions are summed like any shared use),
/// and of the previous state, which carries the gradient back in time.
/// A whole recurrent layer has no rule: training unrolls it first.
pub(super) fn backward(op: &Op, b: &mut Backward) -> Result<(), GradError> {
    if let Op::MaskStep { step, has_prev } = *op {
        // The new value's gradient is `dy` at real steps; the previous
        // value's is `dy` at padding. The mask is data, never trained.
        let (mask, dy) = (b.ins[0], b.dy);
        b.give_op(
            1,
            Op::MaskStep {
                step,
                has_prev: false,
            },
            &[mask, dy],
        )?;
        if has_prev {
            b.give(2, GradOp::MaskStepPrev { step }, &[mask, dy])?;
        }
        return Ok(());
    }
    let Op::Cell {
        cell,
        units,
        has_state,
        recurrent_bias,
    } = *op
    else {
        return Err(GradError::NotUnrolled(
            b.node.name.clone(),
            b.node.op.name(),
        ));
    };
    let cg = |wrt| {
        Op::Grad(GradOp::CellGrad {
            cell,
            units,
            has_state,
            recurrent_bias,
            wrt,
        })
    };
    let ins = b.ins.clone();
    let name = b.node.name.clone();
    let u_w = ins[1];
    let rb = recurrent_bias.then_some(2);
    let st = has_state.then(|| ins.len() - 1);
    let mut operands = ins.clone();
    operands.push(b.dy);
    let gates = b.shape(ins[0])?;
    let dz = b.add(
        cg(CellWrt::Input),
        format!("grad:{name}.gates"),
        gates.clone(),
        &operands,
    );
    b.pass(0, dz);
    let needs_rec =
        b.needed[1] || rb.is_some_and(|i| b.needed[i]) || st.is_some_and(|i| b.needed[i]);
    if !needs_rec {
        return Ok(());
    }
    // Only the GRU's candidate block differs between the two.
    let dz_rec = if cell == CellKind::Gru {
        b.add(
            cg(CellWrt::Recurrent),
            format!("grad:{name}.recurrent"),
            gates,
            &operands,
        )
    } else {
        dz
    };
    if let Some(i) = rb {
        b.give(i, GradOp::BiasGrad, &[dz_rec])?;
    }
    let Some(si) = st else {
        return Ok(());
    };
    let state = ins[si];
    let h_shape = Shape(vec![units]);
    if b.needed[1] {
        // dU = h_{t−1}ᵀ · dz_rec; an LSTM's h is the first half of its state.
        let h_prev = if cell == CellKind::Lstm {
            b.add(
                Op::Slice {
                    start: 0,
                    len: units,
                },
                format!("{name}.h_prev"),
                h_shape.clone(),
                &[state],
            )
        } else {
            state
        };
        b.give(1, GradOp::DenseDw, &[h_prev, dz_rec])?;
    }
    if b.needed[si] {
        let dh = b.add(
            Op::Grad(GradOp::DenseDx),
            format!("grad:{name}.h_prev"),
            h_shape,
            &[dz_rec, u_w],
        );
        if cell == CellKind::Rnn {
            b.pass(si, dh);
        } else {
            let mut o = operands;
            o.push(dh);
            b.give_op(si, cg(CellWrt::State), &o)?;
        }
    }
    Ok(())
}
