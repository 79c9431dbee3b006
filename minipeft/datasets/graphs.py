r"""Graphs for the auxiliary-task chapter: a homophily-controlled planted-partition graph and RDKit's NCI molecules.

**A graph whose homophily is a knob.** :func:`homophily_graph` draws a stochastic block model (SBM) with
:math:`C` classes of :math:`m` nodes each. Two nodes of the same class are joined with probability
:math:`p_{\text{in}}`, two nodes of different classes with :math:`p_{\text{out}}`. A node then expects
:math:`p_{\text{in}}(m - 1)` neighbours of its own class and :math:`p_{\text{out}}(C - 1)m` of the others, so for
an average degree :math:`\bar d` and an *edge homophily* :math:`h` (the fraction of edges that join two nodes of
the same class)

$$p_{\text{in}} = \frac{h\,\bar d}{m - 1}, \qquad p_{\text{out}} = \frac{(1 - h)\,\bar d}{(C - 1)\,m}.$$

:math:`h = 1/C` is a graph whose edges ignore the classes; :math:`h \to 1` puts almost every edge inside a class
(message passing averages a node with its own class: it denoises), :math:`h \to 0` almost every edge across
classes (message passing mixes classes: it hurts a GNN that assumes homophily). Node features are weak
class-dependent Gaussians, :math:`x_v = \mu_{y_v} + \varepsilon_v` with :math:`\varepsilon_v \sim \mathcal N(0, I)`,
so that neither the features nor the structure alone solve the task.

This is the graph PyG's ``RandomPartitionGraphDataset`` builds; that class (and ``StochasticBlockModelDataset``)
fails with this torch/NumPy stack (``AttributeError: 'Tensor' object has no attribute 'copy'``), so we draw the
graph with ``networkx.stochastic_block_model``, which takes a seed.

**Real molecules.** :func:`load_nci_molecules` reads the 4,999 NCI molecules that ship inside the RDKit wheel
(``rdkit/Data/NCI/first_5K.smi``, with their topological polar surface area in ``first_5k.tpsa.csv``; BSD-3) and
turns each SMILES into a graph with ``torch_geometric.utils.from_smiles``. The label is whether the molecule's TPSA
is above the median of the loaded set (a balanced binary task). RDKit is optional: without it the function raises
an ``ImportError`` that says how to install it.

Chapter: Part V, "Auxiliary tasks for GNNs" (``21_gnn_auxiliary_transfer``).
"""

from __future__ import annotations

import csv
from importlib import util as importlib_util
from pathlib import Path

import networkx as nx
import torch
from torch_geometric.data import Data
from torch_geometric.utils import to_undirected

# Atom types one-hot encoded for the molecules (the rest share the last slot, "other").
ELEMENTS = ("C", "N", "O", "S", "F", "Cl", "Br", "P", "I", "other")
_ATOMIC_NUMBERS = {6: 0, 7: 1, 8: 2, 16: 3, 9: 4, 17: 5, 35: 6, 15: 7, 53: 8}


def homophily_graph(num_classes: int = 4, nodes_per_class: int = 100, homophily: float = 0.8,
                    average_degree: float = 6.0, num_features: int = 16, feature_signal: float = 1.0,
                    seed: int = 0) -> Data:
    """Draw an SBM node-classification graph with a chosen edge homophily (see the module docstring).

    Returns a ``Data`` with ``x`` (N, num_features) float, ``y`` (N,) long, ``edge_index`` (2, E) (undirected:
    both directions stored) and ``homophily`` (the target :math:`h`, a float). Class ``c`` holds nodes
    ``c*m … (c+1)*m - 1``. The same ``seed`` gives the same graph and features.
    """
    if not isinstance(num_classes, int) or not isinstance(nodes_per_class, int):
        raise TypeError("num_classes and nodes_per_class must be integers.")
    if num_classes < 2 or nodes_per_class < 2:
        raise ValueError(f"need at least 2 classes of 2 nodes (got {num_classes} classes of {nodes_per_class}).")
    if not 0.0 <= homophily <= 1.0:
        raise ValueError(f"homophily={homophily} is a fraction of edges; choose a value in [0, 1].")
    if average_degree <= 0:
        raise ValueError(f"average_degree={average_degree} must be positive.")
    m, c = nodes_per_class, num_classes
    p_in = homophily * average_degree / (m - 1)  # p_in = h d̄ / (m − 1)
    p_out = (1.0 - homophily) * average_degree / ((c - 1) * m)  # p_out = (1 − h) d̄ / ((C − 1) m)
    if p_in > 1.0 or p_out > 1.0:
        raise ValueError(f"average_degree={average_degree} needs edge probabilities above 1 (p_in={p_in:.2f}, "
                         f"p_out={p_out:.2f}); lower the degree or use more nodes per class.")
    probabilities = [[p_in if a == b else p_out for b in range(c)] for a in range(c)]
    graph = nx.stochastic_block_model([m] * c, probabilities, seed=seed)
    edges = torch.tensor(list(graph.edges()), dtype=torch.long).reshape(-1, 2).t()  # (2, E/2), one direction
    edge_index = to_undirected(edges, num_nodes=m * c)  # (2, E), both directions
    y = torch.arange(c).repeat_interleave(m)  # (N,)
    generator = torch.Generator().manual_seed(seed + 7919)
    directions = torch.randn(c, num_features, generator=generator)  # (C, F)
    means = feature_signal * directions / directions.norm(dim=1, keepdim=True)  # μ_c: norm = feature_signal
    x = means[y] + torch.randn(m * c, num_features, generator=generator)  # x_v = μ_{y_v} + ε_v, (N, F)
    return Data(x=x, y=y, edge_index=edge_index, homophily=float(homophily))


def edge_homophily(edge_index: torch.Tensor, y: torch.Tensor) -> float:
    """The fraction of edges whose two ends have the same label: :math:`|\\{(u,v): y_u = y_v\\}| / |E|`."""
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape (2, E); got {tuple(edge_index.shape)}.")
    if edge_index.shape[1] == 0:
        raise ValueError("the graph has no edges, so its edge homophily is undefined.")
    return float((y[edge_index[0]] == y[edge_index[1]]).float().mean())


def few_label_split(y: torch.Tensor, per_class: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_index, test_index)``: ``per_class`` labelled nodes of each class, every other node for testing."""
    if per_class < 1:
        raise ValueError(f"per_class={per_class}; label at least one node per class.")
    generator = torch.Generator().manual_seed(seed)
    train = []
    for label in y.unique():
        members = (y == label).nonzero().flatten()
        if len(members) <= per_class:
            raise ValueError(f"class {int(label)} has {len(members)} nodes, too few to label {per_class} and test the rest.")
        train.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    train_index = torch.cat(train).sort().values
    test_mask = torch.ones(len(y), dtype=torch.bool)
    test_mask[train_index] = False
    return train_index, test_mask.nonzero().flatten()


def rdkit_available() -> bool:
    """Whether RDKit (the optional molecule dependency) is installed."""
    return importlib_util.find_spec("rdkit") is not None


def _nci_files() -> tuple[Path, Path]:
    if not rdkit_available():
        raise ImportError("the NCI molecules ship inside the RDKit wheel; install it with `pip install rdkit` "
                          "(one wheel, BSD-3) and run again.")
    import rdkit

    folder = Path(rdkit.__file__).parent / "Data" / "NCI"
    smiles, tpsa = folder / "first_5K.smi", folder / "first_5k.tpsa.csv"
    if not smiles.exists() or not tpsa.exists():
        raise FileNotFoundError(f"this RDKit install has no {smiles.name} / {tpsa.name} in {folder}; "
                                "install the PyPI wheel (`pip install rdkit`), which ships them.")
    return smiles, tpsa


def _atom_features(x_int: torch.Tensor) -> torch.Tensor:
    """``from_smiles``' 9 integer columns → 16 float features: element one-hot (10), degree/4, charge, H/4,
    aromatic, in ring, and a constant 1 (so a masked atom, all zeros, differs from every real one)."""
    element = torch.tensor([_ATOMIC_NUMBERS.get(int(z), len(ELEMENTS) - 1) for z in x_int[:, 0]])
    one_hot = torch.nn.functional.one_hot(element, len(ELEMENTS)).float()  # (N, 10)
    extra = torch.stack([x_int[:, 2] / 4.0, x_int[:, 3].float(), x_int[:, 4] / 4.0,
                         x_int[:, 7].float(), x_int[:, 8].float(), torch.ones(len(x_int))], dim=1)  # (N, 6)
    return torch.cat([one_hot, extra], dim=1)  # (N, 16)


def load_nci_molecules(n: int = 1000, seed: int = 0, max_atoms: int = 40) -> list[Data]:
    """``n`` NCI molecules (drawn with ``seed``) as graphs with ``y`` = 1 if TPSA is above the median, else 0.

    Each ``Data`` has ``x`` (atoms, 16) float (see ``_atom_features``), ``edge_index`` (2, 2·bonds), ``y`` (1,)
    long, ``tpsa`` (1,) float and ``smiles``. Molecules RDKit cannot parse, with no bonds, or with more than
    ``max_atoms`` atoms are skipped.
    """
    if n < 2:
        raise ValueError(f"n={n}; load at least 2 molecules.")
    from torch_geometric.utils import from_smiles
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")  # a handful of the 4,999 SMILES are invalid; skip them quietly
    smiles_file, tpsa_file = _nci_files()
    smiles = [line.split()[0] for line in smiles_file.read_text().splitlines() if line.strip()]
    with tpsa_file.open() as handle:
        rows = [row for row in csv.reader(handle) if row and not row[0].startswith("#")]
    tpsa = {}
    for row in rows:
        try:
            tpsa[row[0]] = float(row[-1])
        except ValueError:
            continue  # the header line
    order = torch.randperm(len(smiles), generator=torch.Generator().manual_seed(seed)).tolist()
    molecules = []
    for index in order:
        if len(molecules) == n:
            break
        if smiles[index] not in tpsa:
            continue
        graph = from_smiles(smiles[index])
        if graph.num_nodes < 2 or graph.num_nodes > max_atoms or graph.edge_index.shape[1] == 0:
            continue
        molecules.append(Data(x=_atom_features(graph.x), edge_index=graph.edge_index,
                              tpsa=torch.tensor([tpsa[smiles[index]]]), smiles=smiles[index]))
    if len(molecules) < n:
        raise ValueError(f"only {len(molecules)} usable molecules (asked for {n}); ask for fewer or raise max_atoms.")
    median = torch.cat([m.tpsa for m in molecules]).median()
    for molecule in molecules:
        molecule.y = (molecule.tpsa > median).long()  # (1,)
    return molecules
