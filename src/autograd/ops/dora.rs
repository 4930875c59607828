use super::super::{BackwardOp, Tape, Var};
use super::id_of;
use crate::backend::{Backend, Dropout};
use crate::error::{Error, Result};
use crate::tensor::{DType, Shape, Tensor};

// Input slots of the scaling node.
const Z: usize = 0;
const MAGNITUDE: usize = 1;
const BIAS: usize = 2;
const ADDEND: usize = 3;

/// `y = z ⊙ (m / n) + bias + addend`, the norms `n` held constant (DoRA's detached norm).
struct MagnitudeScaleNode<B: Backend> {
    /// `m[c] / n[c]` as the forward scaled with.
    scale: Vec<f64>,
    /// `1 / n[c]`: the magnitude's gradient is `Σ_r dy⊙z / n`.
    inverse_norms: Vec<f64>,
    /// The magnitude's shape and dtype, its gradient's.
    magnitude: (Shape, DType),
    /// Kept only when the magnitude trains.
    z: Option<Tensor<B>>,
}

impl<B: Backend> BackwardOp<B> for MagnitudeScaleNode<B> {
    fn backward(
        &self,
        backend: &B,
        d_out: &Tensor<B>,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor<B>>>> {
        let dz = match needs[Z] {
            true => Some(backend.scale_columns(d_out, &self.scale, None)?),
            false => None,
        };
        let dm = match (&self.z, needs[MAGNITUDE]) {
            (Some(z), true) => {
                let dots = backend.column_dots(d_out, z)?;
                let dm: Vec<f64> = dots
                    .iter()
                    .zip(&self.inverse_norms)
                    .map(|(d, inv)| d * inv)
                    .collect();
                let (shape, dtype) = &self.magnitude;
                Some(backend.tensor_from_f64_as(shape.clone(), &dm, *dtype)?)
            }
            _ => None,
        };
        let dbias = match needs[BIAS] {
            true => Some(backend.column_sums(d_out)?),
            false => None,
        };
        let daddend = needs[ADDEND].then(|| d_out.clone());
        Ok(vec![dz, dm, dbias, daddend])
    }

    fn saved_activations(&self) -> Vec<&Tensor<B>> {
        self.z.iter().collect()
    }
}

/// `y = x − dropout(x)`: the part of `x` that a dropout drops (and the survivors' excess
/// over `x`, `x·p/(1−p)`, negated). Keeps the seed, not the mask, as dropout's own node.
struct DroppedPartNode {
    dropout: Dropout,
}

impl<B: Backend> BackwardOp<B> for DroppedPartNode {
    fn backward(
        &self,
        backend: &B,
        d_out: &Tensor<B>,
        _: &[bool],
    ) -> Result<Vec<Option<Tensor<B>>>> {
        Ok(vec![Some(dropped_part(backend, d_out, self.dropout)?)])
    }

    fn saved_activations(&self) -> Vec<&Tensor<B>> {
        vec![]
    }
}

/// `x − dropout(x)`, which is its own gradient's map (both terms are linear in `x`).
fn dropped_part<B: Backend>(backend: &B, x: &Tensor<B>, dropout: Dropout) -> Result<Tensor<B>> {
    let mut y = backend.dropout(x, dropout)?;
    backend.scale_in_place(&mut y, -1.0)?;
    backend.add_assign(&mut y, x)?;
    Ok(y)
}

impl<B: Backend> Tape<B> {
    /// DoRA's output: `z`'s columns scaled by `magnitude[c] · inverse_norms[c]` (each
    /// adapted weight row's magnitude over its norm, the norm held constant, as PEFT detaches
    /// it), plus `bias` `[cols]` and `addend` (`z`'s shape) where given. With
    /// `output_for_products`, the output is stored as products read it (see
    /// [`Tape::linear_for_products`]).
    pub fn magnitude_scale(
        &mut self,
        z: &Var<B>,
        magnitude: &Var<B>,
        inverse_norms: Vec<f64>,
        (bias, addend): (Option<&Var<B>>, Option<&Var<B>>),
        output_for_products: bool,
    ) -> Result<Var<B>> {
        const OP: &str = "magnitude scale";
        let m = self.backend.to_f64(&magnitude.value)?;
        if m.len() != inverse_norms.len() {
            return Err(Error::shape(
                OP,
                format!(
                    "magnitude {} for {} norms",
                    magnitude.value.shape(),
                    inverse_norms.len()
                ),
            ));
        }
        let scale: Vec<f64> = m.iter().zip(&inverse_norms).map(|(m, n)| m * n).collect();
        let mut y = self
            .backend
            .scale_columns(&z.value, &scale, bias.map(|b| &b.value))?;
        if let Some(a) = addend {
            self.backend.add_assign(&mut y, &a.value)?;
        }
        if output_for_products {
            y = self.backend.stored_for_products(y)?;
        }
        let ids = vec![z.id, magnitude.id, id_of(bias), id_of(addend)];
        Ok(self.record(y, ids, |needs| {
            Box::new(MagnitudeScaleNode {
                scale,
                inverse_norms,
                magnitude: (magnitude.value.shape().clone(), magnitude.value.dtype()),
                z: needs[MAGNITUDE].then(|| z.value.clone()),
            })
        }))
    }

    /// `x − dropout(x)`: with it, a map of `x` and one of `dropout(x)` share a weight as
    /// `W·(x − dropout(x)) + W·dropout(x)`, DoRA's frozen base beside its scaled dropped
    /// input. The caller's dropout has `p > 0`: with none, the part is zero.
    pub fn dropped_part(&mut self, x: &Var<B>, dropout: Dropout) -> Result<Var<B>> {
        let y = dropped_part(&self.backend, &x.value, dropout)?;
        Ok(self.record(y, vec![x.id], |_| Box::new(DroppedPartNode { dropout })))
    }
}
