"""dmr-keras model zoo: named DMRNet / DILNet / ResNet variants and their model cards."""

from zoo.registry import Variant, create_model, get_variant, list_models, model_info, path_info

__all__ = ["Variant", "create_model", "get_variant", "list_models", "model_info", "path_info"]
