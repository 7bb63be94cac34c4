"""The second red team's reproducers: one probe each, through the real CLI in a subprocess (see ``probe.py``).

Each asserts the specific one-line message (not merely "no traceback"), the exit code, inputs unchanged and
nothing written where the run was refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.hostile.probe import probe

LABELS = torch.tensor([0, 1])


def _torch(path: Path, obj: object) -> Path:
    """``obj`` written by torch.save (its beta-feature warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(obj, path)
    return path


def _sparse(kind: str) -> torch.Tensor:
    """A tensor of a non-strided layout (or a meta/quantized one), many with indices that lie out of range."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = torch.tensor([1.0, 2.0])
        made = {
            "coo-huge-index": lambda: torch.sparse_coo_tensor(
                torch.tensor([[0, 1], [0, 2**40]]), values, (2, 2), check_invariants=False
            ),
            "coo-negative-index": lambda: torch.sparse_coo_tensor(
                torch.tensor([[0, 1], [0, -1]]), values, (2, 2), check_invariants=False
            ),
            "csr-decreasing-rows": lambda: torch.sparse_csr_tensor(
                torch.tensor([0, 5, -3]), torch.tensor([0, 1]), values, (2, 2), check_invariants=False
            ),
            "csr-column-99": lambda: torch.sparse_csr_tensor(
                torch.tensor([0, 1, 2]), torch.tensor([0, 99]), values, (2, 2), check_invariants=False
            ),
            "csc": lambda: torch.eye(2).to_sparse_csc(),
            "bsr": lambda: torch.eye(2).to_sparse_bsr((1, 1)),
            "meta": lambda: torch.zeros(2, 2, device="meta"),
            "quantized": lambda: torch.quantize_per_tensor(torch.rand(2, 2), 0.1, 0, torch.quint8),
        }
        return made[kind]()


SPARSE = ["coo-huge-index", "coo-negative-index", "csr-decreasing-rows", "csr-column-99", "csc", "bsr"]


@pytest.mark.parametrize("kind", SPARSE)
@pytest.mark.parametrize("command", ["info", "convert", "predict"])
def test_sparse_tensor_features_are_refused_before_densifying(tmp_path: Path, kind: str, command: str) -> None:
    path = _torch(tmp_path / "sparse.pt", {"features": _sparse(kind), "labels": LABELS})
    args = {
        "info": ["info", path.name],
        "convert": ["convert", path.name, "out.h5"],
        "predict": ["predict", "--support", path.name, "--query", path.name, "-o", "p.csv"],
    }[command]
    layout = kind.split("-")[0]
    result = probe(
        args,
        cwd=tmp_path,
        inputs=[path],
        canaries=[tmp_path / "out.h5", tmp_path / "p.csv"],
        contains=[path.name, f"layout sparse_{layout}", "only plain (strided) tensors"],
    )
    assert result.returncode != 139


@pytest.mark.parametrize(("kind", "reason"), [("meta", "meta tensor"), ("quantized", "dtype quint8")])
def test_meta_and_quantized_tensors_are_refused(tmp_path: Path, kind: str, reason: str) -> None:
    path = _torch(tmp_path / "odd.pt", {"features": _sparse(kind), "labels": LABELS})
    probe(["info", path.name], cwd=tmp_path, inputs=[path], contains=[path.name, reason])


def test_sparse_tensor_in_a_class_dict_is_refused(tmp_path: Path) -> None:
    path = _torch(tmp_path / "dict.pt", {"a": _sparse("coo-negative-index"), "b": np.ones((2, 2), np.float32)})
    probe(["info", path.name], cwd=tmp_path, inputs=[path], contains=[path.name, "layout sparse_coo"])
