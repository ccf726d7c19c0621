"""catdog training: the Keras pipeline of the Dogs vs. Cats tutorial, as a package.

Read it top to bottom: ``prepare`` (split a raw folder), ``data`` (tf.data loaders),
``models`` (architectures), ``train``, ``evaluate``, ``export``. The model contract
lives in ``contract`` and the one preprocessing function in ``preprocessing``.
"""
