//! Shape inference and checking over a built graph. Each layer's rule
//! computes its output shape and its parameters' shapes; every violation
//! is a diagnostic carrying the arithmetic with the actual numbers. Nodes
//! downstream of an error get no shape and report nothing, so each mistake
//! is reported once and independent mistakes are all reported.

use crate::graph::{Graph, NodeId};
use crate::op::GradOp;
use crate::op::{CellKind, Op, Padding, PoolKind};
use crate::shape::{same_out, window_out, Shape, WindowError, MAX_ELEMENTS};
use netc_lang::Diagnostic;
use std::collections::HashSet;

/// Infers every node's shape in place; returns the problems found.
pub fn infer_shapes(graph: &mut Graph, poisoned: &HashSet<NodeId>) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let Some(order) = graph.topo_order() else {
        return diags; // cycles were reported when the graph was built
    };
    for id in order {
        // Autodiff sets its ops' shapes when it creates them.
        if matches!(
            graph.node(id).op,
            Op::Param { .. } | Op::Input | Op::Grad(_)
        ) {
            continue;
        }
        if poisoned.contains(&id) {
            continue;
        }
        let ins: Vec<NodeId> = graph
            .inputs_of(id)
            .into_iter()
            .filter(|n| !matches!(graph.node(*n).op, Op::Param { .. }))
            .collect();
        let Some(in_shapes) = ins
            .iter()
            .map(|n| graph.node(*n).shape.clone())
            .collect::<Option<Vec<Shape>>>()
        else {
            continue;
        };
        match rule(graph, id, &ins, &in_shapes).and_then(|r| too_large(graph, id, r)) {
            Ok((out, params, warnings)) => {
                diags.extend(warnings);
                // The rule's parameter shapes are those of input slots 1, 2, …;
                // a slot fed by a computed tensor (a folded weight) is skipped.
                let slots = graph.inputs_of(id);
                for (p, s) in slots.into_iter().skip(1).zip(params) {
                    if matches!(graph.node(p).op, Op::Param { .. }) {
                        graph.g[p].shape = Some(Shape(s));
                    }
                }
                graph.g[id].shape = Some(out);
            }
            Err(d) => diags.push(d),
        }
    }
    diags
}

/// Whether each node (by index) carries the batch axis: inputs do,
/// parameters do not, and a computed node does when any operand does
/// (a weight folded from parameters does not).
pub fn batched(graph: &Graph) -> Vec<bool> {
    let mut out: Vec<bool> = graph
        .g
        .node_indices()
        .map(|n| !matches!(graph.node(n).op, Op::Param { .. }))
        .collect();
    for id in graph.topo_order().unwrap_or_default() {
        if let Op::Input | Op::Param { .. } = graph.node(id).op {
            continue;
        }
        // Parameter gradients and batch statistics are sums over the batch.
        if let Op::Grad(
            GradOp::DenseDw
            | GradOp::ConvDw { .. }
            | GradOp::BiasGrad
            | GradOp::BatchMean
            | GradOp::BatchVar
            | GradOp::BatchNormDgamma { .. },
        ) = graph.node(id).op
        {
            out[id.index()] = false;
            continue;
        }
        let ins = graph.inputs_of(id);
        out[id.index()] = ins.is_empty() || ins.iter().any(|i| out[i.index()]);
    }
    out
}

type RuleResult = Result<(Shape, Vec<Vec<usize>>, Vec<Diagnostic>), Diagnostic>;

/// Rejects outputs or parameters with more than `MAX_ELEMENTS` elements.
fn too_large(
    graph: &Graph,
    id: NodeId,
    r: (Shape, Vec<Vec<usize>>, Vec<Diagnostic>),
) -> RuleResult {
    let count = |dims: &[usize]| {
        dims.iter()
            .try_fold(1usize, |a, d| a.checked_mul(*d))
            .filter(|n| *n <= MAX_ELEMENTS)
    };
    let node = graph.node(id);
    for dims in std::iter::once(&r.0 .0).chain(r.1.iter()) {
        if count(dims).is_none() {
            return Err(Diagnostic::error(
                "E0208",
                format!(
                    "`{}` ({}) would hold a tensor of shape {} — more than {MAX_ELEMENTS} elements",
                    node.name,
                    node.op.name(),
                    Shape(dims.clone()).plain()
                ),
                node.span,
            )
            .with_label("tensor too large"));
        }
    }
    Ok(r)
}

fn rule(graph: &Graph, id: NodeId, ins: &[NodeId], shapes: &[Shape]) -> RuleResult {
    let node = graph.node(id);
    let layer = &node.name;
    let span = node.span;
    let err = |code, msg: String| Diagnostic::error(code, msg, span);
    let x = shapes.first().cloned().unwrap_or(Shape(vec![]));
    let rank_error = |want: &str, hint: String| {
        err(
            "E0204",
            format!(
                "`{layer}` ({}) expects {want}, but its input has shape {x}",
                node.op.name(),
            ),
        )
        .with_label(format!("input is {x}"))
        .with_note(hint)
    };
    let no_params = |s: Shape| Ok((s, vec![], vec![]));
    match &node.op {
        Op::Conv2d {
            filters,
            kernel,
            stride,
            padding,
            ..
        } => {
            if x.rank() != 3 {
                return Err(rank_error("[N, H, W, C]", image_hint(&x)));
            }
            let mut notes = Vec::new();
            let mut out = [0usize; 2];
            for (ax, axis) in ["height", "width"].iter().enumerate() {
                let (w, f, s) = (x.0[ax], pick(*kernel, ax), pick(*stride, ax));
                let r = match padding {
                    Padding::Same => Ok(same_out(w, f, s).0),
                    Padding::Valid => window_out(w, f, s, 0),
                    Padding::Explicit(ph, pw) => window_out(w, f, s, pick((*ph, *pw), ax)),
                };
                match r {
                    Ok(o) => out[ax] = o,
                    Err(e) => notes.push((*axis, e)),
                }
            }
            if let Some(d) = window_diag(layer, "conv2d", span, &x, &notes, true) {
                return Err(d);
            }
            let c = x.0[2];
            let mut params = vec![vec![kernel.0, kernel.1, c, *filters]];
            params.push(vec![*filters]);
            Ok((Shape(vec![out[0], out[1], *filters]), params, vec![]))
        }
        Op::Pool2d {
            kind,
            size,
            stride,
            padding,
        } => {
            if x.rank() != 3 {
                return Err(rank_error("[N, H, W, C]", image_hint(&x)));
            }
            let op = if *kind == PoolKind::Max {
                "maxpool2d"
            } else {
                "avgpool2d"
            };
            if let Some(d) = pool_padding_diag(layer, op, span, *size, *padding) {
                return Err(d);
            }
            let mut notes = Vec::new();
            let mut warn = Vec::new();
            let mut out = [0usize; 2];
            for (ax, axis) in ["height", "width"].iter().enumerate() {
                let (w, f, s) = (x.0[ax], pick(*size, ax), pick(*stride, ax));
                let r = match padding {
                    Padding::Same => Ok(same_out(w, f, s).0),
                    Padding::Valid => window_out(w, f, s, 0),
                    Padding::Explicit(ph, pw) => window_out(w, f, s, pick((*ph, *pw), ax)),
                };
                match r {
                    Ok(o) => out[ax] = o,
                    Err(WindowError::StrideDoesNotDivide { floor, arithmetic }) => {
                        out[ax] = floor;
                        warn.push((
                            *axis,
                            WindowError::StrideDoesNotDivide { floor, arithmetic },
                        ));
                    }
                    Err(e) => notes.push((*axis, e)),
                }
            }
            if let Some(d) = window_diag(layer, op, span, &x, &notes, true) {
                return Err(d);
            }
            let warnings = window_diag(layer, op, span, &x, &warn, false)
                .into_iter()
                .collect();
            Ok((Shape(vec![out[0], out[1], x.0[2]]), vec![], warnings))
        }
        Op::Flatten => no_params(Shape(vec![x.numel()])),
        Op::Reshape { dims } => {
            // Up to 64 dims of 2^24 each: the product can pass 2^64.
            let exact = dims
                .iter()
                .flatten()
                .try_fold(1usize, |a, d| a.checked_mul(*d));
            let known = exact.unwrap_or(usize::MAX);
            let target = |d: &[Option<usize>]| {
                format!(
                    "[N, {}]",
                    d.iter()
                        .map(|d| d.map_or("-1".into(), |d| d.to_string()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let ok = if dims.contains(&None) {
                known > 0 && x.numel() % known == 0
            } else {
                known == x.numel()
            };
            if !ok {
                return Err(err(
                    "E0207",
                    format!(
                        "`{layer}` cannot reshape {x} ({} elements) into {}",
                        x.numel(),
                        target(dims)
                    ),
                )
                .with_label("element counts differ")
                .with_note(format!(
                    "the input holds {} elements; the target holds {}{}",
                    product(&x),
                    if dims.contains(&None) {
                        "a multiple of "
                    } else {
                        ""
                    },
                    exact.map_or("more than 2^64".to_string(), |k| k.to_string())
                )));
            }
            let out = dims
                .iter()
                .map(|d| d.unwrap_or(x.numel() / known.max(1)))
                .collect();
            no_params(Shape(out))
        }
        Op::Dense { units, .. } => {
            if x.rank() == 0 || x.rank() > 2 {
                let hint = if x.rank() > 2 {
                    format!("help: insert `flatten` before it: {} features", product(&x))
                } else {
                    String::new()
                };
                return Err(rank_error("[N, F] or [N, T, F]", hint));
            }
            let f = *x.0.last().unwrap_or(&0);
            let mut out = x.0.clone();
            if let Some(l) = out.last_mut() {
                *l = *units;
            }
            Ok((Shape(out), vec![vec![f, *units], vec![*units]], vec![]))
        }
        Op::Dropout { .. } | Op::Activation(_) => no_params(x),
        Op::BatchNorm { .. } => {
            let c = *x.0.last().unwrap_or(&0);
            Ok((x, vec![vec![c]; 4], vec![]))
        }
        Op::Recurrent {
            cell,
            units,
            return_sequences,
            ..
        } => {
            if x.rank() != 2 {
                let hint = match x.rank() {
                    1 => format!(
                        "help: a sequence is [T, F]; for {} steps of one feature write `reshape([{}, 1])`",
                        x.0[0], x.0[0]
                    ),
                    _ => "help: a sequence is [T, F] (time steps, features per step)".to_string(),
                };
                return Err(rank_error("a sequence [N, T, F]", hint));
            }
            let (t, f) = (x.0[0], x.0[1]);
            if t > crate::shape::MAX_STEPS {
                return Err(err(
                    "E0209",
                    format!(
                        "`{layer}` ({}) would run {t} time steps; netc unrolls at most {}",
                        node.op.name(),
                        crate::shape::MAX_STEPS
                    ),
                )
                .with_label(format!("input is {x}"))
                .with_note("help: split long series into windows, or downsample them"));
            }
            let g = cell.gates() * units;
            let out = if *return_sequences {
                vec![t, *units]
            } else {
                vec![*units]
            };
            Ok((
                Shape(out),
                vec![vec![f, g], vec![*units, g], vec![g], vec![g]],
                vec![],
            ))
        }
        Op::Add | Op::Mul | Op::Average => {
            if let Some((i, s)) = shapes.iter().enumerate().find(|(_, s)| **s != x) {
                return Err(err(
                    "E0205",
                    format!(
                        "`{layer}` ({}) needs equal shapes, found {x} and {s}",
                        node.op.name()
                    ),
                )
                .with_label("shapes differ")
                .with_secondary(
                    graph.node(ins[0]).span,
                    format!("{x} comes from `{}`", graph.node(ins[0]).name),
                )
                .with_secondary(
                    graph.node(ins[i]).span,
                    format!("{s} comes from `{}`", graph.node(ins[i]).name),
                ));
            }
            no_params(x)
        }
        Op::Concat { axis } => {
            let rank = x.rank() as i64;
            let ax = if *axis < 0 { axis + rank } else { *axis };
            if ax < 0 || ax >= rank {
                return Err(err(
                    "E0206",
                    format!("`{layer}` has axis {axis}, but its inputs have rank {rank}"),
                )
                .with_label("axis out of range")
                .with_note(format!(
                    "axes count per example (batch excluded): 0..{rank} or -{rank}..-1"
                )));
            }
            let ax = ax as usize;
            let mut out = x.0.clone();
            for (i, s) in shapes.iter().enumerate().skip(1) {
                let same_rest = s.rank() == x.rank()
                    && s.0
                        .iter()
                        .zip(&x.0)
                        .enumerate()
                        .all(|(k, (a, b))| k == ax || a == b);
                if !same_rest {
                    return Err(err(
                        "E0206",
                        format!(
                            "`{layer}` (concat on axis {axis}) needs equal sizes on the other axes, found {x} and {s}"
                        ),
                    )
                    .with_label("shapes differ off the concatenation axis")
                    .with_secondary(graph.node(ins[0]).span, format!("{x} comes from `{}`", graph.node(ins[0]).name))
                    .with_secondary(graph.node(ins[i]).span, format!("{s} comes from `{}`", graph.node(ins[i]).name)));
                }
                out[ax] += s.0[ax];
            }
            no_params(Shape(out))
        }
        Op::Input | Op::Param { .. } | Op::Grad(_) => no_params(x),
        Op::Cell {
            cell,
            units,
            recurrent_bias,
            ..
        } => {
            // The cell's weights are its own parameters: shape them here.
            let g = cell.gates() * units;
            let mut params = vec![vec![*units, g]];
            if *recurrent_bias {
                params.push(vec![g]);
            }
            let slots = graph.inputs_of(id);
            let all: Vec<Option<Shape>> = slots
                .iter()
                .enumerate()
                .map(|(i, n)| match params.get(i.wrapping_sub(1)) {
                    Some(p) if i >= 1 => Some(Shape(p.clone())),
                    _ => graph.node(*n).shape.clone(),
                })
                .collect();
            let refs: Vec<Option<&Shape>> = all.iter().map(|s| s.as_ref()).collect();
            match op_shape(&node.op, &refs) {
                Some(s) => Ok((s, params, vec![])),
                None => Err(err(
                    "E0900",
                    format!("internal error: cell `{layer}` has operands of the wrong shapes"),
                )),
            }
        }
        Op::Map { .. } | Op::TimeSlice { .. } | Op::Slice { .. } | Op::Stack => {
            // Optimizer-made ops: their operands (parameters included)
            // already have shapes; a failure here is a netc bug.
            let all: Option<Vec<Shape>> = graph
                .inputs_of(id)
                .iter()
                .map(|i| graph.node(*i).shape.clone())
                .collect();
            let out = all.and_then(|all| {
                let refs: Vec<Option<&Shape>> = all.iter().map(Some).collect();
                op_shape(&node.op, &refs)
            });
            match out {
                Some(s) => no_params(s),
                None => Err(err(
                    "E0900",
                    format!(
                        "internal error: optimizer-made node `{layer}` ({}) has operands of incompatible shapes",
                        node.op.name()
                    ),
                )),
            }
        }
    }
}

/// The output shape of `op` applied to operands of shapes `ins` (in slot
/// order, parameters included; `None` where unknown), or `None` when the
/// operands do not fit. A compact form of the rules above without
/// diagnostics, used by the optimizer for the nodes it creates.
pub fn op_shape(op: &Op, ins: &[Option<&Shape>]) -> Option<Shape> {
    let x = ins.first().copied().flatten();
    let window = |x: &Shape, k: (usize, usize), s: (usize, usize), p: Padding, floor: bool| {
        if x.rank() != 3 {
            return None;
        }
        let mut out = [0usize; 2];
        for (ax, o) in out.iter_mut().enumerate() {
            let (w, f, st) = (x.0[ax], pick(k, ax), pick(s, ax));
            let r = match p {
                Padding::Same => Ok(same_out(w, f, st).0),
                Padding::Valid => window_out(w, f, st, 0),
                Padding::Explicit(ph, pw) => window_out(w, f, st, pick((ph, pw), ax)),
            };
            *o = match r {
                Ok(v) => v,
                Err(WindowError::StrideDoesNotDivide { floor: v, .. }) if floor => v,
                Err(_) => return None,
            };
        }
        Some(out)
    };
    match op {
        Op::Input | Op::Param { .. } | Op::Grad(_) => x.cloned(),
        Op::Conv2d {
            filters,
            kernel,
            stride,
            padding,
            ..
        } => {
            let o = window(x?, *kernel, *stride, *padding, false)?;
            Some(Shape(vec![o[0], o[1], *filters]))
        }
        Op::Pool2d {
            size,
            stride,
            padding,
            ..
        } => {
            let x = x?;
            let o = window(x, *size, *stride, *padding, true)?;
            Some(Shape(vec![o[0], o[1], x.0[2]]))
        }
        Op::Flatten => Some(Shape(vec![x?.numel()])),
        Op::Reshape { dims } => {
            let x = x?;
            let known = dims
                .iter()
                .flatten()
                .try_fold(1usize, |a, d| a.checked_mul(*d))?;
            let fill = if dims.contains(&None) {
                (known > 0 && x.numel() % known == 0).then(|| x.numel() / known)?
            } else {
                (known == x.numel()).then_some(0)?
            };
            Some(Shape(dims.iter().map(|d| d.unwrap_or(fill)).collect()))
        }
        Op::Dense { units, .. } => {
            let x = x?;
            if x.rank() == 0 || x.rank() > 2 {
                return None;
            }
            let mut out = x.0.clone();
            *out.last_mut()? = *units;
            Some(Shape(out))
        }
        Op::Dropout { .. } | Op::Activation(_) | Op::BatchNorm { .. } => x.cloned(),
        Op::Recurrent {
            units,
            return_sequences,
            ..
        } => {
            let x = x?;
            (x.rank() == 2).then_some(())?;
            Some(Shape(if *return_sequences {
                vec![x.0[0], *units]
            } else {
                vec![*units]
            }))
        }
        Op::Add | Op::Mul | Op::Average => {
            let x = x?;
            ins.iter()
                .all(|s| s.is_some_and(|s| s == x))
                .then(|| x.clone())
        }
        Op::Concat { axis } => {
            let x = x?;
            let rank = x.rank() as i64;
            let ax = if *axis < 0 { axis + rank } else { *axis };
            if ax < 0 || ax >= rank {
                return None;
            }
            let ax = ax as usize;
            let mut out = x.0.clone();
            for s in &ins[1..] {
                let s = (*s)?;
                let fits = s.rank() == x.rank()
                    && s.0
                        .iter()
                        .zip(&x.0)
                        .enumerate()
                        .all(|(k, (a, b))| k == ax || a == b);
                if !fits {
                    return None;
                }
                out[ax] += s.0[ax];
            }
            Some(Shape(out))
        }
        Op::Map { expr } => {
            let x = x?;
            let c = *x.0.last()?;
            let fits = ins.iter().all(|s| s.is_some_and(|s| s == x || s.0 == [c]));
            (fits && expr.arity() <= ins.len()).then(|| x.clone())
        }
        Op::TimeSlice { step } => {
            let x = x?;
            (x.rank() == 2 && *step < x.0[0]).then(|| Shape(vec![x.0[1]]))
        }
        Op::Cell {
            cell,
            units,
            has_state,
            recurrent_bias,
        } => {
            let g = cell.gates() * units;
            let state = if *cell == CellKind::Lstm {
                2 * units
            } else {
                *units
            };
            let want_in = 2 + usize::from(*recurrent_bias) + usize::from(*has_state);
            if ins.len() != want_in || x?.0 != [g] || ins[1]?.0 != [*units, g] {
                return None;
            }
            if *recurrent_bias && ins[2]?.0 != [g] {
                return None;
            }
            if *has_state && ins[want_in - 1]?.0 != [state] {
                return None;
            }
            Some(Shape(vec![state]))
        }
        Op::Slice { start, len } => {
            let x = x?;
            let last = *x.0.last()?;
            if *len == 0 || start + len > last {
                return None;
            }
            let mut out = x.0.clone();
            *out.last_mut()? = *len;
            Some(Shape(out))
        }
        Op::Stack => {
            let x = x?;
            if x.rank() != 1 || !ins.iter().all(|s| s.is_some_and(|s| s == x)) {
                return None;
            }
            Some(Shape(vec![ins.len(), x.0[0]]))
        }
    }
}

/// `26·26·4 = 2704` (or just `784` for one axis).
fn product(x: &Shape) -> String {
    if x.rank() == 1 {
        return x.numel().to_string();
    }
    let factors: Vec<String> = x.0.iter().map(|d| d.to_string()).collect();
    format!("{} = {}", factors.join("·"), x.numel())
}

fn pick(p: (usize, usize), ax: usize) -> usize {
    if ax == 0 {
        p.0
    } else {
        p.1
    }
}

fn image_hint(x: &Shape) -> String {
    match x.rank() {
        1 => format!(
            "help: images are [H, W, C]; to treat {} features as an image, `reshape` first",
            x.0[0]
        ),
        _ => "help: images are [H, W, C] (channels last)".to_string(),
    }
}

/// Rejects explicit pooling padding of at least the window size on an
/// axis: the first window (and, by symmetry, the last) then covers padding
/// only, whose maximum is −inf and whose average is 0/0 = NaN. `same`
/// padding never reaches the window size.
fn pool_padding_diag(
    layer: &str,
    op: &str,
    span: netc_lang::Span,
    size: (usize, usize),
    padding: Padding,
) -> Option<Diagnostic> {
    let Padding::Explicit(ph, pw) = padding else {
        return None;
    };
    let fails: Vec<String> = ["height", "width"]
        .iter()
        .enumerate()
        .filter_map(|(ax, axis)| {
            let (f, p) = (pick(size, ax), pick((ph, pw), ax));
            (p >= f).then(|| {
                format!(
                    "{axis}: the first window covers −P … −P + F − 1 = −{p} … −{}, all padding (P = {p} ≥ F = {f}; at most F − 1 = {})",
                    p + 1 - f,
                    f - 1,
                )
            })
        })
        .collect();
    if fails.is_empty() {
        return None;
    }
    let mut d = Diagnostic::error(
        "E0210",
        format!("`{layer}` ({op}): the padding is so wide that some windows hold only padding"),
        span,
    )
    .with_label("windows of padding only");
    for f in fails {
        d = d.with_note(f);
    }
    Some(d.with_note(
        "help: a window of padding only has no maximum (−inf) and no average (0/0); pad by at most F − 1, or use `padding: same`",
    ))
}

/// One diagnostic for all failing axes of a window layer.
fn window_diag(
    layer: &str,
    op: &str,
    span: netc_lang::Span,
    x: &Shape,
    fails: &[(&str, WindowError)],
    error: bool,
) -> Option<Diagnostic> {
    let (axis, first) = fails.first()?;
    let (code, msg, label) = match first {
        WindowError::TooLarge { .. } => (
            "E0201",
            format!("`{layer}` ({op}): the window is larger than the padded input {x}"),
            "window does not fit",
        ),
        WindowError::StrideDoesNotDivide { .. } if error => (
            "E0202",
            format!("`{layer}` ({op}): the stride does not divide the {axis} of input {x}"),
            "stride does not divide (W − F + 2P)",
        ),
        WindowError::StrideDoesNotDivide { .. } => (
            "W0203",
            format!("`{layer}` ({op}): the stride does not divide the {axis}; the last positions of input {x} are dropped"),
            "output size rounded down",
        ),
    };
    let mut d = if error {
        Diagnostic::error(code, msg, span)
    } else {
        Diagnostic::warning(code, msg, span)
    }
    .with_label(label);
    for (axis, e) in fails {
        let line = match e {
            WindowError::TooLarge { arithmetic } => format!("{axis}: {arithmetic} < 1"),
            WindowError::StrideDoesNotDivide { arithmetic, floor } if error => {
                format!("{axis}: {arithmetic}, not an integer (floor would give {floor})")
            }
            WindowError::StrideDoesNotDivide { arithmetic, floor } => {
                format!("{axis}: {arithmetic}, rounded down to {floor}")
            }
        };
        d = d.with_note(line);
    }
    if error {
        d = d.with_note(match first {
            WindowError::TooLarge { .. } => {
                "help: use a smaller kernel, add padding, or remove an earlier downsampling layer"
            }
            _ => "help: choose a stride that divides (W − F + 2P), or use `padding: same`",
        });
    }
    Some(d)
}
