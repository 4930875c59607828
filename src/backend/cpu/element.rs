//! The float types the CPU backend computes in, and their storage.

use std::fmt::Debug;
use std::mem::MaybeUninit;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub, SubAssign};

use crate::backend::DeviceBuffer;
use crate::tensor::DType;

/// Storage of one CPU tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum CpuBuffer {
    /// f32 elements.
    F32(Vec<f32>),
    /// f64 elements.
    F64(Vec<f64>),
    /// u32 ids, labels and masks.
    U32(Vec<u32>),
    /// bf16 elements: frozen linear weights in bf16 mode ([`crate::backend::Backend::frozen_dtype`]).
    BF16(Vec<half::bf16>),
}

impl DeviceBuffer for CpuBuffer {
    fn len(&self) -> usize {
        match self {
            CpuBuffer::F32(v) => v.len(),
            CpuBuffer::F64(v) => v.len(),
            CpuBuffer::U32(v) => v.len(),
            CpuBuffer::BF16(v) => v.len(),
        }
    }

    fn dtype(&self) -> DType {
        match self {
            CpuBuffer::F32(_) => DType::F32,
            CpuBuffer::F64(_) => DType::F64,
            CpuBuffer::U32(_) => DType::U32,
            CpuBuffer::BF16(_) => DType::BF16,
        }
    }
}

/// Keeps [`Element`] to the crate's own f32 and f64: unsafe code relies on the documented
/// behaviour of its kernels (e.g. that [`Element::gelu_block`] writes every output).
mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A float type the CPU kernels are generic over (f32 and f64; sealed).
pub trait Element:
    sealed::Sealed
    + Copy
    + Debug
    + Default
    + PartialOrd
    + Send
    + Sync
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
{
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Zero.
    const ZERO: Self;
    /// One.
    const ONE: Self;
    /// Conversion from f64 (rounds for f32).
    fn from_f64(v: f64) -> Self;
    /// Exact widening to f64.
    fn to_f64(self) -> f64;
    /// `e^x`.
    fn exp(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// `ln(1 + x)`, exact for small `x`.
    fn ln_1p(self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// Error function.
    fn erf(self) -> Self;
    /// Whether the value is neither NaN nor infinite.
    fn is_finite(self) -> bool;
    /// The elements of `buf`, if it holds this type.
    fn slice(buf: &CpuBuffer) -> Option<&[Self]>;
    /// The elements of `buf` mutably, if it holds this type.
    fn slice_mut(buf: &mut CpuBuffer) -> Option<&mut [Self]>;
    /// Wraps a vector as a buffer.
    fn wrap(v: Vec<Self>) -> CpuBuffer;
    /// `x = e^x` in place.
    fn exp_block(x: &mut [Self]);
    /// `out = x·Φ(x)`, BERT's exact GELU; writes every element of `out`, which may start
    /// uninitialised.
    fn gelu_block(x: &[Self], out: &mut [MaybeUninit<Self>]);
    /// `out = dy·(Φ(x) + x·φ(x))`; writes every element of `out`, as [`Self::gelu_block`].
    fn gelu_backward_block(dy: &[Self], x: &[Self], out: &mut [MaybeUninit<Self>]);
    /// Where [`super::gemm`] may cut a product's rows between threads: a multiple of the
    /// tile height of the kernel that runs. Not only speed depends on it: an element that
    /// matrixmultiply computes in a partial tile can differ in its last bit from the same
    /// element in a whole tile (f64 blocks of 12 rows failed the thread-count test), so its
    /// blocks must end at whole tiles to give the bits of one call.
    fn gemm_row_split() -> usize;
    /// `c = alpha·a·b + beta·c` on raw strided matrices (see [`super::gemm`]).
    ///
    /// # Safety
    /// Every addressed element of `a`, `b`, `c` must be in bounds, and `c` must not alias.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
    /// Whether a product of `m` rows — all of them, before [`super::gemm`] splits it between
    /// threads, so every block runs the same kernel — with A's rows and B's columns contiguous
    /// (`csa`, `rsb` = 1), `alpha` and `beta` goes to [`Element::small_product_raw`].
    fn small_product(m: usize, alpha: Self, beta: Self, csa: isize, rsb: isize) -> bool;
    /// `p`'s product by the type's kernel for products of few rows.
    ///
    /// # Safety
    /// As [`Element::gemm_raw`] for `p`'s operands (and `row` valid for `n` reads), taken
    /// only where [`Element::small_product`] said so.
    unsafe fn small_product_raw(p: &SmallProduct<Self>);
    /// `c = a·b + row`, `row` (`n` values) added to every row of the product (the linear
    /// layer's bias), on raw strided matrices.
    ///
    /// # Safety
    /// As [`Element::gemm_raw`], and `row` must be valid for `n` reads.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_plus_row_raw(
        m: usize,
        k: usize,
        n: usize,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        row: *const Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

/// `c = a·b`, plus `row` (`n` values) or, with `add_to_c`, plus `c`'s own values: a product
/// for [`Element::small_product_raw`], A's rows and B's columns contiguous (`a[i, k]` at
/// `a + i·rsa + k`, `b[k, j]` at `b + k + j·csb`, `c[i, j]` at `c + i·rsc + j·csc`).
pub struct SmallProduct<T> {
    /// Rows of A and C.
    pub m: usize,
    /// Columns of A, rows of B.
    pub k: usize,
    /// Columns of B and C.
    pub n: usize,
    /// A's first element.
    pub a: *const T,
    /// A's row stride.
    pub rsa: isize,
    /// B's first element.
    pub b: *const T,
    /// B's column stride.
    pub csb: isize,
    /// Values added to every row of the product, if any.
    pub row: Option<*const T>,
    /// Without `row`: add C's own values to the product (`beta = 1`) rather than overwrite.
    pub add_to_c: bool,
    /// C's first element.
    pub c: *mut T,
    /// C's row stride.
    pub rsc: isize,
    /// C's column stride.
    pub csc: isize,
}

/// Every row of the `m × n` matrix `c` set to `row`.
///
/// # Safety
/// `row` must be valid for `n` reads, `c` for writes of its `m × n` elements.
pub(super) unsafe fn fill_rows<T: Copy>(
    m: usize,
    n: usize,
    row: *const T,
    c: *mut T,
    rsc: isize,
    csc: isize,
) {
    for i in 0..m {
        for j in 0..n {
            *c.offset(i as isize * rsc + j as isize * csc) = *row.add(j);
        }
    }
}

/// [`Element::gemm_plus_row_raw`] as C filled with the row, then the GEMM adding to it.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn fill_then_gemm<T: Element>(
    m: usize,
    k: usize,
    n: usize,
    a: *const T,
    rsa: isize,
    csa: isize,
    b: *const T,
    rsb: isize,
    csb: isize,
    row: *const T,
    c: *mut T,
    rsc: isize,
    csc: isize,
) {
    fill_rows(m, n, row, c, rsc, csc);
    T::gemm_raw(
        m,
        k,
        n,
        T::ONE,
        a,
        rsa,
        csa,
        b,
        rsb,
        csb,
        T::ONE,
        c,
        rsc,
        csc,
    )
}

macro_rules! impl_element {
    ($t:ty, $variant:ident, $dtype:expr, $gemm:path, $gemm_plus_row:path, $small:path, $small_raw:path, $row_split:expr, $erf:path, $exp_block:path, $gelu:path, $gelu_backward:path) => {
        impl Element for $t {
            const DTYPE: DType = $dtype;
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline]
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            #[inline]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline]
            fn erf(self) -> Self {
                $erf(self)
            }
            #[inline]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            fn slice(buf: &CpuBuffer) -> Option<&[Self]> {
                match buf {
                    CpuBuffer::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(buf: &mut CpuBuffer) -> Option<&mut [Self]> {
                match buf {
                    CpuBuffer::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn wrap(v: Vec<Self>) -> CpuBuffer {
                CpuBuffer::$variant(v)
            }
            fn exp_block(x: &mut [Self]) {
                $exp_block(x)
            }
            fn gelu_block(x: &[Self], out: &mut [MaybeUninit<Self>]) {
                $gelu(x, out)
            }
            fn gelu_backward_block(dy: &[Self], x: &[Self], out: &mut [MaybeUninit<Self>]) {
                $gelu_backward(dy, x, out)
            }
            fn gemm_row_split() -> usize {
                $row_split
            }
            fn small_product(m: usize, alpha: Self, beta: Self, csa: isize, rsb: isize) -> bool {
                $small(m, alpha, beta, csa, rsb)
            }
            unsafe fn small_product_raw(p: &SmallProduct<Self>) {
                $small_raw(p)
            }
            unsafe fn gemm_raw(
                m: usize,
                k: usize,
                n: usize,
                alpha: Self,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
            ) {
                $gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
            }
            unsafe fn gemm_plus_row_raw(
                m: usize,
                k: usize,
                n: usize,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                row: *const Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
            ) {
                $gemm_plus_row(m, k, n, a, rsa, csa, b, rsb, csb, row, c, rsc, csc)
            }
        }
    };
}

/// `x = e^x` one element at a time (the f64 reference).
fn exp_each<T: Element>(x: &mut [T]) {
    for v in x {
        *v = v.exp();
    }
}

// f32's GEMM is our AVX-512 kernel where the CPU has it (matrixmultiply otherwise, inside it
// and on other architectures).
#[cfg(target_arch = "x86_64")]
use super::sgemm_avx512::{sgemm as f32_gemm, sgemm_plus_row as f32_gemm_plus_row};
#[cfg(not(target_arch = "x86_64"))]
use matrixmultiply::sgemm as f32_gemm;

/// Whether f32's small-product kernel takes a product of `m` rows: where the CPU runs
/// matrixmultiply (AVX-512's kernel packs B its own way and was not measured against it),
/// [`super::sgemm_dot`] for few rows times a transposed weight.
#[cfg(target_arch = "x86_64")]
fn f32_small_product(m: usize, alpha: f32, beta: f32, csa: isize, rsb: isize) -> bool {
    super::sgemm_avx512::tile_rows_if_used().is_none()
        && super::sgemm_dot::applies(m, alpha, beta, csa, rsb)
}
#[cfg(target_arch = "x86_64")]
use super::sgemm_dot::sgemm_dot as f32_small_product_raw;
#[cfg(not(target_arch = "x86_64"))]
use no_small_product as f32_small_product;
#[cfg(not(target_arch = "x86_64"))]
use small_product_by_gemm as f32_small_product_raw;

/// No small-product kernel: never taken (the type's `small_product` is false).
fn no_small_product<T>(_: usize, _: T, _: T, _: isize, _: isize) -> bool {
    false
}

/// The small product by the type's general kernel (where it has no small-product kernel).
unsafe fn small_product_by_gemm<T: Element>(p: &SmallProduct<T>) {
    let (a, b, c) = (p.a, p.b, p.c);
    // SAFETY: the caller's contract, which is the general kernel's.
    unsafe {
        match p.row {
            Some(row) => T::gemm_plus_row_raw(
                p.m, p.k, p.n, a, p.rsa, 1, b, 1, p.csb, row, c, p.rsc, p.csc,
            ),
            None => {
                let beta = if p.add_to_c { T::ONE } else { T::ZERO };
                T::gemm_raw(
                    p.m,
                    p.k,
                    p.n,
                    T::ONE,
                    a,
                    p.rsa,
                    1,
                    b,
                    1,
                    p.csb,
                    beta,
                    c,
                    p.rsc,
                    p.csc,
                )
            }
        }
    }
}

/// A multiple of every tile height matrixmultiply's kernels use (8, 12, 16).
const MATRIXMULTIPLY_ROW_SPLIT: usize = 48;

fn f32_row_split() -> usize {
    #[cfg(target_arch = "x86_64")]
    if let Some(rows) = super::sgemm_avx512::tile_rows_if_used() {
        return rows;
    }
    MATRIXMULTIPLY_ROW_SPLIT
}

/// [`fill_then_gemm`] for f32 where there is no kernel of ours.
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn f32_gemm_plus_row(
    m: usize,
    k: usize,
    n: usize,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    row: *const f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    fill_then_gemm(m, k, n, a, rsa, csa, b, rsb, csb, row, c, rsc, csc)
}

// f32's GELU and exp are the vectorized ones (within an ulp of the rounded exact value); f64, the
// reference, keeps libm's erf.
impl_element!(
    f32,
    F32,
    DType::F32,
    f32_gemm,
    f32_gemm_plus_row,
    f32_small_product,
    f32_small_product_raw,
    f32_row_split(),
    libm::erff,
    super::fast_math::exp_f32,
    super::fast_math::gelu_f32,
    super::fast_math::gelu_backward_f32
);
impl_element!(
    f64,
    F64,
    DType::F64,
    matrixmultiply::dgemm,
    fill_then_gemm::<f64>,
    no_small_product::<f64>,
    small_product_by_gemm::<f64>,
    MATRIXMULTIPLY_ROW_SPLIT,
    libm::erf,
    exp_each::<f64>,
    super::elementwise::gelu_with_erf,
    super::elementwise::gelu_backward_with_erf
);
