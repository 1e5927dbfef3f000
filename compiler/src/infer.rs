//! Shape inference and checking over a built graph. Each op's rule (in
//! the registry, [`crate::ops::infer`]) computes its output shape and its
//! parameters' shapes; this pass walks the graph and turns every
//! violation into a diagnostic carrying the arithmetic with the actual
//! numbers. Nodes
//! downstream of an error get no shape and report nothing, so each mistake
//! is reported once and independent mistakes are all reported.

use crate::graph::{Graph, NodeId};
use crate::op::{CellKind, GradOp, Op, Padding};
use crate::ops::{self, product, ShapeError};
use crate::shape::{Shape, WindowError, MAX_ELEMENTS, MAX_STEPS};
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
            Op::Param { .. } | Op::Input { .. } | Op::Grad(_)
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
        if let Some(d) = token_misuse(graph, id) {
            diags.push(d);
            continue;
        }
        match rule(graph, id, &in_shapes).and_then(|r| too_large(graph, id, r)) {
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
        if let Op::Input { .. } | Op::Param { .. } = graph.node(id).op {
            continue;
        }
        // Parameter gradients and batch statistics are sums over the batch.
        if let Op::Grad(
            GradOp::DenseDw
            | GradOp::EmbeddingDw { .. }
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

/// E0211: a token input feeds something other than an `embedding`, or an
/// `embedding` reads something other than a token input. Token ids are
/// integers stored as f32 values; arithmetic on them means nothing, and
/// only token inputs have their ids checked against the vocabulary.
fn token_misuse(graph: &Graph, id: NodeId) -> Option<Diagnostic> {
    let node = graph.node(id);
    let slots = graph.inputs_of(id);
    let is_tokens = |n: NodeId| matches!(graph.node(n).op, Op::Input { tokens: true, .. });
    if let Op::Embedding { .. } = node.op {
        let x = *slots.first()?;
        if is_tokens(x) {
            return None;
        }
        let src = graph.node(x);
        return Some(
            Diagnostic::error(
                "E0211",
                format!(
                    "`{}` (embedding) reads token ids, but `{}` is not a token input",
                    node.name, src.name
                ),
                node.span,
            )
            .with_label("expects token ids")
            .with_secondary(src.span, format!("`{}` comes from here", src.name))
            .with_note("help: declare the ids as a token input: `input words: tokens[T]`"),
        );
    }
    let t = slots.into_iter().find(|n| is_tokens(*n))?;
    let src = graph.node(t);
    Some(
        Diagnostic::error(
            "E0211",
            format!(
                "token input `{}` feeds `{}` ({}); token ids can only feed an `embedding` layer",
                src.name,
                node.name,
                node.op.name()
            ),
            node.span,
        )
        .with_label("reads token ids")
        .with_secondary(
            src.span,
            format!("`{}` is declared as tokens here", src.name),
        )
        .with_note(format!(
            "help: look the ids up first: `{} -> embedding(vocab, dim) -> ...`",
            src.name
        )),
    )
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

fn rule(graph: &Graph, id: NodeId, shapes: &[Shape]) -> RuleResult {
    let node = graph.node(id);
    // The registry's rule sees every slot; parameters are not shaped yet
    // unless an earlier pass shaped them.
    let slots = graph.inputs_of(id);
    let slot_shapes: Vec<Option<Shape>> =
        slots.iter().map(|n| graph.node(*n).shape.clone()).collect();
    let refs: Vec<Option<&Shape>> = slot_shapes.iter().map(|s| s.as_ref()).collect();
    let x = shapes.first().cloned().unwrap_or(Shape(vec![]));
    match ops::infer(&node.op, &refs) {
        Ok(r) => {
            let warnings = r
                .warnings
                .iter()
                .filter_map(|w| render(graph, id, &slots, &x, w, false))
                .collect();
            Ok((r.out, r.params, warnings))
        }
        Err(e) => Err(render(graph, id, &slots, &x, &e, true).unwrap_or_else(|| {
            Diagnostic::error(
                "E0900",
                format!(
                    "internal error: `{}` ({}) has operands of shapes netc cannot infer from",
                    node.name,
                    node.op.name()
                ),
                node.span,
            )
        })),
    }
}

/// The diagnostic for a shape rule's error (or, with `error` false, its
/// warning), with the arithmetic and the operands' sources. `x` is the
/// first operand's shape.
fn render(
    graph: &Graph,
    id: NodeId,
    slots: &[NodeId],
    x: &Shape,
    e: &ShapeError,
    error: bool,
) -> Option<Diagnostic> {
    let node = graph.node(id);
    let layer = &node.name;
    let op = node.op.name();
    let span = node.span;
    let err = |code, msg: String| Diagnostic::error(code, msg, span);
    let source = |i: usize| {
        let n = graph.node(slots[i]);
        (
            n.span,
            n.shape.clone().unwrap_or(Shape(vec![])),
            n.name.clone(),
        )
    };
    Some(match e {
        ShapeError::Unknown => return None,
        ShapeError::Rank { want, hint } => err(
            "E0204",
            format!("`{layer}` ({op}) expects {want}, but its input has shape {x}"),
        )
        .with_label(format!("input is {x}"))
        .with_note(hint.clone()),
        ShapeError::Window { fails } => return window_diag(layer, op, span, x, fails, error),
        ShapeError::PoolPadding {
            axes,
            size,
            padding,
        } => pool_padding_diag(
            layer,
            op,
            span,
            *axes,
            *size,
            Padding::Explicit(padding.0, padding.1),
        )?,
        ShapeError::Reshape { dims, known } => {
            let target = format!(
                "[N, {}]",
                dims.iter()
                    .map(|d| d.map_or("-1".into(), |d| d.to_string()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            err(
                "E0207",
                format!(
                    "`{layer}` cannot reshape {x} ({} elements) into {target}",
                    x.numel()
                ),
            )
            .with_label("element counts differ")
            .with_note(format!(
                "the input holds {} elements; the target holds {}{}",
                product(x),
                if dims.contains(&None) {
                    "a multiple of "
                } else {
                    ""
                },
                known.map_or("more than 2^64".to_string(), |k| k.to_string())
            ))
        }
        ShapeError::TooManySteps { steps } => err(
            "E0209",
            format!(
                "`{layer}` ({op}) would run {steps} time steps; netc unrolls at most {MAX_STEPS}"
            ),
        )
        .with_label(format!("input is {x}"))
        .with_note("help: split long series into windows, or downsample them"),
        ShapeError::InitialState { index, want } => {
            let (si, s, ni) = source(*index);
            let (units, what) = match node.op {
                Op::Recurrent {
                    cell: CellKind::Lstm,
                    units,
                    ..
                } => {
                    (units, format!("h ++ c, 2·{units} = {want} values"))
                }
                Op::Recurrent { units, .. } => (units, format!("h, {units} values")),
                _ => (*want, format!("{want} values")),
            };
            err(
                "E0212",
                format!(
                    "`{layer}` ({op}) starts from a state [N, {want}], but `{ni}` has shape {s}"
                ),
            )
            .with_label(format!("expects a state of {want} values per example"))
            .with_secondary(si, format!("{s} comes from `{ni}`"))
            .with_note(format!("the state of {op}({units}) is {what}"))
            .with_note(format!(
                "help: pass the output of a {op}({units}, return_state: true) encoder"
            ))
        }
        ShapeError::Unequal { index } => {
            let (s0, _, n0) = source(0);
            let (si, s, ni) = source(*index);
            err(
                "E0205",
                format!("`{layer}` ({op}) needs equal shapes, found {x} and {s}"),
            )
            .with_label("shapes differ")
            .with_secondary(s0, format!("{x} comes from `{n0}`"))
            .with_secondary(si, format!("{s} comes from `{ni}`"))
        }
        ShapeError::ConcatAxis { axis } => {
            let rank = x.rank();
            err(
                "E0206",
                format!("`{layer}` has axis {axis}, but its inputs have rank {rank}"),
            )
            .with_label("axis out of range")
            .with_note(format!(
                "axes count per example (batch excluded): 0..{rank} or -{rank}..-1"
            ))
        }
        ShapeError::ConcatMismatch { index, axis } => {
            let (s0, _, n0) = source(0);
            let (si, s, ni) = source(*index);
            err(
                "E0206",
                format!(
                    "`{layer}` (concat on axis {axis}) needs equal sizes on the other axes, found {x} and {s}"
                ),
            )
            .with_label("shapes differ off the concatenation axis")
            .with_secondary(s0, format!("{x} comes from `{n0}`"))
            .with_secondary(si, format!("{s} comes from `{ni}`"))
        }
        ShapeError::Internal => err(
            "E0900",
            format!("internal error: netc-made node `{layer}` ({op}) has operands of incompatible shapes"),
        ),
    })
}

/// Rejects explicit pooling padding of at least the window size on an
/// axis: the first window (and, by symmetry, the last) then covers padding
/// only, whose maximum is −inf and whose average is 0/0 = NaN. `same`
/// padding never reaches the window size. `axes` names the two axes.
fn pool_padding_diag(
    layer: &str,
    op: &str,
    span: netc_lang::Span,
    axes: [&str; 2],
    size: (usize, usize),
    padding: Padding,
) -> Option<Diagnostic> {
    let Padding::Explicit(ph, pw) = padding else {
        return None;
    };
    let fails: Vec<String> = axes
        .iter()
        .enumerate()
        .filter_map(|(ax, axis)| {
            let (f, p) = if ax == 0 { (size.0, ph) } else { (size.1, pw) };
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
