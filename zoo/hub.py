"""keras-hub citizens: DMRNet as a ``keras_hub.models.Backbone``, an image classifier task, its
preprocessor and image converter, and keras-hub presets written from the zoo's weights.

Needs the ``hub`` extra (``pip install "dmr-keras[hub]"``); nothing else in ``zoo`` or
``dmr_keras`` imports keras-hub.

- :class:`DMRNetBackbone`: the zoo's network without its head (``build_model(include_top=False,
  pooling=None)``, same layer names), 4D features out.
- :class:`DMRNetImageClassifier`: keras-hub's ``ImageClassifier`` on that backbone (pooling,
  then a ``Dense`` named ``predictions`` as in the zoo's models); ``fit`` / ``predict`` take raw
  0-255 pixels through its preprocessor.
- :class:`DMRNetImageClassifierPreprocessor` and :class:`DMRNetImageConverter`: resize to the
  weights' input size, then ``pixels * scale + offset`` per channel, which is the weights'
  ``(pixels / 255 - mean) / std``.
- :func:`classifier_from_zoo` builds the classifier with a registered ``NAME.TAG``'s weights;
  :func:`save_preset` writes it as a preset (``dmr-zoo preset NAME.TAG DIR``);
  :func:`check_preset` loads one back and compares it with :func:`zoo.create_model`.

keras-hub finds a preset's classes by the names they are registered under with Keras
(``zoo.hub>DMRNetBackbone``, ...), and only this module registers them: a process must
``import zoo.hub`` before ``keras_hub.models.ImageClassifier.from_preset(DIR)`` or
``keras_hub.models.Backbone.from_preset(DIR)``. Without it keras-hub raises ``ValueError: ...
there is no class registered with Keras for zoo.hub>DMRNetBackbone``; the package name in that
message says what to import.
"""

from __future__ import annotations

import contextlib
import difflib
import json
from pathlib import Path

try:
    import keras_hub
except ModuleNotFoundError as err:  # only a missing keras-hub; a broken install raises as is
    if err.name != "keras_hub":
        raise
    raise ImportError('zoo.hub needs keras-hub (>= 0.32): pip install "dmr-keras[hub]"') from None

import keras
import numpy as np

from dmr_keras.models import build_model

# The registered names keras-hub looks classes up by ("zoo.hub>DMRNetBackbone"). Stored in every
# preset's JSON files: changing it orphans the presets already written.
PACKAGE = "zoo.hub"
_register = keras.saving.register_keras_serializable(package=PACKAGE)


@contextlib.contextmanager
def _policy(dtype):
    """``build_model`` takes no ``dtype``: its layers follow the global dtype policy, so set the
    backbone's policy while its graph is built and restore the user's right after."""
    if dtype is None:
        yield
        return
    policy = keras.dtype_policies.get(dtype)
    policy = getattr(policy, "default_policy", policy)  # a DTypePolicyMap (quantized preset)
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)


@_register
class DMRNetBackbone(keras_hub.models.Backbone):
    """DMRNet / DILNet / ResNet from :func:`dmr_keras.build_model`, as a keras-hub backbone.

    The graph is ``build_model(include_top=False, pooling=None, ...)``: the same layers with the
    same names (``stem_conv``, ``stage1_block1``, ..., ``head_relu``) as the zoo's models, so
    zoo weights copy into it by name (:func:`dmr_keras.training.transfer_weights`). Output: the
    4D features ``(batch, h, w, channels)`` before global pooling.

    Args:
        depth, form, blocks, width, num_branches, mapping, block_type, zero_init_last_bn: as in
            :func:`dmr_keras.build_model`; a variant's ``zoo.get_variant(name).config`` can be
            passed as is.
        image_shape: ``(H, W, C)`` of the input (``build_model``'s ``input_shape``, named as in
            keras-hub); ``(None, None, 3)`` for any size. Defaults to the form's (32x32x3 for
            CIFAR forms).
        kernel_regularizer, bias_regularizer: as in :func:`dmr_keras.build_model`.
        dtype: ``None`` (the global policy), a dtype policy or its name: the policy the layers
            are built with.
        **kwargs: ``name``, ``trainable``: passed to ``keras_hub.models.Backbone``.

    Example:
    >>> import zoo, zoo.hub  # doctest: +SKIP
    >>> backbone = zoo.hub.DMRNetBackbone(**zoo.get_variant("dmrnet_20").config)  # doctest: +SKIP
    >>> backbone.output_shape  # doctest: +SKIP
    (None, 8, 8, 64)
    """

    def __init__(
        self,
        depth: int | None = None,
        *,
        form: str = "cifar",
        blocks=None,
        width: float = 1,
        num_branches: int | None = None,
        mapping: str = "merge_and_run",
        block_type: str | None = None,
        image_shape=None,
        kernel_regularizer=None,
        bias_regularizer=None,
        zero_init_last_bn: bool = False,
        dtype=None,
        **kwargs,
    ):
        with _policy(dtype):
            graph = build_model(
                depth, form=form, blocks=blocks, width=width, num_branches=num_branches,
                mapping=mapping, block_type=block_type, include_top=False, pooling=None,
                input_shape=None if image_shape is None else tuple(image_shape),
                kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer,
                zero_init_last_bn=zero_init_last_bn,
            )
        super().__init__(inputs=graph.input, outputs=graph.output, dtype=dtype, **kwargs)
        self.depth = depth
        self.form = form
        self.blocks = None if blocks is None else list(blocks)
        self.width = width
        self.num_branches = num_branches
        self.mapping = mapping
        self.block_type = block_type
        self.image_shape = tuple(graph.input_shape[1:])
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.zero_init_last_bn = zero_init_last_bn
        self.data_format = "channels_last"  # read by ImageClassifier's pooling layer

    def get_config(self):
        config = super().get_config()
        config.update(
            depth=self.depth,
            form=self.form,
            blocks=self.blocks,
            width=self.width,
            num_branches=self.num_branches,
            mapping=self.mapping,
            block_type=self.block_type,
            image_shape=list(self.image_shape),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
            bias_regularizer=keras.regularizers.serialize(self.bias_regularizer),
            zero_init_last_bn=self.zero_init_last_bn,
        )
        return config


@_register
class DMRNetImageConverter(keras_hub.layers.ImageConverter):
    """keras-hub's ``ImageConverter`` for :class:`DMRNetBackbone` presets.

    Resizes to ``image_size``, then ``pixels * scale + offset`` per channel. For zoo weights
    (:func:`image_converter`) ``scale = 1 / (255 std)`` and ``offset = -mean / std``, so 0-255
    pixels become ``(pixels / 255 - mean) / std``, the weights' training normalisation
    (:func:`zoo.applications.preprocess_input`). Arguments as keras-hub's ``ImageConverter``.
    """

    backbone_cls = DMRNetBackbone


@_register
class DMRNetImageClassifierPreprocessor(keras_hub.models.ImageClassifierPreprocessor):
    """keras-hub's ``ImageClassifierPreprocessor`` for :class:`DMRNetBackbone`: applies its
    :class:`DMRNetImageConverter` to the images and passes labels and sample weights through."""

    backbone_cls = DMRNetBackbone
    image_converter_cls = DMRNetImageConverter


@_register
class DMRNetImageClassifier(keras_hub.models.ImageClassifier):
    """keras-hub's ``ImageClassifier`` on a :class:`DMRNetBackbone`.

    Global pooling (``pooling="avg"``, as the zoo's ``avg_pool``), dropout (default 0) and a
    ``Dense`` named ``predictions``, the zoo's classifier name, so zoo weights copy in by name.
    ``activation=None`` (keras-hub's default) gives logits and ``compile()`` then uses a
    from-logits loss; ``"softmax"`` gives probabilities. With a preprocessor, ``fit``,
    ``predict`` and ``evaluate`` take raw images (0-255 pixels, any size: they are resized).

    Example:
    >>> import keras_hub, zoo.hub  # doctest: +SKIP
    >>> zoo.hub.save_preset("dmrnet_8_tiny.digits", "preset_dir")  # doctest: +SKIP
    >>> clf = keras_hub.models.ImageClassifier.from_preset("preset_dir")  # doctest: +SKIP
    >>> clf.predict(pixels)  # doctest: +SKIP
    """

    backbone_cls = DMRNetBackbone
    preprocessor_cls = DMRNetImageClassifierPreprocessor


def _entry(key: str):
    """The manifest entry of ``key`` (``NAME.TAG``); ``ValueError`` naming the keys there are."""
    from zoo.registry import get_variant, list_models, split_name
    from zoo.weights import load_manifest

    manifest = load_manifest()
    if key in manifest:
        return manifest[key]
    get_variant(split_name(key)[0])  # an unknown model name: its own error, with close matches
    keys = list_models(pretrained=True)
    close = difflib.get_close_matches(str(key), keys, n=3, cutoff=0.5)
    hint = f"Did you mean: {', '.join(close)}? " if close else ""
    raise ValueError(f"No weights are registered as {key!r}: a preset takes a NAME.TAG key with "
                     f"weights. {hint}Registered: {', '.join(keys) or 'none'}.")


def image_converter(key: str) -> DMRNetImageConverter:
    """The :class:`DMRNetImageConverter` of a registered ``NAME.TAG``: its input size and its
    normalisation, for 0-255 pixels."""
    entry = _entry(key)
    pre = entry.preprocessing
    if pre.get("scale", "0-1") != "0-1" or pre.get("mean") is None or pre.get("std") is None:
        raise ValueError(f"{key}: its preprocessing {pre!r} is not 'scale to [0, 1], then "
                         "(x - mean) / std'; no image converter is defined for it.")
    mean, std = [float(m) for m in pre["mean"]], [float(s) for s in pre["std"]]
    return DMRNetImageConverter(
        image_size=tuple(entry.input_shape[:2]),
        scale=[1.0 / (255.0 * s) for s in std],
        offset=[-m / s for m, s in zip(mean, std)],
    )


def classifier_from_zoo(key: str, *, activation=None) -> DMRNetImageClassifier:
    """A :class:`DMRNetImageClassifier` with the weights of a registered ``NAME.TAG``.

    The weights are loaded into the network as published and its fingerprint is checked
    (:func:`zoo.fingerprint.check_fingerprint`) before they are copied in by layer name; the
    preprocessor takes 0-255 pixels (:func:`image_converter`).

    Args:
        key: e.g. ``"dmrnet_20.cifar10"`` (``zoo.list_models(pretrained=True)``).
        activation: of the classifier: ``None`` (logits, keras-hub's default) or ``"softmax"``.

    Example:
    >>> clf = classifier_from_zoo("dmrnet_8_tiny.digits")  # doctest: +SKIP
    >>> clf.predict(pixels_0_255).argmax(-1)  # doctest: +SKIP
    """
    from dmr_keras.training import transfer_weights
    from zoo.fingerprint import check_fingerprint
    from zoo.registry import build_published, get_variant

    entry = _entry(key)
    converter = image_converter(entry.key)
    source = build_published(entry)  # float32, the entry's weights; a bad file raises here
    if entry.fingerprint:
        check_fingerprint(source, entry)
    backbone = DMRNetBackbone(**get_variant(entry.model).config,
                              image_shape=tuple(entry.input_shape), name=entry.model)
    copied = set(transfer_weights(source, backbone, skip=()))
    missed = [layer.name for layer in backbone.layers if layer.weights and layer.name not in copied]
    if missed:
        raise ValueError(f"{key}: no weights for the backbone layers {missed[:4]}: the zoo's "
                         "network and DMRNetBackbone have drifted apart.")
    classifier = DMRNetImageClassifier(
        backbone=backbone, num_classes=entry.classes, activation=activation,
        preprocessor=DMRNetImageClassifierPreprocessor(image_converter=converter),
        name=entry.key.replace(".", "_"),
    )
    classifier.get_layer("predictions").set_weights(source.get_layer("predictions").get_weights())
    return classifier


def save_preset(key: str, directory, *, overwrite: bool = False, activation=None) -> Path:
    """Write the keras-hub preset of a registered ``NAME.TAG`` into ``directory``.

    ``classifier_from_zoo(key).save_to_preset(directory)``: ``config.json`` (the backbone),
    ``model.weights.h5``, ``task.json`` and ``task.weights.h5`` (the classifier head),
    ``preprocessor.json``, ``image_converter.json`` and ``metadata.json``, to which a
    ``"dmr_keras"`` section is added: the key, dataset, class names, input shape,
    preprocessing, metrics, license, the weights' sha256 and ``"import": "zoo.hub"``.

    Args:
        key: e.g. ``"dmrnet_20.cifar10"``.
        directory: created if missing; must be empty unless ``overwrite`` (files of the same
            names are then replaced, others left alone).
        overwrite: write into a directory that is not empty.
        activation: of the classifier (``None``: logits, or ``"softmax"``).

    Returns:
        The directory.
    """
    import dmr_keras

    entry = _entry(key)
    directory = Path(directory).expanduser()
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} is a file; a preset is written into a directory.")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise ValueError(f"{directory} is not empty: name a new directory, or pass "
                         "overwrite=True (dmr-zoo preset --overwrite) to replace its preset files.")
    classifier = classifier_from_zoo(entry.key, activation=activation)
    directory.mkdir(parents=True, exist_ok=True)
    classifier.save_to_preset(str(directory))
    meta_path = directory / "metadata.json"
    metadata = json.loads(meta_path.read_text())
    metadata["dmr_keras"] = {
        "key": entry.key, "model": entry.model, "tag": entry.tag, "dataset": entry.dataset,
        "classes": entry.classes, "class_names": list(entry.class_names or ()),
        "input_shape": list(entry.input_shape), "preprocessing": dict(entry.preprocessing),
        "metrics": dict(entry.metrics), "license": entry.license, "sha256": entry.sha256,
        "dmr_keras_version": dmr_keras.__version__, "import": PACKAGE,
    }
    meta_path.write_text(json.dumps(metadata, indent=4))
    return directory


def check_preset(directory, key: str | None = None, count: int = 4) -> float:
    """Load a preset with keras-hub and compare it with :func:`zoo.create_model`.

    ``keras_hub.models.ImageClassifier.from_preset(directory)`` predicts on ``count`` random
    0-255 images; the zoo's model (``key``, default: the preset's ``metadata.json``) predicts on
    the same pixels through :func:`zoo.applications.preprocess_input`. Returns the largest
    absolute difference of their outputs.
    """
    from zoo.applications import preprocess_input
    from zoo.registry import create_model

    directory = Path(directory).expanduser()
    if key is None:
        meta = json.loads((directory / "metadata.json").read_text()).get("dmr_keras") or {}
        if "key" not in meta:
            raise ValueError(f"{directory}/metadata.json names no zoo key; pass `key`.")
        key = meta["key"]
    entry = _entry(key)
    loaded = keras_hub.models.ImageClassifier.from_preset(str(directory))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (count, *entry.input_shape)).astype("float32")
    got = np.asarray(loaded.predict(pixels, verbose=0))
    zoo_model = create_model(entry.key, include_preprocessing=False,
                             classifier_activation=loaded.activation)
    want = np.asarray(zoo_model(preprocess_input(pixels, weights=entry.key), training=False))
    return float(np.max(np.abs(got - want)))
