"""learner: fine-grained intra-patient progression from coarse inter-patient scores (LEARNER)."""

__version__ = "0.1.0"
