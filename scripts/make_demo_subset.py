"""Build the SciFact demo subset shipped in haystack_corrector/data/scifact_demo (run once by maintainers).

Every document cited by a train or test claim, plus seeded random distractors up to --size documents; all train and
test claims with their qrels. SciFact is CC BY-NC 2.0 (Wadden et al., 2020): the licence and attribution are written
next to the data.

    python scripts/make_demo_subset.py --source ../shared/data/scifact --size 1700
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
from pathlib import Path

from haystack_corrector.beir import load_qrels

TARGET = Path(__file__).resolve().parents[1] / "haystack_corrector" / "data" / "scifact_demo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="../shared/data/scifact")
    parser.add_argument("--size", type=int, default=1700)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    source = Path(args.source)
    qrels = {split: load_qrels(source / "qrels" / f"{split}.tsv") for split in ("train", "test")}
    cited = sorted({doc for split in qrels.values() for docs in split.values() for doc in docs})
    corpus = [json.loads(line) for line in (source / "corpus.jsonl").read_text().splitlines() if line.strip()]
    others = sorted(str(row["_id"]) for row in corpus if str(row["_id"]) not in set(cited))
    distractors = random.Random(args.seed).sample(others, max(0, args.size - len(cited)))
    keep = set(cited) | set(distractors)
    query_ids = {q for split in qrels.values() for q in split}
    if TARGET.exists():
        shutil.rmtree(TARGET)
    (TARGET / "qrels").mkdir(parents=True)
    with gzip.open(TARGET / "corpus.jsonl.gz", "wt", encoding="utf-8") as handle:
        for row in corpus:
            if str(row["_id"]) in keep:
                handle.write(
                    json.dumps({"_id": str(row["_id"]), "title": row.get("title", ""), "text": row.get("text", "")})
                    + "\n"
                )
    with open(TARGET / "queries.jsonl", "w", encoding="utf-8") as handle:
        for line in (source / "queries.jsonl").read_text().splitlines():
            if line.strip() and str(json.loads(line)["_id"]) in query_ids:
                handle.write(line + "\n")
    for split, judged in qrels.items():
        with open(TARGET / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as handle:
            handle.write("query-id\tcorpus-id\tscore\n")
            for query, docs in judged.items():
                for doc, grade in docs.items():
                    handle.write(f"{query}\t{doc}\t{grade}\n")
    (TARGET / "LICENSE-SCIFACT.md").write_text(LICENCE)
    print(
        f"{len(keep)} documents ({len(cited)} cited, {len(distractors)} distractors), {len(query_ids)} claims -> {TARGET}"
    )


LICENCE = """# SciFact demo subset — licence and attribution

The files in this folder are a subset of **SciFact** (Wadden, Lin, Lo, Wang, van Zuylen, Cohan, Hajishirzi,
"Fact or Fiction: Verifying Scientific Claims", EMNLP 2020; https://github.com/allenai/scifact), converted to the BEIR
layout: every abstract cited by a train or test claim plus seeded random distractor abstracts (about 1,700 documents),
the train claims (`qrels/train.tsv`) and the validation claims used as test (`qrels/test.tsv`).

SciFact is licensed under the **Creative Commons Attribution-NonCommercial 2.0 Generic licence (CC BY-NC 2.0)**,
https://creativecommons.org/licenses/by-nc/2.0/. You may share and adapt this data for **non-commercial** purposes,
giving appropriate credit and indicating changes. Changes made here: subset of documents and claims, converted from
the original JSONL release to BEIR `corpus.jsonl`/`queries.jsonl`/`qrels`. This data is shipped only to run
`haystack-corrector demo`; the rest of haystack-corrector is Apache-2.0.

Citation:

    @inproceedings{wadden2020fact,
        title = {Fact or Fiction: Verifying Scientific Claims},
        author = {Wadden, David and Lin, Shanchuan and Lo, Kyle and Wang, Lucy Lu and van Zuylen, Madeleine and
                  Cohan, Arman and Hajishirzi, Hannaneh},
        booktitle = {Proceedings of the 2020 Conference on Empirical Methods in Natural Language Processing (EMNLP)},
        year = {2020},
    }
"""


if __name__ == "__main__":
    main()
