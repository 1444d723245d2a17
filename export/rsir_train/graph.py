"""Surgery on an exported encoder graph (ONNX), shared by export and quantization.

Why a module of its own: the static input size a bundle fixes lets some graph rewrites be done
once, ahead of time (folding the "same" padding of EfficientNet-Lite into its convolutions),
and quantization must know which parts of the graph stay in float (the uint8 → float
preprocessing, the hash layer that decides every bit's sign, the bit packing). Both the ONNX
export and :mod:`rsir_train.quantize` use these functions; they need ``onnx`` (and
``onnxruntime`` for :func:`fold_static_pads`), imported when called, never torch.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["WEIGHTED_OPS", "ancestors", "float_region", "fold_static_pads", "name_nodes", "remove_dead_nodes"]

#: the ops that hold weights (what int8 quantization quantizes)
WEIGHTED_OPS = ("Conv", "MatMul", "Gemm")


def name_nodes(model: Any) -> None:
    """Give every unnamed node a unique name (quantization excludes nodes by name)."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"rsir_{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def ancestors(model: Any, output: str) -> list[str]:
    """Names of the nodes ``output`` depends on (its producer included), in graph order."""
    producer = {out: n for n in model.graph.node for out in n.output}
    seen: set[str] = set()
    stack = [output]
    while stack:
        n = producer.get(stack.pop())
        if n is None or n.name in seen:
            continue
        seen.add(n.name)
        stack += list(n.input)
    return [n.name for n in model.graph.node if n.name in seen]


def float_region(model: Any, embedding: str, side_outputs: Sequence[str] = ()
                 ) -> tuple[list[str], list[str], str | None]:
    """Split the graph: ``(preprocessing nodes, packing nodes, hash layer node name)``.

    Preprocessing = nodes with no Conv/MatMul/Gemm among themselves and their ancestors (the
    uint8 → normalised float part). Packing = every node downstream of ``embedding``, plus,
    for each of ``side_outputs`` (the fine code's ``fine_codes``, issue 20), the nodes only it
    depends on: its head (L2 normalisation, projection) and packing, which decide the fine
    bits' signs as the hash layer decides the codes'. The hash layer = the last
    Conv/MatMul/Gemm upstream of ``embedding``.
    """
    nodes = list(model.graph.node)
    producer = {out: n for n in nodes for out in n.output}
    weighted_upstream: dict[str, bool] = {}

    def upstream(node: Any) -> bool:
        if node.name in weighted_upstream:
            return weighted_upstream[node.name]
        weighted_upstream[node.name] = False  # guards against cycles (none in a valid graph)
        res = node.op_type in WEIGHTED_OPS or any(
            upstream(producer[i]) for i in node.input if i in producer
        )
        weighted_upstream[node.name] = res
        return res

    pre = [n.name for n in nodes if not upstream(n)]
    # packing: breadth-first from the embedding tensor
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    pack, frontier, seen = [], [embedding], set()
    while frontier:
        t = frontier.pop()
        for n in consumers.get(t, []):
            if n.name not in seen:
                seen.add(n.name)
                pack.append(n.name)
                frontier += list(n.output)
    trunk = set(ancestors(model, embedding))
    for side in side_outputs:
        pack += [name for name in ancestors(model, side) if name not in trunk and name not in seen]
        seen.update(pack)
    # hash layer: walk up from the embedding's producer to the first weighted op
    head, stack, visited = None, [embedding], set()
    while stack and head is None:
        t = stack.pop(0)
        n = producer.get(t)
        if n is None or n.name in visited:
            continue
        visited.add(n.name)
        if n.op_type in WEIGHTED_OPS:
            head = n.name
        else:
            stack += [i for i in n.input if i in producer]
    return pre, pack, head


def fold_static_pads(model: Any, input_name: str, height: int, width: int) -> int:
    """Fold zero ``Pad`` nodes into the ``Conv`` they feed; returns how many were folded.

    Why: "same" padding (TF-style, as EfficientNet-Lite's) exports as a Pad whose amounts are
    computed from the input shape at run time. onnxruntime then neither fuses it into the Conv
    nor, in int8, quantizes across it: the Pads and the layout reorders around them took about
    45% of the fp32 encoder's time and 25% of the int8 one's. The bundle fixes the input's
    height and width, so the amounts are constants: they are computed once here (onnxruntime,
    on a dummy batch, checked equal for two batch sizes) and written into the Conv's ``pads``.
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    nodes = list(model.graph.node)
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in model.graph.output}
    inits = {i.name: i for i in model.graph.initializer}
    candidates = []
    for n in nodes:
        if n.op_type != "Pad":
            continue
        mode = next((a.s.decode() for a in n.attribute if a.name == "mode"), "constant")
        users = consumers.get(n.output[0], [])
        if (mode != "constant" or len(users) != 1 or users[0].op_type != "Conv"
                or n.output[0] in graph_outputs or (len(n.input) > 3 and n.input[3])):
            continue
        conv = users[0]
        if conv.input[0] != n.output[0]:
            continue
        auto_pad = next((a.s.decode() for a in conv.attribute if a.name == "auto_pad"), "NOTSET")
        if auto_pad != "NOTSET":
            continue
        if len(n.input) > 2 and n.input[2]:
            value = inits.get(n.input[2])
            if value is None or np.any(numpy_helper.to_array(value) != 0):
                continue
        candidates.append((n, conv))
    if not candidates:
        return 0
    # the pad amounts: read initializers, compute the rest with onnxruntime
    wanted = [p.input[1] for p, _ in candidates if p.input[1] not in inits]
    values = {p.input[1]: numpy_helper.to_array(inits[p.input[1]])
              for p, _ in candidates if p.input[1] in inits}
    if wanted:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        for name in wanted:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
            probe.graph.output[-1].type.tensor_type.elem_type = onnx.TensorProto.INT64
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        runs = [sess.run(wanted, {input_name: np.zeros((b, height, width, 3), np.uint8)})
                for b in (1, 2)]
        for name, a, b in zip(wanted, *runs):
            if not np.array_equal(a, b):
                continue  # depends on the batch size: leave this Pad alone
            values[name] = a
    folded = 0
    for pad, conv in candidates:
        amounts = values.get(pad.input[1])
        if amounts is None or amounts.shape != (8,):
            continue
        amounts = [int(x) for x in amounts]  # type: ignore[assignment]
        if amounts[0] or amounts[1] or amounts[4] or amounts[5] or min(amounts) < 0:
            continue  # only spatial, non-negative padding of an NCHW tensor
        old = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0, 0, 0, 0])
        new = [old[0] + amounts[2], old[1] + amounts[3], old[2] + amounts[6], old[3] + amounts[7]]
        kept = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend(kept + [helper.make_attribute("pads", new)])
        conv.input[0] = pad.input[0]
        model.graph.node.remove(pad)
        folded += 1
    remove_dead_nodes(model)
    onnx.checker.check_model(model)
    return folded


def remove_dead_nodes(model: Any) -> None:
    """Drop nodes whose outputs nothing uses (the shape arithmetic left by folded Pads)."""
    while True:
        used = {o.name for o in model.graph.output}
        for n in model.graph.node:
            used.update(n.input)
        dead = [n for n in model.graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    used = {i for n in model.graph.node for i in n.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)
