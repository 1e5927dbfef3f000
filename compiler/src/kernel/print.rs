//! The kernel IR's text form (pinned by snapshot tests, `--emit kernels`).

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
            let _ = writeln!(out, "kernel {} (loop) {{", k.name);
            stmts(&mut out, &l.body, 1);
            out.push_str("}\n");
        }
        KernelBody::Contraction(c) => {
            let _ = writeln!(out, "kernel {} (contraction) {{", k.name);
            let _ = writeln!(
                out,
                "  M = {:?} strides {:?}, N = {}, K = {:?} strides {:?}",
                c.m_dims, c.m_strides, c.n, c.k_dims, c.k_strides
            );
            let bias = c
                .bias
                .map_or("none".to_string(), |(b, o)| format!("%{b}+{o}"));
            let _ = writeln!(
                out,
                "  %{}+{} {}= epilogue:{:?}(%{}+{} · %{}+{} [ldb {}] + bias {bias}) [ldc {}]",
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
    let mut out = format!("program {} (batch {}) {{\n", p.name, p.batch);
    for (i, b) in p.buffers.iter().enumerate() {
        let kind = match &b.kind {
            BufKind::Input(_) => "input",
            BufKind::Param(_) => "param",
            BufKind::Temp => "temp",
            BufKind::State(_) => "state",
        };
        let _ = writeln!(out, "  %{i} = {kind} \"{}\" [{}]", b.name, b.len);
    }
    for o in &p.outputs {
        let _ = writeln!(out, "  output \"{}\" = %{} {:?}", o.name, o.buf, o.shape);
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
