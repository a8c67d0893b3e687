"""The latent-retrieval harness at toy size: every arm runs, the frozen retriever stays zero-shot, the cost counters
add up, macro-F1 matches its definition, and a second run resumes without redoing an arm."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

pytest.importorskip("sentence_transformers")
pytest.importorskip("pytrec_eval")

from haystack_corrector.cli import main  # noqa: E402
from haystack_corrector.experiments.latent import LABELS, load_labels, macro_f1, parse_latent_arm  # noqa: E402


@pytest.fixture
def claims_folder(toy_beir, tmp_path):
    folder = tmp_path / "claims"
    shutil.copytree(toy_beir, folder)
    splits = {}
    for split in ("train", "test"):
        for line in (folder / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]:
            splits[line.split("\t")[0]] = split
    with open(folder / "claims.jsonl", "w") as handle:
        for number, (claim, split) in enumerate(sorted(splits.items())):
            handle.write(json.dumps({"_id": claim, "split": split, "label": LABELS[number % 3]}) + "\n")
    return folder


def test_the_harness_runs_every_arm_and_resumes(claims_folder, tiny_st_path, tmp_path, capsys):
    output = tmp_path / "out"
    argv = [
        "latent", "--data", str(claims_folder), "--model", tiny_st_path, "--arms", "frozen", "stale", "corrector",
        "refresh:3", "--epochs", "1", "--batch-size", "4", "--top-k", "2", "--max-seq-length", "32",
        "--reader-max-length", "48", "--save-models", "--output", str(output),
    ]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((output / "results.json").read_text())
    zero_shot = results["zero_shot"]["ndcg@10"]
    by_arm = {r["arm"]: r for r in results["arms"]}
    assert set(by_arm) == {"frozen", "stale", "corrector", "refresh:3"}
    # 28 train claims in batches of 4: 7 steps; refresh:3 re-encodes the 120 documents before steps 3 and 6.
    for arm, result in by_arm.items():
        assert result["steps"] == 7
        encodes = 2 if arm == "refresh:3" else 0
        assert result["corpus_encodes"] == encodes
        assert result["target_forward_passes"] == 7 * 4 * 2 + encodes * 120
        assert result["reader_forward_passes"] == 7 * 4 * 2
    # The frozen retriever is never updated: its evaluation is the zero-shot retriever's.
    assert by_arm["frozen"]["metrics"]["ndcg@10"] == pytest.approx(zero_shot, abs=1e-6)
    labels = load_labels(claims_folder / "claims.jsonl")
    for result in by_arm.values():
        predicted = result["predicted"]
        gold = [labels[q][1] for q in predicted]
        indices = [LABELS.index(label) for label in predicted.values()]
        assert result["metrics"]["accuracy"] == pytest.approx(sum(p == g for p, g in zip(indices, gold)) / len(gold))
        assert result["metrics"]["macro_f1"] == pytest.approx(macro_f1(indices, gold))
    # The saved pair reproduces the arm's evaluation exactly.
    from sentence_transformers import SentenceTransformer

    from haystack_corrector.experiments.latent import LatentConfig, evaluate, load_task
    from haystack_corrector.sentence_transformers.latent_retrieval_loss import CrossEncoderReader

    config = LatentConfig(data=str(claims_folder), top_k=2, max_seq_length=32, reader_max_length=48)
    saved = output / "models" / "corrector__seed0"
    retriever = SentenceTransformer(str(saved / "retriever"), device="cpu")
    retriever.max_seq_length = 32
    reader = CrossEncoderReader(str(saved / "reader"), num_labels=len(LABELS), max_length=48)
    again = evaluate(retriever, reader, load_task(config), config, "cosine")
    assert again["predicted"] == by_arm["corrector"]["predicted"]
    assert again["metrics"]["ndcg@10"] == pytest.approx(by_arm["corrector"]["metrics"]["ndcg@10"], abs=1e-6)
    report = (output / "results.md").read_text()
    assert all(f"| {arm} |" in report for arm in by_arm)
    stamps = {p.name: p.stat().st_mtime_ns for p in (output / "arms").iterdir()}
    assert main(argv) == 0  # resumes: nothing redone
    assert {p.name: p.stat().st_mtime_ns for p in (output / "arms").iterdir()} == stamps
    assert "refresh:3" in capsys.readouterr().out
    only_frozen = [*argv[: argv.index("--arms") + 1], "frozen", *argv[argv.index("--epochs") :]]
    assert main(only_frozen) == 0  # a later call with fewer arms still reports every arm in the folder
    report = (output / "results.md").read_text()
    assert all(f"| {arm} |" in report for arm in by_arm)
    assert "| corrector - stale |" in report and "| refresh:3 - corrector |" in report
    assert len(json.loads((output / "results.json").read_text())["arms"]) == 4
    capsys.readouterr()
    changed = [*argv[:-1], str(output)]
    changed[changed.index("--top-k") + 1] = "3"
    assert main(changed) == 2  # other settings into the same folder: refused before training
    assert "other settings (top_k: 2 there, 3 now)" in capsys.readouterr().err


def test_macro_f1_against_hand_counts():
    # predicted [0, 0, 1, 2] against gold [0, 2, 1, 0]: class 0 tp 1, fp 1, fn 1 -> F1 0.5; class 1 tp 1 -> 1.0;
    # class 2 tp 0 -> 0.
    assert macro_f1([0, 0, 1, 2], [0, 2, 1, 0]) == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_report_pairs_arms_on_claims_averaged_over_seeds(tmp_path):
    from haystack_corrector.experiments.latent import finished_arms
    from haystack_corrector.experiments.report import latent_markdown as latent_report

    def arm(name, seed, correct, ndcg):
        per_query = {"correct": dict(zip("abcd", correct)), "ndcg@10": dict(zip("abcd", ndcg))}
        metrics = {"accuracy": sum(correct) / 4, "macro_f1": 0.0, "ndcg@10": sum(ndcg) / 4}
        counts = {"corpus_encodes": 0, "target_forward_passes": 0, "reader_forward_passes": 0, "train_seconds": 1}
        return {"arm": name, "seed": seed, "metrics": metrics, "per_query": per_query, **counts}

    folder = tmp_path / "arms"
    folder.mkdir()
    written = [
        arm("refresh:5", 0, [1, 1, 1, 1], [0.9] * 4),
        arm("stale", 1, [1, 1, 0, 0], [0.5] * 4),
        arm("stale", 0, [1, 0, 0, 0], [0.3] * 4),
        arm("frozen", 0, [0, 0, 0, 0], [0.6] * 4),
    ]
    for result in written:
        (folder / f"{result['arm'].replace(':', '-')}__seed{result['seed']}.json").write_text(json.dumps(result))
    arms = finished_arms(folder)
    assert [(r["arm"], r["seed"]) for r in arms] == [("frozen", 0), ("stale", 0), ("stale", 1), ("refresh:5", 0)]
    rows = {
        line.split(" | ")[0].strip("| "): line for line in latent_report({"zero_shot": {"ndcg@10": 0.6}, "arms": arms})
        .splitlines() if " - " in line
    }  # fmt: skip
    assert list(rows) == ["stale - frozen", "refresh:5 - frozen", "refresh:5 - stale"]
    # stale averaged over its seeds: per claim correct [1, 0.5, 0, 0] (mean 0.375), nDCG 0.4 on every claim.
    assert "+0.3750" in rows["stale - frozen"] and "-0.2000" in rows["stale - frozen"]
    # refresh - stale: correct [0, 0.5, 1, 1] -> +0.625; nDCG +0.5 on every claim, so a zero-width interval.
    assert "+0.6250" in rows["refresh:5 - stale"] and "+0.5000 [+0.5000, +0.5000]" in rows["refresh:5 - stale"]


def test_bad_arms_and_labels(tmp_path):
    with pytest.raises(ValueError, match="Unknown arm 'refresh:0'"):
        parse_latent_arm("refresh:0")
    path = tmp_path / "labels.jsonl"
    path.write_text('{"_id": "1", "split": "train", "label": "MAYBE"}\n')
    with pytest.raises(ValueError, match="label 'MAYBE' is not one of"):
        load_labels(path)
    with pytest.raises(FileNotFoundError, match="No labels file"):
        load_labels(tmp_path / "missing.jsonl")


def test_reader_lr_gives_the_reader_its_own_parameter_group(tiny_st_path):
    from haystack_corrector.experiments.latent import parameter_groups
    from haystack_corrector.sentence_transformers import encode_corpus
    from haystack_corrector.sentence_transformers.latent_retrieval_loss import CrossEncoderReader, LatentRetrievalLoss
    from haystack_corrector.sentence_transformers.model_loading import load_model

    model = load_model(tiny_st_path, 32)
    store = encode_corpus(model, [f"document {i}" for i in range(6)], show_progress_bar=False)
    reader = CrossEncoderReader(tiny_st_path, num_labels=3, max_length=48)
    loss = LatentRetrievalLoss(model, reader, store, top_k=2)
    groups = parameter_groups(loss, 2e-5, 1e-4)
    grouped = [id(p) for group in groups for p in group["params"]]
    # Every trainable parameter in exactly one group; the reader's (all of them) at reader_lr; never the corrector.
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in loss.parameters() if p.requires_grad}
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in reader.parameters()}
    assert not {id(p) for p in store.corrector.parameters()} & set(grouped)
    assert [group["lr"] for group in groups] == [2e-5, 1e-4]
    assert [group["lr"] for group in parameter_groups(loss, 2e-5, None)] == [2e-5, 2e-5]


def test_bad_learning_rates_are_refused_before_any_work(claims_folder, tmp_path, capsys):
    argv = ["latent", "--data", str(claims_folder), "--reader-lr", "-1", "--output", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "reader_lr must be > 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("forbid_bf16", [False, True])
def test_bf16_trains_under_autocast_where_the_hardware_has_it(
    claims_folder, tiny_st_path, tmp_path, monkeypatch, caplog, forbid_bf16
):
    """--bf16 records the precision it trained in: bfloat16 on bfloat16 hardware, float32 (with a warning) where
    there is none (forced with HAYSTACK_CORRECTOR_NO_BF16=1); the frozen retriever's evaluation stays float32, so
    it still equals the zero-shot retriever's."""
    from haystack_corrector.search import bf16_supported

    if forbid_bf16:
        monkeypatch.setenv("HAYSTACK_CORRECTOR_NO_BF16", "1")
    elif not bf16_supported("cpu"):
        pytest.skip("this CPU has no bfloat16 units")
    output = tmp_path / "out"
    argv = [
        "latent", "--data", str(claims_folder), "--model", tiny_st_path, "--arms", "frozen", "corrector",
        "--epochs", "1", "--batch-size", "4", "--top-k", "2", "--max-seq-length", "32", "--reader-max-length", "48",
        "--bf16", "--output", str(output),
    ]  # fmt: skip
    linear_dtypes: set[torch.dtype] = set()  # what every nn.Linear of the run computed in (issue 38: the label
    # alone passed with the autocast removed)

    def record(module, _inputs, output):
        if isinstance(module, torch.nn.Linear) and isinstance(output, torch.Tensor):
            linear_dtypes.add(output.dtype)

    from haystack_corrector.sentence_transformers.latent_retrieval_loss import CrossEncoderReader

    reader_dtypes: set[torch.dtype] = set()  # the reader's logits while training: the trainer's bf16 alone leaves a
    reader_forward = CrossEncoderReader.forward  # loss-owned reader in float32 (transformers 5 autocasts model.forward)

    def recording_forward(self, queries, documents):
        logits = reader_forward(self, queries, documents)
        if self.training:
            reader_dtypes.add(logits.dtype)
        return logits

    monkeypatch.setattr(CrossEncoderReader, "forward", recording_forward)
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        with caplog.at_level("WARNING", logger="haystack_corrector.experiments.latent"):
            assert main(argv) == 0
    finally:
        handle.remove()
    results = json.loads((output / "results.json").read_text())
    expected = "float32" if forbid_bf16 else "bfloat16"
    assert {r["precision"] for r in results["arms"]} == {expected}
    assert (torch.bfloat16 in linear_dtypes) == (not forbid_bf16), linear_dtypes
    assert reader_dtypes == {torch.float32 if forbid_bf16 else torch.bfloat16}
    assert ("no bfloat16 units" in caplog.text) == forbid_bf16
    frozen = next(r for r in results["arms"] if r["arm"] == "frozen")
    assert frozen["metrics"]["ndcg@10"] == pytest.approx(results["zero_shot"]["ndcg@10"], abs=1e-6)
    assert json.loads((output / "config.json").read_text())["bf16"] is True


def test_examples_trained_counts_each_epochs_short_last_batch():
    from haystack_corrector.experiments.latent import examples_trained

    # 10 claims in batches of 4: an epoch is batches of 4, 4 and 2. Five steps: one epoch (10) and two batches (8).
    assert examples_trained(5, 10, 4) == 18
    assert examples_trained(3, 10, 4) == 10
    assert examples_trained(7, 28, 4) == 28


def test_one_arm_grammar_keeps_each_tasks_arms_apart():
    from haystack_corrector.experiments.arms import parse_arm

    assert parse_latent_arm("refresh:26").refresh_every == 26
    assert parse_latent_arm("frozen").slug == "frozen"
    with pytest.raises(ValueError, match="Unknown arm 'corrector\\+replay:2'"):
        parse_latent_arm("corrector+replay:2")  # the latent task's corrector takes no levers
    with pytest.raises(ValueError, match="Unknown arm 'frozen'"):
        parse_arm("frozen")  # the contrastive task has no frozen arm
