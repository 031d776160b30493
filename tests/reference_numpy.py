"""Independent float64 NumPy reference of whole Deep Merge-and-Run networks.

Written from the specification (Zhao et al., arXiv 1611.07718, and the authors'
MXNet code zlmzju/fusenet), not from ``dmr_keras``'s implementation.  Tensors are
channels-last (NHWC); kernels use the Keras layout ``(kh, kw, cin, cout)``.

``params`` maps Keras weight paths (``"stage2_block1/branch1/conv1/kernel"``...)
to arrays; every BatchNormalization prefix must also carry ``"<prefix>/epsilon"``.
Channel counts are computed here from the spec and checked against the weight
shapes, so a structural mismatch raises instead of silently broadcasting.

Knobs that select deliberately *wrong* variants (used by the sensitivity tests):

* ``padding="keras_same"``: Keras/TF ``'same'`` padding (extra pad bottom/right
  at stride 2) instead of ``k // 2`` on every side.
* ``head``: override the last block's combination in the CIFAR and imagenet2016
  forms (``"merged_once"``: ``relu(skip + sum_k H_k)``; ``"sum_streams"``:
  ``relu(sum_k (skip + H_k))``).
* ``skip_scale="sum"``: merge with ``sum_j s_j`` instead of the mean.
* ``pool_pad_value``: value used to pad the imagenet2018 max-pool (spec: -inf).
"""

import numpy as np

BN_EPSILON = 2e-5


class TrackingParams(dict):
    """A dict that remembers which keys were read (to prove every weight is used)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.used = set()

    def __getitem__(self, key):
        self.used.add(key)
        return super().__getitem__(key)


# ----------------------------------------------------------------------------- ops


def relu(x):
    return np.maximum(x, 0.0)


def _same_pads(size, k, stride):
    """Keras/TF 'same' padding: total pad split with the extra on the bottom/right."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def conv2d(x, kernel, stride=1, padding="symmetric", pad=None):
    """Cross-correlation without bias.

    ``padding="symmetric"``: ``pad`` (default ``k // 2``) zeros on every side,
    output ``floor((H + 2 * pad - k) / stride) + 1`` (MXNet/PyTorch convention).
    """
    x = np.asarray(x, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    kh, kw, cin, cout = kernel.shape
    assert kh == kw, kernel.shape
    assert x.shape[-1] == cin, (x.shape, kernel.shape)
    if padding == "symmetric":
        p = kh // 2 if pad is None else pad
        pads = ((p, p), (p, p))
    elif padding == "keras_same":
        pads = (_same_pads(x.shape[1], kh, stride), _same_pads(x.shape[2], kw, stride))
    else:
        raise ValueError(padding)
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    ho = (xp.shape[1] - kh) // stride + 1
    wo = (xp.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, cout), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i, i + stride * (ho - 1) + 1, stride)
            cols = slice(j, j + stride * (wo - 1) + 1, stride)
            patch = xp[:, rows, cols]
            out += patch @ kernel[i, j]
    return out


def max_pool(x, size=3, stride=2, pad=0, pad_value=-np.inf):
    """Max pooling, ``pad`` cells of ``pad_value`` on every side."""
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=pad_value)
    ho = (xp.shape[1] - size) // stride + 1
    wo = (xp.shape[2] - size) // stride + 1
    out = np.full((x.shape[0], ho, wo, x.shape[3]), -np.inf)
    for i in range(size):
        for j in range(size):
            rows = slice(i, i + stride * (ho - 1) + 1, stride)
            cols = slice(j, j + stride * (wo - 1) + 1, stride)
            patch = xp[:, rows, cols]
            out = np.maximum(out, patch)
    return out


def batch_norm(x, params, prefix):
    """Inference-mode BN: gamma * (x - mean) / sqrt(var + eps) + beta."""
    c = x.shape[-1]
    gamma = params[f"{prefix}/gamma"]
    beta = params[f"{prefix}/beta"]
    mean = params[f"{prefix}/moving_mean"]
    var = params[f"{prefix}/moving_variance"]
    eps = float(params[f"{prefix}/epsilon"])
    for v in (gamma, beta, mean, var):
        assert np.shape(v) == (c,), (prefix, np.shape(v), c)
    return gamma * (x - mean) / np.sqrt(var + eps) + beta


def _kernel(params, name, k, cin, cout):
    w = params[name]
    assert np.shape(w) == (k, k, cin, cout), (name, np.shape(w), (k, k, cin, cout))
    return w


# ----------------------------------------------------------------------- branches


def basic_branch(x, params, prefix, cout, stride, padding):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN."""
    cin = x.shape[-1]
    y = conv2d(x, _kernel(params, f"{prefix}/conv1/kernel", 3, cin, cout), stride, padding)
    y = relu(batch_norm(y, params, f"{prefix}/bn1"))
    y = conv2d(y, _kernel(params, f"{prefix}/conv2/kernel", 3, cout, cout), 1, padding)
    return batch_norm(y, params, f"{prefix}/bn2")


def bottleneck_branch(x, params, prefix, cout, stride, padding):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1-BN, inner width cout / 4."""
    cin = x.shape[-1]
    inner = cout // 4
    y = conv2d(x, _kernel(params, f"{prefix}/conv1/kernel", 1, cin, inner), 1, padding)
    y = relu(batch_norm(y, params, f"{prefix}/bn1"))
    y = conv2d(y, _kernel(params, f"{prefix}/conv2/kernel", 3, inner, inner), stride, padding)
    y = relu(batch_norm(y, params, f"{prefix}/bn2"))
    y = conv2d(y, _kernel(params, f"{prefix}/conv3/kernel", 1, inner, cout), 1, padding)
    return batch_norm(y, params, f"{prefix}/bn3")


def projection(x, params, prefix, cout, stride, padding):
    """conv1x1(stride)-BN."""
    cin = x.shape[-1]
    y = conv2d(x, _kernel(params, f"{prefix}/conv1/kernel", 1, cin, cout), stride, padding)
    return batch_norm(y, params, f"{prefix}/bn1")


# -------------------------------------------------------------------------- block


def block(streams, params, prefix, *, cout, stride, mapping, num_branches, branch_fn,
          combine, padding="symmetric", skip_scale="mean"):
    """One block.  ``streams``: list of input tensors (one per stream).

    merge_and_run / resnet: branch k reads stream k; skip = mean_j s_j(x_j).
    identity: one stream, every branch reads it, skip = s(x).

    ``combine``:
      "run"          -> [relu(skip + H_k) for k]            (ordinary block)
      "merged_once"  -> [relu(skip + sum_k H_k)]            (CIFAR last block)
      "sum_streams"  -> [relu(sum_k (skip + H_k))]          (ImageNet 2016 last block)
      "no_shortcut"  -> [relu(H_k) for k]                   (ImageNet 2018 first blocks)
    """
    cin = streams[0].shape[-1]
    project = stride != 1 or cin != cout
    if mapping == "identity":
        assert len(streams) == 1
        inputs = [streams[0]] * num_branches
    else:
        assert len(streams) == num_branches
        inputs = list(streams)
    hs = [branch_fn(xk, params, f"{prefix}/branch{k + 1}", cout, stride, padding)
          for k, xk in enumerate(inputs)]

    if combine == "no_shortcut":
        if mapping == "identity":
            return [relu(sum(hs))]
        return [relu(h) for h in hs]

    skips = []
    for j, xj in enumerate(streams):
        if project:
            skips.append(projection(xj, params, f"{prefix}/shortcut{j + 1}", cout, stride, padding))
        else:
            skips.append(xj)
    skip = sum(skips)
    if skip_scale == "mean":
        skip = skip / len(streams)
    elif skip_scale != "sum":
        raise ValueError(skip_scale)

    if mapping == "identity":
        # One stream: every head variant reduces to relu(s(x) + sum_k H_k(x)).
        return [relu(skip + sum(hs))]
    if combine == "run":
        return [relu(skip + h) for h in hs]
    if combine == "merged_once":
        return [relu(skip + sum(hs))]
    if combine == "sum_streams":
        return [relu(sum(skip + h for h in hs))]
    raise ValueError(combine)


# ------------------------------------------------------------------------ network


def _streams_and_branches(mapping, num_branches):
    if mapping == "resnet":
        assert num_branches in (None, 1)
        return 1, 1
    if mapping == "merge_and_run":
        return num_branches, num_branches
    if mapping == "identity":
        return 1, num_branches
    raise ValueError(mapping)


def _channels(c, width):
    value = c * width
    assert abs(value - round(value)) < 1e-9, (c, width)
    return int(round(value))


def _dense(features, params):
    w = params["predictions/kernel"]
    b = params["predictions/bias"]
    assert w.shape[0] == features.shape[-1], (w.shape, features.shape)
    return features @ w + b


def reference_logits(params, x, *, form="cifar", depth=None, blocks=None, width=1,
                     num_branches=2, mapping="merge_and_run", padding="symmetric",
                     head=None, skip_scale="mean", pool_pad_value=-np.inf):
    """Logits of the whole network for a float batch ``x`` (N, H, W, 3)."""
    x = np.asarray(x, dtype=np.float64)
    n_streams, n_branches = _streams_and_branches(mapping, num_branches)
    kw = dict(mapping=mapping, num_branches=n_branches, padding=padding,
              skip_scale=skip_scale)

    if form == "cifar":
        assert depth is not None and (depth - 2) % 6 == 0, depth
        n = (depth - 2) // 6
        c0 = _channels(16, width)
        y = conv2d(x, _kernel(params, "stem_conv/kernel", 3, 3, c0), 1, padding)
        y = relu(batch_norm(y, params, "stem_bn"))
        streams = [y] * n_streams
        stage_channels = [c0, _channels(32, width), _channels(64, width)]
        plan = [(s, b, stage_channels[s], 2 if (s > 0 and b == 0) else 1)
                for s in range(3) for b in range(n)]
        last_combine = head or "merged_once"
        for idx, (s, b, cout, stride) in enumerate(plan):
            last = idx == len(plan) - 1
            streams = block(streams, params, f"stage{s + 1}_block{b + 1}", cout=cout,
                            stride=stride, branch_fn=basic_branch,
                            combine=last_combine if last else "run", **kw)
        assert len(streams) == 1
        return _dense(streams[0].mean(axis=(1, 2)), params)

    if form in ("imagenet2016", "imagenet2018"):
        assert blocks is not None and len(blocks) == 4, blocks
        c0 = _channels(64, width)
        y = conv2d(x, _kernel(params, "stem_conv/kernel", 7, 3, c0), 2, padding, pad=3)
        if form == "imagenet2016":
            y = relu(batch_norm(y, params, "stem_bn"))
            y = max_pool(y, 3, 2, pad=0)
        else:
            y = max_pool(y, 3, 2, pad=1, pad_value=pool_pad_value)
        streams = [y] * n_streams
        plan = [(s, b, _channels(256 * 2**s, width), 2 if (s > 0 and b == 0) else 1)
                for s in range(4) for b in range(blocks[s])]
        for idx, (s, b, cout, stride) in enumerate(plan):
            last = idx == len(plan) - 1
            if form == "imagenet2018" and b == 0:
                combine = "no_shortcut"
            elif last and form == "imagenet2016":
                combine = head or "sum_streams"
            else:
                combine = "run"
            streams = block(streams, params, f"stage{s + 1}_block{b + 1}", cout=cout,
                            stride=stride, branch_fn=bottleneck_branch, combine=combine, **kw)
        if form == "imagenet2016":
            assert len(streams) == 1
            features = streams[0].mean(axis=(1, 2))
        else:
            # Concatenate the streams on channels, stream 1 first, then GAP.
            features = np.concatenate(streams, axis=-1).mean(axis=(1, 2))
        return _dense(features, params)

    raise ValueError(form)
