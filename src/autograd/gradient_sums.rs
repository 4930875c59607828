//! Gradients added into running sums while backward produces them (gradient accumulation),
//! so a micro-batch's gradients never exist beside the sums all at once: contributions to
//! parameters that already have a sum wait in a bucket of bounded size, which goes into the
//! sums in one list addition ([`Backend::add_assign_each`], one launch on CUDA) when it
//! fills and at the end.

use std::collections::{BTreeMap, HashMap};

use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::Tensor;

/// How many bytes of gradients wait before they are added to sums of `sums_bytes`: an
/// eighth of the sums, so the extra memory is small beside them, but at least 64 KiB, so a
/// parameter-efficient method's few small gradients go in one addition (one launch), and at
/// most 32 MiB, which bounds the additions of a full fine-tuning to ~30 per GiB.
pub(super) fn bucket_bytes(sums_bytes: usize) -> usize {
    (sums_bytes / 8).clamp(64 << 10, 32 << 20)
}

/// The sums a backward adds into, and the contributions waiting to join them.
pub(super) struct GradientSums<'a, B: Backend> {
    sums: &'a mut BTreeMap<String, Tensor<B>>,
    /// Tape identity → name, of the parameters that already have a sum.
    summed: HashMap<usize, String>,
    bucket: BTreeMap<String, Tensor<B>>,
    bucket_bytes: usize,
    bucket_limit: usize,
}

impl<'a, B: Backend> GradientSums<'a, B> {
    /// Sums over `sums`, for a tape whose parameters have the identities `param_ids`.
    pub(super) fn new(
        sums: &'a mut BTreeMap<String, Tensor<B>>,
        param_ids: &HashMap<String, usize>,
        bucket_limit: usize,
    ) -> Self {
        let summed = param_ids
            .iter()
            .filter(|(name, _)| sums.contains_key(*name))
            .map(|(name, &id)| (id, name.clone()))
            .collect();
        GradientSums {
            sums,
            summed,
            bucket: BTreeMap::new(),
            bucket_bytes: 0,
            bucket_limit,
        }
    }

    /// Takes the gradient contribution `g` to variable `id` if `id` is a parameter with a
    /// sum, and gives it back otherwise (it then stays with the tape's own gradients).
    pub(super) fn offer(
        &mut self,
        backend: &B,
        id: usize,
        g: Tensor<B>,
    ) -> Result<Option<Tensor<B>>> {
        let Some(name) = self.summed.get(&id) else {
            return Ok(Some(g));
        };
        match self.bucket.get_mut(name) {
            // A parameter used twice: its contributions meet before they join the sum.
            Some(waiting) => backend.add_assign(waiting, &g)?,
            None => {
                self.bucket_bytes += g.size_in_bytes();
                self.bucket.insert(name.clone(), g);
            }
        }
        if self.bucket_bytes >= self.bucket_limit {
            self.flush(backend)?;
        }
        Ok(None)
    }

    /// Adds the waiting contributions to their sums.
    pub(super) fn flush(&mut self, backend: &B) -> Result<()> {
        let bucket = std::mem::take(&mut self.bucket);
        self.bucket_bytes = 0;
        let mut accs = Vec::with_capacity(bucket.len());
        let mut xs = Vec::with_capacity(bucket.len());
        // Both maps iterate in name order, so a merge pairs them.
        let mut waiting = bucket.iter().peekable();
        for (name, sum) in self.sums.iter_mut() {
            if let Some((_, g)) = waiting.next_if(|(w, _)| *w == name) {
                accs.push(sum);
                xs.push(g);
            }
        }
        if let Some((name, _)) = waiting.next() {
            // `offer` takes only parameters with a sum: a gradient here would be lost.
            return Err(crate::error::Error::Autograd(format!(
                "the gradient of `{name}` has no sum to join"
            )));
        }
        backend.add_assign_each(&mut accs, &xs)
    }

    /// Gradients of parameters no earlier sum had: they become sums.
    pub(super) fn adopt(&mut self, name: String, g: Tensor<B>) {
        let replaced = self.sums.insert(name, g);
        debug_assert!(
            replaced.is_none(),
            "a parameter with a sum went through `offer`"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::{Tape, Var};
    use crate::backend::cpu::CpuBackend;
    use crate::tensor::Shape;

    /// A micro-batch's loss: `mse(tanh(w) + w + gelu(v) [+ c], target)`, so `w` is used
    /// twice, and `c` (when given) is a parameter the first micro-batch did not reach.
    fn micro_batch_loss(
        tape: &mut Tape<CpuBackend>,
        params: &[(&str, &Tensor<CpuBackend>)],
        target: &[f64],
    ) -> Var<CpuBackend> {
        let vars: Vec<Var<CpuBackend>> = params
            .iter()
            .map(|(name, t)| tape.param(name, t, true))
            .collect();
        let w_twice = tape.tanh(&vars[0]).unwrap();
        let mut y = tape.add(&w_twice, &vars[0]).unwrap();
        let gv = tape.gelu(&vars[1]).unwrap();
        y = tape.add(&y, &gv).unwrap();
        if let Some(c) = vars.get(2) {
            y = tape.add(&y, c).unwrap();
        }
        let cpu = *tape.backend();
        let target = cpu.tensor_from_f64(Shape::new([2, 3]), target).unwrap();
        tape.mse(&y, &target).unwrap()
    }

    #[test]
    fn sums_equal_the_two_backwards_added_whatever_the_bucket() {
        let cpu = CpuBackend::f64();
        let t = |v: &[f64]| cpu.tensor_from_f64(Shape::new([2, 3]), v).unwrap();
        let w = t(&[0.3, -1.2, 0.7, 2.0, -0.4, 0.1]);
        let v = t(&[1.1, 0.2, -0.9, 0.5, -1.5, 0.8]);
        let c = t(&[0.05, -0.3, 0.6, -0.2, 0.9, 0.4]);
        let first_target = [0.5, 0.1, -0.2, 1.0, 0.3, -0.7];
        let second_target = [-0.4, 0.8, 0.2, -1.1, 0.6, 0.0];
        let first = || {
            let mut tape = Tape::new(cpu);
            let loss = micro_batch_loss(&mut tape, &[("w", &w), ("v", &v)], &first_target);
            tape.backward_scaled(&loss, 0.25).unwrap().into_map()
        };
        let second_tape = || {
            let mut tape = Tape::new(cpu);
            let params = [("w", &w), ("v", &v), ("c", &c)];
            let loss = micro_batch_loss(&mut tape, &params, &second_target);
            (tape, loss)
        };
        // Reference: both backwards in full, then one addition per gradient.
        let mut expected = first();
        let (mut tape, loss) = second_tape();
        for (name, g) in tape.backward_scaled(&loss, 0.75).unwrap().into_map() {
            match expected.get_mut(&name) {
                Some(sum) => cpu.add_assign(sum, &g).unwrap(),
                None => {
                    expected.insert(name, g);
                }
            }
        }
        // Flushed at every contribution, with two or three waiting, and once at the end.
        for bucket in [0, 100, bucket_bytes(0)] {
            let mut sums = first();
            let (mut tape, loss) = second_tape();
            let rest = tape
                .backpropagate(&loss, 0.75, Some((&mut sums, bucket)))
                .unwrap();
            assert!(
                rest.is_empty(),
                "bucket {bucket}: gradients left outside the sums"
            );
            assert_eq!(tape.stats().grad_buffers, 3, "bucket {bucket}");
            assert_eq!(
                sums.keys().collect::<Vec<_>>(),
                expected.keys().collect::<Vec<_>>()
            );
            for (name, sum) in &sums {
                let (got, want) = (
                    cpu.to_f64(sum).unwrap(),
                    cpu.to_f64(&expected[name]).unwrap(),
                );
                // Only `w`'s two contributions may add in another order, and only when the
                // bucket is flushed between them.
                let tolerance = if bucket < bucket_bytes(0) && name == "w" {
                    1e-15
                } else {
                    0.0
                };
                for (g, e) in got.iter().zip(&want) {
                    assert!(
                        (g - e).abs() <= tolerance * e.abs(),
                        "bucket {bucket}, `{name}`: {g} vs {e}"
                    );
                }
            }
        }
    }
}
