"""The iMAML paper's comparisons, one command each (``bilevel reproduce ...``).

* :mod:`~bilevel.reproduce.gradient_error`: Fig. 2a, meta-gradient error against iterations.
* :mod:`~bilevel.reproduce.memory`: Fig. 2b, memory and time per meta-iteration against inner steps.
* :mod:`~bilevel.reproduce.table`: Table 2, Omniglot few-shot accuracy beside the paper's numbers.
"""
