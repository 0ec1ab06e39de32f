"""Dataset plugins: loaders of the real on-disk formats (``loaders``: NYU-v2, Tiny-Taskonomy), their metric
vocabularies (``vocabularies``, torch-free), the synthetic scene generator and ``data verify``. Importing the
package itself imports nothing heavy: the registry imports ``mtlprune.datasets.loaders``, the vocabulary
``mtlprune.datasets.vocabularies``."""
