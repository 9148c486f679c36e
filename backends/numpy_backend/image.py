"""Image layers in float64 on (B, H, W, C), canonical NHWC (common.layers.image; docs/design.md, "Images and
BatchNorm").

Every window layer pads its input by `layer.pads` = (top, bottom, left, right) to x̃ and reads the k×k windows at
stride s as one strided view (numpy's sliding_window_view): win[b, i, j, u, v, c] = x̃[b, s·i + u, s·j + v, c].
A backward scatters the gradient of each window tap (u, v) back onto x̃ (k² vectorised adds, no loop over pixels)
and crops the padding: dx = crop(Σ_{u,v} shift_{u,v}(∂win[:, :, :, u, v])).

conv2d:          a = cols·K̄ + β,  y = act(a), cols the windows as rows (B·H'·W', k·k·C) (im2col), K̄ the kernel
                 (k, k, C, F) reshaped to (k·k·C, F);  da = dy ⊙ act′(a),  ∂K̄ = colsᵀ·da,  ∂β = Σ da,
                 ∂cols = da·K̄ᵀ scattered back (zero padding: the pads' gradients are dropped).
max_pool:        x̃ padded with −∞ (a pad never wins);  y = max over the window;  the gradient goes to the argmax.
                 Ties go to the FIRST maximum in row-major window order (u, then v), numpy's argmax. torch's
                 max_pool2d kernels also keep the first maximum of their scan (a strict >); TF's MaxPoolGrad and
                 XLA's select-and-scatter (jax, XLA-compiled TF) choose one maximum per window by their own select
                 rule, which no framework documents as a contract. Continuous data has no ties; a tie at a maximum
                 of 0 right after relu (and dropout), as in the CNN of tests.support, sits on pixels whose relu′ or
                 mask is 0, so whichever gets the gradient passes on none.
avg_pool:        x̃ padded with 0;  y = Σ_window x̃ / c_ij,  c_ij the number of REAL pixels in window (i, j) (TF's
                 rule);  ∂win = dy / c broadcast over the window.
global_avg_pool: y[b, c] = mean_{h,w} x[b, h, w, c];  dx = dy / (H·W) broadcast.
flatten:         y = x.reshape(B, H·W·C) (NHWC order: index (h·W + w)·C + c);  dx = dy.reshape(B, H, W, C).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from backends.numpy_backend.core import Part, activate, activation_backward
from common.layers import Layer


def pad(layer: Layer, x: np.ndarray, value: float = 0.0) -> np.ndarray:
    """x (B, H, W, C) padded by layer.pads with `value`."""
    top, bottom, left, right = layer.pads
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)


def windows(layer: Layer, padded: np.ndarray) -> np.ndarray:
    """The strided view win (B, H', W', k, k, C) of the padded input (module docstring)."""
    k, s = layer.kernel, layer.stride
    view = sliding_window_view(padded, (k, k), axis=(1, 2))[:, ::s, ::s]
    return view.transpose(0, 1, 2, 4, 5, 3)


def scatter(layer: Layer, d_windows: np.ndarray, padded_shape: tuple[int, ...]) -> np.ndarray:
    """dx (B, H, W, C) from the gradient of every window (B, H', W', k, k, C): each tap added back where it was
    read, then the padding cropped."""
    k, s = layer.kernel, layer.stride
    oh, ow = d_windows.shape[1:3]
    dx = np.zeros(padded_shape)
    for u in range(k):
        for v in range(k):
            dx[:, u : u + s * (oh - 1) + 1 : s, v : v + s * (ow - 1) + 1 : s] += d_windows[:, :, :, u, v]
    top, _, left, _ = layer.pads
    h, w = layer.in_shape[:2]
    return dx[:, top : top + h, left : left + w]


class Conv2D(Part):
    def forward(self, params, x, flow):
        padded = pad(self.layer, x)
        win = windows(self.layer, padded)
        cols = win.reshape(-1, int(np.prod(win.shape[3:])))  # a copy: the im2col matrix
        kernel = params[self.layer.param("weight")]
        a = (cols @ kernel.reshape(cols.shape[1], -1)).reshape(*win.shape[:3], -1)
        if self.layer.bias:
            a = a + params[self.layer.param("bias")]
        y = activate(self.layer.activation, a)
        return y, (padded.shape, win.shape, cols, a, y)

    def backward(self, params, cache, dy):
        padded_shape, win_shape, cols, a, y = cache
        da = activation_backward(self.layer.activation, a, y, dy)
        kernel = params[self.layer.param("weight")]
        da_rows = da.reshape(cols.shape[0], -1)
        grads = {self.layer.param("weight"): (cols.T @ da_rows).reshape(kernel.shape)}
        if self.layer.bias:
            grads[self.layer.param("bias")] = da_rows.sum(axis=0)
        d_cols = (da_rows @ kernel.reshape(cols.shape[1], -1).T).reshape(win_shape)
        return scatter(self.layer, d_cols, padded_shape), grads


class MaxPool(Part):
    def forward(self, params, x, flow):
        padded = pad(self.layer, x, -np.inf)
        win = windows(self.layer, padded)
        flat = win.reshape(*win.shape[:3], -1, win.shape[5])  # (B, H', W', k·k, C), taps in row-major order
        arg = flat.argmax(axis=3)
        y = np.take_along_axis(flat, arg[:, :, :, None], axis=3)[:, :, :, 0]
        return y, (padded.shape, win.shape, arg)

    def backward(self, params, cache, dy):
        padded_shape, win_shape, arg = cache
        taps = np.arange(win_shape[3] * win_shape[4]).reshape(win_shape[3], win_shape[4])
        d_win = (arg[:, :, :, None, None] == taps[:, :, None]) * dy[:, :, :, None, None]
        return scatter(self.layer, d_win, padded_shape), {}


class AvgPool(Part):
    def __init__(self, layer, spec):
        super().__init__(layer, spec)
        real = windows(layer, pad(layer, np.ones((1, *layer.in_shape[:2], 1))))
        self.count = real.sum(axis=(3, 4))  # (1, H', W', 1): the real pixels of each window

    def forward(self, params, x, flow):
        padded = pad(self.layer, x)
        return windows(self.layer, padded).sum(axis=(3, 4)) / self.count, padded.shape

    def backward(self, params, padded_shape, dy):
        k = self.layer.kernel
        d_win = np.broadcast_to((dy / self.count)[:, :, :, None, None], (*dy.shape[:3], k, k, dy.shape[3]))
        return scatter(self.layer, d_win, padded_shape), {}


class GlobalAvgPool(Part):
    def forward(self, params, x, flow):
        return x.mean(axis=(1, 2)), x.shape

    def backward(self, params, shape, dy):
        return np.broadcast_to(dy[:, None, None, :] / (shape[1] * shape[2]), shape).copy(), {}


class Flatten(Part):
    def forward(self, params, x, flow):
        return x.reshape(x.shape[0], -1), x.shape

    def backward(self, params, shape, dy):
        return dy.reshape(shape), {}


LAYERS = {
    "conv2d": Conv2D,
    "max_pool": MaxPool,
    "avg_pool": AvgPool,
    "global_avg_pool": GlobalAvgPool,
    "flatten": Flatten,
}
