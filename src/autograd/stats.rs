//! Counters that prove what the tape did not record.

/// Per-scope share of the tape's work.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeStats {
    /// Nodes recorded while this scope was current.
    pub nodes: usize,
    /// Bytes of activations first saved by those nodes.
    pub saved_activation_bytes: usize,
}

/// Memory and work counters of one tape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapeStats {
    /// Nodes recorded (ops whose gradient will be computed).
    pub nodes: usize,
    /// Bytes of distinct activation buffers kept for backward.
    pub saved_activation_bytes: usize,
    /// Parameter gradient buffers produced by backward.
    pub grad_buffers: usize,
    /// Their bytes.
    pub grad_bytes: usize,
    scopes: Vec<(String, ScopeStats)>,
}

impl TapeStats {
    pub(crate) fn new() -> Self {
        TapeStats {
            nodes: 0,
            saved_activation_bytes: 0,
            grad_buffers: 0,
            grad_bytes: 0,
            scopes: vec![(String::new(), ScopeStats::default())],
        }
    }

    pub(crate) fn scope_index(&mut self, name: &str) -> usize {
        match self.scopes.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.scopes.push((name.to_string(), ScopeStats::default()));
                self.scopes.len() - 1
            }
        }
    }

    pub(crate) fn record_node(&mut self, scope: usize, new_saved_bytes: usize) {
        self.nodes += 1;
        self.saved_activation_bytes += new_saved_bytes;
        let s = &mut self.scopes[scope].1;
        s.nodes += 1;
        s.saved_activation_bytes += new_saved_bytes;
    }

    pub(crate) fn record_grad_buffer(&mut self, bytes: usize) {
        self.grad_buffers += 1;
        self.grad_bytes += bytes;
    }

    /// The counters of one scope (all zero for a scope never entered or with no node).
    pub fn scope(&self, name: &str) -> ScopeStats {
        self.scopes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }

    /// All scopes in order of first use; the unnamed scope `""` comes first.
    pub fn scopes(&self) -> impl Iterator<Item = (&str, &ScopeStats)> {
        self.scopes.iter().map(|(n, s)| (n.as_str(), s))
    }
}
