//! Reads the kernel IR's text form (what [`super::print`] writes) back into
//! a [`Program`]. Printing a parsed program gives the text it was parsed
//! from when that text came from the printer.
//!
//! The grammar, with blanks and line breaks allowed between any two tokens:
//!
//! ```text
//! program  := "program" name "(" "batch" uint ")" "{" buffer* binding* kernel* "}"
//! buffer   := "%" uint "=" ("input" | "param" | "temp" | "state") string "[" uint "]" ("as" string)?
//! binding  := ("input" | "param" | "output") string "=" "%" uint "[" uint,* "]" ("tokens" uint)?
//! kernel   := "kernel" name "(" "loop" ("," "vars" uint "," "scalars" uint)? ")" "{" stmt* "}"
//!           | "kernel" name "(" "contraction" ")" "{" contraction "}"
//! stmt     := "for" ivar "in" "0" ".." uint "{" stmt* "}"
//!           | "if" (bound ("&&" bound)*)? "{" stmt* "}"
//!           | "%" uint "[" index "]" "=" expr
//!           | "%" uint "[" rowindex "]" "+=" expr
//!           | sreg "=" expr
//! bound    := "0" "<=" index "<" uint
//! rowindex := "row" "(" expr "," uint ")" "*" uint "+" index
//! index    := term (("+" | "-") term)*        term := int | int "*" ivar | ivar
//! expr     := float | "inf" | "-inf" | "NaN" | "%" uint "[" index "]"
//!           | "%" uint "[" rowindex "]" | sreg
//!           | "float" "(" ivar ")" | unop "(" expr ")" | ("max" | "min") "(" expr "," expr ")"
//!           | "(" expr ("+" | "-" | "*" | "/") expr ")"
//!           | "select" "(" expr (">" | ">=" | "<") expr "," expr "," expr ")"
//! contraction := "M" "=" list "strides" list "," "N" "=" uint "," "K" "=" list "strides" list
//!                "%" uint "+" uint ("=" | "+=") "epilogue" ":" epilogue
//!                "(" "%" uint "+" uint "·" "%" uint "+" uint "[" "ldb" uint ("," "transposed")? "]"
//!                "+" "bias" ("none" | "%" uint "+" uint) ")" "[" "ldc" uint "]"
//! epilogue := "None" | "Relu" | "Sigmoid" | "Tanh" | "LeakyRelu" "(" float ")"
//! ```
//!
//! `ivar` is `i` and a number, `sreg` is `s` and a number; a `name` is a
//! run of characters without blanks, brackets or quotes, or a quoted string;
//! strings use Rust's escapes. A loop kernel without `vars`/`scalars`
//! declares the counts its body implies.
//!
//! Known loss: NaN constants come back as the default quiet NaN (the
//! printer writes every NaN as `NaN`); the lowering never emits one.

use super::ir::*;
use super::print::implied_counts;
use thiserror::Error;

/// How deeply statements and expressions may nest. Lowered kernels nest a
/// dozen levels at most; the cap keeps hostile input off the stack's end.
pub const MAX_NESTING: usize = 256;

/// A syntax error, with the 1-based line and column (in characters) of the
/// token it was found at.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("line {line}, column {column}: {kind}")]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// What went wrong.
    pub kind: ParseErrorKind,
}

/// What a [`ParseError`] is about.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// Something else stood where a token was required.
    #[error("expected {expected}, found {found}")]
    Expected {
        /// What the grammar allows here.
        expected: String,
        /// The text found instead (or `end of input`).
        found: String,
    },
    /// Statements or expressions nest deeper than [`MAX_NESTING`].
    #[error("nesting deeper than {MAX_NESTING} levels")]
    TooDeep,
    /// A number that does not fit its field.
    #[error("number `{0}` is out of range")]
    OutOfRange(String),
    /// Buffers must be defined in order `%0`, `%1`, ...
    #[error("buffer defined as %{found}, expected %{expected}")]
    BufferOrder {
        /// The next buffer number.
        expected: usize,
        /// The number written.
        found: usize,
    },
}

/// Parses a whole program (the output of [`super::print::program_text`]).
pub fn parse_program(text: &str) -> Result<Program, ParseError> {
    let mut p = Parser::new(text);
    let prog = p.program()?;
    p.end()?;
    Ok(prog)
}

/// Parses one kernel (the output of [`super::print::kernel_text`]).
pub fn parse_kernel(text: &str) -> Result<Kernel, ParseError> {
    let mut p = Parser::new(text);
    p.expect("kernel")?;
    let k = p.kernel()?;
    p.end()?;
    Ok(k)
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
}

type Res<T> = Result<T, ParseError>;

fn is_name_char(c: char) -> bool {
    !(c.is_whitespace() || c.is_control() || "(){}\"".contains(c))
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Self {
        Parser {
            src,
            pos: 0,
            depth: 0,
        }
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn ws(&mut self) {
        let r = self.rest();
        self.pos += r.len() - r.trim_start().len();
    }

    fn peek(&mut self) -> Option<char> {
        self.ws();
        self.rest().chars().next()
    }

    fn error_at(&self, pos: usize, kind: ParseErrorKind) -> ParseError {
        let before = &self.src[..pos];
        let line = before.matches('\n').count() + 1;
        let start = before.rfind('\n').map_or(0, |i| i + 1);
        ParseError {
            line,
            column: before[start..].chars().count() + 1,
            kind,
        }
    }

    fn expected(&mut self, what: &str) -> ParseError {
        self.ws();
        let r = self.rest();
        let found = if r.is_empty() {
            "end of input".to_string()
        } else {
            let tok: String = r
                .chars()
                .take_while(|c| !c.is_whitespace())
                .take(24)
                .collect();
            format!("`{tok}`")
        };
        self.error_at(
            self.pos,
            ParseErrorKind::Expected {
                expected: what.to_string(),
                found,
            },
        )
    }

    fn eat(&mut self, tok: &str) -> bool {
        self.ws();
        if self.rest().starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: &str) -> Res<()> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(self.expected(&format!("`{tok}`")))
        }
    }

    fn end(&mut self) -> Res<()> {
        if self.peek().is_some() {
            return Err(self.expected("end of input"));
        }
        Ok(())
    }

    /// The next identifier-like word (letters, digits, `_`), not consumed.
    fn word(&mut self) -> &'a str {
        self.ws();
        let r = self.rest();
        let n = r
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(r.len());
        &r[..n]
    }

    fn nest(&mut self) -> Res<()> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(self.error_at(self.pos, ParseErrorKind::TooDeep));
        }
        Ok(())
    }

    fn digits(&mut self) -> &'a str {
        let r = self.rest();
        let n = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        &r[..n]
    }

    fn uint(&mut self) -> Res<usize> {
        self.ws();
        let start = self.pos;
        let d = self.digits();
        if d.is_empty() {
            return Err(self.expected("a number"));
        }
        self.pos += d.len();
        d.parse()
            .map_err(|_| self.error_at(start, ParseErrorKind::OutOfRange(d.into())))
    }

    /// A signed integer, `-` directly before the digits; wide, so that a
    /// coefficient of `i64::MIN` survives being written as `- 9223...`.
    fn int(&mut self) -> Res<i128> {
        self.ws();
        let start = self.pos;
        let neg = self.rest().starts_with('-');
        if neg {
            self.pos += 1;
        }
        let d = self.digits();
        if d.is_empty() {
            self.pos = start;
            return Err(self.expected("an integer"));
        }
        self.pos += d.len();
        let text = &self.src[start..self.pos];
        text.parse()
            .map_err(|_| self.error_at(start, ParseErrorKind::OutOfRange(text.into())))
    }

    /// An f32 as Rust's `{:?}` writes it, or `inf`, `-inf`, `NaN`.
    fn float(&mut self) -> Res<f32> {
        self.ws();
        let start = self.pos;
        for (tok, v) in [
            ("-inf", f32::NEG_INFINITY),
            ("inf", f32::INFINITY),
            ("NaN", f32::NAN),
        ] {
            if self.eat(tok) {
                return Ok(v);
            }
        }
        let b = self.rest().as_bytes();
        let mut n = usize::from(b.first() == Some(&b'-'));
        let digits_from = n;
        while n < b.len() && (b[n].is_ascii_digit() || b[n] == b'.') {
            n += 1;
        }
        if n == digits_from {
            return Err(self.expected("a number"));
        }
        if n < b.len() && (b[n] == b'e' || b[n] == b'E') {
            n += 1;
            if n < b.len() && (b[n] == b'-' || b[n] == b'+') {
                n += 1;
            }
            while n < b.len() && b[n].is_ascii_digit() {
                n += 1;
            }
        }
        let text = &self.rest()[..n];
        self.pos += n;
        text.parse().map_err(|_| {
            self.error_at(
                start,
                ParseErrorKind::Expected {
                    expected: "a number".into(),
                    found: format!("`{text}`"),
                },
            )
        })
    }

    /// `prefix` directly followed by a number: `i3`, `s0`, `%7`.
    fn numbered(&mut self, prefix: &str, what: &str) -> Res<usize> {
        self.ws();
        let start = self.pos;
        if self.rest().starts_with(prefix)
            && self.rest()[prefix.len()..].starts_with(|c: char| c.is_ascii_digit())
        {
            self.pos += prefix.len();
            self.uint()
        } else {
            self.pos = start;
            Err(self.expected(what))
        }
    }

    fn ivar(&mut self) -> Res<Var> {
        self.numbered("i", "a loop variable `i<n>`")
    }

    fn buf(&mut self) -> Res<BufId> {
        self.numbered("%", "a buffer `%<n>`")
    }

    fn string(&mut self) -> Res<String> {
        if self.peek() != Some('"') {
            return Err(self.expected("a quoted string"));
        }
        self.pos += 1;
        let mut out = String::new();
        loop {
            let mut chars = self.rest().chars();
            let Some(c) = chars.next() else {
                return Err(self.expected("`\"`"));
            };
            self.pos += c.len_utf8();
            match c {
                '"' => return Ok(out),
                '\\' => {
                    let at = self.pos - 1;
                    let e = self.rest().chars().next();
                    self.pos += e.map_or(0, char::len_utf8);
                    let bad = |p: &Self| {
                        p.error_at(
                            at,
                            ParseErrorKind::Expected {
                                expected: "a string escape".into(),
                                found: format!("`\\{}`", e.unwrap_or(' ')),
                            },
                        )
                    };
                    out.push(match e {
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some('r') => '\r',
                        Some('0') => '\0',
                        Some(c @ ('\\' | '"' | '\'')) => c,
                        Some('u') => {
                            let r = self.rest();
                            let hex = r
                                .strip_prefix('{')
                                .and_then(|r| r.split_once('}'))
                                .map(|(h, _)| h)
                                .ok_or_else(|| bad(self))?;
                            self.pos += hex.len() + 2;
                            u32::from_str_radix(hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .ok_or_else(|| bad(self))?
                        }
                        _ => return Err(bad(self)),
                    });
                }
                c => out.push(c),
            }
        }
    }

    /// A bare or quoted name.
    fn name(&mut self) -> Res<String> {
        if self.peek() == Some('"') {
            return self.string();
        }
        let r = self.rest();
        let n = r.find(|c| !is_name_char(c)).unwrap_or(r.len());
        if n == 0 {
            return Err(self.expected("a name"));
        }
        self.pos += n;
        Ok(r[..n].to_string())
    }

    /// `[a, b, ...]`.
    fn list(&mut self) -> Res<Vec<usize>> {
        self.expect("[")?;
        let mut v = Vec::new();
        if self.eat("]") {
            return Ok(v);
        }
        loop {
            v.push(self.uint()?);
            if self.eat("]") {
                return Ok(v);
            }
            self.expect(",")?;
        }
    }

    fn array<const N: usize>(&mut self) -> Res<[usize; N]> {
        self.ws();
        let start = self.pos;
        let v = self.list()?;
        v.try_into().map_err(|v: Vec<usize>| {
            self.error_at(
                start,
                ParseErrorKind::Expected {
                    expected: format!("{N} numbers"),
                    found: format!("{}", v.len()),
                },
            )
        })
    }

    fn program(&mut self) -> Res<Program> {
        self.expect("program")?;
        let name = self.name()?;
        self.expect("(")?;
        self.expect("batch")?;
        let batch = self.uint()?;
        self.expect(")")?;
        self.expect("{")?;
        let mut p = Program {
            name,
            batch,
            buffers: vec![],
            kernels: vec![],
            inputs: vec![],
            params: vec![],
            outputs: vec![],
        };
        while self.peek() == Some('%') {
            let at = self.pos;
            let id = self.buf()?;
            if id != p.buffers.len() {
                return Err(self.error_at(
                    at,
                    ParseErrorKind::BufferOrder {
                        expected: p.buffers.len(),
                        found: id,
                    },
                ));
            }
            self.expect("=")?;
            let kind = self.word();
            if !matches!(kind, "input" | "param" | "temp" | "state") {
                return Err(self.expected("`input`, `param`, `temp` or `state`"));
            }
            self.pos += kind.len();
            let name = self.string()?;
            self.expect("[")?;
            let len = self.uint()?;
            self.expect("]")?;
            let tag = if kind != "temp" && self.word() == "as" {
                self.pos += 2;
                self.string()?
            } else {
                name.clone()
            };
            let kind = match kind {
                "input" => BufKind::Input(tag),
                "param" => BufKind::Param(tag),
                "state" => BufKind::State(tag),
                _ => BufKind::Temp,
            };
            p.buffers.push(Buffer { name, len, kind });
        }
        loop {
            let list = match self.word() {
                "input" => &mut p.inputs,
                "param" => &mut p.params,
                "output" => &mut p.outputs,
                _ => break,
            };
            self.pos += self.word().len();
            let name = self.string()?;
            self.expect("=")?;
            let buf = self.buf()?;
            let shape = self.list()?;
            let vocab = if self.word() == "tokens" {
                self.pos += "tokens".len();
                Some(self.uint()?)
            } else {
                None
            };
            list.push(Binding {
                name,
                buf,
                shape,
                vocab,
            });
        }
        while self.word() == "kernel" {
            self.pos += "kernel".len();
            p.kernels.push(self.kernel()?);
        }
        if !self.eat("}") {
            return Err(self.expected("`kernel` or `}`"));
        }
        Ok(p)
    }

    /// A kernel after its `kernel` keyword.
    fn kernel(&mut self) -> Res<Kernel> {
        let name = self.name()?;
        self.expect("(")?;
        let body = match self.word() {
            "loop" => {
                self.pos += 4;
                let declared = if self.eat(",") {
                    self.expect("vars")?;
                    let v = self.uint()?;
                    self.expect(",")?;
                    self.expect("scalars")?;
                    Some((v, self.uint()?))
                } else {
                    None
                };
                self.expect(")")?;
                self.expect("{")?;
                let body = self.stmts()?;
                let mut l = LoopKernel {
                    vars: 0,
                    scalars: 0,
                    body,
                };
                (l.vars, l.scalars) = declared.unwrap_or_else(|| implied_counts(&l));
                KernelBody::Loop(l)
            }
            "contraction" => {
                self.pos += "contraction".len();
                self.expect(")")?;
                self.expect("{")?;
                let c = self.contraction()?;
                self.expect("}")?;
                KernelBody::Contraction(c)
            }
            _ => return Err(self.expected("`loop` or `contraction`")),
        };
        Ok(Kernel { name, body })
    }

    /// `%b+offset`.
    fn operand(&mut self) -> Res<(BufId, usize)> {
        let b = self.buf()?;
        self.expect("+")?;
        Ok((b, self.uint()?))
    }

    fn contraction(&mut self) -> Res<Contraction> {
        self.expect("M")?;
        self.expect("=")?;
        let m_dims = self.array()?;
        self.expect("strides")?;
        let m_strides = self.array()?;
        self.expect(",")?;
        self.expect("N")?;
        self.expect("=")?;
        let n = self.uint()?;
        self.expect(",")?;
        self.expect("K")?;
        self.expect("=")?;
        let k_dims = self.array()?;
        self.expect("strides")?;
        // Two strides (k3's is then 1) or three.
        self.ws();
        let ks_at = self.pos;
        let k_strides = match self.list()?[..] {
            [s1, s2] => [s1, s2, 1],
            [s1, s2, s3] => [s1, s2, s3],
            ref v => {
                return Err(self.error_at(
                    ks_at,
                    ParseErrorKind::Expected {
                        expected: "2 or 3 numbers".into(),
                        found: format!("{}", v.len()),
                    },
                ))
            }
        };
        let c = self.operand()?;
        let accumulate = self.eat("+=");
        if !accumulate {
            self.expect("=")?;
        }
        self.expect("epilogue")?;
        self.expect(":")?;
        let epilogue = match self.word() {
            "None" => Epilogue::None,
            "Relu" => Epilogue::Relu,
            "Sigmoid" => Epilogue::Sigmoid,
            "Tanh" => Epilogue::Tanh,
            "LeakyRelu" => Epilogue::LeakyRelu(0.0),
            _ => return Err(self.expected("`None`, `Relu`, `LeakyRelu`, `Sigmoid` or `Tanh`")),
        };
        self.pos += self.word().len();
        let epilogue = if let Epilogue::LeakyRelu(_) = epilogue {
            self.expect("(")?;
            let alpha = self.float()?;
            self.expect(")")?;
            Epilogue::LeakyRelu(alpha)
        } else {
            epilogue
        };
        self.expect("(")?;
        let a = self.operand()?;
        if !self.eat("·") && !self.eat("*") {
            return Err(self.expected("`·`"));
        }
        let b = self.operand()?;
        self.expect("[")?;
        self.expect("ldb")?;
        let ldb = self.uint()?;
        let b_transposed = self.eat(",");
        if b_transposed {
            self.expect("transposed")?;
        }
        self.expect("]")?;
        self.expect("+")?;
        self.expect("bias")?;
        let bias = if self.word() == "none" {
            self.pos += 4;
            None
        } else {
            Some(self.operand()?)
        };
        self.expect(")")?;
        self.expect("[")?;
        self.expect("ldc")?;
        let ldc = self.uint()?;
        self.expect("]")?;
        Ok(Contraction {
            m_dims,
            m_strides,
            n,
            k_dims,
            k_strides,
            a,
            b,
            ldb,
            b_transposed,
            c,
            ldc,
            bias,
            epilogue,
            accumulate,
        })
    }

    /// Statements up to and including the closing `}`.
    fn stmts(&mut self) -> Res<Vec<Stmt>> {
        self.nest()?;
        let mut out = Vec::new();
        while !self.eat("}") {
            if self.peek().is_none() {
                return Err(self.expected("a statement or `}`"));
            }
            out.push(self.stmt()?);
        }
        self.depth -= 1;
        Ok(out)
    }

    fn stmt(&mut self) -> Res<Stmt> {
        let w = self.word();
        if w == "for" {
            self.pos += 3;
            let var = self.ivar()?;
            self.expect("in")?;
            self.expect("0")?;
            self.expect("..")?;
            let extent = self.uint()?;
            self.expect("{")?;
            let body = self.stmts()?;
            return Ok(Stmt::Loop { var, extent, body });
        }
        if w == "if" {
            self.pos += 2;
            let mut conds = Vec::new();
            if !self.eat("{") {
                loop {
                    self.expect("0")?;
                    self.expect("<=")?;
                    let ix = self.index()?;
                    self.expect("<")?;
                    conds.push((ix, self.uint()?));
                    if !self.eat("&&") {
                        break;
                    }
                }
                self.expect("{")?;
            }
            let body = self.stmts()?;
            return Ok(Stmt::IfInBounds { conds, body });
        }
        if self.peek() == Some('%') {
            let buf = self.buf()?;
            self.expect("[")?;
            if let Some(row) = self.row()? {
                let index = self.index()?;
                self.expect("]")?;
                self.expect("+=")?;
                let value = self.expr()?;
                return Ok(Stmt::ScatterAdd {
                    buf,
                    row,
                    index,
                    value,
                });
            }
            let index = self.index()?;
            self.expect("]")?;
            self.expect("=")?;
            let value = self.expr()?;
            return Ok(Stmt::Store { buf, index, value });
        }
        if w.starts_with('s') {
            let scalar = self.numbered("s", "a scalar `s<n>`")?;
            self.expect("=")?;
            let value = self.expr()?;
            return Ok(Stmt::Set { scalar, value });
        }
        Err(self.expected("`for`, `if`, a store `%<n>[...] =` or `s<n> =`"))
    }

    /// `row(ID, ROWS) * STRIDE +` before an index, if that is what follows.
    fn row(&mut self) -> Res<Option<Row>> {
        if self.word() != "row" {
            return Ok(None);
        }
        self.pos += 3;
        self.expect("(")?;
        let value = Box::new(self.expr()?);
        self.expect(",")?;
        let rows = self.uint()?;
        self.expect(")")?;
        self.expect("*")?;
        let stride = self.uint()?;
        self.expect("+")?;
        Ok(Some(Row {
            value,
            rows,
            stride,
        }))
    }

    /// `term (± term)*`; constants add up into the offset, variable terms
    /// keep their order (and zero coefficients).
    fn index(&mut self) -> Res<Index> {
        let mut ix = Index::default();
        let mut sign = 1i64;
        loop {
            self.ws();
            let start = self.pos;
            let overflow = |p: &Self| {
                let text = p.src[start..p.pos].to_string();
                p.error_at(start, ParseErrorKind::OutOfRange(text))
            };
            if self.rest().starts_with('i') {
                let v = self.ivar()?;
                ix.terms.push((v, sign));
            } else {
                let c = self.int()? * i128::from(sign);
                let c = i64::try_from(c).map_err(|_| overflow(self))?;
                if self.eat("*") {
                    let v = self.ivar()?;
                    ix.terms.push((v, c));
                } else {
                    ix.offset = ix.offset.checked_add(c).ok_or_else(|| overflow(self))?;
                }
            }
            sign = match self.peek() {
                Some('+') => 1,
                Some('-') => -1,
                _ => return Ok(ix),
            };
            self.pos += 1;
        }
    }

    fn expr(&mut self) -> Res<Expr> {
        self.nest()?;
        let e = self.expr_inner()?;
        self.depth -= 1;
        Ok(e)
    }

    fn expr_inner(&mut self) -> Res<Expr> {
        match self.peek() {
            Some('(') => {
                self.pos += 1;
                let a = self.expr()?;
                let op = match self.peek() {
                    Some('+') => BinOp::Add,
                    Some('-') => BinOp::Sub,
                    Some('*') => BinOp::Mul,
                    Some('/') => BinOp::Div,
                    _ => return Err(self.expected("`+`, `-`, `*` or `/`")),
                };
                self.pos += 1;
                let b = self.expr()?;
                self.expect(")")?;
                return Ok(a.bin(op, b));
            }
            Some('%') => {
                let b = self.buf()?;
                self.expect("[")?;
                if let Some(row) = self.row()? {
                    let index = self.index()?;
                    self.expect("]")?;
                    return Ok(Expr::Gather { buf: b, row, index });
                }
                let ix = self.index()?;
                self.expect("]")?;
                return Ok(Expr::Load(b, ix));
            }
            Some(c) if c == '-' || c.is_ascii_digit() => return Ok(Expr::Const(self.float()?)),
            _ => {}
        }
        let w = self.word();
        let un = match w {
            "inf" | "NaN" => return Ok(Expr::Const(self.float()?)),
            "float" => {
                self.pos += w.len();
                self.expect("(")?;
                let v = self.ivar()?;
                self.expect(")")?;
                return Ok(Expr::Iter(v));
            }
            "max" | "min" => {
                self.pos += w.len();
                self.expect("(")?;
                let a = self.expr()?;
                self.expect(",")?;
                let b = self.expr()?;
                self.expect(")")?;
                let op = if w == "max" { BinOp::Max } else { BinOp::Min };
                return Ok(a.bin(op, b));
            }
            "select" => {
                self.pos += w.len();
                self.expect("(")?;
                let a = self.expr()?;
                let cmp = if self.eat(">=") {
                    Cmp::Ge
                } else if self.eat(">") {
                    Cmp::Gt
                } else if self.eat("<") {
                    Cmp::Lt
                } else {
                    return Err(self.expected("`>`, `>=` or `<`"));
                };
                let b = self.expr()?;
                self.expect(",")?;
                let t = self.expr()?;
                self.expect(",")?;
                let f = self.expr()?;
                self.expect(")")?;
                return Ok(a.select(cmp, b, t, f));
            }
            "neg" => UnOp::Neg,
            "exp" => UnOp::Exp,
            "log" => UnOp::Log,
            "tanh" => UnOp::Tanh,
            "sigmoid" => UnOp::Sigmoid,
            "sqrt" => UnOp::Sqrt,
            "relu" => UnOp::Relu,
            _ if w.starts_with('s')
                && w.len() > 1
                && w[1..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                return Ok(Expr::Get(self.numbered("s", "a scalar `s<n>`")?));
            }
            _ => return Err(self.expected("an expression")),
        };
        self.pos += w.len();
        self.expect("(")?;
        let x = self.expr()?;
        self.expect(")")?;
        Ok(x.un(un))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::print::{kernel_text, program_text};

    fn round_trip(text: &str) {
        let p = parse_program(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(program_text(&p), text);
    }

    #[test]
    fn every_statement_and_expression_form_round_trips() {
        round_trip(EVERY_FORM);
    }

    #[test]
    fn damaged_text_gives_errors_not_panics() {
        for (i, _) in EVERY_FORM.char_indices() {
            let _ = parse_program(&EVERY_FORM[..i]);
            let mut cut = EVERY_FORM.to_string();
            cut.remove(i);
            let _ = parse_program(&cut);
        }
        let huge = "program p (batch 1) {\n  %0 = temp \"a\" [1]\n\n  kernel k (loop) {\n    \
                    s18446744073709551615 = float(i18446744073709551615)\n  }\n}\n";
        assert!(parse_program(huge).is_ok());
    }

    const EVERY_FORM: &str = "program \"odd name\" (batch 3) {
  %0 = input \"x\\\"q\" [6]
  %1 = param \"w\" [4] as \"other\"
  %2 = temp \"t\" [6]
  %3 = state \"m:w\" [4]
  input \"x\\\"q\" = %0 [3, 2] tokens 4
  param \"w\" = %1 [2, 2]
  output \"y\" = %2 [3, 2]

  kernel k (loop) {
    s1 = -inf
    for i0 in 0..3 {
      for i2 in 0..2 {
        if 0 <= i0 - 1 < 2 && 0 <= -2*i2 + 5 < 4 && 0 <= 0 < 1 {
          %2[2*i0 + i2] = select((%0[i0 - 1*i2 + 7] - 1e-7) >= s1, neg(inf), max(float(i2), min(NaN, -0.0)))
        }
        s0 = sigmoid(tanh(relu(sqrt(log(exp(((1.5 * 2.0) / 3.4028235e38)))))))
        %3[0*i0 - 3] = select(s0 > 0.5, s0, select(s0 < 1.0, 1.0, 2.0))
        %3[row(%0[i0], 2) * 2 + i2 - 1] += %2[row(s0, 3) * 2 + 0]
      }
    }
    if  {
    }
  }
  kernel \"odd kernel\" (loop, vars 5, scalars 0) {
  }
  kernel c (contraction) {
    M = [1, 2, 3] strides [6, 3, 1], N = 2, K = [1, 1, 3] strides [0, 0]
    %2+0 += epilogue:LeakyRelu(0.01)(%0+0 · %1+1 [ldb 2] + bias none) [ldc 2]
  }
  kernel d (contraction) {
    M = [1, 1, 3] strides [0, 0, 2], N = 2, K = [1, 1, 2] strides [0, 0]
    %2+0 = epilogue:Tanh(%0+0 · %1+0 [ldb 2] + bias %1+2) [ldc 2]
  }
  kernel e (contraction) {
    M = [1, 1, 2] strides [0, 0, 1], N = 2, K = [1, 1, 3] strides [0, 0, 2]
    %2+0 = epilogue:None(%0+0 · %0+0 [ldb 3, transposed] + bias none) [ldc 2]
  }
}
";

    #[test]
    fn kernels_parse_alone() {
        let text = "kernel k (loop) {\n  for i0 in 0..4 {\n    %1[i0] = %0[i0]\n  }\n}\n";
        let k = parse_kernel(text).unwrap();
        assert_eq!(kernel_text(&k), text);
        let KernelBody::Loop(l) = &k.body else {
            panic!()
        };
        assert_eq!((l.vars, l.scalars), (1, 0));
    }

    #[test]
    fn errors_say_where_and_what() {
        let e =
            parse_program("program p (batch 1) {\n  %0 = temp \"a\" [3]\n  %2 = temp \"b\" [3]\n}")
                .unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 3, column 3: buffer defined as %2, expected %1"
        );
        let e = parse_kernel("kernel k (loop) {\n  for i0 in 0..4 {\n    %1[i0] = foo(1.0)\n")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 3, column 14: expected an expression, found `foo(1.0)`"
        );
        let e = parse_kernel("kernel k (loop) {\n  %0[0] = 1.0\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 3, column 1: expected a statement or `}`, found end of input"
        );
        let e = parse_kernel("kernel k (loop) {\n  %0[99999999999999999999] = 1.0\n}").unwrap_err();
        assert_eq!(
            e.kind,
            ParseErrorKind::OutOfRange("99999999999999999999".into())
        );
        assert!(parse_kernel("kernel k (loop) { %0[0] = 1.0 } junk").is_err());
    }

    #[test]
    fn nesting_is_capped() {
        let deep = |n: usize| {
            format!(
                "kernel k (loop) {{ %0[0] = {}1.0{} }}",
                "neg(".repeat(n),
                ")".repeat(n)
            )
        };
        assert!(parse_kernel(&deep(200)).is_ok());
        let e = parse_kernel(&deep(100_000)).unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::TooDeep);
        let loops = format!(
            "kernel k (loop) {{ {} }}",
            "for i0 in 0..1 { ".repeat(100_000)
        );
        assert_eq!(
            parse_kernel(&loops).unwrap_err().kind,
            ParseErrorKind::TooDeep
        );
    }
}
