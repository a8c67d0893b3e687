"""The experiment harness both tasks run on: the run loop over (arm, seed), encoding, precision, the stock trainer.

An experiment is a task (``contrastive.py``: hard negatives for a bi-encoder; ``latent.py``: a retriever trained
through a reader) run over this harness:

- the output folder (:class:`~haystack_corrector.experiments.output_folder.OutputFolder`): claimed, its config and
  resume rule, the initial cache and zero-shot figures, one result file per finished (arm, seed);
- one arm grammar (``arms.py``) and one model loader
  (:mod:`haystack_corrector.sentence_transformers.model_loading`);
- :func:`run_arms`: every (arm, seed) not finished yet, each result written as soon as it exists, so a killed run
  resumes with the next one;
- :func:`stock_trainer`: every arm trains through sentence-transformers' ``SentenceTransformerTrainer`` with the
  same seeds, one progress bar per arm (``console.ArmProgress``) and its log records in ``logs/``;
- one report writer per task in ``report.py``.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from haystack_corrector.distinct_texts import distinct_texts, encode_distinct
from haystack_corrector.experiments.arms import Arm
from haystack_corrector.experiments.output_folder import OutputFolder
from haystack_corrector.precision import bf16_encodes, bf16_supported

logger = logging.getLogger(__name__)
progress = logging.getLogger("haystack_corrector.progress")  # the console's lines (experiments/console.py)


def training_precision(bf16: bool) -> str:
    """``"bfloat16"`` when ``bf16`` asks for it and the device has bfloat16 units, else ``"float32"`` (with a warning
    when it was asked for)."""
    if not bf16:
        return "float32"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if bf16_supported(device):
        return "bfloat16"
    logger.warning("bf16 was asked for, but %s has no bfloat16 units: running in float32", device)
    return "float32"


def encodes(model: Any, bf16: bool) -> Any:
    """The precision of the harness's own no-grad encodes (initial cache, evaluation): bfloat16 with ``--bf16``."""
    return bf16_encodes(next(model.parameters()).device, enabled=bf16)


def encode(
    model: Any, texts: Sequence[str], batch_size: int, desc: str = "texts", show_progress_bar: bool = False
) -> torch.Tensor:
    """Float32 CPU embeddings of ``texts``, each distinct text encoded once; the model's train/eval mode is kept."""
    texts = list(texts)
    logger.info("%s: encoding %d texts (%d distinct)", desc, len(texts), len(distinct_texts(texts)[0]))
    was_training = model.training
    embeddings = encode_distinct(
        texts,
        lambda unique: (
            model.encode(unique, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=show_progress_bar)
            .float()
            .cpu()
        ),
    )
    model.train(was_training)
    return embeddings


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def run_arms(
    folder: OutputFolder, arms: Sequence[Arm], seeds: Iterable[int], run_one: Callable[[Arm, int], dict[str, Any]]
) -> None:
    """Run ``run_one(arm, seed)`` for every (arm, seed) without a result in ``folder``, seed by seed; each result is
    written (atomically) as soon as it exists."""
    jobs = [(arm, seed) for seed in seeds for arm in arms]
    for number, (arm, seed) in enumerate(jobs, start=1):
        path = folder.arm_file(arm.slug, seed)
        progress.info("arm %d/%d: %s, seed %d", number, len(jobs), arm.name, seed)
        if path.is_file():
            logger.info("%s seed %d: already done (%s)", arm.name, seed, path)
            continue
        folder.write_json(path, run_one(arm, seed))


def warmup(ratio: float) -> dict[str, Any]:
    """transformers 5 takes a warm-up ratio as a float ``warmup_steps`` and deprecates ``warmup_ratio``; 4.x needs it."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"warmup_steps": ratio} if major >= 5 else {"warmup_ratio": ratio}


def stock_trainer(
    model: Any,
    loss: Any,
    dataset: Any,
    folder: OutputFolder,
    arm: Arm,
    seed: int,
    *,
    bf16: bool,
    verbose: bool,
    callbacks: Sequence[Any] = (),
    optimizers: tuple[Any, Any] = (None, None),
    **arguments: Any,
) -> Any:
    """A ``SentenceTransformerTrainer`` for one (arm, seed): seeded (model order and data order), no checkpoints,
    bfloat16 autocast where asked for and available, one progress bar, its log records in
    ``logs/<arm>__seed<N>.jsonl``. ``arguments`` are the task's ``SentenceTransformerTrainingArguments``."""
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers import PrinterCallback

    from haystack_corrector.experiments.console import ArmProgress

    args = SentenceTransformerTrainingArguments(
        output_dir=str(folder.arm_folder("work", arm.slug, seed)),
        seed=seed,
        data_seed=seed,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        bf16=training_precision(bf16) == "bfloat16",
        disable_tqdm=not verbose,  # our own bar per arm instead (console.ArmProgress)
        **arguments,
    )
    logs = folder.arm_folder("logs", arm.slug, seed)
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=loss,
        callbacks=[*callbacks, ArmProgress(f"{arm.name} (seed {seed})", logs.with_name(logs.name + ".jsonl"))],
        optimizers=optimizers,
    )
    if not verbose:
        trainer.remove_callback(PrinterCallback)  # the per-step dicts go to the arm's log file, not the console
    return trainer


def timed_train(trainer: Any) -> tuple[float, float]:
    """Run ``trainer.train()``; return (wall seconds, process CPU seconds of all threads: unaffected by a pause and
    little by a busy machine)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train()
    return time.perf_counter() - start, time.process_time() - cpu_start
