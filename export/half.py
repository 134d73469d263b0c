"""fp16 encoder graphs for GPUs: float16 towers with fp32 islands and fp32 inputs/outputs.

One conversion serves two consumers: the `onnx-fp16` bundle (ONNX Runtime's CUDA provider) and the
TensorRT fp16 engine, which is built from this graph as a *strongly typed* network (TensorRT 11 has no
other kind; 10.x has both), so TensorRT runs each tensor in exactly the type the graph gives it.

What stays fp32:

* every node of the ops in BLOCKED_OPS, wherever it is: LayerNormalization (opset ≥ 17 exports
  nn.LayerNorm as one node; its mean/variance reduction is where fp16 loses the most), and the ops of
  the decomposed forms and of the attention and activations — ReduceMean, Pow, Sqrt, Softmax, Sigmoid
  (QuickGELU is x·sigmoid(1.702x)), with their own weights (LayerNorm γ/β) kept fp32;
* the low-level prior (`prior_nodes`, every node under `/prior/`): its statistics are variances, logs of
  small numbers and kurtoses with floors such as 1e-12, and its readout multiplies them by weights in the tens,
  so the statistics' fp16 rounding moved the embedded default's scores by up to 0.047 (bound 5e-3);
* the Constant nodes read only by fp32 nodes (`_fp32_constants`): the converter rounds every Constant to fp16
  (small values clamped to ~6e-8) and casts it back, so an fp32 node's floor or kernel was no longer its own;
* with ``fp32_head=True`` (the TensorRT graph) also every node after the two towers (`head_nodes`): the
  task MLP, the prompt softmax and product, the prompt MLP, the feature concatenation, the regression
  head and its sigmoid — the torch backend's fp16/bf16 split. The `onnx-fp16` bundle keeps the head's
  matrix products and sums in fp16 (its softmax and sigmoids are fp32 anyway, and so are the nodes that
  produce the outputs, `output_nodes`, so `features` and `score` are not rounded to fp16 on the way out):
  onnxruntime 1.32's CPU graph optimiser (its ConstantSharing, then NchwcTransformer) crashes the process
  on the fp32-head graph, and an onnx-fp16 bundle may well be opened on a CPU.

The converter puts a Cast at each boundary between an fp16 and an fp32 island, so the graph is
consistently typed (ONNX Runtime checks it when it loads; TensorRT's strongly typed parser follows it);
`_keep_fp32_islands_fp32` then removes the fp16 round trips it also puts between two fp32 nodes and
sorts the nodes (TensorRT's parser reads them in order). The graph's input `image` and outputs
`features`/`score` stay float32, so the same preprocessing and numpy heads serve every precision.
"""
from __future__ import annotations

from pathlib import Path

from .derive import derive_bundle
from .onnx_export import PRIOR_PREFIX

FP16_ENCODER = "encoder.fp16.onnx"
BLOCKED_OPS = ["LayerNormalization", "ReduceMean", "Pow", "Sqrt", "Softmax", "Sigmoid"]
TOWER_PREFIXES = ("/image_tower/", "/degradation_tower/")
CONVERSION = ("onnxruntime.transformers.float16.convert_float_to_float16, keep_io_types=True; fp32: the ops in "
              "fp32_ops everywhere and the fp32_nodes (the output nodes, or with fp32_head every node after the "
              "two towers; the low-level prior; the Constant nodes only fp32 nodes read); no fp16 round trip "
              "between fp32 nodes, fp32 initializers of fp32 nodes kept fp32")


def head_nodes(model) -> list[str]:
    """Names of the nodes after the towers (named `/task_mlp/…`, `/head/…`, `/Softmax`, `/Squeeze`… by the
    exporter). The towers' nodes are named `/image_tower/…` and `/degradation_tower/…`; unnamed helper nodes
    (`Identity_12` for shared initializers, `Constant_3`) belong to neither."""
    out = []
    for node in model.graph.node:
        name = node.name or ""
        if name.startswith("/") and not name.startswith(TOWER_PREFIXES) and node.op_type not in ("Constant", "Identity"):
            out.append(name)
    return out


def prior_nodes(model) -> list[str]:
    """Names of the low-level prior's nodes (fgresq_sdk.model.LowLevelPrior, exported under `/prior/`)."""
    return [n.name for n in model.graph.node if (n.name or "").startswith(PRIOR_PREFIX)]


def _fp32_constants(model, fp32: set[str]) -> list[str]:
    """Names of the Constant nodes whose every reader is an fp32 node (named in `fp32` or of a blocked op)."""
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    out = []
    for node in model.graph.node:
        read_by = [r for o in node.output for r in readers.get(o, [])]
        if node.op_type == "Constant" and node.name and read_by and all(
                r.name in fp32 or r.op_type in BLOCKED_OPS for r in read_by):
            out.append(node.name)
    return out


def output_nodes(model) -> list[str]:
    """Names of the nodes that produce the graph's outputs (`features`: the concatenation; `score`: the
    final squeeze): in fp32, so that the outputs are not rounded to fp16 on their way out."""
    outputs = {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node if n.name and any(o in outputs for o in n.output)]


def _cast_to(node) -> int | None:
    if node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _drop_duplicate_nodes(g) -> int:
    """Remove nodes that repeat an earlier node exactly; returns how many. onnxruntime ≤ 1.30's converter inserts
    one Cast(fp32) per fp32 reader of an fp16 tensor, all with the same name and output (`…_cast_to_fp32`), so a
    tensor read by two fp32 nodes (the fp32 head's `/Add` and `/Concat`) was produced twice and the graph was no
    longer in SSA form (onnx.checker and ONNX Runtime refuse it). Two different nodes writing one tensor are a
    broken graph, not a repeat: that raises."""
    first: dict[str, object] = {}
    repeats = []
    for n in g.node:
        earlier = [first[o] for o in n.output if o in first]
        if not earlier:
            first.update(dict.fromkeys(n.output, n))
        elif all(e == n for e in earlier):
            repeats.append(n)
        else:
            raise ValueError(f"fp16 graph: tensor {n.output[0]!r} is written by two different nodes "
                             f"({earlier[0].name!r}, {n.name!r})")
    for n in repeats:
        g.node.remove(n)
    return len(repeats)


def _keep_fp32_islands_fp32(model, originals: dict) -> dict:
    """Undo what the converter does at the seams of fp32 nodes; returns what was changed.

    convert_float_to_float16 routes every tensor that flows from one blocked (fp32) node to another
    through Cast(fp16) → Cast(fp32) (older converters repeat such a cast once per reader: dropped first), so
    the whole head and the score would be rounded to fp16 between its fp32 nodes, and it stores the blocked
    nodes' own initializers (LayerNorm γ/β, head weights) as fp16 behind a Cast(fp32). Here: a Cast(fp32) of a
    Cast(fp16) reads the fp16 cast's input instead; a Cast(fp32) of a converted initializer reads the original
    fp32 values; casts left fp32 → fp32 are dropped (their readers take the source; graph outputs keep theirs),
    and so is any node left unread.
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    g = model.graph
    duplicates = _drop_duplicate_nodes(g)
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    changed = {"duplicate_nodes_removed": duplicates, "cast_pairs_bypassed": 0, "initializers_kept_fp32": 0,
               "identity_casts_removed": 0}
    for n in g.node:
        if _cast_to(n) != TensorProto.FLOAT:
            continue
        p = producer.get(n.input[0])
        if p is not None and _cast_to(p) == TensorProto.FLOAT16:
            while p is not None and _cast_to(p) == TensorProto.FLOAT16:  # Cast(fp16) of Cast(fp16) of x: x
                n.input[0] = p.input[0]
                p = producer.get(n.input[0])
            changed["cast_pairs_bypassed"] += 1
            continue
        src = n.input[0]
        while src in producer and producer[src].op_type == "Identity":
            src = producer[src].input[0]
        if src in inits and inits[src].data_type == TensorProto.FLOAT16 and src in originals:
            name = f"{src}_fp32"
            if name not in inits:
                inits[name] = numpy_helper.from_array(originals[src], name)
                g.initializer.append(inits[name])
                changed["initializers_kept_fp32"] += 1
            n.input[0] = name
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in onnx.shape_inference.infer_shapes(model).graph.value_info}
    types.update({i.name: i.type.tensor_type.elem_type for i in g.input})
    types.update({i.name: i.data_type for i in g.initializer})
    outputs = {o.name for o in g.output}
    rename = {}
    for n in g.node:  # casts to the type their input already has (fp32 → fp32 above; fp16 → fp16 from the converter)
        to = _cast_to(n)
        if to is not None and types.get(n.input[0]) == to and n.output[0] not in outputs:
            rename[n.output[0]] = n.input[0]
    for n in g.node:
        for k, name in enumerate(n.input):
            while name in rename:
                name = rename[name]
            n.input[k] = name
    changed["identity_casts_removed"] = len(rename)
    while True:  # drop nodes nobody reads any more (the bypassed casts, the fp16 initializer copies' casts)
        read = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    read = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in read]:
        g.initializer.remove(init)
    produced = {o for n in g.node for o in n.output}
    for vi in [v for v in g.value_info if v.name not in produced]:
        g.value_info.remove(vi)
    _sort_topologically(g)
    return changed


def _sort_topologically(g) -> None:
    """Order the nodes so that each comes after the producers of its inputs. The converter appends its casts
    at the end; ONNX requires the order (onnx.checker), and TensorRT's parser reads the nodes in it."""
    available = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    pending = list(g.node)
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in n.input):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError(f"fp16 graph has a cycle or an undefined input (at node {rest[0].name})")
        pending = rest
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del g.node[:]
    g.node.extend(copies)


def half_model(model, fp32_head: bool = False):
    """An fp32 encoder ModelProto → (fp16 ModelProto, conversion details). fp32_head: also every node after
    the towers in fp32 (the TensorRT graph; see the module docstring for why the bundle's head is fp16)."""
    from onnx import TensorProto, numpy_helper
    from onnxruntime.transformers.float16 import convert_float_to_float16

    if not any((n.name or "").startswith(TOWER_PREFIXES) for n in model.graph.node):
        raise ValueError("encoder graph has no /image_tower/ or /degradation_tower/ nodes: not an FGResQ "
                         "export, so the fp32 head cannot be told apart from the towers")
    fp32_nodes = list(dict.fromkeys((head_nodes(model) if fp32_head else output_nodes(model)) + prior_nodes(model)))
    fp32_nodes += _fp32_constants(model, set(fp32_nodes))
    originals = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer
                 if i.data_type == TensorProto.FLOAT}
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(BLOCKED_OPS),
                                    node_block_list=fp32_nodes)
    seams = _keep_fp32_islands_fp32(half, originals)
    details = {"method": CONVERSION, "fp32_ops": list(BLOCKED_OPS), "fp32_head": fp32_head,
               "fp32_nodes": fp32_nodes, **seams}
    return half, details


def half_file(src_onnx: Path, dst_onnx: Path, fp32_head: bool = False) -> dict:
    """Convert the ONNX file `src_onnx` to `dst_onnx`; returns the conversion details."""
    import onnx

    half, details = half_model(onnx.load(str(src_onnx)), fp32_head=fp32_head)
    onnx.save(half, str(dst_onnx))
    return details


def half_bundle(src: str | Path, out: str | Path, *, force: bool = False) -> Path:
    details: dict = {}

    def make(src_onnx: Path, dst_onnx: Path) -> None:
        details.update(half_file(src_onnx, dst_onnx))

    # derive_bundle writes the manifest after make() has run, so `details` is complete by then.
    return derive_bundle(src, out, precision="fp16", encoder_file=FP16_ENCODER, make_encoder=make,
                         details_key="conversion", details=details, force=force)
