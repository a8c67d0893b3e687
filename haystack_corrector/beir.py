"""Load a retrieval dataset in BEIR layout: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``."""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from haystack_corrector._validation import check_positive_int

__all__ = ["cut_text", "document_text", "load_beir", "load_qrels"]

Document = str | dict[str, str]


def document_text(document: Document) -> str:
    """The text a bi-encoder sees for a BEIR document: ``"title text"`` (or just the text when untitled)."""
    if isinstance(document, str):
        return document
    title = (document.get("title") or "").strip()
    text = (document.get("text") or "").strip()
    return f"{title} {text}" if title else text


# A word or whitespace run longer than this is cut to this length by cut_text (a word over 100 characters is one
# [UNK] token for WordPiece either way).
LONG_RUN = 1000
_WORD = re.compile(r"\S+")


def cut_text(text: str, max_tokens: int) -> str:
    """What a tokenizer truncating at ``max_tokens`` tokens reads of ``text``, without the rest.

    Tokenizers that split on whitespace first (WordPiece, byte-level BPE, SentencePiece) make at least one token of
    each word, so the first ``max_tokens + 1`` words hold every token they keep: the rest is dropped. Each word and
    each whitespace run is also cut to 1,000 characters, which bounds the result at about ``2,000 × max_tokens``
    characters whatever the input (a 100 MB line becomes at most 258,000 characters at 128 tokens). The tokens are
    unchanged (tested against MiniLM's WordPiece) unless, before the cut, a word of over 1,000 characters holds
    characters the tokenizer splits off (punctuation glued to it), or a whitespace run of over 1,000 characters is
    several tokens to the tokenizer (byte-level BPE). WordPiece reads any word over 100 characters as one [UNK].
    """
    pieces = []
    position = 0
    for count, match in enumerate(_WORD.finditer(text), 1):
        start, end = match.span()
        pieces.append(text[position:start][:LONG_RUN])
        pieces.append(text[start : min(end, start + LONG_RUN)])
        position = end
        if count == max_tokens + 1:
            return "".join(pieces)
    pieces.append(text[position:][:LONG_RUN])
    return "".join(pieces)


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each non-blank line, streamed; every error names the file and the line."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path}:{number} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number} is not valid JSON: {exc}") from None
            except RecursionError:
                raise ValueError(f"{path}:{number}: its JSON is nested too deeply") from None
            if not isinstance(row, dict):
                raise ValueError(
                    f'{path}:{number} is not a JSON object (BEIR rows look like {{"_id": ..., "text": ...}})'
                )
            yield number, row


def _read_records(path: Path, fields: tuple[str, ...], max_tokens: int | None) -> dict[str, dict[str, str]]:
    """``{id: {field: text}}`` of a BEIR JSONL file: ids unique (``3`` and ``"3"`` are the same id), ``text`` present.

    ``title`` may be absent or null (read as ""); ``text`` must be a string. With ``max_tokens`` every field is cut
    by :func:`cut_text` as it is read, so a huge line costs memory only while it is parsed.
    """
    records: dict[str, dict[str, str]] = {}
    lines: dict[str, int] = {}
    for number, row in _read_jsonl(path):
        if "_id" not in row:
            raise ValueError(f'{path}:{number} has no "_id" field (BEIR rows look like {{"_id": ..., "text": ...}})')
        value = row["_id"]
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValueError(f'{path}:{number}: "_id" must be a string or an integer, got {value!r}')
        key = str(value)
        if key in lines:
            raise ValueError(f"{path}:{number}: duplicate id {key!r} (first on line {lines[key]})")
        if not isinstance(row.get("text"), str):
            raise ValueError(f'{path}:{number} (id {key!r}): "text" must be a string, got {row.get("text")!r}'[:300])
        record = {}
        for field in fields:
            text = row.get(field)
            if text is not None and not isinstance(text, str):
                raise ValueError(f'{path}:{number} (id {key!r}): "{field}" must be a string, got {text!r}'[:300])
            text = text or ""
            record[field] = cut_text(text, max_tokens) if max_tokens is not None else text
        lines[key] = number
        records[key] = record
    return records


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
    path: str | os.PathLike[str], split: str = "test", max_tokens: int | None = None
) -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, dict[str, int]]]:
    """Load ``(corpus, queries, qrels)`` of one split from a BEIR folder.

    Every record needs a unique ``_id`` (string or integer) and a ``text`` string; anything else is refused with
    the file, the line and the id. ``max_tokens``: cut every text to what a tokenizer truncating there reads
    (:func:`cut_text`), as it is read (the command line passes ``--max-seq-length``).

    ``corpus`` maps doc id to ``{"title", "text"}``; ``queries`` maps query id to text and keeps only the queries
    judged in this split; ``qrels`` maps query id to ``{doc_id: grade}`` (grade > 0 = relevant).
    """
    folder = Path(path)
    if max_tokens is not None:
        max_tokens = check_positive_int(max_tokens, "max_tokens")
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
    corpus = _read_records(corpus_path, ("title", "text"), max_tokens)
    if not corpus:
        raise ValueError(f"{corpus_path} holds no documents")
    qrels = load_qrels(qrels_path)
    if not qrels:
        raise ValueError(f"{qrels_path} holds no judgements")
    all_queries = {
        qid: row["text"] for qid, row in _read_records(folder / "queries.jsonl", ("text",), max_tokens).items()
    }
    missing = [qid for qid in qrels if qid not in all_queries]
    if missing:
        raise ValueError(f"{len(missing)} judged queries are missing from queries.jsonl (first: {missing[0]!r})")
    queries = {qid: all_queries[qid] for qid in qrels}
    return corpus, queries, qrels
