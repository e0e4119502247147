#!/usr/bin/env python3
"""Writes a Hugging Face tokenizer directory built from a GGUF file's own tokenizer metadata, so
that lm-evaluation-harness can count tokens offline (transformers' own GGUF loader needs torch).

It builds the byte-level BPE the way cordial's tokenizer crate (and llama.cpp) do for the
`tokenizer.ggml.pre` values it knows: the pre-tokenizer regexes split the text, GPT-2's byte map,
then the GGUF's merges; control tokens are special. compare.py checks, request by request, that
the server counts the same tokens for the texts lm-eval sends.

Usage: export_tokenizer.py MODEL.gguf OUT_DIR
"""
import sys

from gguf import GGUFReader
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# tokenizer.ggml.pre → the regexes applied in order (crates/tokenizer/src/pre.rs).
PRE = {"smollm": [r"\p{N}", GPT2], "gpt-2": [GPT2]}


def strings(reader, key):
    f = reader.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def ints(reader, key):
    f = reader.fields[key]
    return [int(f.parts[i][0]) for i in f.data]


def scalar(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.parts[f.data[0]][0].item()


def main():
    path, out = sys.argv[1], sys.argv[2]
    r = GGUFReader(path)
    if bytes(r.fields["tokenizer.ggml.model"].parts[-1]).decode() != "gpt2":
        sys.exit("only byte-level BPE (tokenizer.ggml.model = gpt2) is supported")
    pre = bytes(r.fields["tokenizer.ggml.pre"].parts[-1]).decode()
    if pre not in PRE:
        sys.exit(f"pre-tokenizer {pre!r} is not known to this script (known: {', '.join(PRE)})")
    tokens = strings(r, "tokenizer.ggml.tokens")
    types = ints(r, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in strings(r, "tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    splits = [pre_tokenizers.Split(Regex(rx), behavior="isolated") for rx in PRE[pre]]
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        splits + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    # token_type 3 = control (special, skipped when decoding), 4 = user-defined.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types) if ty == 4])
    bos, eos = scalar(r, "tokenizer.ggml.bos_token_id"), scalar(r, "tokenizer.ggml.eos_token_id")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=tokens[bos] if bos is not None else None,
        eos_token=tokens[eos] if eos is not None else None,
    )
    fast.save_pretrained(out)
    print(f"wrote {out} ({len(tokens)} tokens, pre-tokenizer {pre})")


if __name__ == "__main__":
    main()
