"""The teacher's forward pass on OpenVINO, for CPUs.

sentence-transformers' own ``backend="openvino"`` goes through optimum-intel, whose releases
pin transformers < 5.6 (this stack needs 5.20), so the model's whole forward pass (transformer,
pooling, normalisation: whatever modules it has) is converted here with OpenVINO's PyTorch
frontend; tokenization stays sentence-transformers'. Inference precision is pinned to f32
(OpenVINO would pick bf16 on CPUs that have it): embeddings equal torch's to cosine >= 0.9999
(tested), about 1.4x faster per token on 2 AVX2 cores. Batches are cut by token count, not
characters, so they carry almost no padding, and one infer request per CPU stream (THROUGHPUT
hint) keeps every core busy (``bench/filter.py``).

The converted model is saved (uncompressed f32 IR) beside the embedding cache, keyed by the
model fingerprint and the OpenVINO version, so reruns skip the conversion. OpenVINO's converter
sends anonymous usage telemetry unless opted out (``opt_in_out --opt_out``; the Docker images do).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from kalm.store import atomic_path


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _positional_forward(model, names: list[str], constants: dict):
    """``SentenceTransformer`` forward taking positional tensors (what a traced graph takes)."""
    import torch

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            return self.model({**constants, **dict(zip(names, tensors))})["sentence_embedding"]

    return SentenceEmbedding().eval()


class OpenVINOForward:
    """Runs ``model`` (a loaded ``SentenceTransformer``) on OpenVINO's CPU plugin.

    Example::

        fwd = OpenVINOForward(SentenceTransformer(path), Path("cache/openvino"))
        vecs = fwd.encode(["a sentence", "another"], batch_size=64)   # [2, D] float32
    """

    def __init__(self, model, ir_dir: Path):
        import openvino as ov

        self.model = model
        probe = model.preprocess(["probe text", "a"])
        self.names = [k for k, v in probe.items() if hasattr(v, "dim") and v.dim() == 2]
        self.constants = {k: v for k, v in probe.items() if k not in self.names}
        varying = [k for k, v in self.constants.items() if hasattr(v, "dim")]
        if varying or "input_ids" not in self.names:
            raise ValueError(f"filter.runtime 'openvino' runs text models fed [batch, tokens] tensors; this teacher's "
                             f"inputs {sorted(probe)} are not: set filter.runtime to 'torch'")
        ir = Path(ir_dir) / ov.__version__.split("-")[0] / "model.xml"  # converted by, and for, this OpenVINO
        self.converted = not ir.exists()
        if self.converted:
            self._convert(probe, ir)
        self.compiled = ov.Core().compile_model(
            str(ir), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "THROUGHPUT"})
        self.streams = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))

    def _convert(self, probe: dict, ir: Path) -> None:
        import openvino as ov
        import torch

        module = _positional_forward(self.model, self.names, self.constants)
        with torch.no_grad():
            # Traced with example inputs, every dimension stays dynamic: any batch, any length.
            graph = ov.convert_model(module, example_input=tuple(probe[k] for k in self.names))
        for port, name in zip(graph.inputs, self.names):
            port.get_tensor().set_names({name})
        if ir.exists():  # another process finished first: its IR is the same
            return
        with atomic_path(ir.parent) as tmp:  # a killed run leaves no half IR
            tmp.mkdir()
            ov.save_model(graph, str(tmp / ir.name), compress_to_fp16=False)  # fp16 weights would change scores

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """Sentence embeddings as the model outputs them (normalised only if it has a Normalize module)."""
        # One tokenizer pass, padded to the longest text; numpy output skips transformers' slow
        # list-to-torch conversion (a third of the tokenizing time here).
        features = self.model.preprocess(list(texts), processing_kwargs={"common": {"return_tensors": "np"}})
        arrays = {k: np.asarray(features[k], dtype=np.int64) for k in self.names}
        width = arrays[self.names[0]].shape[1]
        lengths = arrays["attention_mask"].sum(1) if "attention_mask" in arrays else np.full(len(texts), width)
        left = getattr(self.model.tokenizer, "padding_side", "right") == "left"
        # Batches of equal token counts, each cut to its longest text: sorting by characters (as
        # SentenceTransformer.encode does) left 27 % padding on the filter benchmark's texts, this 1-3 %.
        order = np.argsort(-lengths, kind="stable")
        out = np.zeros((len(texts), self.compiled.output(0).get_partial_shape()[1].get_length()), dtype=np.float32)
        # Requests used round-robin and collected in this thread, so no Python callback runs on
        # OpenVINO's threads (with AsyncInferQueue's callbacks, destroying the compiled model hung
        # in 2 of 3 pytest runs, its stream thread waiting on the GIL). Two per CPU stream: a
        # stream always has the next batch queued while this thread prepares another.
        requests = [self.compiled.create_infer_request() for _ in range(2 * self.streams)]
        pending: list = [None] * len(requests)  # rows each request is computing

        def collect(r: int) -> None:
            requests[r].wait()
            out[pending[r]] = requests[r].get_output_tensor(0).data
            pending[r] = None

        for b, i in enumerate(range(0, len(texts), batch_size)):
            r = b % len(requests)
            if pending[r] is not None:
                collect(r)
            rows = order[i:i + batch_size]
            n = int(lengths[rows].max())
            cols = slice(width - n, width) if left else slice(0, n)
            requests[r].start_async({k: a[rows, cols] for k, a in arrays.items()})
            pending[r] = rows
        for r in range(len(requests)):
            if pending[r] is not None:
                collect(r)
        return out
