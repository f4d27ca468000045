"""CenterNet / FairMOT network: backbone, upsampling neck to stride 4, and four 3x3 -> 1x1 heads.

The neck follows FairMOT's ResNet-FPN variant: from C5, three steps of conv3x3
-> BN -> ReLU -> transposed conv x2 (initialised to bilinear upsampling) -> BN
-> ReLU, each followed by adding a 1x1 projection of the backbone map of that
stride (C4, C3, C2). FairMOT uses deformable convolutions for the 3x3 step; a
plain convolution is used here, so the model builds wherever torch does.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tdt.imagenet import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

from ..backbones import build_stride4_body
from ..config import ModelConfig
from ..reciprocal import ReciprocalNetwork

OUTPUT_STRIDE = 4
# CenterNet's initial heatmap probability (bias -2.19), higher than RetinaNet's 0.01: one
# cell per object is positive against ~100 anchors per object there
HEATMAP_PRIOR = 0.1
# FairMOT's initialisation of the regression and embedding heads
REGRESSION_INIT_STD = 1e-3
# embedding_pooling: box averages the map over this grid of (rows, columns) cells of the box:
# a person's head, torso and legs fall in different rows, and left and right in the columns
BOX_POOLING_BINS = (4, 2)
# bilinear samples per bin side when averaging a bin
BOX_POOLING_SAMPLES = 2
# the neck's coarser maps a box readout may also pool (model.box_readout_neck_maps), finest
# first, with their grids: (stride, (rows, columns)). A person 25 px tall spans one or two
# stride-16 cells, so that map gets the top and bottom halves only.
COARSE_POOLING = ((8, (4, 2)), (16, (2, 1)))


@dataclasses.dataclass(frozen=True)
class CenterNetOutputs:
    """Raw head outputs at stride 4 for a batch; boxes and offsets in output-cell units.

    ``box`` holds left, top, right, bottom distances from the object's centre
    (``box_encoding: ltrb``) or its width and height (``wh``). ``embeddings`` is
    the dense embedding map when the model ran with ``dense_embeddings``;
    otherwise the head is evaluated only at the cells asked of
    :meth:`cell_embeddings`. Both are absent for a detection-only model.
    ``box_readout`` (``embedding_pooling: box``) is the least-squares readout that
    replaces the head's embeddings at inference (:meth:`detection_embeddings`).
    """

    heatmap_logits: Tensor  # (B, 1, H, W)
    box: Tensor  # (B, 4 | 2, H, W)
    offset: Tensor  # (B, 2, H, W)
    embeddings: Tensor | None  # (B, D, H, W), raw (not normalised)
    features: Tensor = dataclasses.field(repr=False)  # (B, C, H, W) the map the embedding head reads
    embedding_head: CenterHead | None = dataclasses.field(default=None, repr=False)
    stride: int = OUTPUT_STRIDE
    image_size: tuple[int, int] = (0, 0)  # (height, width) of the input batch
    box_readout: BoxPooledEmbeddingHead | None = dataclasses.field(default=None, repr=False)
    # the neck's stride-8 (and stride-16) maps, finest first, where the box readout pools them
    coarse_features: tuple[Tensor, ...] = dataclasses.field(default=(), repr=False)

    @property
    def map_size(self) -> tuple[int, int]:
        return (self.heatmap_logits.shape[-2], self.heatmap_logits.shape[-1])

    @property
    def has_embeddings(self) -> bool:
        return self.embedding_head is not None

    def cell_embeddings(self, image_index: Tensor, cell_index: Tensor) -> Tensor:
        """(K, D) raw embeddings of the trained head at flat cells ``cell_index`` (K,) of images
        ``image_index`` (K,): what the training losses read."""
        if self.embedding_head is None:
            raise ValueError("this model has no embedding head")
        if self.embeddings is not None:
            flat = self.embeddings.flatten(2)  # (B, D, H * W)
            return flat[image_index, :, cell_index]
        return self.embedding_head.at_cells(self.features, image_index, cell_index)

    def detection_embeddings(self, image_index: Tensor, cell_index: Tensor, boxes: Tensor) -> Tensor:
        """(K, D) raw embeddings of detections centred at ``cell_index`` with ``boxes`` (K, 4),
        x1, y1, x2, y2 in input pixels: the box readout's where the model has one, otherwise
        the head's (:meth:`cell_embeddings`)."""
        if self.box_readout is not None:
            return self.box_readout.output(self.readout_inputs(image_index, cell_index, boxes))
        return self.cell_embeddings(image_index, cell_index)

    def readout_inputs(self, image_index: Tensor, cell_index: Tensor, boxes: Tensor) -> Tensor:
        """(K, F): what the layer that outputs :meth:`detection_embeddings` reads for each object
        (the box readout's pooled features, or the head's hidden activations)."""
        if self.embedding_head is None:
            raise ValueError("this model has no embedding head")
        if self.box_readout is not None:
            return self.box_readout.readout_inputs(
                self.features, image_index, cell_index, boxes, self.stride, self.coarse_features
            )
        return self.embedding_head.readout_inputs(self.features, image_index, cell_index)


class CenterHead(nn.Module):
    """conv3x3 (``width``) -> ReLU -> conv1x1 (``out_channels``), FairMOT's head, with
    :meth:`at_cells` computing the same output at chosen cells only."""

    def __init__(
        self, in_channels: int, width: int, out_channels: int, output_bias: float | None = None
    ) -> None:
        super().__init__()
        self.hidden = nn.Conv2d(in_channels, width, 3, padding=1)
        self.output = nn.Conv2d(width, out_channels, 1)
        if output_bias is None:
            for conv in (self.hidden, self.output):
                nn.init.normal_(conv.weight, std=REGRESSION_INIT_STD)
                nn.init.zeros_(conv.bias)
        else:
            nn.init.constant_(self.output.bias, output_bias)

    def forward(self, features: Tensor) -> Tensor:
        return self.output(torch.relu(self.hidden(features)))

    def at_cells(self, features: Tensor, image_index: Tensor, cell_index: Tensor) -> Tensor:
        """(K, out_channels): the head's output at cells ``cell_index`` of images ``image_index``.

        An output cell reads the 3x3 window of features around it (zero outside the map),
        so gathering those windows and applying both convs as matrix products equals the
        dense head there, at a cost that grows with K instead of the map's area.
        """
        hidden = self.readout_inputs(features, image_index, cell_index)
        return F.linear(hidden, self.output.weight.flatten(1), self.output.bias)

    def readout_inputs(self, features: Tensor, image_index: Tensor, cell_index: Tensor) -> Tensor:
        """(K, width): the hidden activations the output conv reads at each cell."""
        windows = centre_windows(features, image_index, cell_index)
        return torch.relu(F.linear(windows, self.hidden.weight.flatten(1), self.hidden.bias))


def centre_windows(features: Tensor, image_index: Tensor, cell_index: Tensor) -> Tensor:
    """(K, C * 9): the 3x3 window of ``features`` around each cell (zero outside the map), flattened
    in a 3x3 conv weight's order (channel, row, column)."""
    width = features.shape[-1]
    padded = F.pad(features, (1, 1, 1, 1))
    rows = torch.div(cell_index, width, rounding_mode="floor")
    columns = cell_index % width
    offsets = torch.arange(3, device=features.device)
    window_rows = (rows[:, None] + offsets[None, :])[:, :, None]  # (K, 3, 1), padded coordinates
    window_columns = (columns[:, None] + offsets[None, :])[:, None, :]  # (K, 1, 3)
    windows = padded[image_index[:, None, None], :, window_rows, window_columns]  # (K, 3, 3, C)
    return windows.permute(0, 3, 1, 2).flatten(1)


def box_bins(
    features: Tensor,
    image_index: Tensor,
    boxes: Tensor,
    stride: int,
    bins: tuple[int, int] = BOX_POOLING_BINS,
    samples: int = BOX_POOLING_SAMPLES,
) -> Tensor:
    """(K, C * rows * columns): ``features`` averaged over a ``bins`` grid of each box.

    Each bin is the mean of ``samples`` x ``samples`` bilinear samples at evenly spaced
    points inside it (RoIAlign's average, written with ``grid_sample`` so that it needs no
    compiled torchvision op). ``boxes`` are x1, y1, x2, y2 in input pixels; the map's cell
    (i, j) covers input pixels [j * stride, (j + 1) * stride) horizontally. Samples outside
    the map read zeros.
    """
    rows, columns = bins
    channels, height, width = features.shape[1:]
    pooled = features.new_zeros((len(boxes), channels, rows, columns))
    fractions_y = _bin_fractions(rows * samples, boxes)
    fractions_x = _bin_fractions(columns * samples, boxes)
    # sample point in input pixels -> grid_sample's [-1, 1] over the map's full extent
    points_y = boxes[:, 1:2] + fractions_y[None] * (boxes[:, 3:4] - boxes[:, 1:2])  # (K, rows * samples)
    points_x = boxes[:, 0:1] + fractions_x[None] * (boxes[:, 2:3] - boxes[:, 0:1])  # (K, columns * samples)
    grid_y = points_y / (stride * height) * 2 - 1
    grid_x = points_x / (stride * width) * 2 - 1
    for image in torch.unique(image_index).tolist():
        chosen = torch.nonzero(image_index == image).squeeze(1)
        grid = torch.stack(
            [
                grid_x[chosen][:, None, :].expand(-1, rows * samples, -1),
                grid_y[chosen][:, :, None].expand(-1, -1, columns * samples),
            ],
            dim=-1,
        )  # (k, rows * samples, columns * samples, 2)
        stacked = grid.reshape(1, -1, columns * samples, 2)
        sampled = F.grid_sample(
            features[image : image + 1], stacked.to(features.dtype), align_corners=False, padding_mode="zeros"
        )  # (1, C, k * rows * samples, columns * samples)
        sampled = sampled.reshape(channels, len(chosen), rows * samples, columns * samples).transpose(0, 1)
        pooled = pooled.index_copy(0, chosen, F.avg_pool2d(sampled, samples))
    return pooled.flatten(1)


def _bin_fractions(count: int, like: Tensor) -> Tensor:
    """(count,): evenly spaced sample positions across [0, 1], at the middle of each step."""
    return (torch.arange(count, device=like.device, dtype=like.dtype) + 0.5) / count


class BoxPooledEmbeddingHead(nn.Module):
    """The embedding read from the whole object: one linear layer over the centre 3x3 window
    and the map averaged over a grid of the box's cells (:func:`box_bins`), and with
    ``coarse_channels`` also over a grid of the neck's stride-8 (and stride-16) maps
    (``COARSE_POOLING``).

    The teacher embeds the whole crop; the centre window alone sees the torso of a small
    person but not its head or legs. The stride-4 map the heads read is shaped mostly by
    detection; the coarser maps hold more of the backbone's appearance channels (wider,
    and one upsampling step nearer C4 and C5). The layer is not trained by SGD: it is
    solved by least squares against the teacher once training ends (:mod:`student.refit`),
    on the features the L2-trained centre head shaped. Evaluated only at the objects asked
    for, like :meth:`CenterHead.at_cells`: ``output(readout_inputs(...))``.
    """

    def __init__(self, in_channels: int, out_channels: int, coarse_channels: tuple[int, ...] = ()) -> None:
        super().__init__()
        if len(coarse_channels) > len(COARSE_POOLING):
            raise ValueError(f"a box readout pools at most {len(COARSE_POOLING)} coarser maps")
        rows, columns = BOX_POOLING_BINS
        inputs = in_channels * (9 + rows * columns)
        for channels, (_, (coarse_rows, coarse_columns)) in zip(
            coarse_channels, COARSE_POOLING, strict=False
        ):
            inputs += channels * coarse_rows * coarse_columns
        self.coarse_maps = len(coarse_channels)
        self.output = nn.Linear(inputs, out_channels)
        nn.init.normal_(self.output.weight, std=REGRESSION_INIT_STD)
        nn.init.zeros_(self.output.bias)
        # saved with the weights, so that a checkpoint from before the solve can be refused
        self.register_buffer("solved", torch.zeros((), dtype=torch.bool))

    def readout_inputs(
        self,
        features: Tensor,
        image_index: Tensor,
        cell_index: Tensor,
        boxes: Tensor,
        stride: int,
        coarse_features: tuple[Tensor, ...] = (),
    ) -> Tensor:
        """(K, F): what the output layer reads for each object centred at cell ``cell_index``
        with ``boxes`` (input pixels); ``coarse_features`` are the neck's stride-8 (and 16)
        maps, finest first, as many as the head was built for."""
        if len(coarse_features) != self.coarse_maps:
            raise ValueError(
                f"this box readout pools {self.coarse_maps} coarser maps, got {len(coarse_features)}"
            )
        parts = [
            centre_windows(features, image_index, cell_index),
            box_bins(features, image_index, boxes, stride),
        ]
        for coarse, (coarse_stride, bins) in zip(coarse_features, COARSE_POOLING, strict=False):
            parts.append(box_bins(coarse.to(features.dtype), image_index, boxes, coarse_stride, bins))
        return torch.cat(parts, dim=1)


def _bilinear_upsampling_(deconv: nn.ConvTranspose2d) -> None:
    """Initialise a (C, C, 4, 4) stride-2 transposed conv as per-channel bilinear x2 upsampling."""
    size = deconv.kernel_size[0]
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    taps = 1 - (torch.arange(size, dtype=torch.float32) - centre).abs() / factor
    kernel = taps[:, None] * taps[None, :]
    with torch.no_grad():
        deconv.weight.zero_()
        for channel in range(min(deconv.in_channels, deconv.out_channels)):
            deconv.weight[channel, channel] = kernel


class UpsamplingStep(nn.Module):
    """conv3x3 -> BN -> ReLU -> transposed conv x2 -> BN -> ReLU, plus the lateral map."""

    def __init__(self, in_channels: int, out_channels: int, lateral_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        deconv = nn.ConvTranspose2d(out_channels, out_channels, 4, stride=2, padding=1, bias=False)
        _bilinear_upsampling_(deconv)
        self.upsample = nn.Sequential(deconv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
        self.lateral = nn.Conv2d(lateral_channels, out_channels, 1)

    def forward(self, x: Tensor, lateral: Tensor) -> Tensor:
        upsampled = self.upsample(self.conv(x))
        # input sizes not divisible by 32: the maps differ by a cell; pad or crop to the lateral's
        pad_bottom = lateral.shape[-2] - upsampled.shape[-2]
        pad_right = lateral.shape[-1] - upsampled.shape[-1]
        if pad_bottom or pad_right:
            upsampled = F.pad(upsampled, (0, pad_right, 0, pad_bottom))
        return upsampled + self.lateral(lateral)


class UpsamplingBackbone(nn.Module):
    """Backbone body (C2..C5) and the neck from C5 to a stride-4 map of ``neck_channels[-1]``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.body, (c2, c3, c4, c5) = build_stride4_body(config)
        widths = config.neck_channels
        self.steps = nn.ModuleList(
            [
                UpsamplingStep(c5, widths[0], c4),
                UpsamplingStep(widths[0], widths[1], c3),
                UpsamplingStep(widths[1], widths[2], c2),
            ]
        )
        self.out_channels = widths[2]

    def forward(self, images: Tensor) -> Tensor:
        return self.neck_maps(images)[-1]

    def neck_maps(self, images: Tensor) -> list[Tensor]:
        """The neck's maps at strides 16, 8 and 4 (the last is what :meth:`forward` returns)."""
        maps = self.body(images)
        x = maps["C5"]
        outputs = []
        for step, lateral in zip(self.steps, ("C4", "C3", "C2"), strict=True):
            x = step(x, maps[lateral])
            outputs.append(x)
        return outputs


class CenterNetDetector(nn.Module):
    """Backbone + upsampling neck + heatmap, box, offset and (optionally) embedding heads.

    With ``reciprocal_network`` the heatmap, box and offset heads read REN's detection map
    of the neck output and the embedding head its re-ID map (:mod:`student.reciprocal`).
    ``forward`` takes RGB images in [0, 1], (B, 3, H, W), letterboxed to a common size;
    ImageNet normalisation happens inside, as in the RetinaNet family.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.family != "centernet":
            raise ValueError(f"CenterNetDetector needs family 'centernet', got {config.family!r}")
        self.config = config
        self.backbone = UpsamplingBackbone(config)
        channels = self.backbone.out_channels
        prior_bias = -math.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR)
        self.heatmap_head = CenterHead(channels, config.head_width, 1, output_bias=prior_bias)
        box_values = 4 if config.box_encoding == "ltrb" else 2
        self.box_head = CenterHead(channels, config.head_width, box_values)
        self.offset_head = CenterHead(channels, config.head_width, 2)
        self.reciprocal_network: ReciprocalNetwork | None = None
        if config.reciprocal_network:
            self.reciprocal_network = ReciprocalNetwork(channels)
        self.embedding_head: CenterHead | None = None
        self.box_readout: BoxPooledEmbeddingHead | None = None
        if config.has_embedding_head:
            self.embedding_head = CenterHead(channels, config.embedding_head_width, config.embedding_dim)
        if config.has_embedding_head and config.embedding_pooling == "box":
            coarse_channels = tuple(reversed(config.neck_channels[:-1]))[: config.box_readout_neck_maps - 1]
            self.box_readout = BoxPooledEmbeddingHead(
                channels, config.embedding_dim, coarse_channels
            ).requires_grad_(False)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD_RGB).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor, dense_embeddings: bool | None = None) -> CenterNetOutputs:
        """Head outputs; the embedding head runs on the whole map only with ``dense_embeddings``
        (default: ``config.dense_embeddings``), otherwise at the cells the reader asks for."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        neck_maps = self.backbone.neck_maps((images - self.pixel_mean) / self.pixel_std)
        features = neck_maps[-1]
        coarse_features: tuple[Tensor, ...] = ()
        if self.box_readout is not None and self.box_readout.coarse_maps:
            coarse_features = tuple(reversed(neck_maps[:-1]))[: self.box_readout.coarse_maps]
        reid_features = features
        if self.reciprocal_network is not None:
            features, reid_features = self.reciprocal_network(features)
        if dense_embeddings is None:
            dense_embeddings = self.config.dense_embeddings
        embeddings = None
        if self.embedding_head is not None and dense_embeddings:
            if self.box_readout is not None:
                raise ValueError("a box readout has no dense map: it reads each object's box")
            embeddings = self.embedding_head(reid_features)
        return CenterNetOutputs(
            heatmap_logits=self.heatmap_head(features),
            box=self.box_head(features),
            offset=self.offset_head(features),
            embeddings=embeddings,
            features=reid_features,
            embedding_head=self.embedding_head,
            stride=OUTPUT_STRIDE,
            image_size=(images.shape[-2], images.shape[-1]),
            box_readout=self.box_readout,
            coarse_features=coarse_features,
        )
