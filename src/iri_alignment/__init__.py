"""iri-alignment: do the invariances of a deep network match human perception?

A reproducible study package re-implementing Nanda et al., "Do Invariances in
Deep Neural Networks Align with Human Perception?" (AAAI 2023). The protocol it
follows is documented in the README; every constant comes from ``params.yaml``.
"""

__version__ = "0.1.0"
