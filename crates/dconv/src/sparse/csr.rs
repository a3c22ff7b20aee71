//! Compressed sparse rows.

use crate::error::{Error, Result};
use crate::kernels::compact::Compaction;
use crate::kernels::Isa;
use std::mem::size_of;

/// A matrix in compressed sparse row form: row `i` holds the columns
/// `cols[row_ptr[i]..row_ptr[i + 1]]`, strictly increasing and below `ncols`, with their
/// values. The constructor checks these invariants; the kernels rely on them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CsrMatrix {
    ncols: usize,
    row_ptr: Vec<usize>,
    cols: Vec<u32>,
    vals: Vec<f32>,
}

impl CsrMatrix {
    /// Builds a matrix from its parts, checking every invariant.
    pub fn new(ncols: usize, row_ptr: Vec<usize>, cols: Vec<u32>, vals: Vec<f32>) -> Result<Self> {
        let bad = |msg: String| Err(Error::InvalidSpec(format!("CSR matrix: {msg}")));
        if u32::try_from(ncols).is_err() {
            return bad(format!("{ncols} columns do not fit 32-bit indices"));
        }
        if row_ptr.first() != Some(&0) {
            return bad("row pointers must start at 0".into());
        }
        if cols.len() != vals.len() || row_ptr.last() != Some(&cols.len()) {
            return bad(format!(
                "{} columns, {} values and a last row pointer of {:?} disagree",
                cols.len(),
                vals.len(),
                row_ptr.last()
            ));
        }
        for (i, w) in row_ptr.windows(2).enumerate() {
            if w[0] > w[1] {
                return bad(format!("row pointers decrease at row {i}"));
            }
            let row = &cols[w[0]..w[1]];
            if row.windows(2).any(|c| c[0] >= c[1])
                || row.last().is_some_and(|&c| c as usize >= ncols)
            {
                return bad(format!(
                    "columns of row {i} are not increasing and below {ncols}"
                ));
            }
        }
        Ok(CsrMatrix {
            ncols,
            row_ptr,
            cols,
            vals,
        })
    }

    /// Compresses a dense row-major `nrows x ncols` matrix.
    pub fn from_dense(dense: &[f32], ncols: usize) -> Result<Self> {
        let mut m = CsrMatrix::default();
        m.compress_dense(dense, ncols)?;
        Ok(m)
    }

    /// Refills `self` with the non-zeros of a dense row-major matrix, reusing its buffers.
    pub fn compress_dense(&mut self, dense: &[f32], ncols: usize) -> Result<()> {
        if ncols == 0 || !dense.len().is_multiple_of(ncols) || u32::try_from(ncols).is_err() {
            return Err(Error::InvalidSpec(format!(
                "CSR matrix: {} values do not form rows of {ncols} columns",
                dense.len()
            )));
        }
        self.clear(ncols);
        // Room for every value, then cut back to the non-zeros.
        self.cols.resize(dense.len(), 0);
        self.vals.resize(dense.len(), 0.0);
        let (compaction, mut nnz) = (Compaction::for_isa(Isa::detect()), 0);
        for row in dense.chunks_exact(ncols) {
            nnz = compaction.compact_nonzeros(row, 0, &mut self.cols, &mut self.vals, nnz);
            self.row_ptr.push(nnz);
        }
        self.cols.truncate(nnz);
        self.vals.truncate(nnz);
        Ok(())
    }

    /// Empties the matrix (keeping its buffers) for rows of `ncols` columns.
    pub(crate) fn clear(&mut self, ncols: usize) {
        debug_assert!(u32::try_from(ncols).is_ok());
        self.ncols = ncols;
        self.row_ptr.clear();
        self.row_ptr.push(0);
        self.cols.clear();
        self.vals.clear();
    }

    /// Appends to the row being built the entries `offset + c` for each `c` of `cols`.
    /// The caller keeps columns increasing and below `ncols` (checked in debug builds).
    #[inline]
    pub(crate) fn extend_row(&mut self, offset: u32, cols: &[u32], vals: &[f32]) {
        debug_assert!(cols.iter().all(|&c| ((offset + c) as usize) < self.ncols));
        debug_assert!(
            self.cols.len() == *self.row_ptr.last().unwrap()
                || cols
                    .first()
                    .is_none_or(|&c| *self.cols.last().unwrap() < offset + c)
        );
        self.cols.extend(cols.iter().map(|&c| offset + c));
        self.vals.extend_from_slice(vals);
    }

    /// Closes the row being built.
    #[inline]
    pub(crate) fn end_row(&mut self) {
        self.row_ptr.push(self.cols.len());
    }

    pub fn nrows(&self) -> usize {
        self.row_ptr.len() - 1
    }
    pub fn ncols(&self) -> usize {
        self.ncols
    }
    pub fn nnz(&self) -> usize {
        self.cols.len()
    }
    /// Bytes its row pointers, columns and values hold.
    pub fn bytes(&self) -> usize {
        self.row_ptr.len() * size_of::<usize>()
            + self.cols.len() * size_of::<u32>()
            + self.vals.len() * size_of::<f32>()
    }

    /// The most bytes a matrix of `rows x cols` holds, when every value is non-zero
    /// (saturating).
    pub fn bytes_for(rows: usize, cols: usize) -> usize {
        let entry = size_of::<u32>() + size_of::<f32>();
        let row_ptr = rows.saturating_add(1).saturating_mul(size_of::<usize>());
        row_ptr.saturating_add(rows.saturating_mul(cols).saturating_mul(entry))
    }

    /// The row pointers, columns and values, for kernels that walk many rows at once.
    pub(crate) fn parts(&self) -> (&[usize], &[u32], &[f32]) {
        (&self.row_ptr, &self.cols, &self.vals)
    }

    /// Columns and values of row `i`.
    #[inline]
    pub fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let range = self.row_ptr[i]..self.row_ptr[i + 1];
        (&self.cols[range.clone()], &self.vals[range])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructor_checks_invariants() {
        assert!(CsrMatrix::new(3, vec![0, 2, 3], vec![0, 2, 1], vec![1.0, 2.0, 3.0]).is_ok());
        assert!(CsrMatrix::new(3, vec![0, 2, 3], vec![2, 0, 1], vec![1.0, 2.0, 3.0]).is_err());
        assert!(CsrMatrix::new(3, vec![0, 2, 3], vec![0, 3, 1], vec![1.0, 2.0, 3.0]).is_err());
        assert!(CsrMatrix::new(3, vec![0, 2, 1], vec![0, 1, 1], vec![1.0, 2.0, 3.0]).is_err());
        assert!(CsrMatrix::new(3, vec![0, 2, 3], vec![0, 1, 1], vec![1.0, 2.0]).is_err());
        assert!(CsrMatrix::new(3, vec![1, 2, 3], vec![0, 1, 1], vec![1.0, 2.0, 3.0]).is_err());
    }

    #[test]
    fn from_dense_keeps_the_non_zeros() {
        let m = CsrMatrix::from_dense(&[0.0, 1.0, 0.0, 2.0, 0.0, 0.0], 3).unwrap();
        assert_eq!(m.nrows(), 2);
        assert_eq!(m.row(0), (&[1u32][..], &[1.0f32][..]));
        assert_eq!(m.row(1), (&[0u32][..], &[2.0f32][..]));
        assert!(CsrMatrix::from_dense(&[0.0; 5], 3).is_err());
    }
}
