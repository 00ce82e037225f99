"""Linear evaluation: dinov2's probe inputs, the grid choosing by validation, logistic
regression against scikit-learn's, and the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.test_knn import _labelled_manifest, _run_dir
from training.eval import linear
from training.models import build_vit


def test_probe_inputs_are_the_last_blocks_cls_tokens_and_the_pooled_patches():
    torch.manual_seed(0)
    model = build_vit("vit_small", 14, depth=5, img_size=56, num_register_tokens=2).eval()
    images = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        features = linear.probe_features(model, images)
        layers = model.get_intermediate_layers(images, n=4)
        final = model.forward_features(images)
    assert features.shape == (3, 5 * 384) and layers[-1][0].shape == (3, 16, 384)  # no registers
    torch.testing.assert_close(linear.probe_input(features, 1, False), final["x_norm_clstoken"])
    torch.testing.assert_close(linear.probe_input(features, 1, True)[:, 384:],
                               final["x_norm_patchtokens"].mean(1))  # fmt: skip
    four = linear.probe_input(features, 4, True)
    assert four.shape == (3, 5 * 384)
    torch.testing.assert_close(four[:, :384], layers[0][1])  # the 4th block from the end first


def test_the_grid_is_chosen_on_held_out_train_rows():
    g = torch.Generator().manual_seed(0)
    d, n = 6, 600
    labels = torch.randint(0, 3, (n + 200,), generator=g)
    centers = torch.randn(3, d, generator=g) * 3
    cls = centers[labels] + torch.randn(n + 200, d, generator=g)
    # the pooled patches carry the label too; the earlier blocks' CLS tokens are noise
    pooled = centers[labels] + torch.randn(n + 200, d, generator=g)
    features = torch.cat([torch.randn(n + 200, 3 * d, generator=g), cls, pooled], dim=1)
    result = linear.linear_eval((features[:n], labels[:n]), (features[n:], labels[n:]),
                                iterations=300, batch=64)  # fmt: skip
    assert len(result["grid"]) == 13 * 4
    chosen = result["selected_on_validation"]
    assert chosen["val_accuracy"] == max(r["val_accuracy"] for r in result["grid"])
    assert chosen["test_accuracy"] > 90
    smallest = [r for r in result["grid"] if r["lr"] == 1e-5]
    assert max(r["test_accuracy"] for r in smallest) < chosen["test_accuracy"]  # lr matters


def test_logistic_regression_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=300) > 0).astype(int) + (
        x[:, 2] > 1).astype(int)  # fmt: skip
    for c in (0.01, 1.0):
        ours = linear.fit_logreg(torch.tensor(x), torch.tensor(y), 3, c)
        ref = sklearn.LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(x, y)
        weights = ours[:-1].T - ours[:-1].T.mean(0)  # sklearn's W sums to 0 over the classes
        np.testing.assert_allclose(weights.numpy(), ref.coef_ - ref.coef_.mean(0), atol=1e-4)
        probabilities = torch.softmax(torch.tensor(x) @ ours[:-1] + ours[-1], 1).numpy()
        np.testing.assert_allclose(probabilities, ref.predict_proba(x), atol=1e-4)


def test_the_coarse_to_fine_c_search_finds_the_full_grids_best_with_fewer_fits():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(400, 30))
    x = torch.tensor(features)
    y = torch.tensor((features[:, 0] + rng.normal(scale=1.0, size=400) > 0).astype(int))
    xt = torch.tensor(rng.normal(size=(200, 30)))
    yt = (xt[:, 0] > 0).long()
    full = linear.logreg_eval((x, y), (xt, yt), stride=1)
    fast = linear.logreg_eval((x, y), (xt, yt))
    assert full["C_values_fitted"] == 45 and fast["C_values_fitted"] <= 18
    assert fast["val_accuracy"] == full["val_accuracy"]
    assert 1e-6 < full["C"] < 1e5  # an interior optimum: the search had to find it


def test_cli_reports_the_linear_probe_and_the_logistic_regression(tmp_path, capsys):
    run = _run_dir(tmp_path)
    train = _labelled_manifest(tmp_path, "train", 30, 0)
    val = _labelled_manifest(tmp_path, "val", 10, 1)
    code = linear.main(["--checkpoint", str(run), "--train-manifest", train, "--val-manifest",
                        val, "--image-size", "56", "--workers", "0", "--iterations", "50",
                        "--logreg", "--out", str(tmp_path / "linear.json")])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["train_images"] == 30 and out["val_images"] == 10
    assert out["linear"]["selected_on_validation"]["test_accuracy"] == 100.0  # red vs blue
    assert out["logreg"]["test_accuracy"] == 100.0
    assert json.loads((tmp_path / "linear.json").read_text()) == out
    assert linear.main(["--checkpoint", str(tmp_path / "nope"), "--train-manifest", train,
                        "--val-manifest", val]) == 2  # fmt: skip
    assert "nope: no backbone weights" in capsys.readouterr().err
