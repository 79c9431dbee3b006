"""Part V — transfer learning: the survey's shallow and deep baselines (``shallow``, ``deep``; chapter 20) and
auxiliary-task transfer on graph neural networks with meta-learned weights (``graph``, chapter 21; it needs
torch-geometric, so import it on its own: ``from minipeft.transfer import graph``)."""

from .deep import (ConditionalDomainAdversarialLoss, DeepCORALLoss, DomainAdversarialLoss, DomainDiscriminator,
                   DomainPairs, GradientReversal, GradientReversalFunction, MultipleKernelMMD, dann_lambda)
from .shallow import (CORAL, JDA, KMM, TCA, TrAdaBoost, class_mmd_matrix, mmd_matrix, proxy_a_distance,
                      split_domains, stack_domains, tradaboost_source_beta)

__all__ = ["CORAL", "JDA", "KMM", "TCA", "ConditionalDomainAdversarialLoss", "DeepCORALLoss", "DomainAdversarialLoss",
           "DomainDiscriminator", "DomainPairs", "GradientReversal", "GradientReversalFunction", "MultipleKernelMMD",
           "TrAdaBoost", "class_mmd_matrix", "dann_lambda", "mmd_matrix", "proxy_a_distance", "split_domains",
           "stack_domains", "tradaboost_source_beta"]
