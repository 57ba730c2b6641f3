"""A model directory whose weights are a pickle (pytorch_model.bin) is refused, never unpickled:
one clear error that names the directory and says to convert the weights to safetensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from infra.models import pretrained
from infra.models.pretrained import ModelError
from tests.tiny import make_tiny_bert

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "tests/fixtures/tiny-bert"


@pytest.fixture
def pickled(tmp_path: Path) -> Path:
    """A tiny classifier saved the old way: config, tokenizer and a pickled state dict only."""
    folder = tmp_path / "old-model"
    model = make_tiny_bert()
    model.config.save_pretrained(folder)
    pretrained.load_tokenizer(str(TOKENIZER)).save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # what safe_serialization=False wrote
    return folder


def _refused(call) -> str:
    with pytest.raises(ModelError) as error:
        call()
    return str(error.value)


def test_every_loader_refuses_a_pickled_model_and_says_how_to_convert(pickled: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called on a model directory")

    monkeypatch.setattr(torch, "load", no_unpickling)
    for call in (lambda: pretrained.resolve_model_dir(str(pickled)),
                 lambda: pretrained.load_classifier(str(pickled), num_labels=2),
                 lambda: pretrained.load_encoder(str(pickled)),
                 lambda: pretrained.load_saved(str(pickled))):
        message = _refused(call)
        assert str(pickled) in message and "pytorch_model.bin" in message
        assert "safetensors" in message and "convert" in message


def test_the_same_model_in_safetensors_loads(pickled: Path):
    model = make_tiny_bert()
    model.save_pretrained(pickled)  # safetensors beside the pickle: the safetensors are read
    loaded = pretrained.load_saved(str(pickled))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert pretrained.resolve_model_dir(str(pickled)) == str(pickled.resolve())
