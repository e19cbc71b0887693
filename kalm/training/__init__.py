"""Contrastive training of an embedder (KaLM's third lever).

``train(cfg, inputs, out)`` is the stage entry point (torch is imported only when it runs).
One job per module, as Tevatron splits it:

- ``config``: the ``train:`` settings (precision, distribution, Matryoshka checks);
- ``data``: ``prepare_training_data`` (tokenize once, before torchrun, into a memory-mapped
  Arrow file cached by content), ``TrainingData`` and the step ``Collator``;
- ``sampler``: semi-homogeneous task batches; ``loss``: InfoNCE with duplicate masking and
  Matryoshka; ``grad_cache``: GradCache; ``model``: the embedder and its precision;
- ``trainer``: the loop (DDP / FSDP2); ``checkpoint``: DCP checkpoints keyed by config;
  ``export``: the sentence-transformers folder; ``launch``: torchrun; ``stage``: the stage.
"""


def train(*args, **kwargs):
    from kalm.training.stage import train as _train

    return _train(*args, **kwargs)
