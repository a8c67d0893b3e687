"""sentence-transformers adapter: corrector negatives inside the stock ``SentenceTransformerTrainer``.

This subpackage is the only part of ``haystack_corrector`` that imports sentence_transformers.
"""

from __future__ import annotations

from haystack_corrector.sentence_transformers._compat import require_sentence_transformers

require_sentence_transformers()

from haystack_corrector.sentence_transformers.callback import CorrectorCallback  # noqa: E402
from haystack_corrector.sentence_transformers.corrected_mnrl_loss import (  # noqa: E402
    CorrectedMultipleNegativesRankingLoss,
)
from haystack_corrector.sentence_transformers.corrected_negatives_loss import CorrectedNegativesLoss  # noqa: E402
from haystack_corrector.sentence_transformers.encode import encode_corpus  # noqa: E402
from haystack_corrector.sentence_transformers.latent_retrieval_loss import (  # noqa: E402
    CrossEncoderReader,
    LatentRetrievalLoss,
    marginal_label_probabilities,
    predict_labels,
)
from haystack_corrector.sentence_transformers.negatives import (  # noqa: E402
    InBatchNegatives,
    NegativeSource,
    RefreshedNegatives,
    RerankedNegatives,
    SampledNegatives,
    StaticNegatives,
)
from haystack_corrector.sentence_transformers.training_data import build_training_dataset  # noqa: E402

__all__ = [
    "CorrectedMultipleNegativesRankingLoss",
    "CorrectedNegativesLoss",
    "CorrectorCallback",
    "CrossEncoderReader",
    "InBatchNegatives",
    "LatentRetrievalLoss",
    "NegativeSource",
    "RefreshedNegatives",
    "RerankedNegatives",
    "SampledNegatives",
    "StaticNegatives",
    "build_training_dataset",
    "encode_corpus",
    # the latent-retrieval reader and its helpers, with LatentRetrievalLoss
    "marginal_label_probabilities",
    "predict_labels",
]
