"""catdog training: the Keras pipeline of the Dogs vs. Cats tutorial, as a package.

Read it top to bottom: ``prepare`` (split a raw folder), ``data`` (tf.data loaders),
``models`` (architectures), ``train``, ``evaluate``, ``export`` (with ``litert``,
``flatbuffer`` and ``ood``). ``teacher`` and ``quantize`` make version 4:
EfficientNet-Lite0 with int8 weights. The model contract lives in
``catdog.contract`` and the one preprocessing function in ``catdog.preprocessing``.
"""
