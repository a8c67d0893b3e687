"""Load a retrieval dataset in BEIR layout: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``."""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path

Document = str | dict[str, str]


def document_text(document: Document) -> str:
    """The text a bi-encoder sees for a BEIR document: ``"title text"`` (or just the text when untitled)."""
    if isinstance(document, str):
        return document
    title = (document.get("title") or "").strip()
    text = (document.get("text") or "").strip()
    return f"{title} {text}" if title else text


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number} is not valid JSON: {exc}") from exc
    return rows


def _row_id(row: object, path: Path, number: int) -> str:
    if not isinstance(row, dict) or "_id" not in row:
        raise ValueError(
            f'{path}: record {number} has no \'_id\' field (BEIR rows look like {{"_id": ..., "text": ...}})'
        )
    return str(row["_id"])


def load_qrels(path: str | os.PathLike[str]) -> dict[str, dict[str, int]]:
    """``{query_id: {doc_id: grade}}`` from a BEIR qrels TSV (header ``query-id corpus-id score``)."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["query-id", "corpus-id", "score"]:
            raise ValueError(f"{path} must start with the header 'query-id<TAB>corpus-id<TAB>score', got {header}")
        for number, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) < 3:
                raise ValueError(f"{path}:{number} has {len(row)} columns, expected 3")
            try:
                grade = int(float(row[2]))
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: score {row[2]!r} is not a number") from exc
            qrels.setdefault(row[0], {})[row[1]] = grade
    return qrels


def load_beir(
    path: str | os.PathLike[str], split: str = "test"
) -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, dict[str, int]]]:
    """Load ``(corpus, queries, qrels)`` of one split from a BEIR folder.

    ``corpus`` maps doc id to ``{"title", "text"}``; ``queries`` maps query id to text and keeps only the queries
    judged in this split; ``qrels`` maps query id to ``{doc_id: grade}`` (grade > 0 = relevant).
    """
    folder = Path(path)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    corpus_path = folder / "corpus.jsonl"
    if not corpus_path.is_file() and (folder / "corpus.jsonl.gz").is_file():
        corpus_path = folder / "corpus.jsonl.gz"
    for required in (corpus_path, folder / "queries.jsonl"):
        if not required.is_file():
            raise FileNotFoundError(f"{folder} is not a BEIR folder: {required.name} is missing")
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
        raise FileNotFoundError(f"No qrels for split {split!r} in {folder}; available splits: {available}")
    corpus = {
        _row_id(row, corpus_path, number): {"title": str(row.get("title") or ""), "text": str(row.get("text") or "")}
        for number, row in enumerate(_read_jsonl(corpus_path), 1)
    }
    if not corpus:
        raise ValueError(f"{corpus_path} holds no documents")
    qrels = load_qrels(qrels_path)
    if not qrels:
        raise ValueError(f"{qrels_path} holds no judgements")
    all_queries = {
        _row_id(row, folder / "queries.jsonl", number): str(row.get("text") or "")
        for number, row in enumerate(_read_jsonl(folder / "queries.jsonl"), 1)
    }
    missing = [qid for qid in qrels if qid not in all_queries]
    if missing:
        raise ValueError(f"{len(missing)} judged queries are missing from queries.jsonl (first: {missing[0]!r})")
    queries = {qid: all_queries[qid] for qid in qrels}
    return corpus, queries, qrels
