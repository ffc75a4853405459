"""The theory papers as measurements on a model (DESIGN.md, ``analysis/``).

- :mod:`~tokenwise.analysis.directed_information`: nats each answer token takes from a
  context, ``log p(y_t | c, q, y_<t) - log p(y_t | q, y_<t)``.
- :mod:`~tokenwise.analysis.surplus`: what a hidden state knows about token t+2 beyond the
  model's own two-step rollout (a cross-validated linear probe, in nats).
- :mod:`~tokenwise.analysis.embedding_ib`: clusterings of token embeddings scored by the
  information-bottleneck objective and by agreement (AMI) with human categories.
- :mod:`~tokenwise.analysis.spectral`: alignment of the prediction head's singular subspaces
  with the eigenspaces of the predictive similarity operator.
- :mod:`~tokenwise.analysis.semantic_information`: G theory's semantic information of answers,
  ``log(T(theta|x) / T(theta))``, beside Shannon's.

Each function's docstring gives its equation; the tests check them against closed forms and
brute-force computations on small cases.
"""

from tokenwise.analysis.directed_information import (
    DirectedInformation,
    directed_information,
    expected_needle_information,
)
from tokenwise.analysis.semantic_information import (
    GInformation,
    g_information,
    logical_probability,
)
from tokenwise.analysis.spectral import (
    PredictiveOperator,
    SpectralAlignment,
    predictive_similarity,
    spectral_alignment,
)

__all__ = ["DirectedInformation", "GInformation", "PredictiveOperator", "SpectralAlignment",
           "directed_information", "expected_needle_information", "g_information",
           "logical_probability", "predictive_similarity", "spectral_alignment"]
