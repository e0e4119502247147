//! What the engine needs from a model: pure compute over a paged KV cache whose bytes the model
//! owns and whose block accounting the engine owns. The engine never sees weights or tensors.

/// A token id.
pub type TokenId = u32;

/// One sequence's share of a forward step.
#[derive(Debug, Clone)]
pub struct SeqStep<'a> {
    /// The new tokens of this sequence in this step (prefill chunk, or one decode token).
    pub tokens: &'a [TokenId],
    /// Position of `tokens[0]` in the sequence (= number of tokens already in the KV cache).
    pub start_pos: usize,
    /// KV blocks holding positions `0..start_pos + tokens.len()`, in order; block `i` holds
    /// positions `i*block_size .. (i+1)*block_size`. The model writes the new tokens' K/V there.
    pub block_table: &'a [u32],
    /// With a window pool ([`ModelExecutor::window_pool`]): the window-pool blocks, by the same
    /// block index, for the windowed layers. It covers the blocks from the first token's
    /// window start (`start_pos + 1 - window`) to the last token; earlier entries are
    /// [`NO_BLOCK`] (released). Empty without a window pool.
    pub window_table: &'a [u32],
    /// Whether to return the logits row of the last token of `tokens`.
    pub want_logits: bool,
    /// Return a logits row for EVERY token of `tokens` (prompt log-probabilities); when set,
    /// `want_logits` changes nothing (the last token's row is the last of them).
    pub all_logits: bool,
    /// Input embeddings replacing the token embeddings at these absolute positions (those
    /// outside this step's tokens are ignored).
    pub replace: &'a [(usize, Vec<f32>)],
    /// LoRA adapters for this sequence's rows, in order (empty: the base model).
    pub lora: &'a [crate::api::LoraRef],
}

impl SeqStep<'_> {
    /// Logits rows this sequence gets from a forward.
    pub fn rows(&self) -> usize {
        if self.all_logits {
            self.tokens.len()
        } else {
            usize::from(self.want_logits)
        }
    }
}

/// A window table entry for a block the window has passed (released; never read).
pub const NO_BLOCK: u32 = u32::MAX;

/// Errors a model step can report (the engine fails the step's requests, and goes on).
#[derive(Debug, Clone, thiserror::Error)]
#[error("model error: {0}")]
pub struct ModelError(pub String);

/// The compute side of a model, as the engine drives it. Implemented by the real llama runner
/// (server crate glue over `cordial-model`) and by the testkit's fake model.
pub trait ModelExecutor: Send {
    /// Width of a logits row.
    fn vocab_size(&self) -> usize;
    /// Longest sequence (prompt + output) the model supports.
    fn max_context(&self) -> usize;
    /// Tokens per KV block.
    fn block_size(&self) -> usize;
    /// Number of KV blocks the model allocated (ids `0..num_blocks`).
    fn num_blocks(&self) -> usize;
    /// Runs one forward step over all `seqs` (one batch). Appends to `logits` (cleared first),
    /// in `seqs` order, `tokens.len()` rows of `vocab_size` raw logits for a sequence with
    /// `all_logits`, else one row for a sequence with `want_logits` (see [`SeqStep::rows`]).
    /// A sequence's logits must not depend on what else is in the batch.
    fn forward(&mut self, seqs: &[SeqStep<'_>], logits: &mut Vec<f32>) -> Result<(), ModelError>;
    /// Copies the K/V bytes of block `src` into block `dst` (copy-on-write of a shared block).
    fn copy_block(&mut self, src: u32, dst: u32);
    /// Called once on the engine thread (the thread that drives `forward`) before its first
    /// step, e.g. to set that thread's scheduling priority as the executor's own threads.
    fn on_engine_thread(&mut self) {}
    /// A second pool for the layers with a sliding window, when the model keeps them apart:
    /// `(window, blocks)` — those layers see the last `window` positions and store their K/V
    /// in `blocks` blocks of their own, named by [`SeqStep::window_table`]; `block_table`
    /// names the other layers' blocks. `None` (the default): one pool for every layer.
    fn window_pool(&self) -> Option<(usize, usize)> {
        None
    }
    /// Copies window-pool block `src` into `dst` (copy-on-write).
    fn copy_window_block(&mut self, _src: u32, _dst: u32) {}
    /// KV bytes per position in the main pool and in the window pool (for metrics; 0 =
    /// unknown).
    fn kv_bytes_per_token(&self) -> (usize, usize) {
        (0, 0)
    }
}
