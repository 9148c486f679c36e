import numpy as np
import pytest

from common.datasets import load_dataset
from common.layers import init_params, stack
from tests.support import make_spec

pytestmark = pytest.mark.framework_free  # no ML framework: runs once, in the torch env (tox.ini)


def test_iris_split_is_deterministic_and_standardised_on_train_only():
    a = load_dataset(make_spec())
    b = load_dataset(make_spec())
    assert a.train_x.shape == (120, 4) and a.test_x.shape == (30, 4) and a.n_classes == 3
    assert np.array_equal(a.train_x, b.train_x) and np.array_equal(a.test_y, b.test_y)
    assert np.allclose(a.train_x.mean(axis=0), 0, atol=1e-12) and np.allclose(a.train_x.std(axis=0), 1)
    assert not np.allclose(a.test_x.mean(axis=0), 0, atol=1e-3)
    other = load_dataset(make_spec(seed=1))
    assert not np.array_equal(a.train_y, other.train_y)


def test_doughnuts_rings_and_digits():
    d = load_dataset(
        make_spec(
            data={"name": "doughnuts", "standardize": False, "params": {"n": 400, "noise": 0.0, "radii": [1.0, 3.0]}}
        )
    )
    radius = np.hypot(*np.concatenate([d.train_x, d.test_x]).T)
    labels = np.concatenate([d.train_y, d.test_y])
    assert np.allclose(radius[labels == 0], 1.0) and np.allclose(radius[labels == 1], 3.0)
    digits = load_dataset(make_spec(data={"name": "digits"}))
    assert digits.n_features == 64 and digits.n_classes == 10


def test_csv_and_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)), rng.integers(0, 2, 20)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    lines = ["f0,label,f1,f2"] + [
        f"{float(r[0])!r},{k},{float(r[1])!r},{float(r[2])!r}" for r, k in zip(x, y, strict=True)
    ]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    a = load_dataset(make_spec(data={"name": "npz", "path": str(tmp_path / "d.npz")}))
    b = load_dataset(make_spec(data={"name": "csv", "path": str(tmp_path / "d.csv")}))
    assert np.array_equal(a.train_x, b.train_x) and np.array_equal(a.train_y, b.train_y)


def _mlp(n_in: int, hidden: list[int], n_classes: int):
    return stack(make_spec(model={"hidden": hidden}), n_in, n_classes)


def test_initializer_bounds_and_layout():
    layers = _mlp(4, [32], 3)
    p = init_params(layers, "torch_default", 0, np.float64)
    assert p["layer0.weight"].shape == (4, 32) and p["layer1.bias"].shape == (3,)
    assert np.abs(p["layer0.weight"]).max() <= 0.5 and np.abs(p["layer1.weight"]).max() <= 1 / np.sqrt(32)
    g = init_params(layers, "glorot_uniform", 0, np.float32)
    assert g["layer0.weight"].dtype == np.float32 and not g["layer0.bias"].any()
    big = init_params(_mlp(400, [300], 3), "lecun_normal", 0, np.float64)["layer0.weight"]
    assert np.isclose(big.std(), np.sqrt(1 / 400), rtol=0.02) and np.abs(big).max() <= 2 * np.sqrt(1 / 400) / 0.8796


def test_bundled_iris_and_digits_are_scikit_learns_arrays():
    """common.datasets reads scikit-learn's data folder without importing it: the arrays must be exactly what
    load_iris and load_digits return (a guard on that folder's layout)."""
    from sklearn.datasets import load_digits, load_iris

    from common.datasets import _sklearn

    for name, bunch in (("iris", load_iris()), ("digits", load_digits())):
        x, y = _sklearn(name, {}, images=False)
        np.testing.assert_array_equal(x, bunch.data)
        np.testing.assert_array_equal(y, bunch.target)
        assert x.dtype == np.float64 and y.dtype == bunch.target.dtype
    images, _ = _sklearn("digits", {}, images=True)
    np.testing.assert_array_equal(images[..., 0], load_digits().images)
