"""Stage 1: the task's data, validated, split, tokenised and written as parquet."""

from __future__ import annotations

from prefect import task

from infra.data import corpus
from infra import data
from infra.models import pretrained
from infra.experiment import paths
from infra.experiment.config import DistilSpec, ModelSpec, TaskSpec
from infra.experiment.jobs import GridContext
from infra.experiment.preflight import split_spec, task_source


@task(name="prepare-dataset", task_run_name="prepare-dataset-{spec.name}")
def prepare_dataset(spec: TaskSpec, model: ModelSpec, ctx: GridContext) -> data.DatasetRef:
    """Load, validate, split and tokenise one task; returns a ref with the content hash."""
    tokenizer = pretrained.load_tokenizer(ctx.pretrained)
    return data.prepare(task_source(spec), split_spec(spec), tokenizer, model.max_length,
                        paths.data_dir(ctx.home), allow_hub=ctx.allow_hub)


@task(name="prepare-corpus", task_run_name="prepare-corpus-{dataset.task}")
def prepare_corpus(distil: DistilSpec, model: ModelSpec, dataset: data.DatasetRef,
                   ctx: GridContext) -> corpus.CorpusRef:
    """Unlabelled text for a task-agnostic stage: the task's training texts plus `distil.corpus`."""
    own = corpus.task_texts(data.read_split(dataset, "train")) if distil.task_texts else []
    texts = corpus.gather(distil.corpus, own, distil.max_texts)
    return corpus.prepare_corpus(texts, pretrained.load_tokenizer(ctx.pretrained), model.max_length,
                                 paths.data_dir(ctx.home), dataset.task, chunk=distil.chunk)
