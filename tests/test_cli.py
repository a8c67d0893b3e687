from __future__ import annotations

import subprocess
import sys

from haystack_corrector import __version__
from haystack_corrector.cli import main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exit_:
        assert exit_.code == 0
    assert capsys.readouterr().out.strip() == f"haystack-corrector {__version__}"


def test_help_lists_the_tool(capsys):
    assert main([]) == 0
    assert "corrector network" in capsys.readouterr().out


def test_console_script_is_installed():
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlib.metadata import entry_points; "
            "print([e.value for e in entry_points(group='console_scripts') if e.name == 'haystack-corrector'])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "haystack_corrector.cli:main" in result.stdout


# ------------------------------------------------------------------------------------- real commands, bad input
import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def built(tiny_st_path, toy_beir, tmp_path_factory):
    """A store built from the toy corpus with the CLI."""
    folder = tmp_path_factory.mktemp("cli") / "store"
    assert main(["build-cache", "--data", str(toy_beir), "--model", tiny_st_path, "--output", str(folder)]) == 0
    return folder


def _bad_beir(tmp_path: Path, toy_beir, kind: str) -> Path:
    folder = tmp_path / kind
    shutil.copytree(toy_beir, folder)
    if kind == "empty-corpus":
        (folder / "corpus.jsonl").write_text("")
    elif kind == "wrong-columns":
        (folder / "corpus.jsonl").write_text(json.dumps({"id": "d0", "body": "no _id field"}) + "\n")
    elif kind == "other-ids":  # the same texts under other ids: a store built from it knows none of the qrels' ids
        lines = (Path(toy_beir) / "corpus.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines]
        (folder / "corpus.jsonl").write_text("".join(json.dumps({**r, "_id": "x" + r["_id"]}) + "\n" for r in rows))
    return folder


def _one_line_error(capsys, rc: int, match: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert "Traceback" not in "\n".join(err)
    errors = [line for line in err if "error" in line.lower()]
    assert len(errors) == 1 and err[-1] == errors[0] and errors[0].startswith("haystack-corrector: error: "), err
    assert match in errors[0], errors[0]


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("build-cache missing data", "is not a BEIR folder"),
        ("build-cache empty corpus", "holds no documents"),
        ("build-cache wrong columns", 'corpus.jsonl:1 has no "_id" field'),
        ("build-cache foreign output", "Refusing to save into"),
        ("mine missing store", "No saved haystack-corrector folder"),
        ("mine unknown ids", "None of the"),
        ("mine existing output", "exists; choose a new file or pass --overwrite"),
        ("evaluate missing data", "is not a BEIR folder"),
        ("evaluate unknown ids", "None of the judged documents"),
        ("evaluate missing split", "No qrels for split 'dev'"),
        ("experiment foreign output", "Refusing to write results into"),
        ("demo foreign output", "Refusing to write results into"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(case, match, capsys, tmp_path, toy_beir, tiny_st_path, built):
    model = ["--model", tiny_st_path]
    foreign = tmp_path / "userdir"
    foreign.mkdir()
    (foreign / "important.txt").write_text("keep me")
    other_store = tmp_path / "other-store"
    if case == "mine unknown ids" or case == "evaluate unknown ids":
        other = _bad_beir(tmp_path, toy_beir, "other-ids")
        assert main(["build-cache", "--data", str(other), *model, "--output", str(other_store)]) == 0
        capsys.readouterr()
    existing = tmp_path / "negatives.jsonl"
    existing.write_text("the user's file\n")
    argv = {
        "build-cache missing data": ["build-cache", "--data", str(tmp_path / "nope"), *model, "--output", "x"],
        "build-cache empty corpus": [
            "build-cache",
            "--data",
            str(_bad_beir(tmp_path, toy_beir, "empty-corpus")),
            *model,
            "--output",
            "x",
        ],
        "build-cache wrong columns": [
            "build-cache",
            "--data",
            str(_bad_beir(tmp_path, toy_beir, "wrong-columns")),
            *model,
            "--output",
            "x",
        ],
        "build-cache foreign output": ["build-cache", "--data", str(toy_beir), *model, "--output", str(foreign)],
        "mine missing store": [
            "mine",
            "--store",
            str(tmp_path / "nope"),
            "--data",
            str(toy_beir),
            *model,
            "--output",
            "n.jsonl",
        ],
        "mine unknown ids": [
            "mine",
            "--store",
            str(other_store),
            "--data",
            str(toy_beir),
            *model,
            "--output",
            str(tmp_path / "n.jsonl"),
        ],
        "mine existing output": [
            "mine",
            "--store",
            str(built),
            "--data",
            str(toy_beir),
            *model,
            "--output",
            str(existing),
        ],
        "evaluate missing data": ["evaluate", "--data", str(tmp_path / "nope"), *model],
        "evaluate unknown ids": ["evaluate", "--data", str(toy_beir), *model, "--store", str(other_store)],
        "evaluate missing split": ["evaluate", "--data", str(toy_beir), "--split", "dev", *model],
        "experiment foreign output": [
            "experiment",
            "--data",
            str(toy_beir),
            *model,
            "--output",
            str(foreign),
            "--steps",
            "1",
        ],
        "demo foreign output": ["demo", "--output", str(foreign), "--model", tiny_st_path, "--steps", "1"],
    }[case]
    _one_line_error(capsys, main(argv), match)
    assert (foreign / "important.txt").read_text() == "keep me" and sorted(p.name for p in foreign.iterdir()) == [
        "important.txt"
    ]
    assert existing.read_text() == "the user's file\n"


def test_mine_looks_ids_up_once(monkeypatch, capsys, tmp_path, toy_beir, tiny_st_path, built):
    """Linear in (query, document) pairs: the id table is built once, not once per pair as before."""
    from haystack_corrector import CorrectedCacheStore

    accesses = {"ids": 0}
    real = CorrectedCacheStore.ids

    def counting(self):
        accesses["ids"] += 1
        return real.fget(self)

    monkeypatch.setattr(CorrectedCacheStore, "ids", property(counting))
    out = tmp_path / "negatives.jsonl"
    args = ["mine", "--store", str(built), "--data", str(toy_beir), "--model", tiny_st_path, "--output", str(out)]
    assert main(args) == 0
    pairs = sum(1 for line in (Path(toy_beir) / "qrels" / "train.tsv").read_text().splitlines()[1:] if line.strip())
    assert pairs > 20
    assert accesses["ids"] <= 3, f"store.ids read {accesses['ids']} times for {pairs} judged pairs"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) >= 28 and all({"anchor", "positive", "negative_1"} <= set(r) for r in rows)


def test_evaluate_scores_a_dot_product_model_by_dot_product(capsys, tmp_path, toy_beir, tiny_st_path):
    import torch
    from sentence_transformers import SentenceTransformer

    from haystack_corrector.beir import document_text, load_beir
    from haystack_corrector.evaluation import retrieval_metrics

    model = SentenceTransformer(tiny_st_path, device="cpu")
    model.similarity_fn_name = "dot"
    model.save(str(tmp_path / "dot-model"))
    assert main(["evaluate", "--data", str(toy_beir), "--model", str(tmp_path / "dot-model")]) == 0
    out = capsys.readouterr().out
    assert "dot similarity" in out
    # Oracle: rank every document by the raw dot product, in float64, one query at a time.
    corpus, queries, qrels = load_beir(toy_beir, "test")
    model.max_seq_length = 128
    ids = list(corpus)
    docs = model.encode([document_text(corpus[i]) for i in ids], convert_to_tensor=True).double()
    run = {}
    for query_id, text in queries.items():
        scores = docs @ model.encode([text], convert_to_tensor=True).double()[0]
        top = torch.topk(scores, min(100, len(ids))).indices.tolist()
        run[query_id] = {ids[i]: float(scores[i]) for i in top}
    means, _ = retrieval_metrics(run, qrels)
    assert f"ndcg@10 {means['ndcg@10']:.4f}" in out


CORPUS_CASES = {
    "duplicate id": (
        ['{"_id": "a", "text": "x"}', '{"_id": "a", "text": "y"}'],
        "corpus.jsonl:2: duplicate id 'a' (first on line 1)",
    ),
    "3 and '3' collide": (['{"_id": 3, "text": "x"}', '{"_id": "3", "text": "y"}'], "corpus.jsonl:2: duplicate id '3'"),
    "null id": (['{"_id": null, "text": "x"}'], 'corpus.jsonl:1: "_id" must be a string or an integer, got None'),
    "missing text": (['{"_id": "a", "title": "t"}'], "corpus.jsonl:1 (id 'a'): \"text\" must be a string, got None"),
    "not an object": (["[1, 2]"], "corpus.jsonl:1 is not a JSON object"),
    "bad JSON": (['{"_id": "a", "text": "x"}', "{oops"], "corpus.jsonl:2 is not valid JSON"),
    "deep JSON": (
        ['{"_id": "a", "text": "x"}', "[" * 100000 + "]" * 100000],
        "corpus.jsonl:2: its JSON is nested too deeply",
    ),
    "not UTF-8": (None, "corpus.jsonl:2 is not UTF-8 text"),
}


@pytest.mark.parametrize("case", sorted(CORPUS_CASES))
def test_a_bad_corpus_line_is_named_by_file_and_line(case, capsys, tmp_path, toy_beir, tiny_st_path):
    folder = tmp_path / "data"
    shutil.copytree(toy_beir, folder)
    lines, match = CORPUS_CASES[case]
    if lines is None:
        (folder / "corpus.jsonl").write_bytes(b'{"_id": "a", "text": "x"}\n{"_id": "b", "text": "caf\xe9"}\n')
    else:
        (folder / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    argv = ["build-cache", "--data", str(folder), "--model", tiny_st_path, "--output", str(tmp_path / "store")]
    _one_line_error(capsys, main(argv), match)
    assert not (tmp_path / "store").exists()


def test_a_huge_line_is_cut_before_tokenising_to_what_max_seq_length_reads(tmp_path, toy_beir, tiny_st_path):
    from haystack_corrector import CorrectedCacheStore

    folder = tmp_path / "data"
    shutil.copytree(toy_beir, folder)
    huge = "word " * 1_000_000 + "x" * 4_000_000  # a 9 MB line
    with open(folder / "corpus.jsonl", "a") as handle:
        handle.write(json.dumps({"_id": "huge", "text": huge}) + "\n")
    store_path = tmp_path / "store"
    argv = ["build-cache", "--data", str(folder), "--model", tiny_st_path, "--output", str(store_path)]
    assert main([*argv, "--max-seq-length", "32"]) == 0
    store = CorrectedCacheStore.load(store_path)
    text = store.texts[store.rows_of(["huge"])[0]]
    assert text == "word " * 32 + "word"  # 33 words: every token a 32-token tokenizer keeps, and no more


def test_cut_text_keeps_every_token_the_tokenizer_keeps(tiny_st_path):
    """Exact for WordPiece, long words and whitespace runs included (a word over 1,000 characters glued to
    punctuation is the documented exception: see cut_text's docstring)."""
    import random

    from transformers import AutoTokenizer

    from haystack_corrector.beir import cut_text

    tokenizer = AutoTokenizer.from_pretrained(tiny_st_path)
    rng = random.Random(0)
    pieces = [
        "a",
        "word",
        "naïve",
        "x" * 150,
        "y" * 1500 + " ",  # a word over 1,000 characters: one [UNK] whether cut or not
        "(f(x)=y);",
        "\t\t",
        "\n\n    ",
        " " * 1500,
        "数据",
        "self.x",
    ]
    for max_tokens in (1, 5, 32, 128):
        for _ in range(50):
            text = "".join(rng.choice(pieces) + rng.choice(["", " ", "  "]) for _ in range(rng.randint(0, 400)))
            cut = cut_text(text, max_tokens)
            assert len(cut) <= min(len(text), 2000 * (max_tokens + 1))
            full = tokenizer(text, truncation=True, max_length=max_tokens, add_special_tokens=False)["input_ids"]
            kept = tokenizer(cut, truncation=True, max_length=max_tokens, add_special_tokens=False)["input_ids"]
            assert kept == full, (max_tokens, text[:80])
