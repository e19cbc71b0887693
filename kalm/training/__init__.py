"""Contrastive training of an embedder (KaLM's third lever).

``train(cfg, inputs, out)`` is the stage entry point (torch is imported only when it runs).
"""


def train(*args, **kwargs):
    from kalm.training.stage import train as _train

    return _train(*args, **kwargs)
