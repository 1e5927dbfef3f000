//! The kernel IR's text form (pinned by snapshot tests, `--emit kernels`).
//! [`super::parse`] reads it back: everything a [`Program`] holds is printed,
//! so printing, parsing and printing again gives the same text.

use super::ir::*;
use std::fmt::Write;

fn index(ix: &Index) -> String {
    let mut parts: Vec<String> = ix
        .terms
        .iter()
        .map(|(v, c)| {
            if *c == 1 {
                format!("i{v}")
            } else {
                format!("{c}*i{v}")
            }
        })
        .collect();
    if ix.offset != 0 || parts.is_empty() {
        parts.push(ix.offset.to_string());
    }
    parts.join(" + ").replace("+ -", "- ")
}

/// A kernel or program name as written: bare when the parser can find its
/// end (no blanks, brackets or quotes), else quoted like a Rust string.
fn name(s: &str) -> String {
    let bare = !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "(){}\"".contains(c));
    if bare {
        s.to_string()
    } else {
        format!("{s:?}")
    }
}

/// The `(vars, scalars)` a loop kernel needs: one more than the highest loop
/// variable and scalar register it mentions. The text leaves the declared
/// counts out when they are these, which is what the lowering declares.
pub(crate) fn implied_counts(l: &LoopKernel) -> (usize, usize) {
    fn ix(i: &Index, v: &mut usize) {
        for (var, _) in &i.terms {
            *v = (*v).max(var.saturating_add(1));
        }
    }
    fn ex(e: &Expr, v: &mut usize, s: &mut usize) {
        match e {
            Expr::Const(_) => {}
            Expr::Load(_, i) => ix(i, v),
            Expr::Gather { row, index, .. } => {
                ex(&row.value, v, s);
                ix(index, v);
            }
            Expr::Get(r) => *s = (*s).max(r.saturating_add(1)),
            Expr::Iter(var) => *v = (*v).max(var.saturating_add(1)),
            Expr::Un(_, x) => ex(x, v, s),
            Expr::Bin(_, a, b) => {
                ex(a, v, s);
                ex(b, v, s);
            }
            Expr::Select(a, _, b, t, f) => {
                for x in [a, b, t, f] {
                    ex(x, v, s);
                }
            }
        }
    }
    fn st(body: &[Stmt], v: &mut usize, s: &mut usize) {
        for stmt in body {
            match stmt {
                Stmt::Loop { var, body, .. } => {
                    *v = (*v).max(var.saturating_add(1));
                    st(body, v, s);
                }
                Stmt::Store { index, value, .. } => {
                    ix(index, v);
                    ex(value, v, s);
                }
                Stmt::Set { scalar, value } => {
                    *s = (*s).max(scalar.saturating_add(1));
                    ex(value, v, s);
                }
                Stmt::ScatterAdd {
                    row, index, value, ..
                } => {
                    ex(&row.value, v, s);
                    ix(index, v);
                    ex(value, v, s);
                }
                Stmt::IfInBounds { conds, body } => {
                    for (i, _) in conds {
                        ix(i, v);
                    }
                    st(body, v, s);
                }
            }
        }
    }
    let (mut v, mut s) = (0, 0);
    st(&l.body, &mut v, &mut s);
    (v, s)
}

fn expr(e: &Expr) -> String {
    match e {
        Expr::Const(c) => {
            if c.is_infinite() {
                if *c > 0.0 {
                    "inf".into()
                } else {
                    "-inf".into()
                }
            } else {
                format!("{c:?}")
            }
        }
        Expr::Load(b, ix) => format!("%{b}[{}]", index(ix)),
        Expr::Gather {
            buf,
            row,
            index: ix,
        } => format!("%{buf}[{}]", row_index(row, ix)),
        Expr::Get(s) => format!("s{s}"),
        Expr::Iter(v) => format!("float(i{v})"),
        Expr::Un(op, x) => format!("{op}({})", expr(x)),
        Expr::Bin(op @ (BinOp::Max | BinOp::Min), a, b) => {
            format!("{op}({}, {})", expr(a), expr(b))
        }
        Expr::Bin(op, a, b) => format!("({} {op} {})", expr(a), expr(b)),
        Expr::Select(a, c, b, t, f) => format!(
            "select({} {c} {}, {}, {})",
            expr(a),
            expr(b),
            expr(t),
            expr(f)
        ),
    }
}

/// `row(ID, ROWS) * STRIDE + INDEX`: a data-dependent row plus an affine index.
fn row_index(row: &Row, ix: &Index) -> String {
    format!(
        "row({}, {}) * {} + {}",
        expr(&row.value),
        row.rows,
        row.stride,
        index(ix)
    )
}

fn stmts(out: &mut String, body: &[Stmt], depth: usize) {
    let pad = "  ".repeat(depth);
    for s in body {
        match s {
            Stmt::Loop { var, extent, body } => {
                let _ = writeln!(out, "{pad}for i{var} in 0..{extent} {{");
                stmts(out, body, depth + 1);
                let _ = writeln!(out, "{pad}}}");
            }
            Stmt::Store {
                buf,
                index: ix,
                value,
            } => {
                let _ = writeln!(out, "{pad}%{buf}[{}] = {}", index(ix), expr(value));
            }
            Stmt::Set { scalar, value } => {
                let _ = writeln!(out, "{pad}s{scalar} = {}", expr(value));
            }
            Stmt::ScatterAdd {
                buf,
                row,
                index: ix,
                value,
            } => {
                let _ = writeln!(
                    out,
                    "{pad}%{buf}[{}] += {}",
                    row_index(row, ix),
                    expr(value)
                );
            }
            Stmt::IfInBounds { conds, body } => {
                let c: Vec<String> = conds
                    .iter()
                    .map(|(ix, b)| format!("0 <= {} < {b}", index(ix)))
                    .collect();
                let _ = writeln!(out, "{pad}if {} {{", c.join(" && "));
                stmts(out, body, depth + 1);
                let _ = writeln!(out, "{pad}}}");
            }
        }
    }
}

/// One kernel's text.
pub fn kernel_text(k: &Kernel) -> String {
    let mut out = String::new();
    match &k.body {
        KernelBody::Loop(l) => {
            let declared = if implied_counts(l) == (l.vars, l.scalars) {
                String::new()
            } else {
                format!(", vars {}, scalars {}", l.vars, l.scalars)
            };
            let _ = writeln!(out, "kernel {} (loop{declared}) {{", name(&k.name));
            stmts(&mut out, &l.body, 1);
            out.push_str("}\n");
        }
        KernelBody::Contraction(c) => {
            let _ = writeln!(out, "kernel {} (contraction) {{", name(&k.name));
            // k3's A stride is 1 but where A is read transposed; the short
            // form keeps the common case as it always read.
            let ks = &c.k_strides[..if c.k_strides[2] == 1 { 2 } else { 3 }];
            let _ = writeln!(
                out,
                "  M = {:?} strides {:?}, N = {}, K = {:?} strides {:?}",
                c.m_dims, c.m_strides, c.n, c.k_dims, ks
            );
            let bt = if c.b_transposed { ", transposed" } else { "" };
            let bias = c
                .bias
                .map_or("none".to_string(), |(b, o)| format!("%{b}+{o}"));
            let _ = writeln!(
                out,
                "  %{}+{} {}= epilogue:{:?}(%{}+{} · %{}+{} [ldb {}{bt}] + bias {bias}) [ldc {}]",
                c.c.0,
                c.c.1,
                if c.accumulate { "+" } else { "" },
                c.epilogue,
                c.a.0,
                c.a.1,
                c.b.0,
                c.b.1,
                c.ldb,
                c.ldc
            );
            out.push_str("}\n");
        }
    }
    out
}

/// The whole program: buffers, then kernels in order.
pub fn program_text(p: &Program) -> String {
    let mut out = format!("program {} (batch {}) {{\n", name(&p.name), p.batch);
    for (i, b) in p.buffers.iter().enumerate() {
        let (kind, tag) = match &b.kind {
            BufKind::Input(t) => ("input", Some(t)),
            BufKind::Param(t) => ("param", Some(t)),
            BufKind::Temp => ("temp", None),
            BufKind::State(t) => ("state", Some(t)),
        };
        // The kind's own name is the buffer's everywhere the lowering
        // makes one; only a different one needs saying.
        let tag = match tag {
            Some(t) if *t != b.name => format!(" as {t:?}"),
            _ => String::new(),
        };
        let _ = writeln!(out, "  %{i} = {kind} {:?} [{}]{tag}", b.name, b.len);
    }
    let bindings = [
        ("input", &p.inputs),
        ("param", &p.params),
        ("output", &p.outputs),
    ];
    for (role, list) in bindings {
        for o in list {
            let tokens = o.vocab.map_or(String::new(), |v| format!(" tokens {v}"));
            let _ = writeln!(
                out,
                "  {role} {:?} = %{} {:?}{tokens}",
                o.name, o.buf, o.shape
            );
        }
    }
    out.push('\n');
    for k in &p.kernels {
        for line in kernel_text(k).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out.push_str("}\n");
    out
}
