"""GFLOP per token of a model's matrix products (2 x multiply-adds of the q/k/v, output,
gate/up (or up) and down projections, every block), the denominator of issue #19's "limit"
figures: a GGUF decoder from its metadata, a safetensors encoder (BERT, MPNet) from the
config.json beside it.

Usage: python scripts/peers/model_flops.py MODEL.gguf|MODEL.safetensors   (prints one number)
Needs the `gguf` package for GGUF files (as pytorch_extract.py does); attention scores are not
counted.
"""
import json
import os
import sys


def encoder(path: str) -> None:
    with open(os.path.join(os.path.dirname(path), "config.json")) as f:
        c = json.load(f)
    d, ffn = c["hidden_size"], c["intermediate_size"]
    macs = 4 * d * d + 2 * d * ffn
    print(f"{2 * macs * c['num_hidden_layers'] / 1e9:.4f}")


def main(path: str) -> None:
    if path.endswith(".safetensors"):
        return encoder(path)
    from gguf import GGUFReader

    reader = GGUFReader(path)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()

    def value(key: str) -> int:
        field = reader.fields[f"{arch}.{key}"]
        return int(field.parts[field.data[0]][0])

    d = value("embedding_length")
    layers = value("block_count")
    ffn = value("feed_forward_length")
    heads = value("attention.head_count")
    kv_heads = value("attention.head_count_kv")
    head_dim = (
        value("attention.key_length")
        if f"{arch}.attention.key_length" in reader.fields
        else d // heads
    )
    q, kv = heads * head_dim, kv_heads * head_dim
    macs = d * (q + 2 * kv) + q * d + d * 2 * ffn + ffn * d
    print(f"{2 * macs * layers / 1e9:.4f}")


if __name__ == "__main__":
    main(sys.argv[1])
