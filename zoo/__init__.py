"""dmr-keras model zoo: named DMRNet / DILNet / ResNet variants and their model cards."""

from zoo.preprocessing import adapt_input_conv, data_config, reset_head
from zoo.registry import Variant, create_model, get_variant, list_models, model_info, path_info

__all__ = ["Variant", "adapt_input_conv", "create_model", "data_config", "get_variant",
           "list_models", "model_info", "path_info", "reset_head"]
