//! Host buffers asked for before they are filled, so that one the process cannot get (a
//! checkpoint's tensor under `ulimit -v`, a container's limit) is an error naming it rather
//! than an abort: Rust's infallible allocations end the process when the allocator says no.

use crate::error::{Error, Result};

/// The values of `values` in a vector asked for whole before it is filled, or
/// [`Error::OutOfMemory`] from `op` naming `what` the room was for and how much it was.
pub(crate) fn collect_host<T>(
    values: impl ExactSizeIterator<Item = T>,
    op: &'static str,
    what: impl FnOnce() -> String,
) -> Result<Vec<T>> {
    let mut buffer = reserve_host(values.len(), op, what)?;
    buffer.extend(values);
    Ok(buffer)
}

/// An empty vector with room for `len` values, or [`Error::OutOfMemory`] from `op` naming
/// `what` the room was for and how much it was.
fn reserve_host<T>(len: usize, op: &'static str, what: impl FnOnce() -> String) -> Result<Vec<T>> {
    let mut values = Vec::new();
    values.try_reserve_exact(len).map_err(|_| {
        let mib = len.saturating_mul(std::mem::size_of::<T>()) as f64 / 1048576.0;
        Error::OutOfMemory {
            op,
            detail: format!(
                "host: {} needs {mib:.1} MiB, more than this process can still get (the \
                 host's free memory, a container's limit or ulimit -v leaves less)",
                what()
            ),
        }
    })?;
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_that_cannot_exist_is_an_error_naming_it() {
        // Half the address space in f64s: no allocator grants it.
        let e = reserve_host::<f64>(usize::MAX / 16, "test", || "tensor `x`".into()).unwrap_err();
        assert!(matches!(e, Error::OutOfMemory { op: "test", .. }), "{e}");
        assert!(e.to_string().contains("host: tensor `x` needs"), "{e}");
        let v = collect_host([1.0f32, 2.0].into_iter(), "test", String::new).unwrap();
        assert_eq!(v, [1.0, 2.0]);
    }
}
