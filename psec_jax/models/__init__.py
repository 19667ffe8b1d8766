"""An MoE language model built on `psec_jax.moe`, its offline data and its training loop.

    from psec_jax.models import transformer, text, pipeline, train
    spec = transformer.Spec(vocab_size=2048, d_model=128, num_layers=4, num_heads=4, num_experts=8, d_ff_expert=256)
    data = text.get(vocab_size=2048, seq_len=128, num_task_examples=20_000, num_val_task_examples=2_000, seed=0)
    batches = pipeline.Batches(data, batch_size=16, seq_len=128, task_rows=4, seed=0)

Modules: transformer (the model: RoPE, RMSNorm, causal attention, MoE/dense SwiGLU FFNs, layers in a
scan), text (stdlib corpus, BPE tokenizer, cached build), tasks (copy/sort/modular task mixture with
known difficulty), pipeline (host-side deterministic batches), train (make_train), report (results).
Importing it never imports a simulator.
"""

from psec_jax.models import pipeline, tasks, text, train, transformer
from psec_jax.models.transformer import Output, Spec, apply, init, loss, parameter_counts

__all__ = [
    "pipeline",
    "tasks",
    "text",
    "train",
    "transformer",
    "Output",
    "Spec",
    "apply",
    "init",
    "loss",
    "parameter_counts",
]
