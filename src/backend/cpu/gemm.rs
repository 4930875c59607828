//! A safe, strided GEMM over packed SIMD kernels: ours for f32 on AVX-512
//! (`src/backend/cpu/sgemm_avx512.rs`), `matrixmultiply`'s otherwise.
//!
//! Strides make every transpose free: `x·Wᵀ` reads `W` with swapped strides, and one head of
//! attention is a column window of the `[rows, hidden]` activations. Large products are split
//! into blocks of output rows (or columns) on the shared rayon pool — the one pool every CPU
//! op uses, so no second set of threads spins while it works. Each block is a whole kernel
//! call over the full `K`, and an element's value does not depend on which
//! block it falls in: results are bitwise the same for any number of threads.

use super::element::{Element, SmallProduct};

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
        // Checked: a wrapped sum would pass for a layout far outside the slice.
        let last = (self.rows - 1)
            .checked_mul(self.row_stride)
            .zip((self.cols - 1).checked_mul(self.col_stride))
            .and_then(|(r, c)| self.offset.checked_add(r)?.checked_add(c));
        last.is_some_and(|last| last < len)
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
    // SAFETY: `c` is a unique borrow of `c.len()` initialized elements.
    unsafe { gemm_into(alpha, a, la, b, lb, beta, None, c.as_mut_ptr(), c.len(), lc) }
}

/// `alpha·a·b` as a new row-major `[a rows, b cols]` matrix. It is not zero-filled first
/// (a measurable share of a step was `memset`): with `beta = 0` the kernels write every
/// element of `c` without reading it (matrixmultiply's contract, `K = 0` included).
pub fn product<T: Element>(alpha: T, a: &[T], la: Layout, b: &[T], lb: Layout) -> Vec<T> {
    new_product(alpha, a, la, b, lb, T::ZERO, None)
}

/// `a·b + row`, `row` added to every row (the linear layer's bias), as a new row-major
/// matrix: the kernel adds the row in its first pass, so the output is neither filled with
/// it first nor read back (the bits of filling it and adding the product).
pub fn product_plus_row<T: Element>(a: &[T], la: Layout, b: &[T], lb: Layout, row: &[T]) -> Vec<T> {
    new_product(T::ONE, a, la, b, lb, T::ONE, Some(row))
}

/// [`gemm_into`] a new row-major matrix, which is written without being read: `beta` is
/// zero, or `row` is given.
fn new_product<T: Element>(
    alpha: T,
    a: &[T],
    la: Layout,
    b: &[T],
    lb: Layout,
    beta: T,
    row: Option<&[T]>,
) -> Vec<T> {
    debug_assert!(beta == T::ZERO || row.is_some());
    let len = la
        .rows
        .checked_mul(lb.cols)
        .expect("gemm: the product has more elements than memory can address");
    let mut c = Vec::with_capacity(len);
    // SAFETY: `c` owns room for `len` elements and nothing else refers to it; with `beta = 0`
    // or a row, nothing is read from it and every element is written before `set_len`.
    unsafe {
        gemm_into(
            alpha,
            a,
            la,
            b,
            lb,
            beta,
            row,
            c.as_mut_ptr(),
            len,
            Layout::row_major(la.rows, lb.cols),
        );
        c.set_len(len);
    }
    c
}

/// An output matrix that parallel tasks fill window by window (attention's heads), straight
/// from the products, without a zero fill first and without a copy from per-task buffers.
pub(super) struct DisjointWindows<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: tasks only write through the pointer, each to its own window (the contract of
// `product`), and the buffer outlives the tasks (the caller holds it).
unsafe impl<T: Send> Send for DisjointWindows<T> {}
unsafe impl<T: Send> Sync for DisjointWindows<T> {}

impl<T: Element> DisjointWindows<T> {
    /// Windows of `out`, which may be uninitialised: `product` writes without reading.
    pub(super) fn new(out: &mut [std::mem::MaybeUninit<T>]) -> Self {
        DisjointWindows {
            ptr: out.as_mut_ptr().cast(),
            len: out.len(),
        }
    }

    /// Elements in the buffer.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// `window = alpha·a·b`, writing every element of the window.
    ///
    /// # Safety
    /// The buffer given to [`DisjointWindows::new`] must still be alive, and no other
    /// call running at the same time may write an overlapping window.
    pub(super) unsafe fn product(
        &self,
        alpha: T,
        a: &[T],
        la: Layout,
        b: &[T],
        lb: Layout,
        window: Layout,
    ) {
        gemm_into(
            alpha,
            a,
            la,
            b,
            lb,
            T::ZERO,
            None,
            self.ptr,
            self.len,
            window,
        )
    }
}

impl<T: Element> DisjointWindows<T> {
    /// `window += alpha·a·b`.
    ///
    /// # Safety
    /// As [`DisjointWindows::product`]'s, and the window must have been written before.
    pub(super) unsafe fn accumulate(
        &self,
        alpha: T,
        a: &[T],
        la: Layout,
        b: &[T],
        lb: Layout,
        window: Layout,
    ) {
        gemm_into(
            alpha,
            a,
            la,
            b,
            lb,
            T::ONE,
            None,
            self.ptr,
            self.len,
            window,
        )
    }
}

/// [`gemm`] into `c_len` elements at `c`, which must be valid for writes (and for reads
/// unless `beta` is zero) and alias neither `a` nor `b`.
///
/// With `row` (`b`'s column count of values), `c = a·b + row` instead: `alpha` and `beta`
/// must be one, and `c` is written without being read.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into<T: Element>(
    alpha: T,
    a: &[T],
    la: Layout,
    b: &[T],
    lb: Layout,
    beta: T,
    row: Option<&[T]>,
    c: *mut T,
    c_len: usize,
    lc: Layout,
) {
    assert!(
        la.cols == lb.rows && lc.rows == la.rows && lc.cols == lb.cols,
        "gemm: inconsistent layouts {la:?} {lb:?} {lc:?}"
    );
    assert!(
        la.fits(a.len()) && lb.fits(b.len()) && lc.fits(c_len),
        "gemm: layout out of bounds"
    );
    assert!(
        row.is_none_or(|r| r.len() == lb.cols && alpha == T::ONE && beta == T::ONE),
        "gemm: a row of {:?} values for {} columns",
        row.map(<[T]>::len),
        lb.cols
    );
    if lc.rows == 0 || lc.cols == 0 {
        return;
    }
    // Distinct elements: along each dimension of more than one element a stride of at least
    // one, and one dimension's whole extent within the other's step.
    let steps = |n: usize, stride: usize| n == 1 || stride >= 1;
    assert!(
        steps(lc.rows, lc.row_stride)
            && steps(lc.cols, lc.col_stride)
            && (lc.rows == 1
                || lc.cols == 1
                || lc.row_stride >= lc.cols.saturating_mul(lc.col_stride)
                || lc.col_stride >= lc.rows.saturating_mul(lc.row_stride)),
        "gemm: the output layout {lc:?} overlaps itself"
    );
    let (m, k, n) = (la.rows, la.cols, lb.cols);
    // Decided for the whole product, so that every block of a split runs the same kernel. A
    // row is added to the plain product (the contract's alpha = beta = 1 say only that).
    let (product_alpha, product_beta) = if row.is_some() {
        (T::ONE, T::ZERO)
    } else {
        (alpha, beta)
    };
    let small = T::small_product(
        m,
        product_alpha,
        product_beta,
        la.col_stride as isize,
        lb.row_stride as isize,
    );
    let threads = rayon::current_num_threads();
    let split_rows = m >= n;
    let (along, align) = if split_rows {
        (m, T::gemm_row_split())
    } else {
        (n, COLUMN_SPLIT_ALIGN)
    };
    // Below ~1M multiply-adds a second thread costs more than it saves.
    let parts = if m.saturating_mul(n).saturating_mul(k) < (1 << 20) || threads < 2 {
        1
    } else {
        threads.min(along / align).max(1)
    };
    // Whole tiles per block, as even as they go: rounding each half up to a multiple of 48
    // rows gave one thread 480 rows of a step's 896 (7% more than its share) where our
    // 12-row tile allows 456.
    let block = along.div_ceil(align).div_ceil(parts) * align;
    let ptrs = Pointers {
        a: a.as_ptr(),
        b: b.as_ptr(),
        c,
    };
    let run = |start: usize| {
        let len = block.min(along - start);
        let (ma, nb) = if split_rows { (len, n) } else { (m, len) };
        let (ao, bo, co) = if split_rows {
            (
                la.offset + start * la.row_stride,
                lb.offset,
                lc.offset + start * lc.row_stride,
            )
        } else {
            (
                la.offset,
                lb.offset + start * lb.col_stride,
                lc.offset + start * lc.col_stride,
            )
        };
        let p = &ptrs;
        // SAFETY: every addressed element is in bounds (checked above for the whole product,
        // and a block is a sub-range of it; a block of columns reads its part of the row;
        // with k = 0 nothing of `a` or `b` is read, and their offsets, which `fits` does not
        // bound then, only enter wrapping address arithmetic).
        // Blocks write disjoint rows (or columns) of `c`, whose layout does not overlap
        // itself (checked), and the caller guarantees `c` aliases neither `a` nor `b`.
        unsafe {
            let row = row.map(|row| {
                if split_rows {
                    row.as_ptr()
                } else {
                    row.as_ptr().add(start)
                }
            });
            if small {
                // `small_product` holds only for alpha = 1 and beta 0 or 1 (or a row).
                return T::small_product_raw(&SmallProduct {
                    m: ma,
                    k,
                    n: nb,
                    a: p.a.wrapping_add(ao),
                    rsa: la.row_stride as isize,
                    b: p.b.wrapping_add(bo),
                    csb: lb.col_stride as isize,
                    row,
                    add_to_c: row.is_none() && beta == T::ONE,
                    c: p.c.add(co),
                    rsc: lc.row_stride as isize,
                    csc: lc.col_stride as isize,
                });
            }
            if let Some(row) = row {
                return T::gemm_plus_row_raw(
                    ma,
                    k,
                    nb,
                    p.a.wrapping_add(ao),
                    la.row_stride as isize,
                    la.col_stride as isize,
                    p.b.wrapping_add(bo),
                    lb.row_stride as isize,
                    lb.col_stride as isize,
                    row,
                    p.c.add(co),
                    lc.row_stride as isize,
                    lc.col_stride as isize,
                );
            }
            T::gemm_raw(
                ma,
                k,
                nb,
                alpha,
                p.a.wrapping_add(ao),
                la.row_stride as isize,
                la.col_stride as isize,
                p.b.wrapping_add(bo),
                lb.row_stride as isize,
                lb.col_stride as isize,
                beta,
                p.c.add(co),
                lc.row_stride as isize,
                lc.col_stride as isize,
            );
        }
    };
    if parts == 1 {
        run(0);
    } else {
        use rayon::prelude::*;
        (0..along)
            .step_by(block)
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each(run);
    }
}

/// Blocks of a split product start at multiples of the kernels' tile edges, so no block but
/// the last ends in a partial tile: rows, [`Element::gemm_row_split`]; columns, 32 (ours is
/// 32 wide, matrixmultiply's up to 16).
const COLUMN_SPLIT_ALIGN: usize = 32;

/// The operands' addresses, shared by the blocks of one product.
struct Pointers<T> {
    a: *const T,
    b: *const T,
    c: *mut T,
}

// SAFETY: the blocks read `a` and `b` and write disjoint parts of `c` (see `gemm`), and the
// borrows behind these pointers outlive the parallel loop that uses them.
unsafe impl<T: Send> Send for Pointers<T> {}
unsafe impl<T: Sync> Sync for Pointers<T> {}

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

    #[test]
    #[should_panic(expected = "overlaps itself")]
    fn an_output_whose_rows_coincide_is_refused() {
        // Row stride 0: both rows of C are the same memory (the threads would race on it).
        let a = vec![1.0f32; 4];
        let mut c = vec![0.0f32; 2];
        gemm(
            1.0,
            &a,
            Layout::row_major(2, 2),
            &a,
            Layout::row_major(2, 2),
            0.0,
            &mut c,
            Layout {
                offset: 0,
                rows: 2,
                cols: 2,
                row_stride: 0,
                col_stride: 1,
            },
        );
    }

    /// Splitting a product over threads changes no bit: shapes that split along rows and
    /// along columns, transposed operands, a strided output window, beta ≠ 0, f32 and f64.
    #[test]
    fn any_thread_count_gives_the_same_bits() {
        fn case<T: Element>(m: usize, k: usize, n: usize, transpose_a: bool) {
            let a: Vec<T> = (0..m * k)
                .map(|i| T::from_f64(((i * 7919) % 1009) as f64 * 1e-3 - 0.5))
                .collect();
            let b: Vec<T> = (0..k * n)
                .map(|i| T::from_f64(((i * 104_729) % 997) as f64 * 1e-3 - 0.5))
                .collect();
            let la = if transpose_a {
                Layout::row_major(k, m).t()
            } else {
                Layout::row_major(m, k)
            };
            // The output: a window of a wider buffer.
            let lc = Layout::window(3, m, n, n + 5);
            let product = |threads: usize| {
                let mut c: Vec<T> = (0..m * (n + 5) + 3)
                    .map(|i| T::from_f64(i as f64 * 1e-4))
                    .collect();
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap()
                    .install(|| {
                        gemm(
                            T::from_f64(0.75),
                            &a,
                            la,
                            &b,
                            Layout::row_major(k, n),
                            T::from_f64(0.5),
                            &mut c,
                            lc,
                        )
                    });
                c
            };
            let one = product(1);
            for threads in [2, 3, 5] {
                let c = product(threads);
                assert!(
                    one.iter()
                        .zip(&c)
                        .all(|(x, y)| x.to_f64().to_bits() == y.to_f64().to_bits()),
                    "{m}x{k}x{n} transposed {transpose_a}: {threads} threads differ"
                );
            }
        }
        for transpose_a in [false, true] {
            case::<f32>(1024, 384, 96, transpose_a);
            case::<f32>(40, 1536, 1000, transpose_a);
            case::<f64>(300, 200, 50, transpose_a);
        }
    }

    /// Few rows times a transposed weight (the small-product kernel, where the CPU has one),
    /// and more rows split so that the last thread's block is few: any thread count gives
    /// the bits of one call, with the bias added in the kernel or not.
    #[test]
    fn products_of_a_transposed_weight_give_the_same_bits_on_any_thread_count() {
        for (m, k, n) in [(20, 300, 100), (128, 64, 128), (100, 1100, 90)] {
            let value = |i: usize, p: usize, q: usize| ((i * p) % q) as f32 * 1e-3 - 0.5;
            let x: Vec<f32> = (0..m * k).map(|i| value(i, 7919, 1009)).collect();
            let w: Vec<f32> = (0..n * k).map(|i| value(i, 104_729, 997)).collect();
            let bias: Vec<f32> = (0..n).map(|i| value(i, 31, 101)).collect();
            let (lx, lw) = (Layout::row_major(m, k), Layout::row_major(n, k).t());
            let products = |threads: usize| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap()
                    .install(|| {
                        (
                            product(1.0f32, &x, lx, &w, lw),
                            product_plus_row(&x, lx, &w, lw, &bias),
                        )
                    })
            };
            // The first element whose bits differ, if any.
            let differs = |x: &[f32], y: &[f32]| {
                x.iter()
                    .zip(y)
                    .position(|(a, b)| a.to_bits() != b.to_bits())
            };
            let one = products(1);
            for threads in [2, 3] {
                let (plain, biased) = products(threads);
                assert_eq!(
                    differs(&plain, &one.0),
                    None,
                    "{m}x{k}x{n}, {threads} threads"
                );
                assert_eq!(
                    differs(&biased, &one.1),
                    None,
                    "{m}x{k}x{n} + row, {threads} threads"
                );
            }
        }
    }

    /// The bias added in the kernel gives the bits of filling the output with it and adding
    /// the product, for any thread count (blocks of rows read the whole row, blocks of
    /// columns their part of it), f32 and f64.
    #[test]
    fn product_plus_row_is_fill_then_add() {
        fn case<T: Element>(m: usize, k: usize, n: usize) {
            let value =
                |i: usize, p: usize, q: usize| T::from_f64(((i * p) % q) as f64 * 1e-3 - 0.5);
            let a: Vec<T> = (0..m * k).map(|i| value(i, 7919, 1009)).collect();
            let w: Vec<T> = (0..n * k).map(|i| value(i, 104_729, 997)).collect();
            let row: Vec<T> = (0..n).map(|i| value(i, 31, 101)).collect();
            let (la, lw) = (Layout::row_major(m, k), Layout::row_major(n, k).t());
            let mut want: Vec<T> = (0..m).flat_map(|_| row.iter().copied()).collect();
            gemm(
                T::ONE,
                &a,
                la,
                &w,
                lw,
                T::ONE,
                &mut want,
                Layout::row_major(m, n),
            );
            for threads in [1, 2, 3] {
                let got = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap()
                    .install(|| product_plus_row(&a, la, &w, lw, &row));
                assert!(
                    want.iter()
                        .zip(&got)
                        .all(|(x, y)| x.to_f64().to_bits() == y.to_f64().to_bits()),
                    "{m}x{k}x{n}, {threads} threads"
                );
            }
        }
        // Rows split (m ≥ n) and columns split (m < n); sizes off every tile.
        case::<f32>(1000, 383, 97);
        case::<f32>(37, 129, 1001);
        // Few rows: the small-product kernel where the CPU has one.
        case::<f32>(8, 129, 50);
        case::<f64>(300, 200, 50);
        case::<f32>(5, 0, 7);
    }
}
