//! Lowering of `embedding`: the forward lookup copies the row each token
//! id picks (`Expr::Gather`; an id outside `0..vocab` gives a zero row,
//! though the runtime rejects such ids before they get here); the table's
//! gradient adds `dy` into the rows the ids pick (`Stmt::ScatterAdd`).
//! The padding id is mapped to −1 before either, so it reads as a zero
//! vector and adds to no row: the layer's output does not depend on the
//! padding row at all, and that row's gradient is exactly zero.
//!
//! Two positions with the same id add into the same row, so the gradient
//! kernel's outermost loop, the one backends split across threads, runs
//! over blocks of the embedding's columns: each iteration owns one block
//! of every row and loops over all positions itself, which keeps it
//! race-free without atomics (the CPU backend proves this from the
//! residues of the block modulo the row stride; the GPU backend from the
//! same shape).

/// Column block sizes of the embedding gradient, largest first: the
/// first that divides the dimension is used (16 floats are one 64-byte
/// cache line).
const COLUMN_BLOCK: [usize; 4] = [16, 8, 4, 2];

use super::*;

/// The row id of position `id` (an f32 load): an id that selects the
/// padding row (`p <= id < p + 1`, as [`Row::select`] rounds down) becomes
/// −1, which selects no row, so it reads as zeros and receives no gradient
/// whatever its row holds. `p` and `p + 1` are at most 2^24, exact in f32.
fn row_id(id: Expr, padding: Option<usize>) -> Expr {
    match padding {
        None => id,
        Some(p) => id.clone().select(
            Cmp::Lt,
            Expr::Const(p as f32),
            id.clone(),
            id.clone()
                .select(Cmp::Ge, Expr::Const((p + 1) as f32), id, Expr::Const(-1.0)),
        ),
    }
}

impl Lowering<'_> {
    /// `embedding`: `out[n, t, d] = W[ids[n, t], d]` (zero for the padding
    /// id), one example per outer iteration.
    pub(super) fn lower_embedding(
        &mut self,
        cx: NodeCx,
        vocab: usize,
        dim: usize,
        padding: Option<usize>,
    ) -> Result<BufId, LowerError> {
        let NodeCx {
            name,
            ins,
            ib,
            out_len,
            ..
        } = cx;
        let steps = self.shape(ins[0])?.iter().product::<usize>();
        let ids = self.view_of(ins[0])?;
        let out = self.temp(name.clone(), out_len);
        let k = nest(&[self.n, steps, dim], 0, |v| {
            let (n, t, d) = (v[0], v[1], v[2]);
            let id = Expr::load(
                ids.buf,
                Index::new([(n, ids.row_stride as i64), (t, 1)], ids.offset as i64),
            );
            vec![Stmt::store(
                out,
                Index::new([(n, (steps * dim) as i64), (t, dim as i64), (d, 1)], 0),
                Expr::Gather {
                    buf: ib[1],
                    row: Row {
                        value: Box::new(row_id(id, padding)),
                        rows: vocab,
                        stride: dim,
                    },
                    index: Index::var(d, 1),
                },
            )]
        });
        self.looped(name, k);
        Ok(out)
    }

    /// `GradOp::EmbeddingDw`: per block `b` of [`COLUMN_BLOCK`] columns,
    /// zero it in every row, then add `dy[n, t, block]` into row
    /// `ids[n, t]` for every position but the padding id's (its row's
    /// gradient stays zero). Blocks are independent (the outer loop runs
    /// on several threads: two positions may share a row, but never a
    /// column block); a block rather than one column keeps each row's
    /// accesses to one contiguous run, instead of a pass over the whole
    /// table per column.
    pub(super) fn lower_embedding_dw(
        &mut self,
        cx: NodeCx,
        vocab: usize,
        padding: Option<usize>,
    ) -> Result<BufId, LowerError> {
        let NodeCx { name, ins, .. } = cx;
        let steps = self.shape(ins[0])?.iter().product::<usize>();
        let dy_shape = self.shape(ins[1])?;
        let dim = *dy_shape.last().unwrap_or(&1);
        let ids = self.view_of(ins[0])?;
        let dy = self.view_of(ins[1])?;
        let out = self.temp(name.clone(), vocab * dim);
        let block = COLUMN_BLOCK
            .iter()
            .copied()
            .find(|b| dim % b == 0)
            .unwrap_or(1);
        let (b, v, n, t, j) = (0, 1, 2, 3, 4);
        let col = |base: Vec<(usize, i64)>| {
            let mut terms = base;
            terms.extend([(b, block as i64), (j, 1)]);
            terms
        };
        let id = Expr::load(
            ids.buf,
            Index::new([(n, ids.row_stride as i64), (t, 1)], ids.offset as i64),
        );
        let zero = Stmt::repeat(
            v,
            vocab,
            vec![Stmt::repeat(
                j,
                block,
                vec![Stmt::store(
                    out,
                    Index::new(col(vec![(v, dim as i64)]), 0),
                    Expr::Const(0.0),
                )],
            )],
        );
        let add = Stmt::repeat(
            j,
            block,
            vec![Stmt::ScatterAdd {
                buf: out,
                row: Row {
                    value: Box::new(Expr::Get(0)),
                    rows: vocab,
                    stride: dim,
                },
                index: Index::new(col(vec![]), 0),
                value: Expr::load(
                    dy.buf,
                    Index::new(
                        col(vec![(n, dy.row_stride as i64), (t, dim as i64)]),
                        dy.offset as i64,
                    ),
                ),
            }],
        );
        // The row once per position, not per column.
        let per_position = vec![
            Stmt::Set {
                scalar: 0,
                value: row_id(id, padding),
            },
            add,
        ];
        let body = vec![
            zero,
            Stmt::repeat(n, self.n, vec![Stmt::repeat(t, steps, per_position)]),
        ];
        self.looped(name, LoopKernel::outer_loop(5, 1, b, dim / block, body));
        Ok(out)
    }
}
