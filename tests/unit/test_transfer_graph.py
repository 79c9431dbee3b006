"""AUX-TS on torch-geometric (minipeft.transfer.graph) and the chapter's graph data (minipeft.datasets.graphs)."""

import copy

import networkx as nx
import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data

from minipeft.core import TrainConfig, train
from minipeft.datasets.graphs import edge_homophily, few_label_split, homophily_graph, load_nci_molecules, rdkit_available
from minipeft.transfer import graph as G

HIDDEN = 16


def small_graph(seed=0):
    return homophily_graph(num_classes=3, nodes_per_class=40, homophily=0.8, average_degree=4.0, num_features=8,
                           seed=seed)


def label_model(data, train_index, seed=0, shuffle_seed=0):
    """Target + a duplicate of it + a label-shuffled copy, the two copies borrowing the target's head."""
    torch.manual_seed(seed)
    labels = data.y[train_index]
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(shuffle_seed))]
    target = G.NodeClassification(HIDDEN, 3, train_index, labels)
    tasks = {"target": target,
             "duplicate": G.NodeClassification(HIDDEN, 3, train_index, labels, head=target.head),
             "shuffled": G.NodeClassification(HIDDEN, 3, train_index, shuffled, head=target.head)}
    return G.MultiTaskGNN(G.GNNEncoder(data.num_features, HIDDEN, 2), tasks, "target")


def ssl_model(data, train_index, conv="gin"):
    torch.manual_seed(0)
    tasks = {"target": G.NodeClassification(HIDDEN, 3, train_index, data.y[train_index]),
             "attribute_masking": G.AttributeMasking(HIDDEN, data.num_features),
             "edge_prediction": G.EdgePrediction(max_edges=50),
             "context_prediction": G.ContextPrediction(HIDDEN)}
    return G.MultiTaskGNN(G.GNNEncoder(data.num_features, HIDDEN, 2, conv=conv), tasks, "target")


# --- data -----------------------------------------------------------------------------------------------------


def test_homophily_graph_hits_the_requested_homophily_and_is_deterministic():
    for h in (0.1, 0.5, 0.9):
        data = homophily_graph(num_classes=4, nodes_per_class=100, homophily=h, average_degree=6.0, seed=1)
        # measured edge homophily = the fraction of edges inside a class, counted by hand
        same = sum(int(data.y[u] == data.y[v]) for u, v in data.edge_index.t().tolist())
        assert edge_homophily(data.edge_index, data.y) == pytest.approx(same / data.edge_index.shape[1])
        assert abs(same / data.edge_index.shape[1] - h) < 0.06
        assert abs(data.edge_index.shape[1] / data.num_nodes - 6.0) < 0.8  # average degree
    a, b = homophily_graph(seed=3), homophily_graph(seed=3)
    assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.x, b.x)
    assert not torch.equal(a.edge_index, homophily_graph(seed=4).edge_index)
    assert torch.bincount(a.y).tolist() == [100] * 4 and a.x.shape == (400, 16)
    # undirected: every edge is stored in both directions
    pairs = set(map(tuple, a.edge_index.t().tolist()))
    assert all((v, u) in pairs for u, v in pairs)


def test_graph_data_errors():
    with pytest.raises(ValueError, match="homophily=1.5"):
        homophily_graph(homophily=1.5)
    with pytest.raises(ValueError, match="lower the degree"):
        homophily_graph(nodes_per_class=5, average_degree=50.0)
    with pytest.raises(TypeError, match="integers"):
        homophily_graph(num_classes=2.5)
    with pytest.raises(ValueError, match="shape \\(2, E\\)"):
        edge_homophily(torch.zeros(3, 4, dtype=torch.long), torch.zeros(4))
    with pytest.raises(ValueError, match="too few"):
        few_label_split(torch.tensor([0, 0, 1, 1]), per_class=2)


def test_few_label_split():
    y = small_graph().y
    train_index, test_index = few_label_split(y, per_class=5, seed=2)
    assert torch.bincount(y[train_index]).tolist() == [5, 5, 5]
    assert not set(train_index.tolist()) & set(test_index.tolist())
    assert len(train_index) + len(test_index) == len(y)
    assert torch.equal(train_index, few_label_split(y, per_class=5, seed=2)[0])


def test_context_ring_matches_networkx_hop_distances():
    data = small_graph()
    ring = G.context_ring_index(data.edge_index, data.num_nodes, inner=1, outer=2)
    graph = nx.Graph(data.edge_index.t().tolist())
    graph.add_nodes_from(range(data.num_nodes))
    expected = {(u, v) for u in graph for v, d in nx.single_source_shortest_path_length(graph, u, cutoff=2).items()
                if 1 <= d <= 2}
    assert set(map(tuple, ring.t().tolist())) == expected
    with pytest.raises(ValueError, match="inner ≤ outer"):
        G.context_ring_index(data.edge_index, data.num_nodes, inner=3, outer=2)


@pytest.mark.skipif(not rdkit_available(), reason="RDKit (the NCI molecules) is not installed")
def test_nci_molecules_are_real_graphs_with_balanced_tpsa_labels():
    molecules = load_nci_molecules(40, seed=0)
    assert len(molecules) == 40
    labels = torch.cat([m.y for m in molecules])
    assert labels.sum() == 20 or abs(int(labels.sum()) - 20) <= 2  # above / below the median (ties go below)
    tpsa = torch.cat([m.tpsa for m in molecules])
    assert torch.all((tpsa > tpsa.median()).long() == labels)
    for m in molecules:
        assert m.x.shape[1] == 16 and m.edge_index.max() < m.num_nodes
        assert torch.all(m.x[:, :10].sum(1) == 1)  # exactly one element slot per atom


# --- the tasks and the model ------------------------------------------------------------------------------------


@pytest.mark.parametrize("conv", ["gin", "gcn"])
def test_task_loss_shapes(conv):
    data = small_graph()
    data.context_index = G.context_ring_index(data.edge_index, data.num_nodes)
    train_index, _ = few_label_split(data.y, 4)
    model = ssl_model(data, train_index, conv)
    assert model.encoder(data.x, data.edge_index).shape == (data.num_nodes, HIDDEN)
    losses = model.losses(data)
    assert list(losses) == model.task_names
    assert losses["target"].shape == (12,)
    assert losses["attribute_masking"].shape == (round(0.15 * data.num_nodes),)
    assert losses["edge_prediction"].shape == (50,)
    assert losses["context_prediction"].shape == (len(data.context_index[0].unique()),)
    assert all(loss.dim() == 1 and torch.all(loss >= 0) for loss in losses.values())
    # one shared encoder pass gives the same target losses as the task's own pass
    assert torch.allclose(losses["target"], model(data, "target"))


def test_context_index_is_shifted_when_graphs_are_batched_and_graph_tasks_work():
    graphs = []
    for seed in range(3):
        g = homophily_graph(num_classes=2, nodes_per_class=6, homophily=0.7, average_degree=2.5, num_features=4,
                            seed=seed)
        graphs.append(Data(x=g.x, edge_index=g.edge_index, y=torch.tensor([seed % 2]),
                           context_index=G.context_ring_index(g.edge_index, g.num_nodes)))
    batch = G.graph_collate(graphs)
    assert isinstance(batch, Batch) and G.graph_collate(graphs[:1]) is graphs[0]
    offsets = torch.tensor([0, 12, 24])
    expected = torch.cat([g.context_index + o for g, o in zip(graphs, offsets)], dim=1)
    assert torch.equal(batch.context_index, expected)
    torch.manual_seed(0)
    model = G.MultiTaskGNN(G.GNNEncoder(4, HIDDEN), {"target": G.GraphClassification(HIDDEN, 2),
                                                     "edge_prediction": G.EdgePrediction(),
                                                     "context_prediction": G.ContextPrediction(HIDDEN)}, "target")
    losses = model.losses(batch)
    assert losses["target"].shape == (3,)
    assert 0.0 <= G.accuracy(model, batch) <= 1.0


def test_weighting_network_shapes_and_range():
    net = G.WeightingNetwork(num_tasks=4, task_dim=3, hidden=7)
    v = net(torch.rand(9) * 5, task_id=2, cosine=torch.tensor(-0.3))
    assert v.shape == (9,) and torch.all((v > 0) & (v < 1))
    # the same loss value in two tasks gets two different weights: the task embedding is an input
    assert not torch.allclose(net(torch.ones(1), 0, torch.tensor(0.0)), net(torch.ones(1), 1, torch.tensor(0.0)))


def test_gradient_cosines_against_a_hand_computation():
    data = small_graph()
    train_index, _ = few_label_split(data.y, 5)
    model = label_model(data, train_index)
    model.tasks["own_head"] = G.NodeClassification(HIDDEN, 3, train_index, data.y[train_index])
    losses = model.losses(data)
    cosines = G.gradient_cosines(model, losses)
    assert cosines["target"] == 1.0 and cosines["duplicate"] == pytest.approx(1.0, abs=1e-5)
    params = list(model.encoder.parameters())
    flat = [torch.cat([g.flatten() for g in torch.autograd.grad(losses[name].mean(), params, retain_graph=True)])
            for name in ("target", "own_head", "shuffled")]
    for name, other in (("own_head", flat[1]), ("shuffled", flat[2])):
        by_hand = (flat[0] @ other) / (flat[0].norm() * other.norm())
        assert float(cosines[name]) == pytest.approx(float(by_hand), abs=1e-5)
    assert -1.0 <= float(cosines["shuffled"]) < 0.999


# --- the meta step ------------------------------------------------------------------------------------------


def test_meta_gradient_reaches_the_weighting_network():
    data = small_graph()
    train_index, _ = few_label_split(data.y, 5)
    model = ssl_model(data, train_index)
    objective = G.AuxTS(G.WeightingNetwork(len(model.task_names)), lookahead_lr=0.1)
    losses = model.losses(data)
    objective.meta_gradient_step(model, data, losses, G.gradient_cosines(model, losses))
    grads = [p.grad for p in objective.weighting.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # the model's own parameters receive nothing from the meta step
    assert all(p.grad is None for p in model.parameters())


def test_lookahead_equals_one_sgd_step_of_a_copy_and_meta_gradient_matches_finite_differences():
    torch.set_default_dtype(torch.float64)
    try:
        data = small_graph()
        data.x = data.x.double()
        train_index, _ = few_label_split(data.y, 5)
        model = label_model(data, train_index)
        objective = G.AuxTS(G.WeightingNetwork(3), lookahead_lr=0.2)
        losses = model.losses(data)
        cosines = G.gradient_cosines(model, losses)
        meta = objective.meta_loss(model, data, losses, cosines)

        # hand computation: copy the model, take one SGD step on Σ_t mean(v ℓ) with the target's fold A, evaluate
        n = len(train_index)
        fold_a = torch.arange(n) % 2 == 0
        with torch.no_grad():
            v = objective.weights(model, losses, cosines)
        twin = copy.deepcopy(model)
        twin_losses = twin.losses(data)
        inner = sum((v[name] * twin_losses[name])[fold_a if name == "target" else slice(None)].mean()
                    for name in twin_losses)
        sgd = torch.optim.SGD(twin.parameters(), lr=0.2)
        sgd.zero_grad()
        inner.backward()
        sgd.step()
        with torch.no_grad():
            expected = twin(data, "target")[~fold_a].mean()
        assert meta.item() == pytest.approx(expected.item(), rel=1e-9)

        # ∇_ψ L_meta (autograd through θ̂(ψ)) against a central difference on one weight of ψ
        bias = objective.weighting.mlp[2].bias
        (analytic,) = torch.autograd.grad(meta, bias)
        eps = 1e-5

        def meta_at(delta):
            with torch.no_grad():
                bias.add_(delta)
            fresh = model.losses(data)
            value = objective.meta_loss(model, data, fresh, cosines).item()
            with torch.no_grad():
                bias.sub_(delta)
            return value

        numeric = (meta_at(eps) - meta_at(-eps)) / (2 * eps)
        assert float(analytic[0]) == pytest.approx(numeric, rel=1e-4, abs=1e-9)
        assert abs(numeric) > 0
    finally:
        torch.set_default_dtype(torch.float32)


def test_duplicate_task_gains_weight_and_shuffled_task_loses_it():
    data = small_graph()
    train_index, _ = few_label_split(data.y, 10)
    model = label_model(data, train_index, seed=0, shuffle_seed=0)
    objective = G.AuxTS(G.WeightingNetwork(3), lookahead_lr=0.1, meta_lr=3e-3)
    config = TrainConfig(steps=30, lr=3e-3, schedule="constant", device="cpu", progress=False, seed=0)
    train(model, [data], objective, config, collate=G.graph_collate)
    weights = objective.history["weight"]
    first = {name: sum(w[name] for w in weights[:3]) / 3 for name in weights[0]}
    last = {name: sum(w[name] for w in weights[-3:]) / 3 for name in weights[0]}
    assert last["duplicate"] > first["duplicate"] + 0.05
    assert last["shuffled"] < first["shuffled"] - 0.05
    assert last["duplicate"] > last["shuffled"] + 0.2
    assert len(weights) == len(objective.history["cosine"]) == len(objective.history["meta_loss"]) == 30


def test_fixed_weights_is_the_weighted_sum_of_mean_losses():
    data = small_graph()
    train_index, _ = few_label_split(data.y, 5)
    model = label_model(data, train_index)
    losses = model.losses(data)
    total = G.FixedWeights({"target": 1.0, "shuffled": 0.5})(model, data)
    assert float(total) == pytest.approx(float(losses["target"].mean() + 0.5 * losses["shuffled"].mean()), rel=1e-6)


# --- bad inputs -------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    data = small_graph()
    train_index, _ = few_label_split(data.y, 5)
    encoder = G.GNNEncoder(8, HIDDEN)
    target = G.NodeClassification(HIDDEN, 3, train_index, data.y[train_index])
    with pytest.raises(ValueError, match="'gat'"):
        G.GNNEncoder(8, HIDDEN, conv="gat")
    with pytest.raises(ValueError, match="not among the tasks"):
        G.MultiTaskGNN(encoder, {"target": target}, target="main")
    with pytest.raises(TypeError, match="must be an nn.Module"):
        G.MultiTaskGNN(encoder, {"target": target, "bad": lambda e, d: 0}, target="target")
    model = G.MultiTaskGNN(encoder, {"target": target}, target="target")
    with pytest.raises(ValueError, match="unknown task 'edges'"):
        model(data, "edges")
    with pytest.raises(TypeError, match="Data or Batch"):
        model({"x": data.x}, "target")
    with pytest.raises(ValueError, match="node features"):
        model(Data(edge_index=data.edge_index, num_nodes=3), "target")
    with pytest.raises(ValueError, match="same length"):
        G.NodeClassification(HIDDEN, 3, train_index, data.y[:3])
    with pytest.raises(ValueError, match="labels must lie in"):
        G.NodeClassification(HIDDEN, 2, train_index, data.y[train_index])
    with pytest.raises(ValueError, match="needs 16 → 3"):
        G.NodeClassification(HIDDEN, 3, train_index, data.y[train_index], head=nn.Linear(HIDDEN, 5))
    with pytest.raises(ValueError, match="mask_rate"):
        G.AttributeMasking(HIDDEN, 8, mask_rate=1.5)
    with pytest.raises(ValueError, match="1-D"):
        G.WeightingNetwork(2)(torch.ones(3, 2), 0, torch.tensor(0.0))
    with pytest.raises(ValueError, match="task_id=5"):
        G.WeightingNetwork(2)(torch.ones(3), 5, torch.tensor(0.0))
    with pytest.raises(TypeError, match="WeightingNetwork"):
        G.AuxTS(nn.Linear(3, 1))
    with pytest.raises(ValueError, match="positive"):
        G.AuxTS(G.WeightingNetwork(1), lookahead_lr=0.0)
    with pytest.raises(ValueError, match="unknown tasks"):
        G.FixedWeights({"edge_prediction": 1.0})(model, data)
    with pytest.raises(ValueError, match="≥ 0"):
        G.FixedWeights({"target": -1.0})
    objective = G.AuxTS(G.WeightingNetwork(1))
    two_tasks = label_model(data, train_index)
    with pytest.raises(ValueError, match="num_tasks=3"):
        objective(two_tasks, data)


def test_normalised_weights_keep_the_total_mass():
    data = small_graph()
    train_index, _ = few_label_split(data.y, 5)
    model = label_model(data, train_index)
    losses = model.losses(data)
    cosines = G.gradient_cosines(model, losses)
    plain = G.AuxTS(G.WeightingNetwork(3))
    normalised = G.AuxTS(plain.weighting, normalize=True)
    raw, scaled = plain.weights(model, losses, cosines), normalised.weights(model, losses, cosines)
    assert float(sum(w.mean() for w in scaled.values())) == pytest.approx(3.0, rel=1e-6)
    ratio = float(scaled["target"][0] / raw["target"][0])  # one factor for every example of every task
    for name in raw:
        assert torch.allclose(scaled[name], raw[name] * ratio, rtol=1e-5)
