//! Tensor shapes.

use std::fmt;

/// The dimensions of a tensor, outermost first (row-major, contiguous storage).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Shape(Vec<usize>);

impl Shape {
    /// A shape from its dimensions.
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Total number of elements (1 for a scalar shape `[]`). Every tensor's shape passed
    /// [`Shape::checked_numel`] when the tensor was made, so this cannot overflow for one; a
    /// shape built by hand whose product does not fit gives `usize::MAX`, which no buffer
    /// matches (not a panic, nor a wrapped small count).
    pub fn numel(&self) -> usize {
        self.checked_numel().unwrap_or(usize::MAX)
    }

    /// Total number of elements, or `None` when it, or the product of any leading dimensions
    /// (a row count), does not fit in `usize`: no buffer can have such a shape, and a
    /// wrapped product would let one pass for a small buffer. (So `[huge, huge, 0]` is
    /// `None` too: its row count would not fit.)
    pub fn checked_numel(&self) -> Option<usize> {
        self.0.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
    }

    /// The last dimension, or 1 for a scalar.
    pub fn last_dim(&self) -> usize {
        self.0.last().copied().unwrap_or(1)
    }

    /// Product of all dimensions but the last: the row count of the 2-D view the ops use.
    /// Saturates at `usize::MAX` as [`Shape::numel`] does, for a shape built by hand.
    pub fn rows(&self) -> usize {
        let leading = &self.0[..self.0.len().saturating_sub(1)];
        Shape(leading.to_vec()).numel()
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(d.to_vec())
    }
}

impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}
