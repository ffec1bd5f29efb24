"""Edge deployment: the whole decision pipeline as one ONNX graph, INT8, compact class tables, footprint.

Nothing here imports torch. The ONNX graph building needs the ``onnx`` package (the
``edge`` extra); running an exported pipeline needs only onnxruntime and numpy.
"""

from skuscale.edge.footprint import SizingChoice, class_table_bytes_for, measure_bundle, size_for_device
from skuscale.edge.pipeline import (
    PIPELINE_FILE,
    PIPELINE_OUTPUTS,
    SUPPORTED_DETECTORS,
    PipelineRunner,
    build_decision_graph,
    build_pipeline_graph,
    export_pipeline,
)

__all__ = [
    "PIPELINE_FILE",
    "PIPELINE_OUTPUTS",
    "SUPPORTED_DETECTORS",
    "PipelineRunner",
    "SizingChoice",
    "build_decision_graph",
    "build_pipeline_graph",
    "class_table_bytes_for",
    "export_pipeline",
    "measure_bundle",
    "size_for_device",
]
