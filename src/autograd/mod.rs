//! A tape autograd that records nothing it will not differentiate.
//!
//! An op appends a node to the [`Tape`] only if one of its inputs requires a gradient; the
//! node keeps only the tensors its *needed* gradients use (a frozen weight's input is never
//! kept, a LayerNorm whose γ is frozen and whose input needs no gradient keeps nothing). So
//! layers below the lowest trainable parameter record no node at all, and memory grows with
//! the trainable depth, not the model depth. [`TapeStats`] makes that measurable.
//!
//! Usage: create a tape per step, turn parameters into [`Var`]s with [`Tape::param`], run the
//! forward ops (methods of `Tape`), then call [`Tape::backward`] on the scalar loss.

mod gradient_sums;
mod ops;
mod stats;

pub use ops::LoraVars;
pub use stats::{ScopeStats, TapeStats};

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Tensor};

use gradient_sums::GradientSums;

/// A value in the computation: a tensor, plus a tape identity when it requires a gradient.
#[derive(Debug)]
pub struct Var<B: Backend> {
    value: Tensor<B>,
    id: Option<usize>,
}

impl<B: Backend> Clone for Var<B> {
    fn clone(&self) -> Self {
        Var {
            value: self.value.clone(),
            id: self.id,
        }
    }
}

impl<B: Backend> Var<B> {
    /// The tensor.
    pub fn value(&self) -> &Tensor<B> {
        &self.value
    }

    /// Whether a gradient flows to this value.
    pub fn requires_grad(&self) -> bool {
        self.id.is_some()
    }
}

/// The gradient computation of one recorded op.
trait BackwardOp<B: Backend> {
    /// Gradients for the op's input slots; `needs[i]` says whether slot `i` wants one.
    fn backward(
        &self,
        backend: &B,
        d_out: &Tensor<B>,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor<B>>>>;

    /// The activations this node keeps alive (parameters are not activations).
    fn saved_activations(&self) -> Vec<&Tensor<B>>;
}

struct Node<B: Backend> {
    op: Box<dyn BackwardOp<B>>,
    inputs: Vec<Option<usize>>,
    output: usize,
}

/// Gradients of the trainable parameters, by name; frozen parameters have none.
#[derive(Debug)]
pub struct Gradients<B: Backend> {
    by_name: BTreeMap<String, Tensor<B>>,
}

impl<B: Backend> Gradients<B> {
    /// The gradient of parameter `name`, if it is trainable and the loss depends on it.
    pub fn get(&self, name: &str) -> Option<&Tensor<B>> {
        self.by_name.get(name)
    }

    /// All gradients in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor<B>)> {
        self.by_name.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// Gradients from a name → tensor map (e.g. after clipping them in place).
    pub fn from_map(by_name: BTreeMap<String, Tensor<B>>) -> Self {
        Gradients { by_name }
    }

    /// Moves the gradients out, keyed by name.
    pub fn into_map(self) -> BTreeMap<String, Tensor<B>> {
        self.by_name
    }

    /// Number of gradient tensors.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there is no gradient.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// A variable identity unique across every tape of the process, so a variable carried from
/// one tape to another is recognised as foreign.
fn fresh_id() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The record of one forward pass.
pub struct Tape<B: Backend> {
    backend: B,
    nodes: Vec<Node<B>>,
    param_ids: HashMap<String, usize>,
    /// The identities this tape can differentiate through: its parameters, and the outputs
    /// of the nodes recorded since its last backward.
    known: HashSet<usize>,
    /// The first misuse seen while recording (an input from another tape, or one whose
    /// nodes a backward already consumed): recording cannot fail, so backward reports it
    /// instead of returning gradients that silently miss that input's contribution.
    misuse: Option<String>,
    saved_storages: HashSet<usize>,
    /// The last linear map's input and its copy from [`Backend::rounded_for_products`]: the
    /// next map reading the same input (the query, key and value maps read one) takes the
    /// copy instead of rounding again. One entry, dropped by any other op.
    rounded_input: Option<(Tensor<B>, Tensor<B>)>,
    /// The last op's output and how to compute it again, where it was a GELU or a LayerNorm
    /// whose node keeps what that takes and the backend recomputes such outputs
    /// ([`Backend::recomputes_linear_inputs`]): the linear maps reading the output next keep
    /// that recipe, not the output. One entry, kept across consecutive maps of that output
    /// (query, key and value) and dropped by any other op.
    recomputable: Option<(Tensor<B>, ops::Recompute<B>)>,
    scope: usize,
    stats: TapeStats,
    tracking: bool,
}

/// A summary: what is recorded, not the recorded values.
impl<B: Backend> std::fmt::Debug for Tape<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tape")
            .field("nodes", &self.nodes.len())
            .field("parameters", &self.param_ids.len())
            .field("tracking", &self.tracking)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Tape<B> {
    /// An empty tape computing on `backend`.
    pub fn new(backend: B) -> Self {
        Tape {
            backend,
            nodes: Vec::new(),
            param_ids: HashMap::new(),
            known: HashSet::new(),
            misuse: None,
            saved_storages: HashSet::new(),
            rounded_input: None,
            recomputable: None,
            scope: 0,
            stats: TapeStats::new(),
            tracking: true,
        }
    }

    /// A tape for inference: every parameter is a constant, so nothing is recorded or kept,
    /// whatever trains.
    pub fn inference(backend: B) -> Self {
        Tape {
            tracking: false,
            ..Tape::new(backend)
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Counters so far (grad buffers are counted by [`Tape::backward`]).
    pub fn stats(&self) -> &TapeStats {
        &self.stats
    }

    /// Attributes the nodes recorded from now on to `scope` (e.g. `layer.3`) in the stats.
    pub fn set_scope(&mut self, scope: &str) {
        self.scope = self.stats.scope_index(scope);
    }

    /// A value that needs no gradient (inputs, masks, labels).
    pub fn constant(&self, t: Tensor<B>) -> Var<B> {
        Var { value: t, id: None }
    }

    /// A parameter. Trainable ones get a gradient named `name`; frozen ones are constants
    /// and cost the tape nothing. The same name always maps to the same variable.
    pub fn param(&mut self, name: &str, t: &Tensor<B>, trainable: bool) -> Var<B> {
        if !trainable || !self.tracking {
            return self.constant(t.clone());
        }
        let id = match self.param_ids.get(name) {
            Some(&id) => id,
            None => {
                let id = fresh_id();
                self.param_ids.insert(name.to_string(), id);
                self.known.insert(id);
                id
            }
        };
        Var {
            value: t.clone(),
            id: Some(id),
        }
    }

    /// Drops what was kept for the next op only: a linear map's rounded input (see
    /// `rounded_input`) and the last output to recompute (see `recomputable`). Every op
    /// calls it, recorded or not.
    fn forget_kept_for_next_op(&mut self) {
        self.rounded_input = None;
        self.recomputable = None;
    }

    /// Records `op` producing `output` from the inputs with tape identities `ids` (one per
    /// input slot of the op), or returns a constant when no input
    /// requires a gradient (then `op` is never built and nothing is saved).
    fn record(
        &mut self,
        output: Tensor<B>,
        ids: Vec<Option<usize>>,
        op: impl FnOnce(&[bool]) -> Box<dyn BackwardOp<B>>,
    ) -> Var<B> {
        self.forget_kept_for_next_op();
        if ids.iter().all(Option::is_none) {
            return self.constant(output);
        }
        if let Some(foreign) = ids.iter().flatten().find(|id| !self.known.contains(id)) {
            self.misuse.get_or_insert_with(|| {
                format!(
                    "an input (variable {foreign}) was recorded on another tape, or before this \
                     tape's last backward consumed its nodes: its gradient cannot flow"
                )
            });
        }
        let needs: Vec<bool> = ids.iter().map(Option::is_some).collect();
        let op = op(&needs);
        let mut new_bytes = 0;
        for t in op.saved_activations() {
            if self.saved_storages.insert(t.storage_id()) {
                new_bytes += t.size_in_bytes();
            }
        }
        self.stats.record_node(self.scope, new_bytes);
        let id = fresh_id();
        self.known.insert(id);
        self.nodes.push(Node {
            op,
            inputs: ids,
            output: id,
        });
        Var {
            value: output,
            id: Some(id),
        }
    }

    /// Backpropagates from the scalar `loss`, consuming the recorded nodes (their saved
    /// activations are freed as soon as each is used), and returns the gradients of the
    /// trainable parameters.
    pub fn backward(&mut self, loss: &Var<B>) -> Result<Gradients<B>> {
        self.backward_scaled(loss, 1.0)
    }

    /// [`Tape::backward`] of `scale · loss`: the gradients come out scaled without a pass
    /// over them (gradient accumulation weighs each micro-batch so). A `scale` of 1 is
    /// `backward`, bit for bit.
    pub fn backward_scaled(&mut self, loss: &Var<B>, scale: f64) -> Result<Gradients<B>> {
        let by_name = self.backpropagate(loss, scale, None)?;
        Ok(Gradients { by_name })
    }

    /// [`Tape::backward_scaled`] whose gradients are added to `sums` (gradient
    /// accumulation) as backward produces them, so that this backward's gradients and the
    /// sums are not both held in full: contributions to a parameter with a sum are added in
    /// batches of an eighth of the sums' size (at least 64 KiB, at most 32 MiB; one list
    /// addition each), and a parameter without one gets its gradient as its sum. The sums
    /// then hold what `backward_scaled` and a [`Backend::add_assign`] per gradient would
    /// give, up to the order of the additions of a parameter used more than once. After an
    /// error the sums hold part of this backward's gradients: discard them.
    pub fn backward_scaled_into(
        &mut self,
        loss: &Var<B>,
        scale: f64,
        sums: &mut Gradients<B>,
    ) -> Result<()> {
        let summed_bytes = sums.by_name.values().map(Tensor::size_in_bytes).sum();
        let bucket = gradient_sums::bucket_bytes(summed_bytes);
        self.backpropagate(loss, scale, Some((&mut sums.by_name, bucket)))?;
        Ok(())
    }

    /// Backward from `scale · loss`: the gradients by name, or nothing when they went into
    /// `into`'s sums (added in buckets of its byte size).
    fn backpropagate(
        &mut self,
        loss: &Var<B>,
        scale: f64,
        into: Option<(&mut BTreeMap<String, Tensor<B>>, usize)>,
    ) -> Result<BTreeMap<String, Tensor<B>>> {
        // Forward is over: the nodes hold what they need of it.
        self.forget_kept_for_next_op();
        let Some(loss_id) = loss.id else {
            return Err(Error::Autograd(
                "the loss does not depend on any trainable parameter".into(),
            ));
        };
        if loss.value.numel() != 1 {
            return Err(Error::Autograd(format!(
                "backward needs a scalar loss, got shape {}",
                loss.value.shape()
            )));
        }
        if let Some(misuse) = self.misuse.take() {
            return Err(Error::Autograd(misuse));
        }
        if !self.known.contains(&loss_id) {
            return Err(Error::Autograd(
                "the loss was recorded on another tape, or before this tape's last backward \
                 (a backward consumes the nodes it walks: run the forward again)"
                    .into(),
            ));
        }
        let seed = self.backend.tensor_from_f64(Shape::new([1]), &[scale])?;
        let mut grads: HashMap<usize, Tensor<B>> = HashMap::new();
        grads.insert(loss_id, seed.reshape(loss.value.shape().clone())?);
        let nodes = std::mem::take(&mut self.nodes);
        self.saved_storages.clear();
        self.known = self.param_ids.values().copied().collect();
        let mut sums = into.map(|(sums, bucket)| GradientSums::new(sums, &self.param_ids, bucket));
        // The size of each parameter's gradient, for the stats.
        let mut reached = HashMap::new();
        for node in nodes.into_iter().rev() {
            let Some(d_out) = grads.remove(&node.output) else {
                continue;
            };
            let needs: Vec<bool> = node.inputs.iter().map(Option::is_some).collect();
            let input_grads = node.op.backward(&self.backend, &d_out, &needs)?;
            for (slot, g) in node.inputs.iter().zip(input_grads) {
                if let (Some(id), Some(g)) = (slot, g) {
                    if self.known.contains(id) {
                        reached.entry(*id).or_insert(g.size_in_bytes());
                    }
                    let g = match sums.as_mut() {
                        Some(sums) => match sums.offer(&self.backend, *id, g)? {
                            Some(g) => g,
                            None => continue,
                        },
                        None => g,
                    };
                    match grads.get_mut(id) {
                        Some(acc) => self.backend.add_assign(acc, &g)?,
                        None => {
                            grads.insert(*id, g);
                        }
                    }
                }
            }
        }
        let mut by_name = BTreeMap::new();
        for (name, id) in &self.param_ids {
            if let Some(&bytes) = reached.get(id) {
                self.stats.record_grad_buffer(bytes);
            }
            if let Some(g) = grads.remove(id) {
                match sums.as_mut() {
                    Some(sums) => sums.adopt(name.clone(), g),
                    None => {
                        by_name.insert(name.clone(), g);
                    }
                }
            }
        }
        if let Some(sums) = sums.as_mut() {
            sums.flush(&self.backend)?;
        }
        Ok(by_name)
    }
}
