"""Embeddings: the :class:`SAMEmbedder` estimator and what it returns.

* :mod:`~samlearn.embedding.estimator` -- :class:`SAMEmbedder` (``fit`` trains, ``transform``
  embeds); :mod:`~samlearn.embedding.config` -- its resolved configuration.
* :mod:`~samlearn.embedding.maps` -- :class:`Embedding` and :class:`EmbeddingMap`: L2-normalised
  maps with the world geometry of their grids.
* :mod:`~samlearn.embedding.preprocessing` -- the image as the network sees it.
* :mod:`~samlearn.embedding.inference`, :mod:`~samlearn.embedding.engine` -- the inference engine:
  batching, tiling under a memory budget; :mod:`~samlearn.embedding.cache` -- the on-disk cache.
* :mod:`~samlearn.embedding.model_file`, :mod:`~samlearn.embedding.loading` -- safe model files
  and :func:`load`.
"""
from .estimator import SAMEmbedder
from .loading import load
from .maps import Embedding, EmbeddingMap, load_embedding, sample_map, save_embedding
from .preprocessing import preprocess

__all__ = ["SAMEmbedder", "load", "Embedding", "EmbeddingMap", "save_embedding", "load_embedding",
           "sample_map", "preprocess"]
