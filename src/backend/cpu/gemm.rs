//! A safe, strided GEMM over `matrixmultiply`'s packed SIMD kernels.
//!
//! Strides make every transpose free: `x·Wᵀ` reads `W` with swapped strides, and one head of
//! attention is a column window of the `[rows, hidden]` activations. Threads split the output
//! only, so results are bitwise deterministic.

use super::element::Element;

/// Where a matrix lies inside a slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Index of element (0, 0).
    pub offset: usize,
    /// Row count.
    pub rows: usize,
    /// Column count.
    pub cols: usize,
    /// Distance between rows.
    pub row_stride: usize,
    /// Distance between columns.
    pub col_stride: usize,
}

impl Layout {
    /// A contiguous row-major `rows × cols` matrix.
    pub fn row_major(rows: usize, cols: usize) -> Self {
        Layout {
            offset: 0,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// A `rows × cols` window starting at `offset` with rows `row_stride` apart.
    pub fn window(offset: usize, rows: usize, cols: usize, row_stride: usize) -> Self {
        Layout {
            offset,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose, over the same memory.
    pub fn t(self) -> Self {
        Layout {
            offset: self.offset,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    fn fits(&self, len: usize) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < len
    }
}

/// `c = alpha·a·b + beta·c`.
///
/// Panics on inconsistent layouts: callers validate user shapes first, so a panic here is a bug
/// in the caller, never bad input.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Element>(
    alpha: T,
    a: &[T],
    la: Layout,
    b: &[T],
    lb: Layout,
    beta: T,
    c: &mut [T],
    lc: Layout,
) {
    assert!(
        la.cols == lb.rows && lc.rows == la.rows && lc.cols == lb.cols,
        "gemm: inconsistent layouts {la:?} {lb:?} {lc:?}"
    );
    assert!(
        la.fits(a.len()) && lb.fits(b.len()) && lc.fits(c.len()),
        "gemm: layout out of bounds"
    );
    if lc.rows == 0 || lc.cols == 0 {
        return;
    }
    // SAFETY: every addressed element is in bounds (checked above); `c` is a unique borrow,
    // so it cannot alias `a` or `b`.
    unsafe {
        T::gemm_raw(
            la.rows,
            la.cols,
            lb.cols,
            alpha,
            a.as_ptr().add(la.offset),
            la.row_stride as isize,
            la.col_stride as isize,
            b.as_ptr().add(lb.offset),
            lb.row_stride as isize,
            lb.col_stride as isize,
            beta,
            c.as_mut_ptr().add(lc.offset),
            lc.row_stride as isize,
            lc.col_stride as isize,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_product_matches_definition() {
        // a: 3×5 read transposed from a 5×3 buffer; b: 5×4 window of a 5×6 buffer.
        let a_buf: Vec<f64> = (0..15).map(|i| (i as f64) * 0.37 - 2.0).collect();
        let b_buf: Vec<f64> = (0..30).map(|i| 1.5 - (i as f64) * 0.11).collect();
        let la = Layout::row_major(5, 3).t();
        let lb = Layout::window(1, 5, 4, 6);
        let mut c = vec![0.5; 12];
        gemm(
            2.0,
            &a_buf,
            la,
            &b_buf,
            lb,
            3.0,
            &mut c,
            Layout::row_major(3, 4),
        );
        for i in 0..3 {
            for j in 0..4 {
                let mut s = 0.0;
                for p in 0..5 {
                    s += a_buf[p * 3 + i] * b_buf[1 + p * 6 + j];
                }
                let want = 2.0 * s + 3.0 * 0.5;
                assert!((c[i * 4 + j] - want).abs() < 1e-12, "c[{i},{j}]");
            }
        }
    }
}
