"""Models: every network is built by name through `create_model`."""

from postergenre.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
