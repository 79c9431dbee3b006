"""Part II — parameter-efficient fine-tuning methods, one file per method.

Each weight-injecting method offers the same verbs: a ``Config`` dataclass, ``apply(model, config)`` that wraps
the targets in place and returns a handle (``minipeft.core.Injection``) with ``merge`` / ``unmerge`` /
``state_dict`` / ``load_state_dict`` / ``unload`` / ``undo``. Prompt-style methods (``prefix``) plug into a
``transformers`` model through its own hooks and return a handle with the same verbs (merging raises: a prompt is
not a weight update). Import a method by its module: ``from minipeft.peft import lora``.
"""
