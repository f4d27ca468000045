"""Solve the layer that outputs a CenterNet student's embeddings by least squares.

Once the features under it are fixed, the L2 loss of a linear output layer is a
least-squares problem. After the last step this module solves it exactly over the
training images (letterboxed, not augmented: what inference sees), with a ridge
penalty on the standardised inputs, and writes the solution into the layer: the box
readout of ``embedding_pooling: box`` (which SGD never trains: the L2 loss trains the
centre head, and through it the shared features), or else the head's output conv.
Only that layer changes; detection is untouched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .centernet.model import BoxPooledEmbeddingHead, CenterHead, CenterNetOutputs
from .centernet.targets import build_center_targets
from .data import collate

# an input that never varies (a dead ReLU, a padded border) is left at weight 0 instead of
# being divided by a zero standard deviation
_MIN_STD = 1e-6


class RefitError(ValueError):
    """The refit has nothing to fit (no object with a teacher embedding) or no head to fit."""


@dataclasses.dataclass(frozen=True)
class RefitReport:
    """What the refit saw and how far it moved the L2 loss on the training images.

    ``l2_before`` / ``l2_after``: mean over objects of sum_d (embedding - teacher)^2, the
    training loss's L2 term, with the SGD weights and with the refit ones.
    """

    images: int
    objects: int
    ridge: float
    l2_before: float
    l2_after: float

    def summary(self) -> str:
        return (
            f"solved the embedding output layer by least squares on {self.objects} objects of "
            f"{self.images} training images (ridge {self.ridge:g}): L2 {self.l2_before:.4f} -> {self.l2_after:.4f}"
        )


@dataclasses.dataclass
class _Moments:
    """Running sums of inputs x (F) and targets y (D) over objects, in float64."""

    count: int
    sum_x: Tensor
    sum_y: Tensor
    xx: Tensor
    xy: Tensor
    yy: Tensor

    @classmethod
    def empty(cls, features: int, dims: int) -> _Moments:
        zeros = torch.zeros
        dtype = torch.float64
        return cls(
            0,
            zeros(features, dtype=dtype),
            zeros(dims, dtype=dtype),
            zeros(features, features, dtype=dtype),
            zeros(features, dims, dtype=dtype),
            zeros((), dtype=dtype),
        )

    def add(self, x: Tensor, y: Tensor) -> None:
        x, y = x.double().cpu(), y.double().cpu()
        self.count += len(x)
        self.sum_x += x.sum(0)
        self.sum_y += y.sum(0)
        self.xx += x.T @ x
        self.xy += x.T @ y
        self.yy += (y * y).sum()

    def solve(self, ridge: float) -> tuple[Tensor, Tensor]:
        """(D, F) weight and (D,) bias minimising mean ||W x + b - y||^2 + ridge ||A||^2, where
        A is the weight on the standardised inputs (x - mean) / std."""
        n = self.count
        mean_x, mean_y = self.sum_x / n, self.sum_y / n
        covariance = self.xx / n - torch.outer(mean_x, mean_x)
        cross = self.xy / n - torch.outer(mean_x, mean_y)
        std = covariance.diagonal().clamp(min=0).sqrt()
        varies = std > _MIN_STD
        scale = torch.where(varies, std, torch.ones_like(std))
        gram = covariance / torch.outer(scale, scale)
        gram = gram[varies][:, varies]
        right = (cross / scale[:, None])[varies]
        eye = torch.eye(len(gram), dtype=gram.dtype)
        standardised = torch.linalg.solve(gram + ridge * eye, right)  # (F', D)
        weight = torch.zeros(len(std), mean_y.shape[0], dtype=torch.float64)
        weight[varies] = standardised / scale[varies][:, None]
        bias = mean_y - mean_x @ weight
        return weight.T.contiguous(), bias

    def squared_error(self, weight: Tensor, bias: Tensor) -> float:
        """mean over objects of ||W x + b - y||^2, from the sums alone."""
        weight, bias = weight.double().cpu(), bias.double().cpu()
        n = self.count
        predicted_sq = (weight.T @ weight * self.xx).sum() + 2 * bias @ weight @ self.sum_x + n * bias @ bias
        cross = (weight * self.xy.T).sum() + bias @ self.sum_y
        return float((self.yy - 2 * cross + predicted_sq) / n)


def refit_embedding_head(
    model: nn.Module,
    dataset: Dataset,
    ridge: float,
    *,
    device: torch.device,
    batch_size: int = 4,
    progress: bool = False,
) -> RefitReport:
    """Solve and set the embedding output layer of a CenterNet ``model`` on ``dataset``: the
    training images as a :class:`student.data.StudentDataset` in ``mode="validation"``
    (letterboxed, not augmented), or a ``Subset`` of one; see the module docstring."""
    head = getattr(model, "box_readout", None) or getattr(model, "embedding_head", None)
    if not isinstance(head, CenterHead | BoxPooledEmbeddingHead):
        raise RefitError("the refit needs a CenterNet student with an embedding head")
    dims = model.config.embedding_dim
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=0)
    moments: _Moments | None = None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for images, targets in tqdm(loader, desc="refit", unit="batch", disable=not progress):
                outputs = model(images.to(device))
                inputs, teacher = _objects(outputs, targets, dims)
                if moments is None:
                    moments = _Moments.empty(inputs.shape[1], dims)
                moments.add(inputs, teacher)
    finally:
        model.train(was_training)
    if moments is None or moments.count < 2:
        raise RefitError(
            "no two objects with a teacher embedding in the training images: nothing to refit the "
            "embedding head on"
        )
    weight, bias = moments.solve(ridge)
    before = moments.squared_error(*_output_weights(head))
    _set_output_weights(head, weight, bias)
    return RefitReport(len(dataset), moments.count, ridge, before, moments.squared_error(weight, bias))


def _objects(
    outputs: CenterNetOutputs, targets: Sequence[Mapping[str, Tensor]], dims: int
) -> tuple[Tensor, Tensor]:
    """(K, F) output-layer inputs and (K, D) teacher embeddings of every object the loss reads."""
    image_index, cell_index, boxes, teacher = [], [], [], []
    device = outputs.features.device
    for image, target in enumerate(targets):
        objects = build_center_targets(
            target["boxes"].to(device), target["ignore"].to(device), outputs.map_size, outputs.stride
        )
        embeddings = target["embeddings"].to(device)[objects.box_index, :dims]
        known = torch.isfinite(embeddings).all(dim=1)
        cells = objects.cell_index[known]
        image_index.append(torch.full_like(cells, image))
        cell_index.append(cells)
        boxes.append(target["boxes"].to(device)[objects.box_index][known])
        teacher.append(embeddings[known])
    inputs = outputs.readout_inputs(torch.cat(image_index), torch.cat(cell_index), torch.cat(boxes))
    return inputs.float(), torch.cat(teacher).float()


def _output_weights(head: CenterHead | BoxPooledEmbeddingHead) -> tuple[Tensor, Tensor]:
    return head.output.weight.detach().flatten(1), head.output.bias.detach()


def _set_output_weights(head: CenterHead | BoxPooledEmbeddingHead, weight: Tensor, bias: Tensor) -> None:
    layer = head.output
    with torch.no_grad():
        layer.weight.copy_(weight.reshape(layer.weight.shape).to(layer.weight))
        layer.bias.copy_(bias.to(layer.bias))
        if isinstance(head, BoxPooledEmbeddingHead):
            head.solved.fill_(True)
