r"""AUX-TS: self-supervised auxiliary tasks during fine-tuning, weighted by a meta-learned network.

**The idea** (Han, Huang, An, Bai, "Adaptive Transfer Learning on Graph Neural Networks", KDD 2021; code:
Sean-Huang65/AUX-TS). Pre-training a GNN with self-supervised tasks and then fine-tuning it
on the target task leaves a gap: the pre-training objective is not the target's, and fine-tuning forgets it.
AUX-TS keeps the self-supervised tasks *during fine-tuning*, as auxiliary tasks, and lets a small **weighting
network** :math:`\mathcal V_\psi` decide, example by example, how much each one counts. Its input says how
*consistent* a task is with the target: the gradient cosine between the task's loss and the target's loss on the
shared encoder :math:`\theta`,

$$c_t = \cos\big(\nabla_\theta \bar{\mathcal L}_{\text{target}},\; \nabla_\theta \bar{\mathcal L}_t\big),
\qquad v_{t,i} = \mathcal V_\psi\big(\ell_{t,i},\, e_t,\, c_t\big) \in (0, 1),$$

with :math:`\ell_{t,i}` the loss of example :math:`i` of task :math:`t` and :math:`e_t` a learned embedding of
the task id (the paper feeds a one-hot id; an embedding of it is the same thing after the first linear layer).
The training loss is :math:`\mathcal L_w(\theta;\psi) = \sum_t \frac{1}{n_t}\sum_i v_{t,i}\,\ell_{t,i}(\theta)`,
the target task included (ratio 1 for every task, as in the paper's Reddit scripts).

**Learning** :math:`\psi` **by meta-learning** (the Meta-Weight-Net / learning-to-reweight recipe). Split the
target's labelled examples into two folds. Take one differentiable SGD step of the model on the weighted loss
with fold A's target examples (Eq. 6), measure the target loss of the stepped model on fold B (Eq. 7), and move
:math:`\psi` down its gradient (Eq. 9); then recompute the weights with the new :math:`\psi` and update the model
for real (Eq. 8):

$$\hat\theta(\psi) = \theta - \alpha \nabla_\theta \mathcal L_w(\theta;\psi) \quad (6) \qquad
\mathcal L_{\text{meta}}(\psi) = \bar{\mathcal L}_{\text{target}}\big(\hat\theta(\psi)\big)\big|_{\text{fold B}} \quad (7)$$

$$\psi \leftarrow \psi - \beta \nabla_\psi \mathcal L_{\text{meta}}(\psi) \quad (9) \qquad
\theta \leftarrow \theta - \eta \nabla_\theta \mathcal L_w(\theta;\psi) \quad (8)$$

:math:`\nabla_\psi \mathcal L_{\text{meta}}` exists only because :math:`\hat\theta` is a *function* of
:math:`\psi`: here the look-ahead parameters are plain tensors built with ``create_graph=True`` and the model runs
on them through ``torch.func.functional_call``, so autograd differentiates through the step. An auxiliary task
whose gradient agrees with the target's lowers the target loss after the step when it weighs more, so its weight
grows; one that disagrees loses weight.

**The auxiliary tasks.** AUX-TS is task-agnostic (its own experiments use GPT-GNN's edge and attribute
*generation*). We plug in the three self-supervised tasks of Hu et al., "Strategies for Pre-training Graph Neural
Networks" (ICLR 2020): **attribute masking** (hide 15% of the nodes' features, reconstruct them from the
neighbourhood; squared error per masked node — Hu et al. predict the masked atom type with cross-entropy),
**edge prediction** (score an edge :math:`\sigma(h_u^\top h_v)` against a random non-edge; binary cross-entropy per
edge) and **context prediction** (does a node's embedding match the mean embedding of the nodes at distance
:math:`r_1 … r_2` around it — its *context ring* — or another node's ring? binary cross-entropy per node; Hu et al.
encode the context with a second, smaller GNN, use :math:`r_1 = 4, r_2 = 7` around a 5-layer GIN and draw negative
contexts from other graphs; we reuse the encoder, default to :math:`r_1 = 1, r_2 = 2` around a 2-layer one (the
ring overlaps the receptive field by a hop, as their :math:`r_1 < K` does), and the negative is another node's ring).

**Paper versus code** (Sean-Huang65/AUX-TS, read at 6008ee3): (1) the differentiable look-ahead is commented out and
replaced by an in-place ``optimizer_meta.step()``, so the meta loss has no path to :math:`\psi` and the weighting
network receives no gradient from Eq. 9 (our test checks that ours does); (2) in the OAG scripts the final update
sums ``(loss_pr*v_pr).mean()`` three times, so the auxiliary losses never enter it. We follow the paper's equations.
The released code also takes cosines over the GNN *and* the target classifier; the auxiliary tasks do not use the
classifier (their gradient there is 0), so we take them over the shared encoder only.

Everything here is a ``loss_fn(model, batch)`` for :func:`minipeft.core.train`: :class:`FixedWeights` (pre-train
on the auxiliary tasks, fine-tune on the target, or a fixed mix) and :class:`AuxTS` (which runs the meta step on
its own weighting network inside the call and returns the weighted loss for the model's step).

Chapter: Part V, "Auxiliary tasks for GNNs" (``21_gnn_auxiliary_transfer``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import shortest_path
from torch import nn
from torch.func import functional_call
from torch_geometric.data import Batch, Data
from torch_geometric.nn import GCNConv, GINConv, global_mean_pool
from torch_geometric.utils import scatter


def _check_graph(data) -> None:
    if not isinstance(data, Data):
        raise TypeError(f"expected a torch_geometric Data or Batch, got {type(data).__name__}.")
    if getattr(data, "x", None) is None or getattr(data, "edge_index", None) is None:
        raise ValueError("the graph needs node features `x` (N, F) and `edge_index` (2, E).")


# --- the encoder ---------------------------------------------------------------------------------------------


class GNNEncoder(nn.Module):
    """A stack of GIN (Xu et al. 2019, Hu et al.'s choice) or GCN (Kipf & Welling 2017) layers: (N, F) → (N, hidden)."""

    def __init__(self, in_channels: int, hidden_channels: int = 64, num_layers: int = 2, conv: str = "gin"):
        super().__init__()
        if conv not in ("gin", "gcn"):
            raise ValueError(f"conv={conv!r}; choose 'gin' or 'gcn'.")
        if num_layers < 1 or in_channels < 1 or hidden_channels < 1:
            raise ValueError("in_channels, hidden_channels and num_layers must be ≥ 1.")
        self.convs = nn.ModuleList()
        for layer in range(num_layers):
            width_in = in_channels if layer == 0 else hidden_channels
            if conv == "gin":  # h_v ← MLP((1 + ε) h_v + Σ_{u ∈ N(v)} h_u)
                mlp = nn.Sequential(nn.Linear(width_in, hidden_channels), nn.ReLU(),
                                    nn.Linear(hidden_channels, hidden_channels))
                self.convs.append(GINConv(mlp, train_eps=True))
            else:  # H ← D̃^{-1/2} Ã D̃^{-1/2} H W
                self.convs.append(GCNConv(width_in, hidden_channels))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        for index, conv in enumerate(self.convs):
            x = conv(x, edge_index)  # (N, hidden)
            if index < len(self.convs) - 1:
                x = F.relu(x)
        return x


# --- tasks: each maps (encoder, graph) to one loss per example ---------------------------------------------


class NodeClassification(nn.Module):
    """Target (or label-based auxiliary) task: cross-entropy of each labelled node, ``(len(index),)``.

    ``index`` (n,) are the labelled nodes and ``labels`` (n,) their classes. The chapter's tests build a
    *duplicate* of the target (same labels) and a *label-shuffled* one from this class; passing the target's
    ``head`` makes them borrow its classifier, so a duplicate's gradient is exactly the target's. A borrowed head
    is *not* registered here (the target owns it): ``torch.func.functional_call`` does not restore tied
    parameters correctly, and an unregistered reference is not a tie.
    """

    def __init__(self, hidden_channels: int, num_classes: int, index: torch.Tensor, labels: torch.Tensor,
                 head: nn.Linear | None = None):
        super().__init__()
        if index.dim() != 1 or labels.shape != index.shape:
            raise ValueError(f"index and labels must be 1-D of the same length; got {tuple(index.shape)} and "
                             f"{tuple(labels.shape)}.")
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"labels must lie in [0, {num_classes}); got [{int(labels.min())}, {int(labels.max())}].")
        if head is not None and (head.in_features, head.out_features) != (hidden_channels, num_classes):
            raise ValueError(f"the shared head maps {head.in_features} → {head.out_features}, but this task needs "
                             f"{hidden_channels} → {num_classes}.")
        if head is None:
            self.head = nn.Linear(hidden_channels, num_classes)
        else:
            self._borrowed = (head,)  # a tuple: nn.Module does not register what is inside it
        self.register_buffer("index", index.long())
        self.register_buffer("labels", labels.long())

    def logits(self, encoder: nn.Module, data: Data, h: torch.Tensor | None = None) -> torch.Tensor:
        h = encoder(data.x, data.edge_index) if h is None else h  # (N, hidden)
        head = self._borrowed[0] if hasattr(self, "_borrowed") else self.head
        return head(h)  # (N, C)

    def forward(self, encoder: nn.Module, data: Data, h: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.logits(encoder, data, h)[self.index]  # (n, C)
        return F.cross_entropy(logits, self.labels, reduction="none")  # ℓ_i = −log p(y_i | x), (n,)


class GraphClassification(nn.Module):
    """Target task on a batch of graphs: mean-pool the node embeddings, classify, one cross-entropy per graph."""

    def __init__(self, hidden_channels: int, num_classes: int):
        super().__init__()
        self.head = nn.Linear(hidden_channels, num_classes)

    def logits(self, encoder: nn.Module, data: Data, h: torch.Tensor | None = None) -> torch.Tensor:
        h = encoder(data.x, data.edge_index) if h is None else h  # (N, hidden)
        batch = data.batch if getattr(data, "batch", None) is not None else data.x.new_zeros(data.num_nodes, dtype=torch.long)
        pooled = global_mean_pool(h, batch)  # (G, hidden)
        return self.head(pooled)  # (G, C)

    def forward(self, encoder: nn.Module, data: Data, h: torch.Tensor | None = None) -> torch.Tensor:
        return F.cross_entropy(self.logits(encoder, data, h), data.y.view(-1), reduction="none")  # (G,)


class AttributeMasking(nn.Module):
    """Hide the features of a random ``mask_rate`` of the nodes (set them to 0), reconstruct them: one squared
    error per masked node, :math:`\\ell_v = \\frac{1}{F}\\lVert \\mathrm{head}(h_v) - x_v \\rVert^2`."""

    def __init__(self, hidden_channels: int, num_features: int, mask_rate: float = 0.15):
        super().__init__()
        if not 0.0 < mask_rate < 1.0:
            raise ValueError(f"mask_rate={mask_rate}; choose a fraction in (0, 1).")
        self.mask_rate = mask_rate
        self.head = nn.Linear(hidden_channels, num_features)

    def forward(self, encoder: nn.Module, data: Data, h: torch.Tensor | None = None) -> torch.Tensor:
        # ``h`` (the unmasked embeddings other tasks share) is ignored: this task needs its own, masked, pass
        n = data.num_nodes
        masked = torch.randperm(n, device=data.x.device)[: max(1, round(self.mask_rate * n))]  # (k,)
        x = data.x.clone()
        x[masked] = 0.0  # the encoder sees the masked nodes as all-zero
        h = encoder(x, data.edge_index)  # (N, hidden)
        return (self.head(h[masked]) - data.x[masked]).pow(2).mean(dim=1)  # (k,)


class EdgePrediction(nn.Module):
    """Score each edge :math:`\\sigma(h_u^\\top h_v)` against one random pair :math:`(u, v')` of the same graph:
    :math:`\\ell_{uv} = -\\log\\sigma(h_u^\\top h_v) - \\log(1 - \\sigma(h_u^\\top h_{v'}))`, one per edge (at most
    ``max_edges`` edges are drawn per call).

    The negative :math:`v'` is drawn uniformly from :math:`u`'s graph; in a sparse graph it is a non-edge with
    probability :math:`1 - \\bar d / N` (≈ 98% here), which is what Hu et al.'s random negatives assume too.
    """

    def __init__(self, max_edges: int = 512):
        super().__init__()
        if max_edges < 1:
            raise ValueError(f"max_edges={max_edges} must be ≥ 1.")
        self.max_edges = max_edges

    def forward(self, encoder: nn.Module, data: Data, h: torch.Tensor | None = None) -> torch.Tensor:
        h = encoder(data.x, data.edge_index) if h is None else h  # (N, hidden)
        edges = data.edge_index[:, data.edge_index[0] < data.edge_index[1]]  # (2, E/2): each edge once
        if edges.shape[1] > self.max_edges:
            edges = edges[:, torch.randperm(edges.shape[1], device=h.device)[: self.max_edges]]  # (2, E')
        u, v = edges
        if getattr(data, "batch", None) is not None:  # a batch of graphs: v' from u's own graph
            sizes = torch.bincount(data.batch, minlength=data.num_graphs)  # (G,)
            offsets = torch.cumsum(sizes, 0) - sizes  # first node of each graph, (G,)
            graph_of_u = data.batch[u]  # (E',)
            v_negative = offsets[graph_of_u] + (torch.rand(len(u), device=h.device) * sizes[graph_of_u]).long()
        else:
            v_negative = torch.randint(data.num_nodes, (len(u),), device=h.device)  # (E',)
        positive = (h[u] * h[v]).sum(-1)  # h_u^T h_v, (E',)
        negative = (h[u] * h[v_negative]).sum(-1)  # h_u^T h_v', (E',)
        return F.softplus(-positive) + F.softplus(negative)  # −log σ(s⁺) − log(1 − σ(s⁻)), (E',)


def context_ring_index(edge_index: torch.Tensor, num_nodes: int, inner: int = 1, outer: int = 2) -> torch.Tensor:
    """Pairs ``(center, context node)`` with hop distance in ``[inner, outer]``: a (2, M) long tensor.

    Store it as ``data.context_index`` (the name ends in ``index``, so PyG's ``Batch`` shifts it by the node
    offset of each graph, like ``edge_index``); :class:`ContextPrediction` reads it.
    """
    if not 1 <= inner <= outer:
        raise ValueError(f"need 1 ≤ inner ≤ outer (got inner={inner}, outer={outer}).")
    rows, cols = edge_index.cpu().numpy()
    adjacency = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(num_nodes, num_nodes)).tocsr()
    hops = shortest_path(adjacency, directed=False, unweighted=True)  # (N, N), inf where unreachable
    center, context = np.nonzero((hops >= inner) & (hops <= outer))
    return torch.from_numpy(np.stack([center, context])).long()  # (2, M)


class ContextPrediction(nn.Module):
    """Does a node's embedding match the mean embedding of its context ring (nodes ``inner … outer`` hops away)?
    :math:`\\ell_v = -\\log\\sigma(q_v^\\top c_v) - \\log(1 - \\sigma(q_v^\\top c_{\\pi(v)}))`, with
    :math:`q_v = W h_v`, :math:`c_v` the ring mean and :math:`\\pi` a random permutation of the centres."""

    def __init__(self, hidden_channels: int, inner: int = 1, outer: int = 2):
        super().__init__()
        self.inner, self.outer = inner, outer
        self.head = nn.Linear(hidden_channels, hidden_channels, bias=False)

    def forward(self, encoder: nn.Module, data: Data, h: torch.Tensor | None = None) -> torch.Tensor:
        h = encoder(data.x, data.edge_index) if h is None else h  # (N, hidden)
        ring = getattr(data, "context_index", None)
        if ring is None:  # computed on the fly; precompute it with context_ring_index for repeated use
            ring = context_ring_index(data.edge_index, data.num_nodes, self.inner, self.outer).to(h.device)
        if ring.shape[1] == 0:
            raise ValueError("no node has a context ring at this distance; lower `inner`/`outer`.")
        context = scatter(h[ring[1]], ring[0], dim=0, dim_size=data.num_nodes, reduce="mean")  # c_v, (N, hidden)
        centers = ring[0].unique()  # (K,)
        query = self.head(h[centers])  # q_v = W h_v, (K, hidden)
        shuffled = centers[torch.randperm(len(centers), device=h.device)]  # π(v), (K,)
        positive = (query * context[centers]).sum(-1)  # q_v^T c_v, (K,)
        negative = (query * context[shuffled]).sum(-1)  # q_v^T c_π(v), (K,)
        return F.softplus(-positive) + F.softplus(negative)  # (K,)


def self_supervised_tasks(hidden_channels: int, num_features: int, *, mask_rate: float = 0.15,
                          max_edges: int = 512, inner: int = 1, outer: int = 2) -> dict[str, nn.Module]:
    """Hu et al.'s three self-supervised tasks, named as the chapter names them (fresh heads)."""
    return {"attribute_masking": AttributeMasking(hidden_channels, num_features, mask_rate),
            "edge_prediction": EdgePrediction(max_edges),
            "context_prediction": ContextPrediction(hidden_channels, inner, outer)}


# --- the multi-task model ------------------------------------------------------------------------------------


class MultiTaskGNN(nn.Module):
    """One shared encoder and named tasks; ``model(data, task)`` returns that task's per-example losses (n_t,)."""

    def __init__(self, encoder: nn.Module, tasks: Mapping[str, nn.Module], target: str):
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}.")
        for name, task in tasks.items():
            if not isinstance(task, nn.Module):
                raise TypeError(f"task {name!r} must be an nn.Module (e.g. AttributeMasking()), got {type(task).__name__}.")
        if target not in tasks:
            raise ValueError(f"target={target!r} is not among the tasks {sorted(tasks)}; add it to `tasks`.")
        self.encoder = encoder
        self.tasks = nn.ModuleDict(dict(tasks))
        self.target = target

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks.keys())

    def forward(self, data: Data, task: str, h: torch.Tensor | None = None) -> torch.Tensor:
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r}; this model has {self.task_names}.")
        _check_graph(data)
        losses = self.tasks[task](self.encoder, data, h)
        if losses.dim() != 1:
            raise ValueError(f"task {task!r} must return one loss per example (1-D), got shape {tuple(losses.shape)}.")
        return losses

    def losses(self, data: Data, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Per-example losses of several tasks, with one shared encoder pass (attribute masking runs its own)."""
        _check_graph(data)
        h = self.encoder(data.x, data.edge_index)  # (N, hidden), shared by every task that reads the clean graph
        return {name: self(data, name, h) for name in (names or self.task_names)}


def graph_collate(items: list) -> Data:
    """The ``collate`` for :func:`minipeft.core.train`: one graph stays itself, several become a ``Batch``."""
    return items[0] if len(items) == 1 else Batch.from_data_list(items)


def shared_parameters(model: MultiTaskGNN) -> dict[str, torch.Tensor]:
    """The encoder's trainable parameters, keyed by their name in ``model`` (``encoder.…``)."""
    return {f"encoder.{name}": p for name, p in model.encoder.named_parameters() if p.requires_grad}


def gradient_cosines(model: MultiTaskGNN, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:math:`c_t = \\cos(\\nabla_\\theta \\bar{\\mathcal L}_{\\text{target}}, \\nabla_\\theta \\bar{\\mathcal L}_t)`
    over the shared encoder, for every task in ``losses`` (the target's own is 1). Detached scalars.

    The graphs of ``losses`` are kept (``retain_graph=True``) so the caller can still back-propagate through them.
    """
    params = list(shared_parameters(model).values())

    def flat_gradient(loss):
        grads = torch.autograd.grad(loss.mean(), params, retain_graph=True, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])

    target = flat_gradient(losses[model.target])  # (P,)
    cosines = {}
    for name, loss in losses.items():
        if name == model.target:
            cosines[name] = torch.ones((), device=target.device)
        else:
            cosines[name] = F.cosine_similarity(target, flat_gradient(loss), dim=0).detach()  # c_t, scalar
    return cosines


# --- the objectives ------------------------------------------------------------------------------------------


class FixedWeights:
    """``loss_fn`` for :func:`minipeft.core.train`: :math:`\\sum_t \\lambda_t \\bar{\\mathcal L}_t` with fixed
    :math:`\\lambda_t`. Pre-training is ``{aux: 1, ...}``, fine-tuning ``{target: 1}``, the fixed-weight baseline
    ``{target: 1, aux: λ, ...}``."""

    def __init__(self, weights: Mapping[str, float]):
        if not weights:
            raise ValueError("give at least one task weight, e.g. FixedWeights({'target': 1.0}).")
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"task weights must be ≥ 0; got {dict(weights)}.")
        self.weights = dict(weights)

    def __call__(self, model: MultiTaskGNN, data: Data) -> torch.Tensor:
        unknown = sorted(set(self.weights) - set(model.task_names))
        if unknown:
            raise ValueError(f"weights name unknown tasks {unknown}; the model has {model.task_names}.")
        losses = model.losses(data, [name for name, w in self.weights.items() if w > 0])
        return sum(self.weights[name] * loss.mean() for name, loss in losses.items())  # Σ_t λ_t L̄_t


class WeightingNetwork(nn.Module):
    """:math:`\\mathcal V_\\psi(\\ell, e_t, c_t) = \\sigma(\\mathrm{MLP}([\\ell; e_t; c_t]))`, one weight per example.

    The paper's ``Weight`` module: Linear → ReLU → Linear → sigmoid, hidden width 100.
    """

    def __init__(self, num_tasks: int, task_dim: int = 8, hidden: int = 100):
        super().__init__()
        if num_tasks < 1 or task_dim < 1 or hidden < 1:
            raise ValueError(f"num_tasks, task_dim and hidden must be ≥ 1 (got {num_tasks}, {task_dim}, {hidden}).")
        self.task_embedding = nn.Embedding(num_tasks, task_dim)  # e_t
        self.mlp = nn.Sequential(nn.Linear(1 + task_dim + 1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, losses: torch.Tensor, task_id: int, cosine: torch.Tensor) -> torch.Tensor:
        if losses.dim() != 1:
            raise ValueError(f"losses must be one per example (1-D), got shape {tuple(losses.shape)}.")
        if not 0 <= task_id < self.task_embedding.num_embeddings:
            raise ValueError(f"task_id={task_id} is outside [0, {self.task_embedding.num_embeddings}).")
        n = losses.shape[0]
        embedding = self.task_embedding.weight[task_id].expand(n, -1)  # e_t, (n, task_dim)
        features = torch.cat([losses.detach().unsqueeze(1), embedding,
                              cosine.detach().reshape(1, 1).expand(n, 1)], dim=1)  # [ℓ; e_t; c_t], (n, task_dim + 2)
        return torch.sigmoid(self.mlp(features)).squeeze(1)  # v_{t,i} ∈ (0, 1), (n,)


class AuxTS:
    """``loss_fn`` for :func:`minipeft.core.train` that runs AUX-TS's meta step (Eqs. 6, 7, 9) on ``weighting``
    and returns the re-weighted loss of Eq. 8 for the model's own step.

    Args:
        weighting: the :class:`WeightingNetwork` (kept *outside* the model, so the model's optimiser never sees it).
        lookahead_lr: :math:`\\alpha`, the step size of the differentiable SGD look-ahead.
        meta_lr: :math:`\\beta`, Adam's learning rate for :math:`\\psi` (the paper: 5e-3 in code, 1e-3 in README).
        normalize: rescale the weights so that the tasks' mean weights sum to the number of tasks,
            :math:`v_{t,i} \\leftarrow v_{t,i} \\cdot T / \\sum_{t'} \\bar v_{t'}` (not in the paper; the batch
            normalisation of learning-to-reweight, Ren et al. 2018). Without it the meta-objective can shrink *every*
            weight, the target's included, once the target's labelled examples are fit: a smaller step is then what
            lowers the held-out fold's loss. With it, weight can only move between tasks.

    ``history`` holds, per call, the mean weight and the cosine of every task and the meta loss: the chapter
    plots them.
    """

    def __init__(self, weighting: WeightingNetwork, *, lookahead_lr: float = 0.1, meta_lr: float = 1e-3,
                 normalize: bool = False):
        if not isinstance(weighting, WeightingNetwork):
            raise TypeError(f"weighting must be a WeightingNetwork, got {type(weighting).__name__}.")
        if lookahead_lr <= 0 or meta_lr <= 0:
            raise ValueError(f"lookahead_lr and meta_lr must be positive (got {lookahead_lr}, {meta_lr}).")
        self.weighting = weighting
        self.lookahead_lr = lookahead_lr
        self.normalize = normalize
        self.optimizer = torch.optim.Adam(weighting.parameters(), lr=meta_lr)
        self.history: dict[str, list] = {"weight": [], "cosine": [], "meta_loss": []}
        self.calls = 0

    def weights(self, model: MultiTaskGNN, losses, cosines) -> dict[str, torch.Tensor]:
        """:math:`v_{t,i}` for every task's examples (differentiable in :math:`\\psi`)."""
        weights = {name: self.weighting(losses[name], model.task_names.index(name), cosines[name]) for name in losses}
        if self.normalize:
            total = sum(w.mean() for w in weights.values())  # Σ_t v̄_t
            weights = {name: w * len(weights) / total for name, w in weights.items()}  # v · T / Σ_t v̄_t
        return weights

    def meta_loss(self, model: MultiTaskGNN, data: Data, losses, cosines) -> torch.Tensor:
        """Eqs. 6–7: the target loss on fold B after one differentiable SGD step on the weighted loss (fold A).

        A scalar that depends on :math:`\\psi` through :math:`\\hat\\theta(\\psi)`; ``losses`` keep their graphs.
        """
        if len(self.weighting.task_embedding.weight) < len(model.task_names):
            raise ValueError(f"the weighting network knows {len(self.weighting.task_embedding.weight)} tasks but the "
                             f"model has {len(model.task_names)}; build WeightingNetwork(num_tasks={len(model.task_names)}).")
        target_losses = losses[model.target]
        n = target_losses.shape[0]
        if n < 2:
            raise ValueError("the meta step splits the target's examples into two folds; give it at least 2.")
        fold_a = (torch.arange(n, device=target_losses.device) + self.calls) % 2 == 0  # alternates between calls
        params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        weights = self.weights(model, losses, cosines)
        inner = {name: (weights[name] * losses[name]) for name in losses}
        inner[model.target] = inner[model.target][fold_a]  # the look-ahead sees fold A of the target only
        weighted = sum(term.mean() for term in inner.values())  # L_w(θ; ψ) = Σ_t mean_i v_{t,i} ℓ_{t,i}
        grads = torch.autograd.grad(weighted, list(params.values()), create_graph=True, retain_graph=True,
                                    allow_unused=True)
        lookahead = {name: p if g is None else p - self.lookahead_lr * g  # θ̂ = θ − α ∇_θ L_w   (Eq. 6)
                     for (name, p), g in zip(params.items(), grads)}
        after = functional_call(model, lookahead, (data, model.target))  # ℓ_target(θ̂), (n,)
        return after[~fold_a].mean()  # L_meta(ψ): target loss on fold B   (Eq. 7)

    def meta_gradient_step(self, model: MultiTaskGNN, data: Data, losses, cosines) -> torch.Tensor:
        """Eqs. 6, 7, 9: the meta loss, its gradient with respect to ψ, and one Adam step on ψ."""
        meta_loss = self.meta_loss(model, data, losses, cosines)
        self.optimizer.zero_grad(set_to_none=True)
        meta_loss.backward(inputs=list(self.weighting.parameters()))  # ∇_ψ L_meta, through θ̂(ψ)
        self.optimizer.step()  # ψ ← ψ − β ∇_ψ L_meta   (Eq. 9, with Adam)
        return meta_loss.detach()

    def __call__(self, model: MultiTaskGNN, data: Data) -> torch.Tensor:
        losses = model.losses(data)  # ℓ_{t,i}(θ) for every task
        cosines = gradient_cosines(model, losses)
        meta_loss = self.meta_gradient_step(model, data, losses, cosines)
        with torch.no_grad():
            weights = self.weights(model, losses, cosines)  # v with the updated ψ   (Eq. 8)
        self.calls += 1
        self.history["weight"].append({name: float(w.mean()) for name, w in weights.items()})
        self.history["cosine"].append({name: float(c) for name, c in cosines.items()})
        self.history["meta_loss"].append(float(meta_loss))
        return sum((weights[name] * losses[name]).mean() for name in losses)  # L_w(θ; ψ_new), for θ's step


# --- evaluation ----------------------------------------------------------------------------------------------


@torch.no_grad()
def accuracy(model: MultiTaskGNN, data: Data, index: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> float:
    """Accuracy of the target task: on nodes ``index`` with ``labels`` (node tasks) or on every graph (graph tasks)."""
    task = model.tasks[model.target]
    was_training = model.training
    model.eval()
    logits = task.logits(model.encoder, data)  # (N, C) or (G, C)
    model.train(was_training)
    if index is not None:
        logits = logits[index]
    truth = data.y.view(-1) if labels is None else labels
    if logits.shape[0] != truth.shape[0]:
        raise ValueError(f"{logits.shape[0]} predictions but {truth.shape[0]} labels; pass the matching `index`.")
    return float((logits.argmax(-1) == truth).float().mean())
