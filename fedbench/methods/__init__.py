"""Fine-tuning methods. Each is one file + one YAML in ``conf/method/``.

A method (a :class:`fedbench.contracts.Method` registered as ``method=<name>``) does two things, in this order (the tutorial's random-stream order):
``inject(model)`` adds its modules before the task head exists, then ``trainable(model)``
names the parameters that train, and exactly those are communicated.
"""
