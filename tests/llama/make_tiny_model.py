"""Writes a tiny random-weight llama GGUF that the real llama-server loads and generates with.

The vocabulary (32000 SentencePiece tokens, scores and types) is copied from
`ggml-vocab-llama-spm.gguf`, the vocabulary-only file in the llama.cpp tree of the same source
distribution the server is built from, so the server can tokenize a prompt. The network itself is
2 layers of width 64 with random weights: it generates nonsense, which is all a doctor needs.

Usage: python tests/llama/make_tiny_model.py VOCAB.gguf OUT.gguf
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np

N_EMBD = 64
N_HEAD = 4
N_LAYER = 2
N_FF = 128
N_CTX_TRAIN = 512
SEED = 20251123


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        raise ValueError(f"{key} missing from the vocabulary file")
    return field


def _strings(reader: Any, key: str) -> list[str]:
    field = _field(reader, key)
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def _numbers(reader: Any, key: str) -> list[Any]:
    field = _field(reader, key)
    return [field.parts[i].tolist()[0] for i in field.data]


def _scalar(reader: Any, key: str) -> Any:
    field = _field(reader, key)
    return field.parts[field.data[0]].tolist()[0]


def write_tiny_llama(
    vocab_path: Path, out_path: Path, *, architecture: str = "llama", split_max_tensors: int = 0
) -> Path:
    """Write the model to `out_path` and return it. Deterministic for a given vocabulary.

    `architecture` is written as `general.architecture` and as the prefix of the hyperparameter
    keys (`{architecture}.block_count`, ...): a name llama.cpp does not know makes a model it
    refuses to load. With `split_max_tensors` > 0 the model is written as llama.cpp-style split
    shards (`STEM-00001-of-0000N.gguf` beside `out_path`, with the `split.*` keys), and the first
    shard is returned; see `write_tiny_llama_split`.
    """
    reader = gguf.GGUFReader(str(vocab_path))
    tokens = _strings(reader, "tokenizer.ggml.tokens")
    scores = [float(s) for s in _numbers(reader, "tokenizer.ggml.scores")]
    types = [int(t) for t in _numbers(reader, "tokenizer.ggml.token_type")]
    bos = int(_scalar(reader, "tokenizer.ggml.bos_token_id"))
    eos = int(_scalar(reader, "tokenizer.ggml.eos_token_id"))
    unk = int(_scalar(reader, "tokenizer.ggml.unknown_token_id"))
    n_vocab = len(tokens)

    rng = np.random.default_rng(SEED)

    def weight(*shape: int) -> Any:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    writer = gguf.GGUFWriter(str(out_path), arch=architecture, split_max_tensors=split_max_tensors)
    writer.add_name("exsa-doctor tiny llama (random weights)")
    writer.add_block_count(N_LAYER)
    writer.add_context_length(N_CTX_TRAIN)
    writer.add_embedding_length(N_EMBD)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(1)  # mostly F16
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    writer.add_unk_token_id(unk)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    # The output projection is tied to the embedding (llama.cpp falls back to token_embd when
    # output.weight is absent). Zero rows for the special tokens give them logit 0 while the
    # largest of 32000 random logits is well above 0, so greedy sampling never ends the
    # generation at once with end-of-sequence: a healthy server really produces tokens.
    embd = weight(n_vocab, N_EMBD)
    embd[[unk, bos, eos]] = 0.0
    writer.add_tensor("token_embd.weight", embd.astype(np.float16))
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    for i in range(N_LAYER):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(N_EMBD, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(N_EMBD, N_FF))

    shards = writer.format_shard_names(out_path)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return shards[0]


N_TENSORS = 2 + N_LAYER * 9  # token_embd, output_norm, and 9 per layer


def write_tiny_llama_split(vocab_path: Path, out_path: Path, shards: int = 2) -> list[Path]:
    """The tiny model as `shards` split files named as llama.cpp's `llama-gguf-split` names them
    (`model.gguf` -> `model-00001-of-00002.gguf`, `model-00002-of-00002.gguf`), each carrying
    `split.no`, `split.count` and `split.tensors.count`. Returns the shard paths in order."""
    per_shard = -(-N_TENSORS // shards)
    first = write_tiny_llama(vocab_path, out_path, split_max_tensors=per_shard)
    paths = [
        out_path.with_name(f"{out_path.stem}-{i:05d}-of-{shards:05d}.gguf")
        for i in range(1, shards + 1)
    ]
    if paths[0] != first or not all(p.is_file() for p in paths):
        raise RuntimeError(f"gguf wrote {first}, expected the shards {paths}")
    return paths


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    path = write_tiny_llama(Path(argv[0]), Path(argv[1]))
    print(f"{path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
