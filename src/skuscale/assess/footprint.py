"""Memory footprint of a bundle on a device: the arithmetic behind check 4.

The footprint of one batch-1 recognition is::

    footprint = W + A + T

    W = weight bytes of the backbone: every ONNX initializer and Constant tensor
    A = peak activation bytes: walking the graph's nodes in their (topological)
        order, a tensor is live from the node that produces it (the graph input:
        from the start) to its last consumer (graph outputs: to the end); A is the
        largest total size of the tensors live while one node runs, which counts
        that node's inputs and outputs together. Sizes are measured by running the
        graph once on a zero image with every intermediate exposed as an output,
        so dynamic shapes (padding computed in-graph) are exact.
    T = class-table bytes: every array of the linear head, the prototypes, the OOD
        detector's state and the router's per-SKU thresholds.

``W`` and ``A`` are those of the graph ONNX Runtime executes
(:func:`runtime_weights_and_activations`: extended graph optimisations applied), for
fp32 and INT8 backbones alike, so check 4 and the device sizing of
``skuscale build --device`` (:mod:`skuscale.edge.footprint`) count the same bytes. The
unoptimised graph overstates ``A``: for fp32 it keeps separate tensors that ONNX Runtime
fuses away (e.g. a convolution's output before its activation), for an INT8 QDQ model it
holds every activation twice (uint8 and its fp32 dequantisation).

and the headroom on a device with ``M`` bytes for the model is ``(M - footprint) / M``.

``T`` is what grows with the catalogue. :attr:`Footprint.per_sku_bytes` is the
part of ``T`` held in arrays with one row per SKU, divided by the number of SKUs:
the marginal cost of one more SKU. Arrays are counted at their stored dtype
(float32 today); a quantised head or backbone (INT8) changes the element sizes and
should be accounted for here. Before training, :func:`skuscale.edge.footprint.class_table_bytes_for`
gives the same bytes from the catalogue size, embedding width and detector (the tests
check that it equals :func:`class_table_bytes` of fitted models).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from skuscale.model import RecognitionModel

MIB = 1024 * 1024


@dataclass(frozen=True)
class Footprint:
    """Bytes of each component of a batch-1 recognition (see the module docstring).

    Attributes
    ----------
    weights_bytes, activation_peak_bytes, class_table_bytes : int
    class_table_parts : dict of str to int
        ``head``, ``prototypes``, ``detector``, ``router``.
    per_sku_bytes : float
        Class-table bytes per SKU in arrays that have one row per SKU.
    n_skus : int
    method : str
        How ``activation_peak_bytes`` was obtained.
    """

    weights_bytes: int
    activation_peak_bytes: int
    class_table_bytes: int
    class_table_parts: dict[str, int]
    per_sku_bytes: float
    n_skus: int
    method: str = "liveness over measured tensor sizes of the graph ONNX Runtime executes"

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.activation_peak_bytes + self.class_table_bytes

    def headroom(self, budget_bytes: float) -> float:
        """``(budget - total) / budget``; negative when the footprint does not fit."""
        if budget_bytes <= 0:
            raise ValueError(f"budget must be positive, got {budget_bytes!r}")
        return (budget_bytes - self.total_bytes) / budget_bytes

    def max_skus(self, budget_bytes: float, min_headroom: float) -> int | None:
        """Most SKUs whose class tables still leave ``min_headroom`` of the budget (None if unbounded)."""
        if self.per_sku_bytes <= 0:
            return None
        fixed = self.total_bytes - self.per_sku_bytes * self.n_skus
        room = budget_bytes * (1.0 - min_headroom) - fixed
        return max(0, int(room // self.per_sku_bytes))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_bytes": self.total_bytes}


def peak_live_bytes(node_io: list[tuple[list[str], list[str]]], sizes: dict[str, int], *, inputs: list[str],
                    outputs: list[str]) -> int:
    """Largest total size of live tensors over a topologically ordered node list.

    Parameters
    ----------
    node_io : list of (input names, output names), in execution order
    sizes : bytes of every tensor that counts as an activation (others are ignored)
    inputs, outputs : the graph's input and output names

    A tensor is live from its producer (graph inputs: step 0) through its last
    consumer (graph outputs: the last step).
    """
    n = len(node_io)
    if n == 0:
        return sum(sizes.get(t, 0) for t in inputs)
    born = dict.fromkeys(inputs, 0)
    last: dict[str, int] = {}
    for i, (ins, outs) in enumerate(node_io):
        for t in ins:
            last[t] = i
        for t in outs:
            born.setdefault(t, i)
            last.setdefault(t, i)
    for t in outputs:
        last[t] = n - 1
    delta = np.zeros(n + 1, dtype=np.int64)
    for t, start in born.items():
        size = sizes.get(t, 0)
        if size:
            delta[start] += size
            delta[last.get(t, start) + 1] -= size
    return int(np.cumsum(delta)[:n].max())


def onnx_weights_and_activations(path: str | os.PathLike, *, batch: int = 1) -> tuple[int, int]:
    """``(W, A)`` of an ONNX model: weight bytes and peak activation bytes at ``batch``.

    Needs the ``onnx`` package (``pip install skuscale[edge]``).
    """
    import onnx
    import onnx.shape_inference
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(Path(path)))
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    weights = sum(numpy_helper.to_array(t).nbytes for t in graph.initializer)
    real_inputs = [i for i in graph.input if i.name not in initializers]
    feeds = {}
    for inp in real_inputs:
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in inp.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        feeds[inp.name] = np.zeros(dims, dtype=dtype)
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    graph_outputs = [o.name for o in graph.output]
    exposed = set(graph_outputs)
    for node in graph.node:
        for name in node.output:
            if name and name not in exposed:
                graph.output.append(inferred.get(name) or onnx.helper.make_empty_tensor_value_info(name))
                exposed.add(name)
    options = ort.SessionOptions()
    # Unoptimised, so every tensor of the graph exists as written.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    measured = dict(zip(names, (a.nbytes for a in session.run(names, feeds)), strict=True))
    constants = {o for node in graph.node if node.op_type == "Constant" for o in node.output}
    weights += sum(measured.get(name, 0) for name in constants)
    sizes = {name: size for name, size in measured.items() if name not in constants}
    sizes.update({name: arr.nbytes for name, arr in feeds.items()})
    node_io = [([t for t in node.input if t], [t for t in node.output if t]) for node in graph.node]
    peak = peak_live_bytes(node_io, sizes, inputs=list(feeds), outputs=graph_outputs)
    return int(weights), peak


def runtime_weights_and_activations(path: str | os.PathLike, *, batch: int = 1) -> tuple[int, int]:
    """``(W, A)`` of the graph ONNX Runtime executes (extended optimisations applied, as saved by ORT)."""
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as work:
        optimised = Path(work) / "optimised.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimised)
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return onnx_weights_and_activations(optimised, batch=batch)


def class_table_bytes(model: RecognitionModel) -> tuple[dict[str, int], float]:
    """Bytes of the head, prototypes, detector and router arrays, and the per-SKU share.

    Returns
    -------
    parts : dict of str to int
    per_sku_bytes : float
        Bytes in arrays whose first dimension is the number of SKUs, per SKU.
    """
    k = len(model.skus)
    parts: dict[str, int] = {}
    per_sku_total = 0
    for label, est in (("head", model.head), ("prototypes", model.prototypes), ("detector", model.detector)):
        arrays = [v for v in est.get_state().values() if isinstance(v, np.ndarray)]
        parts[label] = int(sum(a.nbytes for a in arrays))
        per_sku_total += sum(a.nbytes for a in arrays if a.ndim >= 1 and a.shape[0] == k)
    router = model.router.sku_threshold_vector()
    parts["router"] = int(router.nbytes)
    per_sku_total += router.nbytes
    return parts, per_sku_total / k if k else 0.0


def bundle_footprint(bundle) -> Footprint:
    """:class:`Footprint` of a loaded bundle (its ONNX backbone and its decision stack)."""
    if bundle.root is None:
        raise ValueError("the bundle has no folder; load it from disk")
    if not bundle.backbone.get("onnx"):
        raise ValueError("the bundle was built from embeddings and has no image backbone to size")
    # The graph ONNX Runtime fuses and runs, fp32 or INT8: the bytes a device pays for, and
    # the ones the device sizing of `skuscale build --device` counts.
    weights, peak = runtime_weights_and_activations(bundle.root / bundle.backbone["onnx"])
    parts, per_sku = class_table_bytes(bundle.model)
    return Footprint(weights_bytes=weights, activation_peak_bytes=peak, class_table_bytes=sum(parts.values()),
                     class_table_parts=parts, per_sku_bytes=per_sku, n_skus=len(bundle.model.skus))
