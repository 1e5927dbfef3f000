//! The reference interpreter of the kernel IR: plain Rust, no JIT, no
//! cleverness. It is the oracle the compiled kernels are tested against,
//! so it favours obviousness over speed. Every access is bounds-checked.

use super::ir::*;
use thiserror::Error;

/// Why a program could not be interpreted.
#[derive(Debug, Error, PartialEq)]
pub enum InterpError {
    /// A load or store outside its buffer.
    #[error("kernel `{kernel}`: index {index} is outside buffer `{buf}` of {len} elements")]
    OutOfBounds {
        /// The kernel.
        kernel: String,
        /// The buffer's name.
        buf: String,
        /// The offending index.
        index: i64,
        /// The buffer's length.
        len: usize,
    },
    /// The caller passed the wrong number or sizes of buffers.
    #[error("buffer {0} has the wrong length: {1} given, {2} expected")]
    BadBuffer(usize, usize, usize),
}

/// Runs every kernel of `p` in order over `bufs` (one `Vec` per buffer).
pub fn run_program(p: &Program, bufs: &mut [Vec<f32>]) -> Result<(), InterpError> {
    for (i, b) in p.buffers.iter().enumerate() {
        let got = bufs.get(i).map_or(0, |v| v.len());
        if got != b.len {
            return Err(InterpError::BadBuffer(i, got, b.len));
        }
    }
    for k in &p.kernels {
        run_kernel(p, k, bufs)?;
    }
    Ok(())
}

/// Runs one kernel.
pub fn run_kernel(p: &Program, k: &Kernel, bufs: &mut [Vec<f32>]) -> Result<(), InterpError> {
    let mut m = Machine {
        p,
        kernel: &k.name,
        bufs,
    };
    match &k.body {
        KernelBody::Loop(l) => {
            let mut vars = vec![0i64; l.vars];
            let mut scalars = vec![0f32; l.scalars];
            m.stmts(&l.body, &mut vars, &mut scalars)
        }
        KernelBody::Contraction(c) => m.contraction(c),
    }
}

struct Machine<'a> {
    p: &'a Program,
    kernel: &'a str,
    bufs: &'a mut [Vec<f32>],
}

impl Machine<'_> {
    fn oob(&self, buf: BufId, index: i64) -> InterpError {
        InterpError::OutOfBounds {
            kernel: self.kernel.to_string(),
            buf: self.p.buffers[buf].name.clone(),
            index,
            len: self.p.buffers[buf].len,
        }
    }

    fn read(&self, buf: BufId, index: i64) -> Result<f32, InterpError> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.bufs[buf].get(i).copied())
            .ok_or_else(|| self.oob(buf, index))
    }

    fn write(&mut self, buf: BufId, index: i64, v: f32) -> Result<(), InterpError> {
        let err = self.oob(buf, index);
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| self.bufs[buf].get_mut(i))
            .ok_or(err)?;
        *slot = v;
        Ok(())
    }

    fn stmts(
        &mut self,
        body: &[Stmt],
        vars: &mut [i64],
        sc: &mut [f32],
    ) -> Result<(), InterpError> {
        for s in body {
            match s {
                Stmt::Loop { var, extent, body } => {
                    for i in 0..*extent {
                        vars[*var] = i as i64;
                        self.stmts(body, vars, sc)?;
                    }
                }
                Stmt::Store { buf, index, value } => {
                    let v = self.expr(value, vars, sc)?;
                    self.write(*buf, index.eval(vars), v)?;
                }
                Stmt::Set { scalar, value } => {
                    sc[*scalar] = self.expr(value, vars, sc)?;
                }
                Stmt::ScatterAdd {
                    buf,
                    row,
                    index,
                    value,
                } => {
                    if let Some(at) = self.row_index(row, index, vars, sc)? {
                        let v = self.expr(value, vars, sc)?;
                        let old = self.read(*buf, at)?;
                        self.write(*buf, at, old + v)?;
                    }
                }
                Stmt::IfInBounds { conds, body } => {
                    let inside = conds.iter().all(|(ix, bound)| {
                        let i = ix.eval(vars);
                        i >= 0 && (i as usize) < *bound
                    });
                    if inside {
                        self.stmts(body, vars, sc)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn expr(&self, e: &Expr, vars: &[i64], sc: &[f32]) -> Result<f32, InterpError> {
        Ok(match e {
            Expr::Const(c) => *c,
            Expr::Load(b, ix) => self.read(*b, ix.eval(vars))?,
            Expr::Get(s) => sc[*s],
            Expr::Gather { buf, row, index } => match self.row_index(row, index, vars, sc)? {
                Some(at) => self.read(*buf, at)?,
                None => 0.0,
            },
            Expr::Iter(v) => vars[*v] as f32,
            Expr::Un(op, x) => unary(*op, self.expr(x, vars, sc)?),
            Expr::Bin(op, a, b) => binary(*op, self.expr(a, vars, sc)?, self.expr(b, vars, sc)?),
            Expr::Select(a, cmp, b, t, f) => {
                let (a, b) = (self.expr(a, vars, sc)?, self.expr(b, vars, sc)?);
                let holds = match cmp {
                    Cmp::Gt => a > b,
                    Cmp::Ge => a >= b,
                    Cmp::Lt => a < b,
                };
                if holds {
                    self.expr(t, vars, sc)?
                } else {
                    self.expr(f, vars, sc)?
                }
            }
        })
    }

    /// The element `row·stride + index` addresses, or `None` when the row's
    /// id is out of range (the access is then skipped).
    fn row_index(
        &self,
        row: &Row,
        index: &Index,
        vars: &[i64],
        sc: &[f32],
    ) -> Result<Option<i64>, InterpError> {
        let id = self.expr(&row.value, vars, sc)?;
        Ok(row
            .select(id)
            .map(|r| r * row.stride as i64 + index.eval(vars)))
    }

    fn contraction(&mut self, c: &Contraction) -> Result<(), InterpError> {
        let [_, d1, d2] = c.m_dims;
        let [k1n, k2n, k3n] = c.k_dims;
        // Bounds are checked once per run of A and B (the k3 loop),
        // which keeps whole example models fast enough for tests.
        let run = |m: &Machine, buf: BufId, start: usize, len: usize| -> Result<(), InterpError> {
            match start.checked_add(len) {
                Some(end) if end <= m.bufs[buf].len() => Ok(()),
                _ => Err(m.oob(buf, start.saturating_add(len) as i64 - 1)),
            }
        };
        let [ks1, ks2, ks3] = c.k_strides;
        let (bk, bn) = c.b_strides();
        // Elements spanned by a run of `len` elements `step` apart.
        let span = |len: usize, step: usize| (len.max(1) - 1) * step + 1;
        for m in 0..c.m() {
            let digits = [m / (d1 * d2), (m / d2) % d1, m % d2];
            let row: usize = digits.iter().zip(c.m_strides).map(|(d, s)| d * s).sum();
            for n in 0..c.n {
                let mut acc = 0f32;
                for k1 in 0..k1n {
                    for k2 in 0..k2n {
                        let ai = c.a.1 + row + k1 * ks1 + k2 * ks2;
                        let bi = c.b.1 + (k1 * k2n + k2) * k3n * bk + n * bn;
                        run(self, c.a.0, ai, span(k3n, ks3))?;
                        run(self, c.b.0, bi, span(k3n, bk))?;
                        let (a, b) = (&self.bufs[c.a.0], &self.bufs[c.b.0]);
                        for k3 in 0..k3n {
                            acc += a[ai + k3 * ks3] * b[bi + k3 * bk];
                        }
                    }
                }
                if let Some((bias, off)) = c.bias {
                    acc += self.read(bias, (off + n) as i64)?;
                }
                let v = epilogue(c.epilogue, acc);
                let ci = (c.c.1 + m * c.ldc + n) as i64;
                let v = if c.accumulate {
                    self.read(c.c.0, ci)? + v
                } else {
                    v
                };
                self.write(c.c.0, ci, v)?;
            }
        }
        Ok(())
    }
}

/// The meaning of each unary op (shared with tests of the backends).
pub fn unary(op: UnOp, x: f32) -> f32 {
    match op {
        UnOp::Neg => -x,
        UnOp::Exp => x.exp(),
        UnOp::Log => x.ln(),
        UnOp::Tanh => x.tanh(),
        UnOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnOp::Sqrt => x.sqrt(),
        UnOp::Relu => x.max(0.0),
    }
}

/// The meaning of each binary op.
pub fn binary(op: BinOp, a: f32, b: f32) -> f32 {
    match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        BinOp::Div => a / b,
        BinOp::Max => a.max(b),
        BinOp::Min => a.min(b),
    }
}

/// The meaning of each epilogue.
pub fn epilogue(e: Epilogue, x: f32) -> f32 {
    match e {
        Epilogue::None => x,
        Epilogue::Relu => x.max(0.0),
        Epilogue::LeakyRelu(a) => {
            if x > 0.0 {
                x
            } else {
                a * x
            }
        }
        Epilogue::Sigmoid => unary(UnOp::Sigmoid, x),
        Epilogue::Tanh => x.tanh(),
    }
}
