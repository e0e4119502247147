//! A deterministic fake model implementing [`cordial_engine::ModelExecutor`], for engine tests.
//!
//! **What it computes.** The logits row for a sequence is a pure function of the tokens the
//! fake finds in ITS OWN KV slots for positions `0..=p` (read through the block table the
//! engine passed), see [`FakeModelConfig::logits`]: a hash of that whole history gives every
//! vocabulary entry a logit in `[-4, 4)`. The model stores, per KV slot, the token written
//! there and, like real K/V, a fingerprint of the prefix it was computed after (a hash chain
//! over the slots of positions `0..=p` as read through the writer's block table). So a wrong
//! block table, a missed or wrong `copy_block`, or a block freed and reused while still in use
//! changes the output (or fails the forward when a position is read before it was written),
//! and a block reused for another prefix (equal tokens after a different start, as a broken
//! prefix cache would share it) fails the forward, instead of going unnoticed. Batch
//! composition never matters: rows are computed one sequence at a time, after every write of
//! the step.
//!
//! **LoRA.** A sequence's adapters ([`SeqStep::lora`]: ids and scales) seed its hash chain
//! ([`lora_start`]), so they change its logits and its K/V fingerprints: a block computed under
//! one adapter and read under another (a prefix cache keyed without the adapter) fails the
//! forward.
//!
//! **Window pool.** With `window: Some((w, blocks))` the fake also keeps a window pool, as a
//! model with sliding-window layers kept apart does: every token is written to its window-pool
//! slot too (through `window_table`), and each logits row checks that the window slots of the
//! last `w` positions hold exactly what the main slots hold — so a window table that misses a
//! block the window still sees, a window block released and reused too early, or a missed
//! `copy_window_block` fails the forward.
//!
//! **Options** ([`FakeModelConfig`]): vocabulary size, block size, number of blocks, context
//! length, window pool; [`FakeEos`] (EOS strongly suppressed before a history length, strongly preferred from
//! it on); injected failures (`fail_at_forward`: the n-th forward call returns `Err`;
//! `fail_on_token`: any forward feeding that token returns `Err`); and `gated`, which makes
//! every forward wait for a permit from a [`StepGate`], so a test can hold the engine inside a
//! step, submit or drop requests, and release it: batches become deterministic.
//!
//! **Counters** ([`FakeStats`], shared through `Arc<Mutex<_>>` from [`FakeModel::stats`]):
//! forward calls, tokens and sequences per step, block copies.
//!
//! **Checks.** A forward fails with a `ModelError` naming the problem when a block id is out of
//! range, a block table does not cover the positions written, a position reaches
//! `max_context`, a position is read before it was ever written, or a slot read holds K/V
//! computed after a different prefix.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::rng::mix;
use cordial_engine::{LoraRef, ModelError, ModelExecutor, SeqStep, TokenId};

/// How long a gated forward waits for a permit before failing (so a test bug cannot hang).
const GATE_TIMEOUT: Duration = Duration::from_secs(20);

/// EOS behaviour: for a history shorter than `from_len` tokens the EOS logit is -50 (never
/// chosen), from `from_len` on it is +50 (always chosen, also when sampling). The sequence thus
/// ends with exactly `from_len` tokens (prompt + generated) when EOS stops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeEos {
    pub token: TokenId,
    pub from_len: usize,
}

/// Shape and behaviour of a [`FakeModel`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeModelConfig {
    pub vocab_size: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    pub max_context: usize,
    pub eos: Option<FakeEos>,
    /// The forward call with this index (0 = the first) returns `Err`.
    pub fail_at_forward: Option<u64>,
    /// Every forward whose batch feeds this token returns `Err`.
    pub fail_on_token: Option<TokenId>,
    /// Every forward waits for a permit from the model's [`StepGate`].
    pub gated: bool,
    /// A window pool: `(window positions, blocks)` (see the module docs).
    pub window: Option<(usize, usize)>,
}

impl Default for FakeModelConfig {
    fn default() -> Self {
        FakeModelConfig {
            vocab_size: 64,
            block_size: 4,
            num_blocks: 64,
            max_context: 256,
            eos: None,
            fail_at_forward: None,
            fail_on_token: None,
            gated: false,
            window: None,
        }
    }
}

impl FakeModelConfig {
    /// The logits row the model returns after the tokens `history` (positions `0..len`).
    pub fn logits(&self, history: &[TokenId]) -> Vec<f32> {
        self.logits_with(history, &[])
    }

    /// [`Self::logits`] for a sequence running with the LoRA adapters `lora`.
    pub fn logits_with(&self, history: &[TokenId], lora: &[LoraRef]) -> Vec<f32> {
        let mut h = lora_start(lora);
        for (pos, &t) in history.iter().enumerate() {
            h = chain(h, pos, t);
        }
        let mut row: Vec<f32> = (0..self.vocab_size as u64)
            .map(|v| {
                let bits = mix(h ^ v.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 40;
                bits as f32 / (1u64 << 24) as f32 * 8.0 - 4.0
            })
            .collect();
        if let Some(eos) = self.eos {
            if let Some(x) = row.get_mut(eos.token as usize) {
                *x = if history.len() >= eos.from_len {
                    50.0
                } else {
                    -50.0
                };
            }
        }
        row
    }

    /// What greedy decoding of `prompt` gives, computed directly from [`Self::logits`]: up to
    /// `max_new_tokens` tokens, ending at the context limit or before a token in `eos_tokens`.
    pub fn greedy_reference(
        &self,
        prompt: &[TokenId],
        max_new_tokens: usize,
        eos_tokens: &[TokenId],
    ) -> Vec<TokenId> {
        self.greedy_reference_with(prompt, max_new_tokens, eos_tokens, &[])
    }

    /// [`Self::greedy_reference`] with the LoRA adapters `lora`.
    pub fn greedy_reference_with(
        &self,
        prompt: &[TokenId],
        max_new_tokens: usize,
        eos_tokens: &[TokenId],
        lora: &[LoraRef],
    ) -> Vec<TokenId> {
        let mut history = prompt.to_vec();
        let mut out = Vec::new();
        while out.len() < max_new_tokens && history.len() < self.max_context {
            let row = self.logits_with(&history, lora);
            let mut best = 0;
            for (i, &x) in row.iter().enumerate() {
                if x > row[best] {
                    best = i;
                }
            }
            let token = best as TokenId;
            if eos_tokens.contains(&token) {
                break;
            }
            out.push(token);
            history.push(token);
        }
        out
    }
}

/// The start of the history hash chain (see [`chain`]).
const CHAIN_START: u64 = 0x243F_6A88_85A3_08D3;

/// Where a sequence's hash chain starts: [`CHAIN_START`] for the base model, mixed with the
/// ids and scales of its LoRA adapters otherwise.
pub fn lora_start(lora: &[LoraRef]) -> u64 {
    lora.iter().fold(CHAIN_START, |h, l| {
        mix(h ^ (u64::from(l.id) << 32) ^ u64::from(l.scale.to_bits()))
    })
}

/// One step of the history hash chain: `h` after the token `t` at position `pos`.
fn chain(h: u64, pos: usize, t: TokenId) -> u64 {
    mix(h ^ u64::from(t) ^ ((pos as u64) << 32))
}

/// Counters tests read while (or after) the engine runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeStats {
    /// Forward calls that got past the gate (failed ones included).
    pub forward_calls: u64,
    /// Tokens fed per forward call.
    pub tokens_per_step: Vec<usize>,
    /// Sequences per forward call.
    pub seqs_per_step: Vec<usize>,
    /// `(src, dst)` of every `copy_block`.
    pub block_copies: Vec<(u32, u32)>,
    /// The distinct LoRA adapter ids of each forward call (sorted; empty: base only).
    pub loras_per_step: Vec<Vec<u32>>,
    /// `(src, dst)` of every `copy_window_block`.
    pub window_block_copies: Vec<(u32, u32)>,
    /// Most window-pool blocks named by the window tables of one forward.
    pub max_window_blocks_in_step: usize,
}

#[derive(Debug, Default)]
struct GateState {
    /// Forwards allowed to run; `u64::MAX` = open.
    permits: u64,
    /// Index of the forward call waiting for a permit, if one is.
    parked: Option<u64>,
}

/// Lets a test run a gated [`FakeModel`] one forward at a time.
#[derive(Debug, Clone, Default)]
pub struct StepGate {
    inner: Arc<(Mutex<GateState>, Condvar)>,
}

impl StepGate {
    fn state(&self) -> MutexGuard<'_, GateState> {
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets `n` more forward calls run.
    pub fn allow(&self, n: u64) {
        let mut s = self.state();
        s.permits = s.permits.saturating_add(n);
        if s.permits > 0 {
            // The parked forward (if any) may go; it is no longer waiting.
            s.parked = None;
        }
        self.inner.1.notify_all();
    }

    /// Lets every forward run from now on.
    pub fn open(&self) {
        self.allow(u64::MAX);
    }

    /// Waits until a forward call waits at the gate and returns its index (0 = first call);
    /// `None` after `timeout`.
    pub fn wait_parked(&self, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        let mut s = self.state();
        loop {
            if let Some(index) = s.parked {
                return Some(index);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            s = self
                .inner
                .1
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Called by the model: waits for a permit for forward call `index`.
    fn pass(&self, index: u64) -> Result<(), ModelError> {
        let deadline = Instant::now() + GATE_TIMEOUT;
        let mut s = self.state();
        while s.permits == 0 {
            s.parked = Some(index);
            self.inner.1.notify_all();
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                s.parked = None;
                return Err(ModelError(format!(
                    "fake model: no gate permit for forward {index}"
                )));
            };
            s = self
                .inner
                .1
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        s.parked = None;
        if s.permits != u64::MAX {
            s.permits -= 1;
        }
        Ok(())
    }
}

/// The fake model (see the module docs).
#[derive(Debug)]
pub struct FakeModel {
    config: FakeModelConfig,
    /// The token written in each KV slot (`block * block_size + offset`), if any, and the
    /// history chain hash up to and including it, as seen by the write.
    slots: Vec<Option<(TokenId, u64)>>,
    /// The same for the window pool's slots.
    window_slots: Vec<Option<(TokenId, u64)>>,
    stats: Arc<Mutex<FakeStats>>,
    gate: StepGate,
    calls: u64,
}

impl FakeModel {
    pub fn new(config: FakeModelConfig) -> FakeModel {
        let slots = vec![None; config.num_blocks * config.block_size];
        let window_slots = vec![None; config.window.map_or(0, |w| w.1) * config.block_size];
        FakeModel {
            config,
            slots,
            window_slots,
            stats: Arc::default(),
            gate: StepGate::default(),
            calls: 0,
        }
    }

    /// The counters, shared: keep a clone before handing the model to the engine.
    pub fn stats(&self) -> Arc<Mutex<FakeStats>> {
        Arc::clone(&self.stats)
    }

    /// The gate every forward waits at when `config.gated` (closed until a test allows steps).
    pub fn gate(&self) -> StepGate {
        self.gate.clone()
    }

    pub fn config(&self) -> &FakeModelConfig {
        &self.config
    }

    /// The slot of `pos` in `table`, or why there is none.
    fn slot(&self, table: &[u32], pos: usize) -> Result<usize, ModelError> {
        let bs = self.config.block_size;
        if pos >= self.config.max_context {
            return Err(ModelError(format!("position {pos} beyond the context")));
        }
        let block = *table.get(pos / bs).ok_or_else(|| {
            ModelError(format!(
                "block table of {} blocks misses position {pos}",
                table.len()
            ))
        })? as usize;
        if block >= self.config.num_blocks {
            return Err(ModelError(format!("block {block} out of range")));
        }
        Ok(block * bs + pos % bs)
    }

    /// The window-pool slot of `pos` in `table`, or why there is none.
    fn window_slot(&self, table: &[u32], pos: usize) -> Result<usize, ModelError> {
        let bs = self.config.block_size;
        let blocks = self.config.window.map_or(0, |w| w.1);
        match table.get(pos / bs) {
            Some(&b) if (b as usize) < blocks => Ok(b as usize * bs + pos % bs),
            Some(&b) => Err(ModelError(format!(
                "window block {b} for position {pos} out of range"
            ))),
            None => Err(ModelError(format!(
                "window table of {} blocks misses position {pos}",
                table.len()
            ))),
        }
    }

    /// Checks that the window slots of the `w` positions before `end` hold what the main
    /// slots hold.
    fn check_window(&self, seq: &SeqStep<'_>, end: usize) -> Result<(), ModelError> {
        let Some((w, _)) = self.config.window else {
            return Ok(());
        };
        for pos in end.saturating_sub(w)..end {
            let main = self.read(seq.block_table, pos)?;
            let got = self.window_slots[self.window_slot(seq.window_table, pos)?];
            if got != Some(main) {
                return Err(ModelError(format!(
                    "window slot of position {pos} does not hold its K/V"
                )));
            }
        }
        Ok(())
    }

    /// What the slot of `pos` in `table` holds: its token and history hash.
    fn read(&self, table: &[u32], pos: usize) -> Result<(TokenId, u64), ModelError> {
        self.slots[self.slot(table, pos)?]
            .ok_or_else(|| ModelError(format!("position {pos} read before it was written")))
    }

    /// Writes the tokens; each slot's hash chains on the previous position's slot, read through
    /// the same table (as attention reads the earlier K/V).
    fn write(&mut self, seq: &SeqStep<'_>) -> Result<(), ModelError> {
        for (i, &token) in seq.tokens.iter().enumerate() {
            let pos = seq.start_pos + i;
            let slot = self.slot(seq.block_table, pos)?;
            let prev = match pos {
                0 => lora_start(seq.lora),
                _ => self.read(seq.block_table, pos - 1)?.1,
            };
            self.slots[slot] = Some((token, chain(prev, pos, token)));
            if self.config.window.is_some() {
                let w = self.window_slot(seq.window_table, pos)?;
                self.window_slots[w] = self.slots[slot];
            }
        }
        Ok(())
    }

    /// The tokens at positions `0..len`, checking that every slot was computed after exactly
    /// the prefix (and with the adapters) it is read with.
    fn history(
        &self,
        table: &[u32],
        len: usize,
        lora: &[LoraRef],
    ) -> Result<Vec<TokenId>, ModelError> {
        let mut h = lora_start(lora);
        let mut tokens = Vec::with_capacity(len);
        for pos in 0..len {
            let (token, stored) = self.read(table, pos)?;
            h = chain(h, pos, token);
            if stored != h {
                return Err(ModelError(format!(
                    "position {pos} holds K/V computed after another prefix"
                )));
            }
            tokens.push(token);
        }
        Ok(tokens)
    }

    fn record(&self, seqs: &[SeqStep<'_>]) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.forward_calls += 1;
        stats
            .tokens_per_step
            .push(seqs.iter().map(|s| s.tokens.len()).sum());
        stats.seqs_per_step.push(seqs.len());
        let mut ids: Vec<u32> = seqs
            .iter()
            .flat_map(|s| s.lora.iter().map(|l| l.id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        stats.loras_per_step.push(ids);
        let mut named: Vec<u32> = seqs
            .iter()
            .flat_map(|s| s.window_table.iter().copied())
            .filter(|&b| b != cordial_engine::NO_BLOCK)
            .collect();
        named.sort_unstable();
        named.dedup();
        stats.max_window_blocks_in_step = stats.max_window_blocks_in_step.max(named.len());
    }
}

impl ModelExecutor for FakeModel {
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn max_context(&self) -> usize {
        self.config.max_context
    }

    fn block_size(&self) -> usize {
        self.config.block_size
    }

    fn num_blocks(&self) -> usize {
        self.config.num_blocks
    }

    fn forward(&mut self, seqs: &[SeqStep<'_>], logits: &mut Vec<f32>) -> Result<(), ModelError> {
        logits.clear();
        let call = self.calls;
        self.calls += 1;
        if self.config.gated {
            self.gate.pass(call)?;
        }
        self.record(seqs);
        if self.config.fail_at_forward == Some(call) {
            return Err(ModelError(format!("injected failure at forward {call}")));
        }
        if let Some(t) = self.config.fail_on_token {
            if seqs.iter().any(|s| s.tokens.contains(&t)) {
                return Err(ModelError(format!("injected failure on token {t}")));
            }
        }
        for seq in seqs {
            self.write(seq)?;
        }
        for seq in seqs.iter().filter(|s| s.rows() > 0) {
            let end = seq.start_pos + seq.tokens.len();
            let history = self.history(seq.block_table, end, seq.lora)?;
            for row_end in end + 1 - seq.rows()..=end {
                self.check_window(seq, row_end)?;
                logits.extend(self.config.logits_with(&history[..row_end], seq.lora));
            }
        }
        Ok(())
    }

    fn window_pool(&self) -> Option<(usize, usize)> {
        self.config.window
    }

    fn copy_window_block(&mut self, src: u32, dst: u32) {
        let bs = self.config.block_size;
        let (s, d) = (src as usize * bs, dst as usize * bs);
        self.window_slots.copy_within(s..s + bs, d);
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.window_block_copies.push((src, dst));
    }

    fn copy_block(&mut self, src: u32, dst: u32) {
        let bs = self.config.block_size;
        let (src, dst) = (src as usize * bs, dst as usize * bs);
        self.slots.copy_within(src..src + bs, dst);
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats
            .block_copies
            .push(((src / bs) as u32, (dst / bs) as u32));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step<'a>(tokens: &'a [TokenId], start_pos: usize, table: &'a [u32]) -> SeqStep<'a> {
        SeqStep {
            tokens,
            start_pos,
            block_table: table,
            window_table: &[],
            want_logits: true,
            all_logits: false,
            replace: &[],
            lora: &[],
        }
    }

    #[test]
    fn logits_follow_the_history_read_through_the_block_table() {
        let config = FakeModelConfig::default();
        let mut model = FakeModel::new(config.clone());
        let mut logits = Vec::new();
        model
            .forward(&[step(&[1, 2, 3, 4, 5], 0, &[7, 3])], &mut logits)
            .unwrap();
        assert_eq!(logits, config.logits(&[1, 2, 3, 4, 5]));
        model
            .forward(&[step(&[6], 5, &[7, 3])], &mut logits)
            .unwrap();
        assert_eq!(logits, config.logits(&[1, 2, 3, 4, 5, 6]));
        // Copy-on-write: block 3 copied to 9, then the copy diverges.
        model.copy_block(3, 9);
        model
            .forward(&[step(&[8], 6, &[7, 9])], &mut logits)
            .unwrap();
        assert_eq!(logits, config.logits(&[1, 2, 3, 4, 5, 6, 8]));
        model
            .forward(&[step(&[9], 6, &[7, 3])], &mut logits)
            .unwrap();
        assert_eq!(logits, config.logits(&[1, 2, 3, 4, 5, 6, 9]));
        let stats = model.stats();
        let stats = stats.lock().unwrap();
        assert_eq!(stats.forward_calls, 4);
        assert_eq!(stats.tokens_per_step, vec![5, 1, 1, 1]);
        assert_eq!(stats.block_copies, vec![(3, 9)]);
    }

    #[test]
    fn a_missing_copy_or_table_shows_up() {
        let mut model = FakeModel::new(FakeModelConfig::default());
        let mut logits = Vec::new();
        model
            .forward(&[step(&[1, 2, 3, 4, 5], 0, &[0, 1])], &mut logits)
            .unwrap();
        // Block 2 was never written: reading position 4 through it fails.
        let err = model
            .forward(&[step(&[6], 5, &[0, 2])], &mut logits)
            .unwrap_err();
        assert!(err.0.contains("read before"), "{err}");
        let err = model
            .forward(&[step(&[6], 5, &[0])], &mut logits)
            .unwrap_err();
        assert!(err.0.contains("misses position"), "{err}");
        let err = model
            .forward(&[step(&[6], 0, &[64])], &mut logits)
            .unwrap_err();
        assert!(err.0.contains("out of range"), "{err}");
    }

    #[test]
    fn a_block_reused_after_another_prefix_is_detected() {
        let mut model = FakeModel::new(FakeModelConfig::default());
        let mut logits = Vec::new();
        // Blocks 0, 1: [1 2 3 4][5 6 7 8]; block 2: [9 2 3 4].
        model
            .forward(&[step(&[1, 2, 3, 4, 5, 6, 7, 8], 0, &[0, 1])], &mut logits)
            .unwrap();
        model
            .forward(&[step(&[9, 2, 3, 4], 0, &[2])], &mut logits)
            .unwrap();
        // Block 1 holds the right tokens for [9 2 3 4][5 6 7 8] but was computed after [1 2 3 4].
        let err = model
            .forward(&[step(&[10], 8, &[2, 1, 3])], &mut logits)
            .unwrap_err();
        assert!(err.0.contains("another prefix"), "{err}");
        // Reused after the right prefix, it is fine.
        model
            .forward(&[step(&[10], 8, &[0, 1, 3])], &mut logits)
            .unwrap();
        assert_eq!(logits, model.config.logits(&[1, 2, 3, 4, 5, 6, 7, 8, 10]));
    }

    #[test]
    fn eos_and_injected_failures() {
        let config = FakeModelConfig {
            eos: Some(FakeEos {
                token: 3,
                from_len: 4,
            }),
            fail_at_forward: Some(1),
            fail_on_token: Some(60),
            ..Default::default()
        };
        assert_eq!(config.logits(&[1, 2, 3])[3], -50.0);
        assert_eq!(config.logits(&[1, 2, 3, 4])[3], 50.0);
        assert_eq!(config.greedy_reference(&[1, 2], 10, &[3]).len(), 2);
        let mut model = FakeModel::new(config);
        let mut logits = Vec::new();
        assert!(model.forward(&[step(&[1], 0, &[0])], &mut logits).is_ok());
        assert!(model.forward(&[step(&[2], 1, &[0])], &mut logits).is_err());
        assert!(model.forward(&[step(&[2], 1, &[0])], &mut logits).is_ok());
        assert!(model.forward(&[step(&[60], 2, &[0])], &mut logits).is_err());
    }

    #[test]
    fn greedy_reference_is_the_argmax_chain() {
        let config = FakeModelConfig::default();
        let out = config.greedy_reference(&[5, 6, 7], 6, &[]);
        assert_eq!(out.len(), 6);
        let mut history = vec![5, 6, 7];
        for &t in &out {
            let row = config.logits(&history);
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(row[t as usize], max);
            history.push(t);
        }
        let short = FakeModelConfig {
            max_context: 5,
            ..Default::default()
        };
        assert_eq!(short.greedy_reference(&[5, 6, 7], 6, &[]).len(), 2);
    }

    #[test]
    fn gate_holds_forwards_until_allowed() {
        let mut model = FakeModel::new(FakeModelConfig {
            gated: true,
            ..Default::default()
        });
        let gate = model.gate();
        let worker = std::thread::spawn(move || {
            let mut logits = Vec::new();
            let r1 = model.forward(&[step(&[1], 0, &[0])], &mut logits).is_ok();
            let r2 = model.forward(&[step(&[2], 1, &[0])], &mut logits).is_ok();
            (r1, r2)
        });
        assert_eq!(gate.wait_parked(Duration::from_secs(5)), Some(0));
        gate.allow(1);
        assert_eq!(gate.wait_parked(Duration::from_secs(5)), Some(1));
        gate.open();
        assert_eq!(worker.join().unwrap(), (true, true));
    }
}
