"""A KV-event subscriber (pyzmq + msgpack) for one cordial replica, independent of cordial's own
code: it decodes vLLM's 3-frame messages in either layout, keeps the set of blocks the replica
announced as stored and not yet removed, checks the sequence numbers, and recomputes every
stored block's hash from its token ids with vLLM's sha256_cbor (cbor2, canonical) chained from
the seed, so a mismatch in the hash algorithm shows.
"""
import hashlib
import threading

import cbor2
import msgpack
import zmq

SEED = "vllm-none-hash"


def sha256_cbor(x):
    return hashlib.sha256(cbor2.dumps(x, canonical=True)).digest()


def external(h):
    return int.from_bytes(h, "big") & ((1 << 64) - 1)


class Subscriber:
    def __init__(self, endpoint, name, seed=SEED):
        self.name = name
        self.root = sha256_cbor(seed)
        self.live = set()  # external hashes stored and not removed
        self.full = {}  # external -> full 32-byte hash, as recomputed here
        self.stored = self.removed = self.cleared = 0
        self.messages = 0
        self.gaps = 0
        self.restarts = 0
        self.hash_mismatches = 0
        self.unknown_parents = 0
        self.last_seq = None
        self.errors = []
        self._stop = threading.Event()
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")  # every topic
        self._sock.setsockopt(zmq.RCVTIMEO, 100)
        self._sock.connect(endpoint)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                topic, seq, payload = self._sock.recv_multipart()
            except zmq.Again:
                continue
            except Exception as e:  # noqa: BLE001
                self.errors.append(repr(e))
                continue
            try:
                self._apply(int.from_bytes(seq, "big"), msgpack.unpackb(payload, raw=False))
            except Exception as e:  # noqa: BLE001
                self.errors.append(repr(e))

    def _apply(self, seq, batch):
        self.messages += 1
        if self.last_seq is not None:
            if seq <= self.last_seq:
                # The replica restarted: its cache is empty, its numbers start again at 0.
                self.restarts += 1
                self.live.clear()
            elif seq != self.last_seq + 1:
                self.gaps += 1
        self.last_seq = seq
        ts, events, rank = batch
        assert isinstance(ts, float) and rank is None, batch
        for e in events:
            if isinstance(e, dict):  # vLLM >= 0.28: tagged maps
                kind = e["type"]
                fields = e
            else:  # tagged arrays
                kind = e[0]
                names = {
                    "BlockStored": ["block_hashes", "parent_block_hash", "token_ids",
                                    "block_size", "lora_id", "medium"],
                    "BlockRemoved": ["block_hashes", "medium"],
                    "AllBlocksCleared": [],
                }[kind]
                fields = dict(zip(names, e[1:]))
            if kind == "BlockStored":
                self._stored(fields)
            elif kind == "BlockRemoved":
                for h in fields["block_hashes"]:
                    self.removed += 1
                    self.live.discard(h)
            else:
                self.cleared += 1
                self.live.clear()

    def _stored(self, f):
        bs = f["block_size"]
        tokens = f["token_ids"]
        hashes = f["block_hashes"]
        assert len(tokens) == bs * len(hashes), f
        parent_ext = f["parent_block_hash"]
        if parent_ext is None:
            parent = self.root
        else:
            parent = self.full.get(parent_ext)
        for i, h in enumerate(hashes):
            self.stored += 1
            self.live.add(h)
            if parent is None:
                self.unknown_parents += 1
                continue
            full = sha256_cbor((parent, tuple(tokens[i * bs:(i + 1) * bs]), None))
            if external(full) != h:
                self.hash_mismatches += 1
            self.full[h] = full
            parent = full

    def close(self):
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close(linger=0)

    def summary(self):
        return {
            "messages": self.messages,
            "stored": self.stored,
            "removed": self.removed,
            "cleared": self.cleared,
            "live": len(self.live),
            "gaps": self.gaps,
            "restarts": self.restarts,
            "hash_mismatches": self.hash_mismatches,
            "unknown_parents": self.unknown_parents,
            "errors": self.errors[:3],
        }
