//! Block hashes as vLLM computes them with `--prefix-caching-hash-algo sha256_cbor`, so that a
//! consumer of the KV events (a router's KV-cache index) that recomputes hashes from token ids
//! agrees with ours, across restarts and replicas.
//!
//! vLLM (`vllm/v1/core/kv_cache_utils.py`, `vllm/utils/hashing.py`):
//!
//! ```text
//! sha256_cbor(x)  = SHA-256(cbor2.dumps(x, canonical=True))
//! NONE_HASH       = sha256_cbor(seed)                      seed: PYTHONHASHSEED if set, else
//!                                                          "vllm-none-hash" (cryptographic algos)
//! hash(block i)   = sha256_cbor((parent, tuple(token_ids), extra_keys))
//!                   parent = hash(block i - 1), or NONE_HASH for block 0; extra_keys = None
//! external hash   = int.from_bytes(hash, "big") & (2**64 - 1)   (the last 8 bytes, big-endian;
//!                   what the events carry when VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES, the default)
//! ```
//!
//! `extra_keys` is `None` for every block here: a request is a plain token prompt. A LoRA
//! adapter would make it vLLM's `(lora_name,)` (see [`hash_block_with`]); multimodal inputs and
//! `cache_salt` go there too in vLLM.

use sha2::{Digest, Sha256};

use crate::model::TokenId;

/// A full 32-byte block hash (what the prefix cache is keyed by).
pub type BlockHash = [u8; 32];

/// vLLM's fixed seed of `NONE_HASH` for cryptographic hash algorithms when `PYTHONHASHSEED` is
/// not set (`DEFAULT_NONE_HASH_SEED`).
pub const DEFAULT_HASH_SEED: &str = "vllm-none-hash";

/// `NONE_HASH`: the parent of every prompt's first block, `sha256_cbor(seed)`.
pub fn root_hash(seed: &str) -> BlockHash {
    let mut cbor = Vec::with_capacity(seed.len() + 9);
    text(&mut cbor, seed);
    Sha256::digest(&cbor).into()
}

/// The hash of a full block of `tokens` after the block hashed `parent` (no extra keys).
pub fn hash_block(parent: &BlockHash, tokens: &[TokenId]) -> BlockHash {
    hash_block_with(parent, tokens, None)
}

/// The hash of a block with vLLM's `extra_keys` given as text items (e.g. `[lora_name]` for an
/// adapter); `None` is CBOR `null`, as vLLM hashes a block without extra keys.
pub fn hash_block_with(
    parent: &BlockHash,
    tokens: &[TokenId],
    extra_keys: Option<&[&str]>,
) -> BlockHash {
    let mut cbor = Vec::with_capacity(40 + 5 * tokens.len());
    head(&mut cbor, 4, 3); // the 3-tuple
    head(&mut cbor, 2, parent.len() as u64);
    cbor.extend_from_slice(parent);
    head(&mut cbor, 4, tokens.len() as u64);
    for &t in tokens {
        head(&mut cbor, 0, u64::from(t));
    }
    match extra_keys {
        None => cbor.push(0xf6),
        Some(keys) => {
            head(&mut cbor, 4, keys.len() as u64);
            for k in keys {
                text(&mut cbor, k);
            }
        }
    }
    Sha256::digest(&cbor).into()
}

/// The chain of hashes of every full block of `prompt`, from `root`.
pub fn chain(prompt: &[TokenId], block_size: usize, root: &BlockHash) -> Vec<BlockHash> {
    let mut out: Vec<BlockHash> = Vec::with_capacity(prompt.len() / block_size.max(1));
    if block_size == 0 {
        return out;
    }
    for block in prompt.chunks_exact(block_size) {
        let parent = out.last().unwrap_or(root);
        let hash = hash_block(parent, block);
        out.push(hash);
    }
    out
}

/// The hash as KV events carry it: the low 64 bits of the big-endian integer.
pub fn external(hash: &BlockHash) -> u64 {
    let mut low = [0u8; 8];
    low.copy_from_slice(&hash[24..]);
    u64::from_be_bytes(low)
}

/// A CBOR head (major type + argument), in the shortest form (canonical CBOR).
fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= 0xff {
        out.extend_from_slice(&[m | 24, n as u8]);
    } else if n <= 0xffff {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= 0xffff_ffff {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn text(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(h: &[u8]) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reference values from Python: `hashlib.sha256(cbor2.dumps(x, canonical=True))` with
    /// cbor2 6.2 (`scripts/scale-out/block_hashes.py` recomputes them the same way).
    #[test]
    fn matches_vllm_sha256_cbor() {
        let root = root_hash(DEFAULT_HASH_SEED);
        assert_eq!(hex(&root), ROOT_DEFAULT);
        assert_eq!(hex(&root_hash("0")), ROOT_SEED_0);
        let tokens: Vec<TokenId> = (0..16).map(|i| i * 1000 + 7).collect();
        let b0 = hash_block(&root, &tokens);
        assert_eq!(hex(&b0), BLOCK0);
        let big: Vec<TokenId> = vec![70_000, 5, 300, 24, 23, 255, 256, 65_535];
        let b1 = hash_block(&b0, &big);
        assert_eq!(hex(&b1), BLOCK1);
        assert_eq!(external(&b1), EXTERNAL1);
        assert_eq!(
            hex(&hash_block_with(&root, &tokens, Some(&["adapter"]))),
            BLOCK0_LORA
        );
        assert_eq!(
            chain(&[tokens.clone(), big.clone()].concat()[..24], 8, &root).len(),
            3
        );
    }

    #[test]
    fn the_chain_depends_on_every_earlier_token_and_the_seed() {
        let root = root_hash(DEFAULT_HASH_SEED);
        let a: Vec<TokenId> = (1..=10).collect();
        assert_eq!(chain(&a, 4, &root).len(), 2);
        assert!(chain(&a[..3], 4, &root).is_empty());
        let mut b = a.clone();
        b[0] = 99;
        assert_ne!(chain(&a, 4, &root)[1], chain(&b, 4, &root)[1]);
        let mut c = a.clone();
        c[9] = 42;
        assert_eq!(chain(&a, 4, &root), chain(&c, 4, &root));
        assert_ne!(chain(&a, 4, &root), chain(&a, 4, &root_hash("1")));
        assert!(chain(&a, 0, &root).is_empty());
    }

    const ROOT_DEFAULT: &str = "9bd96a485ad84efdafb72ee48a1d7a69bcead0f8f0433173941b276b9581eef0";
    const ROOT_SEED_0: &str = "4e1195df020de59e0d65a33a4279f1183e7ae4e5d980e309f8b55adff2e61c3e";
    const BLOCK0: &str = "101e649cffabe334015decb0c5f6e8d29ec2c6a38e3ad028bef3112863af8cda";
    const BLOCK1: &str = "04b8ce7d219f0a24ecbd994981ebdfe231ba6c990c8fad8b5c17e7ccd595a63c";
    const BLOCK0_LORA: &str = "7561d913a6589080e184dd2b65dfb33d8eb28f110ba12a6e85f32a77a6bd15ff";
    const EXTERNAL1: u64 = 6_636_027_442_896_414_268;
}
