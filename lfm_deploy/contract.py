"""The graph contract, defined once: the exported graphs, their tensors and what each one means.

`graph_specs` declares each graph's tensors (table: docs/graph-contract.md, "Tensors"); the
export writes them into the manifest, and every consumer reads them back with
`Manifest.io(graph)` (`graph_io(manifest.graphs, graph)`) and refers to tensors by role
(`io.input("query")`), so no tensor name is spelled anywhere but here.

Pure Python (no torch, no numpy): the runtime uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Mapping, Sequence

from .errors import ManifestError
from .utils.files import unsafe_relpath
from .utils.records import Meta, to_json

#: The graphs of an export, in manifest order; "episode" is always there, the pair with --split.
GRAPHS = ("episode", "encoder", "head")
#: Features per backbone stage (layer2, layer3, layer4) and their channels.
STAGE_FEATURES = (4, 6, 3)
STAGE_CHANNELS = (512, 1024, 2048)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype and shape ("B"/"N" = dynamic batch)."""

    name: Annotated[str, Meta(min_length=1)]
    dtype: Annotated[str, Meta(min_length=1)]
    shape: tuple[Annotated[int, Meta(ge=1)] | str, ...]
    description: str = ""

    def to_dict(self) -> dict:
        return to_json(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "TensorSpec":
        return cls(str(d["name"]), str(d["dtype"]), tuple(d["shape"]), str(d.get("description", "")))


def _features(prefix: str, lead, feature_hw: Sequence[int], what: str) -> list[TensorSpec]:
    return [TensorSpec(f"support_l{i + 2}", "float32", (lead, n, c, hw, hw), f"{what} layer{i + 2} {prefix}")
            for i, (n, c, hw) in enumerate(zip(STAGE_FEATURES, STAGE_CHANNELS, feature_hw))]


def graph_specs(graph: str, size: int, shots: int, feature_hw: Sequence[int]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The (inputs, outputs) of a graph at image size `size` for `shots` shots.

    Args:
        graph: "episode", "encoder" or "head".
        size: the square image size S.
        shots: K.
        feature_hw: spatial sizes of the layer2/3/4 feature maps (S/8, S/16, S/32 rounded up).
    """
    s, k = size, shots
    mask = TensorSpec("mask", "uint8", ("B", s, s), "predicted mask in {0, 1} (K-shot voting)")
    if graph == "episode":
        inputs = [TensorSpec("query_img", "float32", ("B", 3, s, s), "normalised query images"),
                  TensorSpec("support_imgs", "float32", ("B", k, 3, s, s), "normalised support images"),
                  TensorSpec("support_masks", "float32", ("B", k, s, s), "support masks in {0, 1}")]
        logits = TensorSpec("logits", "float32", ("B", 2, s, s), "background/foreground logits")
        return inputs, ([logits, mask] if k == 1 else [mask])
    if graph == "encoder":
        inputs = [TensorSpec("support_img", "float32", ("N", 3, s, s), "normalised support image, one per row"),
                  TensorSpec("support_mask", "float32", ("N", s, s), "support mask in {0, 1}")]
        return inputs, _features("support features", "N", feature_hw, "masked")
    if graph == "head":
        inputs = [TensorSpec("query_img", "float32", ("B", 3, s, s), "normalised query images")]
        inputs += _features(f"features of the {k} shots", k, feature_hw, "encoder output:")
        return inputs, [TensorSpec("shot_logits", "float32", ("B", k, 2, s, s), "per-shot logits"), mask]
    raise ValueError(f"unknown graph {graph!r}; the graphs are {', '.join(GRAPHS)}")


#: Each graph's tensors by role, in contract order. The episode graph has `logits` for K = 1 only.
ROLES = {
    "episode": (("query", "supports", "masks"), ("logits", "mask")),
    "encoder": (("image", "mask"), ("l2", "l3", "l4")),
    "head": (("query", "l2", "l3", "l4"), ("per_shot", "mask")),
}


@dataclass(frozen=True)
class GraphIO:
    """One graph of an export as its manifest records it, with tensors addressable by role.

    Attributes:
        graph: "episode", "encoder" or "head" (the manifest's key for it, not written under it).
        file: the .onnx file, relative to the artifact directory.
        inputs, outputs: the tensor specs, in contract order.
    """

    graph: str = field(metadata={"key": True})
    file: Annotated[str, Meta(check=unsafe_relpath)]
    inputs: Annotated[tuple[TensorSpec, ...], Meta(min_length=1)]
    outputs: Annotated[tuple[TensorSpec, ...], Meta(min_length=1)]

    def _roles(self) -> tuple[tuple, tuple]:
        ins, outs = ROLES[self.graph]
        if self.graph == "episode" and len(self.outputs) == 1:
            outs = ("mask",)
        return ins, outs

    def input(self, role: str) -> str:
        """The name of the input with `role` (e.g. "query")."""
        return self.inputs[self._roles()[0].index(role)].name

    def output(self, role: str) -> str:
        """The name of the output with `role` (e.g. "mask")."""
        return self.outputs[self._roles()[1].index(role)].name

    def has_output(self, role: str) -> bool:
        return role in self._roles()[1]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def feed(self, **by_role) -> dict:
        """An input dict keyed by tensor name from arrays keyed by role: feed(query=q, l2=...)."""
        return {self.input(role): value for role, value in by_role.items()}

    def to_dict(self) -> dict:
        return to_json(self)


def default_io(graph: str, size: int, shots: int, feature_hw: Sequence[int] = (), file: str = "") -> GraphIO:
    """The contract of a graph as the export declares it (before any manifest exists)."""
    inputs, outputs = graph_specs(graph, size, shots, feature_hw)
    return GraphIO(graph, file or f"{graph}.onnx", tuple(inputs), tuple(outputs))


def graph_io(graphs: Mapping[str, GraphIO], graph: str) -> GraphIO:
    """One graph's contract from an export's graphs (`Manifest.graphs`), checked against its roles.

    Raises:
        ManifestError: the export has no such graph, or its tensors do not fit the contract's
            roles (a different count).
    """
    if graph not in graphs:
        raise ManifestError(f"the export has no {graph} graph (it has: {', '.join(graphs) or 'none'})",
                            api_hint="re-export with split=True for the encoder/head pair",
                            cli_hint="re-export with lfm-export --split for the encoder/head pair")
    io = graphs[graph]
    ins, outs = io._roles()
    if len(io.inputs) != len(ins) or len(io.outputs) != len(outs):
        raise ManifestError(f"the manifest's {graph} graph has {len(io.inputs)} inputs and {len(io.outputs)} outputs; "
                            f"the contract has {len(ins)} and {len(outs)} ({', '.join(ins)} -> {', '.join(outs)})",
                            api_hint="re-export with this lfm-deploy", cli_hint="re-run lfm-export")
    return io


__all__ = ["GRAPHS", "GraphIO", "ROLES", "STAGE_CHANNELS", "STAGE_FEATURES", "TensorSpec", "default_io", "graph_io",
           "graph_specs"]
