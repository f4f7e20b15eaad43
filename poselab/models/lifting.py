"""2D-to-3D lifting networks: four backbones behind one encoder/head interface.

Every lifter maps 2D keypoints ``(B, J, 2)`` (normalised screen coordinates) to a 3D pose ``(B, J, 3)`` (metres, root-relative, camera frame) as

    ``forward(x) == head(encoder(x)).view(B, J, 3)``

where ``encoder`` returns a *flat* feature vector ``(B, F)`` and ``head`` is a single
``nn.Linear(F, J * 3)``. The split is deliberate: the flat-landscape ensemble wraps
``encoder`` with an adaptive scaling head and stacks M copies of ``head`` into one batched
matmul, which only works if every backbone ends in the same kind of linear head.

Backbones (small versions of the reference architectures; sizes are keyword arguments):

``"mlp"``
    Martinez et al. 2017, "A simple yet effective baseline for 3d human pose estimation":
    ``Linear -> BN -> ReLU -> Dropout`` then ``num_blocks`` residual blocks of
    2 x (Linear, BN, ReLU, Dropout). Paper: width 1024, dropout 0.5, 2 blocks (~4.3 M
    parameters). Default here: width 512, dropout 0.25, 2 blocks — a quarter of the
    parameters, enough for ~10k training poses, and less dropout because the layers are
    narrower. The paper's max-norm weight constraint is not used.
``"cnn"``
    Pavllo et al. 2019, VideoPose3D, with receptive field 1 (a single frame treated as a
    length-1 sequence): ``Conv1d(2J, C, k=1, bias=False) -> BN -> ReLU -> Dropout``, then
    ``num_blocks`` residual blocks of 2 x (Conv1d(k=1, bias=False), BN, ReLU, Dropout). The
    final 1x1 "shrink" convolution is exactly the linear head. Paper: C = 1024, dropout
    0.25; default here C = 256. Note that with kernel width 1 the temporal model is
    mathematically a bias-free residual MLP — the difference to ``"mlp"`` is the missing
    biases, the channel count and the dropout, not the operator.
``"gcn"``
    Zhao et al. 2019, SemGCN: semantic graph convolutions on the skeleton graph (adjacency
    with self loops). Each layer learns one logit per non-zero adjacency entry (initialised
    to 1); a row-wise softmax over those entries gives the edge weights, the diagonal weight
    scales the self term ``x W_0`` and the off-diagonal weights aggregate the neighbour term
    ``x W_1``. Input graph conv -> ``num_blocks`` residual blocks of 2 x (graph conv, BN,
    ReLU[, Dropout]). Paper: 128 channels, 4 blocks, no dropout; default here 64 channels,
    3 blocks. Deviation: SemGCN's final graph conv (C -> 3 per joint) is replaced by the
    shared linear head on the flattened node features ``(B, J * C)`` so that all backbones
    have the same encoder/head split; the optional non-local layers are not used.
``"transformer"``
    Joint tokens in the spirit of PoseFormer's spatial transformer: a per-joint linear
    embedding of (x, y) plus a learned joint positional embedding, an
    ``nn.TransformerEncoder`` (batch_first, pre-norm, GELU) with a final LayerNorm, tokens
    flattened to ``(B, J * d)``. Default d = 64, 4 heads, 3 layers, feed-forward 128,
    dropout 0.1.

Inputs must be floating point with the model's dtype: float64 is supported by converting
the model (``model.double()``); a float64 tensor given to a float32 model is rejected rather
than silently cast. BatchNorm backbones (``"mlp"``, ``"cnn"``) need at least 2 samples per
batch in train mode (BatchNorm cannot estimate a variance from one value); eval mode takes
any batch size. ``"gcn"`` normalises over samples *and* joints, so B = 1 works in train mode.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from poselab.checks import check_choice, check_like_model, check_probability

__all__ = [
    "LIFTERS",
    "H36M17_PARENTS",
    "Lifter",
    "MLPLifter",
    "CNNLifter",
    "GCNLifter",
    "TransformerLifter",
    "build_lifter",
    "skeleton_adjacency",
    "check_keypoints",
    "SMALL_SIZES",
]

LIFTERS = ("mlp", "cnn", "gcn", "transformer")

H36M17_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
"""Parents of the 17-joint Human3.6M layout in VideoPose3D order (same as
``poselab.data.skeleton.H36M17.parents``), the default graph of the ``"gcn"`` backbone."""


# ----------------------------------------------------------------------------- checks


def check_keypoints(x: torch.Tensor, num_joints: int, like: torch.Tensor | None = None, arg: str = "x") -> None:
    """Raise unless ``x`` is a floating tensor of shape ``(B, num_joints, 2)``.

    If ``like`` (a model parameter) is given, ``x`` must also have its dtype and device:
    a mismatch is an error, never a silent cast.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{arg}: expected a torch.Tensor of shape (B, {num_joints}, 2), got {type(x).__name__}")
    if x.dim() != 3 or x.shape[1] != num_joints or x.shape[2] != 2:
        raise ValueError(
            f"{arg}: expected 2D keypoints of shape (B, {num_joints}, 2) (batch, joints, xy), got {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{arg}: expected a floating-point tensor, got dtype {x.dtype}")
    if like is not None:
        check_like_model(arg, x, like, "x")


def _check_int(arg: str, value, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{arg}: expected an int >= {minimum}, got {value!r}")
    return value


# ----------------------------------------------------------------------------- base


class Lifter(nn.Module):
    """A 2D-to-3D lifter: ``encoder`` (B, J, 2) -> (B, F), ``head`` = ``nn.Linear(F, J * 3)``,
    then :meth:`to_pose` (reshape and subtract the root joint).

    Attributes:
        encoder: the backbone; returns flat features ``(B, feature_dim)``.
        head: ``nn.Linear(feature_dim, num_joints * 3)``.
        feature_dim: F, the width of the encoder output.
        num_joints: J.
    """

    def __init__(self, encoder: nn.Module, feature_dim: int, num_joints: int):
        super().__init__()
        self.num_joints = _check_int("num_joints", num_joints)
        self.feature_dim = _check_int("feature_dim", feature_dim)
        self.encoder = encoder
        self.head = nn.Linear(feature_dim, num_joints * 3)

    root: int = 0
    """Index of the root joint (pelvis in the Human3.6M layout): predictions are relative to it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, J, 2) normalised 2D keypoints -> (B, J, 3) root-relative 3D pose in metres."""
        check_keypoints(x, self.num_joints, self.head.weight)
        return self.to_pose(self.head(self.encoder(x)))

    def to_pose(self, head_output: torch.Tensor) -> torch.Tensor:
        """Head output ``(B, J * 3)`` -> root-relative pose ``(B, J, 3)`` (the root joint is exactly 0).

        The targets are root-relative, so the predictions are made so by construction: the
        predicted root is subtracted from every joint. SimpleBaseline instead predicts only the
        J - 1 non-root joints; both give the same function class, and this keeps one head
        layout for every backbone. Wrappers that replace ``head`` (adaptive scaling,
        ensembles) call this on their own head outputs.
        """
        pose = head_output.view(head_output.shape[0], self.num_joints, 3)
        return pose - pose[:, self.root : self.root + 1]

    @property
    def num_parameters(self) -> int:
        """Number of trainable parameters (encoder + head)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class _Encoder(nn.Module):
    """Base of the backbones: validates its input, so wrappers that call ``lifter.encoder``
    directly (adaptive scaling, ensembles) get the same clear errors as ``lifter(x)``."""

    num_joints: int
    batchnorm_over_samples = False  # True where train mode needs B >= 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_keypoints(x, self.num_joints, next(self.parameters()))
        if self.batchnorm_over_samples and self.training and x.shape[0] < 2:
            raise ValueError(
                f"x: batch of {x.shape[0]} sample in train mode; this backbone's BatchNorm needs at least 2 "
                "samples per batch in train mode (use a larger batch, drop the last partial batch, or call .eval())"
            )
        return self.features(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


# ----------------------------------------------------------------------------- mlp


class _LinearBlock(nn.Sequential):
    """Linear -> BatchNorm1d -> ReLU -> Dropout on (B, C)."""

    def __init__(self, c_in: int, c_out: int, dropout: float):
        super().__init__(nn.Linear(c_in, c_out), nn.BatchNorm1d(c_out), nn.ReLU(), nn.Dropout(dropout))


class MLPEncoder(_Encoder):
    """Martinez et al. 2017 residual MLP without its output layer: (B, J, 2) -> (B, hidden)."""

    batchnorm_over_samples = True

    def __init__(self, num_joints: int = 17, hidden: int = 512, num_blocks: int = 2, dropout: float = 0.25):
        super().__init__()
        self.num_joints = _check_int("num_joints", num_joints)
        _check_int("hidden", hidden)
        _check_int("num_blocks", num_blocks, minimum=0)
        dropout = check_probability("dropout", dropout)
        self.stem = _LinearBlock(num_joints * 2, hidden, dropout)
        self.blocks = nn.ModuleList(
            nn.Sequential(_LinearBlock(hidden, hidden, dropout), _LinearBlock(hidden, hidden, dropout))
            for _ in range(num_blocks)
        )
        self.feature_dim = hidden

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x.flatten(1))
        for block in self.blocks:
            h = h + block(h)
        return h


class MLPLifter(Lifter):
    """``"mlp"``: Martinez et al. 2017 SimpleBaseline (see the module docstring)."""

    def __init__(self, num_joints: int = 17, hidden: int = 512, num_blocks: int = 2, dropout: float = 0.25):
        encoder = MLPEncoder(num_joints, hidden, num_blocks, dropout)
        super().__init__(encoder, encoder.feature_dim, num_joints)


# ----------------------------------------------------------------------------- cnn


class _ConvBlock(nn.Sequential):
    """Conv1d(k=1, no bias) -> BatchNorm1d -> ReLU -> Dropout on (B, C, T)."""

    def __init__(self, c_in: int, c_out: int, dropout: float):
        # BN follows each convolution, so a conv bias would be redundant (as in VideoPose3D).
        super().__init__(
            nn.Conv1d(c_in, c_out, kernel_size=1, bias=False),
            nn.BatchNorm1d(c_out, momentum=0.1),
            nn.ReLU(),
            nn.Dropout(dropout),
        )


class ConvEncoder(_Encoder):
    """VideoPose3D temporal model with receptive field 1, without its shrink conv:
    (B, J, 2) -> (B, channels). The frame is a length-1 sequence ``(B, 2J, T=1)``."""

    batchnorm_over_samples = True

    def __init__(self, num_joints: int = 17, channels: int = 256, num_blocks: int = 2, dropout: float = 0.25):
        super().__init__()
        self.num_joints = _check_int("num_joints", num_joints)
        _check_int("channels", channels)
        _check_int("num_blocks", num_blocks, minimum=0)
        dropout = check_probability("dropout", dropout)
        self.expand = _ConvBlock(num_joints * 2, channels, dropout)
        self.blocks = nn.ModuleList(
            nn.Sequential(_ConvBlock(channels, channels, dropout), _ConvBlock(channels, channels, dropout))
            for _ in range(num_blocks)
        )
        self.feature_dim = channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x.flatten(1).unsqueeze(-1))  # (B, 2J, 1): channels = joint coordinates, time = 1
        for block in self.blocks:
            # With kernel width 1 there is no padding to trim: the residual is the block input.
            h = h + block(h)
        return h.squeeze(-1)


class CNNLifter(Lifter):
    """``"cnn"``: VideoPose3D with receptive field 1 (see the module docstring)."""

    def __init__(self, num_joints: int = 17, channels: int = 256, num_blocks: int = 2, dropout: float = 0.25):
        encoder = ConvEncoder(num_joints, channels, num_blocks, dropout)
        super().__init__(encoder, encoder.feature_dim, num_joints)


# ----------------------------------------------------------------------------- gcn


def skeleton_adjacency(parents: Sequence[int]) -> torch.Tensor:
    """Binary skeleton adjacency with self loops, ``(J, J)`` float32, symmetric.

    ``A[i, j] = 1`` if ``i == j`` or one joint is the other's parent. ``parents[j]`` is -1
    for the root and otherwise the index of joint ``j``'s parent (``parents[j] < j``).
    """
    parents = tuple(parents)
    if not parents:
        raise ValueError("parents: expected at least one joint, got an empty sequence")
    for j, p in enumerate(parents):
        if isinstance(p, bool) or not isinstance(p, int) or not (p == -1 or 0 <= p < j):
            raise ValueError(
                f"parents: entry {j} is {p!r}; expected -1 (root) or an int parent index smaller than {j}"
            )
    num_joints = len(parents)
    adj = torch.eye(num_joints)
    child = torch.tensor([j for j, p in enumerate(parents) if p >= 0], dtype=torch.long)
    parent = torch.tensor([p for p in parents if p >= 0], dtype=torch.long)
    adj[child, parent] = 1.0
    adj[parent, child] = 1.0
    return adj


class SemGraphConv(nn.Module):
    """SemGCN semantic graph convolution on (B, J, C_in) -> (B, J, C_out).

    ``out_i = w_ii * x_i W_0 + sum_{j != i} w_ij * x_j W_1 + b`` with
    ``w_i = softmax over the non-zero entries of row i of the adjacency of learned logits``.
    Only the non-zero entries carry a logit (initialised to 1, so every row starts uniform);
    zero entries get weight exactly 0 and have no parameter, so every parameter is trained.
    """

    # For filter-normalised landscape directions (poselab.landscape): the weight is (c_in, 2 * c_out), so
    # output neurons are columns. Output channel k has two columns, k (self term) and c_out + k (neighbour
    # term); each is normalised as its own filter, like two linear layers whose outputs are then mixed.
    filter_dims = {"weight": 1}

    def __init__(self, c_in: int, c_out: int, adjacency: torch.Tensor):
        super().__init__()
        num_joints = adjacency.shape[0]
        rows, cols = torch.nonzero(adjacency, as_tuple=True)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.register_buffer("eye", torch.eye(num_joints), persistent=False)
        self.num_joints = num_joints
        # W[0]: self term, W[1]: neighbour term, stored side by side so one matmul computes both.
        self.weight = nn.Parameter(torch.empty(c_in, 2 * c_out))
        self.edge_logits = nn.Parameter(torch.ones(rows.numel()))
        self.bias = nn.Parameter(torch.empty(c_out))
        # nn.Linear's default scale (U(+-1/sqrt(fan_in))) for both weight halves and the bias.
        bound = 1.0 / math.sqrt(c_in)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def edge_weights(self) -> torch.Tensor:
        """(J, J) row-stochastic weights, zero outside the adjacency."""
        logits = torch.full(
            (self.num_joints, self.num_joints), float("-inf"), dtype=self.edge_logits.dtype,
            device=self.edge_logits.device,
        )
        logits = logits.index_put((self.rows, self.cols), self.edge_logits)
        return torch.softmax(logits, dim=1)  # every row has its self loop, so no row is all -inf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_self, h_neigh = (x @ self.weight).chunk(2, dim=-1)  # (B, J, C_out) each
        w = self.edge_weights()
        w_self = torch.diagonal(w).unsqueeze(-1)  # (J, 1)
        w_neigh = w * (1.0 - self.eye)  # (J, J)
        return w_self * h_self + w_neigh @ h_neigh + self.bias


class _GraphBlock(nn.Module):
    """SemGraphConv -> BatchNorm over channels (statistics over samples and joints) -> ReLU [-> Dropout]."""

    def __init__(self, c_in: int, c_out: int, adjacency: torch.Tensor, dropout: float):
        super().__init__()
        self.conv = SemGraphConv(c_in, c_out, adjacency)
        self.bn = nn.BatchNorm1d(c_out)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)  # (B, J, C)
        # Rows = (sample, joint) pairs: the same per-channel statistics as BN over (B, C, J), without transposes.
        h = self.bn(h.reshape(-1, h.shape[-1])).view_as(h)
        return self.drop(F.relu(h))


class SemGCNEncoder(_Encoder):
    """SemGCN without its output graph conv: (B, J, 2) -> (B, J * hidden) flattened node features."""

    def __init__(
        self,
        num_joints: int = 17,
        hidden: int = 64,
        num_blocks: int = 3,
        dropout: float = 0.0,
        parents: Sequence[int] | None = None,
    ):
        super().__init__()
        self.num_joints = _check_int("num_joints", num_joints)
        _check_int("hidden", hidden)
        _check_int("num_blocks", num_blocks, minimum=0)
        dropout = check_probability("dropout", dropout)
        if parents is None:
            if num_joints != len(H36M17_PARENTS):
                raise ValueError(
                    f"parents: required for num_joints={num_joints}; the default skeleton is the 17-joint "
                    "Human3.6M layout"
                )
            parents = H36M17_PARENTS
        if len(parents) != num_joints:
            raise ValueError(f"parents: expected {num_joints} entries (one per joint), got {len(parents)}")
        adjacency = skeleton_adjacency(parents)
        self.parents = tuple(parents)
        self.register_buffer("adjacency", adjacency)
        self.stem = _GraphBlock(2, hidden, adjacency, dropout)
        self.blocks = nn.ModuleList(
            nn.Sequential(_GraphBlock(hidden, hidden, adjacency, dropout), _GraphBlock(hidden, hidden, adjacency, dropout))
            for _ in range(num_blocks)
        )
        self.feature_dim = num_joints * hidden

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = h + block(h)
        return h.flatten(1)


class GCNLifter(Lifter):
    """``"gcn"``: SemGCN (see the module docstring). ``parents`` sets the skeleton graph."""

    def __init__(
        self,
        num_joints: int = 17,
        hidden: int = 64,
        num_blocks: int = 3,
        dropout: float = 0.0,
        parents: Sequence[int] | None = None,
    ):
        encoder = SemGCNEncoder(num_joints, hidden, num_blocks, dropout, parents)
        super().__init__(encoder, encoder.feature_dim, num_joints)


# ----------------------------------------------------------------------------- transformer


class JointTransformerEncoder(_Encoder):
    """One token per joint: (B, J, 2) -> Linear(2, d) + joint embedding -> pre-norm
    TransformerEncoder -> LayerNorm -> (B, J * d)."""

    def __init__(
        self,
        num_joints: int = 17,
        dim: int = 64,
        depth: int = 3,
        heads: int = 4,
        ff_dim: int = 128,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.num_joints = _check_int("num_joints", num_joints)
        _check_int("dim", dim)
        _check_int("depth", depth)
        _check_int("heads", heads)
        _check_int("ff_dim", ff_dim)
        dropout = check_probability("dropout", dropout)
        if dim % heads:
            raise ValueError(f"dim: expected a multiple of heads={heads}, got {dim}")
        self.embed = nn.Linear(2, dim)
        self.joint_embedding = nn.Parameter(torch.zeros(1, num_joints, dim))
        nn.init.trunc_normal_(self.joint_embedding, std=0.02)
        self.embed_drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            dim, heads, ff_dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        # Pre-norm layers leave the residual stream un-normalised, hence the final LayerNorm.
        self.transformer = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(dim), enable_nested_tensor=False)
        self.feature_dim = num_joints * dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed_drop(self.embed(x) + self.joint_embedding)  # (B, J, d)
        return self.transformer(tokens).flatten(1)


class TransformerLifter(Lifter):
    """``"transformer"``: joint-token transformer (see the module docstring)."""

    def __init__(
        self,
        num_joints: int = 17,
        dim: int = 64,
        depth: int = 3,
        heads: int = 4,
        ff_dim: int = 128,
        dropout: float = 0.1,
    ):
        encoder = JointTransformerEncoder(num_joints, dim, depth, heads, ff_dim, dropout)
        super().__init__(encoder, encoder.feature_dim, num_joints)


# ----------------------------------------------------------------------------- factory

_REGISTRY: dict[str, type[Lifter]] = {
    "mlp": MLPLifter,
    "cnn": CNNLifter,
    "gcn": GCNLifter,
    "transformer": TransformerLifter,
}


SMALL_SIZES = {"mlp": dict(hidden=128, num_blocks=1), "cnn": dict(channels=128, num_blocks=1),
               "gcn": dict(hidden=32, num_blocks=2), "transformer": dict(dim=32, depth=2, heads=4, ff_dim=64)}
"""Reduced sizes of every lifter (``build_lifter(name, **SMALL_SIZES[name])``) for the ``fast`` profile."""


def build_lifter(name: str, num_joints: int = 17, **kwargs) -> Lifter:
    """Build the lifter ``name`` (one of ``LIFTERS``) for ``num_joints`` joints.

    ``kwargs`` are the backbone's size options (defaults in brackets):

    - ``"mlp"``: ``hidden`` (512), ``num_blocks`` (2), ``dropout`` (0.25)
    - ``"cnn"``: ``channels`` (256), ``num_blocks`` (2), ``dropout`` (0.25)
    - ``"gcn"``: ``hidden`` (64), ``num_blocks`` (3), ``dropout`` (0.0), ``parents`` (Human3.6M 17)
    - ``"transformer"``: ``dim`` (64), ``depth`` (3), ``heads`` (4), ``ff_dim`` (128), ``dropout`` (0.1)

    Raises ``ValueError`` for an unknown name (listing ``LIFTERS``) and ``TypeError`` for an
    option the backbone does not have (listing the ones it has).
    """
    check_choice("lifter name", name, LIFTERS)
    cls = _REGISTRY[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "num_joints")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"build_lifter({name!r}): unknown option(s) {', '.join(unknown)}; "
            f"{name!r} accepts {', '.join(accepted)}"
        )
    return cls(num_joints=num_joints, **kwargs)
