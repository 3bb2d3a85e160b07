"""The only place torch is imported: conversion from ``nn.Module`` and training helpers.

Importing this package imports torch; nothing on the inference path imports it.
"""

from powersave.frontend.convert import convert_to_graph
from powersave.frontend.train import evaluate_accuracy, mlp, small_cnn, train_classifier

__all__ = ["convert_to_graph", "evaluate_accuracy", "mlp", "small_cnn", "train_classifier"]
