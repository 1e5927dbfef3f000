//! Kernel IR data types.

use std::fmt;

/// Index of a buffer in [`Program::buffers`].
pub type BufId = usize;

/// Index of a loop variable within one loop kernel.
pub type Var = usize;

/// Index of a scalar register within one loop kernel.
pub type Scalar = usize;

/// What a buffer holds, and who provides it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BufKind {
    /// A model input, filled by the caller.
    Input(String),
    /// A parameter `<layer>.<param>`, filled from the weights.
    Param(String),
    /// An intermediate result, allocated by the memory plan.
    Temp,
    /// State that persists across runs (optimizer moments), zero at start.
    State(String),
}

/// A flat array of f32.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Readable name (graph node name plus a role suffix).
    pub name: String,
    /// Number of f32 elements.
    pub len: usize,
    /// Provenance.
    pub kind: BufKind,
}

/// An affine index `offset + Σ coef·var`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Index {
    /// `(loop variable, coefficient)` terms.
    pub terms: Vec<(Var, i64)>,
    /// Constant part.
    pub offset: i64,
}

impl Index {
    /// A constant index.
    pub fn constant(offset: i64) -> Self {
        Index {
            terms: vec![],
            offset,
        }
    }

    /// `coef · var` (plus nothing).
    pub fn var(var: Var, coef: i64) -> Self {
        Index {
            terms: vec![(var, coef)],
            offset: 0,
        }
    }

    /// Builds an index from terms and an offset, dropping zero terms.
    pub fn new(terms: impl IntoIterator<Item = (Var, i64)>, offset: i64) -> Self {
        Index {
            terms: terms.into_iter().filter(|(_, c)| *c != 0).collect(),
            offset,
        }
    }

    /// Adds `coef · var`.
    pub fn plus(mut self, var: Var, coef: i64) -> Self {
        if coef != 0 {
            self.terms.push((var, coef));
        }
        self
    }

    /// Adds a constant.
    pub fn shift(mut self, by: i64) -> Self {
        self.offset += by;
        self
    }

    /// Evaluates with the given loop variable values.
    pub fn eval(&self, vars: &[i64]) -> i64 {
        self.terms
            .iter()
            .fold(self.offset, |acc, (v, c)| acc + c * vars[*v])
    }
}

/// Unary scalar functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    /// `-x`.
    Neg,
    /// `e^x`.
    Exp,
    /// Natural logarithm.
    Log,
    /// Hyperbolic tangent.
    Tanh,
    /// `1/(1+e^-x)`.
    Sigmoid,
    /// Square root.
    Sqrt,
    /// `max(x, 0)`.
    Relu,
}

/// Binary scalar functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b`.
    Div,
    /// Larger of the two.
    Max,
    /// Smaller of the two.
    Min,
}

/// Comparisons for [`Expr::Select`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    /// `a > b`.
    Gt,
    /// `a >= b`.
    Ge,
    /// `a < b`.
    Lt,
}

/// A scalar f32 expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// A constant.
    Const(f32),
    /// `buf[index]`.
    Load(BufId, Index),
    /// A scalar register.
    Get(Scalar),
    /// The current value of an enclosing loop's variable, as f32 (class
    /// indices compared with labels).
    Iter(Var),
    /// `op(x)`.
    Un(UnOp, Box<Expr>),
    /// `op(a, b)`.
    Bin(BinOp, Box<Expr>, Box<Expr>),
    /// `if a cmp b { then } else { other }`.
    Select(Box<Expr>, Cmp, Box<Expr>, Box<Expr>, Box<Expr>),
    /// `buf[row·stride + index]` with a data-dependent row (an embedding
    /// lookup); `0.0` when the row is out of range (see [`Row`]).
    Gather {
        /// The table read.
        buf: BufId,
        /// The row and its range.
        row: Row,
        /// The affine position within the row (proven in bounds statically).
        index: Index,
    },
}

/// A row number computed from data: the value of `value` (an f32 holding
/// an integer id) selects row `⌊value⌋` of a table of `rows` rows, each
/// `stride` elements apart.
///
/// A value that is not in `[0, rows)` (NaN included) selects no row: a
/// [`Expr::Gather`] reads `0.0` and a [`Stmt::ScatterAdd`] does nothing.
/// Every backend implements this check in generated code, so a bad id can
/// never read or write outside the buffer; only the affine part of the
/// address is proven in bounds at compile time, for every row in range.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The id, as an f32 value.
    pub value: Box<Expr>,
    /// Number of rows: valid ids are `0..rows`.
    pub rows: usize,
    /// Elements between consecutive rows.
    pub stride: usize,
}

impl Row {
    /// The row selected by the id `v`, if it is in range.
    pub fn select(&self, v: f32) -> Option<i64> {
        // `!(v >= 0)` also rejects NaN.
        if v >= 0.0 && v < self.rows as f32 {
            let r = v as i64;
            // `rows as f32` rounds; the integer check keeps `r < rows` exact.
            (usize::try_from(r).is_ok_and(|r| r < self.rows)).then_some(r)
        } else {
            None
        }
    }
}

impl Expr {
    /// `buf[index]`.
    pub fn load(buf: BufId, index: Index) -> Expr {
        Expr::Load(buf, index)
    }

    /// `op(self)`.
    pub fn un(self, op: UnOp) -> Expr {
        Expr::Un(op, Box::new(self))
    }

    /// `op(self, other)`.
    pub fn bin(self, op: BinOp, other: Expr) -> Expr {
        Expr::Bin(op, Box::new(self), Box::new(other))
    }

    /// `if self cmp rhs { then } else { other }`.
    pub fn select(self, cmp: Cmp, rhs: Expr, then: Expr, other: Expr) -> Expr {
        Expr::Select(
            Box::new(self),
            cmp,
            Box::new(rhs),
            Box::new(then),
            Box::new(other),
        )
    }
}

impl std::ops::Add for Expr {
    type Output = Expr;
    fn add(self, other: Expr) -> Expr {
        self.bin(BinOp::Add, other)
    }
}

impl std::ops::Mul for Expr {
    type Output = Expr;
    fn mul(self, other: Expr) -> Expr {
        self.bin(BinOp::Mul, other)
    }
}

/// A statement of a loop kernel.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `for var in 0..extent { body }`.
    Loop {
        /// The loop variable.
        var: Var,
        /// Trip count.
        extent: usize,
        /// Loop body.
        body: Vec<Stmt>,
    },
    /// `buf[index] = value`.
    Store {
        /// Destination buffer.
        buf: BufId,
        /// Element index.
        index: Index,
        /// Stored value.
        value: Expr,
    },
    /// `scalar = value`.
    Set {
        /// Destination register.
        scalar: Scalar,
        /// New value.
        value: Expr,
    },
    /// `buf[row·stride + index] += value`, skipped when the row is out of
    /// range (see [`Row`]): the gradient of [`Expr::Gather`]. Two
    /// iterations may hit the same row, so a kernel that splits a loop
    /// across threads must keep those iterations on one thread (the
    /// embedding lowering puts the column loop outermost).
    ScatterAdd {
        /// The table written.
        buf: BufId,
        /// The row and its range.
        row: Row,
        /// The affine position within the row.
        index: Index,
        /// The value added.
        value: Expr,
    },
    /// Runs `body` only when every `0 <= index < bound` holds (used for
    /// padding in pooling windows).
    IfInBounds {
        /// `(index, bound)` pairs.
        conds: Vec<(Index, usize)>,
        /// Guarded statements.
        body: Vec<Stmt>,
    },
}

impl Stmt {
    /// `for var in 0..extent { body }`.
    pub fn repeat(var: Var, extent: usize, body: Vec<Stmt>) -> Stmt {
        Stmt::Loop { var, extent, body }
    }

    /// `buf[index] = value`.
    pub fn store(buf: BufId, index: Index, value: Expr) -> Stmt {
        Stmt::Store { buf, index, value }
    }
}

/// A loop nest. If the body is a single loop, backends may split that
/// outermost loop across threads: its iterations must be independent.
#[derive(Clone, Debug, PartialEq)]
pub struct LoopKernel {
    /// Number of loop variables used.
    pub vars: usize,
    /// Number of scalar registers used.
    pub scalars: usize,
    /// Statements.
    pub body: Vec<Stmt>,
}

impl LoopKernel {
    /// The kernel `for var in 0..extent { body }` (splittable: the caller
    /// vouches that its iterations are independent).
    pub fn outer_loop(
        vars: usize,
        scalars: usize,
        var: Var,
        extent: usize,
        body: Vec<Stmt>,
    ) -> Self {
        LoopKernel {
            vars,
            scalars,
            body: vec![Stmt::repeat(var, extent, body)],
        }
    }
}

/// Elementwise function applied to a contraction's result before the store.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Epilogue {
    /// Store as is.
    None,
    /// `max(x, 0)`.
    Relu,
    /// `x` or `alpha·x`.
    LeakyRelu(f32),
    /// Logistic sigmoid.
    Sigmoid,
    /// Hyperbolic tangent.
    Tanh,
}

impl Epilogue {
    /// `x` through the epilogue, as an expression (with the meaning of
    /// [`interp::epilogue`](super::interp::epilogue)).
    pub fn apply(self, x: Expr) -> Expr {
        match self {
            Epilogue::None => x,
            Epilogue::Relu => x.un(UnOp::Relu),
            Epilogue::Sigmoid => x.un(UnOp::Sigmoid),
            Epilogue::Tanh => x.un(UnOp::Tanh),
            Epilogue::LeakyRelu(alpha) => {
                x.clone()
                    .select(Cmp::Gt, Expr::Const(0.0), x.clone(), Expr::Const(alpha) * x)
            }
        }
    }
}

/// A strided matrix product with an optional bias and epilogue:
///
/// ```text
/// for m in 0..M, n in 0..N:
///   acc = Σ_{k1,k2,k3} A[a_off + row(m) + k1·ks[0] + k2·ks[1] + k3·ks[2]]
///                    · B[b_off + k·bk + n·bn]      (k = (k1·K2 + k2)·K3 + k3)
///   C[c_off + m·ldc + n] (+)= epilogue(acc + bias[bias_off + n])
/// ```
///
/// where `m` is decomposed mixed-radix over `m_dims` (last fastest) and
/// `row(m) = Σ digit_i · m_strides[i]`; `(bk, bn)` is `(ldb, 1)` for a
/// row-major B and `(1, ldb)` for a transposed one (see
/// [`Contraction::b_strides`]). Dense layers use one row digit; NHWC
/// convolution over a pre-padded input uses (batch, out row, out col).
///
/// Either operand may be read transposed, so a gradient needs no
/// transpose kernel: `dx = dy · Wᵀ` reads the weight `[F, U]` as a
/// transposed B (`ldb = U`), `dW = xᵀ · dy` reads `x[M, F]` as an A whose
/// rows step by 1 and whose reduction steps by `F` (`ks[2] = F`).
#[derive(Clone, Debug, PartialEq)]
pub struct Contraction {
    /// Row digits (product = M); unused leading digits are 1.
    pub m_dims: [usize; 3],
    /// A-offset stride of each row digit.
    pub m_strides: [usize; 3],
    /// Output columns.
    pub n: usize,
    /// Reduction digits `[K1, K2, K3]` (product = K).
    pub k_dims: [usize; 3],
    /// A-offset strides of k1, k2 and k3 (k3's is 1 unless A is read
    /// transposed).
    pub k_strides: [usize; 3],
    /// Left operand and its element offset.
    pub a: (BufId, usize),
    /// Right operand `[K, ldb]` row-major (or `[N, ldb]`, when
    /// `b_transposed`) and its element offset.
    pub b: (BufId, usize),
    /// Row stride of B as stored.
    pub ldb: usize,
    /// B is stored transposed: `B[k, n] = b[b_off + n·ldb + k]`.
    pub b_transposed: bool,
    /// Output and its element offset.
    pub c: (BufId, usize),
    /// Row stride of C.
    pub ldc: usize,
    /// Optional bias `[N]` and its element offset.
    pub bias: Option<(BufId, usize)>,
    /// Function applied before the store.
    pub epilogue: Epilogue,
    /// Add into C instead of overwriting it.
    pub accumulate: bool,
}

impl Contraction {
    /// Rows.
    pub fn m(&self) -> usize {
        self.m_dims.iter().product()
    }

    /// Reduction length.
    pub fn k(&self) -> usize {
        self.k_dims.iter().product()
    }

    /// Floating-point operations (multiply and add counted separately).
    pub fn flops(&self) -> f64 {
        2.0 * self.m() as f64 * self.n as f64 * self.k() as f64
    }

    /// The B-offset strides `(of k, of n)`: `(ldb, 1)` row-major,
    /// `(1, ldb)` transposed.
    pub fn b_strides(&self) -> (usize, usize) {
        if self.b_transposed {
            (1, self.ldb)
        } else {
            (self.ldb, 1)
        }
    }
}

/// One kernel of a program.
#[derive(Clone, Debug, PartialEq)]
pub enum KernelBody {
    /// A loop nest.
    Loop(LoopKernel),
    /// A matrix product.
    Contraction(Contraction),
}

/// A named kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    /// Name: the graph node it came from plus a role (`conv1.pad`).
    pub name: String,
    /// What it computes.
    pub body: KernelBody,
}

/// A tensor the caller exchanges with a program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// Input, parameter or output name.
    pub name: String,
    /// Its buffer.
    pub buf: BufId,
    /// Its shape, batch first for inputs and outputs.
    pub shape: Vec<usize>,
    /// For a token input, the vocabulary size: the caller must pass ids
    /// in `0..vocab`, as f32 values (exact below 2^24). The runtime
    /// checks this where it binds inputs.
    pub vocab: Option<usize>,
}

/// A lowered program for one batch size.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    /// The model's name.
    pub name: String,
    /// The batch size the program was lowered for.
    pub batch: usize,
    /// All buffers.
    pub buffers: Vec<Buffer>,
    /// Kernels, run in order.
    pub kernels: Vec<Kernel>,
    /// Model inputs.
    pub inputs: Vec<Binding>,
    /// Parameters.
    pub params: Vec<Binding>,
    /// Model outputs.
    pub outputs: Vec<Binding>,
}

impl fmt::Display for UnOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnOp::Neg => "neg",
            UnOp::Exp => "exp",
            UnOp::Log => "log",
            UnOp::Tanh => "tanh",
            UnOp::Sigmoid => "sigmoid",
            UnOp::Sqrt => "sqrt",
            UnOp::Relu => "relu",
        })
    }
}

impl fmt::Display for BinOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Max => "max",
            BinOp::Min => "min",
        })
    }
}

impl fmt::Display for Cmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
            Cmp::Lt => "<",
        })
    }
}
