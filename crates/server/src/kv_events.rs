//! KV-cache events for precise prefix routing (vLLM's `--kv-events-config`, what llm-d's
//! KV-cache indexer and vllm-router's `kv_aware` policy consume): the engine's prefix-cache
//! changes ([`KvEventBatch`], handed over a bounded channel: the engine has no networking)
//! published on a ZeroMQ PUB socket.
//!
//! Each message has vLLM's 3 frames: the topic (`kv@<host>@<model>` unless set), the batch's
//! sequence number as 8 bytes big-endian, and the msgpack payload `[ts, [event, ...], null]`
//! (the third item is vLLM's `data_parallel_rank`). Events come in one of vLLM's two layouts:
//!
//! - [`Layout::Array`] (vLLM before 0.28, llm-d's indexer): tagged arrays
//!   `["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium]`,
//!   `["BlockRemoved", block_hashes, medium]`, `["AllBlocksCleared"]`;
//! - [`Layout::Map`] (vLLM 0.28 on, vllm-router): tagged maps `{"type": "BlockStored",
//!   "block_hashes": …, "parent_block_hash": …, "token_ids": …, "block_size": …, "lora_id": …,
//!   "medium": …, "lora_name": …}`, `{"type": "BlockRemoved", "block_hashes": …, "medium": …}`,
//!   `{"type": "AllBlocksCleared"}`.
//!
//! Hashes are the 64-bit external hashes of vLLM's `sha256_cbor` chain
//! (`cordial_engine::block_hash`); `medium` is `"GPU"`, vLLM's name for the engine's own KV
//! cache (ours lives in host memory; there is no other tier).
//!
//! Nothing waits on a slow consumer: the engine drops a batch that does not fit in the channel
//! (counted: `cordial_kv_events_dropped_total`), and the PUB socket drops messages for a
//! subscriber whose queue is full, silently, as ZeroMQ's PUB does. Either way the sequence
//! numbers (given by the engine) show the consumer a gap. No replay socket is offered.

use std::fmt;

use bytes::Bytes;
use cordial_engine::{KvEvent, KvEventBatch, TokenId};
use futures::FutureExt;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use tokio::sync::mpsc::Receiver;
use zeromq::{PubSocket, Socket, SocketSend, ZmqMessage};

/// vLLM's `medium` of blocks in the engine's own KV cache.
const MEDIUM: &str = "GPU";

/// Batches the engine may queue for the publisher before it drops them.
pub const CHANNEL_CAPACITY: usize = 1024;

/// How events are encoded (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Layout {
    /// Tagged arrays (vLLM < 0.28; llm-d's KV-cache indexer).
    #[default]
    Array,
    /// Tagged maps (vLLM >= 0.28; vllm-router).
    Map,
}

/// The msgpack payload of one batch.
pub fn encode(batch: &KvEventBatch, layout: Layout) -> Vec<u8> {
    let events: Vec<Wire<'_>> = batch.events.iter().map(|e| Wire(e, layout)).collect();
    // Map layout needs struct-like maps with string keys: serialized by hand below, so the
    // plain (positional) encoder serves both.
    rmp_serde::to_vec(&(batch.ts, events, ())).expect("msgpack encoding of plain values")
}

/// One event in a layout.
struct Wire<'a>(&'a KvEvent, Layout);

impl Serialize for Wire<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (self.0, self.1) {
            (
                KvEvent::BlockStored {
                    block_hashes,
                    parent_block_hash,
                    token_ids,
                    block_size,
                    lora_id,
                },
                Layout::Array,
            ) => (
                "BlockStored",
                block_hashes,
                parent_block_hash,
                token_ids,
                block_size,
                lora_id,
                MEDIUM,
            )
                .serialize(s),
            (KvEvent::BlockRemoved { block_hashes }, Layout::Array) => {
                ("BlockRemoved", block_hashes, MEDIUM).serialize(s)
            }
            (KvEvent::AllBlocksCleared, Layout::Array) => {
                let mut seq = s.serialize_seq(Some(1))?;
                seq.serialize_element("AllBlocksCleared")?;
                seq.end()
            }
            (
                KvEvent::BlockStored {
                    block_hashes,
                    parent_block_hash,
                    token_ids,
                    block_size,
                    lora_id,
                },
                Layout::Map,
            ) => {
                let mut m = s.serialize_map(Some(8))?;
                m.serialize_entry("type", "BlockStored")?;
                m.serialize_entry("block_hashes", block_hashes)?;
                m.serialize_entry("parent_block_hash", parent_block_hash)?;
                m.serialize_entry("token_ids", token_ids as &[TokenId])?;
                m.serialize_entry("block_size", block_size)?;
                m.serialize_entry("lora_id", lora_id)?;
                m.serialize_entry("medium", MEDIUM)?;
                m.serialize_entry("lora_name", &None::<&str>)?;
                m.end()
            }
            (KvEvent::BlockRemoved { block_hashes }, Layout::Map) => {
                let mut m = s.serialize_map(Some(3))?;
                m.serialize_entry("type", "BlockRemoved")?;
                m.serialize_entry("block_hashes", block_hashes)?;
                m.serialize_entry("medium", MEDIUM)?;
                m.end()
            }
            (KvEvent::AllBlocksCleared, Layout::Map) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("type", "AllBlocksCleared")?;
                m.end()
            }
        }
    }
}

/// The topic of our messages: `kv@<host>@<model>`, vLLM's convention (llm-d reads the pod and
/// the model from it). `host`: `$HOSTNAME`, else `/etc/hostname`, else `localhost`.
pub fn default_topic(model: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("kv@{host}@{model}")
}

/// Why the PUB socket could not be opened.
#[derive(Debug)]
pub struct BindError(String);

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BindError {}

/// A bound PUB socket and what its messages carry.
pub struct Publisher {
    socket: PubSocket,
    topic: Bytes,
    layout: Layout,
    /// Where it listens (the port resolved when `:0` was asked).
    pub endpoint: String,
}

impl Publisher {
    /// Binds `endpoint` (`tcp://HOST:PORT`; `*` means every interface, as in vLLM).
    pub async fn bind(endpoint: &str, topic: String, layout: Layout) -> Result<Self, BindError> {
        let Some(rest) = endpoint.strip_prefix("tcp://") else {
            return Err(BindError(format!(
                "--kv-events-endpoint must be tcp://HOST:PORT, got {endpoint}"
            )));
        };
        let bind_to = match rest.strip_prefix("*:") {
            Some(port) => format!("tcp://0.0.0.0:{port}"),
            None => endpoint.to_owned(),
        };
        let mut socket = PubSocket::new();
        let bound = socket.bind(&bind_to).await.map_err(|e| {
            BindError(format!(
                "cannot bind the KV-event socket to {endpoint}: {e}"
            ))
        })?;
        Ok(Publisher {
            socket,
            topic: Bytes::from(topic.into_bytes()),
            layout,
            endpoint: bound.to_string(),
        })
    }

    /// Publishes every batch the engine sends until it stops (its sender is dropped).
    pub async fn run(mut self, mut batches: Receiver<KvEventBatch>) {
        while let Some(batch) = batches.recv().await {
            let frames = vec![
                self.topic.clone(),
                Bytes::copy_from_slice(&batch.seq.to_be_bytes()),
                Bytes::from(encode(&batch, self.layout)),
            ];
            let Ok(message) = ZmqMessage::try_from(frames) else {
                continue;
            };
            // The socket drops for a full subscriber queue by itself; an unexpected error
            // (the crate may even panic on one) loses this batch, not the publisher.
            match std::panic::AssertUnwindSafe(self.socket.send(message))
                .catch_unwind()
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("KV event batch {} not published: {e}", batch.seq),
                Err(_) => tracing::error!("KV event batch {} not published: panic", batch.seq),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> KvEventBatch {
        KvEventBatch {
            seq: 0,
            ts: 1.5,
            events: vec![
                KvEvent::BlockStored {
                    block_hashes: vec![1, (1 << 63) + 5],
                    parent_block_hash: None,
                    token_ids: vec![1, 300],
                    block_size: 2,
                    lora_id: None,
                },
                KvEvent::BlockRemoved {
                    block_hashes: vec![7],
                },
                KvEvent::AllBlocksCleared,
            ],
        }
    }

    fn bytes(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    const TS: &[u8] = &[0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]; // float64 1.5
    const HASHES: &[u8] = &[0x92, 0x01, 0xcf, 0x80, 0, 0, 0, 0, 0, 0, 0x05];
    const TOKENS: &[u8] = &[0x92, 0x01, 0xcd, 0x01, 0x2c]; // [1, 300]

    /// Written by hand from the msgpack spec and msgspec's encodings of vLLM's structs.
    #[test]
    fn array_layout_bytes() {
        let want = bytes(&[
            &[0x93], // [ts, events, rank]
            TS,
            &[0x93], // 3 events
            &[0x97, 0xab],
            b"BlockStored", // 7 items, fixstr(11)
            HASHES,
            &[0xc0], // parent: nil
            TOKENS,
            &[0x02, 0xc0, 0xa3],
            b"GPU", // block_size, lora_id nil, medium
            &[0x93, 0xac],
            b"BlockRemoved",
            &[0x91, 0x07, 0xa3],
            b"GPU",
            &[0x91, 0xb0],
            b"AllBlocksCleared",
            &[0xc0], // data_parallel_rank: nil
        ]);
        assert_eq!(encode(&batch(), Layout::Array), want);
    }

    #[test]
    fn map_layout_bytes() {
        let want = bytes(&[
            &[0x93],
            TS,
            &[0x93],
            &[0x88, 0xa4],
            b"type",
            &[0xab],
            b"BlockStored",
            &[0xac],
            b"block_hashes",
            HASHES,
            &[0xb1],
            b"parent_block_hash",
            &[0xc0],
            &[0xa9],
            b"token_ids",
            TOKENS,
            &[0xaa],
            b"block_size",
            &[0x02],
            &[0xa7],
            b"lora_id",
            &[0xc0],
            &[0xa6],
            b"medium",
            &[0xa3],
            b"GPU",
            &[0xa9],
            b"lora_name",
            &[0xc0],
            &[0x83, 0xa4],
            b"type",
            &[0xac],
            b"BlockRemoved",
            &[0xac],
            b"block_hashes",
            &[0x91, 0x07],
            &[0xa6],
            b"medium",
            &[0xa3],
            b"GPU",
            &[0x81, 0xa4],
            b"type",
            &[0xb0],
            b"AllBlocksCleared",
            &[0xc0],
        ]);
        assert_eq!(encode(&batch(), Layout::Map), want);
    }

    #[test]
    fn topics_name_host_and_model() {
        let t = default_topic("m");
        assert!(t.starts_with("kv@") && t.ends_with("@m"), "{t}");
        assert_eq!(t.split('@').count(), 3);
    }
}
