"""The GPU check, prepared to run in one go where a CUDA GPU is lent: writes
bench/results/gpu_check.json (and prints it).

    python -m bench.gpu_check [--steps 20] [--batch 32] [--seq 128] [--parts step,job]
    bench/gpu_check.sh ...      # the same, offline switches set, the log and JSON copied to $OUT

Part `step`: a BERT-base-shaped classifier (transformers' BertConfig defaults: 12 layers, hidden
768, FFN 3072, built from the config with random weights: nothing is downloaded) trained by
infra.train.loop.train_step (the product's step: AdamW, clipping, the Dense method) on random
token ids [batch, seq]; the median step time in fp32 and in bf16, and model FLOP utilisation:
the step's matmul FLOPs (`train_step_flops`, 3x the forward's) per second over the GPU's bf16
peak, both the nominal one of its kind and a measured 8192^3 bf16 matrix product.

Part `job`: one grid job the way the flow runs it, through Ray Train with use_gpu: SDP at 70%
sparsity in bf16 on the tiny fixture model and data (tests/fixtures), its final model loaded
back and its encoder sparsity read. Needs the project's environment (Ray and the rest).

Without CUDA it stops at once with exit status 2 and one line saying so; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import BertConfig, PretrainedConfig

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("step", "job")
# Dense bf16 tensor-core peaks (FLOP/s) by device name, from the vendors' data sheets; the
# measured matrix product beside them is the sturdier reference.
NOMINAL_BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


class NoCudaError(RuntimeError):
    """The check needs a CUDA GPU and this machine's torch sees none."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; `--parts` a comma list of PARTS."""
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per precision")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {PARTS}")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/gpu_check.json")
    args = parser.parse_args(argv)
    args.parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown or not args.parts:
        parser.error(f"--parts takes a comma list of {PARTS}, got {unknown or 'nothing'}")
    if min(args.steps, args.batch, args.seq) < 1 or args.warmup < 0:
        parser.error("--steps, --batch and --seq must be at least 1, --warmup at least 0")
    return args


def require_cuda() -> torch.device:
    """The first CUDA device; NoCudaError naming what torch sees otherwise."""
    if not torch.cuda.is_available():
        raise NoCudaError(f"bench.gpu_check needs a CUDA GPU: torch {torch.__version__} (CUDA build "
                          f"{torch.version.cuda or 'none'}) sees none; run it where a GPU is lent. "
                          "Nothing was written.")
    return torch.device("cuda", 0)


def bert_base_config(num_labels: int = 2) -> BertConfig:
    """BERT-base's shape (BertConfig's defaults), a classification head of `num_labels`."""
    return BertConfig(num_labels=num_labels)


def forward_flops(config: PretrainedConfig, batch: int, seq: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of one forward of a BERT sequence classifier on
    [batch, seq]: Q, K, V and output projections, the two FFN matrices, scores and context
    per layer, the pooler and the head on [CLS]. Elementwise work (softmax, GELU, LayerNorm)
    is not counted, as FLOP-utilisation figures usually leave it out."""
    h, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens = batch * seq
    per_layer = 2 * tokens * (4 * h * h + 2 * h * ff) + 2 * 2 * batch * seq * seq * h
    head = 2 * batch * (h * h + h * config.num_labels)
    return layers * per_layer + head


def train_step_flops(config: PretrainedConfig, batch: int, seq: int) -> int:
    """A training step's matmul FLOPs: the forward and a backward of twice its work."""
    return 3 * forward_flops(config, batch, seq)


def nominal_peak(device_name: str) -> float | None:
    """The data-sheet dense bf16 peak of a known GPU kind, else None."""
    for kind, peak in NOMINAL_BF16_PEAK.items():
        if kind in device_name:
            return peak
    return None


def measured_matmul_peak(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    """FLOP/s of an n^3 bf16 matrix product (after warm-up), the GPU's practical peak."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    began = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - began)


def time_steps(device: torch.device, precision: str, args: argparse.Namespace) -> list[float]:
    """Seconds of each timed infra.train.loop.train_step of a fresh BERT-base in `precision`."""
    from transformers import BertForSequenceClassification

    from infra.train import loop
    from pruning.methods import build_method

    torch.manual_seed(0)
    config = bert_base_config()
    model = BertForSequenceClassification(config).to(device).train()
    method = build_method("dense", model, total_steps=args.steps + args.warmup, final_sparsity=0.0,
                          options={})
    optimizer = loop.make_optimizer(model, learning_rate=1e-5, weight_decay=0.01)
    g = torch.Generator(device=device).manual_seed(0)
    shape = (args.batch, args.seq)
    batch = {"input_ids": torch.randint(0, config.vocab_size, shape, device=device, generator=g),
             "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long, device=device),
             "labels": torch.randint(0, 2, (args.batch,), device=device, generator=g)}
    precision = loop.resolve_precision(precision, device)
    times = []
    for step in range(args.warmup + args.steps):
        torch.cuda.synchronize(device)
        began = time.perf_counter()
        loop.train_step(method, model, batch, optimizer, None, step=step, max_grad_norm=1.0,
                        precision=precision)
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - began)
    del model, method, optimizer
    torch.cuda.empty_cache()
    return times[args.warmup:]


def step_part(device: torch.device, args: argparse.Namespace) -> dict:
    """Median step times, the bf16 speed-up and model FLOP utilisation of BERT-base."""
    name = torch.cuda.get_device_name(device)
    flops = train_step_flops(bert_base_config(), args.batch, args.seq)
    measured = measured_matmul_peak(device)
    nominal = nominal_peak(name)
    out: dict = {"device": name, "batch": [args.batch, args.seq], "steps": args.steps,
                 "train_step_flops": flops, "measured_bf16_matmul_tflops": measured / 1e12,
                 "nominal_bf16_tflops": nominal / 1e12 if nominal else None}
    for precision in ("fp32", "bf16"):
        median = statistics.median(time_steps(device, precision, args))
        out[precision] = {"median_step_ms": 1000 * median, "achieved_tflops": flops / median / 1e12,
                          "mfu_vs_measured_matmul": flops / median / measured,
                          "mfu_vs_nominal": flops / median / nominal if nominal else None}
    out["bf16_speedup"] = out["fp32"]["median_step_ms"] / out["bf16"]["median_step_ms"]
    return out


def job_part(work: Path) -> dict:
    """One SDP job at 70% in bf16 through Ray Train with use_gpu, on the tiny fixture."""
    from infra import data
    from infra.experiment.config import load_config
    from infra.experiment.preflight import split_spec, task_source
    from infra.experiment.settings import Settings
    from infra.models import pretrained
    from infra.train import cluster, ray_job
    from pruning.accounting import encoder_sparsity

    tiny_bert = str(ROOT / "tests/fixtures/tiny-bert")
    spec = load_config(ROOT / "tests/fixtures/configs/tiny.yaml").tasks[0]
    spec = spec.model_copy(update={"path": str(ROOT / spec.path)})
    dataset = data.prepare(task_source(spec), split_spec(spec), pretrained.load_tokenizer(tiny_bert), 32,
                           work / "data")
    teacher = pretrained.load_classifier(tiny_bert, num_labels=dataset.num_labels, init="random", seed=0)
    teacher_dir = pretrained.save_model(teacher, pretrained.load_tokenizer(tiny_bert), work / "teacher")
    args = ray_job.JobArgs(
        job_id="gpu-check", method="sdp", sparsity=0.7, seed=0, options={"update_every": 2},
        data_path=dataset.path, pretrained=tiny_bert, init="random", teacher_dir=str(teacher_dir), epochs=3,
        batch_size=16, learning_rate=1e-3, weight_decay=0.01, warmup_fraction=0.0, max_grad_norm=1.0,
        checkpoint_every=10, log_every=5, lr_schedule="constant", precision="bf16")
    started = cluster.connect(Settings.from_env(), num_cpus=2)
    try:
        began = time.perf_counter()
        out = ray_job.run_job(args, run_name="gpu-check", num_workers=1, cpus_per_worker=1, use_gpu=True,
                              max_failures=0, storage_path=work / "ray", out_dir=work / "model")
        seconds = time.perf_counter() - began
    finally:
        cluster.disconnect(started)
    model = pretrained.load_saved(str(out))
    return {"method": "sdp", "precision": "bf16", "target_sparsity": 0.7, "seconds": seconds,
            "encoder_sparsity": float(encoder_sparsity(model)),
            "train_metrics": json.loads(ray_job.timing_path(out).read_text())}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        device = require_cuda()
    except NoCudaError as error:
        print(error, file=sys.stderr)
        return 2
    result: dict = {"torch": torch.__version__, "cuda": torch.version.cuda, "parts": list(args.parts)}
    if "step" in args.parts:
        result["step"] = step_part(device, args)
        print(json.dumps(result["step"], indent=2), flush=True)
    if "job" in args.parts:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            result["job"] = job_part(Path(tmp))
        print(json.dumps(result["job"], indent=2), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
